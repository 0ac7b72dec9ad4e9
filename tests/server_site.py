"""A running vpopmail-server for an install: the "server" mode of the delivery and login
suites (modules marked ``through_server``) and the server's own tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
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


@contextmanager
def running_server(inst: Install, *args: str) -> Iterator[Server]:
    """The install's server, started as the install's owner would start it (root for a root
    install), stopped at the end; it must have logged no worker failure."""
    log = inst.prefix.parent / f"server-{os.getpid()}-{time.monotonic_ns()}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(inst.bin / "vpopmail-server"), *args], stdout=fh,
                                stderr=fh, env=CLEAN_ENV, cwd="/")
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
