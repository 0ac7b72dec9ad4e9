"""Delivery durability: vdelivermail killed with SIGKILL at every syscall of a delivery and at
random moments, writes failing (ENOSPC and EIO injected, a full or read-only filesystem), awkward
and 50 MB messages. After every run each file in new/ is a complete copy of what was delivered,
a run that exited 0 left exactly one, a killed run left at most one file in tmp/, and
maildirsize is well formed and differs from a recount only by the messages a kill left
delivered but not yet counted (vpopmail/Courier semantics: counted at the next recalculation).

The kills need no hook in the product: strace's fault injection
(``-e inject=SYSCALL:signal=SIGKILL:when=N``) stops the installed program on entry to its Nth
SYSCALL, before the kernel runs it, and a reference trace of the same delivery tells what must
have happened before that point.

Random parts print their seed on failure; ``PYVPOPMAIL_SEED`` replays one,
``PYVPOPMAIL_RANDOM_KILLS`` sets the random-kill runs per install mode (default 200), and
``PYVPOPMAIL_KILL_ALL_SYSCALLS=1`` also kills at every syscall of the interpreter start-up
(default: 8 of them, spread out).
"""
from __future__ import annotations

import errno
import hashlib
import math
import os
import random
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from install_site import Install
from delivery_site import DOMAIN, MESSAGE, SENDER, Site, qmail_local_env
from delivery_site import tiny_fs  # noqa: F401 - the fixture
from maildir.maildir import TMP_STALE_SECONDS, clean_tmp
from maildir.quota import STALE_SECONDS, load_maildirsize, recalculate, scan_usage

SEED = int(os.environ.get("PYVPOPMAIL_SEED") or random.SystemRandom().randrange(2**32))
RANDOM_KILLS = int(os.environ.get("PYVPOPMAIL_RANDOM_KILLS", "200"))
ALL_SYSCALLS = os.environ.get("PYVPOPMAIL_KILL_ALL_SYSCALLS") == "1"
STARTUP_SAMPLE = 8
GNU_TIME = "/usr/bin/time"
#: the users of the kill and injection tests: appended to, recalculated on every run, no quota
KINDS = {"quota": "bob", "recalc": "dave", "noquota": "carol"}
KILL_SIZE = 100_000  # two 64 KiB chunks: a kill can fall between them
STAGED = "NeWmAiLdIrSiZe"  # in the name of a maildirsize being recalculated (tmp/)
TAG = re.compile(rb"\nX-Run: (\S+)\n")
NEW_NAME = re.compile(r",S=(\d+),W=(\d+)$")
WELL_FORMED = re.compile(rb"[^\n]+\n(-?\d+ -?\d+\n)*")
MB = 1 << 20
#: what a run left in tmp/: ("message", bytes written), ("staged", -1) for a maildirsize being
#: recalculated, None for nothing, ANY when unknown
Left = tuple[str, int] | None
ANY: Left = ("any", -1)


def rfc822_size(data: bytes) -> int:
    """Bytes as RFC 822 counts them: every bare LF as CRLF (the ``W=`` of the file name)."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def trace_header(user: str) -> bytes:
    """What vdelivermail puts in front of a message for ``user`` (qmail-local's RPLINE and
    vpopmail's Delivered-To)."""
    return f"Return-Path: <{SENDER}>\nDelivered-To: {user}@{DOMAIN}\n".encode()


class Box:
    """One user's Maildir and what the runs into it must have left there."""

    def __init__(self, site: Site, user: str) -> None:
        self.site = site
        self.user = user
        self.maildir = site.maildir(user)
        line = next(l for l in (site.domain_dir / "vpasswd").read_text().splitlines()
                    if l.startswith(user + ":"))
        quota = line.split(":")[6]
        self.quota = None if quota in ("", "NOQUOTA") else quota
        self.expected: dict[bytes, bytes] = {}  # tag -> the bytes of a complete copy
        self.delivered: set[bytes] = set()
        self.seen_new: set[str] = set(os.listdir(self.maildir / "new"))
        self.seen_tmp: set[str] = set(os.listdir(self.maildir / "tmp"))
        self.serial = 0
        self.drift = (0, 0)  # real usage minus maildirsize: delivered, not yet counted
        self.inode = self._maildirsize_inode()
        self.left = {"complete": 0, "nothing": 0, "tmp": 0, "delivered": 0}

    def message(self, size: int) -> tuple[bytes, bytes]:
        """A new message of about ``size`` bytes with its own ``X-Run`` tag: (tag, bytes)."""
        self.serial += 1
        tag = f"{self.user}-{self.serial:06d}".encode()
        head = (b"From: Sender <" + SENDER.encode() + b">\nTo: " + self.user.encode() + b"@"
                + DOMAIN.encode() + b"\nSubject: durability\nX-Run: " + tag + b"\n\n")
        line = tag + b" " + b"0123456789abcdef" * 4 + b"\n"
        body = line * max(1, (size - len(head)) // len(line) + 1)
        data = head + body[:max(1, size - len(head))]
        self.expected[tag] = trace_header(self.user) + data
        return tag, data

    def _maildirsize_inode(self) -> int:
        try:
            return os.stat(self.maildir / "maildirsize").st_ino
        except FileNotFoundError:
            return 0

    def audit(self, tag: bytes, rc: int, why: str, *, landed: bool | None = None,
              counted: bool | None = None, recalculated: bool | None = None,
              left: Left = ANY) -> None:
        """Check the Maildir after the run that delivered ``tag`` and exited ``rc`` (-9:
        killed). Known facts about the run narrow the checks: ``landed`` (linked into new/),
        ``counted`` (maildirsize appended), ``recalculated`` (maildirsize replaced), ``left``
        (what tmp/ must hold)."""
        new_dir = self.maildir / "new"
        fresh = sorted(set(os.listdir(new_dir)) - self.seen_new)
        tags = []
        for name in fresh:
            data = (new_dir / name).read_bytes()
            found = TAG.search(data)
            assert found, f"{why}: new/{name} is not a complete message: {data[:200]!r}"
            assert data == self.expected.get(found.group(1)), \
                f"{why}: new/{name} differs from what {found.group(1)!r} delivered"
            sizes = NEW_NAME.search(name)
            assert sizes and (int(sizes[1]), int(sizes[2])) == (len(data), rfc822_size(data)), \
                (why, name)
            tags.append(found.group(1))
        self.seen_new.update(fresh)
        assert not os.listdir(self.maildir / "cur"), why
        assert not set(tags) & self.delivered, f"{why}: {tags} delivered twice"
        if rc == 0:
            assert tags == [tag], f"{why}: exit 0 but new/ gained {fresh}"
        elif rc == -signal.SIGKILL:
            assert tags in ([], [tag]), f"{why}: {fresh}"
            if landed is not None:
                assert tags == ([tag] if landed else []), f"{why}: landed={landed}, new/ {fresh}"
        else:
            assert tags == [], f"{why}: exit {rc} but new/ gained {fresh}"
        self.delivered.update(tags)
        self._audit_tmp(tag, rc, why, left, bool(tags))
        self._audit_maildirsize(tag, why, bool(tags), counted, recalculated)

    def _audit_tmp(self, tag: bytes, rc: int, why: str, left: Left, landed: bool) -> None:
        tmp = self.maildir / "tmp"
        fresh = sorted(set(os.listdir(tmp)) - self.seen_tmp)
        assert len(fresh) <= (1 if rc == -signal.SIGKILL else 0), f"{why}: tmp/ gained {fresh}"
        if left != ANY:
            kinds = [("staged" if STAGED in name else "message") for name in fresh]
            assert kinds == ([left[0]] if left else []), f"{why}: expected {left}, tmp/ {fresh}"
        for name in fresh:
            data = (tmp / name).read_bytes()
            if STAGED in name:  # written with one write: empty or whole
                assert not data or WELL_FORMED.fullmatch(data), (why, data)
                continue
            assert self.expected[tag].startswith(data), f"{why}: tmp/{name} is not ours"
            if left and left[0] == "message":
                assert len(data) == left[1], f"{why}: tmp/{name} has {len(data)} bytes"
        if rc == -signal.SIGKILL:
            kind = "delivered" if landed else ("tmp" if fresh else "nothing")
            self.left[kind] += 1
        else:
            self.left["complete" if landed else "nothing"] += 1
        self.seen_tmp.update(fresh)

    def _audit_maildirsize(self, tag: bytes, why: str, landed: bool, counted: bool | None,
                           recalculated: bool | None) -> None:
        path = self.maildir / "maildirsize"
        if self.quota is None:
            assert not path.exists(), why
            return
        raw = path.read_bytes()
        assert WELL_FORMED.fullmatch(raw), f"{why}: maildirsize is corrupt: {raw!r}"
        found = load_maildirsize(str(self.maildir))
        assert found is not None and found.quota == self.quota, (why, raw)
        real = scan_usage(str(self.maildir))
        drift = (real[0] - found.bytes, real[1] - found.messages)
        inode = self._maildirsize_inode()
        if recalculated is not None:
            assert (inode != self.inode) == recalculated, f"{why}: recalculated={recalculated}"
        base = (0, 0) if inode != self.inode else self.drift
        plus = (base[0] + len(self.expected[tag]), base[1] + 1)
        if counted is None:
            options = [base, plus] if landed else [base]
        else:
            options = [plus] if landed and not counted else [base]
        assert drift in options, f"{why}: maildirsize drift {drift}, expected one of {options}"
        self.drift, self.inode = drift, inode

    def clear_tmp(self) -> None:
        """Remove what kills left in tmp/ (checked already), as a tmp/ cleaner would."""
        for name in os.listdir(self.maildir / "tmp"):
            os.unlink(self.maildir / "tmp" / name)
        self.seen_tmp = set()

    def settle(self, why: str, recount: bool = True) -> None:
        """The Maildir holds every complete copy and nothing else, and a recalculation of
        maildirsize (``recount``) gives exactly that usage."""
        copies = [self.expected[t] for t in self.delivered]
        assert scan_usage(str(self.maildir)) == (sum(map(len, copies)), len(copies)), why
        if self.quota is not None and recount:
            usage = recalculate(str(self.maildir), self.quota)
            found = load_maildirsize(str(self.maildir))
            assert found is not None and (found.bytes, found.messages) == usage, why
            self.drift, self.inode = (0, 0), self._maildirsize_inode()


# strace ------------------------------------------------------------------------------------------
class Call(NamedTuple):
    """One syscall line of an strace log."""
    name: str
    text: str  # from the opening parenthesis on

    @property
    def ret(self) -> int | None:
        value = self.text.rsplit(" = ", 1)[-1].split(" ", 1)[0] if " = " in self.text else ""
        return int(value) if value.lstrip("-").isdigit() else None

    @property
    def fd(self) -> int | None:
        found = re.match(r"\((\d+)[,)]", self.text)
        return int(found.group(1)) if found else None

    @property
    def path(self) -> str:
        found = re.search(r'"((?:[^"\\]|\\.)*)"', self.text)
        return found.group(1) if found else ""


CALL = re.compile(r"^(?:\d+ +)?(\w+)(\(.*)$")
#: the allocator's syscalls vary from run to run (address-space layout); nothing else may
MEMORY = frozenset({"brk", "mmap", "munmap", "mremap", "mprotect", "madvise"})


def read_calls(log: Path) -> list[Call]:
    calls = []
    for line in log.read_text(errors="replace").splitlines():
        found = CALL.match(line)
        if found:
            calls.append(Call(found.group(1), found.group(2)))
    return calls


def same_path(run: list[Call], reference: list[Call]) -> bool:
    """The run made the reference's syscalls, in order, leaving the allocator's aside."""
    return ([c.name for c in run if c.name not in MEMORY]
            == [c.name for c in reference if c.name not in MEMORY])


class Plan:
    """Where the landmarks of one delivery are in its syscall sequence (indexes into the
    reference trace): what a kill or a failure at syscall ``i`` must leave follows from
    which of them come before ``i``."""

    def __init__(self, calls: list[Call], home: Path, maildir: Path) -> None:
        self.calls = calls
        self.start = next((i for i, c in enumerate(calls) if f'"{home}/' in c.text), len(calls))
        m = str(maildir)
        self.tmp_create: int | None = None  # the message's file in tmp/ (O_EXCL)
        self.tmp_writes: list[tuple[int, int]] = []  # (index, bytes written)
        self.tmp_fsync: int | None = None
        self.link: int | None = None
        self.unlink: int | None = None
        self.new_fsync: int | None = None
        self.append_open: int | None = None  # maildirsize, O_APPEND
        self.append: int | None = None
        self.tmp_scan: int | None = None  # the 36-hour sweep of tmp/
        self.staged: int | None = None  # a recalculated maildirsize, in tmp/
        self.rename: int | None = None  # ... put in place
        fds: dict[int, str] = {}
        tmp_file = ""
        for i, call in enumerate(calls):
            path, ret = call.path, call.ret
            target = fds.get(call.fd) if call.fd is not None else None
            if call.name == "openat" and ret is not None and ret >= 0:
                fds[ret] = path
                if path.startswith(f"{m}/tmp/") and "O_CREAT" in call.text:
                    if STAGED in path:
                        self.staged = i
                    else:
                        self.tmp_create, tmp_file = i, path
                elif path == f"{m}/maildirsize" and "O_APPEND" in call.text:
                    self.append_open = i
                elif path == f"{m}/tmp":
                    self.tmp_scan = i
            elif (call.name == "openat" and path == f"{m}/maildirsize"
                  and "O_APPEND" in call.text):
                self.append_open = i  # none there to count in (no quota): nothing appended
            elif call.name == "close" and call.fd is not None:
                fds.pop(call.fd, None)
            elif call.name == "write" and tmp_file and target == tmp_file:
                self.tmp_writes.append((i, ret or 0))
            elif call.name == "write" and target == f"{m}/maildirsize":
                self.append = i
            elif call.name == "fsync" and tmp_file and target == tmp_file:
                self.tmp_fsync = i
            elif call.name == "fsync" and target == f"{m}/new":
                self.new_fsync = i
            elif call.name == "link":
                self.link = i
            elif call.name == "unlink" and tmp_file and path == tmp_file:
                self.unlink = i
            elif call.name == "rename":
                self.rename = i

    def ordinal(self, i: int) -> int:
        """Which occurrence of its syscall ``i`` is (strace's ``when=``)."""
        name = self.calls[i].name
        return sum(1 for c in self.calls[:i + 1] if c.name == name)

    def kill_points(self) -> list[int]:
        """Every syscall from the first touch of the user's directory on, plus start-up ones."""
        startup = range(1, self.start)
        if not ALL_SYSCALLS:
            step = max(1, len(startup) // STARTUP_SAMPLE)
            startup = startup[::step]
        return [*startup, *range(self.start, len(self.calls))]

    def write_points(self) -> list[int]:
        """The syscalls of the window that write, sync, link, rename or open for that."""
        points = []
        for i in range(self.start, len(self.calls)):
            call = self.calls[i]
            if call.name in ("write", "fsync", "link", "rename") or (
                    call.name == "openat"
                    and re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_DIRECTORY", call.text)):
                points.append(i)
        return points

    def done(self, landmark: int | None, i: int) -> bool:
        """Whether ``landmark`` ran before syscall ``i``."""
        return landmark is not None and landmark < i

    def left_by_kill(self, i: int) -> Left:
        """What tmp/ holds after a kill on entry to syscall ``i``."""
        if self.done(self.tmp_create, i) and not self.done(self.unlink, i):
            return "message", sum(n for j, n in self.tmp_writes if j < i)
        if self.done(self.staged, i) and not self.done(self.rename, i):
            return "staged", -1
        return None


@pytest.fixture(scope="session")
def strace() -> str:
    """strace, if it can trace and inject here (containers may forbid ptrace)."""
    path = shutil.which("strace")
    if path is None:
        pytest.skip("needs strace (packaging/bootstrap installs it)")
    probe = subprocess.run([path, "-qq", "-o", "/dev/null", "-e", "inject=getpid:error=EPERM",
                            "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.decode().strip()}")
    return path


@pytest.fixture
def box_site(each_install: Install) -> Site:
    return Site.create(each_install, each_install.mode == "root", bob="100M", dave="100M",
                       carol=None)


def run_traced(strace: str, site: Site, user: str, data: bytes, log: Path, *rules: str
               ) -> subprocess.CompletedProcess[bytes]:
    """Deliver ``data`` (from a file, as qmail-local does) under strace with ``rules``."""
    source = log.with_suffix(".msg")
    source.write_bytes(data)
    argv = [strace, "-f", "-qq", "-o", str(log)]
    for rule in rules:
        argv += ["-e", f"inject={rule}"]
    with source.open("rb") as fh:
        return subprocess.run([*argv, *site.argv("", "bounce-no-mailbox")], stdin=fh,
                              capture_output=True, cwd=site.domain_dir, timeout=60,
                              env=qmail_local_env(user, home=str(site.domain_dir)))


def reference(strace: str, site: Site, box: Box, log: Path) -> Plan:
    """Deliver once under strace without faults and map the syscalls."""
    if box.user == KINDS["recalc"]:
        make_stale(box)
    tag, data = box.message(KILL_SIZE)
    result = run_traced(strace, site, box.user, data, log)
    box.audit(tag, result.returncode, f"reference run: {result}")
    return Plan(read_calls(log), site.user_dir(box.user), box.maildir)


def make_stale(box: Box) -> None:
    """Age maildirsize past 15 minutes, so the next delivery recalculates it."""
    path = box.maildir / "maildirsize"
    if path.exists():
        then = time.time() - STALE_SECONDS - 60
        os.utime(path, (then, then))


# kills at every syscall ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_kill_at_every_syscall(strace: str, box_site: Site, tmp_path: Path, kind: str) -> None:
    """SIGKILL on entry to each syscall of a delivery in turn; the reference trace says what
    must be in new/, tmp/ and maildirsize after each."""
    box = Box(box_site, KINDS[kind])
    log = tmp_path / "trace"
    plan = reference(strace, box_site, box, log)
    names = [c.name for c in plan.calls]
    assert plan.link and plan.unlink and plan.tmp_writes, names
    # what a kill cannot show (the page cache survives it): the file is synced before it is
    # linked, new/ after the link, both before maildirsize counts the message
    assert plan.tmp_writes[-1][0] < (plan.tmp_fsync or 0) < plan.link < (plan.new_fsync or 0)
    assert plan.append is None or plan.new_fsync < plan.append
    if kind == "recalc":
        assert plan.rename and plan.tmp_scan, "a recalculation sweeps tmp/"
    else:
        assert plan.tmp_scan is None, "a normal delivery never reads tmp/"
    points = plan.kill_points()
    for i in points:
        if kind == "recalc":
            make_stale(box)
        tag, data = box.message(KILL_SIZE)
        rule = f"{names[i]}:signal=SIGKILL:when={plan.ordinal(i)}"
        result = run_traced(strace, box_site, box.user, data, log, rule)
        why = f"{box_site.inst.mode} {kind}: kill at #{i} {names[i]}{plan.calls[i].text[:120]}"
        assert result.returncode == -signal.SIGKILL, (why, result)
        # what the killed run did before the kill, from its own trace (the same as the
        # reference's, apart from the allocator's calls in start-up)
        calls = read_calls(log)
        assert calls[-1].name == names[i] and calls[-1].text.endswith("= ?"), (why, calls[-1])
        assert i < plan.start or same_path(calls, plan.calls[:i + 1]), f"{why}: another path"
        run = Plan(calls, box_site.user_dir(box.user), box.maildir)
        k = len(calls) - 1
        box.audit(tag, result.returncode, why, landed=run.done(run.link, k),
                  counted=run.done(run.append, k) if box.quota else None,
                  recalculated=run.done(run.rename, k), left=run.left_by_kill(k))
        box.clear_tmp()
    tag, data = box.message(KILL_SIZE)
    result = box_site.deliver(box.user, data)
    box.audit(tag, result.returncode, f"{kind}: delivery after the kills")
    box.settle(f"{kind}: recount after {len(points)} kills")
    print(f"\n{box_site.inst.mode} {kind}: {len(points)} kill points "
          f"({len(points) - (len(plan.calls) - plan.start)} in start-up), left: {box.left}")


# injected write errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_injected_write_errors(strace: str, box_site: Site, tmp_path: Path, kind: str) -> None:
    """ENOSPC, EIO and EDQUOT at each write, fsync, link, rename and open-for-writing of a delivery:
    111 with nothing in new/ or tmp/ and maildirsize untouched, except a failed maildirsize
    append (delivered, exit 0, counted at the next recalculation) and a failed tmp/ sweep
    (harmless)."""
    box = Box(box_site, KINDS[kind])
    log = tmp_path / "trace"
    plan = reference(strace, box_site, box, log)
    names = [c.name for c in plan.calls]
    runs = 0
    for code in ("ENOSPC", "EIO", "EDQUOT"):  # EDQUOT: the delivering uid's file system
        text = os.strerror(getattr(errno, code)).encode()  # quota, every mailbox's: deferred
        for i in plan.write_points():
            if kind == "recalc":
                make_stale(box)
            tag, data = box.message(KILL_SIZE)
            rule = f"{names[i]}:error={code}:when={plan.ordinal(i)}"
            result = run_traced(strace, box_site, box.user, data, log, rule)
            why = (f"{box_site.inst.mode} {kind}: {code} at #{i} "
                   f"{names[i]}{plan.calls[i].text[:120]}")
            runs += 1
            calls = read_calls(log)
            [failed] = [n for n, c in enumerate(calls) if c.text.endswith("(INJECTED)")]
            assert same_path(calls[:failed + 1], plan.calls[:i + 1]), f"{why}: another path"
            if i in (plan.append_open, plan.append):
                assert result.returncode == 0 and b"maildirsize not updated" in result.stdout, \
                    (why, result)
                assert text in result.stdout, (why, result)
                box.audit(tag, 0, why, counted=False, recalculated=plan.rename is not None,
                          left=None)
            elif i == plan.tmp_scan:
                assert (result.returncode, result.stdout) == (0, b""), (why, result)
                box.audit(tag, 0, why, counted=True, recalculated=True, left=None)
            else:
                assert result.returncode == 111, (why, result)
                assert text in result.stdout and b"Traceback" not in result.stdout, (why, result)
                box.audit(tag, 111, why, recalculated=plan.done(plan.rename, i), left=None)
    box.settle(f"{kind}: recount after {runs} injected errors")
    print(f"\n{box_site.inst.mode} {kind}: {runs} injected errors")


# random kills ------------------------------------------------------------------------------------
def start(site: Site, user: str, data: bytes, source: Path, pipe: bool
          ) -> tuple[subprocess.Popen[bytes], threading.Thread | None]:
    """vdelivermail running on ``data``, from a file or through a pipe fed by a thread."""
    env = qmail_local_env(user, home=str(site.domain_dir))
    argv = site.argv("", "bounce-no-mailbox")
    if not pipe:
        source.write_bytes(data)
        with source.open("rb") as fh:
            return subprocess.Popen(argv, stdin=fh, stdout=subprocess.DEVNULL, env=env,
                                    cwd=site.domain_dir), None
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env,
                            cwd=site.domain_dir)

    def feed() -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(data)
            proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    feeder = threading.Thread(target=feed)
    feeder.start()
    return proc, feeder


def timed_run(site: Site, user: str, data: bytes, source: Path, pipe: bool,
              delay: float | None) -> tuple[int, float]:
    """Run one delivery, SIGKILLed after ``delay`` seconds if still running: (status, seconds
    until it ended or was killed). A pidfd gives the exact end and targets only our child."""
    began = time.monotonic()
    proc, feeder = start(site, user, data, source, pipe)
    pidfd = os.pidfd_open(proc.pid)
    try:
        ended, _, _ = select.select([pidfd], [], [], delay)
        seconds = time.monotonic() - began
        if not ended:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)
    status = proc.wait(timeout=60)
    if feeder:
        feeder.join(timeout=60)
    return status, seconds


def test_random_kills(box_site: Site, tmp_path: Path) -> None:
    """Hundreds of deliveries of 200 B to 1 MB (file or pipe) killed after a random delay
    spread over the whole run; the Maildir stays consistent after each."""
    rng = random.Random(SEED)
    boxes = [Box(box_site, "bob"), Box(box_site, "carol")]
    source = tmp_path / "message"
    # how long an undisturbed run takes, small and large, to spread the kills over it
    durations = {}
    for size in (1000, MB):
        runs = []
        for _ in range(3):
            tag, data = boxes[0].message(size)
            status, seconds = timed_run(box_site, "bob", data, source, False, None)
            boxes[0].audit(tag, status, f"seed={SEED} calibration")
            runs.append(seconds)
        durations[size] = sorted(runs)[1]
    ratios: list[float] = []  # how long undisturbed runs took, against the estimate
    for n in range(RANDOM_KILLS):
        box = rng.choice(boxes)
        size = int(math.exp(rng.uniform(math.log(200), math.log(MB))))
        pipe = rng.random() < 0.5
        estimate = durations[1000] + (durations[MB] - durations[1000]) * size / MB
        span = estimate * (sorted(ratios[-15:])[len(ratios[-15:]) // 2] if ratios else 1)
        # a third of the kills anywhere in the run, the rest in its last quarter, where the
        # Maildir work happens (the interpreter's start-up takes most of a run)
        delay = span * (rng.uniform(0, 1.2) if rng.random() < 1 / 3 else rng.uniform(0.6, 1.0))
        tag, data = box.message(size)
        status, seconds = timed_run(box_site, box.user, data, source, pipe, delay)
        if status == 0:
            ratios.append(seconds / estimate)
        why = (f"seed={SEED} (PYVPOPMAIL_SEED to replay) run {n}: {size} bytes to {box.user} "
               f"by {'pipe' if pipe else 'file'}, killed after {delay * 1000:.1f} ms")
        assert status in (0, -signal.SIGKILL), (why, status)
        box.audit(tag, status, why)
    for box in boxes:
        box.settle(f"seed={SEED}: recount of {box.user}")
        # what kills left in tmp/ is what the 36-hour sweep removes, and nothing else
        leftovers = set(os.listdir(box.maildir / "tmp"))
        assert clean_tmp(str(box.maildir), time.time() + TMP_STALE_SECONDS + 60) == \
            len(leftovers)
        assert not os.listdir(box.maildir / "tmp")
    print(f"\n{box_site.inst.mode}: {RANDOM_KILLS} random kills (seed {SEED}), "
          f"calibration {durations[1000] * 1000:.0f}/{durations[MB] * 1000:.0f} ms; "
          + "; ".join(f"{b.user}: {b.left}" for b in boxes))


# the tmp/ sweep ----------------------------------------------------------------------------------
def test_stale_tmp_files_go_when_maildirsize_is_recalculated(box_site: Site) -> None:
    """Files a crash left in tmp/ more than 36 hours ago (mtime and atime) are removed when
    vdelivermail recalculates maildirsize anyway, never on an ordinary delivery."""
    box = Box(box_site, "bob")
    tmp = box.maildir / "tmp"
    old = time.time() - TMP_STALE_SECONDS - 600
    names = ["1795000000.M1P1Q1.host", f"1795000000.1{STAGED}.host", "fresh", "read-recently"]
    for name in names:
        (tmp / name).write_bytes(b"Return-Path: <x@y>\npartial")
        os.chown(tmp / name, box_site.inst.uid, box_site.inst.gid)
    for name in names[:2]:
        os.utime(tmp / name, (old, old))
    os.utime(tmp / "read-recently", (time.time(), old))
    (tmp / "a-directory").mkdir()
    os.utime(tmp / "a-directory", (old, old))
    _, data = box.message(2000)
    assert box_site.deliver("bob", data).returncode == 0
    assert sorted(os.listdir(tmp)) == sorted([*names, "a-directory"])
    make_stale(box)
    _, data = box.message(2000)
    assert box_site.deliver("bob", data).returncode == 0
    assert sorted(os.listdir(tmp)) == ["a-directory", "fresh", "read-recently"]
    found = load_maildirsize(str(box.maildir))
    assert found and (found.bytes, found.messages) == scan_usage(str(box.maildir))


def test_the_sweep_reaches_the_folders(box_site: Site) -> None:
    """A delivery into a Maildir++ folder (through a .qmail line) killed in mid-write leaves
    its file in the folder's tmp/: the recount sweeps it there too (.Trash's included) after
    36 hours, and keeps a fresh one."""
    box = Box(box_site, "bob")
    old = time.time() - TMP_STALE_SECONDS - 600
    placed = []
    for folder in (".Sent", ".Trash"):
        tmp = box.maildir / folder / "tmp"
        for sub in ("cur", "new", "tmp"):
            (box.maildir / folder / sub).mkdir(parents=True)
        for name in ("1795000000.M1P1Q1.host", "fresh"):
            (tmp / name).write_bytes(b"Return-Path: <x@y>\npartial")
            placed.append(tmp / name)
        os.utime(tmp / "1795000000.M1P1Q1.host", (old, old))
    subprocess.run(["chown", "-R", f"{box_site.inst.uid}:{box_site.inst.gid}",
                    str(box.maildir)], check=True)
    make_stale(box)
    _, data = box.message(2000)
    assert box_site.deliver("bob", data).returncode == 0
    assert [path.exists() for path in placed] == [False, True, False, True]


# full and read-only filesystems -----------------------------------------------------------------
@pytest.fixture
def site(vhome: Install) -> Site:
    """bob with a quota, for ``tiny_fs`` (his Maildir on a 256 KiB tmpfs)."""
    return Site.create(vhome, False, bob="10M")


@pytest.mark.usefixtures("tiny_fs")
def test_filling_the_disk(site: Site) -> None:
    """Deliveries of 2-40 KB until the filesystem is full: each one either delivered a
    complete copy and counted it, or deferred (111) leaving nothing."""
    box = Box(site, "bob")
    rng = random.Random(SEED)
    deferred = 0
    for n in range(100):
        tag, data = box.message(rng.randrange(2000, 40_000))
        result = site.deliver("bob", data, pipe=rng.random() < 0.5)
        why = f"seed={SEED} run {n}: {len(data)} bytes"
        assert result.returncode in (0, 111), (why, result)
        if result.returncode == 111:
            assert b"No space left on device" in result.stdout, (why, result)
            deferred += 1
        box.audit(tag, result.returncode, why, counted=True, left=None)
        if deferred == 4:
            break
    assert deferred == 4 and len(box.delivered) > 3, box.left
    assert box.drift == (0, 0)  # no room for a recalculation, and none is needed
    box.settle("after filling the disk", recount=False)


@pytest.mark.usefixtures("tiny_fs")
def test_disk_full_in_the_middle_of_a_maildirsize_line(site: Site) -> None:
    """The disk fills up exactly when maildirsize's append crosses a page: the write stops
    mid-line. The line must not stay (``80`` + the next ``63 1`` would read as 8063 bytes):
    maildirsize is removed and the next delivery recalculates it."""
    box = Box(site, "bob")
    maildir = box.maildir
    tag, data = box.message(1000)
    assert site.deliver("bob", data).returncode == 0  # creates maildirsize
    path = maildir / "maildirsize"
    text = path.read_bytes()
    filler = b"0 0\n" * ((4093 - len(text)) // 4)
    path.write_bytes(text + filler + b" " * (4093 - len(text) - len(filler)) + b"\n")
    assert path.stat().st_size == 4094 and load_maildirsize(str(maildir)) is not None
    box.drift, box.inode = (0, 0), path.stat().st_ino
    free = os.statvfs(maildir)
    (maildir / "filler").write_bytes(b"f" * ((free.f_bavail - 2) * free.f_bsize))
    tag, data = box.message(8000)  # two pages with its header: the last two free
    result = site.deliver("bob", data)
    assert result.returncode == 0, result
    assert b"maildirsize not updated" in result.stdout and b"short write" in result.stdout
    assert not path.exists(), path.read_bytes()[-20:]
    box.delivered.add(tag)
    box.seen_new.update(os.listdir(maildir / "new"))
    (maildir / "filler").unlink()
    tag, data = box.message(1000)
    assert site.deliver("bob", data).returncode == 0
    found = load_maildirsize(str(maildir))
    assert found and (found.bytes, found.messages) == scan_usage(str(maildir)), \
        path.read_bytes()


@pytest.mark.usefixtures("tiny_fs")
def test_read_only_filesystem(site: Site) -> None:
    """A Maildir remounted read-only defers (111) and changes nothing, whether maildirsize
    is current or needs a recalculation."""
    box = Box(site, "bob")
    maildir = box.maildir
    tag, data = box.message(3000)
    box.audit(tag, site.deliver("bob", data).returncode, "before the remount")
    for stale in (False, True):
        if stale:
            make_stale(box)
        before = (maildir / "maildirsize").read_bytes()
        subprocess.run(["mount", "-o", "remount,ro", str(maildir)], check=True)
        try:
            tag, data = box.message(3000)
            result = site.deliver("bob", data, pipe=stale)
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(maildir)], check=True)
        assert result.returncode == 111 and b"Read-only file system" in result.stdout, result
        box.audit(tag, 111, f"read-only, stale={stale}", left=None, recalculated=False)
        assert (maildir / "maildirsize").read_bytes() == before


# awkward and huge messages ----------------------------------------------------------------------
def crlf_message() -> bytes:
    """CRLF line endings, with one CRLF split across the first 64 KiB read."""
    head = b"From: a@remote.test\r\nSubject: crlf\r\n\r\n"
    lines = b"".join(b"line %05d of a CRLF message\r\n" % n for n in range(3000))
    return head + b"A" * (65535 - len(head)) + b"\r\n" + lines


AWKWARD = {
    "no-separator": b"From: a@remote.test\nSubject: headers only\nX-Note: no blank line, no LF",
    "no-separator-lf": b"From: a@remote.test\nSubject: headers only\n",
    "nul-bytes": b"From: a\x00b@remote.test\nSubject: nul\x00\n\nbody\x00with\x00\x00NULs\n\x00",
    "crlf": crlf_message(),
    "bare-cr": b"Subject: old Mac\rFrom: a@remote.test\r\rbody\r",
    "header-1mb": b"From: a@remote.test\nX-Big: " + b"h" * MB + b"\nSubject: big\n\nbody\n",
    "folded-1mb": (b"Subject: folded\nX-Big: " + b"h" * 900 + (b"\n\t" + b"h" * 998) * 1050
                   + b"\n\nb\n"),
    "binary": random.Random(5).randbytes(300_000),
}


def test_awkward_messages_delivered_intact(box_site: Site) -> None:
    """Each message arrives byte for byte (from a file and from a pipe), with the right
    ``S=``/``W=`` sizes, and counted in maildirsize."""
    box = Box(box_site, "bob")
    for name, data in AWKWARD.items():
        for pipe in (False, True):
            why = f"{name} from a {'pipe' if pipe else 'file'}"
            tag = why.encode()
            box.expected[tag] = trace_header("bob") + data
            before = set(os.listdir(box.maildir / "new"))
            result = box_site.deliver("bob", data, pipe=pipe)
            assert result.returncode == 0, (why, result)
            [fresh] = set(os.listdir(box.maildir / "new")) - before
            got = (box.maildir / "new" / fresh).read_bytes()
            assert got == box.expected[tag], (why, len(got), len(box.expected[tag]))
            sizes = NEW_NAME.search(fresh)
            assert sizes and (int(sizes[1]), int(sizes[2])) == (len(got), rfc822_size(got)), why
            assert not os.listdir(box.maildir / "tmp"), why
            found = load_maildirsize(str(box.maildir))
            assert found and (found.bytes, found.messages) == scan_usage(str(box.maildir)), why


@pytest.fixture(scope="module")
def big_messages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """50 MB messages on disk: ordinary text, headers only (no blank line at all), and one
    header line without any LF."""
    base = tmp_path_factory.mktemp("big")
    made = {}
    for name, head, line, end in (
            ("text", b"From: a@remote.test\nSubject: 50 MB\n\n", b"body", b"\n"),
            ("headers-only", b"From: a@remote.test\n", b"X-Header", b"\n"),
            ("one-line", b"X-Endless: ", b"word", b" ")):
        path = base / name
        with path.open("wb") as fh:
            fh.write(head)
            block = b"".join(line + b"-%07d: " % n + b"z" * 60 + end for n in range(13_000))
            written = len(head)
            while written < 50 * MB:
                piece = block[:50 * MB - written]
                fh.write(piece)
                written += len(piece)
        made[name] = path
    return made


def digest(*parts: bytes | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            with part.open("rb") as fh:
                while chunk := fh.read(MB):
                    h.update(chunk)
        else:
            h.update(part)
    return h.hexdigest()


def peak_rss(site: Site, user: str, source: Path, pipe: bool, out: Path
             ) -> tuple[subprocess.CompletedProcess[bytes], int]:
    """Deliver ``source`` (from the file, or through ``cat`` and a pipe) under GNU time:
    (the result, vdelivermail's peak RSS in KiB)."""
    argv = [GNU_TIME, "-f", "%M", "-o", str(out), *site.argv("", "bounce-no-mailbox")]
    env = qmail_local_env(user, home=str(site.domain_dir))
    with source.open("rb") as fh:
        if pipe:
            cat = subprocess.Popen(["cat"], stdin=fh, stdout=subprocess.PIPE)
            assert cat.stdout is not None
            result = subprocess.run(argv, stdin=cat.stdout, capture_output=True, env=env,
                                    cwd=site.domain_dir, timeout=300)
            cat.stdout.close()
            cat.wait()
        else:
            result = subprocess.run(argv, stdin=fh, capture_output=True, env=env,
                                    cwd=site.domain_dir, timeout=300)
    return result, int(out.read_text().split()[-1])


@pytest.mark.skipif(not os.access(GNU_TIME, os.X_OK), reason="needs GNU time")
def test_50mb_message_in_flat_memory(box_site: Site, big_messages: dict[str, Path],
                                     tmp_path: Path) -> None:
    """50 MB from a file and from a pipe, 50 MB of headers without a body, 50 MB without a
    line end: delivered intact while vdelivermail's peak RSS stays that of a small delivery
    (the header scan kept every header line, 88 MB for the second, and took quadratic time
    on the third: 2 s at 16 MB)."""
    new = box_site.maildir("carol") / "new"
    small = tmp_path / "small"
    small.write_bytes(MESSAGE)
    result, baseline = peak_rss(box_site, "carol", small, False, tmp_path / "rss")
    assert result.returncode == 0, result
    shutil.rmtree(new)
    new.mkdir()
    if box_site.unprivileged:
        shutil.chown(new, box_site.inst.user, box_site.inst.group)
    figures = [f"1 KB: {baseline / 1024:.1f} MB"]
    for name, pipe in (("text", False), ("text", True), ("headers-only", True),
                       ("one-line", False)):
        source = big_messages[name]
        result, rss = peak_rss(box_site, "carol", source, pipe, tmp_path / "rss")
        label = f"50 MB {name} {'pipe' if pipe else 'file'}"
        assert result.returncode == 0, (label, result)
        [delivered] = list(new.iterdir())
        assert digest(delivered) == digest(trace_header("carol"), source), label
        assert delivered.stat().st_size == len(trace_header("carol")) + source.stat().st_size
        assert rss < 40 * 1024 and rss < baseline + 8 * 1024, (label, rss, baseline)
        figures.append(f"{label}: {rss / 1024:.1f} MB")
        delivered.unlink()
    assert not os.listdir(box_site.maildir("carol") / "tmp")
    print(f"\n{box_site.inst.mode} peak RSS: " + ", ".join(figures))
