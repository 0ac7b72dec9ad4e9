"""Racing the installed commands against each other deterministically: start several at one
moment, or stop one (SIGSTOP) at the moment it asks for a lock that the test holds, let
another run meanwhile, then let it go on."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from helpers import has_open
from install_site import CLEAN_ENV, Install


def start_together(inst: Install, tmp_path: Path, argvs: list[list[str]]
                   ) -> list[subprocess.CompletedProcess[str]]:
    """Run the installed commands ``argvs`` at one moment: each waits in a shell for a line
    of a FIFO, written once all are started, then execs its command; their results in
    order."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    held = os.open(gate, os.O_RDWR)  # a writer from the start: no reader waits for one
    try:
        procs = [subprocess.Popen(["/bin/sh", "-c", 'read x < "$0"; exec "$@"', str(gate),
                                   str(inst.bin / argv[0]), *argv[1:]],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=CLEAN_ENV, cwd="/")
                 for argv in argvs]
        os.write(held, b"go\n" * len(procs))
        results = []
        for argv, proc in zip(argvs, procs):
            out, err = proc.communicate(timeout=120)
            results.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    finally:
        os.close(held)
        gate.unlink()
    return results


def wait_until(proc: subprocess.Popen[str], ready: Callable[[], bool], what: str,
               timeout: float = 30) -> None:
    """Poll ``ready`` until it holds; AssertionError (with the process's output) if ``proc``
    ended first or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"{proc.args} ended ({proc.returncode}) before {what}: "
                                 f"{out!r} {err!r}")
        assert time.monotonic() < deadline, f"{proc.args}: never {what}"
        time.sleep(0.002)


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGSTOP ``proc`` and wait until it is stopped."""
    os.kill(proc.pid, signal.SIGSTOP)
    while proc.poll() is None and open(f"/proc/{proc.pid}/stat").read().split(") ")[1][0] \
            != "T":
        time.sleep(0.002)


def stopped_at_lock(lock_path: Path, argv: list[str], *, env: dict[str, str] | None = None,
                    cwd: str | Path = "/", stdin: IO[bytes] | int | None = subprocess.DEVNULL
                    ) -> subprocess.Popen[str]:
    """Start ``argv`` (full path first) while the lock file ``lock_path`` is held here, and
    stop it (SIGSTOP) once it has opened that file: whatever it checked before asking for the
    lock is checked; it holds no lock while stopped (FileLock polls with LOCK_NB). A command
    that ends without ever opening the lock file is an AssertionError ("never asked for
    it")."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env or CLEAN_ENV,
                                cwd=cwd)
        wait_until(proc, lambda: has_open(proc.pid, lock_path), f"asking for {lock_path}")
        stop(proc)
    finally:
        os.close(fd)  # the lock goes with it
    return proc


def stopped_at_assign_lock(inst: Install, argv: list[str]) -> subprocess.Popen[str]:
    """:func:`stopped_at_lock` for the installed command ``argv`` and users/assign's lock."""
    return stopped_at_lock(inst.qmaildir / "users" / "assign.lock",
                           [str(inst.bin / argv[0]), *argv[1:]])


def resumed(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    """Let a stopped ``proc`` go on; its result."""
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
