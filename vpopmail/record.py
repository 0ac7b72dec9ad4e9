"""A base for small value classes with ``__slots__`` (dataclasses cost 13 ms to import)."""
TYPE_CHECKING = False  # the typing idiom without importing typing (hot path)
if TYPE_CHECKING:
    from typing import Self


class SlotRecord:
    """Equality, repr and copy-with-changes over the fields named in ``__slots__``."""

    __slots__: tuple[str, ...] = ()
    #: fields left out of repr (secrets)
    _hidden: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__
                           if f not in self._hidden)
        return f"{type(self).__name__}({fields})"

    def copy(self, **changes: object) -> "Self":
        """A new record with ``changes`` applied."""
        values = {f: getattr(self, f) for f in self.__slots__}
        values.update(changes)
        return type(self)(**values)
