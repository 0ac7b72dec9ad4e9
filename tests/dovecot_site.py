"""A private, real Dovecot 2.3 for tests: POP3 and IMAP on free 127.0.0.1 ports, authenticating
through a checkpassword program (passdb checkpassword + userdb prefetch, optionally userdb
checkpassword too) or through included files (``includes``: e.g. a sql passdb and userdb),
configured by one dovecot.conf in a directory of the test.

    with Dovecot(tmp_path / "dovecot", "/path/to/checkpassword") as dovecot:
        with dovecot.pop3_login("alice@example.com", "secret") as pop:
            assert pop.stat()[0] == 1
        assert dovecot.auth_test("alice@example.com", "secret").returncode == 0
        assert dovecot.doveadm("user", "alice@example.com").returncode == 0  # userdb_checkpassword

Needs root (the auth service runs as root, as vchkpw needs) and the dovecot-core, -pop3d and
-imapd packages. The mail homes the program answers must be reachable by the mail uid; the
Dovecot directory itself may be a 0700 tmp_path. Starting takes ~0.05 s, stopping ~1 s.

Failed authentications are answered after ~0.5 s (``auth_failure_delay = 0``; Dovecot flushes
delayed failures every 500 ms; the default delay is 2 s), and the next one from the same IP
waits ~4 s more (the anvil auth penalty, growing to 15 s; no setting turns it off while the
auth service runs as root): use ``new_source_ip()`` for each failure."""
from __future__ import annotations

import imaplib
import itertools
import os
import poplib
import pwd
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil
import pytest

DOVECOT = Path("/usr/sbin/dovecot")
DOVEADM = Path("/usr/bin/doveadm")
#: the program Dovecot passes as the checkpassword program's argument
CHECKPASSWORD_REPLY = "/usr/lib/dovecot/checkpassword-reply"
#: users the Debian package creates; Dovecot refuses to start without them
LOGIN_USER, INTERNAL_USER = "dovenull", "dovecot"
#: the whole environment the master (and doveadm) get; only import_environment reaches children
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
_source_ips = itertools.count(2)


def unavailable() -> str | None:
    """Why a real Dovecot cannot run here (for ``pytest.skip``), or None if it can."""
    if os.geteuid() != 0:
        return "Dovecot tests need root"
    missing = [str(p) for p in (DOVECOT, DOVEADM, Path(CHECKPASSWORD_REPLY)) if not p.exists()]
    if missing or not Path("/usr/lib/dovecot/pop3").exists() \
            or not Path("/usr/lib/dovecot/imap").exists():
        return "needs dovecot-core, dovecot-pop3d and dovecot-imapd: missing " + " ".join(missing)
    for user in (LOGIN_USER, INTERNAL_USER):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"needs the {user} user (created by dovecot-core)"
    return None


def new_source_ip() -> str:
    """A loopback address no earlier call returned (127.0.0.2, .3, …, 127.0.1.0, …), so a
    login from it carries no auth penalty from an earlier failure."""
    n = next(_source_ips)
    return f"127.0.{n // 256 % 256}.{n % 256}"


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def alive(proc: psutil.Process) -> bool:
    """Whether ``proc`` still runs (not a zombie: a zombie re-parented to init lingers, here
    up to a second, until init reaps it)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` for ``procs`` to end; those still alive."""
    deadline = time.monotonic() + timeout
    while (procs := [p for p in procs if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return procs


class SourcePOP3(poplib.POP3):
    """poplib.POP3 connecting from ``source_ip``; a context manager (QUIT, or close)."""

    def __init__(self, host: str, port: int, source_ip: str, timeout: float = 10) -> None:
        self.source_ip = source_ip
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source_ip, 0))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.quit()
        except (poplib.error_proto, OSError, EOFError):
            self.close()


class SourceIMAP4(imaplib.IMAP4):
    """imaplib.IMAP4 connecting from ``source_ip``; a context manager (LOGOUT) as IMAP4 is."""

    def __init__(self, host: str, port: int, source_ip: str, timeout: float = 10) -> None:
        self.source_ip = source_ip
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source_ip, 0))


class Dovecot:
    """One Dovecot instance under ``base`` (config, runtime dir, state, log); a context
    manager that starts it and always stops it.

    ``checkpassword`` is the passdb (and userdb) ``args =`` line; ``env`` is given to the
    auth process and so to the program (``import_environment``, values without blanks);
    ``uid``/``gid`` are the only ids mail processes may run as; ``userdb_checkpassword``
    adds ``userdb { driver = checkpassword }`` after ``prefetch``, for lookups without a
    login (``doveadm user``, LDA), where the program is called with ``AUTHORIZED=1``;
    ``auth_user`` is the user the auth process (and so the program) runs as; ``includes``
    replaces the checkpassword passdb/userdb by ``!include`` of these files (e.g. a sql
    passdb and userdb; ``checkpassword`` is then unused)."""

    #: the setting of an inet_listener's address (2.4 renamed it ``listen``)
    LISTEN = "address"

    def __init__(self, base: Path, checkpassword: str, *, env: Mapping[str, str] | None = None,
                 uid: int = 89, gid: int = 89, userdb_checkpassword: bool = False,
                 auth_debug: bool = False, start_timeout: float = 15,
                 auth_user: str = "root", includes: Sequence[Path] = ()) -> None:
        self.base = Path(base).resolve()
        self.checkpassword = checkpassword
        self.env = dict(env or {})
        for key, value in self.env.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or re.search(r"\s|\"", value):
                raise ValueError(f"cannot pass {key}={value!r} through import_environment")
        self.uid, self.gid = uid, gid
        self.userdb_checkpassword = userdb_checkpassword
        self.auth_user = auth_user
        self.includes = [Path(p).resolve() for p in includes]
        self.auth_debug = auth_debug
        self.start_timeout = start_timeout
        self.conf = self.base / "dovecot.conf"
        self.run_dir = self.base / "run"
        self.state_dir = self.base / "state"
        self.log_path = self.base / "dovecot.log"
        self.out_path = self.base / "master.out"   # the master's stdout/stderr (early fatals)
        self.process: subprocess.Popen[bytes] | None = None
        self.base.mkdir(parents=True, exist_ok=True)
        self.pop3_port, self.imap_port = _free_ports(2)
        self.instance = f"pyvpop{self.pop3_port}"
        self.write_config()

    # -- configuration --------------------------------------------------------------------

    def config_text(self) -> str:
        """The dovecot.conf for the current ports and options."""
        imports = " ".join(["TZ", *(f"{k}={v}" for k, v in self.env.items())])
        userdb = ("\nuserdb {\n  driver = checkpassword\n  args = " + self.checkpassword + "\n}"
                  if self.userdb_checkpassword else "")
        auth = (f"passdb {{\n  driver = checkpassword\n  args = {self.checkpassword}\n}}\n"
                f"userdb {{\n  driver = prefetch\n}}{userdb}")
        if self.includes:
            auth = "\n".join(f"!include {path}" for path in self.includes)
        return f"""\
# written by tests/dovecot_site.py: a private instance, self-contained
{self.instance_text()}disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_cache_size = 0
mail_location = maildir:~/Maildir
first_valid_uid = {self.uid}
last_valid_uid = {self.uid}
first_valid_gid = {self.gid}
last_valid_gid = {self.gid}
default_login_user = {LOGIN_USER}
default_internal_user = {INTERNAL_USER}
import_environment = {imports}

{auth}

{self.services_text()}"""

    def instance_text(self) -> str:
        """This instance's directories, logs and addresses (settings 2.3 and 2.4 share)."""
        return f"""\
base_dir = {self.run_dir}
state_dir = {self.state_dir}
instance_name = {self.instance}
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
auth_verbose = yes
auth_debug = {"yes" if self.auth_debug else "no"}
protocols = pop3 imap
listen = 127.0.0.1
ssl = no
"""

    def services_text(self) -> str:
        """The auth service's user and the POP3 and IMAP listeners on this instance's
        loopback ports."""
        return f"""\
service auth {{
  user = {self.auth_user}
}}
service pop3-login {{
  inet_listener pop3 {{
    {self.LISTEN} = 127.0.0.1
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    {self.LISTEN} = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""

    def write_config(self) -> None:
        self.conf.write_text(self.config_text())

    @staticmethod
    def unavailable() -> str | None:
        """Why this Dovecot cannot run here, or None."""
        return unavailable()

    def master_argv(self) -> list[str]:
        """The command that runs the master in the foreground."""
        return [str(DOVECOT), "-F", "-c", str(self.conf)]

    def doveadm_argv(self) -> list[str]:
        """The command that runs doveadm on this instance's configuration."""
        return [str(DOVEADM), "-c", str(self.conf)]

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Run ``dovecot -F`` and wait until both ports listen (new ports if one was taken);
        on failure nothing is left running and the error shows the end of the log."""
        if self.process is not None:
            raise RuntimeError("already started")
        if reason := self.unavailable():
            raise RuntimeError(reason)
        for attempt in range(3):
            try:
                self._start_once()
                return
            except RuntimeError as error:
                if attempt == 2 or "Address already in use" not in str(error):
                    raise
                self.pop3_port, self.imap_port = _free_ports(2)
                self.instance = f"pyvpop{self.pop3_port}"
                self.write_config()

    def _start_once(self) -> None:
        with open(self.out_path, "ab") as out:
            self.process = subprocess.Popen(self.master_argv(),
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                            env=BASE_ENV, cwd="/")
        try:
            self._wait_listening(self.process)
        except BaseException:  # includes KeyboardInterrupt: __exit__ will not run
            self.stop()
            raise

    def _wait_listening(self, master: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.start_timeout
        wanted = {self.pop3_port, self.imap_port}
        while True:
            if master.poll() is not None:
                raise RuntimeError(f"dovecot exited at start (status {master.returncode}):\n"
                                   + self._diagnostics())
            try:
                listening = {c.laddr.port for c in psutil.Process(master.pid)
                             .net_connections(kind="tcp4") if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                listening = set()
            if wanted <= listening:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"dovecot did not listen on {sorted(wanted)} within "
                                   f"{self.start_timeout} s:\n{self._diagnostics()}")
            time.sleep(0.02)

    def _diagnostics(self, lines: int = 30) -> str:
        text = self.out_path.read_text(errors="replace") if self.out_path.exists() else ""
        return "\n".join((text + self.log_text()).splitlines()[-lines:])

    def processes(self) -> list[psutil.Process]:
        """The live processes of this instance: the master's descendants, and any process
        titled ``dovecot-<instance>/…`` (re-parented after the master died)."""
        found: dict[int, psutil.Process] = {}
        if self.process is not None:
            try:
                master = psutil.Process(self.process.pid)
                found.update((p.pid, p) for p in master.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        prefix = f"dovecot-{self.instance}/"
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if cmdline and cmdline[0].startswith(prefix):
                found[proc.pid] = proc
        return [p for p in found.values() if alive(p)]

    def stop(self, timeout: float = 5, graceful: bool = True) -> None:
        """SIGTERM the master and wait (SIGKILL after ``timeout``), then make sure no process
        of this instance is left (waited for, then SIGKILLed); raises if one survives.
        Takes about 1 s: the master sleeps 1 s to let its log process flush. ``graceful=False``
        (the factory's teardown, when the test has read what it needed) SIGKILLs every process
        of the instance at once instead."""
        if self.process is None:
            return
        process = self.process
        leftovers = self.processes()
        self.process = None
        if process.poll() is None:
            if graceful:
                process.send_signal(signal.SIGTERM)
            else:
                process.kill()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        leftovers += self.processes()
        if graceful:
            leftovers = _wait_gone(leftovers, timeout)
        for proc in leftovers:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        if leftovers := _wait_gone(leftovers, timeout):
            raise RuntimeError(f"dovecot processes survived SIGKILL: {leftovers}")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- observing ------------------------------------------------------------------------

    def log_text(self, since: int = 0) -> str:
        """The log (all of Dovecot's, including auth and debug lines) from byte ``since``."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_mark(self) -> int:
        """The log's current size: pass it as ``since`` to see only what comes after."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_log(self, pattern: str, since: int = 0, timeout: float = 5) -> str:
        """The log from ``since`` once it matches the regex ``pattern`` (multi-line mode:
        Dovecot's log process writes a little after the client got its answer); raises on
        timeout."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text(since)
            if re.search(pattern, text, re.MULTILINE):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in the dovecot log after {timeout} s:\n"
                                     + text[-3000:])
            time.sleep(0.02)

    # -- clients --------------------------------------------------------------------------

    def doveadm(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``doveadm -c <conf> ARGS`` (e.g. ``auth test USER PASS``: exit 0 or 77; ``user
        USER``), output captured as text."""
        return subprocess.run([*self.doveadm_argv(), *args], check=False,
                              capture_output=True, text=True, env=BASE_ENV, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def auth_test(self, user: str, password: str, source_ip: str | None = None
                  ) -> subprocess.CompletedProcess[str]:
        """``doveadm auth test`` as from ``source_ip`` (``-x rip=``; a new address by default:
        failed tests without one all share one auth penalty, 4 s and growing)."""
        rip = source_ip or new_source_ip()
        return self.doveadm("auth", "test", "-x", f"rip={rip}", user, password)

    def pop3(self, source_ip: str = "127.0.0.1", timeout: float = 10) -> SourcePOP3:
        """A POP3 connection from ``source_ip`` (any 127.x.y.z), greeting read."""
        return SourcePOP3("127.0.0.1", self.pop3_port, source_ip, timeout)

    def pop3_login(self, user: str, password: str, source_ip: str = "127.0.0.1",
                   timeout: float = 10) -> SourcePOP3:
        """A POP3 session after USER/PASS; raises poplib.error_proto (closed) on refusal."""
        client = self.pop3(source_ip, timeout)
        try:
            client.user(user)
            client.pass_(password)
        except BaseException:
            client.close()
            raise
        return client

    def imap(self, source_ip: str = "127.0.0.1", timeout: float = 10) -> SourceIMAP4:
        """An IMAP connection from ``source_ip`` (any 127.x.y.z), greeting read."""
        return SourceIMAP4("127.0.0.1", self.imap_port, source_ip, timeout)

    def assert_refused(self, login: str, password: str,
                       logged: str = r"imap-login: .*auth failed, 1 attempts") -> str:
        """A POP3 and an IMAP login of ``login`` with ``password`` are each refused as a failed
        authentication, from new addresses; the log they made once it shows ``logged``, which
        tells of no error nor temporary failure."""
        mark = self.log_mark()
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Authentication failed"):
            self.pop3_login(login, password, new_source_ip())
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            self.imap_login(login, password, new_source_ip())
        log = self.wait_log(logged, mark)
        assert "Error" not in log and "temporary" not in log.lower(), log
        return log

    def imap_login(self, user: str, password: str, source_ip: str = "127.0.0.1",
                   timeout: float = 10) -> SourceIMAP4:
        """An IMAP session after LOGIN; raises imaplib.IMAP4.error (closed) on refusal."""
        client = self.imap(source_ip, timeout)
        try:
            client.login(user, password)
        except BaseException:
            client.shutdown()
            raise
        return client


#: Dovecot 2.4 (Debian 13's: 2.4 removed checkpassword, so it reads the SQL tables with the
#: shipped packaging/dovecot/dovecot24-vpopmail.conf): a minimal Debian 13 tree that
#: packaging/bootstrap makes there as root (debootstrap), with the vpopmail user and group
DOVECOT24_ROOT = Path(__file__).resolve().parents[1] / ".peers" / "dovecot-2.4"
#: run in a mount namespace of its own: each host directory given after the root is bound
#: at its own path inside the tree, then the command runs chrooted there
_CHROOTED = ('root=$1; shift; while [ "$1" != -- ]; do mkdir -p "$root$1" && '
             'mount --bind "$1" "$root$1" || exit 111; shift; done; shift; '
             'exec chroot "$root" "$@"')


def unavailable24() -> str | None:
    """Why Dovecot 2.4 cannot run here (for ``pytest.skip``), or None if it can."""
    if os.geteuid() != 0:
        return "Dovecot tests need root"
    if not (DOVECOT24_ROOT / "usr" / "sbin" / "dovecot").exists() or not \
            (DOVECOT24_ROOT / "usr/lib/dovecot/modules/auth/libauthdb_lua.so").exists():
        return f"needs Dovecot 2.4 in {DOVECOT24_ROOT} (packaging/bootstrap makes it, as root)"
    passwd = (DOVECOT24_ROOT / "etc" / "passwd").read_text()
    if not re.search(r"(?m)^vpopmail:", passwd):
        return f"needs the vpopmail user in {DOVECOT24_ROOT}/etc/passwd (packaging/bootstrap)"
    return None


class Dovecot24(Dovecot):
    """Dovecot 2.4 from DOVECOT24_ROOT, run chrooted there in a mount namespace of its own
    where the host directories ``shared`` (this instance's ``base``, the mail homes, the
    database's socket) are bound at their own paths. Authenticates through ``includes``
    only (2.4 has no checkpassword driver); doveadm runs in the master's namespace and
    root."""

    LISTEN = "listen"

    def __init__(self, base: Path, *, shared: Sequence[Path] = (), **options: object) -> None:
        self.shared = [Path(p).resolve() for p in shared]
        super().__init__(base, "", **options)  # type: ignore[arg-type]
        if not any(self.base.is_relative_to(p) for p in self.shared):
            self.shared.append(self.base)

    @staticmethod
    def unavailable() -> str | None:
        return unavailable24()

    def config_text(self) -> str:
        """The dovecot.conf (2.4 syntax) for the current ports and options."""
        auth = "\n".join(f"!include {path}" for path in self.includes)
        return f"""\
# written by tests/dovecot_site.py: a private Dovecot 2.4 instance
dovecot_config_version = 2.4.1
dovecot_storage_version = 2.4.1
{self.instance_text()}auth_allow_cleartext = yes
auth_mechanisms = plain login
auth_failure_delay = 0
auth_cache_size = 0
default_login_user = {LOGIN_USER}
default_internal_user = {INTERNAL_USER}

{auth}

first_valid_uid = {self.uid}
last_valid_uid = {self.uid}
first_valid_gid = {self.gid}
last_valid_gid = {self.gid}

{self.services_text()}"""

    def master_argv(self) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _CHROOTED,
                "sh", str(DOVECOT24_ROOT), *map(str, self.shared), "--",
                "/usr/sbin/dovecot", "-F", "-c", str(self.conf)]

    def stop(self, timeout: float = 5, graceful: bool = True) -> None:
        """Stop as :meth:`Dovecot.stop`, then take out the empty directories the binds were
        made on inside the tree (their namespace ended with the master)."""
        try:
            super().stop(timeout, graceful)
        finally:
            for path in self.shared:
                inside = DOVECOT24_ROOT / path.relative_to("/")
                while inside.parent != DOVECOT24_ROOT:
                    try:
                        inside.rmdir()
                    except OSError:
                        break  # not empty (or gone): what is above it stays too
                    inside = inside.parent

    def doveadm_argv(self) -> list[str]:
        if self.process is None:
            raise RuntimeError("doveadm of Dovecot 2.4 needs its running master")
        return ["nsenter", f"--target={self.process.pid}", "--mount", "--root", "--wd",
                "/usr/bin/doveadm", "-c", str(self.conf)]


def _factory(kind: type[Dovecot], tmp_path: Path) -> Iterator[Callable[..., Dovecot]]:
    """The body of the factory fixtures: ``make(*args, **options)`` starts a ``kind`` under
    tmp_path (one subdirectory each); all are killed at teardown, even when the test failed
    (a graceful stop costs the master's 1 s log flush, 45 s over the suite;
    test_dovecot_harness tests it)."""
    if reason := kind.unavailable():
        pytest.skip(reason)
    started: list[Dovecot] = []

    def make(*args: object, **options: object) -> Dovecot:
        server = kind(tmp_path / f"dovecot{len(started)}", *args, **options)  # type: ignore[arg-type]
        started.append(server)
        server.start()
        return server

    yield make
    errors = []
    for server in reversed(started):
        try:
            server.stop(graceful=False)
        except Exception as error:  # noqa: BLE001 - stop every one, report the first
            errors.append(error)
    if errors:
        raise errors[0]


@pytest.fixture
def dovecot_factory(tmp_path: Path) -> Iterator[Callable[..., Dovecot]]:
    """``dovecot_factory(checkpassword, **options)``: a Dovecot 2.3 (see :func:`_factory`)."""
    yield from _factory(Dovecot, tmp_path)


@pytest.fixture
def dovecot24_factory(tmp_path: Path) -> Iterator[Callable[..., Dovecot]]:
    """``dovecot24_factory(includes=..., shared=..., **options)``: a Dovecot 2.4 (see
    :func:`_factory`)."""
    yield from _factory(Dovecot24, tmp_path)


__all__ = ["CHECKPASSWORD_REPLY", "DOVECOT24_ROOT", "Dovecot", "Dovecot24", "SourceIMAP4",
           "SourcePOP3", "alive", "dovecot24_factory", "dovecot_factory", "new_source_ip",
           "unavailable", "unavailable24"]
