"""vdeloldusers (users by last login), vconvert (the user database to and from the etc format)
and valias (``.qmail-<alias>`` files), through the installed bin/ commands on real files.

vdeloldusers (on both user backends): last logins are set back (lastauth's mtime, or its SQL
row); listing changes nothing, -D deletes through the API, postmaster and the catch-all stay,
-e visits each domain once. vconvert: an export and re-import gives back the same vpasswd byte
for byte for users with every odd but valid value; bad lines change nothing. valias: files land
0600, owned by the domain, named as qmail-local looks them up; bad names and lines change
nothing. (vconvert -c and the valias files are the cdb backend's; their SQL counterparts are
tests/test_sql_vconvert.py and tests/test_sql_aliases.py.)
"""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from vpopmail.passwords import verify_password
from install_site import NO_BACKEND, Install
from vpopmail.cli import vconvert
from helpers import (ALIAS, DOMAIN, LONG_GECOS, REFUSED_ALIASES, cdb_dump, check_index, failed,
                     odd_users, refused, run_as_vpopmail, site, state, stored_users,
                     vpasswd_cdb_expected, vpasswd_users)

pytestmark = pytest.mark.both_backends

OTHER = "other.test"
DAY = 86400
#: vconvert -c reads and writes the vpasswd files whatever the backend
VCONVERT_FILES = "vconvert -c: the vpasswd files themselves (SQL: test_sql_vconvert.py)"
#: valias keeps .qmail-<alias> files with the cdb backend, valias rows with SQL
VALIAS_FILES = "the .qmail-<alias> files (the valias table: test_sql_aliases.py)"


def age(inst: Install, user: str, days: float) -> None:
    """Make the user's last login ``days`` ago (lastauth's mtime, or its row)."""
    when = time.time() - days * DAY
    if inst.database is None:
        os.utime(inst.domains / DOMAIN / user / "lastauth", (when, when))
    else:
        inst.database.rows(f"UPDATE lastauth SET timestamp = {int(when)} "
                           f"WHERE user = '{user}' AND domain = '{DOMAIN}'")


def forget_login(inst: Install, user: str) -> None:
    """The user never logged in: no lastauth file, or no row."""
    if inst.database is None:
        (inst.domains / DOMAIN / user / "lastauth").unlink()
    else:
        inst.database.rows(f"DELETE FROM lastauth WHERE user = '{user}' AND domain = '{DOMAIN}'")


# vdeloldusers ----------------------------------------------------------------------------------

@pytest.mark.cdb_only(NO_BACKEND)
def test_vdeloldusers_usage_and_bad_options(vhome: Install) -> None:
    result = vhome.run("vdeloldusers")
    assert failed(result, 255)[0] == "vdeloldusers: usage: [options]"
    assert "         -D (actually delete users. no users are deleted without this option)\n" \
        in result.stdout
    result = vhome.run("vdeloldusers", "-V")
    assert (result.returncode, result.stdout) == (
        255, "error: you must supply either the -e or -d [domain] options\n")
    for args in (["-e", "-a", "many"], ["-e", "-a", "-3"], ["-e", "-d", DOMAIN], ["-e", "x"],
                 ["-e", "-z"]):
        result = vhome.run("vdeloldusers", *args)
        assert failed(result, 255)[0] == "vdeloldusers: usage: [options]", args
    refused(vhome, "vdeloldusers", "-d", "nosuch.com", code=245,
            starts="Error: Domain does not exist")


def test_vdeloldusers_lists_and_changes_nothing(each_install: Install) -> None:
    site(each_install)
    age(each_install, "alice", 200)
    age(each_install, "bob", 10)
    age(each_install, "postmaster", 400)
    before = state(each_install)
    # -e: example.com once, although alias.test points at it too (C went through it twice)
    assert each_install.ok("vdeloldusers", "-e", "-V") == (
        "alice@example.com\nskipping postmaster@example.com\n"
        " ** no users were deleted  **\n ** use -D to delete users **\n")
    assert each_install.ok("vdeloldusers", "-e") == (
        " ** no users were deleted  **\n ** use -D to delete users **\n")
    assert each_install.ok("vdeloldusers", "-V", "-a", "5", "-d", DOMAIN).splitlines()[:2] == [
        "alice@example.com", "bob@example.com"]
    assert each_install.ok("vdeloldusers", "-a", "300", "-d", DOMAIN) == "no old users found\n"
    assert state(each_install) == before


def test_vdeloldusers_deletes_old_users(each_install: Install) -> None:
    dom = site(each_install)
    age(each_install, "alice", 200)
    age(each_install, "bob", 179)
    age(each_install, "postmaster", 400)
    # through the alias domain, as the vpopmail user (a cron job)
    result = run_as_vpopmail(each_install, "vdeloldusers", "-D", "-d", ALIAS)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert sorted(stored_users(each_install)) == ["bob", "postmaster"]
    check_index(each_install)
    assert not (dom / "alice").exists()
    assert (dom / ".dir-control").read_text().split("\n")[0] == "2"
    assert each_install.ok("vdeloldusers", "-e", "-D", "-V") == (
        "skipping postmaster@example.com\nno old users found\n")


@pytest.mark.cdb_only("a users/assign line of no domain: a vpasswd file that is not there")
def test_vdeloldusers_passes_over_users_assign_lines_of_no_domain(vhome: Install) -> None:
    """qmail-pw2u's lines for qmail's own users (kept by vregenerate after qmail-pw2u wiped
    users/assign) name no vpopmail domain: vdeloldusers -e and vconvert pass over them, as
    vpopbull does (before:
    "corrupt data file: .../alias/vpasswd is missing", exit 156, no domain was visited)."""
    site(vhome)
    age(vhome, "alice", 200)
    alias_home = vhome.qmaildir / "alias"
    alias_home.mkdir(mode=0o755)
    (alias_home / ".qmail-postmaster").write_text("&admin@example.org\n")
    api = vhome.api()
    with api.qmail.assign_lock():
        api.qmail._write_assign([f"=alias:alias:{vhome.uid}:{vhome.gid}:{alias_home}:::",
                                 f"+alias-:alias:{vhome.uid}:{vhome.gid}:{alias_home}:-::",
                                 *api.qmail.assign_lines()])
    assert vhome.ok("vdeloldusers", "-e", "-V") == (
        "alice@example.com\nskipping postmaster@example.com\n"
        " ** no users were deleted  **\n ** use -D to delete users **\n")
    vhome.ok("vdeloldusers", "-e", "-D")
    assert sorted(stored_users(vhome)) == ["bob", "postmaster"]
    # vconvert's export of every domain likewise (before: "converting alias domain conversion
    # failed", exit 156)
    exported = alias_home.parent / "exported"
    exported.mkdir()
    assert vhome.ok("vconvert", "-c", "-e", "-f", str(exported)) == f"converting {DOMAIN} done\n"
    assert sorted(p.name for p in exported.iterdir()) == [DOMAIN]
    assert sorted(p.name for p in alias_home.iterdir()) == [".qmail-postmaster"]


@pytest.mark.cdb_only("a users/assign line of no domain: a vpasswd file that is not there")
def test_vdeloldusers_and_vdeldomain_pass_over_qmails_alias_with_fastforward(
        vhome: Install) -> None:
    """~alias with fastforward's .qmail-default (its install's ``| fastforward -d
    /etc/aliases.cdb``) is no vpopmail domain of a cdb site either, whose domains always hold
    vpasswd: vdeloldusers -e passes over qmail-pw2u's line for it, and vdeldomain alias
    removes nothing (before: vdeloldusers -e stopped at it with "vpasswd is missing", 156,
    every run; vdeldomain alias exited 0, ~alias and qmail's own aliases gone)."""
    site(vhome)
    age(vhome, "alice", 200)
    alias_home = vhome.qmaildir / "alias"
    alias_home.mkdir(mode=0o755)
    (alias_home / ".qmail-postmaster").write_text("&admin@example.org\n")
    (alias_home / ".qmail-default").write_text("| fastforward -d /etc/aliases.cdb\n")
    api = vhome.api()
    with api.qmail.assign_lock():
        api.qmail._write_assign([f"=alias:alias:{vhome.uid}:{vhome.gid}:{alias_home}:::",
                                 f"+alias-:alias:{vhome.uid}:{vhome.gid}:{alias_home}:-::",
                                 *api.qmail.assign_lines()])
    vhome.ok("vdeloldusers", "-e", "-D")
    assert sorted(stored_users(vhome)) == ["bob", "postmaster"]
    result = vhome.run("vdeldomain", "alias")
    assert result.returncode != 0, result
    assert sorted(p.name for p in alias_home.iterdir()) == [".qmail-default", ".qmail-postmaster"]


def test_vdeloldusers_names_a_domain_whose_vpasswd_is_gone_beside_its_cdb(vhome: Install
                                                                          ) -> None:
    """A cdb domain with vpasswd.cdb but no vpasswd (damage, a lost file) is still a domain:
    vdeloldusers -e stops at it, naming the file and the repair, rather than passing over it
    with exit 0."""
    if vhome.backend != "cdb":
        pytest.skip("vpasswd: the cdb backend")
    dom = site(vhome)
    age(vhome, "alice", 200)
    (dom / "vpasswd").unlink()
    result = vhome.run("vdeloldusers", "-e", "-D")
    assert result.returncode != 0, result
    assert "vpasswd is missing" in result.stdout + result.stderr, result


def test_vdeloldusers_keeps_catchall_and_users_without_lastauth(vhome: Install) -> None:
    dom = site(vhome, alias=False)
    vhome.ok("vadduser", f"carol@{DOMAIN}", "pw3")
    api = vhome.api()
    api.write_dot_qmail_default(api.get_domain(DOMAIN), f"alice@{DOMAIN}")
    age(vhome, "alice", 365)
    age(vhome, "carol", 365)
    forget_login(vhome, "bob")  # never logged in, no record: left alone, as C
    result = vhome.run("vdeloldusers", "-e", "-D", "-V", "-a", "0")
    assert failed(result, 201) == [
        "alice@example.com", "Error: can't delete catchall account: alice@example.com",
        "carol@example.com", "skipping postmaster@example.com"]
    assert sorted(stored_users(vhome)) == ["alice", "bob", "postmaster"]
    assert (dom / "alice" / "Maildir").is_dir() and not (dom / "carol").exists()


def test_vdeloldusers_deletes_nobody_when_the_clock_is_ahead(each_install: Install) -> None:
    """Every recorded login, postmaster's too, older than the age: the clock is more likely
    ahead than everybody gone, so -D deletes nobody (exit 111); -a 0 still means everyone."""
    site(each_install)
    for user in ("alice", "bob", "postmaster"):
        age(each_install, user, 200)
    result = refused(each_install, "vdeloldusers", "-e", "-D", code=111)
    assert "is the clock right?" in result.stdout
    assert sorted(stored_users(each_install)) == ["alice", "bob", "postmaster"]
    assert "alice@example.com" in each_install.ok("vdeloldusers", "-e", "-V")  # listing: as before
    age(each_install, "bob", 10)
    each_install.ok("vdeloldusers", "-e", "-D")
    assert sorted(stored_users(each_install)) == ["bob", "postmaster"]
    age(each_install, "bob", 200)
    each_install.ok("vdeloldusers", "-e", "-D", "-a", "0")
    assert sorted(stored_users(each_install)) == ["postmaster"]


@pytest.mark.cdb_only(NO_BACKEND)
def test_vdeloldusers_needs_auth_logging(vhome: Install) -> None:
    site(vhome, alias=False)
    vhome.set_config("logging", "auth_logging", False)
    refused(vhome, "vdeloldusers", "-e", code=255, starts="Error: auth logging is off")


# vconvert --------------------------------------------------------------------------------------

@pytest.mark.cdb_only(VCONVERT_FILES)
def test_vconvert_round_trip_keeps_every_field(each_install: Install) -> None:
    inst = each_install
    odd_users(inst)
    dom = inst.domains / DOMAIN
    original = (dom / "vpasswd").read_bytes()
    assert b"pa:ss w\xc3\xb6rd" in original and LONG_GECOS.encode() in original
    export = inst.prefix.parent / "example.etc"
    assert inst.ok("vconvert", "-c", "-e", "-f", str(export), DOMAIN) == \
        "converting example.com done\n"
    assert export.read_bytes() == original
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    # everybody goes (directories and mail too), then comes back from the export
    for name in vpasswd_users(inst):
        inst.ok("vdeluser", f"{name}@{DOMAIN}")
    assert (dom / "vpasswd").read_bytes() == b""
    assert inst.ok("vconvert", "-e", "-c", "-f", str(export), DOMAIN) == \
        "converting example.com done\n"
    assert (dom / "vpasswd").read_bytes() == original
    assert cdb_dump(dom / "vpasswd.cdb") == vpasswd_cdb_expected(inst)
    for name in ("alice", "carol", "dave", "f.g-h_i"):
        home = dom / name
        assert (home / "Maildir" / "new").is_dir() and (home / "lastauth").is_file()
        assert (home.stat().st_uid, home.stat().st_gid) == (inst.uid, inst.gid)
    assert (dom / "carol" / "Maildir" / "maildirsize").read_text().startswith("5242880S,1000C\n")
    assert verify_password("pa:ss wörd", vpasswd_users(inst)["carol"][1])
    assert inst.ok("vuserinfo", "-C", f"carol@{DOMAIN}") == "pa:ss wörd\n"
    assert (dom / ".dir-control").read_text().split("\n")[0] == "7"


@pytest.mark.cdb_only(VCONVERT_FILES)
def test_vconvert_restore_keeps_directories_and_mail(vhome: Install) -> None:
    dom = site(vhome, alias=False)
    message = dom / "alice" / "Maildir" / "new" / "1.M1P1.host,S=3"
    message.write_text("hi\n")
    export = vhome.prefix.parent / "example.etc"
    vhome.ok("vconvert", "-c", "-e", "-f", str(export), DOMAIN)
    original = (dom / "vpasswd").read_bytes()
    # the user database is lost (vpasswd and its cdb); the directories are not
    (dom / "vpasswd").write_bytes(b"")
    (dom / "vpasswd.cdb").unlink()
    vhome.ok("vmkpasswd", DOMAIN)
    assert vhome.ok("vconvert", "-d", "-e", "-c", "-f", str(export), DOMAIN) == (
        "alice\nbob\npostmaster\nconverting example.com done\n3 users\n")
    assert (dom / "vpasswd").read_bytes() == original
    assert message.read_text() == "hi\n"


@pytest.mark.cdb_only(VCONVERT_FILES)
def test_vconvert_into_another_domain_and_stdout(vhome: Install) -> None:
    dom = site(vhome, alias=False)
    vhome.ok("vadddomain", OTHER, "other")
    before = vpasswd_users(vhome, OTHER)["postmaster"]
    result = vhome.run("vconvert", "-c", "-e", DOMAIN)
    assert (result.returncode, result.stderr) == (0, "converting example.com done\n")
    assert result.stdout.encode() == (dom / "vpasswd").read_bytes()
    result = vhome.run("vconvert", "-e", "-c", "-f", "-", OTHER, input=result.stdout)
    # postmaster exists there: it is named and kept, the others come in (exit: Username exists)
    assert failed(result, 254) == ["user postmaster domain other.test did not add",
                                   "converting other.test done"]
    users = vpasswd_users(vhome, OTHER)
    assert users["postmaster"] == before
    source = vpasswd_users(vhome)
    for name in ("alice", "bob"):
        # the directory is the new domain's; every other field is the same
        assert users[name][5] == str(vhome.domains / OTHER / name)
        assert users[name][:5] + users[name][6:] == source[name][:5] + source[name][6:]
        assert (vhome.domains / OTHER / name / "Maildir" / "cur").is_dir()


@pytest.mark.cdb_only(VCONVERT_FILES)
def test_vconvert_every_domain_through_a_directory(vhome: Install) -> None:
    site(vhome)
    vhome.ok("vadddomain", OTHER, "other")
    vhome.ok("vadduser", f"zed@{OTHER}", "pw")
    exports = vhome.prefix.parent / "exports"
    exports.mkdir()
    assert vhome.ok("vconvert", "-c", "-e", "-f", str(exports)) == (
        "converting example.com done\nconverting other.test done\n")
    assert sorted(os.listdir(exports)) == [DOMAIN, OTHER]  # no file for the alias domain
    saved = {d: (vhome.domains / d / "vpasswd").read_bytes() for d in (DOMAIN, OTHER)}
    for address in (f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"zed@{OTHER}"):
        vhome.ok("vdeluser", address)
    result = vhome.run("vconvert", "-e", "-c", "-f", str(exports))
    assert failed(result, 254) == [
        "user postmaster domain example.com did not add", "converting example.com done",
        "user postmaster domain other.test did not add", "converting other.test done"]
    assert {d: (vhome.domains / d / "vpasswd").read_bytes() for d in saved} == saved
    # a file that names no domain stops the import before anything changes
    (exports / "nosuch.com").write_text("")
    before = state(vhome)
    result = vhome.run("vconvert", "-e", "-c", "-f", str(exports))
    assert failed(result, 245) == ["Error: Domain does not exist: nosuch.com"]
    assert state(vhome) == before


BAD_LINES = [
    ("alice:x:1:0:ge:cos:/d/alice:NOQUOTA", "Error: bad input: alice: directory 'cos'"),
    ("alice:x:one:0:a:/d/alice:NOQUOTA", "Error: bad input: "),
    ("alice:x:1:0:a:/d/alice", "Error: bad input: "),
    ("alice:x:1:0:a:/d/alice:lots", "Error: bad input: alice: 'lots' is not a quota"),
    ("alice:x:1:-5:a:/d/alice:NOQUOTA", "Error: bad input: alice: negative"),
    ("../evil:x:1:0:a:/d/evil:NOQUOTA", "Error: Illegal username"),
    ("a" * 65 + ":x:1:0:a:/d/a:NOQUOTA", "Error: user name too long"),
    ("alice:x:1:0:" + "g" * 65 + ":/d/alice:NOQUOTA", "Error: gecos too long"),
    ("alice:x:1:0:a::NOQUOTA\nalice:y:1:0:a::NOQUOTA", "Error: Username exists"),
]


@pytest.mark.cdb_only(VCONVERT_FILES)
@pytest.mark.parametrize("text,starts", BAD_LINES, ids=[f"bad{i}" for i in range(len(BAD_LINES))])
def test_vconvert_import_refuses_bad_lines(vhome: Install, text: str, starts: str) -> None:
    vhome.ok("vadddomain", DOMAIN, "secret")
    source = vhome.prefix.parent / "bad.etc"
    source.write_text("carol:x:1:0:c::NOQUOTA\n" + text + "\n")
    before = state(vhome)
    result = vhome.run("vconvert", "-e", "-c", "-f", str(source), DOMAIN)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result
    lines = result.stdout.splitlines()
    assert lines[0] == "converting example.com domain conversion failed"
    assert lines[1].startswith(starts) and len(lines) == 2, lines
    assert state(vhome) == before


@pytest.mark.cdb_only(VCONVERT_FILES)
def test_vconvert_foreign_directory_gets_a_new_one(vhome: Install, tmp_path: Path) -> None:
    vhome.ok("vadddomain", DOMAIN, "secret")
    foreign = tmp_path / "elsewhere" / "carol"
    source = tmp_path / "in.etc"
    source.write_text(f"carol:x:1:0:c:{foreign}:NOQUOTA\n"
                      f"dan:x:1:0:d:{vhome.domains / DOMAIN / 'x' / 'dan'}:NOQUOTA\n")
    vhome.ok("vconvert", "-e", "-c", "-f", str(source), DOMAIN)
    users = vpasswd_users(vhome)
    assert users["carol"][5] == str(vhome.domains / DOMAIN / "carol")
    assert users["dan"][5] == str(vhome.domains / DOMAIN / "dan")
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.cdb_only(VCONVERT_FILES)
def test_vconvert_usage_and_sqwebmail(vhome: Install) -> None:
    vhome.ok("vadddomain", DOMAIN, "secret")
    for args in ([], ["-c"], ["-c", "-c", DOMAIN], ["-e", "-e", DOMAIN], ["-c", "-e", "-x"],
                 ["-e", "-c"], ["-c", "-e", DOMAIN, OTHER], ["-p", "f", "-e", DOMAIN]):
        result = vhome.run("vconvert", *args)
        assert failed(result, 255)[0] == "vconvert: usage", args
        assert " -m = sql format\n" in result.stdout
    # -m needs the [mysql] section's server (tests/test_sql_vconvert.py); -e -m is not a pair
    assert failed(vhome.run("vconvert", "-e", "-m", DOMAIN), 255)[0] == "vconvert: usage"
    refused(vhome, "vconvert", "-S", DOMAIN, code=255, starts="Error: -S (sqwebmail-pass files)")
    refused(vhome, "vconvert", "-c", "-e", "nosuch.com", code=245,
            starts="Error: Domain does not exist")


@pytest.mark.cdb_only(VCONVERT_FILES)
def test_vconvert_user_password_pairs(vhome: Install, tmp_path: Path) -> None:
    vhome.ok("vadddomain", DOMAIN, "secret")
    pairs = tmp_path / "pairs"
    pairs.write_text("frank:$1$salt$hashhashhash\n\ngrace \t$6$s$h\npostmaster:zz123\n")
    result = vhome.run("vconvert", "-p", str(pairs), "-c", DOMAIN)
    assert failed(result, 254) == ["user postmaster domain example.com did not add",
                                   "converting example.com done"]
    users = vpasswd_users(vhome)
    assert users["frank"][1:5] == ["$1$salt$hashhashhash", "1", "0", "frank"]
    assert users["grace"][1:5] == ["$6$s$h", "1", "0", "grace"]


@pytest.mark.cdb_only(VCONVERT_FILES)
def test_vconvert_system_accounts(vhome: Install, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """C's -e: the system's accounts, hashes from the shadow file; in-process, with the two
    system files replaced."""
    vhome.ok("vadddomain", DOMAIN, "secret")
    passwd, shadow = tmp_path / "passwd", tmp_path / "shadow"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n"
                      "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
                      "eve:x:1000:1000:Eve Example,,,:/home/eve:/bin/bash\n"
                      "q:x:1001:1001::/home/q:/bin/sh\n"
                      "noshadow:x:1002:1002::/home/n:/bin/sh\n")
    shadow.write_text("root:$6$r$roothash:19000:0:99999:7:::\n"
                      "daemon:*:19000:0:99999:7:::\n"
                      "eve:$6$e$evehash:19000:0:99999:7:::\n"
                      "q:$6$q$qhash:19000:0:99999:7:::\n")
    monkeypatch.setattr(vconvert, "SYSTEM_PASSWD", str(passwd))
    monkeypatch.setattr(vconvert, "SYSTEM_SHADOW", str(shadow))
    config = str(vhome.config_path)
    assert vconvert.main(["-e", "-c"], config=config) == 255  # every domain: refused
    capsys.readouterr()
    assert vconvert.main(["-e", "-c", DOMAIN], config=config) == 0
    assert capsys.readouterr().out == "skipping daemon\nskipping q\nconverting example.com done\n"
    users = vpasswd_users(vhome)
    assert sorted(users) == ["eve", "postmaster", "root"]
    assert users["eve"][1:5] == ["$6$e$evehash", "1", "0", "Eve Example"]
    assert (vhome.domains / DOMAIN / "eve" / "Maildir").is_dir()
    # without a readable shadow file the passwd field is the hash ('x': skipped)
    monkeypatch.setattr(vconvert, "SYSTEM_SHADOW", str(tmp_path / "missing"))
    passwd.write_text("ivy:$1$i$ivyhash:5:5:Ivy:/home/ivy:/bin/sh\nroot:x:0:0::/root:/bin/sh\n")
    assert vconvert.main(["-e", "-c", DOMAIN], config=config) == 0
    assert capsys.readouterr().out == "skipping root\nconverting example.com done\n"
    assert vpasswd_users(vhome)["ivy"][1] == "$1$i$ivyhash"


# valias ----------------------------------------------------------------------------------------

def alias_file(inst: Install, name: str) -> Path:
    return inst.domains / DOMAIN / name


@pytest.mark.cdb_only(VALIAS_FILES)
def test_valias_insert_show_remove_delete(each_install: Install) -> None:
    inst = each_install
    dom = site(inst)
    lines = [f"&bob@{DOMAIN}", f"{dom}/alice/Maildir/", "|/usr/bin/autorespond 1 2 msg dir",
             "#", "./bob/Maildir/", "carol@elsewhere.org"]
    for line in lines[:3]:
        assert inst.ok("valias", "-i", line, f"info@{DOMAIN}") == ""
    # the vpopmail user can do it too (qmailadmin runs as vpopmail); through the alias domain
    result = run_as_vpopmail(inst, "valias", "-i", lines[3], f"INFO@{ALIAS}")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    inst.ok("valias", "-i", lines[4], f"first.last@{DOMAIN}")
    inst.ok("valias", "-i", lines[5] + "  ", f"first.last@{DOMAIN}")  # trailing blanks dropped
    info, dotted = alias_file(inst, ".qmail-info"), alias_file(inst, ".qmail-first:last")
    assert info.read_text() == "".join(line + "\n" for line in lines[:4])
    assert dotted.read_text() == f"{lines[4]}\n{lines[5]}\n"
    for path in (info, dotted):
        st = os.stat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, inst.uid, inst.gid)
    assert not [n for n in os.listdir(dom) if "tmp" in n]
    assert inst.ok("valias", "-s", f"info@{DOMAIN}") == "".join(
        f"info@{DOMAIN} -> {line}\n" for line in lines[:4])
    assert inst.ok("valias", f"first.last@{DOMAIN}") == (
        f"first.last@{DOMAIN} -> {lines[4]}\nfirst.last@{DOMAIN} -> {lines[5]}\n")
    # through the alias domain the lines name the real domain, as C's valias prints them
    # (found by the differential fuzz against C 5.4.33: they named the alias domain)
    assert inst.ok("valias", "-s", ALIAS) == "".join(
        [f"first.last@{DOMAIN} -> {line}\n" for line in lines[4:]]
        + [f"info@{DOMAIN} -> {line}\n" for line in lines[:4]])
    assert inst.ok("valias", "-s", f"INFO@{ALIAS}") == "".join(
        f"info@{DOMAIN} -> {line}\n" for line in lines[:4])
    assert inst.ok("valias", "-n", DOMAIN) == "first.last\ninfo\n"
    # remove one line; the file goes with its last line
    assert inst.ok("valias", "-r", lines[1], f"info@{DOMAIN}") == ""
    assert info.read_text() == f"{lines[0]}\n{lines[2]}\n{lines[3]}\n"
    inst.ok("valias", "-r", lines[4], f"first.last@{DOMAIN}")
    inst.ok("valias", "-r", lines[5], f"first.last@{DOMAIN}")
    assert not dotted.exists()
    assert inst.ok("valias", "-d", f"info@{DOMAIN}") == ""
    assert not info.exists()
    result = inst.run("valias", "-s", DOMAIN)
    assert failed(result, 255) == [f"No aliases found for domain {DOMAIN}"]
    result = inst.run("valias", "-s", f"info@{DOMAIN}")
    assert failed(result, 255) == [f"No aliases info@{DOMAIN} found"]
    # -n as -s: C's valias exited 255 without names (found by the differential fuzz)
    result = inst.run("valias", "-n", DOMAIN)
    assert failed(result, 255) == [f"No aliases found for domain {DOMAIN}"]


@pytest.mark.cdb_only(VALIAS_FILES)
@pytest.mark.parametrize("args,code,starts", REFUSED_ALIASES,
                         ids=[f"refused{i}" for i in range(len(REFUSED_ALIASES))])
def test_valias_refuses(vhome: Install, args: list[str], code: int, starts: str) -> None:
    site(vhome, alias=False)
    vhome.ok("valias", "-i", "&bob@example.com", f"old@{DOMAIN}")
    refused(vhome, "valias", *args, code=code, starts=starts)


def test_valias_line_that_exists_is_refused_on_stderr(vhome: Install) -> None:
    """A line the alias has: C 5.4.33's "Error: alias ... already exists." on stderr, exit
    255, nothing changed (found by the differential fuzz: ours printed it on stdout)."""
    site(vhome, alias=False)
    vhome.ok("valias", "-i", "&bob@example.com", f"old@{DOMAIN}")
    before = state(vhome)
    result = vhome.run("valias", "-i", "&bob@example.com", f"OLD@{DOMAIN}")
    assert (result.returncode, result.stdout, result.stderr) == (
        255, "", f"Error: alias old@{DOMAIN} -> &bob@example.com already exists.\n")
    assert state(vhome) == before
    api = vhome.api()
    assert api.stores.aliases.lines(api.get_domain(DOMAIN), "old") == ["&bob@example.com"]


@pytest.mark.cdb_only(NO_BACKEND)
def test_valias_usage_and_names_only(vhome: Install) -> None:
    site(vhome, alias=False)
    for args in ([], ["-i"], ["-x", DOMAIN], [f"a@{DOMAIN}", f"b@{DOMAIN}"]):
        result = vhome.run("valias", *args)
        assert failed(result, 255)[0] == "valias: usage: [options] email_address ", args
    result = vhome.run("valias", "-n", f"info@{DOMAIN}")
    assert (result.returncode, result.stdout, result.stderr) == (
        255, "", "Please enter domain name only.\n")


@pytest.mark.cdb_only(VALIAS_FILES)
def test_valias_lists_as_c_and_leaves_mailing_lists(vhome: Install, tmp_path: Path) -> None:
    dom = site(vhome, alias=False)
    ezmlm = tmp_path / "list"
    ezmlm.mkdir()
    (ezmlm / "editor").write_text("|/usr/bin/ezmlm-send '/x/list'\n")
    for name in (".qmail-list", ".qmail-list-default", ".qmail-list-owner"):
        (dom / name).symlink_to(ezmlm / "editor")
    (dom / ".qmail-Sales").write_text("&bob@example.com\n")
    (dom / ".qmail-x.new").write_text("&leftover@example.com\n")  # never read by qmail-local
    (dom / ".qmail-dir").mkdir()
    os.chmod(dom / ".qmail-Sales", 0o700)  # the x bit: qmail's "forward only"
    assert vhome.ok("valias", "-n", DOMAIN) == "list\nSales\n"
    assert vhome.ok("valias", "-s", DOMAIN) == (
        "list@example.com -> |/usr/bin/ezmlm-send '/x/list'\n"
        "Sales@example.com -> &bob@example.com\n")
    # a list's link is not rewritten (its target would be replaced); deleting removes the link
    refused(vhome, "valias", "-i", "&x@y.org", f"list@{DOMAIN}", code=152,
            starts="Error: .qmail-list is a symbolic link")
    vhome.ok("valias", "-d", f"list@{DOMAIN}")
    assert not os.path.lexists(dom / ".qmail-list") and (ezmlm / "editor").exists()
    # a change keeps the execute bit of a hand-made file, and makes it 0600 otherwise
    (dom / ".qmail-sales").write_text("&bob@example.com\n")
    os.chmod(dom / ".qmail-sales", 0o744)
    vhome.ok("valias", "-i", "&carol@example.org", f"sales@{DOMAIN}")
    assert stat.S_IMODE(os.stat(dom / ".qmail-sales").st_mode) == 0o700
    assert (dom / ".qmail-sales").read_text() == "&bob@example.com\n&carol@example.org\n"
