"""Dovecot 2.3.19 reading pyvpopmail's MariaDB tables itself (passdb and userdb driver sql), with
the shipped packaging/dovecot files: only the connection line and the path of the .conf.ext
are replaced. Users are made with the installed admin commands on a root install whose
backend is the test's database; mail is delivered by the installed vdelivermail. Dovecot
connects as the SELECT-only account, so every passing login also proves it needs no more."""
from __future__ import annotations

import imaplib
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from vpopmail.passwords import hash_password
from install_site import REPO, Install
from delivery_site import DOMAIN, MESSAGE, Site
from dovecot_site import DOVECOT24_ROOT, Dovecot, alive, new_source_ip
from mariadb_site import PASSWORD as DB_PASSWORD
from mariadb_site import RO, Database

PACKAGING = REPO / "packaging" / "dovecot"
SHIPPED_EXT = "/etc/dovecot/dovecot-sql.conf.ext"
PASSWORD = "Dove-sql-1"
WEBMAIL_IP = "127.0.0.1"  # vchkpw's webmail rule: POP3/IMAP from the local host


def address(name: str) -> str:
    return f"{name}@{DOMAIN}"


def shipped_config(directory: Path, database: Database, version: str = "2.3") -> list[Path]:
    """The shipped files of Dovecot ``version`` as Dovecot includes them, pointed at
    ``database`` over its socket as the read-only account; nothing else changed."""
    directory.mkdir()
    if version == "2.4":  # one file: its "mysql <host> { }" block names the server
        text, count = re.subn(
            r"(?ms)^mysql /run/mysqld/mysqld\.sock \{\n.*?^\}",
            f"mysql {database.server.socket} {{\n  dbname = {database.name}\n  user = {RO}\n"
            f"  password = {DB_PASSWORD}\n}}", (PACKAGING / "dovecot24-vpopmail.conf").read_text())
        assert count == 1
        path = directory / "dovecot24-vpopmail.conf"
        path.write_text(text)
        path.chmod(0o600)
        return [path]
    ext = (PACKAGING / "dovecot-sql.conf.ext").read_text()
    ext, count = re.subn(r"(?m)^connect = .*$",
                         f"connect = host={database.server.socket} dbname={database.name} "
                         f"user={RO} password={DB_PASSWORD}", ext)
    assert count == 1
    ext_path = directory / "dovecot-sql.conf.ext"
    ext_path.write_text(ext)
    ext_path.chmod(0o600)
    auth = (PACKAGING / "10-auth-vpopmail.conf").read_text()
    assert auth.count(SHIPPED_EXT) == 2  # passdb and userdb
    auth_path = directory / "10-auth-vpopmail.conf"
    auth_path.write_text(auth.replace(SHIPPED_EXT, str(ext_path)))
    return [auth_path, PACKAGING / "90-quota-vpopmail.conf"]


def user_dir(site: Site, name: str) -> Path:
    """The user's directory as the installed vuserinfo reports it from the database."""
    return Path(site.ok("vuserinfo", "-d", address(name)).strip())


def auth(dovecot: Dovecot, name: str, password: str, service: str = "doveadm",
         source_ip: str | None = None) -> subprocess.CompletedProcess[str]:
    """``doveadm auth test`` as ``service`` from ``source_ip`` (a fresh address by default)."""
    return dovecot.doveadm("auth", "test", "-x", f"service={service}",
                           "-x", f"rip={source_ip or new_source_ip()}", address(name), password)


@pytest.fixture
def mail_site(root_vhome: Install, sql_db: Database) -> Site:
    """A root install on the test's database: example.com, alice with one delivered message."""
    sql_db.configure(root_vhome)
    site = Site.create(root_vhome, True)
    site.ok("vadduser", address("alice"), PASSWORD)
    assert site.deliver("alice").returncode == 0
    return site


@pytest.fixture(params=["2.3", "2.4"])
def version(request: pytest.FixtureRequest) -> str:
    """The Dovecot a test runs: 2.3 (Debian 12's, checkpassword still there) or 2.4 (Debian
    13's, chrooted: tests/dovecot_site.py's Dovecot24), each with its shipped files."""
    return str(request.param)


def start_dovecot(version: str, request: pytest.FixtureRequest, inst: Install,
                  database: Database, directory: Path) -> Dovecot:
    """A Dovecot ``version`` over ``database`` with the shipped files, mail homes in ``inst``;
    its files under ``directory``."""
    includes = shipped_config(directory / "conf", database, version)
    if version == "2.3":
        factory = request.getfixturevalue("dovecot_factory")
        return factory("", uid=inst.uid, gid=inst.gid, includes=includes)  # type: ignore[no-any-return]
    factory = request.getfixturevalue("dovecot24_factory")
    return factory(uid=inst.uid, gid=inst.gid, includes=includes,  # type: ignore[no-any-return]
                   shared=[directory, inst.prefix.parent, Path(database.server.socket).parent])


@pytest.fixture
def dovecot(mail_site: Site, sql_db: Database, tmp_path: Path, version: str,
            request: pytest.FixtureRequest) -> Dovecot:
    return start_dovecot(version, request, mail_site.inst, sql_db, tmp_path)


def test_dovecot_account_has_only_select(sql_db: Database) -> None:
    grants = "\n".join(row[0] for row in sql_db.rows(f"SHOW GRANTS FOR '{RO}'@'localhost'"))
    privileges = set(re.findall(r"GRANT (.+?) ON", grants))
    assert privileges == {"USAGE", "SELECT"}, grants


def test_imap_login_fetches_delivered_message(mail_site: Site, dovecot: Dovecot) -> None:
    client = dovecot.imap_login("Alice@Example.COM", PASSWORD, new_source_ip())
    try:
        assert client.select("INBOX") == ("OK", [b"1"])
        status, fetched = client.fetch("1", "(BODY.PEEK[])")
        assert status == "OK"
        body = fetched[0][1].replace(b"\r\n", b"\n")  # type: ignore[index]
        assert body.startswith(b"Return-Path: <sender@remote.test>\nDelivered-To: ")
        assert body.endswith(MESSAGE)
    finally:
        client.logout()
    assert (user_dir(mail_site, "alice") / "Maildir" / "dovecot-uidlist").exists()
    assert " Error" not in dovecot.log_text()


def test_pop3_login_reads_delivered_message(dovecot: Dovecot) -> None:
    with dovecot.pop3_login(address("alice"), PASSWORD, new_source_ip()) as client:
        assert client.stat()[0] == 1
        _, lines, _ = client.retr(1)
    assert (b"\n".join(lines) + b"\n").endswith(MESSAGE)


@pytest.mark.parametrize("login,password", [(address("alice"), "wrong"),
                                            (address("nobody"), PASSWORD),
                                            ("alice@other.example", PASSWORD)])
def test_bad_login_is_a_clean_rejection(dovecot: Dovecot, login: str, password: str) -> None:
    dovecot.assert_refused(login, password)


def test_user_without_password_cannot_log_in(mail_site: Site, sql_db: Database,
                                            dovecot: Dovecot, version: str) -> None:
    mail_site.ok("vadduser", "-n", address("carol"))
    assert sql_db.rows("SELECT pw_passwd FROM vpopmail WHERE pw_name = 'carol'") == [[""]]
    for password in ("", "anything"):
        assert auth(dovecot, "carol", password, "imap").returncode == 77
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        dovecot.imap_login(address("carol"), "", new_source_ip())
    dovecot.wait_log(r"sql\(carol@example\.com,[0-9.]+\): unknown user" if version == "2.3" else
                     r"auth-worker\(carol@example\.com,[0-9.]+\).*: sql: unknown user")


#: (vmoduser option, refused services, allowed services); "webmail" is IMAP from WEBMAIL_IP
FLAGS = [("-i", ["imap"], ["pop3", "smtp", "webmail"]),
         ("-p", ["pop3"], ["imap", "smtp", "webmail"]),
         ("-s", ["smtp", "submission"], ["imap", "pop3"]),
         ("-w", ["webmail"], ["imap", "pop3", "smtp"])]


@pytest.mark.parametrize("option,refused,allowed", FLAGS)
def test_flag_refuses_its_service_only(mail_site: Site, dovecot: Dovecot, option: str,
                                       refused: list[str], allowed: list[str]) -> None:
    mail_site.ok("vmoduser", option, address("alice"))

    def check(service: str) -> int:
        if service == "webmail":
            return auth(dovecot, "alice", PASSWORD, "imap", WEBMAIL_IP).returncode
        return auth(dovecot, "alice", PASSWORD, service).returncode

    # successes first: a failure from WEBMAIL_IP delays that address's next login
    assert {service: check(service) for service in allowed} == dict.fromkeys(allowed, 0)
    assert {service: check(service) for service in refused} == dict.fromkeys(refused, 77)


def test_no_imap_user_refused_on_imap_allowed_on_pop3(mail_site: Site, dovecot: Dovecot) -> None:
    mail_site.ok("vmoduser", "-i", address("alice"))
    with dovecot.pop3_login(address("alice"), PASSWORD, new_source_ip()) as client:
        assert client.stat()[0] == 1
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        dovecot.imap_login(address("alice"), PASSWORD, new_source_ip())
    mail_site.ok("vmoduser", "-x", address("alice"))
    dovecot.imap_login(address("alice"), PASSWORD, new_source_ip()).logout()


def _argon2(password: str) -> str:
    made = subprocess.run(["doveadm", "pw", "-s", "ARGON2ID", "-p", password], check=True,
                          capture_output=True, text=True).stdout.strip()
    return made.removeprefix("{ARGON2ID}")


#: scheme -> (how the hash gets into the table, its prefix): passwords.scheme + vpasswd for
#: what our library makes, vmoduser -e for hashes imported from elsewhere
SCHEMES = {
    "sha512-crypt": ("config", "$6$"),
    "sha256-crypt": ("config", "$5$"),
    "md5-crypt": ("config", "$1$"),
    "bcrypt": ("config", "$2b$"),
    "des-crypt": ("config", ""),
    "argon2id": ("import", "$argon2id$"),
    "tagged": ("import", "{SHA512-CRYPT}$6$"),
}


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_password_schemes_log_in(mail_site: Site, sql_db: Database, dovecot: Dovecot,
                                 scheme: str) -> None:
    how, prefix = SCHEMES[scheme]
    new = f"New-{scheme}-pw"
    if how == "config":
        mail_site.inst.set_config("passwords", "scheme", scheme)
        mail_site.ok("vpasswd", address("alice"), new)
    else:
        stored = (_argon2(new) if scheme == "argon2id"
                  else "{SHA512-CRYPT}" + hash_password(new, "sha512-crypt"))
        mail_site.ok("vmoduser", "-e", stored, address("alice"))
    [[stored]] = sql_db.rows("SELECT pw_passwd FROM vpopmail WHERE pw_name = 'alice'")
    assert stored.startswith(prefix) if prefix else (len(stored), "$" in stored) == (13, False)
    assert auth(dovecot, "alice", new).returncode == 0, stored
    assert auth(dovecot, "alice", PASSWORD).returncode == 77
    dovecot.imap_login(address("alice"), new, new_source_ip()).logout()


def test_doveadm_auth_and_user_agree(mail_site: Site, dovecot: Dovecot, version: str) -> None:
    mail_site.ok("vadduser", address("bob"), "Bob-pw-1")
    tested = auth(dovecot, "alice", PASSWORD)
    assert tested.returncode == 0, tested.stderr
    assert "user=alice@example.com" in tested.stdout
    for name in ("alice", "bob"):
        found = dovecot.doveadm("user", address(name))
        assert found.returncode == 0, found.stderr
        fields = dict(line.split("\t", 1) for line in found.stdout.splitlines()[1:])
        home = user_dir(mail_site, name)
        mail = ({"mail": "maildir:~/Maildir"} if version == "2.3"  # 2.4: mail_driver + mail_path
                else {"mail_path": f"{home}/Maildir"})
        assert fields == {"uid": str(mail_site.inst.uid), "gid": str(mail_site.inst.gid),
                          "home": str(home), **mail}
    assert dovecot.doveadm("user", address("nobody")).returncode == 67
    listed = dovecot.doveadm("user", "*")
    assert sorted(listed.stdout.split()) == [address(n) for n in ("alice", "bob", "postmaster")]


def quota_rows(dovecot: Dovecot, name: str) -> dict[str, tuple[str, str]]:
    """``doveadm quota get``: type -> (value, limit); STORAGE in KiB, "-" for no limit."""
    got = dovecot.doveadm("quota", "get", "-u", address(name))
    assert got.returncode == 0, got.stderr
    rows = [line.split() for line in got.stdout.splitlines()[1:]]
    return {row[2]: (row[3], row[4]) for row in rows}


@pytest.mark.parametrize("quota,rule,expected", [
    # no limit and no maildirsize: Dovecot 2.3 neither limits nor counts (2.4 counts: below)
    ("NOQUOTA", None, {"STORAGE": ("0", "-"), "MESSAGE": ("0", "-")}),
    # one 263-byte message counted from vdelivermail's maildirsize; STORAGE in KiB
    ("1000000S", "*:storage=1000000B", {"STORAGE": ("1", "977"), "MESSAGE": ("1", "-")}),
    ("2000000S,1000C", "*:storage=2000000B:messages=1000",
     {"STORAGE": ("1", "1954"), "MESSAGE": ("1", "1000")}),
    ("50C", "*:messages=50", {"STORAGE": ("1", "-"), "MESSAGE": ("1", "50")}),
])
def test_quota_from_pw_shell(mail_site: Site, dovecot: Dovecot, version: str, quota: str,
                             rule: str | None, expected: dict[str, tuple[str, str]]) -> None:
    """The limits Dovecot reads from pw_shell are vdelivermail's, counted from its
    maildirsize; a quota given later counts what Dovecot's file left out."""
    mail_site.ok("vadduser", address("bob"), "Bob-pw-1")
    mail_site.ok("vsetuserquota", address("bob"), quota)
    assert mail_site.deliver("bob").returncode == 0
    maildirsize = user_dir(mail_site, "bob") / "Maildir" / "maildirsize"
    assert maildirsize.exists() == (quota != "NOQUOTA")
    if quota != "NOQUOTA":
        lines = maildirsize.read_text().splitlines()  # vdelivermail's: header, then usage
        assert lines[0] == quota and lines[-1].endswith(" 1")
    if version == "2.3":  # 2.4's doveadm user shows no quota settings
        found = dovecot.doveadm("user", address("bob")).stdout
        assert (f"quota_rule\t{rule}\n" in found) if rule else "quota_rule" not in found
    elif quota == "NOQUOTA":  # 2.4 counts without a limit, in a maildirsize of its own
        expected = {"STORAGE": ("1", "-"), "MESSAGE": ("1", "-")}
    assert quota_rows(dovecot, "bob") == expected
    if quota == "NOQUOTA":
        assert maildirsize.exists() == (version == "2.4")
    # a delivery after a new quota counts both messages, whoever wrote the file before
    mail_site.ok("vsetuserquota", address("bob"), "1000000S")
    assert mail_site.deliver("bob").returncode == 0
    assert maildirsize.read_text().splitlines()[0] == "1000000S"
    assert quota_rows(dovecot, "bob") == {"STORAGE": ("1", "977"), "MESSAGE": ("2", "-")}


def test_changed_password_works_at_next_login(mail_site: Site, dovecot: Dovecot) -> None:
    dovecot.imap_login(address("alice"), PASSWORD, new_source_ip()).logout()
    mail_site.ok("vpasswd", address("alice"), "Changed-pw-2")
    dovecot.imap_login(address("alice"), "Changed-pw-2", new_source_ip()).logout()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        dovecot.imap_login(address("alice"), PASSWORD, new_source_ip())


def test_alias_domain_logins_are_the_real_domains_users(mail_site: Site,
                                                        dovecot: Dovecot) -> None:
    """user@alias logs in as the real domain's user (vaddaliasdomain copies the alias into
    the aliasdomains table the shipped queries join), reads that user's mail, and stops
    working with vdeldomain of the alias."""
    mail_site.ok("vaddaliasdomain", DOMAIN, "alias.example")
    tested = dovecot.doveadm("auth", "test", "-x", f"rip={new_source_ip()}",
                             "alice@alias.example", PASSWORD)
    assert tested.returncode == 0, tested.stderr
    assert "user=alice@example.com" in tested.stdout
    found = dovecot.doveadm("user", "alice@alias.example")
    assert found.returncode == 0, found.stderr
    assert f"home\t{user_dir(mail_site, 'alice')}\n" in found.stdout
    client = dovecot.imap_login("Alice@Alias.Example", PASSWORD, new_source_ip())
    try:
        assert client.select("INBOX") == ("OK", [b"1"])
    finally:
        client.logout()
    mail_site.ok("vdeldomain", "alias.example")
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        dovecot.imap_login("alice@alias.example", PASSWORD, new_source_ip())
    dovecot.imap_login(address("alice"), PASSWORD, new_source_ip()).logout()


def test_per_domain_tables_through_a_view(root_vhome: Install, sql_db: Database, tmp_path: Path,
                                          version: str, request: pytest.FixtureRequest) -> None:
    """mysql.many_domains = false: the view the .conf.ext describes lets the shipped queries
    read the per-domain tables unchanged."""
    sql_db.configure(root_vhome, many_domains=False)
    site = Site.create(root_vhome, True)
    site.ok("vadduser", address("alice"), PASSWORD)
    assert site.deliver("alice").returncode == 0
    sql_db.rows("CREATE VIEW vpopmail AS SELECT pw_name, 'example.com' AS pw_domain, pw_passwd, "
                "pw_uid, pw_gid, pw_gecos, pw_dir, pw_shell FROM example_com")
    server = start_dovecot(version, request, site.inst, sql_db, tmp_path)
    client = server.imap_login(address("alice"), PASSWORD, new_source_ip())
    try:
        assert client.select("INBOX") == ("OK", [b"1"])
    finally:
        client.logout()
    assert auth(server, "alice", "wrong").returncode == 77


def test_dovecot24_leaves_no_mount_process_or_directory(mail_site: Site, sql_db: Database,
                                                       tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    """The harness's Dovecot 2.4: its binds exist only in its own mount namespace, and once
    it stopped, no process of it and no directory it bound onto in the tree remain."""
    server = start_dovecot("2.4", request, mail_site.inst, sql_db, tmp_path)
    inside = DOVECOT24_ROOT / tmp_path.relative_to("/")
    assert inside.is_dir()
    host = Path("/proc/self/mounts").read_text()
    assert str(DOVECOT24_ROOT) not in host and f" {tmp_path} " not in host
    # the master sees the bind at the test's own path (mounts are shown from its root)
    assert f" {tmp_path} " in Path(f"/proc/{server.process.pid}/mounts").read_text()  # type: ignore[union-attr]
    # a lookup: the auth processes run (the master starts its children as they are needed)
    assert auth(server, "alice", PASSWORD).returncode == 0
    processes = [psutil.Process(server.process.pid), *server.processes()]  # type: ignore[union-attr]
    assert len(processes) >= 3, processes  # the master, auth, its workers...
    server.stop()
    assert not [p for p in processes if alive(p)]
    assert not inside.exists() and not (DOVECOT24_ROOT / "tmp" / tmp_path.parts[2]).exists()
