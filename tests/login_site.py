"""A site for login tests: an install with example.com, a way to run the installed vchkpw as a
POP3/IMAP/SMTP server runs it (credentials on fd 3, the server's environment, as root or as
the sandbox owner), a program that records what it was exec'd with, and a syslog socket."""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from install_site import Install
from delivery_site import DOMAIN, Site

#: what tcpserver sets for a POP3 connection from 192.0.2.10 (plus PATH)
POP_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PROTO": "TCP", "TCPLOCALIP": "192.0.2.1",
           "TCPLOCALPORT": "110", "TCPREMOTEIP": "192.0.2.10", "TCPREMOTEPORT": "40000"}
STAMP = "<27959.1795837166@anchor.test>"
DUMP = """#!/bin/sh
out=$1
{ echo "uid=$(id -u)"; echo "gid=$(id -g)"; echo "groups=$(id -G)"; echo "cwd=$(pwd -P)"
  env; } > "$out"
exit ${DUMP_EXIT:-0}
"""


class SyslogSink:
    """A datagram socket standing in for /dev/log; ``messages()`` drains what arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        found = []
        while True:
            try:
                found.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return found

    def texts(self) -> list[str]:
        """The messages without the ``<pri>date ident[pid]: `` prefix."""
        return [m.split("]: ", 1)[1] for m in self.messages()]

    def close(self) -> None:
        self.sock.close()


class Login:
    """What one vchkpw run did: its exit code, stderr, and (if the program ran) its record."""

    def __init__(self, result: subprocess.CompletedProcess[bytes], record: Path) -> None:
        self.code = result.returncode
        self.stderr = result.stderr.decode()
        self.ran = record.exists()
        self.env: dict[str, str] = {}
        if self.ran:
            for line in record.read_text().splitlines():
                key, _, value = line.partition("=")
                self.env.setdefault(key, value)
            record.unlink()

    def __repr__(self) -> str:
        return f"Login(code={self.code}, ran={self.ran}, stderr={self.stderr!r})"


class LoginSite(Site):
    """example.com on an install; ``login`` runs vchkpw as the server would."""

    def __init__(self, inst: Install, unprivileged: bool) -> None:
        super().__init__(inst, unprivileged)
        self.work = inst.prefix.parent / "login-work"
        self.work.mkdir(mode=0o777, exist_ok=True)
        self.work.chmod(0o777)
        self.dump = self.work / "dump.sh"
        self.dump.write_text(DUMP)
        self.dump.chmod(0o755)
        self.record = self.work / "record"
        self.syslog = SyslogSink(self.work / "log")
        inst.set_config("logging", "syslog_socket", str(self.syslog.path))

    def add(self, name: str, password: str, domain: str = DOMAIN) -> Path:
        self.ok("vadduser", f"{name}@{domain}", password)
        return self.user_dir(name)

    def login(self, login: str | bytes, password: str = "", stamp: str = STAMP, *,
              env: dict[str, str] | None = None, program: list[str] | None = None,
              data: bytes | None = None, fd3: bool = True, timeout: float = 30,
              wrap: tuple[str, ...] = ()) -> Login:
        """Run ``vchkpw <program>`` with ``login\\0password\\0stamp\\0`` on fd 3 (``data``
        replaces it) and ``env`` (POP_ENV by default), as root in the root install mode, under
        the command ``wrap`` (e.g. setpriv's, to run it as another user) if given."""
        if data is None:
            raw = login if isinstance(login, bytes) else login.encode()
            data = raw + b"\0" + password.encode() + b"\0" + stamp.encode() + b"\0"
        source = self.work / "fd3"
        source.write_bytes(data)
        vchkpw = str(self.inst.bin / "vchkpw")
        command = program if program is not None else [str(self.dump), str(self.record)]
        redirect = ' 3<"$f"' if fd3 else " 3<&-"
        argv = [*wrap, "/bin/sh", "-c", f'f=$1; shift; exec "$@"{redirect}', "sh", str(source),
                vchkpw, *command]
        result = subprocess.run(argv, capture_output=True, env=env if env is not None else POP_ENV,
                                cwd="/", timeout=timeout)
        return Login(result, self.record)
