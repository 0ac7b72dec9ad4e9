"""User-level changes, deliveries and logins at the same moment as a vdeldomain of their domain:
each change completes before the removal or is refused as for a domain that does not exist,
and nothing of the domain (directory, vpasswd line, SQL row) outlives it. The racing
processes are the installed commands, stopped (SIGSTOP) at the lock they wait for."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from delivery_site import MESSAGE, qmail_local_env
from helpers import ALIAS, DOMAIN, site
from install_site import CLEAN_ENV, Install
from login_site import POP_ENV
from race_site import has_open, resumed, stop, stopped_at_lock, wait_until

pytestmark = pytest.mark.both_backends

#: a change of each user-level command, by a name for the test ids
CHANGES = {
    "vadduser": ["vadduser", f"carol@{DOMAIN}", "pw3"],
    "vadduser-alias": ["vadduser", f"carol@{ALIAS}", "pw3"],
    "vdeluser": ["vdeluser", f"bob@{DOMAIN}"],
    "vpasswd": ["vpasswd", f"bob@{DOMAIN}", "new-pw"],
    "vmoduser": ["vmoduser", "-q", "2M", f"bob@{DOMAIN}"],
    "vsetuserquota": ["vsetuserquota", f"bob@{DOMAIN}", "3M"],
    "vsetuserquota-domain": ["vsetuserquota", DOMAIN, "3M"],
    "valias": ["valias", "-i", "someone@remote.test", f"info@{DOMAIN}"],
    "vmkpasswd": ["vmkpasswd", DOMAIN],
    "vmoddomlimits": ["vmoddomlimits", "-P", "5", DOMAIN],
    "vmoddomain": ["vmoddomain", "-e", "delete", DOMAIN],
    "vpopbull": ["vpopbull", "-f", "BULLETIN", DOMAIN],
    "vchangepw": ["vchangepw"],
}


def lock_of(inst: Install) -> Path:
    """The domain's lock: its directory's .dir-control.lock."""
    return inst.domains / DOMAIN / ".dir-control.lock"


def domain_left(inst: Install) -> dict[str, object]:
    """What is left of example.com and its alias domain anywhere (empty: nothing)."""
    left: dict[str, object] = {}
    assign = (inst.qmaildir / "users" / "assign").read_text()
    lines = [line for line in assign.splitlines() if line.startswith((f"+{DOMAIN}-:",
                                                                     f"+{ALIAS}-:"))]
    if lines:
        left["users/assign"] = lines
    files = sorted(str(p.relative_to(inst.domains)) for p in inst.domains.rglob("*")
                   if DOMAIN in p.parts)
    if files:
        left["files"] = files
    if inst.database is not None:
        for table, column in (("vpopmail", "pw_domain"), ("valias", "domain"),
                              ("lastauth", "domain"), ("limits", "domain")):
            if inst.database.rows(f"SHOW TABLES LIKE '{table}'"):
                rows = inst.database.rows(f"SELECT * FROM `{table}` WHERE {column} = "
                                          f"'{DOMAIN}'")
                if rows:
                    left[table] = rows
    return left


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_waits_for_vdeldomain_and_finds_the_domain_gone(
        vhome: Install, tmp_path: Path, change: str) -> None:
    """A user-level command that looked the domain up before a vdeldomain -f removed it waits
    for the domain's lock, which vdeldomain holds until the directory is gone, and is then
    refused with the one line of a domain that does not exist; nothing of the domain is left
    (before: "corrupt data file" for the vpasswd just removed, a file "No such file or
    directory", or, taken at the wrong moment, a domain directory re-made with a lock file,
    a vpasswd or a user in it, and its SQL users or valias rows kept)."""
    site(vhome)
    if vhome.database is not None:
        vhome.set_config("mysql", "limits_table", True)
    argv = [str(vhome.bin / CHANGES[change][0]), *CHANGES[change][1:]]
    if change == "vpopbull":
        bulletin = tmp_path / "bulletin"
        bulletin.write_text("From: postmaster\nSubject: news\n\nhello\n")
        argv[argv.index("BULLETIN")] = str(bulletin)
    answers = tmp_path / "answers"
    answers.write_text(f"bob@{DOMAIN}\npw2\nnew-pw\nnew-pw\n")
    with open(answers, "rb") as stdin:
        proc = stopped_at_lock(lock_of(vhome), argv, stdin=stdin)
    vhome.ok("vdeldomain", "-f", DOMAIN)
    result = resumed(proc)
    named = ALIAS if change == "vadduser-alias" else DOMAIN
    # vpopbull goes on with any other domain named (test below): 1, as for a failed copy
    assert (result.returncode, result.stderr) == (1 if change == "vpopbull" else 245, ""), \
        result
    assert result.stdout.endswith(f"Error: Domain does not exist: {named}\n"), result
    assert result.stdout.count("\n") == 1 + (change == "vchangepw"), result
    assert domain_left(vhome) == {}


@pytest.mark.parametrize("lines", [
    [f"add_user carol@{DOMAIN} pw3"], [f"del_user bob@{DOMAIN}"],
    [f"add_alias info@{DOMAIN} someone@remote.test"], [f"mod_user bob@{DOMAIN}", "quota 5M", "."],
], ids=["add_user", "del_user", "add_alias", "mod_user"])
def test_vpopmaild_commands_wait_for_vdeldomain_and_find_the_domain_gone(
        vhome: Install, tmp_path: Path, lines: list[str]) -> None:
    """vpopmaild's user and alias commands in a session that looked the domain up before a
    vdeldomain removed it: each is answered with the error of a domain that does not exist,
    the session goes on, and nothing of the domain is left (before: a "No such file or
    directory" error, or the change made into the directory being removed)."""
    site(vhome)
    vhome.ok("vadddomain", "other.org", "opw")
    vhome.ok("vmoduser", "-S", "postmaster@other.org")
    conversation = tmp_path / "conversation"
    conversation.write_bytes("".join(f"{line}\r\n" for line in [
        "login postmaster@other.org opw", *lines, "quit"]).encode())
    with open(conversation, "rb") as stdin:
        proc = stopped_at_lock(lock_of(vhome), [str(vhome.bin / "vpopmaild"), "-t", "10"],
                               stdin=stdin)
    vhome.ok("vdeldomain", "-f", DOMAIN)
    result = resumed(proc)
    assert (result.returncode, result.stderr) == (0, ""), result
    answers = result.stdout.splitlines()
    assert answers[-2].startswith("-ERR ") and answers[-2].endswith(
        f" Domain does not exist: {DOMAIN}"), answers
    assert answers[-1] == "+OK ", answers
    assert domain_left(vhome) == {}


def test_vpopbull_goes_on_with_the_other_domains_past_one_removed_meanwhile(
        vhome: Install, tmp_path: Path) -> None:
    """A domain that a vdeldomain removes while vpopbull runs is skipped with one line, and
    the domains after it still get the bulletin (exit 1, as for a copy that failed; before:
    the run ended there with 245, and later domains got nothing)."""
    site(vhome)
    vhome.ok("vadddomain", "other.org", "secret")
    bulletin = tmp_path / "bulletin"
    bulletin.write_text("From: postmaster\nSubject: news\n\nhello\n")
    proc = stopped_at_lock(lock_of(vhome), [str(vhome.bin / "vpopbull"), "-f", str(bulletin),
                                            DOMAIN, "other.org"])
    vhome.ok("vdeldomain", "-f", DOMAIN)
    result = resumed(proc)
    assert (result.returncode, result.stdout, result.stderr) == (
        1, f"Error: Domain does not exist: {DOMAIN}\n", ""), result
    postmaster = Path(vhome.vuser("postmaster@other.org").dir)
    assert len(list((postmaster / "Maildir" / "new").iterdir())) == 1
    assert domain_left(vhome) == {}


def test_vdeloldusers_passes_over_a_domain_removed_meanwhile(vhome: Install) -> None:
    """vdeloldusers -e reads each domain's users under its lock: a domain a vdeldomain removed
    since the run began has no users left to look at, and the run goes on (before, with the
    files backend: "corrupt data file" for its vpasswd, 156, and the domains after it not
    looked at)."""
    site(vhome)
    vhome.ok("vadddomain", "aaa.org", "secret")  # before example.com in users/assign
    vhome.ok("vadduser", "dave@aaa.org", "pw4")
    dave = Path(vhome.vuser("dave@aaa.org").dir)
    when = int(time.time()) - 10 * 86400
    if vhome.database is None:
        os.utime(dave / "lastauth", (when, when))
    else:
        vhome.database.rows(f"UPDATE lastauth SET timestamp = {when} WHERE user = 'dave'")
    proc = stopped_at_lock(vhome.domains / "aaa.org" / ".dir-control.lock",
                           [str(vhome.bin / "vdeloldusers"), "-e", "-D", "-a", "1"])
    vhome.ok("vdeldomain", "-f", DOMAIN)
    result = resumed(proc)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
    assert not dave.exists() and "dave" not in vhome.vusers("aaa.org")
    assert domain_left(vhome) == {}


@pytest.mark.cdb_only("stopped at the vpasswd lock, which the SQL store does not take")
def test_vdeldomain_waits_for_a_vadduser_under_way_and_removes_its_user(vhome: Install) -> None:
    """A vadduser holding the domain's lock (here stopped at the vpasswd lock, which it takes
    inside) makes a vdeldomain of the domain wait, not start removing the directory under it;
    the new user then goes with the domain (before: vdeldomain went ahead, and the vadduser
    wrote into a half-removed directory: "corrupt data file", or a directory kept)."""
    site(vhome)
    proc = stopped_at_lock(vhome.domains / DOMAIN / ".vpasswd.lock",
                           [str(vhome.bin / "vadduser"), f"carol@{DOMAIN}", "pw3"])
    remover = subprocess.Popen([str(vhome.bin / "vdeldomain"), "-f", DOMAIN],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=CLEAN_ENV, cwd="/")
    try:
        wait_until(remover, lambda: has_open(remover.pid, lock_of(vhome)),
                   "asking for the domain's lock")
        time.sleep(0.2)
        assert remover.poll() is None, remover.communicate()
        assert (vhome.domains / DOMAIN / "vpasswd").exists()
    finally:
        result = resumed(proc)
        out, err = remover.communicate(timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
    assert (remover.returncode, err) == (0, ""), (out, err)
    assert domain_left(vhome) == {}


@pytest.mark.sql_only("held by a gap lock in the users table, which only the SQL store has")
def test_vdeldomain_waits_for_a_vadduser_under_way_and_removes_its_row(vhome: Install) -> None:
    """A vadduser whose INSERT waits (a row lock held here) holds the domain's lock: a
    vdeldomain meanwhile waits for it, then deletes its row with the others (before: the
    vdeldomain ran through, and the vadduser's row was written after it: a user of a domain
    that no longer exists, kept in the table)."""
    import MySQLdb

    site(vhome)
    assert vhome.database is not None
    session = MySQLdb.connect(unix_socket=vhome.database.server.socket, user="root",
                              database=vhome.database.name)
    try:
        cursor = session.cursor()
        cursor.execute("START TRANSACTION")
        cursor.execute("SELECT * FROM vpopmail WHERE pw_name = 'carol' AND pw_domain = %s "
                       "FOR UPDATE", [DOMAIN])  # the gap where carol's row goes
        adder = subprocess.Popen([str(vhome.bin / "vadduser"), f"carol@{DOMAIN}", "pw3"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=CLEAN_ENV, cwd="/")
        # (the process list: INNODB_TRX is a cache that reads in quick succession never renew)
        wait_until(adder, lambda: bool(vhome.database.rows(  # type: ignore[union-attr]
            "SELECT 1 FROM information_schema.PROCESSLIST WHERE user = 'vpop_rw' AND "
            "info LIKE 'INSERT INTO `vpopmail`%'")), "inserting its row")
        remover = subprocess.Popen([str(vhome.bin / "vdeldomain"), "-f", DOMAIN],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=CLEAN_ENV, cwd="/")
        time.sleep(0.3)
        waited = remover.poll() is None
        session.rollback()
    finally:
        session.close()
    added = adder.communicate(timeout=60)
    removed = remover.communicate(timeout=60)
    assert (adder.returncode, remover.returncode) == (0, 0), (added, removed)
    assert domain_left(vhome) == {}
    assert waited, removed


def run_stopped_at_domain_lock(vhome: Install, tmp_path: Path, program: str,
                               remover: list[str], user: str = "bob"
                               ) -> subprocess.CompletedProcess[str]:
    """``program`` ("vdelivermail" or "vchkpw") for ``user``, whose Maildir is lost, stopped
    when it asks for the domain's lock to make it again; ``remover`` runs meanwhile."""
    home = Path(vhome.vuser(f"{user}@{DOMAIN}").dir)
    subprocess.run(["rm", "-rf", str(home / "Maildir")], check=True)
    if program == "vdelivermail":
        message = tmp_path / "message"
        message.write_bytes(MESSAGE)
        argv = [str(vhome.bin / "vdelivermail"), "", "bounce-no-mailbox"]
        env = qmail_local_env(user, DOMAIN, str(vhome.domains / DOMAIN))
        cwd: Path | str = vhome.domains / DOMAIN
    else:
        message = tmp_path / "fd3"
        message.write_bytes(f"{user}@{DOMAIN}\0pw{'1' if user == 'alice' else '2'}\0\0"
                            .encode())
        argv = ["/bin/sh", "-c", 'exec "$@" 3<"$0"', str(message), str(vhome.bin / "vchkpw"),
                "/bin/true"]
        env, cwd = POP_ENV, "/"
    with open(message, "rb") as stdin:
        proc = stopped_at_lock(lock_of(vhome), argv, env=env, cwd=cwd, stdin=stdin)
    vhome.ok(*remover)
    return resumed(proc)


@pytest.mark.parametrize("program", ["vdelivermail", "vchkpw"])
def test_a_lost_maildir_is_not_made_again_in_a_domain_removed_meanwhile(
        vhome: Install, tmp_path: Path, program: str) -> None:
    """A delivery or login that found its user, then its Maildir missing, makes it again under
    the domain's lock: a vdeldomain meanwhile is waited for, and the domain then found gone
    (the delivery deferred, the login refused for now), not made again with the user's
    directory (before: the directory tree of the removed domain came back with the user's
    Maildir, and the login succeeded into it)."""
    site(vhome)
    result = run_stopped_at_domain_lock(vhome, tmp_path, program, ["vdeldomain", "-f", DOMAIN])
    assert result.returncode == 111, result
    said = result.stdout if program == "vdelivermail" else result.stderr
    assert f"Domain does not exist: {DOMAIN}" in said, result
    assert domain_left(vhome) == {}


@pytest.mark.parametrize("program", ["vdelivermail", "vchkpw"])
def test_a_lost_maildir_is_not_made_again_for_a_user_removed_meanwhile(
        vhome: Install, tmp_path: Path, program: str) -> None:
    """The same with a vdeluser of the user: the user is read again under the domain's lock,
    and nothing is made for a user that is gone (before: its directory came back, a user
    directory without a user, which a later vadduser of the name takes for a leftover)."""
    site(vhome)
    home = Path(vhome.vuser(f"bob@{DOMAIN}").dir)
    result = run_stopped_at_domain_lock(vhome, tmp_path, program, ["vdeluser", f"bob@{DOMAIN}"])
    assert result.returncode == 111, result
    said = result.stdout if program == "vdelivermail" else result.stderr
    assert f"User does not exist: bob@{DOMAIN}" in said, result
    assert not home.exists()
    assert "bob" not in vhome.vusers(DOMAIN)


def test_vdeldomain_removes_what_a_delivery_under_way_writes_meanwhile(vhome: Install) -> None:
    """A delivery that found its user just before a vdeldomain may still write into the user's
    directory while it is being removed: vdeldomain goes over what is left again, so nothing
    of the domain remains (before: a file written into a directory it had already emptied
    kept that directory and the domain's, and vdeldomain exited 0)."""
    site(vhome)
    maildir = Path(vhome.vuser(f"alice@{DOMAIN}").dir) / "Maildir"
    for number in range(20000):  # read mail, which takes the removal a while
        (maildir / "cur" / f"{number}.M1P1.example:2,S").write_bytes(b"")
    remover = subprocess.Popen([str(vhome.bin / "vdeldomain"), "-f", DOMAIN],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=CLEAN_ENV, cwd="/")
    wait_until(remover, lambda: has_open(remover.pid, maildir / "cur"), "removing alice's mail")
    stop(remover)
    assert not (maildir / "maildirsize").exists()  # gone with the Maildir's files
    (maildir / "maildirsize").write_text("1048576S\n265 1\n")  # the delivery's count
    result = resumed(remover)
    assert (result.returncode, result.stderr) == (0, ""), result
    assert domain_left(vhome) == {}


def test_vdeluser_removes_what_a_delivery_under_way_writes_meanwhile(vhome: Install) -> None:
    """The same for a vdeluser: a delivery that found the user just before may write into
    its Maildir while it is removed, and the user's directory is gone over again (before: it
    stayed, with that file, a user directory without a user in a domain that stays)."""
    site(vhome)
    home = Path(vhome.vuser(f"alice@{DOMAIN}").dir)
    for number in range(20000):
        (home / "Maildir" / "cur" / f"{number}.M1P1.example:2,S").write_bytes(b"")
    remover = subprocess.Popen([str(vhome.bin / "vdeluser"), f"alice@{DOMAIN}"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=CLEAN_ENV, cwd="/")
    wait_until(remover, lambda: has_open(remover.pid, home / "Maildir" / "cur"),
               "removing alice's mail")
    stop(remover)
    assert not (home / "Maildir" / "maildirsize").exists()
    (home / "Maildir" / "maildirsize").write_text("1048576S\n265 1\n")
    result = resumed(remover)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
    assert not home.exists()
    assert "alice" not in vhome.vusers(DOMAIN)


@pytest.mark.sql_only("lastauth rows: the files backend keeps lastauth in the user directory")
@pytest.mark.parametrize("many_domains", [True, False])
def test_a_login_under_way_leaves_no_lastauth_row_of_a_removed_domain(
        vhome: Install, tmp_path: Path, many_domains: bool) -> None:
    """A login that read its user before vdeldomain deleted the domain's rows records its
    lastauth only while the user's row is there, in one statement, which waits for the
    deleting transaction and then writes nothing (before: the row was written after the
    deletion and kept for a domain that is gone; with per-domain tables the users' rows
    were not deleted before the table was dropped, so the check needs them deleted in the
    transaction)."""
    import MySQLdb

    assert vhome.database is not None
    database = vhome.database
    if not many_domains:
        database.configure(vhome, many_domains=False)
    vhome.set_config("mysql", "limits_table", True)
    site(vhome)
    fd3 = tmp_path / "fd3"
    fd3.write_bytes(f"alice@{DOMAIN}\0pw1\0\0".encode())

    def session() -> MySQLdb.Connection:
        return MySQLdb.connect(unix_socket=database.server.socket, user="root",
                               database=database.name)

    def running(user: str, statement: str) -> bool:
        return bool(database.rows("SELECT 1 FROM information_schema.PROCESSLIST WHERE "
                                  f"user = '{user}' AND info LIKE '{statement}%'"))

    limits, valias = session(), session()
    try:
        # the login stops at the domain's limits, after it read the domain and the user
        limits.cursor().execute("LOCK TABLES limits WRITE")
        login = subprocess.Popen(["/bin/sh", "-c", 'exec "$@" 3<"$0"', str(fd3),
                                  str(vhome.bin / "vchkpw"), "/bin/true"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=POP_ENV, cwd="/")
        wait_until(login, lambda: running("vpop_ro", "SELECT maxpopaccounts"),
                   "reading the domain's limits")
        # vdeldomain's transaction stops at the valias rows: the users' and lastauth rows
        # are deleted, not yet committed
        valias.cursor().execute("LOCK TABLES valias WRITE")
        remover = subprocess.Popen([str(vhome.bin / "vdeldomain"), "-f", DOMAIN],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=CLEAN_ENV, cwd="/")
        wait_until(remover, lambda: running("vpop_rw", "DELETE FROM `valias`"),
                   "deleting the valias rows")
        limits.cursor().execute("UNLOCK TABLES")
        wait_until(login, lambda: running("vpop_rw", "REPLACE INTO lastauth"),
                   "recording the login")
        valias.cursor().execute("UNLOCK TABLES")
    finally:
        limits.close()
        valias.close()
    logged = login.communicate(timeout=60)
    removed = remover.communicate(timeout=60)
    assert (remover.returncode, removed[1]) == (0, ""), removed
    assert login.returncode in (0, 111) and "Traceback" not in logged[1], logged
    assert domain_left(vhome) == {}
