"""vpopmaild for tests: a site with users at the three levels, the daemon run on pipes as
tcpserver would run it (a whole conversation, or line by line), and vchkpw as a POP server
would run it to check which password works."""
from __future__ import annotations

import grp
import os
import pwd
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from install_site import CLEAN_ENV, VENV, Install, install, vpopmail_user_exists
from mariadb_site import Database, new_database

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
        from install_site import as_user_argv

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


class Snapshot:
    """A site built once and put back as it was before each test that uses it, on the same
    paths (the installed wrappers hold absolute paths): the domains, etc/ and the qmail tree
    copied with ``cp -a`` (owners and modes kept), and on "mysql" every table of the database
    copied into a second one."""

    def __init__(self, inst: Install, database: Database | None) -> None:
        self.inst, self.database = inst, database
        self.trees = [inst.domains, inst.prefix / "etc", inst.qmaildir]
        self.copy = inst.prefix.parent / "snapshot"
        self.copy.mkdir()
        for number, tree in enumerate(self.trees):
            subprocess.run(["cp", "-a", str(tree), str(self.copy / str(number))], check=True)
        if database is not None:
            self.saved = f"{database.name}_saved"
            self.tables = self._tables(database.name)
            database.server.sql(f"CREATE DATABASE `{self.saved}`; " + " ".join(
                f"CREATE TABLE `{self.saved}`.`{t}` LIKE `{database.name}`.`{t}`; "
                f"INSERT INTO `{self.saved}`.`{t}` SELECT * FROM `{database.name}`.`{t}`;"
                for t in self.tables))

    def _tables(self, name: str) -> list[str]:
        assert self.database is not None
        return [row[0] for row in self.database.server.rows("SHOW TABLES", name)]

    def restore(self) -> Install:
        for number, tree in enumerate(self.trees):
            shutil.rmtree(tree)
            subprocess.run(["cp", "-a", str(self.copy / str(number)), str(tree)], check=True)
        if self.database is not None:
            name, now = self.database.name, self._tables(self.database.name)
            self.database.server.sql(" ".join(
                [f"DROP TABLE `{name}`.`{t}`;" for t in now if t not in self.tables]
                + [f"CREATE TABLE `{name}`.`{t}` LIKE `{self.saved}`.`{t}`;"
                   for t in self.tables if t not in now]
                + [f"TRUNCATE TABLE `{name}`.`{t}`; INSERT INTO `{name}`.`{t}` "
                   f"SELECT * FROM `{self.saved}`.`{t}`;" for t in self.tables]))
        return self.inst

    def remove(self) -> None:
        """Remove the trees (the databases go with the session's MariaDB server)."""
        shutil.rmtree(self.inst.prefix.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def built_sites() -> Iterator[dict[tuple[str, str], Snapshot]]:
    """The vpopmaild sites by (install mode, backend), shared by the vpopmaild test modules
    and removed at the end of the session."""
    built: dict[tuple[str, str], Snapshot] = {}
    yield built
    for snapshot in built.values():
        snapshot.remove()


def shared_site(request: pytest.FixtureRequest, mode: str) -> Install:
    """The site for ``mode`` ("user": a sandbox owned by the tester, "root": installed as root
    for uid 89) on the test's backend: built by the first test that asks, restored for the
    others (one build instead of an install and seven process runs per test)."""
    backend = request.getfixturevalue("backend")
    built = request.getfixturevalue("built_sites")
    if (mode, backend) in built:
        return built[mode, backend].restore()
    venv = VENV
    if mode == "root":
        if os.geteuid() != 0 or not vpopmail_user_exists() or not shutil.which("setpriv"):
            pytest.skip("needs root, the vpopmail user and setpriv")
        venv = request.getfixturevalue("shared_venv")
        base = Path("/tmp") / f"pyvpopmail-root-{os.getpid()}-vpopmaild-{backend}"
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(mode=0o755)
        owner = ("vpopmail", "vchkpw")
    else:
        base = request.getfixturevalue("tmp_path_factory").mktemp(f"vpopmaild-{backend}")
        owner = (pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name)
    inst = install(base / "vpopmail", base / "qmail", *owner, venv, mode)
    database = None
    if backend == "mysql":
        database = new_database(request.getfixturevalue("mariadb"))
        database.configure(inst)
        inst.backend = "mysql"
    built[mode, backend] = Snapshot(make_site(inst), database)
    return inst


@pytest.fixture
def site(backend: str, request: pytest.FixtureRequest) -> Install:
    """A sandbox install with :data:`USERS` (on the module's backend), as built."""
    return shared_site(request, "user")


@pytest.fixture
def rsite(backend: str, request: pytest.FixtureRequest) -> Install:
    """A root install for uid 89 with :data:`USERS` (tcpserver's way: the daemon as root)."""
    return shared_site(request, "root")


def user_dir(inst: Install, address: str) -> Path:
    return Path(inst.vuser(address).dir)
