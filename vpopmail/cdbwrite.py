"""Writing cdb files, with pure-cdb's hash and a guarded, faster table builder.

pure-cdb 4.0.0's ``Writer.finalize`` treats a hash-table slot whose stored *hash* is 0 as free,
so a later key probing that slot overwrites a record whose cdb hash happens to be 0 (key
``b'V{4.vpop.;.0'`` followed by ``b'k1197'`` loses the first). :func:`build` places records by
position instead, which is never 0 in an occupied slot, and assembles the file with a few
joins rather than three writes per record (a vadduser at 100k users rebuilds vpasswd.cdb).
The output is byte-identical to tinycdb's ``cdb -c`` and qmail's cdbmake for the same records
in the same order.
"""
from struct import Struct

_PAIR = Struct("<LL")
_HEADER = 2048
#: from this many records on, pure-cdb's C hash pays for its import (3 ms with collections)
C_HASH_FROM = 500


def build(records: list[tuple[bytes, bytes]]) -> bytes:
    """The complete cdb image for (key, value) pairs, stored in the given order."""
    if len(records) >= C_HASH_FROM:
        from cdblib import djb_hash
    else:  # a small file on a hot path (a roaming login rebuilding tcp.smtp.cdb)
        from vpopmail.cdb import cdb_hash as djb_hash
    pack = _PAIR.pack
    chunks: list[bytes] = []
    tables: list[list[tuple[int, int]]] = [[] for _ in range(256)]
    pos = _HEADER
    for key, value in records:
        h = djb_hash(key) & 0xFFFFFFFF
        tables[h & 0xFF].append((h, pos))
        chunks.append(pack(len(key), len(value)))
        chunks.append(key)
        chunks.append(value)
        pos += 8 + len(key) + len(value)
    if pos + 8 * 2 * sum(len(t) for t in tables) > 0xFFFFFFFF:
        raise ValueError("cdb would exceed 4 GiB")
    index = []
    for table in tables:
        length = len(table) * 2
        slots = [(0, 0)] * length
        for h, record in table:
            where = (h >> 8) % length
            while slots[where][1]:  # occupied: position 0 never is (pure-cdb tested the hash)
                where = (where + 1) % length
            slots[where] = (h, record)
        index.append(pack(pos, length))
        chunks.append(b"".join(pack(*slot) for slot in slots))
        pos += 8 * length
    return b"".join(index) + b"".join(chunks)
