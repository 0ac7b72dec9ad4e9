"""vpopmaild for tests: a site with users at the three levels, the daemon run on pipes as
tcpserver would run it (a whole conversation, or line by line), and vchkpw as a POP server
would run it to check which password works."""
from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CLEAN_ENV, Install

DOMAIN = "example.com"
OTHER = "other.org"
#: address -> password: a system admin, the domain admin, two users, and a user elsewhere
USERS = {f"admin@{DOMAIN}": "adm1", f"postmaster@{DOMAIN}": "secret", f"alice@{DOMAIN}": "pw1",
         f"bob@{DOMAIN}": "pw2", f"postmaster@{OTHER}": "opw", f"carol@{OTHER}": "pw3"}


def make_site(inst: Install) -> Install:
    inst.ok("vadddomain", DOMAIN, USERS[f"postmaster@{DOMAIN}"])
    inst.ok("vadddomain", OTHER, USERS[f"postmaster@{OTHER}"])
    for address, password in USERS.items():
        if not address.startswith("postmaster@"):
            inst.ok("vadduser", address, password)
    inst.ok("vmoduser", "-S", f"admin@{DOMAIN}")
    return inst


def converse(inst: Install, *lines: str | bytes, args: tuple[str, ...] = ("-t", "10"),
             as_user: str | None = None, timeout: float = 60,
             env: dict[str, str] | None = None) -> tuple[list[str], int]:
    """Send ``lines`` (CRLF added to str lines; bytes go as they are), then end the input;
    return the answer lines (each must end in CRLF) and the exit code. ``env`` is added to
    the clean environment (tcpserver's TCPREMOTEIP, say)."""
    data = b"".join(line if isinstance(line, bytes) else line.encode() + b"\r\n"
                    for line in lines)
    argv = [str(inst.bin / "vpopmaild"), *args]
    if as_user:
        from conftest import as_user_argv

        argv = [*as_user_argv(as_user), *argv]
    result = subprocess.run(argv, input=data, capture_output=True, env={**CLEAN_ENV, **(env or {})},
                            cwd="/", timeout=timeout)
    text = result.stdout.decode("utf-8", "surrogateescape")
    assert text.endswith("\r\n") or not text, text
    assert result.stderr == b"", result.stderr
    return text.split("\r\n")[:-1], result.returncode


def after_login(inst: Install, address: str, *lines: str | bytes, **kw: object) -> list[str]:
    """The answers to ``lines`` after a silent login as ``address`` (greeting, login answer
    and the quit's answer left out)."""
    answers, code = converse(inst, f"slogin {address} {USERS[address]}", *lines, "quit",
                             **kw)  # type: ignore[arg-type]
    assert answers[:2] == ["+OK ", "+OK "], answers
    assert answers[-1] == "+OK " and code == 0, (answers, code)
    return answers[2:-1]


class Client:
    """An interactive connection: ``ask`` sends one line and reads the answer's lines."""

    def __init__(self, inst: Install, *args: str) -> None:
        self.proc = subprocess.Popen([str(inst.bin / "vpopmaild"), *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=CLEAN_ENV, cwd="/")
        self.buffer = b""

    def line(self, timeout: float = 30) -> str | None:
        """The next answer line, None at the end of the output."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while b"\r\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError("no answer")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\r\n")
        self.proc.stdin.flush()

    def ask(self, line: str) -> str | None:
        self.send(line)
        return self.line()

    def close(self) -> int:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()


def vchkpw_accepts(inst: Install, address: str, password: str) -> bool:
    """Whether the installed vchkpw takes ``password`` for ``address`` (a POP3 login)."""
    data = inst.prefix.parent / "vchkpw-input"
    data.write_bytes(f"{address}\0{password}\0\0".encode())
    result = subprocess.run(["/bin/sh", "-c", 'f=$1; shift; exec "$@" 3<"$f"', "sh", str(data),
                             str(inst.bin / "vchkpw"), "/bin/true"], capture_output=True,
                            env={**CLEAN_ENV, "TCPLOCALPORT": "110"}, cwd="/", timeout=60)
    assert result.returncode in (0, 1), result
    return result.returncode == 0


@pytest.fixture
def site(vhome: Install) -> Install:
    """A sandbox install with :data:`USERS` (on the module's backend)."""
    return make_site(vhome)


def user_dir(inst: Install, address: str) -> Path:
    return Path(inst.vuser(address).dir)
