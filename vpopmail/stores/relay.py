"""Roaming users (POP-before-SMTP): ``etc/open-smtp`` and the ``tcp.smtp.cdb`` tcpserver reads.

open-smtp has vpopmail's lines, ``<ip>:allow,RELAYCLIENT="",RBLSMTPD=""<TAB><unix time>``. The
cdb is compiled natively from ``etc/tcp.smtp`` followed by the open-smtp rules (byte-identical
to what tcprules makes of the same text) and replaced by rename, never rewritten in place.
An IPv4 client's rule goes into the cdb in both of tcpserver's spellings, ``a.b.c.d`` (what a
tcpserver without ``-6`` looks up) and ``::ffff:a.b.c.d`` (what the IPv6 build looks up under
``-6``, and only that), whichever the POP/IMAP server's TCPREMOTEIP had: the SMTP tcpserver
relays for the client with or without -6. open-smtp keeps one line per login address, as C.

C vpopmail lost IPs when many logins came at once (it gave up on its lock and wrote anyway, and
clearopensmtp took no lock). Here open-smtp changes only under ``open-smtp.lock``, which also
holds two generation counters: ``wanted``, bumped by every change the cdb must reflect, and
``built``, the generation the cdb was last compiled from. Compiles are serialised by
``tcp.smtp.cdb.lock``, and whoever gets it first compiles for everyone waiting: fifty
simultaneous logins from fifty new IPs cost a few compiles, and every IP is in the result.

With the SQL backend the IPs are rows of its ``relay`` table (shared by every mail host, as in C)
and open-smtp is not used; each host still compiles its own cdb, under the same locks. Which
one applies is vpopmail.stores.Stores.relay's choice.
"""
import os
import time

from vpopmail.config import Config
from vpopmail.errors import BadInput, CouldNotUpdateFile
from vpopmail.fsutil import FileLock, atomic_write, read_regular
from vpopmail.tcprules import compile_rules, ip_of_rule, rule_for_ip

TYPE_CHECKING = False  # the typing idiom without importing typing (hot path)
if TYPE_CHECKING:
    from vpopmail.stores.protocols import RelayRows

_COUNTERS = 42  # "%20d %20d\n": wanted, built
_MAPPED = b"::ffff:"  # an IPv4-mapped IPv6 address, as rule_for_ip writes it
_LIMIT = 1 << 30  # open-smtp: a regular file is read whatever its size (a line is ~55 bytes)


class RelayTable:
    """The open-smtp file, its lock, the static rules and the cdb of one installation."""

    def __init__(self, config: Config, timeout: float | None = None) -> None:
        self.open_smtp = config.home_path("open_smtp")
        self.tcp_smtp = config.home_path("tcp_smtp")
        self.cdb = config.home_path("tcp_smtp_cdb")
        self.owner = (config.uid, config.gid)
        self.rebuild_cdb = config.relay_rebuild_tcpserver
        self.sync = config.delivery_file_sync
        self.timeout = float(config.relay_lock_timeout if timeout is None else timeout)

    def _lock(self, path: str) -> FileLock:
        return FileLock(path, self.timeout, *self.owner)

    # -- open-smtp ----------------------------------------------------------------------------
    def entries(self) -> list[tuple[bytes, bytes]]:
        """(ip, line) for each line of open-smtp, in file order, the rule as vpopmail writes
        it; a line whose address is not an IP address is left out (see _entry), and so
        dropped at the next write. Only a regular file is read:
        a link, FIFO or device put in its place (etc/ is the vpopmail user's to add to) is a
        CouldNotUpdateFile, never followed or waited on (it would hold the lock for ever)."""
        return _entries(_read(self.open_smtp, follow=False)[0])

    def _refresh_in_place(self, data: bytes, read: os.stat_result | None, rule: bytes,
                          stamp: int) -> bool:
        """Overwrite the time on ``rule``'s line of open-smtp (``data``, as read with status
        ``read``) where it stands, if that line is the address's only one, in vpopmail's
        form, with a time as long as ``stamp``'s (all of them, for three centuries) and the
        file is still the one read (not even rewritten where it stands by a tool that takes
        no lock: its time of change), with no other name (a hard link planted there is replaced
        by the rewrite, never written into); True if done, False to rewrite the file (any
        error included: a FIFO or link planted meanwhile). A write of ten bytes, not a new
        file renamed over the old one (0.15 ms a login here: an inode made and one freed)."""
        head = b"\n" + rule + b"\t"
        text = b"\n" + data
        at = text.find(head)
        if read is None or at < 0 or text.find(head, at + 1) >= 0:
            return False
        start = at + len(head) - 1  # where the time begins, in ``data``
        end = data.find(b"\n", start)
        old, new = data[start:len(data) if end < 0 else end], b"%d" % stamp
        if len(old) != len(new) or not old.isdigit():
            return False
        try:
            fd = os.open(self.open_smtp,
                         os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if ((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_nlink)
                    != (read.st_dev, read.st_ino, len(data), read.st_mtime_ns, 1)):
                return False
            return os.pwrite(fd, new, start) == len(new)
        except OSError:
            return False
        finally:
            os.close(fd)

    def _write_entries(self, entries: list[tuple[bytes, bytes]], sync: bool = True) -> None:
        """Replace open-smtp (renamed into place: old or new, never half); flushed to disk
        with delivery.file_sync unless ``sync`` is false."""
        data = b"".join(line + b"\n" for _, line in entries)
        atomic_write(self.open_smtp, data, 0o644, *self.owner, self.sync and sync)

    @staticmethod
    def _counters(lock: FileLock) -> tuple[int, int]:
        try:
            fields = os.pread(lock.fd, _COUNTERS, 0).split()
        except OSError as exc:  # ESPIPE: a FIFO planted as the lock
            raise CouldNotUpdateFile(f"{lock.path}: {exc.strerror}") from None
        try:
            return int(fields[0]), int(fields[1])
        except (IndexError, ValueError):
            return 0, 0

    @staticmethod
    def _set_counters(lock: FileLock, wanted: int, built: int) -> None:
        try:
            os.pwrite(lock.fd, b"%20d %20d\n" % (wanted, built), 0)
        except OSError as exc:
            raise CouldNotUpdateFile(f"{lock.path}: {exc.strerror}") from None

    def _owe_compile(self) -> int:
        """Count one change the cdb must reflect; return its generation."""
        with self._lock(self.open_smtp + ".lock") as lock:
            wanted, built = self._counters(lock)
            self._set_counters(lock, wanted + 1, built)
        return wanted + 1

    def open_relay(self, ip: str, now: int | None = None) -> bool:
        """Let ``ip`` relay: (re)write its open-smtp line with the time ``now``; compile the
        cdb if the IP is new. A known IP only gets its time refreshed, in place where its line
        allows (:meth:`_refresh_in_place`), else by rewriting the file; not flushed to disk,
        as C never flushed (it cost a login two disk flushes, a third of its time): a crash
        then leaves the older time, or, for a rewrite on a file system that does not flush a
        file replaced by rename (ext4 does), possibly an empty open-smtp, whose roaming IPs
        log in again. True if the IP was new.
        Raises LockTimeout, CouldNotUpdateFile, BadInput (not an IP address, or a syntax
        error in tcp.smtp)."""
        rule = _recorded_rule(ip)
        key = ip_of_rule(rule)
        with self._lock(self.open_smtp + ".lock") as lock:
            stamp = int(time.time()) if now is None else now  # once the lock is had
            data, read = _read(self.open_smtp, follow=False)
            entries = _entries(data)
            # the client's line, or an earlier version's line of its IPv4-mapped spelling
            kept = [entry for entry in entries if entry[0] not in (key, _MAPPED + key)]
            new = len(kept) == len(entries)
            wanted, built = self._counters(lock)
            if new:
                # counted before the file is written: a process killed in between leaves a
                # compile owed (done by the next login or clearopensmtp), never a new IP in
                # open-smtp that no compile will pick up
                wanted += 1
                self._set_counters(lock, wanted, built)
            if new or len(entries) - len(kept) > 1 or not self._refresh_in_place(
                    data, read, rule, stamp):
                kept.append((key, rule + b"\t%d" % stamp))
                self._write_entries(kept, sync=new)
        if wanted > built:
            self.compile(wanted)
        return new

    def clear(self, minutes: int, now: int | None = None) -> int:
        """Drop open-smtp lines older than ``minutes`` (and lines without a time, as C's
        clearopensmtp does), then compile the cdb. Return how many lines were dropped.
        A line stamped later than now (written while the clock was ahead) gets the time now,
        so it expires ``minutes`` from now instead of relaying for ever (C kept it)."""
        moment = int(time.time()) if now is None else now
        limit = moment - minutes * 60
        with self._lock(self.open_smtp + ".lock") as lock:
            entries = self.entries()
            kept = [(ip, line if _stamp(line) <= moment else
                     line.partition(b"\t")[0] + b"\t%d" % moment)
                    for ip, line in entries if _stamp(line) > limit]
            wanted, built = self._counters(lock)
            self._set_counters(lock, wanted + 1, built)  # before the write, as in open_relay
            self._write_entries(kept)
        self.compile(wanted + 1)
        return len(entries) - len(kept)

    # -- tcp.smtp.cdb -------------------------------------------------------------------------
    def compile(self, generation: int) -> None:
        """Make the cdb reflect open-smtp generation ``generation`` or a later one; nothing to
        do when another process already has (or relay.rebuild_tcpserver is off)."""
        if not self.rebuild_cdb:
            return
        with self._lock(self.cdb + ".lock"):
            with self._lock(self.open_smtp + ".lock") as lock:
                wanted, built = self._counters(lock)
                if built >= generation:
                    return
                entries = self.entries()
            self.write_cdb(_relay_rules(entries))
            with self._lock(self.open_smtp + ".lock") as lock:
                now_wanted, now_built = self._counters(lock)
                self._set_counters(lock, now_wanted, max(now_built, wanted))

    def write_cdb(self, rules: list[bytes]) -> None:
        """Compile tcp.smtp (missing: no static rules) followed by ``rules`` into the cdb."""
        from vpopmail.cdbwrite import build

        static = _read(self.tcp_smtp, follow=True)[0]
        if static and not static.endswith(b"\n"):
            static += b"\n"
        records = compile_rules(static + b"".join(rule + b"\n" for rule in rules), self.tcp_smtp)
        atomic_write(self.cdb, build(records), 0o644, *self.owner, self.sync)


class SqlRelayTable(RelayTable):
    """Roaming IPs in the SQL backend's ``relay`` table. Rows are read back from the update
    server (a replica may not have the row a login just wrote yet) and each becomes a rule only
    if it is an IP address: a row with an empty or odd ``ip_addr`` (written by hand, or by a C
    vpopmail) could otherwise become a rule that lets every client relay."""

    def __init__(self, config: Config, database: "RelayRows", timeout: float | None = None
                 ) -> None:
        super().__init__(config, timeout)
        self.database = database

    def entries(self) -> list[tuple[bytes, bytes]]:
        found = []
        for ip, stamp in self.database.relay_entries():
            entry = _entry(ip, b"\t%d" % stamp)
            if entry is not None:
                found.append(entry)
        return found

    def open_relay(self, ip: str, now: int | None = None) -> bool:
        """As the file's: nothing is recorded when open-smtp.lock cannot be had, and a
        compile is owed before the row is written (given back if the IP was known)."""
        key = ip_of_rule(_recorded_rule(ip)).decode()
        with self._lock(self.open_smtp + ".lock") as lock:
            stamp = int(time.time()) if now is None else now
            wanted, built = self._counters(lock)
            self._set_counters(lock, wanted + 1, built)
            new = self.database.relay_open(key, stamp)
            if new:
                wanted += 1
            else:
                self._set_counters(lock, wanted, built)
        if wanted > built:
            self.compile(wanted)
        return new

    def clear(self, minutes: int, now: int | None = None) -> int:
        moment = int(time.time()) if now is None else now
        dropped = self.database.relay_clear(moment - minutes * 60, moment)
        self.compile(self._owe_compile())
        return dropped


def _recorded_rule(ip: str) -> bytes:
    """The rule open-smtp's line (or the relay row's address) records for ``ip``: the form
    tcpserver looks up (:func:`rule_for_ip`), an IPv4-mapped address (``tcpserver -6``'s
    ``::ffff:a.b.c.d``) as its dotted quad, the line C writes: C's clearopensmtp and vchkpw
    rebuild with the system's tcprules, whose IPv4-only build (Debian's) stops at a
    ``::ffff:`` line. The cdb gets both spellings anyway (:func:`_both_forms`)."""
    rule = rule_for_ip(ip)
    if rule.startswith(_MAPPED) and b"." in ip_of_rule(rule):
        return rule[len(_MAPPED):]
    return rule


def _entry(ip: str, stamp: bytes) -> tuple[bytes, bytes] | None:
    """(key, line) of a roaming IP: vpopmail's rule for ``ip`` followed by ``stamp`` (TAB and
    time); None if ``ip`` is not an IP address. A line or row with another address (empty,
    a prefix, ``=host``: damaged, hand-made, C's mangled IPv6) never becomes a rule: it could
    let every client relay."""
    try:
        rule = rule_for_ip(ip)
    except BadInput:
        return None
    return ip_of_rule(rule), rule + stamp


def _relay_rules(entries: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The cdb's rules for open-smtp's ``entries``, in order, each address once: an IPv4
    client's rule for both ``a.b.c.d`` and ``::ffff:a.b.c.d``, however it logged in."""
    rules, seen = [], set()
    for ip, line in entries:
        rule = line.partition(b"\t")[0]
        for address, form in _both_forms(ip, rule):
            if address not in seen:
                seen.add(address)
                rules.append(form)
    return rules


def _both_forms(ip: bytes, rule: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """(address, rule) for ``rule`` (for ``ip``) and, for an IPv4 client, the same rule in its
    other spelling: the dotted quad, which a tcpserver without ``-6`` looks up, and the
    IPv4-mapped address, which ``tcpserver -6`` looks up instead (it never looks up the dotted
    quad)."""
    if ip.startswith(_MAPPED) and b"." in ip:
        return (ip, rule), (ip[len(_MAPPED):], rule[len(_MAPPED):])
    if b":" not in ip:
        return (ip, rule), (_MAPPED + ip, _MAPPED + rule)
    return ((ip, rule),)


def _entries(data: bytes) -> list[tuple[bytes, bytes]]:
    """(ip, line) for each line of open-smtp's ``data``: see RelayTable.entries."""
    found = []
    for line in data.split(b"\n"):
        rule, tab, stamp = line.partition(b"\t")
        entry = _entry(ip_of_rule(rule).decode("latin-1"), tab + stamp)
        if entry is not None:
            found.append(entry)
    return found


def _read(path: str, follow: bool) -> tuple[bytes, os.stat_result | None]:
    """A regular file's contents and status; b"" and None if it is missing;
    CouldNotUpdateFile if it is not a regular file (or unreadable)."""
    try:
        return read_regular(path, _LIMIT, follow)
    except FileNotFoundError:
        return b"", None
    except OSError as exc:
        raise CouldNotUpdateFile(f"{path}: {exc.strerror}") from None


def _stamp(line: bytes) -> int:
    """The time on an open-smtp line; lines without one count as infinitely old."""
    rule, tab, stamp = line.partition(b"\t")
    try:
        return int(stamp) if tab else -1 << 62
    except ValueError:
        return -1 << 62
