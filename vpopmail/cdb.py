"""D. J. Bernstein's constant database: a lean, bounds-checked reader and a guarded writer.

The reader is used on the hot paths: one ``pread`` of the 2 KiB header and a few small reads per
lookup, no mmap, no struct. Unlike pure-cdb's Reader it never loops forever on a corrupt table
and reports truncation and garbage as :class:`CorruptData` (a temporary, local fault), never as
"key not found".

Writing lives in :mod:`vpopmail.cdbwrite` so that readers never import pure-cdb.
"""
import os

from vpopmail.errors import CorruptData

_HEADER = 2048


def cdb_hash(key: bytes) -> int:
    """The cdb hash: h = ((h << 5) + h) ^ c, from 5381, modulo 2**32."""
    h = 5381
    for c in key:
        h = (((h << 5) + h) & 0xFFFFFFFF) ^ c
    return h


def _pair(data: bytes, offset: int = 0) -> tuple[int, int]:
    return (int.from_bytes(data[offset:offset + 4], "little"),
            int.from_bytes(data[offset + 4:offset + 8], "little"))


class CdbReader:
    """Read-only access to one cdb file; use as a context manager or call :meth:`close`."""

    __slots__ = ("path", "_fd", "_size", "_header")

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._size = os.fstat(self._fd).st_size
            self._header = os.pread(self._fd, _HEADER, 0)
        except OSError:
            os.close(self._fd)
            raise
        if len(self._header) < _HEADER:
            os.close(self._fd)
            raise CorruptData(f"{path}: truncated cdb ({self._size} bytes)")

    def __enter__(self) -> "CdbReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _read(self, offset: int, length: int) -> bytes:
        if offset + length > self._size:
            raise CorruptData(f"{self.path}: cdb pointer past end of file")
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise CorruptData(f"{self.path}: cdb file shrank while being read")
        return data

    def get(self, key: bytes) -> bytes | None:
        """The first value stored for ``key``, or None."""
        h = cdb_hash(key)
        table_pos, slots = _pair(self._header, (h & 0xFF) << 3)
        if not slots:
            return None
        if table_pos < _HEADER or table_pos + slots * 8 > self._size:
            raise CorruptData(f"{self.path}: cdb hash table out of bounds")
        table = self._read(table_pos, slots * 8)
        start = (h >> 8) % slots
        for probe in range(slots):
            slot_hash, record_pos = _pair(table, ((start + probe) % slots) << 3)
            if not record_pos:
                return None
            if slot_hash != h:
                continue
            klen, dlen = _pair(self._read(record_pos, 8))
            if record_pos + 8 + klen + dlen > table_pos:
                raise CorruptData(f"{self.path}: cdb record overlaps its hash tables")
            if klen == len(key) and self._read(record_pos + 8, klen) == key:
                return self._read(record_pos + 8 + klen, dlen)
        return None

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every record in file order (for dumps and consistency checks)."""
        end = min(_pair(self._header, i)[0] for i in range(0, _HEADER, 8))
        if end < _HEADER or end > self._size:
            raise CorruptData(f"{self.path}: cdb header out of bounds")
        data = self._read(_HEADER, end - _HEADER)
        records = []
        pos = 0
        while pos < len(data):
            if pos + 8 > len(data):
                raise CorruptData(f"{self.path}: truncated cdb record")
            klen, dlen = _pair(data, pos)
            if pos + 8 + klen + dlen > len(data):
                raise CorruptData(f"{self.path}: truncated cdb record")
            records.append((data[pos + 8:pos + 8 + klen], data[pos + 8 + klen:pos + 8 + klen + dlen]))
            pos += 8 + klen + dlen
        return records


def lookup(path: str, key: bytes) -> bytes | None:
    """One lookup in a fresh reader (the hot-path case)."""
    with CdbReader(path) as reader:
        return reader.get(key)
