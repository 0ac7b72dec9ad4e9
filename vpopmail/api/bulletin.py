"""vpopbull's work: drop one message (a bulletin) into the Maildir ``new/`` of every user of
some domains, as a copy, a hard link or a symbolic link.

C vpopmail 5.4's vpopbull wrote ``<pw_dir>/Maildir/new/<time>.<pid>.<host>`` directly: one
name for every user of a domain, opened with ``fopen("w+")`` (an existing file of that name
was truncated), mode from the umask, no fsync, no quota check and no ``maildirsize`` update;
copies got a ``To: user@domain`` line in front of the file, links pointed at ``cwd/file``
(wrong for an absolute path). Here every copy is a durable Maildir delivery
(:func:`maildir.maildir.deliver`: O_EXCL tmp file, fsync, link into ``new/``, fsync of
``new/``); links get the same unique ``new/`` names, never replace an existing file, point at
an fsynced file (hard links: a copy the domain owner makes, 0600, in one user's ``tmp/``,
removed at the end) and are made durable by one ``syncfs`` per file system before the run
ends. Everything is owned by the domain's owner. An over-quota user is skipped and reported,
and what lands is counted in ``maildirsize`` as a delivery would be.
"""
from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from maildir import is_maildir
from maildir.maildir import deliver, discard, link_new, write_message, write_tmp
from maildir.quota import (deliver_with_quota, has_quota, is_over, load_maildirsize,
                           record_quota, scan_usage)
from vpopmail.api import Vpopmail
from vpopmail.assign import AssignEntry
from vpopmail.errors import BadInput, BadUid, DeliveryFailed, OverQuota, VpopmailError
from vpopmail.fsutil import OwnerIds
from vpopmail.names import split_address
from vpopmail.stores import VUser

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

COPY = "copy"
HARD_LINK = "hard link"
SYMLINK = "symbolic link"
#: how much of the file the header check reads
HEADER_LIMIT = 65536
#: outcomes reported for each user
DELIVERED, EXCLUDED, OVER_QUOTA, FAILED, LISTED = ("delivered", "excluded", "over quota",
                                                   "failed", "listed")


# the message ------------------------------------------------------------------------------

def check_message(head: bytes, source: str, whole: bool) -> None:
    """Raise :class:`BadInput` unless ``head`` (the start of the file; ``whole`` if it is all
    of it) opens a whole message: a header block of well-formed fields with ``From`` and
    ``Subject`` and without ``To`` (vpopbull adds ``To: user@domain`` to each copy)."""
    if not head:
        raise BadInput(f"{source} is empty")
    if head.startswith(b"From "):
        raise BadInput(f"{source} starts with an mbox 'From ' line, not a header field")
    lines = head.split(b"\n")
    if not whole:
        lines.pop()  # possibly cut in the middle
    names: set[bytes] = set()
    for number, raw in enumerate(lines, 1):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if number == 1:
                raise BadInput(f"{source} line 1 is a continuation line, not a header field")
            continue
        name, colon, _ = line.partition(b":")
        if not colon or not name or any(c <= 32 or c >= 127 for c in name):
            raise BadInput(f"{source} line {number} is not a header field: "
                           f"{line[:60].decode('utf-8', 'replace')!r} (a blank line must "
                           "separate the header from the body)")
        names.add(name.lower())
    else:
        if not whole:
            raise BadInput(f"{source}: no end of the header in its first {HEADER_LIMIT} bytes")
    missing = [n for n in ("From", "Subject") if n.lower().encode() not in names]
    if missing:
        raise BadInput(f"{source} has no {' and no '.join(missing)} header: a bulletin must be "
                       "a whole message")
    if b"to" in names:
        raise BadInput(f"{source} has a To header: remove it, vpopbull adds 'To: user@domain' "
                       "to each copy")


class Message:
    """The bulletin file, open and checked: its descriptor, absolute path and sizes."""

    __slots__ = ("path", "fd", "size", "rfc822_size", "st")

    def __init__(self, path: str, fd: int, size: int, rfc822_size: int,
                 st: os.stat_result) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.rfc822_size = rfc822_size
        self.st = st

    @classmethod
    def open(cls, path: str) -> "Message":
        """Open and check ``path``; OSError if it cannot be opened, BadInput if it is not a
        whole message."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BadInput(f"{path} is not a regular file")
            head = os.pread(fd, HEADER_LIMIT, 0)
            check_message(head, path, len(head) < HEADER_LIMIT)
            sink = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            try:
                size, rfc822_size = write_message(sink, b"", fd)
            finally:
                os.close(sink)
        except BaseException:
            os.close(fd)
            raise
        return cls(os.path.realpath(path), fd, size, rfc822_size, st)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# the exclude list and the domains ---------------------------------------------------------

def read_exclude(api: Vpopmail, path: str) -> set[str]:
    """The addresses of an exclude file (one per line; blank lines and ``#`` comments
    skipped), lower-cased, with alias domains resolved to their real domain. OSError if it
    cannot be read; BadInput for a line that is not an address."""
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        lines = fh.read().splitlines()
    found: set[str] = set()
    real: dict[str, str] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, domain = split_address(line) if "@" in line else ("", "")
        if not user or not domain or " " in line or "\t" in line:
            raise BadInput(f"{path} line {number}: {line!r} is not an email address")
        if domain not in real:
            try:
                entry = api.find_domain(domain)
            except VpopmailError:
                entry = None
            real[domain] = entry.real_domain if entry else domain
        found.add(f"{user}@{real[domain]}")
    return found


def select_domains(api: Vpopmail, names: list[str]) -> list[AssignEntry]:
    """The real domains to send to, each once: those named (an alias domain stands for its
    real domain; an unknown one raises DomainDoesNotExist before anything is sent), or with
    no names every domain of users/assign that has users (C walked every assign line, alias
    lines included, and so reached a domain once per alias)."""
    chosen: dict[str, AssignEntry] = {}
    if names:
        for name in names:
            entry = api.get_domain(name)
            chosen.setdefault(entry.real_domain, entry)
    else:
        for entry in api.domains():
            if not entry.is_alias and api.backend.has_users(entry):
                chosen.setdefault(entry.real_domain, entry)
    return list(chosen.values())


@contextmanager
def as_owner(entry: AssignEntry) -> Iterator[None]:
    """Work with the domain owner's effective ids, so that every file made belongs to it
    (root switches and switches back; anyone else must be that owner)."""
    if os.geteuid() not in (0, entry.uid):
        raise BadUid(f"running as uid {os.geteuid()}, but {entry.real_domain} belongs to "
                     f"uid {entry.uid}: run vpopbull as root or as uid {entry.uid}")
    with OwnerIds(entry.uid, entry.gid):
        yield


# sending ----------------------------------------------------------------------------------

class Summary:
    """What happened to the users of one run."""

    __slots__ = ("counts", "failures")

    def __init__(self) -> None:
        self.counts = {DELIVERED: 0, EXCLUDED: 0, OVER_QUOTA: 0, FAILED: 0, LISTED: 0}
        self.failures: list[tuple[str, str]] = []


#: report(address, outcome, detail) after each user
Report = Callable[[str, str, str], None]


class Bulletin:
    """One vpopbull run: ``message`` (None with ``dry_run`` and no file) sent by ``method`` to
    the users of the domains given to :meth:`send`, minus ``exclude``."""

    def __init__(self, api: Vpopmail, message: Message | None, method: str = COPY,
                 exclude: set[str] | None = None, dry_run: bool = False) -> None:
        if message is None and not dry_run:
            raise BadInput("no message to send")
        self.api = api
        self.message = message
        self.method = method
        self.exclude = exclude or set()
        self.dry_run = dry_run
        self.sync = api.config.delivery_file_sync
        self.summary = Summary()
        #: hard-link sources of the current domain: device -> (tmp path, its stat)
        self._masters: dict[int, tuple[str, os.stat_result]] = {}
        #: links made since the last sync: device -> a new/ directory on it
        self._unsynced: dict[int, str] = {}

    def plan(self, domains: list[AssignEntry]) -> list[tuple[AssignEntry, list[VUser]]]:
        """The users of each domain, after checking that each domain can be written as its
        owner (and, for symbolic links, that the owner can read the file) before anything is
        sent."""
        planned = []
        for entry in domains:
            with as_owner(entry):
                users = self.api.backend.list_users(entry)
                if self.method == SYMLINK and self.message and not self.dry_run:
                    try:
                        os.close(os.open(self.message.path, os.O_RDONLY | os.O_CLOEXEC))
                    except OSError as exc:
                        raise BadInput(f"{self.message.path}: uid {entry.uid} (owner of "
                                       f"{entry.real_domain}) cannot read it ({exc.strerror}); "
                                       "symbolic links need a file every mail reader can "
                                       "read: use -c or -h") from None
            planned.append((entry, users))
        return planned

    def send(self, entry: AssignEntry, users: list[VUser], report: Report) -> None:
        """Send to every user of one domain, as its owner, under the domain's lock (a
        vdeldomain meanwhile is waited for, and the domain then found gone: DomainDoesNotExist,
        nothing sent, rather than copies written into a directory being removed)."""
        with self.api.domain_lock(entry), as_owner(entry):
            try:
                for user in users:
                    address = f"{user.name}@{entry.real_domain}"
                    outcome, detail = self._one(entry, user, address)
                    self.summary.counts[outcome] += 1
                    if outcome == FAILED:
                        self.summary.failures.append((address, detail))
                    report(address, outcome, detail)
            finally:
                self._drop_masters()
            self._sync_links()

    def _sync_links(self) -> None:
        """Make the links of this domain durable: one ``syncfs`` per file system instead of
        an fsync of every ``new/`` (their targets were fsynced before the first link)."""
        pending, self._unsynced = self._unsynced, {}
        for directory in pending.values():
            try:
                syncfs(directory)
            except OSError as exc:
                raise DeliveryFailed(f"cannot sync the file system of {directory}: "
                                     f"{exc.strerror}; the links made may not survive a "
                                     "crash") from None

    def _one(self, entry: AssignEntry, user: VUser, address: str) -> tuple[str, str]:
        if address in self.exclude:
            return EXCLUDED, ""
        if self.dry_run:
            return self._estimate(user, address)
        try:
            if not user.dir or not is_maildir(os.path.join(user.dir, "Maildir")):
                user = self.api.ensure_home(entry, user)
            maildir = os.path.join(user.dir, "Maildir")
            header = f"To: {address}\n".encode("utf-8", "surrogateescape")
            assert self.message is not None
            size = self.message.size + (len(header) if self.method == COPY else 0)
            quota = record_quota(user.quota)
            try:
                delivered, failed = deliver_with_quota(maildir, quota, size,
                                                       lambda: self._write(maildir, header))
            except OverQuota:
                return OVER_QUOTA, "filesystem quota"
            if not delivered:
                return OVER_QUOTA, quota
            return (FAILED, failed) if failed else (DELIVERED, "")
        except (OSError, VpopmailError) as exc:
            return FAILED, str(exc)

    def _estimate(self, user: VUser, address: str) -> tuple[str, str]:
        """-n: would the user be over quota? (reads only)"""
        quota = record_quota(user.quota)
        if self.message is None or not has_quota(quota) or not user.dir:
            return LISTED, ""
        maildir = os.path.join(user.dir, "Maildir")
        found = load_maildirsize(maildir)
        usage = ((found.bytes, found.messages) if found and found.quota == quota
                 else scan_usage(maildir))
        size = self.message.size + (len(f"To: {address}\n".encode()) if self.method == COPY else 0)
        if is_over(quota, usage, size):
            return OVER_QUOTA, quota
        return LISTED, ""

    def _write(self, maildir: str, header: bytes) -> int:
        """Put the message into ``maildir``/new; returns the size Maildir++ counts."""
        assert self.message is not None
        message = self.message
        if self.method == COPY:
            return deliver(maildir, header, message.fd, self.sync).size
        if self.method == HARD_LINK:
            source, st = self._master(maildir)
            self._place(maildir, lambda final: os.link(source, final), st)
        else:
            self._place(maildir, lambda final: os.symlink(message.path, final), message.st)
        return message.size

    def _place(self, maildir: str, make: Callable[[str], None], st: os.stat_result) -> None:
        """Make a link in ``new/`` under vdelivermail's kind of name (never over an existing
        file), then make it durable."""
        assert self.message is not None
        link_new(maildir, make, st, self.message.size, self.message.rfc822_size)
        if self.sync:
            self._unsynced.setdefault(st_dev_of(f"{maildir}/new"), f"{maildir}/new")

    def _master(self, maildir: str) -> tuple[str, os.stat_result]:
        """The domain's hard-link source on the device of ``maildir``: one durable copy made
        in that Maildir's ``tmp/`` (owned by the domain owner, 0600), removed at the end."""
        assert self.message is not None
        device = os.stat(f"{maildir}/new").st_dev
        if device not in self._masters:
            staged = write_tmp(maildir, b"", self.message.fd, self.sync)
            self._masters[device] = (staged.path, staged.st)
        return self._masters[device]

    def _drop_masters(self) -> None:
        for path, _ in self._masters.values():
            discard(path)
        self._masters.clear()


def st_dev_of(path: str) -> int:
    return os.stat(path).st_dev


def syncfs(path: str) -> None:
    """Flush the file system holding ``path`` (Linux ``syncfs``, which reports write-back
    errors; ``sync`` where the C library has none)."""
    import ctypes

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = getattr(libc, "syncfs", None)
        if call is None:
            os.sync()
            return
        if call(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), path)
    finally:
        os.close(fd)


# progress ---------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on a terminal (redrawn at most ten times a second)."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.width = width
        self.done = 0
        self.start = time.monotonic()
        self._drawn = 0.0
        self._shown = False

    @staticmethod
    def wanted(total: int, threshold: int, stream: TextIO | None = None) -> bool:
        """Show one only on a terminal, and only for runs of at least ``threshold`` users."""
        stream = stream or sys.stderr
        try:
            return total >= threshold and stream.isatty()
        except (AttributeError, ValueError):
            return False

    def step(self, label: str, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._drawn >= 0.1 or self.done >= self.total:
            self._drawn = now
            self.draw(label)

    def draw(self, label: str) -> None:
        filled = self.width * self.done // self.total
        elapsed = time.monotonic() - self.start
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        text = (f"\r{label} [{'#' * filled}{'-' * (self.width - filled)}] "
                f"{self.done}/{self.total} {100 * self.done // self.total}% "
                f"{left:.0f} s left\x1b[K")
        self.stream.write(text)
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Remove the bar so that a line can be printed in its place."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = 0.0

    def finish(self, label: str) -> None:
        if self._shown or self.done:
            self.draw(label)
            self.stream.write("\n")
            self.stream.flush()
