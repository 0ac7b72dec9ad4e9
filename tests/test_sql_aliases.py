"""Aliases in the SQL ``valias`` table (users.backend = "mysql"): valias on real rows, and the
installed vdelivermail honouring them as C's process_valias does, against the private MariaDB
of tests/mariadb_site.py.

valias: every change is checked in the table itself (sql_db.rows), no ``.qmail-`` file is
written, the texts and exit codes are the file backend's (the same refusal list runs here).
vdelivermail: several rows of one alias are all delivered (a Maildir line, a forward through a
stand-in qmail-inject, a program), the ``-default`` wildcard from the rightmost dash with
``$DEFAULT`` set, rows before users (C's order), the qmail-ext base name, a failing row, and a
database that cannot be reached (111, nothing delivered). The cdb path loads nothing of this.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from install_site import HEAVY, Install, as_user_argv, install
from delivery_site import DOMAIN, MESSAGE, RETURN_PATH, Site
from mariadb_site import Database
from helpers import REFUSED_ALIASES, failed, refused

ALIAS = "alias.test"
PROCESSED = b"vdelivermail: valiases processed\n"
#: C's text, then the server and what it said
DOWN = b"vdelivermail: deferred, database down (update server vpop_rw@/nonexistent/mysqld.sock/"


@pytest.fixture
def site(each_install: Install, sql_db: Database) -> Site:
    """example.com in SQL with alice (1 MB quota) and bob; qmail-local's uid for deliveries."""
    sql_db.configure(each_install)
    site = Site.create(each_install, each_install.mode == "root")
    for name in ("alice", "bob"):  # not Site.add_user: it reads vpasswd
        site.ok("vadduser", f"{name}@{DOMAIN}", "pw")
    site.ok("vsetuserquota", f"alice@{DOMAIN}", "1M")
    return site


def valias_rows(db: Database) -> list[list[str]]:
    return db.rows("SELECT alias, domain, valias_line FROM valias ORDER BY alias, valias_line")


def user_dir(db: Database, name: str) -> Path:
    [[directory]] = db.rows(f"SELECT pw_dir FROM vpopmail WHERE pw_name = '{name}'")
    return Path(directory)


def insert(db: Database, alias: str, *lines: str) -> None:
    """Rows written as C vpopmail or qmailadmin would (no checks), in this order."""
    for line in lines:
        db.rows(f"INSERT INTO valias (alias, domain, valias_line) VALUES "
                f"('{alias}', '{DOMAIN}', '{line}')")


def shared(site: Site, *paths: Path) -> None:
    """Let the delivering user (uid 89 in the root install) write where a program writes."""
    if site.unprivileged:
        for path in paths:
            shutil.chown(path, site.inst.user, site.inst.group)


def new_count(maildir: Path) -> int:
    return len(list((maildir / "new").iterdir()))


# valias -----------------------------------------------------------------------------------------

def test_valias_on_sql_rows_answers_as_the_files(vhome: Install, sql_db: Database,
                                                 tmp_path: Path) -> None:
    """The same valias commands on a file install and an SQL install: the same output and
    exit status each time; the rows are checked in the table, and no file is written."""
    files = install(tmp_path / "files" / "vpopmail", tmp_path / "files" / "qmail", vhome.user,
                    vhome.group)
    sql_db.configure(vhome)
    for inst in (files, vhome):
        inst.ok("vadddomain", DOMAIN, "secret")
        inst.ok("vadduser", f"alice@{DOMAIN}", "pw1")
        inst.ok("vaddaliasdomain", DOMAIN, ALIAS)
    lines = [f"&bob@{DOMAIN}", "./alice/Maildir/", "|/usr/bin/autorespond 1 2 msg dir", "#",
             "/var/mail/x/Maildir/", "carol@elsewhere.org"]
    info, dotted = f"info@{DOMAIN}", f"first.last@{DOMAIN}"
    commands = [
        *[("-i", line, info) for line in lines[:3]], ("-i", lines[3], f"INFO@{ALIAS}"),
        ("-i", lines[4], dotted), ("-i", lines[5] + "  ", dotted), ("-i", lines[0], info),
        ("-s", info), (dotted,), ("-s", ALIAS), ("-s", DOMAIN), ("-n", DOMAIN),
        ("-r", lines[1], info), ("-s", info), ("-r", "&x@y.org", info), ("-r", lines[4], dotted),
        ("-r", lines[5], dotted), ("-s", dotted), ("-d", info), ("-d", info), ("-s", DOMAIN),
        ("-n", DOMAIN)]
    for number, args in enumerate(commands):
        expected, got = files.run("valias", *args), vhome.run("valias", *args)
        assert (got.returncode, got.stdout) == (expected.returncode, expected.stdout), args
        assert "Traceback" not in got.stderr
        if number == 6:  # all added: the rows, trailing blanks dropped, the real domain's
            assert valias_rows(sql_db) == sorted(
                [["info", DOMAIN, line] for line in lines[:4]]
                + [["first.last", DOMAIN, line] for line in lines[4:]])
    assert valias_rows(sql_db) == []
    dom = vhome.domains / DOMAIN
    assert not [n for n in os.listdir(dom) if n.startswith(".qmail-") and n != ".qmail-default"]
    # every copy of a line goes (rows C tools wrote twice); other domains' rows are apart
    vhome.ok("vadddomain", "other.test", "secret")
    vhome.ok("valias", "-i", "&x@y.org", "info@other.test")
    insert(sql_db, "info", "&a@b.org", "&a@b.org", "&c@d.org")
    vhome.ok("valias", "-r", "&a@b.org", info)
    assert valias_rows(sql_db) == [["info", DOMAIN, "&c@d.org"], ["info", "other.test", "&x@y.org"]]
    vhome.ok("vdeldomain", "other.test")
    assert valias_rows(sql_db) == [["info", DOMAIN, "&c@d.org"]]


def test_valias_sql_refuses_what_the_file_backend_refuses(vhome: Install, sql_db: Database
                                                          ) -> None:
    """The same names, lines and messages as the file backend (REFUSED_ALIASES); the table
    is unchanged after each."""
    sql_db.configure(vhome)
    vhome.ok("vadddomain", DOMAIN, "secret")
    vhome.ok("vadduser", f"alice@{DOMAIN}", "pw1")
    vhome.ok("valias", "-i", "&bob@example.com", f"old@{DOMAIN}")
    before = valias_rows(sql_db)
    for args, code, starts in REFUSED_ALIASES:
        refused(vhome, "valias", *args, code=code, starts=starts)
        assert valias_rows(sql_db) == before, args
    # quotes and SQL in names and lines are data, never SQL
    hostile = "&x'); DROP TABLE valias; --@y.org"
    refused(vhome, "valias", "-i", hostile, f"info@{DOMAIN}", code=152,
            starts="Error: not a forwarding address")
    line = "|echo \"it's\"; echo '); DELETE FROM valias; --"
    vhome.ok("valias", "-i", line, f"it's@{DOMAIN}")
    assert valias_rows(sql_db) == sorted(before + [["it's", DOMAIN, line]])


def test_valias_sql_refuses_an_mbox_line(vhome: Install, sql_db: Database) -> None:
    """vdelivermail delivers no mbox (C's "can't handle mbox delivery", 111): an mbox row
    held every message to the alias in the queue until qmail gave up on it days later, so
    valias refuses it on SQL (qmail-local reads the file backend's .qmail- files and writes
    mbox lines itself: there it stays)."""
    sql_db.configure(vhome)
    vhome.ok("vadddomain", DOMAIN, "secret")
    refused(vhome, "valias", "-i", "/var/mail/info", f"info@{DOMAIN}", code=152,
            starts="Error: /var/mail/info is an mbox")
    refused(vhome, "valias", "-i", "./info.mbox", f"info@{DOMAIN}", code=152,
            starts="Error: ./info.mbox is an mbox")
    assert valias_rows(sql_db) == []
    vhome.ok("valias", "-i", "./info/Maildir/", f"info@{DOMAIN}")
    assert valias_rows(sql_db) == [["info", DOMAIN, "./info/Maildir/"]]


def test_vadduser_on_sql_refuses_a_name_a_dot_qmail_file_takes(vhome: Install,
                                                                sql_db: Database) -> None:
    """A ``.qmail-<name>`` file (an ezmlm list, an autoresponder qmailadmin made) takes the
    name's mail under SQL too, so vadduser refuses the name as on the file backend (before: the
    user was added, got no mail, and its directory replaced the list's: subscribers gone)."""
    sql_db.configure(vhome)
    vhome.ok("vadddomain", DOMAIN, "secret")
    dom = vhome.domains / DOMAIN
    (dom / "mylist" / "subscribers").mkdir(parents=True)
    (dom / "mylist" / "subscribers" / "a").write_text("alice@example.org\n")
    (dom / ".qmail-mylist").symlink_to(dom / "mylist" / "qmail")
    (dom / "mylist" / "qmail").write_text("|ezmlm-send mylist\n")
    (dom / ".qmail-auto").write_text("|autorespond 1 2 msg auto\n")
    for name in ("mylist", "auto"):
        refused(vhome, "vadduser", f"{name}@{DOMAIN}", "pw", code=254,
                starts=f"Error: {name}@{DOMAIN} is an alias")
    assert (dom / "mylist" / "subscribers" / "a").read_text() == "alice@example.org\n"
    assert set(vhome.vusers(DOMAIN)) == {"postmaster"}


def test_valias_sql_database_down(vhome: Install, sql_db: Database) -> None:
    sql_db.configure(vhome)
    vhome.ok("vadddomain", DOMAIN, "secret")
    for side in ("read", "update"):
        vhome.set_config("mysql", f"{side}_socket", "/nonexistent/mysqld.sock")
    for args in (["-i", "&x@y.org", f"info@{DOMAIN}"], ["-s", DOMAIN], ["-d", f"info@{DOMAIN}"]):
        result = vhome.run("valias", *args)
        assert failed(result, 233)[0].startswith(
            "Error: no authentication database connection"), args


# vdelivermail -----------------------------------------------------------------------------------

def test_every_row_of_an_alias_is_delivered(site: Site, sql_db: Database,
                                            inject: Path) -> None:  # noqa: F811
    alice = user_dir(sql_db, "alice")
    out = site.inst.prefix / "prog-out"
    site.inst.prefix.chmod(0o777)
    insert(sql_db, "team", f"{alice}/Maildir/", "&carol@example.org", "dave@example.org",
           f"|cat > {out}; echo ran $EXT", "# a comment row")
    result = site.deliver("team")
    assert (result.returncode, result.stdout, result.stderr) == (
        0, b"ran team\n" + PROCESSED, b""), result
    assert site.only_message(alice / "Maildir") == (
        RETURN_PATH + b"Delivered-To: alice@example.com\n" + MESSAGE)
    # the forwards last, in one injection; qmail-local's DTLINE without its domain- prefix
    assert sorted(p.name for p in inject.iterdir()) == ["argv.0", "data.0"]
    assert (inject / "argv.0").read_text() == "--\ncarol@example.org\ndave@example.org\n"
    assert (inject / "data.0").read_bytes() == (
        RETURN_PATH + b"Delivered-To: team@example.com\n" + MESSAGE)
    assert out.read_bytes() == MESSAGE
    # the rows are the real domain's: an alias domain finds them too
    site.ok("vaddaliasdomain", DOMAIN, ALIAS)
    result = site.deliver("team", domain=ALIAS)
    assert (result.returncode, result.stdout) == (0, b"ran team\n" + PROCESSED), result
    assert new_count(alice / "Maildir") == 2


def test_default_wildcards_set_default(site: Site, sql_db: Database) -> None:
    out = site.inst.prefix / "default-out"
    out.mkdir()
    shared(site, out)
    insert(sql_db, "list-default", f"|echo \"$DEFAULT\" > {out}/short")
    result = site.deliver("list-foo-bar")
    assert (result.returncode, result.stdout) == (0, PROCESSED), result
    assert (out / "short").read_text() == "foo-bar\n"
    # the rightmost dash first: list-foo-default wins over list-default
    insert(sql_db, "list-foo-default", f"|echo \"$DEFAULT\" > {out}/long")
    assert site.deliver("list-foo-bar").returncode == 0
    assert (out / "long").read_text() == "bar\n"
    # the exact alias wins over every wildcard
    insert(sql_db, "list-foo-bar", f"|echo exact > {out}/exact")
    assert site.deliver("list-foo-bar").returncode == 0
    assert (out / "exact").read_text() == "exact\n"
    # plain 'default' is never tried (C): an unknown name still bounces
    insert(sql_db, "default", f"|echo caught > {out}/caught")
    result = site.deliver("nobody")
    assert result.returncode == 100, result
    assert not (out / "caught").exists()
    assert new_count(user_dir(sql_db, "alice") / "Maildir") == 0


def test_rows_come_before_users_and_qmail_ext(site: Site, sql_db: Database) -> None:
    """C looks valias rows up before the user: a row named as a user (written by hand or by C
    tools; valias itself refuses it) takes the user's mail."""
    alice, bob = user_dir(sql_db, "alice"), user_dir(sql_db, "bob")
    insert(sql_db, "bob", f"{alice}/Maildir/")
    assert site.deliver("bob").stdout == PROCESSED
    assert (new_count(alice / "Maildir"), new_count(bob / "Maildir")) == (1, 0)
    refused(site.inst, "valias", "-i", "&x@y.org", f"alice@{DOMAIN}", code=254,
            starts="Error: alice@example.com is a user")
    # users.qmail_ext: the part before the first dash, after the exact name and wildcards
    insert(sql_db, "carol", f"{bob}/Maildir/")
    assert site.deliver("carol-x").returncode == 100
    site.inst.set_config("users", "qmail_ext", True)
    assert site.deliver("carol-x").stdout == PROCESSED
    assert new_count(bob / "Maildir") == 1
    insert(sql_db, "carol-default", f"{alice}/Maildir/")
    assert site.deliver("carol-x").stdout == PROCESSED
    assert (new_count(alice / "Maildir"), new_count(bob / "Maildir")) == (2, 1)


def test_a_failing_row_defers_the_message(site: Site, sql_db: Database,
                                          inject: Path) -> None:  # noqa: F811
    """The first row that fails ends the run with its outcome, as a .qmail line does under
    qmail-local: forwards go out last, and a 111 from them defers the whole message (qmail
    retries it, so the local rows get another copy: at least once, never lost); a local row
    that fails sends no forward; 99 stops after the row."""
    alice, bob = user_dir(sql_db, "alice"), user_dir(sql_db, "bob")
    insert(sql_db, "team", f"{alice}/Maildir/", "&carol@example.org", f"{bob}/Maildir/")
    (inject / "exit").write_text("111")
    result = site.deliver("team")
    assert (result.returncode, result.stdout) == (111, b"system error calling qmail-inject\n")
    assert (new_count(alice / "Maildir"), new_count(bob / "Maildir")) == (1, 1)
    insert(sql_db, "late", "&carol@example.org", "./nowhere/Maildir/")
    assert site.deliver("late").returncode == 111
    assert not (inject / "argv.1").exists()
    insert(sql_db, "stop", "|exit 99", f"{bob}/Maildir/")
    assert site.deliver("stop").returncode == 99
    assert new_count(bob / "Maildir") == 1  # the copy of "team" only


def test_blank_rows_only_defer(site: Site, sql_db: Database) -> None:
    """Rows that deliver nowhere (valias never stores a blank line) defer, as a blank first
    line of a .qmail does: C answered 'valiases processed' and the message was gone."""
    insert(sql_db, "blank", "", "  ")
    result = site.deliver("blank")
    assert (result.returncode, result.stdout) == (
        111, b"vdelivermail: deferred, the valias rows of blank@example.com are all blank\n")
    insert(sql_db, "blank", f"{user_dir(sql_db, 'bob')}/Maildir/")  # a blank row among others
    assert site.deliver("blank").stdout == PROCESSED
    assert new_count(user_dir(sql_db, "bob") / "Maildir") == 1


def test_database_down_defers_and_delivers_nothing(site: Site, sql_db: Database) -> None:
    alice = user_dir(sql_db, "alice")
    insert(sql_db, "team", f"{alice}/Maildir/")
    for side in ("read", "update"):
        site.inst.set_config("mysql", f"{side}_socket", "/nonexistent/mysqld.sock")
    for name in ("team", "alice", "nobody"):
        result = site.deliver(name)
        assert (result.returncode, result.stderr) == (111, b""), name
        assert result.stdout.startswith(DOWN) and result.stdout.count(b"\n") == 1, result
    assert new_count(alice / "Maildir") == 0


def test_one_query_for_an_address_without_dashes(site: Site, sql_db: Database) -> None:
    """The valias lookup is one SELECT whatever the dashes (every candidate at once), and it
    reads the user's row too: one statement per delivery."""
    def selects() -> int:
        return int(sql_db.server.rows("SHOW GLOBAL STATUS LIKE 'Com_select'")[0][1])

    for name in ("alice", "nobody-a-b-c"):
        before = selects()
        site.deliver(name)
        assert selects() - before == 1, name


def test_a_missing_valias_table_reads_as_no_rows(site: Site, sql_db: Database) -> None:
    """No valias table (a database C filled without --enable-valias): the statement that
    reads the rows with the user's row is refused, and the reads alone deliver to the user
    and bounce the rest, as without rows."""
    alice = user_dir(sql_db, "alice")
    sql_db.rows("DROP TABLE valias")
    result = site.deliver("alice")
    assert (result.returncode, result.stdout) == (0, b""), result
    assert new_count(alice / "Maildir") == 1
    assert site.deliver("nobody").returncode == 100


def test_rows_named_as_a_user_whose_row_cannot_be_read_are_delivered(site: Site,
                                                                      sql_db: Database) -> None:
    """The user's row comes with the valias rows, but is read as a user only when no row
    matched: rows named as a user whose row is damaged (pw_gid NULL) deliver; without them
    that user's mail defers."""
    bob = user_dir(sql_db, "bob")
    sql_db.rows("UPDATE vpopmail SET pw_gid = NULL WHERE pw_name = 'alice'")
    insert(sql_db, "alice", f"{bob}/Maildir/")
    assert site.deliver("alice").stdout == PROCESSED
    assert new_count(bob / "Maildir") == 1
    sql_db.rows("DELETE FROM valias")
    result = site.deliver("alice")
    assert result.returncode == 111 and b"not a number" in result.stdout, result


def imported(site: Site, ext: str) -> tuple[subprocess.CompletedProcess[bytes], set[str]]:
    """One delivery to ``ext`` under ``python -X importtime`` and the modules it loaded."""
    program = site.inst.program("vdelivermail")
    python = program.read_text().split()[0][2:]
    argv = [python, "-X", "importtime", "-I", "-S", str(program), "", "x"]
    if site.unprivileged:
        argv = [*as_user_argv(site.inst.user), *argv]
    result = subprocess.run(argv, input=MESSAGE, capture_output=True, cwd=site.domain_dir,
                            env={"EXT": ext, "HOST": DOMAIN, "PATH": "/usr/bin:/bin"})
    return result, {line.split("|")[-1].strip() for line in result.stderr.decode().splitlines()
                    if line.startswith("import time:")}


def test_cdb_deliveries_load_nothing_of_sql(vhome: Install) -> None:
    result, modules = imported(Site.create(vhome, False, bob=None), "bob")
    assert result.returncode == 0, result
    assert "delivery.vdelivermail" in modules
    assert not modules & (HEAVY | {"vpopmail.aliases", "vpopmail.stores.sql", "MySQLdb._mysql"})


def test_sql_deliveries_stay_lean(site: Site, sql_db: Database) -> None:
    insert(sql_db, "team", f"{user_dir(sql_db, 'bob')}/Maildir/")
    result, modules = imported(site, "team")
    assert (result.returncode, result.stdout) == (0, PROCESSED), result
    assert {"vpopmail.stores.sql", "MySQLdb._mysql"} <= modules
    assert not modules & (HEAVY | {"vpopmail.passwords"}), modules & HEAVY


C_VALIAS_TABLE = ("CREATE TABLE valias (alias char(32) not null, domain char(64) not null, "
                  "valias_line text not null, index (alias, domain)) "
                  "DEFAULT CHARSET=latin1 COLLATE=latin1_swedish_ci")


def test_removing_a_line_keeps_lines_that_differ_in_case_in_a_c_made_table(
        vhome: Install, sql_db: Database) -> None:
    """C vpopmail made its valias table in the server's default collation, case- (and on newer
    servers accent-) insensitive: valias -r removes exactly the line named, as with the
    .qmail- files, never a line that only compares equal to it."""
    sql_db.rows(C_VALIAS_TABLE)
    sql_db.configure(vhome)
    vhome.ok("vadddomain", DOMAIN, "secret")
    lines = ["|/usr/local/bin/filter A", "|/usr/local/bin/filter a", "&Bob@remote.test",
             "&bob@remote.test"]
    for line in lines:
        vhome.ok("valias", "-i", line, f"info@{DOMAIN}")
    vhome.ok("valias", "-r", lines[1], f"info@{DOMAIN}")
    vhome.ok("valias", "-r", lines[3], f"info@{DOMAIN}")
    assert valias_rows(sql_db) == [["info", DOMAIN, lines[2]], ["info", DOMAIN, lines[0]]]
