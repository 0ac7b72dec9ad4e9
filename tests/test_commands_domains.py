"""Domain commands through the installed bin/: vadddomain (bad input), vdominfo,
vaddaliasdomain, vdeldomain, vmoddomlimits and vregenerate, on real files."""
from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vpopmail import dircontrol
from vpopmail.passwords import verify_password
from install_site import CLEAN_ENV, NO_BACKEND, Install, as_user_argv
from helpers import (DOMAIN, assign_line, cdb_dump, cdb_text, check_owner, domain_dir, golden,
                     has_open, mode, refused, snapshot, state, stored_users)
from race_site import resumed, start_together, stopped_at_assign_lock

pytestmark = pytest.mark.both_backends

ALIAS = "alias.net"


def assign_lines(inst: Install) -> list[str]:
    return (inst.qmaildir / "users" / "assign").read_text().splitlines()


def control(inst: Install, name: str) -> str:
    return (inst.qmaildir / "control" / name).read_text()


def with_alias(inst: Install) -> None:
    golden(inst)
    result = inst.run("vaddaliasdomain", DOMAIN, ALIAS)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


# vadddomain ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a", "x..y.com", "ex ample.com", "under_score.com",
                                  "trailing.com.", "ex/ample.com", "x" * 97 + ".com"])
def test_vadddomain_refuses_bad_names(vhome: Install, name: str) -> None:
    golden(vhome)
    refused(vhome, "vadddomain", name, "secret")
    assert not [p for p in vhome.prefix.parent.rglob("*") if p.name in (name, "ample.com")]


def test_vadddomain_refuses_leading_dash(vhome: Install) -> None:
    golden(vhome)
    # after --, the name reaches the name check
    refused(vhome, "vadddomain", "--", "-bad.com", "secret", code=244,
            starts="Error: Invalid domain name")
    # without it, getopt takes it for options: usage, and still nothing made
    before = state(vhome)
    result = vhome.run("vadddomain", "-bad.com", "secret")
    assert result.returncode == 255
    assert result.stdout.startswith("vadddomain: usage:")
    assert state(vhome) == before


@pytest.mark.parametrize("options", [
    ["-d", "{base}/a:b"], ["-d", "{base}/new\nline"], ["-d", "{base}/\u20ac"], ["-d", "relative"],
    ["-i", "-1"], ["-i", "-5"], ["-i", "4294967295"], ["-g", "99999999999"]])
def test_vadddomain_refuses_what_users_assign_cannot_hold(vhome: Install, tmp_path: Path,
                                                          options: list[str]) -> None:
    """A ``-d`` directory with ``:``, a control character or a non-Latin-1 character, or not
    absolute, and a uid/gid that is no id, are refused before anything is made (before: a
    ``:`` cut the directory in users/cdb, so the domain lived at ``{base}/a`` without its
    vpasswd; the others left a half-made tree and a traceback or a misleading "corrupt
    users/assign")."""
    golden(vhome)
    base = tmp_path / "base"
    base.mkdir()
    options = [option.format(base=base) for option in options]
    for directory in options[1:] if options[0] == "-d" and options[1].startswith("/") else []:
        os.mkdir(directory)
    before = snapshot(base)
    refused(vhome, "vadddomain", *options, "new.com", "secret", code=152,
            starts="Error: bad input")
    assert snapshot(base) == before


def test_vadddomain_under_a_vpopmail_home_that_is_not_there_says_which_key(vhome: Install
                                                                           ) -> None:
    """A configuration whose paths.vpopmail_home is not the installation (written from the
    defaults, /home/vpopmail, for another PREFIX): the error names the key and the file
    (before: "Could not make domain dir: /home/vpopmail/domains: No such file or directory",
    and vcheck's fix, vadddomain, failed the same way). Nothing is made."""
    nowhere = vhome.prefix.parent / "nowhere"
    vhome.set_config("paths", "vpopmail_home", str(nowhere))
    result = vhome.run("vadddomain", DOMAIN, "secret")
    assert result.returncode == 242, result
    assert result.stdout == (
        f"Error: Could not make domain dir: {nowhere}/domains: No such file or directory; "
        f"paths.vpopmail_home = '{nowhere}' in {vhome.config_path}, but {nowhere}/bin does "
        f"not exist: no pyvpopmail is installed there\n")
    assert not nowhere.exists() and DOMAIN not in (vhome.qmaildir / "users" / "assign").read_text()


def test_vadddomain_duplicate(vhome: Install) -> None:
    golden(vhome)
    result = refused(vhome, "vadddomain", DOMAIN, "other", code=243)
    assert result.stdout == "Error: Domain already exists\n"
    refused(vhome, "vadddomain", DOMAIN.upper(), "other", code=243)


@pytest.mark.parametrize("emptied", [False, True])
def test_vadddomain_of_a_domain_whose_postmaster_was_deleted_is_refused(vhome: Install,
                                                                         emptied: bool) -> None:
    """A domain whose postmaster was deleted, with its other users or emptied of them all, is
    a domain, not what a vadddomain killed before its postmaster leaves: "Domain already
    exists" (243) and nothing changed, as C 5.4.33 answers every domain users/assign has
    (found by the differential fuzz: a postmaster was added with the new password, exit 0)."""
    golden(vhome)
    for name in ("postmaster", *(("alice", "bob") if emptied else ())):
        vhome.ok("vdeluser", f"{name}@{DOMAIN}")
    result = refused(vhome, "vadddomain", DOMAIN, "newpw", code=243)
    assert result.stdout == "Error: Domain already exists\n"
    assert sorted(stored_users(vhome)) == ([] if emptied else ["alice", "bob"])


@pytest.mark.parametrize("slot_taken", [False, True])
def test_vadddomain_finishes_a_domain_killed_before_its_postmaster(vhome: Install,
                                                                   slot_taken: bool) -> None:
    """A domain qmail routes, without users, whose .dir-control is missing (killed before the
    postmaster's directory was allotted) or counts a slot (killed after it, before vpasswd): a
    vadddomain killed halfway, which a rerun finishes."""
    api = vhome.api()
    entry = api.add_domain(DOMAIN)  # no password: everything but the postmaster
    if slot_taken:
        dircontrol.allocate(entry.dir, True, entry.uid, entry.gid)
    assert vhome.ok("vadddomain", DOMAIN, "newpw") == ""
    assert verify_password("newpw", stored_users(vhome)["postmaster"][1])



def test_vadddomain_of_an_emptied_domain_with_a_damaged_dir_control_is_refused(vhome: Install
                                                                              ) -> None:
    """A domain emptied of its users whose .dir-control is damaged is not what a killed
    vadddomain leaves (it writes the file whole, by rename): "Domain already exists" (243),
    nothing changed, as C 5.4.33 (before: the damaged file's temporary error, 156)."""
    golden(vhome)
    for name in sorted(stored_users(vhome)):
        vhome.ok("vdeluser", f"{name}@{DOMAIN}")
    (domain_dir(vhome) / dircontrol.CONTROL).write_text("garbage\n")
    result = refused(vhome, "vadddomain", DOMAIN, "newpw", code=243)
    assert result.stdout == "Error: Domain already exists\n"
    assert stored_users(vhome) == {}


def test_vadddomain_of_a_domain_without_users_but_with_an_alias_is_refused(vhome: Install
                                                                           ) -> None:
    """A domain with no user and no .dir-control but an alias (a .qmail-<alias> file, a valias
    row) is in use, not a vadddomain killed before its postmaster: "Domain already exists"
    (243), nothing changed, as C 5.4.33 (before: a postmaster was added, exit 0)."""
    vhome.api().add_domain(DOMAIN)  # no postmaster, no .dir-control
    vhome.ok("valias", "-i", "someone@example.net", f"info@{DOMAIN}")
    result = refused(vhome, "vadddomain", DOMAIN, "newpw", code=243)
    assert result.stdout == "Error: Domain already exists\n"
    assert stored_users(vhome) == {}


@pytest.mark.sql_only
@pytest.mark.parametrize("counted", [0, 1])
def test_vadddomain_reads_c_mysqls_dir_control_row(vhome: Install, counted: int) -> None:
    """C 5.4.33's MySQL backend keeps a domain's directory counter in its dir_control table,
    not in a .dir-control file: a domain it made and emptied of its users, migrated, has no
    file and a row counting 0, and is "Domain already exists" (243; before: a postmaster was
    added, exit 0); a row counting a slot (C's vadddomain killed after it) is finished."""
    golden(vhome)
    for name in sorted(stored_users(vhome)):
        vhome.ok("vdeluser", f"{name}@{DOMAIN}")
    (domain_dir(vhome) / dircontrol.CONTROL).unlink()
    assert vhome.database is not None
    vhome.database.server.sql(
        "CREATE TABLE dir_control (domain varchar(96) NOT NULL, cur_users int, "
        "the_dir varchar(160), PRIMARY KEY (domain)); "
        f"INSERT INTO dir_control VALUES ('{DOMAIN}', {counted}, '')", vhome.database.name)
    if counted:
        assert vhome.ok("vadddomain", DOMAIN, "newpw") == ""
        assert sorted(stored_users(vhome)) == ["postmaster"]
    else:
        result = refused(vhome, "vadddomain", DOMAIN, "newpw", code=243)
        assert result.stdout == "Error: Domain already exists\n"
        assert stored_users(vhome) == {}

def test_vadddomain_of_one_name_at_once_makes_it_once(vhome: Install, tmp_path: Path) -> None:
    """Eight vadddomain of one new name at one moment, each with its own password: one makes
    the domain, the seven others are refused as for any existing domain, and the postmaster's
    password is the winner's (before: all exited 0 and one password silently won, the later
    ones taking the first one's fresh directory for a half-made domain)."""
    golden(vhome)
    name = "race.org"
    for round_ in range(2):
        results = start_together(vhome, tmp_path, [["vadddomain", name, f"pw-{n}"]
                                                   for n in range(8)])
        for result in results:
            assert "Traceback" not in result.stderr, result
        won = [result for result in results if result.returncode == 0]
        assert len(won) == 1, [(r.args, r.returncode, r.stdout) for r in results]
        assert won[0].stdout == won[0].stderr == "", won
        for result in results:
            if result is not won[0]:
                assert (result.returncode, result.stdout, result.stderr) == (
                    243, "Error: Domain already exists\n", ""), result
        postmaster = stored_users(vhome, name)["postmaster"][1]
        assert verify_password(won[0].args[2], postmaster), (won, postmaster)
        assert [line for line in assign_lines(vhome) if line.startswith(f"+{name}-:")] == [
            assign_line(vhome, name)]
        assert list(vhome.domains.rglob(name)) == [vhome.domains / name]
        vhome.ok("vdeldomain", name)



def test_vdeldomain_racing_vadddomain_leaves_no_half_domain(vhome: Install,
                                                           tmp_path: Path) -> None:
    """vadddomain and vdeldomain of one name at one moment, a few rounds: afterwards the
    domain is whole (users/assign, rcpthosts, virtualdomains, its directory with the
    postmaster) or gone from all of them, never half of it; each command succeeds or is
    refused with one line (before: vdeldomain took vadddomain's fresh directory for what a
    killed vadddomain leaves and removed it under it)."""
    golden(vhome)
    name = "race.org"
    for round_ in range(10):
        argvs = [["vadddomain", name, "secret"] if n % 2 == round_ % 2 else ["vdeldomain", name]
                 for n in range(6)]
        for result in start_together(vhome, tmp_path, argvs):
            assert "Traceback" not in result.stderr, result
            assert result.returncode == 0 or result.stdout in (
                "Error: Domain already exists\n", f"Error: Domain does not exist: {name}\n"
            ), result
        assigned = [line for line in assign_lines(vhome) if line.startswith(f"+{name}-:")]
        parts = {"assign": bool(assigned),
                 "rcpthosts": name in control(vhome, "rcpthosts").split(),
                 "virtualdomains": f"{name}:{name}" in control(vhome, "virtualdomains").split(),
                 "directory": bool(list(vhome.domains.rglob(name)))}
        assert set(parts.values()) in ({True}, {False}), (round_, parts)
        if assigned:
            assert assigned == [assign_line(vhome, name)]
            assert "postmaster" in stored_users(vhome, name)
            vhome.ok("vdeldomain", name)


@pytest.mark.cdb_only("vpasswd half removed: the SQL rows go in one statement")
def test_vadddomain_waits_for_a_vdeldomain_of_the_name_before_looking_at_it(
        vhome: Install) -> None:
    """A vdeldomain holds users/assign's lock while it removes a domain's files: a vadddomain
    of the name meanwhile waits for it before it looks whether the domain is complete (before:
    it read the domain half removed and answered at once: here "Domain already exists"; in
    CI's racing test once "corrupt data file", 156, for a vpasswd already gone)."""
    import fcntl
    import time

    golden(vhome)
    name = "race.org"
    vhome.ok("vadddomain", name, "secret")
    vpasswd = domain_dir(vhome, name) / "vpasswd"
    lock_path = vhome.qmaildir / "users" / "assign.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)  # a vdeldomain of the name, half way
        kept = vpasswd.read_bytes()
        vpasswd.unlink()
        proc = subprocess.Popen([str(vhome.bin / "vadddomain"), name, "other"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=CLEAN_ENV, cwd="/")
        deadline = time.monotonic() + 30
        while proc.poll() is None and not has_open(proc.pid, lock_path):
            assert time.monotonic() < deadline, "vadddomain never asked for the lock"
            time.sleep(0.005)
        time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()  # waiting for the lock
        vpasswd.write_bytes(kept)  # this one did not go through with it
    finally:
        os.close(fd)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (243, "Error: Domain already exists\n", "")


@pytest.mark.parametrize("force", [False, True])
def test_vaddaliasdomain_racing_vdeldomain_of_its_domain_leaves_no_dangling_alias(
        vhome: Install, force: bool) -> None:
    """vaddaliasdomain checks its real domain under users/assign's lock, as vdeldomain decides
    what to remove under it: a vdeldomain of the real domain between the check and the write
    makes the vaddaliasdomain refused (before: it exited 0 and left the alias in users/assign,
    rcpthosts and virtualdomains, routed to the directory just removed)."""
    golden(vhome)
    proc = stopped_at_assign_lock(vhome, ["vaddaliasdomain", DOMAIN, ALIAS])
    vhome.ok("vdeldomain", *(["-f"] if force else []), DOMAIN)
    result = resumed(proc)
    assert "Traceback" not in result.stderr, result
    assert (result.returncode, result.stdout) == (
        245, f"Error: Domain does not exist: {DOMAIN}\n"), result
    assert not [line for line in assign_lines(vhome) if line.startswith(f"+{ALIAS}-:")]
    assert ALIAS not in control(vhome, "rcpthosts").split()
    assert not [line for line in control(vhome, "virtualdomains").split()
                if line.startswith(f"{ALIAS}:")]


def test_vaddaliasdomain_of_one_alias_at_once_makes_it_once(vhome: Install,
                                                            tmp_path: Path) -> None:
    """Four vaddaliasdomain of one alias of one domain at one moment: one makes it, the
    others are refused as a vaddaliasdomain of an existing alias is, whichever moment they
    looked (before: 0 or 255, "Both domains already exist", by timing; the README's "both
    exit 0" held only for those that looked before the first one finished)."""
    golden(vhome)
    for round_ in range(3):
        results = start_together(vhome, tmp_path, [["vaddaliasdomain", DOMAIN, ALIAS]] * 4)
        outcomes = sorted((r.returncode, r.stdout, r.stderr) for r in results)
        assert outcomes == [(0, "", "")] + [
            (255, "Error: Both domains already exist, unable to create alias.\n", "")] * 3, \
            outcomes
        assert len([line for line in assign_lines(vhome) if line.startswith(f"+{ALIAS}-:")]) == 1
        vhome.ok("vdeldomain", ALIAS)


def test_vadddomain_random_password_and_catchall(vhome: Install) -> None:
    out = vhome.ok("vadddomain", "-r12", "-e", "postmaster", DOMAIN)
    match = re.fullmatch(r"Random password: (\S{12})\n", out)
    assert match, out
    dom = domain_dir(vhome)
    assert (dom / ".qmail-default").read_text() == \
        f"| {vhome.prefix}/bin/vdelivermail '' {dom / 'postmaster'}\n"
    from vpopmail.passwords import verify_password
    assert verify_password(match.group(1), stored_users(vhome)["postmaster"][1])
    # the catch-all target cannot be deleted
    refused(vhome, "vdeluser", f"postmaster@{DOMAIN}", code=201)


# the catch-all: what qmail-local's sh -c hands to vdelivermail ----------------------------------

#: -e ACTION -> the argument vdelivermail must receive (None: <domain dir>/<action lower-cased>)
CATCHALLS = [("sales$dept@other.com", "sales$dept@other.com"),
             ("a&b@other.com", "a&b@other.com"),
             ("o'brien@other.com", "o'brien@other.com"),
             ("x`id`|y@other.com", "x`id`|y@other.com"),
             ("/var/spool/catch all/$HOME", "/var/spool/catch all/$HOME"),
             ("delete", "delete"), ("bounce-no-mailbox", "bounce-no-mailbox"),
             ("fwd@other.com", "fwd@other.com"), ("Postmaster", None), ("O'Neil&Co|`x`", None)]


def argv_of_dot_qmail_default(inst: Install, dom: Path) -> list[str]:
    """Run the first line of ``.qmail-default`` as qmail-local runs a program line (/bin/sh -c,
    in the domain directory) with bin/vdelivermail replaced by a recorder: its arguments."""
    line = (dom / ".qmail-default").read_text()
    assert line.startswith("|") and line.count("\n") == 1, line
    record = dom.parent / "argv"
    real = inst.bin / "vdelivermail"
    saved = real.read_bytes()
    real.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > '{record}'\n")
    try:
        subprocess.run(["/bin/sh", "-c", line[1:]], cwd=dom, env=CLEAN_ENV, check=True)
    finally:
        real.write_bytes(saved)
    return record.read_text().split("\0")[:-1]


@pytest.mark.cdb_only(NO_BACKEND)
@pytest.mark.parametrize("action,expected", CATCHALLS)
def test_catchall_reaches_vdelivermail_as_one_argument(vhome: Install, action: str,
                                                        expected: str | None) -> None:
    """vadddomain -e and vmoddomain -e write a line whose shell words are exactly
    ``vdelivermail '' ACTION``: nothing expanded, split or run (C wrote it unquoted)."""
    vhome.ok("vadddomain", "-e", action, DOMAIN, "secret")
    dom = domain_dir(vhome)
    if expected is None:
        expected = str(dom / action.lower())
        if action.lower() != "postmaster":  # vmoddomain names only existing users
            vhome.ok("vadduser", f"{action.lower()}@{DOMAIN}", "pw")
    assert argv_of_dot_qmail_default(vhome, dom) == ["", expected]
    written = (dom / ".qmail-default").read_text()
    if re.fullmatch(r"[\w@%+=:,./-]+", expected):  # a plain action: C's line, byte for byte
        assert written == f"| {vhome.prefix}/bin/vdelivermail '' {expected}\n"
    assert vhome.ok("vdominfo", "-c", DOMAIN) == expected + "\n"
    # vmoddomain writes the same line over another one
    assert vhome.ok("vmoddomain", "-e", "delete", DOMAIN) == ""
    assert vhome.ok("vdominfo", "-c", DOMAIN) == "delete\n"
    assert vhome.ok("vmoddomain", "-e", action, DOMAIN) == ""
    assert (dom / ".qmail-default").read_text() == written
    assert mode(dom / ".qmail-default") == 0o600


REFUSED_CATCHALLS = ["|rm -rf /@other.com", "#x@other.com", "&x@other.com", "+x@other.com",
                     ".x@other.com", "a b@other.com", "x@other.com\n| touch /tmp/pwned",
                     "./Maildir/", "../evil", "a/b", "x;id", "x@", "@other.com",
                     "a@b@other.com", "x@other..com", "tab\there", "/x" * 150]


@pytest.mark.cdb_only(NO_BACKEND)
def test_catchall_refuses_what_vdelivermail_would_misread(vhome: Install) -> None:
    """Anything but an address, a user name, an absolute path, delete or bounce-no-mailbox
    is refused with a clear error, by vadddomain (nothing made) and vmoddomain (the old
    line kept)."""
    golden(vhome)
    for action in REFUSED_CATCHALLS:
        result = refused(vhome, "vadddomain", "-e", action, "other.org", "secret", code=152)
        assert "give an address" in result.stdout or "catch-all" in result.stdout, result
        refused(vhome, "vmoddomain", "-e", action, DOMAIN, code=152)


def test_vmoddomain_names_only_users_of_the_domain(vhome: Install) -> None:
    golden(vhome)
    dom = domain_dir(vhome)
    refused(vhome, "vmoddomain", "-e", "nosuch", DOMAIN, code=246,
            starts="Error: User does not exist")
    refused(vhome, "vmoddomain", "-e", "x@other.com", "nosuch.org", code=245)
    assert vhome.run("vmoddomain", DOMAIN).returncode == 255  # nothing to change: usage
    assert vhome.ok("vmoddomain", "-e", "ALICE", DOMAIN) == ""
    assert vhome.ok("vdominfo", "-c", DOMAIN) == f"{dom / 'alice'}\n"
    refused(vhome, "vdeluser", f"alice@{DOMAIN}", code=201)  # the catch-all is kept
    assert vhome.ok("vmoddomain", "-b", DOMAIN) == ""
    assert vhome.ok("vdominfo", "-c", DOMAIN) == "bounce-no-mailbox\n"
    vhome.ok("vdeluser", f"alice@{DOMAIN}")


def test_vadddomain_as_vpopmail_cannot_write_assign(root_vhome: Install) -> None:
    inst = root_vhome
    golden(inst)  # as root: domains/.dir-control exists already
    result = refused(inst, "vadddomain", "other.org", "secret", as_vpopmail=True)
    assert "Could not update file" in result.stdout
    assert not (inst.domains / "other.org").exists()
    assert assign_lines(inst) == [assign_line(inst, DOMAIN), "."]
    # root can
    inst.ok("vadddomain", "other.org", "secret")
    assert inst.uid == 89
    check_owner(inst)


def test_vadddomain_refuses_a_qmail_dir_that_does_not_exist(vhome: Install,
                                                            tmp_path: Path) -> None:
    """A mistyped paths.qmail_dir is named; no qmail tree is made there (before: a fake
    users/assign and control/ appeared, exit 0, and qmail never heard of the domain)."""
    golden(vhome)
    missing = tmp_path / "no-such-qmail"
    vhome.set_config("paths", "qmail_dir", str(missing))
    result = refused(vhome, "vadddomain", "other.org", "secret", code=154)
    assert f"paths.qmail_dir {missing} is not a directory" in result.stdout
    assert not missing.exists() and not (vhome.domains / "other.org").exists()
    assert not [p for p in vhome.domains.rglob("other.org")]


def test_an_ordinary_user_is_told_to_run_the_command_as_root(root_vhome: Install) -> None:
    """In a root install, a user who may not read or write a file is told so, with the fix
    (before: "corrupt data file: ...vpasswd.cdb: Permission denied", and vadddomain blamed
    the domain owner: "the domain owner 89:89 cannot enter it")."""
    inst = root_vhome
    golden(inst)
    before = state(inst)
    uid = pwd.getpwnam("nobody").pw_uid
    bulletin = inst.prefix.parent / "bulletin"
    bulletin.write_text("From: admin@example.com\nSubject: news\n\nhello\n")
    bulletin.chmod(0o644)
    # vmkpasswd: not "vpasswd is missing"; vpopbull to every domain: not exit 0, nothing sent
    for argv in (["vuserinfo", f"alice@{DOMAIN}"], ["vdominfo", DOMAIN],
                 ["vpasswd", f"alice@{DOMAIN}", "new"], ["vadddomain", "other.org", "secret"],
                 ["vmkpasswd", DOMAIN], ["vpopbull", "-f", str(bulletin)],
                 ["vdeloldusers", "-e"]):
        result = inst.run(*argv, as_user="nobody")
        assert result.returncode != 0, result
        lines = result.stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and \
            lines[0].endswith(f" (uid {uid}): run {argv[0]} as root"), result
        assert "Permission denied" in lines[0], result
        assert "corrupt" not in lines[0] and "domain owner" not in lines[0], result
        assert "Traceback" not in result.stderr, result
    # vconvert's line after the domain's (on stderr: the export goes to stdout); with SQL
    # the configuration, which holds the database password, is refused first
    result = inst.run("vconvert", "-c", "-e", "-f", "-", DOMAIN, as_user="nobody")
    refusal = (f"{domain_dir(inst)}/vpasswd" if inst.backend == "cdb" else "")
    assert result.returncode != 0 and f"{refusal} (uid {uid}): run vconvert as root\n" in (
        result.stdout + result.stderr), result
    assert state(inst) == before


# vdominfo --------------------------------------------------------------------------------------

def test_vdominfo_all_and_one(vhome: Install) -> None:
    golden(vhome)
    vhome.ok("vadddomain", "other.org", "secret")
    dom, other = domain_dir(vhome), domain_dir(vhome, "other.org")
    uid, gid = vhome.uid, vhome.gid
    block = f"domain: {DOMAIN}\nuid:    {uid}\ngid:    {gid}\ndir:    {dom}\nusers:  3\n"
    other_block = (f"domain: other.org\nuid:    {uid}\ngid:    {gid}\ndir:    {other}\n"
                   f"users:  1\n")
    out = vhome.ok("vdominfo")
    assert out.endswith("\n\n")
    assert sorted(out.split("\n\n")[:-1]) == sorted([block.rstrip("\n"), other_block.rstrip("\n")])
    assert vhome.ok("vdominfo", DOMAIN) == block
    assert vhome.ok("vdominfo", "OTHER.org") == other_block


def test_vdominfo_selectors(vhome: Install) -> None:
    golden(vhome)
    dom = domain_dir(vhome)
    assert vhome.ok("vdominfo", "-n", "-t", DOMAIN) == f"{DOMAIN}\n3\n"
    assert vhome.ok("vdominfo", "-r", "-d", "-g", "-u", "-t", "-n", DOMAIN) == \
        f"{DOMAIN}\n{vhome.uid}\n{vhome.gid}\n{dom}\n3\n{DOMAIN}\n"
    assert vhome.ok("vdominfo", "-d") == f"{dom}\n\n"
    # -a after the selectors shows all fields, as in C (the last of them decides: found by
    # the differential fuzz against C 5.4.33)
    assert vhome.ok("vdominfo", "-n", "-a", DOMAIN) == vhome.ok("vdominfo", DOMAIN)
    assert vhome.ok("vdominfo", "-a", "-n", DOMAIN) == f"{DOMAIN}\n"


def test_vdominfo_unknown_domain(vhome: Install) -> None:
    golden(vhome)
    result = vhome.run("vdominfo", "nosuch.com")
    # C printed "Invalid domain name", for a name that is valid but not here
    assert (result.returncode, result.stdout) == (245, "Error: Domain does not exist: nosuch.com\n")
    result = vhome.run("vdominfo", "-Z")
    assert result.returncode == 255 and result.stdout.startswith("vdominfo: usage:")


def test_no_such_user_through_an_alias_domain_names_the_real_domain(vhome: Install) -> None:
    """As C's vuserinfo and vmoduser print it (their lookup rewrote the domain; found by the
    differential fuzz against C 5.4.33: the alias domain was named)."""
    with_alias(vhome)
    for command in ("vuserinfo", "vmoduser"):
        result = vhome.run(command, f"Nobody@{ALIAS}")
        assert (result.returncode, result.stdout) == (255, f"no such user nobody@{DOMAIN}\n")


def test_vdominfo_alias_lines(vhome: Install) -> None:
    with_alias(vhome)
    dom = domain_dir(vhome)
    block = (f"domain: {DOMAIN}\nuid:    {vhome.uid}\ngid:    {vhome.gid}\ndir:    {dom}\n"
             f"users:  3\n")
    assert vhome.ok("vdominfo", DOMAIN) == block + f"alias: {ALIAS}\n"
    # an alias resolves to its real domain
    assert vhome.ok("vdominfo", ALIAS) == block + f"alias: {ALIAS}\n"
    # the alias lines follow the selected fields too, as in C (found by the differential fuzz
    # against C 5.4.33: they were left out)
    assert vhome.ok("vdominfo", "-r", ALIAS) == f"{DOMAIN}\nalias: {ALIAS}\n"
    assert vhome.ok("vdominfo", "-n", "-t", DOMAIN) == f"{DOMAIN}\n3\nalias: {ALIAS}\n"
    alias_block = block.replace(f"domain: {DOMAIN}", f"domain: {ALIAS} (alias of {DOMAIN})")
    out = vhome.ok("vdominfo")
    assert sorted(out.split("\n\n")[:-1]) == sorted([block.rstrip("\n"), alias_block.rstrip("\n")])


# vaddaliasdomain -------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["real-first", "alias-first"])
def test_vaddaliasdomain_either_order(vhome: Install, order: str) -> None:
    golden(vhome)
    args = (DOMAIN, ALIAS) if order == "real-first" else (ALIAS, DOMAIN)
    result = vhome.run("vaddaliasdomain", *args)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert sorted(assign_lines(vhome)[:-1]) == sorted(
        [assign_line(vhome, DOMAIN), assign_line(vhome, ALIAS, real=DOMAIN)])
    assert assign_lines(vhome)[-1] == "."
    dump = cdb_dump(vhome.qmaildir / "users" / "cdb")
    value = b"\0".join([DOMAIN.encode(), b"%d" % vhome.uid, b"%d" % vhome.gid,
                        str(domain_dir(vhome)).encode(), b"-", b""])
    assert cdb_text([(b"!alias.net-", value)])[:-1] in dump
    assert sorted(control(vhome, "rcpthosts").split()) == [ALIAS, DOMAIN]
    assert sorted(control(vhome, "virtualdomains").split()) == [f"{ALIAS}:{ALIAS}",
                                                                 f"{DOMAIN}:{DOMAIN}"]
    # users of the real domain answer under the alias; no directory was made for it
    assert vhome.ok("vuserinfo", "-n", f"alice@{ALIAS}") == "alice\n"
    assert not (vhome.domains / ALIAS).exists()


def test_vaddaliasdomain_refusals(vhome: Install) -> None:
    golden(vhome)
    vhome.ok("vadddomain", "other.org", "secret")
    result = refused(vhome, "vaddaliasdomain", DOMAIN, "other.org", code=255)
    assert result.stdout == "Error: Both domains already exist, unable to create alias.\n"
    result = refused(vhome, "vaddaliasdomain", "a-one.com", "a-two.com", code=255)
    assert result.stdout == \
        "Error: Neither 'a-one.com' or 'a-two.com'  exist, unable to create alias.\n"
    before = state(vhome)
    result = vhome.run("vaddaliasdomain", DOMAIN, DOMAIN)
    assert result.returncode == 255
    assert result.stdout.startswith("Error: real domain and alias domain are the same!\n"
                                    "vaddaliasdomain: usage:")
    refused(vhome, "vaddaliasdomain", DOMAIN, "bad..alias", starts="Error: Invalid domain name")
    assert state(vhome) == before


@pytest.mark.parametrize("order", ["real first", "alias first"])
def test_vaddaliasdomain_finishes_a_half_made_alias(vhome: Install, order: str) -> None:
    """A vaddaliasdomain killed (or failing) after users/cdb, before rcpthosts and
    virtualdomains: qmail routes the alias but does not accept it. The rerun finishes it
    (before: "Both domains already exist", exit 255, for ever); a complete alias is still
    refused so."""
    with_alias(vhome)
    for name in ("rcpthosts", "virtualdomains"):
        path = vhome.qmaildir / "control" / name
        path.write_text("".join(line + "\n" for line in path.read_text().splitlines()
                                if not line.startswith(ALIAS)))
    args = [DOMAIN, ALIAS] if order == "real first" else [ALIAS, DOMAIN]
    result = vhome.run("vaddaliasdomain", *args)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
    assert ALIAS in control(vhome, "rcpthosts").split()
    assert f"{ALIAS}:{ALIAS}" in control(vhome, "virtualdomains").split()
    assert assign_lines(vhome).count(assign_line(vhome, ALIAS, DOMAIN)) == 1
    result = refused(vhome, "vaddaliasdomain", *args, code=255)
    assert result.stdout == "Error: Both domains already exist, unable to create alias.\n"
    # killed before users/cdb: the users/assign line alone
    vhome.ok("vdeldomain", ALIAS)
    assign = vhome.qmaildir / "users" / "assign"
    lines = assign.read_text().splitlines()
    assign.write_text("\n".join([assign_line(vhome, ALIAS, DOMAIN), *lines]) + "\n")
    vhome.ok("vaddaliasdomain", *args)
    assert assign_lines(vhome).count(assign_line(vhome, ALIAS, DOMAIN)) == 1
    assert vhome.ok("vdominfo", "-d", ALIAS) == f"{domain_dir(vhome)}\nalias: {ALIAS}\n"


# qmail's files in C vpopmail's order ----------------------------------------------------------

#: added in this order; C keeps the lines sorted by domain_sort_key (last two labels first)
ADDED = ["zeta.org", "mail.alpha.com", "alpha.com", "beta.net", "a.b.c.alpha.com"]
C_ORDER = ["alpha.com", "a.b.c.alpha.com", "mail.alpha.com", "beta.net", "zeta.org"]


@pytest.mark.cdb_only(NO_BACKEND)
def test_qmail_files_keep_c_order(vhome: Install) -> None:
    """rcpthosts, virtualdomains and users/assign hold their lines in the order C vpopmail's
    update_file keeps (golden order worked out by hand from vpopmail.c); files left out of
    order (by an earlier pyvpopmail) are sorted whole by the next vadddomain, as C did."""
    for domain in ADDED:
        vhome.ok("vadddomain", domain, "secret")
    assert control(vhome, "rcpthosts") == "".join(f"{d}\n" for d in C_ORDER)
    assert control(vhome, "virtualdomains") == "".join(f"{d}:{d}\n" for d in C_ORDER)
    assert assign_lines(vhome) == [assign_line(vhome, d) for d in C_ORDER] + ["."]
    control_dir = vhome.qmaildir / "control"
    (control_dir / "rcpthosts").write_text("zeta.org\nalpha.com\n")
    (control_dir / "virtualdomains").write_text("zeta.org:zeta.org\nalpha.com:alpha.com\n")
    for domain in ADDED[1:]:
        if domain != "alpha.com":
            vhome.ok("vdeldomain", domain)
    vhome.ok("vadddomain", "mail.beta.com", "secret")
    assert control(vhome, "rcpthosts") == "alpha.com\nmail.beta.com\nzeta.org\n"
    assert control(vhome, "virtualdomains") == (
        "alpha.com:alpha.com\nmail.beta.com:mail.beta.com\nzeta.org:zeta.org\n")


@pytest.mark.cdb_only(NO_BACKEND)
def test_vdeldomain_makes_no_morercpthosts_lock(vhome: Install) -> None:
    """Removing a domain from a morercpthosts that does not exist leaves nothing behind."""
    vhome.ok("vadddomain", DOMAIN, "secret")
    vhome.ok("vdeldomain", DOMAIN)
    control_dir = vhome.qmaildir / "control"
    assert sorted(p.name for p in control_dir.iterdir() if "morercpthosts" in p.name) == []


# qmail-send ------------------------------------------------------------------------------------

#: a qmail-send stand-in (its file name makes its /proc comm "qmail-send"): prints the pid of
#: every process that sends it SIGHUP (other sessions' commands may signal it too)
QMAIL_SEND = """#!{python}
import signal
signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGHUP}})
print("ready", flush=True)
while True:
    print(signal.sigwaitinfo({{signal.SIGHUP}}).si_pid, flush=True)
"""


@pytest.mark.cdb_only(NO_BACKEND)
def test_domain_changes_signal_only_their_own_qmail_send(vhome: Install, tmp_path: Path) -> None:
    """qmail-send works in <qmaildir>/queue: vadddomain and vdeldomain SIGHUP the qmail-send
    whose working directory that is, none of another qmail directory, and none at all from
    an install whose qmail directory runs no qmail (C signalled every qmail-send on the
    host)."""
    stand_in = tmp_path / "bin" / "qmail-send"
    stand_in.parent.mkdir()
    stand_in.write_text(QMAIL_SEND.format(python=sys.executable))
    stand_in.chmod(0o755)
    queue, other_queue = vhome.qmaildir / "queue", tmp_path / "other-qmail" / "queue"
    other_queue.mkdir(parents=True)
    procs: list[subprocess.Popen[str]] = []

    def start(cwd: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen([str(stand_in)], cwd=cwd, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        return proc

    def command(*argv: str) -> int:
        proc = subprocess.Popen([str(vhome.bin / argv[0]), *argv[1:]], env=CLEAN_ENV, cwd="/",
                                stdout=subprocess.DEVNULL)
        assert proc.wait(timeout=60) == 0, argv
        return proc.pid

    def senders(proc: subprocess.Popen[str]) -> set[int]:
        proc.terminate()
        return {int(line) for line in proc.communicate(timeout=10)[0].split()}

    try:
        other = start(other_queue)
        mine = {command("vadddomain", "other.org", "secret")}  # no queue/: no qmail here
        queue.mkdir()
        ours = start(queue)
        changes = {command("vadddomain", DOMAIN, "secret"), command("vdeldomain", DOMAIN)}
        assert changes <= senders(ours)
        assert not (mine | changes) & senders(other)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


# vdeldomain ------------------------------------------------------------------------------------

def test_vdeldomain_of_a_domain_whose_directory_tree_is_gone(vhome: Install,
                                                            tmp_path: Path) -> None:
    """A domain made with -d whose domains directory was removed by hand is deleted (before:
    a FileNotFoundError traceback after qmail's files were already changed)."""
    golden(vhome)
    base = tmp_path / "base"
    base.mkdir()
    base.chmod(0o755)
    vhome.ok("vadddomain", "-d", str(base), "gone.org", "secret")
    subprocess.run(["rm", "-rf", str(base / "domains")], check=True)
    result = vhome.run("vdeldomain", "gone.org")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
    assert not [line for line in assign_lines(vhome) if "gone.org" in line]
    assert "gone.org" not in control(vhome, "rcpthosts")


@pytest.mark.cdb_only(NO_BACKEND)
def test_vdeldomain_removes_no_directory_that_is_not_the_domains(vhome: Install) -> None:
    """users/assign lines vadddomain did not write: qmail-pw2u's for qmail's alias user, and a
    hand-made one naming another domain's directory. vdeldomain of such a name removes no
    directory, refused before any change (before: exit 0, and ~alias with qmail's
    .qmail-postmaster and .qmail-root was deleted, or the other domain's users and mail)."""
    golden(vhome)
    alias_home = vhome.qmaildir / "alias"
    alias_home.mkdir(mode=0o755)
    (alias_home / ".qmail-postmaster").write_text("&admin@example.org\n")
    uid, gid = vhome.uid, vhome.gid
    api = vhome.api()
    with api.qmail.assign_lock():
        api.qmail._write_assign([f"=alias:alias:{uid}:{gid}:{alias_home}:::",
                                 f"+alias-:alias:{uid}:{gid}:{alias_home}:-::",
                                 f"+other.org-:other.org:{uid}:{gid}:{domain_dir(vhome)}:-::",
                                 *assign_lines(vhome)[:-1]])
    for name, where in (("alias", alias_home), ("other.org", domain_dir(vhome))):
        result = refused(vhome, "vdeldomain", name, code=149)
        assert result.stdout == (f"Error: not a real directory of the domain: {where}: users/"
                                 f"assign names it for {name}, but it is not named after the "
                                 "domain or holds no vpasswd nor vpasswd.cdb\n"), result
    assert (alias_home / ".qmail-postmaster").exists()
    assert sorted(stored_users(vhome)) == ["alice", "bob", "postmaster"]


def test_vdeldomain_refuses_while_an_alias_exists(vhome: Install) -> None:
    with_alias(vhome)
    before = state(vhome)
    result = vhome.run("vdeldomain", DOMAIN)
    assert result.returncode != 0
    assert result.stdout == ("Warning: Alias domains exist:\n"
                             f"   {ALIAS}\n"
                             "   use -f to force delete of domain and all aliases\n")
    assert state(vhome) == before


def test_vdeldomain_force_deletes_domain_and_aliases(vhome: Install) -> None:
    with_alias(vhome)
    result = vhome.run("vdeldomain", "-f", DOMAIN)
    assert (result.returncode, result.stdout) == \
        (0, f"Warning: Alias domains deleted:\n   {ALIAS}\n")
    assert assign_lines(vhome) == ["."]
    assert cdb_dump(vhome.qmaildir / "users" / "cdb") == cdb_text([(b"", b"")])
    assert control(vhome, "rcpthosts") == ""
    assert control(vhome, "virtualdomains") == ""
    assert not domain_dir(vhome).exists()
    assert (vhome.domains / ".dir-control").read_text().split("\n")[0] == "0"
    refused(vhome, "vuserinfo", f"alice@{DOMAIN}", code=245)
    refused(vhome, "vdeldomain", DOMAIN, code=245, starts="Error: Domain does not exist")
    # the name can be used again
    vhome.ok("vadddomain", DOMAIN, "again")
    assert sorted(stored_users(vhome)) == ["postmaster"]


def test_vdeldomain_of_an_alias_removes_only_the_alias(vhome: Install) -> None:
    with_alias(vhome)
    assert vhome.ok("vdeldomain", ALIAS) == ""
    assert assign_lines(vhome) == [assign_line(vhome, DOMAIN), "."]
    assert control(vhome, "rcpthosts") == f"{DOMAIN}\n"
    assert control(vhome, "virtualdomains") == f"{DOMAIN}:{DOMAIN}\n"
    assert sorted(stored_users(vhome)) == ["alice", "bob", "postmaster"]
    # with the alias gone, the real domain deletes without -f
    assert vhome.ok("vdeldomain", DOMAIN) == ""
    assert not domain_dir(vhome).exists()


# vmoddomlimits ---------------------------------------------------------------------------------

PERM_ALLOW = "ALLOW_CREATE ALLOW_MODIFY ALLOW_DELETE "
DEFAULT_SHOW = f"""\
Domain: {DOMAIN}
--
Max Pop Accounts: -1
Max Aliases: -1
Max Forwards: -1
Max Autoresponders: -1
Max Mailinglists: -1
GID Flags:
Flags (for commandline): 
Flags for non postmaster accounts:
  pop account:            {PERM_ALLOW}
  alias:                  {PERM_ALLOW}
  forward:                {PERM_ALLOW}
  autoresponder:          {PERM_ALLOW}
  mailinglist:            {PERM_ALLOW}
  mailinglist users:      {PERM_ALLOW}
  mailinglist moderators: {PERM_ALLOW}
  quota:                  {PERM_ALLOW}
  default quota:          {PERM_ALLOW}
Domain Quota: 0 MB
Default User Quota: 0 bytes
Max Domain Messages: 0
Default Max Messages per User: 0
"""


def test_vmoddomlimits_show(vhome: Install) -> None:
    golden(vhome)
    assert vhome.ok("vmoddomlimits", "-S", DOMAIN) == DEFAULT_SHOW
    assert not (domain_dir(vhome) / ".qmailadmin-limits").exists()
    assert vhome.ok("vmoddomlimits", "-P", "5", "-g", "pi", "-p", "cd", "-q", "2M", DOMAIN) == ""
    limits_file = domain_dir(vhome) / ".qmailadmin-limits"
    assert limits_file.exists()
    assert (limits_file.stat().st_uid, limits_file.stat().st_gid) == (vhome.uid, vhome.gid)
    out = vhome.ok("vmoddomlimits", "-S", DOMAIN)
    expected = (DEFAULT_SHOW
                .replace("Max Pop Accounts: -1", "Max Pop Accounts: 5")
                .replace("GID Flags:\n", "GID Flags:\n  NO_IMAP\n  NO_POP\n")
                .replace("Flags (for commandline): \n", "Flags (for commandline): ip\n")
                .replace(f"  pop account:            {PERM_ALLOW}",
                         "  pop account:            DENY_CREATE  ALLOW_MODIFY DENY_DELETE  ")
                .replace("Default User Quota: 0 bytes", "Default User Quota: 2097152 bytes"))
    assert out == expected
    # new users get the domain's default quota
    vhome.ok("vadduser", f"carol@{DOMAIN}", "x")
    assert stored_users(vhome)["carol"][6] == "2097152S"
    # -D goes back to the defaults
    assert vhome.ok("vmoddomlimits", "-D", DOMAIN) == "Limits deleted\n"
    assert vhome.ok("vmoddomlimits", "-S", DOMAIN) == DEFAULT_SHOW


@pytest.mark.cdb_only(NO_BACKEND)
def test_vmoddomlimits_show_reads_a_read_only_domain(vhome: Install) -> None:
    """-S changes nothing, so it takes no lock: it shows a domain whose directory is mounted
    read-only (before: "Could not update file" for the lock it made), and the defaults too."""
    golden(vhome)
    vhome.ok("vmoddomlimits", "-P", "5", DOMAIN)
    shown = vhome.ok("vmoddomlimits", "-S", DOMAIN)
    defaults = vhome.ok("vmoddomlimits", "-S", "-d")
    directory = str(domain_dir(vhome))
    mounted = subprocess.run(["mount", "--bind", directory, directory], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", directory], check=True)
        assert vhome.ok("vmoddomlimits", "-S", DOMAIN) == shown
        assert vhome.ok("vmoddomlimits", "-S", "-d") == defaults
        changed = vhome.run("vmoddomlimits", "-P", "6", DOMAIN)
        assert changed.returncode != 0 and "Read-only file system" in changed.stdout, changed
    finally:
        subprocess.run(["umount", directory], check=True)
    assert "Max Pop Accounts: 5" in shown


@pytest.mark.parametrize("options, code", [
    (["-P", "2147483648"], 152), (["-A", "-2147483649"], 152), (["-M", "-1"], 152),
    (["-m", "99999999999999999999"], 152), (["-p", "a", "-Q", "-5"], 152),
    (["-q", "1000000000000", "-m", "1000000000"], 227)])
def test_vmoddomlimits_refuses_numbers_the_limits_cannot_hold(vhome: Install,
                                                              options: list[str],
                                                              code: int) -> None:
    """A number out of its ``limits`` column's range (C's int, bigint unsigned), or default
    quotas whose quota text is longer than a user record holds (20 characters), is refused and
    nothing changes (before: the file took it, and every new user got a quota such as
    ``99999999999999999999C`` that vsetuserquota, vconvert and the users table refuse; the
    table refused it with an SQL error)."""
    golden(vhome)
    if vhome.backend == "mysql":
        vhome.set_config("mysql", "limits_table", True)
    vhome.ok("vmoddomlimits", "-P", "2147483647", "-q", "10000000000", "-m", "999999", DOMAIN)
    shown = vhome.ok("vmoddomlimits", "-S", DOMAIN)
    refused(vhome, "vmoddomlimits", *options, DOMAIN, code=code)
    assert vhome.ok("vmoddomlimits", "-S", DOMAIN) == shown
    vhome.ok("vadduser", f"carol@{DOMAIN}", "x")
    assert stored_users(vhome)["carol"][6] == "10000000000S,999999C"  # 20 characters


@pytest.mark.parametrize("quota", ["100C", "5M,100C"])
def test_vmoddomlimits_default_quota_takes_no_count(vhome: Install, quota: str) -> None:
    """-q is the size new users get; a count in it was dropped in silence (``100C`` cleared
    the default quota): it is a usage error naming -m."""
    golden(vhome)
    vhome.ok("vmoddomlimits", "-q", "2M", DOMAIN)
    before = state(vhome)
    result = vhome.run("vmoddomlimits", "-q", quota, DOMAIN)
    assert result.returncode == 255 and "-m sets the message count" in result.stderr, result
    assert state(vhome) == before


@pytest.mark.parametrize("only, does", [("-S", "shows"), ("-D", "deletes")])
@pytest.mark.parametrize("target", [[DOMAIN], ["-d"]])
def test_vmoddomlimits_show_or_delete_with_a_change_is_a_usage_error(
        vhome: Install, target: list[str], only: str, does: str) -> None:
    """-S or -D with a change: C 5.4.33 shows (deletes) the limits, exits 0 and drops the
    change in silence (found by the differential fuzz: ours made the change and showed it,
    or dropped it as C). A usage error (255) naming it, and nothing changed."""
    golden(vhome)
    vhome.ok("vmoddomlimits", "-P", "5", DOMAIN)
    before = state(vhome), snapshot(vhome.prefix / "etc")
    result = vhome.run("vmoddomlimits", only, "-P", "9", "-g", "ps", *target)
    assert result.returncode == 255, result
    assert result.stderr == f"vmoddomlimits: {only} {does} the limits and changes none: " \
        f"give the changes without {only}\n"
    assert result.stdout.startswith("vmoddomlimits: usage:"), result
    assert (state(vhome), snapshot(vhome.prefix / "etc")) == before


def test_vmoddomlimits_at_the_same_moment_lose_no_change(vhome: Install) -> None:
    """Eight administrators each change one field of one domain at once: every change is
    kept (read, change and write are one step: the domain's directory lock for the file, a
    transaction holding the row for the SQL limits table)."""
    golden(vhome)
    if vhome.backend == "mysql":
        vhome.set_config("mysql", "limits_table", True)
    changes = {"-P": "Max Pop Accounts", "-A": "Max Aliases", "-F": "Max Forwards",
               "-R": "Max Autoresponders", "-L": "Max Mailinglists", "-Q": "Domain Quota",
               "-M": "Max Domain Messages", "-m": "Default Max Messages per User"}
    procs = [subprocess.Popen([str(vhome.bin / "vmoddomlimits"), option, str(n), DOMAIN],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=CLEAN_ENV)
             for n, option in enumerate(changes, start=5)]
    assert [(p.wait(60), *p.communicate()) for p in procs] == [(0, "", "")] * len(procs)
    shown = vhome.ok("vmoddomlimits", "-S", DOMAIN)
    for n, label in enumerate(changes.values(), start=5):
        assert re.search(rf"^{label}: {n}( MB)?$", shown, re.M), (label, shown)


def test_vmoddomlimits_default_file(vhome: Install) -> None:
    golden(vhome)
    out = vhome.ok("vmoddomlimits", "-d", "-S")
    path = vhome.prefix / "etc" / "vlimits.default"
    assert out == DEFAULT_SHOW.replace(f"Domain: {DOMAIN}", f"Default limits: {path}")
    result = vhome.run("vmoddomlimits", "-d", "-D")
    assert result.returncode == 255
    assert result.stdout.startswith("Default limits must not be deleted.")
    assert path.exists()


def test_vmoddomlimits_of_the_defaults_as_root_keeps_them_the_vpopmail_users(
        root_vhome: Install) -> None:
    """The default limits stay the vpopmail user's when root changes them: a vchkpw working
    as that user (Dovecot's auth as vpopmail) reads them at every login of a domain without
    limits of its own (before: root's 0600 file, and every such login answered 111)."""
    root_vhome.ok("vadddomain", DOMAIN, "Pm-pass-1")
    root_vhome.ok("vmoddomlimits", "-d", "-P", "13")
    st = (root_vhome.prefix / "etc" / "vlimits.default").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (89, 89, 0o600)
    credentials = root_vhome.prefix.parent / "vchkpw-input"
    credentials.write_bytes(f"postmaster@{DOMAIN}\0Pm-pass-1\0\0".encode())
    login = subprocess.run([*as_user_argv("vpopmail"), "/bin/sh", "-c",
                            'f=$1; shift; exec "$@" 3<"$f"', "sh", str(credentials),
                            str(root_vhome.bin / "vchkpw"), "/bin/true"], capture_output=True,
                           env={**CLEAN_ENV, "TCPLOCALPORT": "110"}, cwd="/", timeout=60)
    assert login.returncode == 0, login
    assert "Max Pop Accounts: 13\n" in root_vhome.ok("vmoddomlimits", "-d", "-S")


# vregenerate -----------------------------------------------------------------------------------

QMAIL_FILES = ("users/assign", "users/cdb", "control/rcpthosts", "control/virtualdomains")


def test_vregenerate_restores_the_qmail_files(vhome: Install) -> None:
    golden(vhome)
    vhome.ok("vadddomain", "other.org", "secret")
    saved = {name: (vhome.qmaildir / name).read_bytes() for name in QMAIL_FILES}
    for name in QMAIL_FILES:  # what qmail-pw2u (or a lost /var/qmail) leaves
        (vhome.qmaildir / name).unlink()
    out = vhome.ok("vregenerate")
    assert out.splitlines()[-1] == "2 domains in users/assign"
    for name in QMAIL_FILES:
        assert (vhome.qmaildir / name).read_bytes() == saved[name], name
        assert ((vhome.qmaildir / name).stat().st_mode & 0o777) == 0o644
    # nothing to do on a second run
    before = state(vhome)
    assert vhome.ok("vregenerate").splitlines() == ["2 domains in users/assign"]
    assert state(vhome) == before
    assert vhome.ok("vuserinfo", "-n", f"alice@{DOMAIN}") == "alice\n"


@pytest.mark.parametrize("other", ["vadddomain", "vdeldomain"])
def test_vregenerate_racing_vadddomain_or_vdeldomain_keeps_users_assign_true(
        vhome: Install, other: str) -> None:
    """vregenerate looks at the domains tree under users/assign's lock, as vadddomain and
    vdeldomain change both under it: a domain added meanwhile keeps its line (before: dropped
    from users/assign and users/cdb while rcpthosts and virtualdomains kept it, so qmail
    bounced its mail "no mailbox here by that name"), a domain removed meanwhile does not get
    its line back (before: routed again, to a directory that no longer exists)."""
    golden(vhome)
    if other == "vdeldomain":
        vhome.ok("vadddomain", "other.org", "secret")
    proc = stopped_at_assign_lock(vhome, ["vregenerate"])
    vhome.ok(*(["vadddomain", "other.org", "secret"] if other == "vadddomain"
               else ["vdeldomain", "other.org"]))
    result = resumed(proc)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result
    lines = [line for line in assign_lines(vhome) if line.startswith("+other.org-:")]
    if other == "vadddomain":
        assert lines == [assign_line(vhome, "other.org")]
        assert vhome.ok("vdominfo", "-d", "other.org") == f"{vhome.domains / 'other.org'}\n"
    else:
        assert lines == []
        assert "other.org" not in control(vhome, "rcpthosts").split()


def test_vregenerate_finds_hashed_domains(vhome: Install) -> None:
    """Domains past the 99th live in bucket 0/ of the domains tree; vregenerate finds them."""
    names = [f"d{i:03d}.example" for i in range(101)]
    for i, name in enumerate(names):
        vhome.ok("vadddomain", *(["-O"] if i < len(names) - 1 else []), name, "secret")
    assert (vhome.domains / "0" / "d099.example" / ".qmail-default").exists()
    assert (vhome.domains / "d098.example" / ".qmail-default").exists()
    saved = {name: (vhome.qmaildir / name).read_bytes() for name in ("users/assign", "users/cdb")}
    for name in ("users/assign", "users/cdb"):
        (vhome.qmaildir / name).unlink()
    vhome.ok("vregenerate")
    for name, data in saved.items():
        assert (vhome.qmaildir / name).read_bytes() == data, name
    assert vhome.ok("vdominfo", "-d", "d100.example") == f"{vhome.domains / '0' / 'd100.example'}\n"


def test_vregenerate_takes_only_domain_names_from_the_tree(vhome: Install) -> None:
    """A directory of the domains tree whose name is no domain name (the domain owner, who
    holds the tree, may make one) is not a domain: before, ``a:b.com`` became the assign line
    ``+a:b.com-:a:b.com:...`` (qmail-newu reads the domain ``a`` with the user ``b.com-`` and
    the uid field ``a``), and spaces, upper case and leading dashes went into rcpthosts. Each
    is named (a domain C took under such a name, ``trail.com.``, goes back by hand)."""
    golden(vhome)
    planted = ["a:b.com", "Upper.COM", "sp ace.com", "-dash.com", "ab", "new\nline.com"]
    for name in planted:
        (vhome.domains / name).mkdir()
        (vhome.domains / name / ".qmail-default").write_text("# planted\n")
    before = {name: control(vhome, name) for name in ("rcpthosts", "virtualdomains")}
    result = vhome.run("vregenerate")
    skips = "".join(f"skip:   {str(vhome.domains / name)!r}: not a domain name\n"
                    for name in sorted(planted))
    assert (result.returncode, result.stdout) == (0, skips + "1 domains in users/assign\n"), \
        result
    assert assign_lines(vhome) == [assign_line(vhome, DOMAIN), "."]
    assert {name: control(vhome, name) for name in before} == before


def test_vregenerate_refuses_a_domain_found_twice(vhome: Install) -> None:
    """A stray copy of a domain directory in a bucket (found first: 0/ sorts before the
    names) is not taken for the domain: before, users/assign got both lines, the copy's
    first, and the domain's mail and logins went to the copy."""
    golden(vhome)
    copy = vhome.domains / "0" / DOMAIN
    copy.mkdir(parents=True)
    (copy / ".qmail-default").write_text((domain_dir(vhome) / ".qmail-default").read_text())
    before = state(vhome)
    result = vhome.run("vregenerate")
    assert result.returncode == 152 and result.stdout == (
        f"Error: bad input: {DOMAIN} is in the domains tree twice: {copy} and "
        f"{domain_dir(vhome)}; move one away\n"), result
    assert state(vhome) == before


def test_vregenerate_refuses_unexplained_entries(vhome: Install) -> None:
    golden(vhome)
    assign = vhome.qmaildir / "users" / "assign"
    ghost = assign_line(vhome, "ghost.com")
    assign.write_text(f"{assign_line(vhome, DOMAIN)}\n{ghost}\n.\n")
    vhome.ok("vregenerate", "--force")  # make users/cdb match first ...
    assign.write_text(f"{assign_line(vhome, DOMAIN)}\n{ghost}\n.\n")
    before = state(vhome)
    result = vhome.run("vregenerate")
    assert result.returncode != 0
    assert f"remove: {ghost}" in result.stdout
    assert "Error: " in result.stdout
    assert state(vhome) == before
    # a dry run writes nothing either
    result = vhome.run("vregenerate", "-n")
    assert result.returncode == 0 and f"remove: {ghost}" in result.stdout
    assert state(vhome) == before
    # --force replaces them
    vhome.ok("vregenerate", "--force")
    assert assign_lines(vhome) == [assign_line(vhome, DOMAIN), "."]
    value = b"\0".join([DOMAIN.encode(), b"%d" % vhome.uid, b"%d" % vhome.gid,
                        str(domain_dir(vhome)).encode(), b"-", b""])
    assert cdb_dump(vhome.qmaildir / "users" / "cdb") == \
        cdb_text([(b"!example.com-", value), (b"", b"-")])


def test_vregenerate_keeps_foreign_assign_lines(vhome: Install) -> None:
    golden(vhome)
    assign = vhome.qmaildir / "users" / "assign"
    foreign = "=joe:joe:1000:1000:/home/joe:::"
    assign.write_text(f"{foreign}\n{assign_line(vhome, DOMAIN)}\n.\n")
    vhome.ok("vregenerate")
    assert foreign in assign_lines(vhome)
    assert assign_line(vhome, DOMAIN) in assign_lines(vhome)
    assert b"!joe\0" in cdb_dump(vhome.qmaildir / "users" / "cdb")
    assert os.path.exists(vhome.qmaildir / "users" / "cdb")
