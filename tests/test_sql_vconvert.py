"""vconvert -c -m / -m -c: the users of the cdb files copied into the MySQL tables and back,
through the installed command and in-process, against the private MariaDB of
tests/mariadb_site.py.

A round trip cdb -> SQL -> cdb gives back vpasswd and vpasswd.cdb byte for byte for users with
every odd but valid value (all 19 flag bits, uid 0, a 64-character UTF-8 gecos, clear-text
passwords with ':', quotas, no password); the rows in between are checked column by column.
Users the destination has are named and left alone (exit 254, as -e -c); both directions work
whatever users.backend says; a database that cannot be reached stops the run before anything
changes; records SQL or vpasswd cannot hold refuse their domain. A hypothesis property runs
the round trip over generated users.
"""
from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpopmail.stores import VUser
from install_site import Install
from mariadb_site import Database
from vpopmail import config as vconfig
from vpopmail.api import MAX_QUOTA
from vpopmail.cli import vconvert
from vpopmail.names import USER_CHARS
from vpopmail.stores.cdbfiles import CdbFiles
from helpers import (ALIAS, DOMAIN, LONG_GECOS, cdb_dump, failed, odd_users, refused,
                     vpasswd_cdb_expected, vpasswd_users)

USERS_SQL = ("SELECT pw_name, pw_domain, pw_passwd, pw_uid, pw_gid, pw_gecos, pw_dir, pw_shell, "
             "pw_clear_passwd FROM vpopmail ORDER BY pw_domain, pw_name")


def cdb_site(inst: Install, db: Database, many_domains: bool = True) -> None:
    """The [mysql] section pointing at ``db``, but users.backend = "cdb"."""
    db.configure(inst, many_domains=many_domains)
    inst.set_config("users", "backend", "cdb")


def files(inst: Install, domain: str = DOMAIN) -> tuple[bytes, bytes]:
    dom = inst.domains / domain
    return (dom / "vpasswd").read_bytes(), (dom / "vpasswd.cdb").read_bytes()


def test_round_trip_cdb_sql_cdb(each_install: Install, sql_db: Database) -> None:
    inst = each_install
    cdb_site(inst, sql_db)
    odd_users(inst)
    inst.ok("vadddomain", "other.test", "secret")
    users = vpasswd_users(inst)
    original = {d: files(inst, d) for d in (DOMAIN, "other.test")}
    assert inst.ok("vconvert", "-c", "-m") == (
        "converting example.com done\nconverting other.test done\n")
    rows = sql_db.rows(USERS_SQL)
    assert [r[:2] for r in rows] == [[n, DOMAIN] for n in sorted(users)] + [
        ["postmaster", "other.test"]]
    for row in rows[:-1]:  # every column as vpasswd had it
        fields = users[row[0]]
        clear = ":".join(fields[7:])
        assert row[2:] == [*fields[1:7], clear], row
    carol = next(r for r in rows if r[0] == "carol")
    assert (carol[4], carol[5], carol[8]) == (str(0x7FFFF), LONG_GECOS, "pa:ss wörd")
    # again: everybody is there already, named and left alone (as -e -c)
    result = inst.run("vconvert", "-c", "-m", DOMAIN)
    assert failed(result, 254) == [f"user {n} domain {DOMAIN} did not add"
                                   for n in sorted(users)] + [f"converting {DOMAIN} done"]
    assert sql_db.rows(USERS_SQL) == rows
    # back: vpasswd and its cdb byte for byte, owned by the domain
    for domain in original:
        for name in ("vpasswd", "vpasswd.cdb"):
            (inst.domains / domain / name).unlink()
    assert inst.ok("vconvert", "-d", "-m", "-c", DOMAIN, "other.test") == (
        "".join(f"{n}\n" for n in sorted(users)) + f"converting example.com done\n"
        f"{len(users)} users\npostmaster\nconverting other.test done\n1 users\n")
    for domain, data in original.items():
        assert files(inst, domain) == data
        for name in ("vpasswd", "vpasswd.cdb"):
            st = os.stat(inst.domains / domain / name)
            assert (st.st_uid, st.st_gid) == (inst.uid, inst.gid)
    assert cdb_dump(inst.domains / DOMAIN / "vpasswd.cdb") == vpasswd_cdb_expected(inst)


def test_whatever_the_backend_and_per_domain_tables(vhome: Install, sql_db: Database) -> None:
    """users.backend = "mysql" and one table per domain: -c -m and -m -c still name the
    stores, and an alias domain converts its real domain once."""
    cdb_site(vhome, sql_db, many_domains=False)
    odd_users(vhome)
    vhome.ok("vaddaliasdomain", DOMAIN, ALIAS)
    original = files(vhome)
    vhome.set_config("users", "backend", "mysql")
    assert vhome.ok("vconvert", "-c", "-m", DOMAIN, ALIAS) == "converting example.com done\n"
    table = sql_db.rows("SELECT pw_name FROM example_com ORDER BY pw_name")
    assert [r[0] for r in table] == sorted(vpasswd_users(vhome))
    # and the alias domains, which Dovecot's SQL queries join
    assert sql_db.rows("SELECT alias, domain FROM aliasdomains") == [[ALIAS, DOMAIN]]
    # the configured backend (SQL now) answers from the rows
    assert vhome.ok("vuserinfo", "-C", f"carol@{DOMAIN}") == "pa:ss wörd\n"
    for name in ("vpasswd", "vpasswd.cdb"):
        (vhome.domains / DOMAIN / name).unlink()
    # valias rows are not converted (only the SQL backend delivers them): named on stderr
    vhome.ok("valias", "-i", "&x@y.org", f"info@{DOMAIN}")
    result = vhome.run("vconvert", "-m", "-c")
    assert (result.returncode, result.stdout) == (0, "converting example.com done\n")
    assert result.stderr.startswith(
        "warning: example.com has aliases in the valias table (info): only users.backend")
    assert files(vhome) == original


def test_database_down_changes_nothing(vhome: Install, sql_db: Database) -> None:
    cdb_site(vhome, sql_db)
    vhome.ok("vadddomain", DOMAIN, "secret")
    for side in ("read", "update"):
        vhome.set_config("mysql", f"{side}_socket", "/nonexistent/mysqld.sock")
    for args in (["-c", "-m"], ["-m", "-c", DOMAIN]):
        refused(vhome, "vconvert", *args, code=233,
                starts="Error: no authentication database connection")


def test_records_a_store_cannot_hold_refuse_their_domain(vhome: Install, sql_db: Database
                                                         ) -> None:
    cdb_site(vhome, sql_db)
    vhome.ok("vadddomain", DOMAIN, "secret")
    vhome.ok("vadddomain", "other.test", "secret")
    dom = vhome.domains / DOMAIN
    # a Latin-1 gecos written into vpasswd by hand: not UTF-8, the domain is not copied
    with open(dom / "vpasswd", "ab") as fh:
        fh.write(b"zoe:$6$s$h:1:0:Zo\xeb:" + str(dom).encode() + b"/zoe:NOQUOTA\n")
    result = vhome.run("vconvert", "-c", "-m")
    assert failed(result, 152) == [
        "converting example.com domain conversion failed",
        "Error: bad input: zoe: the gecos is not UTF-8 text", "converting other.test done"]
    assert sql_db.rows("SELECT pw_domain, pw_name FROM vpopmail") == [
        ["other.test", "postmaster"]]
    # a ':' in an SQL gecos would break the vpasswd line: refused, vpasswd unchanged
    sql_db.rows("INSERT INTO vpopmail VALUES ('yan', 'other.test', 'x', 1, 0, 'a:b', '', "
                "'NOQUOTA', '')")
    before = files(vhome, "other.test")
    result = vhome.run("vconvert", "-m", "-c", "other.test")
    assert failed(result, 236) == ["converting other.test domain conversion failed",
                                   "Error: bad character: yan: ':', newline or NUL in the gecos"]
    assert files(vhome, "other.test") == before
    # a quota longer than vsetuserquota allows (and C's pw_shell char(20) holds): refused
    quota = "1000000000000S,10000C"
    with open(dom / "vpasswd", "w") as fh:
        fh.write(f"ann:$6$s$h:1:0:Ann:{dom}/ann:{quota}\n")
    result = vhome.run("vconvert", "-c", "-m", DOMAIN)
    assert failed(result, 227) == [
        "converting example.com domain conversion failed",
        f"Error: quota too long: ann: {quota!r} is longer than 20 characters"]
    assert sql_db.rows(f"SELECT pw_name FROM vpopmail WHERE pw_domain = '{DOMAIN}'") == []


def test_usage(vhome: Install, sql_db: Database) -> None:
    cdb_site(vhome, sql_db)
    vhome.ok("vadddomain", DOMAIN, "secret")
    for args in (["-e", "-m", DOMAIN], ["-m", "-e"], ["-m", "-m"], ["-c", "-m", "-f", "x"]):
        assert failed(vhome.run("vconvert", *args), 255)[0] == "vconvert: usage", args


# the property -----------------------------------------------------------------------------------

NAMES = st.text(alphabet=sorted(c for c in USER_CHARS if not c.isupper()), min_size=2,
                max_size=64).filter(lambda n: not n.startswith(".") and ".." not in n
                                    and not n.startswith("vpasswd") and n != "cdb.tmp")
TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters=":\n\r\0")
QUOTAS = st.one_of(st.just("NOQUOTA"), st.integers(1, 10**12).map(lambda n: f"{n}S"),
                   st.integers(1, 10**6).map(lambda n: f"{n}C"),
                   st.tuples(st.integers(1, 10**12), st.integers(1, 10**6)).map(
                       lambda t: f"{t[0]}S,{t[1]}C").filter(lambda q: len(q) <= MAX_QUOTA))
USERS = st.lists(st.builds(
    VUser, name=NAMES, passwd=st.text(TEXT, max_size=128), uid=st.integers(0, 2**31 - 1),
    flags=st.integers(0, 0x7FFFF), gecos=st.text(TEXT, max_size=64),
    dir=st.sampled_from(["", "/home/vpopmail/domains/example.com/x"]), quota=QUOTAS,
    clear=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\0"),
                  max_size=128)),
    min_size=1, max_size=8, unique_by=lambda u: u.name)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(users=USERS)
def test_property_sql_round_trip(vhome: Install, sql_db: Database, users: list[VUser]) -> None:
    if not (vhome.domains / DOMAIN).exists():
        cdb_site(vhome, sql_db)
        vhome.set_config("passwords", "clear_passwords", True)
        vhome.ok("vadddomain", DOMAIN, "secret")
    config = str(vhome.config_path)
    api = vhome.api()
    entry = api.get_domain(DOMAIN)
    dom = Path(entry.dir)
    for name in ("vpasswd", "vpasswd.cdb"):
        (dom / name).unlink(missing_ok=True)
    sql_db.rows("DROP TABLE IF EXISTS vpopmail")
    files_backend = CdbFiles(vconfig.load(config))
    files_backend.create_domain(entry)  # a domain's files start as vadddomain leaves them
    files_backend.add_users(entry, users)
    original = files(vhome)
    assert vconvert.main(["-c", "-m", DOMAIN], config=config) == 0
    assert len(sql_db.rows("SELECT pw_name FROM vpopmail")) == len(users)
    for name in ("vpasswd", "vpasswd.cdb"):
        (dom / name).unlink()
    assert vconvert.main(["-m", "-c", DOMAIN], config=config) == 0
    assert files(vhome) == original
