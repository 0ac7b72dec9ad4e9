"""The installed vdelivermail, run as qmail-local runs it, case by case against the C program's
observed behaviour (reference c-vpopmail-observed.md section 5) and section G's fixes.

Every test runs in both install modes: an ordinary user owning a sandbox, and a root install
for the vpopmail user (uid 89) where vdelivermail runs as that user, as qmail-local runs it.
And on both user backends (both_backends, tests/conftest.py): the cdb files, and MariaDB in the
root install.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from install_site import HEAVY, NO_BACKEND, Install, as_user_argv
from delivery_site import (DOMAIN, MESSAGE, RETURN_PATH, Site, assert_readable_by_mailbox,
                           write_dotqmail)

pytestmark = [pytest.mark.both_backends, pytest.mark.through_server]

NO_MAILBOX = b"Sorry, no mailbox here by that name. (#5.1.1)\n"
NAME = re.compile(r"^(\d+)\.M(\d+)P(\d+)V[0-9A-F]+I[0-9A-F]+\.[^/:]+,S=(\d+),W=(\d+)$")


@pytest.fixture
def site(each_install: Install) -> Site:
    return Site.create(each_install, each_install.mode == "root", alice="1M", bob=None)


# -- A1/B1: a normal delivery ------------------------------------------------------------------

def test_existing_user_gets_exact_file(site: Site) -> None:
    result = site.deliver("alice")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    maildir = site.maildir("alice")
    [path] = site.new_files(maildir)
    data = path.read_bytes()
    assert data == RETURN_PATH + b"Delivered-To: alice@example.com\n" + MESSAGE
    match = NAME.match(path.name)
    assert match, path.name
    assert int(match.group(4)) == len(data)
    assert int(match.group(5)) == len(data) + data.count(b"\n")
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (site.inst.uid, site.inst.gid)
    assert not list((maildir / "tmp").iterdir())
    assert (maildir / "maildirsize").read_text() == f"1048576S\n0 0\n{len(data)} 1\n"
    assert_readable_by_mailbox(maildir)


def test_upper_case_ext_and_host(site: Site) -> None:
    result = site.deliver("alice", env={"EXT": "ALICE", "HOST": "EXAMPLE.COM"})
    assert result.returncode == 0, result
    assert b"Delivered-To: alice@example.com\n" in site.only_message(site.maildir("alice"))


def test_stdin_pipe_is_spooled(site: Site) -> None:
    big = MESSAGE + b"x" * 300_000 + b"\n"
    result = site.deliver("bob", big, pipe=True, drop=("DTLINE", "LOCAL", "RECIPIENT"))
    assert result.returncode == 0, result
    data = site.only_message(site.maildir("bob"))
    assert data.endswith(big) and data.startswith(RETURN_PATH)
    assert not [p for p in site.domain_dir.iterdir() if "spool" in p.name]


def test_missing_rpline_is_empty(site: Site) -> None:
    assert site.deliver("bob", drop=("RPLINE",)).returncode == 0
    assert site.only_message(site.maildir("bob")) == b"Delivered-To: bob@example.com\n" + MESSAGE


def test_several_messages_get_unique_names(site: Site) -> None:
    for _ in range(5):
        assert site.deliver("bob").returncode == 0
    names = [p.name for p in site.new_files(site.maildir("bob"))]
    assert len(set(names)) == 5
    assert_readable_by_mailbox(site.maildir("bob"))


# -- C: unknown users --------------------------------------------------------------------------

def test_unknown_user_bounces(site: Site) -> None:
    result = site.deliver("nobody")
    assert (result.returncode, result.stdout) == (100, NO_MAILBOX)


def test_no_user_msg_domain_then_site(site: Site) -> None:
    (site.inst.domains / ".no-user.msg").write_text("site text\n")
    assert site.deliver("nobody").stdout == b"site text\n"
    (site.domain_dir / ".no-user.msg").write_text("domain text\nline two\n")
    result = site.deliver("nobody")
    assert (result.returncode, result.stdout) == (100, b"domain text\nline two\n")


def test_unknown_user_delete(site: Site) -> None:
    result = site.deliver("nobody", action="delete")
    assert (result.returncode, result.stdout) == (0, b"")


def test_existing_user_ignores_action(site: Site) -> None:
    assert site.deliver("bob", action="").returncode == 0
    assert len(site.new_files(site.maildir("bob"))) == 1


# -- D: quota ----------------------------------------------------------------------------------

def test_over_quota_bounces(site: Site) -> None:
    big = MESSAGE + b"y" * (1024 * 1024 + 100_000)
    result = site.deliver("alice", big)
    assert (result.returncode, result.stdout) == (100, b"user is over quota\n\n")
    assert site.new_files(site.maildir("alice")) == []
    assert (site.maildir("alice") / "quotawarn").exists()


def test_quota_boundary_is_strictly_greater(site: Site) -> None:
    site.ok("vsetuserquota", f"alice@{DOMAIN}", "1000S")
    maildir = site.maildir("alice")
    assert site.deliver("alice", b"z" * 1001).returncode == 100
    assert site.deliver("alice", b"z" * 1000).returncode == 0
    recorded = len(site.only_message(maildir))
    assert (maildir / "maildirsize").read_text() == f"1000S\n0 0\n{recorded} 1\n"
    result = site.deliver("alice", b"tiny\n")
    assert (result.returncode, result.stdout) == (100, b"user is over quota\n\n")
    # the failed check collapsed maildirsize to one recalculated line
    assert (maildir / "maildirsize").read_text() == f"1000S\n{recorded} 1\n"


def test_count_quota(site: Site) -> None:
    site.ok("vsetuserquota", f"alice@{DOMAIN}", "1000000S,2C")
    assert site.deliver("alice").returncode == 0
    assert site.deliver("alice").returncode == 0
    assert site.deliver("alice").returncode == 100


def test_over_quota_msg_files(site: Site) -> None:
    site.ok("vsetuserquota", f"alice@{DOMAIN}", "10S")
    (site.domain_dir / ".over-quota.msg").write_text("Mailbox full.\n")
    result = site.deliver("alice")
    assert (result.returncode, result.stdout) == (100, b"Mailbox full.\n\n")


def test_quota_warning_once_a_day(site: Site) -> None:
    site.ok("vsetuserquota", f"alice@{DOMAIN}", "10000S")
    (site.inst.domains / ".quotawarn.msg").write_text(
        "From: postmaster\nSubject: Mailbox nearly full\n\nYour mailbox is more than 90% full.\n")
    maildir = site.maildir("alice")
    assert site.deliver("alice", b"a" * 9100 + b"\n").returncode == 0
    assert len(site.new_files(maildir)) == 1
    assert site.deliver("alice", b"b\n").returncode == 0          # >= 90 %: warning + message
    files = [p.read_bytes() for p in site.new_files(maildir)]
    warnings = [f for f in files if b"Subject: Mailbox nearly full" in f]
    assert len(warnings) == 1 and len(files) == 3
    assert re.match(rb"Delivered-To: alice@example.com\nDate: \w{3}, \d\d \w{3} \d{4} "
                    rb"\d\d:\d\d:\d\d \+0000\nFrom: postmaster\n", warnings[0])
    assert site.deliver("alice", b"c\n").returncode == 0          # no second warning today
    assert len(site.new_files(maildir)) == 4
    lines = (maildir / "maildirsize").read_text().splitlines()
    assert sum(int(l.split()[0]) for l in lines[1:]) == sum(
        p.stat().st_size for p in site.new_files(maildir))


def test_quota_warning_stamp_follows_no_link(site: Site) -> None:
    """The stamp ``quotawarn`` a link (to a file of the same owner elsewhere) or a FIFO: the
    delivery goes through, the link's target is not truncated nor its time set, and nothing
    waits on the FIFO (before: opened with O_TRUNC through the link)."""
    site.ok("vsetuserquota", f"alice@{DOMAIN}", "10000S")
    maildir = site.maildir("alice")
    assert site.deliver("alice", b"a" * 9100 + b"\n").returncode == 0
    target = site.user_dir("alice") / "keep.txt"
    target.write_text("kept\n")
    os.utime(target, (1, 1))
    (maildir / "quotawarn").symlink_to(target)
    assert site.deliver("alice", b"b\n").returncode == 0  # over 90 %: the stamp is touched
    assert target.read_text() == "kept\n" and target.stat().st_mtime == 1
    (maildir / "quotawarn").unlink()
    os.mkfifo(maildir / "quotawarn")
    assert site.deliver("alice", b"c\n").returncode == 0


def test_noquota_user_has_no_maildirsize(site: Site) -> None:
    assert site.deliver("bob").returncode == 0
    assert not (site.maildir("bob") / "maildirsize").exists()


# -- E: catch-alls -----------------------------------------------------------------------------

def test_catch_all_directory(site: Site) -> None:
    bob = site.user_dir("bob")
    result = site.deliver("nobody", action=str(bob))
    assert result.returncode == 0, result
    assert result.stdout == f"user does not exist, but will deliver to {bob}/\n".encode()
    data = site.only_message(bob / "Maildir")
    assert data == RETURN_PATH + b"Delivered-To: nobody@example.com\n" + MESSAGE


def test_catch_all_relative_maildir(site: Site) -> None:
    bob = site.user_dir("bob")
    relative = "./" + str((bob / "Maildir").relative_to(site.domain_dir)) + "/"
    assert site.deliver("nobody", action=relative).returncode == 0
    assert b"Delivered-To: nobody@example.com\n" in site.only_message(bob / "Maildir")


def test_catch_all_address(site: Site, inject: Path) -> None:
    result = site.deliver("nobody", action="bob@example.org")
    assert (result.returncode, result.stdout) == (0, b"")
    assert (inject / "argv.0").read_text() == "--\nbob@example.org\n"
    assert (inject / "data.0").read_bytes() == (
        RETURN_PATH + b"Delivered-To: nobody@example.com\n" + MESSAGE)


@pytest.mark.cdb_only(NO_BACKEND)  # qmail-inject's exit codes
@pytest.mark.parametrize(("code", "expected"), [(100, 100), (111, 111), (1, 111)])
def test_qmail_inject_failure(site: Site, inject: Path, code: int, expected: int) -> None:
    (inject / "exit").write_text(str(code))
    result = site.deliver("nobody", action="bob@example.org")
    assert (result.returncode, result.stdout) == (expected, b"system error calling qmail-inject\n")


def test_missing_qmail_inject_defers(site: Site) -> None:
    result = site.deliver("nobody", action="bob@example.org")
    assert result.returncode == 111
    assert b"qmail-inject" in result.stdout


# -- F: arguments, environment, domain ----------------------------------------------------------

def test_one_argument(site: Site) -> None:
    result = site.deliver("alice", args=("",))
    assert (result.returncode, result.stdout) == (
        111, b"vdelivermail: invalid syntax in .qmail-default file\n")


@pytest.mark.cdb_only(NO_BACKEND)  # refused before any lookup
@pytest.mark.parametrize("variable", ["EXT", "HOST"])
def test_missing_env(site: Site, variable: str) -> None:
    """C's text, but a deferral (C bounced): qmail-local always sets both, so a run without
    one is misconfigured here, not a fact about the recipient."""
    result = site.deliver("alice", drop=(variable,))
    assert (result.returncode, result.stdout) == (
        111, f"vdelivermail: no {variable} environment varilable\n".encode())


def test_unknown_domain(site: Site) -> None:
    result = site.deliver("alice", env={"HOST": "other.test"})
    assert (result.returncode, result.stdout) == (100, NO_MAILBOX)


def test_unusual_but_valid_user_name(site: Site) -> None:
    result = site.deliver("al!ce")
    assert (result.returncode, result.stdout) == (100, NO_MAILBOX)


@pytest.mark.cdb_only(NO_BACKEND)  # refused before any lookup
@pytest.mark.parametrize(("variable", "value", "text"), [
    ("EXT", "a%b", b"invalid username\n"), ("EXT", "a b", b"invalid username\n"),
    ("HOST", "exa_mple.com", b"invalid domain name\n"), ("HOST", "", b"invalid domain name\n")])
def test_invalid_names(site: Site, variable: str, value: str, text: bytes) -> None:
    result = site.deliver("alice", env={variable: value})
    assert (result.returncode, result.stdout) == (100, text)


@pytest.mark.cdb_only(NO_BACKEND)  # refused before any lookup
def test_only_ascii_letters_are_folded(site: Site) -> None:
    """C's tolower() folds ASCII only: the Kelvin sign (U+212A), which str.lower() folds to
    "k", leaves an 8-bit name that is invalid, not another user's address."""
    site.add_user("kelly")
    for env, text in (({"EXT": "\u212aelly"}, b"invalid username\n"),
                      ({"EXT": "kelly", "HOST": "example.co\u212a"}, b"invalid domain name\n")):
        result = site.deliver("kelly", env=env)
        assert (result.returncode, result.stdout) == (100, text)
    assert site.new_files(site.maildir("kelly")) == []


def test_alias_domain_resolves_to_real(site: Site) -> None:
    site.ok("vaddaliasdomain", DOMAIN, "alias.test")
    result = site.deliver("bob", env={"HOST": "alias.test"})
    assert result.returncode == 0, result
    assert b"Delivered-To: bob@example.com\n" in site.only_message(site.maildir("bob"))


# -- F6: loops ---------------------------------------------------------------------------------

@pytest.mark.cdb_only(NO_BACKEND)  # header parsing
@pytest.mark.parametrize("header", [
    b"Delivered-To: alice@example.com\n",
    b"delivered-to: ALICE@Example.Com\n",
    b"Delivered-To: alice@example.com\r\n",
    b"Delivered-To:\n alice@example.com\n",
])
def test_loop_detected(site: Site, header: bytes) -> None:
    message = MESSAGE.replace(b"Subject:", header + b"Subject:")
    result = site.deliver("alice", message)
    assert (result.returncode, result.stdout) == (100, b"mail is looping\n")
    assert site.new_files(site.maildir("alice")) == []


def test_loop_header_in_body_is_not_a_loop(site: Site) -> None:
    assert site.deliver("alice", MESSAGE + b"Delivered-To: alice@example.com\n").returncode == 0


def test_hop_limit(site: Site) -> None:
    hops = b"".join(b"Delivered-To: hop%d@elsewhere.test\n" % i for i in range(100))
    result = site.deliver("bob", hops + MESSAGE)
    assert (result.returncode, result.stdout) == (100, b"mail is looping\n")
    assert site.deliver("bob", hops[:-40] + MESSAGE).returncode == 0


# -- F7-F10: the account -------------------------------------------------------------------------

def test_bounce_flag(site: Site) -> None:
    site.ok("vmoduser", "-b", f"alice@{DOMAIN}")
    result = site.deliver("alice")
    assert (result.returncode, result.stdout) == (
        100, b"vdelivermail: account is locked email bounced alice@example.com\n")


def test_user_dotqmail_to_other_maildir(site: Site) -> None:
    bob = site.maildir("bob")
    write_dotqmail(site, site.user_dir("alice") / ".qmail", f"{bob}/\n")
    assert site.deliver("alice").returncode == 0
    assert site.only_message(bob) == RETURN_PATH + b"Delivered-To: bob@example.com\n" + MESSAGE
    assert site.new_files(site.maildir("alice")) == []


def test_missing_maildir_is_recreated(site: Site) -> None:
    shutil.rmtree(site.maildir("bob"))
    result = site.deliver("bob")
    assert (result.returncode, result.stdout) == (0, b"")
    assert len(site.new_files(site.maildir("bob"))) == 1


def test_missing_user_dir_is_recreated(site: Site) -> None:
    shutil.rmtree(site.user_dir("bob"))
    assert site.deliver("bob").returncode == 0
    maildir = site.maildir("bob")
    assert len(site.new_files(maildir)) == 1
    assert maildir.stat().st_uid == site.inst.uid


def test_user_without_directory_gets_one(site: Site) -> None:
    api = site.inst.api()
    bob, entry = api.get_user(f"bob@{DOMAIN}")
    old_dir, bob.dir = bob.dir, ""
    api.backend.update_users(entry, [bob])
    api.backend.close()
    shutil.rmtree(old_dir)
    assert site.deliver("bob").returncode == 0, site.deliver("bob")
    assert site.user_dir("bob") != Path("")
    assert len(site.new_files(site.maildir("bob"))) >= 1


def test_home_outside_the_domain_tree_stamps_the_users_address(site: Site) -> None:
    """A record's directory need not name the domain (a migrated or moved mailbox store):
    the user's own Maildir, by default or through a ./Maildir/ line, is stamped with the
    user's address, not one made from the path (C: bob@mail.store), so a copy that comes
    back is seen as a loop."""
    api = site.inst.api()
    bob, entry = api.get_user(f"bob@{DOMAIN}")
    store = site.inst.prefix / "mail.store"
    store.mkdir()
    if site.unprivileged:
        shutil.chown(store, site.inst.user, site.inst.group)
    shutil.move(bob.dir, store / "bob")
    bob.dir = str(store / "bob")
    api.backend.update_users(entry, [bob])
    api.backend.close()
    maildir = store / "bob" / "Maildir"
    for dotqmail in ("", "./Maildir/\n", "./Maildir/.Lists/\n"):
        if dotqmail:
            write_dotqmail(site, store / "bob" / ".qmail", dotqmail)
        assert site.deliver("bob").returncode == 0
        [path] = site.new_files(maildir)
        data = path.read_bytes()
        assert data == RETURN_PATH + b"Delivered-To: bob@example.com\n" + MESSAGE, dotqmail
        path.unlink()
        result = site.deliver("bob", data.removeprefix(RETURN_PATH))
        assert (result.returncode, result.stdout) == (100, b"mail is looping\n")
        if dotqmail == "./Maildir/\n":  # the next line is into a folder: counted in Maildir
            for sub in ("", "/cur", "/new", "/tmp"):
                (maildir / f".Lists{sub}").mkdir()
            (maildir / ".Lists" / "maildirfolder").write_text("")
            maildir = maildir / ".Lists"
            if site.unprivileged:
                for path in (maildir, *maildir.iterdir()):
                    shutil.chown(path, site.inst.user, site.inst.group)


# -- the user's .qmail -------------------------------------------------------------------------

def test_dotqmail_program_forward_and_maildir(site: Site, inject: Path) -> None:
    alice = site.user_dir("alice")
    out = site.inst.prefix / "prog-out"
    write_dotqmail(site, alice / ".qmail",
                   f"# copy, run, forward\n./Maildir/   \n\n|cat > {out}; echo ran $EXT\n"
                   "&carol@example.org\ndave@example.org\n")
    if site.unprivileged:
        os.chmod(site.inst.prefix, 0o777)
    result = site.deliver("alice")
    assert (result.returncode, result.stdout) == (0, b"ran alice\n"), result
    assert out.read_bytes() == MESSAGE                       # programs get the raw message
    assert site.only_message(site.maildir("alice")).endswith(MESSAGE)
    # forwards go out last, in one injection (qmail-local), not one qmail-inject each (C)
    assert sorted(p.name for p in inject.iterdir()) == ["argv.0", "data.0"]
    assert (inject / "argv.0").read_text() == "--\ncarol@example.org\ndave@example.org\n"
    assert (inject / "data.0").read_bytes() == (
        RETURN_PATH + b"Delivered-To: alice@example.com\n" + MESSAGE)


@pytest.mark.cdb_only(NO_BACKEND)  # a .qmail program's exit codes
@pytest.mark.parametrize(("code", "expected"), [
    (0, 0), (99, 99), (100, 100), (64, 100), (65, 100), (70, 100), (76, 100), (77, 100),
    (78, 100), (112, 100), (111, 111), (1, 111), (2, 111)])
def test_program_exit_codes(site: Site, code: int, expected: int) -> None:
    write_dotqmail(site, site.user_dir("alice") / ".qmail",
                   f"|echo said $((1+1)); exit {code}\n./Maildir/\n")
    result = site.deliver("alice")
    assert (result.returncode, result.stdout) == (expected, b"said 2\n")
    delivered = site.new_files(site.maildir("alice"))
    assert len(delivered) == (1 if code == 0 else 0)


@pytest.mark.cdb_only(NO_BACKEND)
def test_programs_run_under_the_callers_limits(site: Site) -> None:
    """A .qmail program gets qmail-local's nice value and resource limits, through the server
    too (its workers have their own: before, the program got those)."""
    out = site.inst.prefix / "limits-out"
    write_dotqmail(site, site.user_dir("alice") / ".qmail",
                   f"|(ulimit -n; ulimit -H -n; ulimit -t; ulimit -H -t; ulimit -v; nice) > {out}\n")
    if site.unprivileged:
        os.chmod(site.inst.prefix, 0o777)
    result = site.deliver("alice", wrap=("prlimit", "--nofile=77:99", "--cpu=50:60",
                                         f"--as={3 << 30}", "--", "nice", "-n", "3"))
    assert (result.returncode, result.stdout) == (0, b""), result
    assert out.read_text().split() == ["77", "99", "50", "60", str(3 << 20), "3"]


@pytest.mark.cdb_only(NO_BACKEND)
def test_forwards_run_under_the_callers_limits(site: Site, inject: Path) -> None:
    """qmail-inject, started for a forward, gets them too."""
    out = site.inst.prefix / "limits-out"
    (site.inst.qmaildir / "bin" / "qmail-inject").write_text(
        f"#!/bin/sh\n(ulimit -n; ulimit -H -n; ulimit -t; ulimit -H -t; nice) > {out}\n"
        "cat > /dev/null\n")
    write_dotqmail(site, site.user_dir("alice") / ".qmail", "&carol@example.org\n")
    if site.unprivileged:
        os.chmod(site.inst.prefix, 0o777)
    result = site.deliver("alice", wrap=("prlimit", "--nofile=77:99", "--cpu=50:60", "--",
                                         "nice", "-n", "3"))
    assert (result.returncode, result.stdout) == (0, b""), result
    assert out.read_text().split() == ["77", "99", "50", "60", "3"]


@pytest.mark.cdb_only(NO_BACKEND)
def test_missing_qmail_inject_under_the_callers_limits(site: Site) -> None:
    """A qmail-inject that cannot be started says so as the direct run does, whatever the
    caller's limits (through the server they are set between a fork and the exec), and names
    the path (paths.qmail_inject; before: "Unable to fork", as if fork had failed)."""
    write_dotqmail(site, site.user_dir("alice") / ".qmail", "&carol@example.org\n")
    result = site.deliver("alice", wrap=("prlimit", "--nofile=77:99", "--"))
    inject = site.inst.qmaildir / "bin" / "qmail-inject"
    assert (result.returncode, result.stdout) == (
        111, f"Unable to run {inject}: No such file or directory.\n".encode() +
             b"system error, can't open qmail-inject\n")


def test_program_killed_by_signal_defers(site: Site) -> None:
    write_dotqmail(site, site.user_dir("alice") / ".qmail", "|kill -9 $$\n")
    assert site.deliver("alice").returncode == 111


def test_comment_only_dotqmail_discards(site: Site) -> None:
    write_dotqmail(site, site.user_dir("alice") / ".qmail", "# nothing\n")
    assert site.deliver("alice").returncode == 0
    assert site.new_files(site.maildir("alice")) == []


def test_empty_dotqmail_means_maildir(site: Site) -> None:
    write_dotqmail(site, site.user_dir("alice") / ".qmail", "")
    assert site.deliver("alice").returncode == 0
    assert len(site.new_files(site.maildir("alice"))) == 1


def test_world_writable_dotqmail_defers(site: Site) -> None:
    write_dotqmail(site, site.user_dir("alice") / ".qmail", "./Maildir/\n", mode=0o666)
    result = site.deliver("alice")
    assert (result.returncode, result.stdout) == (111, b"Uh-oh: .qmail file is writable. (#4.7.0)\n")


def test_mbox_line_defers(site: Site) -> None:
    write_dotqmail(site, site.user_dir("alice") / ".qmail", "./mbox\n")
    result = site.deliver("alice")
    assert (result.returncode, result.stdout) == (111, b"can't handle mbox delivery for ./mbox")


def test_plus_list_forbids_programs(site: Site) -> None:
    write_dotqmail(site, site.user_dir("alice") / ".qmail", "+list\n|true\n")
    result = site.deliver("alice")
    assert result.returncode == 111
    assert b"x bit set" in result.stdout


def test_forward_loop_detected(site: Site, inject: Path) -> None:
    write_dotqmail(site, site.user_dir("alice") / ".qmail", "&carol@example.org\n")
    message = b"Delivered-To: carol@example.org\n" + MESSAGE
    assert site.deliver("alice", message).stdout == b"mail is looping\n"
    assert not (inject / "argv.0").exists()


def test_maildirfolder_counts_in_parent(site: Site) -> None:
    maildir = site.maildir("alice")
    folder = maildir / ".Lists"
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True)
    (folder / "maildirfolder").write_text("")
    if site.unprivileged:
        for path in (folder, *folder.iterdir()):
            shutil.chown(path, site.inst.user, site.inst.group)
    write_dotqmail(site, site.user_dir("alice") / ".qmail", "./Maildir/.Lists/\n")
    assert site.deliver("alice").returncode == 0
    [path] = site.new_files(folder)
    lines = (maildir / "maildirsize").read_text().splitlines()
    assert lines[-1] == f"{path.stat().st_size} 1"


def test_empty_message_is_dropped(site: Site) -> None:
    assert site.deliver("bob", b"").returncode == 0
    assert site.new_files(site.maildir("bob")) == []


# -- qmail extensions --------------------------------------------------------------------------

def test_qmail_ext(site: Site) -> None:
    result = site.deliver("bob-lists")
    assert (result.returncode, result.stdout) == (100, NO_MAILBOX)
    site.inst.set_config("users", "qmail_ext", True)
    assert site.deliver("bob-lists").returncode == 0
    assert len(site.new_files(site.maildir("bob"))) == 1
    bob = site.user_dir("bob")
    for sub in ("cur", "new", "tmp"):
        (bob / "Maildir" / ".Lists" / sub).mkdir(parents=True)
    if site.unprivileged:
        for path in (bob / "Maildir" / ".Lists").rglob("*"):
            shutil.chown(path, site.inst.user, site.inst.group)
        shutil.chown(bob / "Maildir" / ".Lists", site.inst.user, site.inst.group)
    write_dotqmail(site, bob / ".qmail-lists", "./Maildir/.Lists/\n")
    assert site.deliver("bob-lists").returncode == 0
    assert len(site.new_files(bob / "Maildir" / ".Lists")) == 1


# -- the hot path stays lean ---------------------------------------------------------------------

def test_delivery_imports_nothing_heavy(site: Site) -> None:
    wrapper = site.inst.program("vdelivermail").read_text()
    python = wrapper.split()[0][2:]
    env = {"EXT": "bob", "HOST": DOMAIN, "PATH": "/usr/bin:/bin"}
    argv = [python, "-X", "importtime", "-I", "-S", str(site.inst.program("vdelivermail")), "", "x"]
    if site.unprivileged:
        argv = [*as_user_argv(site.inst.user), *argv]
    result = subprocess.run(argv, input=MESSAGE, capture_output=True, env=env,
                            cwd=site.domain_dir)
    assert result.returncode == 0, result
    imported = {line.split("|")[-1].strip() for line in result.stderr.decode().splitlines()
                if line.startswith("import time:")}
    storage = {"cdb": "vpopmail.stores.cdbfiles", "mysql": "vpopmail.stores.sql"}[site.inst.backend]
    assert "delivery.vdelivermail" in imported and storage in imported
    assert not imported & (HEAVY | {"vpopmail.passwords"}), imported & (HEAVY | {"vpopmail.passwords"})
    assert "posix._exit(code)" in wrapper
