"""A running vpopmail-server for an install: the "server" mode of the delivery and login
suites (modules marked ``through_server``) and the server's own tests."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import BinaryIO
from contextlib import contextmanager
from pathlib import Path

from delivery_site import DOMAIN
from install_site import CLEAN_ENV, Install
from login_site import LoginSite


class Server:
    """One ``bin/vpopmail-server`` process; its stderr goes to ``log``."""

    def __init__(self, inst: Install, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.inst = inst
        self.proc = proc
        self.log = log
        self.socket = inst.prefix / "run" / "server.sock"

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the server did not stop: {self.lines()}") from None


def wait_for(server: Server, listening: int = 1, timeout: float = 20) -> None:
    """Until the server has logged its ``listening``-th start (no probe connection: it would
    count as a request)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum("listening on" in line for line in server.lines()) >= listening:
            return
        if server.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no server on {server.socket}: {server.lines()}")


def fill_queue(path: Path) -> list[socket.socket]:
    """Connections left waiting at the listening socket ``path`` until its queue is full (a
    connect that may not wait then fails at once); closing them empties it again."""
    queued = []
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(str(path))
        except BlockingIOError:
            sock.close()
            return queued
        queued.append(sock)


def held_socket(path: Path) -> socket.socket:
    """A listening socket at ``path`` (root's, 0600), as a systemd socket unit makes and holds
    one: pass it to :func:`running_server`."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    path.chmod(0o600)
    sock.listen(1024)
    return sock


#: what :func:`running_server` passes as systemd would: one socket, or several in order
#: (None: a descriptor that is not open; a file: what systemd never passes), with
#: LISTEN_FDS their count or the text given
Passed = socket.socket | list[socket.socket | BinaryIO | None]


def activated_argv(argv: list[str], passed: Passed, count: str | None = None) -> list[str]:
    """``argv`` run as systemd's socket activation runs a service (sd_listen_fds(3)): the
    sockets ``passed`` (given to Popen's pass_fds) as its descriptors 3 and on, LISTEN_FDS
    ``count`` (by default their number) and LISTEN_PID its own pid."""
    given = listed(passed)
    fds = ",".join("-" if sock is None else str(sock.fileno()) for sock in given)
    return [sys.executable, "-I", "-S", "-c", ACTIVATE, fds,
            str(len(given)) if count is None else count, *argv]


#: :func:`activated_argv`'s program (sh takes only one digit in a redirection's descriptor)
ACTIVATE = """import fcntl, os, sys
given = [-1 if fd == "-" else int(fd) for fd in sys.argv[1].split(",")]
high = [-1 if fd < 0 else fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in given]
for fd in given:
    if fd >= 0:
        os.close(fd)
for at, fd in enumerate(high, 3):
    if fd >= 0:
        os.dup2(fd, at)
        os.close(fd)
os.execve(sys.argv[3], sys.argv[3:], {**os.environ, "LISTEN_PID": str(os.getpid()),
                                      "LISTEN_FDS": sys.argv[2]})
"""


def listed(passed: Passed | None) -> list[socket.socket | BinaryIO | None]:
    """The sockets ``passed`` (:func:`activated_argv`) as a list."""
    return [] if passed is None else [passed] if isinstance(passed, socket.socket) else passed


@contextmanager
def running_server(inst: Install, *args: str, passed: Passed | None = None,
                   count: str | None = None) -> Iterator[Server]:
    """The install's server, started as the install's owner would start it (root for a root
    install), with the sockets ``passed`` as systemd would pass them (:func:`activated_argv`),
    stopped at the end; it must have logged no worker failure."""
    log = inst.prefix.parent / f"server-{os.getpid()}-{time.monotonic_ns()}.log"
    argv = [str(inst.bin / "vpopmail-server"), *args]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv if passed is None else activated_argv(argv, passed, count),
                                stdout=fh, stderr=fh, env=CLEAN_ENV, cwd="/",
                                pass_fds=[sock.fileno() for sock in listed(passed) if sock is not None])
    server = Server(inst, proc, log)
    try:
        wait_for(server)
        yield server
    finally:
        server.stop()
        failures = [line for line in server.lines() if "worker failed" in line]
        assert not failures, failures


@contextmanager
def served_login_site(inst: Install) -> Iterator[LoginSite]:
    """example.com with alice (password pw) on ``inst``, its server running
    (:func:`server_of`)."""
    site = LoginSite(inst, unprivileged=True)
    try:
        site.ok("vadddomain", DOMAIN, "secret")
        site.add("alice", "pw")
        with running_server(inst) as server:
            site.server = server  # type: ignore[attr-defined]
            yield site
    finally:
        site.syslog.close()


def server_of(site: LoginSite) -> Server:
    return site.server  # type: ignore[attr-defined, no-any-return]


def without_fallbacks(inst: Install) -> None:
    """Make the Python programs behind the front ends fail loudly: what still works went
    through the server."""
    for name in ("vdelivermail", "vchkpw"):
        path = inst.prefix / "libexec" / name
        path.write_text("#!/bin/sh\necho fallback used >&2\nexit 42\n")


def worker_ids(server: Server) -> list[tuple[list[str], list[str], list[str]]]:
    """(Uid, Gid, Groups) lines of /proc/PID/status for each worker of ``server``."""
    found = []
    for task in os.listdir("/proc"):
        try:
            status = Path(f"/proc/{task}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if task.isdigit() and fields.get("PPid", "").strip() == str(server.proc.pid):
            found.append((fields["Uid"].split(), fields["Gid"].split(), fields["Groups"].split()))
    return found


def open_sockets(pid: int) -> int:
    """How many sockets the process ``pid`` holds open."""
    found = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed since the listing
            found += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return found
