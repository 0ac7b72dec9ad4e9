"""Writing cdb files with pure-cdb, guarded against its Writer's lost-record bug.

pure-cdb 4.0.0's ``Writer.finalize`` treats a hash-table slot whose stored *hash* is 0 as free,
so a later key probing that slot overwrites a record whose cdb hash happens to be 0 (key
``b'V{4.vpop.;.0'`` followed by ``b'k1197'`` loses the first). :class:`CdbWriter` places records
by position instead, which is never 0 in an occupied slot. The output is byte-identical to
tinycdb's ``cdb -c`` and qmail's cdbmake for the same records in the same order.
"""
from __future__ import annotations

import io
from collections.abc import Iterable

from cdblib import Writer


class CdbWriter(Writer):  # type: ignore[misc]
    """pure-cdb's Writer with correct slot placement (a slot is free when its position is 0)."""

    def finalize(self) -> None:
        index = []
        for table in self._unordered:
            length = len(table) * 2
            ordered = [(0, 0)] * length
            for h, pos in table:
                where = (h >> 8) % length
                while ordered[where][1]:
                    where = (where + 1) % length
                ordered[where] = (h, pos)
            index.append((self.fp.tell(), length))
            self.fp.write(b"".join(self.write_pair(*pair) for pair in ordered))
        self.fp.seek(0)
        self.fp.write(b"".join(self.write_pair(*pair) for pair in index))
        self.fp = None


def build(records: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The complete cdb image for (key, value) pairs, stored in the given order."""
    buffer = io.BytesIO()
    writer = CdbWriter(buffer, strict=True)
    for key, value in records:
        writer.put(key, value)
    writer.finalize()
    return buffer.getvalue()
