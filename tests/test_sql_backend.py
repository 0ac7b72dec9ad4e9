"""The SQL backend's own behaviour against a real MariaDB: vpopmail's schema (and a database a C
vpopmail made), per-domain tables, the read/update split over real replication, temporary
failures, transactions and locks, hostile values, lastauth/relay/limits tables, and hygiene
(no inherited database sockets, no aborted connections)."""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from install_site import Install
from delivery_site import DOMAIN, Site
from login_site import POP_ENV, LoginSite
from mariadb_site import PASSWORD, RO, RW, Database, frozen_answers_temporary, proxied
from vpopmail.cdb import lookup
from vpopmail.errors import NoAuthConnection
from vpopmail.limits import COLUMNS, NUMBERS, SWITCHES, Limits
from vpopmail.stores.sql import Connection, Server, Unreachable, munch_domain


def user_dir(inst: Install, name: str, domain: str = DOMAIN) -> Path:
    user = inst.api().get_user(f"{name}@{domain}")[0]
    return Path(user.dir)


def sql_site(inst: Install, db: Database, cls: type[Site] = Site, **config: object) -> Site:
    """example.com with alice (password "pw") on ``inst``, users in ``db``."""
    db.configure(inst, **config)  # type: ignore[arg-type]
    site = cls(inst, inst.mode == "root")
    inst.ok("vadddomain", DOMAIN, "secret")
    inst.ok("vadduser", f"alice@{DOMAIN}", "pw")
    return site


# -- schema ------------------------------------------------------------------------------------
def test_vadddomain_creates_vpopmails_tables_with_its_column_names(vhome: Install, sql_db: Database
                                                                   ) -> None:
    sql_site(vhome, sql_db)
    tables = {row[0] for row in sql_db.rows("SHOW TABLES")}
    assert {"vpopmail", "lastauth", "valias"} <= tables
    columns = [row[0] for row in sql_db.rows("SHOW COLUMNS FROM vpopmail")]
    assert columns == ["pw_name", "pw_domain", "pw_passwd", "pw_uid", "pw_gid", "pw_gecos",
                       "pw_dir", "pw_shell", "pw_clear_passwd"]
    rows = sql_db.rows("SELECT pw_name, pw_domain, pw_uid, pw_gid, pw_gecos, pw_shell "
                       "FROM vpopmail ORDER BY pw_name")
    assert rows == [["alice", DOMAIN, "1", "0", "alice", "NOQUOTA"],
                    ["postmaster", DOMAIN, "1", "0", "Postmaster", "NOQUOTA"]]
    (hashed,) = sql_db.rows("SELECT pw_passwd FROM vpopmail WHERE pw_name = 'alice'")[0]
    assert hashed.startswith("$6$") and len(hashed) > 90  # wider than 5.4's char(40)
    # creation is recorded as C does (0.0.0.0), in the lastauth table
    assert sql_db.rows("SELECT user, domain, remote_ip FROM lastauth WHERE user = 'alice'") == [
        ["alice", DOMAIN, "0.0.0.0"]]
    # the cdb files are not used
    assert not (vhome.domains / DOMAIN / "vpasswd").exists()
    assert not (vhome.domains / DOMAIN / "vpasswd.cdb").exists()


C_54_TABLE = ("CREATE TABLE vpopmail (pw_name char(32) not null, pw_domain char(96) not null, "
              "pw_passwd char(40), pw_uid int, pw_gid int, pw_gecos char(48), pw_dir char(160), "
              "pw_shell char(20), pw_clear_passwd char(16), primary key (pw_name, pw_domain))")
MD5_PW = "$1$abcdefgh$cHJi5PXp/ki/ktXzqlk6I1"  # crypt("secret", "$1$abcdefgh$")


def test_a_database_made_by_c_vpopmail_54_works_unchanged(vhome: Install, sql_db: Database) -> None:
    """5.4's narrow char() columns and rows as its vauth_adduser wrote them: logins, delivery and
    changes work; a hash too wide for the old column is refused with a clear error, not cut."""
    sql_db.rows(C_54_TABLE)
    sql_db.configure(vhome)
    vhome.set_config("passwords", "scheme", "md5-crypt")  # what fits 5.4's pw_passwd char(40)
    site = LoginSite(vhome, False)
    vhome.ok("vadddomain", DOMAIN, "secret")  # keeps the existing table
    home = vhome.domains / DOMAIN / "carol"
    sql_db.rows("INSERT INTO vpopmail VALUES ('carol', 'example.com', "
                f"'{MD5_PW}', 1, 0, 'Carol C', '{home}', '5000000S', 'secret')")
    login = site.login(f"carol@{DOMAIN}", "secret")
    assert login.code == 0 and login.ran, login
    assert (home / "Maildir" / "new").is_dir()  # made at the first login, as C vchkpw does
    assert site.deliver("carol").returncode == 0
    assert len(list((home / "Maildir" / "new").iterdir())) == 1
    vhome.set_config("passwords", "scheme", "sha512-crypt")
    result = vhome.run("vpasswd", f"carol@{DOMAIN}", "new one")
    assert result.returncode != 0
    assert "Data too long for column 'pw_passwd'" in result.stdout, result
    assert sql_db.rows("SELECT pw_passwd FROM vpopmail WHERE pw_name = 'carol'") == [[MD5_PW]]
    vhome.set_config("passwords", "scheme", "md5-crypt")
    vhome.ok("vpasswd", f"carol@{DOMAIN}", "new one")
    assert site.login(f"carol@{DOMAIN}", "new one").code == 0


def test_per_domain_tables_as_with_disable_many_domains(vhome: Install, sql_db: Database) -> None:
    sql_site(vhome, sql_db, many_domains=False)
    vhome.ok("vadddomain", "other-site.example", "secret")
    tables = {row[0] for row in sql_db.rows("SHOW TABLES")}
    assert {"example_com", "other_site_example"} <= tables and "vpopmail" not in tables
    assert "pw_domain" not in [row[0] for row in sql_db.rows("SHOW COLUMNS FROM example_com")]
    assert sql_db.rows("SELECT pw_name FROM example_com ORDER BY pw_name") == [
        ["alice"], ["postmaster"]]
    site = Site(vhome, False)
    assert site.deliver("alice").returncode == 0
    assert site.deliver("nobody").returncode == 100
    # C's names collide (other.site.example is other_site_example too): refused, not shared
    clash = vhome.run("vadddomain", "other.site.example", "secret")
    assert clash.returncode != 0 and "holds the users of another domain" in clash.stdout, clash
    vhome.ok("vdeldomain", "other-site.example")
    assert "other_site_example" not in {row[0] for row in sql_db.rows("SHOW TABLES")}
    # a domain whose table would be a shared one (relay, valias, dir-control: dir_control...)
    tables = sql_db.rows("SHOW TABLES")
    for name in ("relay", "valias", "dir-control"):
        refused = vhome.run("vadddomain", name, "secret")
        assert refused.returncode != 0, refused
        assert f"would be vpopmail's {name.replace('-', '_')} table" in refused.stdout, refused
        assert "Traceback" not in refused.stdout + refused.stderr, refused
    assert sql_db.rows("SHOW TABLES") == tables
    assert sql_db.rows("SELECT count(*) FROM lastauth WHERE domain = 'other-site.example'") == [
        ["0"]]


def test_hostile_values_are_data_not_sql(vhome: Install, sql_db: Database) -> None:
    site = sql_site(vhome, sql_db, LoginSite)
    gecos = "O'Brien \\\"; DROP TABLE vpopmail; -- \u00e9"
    password = "p'w\\\"; --"
    vhome.ok("vadduser", "-c", gecos, f"obrien@{DOMAIN}", password)
    assert sql_db.rows("SELECT pw_gecos FROM vpopmail WHERE pw_name = 'obrien'") == [[gecos]]
    assert site.login(f"obrien@{DOMAIN}", password).code == 0  # type: ignore[attr-defined]
    assert site.login(f"obrien@{DOMAIN}", "p").code == 1  # type: ignore[attr-defined]
    # a login name with SQL in it never reaches the server as SQL
    assert site.login(f"x' OR '1'='1@{DOMAIN}", "pw").code == 1  # type: ignore[attr-defined]
    assert sql_db.rows("SELECT count(*) FROM vpopmail") == [["3"]]


def test_bytes_that_are_not_utf8_are_refused_as_bad_input(vhome: Install, sql_db: Database
                                                          ) -> None:
    """A Latin-1 GECOS (byte 0xe9) fits a vpasswd line but not a utf8mb4 column: the admin
    command says so and adds no one; it is not reported as the database being down."""
    sql_site(vhome, sql_db, LoginSite)
    result = vhome.run("vadduser", "-c", "Ren\udce9", f"rene@{DOMAIN}", "Rene-pw-1")
    said = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Incorrect string value" in said and "character set" in said, result
    assert "down" not in said and "temporar" not in said.lower(), result
    assert sql_db.rows("SELECT pw_name FROM vpopmail WHERE pw_name = 'rene'") == []


# -- the read/update split ---------------------------------------------------------------------
def _statements(server_rows: list[list[str]]) -> list[tuple[str, str]]:
    """(account, statement) of our two accounts (not root, not the replication threads)."""
    found = [(row[0].split("[")[0], row[1]) for row in server_rows]
    return [(who, sql) for who, sql in found if who in (RO, RW)]


def test_reads_go_to_the_replica_and_writes_only_to_the_primary(vhome: Install,
                                                               replicated_db: Database) -> None:
    """Admin commands write on the primary; vdelivermail and vchkpw read on the replica and
    vchkpw's lastauth and relay writes go to the primary; the replica (read-only, a SELECT-only
    account) is never written by us: the servers' own query logs are the witnesses."""
    db = replicated_db
    assert db.replica is not None
    vhome.set_config("relay", "roaming_users", True)
    site = sql_site(vhome, db, LoginSite, split=True)
    db.sync()
    logs = (db.server, db.replica)
    for server in logs:
        server.sql("TRUNCATE mysql.general_log; SET GLOBAL log_output = 'TABLE', general_log = 1")
    try:
        assert site.deliver("alice").returncode == 0
        login = site.login(f"alice@{DOMAIN}", "pw")  # type: ignore[attr-defined]
        assert login.code == 0, login
    finally:
        for server in logs:
            server.sql("SET GLOBAL general_log = 0")
    query = ("SELECT user_host, argument FROM mysql.general_log WHERE command_type = 'Query' "
             "AND user_host NOT LIKE 'root%' ORDER BY event_time")
    primary, replica = _statements(db.server.rows(query)), _statements(db.replica.rows(query))
    # the user's row: the delivery's with its valias rows (one statement), the login's
    reads = [sql for who, sql in replica if sql.startswith("SELECT") and "pw_name" in sql]
    assert len(reads) == 2 and all(who == RO for who, _ in replica), replica
    assert not [sql for _, sql in replica if sql.split()[0].upper() in
                ("INSERT", "REPLACE", "UPDATE", "DELETE", "CREATE", "DROP")], replica
    assert all(who == RW for who, _ in primary), primary
    assert not [sql for _, sql in primary if sql.startswith("SELECT") and "pw_name" in sql], \
        primary
    assert [sql for _, sql in primary if sql.startswith("REPLACE INTO lastauth")]
    assert [sql for _, sql in primary if sql.startswith("INSERT INTO relay")]
    # and the replica follows: the login's lastauth row arrives there by replication
    db.sync()
    assert db.replica.rows(f"SELECT remote_ip FROM `{db.name}`.lastauth WHERE user = 'alice'") \
        == [[POP_ENV["TCPREMOTEIP"]]]


def test_a_lagging_replica_is_what_the_hot_paths_see(vhome: Install, replicated_db: Database
                                                     ) -> None:
    db = replicated_db
    assert db.replica is not None
    site = sql_site(vhome, db, split=True)
    db.sync()
    db.replica.sql("STOP SLAVE")
    try:
        vhome.ok("vadduser", f"bob@{DOMAIN}", "pw")  # on the primary only, for now
        assert site.deliver("bob").returncode == 100  # not on the replica yet
    finally:
        db.replica.sql("START SLAVE")
    db.sync()
    assert site.deliver("bob").returncode == 0


def test_admin_commands_decide_on_the_primary_not_a_lagging_replica(
        vhome: Install, replicated_db: Database) -> None:
    """vadduser of a user the replica does not have yet: the check reads the primary, so the
    user is not taken for a leftover directory (which would be removed, mail and all), and
    vmoddomlimits changes the primary's row, not the replica's older one."""
    db = replicated_db
    assert db.replica is not None
    vhome.set_config("mysql", "limits_table", True)
    sql_site(vhome, db, split=True)
    vhome.ok("vmoddomlimits", "-P", "1", DOMAIN)
    db.sync()
    db.replica.sql("STOP SLAVE")
    try:
        vhome.ok("vadduser", f"bob@{DOMAIN}", "pw")
        mail = user_dir_on(db, "bob") / "Maildir" / "cur" / "1.precious"
        mail.write_text("mail")
        again = vhome.run("vadduser", f"bob@{DOMAIN}", "pw2")
        vhome.ok("vmoddomlimits", "-g", "p", DOMAIN)
        vhome.ok("vmoddomlimits", "-P", "5", DOMAIN)
    finally:
        db.replica.sql("START SLAVE")
    assert (again.returncode, again.stdout) == (254, "Error: User already exists\n"), again
    assert mail.read_text() == "mail"
    assert db.rows(f"SELECT disable_pop, maxpopaccounts FROM limits WHERE domain = '{DOMAIN}'"
                   ) == [["1", "5"]]


def test_an_update_host_is_not_overridden_by_the_read_socket(vhome: Install,
                                                            replicated_db: Database) -> None:
    """docs/sql.md's example: reads on the local replica's socket, updates to a host. The
    update side must not inherit the read socket (a socket wins over a host): writes would
    go to the replica."""
    db = replicated_db
    sql_site(vhome, db, split=True)
    vhome.set_config("mysql", "update_socket", "")
    vhome.set_config("mysql", "update_host", "127.0.0.1")
    vhome.set_config("mysql", "update_port", db.server.port)
    vhome.ok("vadduser", f"bob@{DOMAIN}", "pw")
    assert db.rows("SELECT pw_name FROM vpopmail WHERE pw_name = 'bob'") == [["bob"]]


def test_the_update_server_answers_reads_when_the_read_server_is_down(
        vhome: Install, sql_db: Database, tmp_path: Path) -> None:
    site = sql_site(vhome, sql_db)
    vhome.set_config("mysql", "read_socket", str(tmp_path / "no-such.sock"))
    assert site.deliver("alice").returncode == 0
    vhome.set_config("mysql", "read_fallback", False)
    result = site.deliver("alice")
    assert result.returncode == 111, result
    assert result.stdout.startswith(b"vdelivermail: deferred, database down"), result.stdout


# -- faults ------------------------------------------------------------------------------------
def test_database_down_defers_mail_and_logins_and_admin_commands_change_nothing(
        each_install: Install, sql_db: Database, tmp_path: Path) -> None:
    site = sql_site(each_install, sql_db, LoginSite)
    for side in ("read", "update"):
        each_install.set_config("mysql", f"{side}_socket", "/nonexistent/mysqld.sock")
    result = site.deliver("alice")
    assert result.returncode == 111
    assert result.stdout.startswith(b"vdelivermail: deferred, database down"), result.stdout
    assert not list((user_dir_on(sql_db, "alice") / "Maildir" / "new").iterdir())
    login = site.login(f"alice@{DOMAIN}", "pw")  # type: ignore[attr-defined]
    assert login.code == 111 and not login.ran, login
    added = each_install.run("vadduser", f"bob@{DOMAIN}", "pw")
    assert added.returncode != 0
    assert "no authentication database connection" in added.stdout + added.stderr
    assert not (each_install.domains / DOMAIN / "bob").exists()  # its directory was undone


def test_a_server_at_its_max_connections_is_temporary_never_a_wrong_password(
        each_install: Install, sql_db: Database) -> None:
    """MariaDB refusing a connection with "Too many connections" (1040) is a local fault: a
    login answers 111, never 1 (the client would tell the user the password is wrong), and
    mail is deferred. The server's limit is lowered (to its least, 10) over a root connection
    held here, connections fill the places left, and the limit is set back over that one."""
    from MySQLdb import _mysql

    def value(statement: bytes) -> bytes:
        root.query(statement)
        result = root.store_result()
        assert result is not None
        [[found]] = result.fetch_row(0)
        return bytes(found)

    site = sql_site(each_install, sql_db, LoginSite)
    root = _mysql.connect(unix_socket=sql_db.server.socket, user="root")
    filling: list[Any] = []
    try:
        limit = value(b"SELECT @@max_connections")
        root.query(b"SET GLOBAL max_connections = 1")  # raised to the least the server takes
        least = int(value(b"SELECT @@max_connections"))
        try:
            while True:
                assert len(filling) <= least, "the server took more than max_connections"
                try:
                    filling.append(_mysql.connect(unix_socket=sql_db.server.socket, user=RO,
                                                  password=PASSWORD))
                except _mysql.OperationalError as exc:
                    assert exc.args[0] == 1040, exc
                    break
            login = site.login(f"alice@{DOMAIN}", "pw")  # type: ignore[attr-defined]
            delivery = site.deliver("alice")
        finally:
            root.query(b"SET GLOBAL max_connections = " + limit)
    finally:
        for handle in filling:
            handle.close()
        root.close()
    assert login.code == 111 and not login.ran, login
    assert "Too many connections (1040)" in login.stderr, login
    assert delivery.returncode == 111, delivery
    assert delivery.stdout.startswith(b"vdelivermail: deferred, database down"), delivery.stdout
    assert not list((user_dir_on(sql_db, "alice") / "Maildir" / "new").iterdir())
    assert site.login(f"alice@{DOMAIN}", "pw").code == 0  # type: ignore[attr-defined]


def test_a_server_that_has_gone_away_is_temporary_and_the_next_query_reconnects(
        vhome: Install, sql_db: Database) -> None:
    """The troubleshooting case of the C docs: the server drops a connection between two
    queries (a restart, wait_timeout, KILL). The query on the dead link is a temporary error
    naming the server, never "no such user"; the connection is dropped and the next query
    opens a new one."""
    from vpopmail.stores.sql import MySQLDatabase
    from vpopmail import config as vconfig
    from vpopmail.errors import NoAuthConnection

    sql_site(vhome, sql_db)
    database = MySQLDatabase(vconfig.load(str(vhome.config_path)))
    entry = vhome.api().get_domain(DOMAIN)
    try:
        assert database.get_user(entry, "alice") is not None
        [[first]] = database.reader.query("SELECT CONNECTION_ID()")
        sql_db.rows(f"KILL CONNECTION {first}")
        with pytest.raises(NoAuthConnection) as gone:
            database.get_user(entry, "alice")
        assert "gone away" in str(gone.value) or "Lost connection" in str(gone.value), gone.value
        assert "read server" in str(gone.value)
        assert database.reader.handle is None
        assert database.get_user(entry, "alice") is not None
        [[second]] = database.reader.query("SELECT CONNECTION_ID()")
        assert second != first
    finally:
        database.close()


def test_a_server_that_stops_answering_is_temporary_within_mysql_read_timeout(
        vhome: Install, sql_db: Database) -> None:
    """A database that stops answering on an established connection (a frozen mysqld, a
    host gone without a reset, a partition: here a proxy that stops relaying): a delivery,
    from a file or a pipe, is deferred, a login answers 111 (never 1), vadduser changes
    nothing, each after mysql.read_timeout a side, with one line naming the server; all work
    again once it answers (before: each waited in a read until TCP gave up, many minutes, a
    qmail delivery slot held all along)."""
    site = sql_site(vhome, sql_db, LoginSite)
    vhome.set_config("locks", "timeout", 1)
    vhome.set_config("mysql", "read_timeout", 2)
    with proxied(sql_db, vhome) as proxy:
        where = f"127.0.0.1:{proxy.port}/{sql_db.name}"
        assert site.deliver("alice").returncode == 0
        assert site.login(f"alice@{DOMAIN}", "pw").code == 0  # type: ignore[attr-defined]
        proxy.freeze()
        frozen_answers_temporary(site, where)
        added = vhome.run("vadduser", f"bob@{DOMAIN}", "pw", timeout=120)
        assert added.returncode != 0 and "did not answer" in added.stdout, added
        assert len(added.stdout.splitlines()) == 1 and "Traceback" not in added.stderr, added
        assert not (vhome.domains / DOMAIN / "bob").exists()
        proxy.thaw()
        assert site.deliver("alice").returncode == 0
        assert site.login(f"alice@{DOMAIN}", "pw").code == 0  # type: ignore[attr-defined]
        vhome.ok("vadduser", f"bob@{DOMAIN}", "pw")
    assert len(list((user_dir_on(sql_db, "alice") / "Maildir" / "new").iterdir())) == 2


def test_a_login_waits_on_an_update_server_that_stops_answering_only_once(
        vhome: Install, sql_db: Database) -> None:
    """The update server stops answering while the read server answers, with every write a
    login makes on (its vlog row, lastauth, the relay row of a roaming user): the right
    password answers 0 after one mysql.read_timeout, not one a write (before: three, 90 s by
    default, past a POP client's patience), the relay not opened and tcp.smtp.cdb as it was;
    a wrong one answers 1. Once it answers again the relay opens."""
    site = sql_site(vhome, sql_db, LoginSite)
    for section, key, value in (("relay", "roaming_users", True),
                                ("mysql", "sql_logging", True), ("logging", "level", "y"),
                                ("locks", "timeout", 1), ("mysql", "read_timeout", 2)):
        vhome.set_config(section, key, value)
    cdb = vhome.prefix / "etc" / "tcp.smtp.cdb"
    with proxied(sql_db, vhome) as proxy:
        for key, value in (("socket", sql_db.server.socket), ("host", ""), ("port", 0)):
            vhome.set_config("mysql", f"read_{key}", value)
        assert site.login(f"alice@{DOMAIN}", "pw").code == 0  # type: ignore[attr-defined]
        compiled = cdb.read_bytes()
        proxy.freeze()
        roaming = {**POP_ENV, "TCPREMOTEIP": "192.0.2.99"}
        for password, code in (("pw", 0), ("wrong", 1)):
            started = time.monotonic()
            login = site.login(f"alice@{DOMAIN}", password, env=roaming,  # type: ignore[attr-defined]
                               timeout=120)
            took = time.monotonic() - started
            assert login.code == code and took < 3.5, (password, login, took)
        assert cdb.read_bytes() == compiled
        proxy.thaw()
        assert site.login(f"alice@{DOMAIN}", "pw", env=roaming).code == 0  # type: ignore[attr-defined]
    assert lookup(str(cdb), b"192.0.2.99") is not None


def test_a_commit_without_an_answer_says_the_change_may_have_been_made(
        vhome: Install, sql_db: Database) -> None:
    """The COMMIT of vadduser gets no answer (the server stops answering as it comes): the
    error says the change may have been made, so the operator looks before running it again
    (the server may have committed it). Before: the plain error, which reads as "nothing was
    done"."""
    sql_site(vhome, sql_db, LoginSite)
    vhome.set_config("locks", "timeout", 1)
    vhome.set_config("mysql", "read_timeout", 2)
    with proxied(sql_db, vhome) as proxy:
        proxy.freeze_before(b"COMMIT")
        added = vhome.run("vadduser", f"bob@{DOMAIN}", "pw", timeout=120)
    assert added.returncode != 0, added
    assert "may have been made" in added.stdout and "vuserinfo" in added.stdout, added
    assert len(added.stdout.splitlines()) == 1 and "Traceback" not in added.stderr, added


def test_a_login_whose_program_cannot_run_says_goodbye_to_the_server(
        vhome: Install, sql_db: Database) -> None:
    """vchkpw closes its connections before it execs the program; when that fails (111) its
    vlog row is written on a new one, closed too before vchkpw exits (before: left open, so
    the server counted an aborted client for each such login)."""
    site = sql_site(vhome, sql_db, LoginSite)
    vhome.set_config("mysql", "sql_logging", True)
    vhome.set_config("logging", "level", "y")

    def aborted() -> int:
        return int(sql_db.server.rows("SHOW GLOBAL STATUS LIKE 'Aborted_clients'")[0][1])

    before = aborted()
    login = site.login(f"alice@{DOMAIN}", "pw",  # type: ignore[attr-defined]
                       program=["/nonexistent/prog"])
    assert login.code == 111, login
    assert sql_db.rows("SELECT error FROM vlog ORDER BY id") == [["0"], ["111"]]
    assert aborted() == before


def user_dir_on(db: Database, name: str) -> Path:
    return Path(db.rows(f"SELECT pw_dir FROM vpopmail WHERE pw_name = '{name}'")[0][0])


def test_a_user_locked_by_another_transaction_times_out_cleanly(vhome: Install, sql_db: Database
                                                                ) -> None:
    sql_site(vhome, sql_db)
    vhome.set_config("locks", "timeout", 1)
    holder = subprocess.Popen(
        ["mariadb", "--no-defaults", "-S", sql_db.server.socket, "-uroot", sql_db.name],
        stdin=subprocess.PIPE, text=True)
    assert holder.stdin is not None
    holder.stdin.write("START TRANSACTION; SELECT * FROM vpopmail WHERE pw_name = 'alice' "
                       "FOR UPDATE; SELECT SLEEP(6);\n")
    holder.stdin.flush()
    time.sleep(1)
    try:
        result = vhome.run("vpasswd", f"alice@{DOMAIN}", "changed")
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert result.returncode != 0
    assert "Lock wait timeout" in result.stdout + result.stderr, result
    vhome.ok("vpasswd", f"alice@{DOMAIN}", "changed")


@pytest.mark.parametrize("lock", ["LOCK TABLES vpopmail WRITE", "FLUSH TABLES WITH READ LOCK"])
def test_a_table_lock_held_elsewhere_is_waited_on_only_locks_timeout(
        vhome: Install, sql_db: Database, lock: str) -> None:
    """A table lock (LOCK TABLES, a mysqldump without --single-transaction; a backup's FLUSH
    TABLES WITH READ LOCK; an ALTER TABLE) makes our statements wait for a metadata lock,
    which innodb_lock_wait_timeout does not bound: MariaDB's lock_wait_timeout (a day by
    default) does. A delivery or login that cannot read waits ``locks.timeout``, then is
    deferred (111), as for a row lock; a login whose lastauth row cannot be written (a read
    lock on every table) goes on without it, as when that write fails otherwise (before:
    each waited until the lock went, and a vpopmail-server worker with it)."""
    site = sql_site(vhome, sql_db, LoginSite)
    vhome.set_config("locks", "timeout", 1)
    holder = subprocess.Popen(
        ["mariadb", "--no-defaults", "-S", sql_db.server.socket, "-uroot", sql_db.name],
        stdin=subprocess.PIPE, text=True)
    assert holder.stdin is not None
    holder.stdin.write(f"{lock}; SELECT SLEEP(6);\n")
    holder.stdin.flush()
    time.sleep(1)
    try:
        started = time.monotonic()
        login = site.login(f"alice@{DOMAIN}", "pw")  # type: ignore[attr-defined]
        delivered = site.deliver("alice")
        took = time.monotonic() - started
    finally:
        holder.stdin.close()  # the lock goes with its session, after the sleep
        holder.wait(30)
    blocked = "vpopmail WRITE" in lock  # else only writes wait
    assert (login.code, login.ran) == ((111, False) if blocked else (0, True)), login
    if blocked:
        assert "Lock wait timeout" in login.stderr, login
    else:
        logged = site.syslog.texts()  # type: ignore[attr-defined]
        assert any("could not record the login" in text and "Lock wait timeout" in text
                   for text in logged), logged
    assert delivered.returncode == (111 if blocked else 0), delivered
    assert took < 5, took
    assert site.login(f"alice@{DOMAIN}", "pw").code == 0  # type: ignore[attr-defined]


def test_a_connection_killed_while_its_statement_waits_on_a_lock_is_no_read_timeout(
        sql_db: Database) -> None:
    """A statement waits on a table lock (up to locks.timeout) and its connection is killed
    (a DBA's KILL, a server restart) before mysql.read_timeout: the error is what the server
    said, not "did not answer in N s (mysql.read_timeout)", and not Unreachable (whose reads
    would go to the update server as if this one did not answer). Before: any lost link after
    half the read timeout was taken for it."""
    sql_db.rows("CREATE TABLE waited (n int)")
    conn = Connection(Server("", 0, sql_db.server.socket, RW, PASSWORD, sql_db.name), 2, 5, 6,
                      "read")
    ((own,),) = conn.query("SELECT CONNECTION_ID()")
    holder = subprocess.Popen(
        ["mariadb", "--no-defaults", "-S", sql_db.server.socket, "-uroot", sql_db.name],
        stdin=subprocess.PIPE, text=True)
    assert holder.stdin is not None
    holder.stdin.write("LOCK TABLES waited WRITE; SELECT SLEEP(8);\n")
    holder.stdin.flush()
    time.sleep(0.5)
    killer = threading.Timer(3.5, sql_db.server.sql, [f"KILL {own}"])
    killer.start()
    try:
        started = time.monotonic()
        with pytest.raises(NoAuthConnection) as raised:
            conn.query("SELECT n FROM waited")
        took = time.monotonic() - started
    finally:
        killer.join()
        conn.close()
        holder.stdin.close()
        holder.wait(30)
    assert 3 <= took < 5, took  # killed in its lock wait: after half the read timeout
    assert "did not answer" not in str(raised.value), raised.value
    assert not isinstance(raised.value, Unreachable), raised.value
    assert f"read server {RW}@{sql_db.server.socket}/{sql_db.name}: " in str(raised.value)


def test_a_batch_that_fails_part_way_adds_no_one(vhome: Install, sql_db: Database,
                                                 tmp_path: Path) -> None:
    sql_site(vhome, sql_db)
    api = vhome.api()
    entry = api.get_domain(DOMAIN)
    from vpopmail.stores import VUser

    users = [VUser("new1", dir="/x/new1"), VUser("alice", dir="/x/alice")]
    with pytest.raises(Exception, match="Username exists"):
        api.backend.add_users(entry, users)
    assert sql_db.rows("SELECT count(*) FROM vpopmail WHERE pw_name = 'new1'") == [["0"]]


# -- lastauth, relay, limits -------------------------------------------------------------------
def test_logins_are_recorded_in_lastauth_and_vdeloldusers_reads_them(vhome: Install,
                                                                     sql_db: Database) -> None:
    site = sql_site(vhome, sql_db, LoginSite)
    assert site.login(f"alice@{DOMAIN}", "pw").code == 0  # type: ignore[attr-defined]
    (row,) = sql_db.rows("SELECT remote_ip, timestamp FROM lastauth WHERE user = 'alice'")
    assert row[0] == POP_ENV["TCPREMOTEIP"] and abs(int(row[1]) - time.time()) < 60
    assert f"last auth ip: {POP_ENV['TCPREMOTEIP']}" in vhome.ok("vuserinfo", f"alice@{DOMAIN}")
    assert "alice@" not in vhome.ok("vdeloldusers", "-V", "-d", DOMAIN, "-a", "30")
    sql_db.rows("UPDATE lastauth SET timestamp = timestamp - 40 * 86400 WHERE user = 'alice'")
    assert f"alice@{DOMAIN}" in vhome.ok("vdeloldusers", "-V", "-d", DOMAIN, "-a", "30")
    vhome.ok("vdeloldusers", "-D", "-d", DOMAIN, "-a", "30")
    assert sql_db.rows("SELECT count(*) FROM vpopmail WHERE pw_name = 'alice'") == [["0"]]
    assert sql_db.rows("SELECT count(*) FROM lastauth WHERE user = 'alice'") == [["0"]]


def test_roaming_ips_live_in_the_relay_table_and_bad_rows_never_become_rules(
        each_install: Install, sql_db: Database) -> None:
    each_install.set_config("relay", "roaming_users", True)
    site = sql_site(each_install, sql_db, LoginSite)
    assert site.login(f"alice@{DOMAIN}", "pw").code == 0  # type: ignore[attr-defined]
    ip = POP_ENV["TCPREMOTEIP"]
    assert [r[0] for r in sql_db.rows("SELECT ip_addr FROM relay")] == [ip]
    cdb = str(each_install.prefix / "etc" / "tcp.smtp.cdb")
    assert lookup(cdb, ip.encode()) is not None
    assert not (each_install.prefix / "etc" / "open-smtp").exists()
    # an old row, and rows no C vpopmail should have written: an empty and a non-address key
    sql_db.rows("INSERT INTO relay VALUES ('198.51.100.7', '1000'), ('', '9999999999'), "
                "('evil:allow,X', '9999999999')")
    each_install.ok("clearopensmtp")
    assert sorted(r[0] for r in sql_db.rows("SELECT ip_addr FROM relay")) == [
        "", ip, "evil:allow,X"]
    assert lookup(cdb, ip.encode()) is not None
    assert lookup(cdb, b"") is None and lookup(cdb, b"evil") is None
    assert lookup(cdb, b"198.51.100.7") is None
    # rows stamped in the future (the clock was ahead) count from now: not kept for ever
    assert all(int(r[0]) <= time.time() for r in sql_db.rows("SELECT timestamp FROM relay"))


def test_a_relay_row_written_again_unchanged_is_not_a_new_ip(vhome: Install,
                                                             sql_db: Database) -> None:
    """A roaming login from a known IP in the same second as its last (a mail client's
    parallel IMAP connections) leaves the row as it was and is not counted as a new IP, so no
    tcp.smtp.cdb compile is owed for it (before: MariaDB's REPLACE of an identical row
    reports one row affected, as an insert, and each such login recompiled the cdb)."""
    vhome.set_config("relay", "roaming_users", True)
    sql_site(vhome, sql_db)
    relay = vhome.api().stores.relay()
    lock = Path(relay.open_smtp + ".lock")
    assert relay.open_relay("192.0.2.7", now=1_700_000_000) is True
    owed = lock.read_bytes()
    assert relay.open_relay("192.0.2.7", now=1_700_000_000) is False
    assert relay.open_relay("192.0.2.7", now=1_700_000_060) is False
    assert lock.read_bytes() == owed  # no compile owed, none done
    assert sql_db.rows("SELECT ip_addr, timestamp FROM relay") == [["192.0.2.7", "1700000060"]]


def test_vmkpasswd_r_is_a_capability_of_the_files_only(vhome: Install, sql_db: Database
                                                      ) -> None:
    """vmkpasswd -r writes vpasswd back from vpasswd.cdb: with SQL there is neither, so it is
    refused, and the users stay."""
    sql_site(vhome, sql_db)
    result = vhome.run("vmkpasswd", "-r", DOMAIN)
    assert (result.returncode, result.stderr) == (
        255, "vmkpasswd: -r is for the cdb backend's files\n")
    assert sql_db.rows("SELECT pw_name FROM vpopmail ORDER BY pw_name") == [["alice"],
                                                                        ["postmaster"]]


def test_domain_limits_in_the_limits_table(vhome: Install, sql_db: Database) -> None:
    vhome.set_config("mysql", "limits_table", True)
    site = sql_site(vhome, sql_db, LoginSite)
    vhome.ok("vmoddomlimits", "-g", "p", "-P", "5", DOMAIN)
    row = sql_db.rows("SELECT disable_pop, disable_imap, maxpopaccounts FROM limits "
                      f"WHERE domain = '{DOMAIN}'")
    assert row == [["1", "0", "5"]]
    assert not (vhome.domains / DOMAIN / ".qmailadmin-limits").exists()
    login = site.login(f"alice@{DOMAIN}", "pw")  # type: ignore[attr-defined]
    assert login.code == 1 and not login.ran
    vhome.ok("vmoddomlimits", "-D", DOMAIN)
    assert sql_db.rows("SELECT count(*) FROM limits") == [["0"]]
    assert site.login(f"alice@{DOMAIN}", "pw").code == 0  # type: ignore[attr-defined]


# -- alias domains for Dovecot (the aliasdomains table) ----------------------------------------
ALIAS_ROWS = "SELECT alias, domain FROM aliasdomains ORDER BY alias"


def test_alias_domains_are_copied_into_the_aliasdomains_table(vhome: Install,
                                                              sql_db: Database) -> None:
    """vadddomain makes the table (Dovecot's queries join it from the first domain on),
    vaddaliasdomain adds a row, vdeldomain of an alias or (with -f) of its real domain takes
    them out: always what users/assign routes."""
    sql_site(vhome, sql_db)
    assert sql_db.rows(ALIAS_ROWS) == []
    vhome.ok("vaddaliasdomain", DOMAIN, "alias.example")
    vhome.ok("vaddaliasdomain", DOMAIN, "other.example")
    assert sql_db.rows(ALIAS_ROWS) == [["alias.example", DOMAIN], ["other.example", DOMAIN]]
    vhome.ok("vdeldomain", "other.example")
    assert sql_db.rows(ALIAS_ROWS) == [["alias.example", DOMAIN]]
    vhome.ok("vdeldomain", "-f", DOMAIN)
    assert sql_db.rows(ALIAS_ROWS) == []


def test_vregenerate_fills_the_aliasdomains_table(vhome: Install, sql_db: Database) -> None:
    """A site whose alias domains predate the table (a C vpopmail's) gets them all with one
    vregenerate; one that disables the copy gets no table from vadddomain."""
    sql_site(vhome, sql_db)
    vhome.ok("vaddaliasdomain", DOMAIN, "alias.example")
    sql_db.server.sql("DROP TABLE aliasdomains", sql_db.name)
    vhome.ok("vregenerate")
    assert sql_db.rows(ALIAS_ROWS) == [["alias.example", DOMAIN]]
    # also where it refuses to write users/assign (a domain whose directory went): the
    # table follows users/assign as it is
    vhome.ok("vadddomain", "gone.example", "secret")
    vhome.ok("vaddaliasdomain", "gone.example", "alias.gone.example")
    shutil.rmtree(vhome.domains / "gone.example")
    sql_db.server.sql("DELETE FROM aliasdomains", sql_db.name)
    refused = vhome.run("vregenerate")
    assert refused.returncode == 1 and "users/assign not written" in refused.stdout, refused
    assert sql_db.rows(ALIAS_ROWS) == [["alias.example", DOMAIN],
                                       ["alias.gone.example", "gone.example"]]
    sql_db.server.sql("DROP TABLE aliasdomains", sql_db.name)
    vhome.set_config("mysql", "aliasdomains_table", False)
    vhome.ok("vadddomain", "example.net", "secret")
    vhome.ok("vaddaliasdomain", "example.net", "alias.example.net")
    assert "aliasdomains" not in {row[0] for row in sql_db.rows("SHOW TABLES")}


def test_a_change_here_keeps_the_rows_of_alias_domains_this_host_does_not_route(
        vhome: Install, sql_db: Database) -> None:
    """The table is shared by every host of the database (as relay is), and a database
    sagredo's fork filled holds its hosts' rows: a vaddaliasdomain or vdeldomain here adds or
    takes out its own alias, and never wipes the rows of alias domains another host routes."""
    sql_site(vhome, sql_db)
    sql_db.server.sql("INSERT INTO aliasdomains (alias, domain) "
                      "VALUES ('alias.example.org', 'example.org')", sql_db.name)
    vhome.ok("vaddaliasdomain", DOMAIN, "alias.example")
    assert sql_db.rows(ALIAS_ROWS) == [["alias.example", DOMAIN],
                                       ["alias.example.org", "example.org"]]
    vhome.ok("vdeldomain", "alias.example")
    assert sql_db.rows(ALIAS_ROWS) == [["alias.example.org", "example.org"]]


def test_vcheck_compares_the_aliasdomains_table_with_users_assign(vhome: Install,
                                                                 sql_db: Database) -> None:
    """A row lost (a vdeldomain killed between the table and users/assign, a hand edit) or a
    table dropped makes Dovecot's logins through an alias domain differ from vchkpw's: step
    7 says so, and vregenerate mends it."""
    sql_site(vhome, sql_db)
    address = f"alice@{DOMAIN}"
    sql_db.server.sql("DROP TABLE aliasdomains", sql_db.name)  # an upgraded site, no aliases
    said = vhome.ok("vcheck", address)
    assert "no aliasdomains table yet" in said, said
    vhome.ok("vaddaliasdomain", DOMAIN, "alias.example")
    said = vhome.ok("vcheck", address)
    assert "the aliasdomains table agrees (1 alias domains)" in said, said
    sql_db.server.sql("DELETE FROM aliasdomains", sql_db.name)
    checked = vhome.run("vcheck", address)
    assert checked.returncode == 7, checked.stdout
    assert (f"the aliasdomains table gives {DOMAIN} the alias domains none, users/assign "
            "alias.example") in checked.stdout, checked.stdout
    sql_db.server.sql("DROP TABLE aliasdomains", sql_db.name)
    checked = vhome.run("vcheck", "alice@alias.example")
    assert checked.returncode == 7 and "there is no aliasdomains table" in checked.stdout, \
        checked.stdout
    vhome.ok("vregenerate")
    assert vhome.run("vcheck", "alice@alias.example").returncode == 0


def test_a_new_real_domain_takes_out_a_row_that_makes_it_an_alias(vhome: Install,
                                                                  sql_db: Database) -> None:
    """Dovecot's queries join aliasdomains ON alias = the login's domain: a row left with the
    name of a domain made real here (a vaddaliasdomain killed between the table and
    users/assign, then vadddomain of the name) sends its logins to the other domain's users.
    vadddomain takes it out (the whole rewrite did); vcheck and vregenerate see and mend it."""
    sql_site(vhome, sql_db)
    sql_db.server.sql("INSERT INTO aliasdomains (alias, domain) "
                      f"VALUES ('new.example', '{DOMAIN}')", sql_db.name)
    vhome.ok("vadddomain", "new.example", "secret")
    # Dovecot's passdb query (packaging/dovecot/dovecot-sql.conf.ext) for alice@new.example
    dovecot = ("SELECT pw_domain FROM vpopmail LEFT JOIN aliasdomains "
               "ON aliasdomains.alias = 'new.example' WHERE pw_name = 'alice' "
               "AND pw_domain = COALESCE(aliasdomains.domain, 'new.example')")
    assert sql_db.rows(dovecot) == [], "alice@new.example logs in as alice@example.com"
    assert sql_db.rows(ALIAS_ROWS) == [], "vadddomain left a row making new.example an alias"


def test_vcheck_sees_a_real_domains_row_as_an_alias(vhome: Install, sql_db: Database) -> None:
    """A row naming a real domain of users/assign as an alias sends Dovecot's logins of its
    users to the other domain's (LEFT JOIN ... ON alias = '%d'): step 7 says so."""
    sql_site(vhome, sql_db)
    vhome.ok("vadddomain", "new.example", "secret")
    vhome.ok("vadduser", "bob@new.example", "pw")
    sql_db.server.sql("INSERT INTO aliasdomains (alias, domain) "
                      f"VALUES ('new.example', '{DOMAIN}')", sql_db.name)
    checked = vhome.run("vcheck", "bob@new.example")
    assert checked.returncode == 7, checked.stdout


def test_vregenerate_takes_out_a_real_domains_row_as_an_alias(vhome: Install,
                                                              sql_db: Database) -> None:
    sql_site(vhome, sql_db)
    sql_db.server.sql("INSERT INTO aliasdomains (alias, domain) "
                      f"VALUES ('{DOMAIN}', 'example.org')", sql_db.name)
    vhome.ok("vregenerate")
    assert sql_db.rows(ALIAS_ROWS) == []


def test_vregenerate_force_takes_out_the_rows_of_the_domains_it_drops(
        vhome: Install, sql_db: Database) -> None:
    sql_site(vhome, sql_db)
    vhome.ok("vadddomain", "gone.example", "secret")
    vhome.ok("vaddaliasdomain", "gone.example", "alias.gone.example")
    shutil.rmtree(vhome.domains / "gone.example")
    forced = vhome.run("vregenerate", "--force")
    assert forced.returncode == 0, forced.stdout
    assert "gone.example" not in (vhome.qmaildir / "users" / "assign").read_text()
    assert sql_db.rows(ALIAS_ROWS) == [], "rows of domains users/assign no longer routes"


def test_vaddaliasdomain_with_the_database_down_changes_nothing(vhome: Install,
                                                                sql_db: Database) -> None:
    """The table is written first: with the database down the alias is refused, not routed
    by qmail while Dovecot does not know it (and a second run would find it "exists")."""
    sql_site(vhome, sql_db)
    assign = (vhome.qmaildir / "users" / "assign").read_bytes()
    for side in ("read", "update"):
        vhome.set_config("mysql", f"{side}_socket", "/nonexistent/mysqld.sock")
    result = vhome.run("vaddaliasdomain", DOMAIN, "alias.example")
    assert result.returncode != 0, result
    assert "no authentication database connection" in result.stdout + result.stderr, result
    assert (vhome.qmaildir / "users" / "assign").read_bytes() == assign


# -- hygiene -----------------------------------------------------------------------------------
def test_an_ipv6_login_is_recorded_in_c_54s_narrow_lastauth(vhome: Install, sql_db: Database
                                                            ) -> None:
    """C 5.4 made lastauth.remote_ip char(18): an IPv6 address does not fit. The login time
    must still be recorded (vdeloldusers reads it), the address cut as C's server cut it."""
    site = sql_site(vhome, sql_db, LoginSite)
    sql_db.rows("DROP TABLE lastauth")
    sql_db.rows("CREATE TABLE lastauth (user char(32) NOT NULL, domain char(96) NOT NULL, "
                "remote_ip char(18) not null, timestamp bigint default 0 NOT NULL, "
                "primary key (user, domain))")
    sql_db.rows(f"INSERT INTO lastauth VALUES ('alice', '{DOMAIN}', '0.0.0.0', 1000)")
    ip = "2001:db8:85a3::8a2e:370:7334"
    login = site.login(f"alice@{DOMAIN}", "pw", env=dict(POP_ENV, TCPREMOTEIP=ip))  # type: ignore[attr-defined]
    assert login.code == 0, login
    [[stamp, where]] = sql_db.rows("SELECT timestamp, remote_ip FROM lastauth")
    assert int(stamp) > time.time() - 60 and where == ip[:18]


def test_a_failed_vadduser_leaves_no_lastauth_row(vhome: Install, sql_db: Database) -> None:
    sql_db.rows(C_54_TABLE)
    sql_db.configure(vhome)
    vhome.set_config("passwords", "scheme", "md5-crypt")
    vhome.ok("vadddomain", DOMAIN, "secret")
    vhome.set_config("passwords", "scheme", "sha512-crypt")  # too wide for 5.4's char(40)
    result = vhome.run("vadduser", f"bob@{DOMAIN}", "pw")
    assert result.returncode != 0 and "Data too long" in result.stdout, result
    assert sql_db.rows("SELECT user FROM lastauth") == [["postmaster"]]


def test_two_new_aliases_at_once_are_both_stored(vhome: Install, sql_db: Database) -> None:
    """Two valias -i of new names at the same moment take gap locks that deadlock; the server
    rolls one back and the transaction runs again instead of failing as "database down"."""
    sql_site(vhome, sql_db)
    vhome.ok("valias", "-i", "&x@example.org", f"zzz@{DOMAIN}")
    procs = [subprocess.Popen([str(vhome.bin / "valias"), "-i", "&a@example.org",
                               f"{name}@{DOMAIN}"], stdout=subprocess.PIPE, text=True)
             for name in ("aaa", "bbb", "ccc", "ddd")]
    results = [(p.wait(60), p.stdout.read()) for p in procs]  # type: ignore[union-attr]
    assert all(code == 0 for code, _ in results), results
    assert sql_db.rows("SELECT alias FROM valias ORDER BY alias") == [
        ["aaa"], ["bbb"], ["ccc"], ["ddd"], ["zzz"]]


@pytest.mark.parametrize("args", [["-P", "99999999999"], ["-o", "a"]])
def test_limits_a_column_cannot_hold_are_bad_input(vhome: Install, sql_db: Database,
                                                   args: list[str]) -> None:
    """Out of range for the column is the input's fault, not the database being down; C's
    perm_maillist tinyint(4) could not hold -o a (448): the table made here can."""
    vhome.set_config("mysql", "limits_table", True)
    sql_site(vhome, sql_db)
    result = vhome.run("vmoddomlimits", *args, DOMAIN)
    if args[0] == "-o":
        assert result.returncode == 0, result
        assert sql_db.rows("SELECT perm_maillist FROM limits") == [["448"]]
    else:
        assert result.returncode == 152  # refused before the table is reached
        assert "out of range" in result.stdout and "no authentication" not in result.stdout, result


def test_programs_never_inherit_a_database_connection(vhome: Install, sql_db: Database) -> None:
    site = sql_site(vhome, sql_db)
    out = vhome.prefix.parent / "fds"
    home = user_dir(vhome, "alice")
    (home / ".qmail").write_text(f"|ls -l /proc/$$/fd > {out}\n./Maildir/\n")
    (home / ".qmail").chmod(0o600)
    assert site.deliver("alice").returncode == 0
    assert "socket" not in out.read_text(), out.read_text()


def test_no_connection_is_dropped_without_a_goodbye(vhome: Install, sql_db: Database) -> None:
    """The hot paths end with os._exit; the server logs a connection dropped without closing it
    as "Aborted connection" (one log line per delivery otherwise)."""
    site = sql_site(vhome, sql_db, LoginSite)
    before = sql_db.rows("SHOW GLOBAL STATUS LIKE 'Aborted_clients'")[0][1]
    for _ in range(3):
        assert site.deliver("alice").returncode == 0
        assert site.deliver("nobody").returncode == 100
        assert site.login(f"alice@{DOMAIN}", "pw").code == 0  # type: ignore[attr-defined]
        assert site.login(f"alice@{DOMAIN}", "bad").code == 1  # type: ignore[attr-defined]
    assert sql_db.rows("SHOW GLOBAL STATUS LIKE 'Aborted_clients'")[0][1] == before


def test_sql_logging_writes_each_auth_event_once_to_vlog(vhome: Install, sql_db: Database
                                                         ) -> None:
    vhome.set_config("mysql", "sql_logging", True)
    vhome.set_config("logging", "level", "y")
    site = sql_site(vhome, sql_db, LoginSite)
    assert site.login(f"alice@{DOMAIN}", "pw").code == 0  # type: ignore[attr-defined]
    assert site.login(f"alice@{DOMAIN}", "wrong").code == 1  # type: ignore[attr-defined]
    assert site.login(f"nobody@{DOMAIN}", "x").code == 1  # type: ignore[attr-defined]
    rows = sql_db.rows("SELECT user, domain, logon, remoteip, message, error, passwd FROM vlog "
                       "ORDER BY id")
    ip = POP_ENV["TCPREMOTEIP"]
    assert rows == [
        ["alice", DOMAIN, f"alice@{DOMAIN}", ip, "vchkpw-pop3: (PLAIN) login success", "0", ""],
        ["alice", DOMAIN, f"alice@{DOMAIN}", ip, "vchkpw-pop3: password fail", "1", ""],
        ["nobody", DOMAIN, f"nobody@{DOMAIN}", ip, "vchkpw-pop3: vpopmail user not found", "1",
         ""]], rows
    vhome.set_config("logging", "level", "p")  # errors, with the password
    assert site.login(f"alice@{DOMAIN}", "guess").code == 1  # type: ignore[attr-defined]
    assert sql_db.rows("SELECT passwd FROM vlog ORDER BY id DESC LIMIT 1") == [["guess"]]


# -- properties --------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(st.text(max_size=60), st.integers(-2**63, 2**63 - 1),
                                 st.none()), min_size=1, max_size=4))
def test_every_value_is_bound_as_data(sql_db: Database, values: list[object]) -> None:
    """Whatever the text (quotes, backslashes, NUL, %s, any Unicode), the server gets it back
    exactly: the binding is the server's own escaping, never string formatting."""
    conn = Connection(Server("", 0, sql_db.server.socket, RW, PASSWORD, sql_db.name), 2, 5,
                      15, "update")
    try:
        marks = ", ".join(["%s"] * len(values))
        (row,) = conn.query(f"SELECT {marks}", values)
    finally:
        conn.close()
    assert list(row) == [None if v is None else str(v) for v in values]


@given(numbers=st.fixed_dictionaries({key: st.integers(-1, 2**31 - 1) for key in NUMBERS}),
       switches=st.sets(st.sampled_from(sorted(SWITCHES))))
def test_limits_round_trip_through_table_columns(numbers: dict[str, int], switches: set[str]
                                                 ) -> None:
    limits = Limits(numbers, switches)
    row = limits.sql_row()
    assert set(row) == set(COLUMNS) and len(COLUMNS) == 26
    again = Limits.from_sql(row, "")
    assert (again.numbers, again.switches) == (limits.numbers, limits.switches)


@given(domain=st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True))
def test_table_names_are_cs_munched_domains(domain: str) -> None:
    name = munch_domain(domain)
    assert len(name) == len(domain) and set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789_")
    assert [c for c in name if c != "_"] == [c for c in domain if c not in ".-"]


def test_a_dropped_users_table_is_not_made_again_empty(vhome: Install, sql_db: Database) -> None:
    """The SQL form of a lost vpasswd (issue 13, finding 3): vadduser refuses (its check for a
    clash reads the table) instead of creating an empty table holding only the new user;
    delivery and login defer."""
    site = sql_site(vhome, sql_db, LoginSite)
    sql_db.rows("DROP TABLE vpopmail")
    result = vhome.run("vadduser", f"newguy@{DOMAIN}", "pw")
    assert result.returncode != 0, result
    assert "doesn't exist" in result.stdout
    assert "vpopmail" not in {row[0] for row in sql_db.rows("SHOW TABLES")}
    # a batch's clash check lists the users (an absent table lists none): the add refuses too
    batch = vhome.prefix / "batch"
    batch.write_text(f"new1@{DOMAIN} pw-one\nnew2@{DOMAIN} pw-two\n")
    result = vhome.run("vadduser", "-f", str(batch))
    assert result.returncode != 0, result
    assert "doesn't exist" in result.stdout, result
    assert "vpopmail" not in {row[0] for row in sql_db.rows("SHOW TABLES")}
    assert not (vhome.domains / DOMAIN / "new1").exists()
    assert site.deliver("alice").returncode == 111
    assert site.login(f"alice@{DOMAIN}", "pw").code == 111  # type: ignore[attr-defined]


# -- rows that cannot be read -------------------------------------------------------------------
@pytest.mark.through_server
@pytest.mark.parametrize("damage", [
    "UPDATE vpopmail SET pw_gid = NULL WHERE pw_name = 'alice'",
    "ALTER TABLE vpopmail MODIFY pw_gid varchar(12); "
    "UPDATE vpopmail SET pw_gid = '2 (no POP)' WHERE pw_name = 'alice'",
    "ALTER TABLE vpopmail MODIFY pw_uid varchar(12); "
    "UPDATE vpopmail SET pw_uid = 'x' WHERE pw_name = 'alice'",
], ids=["null-gid", "text-gid", "text-uid"])
def test_a_row_whose_numbers_cannot_be_read_is_a_local_fault(
        each_install: Install, sql_db: Database, damage: str) -> None:
    """The SQL form of a damaged vpasswd line (tests/test_damaged_databases.py): a pw_gid (the
    flags: NO_POP, NO_IMAP, ...) or pw_uid that is no number is never read as 0, which would
    drop the flags and let a disabled account in. Delivery and login defer (111); admin
    commands name the row and change nothing; other users are not affected."""
    site = sql_site(each_install, sql_db, LoginSite)
    each_install.ok("vadduser", f"bob@{DOMAIN}", "pw")
    each_install.ok("vmoduser", "-p", f"alice@{DOMAIN}")  # no POP
    for statement in damage.split("; "):
        sql_db.rows(statement)
    delivered = site.deliver("alice")
    assert delivered.returncode == 111, delivered
    assert b"Traceback" not in delivered.stdout + delivered.stderr
    assert not list((user_dir_on(sql_db, "alice") / "Maildir" / "new").iterdir())
    login = site.login(f"alice@{DOMAIN}", "pw")  # type: ignore[attr-defined]
    assert (login.code, login.ran) == (111, False), login
    before = sql_db.rows("SELECT * FROM vpopmail ORDER BY pw_name")
    for command, *args in (("vuserinfo", f"alice@{DOMAIN}"), ("vpasswd", f"alice@{DOMAIN}", "x"),
                           ("vmoduser", "-x", f"alice@{DOMAIN}")):
        result = each_install.run(command, *args)
        said = result.stdout + result.stderr
        assert result.returncode != 0, (command, result)
        assert "alice" in said and "not a number" in said and "Traceback" not in said, result
    assert sql_db.rows("SELECT * FROM vpopmail ORDER BY pw_name") == before
    assert site.deliver("bob").returncode == 0
    assert site.login(f"bob@{DOMAIN}", "pw").code == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("many_domains", [True, False])
def test_vdeldomain_finished_after_the_database_was_down_drops_the_rows(
        vhome: Install, sql_db: Database, many_domains: bool) -> None:
    """vdeldomain with the database down removes qmail's routing, then fails; its rerun
    finishes from the directory left on disk, and must drop the domain's rows too (before:
    they stayed, and a later vadddomain of the name brought every old user back with their
    old passwords, keeping the old postmaster's over the new one)."""
    sql_site(vhome, sql_db, many_domains=many_domains)
    vhome.ok("valias", "-i", "&x@example.org", f"info@{DOMAIN}")
    socket = sql_db.server.socket
    vhome.set_config("mysql", "update_socket", "/nonexistent/mysqld.sock")
    down = vhome.run("vdeldomain", DOMAIN)
    assert down.returncode != 0 and "Traceback" not in down.stderr, down
    vhome.set_config("mysql", "update_socket", socket)
    vhome.ok("vdeldomain", DOMAIN)
    assert not (vhome.domains / DOMAIN).exists()
    assert sql_db.rows(f"SELECT alias FROM valias WHERE domain = '{DOMAIN}'") == []
    vhome.ok("vadddomain", DOMAIN, "new-secret")
    assert set(vhome.vusers(DOMAIN)) == {"postmaster"}
    assert LoginSite(vhome, False).login(f"postmaster@{DOMAIN}", "new-secret").code == 0
