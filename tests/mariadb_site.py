"""Real MariaDB servers for the SQL backend: private ``mariadbd`` instances (data dir and socket
under /tmp, TCP on a free loopback port), a primary and, for the read/update split, a replica
fed by real replication. Each test gets its own database and two accounts: ``vpop_rw`` (all
rights on the test databases) and ``vpop_ro`` (SELECT only), so a read that tried to write
would fail."""
from __future__ import annotations

import itertools
import os
import shutil
import socket
import select
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from install_site import Install

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db")
CLIENT = shutil.which("mariadb")
RW, RO, PASSWORD = "vpop_rw", "vpop_ro", "s3cret'pw"
_names = itertools.count(1)
#: what one server takes at once (MariaDB's default is 151). A test's peak is about 100: every
#: login or delivery run directly holds a read and an update connection (the fifty
#: simultaneous logins of tests/test_vchkpw.py: up to 100), and a vpopmail-server keeps both
#: in each of its 32 workers (64) while the requests it declines run directly. A stopped
#: server's workers end after its parent, so their connections can still be open when the
#: next test of this worker starts: room for that test's peak on top of them, and spare.
MAX_CONNECTIONS = 400


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MariaDB:
    """One private server; ``sql`` runs statements as its root over the socket."""

    def __init__(self, base: Path, name: str, server_id: int, *options: str) -> None:
        self.base = base / name
        self.datadir = self.base / "data"
        self.socket = str(self.base / "mysqld.sock")
        self.port = _free_port()
        self.server_id = server_id
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "MariaDB":
        """Start the server (on another free port if a parallel worker took this one)."""
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)  # the vpopmail user connects through the socket
        me = ["--user=root"] if os.geteuid() == 0 else []
        if not self.datadir.exists():
            self._install_db(me)
        for attempt in itertools.count(1):
            try:
                self._start_once(me)
                break
            except RuntimeError as error:
                if attempt == 3 or "Address already in use" not in str(error):
                    raise
                self.port = _free_port()
        return self

    def _install_db(self, me: list[str]) -> None:
        """A fresh data directory. mariadb-install-db has failed now and then when the machine
        was loaded by parallel runs: it is run again from an empty directory, and what it said
        is in the error if it fails three times."""
        for _ in range(3):
            result = subprocess.run([INSTALL_DB, "--no-defaults", f"--datadir={self.datadir}",
                                     "--auth-root-authentication-method=normal",
                                     "--skip-test-db", *me], capture_output=True, text=True)
            if result.returncode == 0:
                return
            shutil.rmtree(self.datadir, ignore_errors=True)
        raise RuntimeError(f"mariadb-install-db failed three times: {result.stdout}"
                           f"{result.stderr}")

    def _start_once(self, me: list[str]) -> None:
        self.process = subprocess.Popen(
            [MARIADBD, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--server-id={self.server_id}",
             f"--pid-file={self.base / 'pid'}", f"--log-error={self.base / 'error.log'}",
             "--innodb-buffer-pool-size=32M", "--skip-name-resolve",
             f"--max-connections={MAX_CONNECTIONS}", *self.options, *me],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadbd exited: {(self.base / 'error.log').read_text()}")
            if subprocess.run([CLIENT, "--no-defaults", "-S", self.socket, "-uroot", "-e",
                               "SELECT 1"], capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("mariadbd did not start in 60 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)

    def sql(self, statement: str, database: str = "") -> str:
        """Run statements as root; return the tab-separated output without headers."""
        result = subprocess.run([CLIENT, "--no-defaults", "-S", self.socket, "-uroot", "-N",
                                 "-B", "-r", "-e", statement, *([database] if database else [])],
                                capture_output=True, text=True)
        assert result.returncode == 0, (statement, result.stderr, self.died())
        return result.stdout

    def died(self) -> str:
        """How the server ended, if it has (its exit status and the end of its error log):
        what a failed statement's message carries, so that a crash under a loaded CI run
        says why."""
        if self.process is None or self.process.poll() is None:
            return ""
        try:
            log = (self.base / "error.log").read_text(errors="replace")[-3000:]
        except OSError as exc:
            log = f"(no error log: {exc.strerror})"
        return f"mariadbd exited with {self.process.returncode}: {log}"

    def rows(self, statement: str, database: str = "") -> list[list[str]]:
        return [line.split("\t") for line in self.sql(statement, database).splitlines()]


class Database:
    """One test's database on ``server`` (and, with a replica, its copy there)."""

    def __init__(self, server: MariaDB, name: str, replica: MariaDB | None = None) -> None:
        self.server = server
        self.name = name
        self.replica = replica

    def rows(self, statement: str) -> list[list[str]]:
        return self.server.rows(statement, self.name)

    def sync(self) -> None:
        """Wait until the replica has applied everything the primary has written."""
        if self.replica is None:
            return
        position = self.server.sql("SELECT @@gtid_binlog_pos").strip()
        waited = self.replica.sql(f"SELECT MASTER_GTID_WAIT('{position}', 30)").strip()
        assert waited == "0", f"replica did not reach {position}"

    def configure(self, inst: Install, *, split: bool = False, tcp: bool = False,
                  many_domains: bool = True) -> None:
        """Point ``inst`` at this database: reads as vpop_ro, updates as vpop_rw; ``split``
        reads from the replica; ``tcp`` connects over 127.0.0.1 instead of the socket."""
        read = self.replica if split and self.replica else self.server
        settings: dict[str, object] = {
            "many_domains": many_domains,
            "read_user": RO, "read_password": PASSWORD, "read_database": self.name,
            "update_user": RW, "update_password": PASSWORD, "update_database": self.name,
        }
        for side, server in (("read", read), ("update", self.server)):
            if tcp:
                settings.update({f"{side}_host": "127.0.0.1", f"{side}_port": server.port})
            else:
                settings[f"{side}_socket"] = server.socket
        values = _config_values(inst)
        values["users_backend"] = "mysql"
        values.update({f"mysql_{key}": value for key, value in settings.items()})
        _write_config(inst, values)


#: the cap of a program run against a frozen :class:`Proxy` (``wrap`` of Site.deliver,
#: LoginSite.login): a hang ends with 124, far above the few seconds of the bound tested
FROZEN_CAP = ("timeout", "45")


class Proxy:
    """A TCP relay on 127.0.0.1 to ``server``, with a switch: :meth:`freeze` stops relaying
    in both directions, closing nothing, at each connection's next command (at once for one
    established; a new one is let through its handshake first, as a server whose listener
    still answers): a frozen mysqld, a host gone over TCP without a reset, a partition after
    the connection was made. The client's reads wait; :meth:`thaw` relays again."""

    def __init__(self, server: MariaDB) -> None:
        self.server = server
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.marker = b""  # :meth:`freeze_before`
        self.stopped = threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def freeze(self) -> None:
        self.frozen.set()

    def freeze_before(self, marker: bytes) -> None:
        """Freeze as a client's command holding ``marker`` comes (it is not relayed)."""
        self.marker = marker

    def thaw(self) -> None:
        self.frozen.clear()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            if not select.select([self.listener], [], [], 0.1)[0]:
                continue
            client, _ = self.listener.accept()
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.server.socket)
            self.sockets += [client, upstream]
            commanding = threading.Event()  # the client has sent a command: handshake over
            for source, sink in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._relay,
                                          args=(source, sink, commanding, source is client),
                                          daemon=True)
                self.threads.append(thread)
                thread.start()

    def _relay(self, source: socket.socket, sink: socket.socket, commanding: threading.Event,
               from_client: bool) -> None:
        while not self.stopped.is_set():
            if not select.select([source], [], [], 0.1)[0]:
                continue
            try:
                if from_client and not commanding.is_set():
                    head = source.recv(4, socket.MSG_PEEK)
                    if len(head) == 4 and head[3] == 0:  # sequence 0: a command
                        commanding.set()
                if from_client and self.marker and self.marker in source.recv(
                        65536, socket.MSG_PEEK):
                    self.frozen.set()
                if self.frozen.is_set() and commanding.is_set():
                    time.sleep(0.05)  # leave it unread
                    continue
                data = source.recv(65536)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(5)
        for sock in self.sockets:
            sock.close()


@contextmanager
def proxied(db: Database, inst: Install) -> Iterator[Proxy]:
    """``inst``'s reads and updates go to ``db`` through a :class:`Proxy` (TCP)."""
    proxy = Proxy(db.server)
    try:
        for side in ("read", "update"):
            inst.set_config("mysql", f"{side}_socket", "")
            inst.set_config("mysql", f"{side}_host", "127.0.0.1")
            inst.set_config("mysql", f"{side}_port", proxy.port)
        yield proxy
    finally:
        proxy.close()


def frozen_answers_temporary(site: object, where: str) -> None:
    """With the database behind ``where`` (host:port/database) frozen (:meth:`Proxy.freeze`):
    alice's delivery from a file and from a pipe is deferred and her login answers 111 (never
    1), each naming ``where`` and saying it did not answer. ``site``: a LoginSite."""
    for pipe in (False, True):
        delivery = site.deliver("alice", pipe=pipe, wrap=FROZEN_CAP)  # type: ignore[attr-defined]
        assert delivery.returncode == 111, delivery
        assert delivery.stdout.startswith(b"vdelivermail: deferred, database down"), delivery
        assert where.encode() in delivery.stdout and b"did not answer" in delivery.stdout
    login = site.login("alice@example.com", "pw", wrap=FROZEN_CAP,  # type: ignore[attr-defined]
                       timeout=120)
    assert (login.code, login.ran) == (111, False), login
    assert where in login.stderr and "did not answer" in login.stderr, login


def _config_values(inst: Install) -> dict[str, object]:
    from vpopmail import config as vconfig

    return vconfig.parse_file(str(inst.config_path))


def _write_config(inst: Install, values: dict[str, object]) -> None:
    from vpopmail import config as vconfig

    inst.config_path.write_text(vconfig.render(values))
    os.chmod(inst.config_path, 0o640)  # it holds database passwords now
    if inst.mode == "root":
        os.chown(inst.config_path, 0, inst.gid)


def _accounts(server: MariaDB) -> None:
    server.sql(
        f"CREATE USER IF NOT EXISTS '{RW}'@'localhost' IDENTIFIED BY \"{PASSWORD}\";"
        f"CREATE USER IF NOT EXISTS '{RW}'@'127.0.0.1' IDENTIFIED BY \"{PASSWORD}\";"
        f"CREATE USER IF NOT EXISTS '{RO}'@'localhost' IDENTIFIED BY \"{PASSWORD}\";"
        f"CREATE USER IF NOT EXISTS '{RO}'@'127.0.0.1' IDENTIFIED BY \"{PASSWORD}\";"
        f"GRANT ALL ON `t\\_%`.* TO '{RW}'@'localhost', '{RW}'@'127.0.0.1';"
        f"GRANT SELECT ON `t\\_%`.* TO '{RO}'@'localhost', '{RO}'@'127.0.0.1';"
        "CREATE USER IF NOT EXISTS 'repl'@'127.0.0.1' IDENTIFIED BY 'repl';"
        "GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1';")


def _base() -> Path:
    # short: a unix socket path has at most 107 bytes
    return Path("/tmp") / f"pyvp-mdb-{os.getpid()}"


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """The primary server (binary log on, so a replica can follow it)."""
    if not (INSTALL_DB and CLIENT and os.path.exists(MARIADBD)):
        pytest.skip("needs mariadb-server and mariadb-client (packaging/bootstrap)")
    base = _base()
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o755)
    server = MariaDB(base, "primary", 1, "--log-bin=primary-bin", "--binlog-format=ROW").start()
    _accounts(server)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def mariadb_replica(mariadb: MariaDB) -> Iterator[MariaDB]:
    """A second server replicating everything from the primary, read-only to its clients."""
    replica = MariaDB(_base(), "replica", 2, "--read-only=1").start()
    replica.sql(f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={mariadb.port}, "
                "MASTER_USER='repl', MASTER_PASSWORD='repl', MASTER_USE_GTID=slave_pos; "
                "START SLAVE")
    try:
        yield replica
    finally:
        replica.stop()


def new_database(server: MariaDB, replica: MariaDB | None = None) -> Database:
    name = f"t_{os.getpid()}_{next(_names)}"
    server.sql(f"CREATE DATABASE `{name}`")
    database = Database(server, name, replica)
    database.sync()
    return database


@pytest.fixture
def sql_db(mariadb: MariaDB) -> Iterator[Database]:
    """A fresh database on the primary (reads and updates both go there)."""
    database = new_database(mariadb)
    try:
        yield database
    finally:
        mariadb.sql(f"DROP DATABASE IF EXISTS `{database.name}`")


@pytest.fixture
def replicated_db(mariadb: MariaDB, mariadb_replica: MariaDB) -> Iterator[Database]:
    """A fresh database on the primary, replicated to the replica."""
    database = new_database(mariadb, mariadb_replica)
    try:
        yield database
    finally:
        mariadb.sql(f"DROP DATABASE IF EXISTS `{database.name}`")
