"""D. J. Bernstein's constant database: a lean, validating reader and a guarded writer.

The reader is used on the hot paths: one ``pread`` of the 2 KiB header and a few small reads per
lookup, no mmap, no struct. A cdb is laid out as ``header | records | table 0 | ... | table 255``,
each hash table right after the one before and the last ending the file, and every writer of
the files read here (cdbmake, qmail-newu, tcprules, tinycdb, :mod:`vpopmail.cdbwrite`) makes each
table twice as many slots as it has records. The reader checks what a lookup follows against
that: the header's total, the entry of the key's table and its neighbours, the table's count of
empty slots, each record's bounds and, before answering "absent", that each slot it passed holds
the hash of its own key. Damage — a file zero-filled by a crash before its blocks were written,
truncated, or overwritten in part — raises :class:`CorruptData` (a temporary, local fault), not
"key not found".

Writing lives in :mod:`vpopmail.cdbwrite` so that readers never import pure-cdb.
"""
import errno
import posix
import stat

from vpopmail.errors import CorruptData
from vpopmail.fsutil import remember, status

HEADER = 2048
#: bytes read at a record: its lengths, and the whole of a short key and value
_CHUNK = 256


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

    __slots__ = ("path", "status", "_fd", "_size", "_header", "_end")

    def __init__(self, path: str) -> None:
        self.path = path
        # every cdb read here is replaced by rename, never a link: one the domain owner plants
        # (vpasswd.cdb to a root-only file) is not followed, nor is a FIFO waited on
        self._fd = posix.open(path, posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_NONBLOCK
                              | posix.O_CLOEXEC)
        try:
            st = posix.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            #: what the file was when opened (see :func:`lookup`)
            self.status = status(st)
            self._size = st.st_size
            self._header = posix.pread(self._fd, HEADER, 0)
            if len(self._header) < HEADER:
                raise CorruptData(f"{path}: truncated cdb ({self._size} bytes)")
            #: where the records end: the first table
            self._end = _pair(self._header)[0]
            last, slots = _pair(self._header, HEADER - 8)
            if self._end < HEADER or last + (slots << 3) != self._size:
                raise CorruptData(f"{path}: damaged cdb header or truncated file "
                                  f"({self._size} bytes)")
        except BaseException:
            posix.close(self._fd)
            raise

    def __enter__(self) -> "CdbReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            posix.close(self._fd)
            self._fd = -1

    def _corrupt(self, what: str) -> CorruptData:
        return CorruptData(f"{self.path}: damaged cdb ({what})")

    def _read(self, offset: int, length: int) -> bytes:
        data = posix.pread(self._fd, length, offset)
        if len(data) != length:
            raise CorruptData(f"{self.path}: cdb file shrank while being read")
        return data

    def _table(self, at: int) -> tuple[int, int]:
        """Position and slot count of table ``at`` (0-255), checked to follow table ``at - 1``
        and to be followed by table ``at + 1`` (or the end of the file)."""
        pos, slots = _pair(self._header, at << 3)
        end = pos + (slots << 3)
        if at:
            before, before_slots = _pair(self._header, (at - 1) << 3)
            if before + (before_slots << 3) != pos:
                raise self._corrupt(f"header entry {at}")
        if end != (self._size if at == 255 else _pair(self._header, (at + 1) << 3)[0]) \
                or pos < self._end or end > self._size:
            raise self._corrupt(f"header entry {at}")
        return pos, slots

    def _record(self, pos: int) -> tuple[int, bytes]:
        """The key length and the key + data of the record at ``pos``, checked to lie among
        the records (one read for the usual short record)."""
        if pos < HEADER or pos + 8 > self._end:
            raise self._corrupt("slot points outside the records")
        chunk = self._read(pos, min(_CHUNK, self._end - pos))
        klen, dlen = _pair(chunk)
        if pos + 8 + klen + dlen > self._end:
            raise self._corrupt("record runs past the records")
        if 8 + klen + dlen > len(chunk):
            return klen, self._read(pos + 8, klen + dlen)
        return klen, chunk[8:8 + klen + dlen]

    def get(self, key: bytes) -> bytes | None:
        """The first value stored for ``key``, or None (only from a table that checks out)."""
        h = cdb_hash(key)
        table_pos, slots = self._table(h & 0xFF)
        if not slots:
            return None
        table = self._read(table_pos, slots << 3)
        # a zero is a zero in either byte order: the count needs no byte swap
        if slots & 1 or memoryview(table).cast("I")[1::2].tolist().count(0) != slots >> 1:
            raise self._corrupt("hash table is not half full")
        start = (h >> 8) % slots
        passed = []
        for probe in range(slots):
            at = ((start + probe) % slots) << 3
            slot_hash, pos = _pair(table, at)
            if not pos:
                break
            if slot_hash == h:
                klen, data = self._record(pos)
                if data[:klen] == key:
                    return data[klen:]
            passed.append((slot_hash, pos))
        for slot_hash, pos in passed:  # any of them may have been ours before the damage
            klen, data = self._record(pos)
            if (slot_hash ^ h) & 0xFF or cdb_hash(data[:klen]) != slot_hash:
                raise self._corrupt("slot does not match its record")
        return None

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every record in file order (for dumps and consistency checks)."""
        for at in range(256):
            self._table(at)
        data = self._read(HEADER, self._end - HEADER)
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


#: (path, key, effective uid, gid) -> (the file's status when read, the value found): what this
#: process looked up last with those ids. A server worker asked for the same key again (the
#: domain of every delivery and login, a user who logs in or gets mail again) answers from here
#: while the file's :func:`~vpopmail.fsutil.status` is what it was, one lstat instead of the open
#: and reads; any change, even one that keeps the size, reads the file again (every writer of
#: a cdb, ours, qmail-newu, tcprules, cdbmake, replaces it by rename). A one-shot program,
#: which never asks twice, pays no stat.
_found: dict[tuple[str, bytes, int, int], tuple[tuple[int, ...], bytes | None]] = {}
FOUND_KEYS = 4096


def lookup(path: str, key: bytes) -> bytes | None:
    """The first value stored for ``key`` in the cdb at ``path``, or None."""
    memo = (path, key, posix.geteuid(), posix.getegid())
    known = _found.get(memo)
    if known is not None:
        try:
            if status(posix.stat(path, follow_symlinks=False)) == known[0]:
                return known[1]
        except OSError:
            pass  # gone or unreachable: the reader says why
    with CdbReader(path) as reader:
        value = reader.get(key)
    remember(_found, memo, (reader.status, value), FOUND_KEYS)
    return value
