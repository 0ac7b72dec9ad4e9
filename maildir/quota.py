"""Maildir++ quotas as vpopmail and Courier keep them: quota strings and ``maildirsize``.

Quota strings follow vpopmail's ``format_maildirquota`` (``10M`` -> ``10485760S``), with two
defects fixed: ``G`` is a unit (C turned ``1G`` into ``1S``) and a lowercase ``c`` marks a count.
:func:`deliver_with_quota` is the quota side of every delivery (vdelivermail and vpopbull).
Hot-path safe: imports only ``errno``, ``os``, ``stat``, ``time`` and the error classes.
"""
import errno
import posix
import stat
import time

from vpopmail.errors import VpopmailError
from vpopmail.fsutil import atomic_write, dirname, exists, join, remember

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

NOQUOTA = "NOQUOTA"
MAILDIRSIZE = "maildirsize"
#: the Maildir++ folder whose messages no quota counts
TRASH = ".Trash"
LLONG_MAX = 2**63 - 1
#: maildirsize is recalculated at this size, or when older than STALE_SECONDS
RECALC_SIZE = 5120
STALE_SECONDS = 15 * 60
_UNITS = {"k": 1024, "m": 1048576, "g": 1073741824}


def _strtoll(text: str) -> int:
    """C ``strtoll(text, 0, 10)``: leading blanks, a sign, then digits; 0 if none."""
    text = text.lstrip(" \t\n\r\f\v")
    sign = 1
    if text[:1] in ("+", "-"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    digits = len(text) - len(text.lstrip("0123456789"))
    if not digits:
        return 0
    value = int(text[:min(digits, 20)]) if digits <= 19 else LLONG_MAX  # C saturates
    return sign * min(value, LLONG_MAX)


def format_quota(text: str) -> str:
    """Normalise a quota as vpopmail stores it: ``NOQUOTA``, ``<n>S``, ``<m>C``, ``<n>S,<m>C``,
    or ``""`` (no usable limit)."""
    if text == NOQUOTA:
        return NOQUOTA
    size = count = 0
    for part in text.split(","):
        if part[-1:] in ("C", "c"):
            count = _strtoll(part[:-1])
            continue
        if part[-1:] in ("S", "s"):
            part = part[:-1]
        if part[-1:] in ("B", "b"):
            part = part[:-1]
        size = min(_strtoll(part) * _UNITS.get(part[-1:].lower(), 1), LLONG_MAX)
    size, count = max(size, 0), max(count, 0)
    if size and count:
        return f"{size}S,{count}C"
    if size:
        return f"{size}S"
    return f"{count}C" if count else ""


#: what may follow a quota part's number: a size unit, ``B`` and ``S`` each optional; or ``C``
QUOTA_SUFFIXES = frozenset({u + b + s for u in ("", "K", "M", "G") for b in ("", "B")
                            for s in ("", "S")} | {"C"})


def quota_text(text: str) -> str:
    """The stored form (:func:`format_quota`) of a quota an operator typed, read whole: each
    comma-separated part is digits, then (blanks allowed around) one of QUOTA_SUFFIXES in any
    case, at most one size and one count (``10M``, ``10 MB ``, ``1000000S``, ``5M,100C``);
    ``""`` for other text, which C's reader would read otherwise than written: up to a stray
    character (``10Q``, ``1.5G``, ``1e9``, ``5 000 000``: 10 bytes, 1 GB, 1 byte, 5 bytes), a
    count with a blank after it as a size (``100C `` as 100 bytes, ``10M `` as 10), or the
    last of two sizes (``5M,1000C,3``: 3 bytes)."""
    parts = [part.strip(" \t") for part in text.split(",")]
    counts = []
    for part in parts:
        digits = len(part) - len(part.lstrip("0123456789"))
        suffix = part[digits:].lstrip(" \t").upper()
        if not digits or suffix not in QUOTA_SUFFIXES:
            return ""
        counts.append(suffix == "C")
    if len(set(counts)) != len(counts):
        return ""
    return format_quota(",".join(parts))


def record_quota(stored: str) -> str:
    """The quota a user record's ``stored`` text means to a delivery, as C vdelivermail reads
    it (``format_maildirquota``): ``50M`` is ``52428800S``, a bare number is bytes. Records
    written by older vpopmail versions, control panels or by hand hold such forms; taken raw,
    ``50M`` was a 50-byte limit (every message bounced) and ``5000000`` a maildirsize quota line
    that Courier and Dovecot do not read. ``NOQUOTA`` and ``""`` stay as they are; text that
    sets no limit is ``NOQUOTA``."""
    if stored in ("", NOQUOTA):
        return stored
    return format_quota(stored) or NOQUOTA


#: quota string -> its limits: a delivery asks up to five times, a server worker for each one
_limits: dict[str, tuple[int, int]] = {}
PARSED_QUOTAS = 256


def parse_limits(quota: str) -> tuple[int, int]:
    """(size limit, count limit) of a stored quota string; 0 means no limit of that kind.

    As vpopmail's qcalc: a number followed by ``C`` is a count, any other number a size.
    ``NOQUOTA`` and ``""`` give (0, 0).
    """
    known = _limits.get(quota)
    if known is not None:
        return known
    size = count = 0
    for part in quota.split(","):
        number = _strtoll(part)
        rest = part.lstrip(" \t+-0123456789")
        if rest[:1] == "C":
            count = number
        elif part.strip(" \t").lstrip("+-")[:1] in tuple("0123456789"):
            size = number
    remember(_limits, quota, (size, count), PARSED_QUOTAS)
    return size, count


def has_quota(quota: str) -> bool:
    """True when ``quota`` sets a size or count limit."""
    return parse_limits(quota) != (0, 0)


def _message_size(name: str, path: str) -> int | None:
    """Size from the ``,S=`` tag before the info part, the digits that follow it as Courier
    reads them (``,S=12ab`` is 12, ``,S=`` 0), else from stat (None if it vanished)."""
    base = name.split(":", 1)[0]
    tag = base.rfind(",S=")
    if tag >= 0:
        rest = base[tag + 3:]
        digits = len(rest) - len(rest.lstrip("0123456789"))
        return int(rest[:digits]) if digits else 0
    try:
        return posix.stat(path).st_size
    except OSError:
        return None


def _is_trashed(name: str) -> bool:
    """The ``T`` flag among the leading upper-case flags of a ``:2,`` info part."""
    info = name.partition(":2,")[2]
    run = len(info) - len(info.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    return "T" in info[:run]


#: directories that cannot be listed for these reasons count as empty; any other error (EIO)
#: fails the count rather than write a usage that is too low
_SKIPPED_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EACCES)


def folders(maildir: str) -> list[str]:
    """The Maildir and each of its Maildir++ ``.Folder`` directories (``.Trash`` too)."""
    try:
        entries = sorted(posix.listdir(maildir))
    except OSError as exc:
        if exc.errno not in _SKIPPED_ERRNOS:
            raise
        entries = []
    return [maildir, *(join(maildir, entry) for entry in entries
                       if entry.startswith(".") and entry not in (".", ".."))]


def counted_dirs(maildir: str, listed: list[str] | None = None) -> list[str]:
    """``new`` and ``cur`` of the Maildir and of each ``.Folder`` except ``.Trash`` (of
    ``listed``, :func:`folders`' list, when given)."""
    return [join(folder, sub) for folder in (folders(maildir) if listed is None else listed)
            if folder == maildir or counted(folder) for sub in ("new", "cur")]


def counted(maildir: str) -> bool:
    """Whether what is in ``maildir`` counts toward the quota: not in a ``.Trash`` folder. A
    delivery there is neither held to the quota nor added to ``maildirsize``, as Courier's
    deliverquota does."""
    return folder_name(maildir) != TRASH


def scan_usage(maildir: str, dirs: list[str] | None = None) -> tuple[int, int]:
    """(bytes, messages) actually in the Maildir (in ``dirs``, its :func:`counted_dirs`, when
    given), as Maildir++ counts them. Raises OSError when a directory cannot be read for
    another reason than absence or permissions."""
    total = count = 0
    for directory in counted_dirs(maildir) if dirs is None else dirs:
        try:
            names = posix.listdir(directory)
        except OSError as exc:
            if exc.errno not in _SKIPPED_ERRNOS:
                raise
            continue
        for name in names:
            if name.startswith(".") or _is_trashed(name):
                continue
            size = _message_size(name, join(directory, name))
            if size is not None:
                total += size
                count += 1
    return total, count


def write_maildirsize(maildir: str, quota: str, usage: tuple[int, int], uid: int | None = None,
                      gid: int | None = None) -> None:
    """Replace ``maildirsize`` with the quota line and one usage line, atomically (via tmp/)."""
    from maildir.maildir import hostname

    data = f"{quota}\n{usage[0]} {usage[1]}\n".encode()
    staged = join(maildir, "tmp",
                  f"{int(time.time())}.{posix.getpid()}_NeWmAiLdIrSiZe.{hostname()}")
    atomic_write(join(maildir, MAILDIRSIZE), data, 0o600, uid, gid, tmp=staged)


class SizeFile:
    """What one read of ``maildirsize`` found: its quota line, the summed usage, how many data
    lines it has, the file's size and age, and whether what was read ends with a newline
    (the recalculation triggers)."""

    __slots__ = ("quota", "bytes", "messages", "lines", "file_size", "mtime", "complete")

    def __init__(self, quota: str, total: int, count: int, lines: int, file_size: int,
                 mtime: float, complete: bool) -> None:
        self.quota = quota
        self.bytes = total
        self.messages = count
        self.lines = lines
        self.file_size = file_size
        self.mtime = mtime
        self.complete = complete


#: Maildir -> (the bytes of its maildirsize summed last, up to the end of a line, and their sums):
#: a process that delivers to a Maildir again (a server worker) sums only the lines appended
#: since, after checking that the rest is byte for byte what it summed
_summed: dict[str, tuple[bytes, int, int, int]] = {}
SUMMED_MAILDIRS = 64


def load_maildirsize(maildir: str) -> SizeFile | None:
    """Read ``maildirsize`` (never through a symlink, never waiting on a FIFO), or None if
    absent, not a regular file or unparsable.

    Values are summed as C's unsigned ``%llu`` does, so negative lines written by POP/IMAP
    servers subtract correctly.
    """
    try:
        fd = posix.open(join(maildir, MAILDIRSIZE),
                        posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_NONBLOCK | posix.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = posix.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        data = posix.read(fd, RECALC_SIZE)
    except OSError:
        return None
    finally:
        posix.close(fd)
    first = data.find(b"\n") + 1
    if not first:
        return None
    known = _summed.get(maildir)
    if known is not None and data.startswith(known[0]):
        done, sums = len(known[0]), known[1:]
    else:
        done, sums = first, (0, 0, 0)
    whole = data.rfind(b"\n") + 1  # what follows is a line being appended, or junk
    summed = _sum_lines(data[done:whole], *sums)
    if summed is None:
        return None
    remember(_summed, maildir, (data[:whole], *summed), SUMMED_MAILDIRS)
    found = _sum_lines(data[whole:], *summed)
    if found is None:
        return None
    total, count, rows = found
    return SizeFile(data[:first - 1].decode("ascii", "replace").strip(), total, count, rows,
                    st.st_size, st.st_mtime, whole == len(data))


def _sum_lines(data: bytes, total: int, count: int, rows: int) -> tuple[int, int, int] | None:
    """The sums with the ``size count`` lines of ``data`` added (blank lines skipped), or None
    if one is not numbers."""
    for line in data.split(b"\n"):
        fields = line.split()
        if not fields:
            continue
        try:
            total += int(fields[0])
            count += int(fields[1]) if len(fields) > 1 else 0
        except ValueError:
            return None
        rows += 1
    return total, count, rows


def read_maildirsize(maildir: str) -> tuple[str, int, int, int] | None:
    """(quota line, bytes, messages, data lines) from ``maildirsize``, or None if absent/unusable."""
    found = load_maildirsize(maildir)
    return None if found is None else (found.quota, found.bytes, found.messages, found.lines)


def trimmed(maildir: str) -> str:
    """``maildir`` without its trailing ``/`` and ``.`` components (``a/.Spam/./`` is
    ``a/.Spam``), so that its last component is the directory's name."""
    while True:
        maildir = maildir.rstrip("/")
        if not maildir.endswith("/."):
            return maildir or "/"
        maildir = maildir[:-1]


def folder_name(maildir: str) -> str:
    """The Maildir++ folder name (``.Spam``) that ``maildir`` ends in, else ``""``."""
    name = trimmed(maildir).rpartition("/")[2]
    return name if name.startswith(".") and name not in (".", "..") else ""


def quota_root(maildir: str) -> str:
    """The Maildir whose ``maildirsize`` counts ``maildir``: the parent of a ``maildirfolder``."""
    maildir = trimmed(maildir)
    if exists(join(maildir, "maildirfolder")):
        return dirname(maildir)
    return maildir


def _newest_mtime(dirs: list[str]) -> int:
    newest = 0
    for directory in dirs:
        try:
            newest = max(newest, posix.stat(directory).st_mtime_ns)
        except OSError:
            continue
    return newest


def recalculate(maildir: str, quota: str, uid: int | None = None,
                gid: int | None = None) -> tuple[int, int]:
    """Count the Maildir afresh and replace ``maildirsize`` with one line; returns the usage.

    If a delivery changes a counted directory during the scan, the scan is repeated (up to
    three times), as the Maildir++ text asks. Files a crashed writer left in the ``tmp/`` of
    the Maildir or of one of its folders more than 36 hours ago are removed on the way
    (:func:`maildir.maildir.clean_tmp`).
    """
    from maildir.maildir import clean_tmp

    for _ in range(3):
        listed = folders(maildir)
        dirs = counted_dirs(maildir, listed)
        before = _newest_mtime(dirs)
        usage = scan_usage(maildir, dirs)
        if _newest_mtime(dirs) == before:
            break
    for folder in listed:  # housekeeping while the Maildir is being scanned anyway
        clean_tmp(folder)
    write_maildirsize(maildir, quota, usage, uid, gid)
    return usage


def is_over(quota: str, usage: tuple[int, int], size: int, count: int = 1) -> bool:
    """vpopmail's predicate: over iff used + size > size limit or used + count > count limit."""
    size_limit, count_limit = parse_limits(quota)
    return ((size_limit > 0 and usage[0] + size > size_limit)
            or (count_limit > 0 and usage[1] + count > count_limit))


def check_quota(maildir: str, quota: str, size: int, count: int = 1,
                now: float | None = None) -> tuple[bool, int]:
    """(over quota with this message?, percent used before it) for a delivery of ``size``
    bytes counted in ``maildir`` (the Maildir itself for a delivery into one of its folders:
    :func:`quota_root`) whose quota is ``quota``.

    ``maildirsize`` is recalculated as vpopmail does (missing, >= 5120 bytes, older than 15
    minutes, or over quota with more than one line), when its quota line is not ``quota``, so
    readers such as Dovecot always see the current limit, and when it is damaged: a total
    below zero (recounted as Courier does: believed, it let any message in), or a last line
    without its newline (the next line appended would run into it: ``100 1`` + ``72 1`` read
    as 100 bytes in 172 messages).
    """
    if not has_quota(quota):
        return False, 0
    found = load_maildirsize(maildir)
    now = time.time() if now is None else now
    usage = None
    if (found is not None and found.file_size < RECALC_SIZE and now - found.mtime <= STALE_SECONDS
            and found.quota == quota and found.bytes >= 0 and found.messages >= 0
            and found.complete):
        usage = (found.bytes, found.messages)
        if is_over(quota, usage, size, count) and found.lines != 1:
            usage = None
    if usage is None:
        usage = recalculate(maildir, quota)
    return is_over(quota, usage, size, count), usage_percent(quota, usage)


def add_usage(maildir: str, quota: str, size: int, count: int = 1,
              recount: bool = True) -> None:
    """Record a delivery in the ``maildirsize`` of ``maildir`` (the Maildir that counts it, as
    for :func:`check_quota`) with one appended ``"<size> <count>"`` line (one write, so
    concurrent appenders never interleave); a missing file is recalculated instead (with
    ``recount``; else none is made).

    A short append (the disk filled up mid-line) would leave a partial line that the next
    append runs into (``80`` + ``63 1`` reads as 8063 bytes), so the file is removed instead:
    the next delivery recalculates it. Raises OSError then, as for a failed write.
    """
    path = join(maildir, MAILDIRSIZE)
    try:
        fd = posix.open(path, posix.O_WRONLY | posix.O_APPEND | posix.O_NOFOLLOW | posix.O_NONBLOCK
                        | posix.O_CLOEXEC)
    except FileNotFoundError:
        if recount:
            recalculate(maildir, quota)
        return
    line = f"{size} {count}\n".encode()
    try:
        written = posix.write(fd, line)
    finally:
        posix.close(fd)
    if written != len(line):
        try:
            posix.unlink(path)
        except FileNotFoundError:
            pass
        raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes), removed "
                      "for recalculation", path)


def count_usage(maildir: str, quota: str, size: int, recount: bool = True) -> str:
    """:func:`add_usage` after a delivery that is done whatever happens here: ``""`` when
    recorded, else why not (the next check recalculates)."""
    try:
        add_usage(maildir, quota, size, recount=recount)
    except (OSError, VpopmailError) as exc:
        return str(exc)
    return ""


def deliver_with_quota(maildir: str, quota: str, size: int, write: "Callable[[], int]",
                       notice: "Callable[[bool, int], None] | None" = None,
                       keep_count: bool = False) -> tuple[bool, str]:
    """One delivery of ``size`` bytes counted in ``maildir`` (the Maildir whose
    ``maildirsize`` counts it: :func:`check_quota`) under ``quota``: check, write, count.

    With a limit, the usage is checked (:func:`check_quota`; OSError if it cannot be counted,
    before anything is written) and ``notice(over, percent used)`` is called (for a warning;
    it may raise to end the delivery). Over the limit returns ``(False, "")`` and writes
    nothing. Otherwise ``write()`` delivers and returns the size Maildir++ counts, which is
    added to ``maildirsize``; returns ``(True, "")``, or ``(True, why)`` when that count
    failed (:func:`count_usage`). Without a limit, ``keep_count`` adds the delivery to a
    ``maildirsize`` that is there (Dovecot's or Courier's, or an earlier quota's), as C
    vdelivermail does, so that its readers' totals stay right; none is made."""
    if not has_quota(quota):
        written = write()
        return True, count_usage(maildir, quota, written, recount=False) if keep_count else ""
    over, percent = check_quota(maildir, quota, size)
    if notice is not None:
        notice(over, percent)
    if over:
        return False, ""
    return True, count_usage(maildir, quota, write())


def usage_percent(quota: str, usage: tuple[int, int]) -> int:
    """vpopmail's percentage: the larger of bytes and count used, integer division, 100 if over."""
    size_limit, count_limit = parse_limits(quota)
    percents = [100 if used > limit else used * 100 // limit
                for used, limit in zip(usage, (size_limit, count_limit)) if limit > 0]
    return max(percents, default=0)
