"""Hashed directories for users and domains (vpopmail's ``USERS_BIG_DIR``) and ``.dir-control``.

The n-th allocation goes directly into the parent for n < 100, then into buckets of 100 named
from the 62-character alphabet ``0-9A-Za-z``: one level (``0`` ... ``z``), then two (``0/0`` ...
``z/z``), then three. As in C, the current bucket moves on to the next one each time the count
reaches a multiple of 100, so after deletions it keeps going forward. Freed buckets are listed in
``.dir_control_free`` and reused first, without moving the current bucket.
Callers hold the lock that protects the directory (the domain's or the assign lock).
"""
from __future__ import annotations

import os

from vpopmail.errors import CouldNotUpdateFile, CorruptData
from vpopmail.fsutil import atomic_write, make_dir_inside, read_regular

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PER_BUCKET = 100
CONTROL = ".dir-control"
FREE_LIST = ".dir_control_free"
_LEVEL1 = len(ALPHABET)
_LEVEL2 = _LEVEL1 * _LEVEL1
_LEVEL3 = _LEVEL2 * _LEVEL1


def bucket_for(n: int) -> str:
    """The bucket path for the n-th allocation (1-based): '' (flat), 'x', 'x/y' or 'x/y/z'."""
    index = n // PER_BUCKET - 1
    if index < 0:
        return ""
    if index < _LEVEL1:
        return ALPHABET[index]
    index -= _LEVEL1
    if index < _LEVEL2:
        return f"{ALPHABET[index // _LEVEL1]}/{ALPHABET[index % _LEVEL1]}"
    index -= _LEVEL2
    if index < _LEVEL3:
        return (f"{ALPHABET[index // _LEVEL2]}/{ALPHABET[index // _LEVEL1 % _LEVEL1]}/"
                f"{ALPHABET[index % _LEVEL1]}")
    raise CouldNotUpdateFile("hashed directory tree is full")


def _position(bucket: str) -> int | None:
    """The 0-based place of ``bucket`` in :func:`bucket_for`'s sequence (-1 for flat), or None
    for text that is no bucket."""
    parts = bucket.split("/") if bucket else []
    if len(parts) > 3 or any(len(p) != 1 or p not in ALPHABET for p in parts):
        return None
    offset = {0: -1, 1: 0, 2: _LEVEL1, 3: _LEVEL1 + _LEVEL2}[len(parts)]
    index = 0
    for part in parts:
        index = index * _LEVEL1 + ALPHABET.index(part)
    return offset + index


def _next_bucket(control: DirControl) -> str:
    """The bucket of one more allocation, as C's ``inc_dir_control`` picks it: the current one,
    or the one after it when the count (already raised) is a multiple of 100. A current bucket
    that is no bucket counts as where the count says."""
    here = _position(control.the_dir)
    if here is None:
        return bucket_for(control.cur_users)
    if control.cur_users % PER_BUCKET:
        return control.the_dir
    return bucket_for((here + 2) * PER_BUCKET)


def split_bucket(parent: str) -> tuple[str, str]:
    """(root, bucket) of the directory that holds an entry: ``/d/domains/0/1`` -> ``/d/domains``,
    ``0/1``. Bucket components are single characters; a root's name never is."""
    parts: list[str] = []
    while len(parts) < 3 and len(os.path.basename(parent)) == 1 and os.path.basename(parent) in ALPHABET:
        parts.insert(0, os.path.basename(parent))
        parent = os.path.dirname(parent)
    return parent, "/".join(parts)


def find_entry(root: str, name: str) -> str | None:
    """The real directory ``name`` (not a symbolic link) in ``root`` or one of its buckets
    (real directories too), down to three levels, if there is one."""
    pending = [(root, 0)]
    while pending:
        directory, depth = pending.pop()
        candidate = os.path.join(directory, name)
        if os.path.isdir(candidate) and not os.path.islink(candidate):
            return candidate
        if depth < 3:
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            pending += [(os.path.join(directory, n), depth + 1) for n in names
                        if len(n) == 1 and n in ALPHABET
                        and not os.path.islink(os.path.join(directory, n))]
    return None


class DirControl:
    """The eight lines of ``.dir-control``."""

    __slots__ = ("cur_users", "level_cur", "level_max", "level_start", "level_end", "level_mod",
                 "level_index", "the_dir")

    def __init__(self) -> None:
        self.cur_users = 0
        self.level_cur = 0
        self.level_max = 3
        self.level_start = [0, 0, 0]
        self.level_end = [61, 61, 61]
        self.level_mod = [0, 2, 2]
        self.level_index = [0, 0, 0]
        self.the_dir = ""

    @classmethod
    def parse(cls, text: str, source: str = CONTROL) -> DirControl:
        control = cls()
        lines = text.split("\n")
        try:
            control.cur_users = int(lines[0])
            control.level_cur = int(lines[1])
            control.level_max = int(lines[2])
            control.level_start = [int(x) for x in lines[3].split()]
            control.level_end = [int(x) for x in lines[4].split()]
            control.level_mod = [int(x) for x in lines[5].split()]
            control.level_index = [int(x) for x in lines[6].split()]
            control.the_dir = lines[7] if len(lines) > 7 else ""
        except (IndexError, ValueError):
            raise CorruptData(f"{source}: unreadable .dir-control") from None
        if control.cur_users < 0 or any(len(v) != 3 for v in (
                control.level_start, control.level_end, control.level_mod, control.level_index)):
            raise CorruptData(f"{source}: unreadable .dir-control")
        return control

    def render(self) -> str:
        def row(values: list[int]) -> str:
            return " ".join(str(v) for v in values)

        return (f"{self.cur_users}\n{self.level_cur}\n{self.level_max}\n{row(self.level_start)}\n"
                f"{row(self.level_end)}\n{row(self.level_mod)}\n{row(self.level_index)}\n"
                f"{self.the_dir}\n")

    def point_at(self, bucket: str) -> None:
        """Record ``bucket`` as the current directory, as C keeps level_cur/level_index."""
        parts = bucket.split("/") if bucket else []
        self.level_cur = max(len(parts) - 1, 0)
        self.level_index = [ALPHABET.index(p) for p in parts] + [0] * (3 - len(parts))
        self.the_dir = bucket


def read(directory: str) -> DirControl:
    """The control state of ``directory`` (defaults if it has none yet)."""
    path = os.path.join(directory, CONTROL)
    try:
        return DirControl.parse(read_regular(path)[0].decode("ascii"), path)
    except FileNotFoundError:
        return DirControl()
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptData(f"{path}: {exc}") from None


def write(directory: str, control: DirControl, uid: int | None, gid: int | None) -> None:
    atomic_write(os.path.join(directory, CONTROL), control.render().encode(), 0o600, uid, gid)


def allocate(directory: str, hashed: bool, uid: int | None, gid: int | None,
             count: int = 1, mode: int = 0o700) -> list[str]:
    """Reserve slots for ``count`` more entries in ``directory``; return their buckets
    ('' = flat), reusing freed buckets first. Bucket directories are created (mode, uid/gid),
    each a real directory (a symbolic link planted for one is :class:`OutsideDomain`);
    ``.dir-control`` is written once, however many slots are taken.
    """
    control = read(directory)
    free = _read_free(directory) if hashed else []
    reused = len(free)
    buckets = []
    for _ in range(count):
        control.cur_users += 1
        if not hashed:
            buckets.append("")
        elif free:
            buckets.append(free.pop(0))
        else:
            control.point_at(_next_bucket(control))
            buckets.append(control.the_dir)
    for bucket in dict.fromkeys(b for b in buckets if b):
        make_dir_inside(directory, os.path.join(directory, bucket), mode, uid, gid)
    if len(free) != reused:
        _write_free(directory, free, uid, gid)
    write(directory, control, uid, gid)
    return buckets


def release(directory: str, bucket: str, uid: int | None, gid: int | None) -> None:
    """Give back the slot of a deleted entry that lived in ``bucket``."""
    control = read(directory)
    control.cur_users = max(control.cur_users - 1, 0)
    write(directory, control, uid, gid)
    if bucket:
        _write_free(directory, _read_free(directory) + [bucket], uid, gid)


def _read_free(directory: str) -> list[str]:
    path = os.path.join(directory, FREE_LIST)
    try:
        entries = [line.strip() for line in read_regular(path)[0].decode("ascii").splitlines()]
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptData(f"{path}: {exc}") from None
    return [e for e in entries
            if e and all(len(p) == 1 and p in ALPHABET for p in e.split("/"))]


def _write_free(directory: str, entries: list[str], uid: int | None, gid: int | None) -> None:
    path = os.path.join(directory, FREE_LIST)
    atomic_write(path, "".join(e + "\n" for e in entries).encode(), 0o600, uid, gid)
