"""vpopbull (a bulletin into every Maildir) and vcheck (the troubleshooting walk for one
address), through the installed bin/ commands on real files.

On both user backends (both_backends, tests/conftest.py); vcheck's step 7 is the backend's
own check (the vpasswd files, or the SQL users table). vpopbull: copies, hard links and
symbolic links land in new/ under vdelivermail's kind of unique name, owned by the domain
owner with mode 0600; the exclude list, quotas and maildirsize are honoured; bad input changes
nothing. vcheck: each thing it checks is broken in turn; the failing step, its fix text and
the exit status (the step's number) are checked, and where the fix is a command, running it
makes vcheck pass again.
"""
from __future__ import annotations

import os
import pwd
import pty
import re
import stat
import subprocess
from pathlib import Path

import pytest

from install_site import CLEAN_ENV, NO_BACKEND, Install
from mariadb_site import Database
from helpers import ALIAS, DOMAIN, site, state, vpasswd_users

BULLETIN = b"From: Postmaster <postmaster@example.com>\nSubject: Maintenance tonight\n" \
           b"Date: Sat, 28 Nov 2026 03:30:00 +0000\n\nThe mail server restarts at 22:00.\n"
#: vdelivermail's new/ names: <sec>.M<usec>P<pid>V<dev>I<ino>.<host>,S=<size>,W=<rfc822 size>
NAME = re.compile(r"\d+\.M\d+P\d+V[0-9A-F]+I[0-9A-F]+\.[^,/]+,S=(\d+),W=(\d+)")

pytestmark = pytest.mark.both_backends
#: vcheck's steps 2 to 6 (qmail's files, the domain directory) come before the user backend
QMAIL_FILES = "vcheck's steps before the user store"


# helpers ---------------------------------------------------------------------------------------

def bulletin(inst: Install, data: bytes = BULLETIN, name: str = "bulletin.txt") -> Path:
    """The message file, beside the install (a directory the vpopmail user can reach)."""
    path = inst.prefix.parent / name
    path.write_bytes(data)
    path.chmod(0o644)
    return path


def new_files(dom: Path, user: str) -> list[Path]:
    return sorted((dom / user / "Maildir" / "new").iterdir())


def tmp_files(dom: Path, user: str) -> list[Path]:
    return sorted((dom / user / "Maildir" / "tmp").iterdir())


def maildirsize(dom: Path, user: str) -> str:
    return (dom / user / "Maildir" / "maildirsize").read_text()


def assert_delivered_name(path: Path) -> None:
    match = NAME.fullmatch(path.name)
    assert match, path.name
    assert int(match.group(1)) == os.stat(path).st_size


@pytest.mark.cdb_only(NO_BACKEND)
# vpopbull: bad input ---------------------------------------------------------------------------

def test_vpopbull_usage(vhome: Install) -> None:
    site(vhome)
    result = vhome.run("vpopbull")
    assert result.returncode == 255
    assert result.stdout.startswith("usage: vpopbull [options] [virtual_domain] [...]\n")
    assert "       -h (use hard links)\n" in result.stdout
    # neither -f nor -n: C exited 0 doing nothing; here it is a usage error
    result = vhome.run("vpopbull", "-V", DOMAIN)
    assert result.returncode == 255
    assert "-f email_file is needed" in result.stderr
    result = vhome.run("vpopbull", "-v")
    assert (result.returncode, result.stdout[:19]) == (0, "version: pyvpopmail")
    result = vhome.run("vpopbull", "-x", "-f", "/dev/null")
    assert (result.returncode, result.stderr) == (255, "vpopbull: invalid option -- 'x'\n")
    result = vhome.run("vpopbull", "-f")
    assert result.returncode == 255 and "requires an argument -- 'f'" in result.stderr


BAD_MESSAGES = {
    "no-subject": (b"From: a@example.com\n\nbody\n", "has no Subject header"),
    "no-from": (b"Subject: hi\n\nbody\n", "has no From header"),
    "to-header": (b"From: a@example.com\nTo: all@example.com\nSubject: hi\n\nbody\n",
                  "has a To header"),
    "to-any-case": (b"From: a@example.com\nsubject: hi\nTO: x@example.com\n\nbody\n",
                    "has a To header"),
    "mbox": (b"From a@example.com Sat Nov 28 03:30:00 2026\nFrom: a\nSubject: b\n\n",
             "mbox 'From ' line"),
    "empty": (b"", "is empty"),
    "no-blank-line": (b"From: a@example.com\nSubject: hi\nthis is the body\n",
                      "line 3 is not a header field"),
    "continuation-first": (b" folded\nFrom: a\nSubject: b\n\n", "line 1 is a continuation"),
    "endless-header": (b"From: a\nSubject: b\n" + b"X-Pad: " + b"x" * 70000 + b"\n\nbody\n",
                       "no end of the header"),
}


@pytest.mark.cdb_only(NO_BACKEND)
@pytest.mark.parametrize("case", sorted(BAD_MESSAGES))
def test_vpopbull_refuses_what_is_not_a_whole_message(vhome: Install, tmp_path: Path,
                                                      case: str) -> None:
    site(vhome)
    data, reason = BAD_MESSAGES[case]
    path = bulletin(vhome, data)
    before = state(vhome)
    result = vhome.run("vpopbull", "-f", str(path), DOMAIN)
    assert result.returncode == 152, result
    assert result.stdout.startswith(f"Error: bad input: {path}"), result.stdout
    assert reason in result.stdout
    assert state(vhome) == before


@pytest.mark.cdb_only(NO_BACKEND)
def test_vpopbull_other_bad_input_changes_nothing(vhome: Install, tmp_path: Path) -> None:
    dom = site(vhome)
    good = bulletin(vhome)
    before = state(vhome)
    result = vhome.run("vpopbull", "-f", str(tmp_path / "missing.txt"), DOMAIN)
    assert (result.returncode, result.stdout) == (
        255, f"Could not open file {tmp_path / 'missing.txt'}: No such file or directory\n")
    result = vhome.run("vpopbull", "-f", str(tmp_path), DOMAIN)
    assert (result.returncode, result.stdout) == (
        152, f"Error: bad input: {tmp_path} is not a regular file\n")
    result = vhome.run("vpopbull", "-f", str(good), "-e", str(tmp_path / "nolist"), DOMAIN)
    assert (result.returncode, result.stdout) == (
        255, f"Could not open file {tmp_path / 'nolist'}: No such file or directory\n")
    exclude = tmp_path / "exclude"
    exclude.write_text("alice@example.com\nnot-an-address\n")
    result = vhome.run("vpopbull", "-f", str(good), "-e", str(exclude), DOMAIN)
    assert (result.returncode, result.stdout) == (
        152, f"Error: bad input: {exclude} line 2: 'not-an-address' is not an email address\n")
    # an unknown domain anywhere in the list: nothing is sent to the others (C skipped it
    # silently and exited 0)
    result = vhome.run("vpopbull", "-f", str(good), DOMAIN, "nowhere.test")
    assert (result.returncode, result.stdout) == (245, "Error: Domain does not exist: nowhere.test\n")
    assert state(vhome) == before
    assert new_files(dom, "alice") == []


# vpopbull: the three methods -------------------------------------------------------------------

def test_vpopbull_copies(each_install: Install, tmp_path: Path) -> None:
    inst = each_install
    dom = site(inst)
    path = bulletin(inst)
    exclude = tmp_path / "exclude"
    # case, alias domains, blanks and comments: all resolve to bob@example.com
    exclude.write_text("# not this one\n  BOB@Alias.Test \n\n")
    result = inst.run("vpopbull", "-V", "-f", str(path), "-e", str(exclude), DOMAIN)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (f"alice@{DOMAIN}\npostmaster@{DOMAIN}\n"
                             f"{DOMAIN}: 2 delivered, 1 excluded, 0 over quota\n")
    assert new_files(dom, "bob") == []
    for user in ("alice", "postmaster"):
        [copy] = new_files(dom, user)
        assert copy.read_bytes() == f"To: {user}@{DOMAIN}\n".encode() + BULLETIN
        assert_delivered_name(copy)
        st = os.stat(copy)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, inst.uid, inst.gid)
        assert st.st_nlink == 1
        assert tmp_files(dom, user) == []
    # counted in maildirsize as a delivery is (alice has a quota, postmaster none)
    size = os.stat(new_files(dom, "alice")[0]).st_size
    assert maildirsize(dom, "alice") == f"1048576S\n0 0\n{size} 1\n"
    assert not (dom / "postmaster" / "Maildir" / "maildirsize").exists()
    # a second run never overwrites the first (C reused one name per second and truncated)
    assert inst.ok("vpopbull", "-f", str(path), ALIAS) == ""
    assert len(new_files(dom, "alice")) == 2 and len(new_files(dom, "bob")) == 1
    assert maildirsize(dom, "alice") == f"1048576S\n0 0\n{size} 1\n{size} 1\n"


def test_vpopbull_hard_links(each_install: Install, tmp_path: Path) -> None:
    inst = each_install
    dom = site(inst)
    path = bulletin(inst)
    path.chmod(0o600)  # root's own file: the links share a copy the domain owner made
    assert inst.ok("vpopbull", "-h", "-f", str(path), DOMAIN) == ""
    files = [new_files(dom, user) for user in ("alice", "bob", "postmaster")]
    assert all(len(f) == 1 for f in files), files
    links = [f[0] for f in files]
    inodes = {os.stat(link).st_ino for link in links}
    assert len(inodes) == 1
    for link in links:
        st = os.stat(link)
        assert link.read_bytes() == BULLETIN  # no To: line, the file is shared
        assert_delivered_name(link)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, inst.uid, inst.gid)
        assert st.st_nlink == 3  # the staging copy in tmp/ is gone
    for user in ("alice", "bob", "postmaster"):
        assert tmp_files(dom, user) == []
    assert os.stat(path).st_nlink == 1
    assert maildirsize(dom, "alice") == f"1048576S\n0 0\n{len(BULLETIN)} 1\n"


def test_vpopbull_symbolic_links(each_install: Install, tmp_path: Path) -> None:
    inst = each_install
    dom = site(inst)
    path = bulletin(inst)
    result = inst.run("vpopbull", "-s", "-f", str(path), ALIAS)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    for user in ("alice", "bob", "postmaster"):
        [link] = new_files(dom, user)
        st = os.lstat(link)
        assert stat.S_ISLNK(st.st_mode)
        assert os.readlink(link) == str(path.resolve())
        assert (st.st_uid, st.st_gid) == (inst.uid, inst.gid)
        assert link.read_bytes() == BULLETIN
        assert NAME.fullmatch(link.name) and f",S={len(BULLETIN)}," in link.name
    assert maildirsize(dom, "alice") == f"1048576S\n0 0\n{len(BULLETIN)} 1\n"


@pytest.mark.cdb_only(NO_BACKEND)
def test_vpopbull_symbolic_link_target_must_be_readable_by_the_owner(root_vhome: Install,
                                                                     tmp_path: Path) -> None:
    inst = root_vhome
    site(inst)
    path = bulletin(inst)
    path.chmod(0o600)  # root's: POP/IMAP servers running as vpopmail could not open it
    before = state(inst)
    result = inst.run("vpopbull", "-s", "-f", str(path), DOMAIN)
    assert result.returncode == 152
    assert result.stdout == (f"Error: bad input: {path}: uid {inst.uid} (owner of {DOMAIN}) "
                             "cannot read it (Permission denied); symbolic links need a file "
                             "every mail reader can read: use -c or -h\n")
    assert state(inst) == before


# vpopbull: quotas, exclusions, dry runs, all domains -------------------------------------------

def test_vpopbull_skips_and_reports_over_quota_users(vhome: Install, tmp_path: Path) -> None:
    dom = site(vhome)
    vhome.ok("vsetuserquota", f"alice@{DOMAIN}", f"{len(BULLETIN) + 20}")  # To: line won't fit
    path = bulletin(vhome)
    quota = f"{len(BULLETIN) + 20}S"
    before = state(vhome)
    result = vhome.run("vpopbull", "-n", "-f", str(path), DOMAIN)
    assert (result.returncode, result.stdout) == (
        0, f"alice@{DOMAIN}: over quota ({quota}), would not be delivered\n")
    assert state(vhome) == before
    result = vhome.run("vpopbull", "-f", str(path), DOMAIN)
    assert (result.returncode, result.stdout) == (
        0, f"alice@{DOMAIN}: over quota ({quota}), not delivered\n")
    assert new_files(dom, "alice") == [] and len(new_files(dom, "bob")) == 1
    assert maildirsize(dom, "alice") == f"{quota}\n0 0\n"
    # a link carries no To: line, so the same bulletin fits by links
    assert vhome.ok("vpopbull", "-h", "-f", str(path), DOMAIN) == ""
    assert len(new_files(dom, "alice")) == 1
    assert maildirsize(dom, "alice") == f"{quota}\n0 0\n{len(BULLETIN)} 1\n"
    # now full: the next one is refused by the count maildirsize keeps
    result = vhome.run("vpopbull", "-s", "-f", str(path), DOMAIN)
    assert result.stdout == f"alice@{DOMAIN}: over quota ({quota}), not delivered\n"


def test_vpopbull_dry_run_lists_accounts(vhome: Install, tmp_path: Path) -> None:
    site(vhome)
    exclude = tmp_path / "exclude"
    exclude.write_text("postmaster@example.com\n")
    before = state(vhome)
    # -n needs no file (C: "Use with -V to list accounts")
    assert vhome.ok("vpopbull", "-n", "-V", "-e", str(exclude), DOMAIN) == (
        f"alice@{DOMAIN}\nbob@{DOMAIN}\n{DOMAIN}: 2 to send, 1 excluded, 0 over quota\n")
    assert vhome.ok("vpopbull", "-n", DOMAIN) == ""
    assert state(vhome) == before


def test_vpopbull_every_domain_once(vhome: Install, tmp_path: Path) -> None:
    dom = site(vhome)
    vhome.ok("vadddomain", "other.test", "secret")
    vhome.ok("vadduser", "carol@other.test", "pw")
    path = bulletin(vhome)
    # no operand: every domain of users/assign, the alias line not counted again
    assert vhome.ok("vpopbull", "-f", str(path)) == ""
    for user in ("alice", "bob", "postmaster"):
        assert len(new_files(dom, user)) == 1
    other = vhome.domains / "other.test"
    assert [p.read_bytes() for p in new_files(other, "carol")] == [
        b"To: carol@other.test\n" + BULLETIN]
    # a domain named with its alias: once
    assert vhome.ok("vpopbull", "-f", str(path), DOMAIN, ALIAS.upper()) == ""
    assert len(new_files(dom, "bob")) == 2 and len(new_files(other, "carol")) == 1


def test_vpopbull_remakes_a_lost_maildir_and_reports_failures(each_install: Install,
                                                              tmp_path: Path) -> None:
    inst = each_install
    dom = site(inst)
    path = bulletin(inst)
    subprocess.run(["rm", "-rf", str(dom / "bob" / "Maildir")], check=True)
    (dom / "postmaster" / "Maildir" / "new").rmdir()
    (dom / "postmaster" / "Maildir" / "new").write_text("in the way")
    result = inst.run("vpopbull", "-f", str(path), DOMAIN)
    assert result.returncode == 1
    assert re.fullmatch(rf"Error: postmaster@{DOMAIN}: system error: .*\n", result.stdout), \
        result.stdout
    assert len(new_files(dom, "alice")) == 1
    [copy] = new_files(dom, "bob")  # Maildir re-made, as vdelivermail does
    for path_ in (dom / "bob" / "Maildir", dom / "bob" / "Maildir" / "new", copy):
        st = os.stat(path_)
        assert (st.st_uid, st.st_gid) == (inst.uid, inst.gid)
    assert tmp_files(dom, "postmaster") == []


@pytest.mark.cdb_only(NO_BACKEND)
def test_vpopbull_refuses_to_run_as_another_user(root_vhome: Install, tmp_path: Path) -> None:
    site(root_vhome)
    path = bulletin(root_vhome)
    before = state(root_vhome)
    result = root_vhome.run("vpopbull", "-f", str(path), DOMAIN, as_user="nobody")
    assert result.returncode == 234
    assert result.stdout.startswith("Error: running as invalid uid: running as uid ")
    assert f"but {DOMAIN} belongs to uid {root_vhome.uid}" in result.stdout
    assert state(root_vhome) == before


@pytest.mark.cdb_only("the progress bar on a terminal")
def test_vpopbull_progress_bar_only_on_a_terminal(vhome: Install, tmp_path: Path) -> None:
    dom = site(vhome, alias=False)
    batch = "".join(f"user{i}@{DOMAIN} pw{i}\n" for i in range(300))
    vhome.ok("vadduser", "-f", "-", input=batch)
    path = bulletin(vhome)
    argv = [str(vhome.bin / "vpopbull"), "-f", str(path), DOMAIN]
    quiet = subprocess.run(argv, capture_output=True, text=True, env=CLEAN_ENV)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    master, slave = pty.openpty()
    try:
        loud = subprocess.run([*argv[:-1], "-h", DOMAIN], stdout=subprocess.PIPE, stderr=slave,
                              env=CLEAN_ENV)
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert (loud.returncode, loud.stdout) == (0, b"")
    assert b"example.com [" in shown and b"] 303/303 100%" in shown, shown[-300:]
    assert shown.endswith(b"\r\n")
    home = Path(vpasswd_users(vhome)["user299"][5])
    assert home.parent != dom  # past 100 users, in a hash bucket
    assert len(list((home / "Maildir" / "new").iterdir())) == 2


# vcheck ----------------------------------------------------------------------------------------

def steps(inst: Install) -> list[str]:
    """vcheck's steps; the 7th is named by the user backend."""
    store = "vpasswd" if inst.backend == "cdb" else "users table"
    return ["address", "users/assign", "users/cdb", "qmail control", "domain directory",
            ".qmail-default", store, "user", "Maildir", "maildirsize", "flags",
            "vpopmail-server", "installation"]


def vcheck(inst: Install, address: str = f"alice@{DOMAIN}", **kw: object
           ) -> subprocess.CompletedProcess[str]:
    return inst.run("vcheck", address, **kw)  # type: ignore[arg-type]


def healthy(inst: Install, address: str = f"alice@{DOMAIN}") -> None:
    result = vcheck(inst, address)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert [line[3:19].strip() for line in lines[:-1]] == steps(inst)
    assert all(line[20:22] == "OK" for line in lines[:-1])
    assert lines[-1] == "all checks passed"


def failed(inst: Install, step: str, text: str, fix: str,
           address: str = f"alice@{DOMAIN}") -> str:
    """vcheck stops at ``step``: exit status = its number, the fault and the fix shown;
    returns the fix text."""
    result = vcheck(inst, address)
    number = steps(inst).index(step) + 1
    lines = result.stdout.splitlines()
    assert result.returncode == number, result.stdout
    assert len(lines) == number + 1, result.stdout
    assert all(" OK " in line for line in lines[:number - 1])
    assert lines[number - 1].startswith(f"{number:2d} {step:<16} FAIL  "), lines[number - 1]
    assert text in lines[number - 1], lines[number - 1]
    assert lines[number].startswith(" " * 19 + " fix:  ")
    shown = lines[number][26:]
    assert fix in shown, shown
    return shown


def apply_fix(inst: Install, command: str) -> None:
    """Run a fix as the operator would (the install's bin/ first on PATH)."""
    env = {"PATH": f"{inst.bin}:/usr/bin:/bin"}
    subprocess.run(["/bin/sh", "-c", command], check=True, env=env, capture_output=True)


def test_vcheck_all_ok(each_install: Install) -> None:
    site(each_install)
    healthy(each_install)
    healthy(each_install, f"BOB@{ALIAS}")
    out = vcheck(each_install, f"bob@{ALIAS}").stdout
    assert f"alias.test (alias of {DOMAIN})" in out


@pytest.mark.cdb_only(NO_BACKEND)
def test_vcheck_usage(vhome: Install) -> None:
    result = vhome.run("vcheck")
    assert result.returncode == 255
    assert result.stdout.startswith("vcheck: usage: [options] email_address\n")
    assert vhome.run("vcheck", "a@b.c", "d@e.f").returncode == 255


@pytest.mark.cdb_only(NO_BACKEND)
def test_vcheck_names(vhome: Install) -> None:
    site(vhome)
    failed(vhome, "address", "'../evil' is not a valid user name", "check the spelling",
           f"../evil@{DOMAIN}")
    failed(vhome, "address", "not a valid domain name", "check the spelling", "al@bad..domain")
    failed(vhome, "address", "has no domain and there is no default domain", "vcheck user@domain",
           "alice")
    failed(vhome, "users/assign", "nowhere.test is not a vpopmail domain",
           "vadddomain nowhere.test", "al@nowhere.test")
    assign = vhome.qmaildir / "users" / "assign"
    assign.write_text(assign.read_text().replace("\n.\n", "\n"))
    failed(vhome, "users/assign", "missing final '.' line", f"(echo . >> {assign})")
    # a deleted users/assign (users/cdb still there) is put back, not ended with a '.' (the
    # fix shown before, which would have made a users/assign of no domains)
    assign.unlink()
    shown = failed(vhome, "users/assign", "is missing but users/cdb exists",
                   f"put {assign} back from a backup, or run vregenerate")
    assert "echo ." not in shown


@pytest.mark.cdb_only(QMAIL_FILES)
def test_vcheck_assign_wiped_by_qmail_pw2u(each_install: Install) -> None:
    inst = each_install
    site(inst)
    users = inst.qmaildir / "users"
    # what qmail-pw2u + qmail-newu leave: system users only
    (users / "assign").write_text("=root:root:0:0:/root:::\n+root-:root:0:0:/root:-::\n.\n")
    subprocess.run(["rm", "-f", str(users / "cdb")], check=True)
    failed(inst, "users/assign", f"users/assign has no line for {DOMAIN}, but its "
                 f"directory {inst.domains / DOMAIN} exists", "run vregenerate")
    assert "qmail-pw2u" in vcheck(inst).stdout
    apply_fix(inst, "vregenerate")
    healthy(inst)


@pytest.mark.cdb_only(QMAIL_FILES)
def test_vcheck_users_cdb(vhome: Install) -> None:
    site(vhome)
    users = vhome.qmaildir / "users"
    old = (users / "cdb").read_bytes()
    (users / "cdb").unlink()
    failed(vhome, "users/cdb", "users/cdb is missing", "qmail-newu")
    (users / "cdb").write_bytes(b"\0" * 100)
    failed(vhome, "users/cdb", "is corrupt", "qmail-newu")
    (users / "cdb").write_bytes(old)
    healthy(vhome)
    # another domain added since: the old cdb does not know it
    vhome.ok("vadddomain", "new.test", "pw")
    (users / "cdb").write_bytes(old)
    failed(vhome, "users/cdb", "does not match users/assign", "qmail-newu (or vregenerate)")
    vhome.api().qmail.rebuild_users_cdb()
    healthy(vhome)
    # same records but older than users/assign: qmail-newu was not run after an edit
    assign_mtime = os.stat(users / "assign").st_mtime
    os.utime(users / "cdb", (assign_mtime - 60, assign_mtime - 60))
    failed(vhome, "users/cdb", "older than users/assign", "qmail-newu")
    apply_fix(vhome, "vregenerate")
    healthy(vhome)


@pytest.mark.cdb_only(QMAIL_FILES)
def test_vcheck_qmail_control(vhome: Install) -> None:
    site(vhome)
    control = vhome.qmaildir / "control"
    rcpthosts = (control / "rcpthosts").read_text()
    (control / "rcpthosts").write_text(rcpthosts.replace(f"{DOMAIN}\n", ""))
    failed(vhome, "qmail control", "not in control/rcpthosts", "vregenerate")
    apply_fix(vhome, "vregenerate")
    healthy(vhome)
    (control / "virtualdomains").write_text(f"{ALIAS}:{ALIAS}\n")
    failed(vhome, "qmail control", "not in control/virtualdomains", "vregenerate")
    (control / "virtualdomains").write_text(f"{DOMAIN}:someone-else\n{ALIAS}:{ALIAS}\n")
    failed(vhome, "qmail control", "sends example.com to 'someone-else'",
           f"to read '{DOMAIN}:{DOMAIN}'")
    (control / "virtualdomains").write_text(f"{DOMAIN}:{DOMAIN}\n{ALIAS}:{ALIAS}\n")
    (control / "locals").write_text(f"localhost\n{DOMAIN}\n")
    failed(vhome, "qmail control", "control/locals lists example.com",
           f"remove {DOMAIN} from {control}/locals")


@pytest.mark.cdb_only(QMAIL_FILES)
def test_vcheck_domain_directory_owner(each_install: Install) -> None:
    inst = each_install
    dom = site(inst)
    os.chown(dom, 12345, 12345)
    fix = failed(inst, "domain directory", f"{dom} belongs to 12345:12345",
                 f"chown -R {inst.uid}:{inst.gid} {dom}")
    apply_fix(inst, fix)
    healthy(inst)


@pytest.mark.cdb_only(QMAIL_FILES)
def test_vcheck_dot_qmail_default(vhome: Install) -> None:
    dom = site(vhome)
    dot = dom / ".qmail-default"
    line = dot.read_text()
    dot.unlink()
    fix = failed(vhome, ".qmail-default", "is missing: qmail-local bounces",
                 f"vmoddomain -e bounce-no-mailbox {DOMAIN}")
    apply_fix(vhome, fix.split(" (or ")[0])
    assert dot.read_text() == line
    healthy(vhome)
    dot.write_text("./Maildir/\n")
    fix = failed(vhome, ".qmail-default", "does not run vdelivermail", "vmoddomain -e ")
    apply_fix(vhome, fix.split(" (or ")[0])
    assert dot.read_text() == line
    dot.chmod(0o666)
    fix = failed(vhome, ".qmail-default", "world-writable", f"chmod 600 {dot}")
    apply_fix(vhome, fix)
    healthy(vhome)
    dot.unlink()
    os.mkfifo(dot)  # refused at once, not waited on
    fix = failed(vhome, ".qmail-default", "is a symbolic link or not a regular file",
                 "vmoddomain -e ")
    apply_fix(vhome, fix.split(" (or ")[0])
    assert dot.read_text() == line
    healthy(vhome)


@pytest.mark.cdb_only("the vpasswd files themselves (SQL: test_vcheck_users_table)")
def test_vcheck_vpasswd_and_its_cdb(each_install: Install) -> None:
    inst = each_install
    dom = site(inst)
    inst.ok("vadduser", "-O", f"carol@{DOMAIN}", "pw")  # vpasswd.cdb not rebuilt
    fix = failed(inst, "vpasswd", "vpasswd.cdb does not match vpasswd (1 users differ: carol)",
                 f"vmkpasswd {DOMAIN}")
    apply_fix(inst, fix)
    healthy(inst)
    (dom / "vpasswd.cdb").unlink()
    failed(inst, "vpasswd", "vpasswd.cdb is missing", f"vmkpasswd {DOMAIN}")
    inst.ok("vmkpasswd", DOMAIN)
    os.chown(dom / "vpasswd.cdb", 0, 0)
    if inst.uid != 0:
        fix = failed(inst, "vpasswd", "belongs to 0:0", f"chown {inst.uid}:{inst.gid}")
        apply_fix(inst, fix)
    healthy(inst)
    with open(dom / "vpasswd", "a") as fh:
        fh.write("broken line\n")
    failed(inst, "vpasswd", "line 5 is not a user record", f"then vmkpasswd {DOMAIN}")


@pytest.mark.sql_only
def test_vcheck_users_table(vhome: Install, sql_db: Database) -> None:
    site(vhome)
    healthy(vhome)
    sql_db.server.sql("RENAME TABLE vpopmail TO saved", sql_db.name)
    failed(vhome, "users table", f"table vpopmail does not exist in vpop_rw@{sql_db.server.socket}",
           "restore table vpopmail from a backup")
    sql_db.server.sql("RENAME TABLE saved TO vpopmail", sql_db.name)
    healthy(vhome)
    for side in ("read", "update"):
        vhome.set_config("mysql", f"{side}_socket", str(vhome.prefix / "nosuch.sock"))
    failed(vhome, "users table", "the database does not answer: update server",
           "start the server, or correct the [mysql] section")
    for side in ("read", "update"):
        vhome.set_config("mysql", f"{side}_socket", sql_db.server.socket)
    healthy(vhome)
    sql_db.server.sql("UPDATE vpopmail SET pw_gid = NULL WHERE pw_name = 'bob'", sql_db.name)
    failed(vhome, "users table", "the pw_gid of user 'bob' is not a number",
           "UPDATE vpopmail SET pw_uid = 1, pw_gid = <the flags> WHERE pw_name = 'bob'")


@pytest.mark.sql_only
def test_vcheck_and_vpopbull_with_per_domain_tables(vhome: Install, sql_db: Database) -> None:
    """C's --disable-many-domains: one users table per domain, named by C's rule."""
    sql_db.configure(vhome, many_domains=False)
    dom = site(vhome, alias=False)
    healthy(vhome)
    assert " 7 users table      OK    3 users in table example_com of " in vcheck(vhome).stdout
    assert vhome.ok("vpopbull", "-f", str(bulletin(vhome))) == ""
    assert [len(new_files(dom, user)) for user in ("alice", "bob", "postmaster")] == [1, 1, 1]


def test_vcheck_user(vhome: Install) -> None:
    dom = site(vhome)
    failed(vhome, "user", "no user nobody in example.com: its mail goes to the default action "
           "(bounce-no-mailbox)", f"vadduser nobody@{DOMAIN}", f"nobody@{DOMAIN}")
    (dom / ".qmail-sales").write_text(f"&alice@{DOMAIN}\n")
    result = vcheck(vhome, f"sales@{DOMAIN}")
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1].startswith(" 8 user             OK    sales is no "
                                                      "mailbox;")


def test_vcheck_maildir(each_install: Install) -> None:
    inst = each_install
    dom = site(inst)
    maildir = dom / "alice" / "Maildir"
    (maildir / "new").rmdir()
    fix = failed(inst, "Maildir", f"missing: {maildir / 'new'}",
                 f"mkdir -m 700 -p {maildir / 'new'} && chown -R {inst.uid}:{inst.gid}")
    apply_fix(inst, fix)
    healthy(inst)
    os.chown(maildir / "cur", 4321, 4321)
    fix = failed(inst, "Maildir", f"{maildir / 'cur'} belongs to 4321:4321",
                 f"chown -R {inst.uid}:{inst.gid} {dom / 'alice'}")
    apply_fix(inst, fix)
    healthy(inst)
    os.chmod(maildir, 0o755)
    fix = failed(inst, "Maildir", f"mode 0755 on {maildir}, not 0700", f"chmod 700 {maildir}")
    apply_fix(inst, fix)
    healthy(inst)


def test_vcheck_maildirsize(vhome: Install) -> None:
    dom = site(vhome)
    size_file = dom / "alice" / "Maildir" / "maildirsize"
    size_file.write_text("2048S\n0 0\n")
    fix = failed(vhome, "maildirsize", "says quota '2048S', the user has 1048576S",
                 f"vsetuserquota alice@{DOMAIN} 1048576S")
    apply_fix(vhome, fix)
    healthy(vhome)
    with open(size_file, "a") as fh:
        fh.write("5000 2\n")  # counts mail that is not there, in a file the next delivery trusts
    failed(vhome, "maildirsize", "counts 5000 bytes in 2 messages, the Maildir holds 0 in 0",
           f"vsetuserquota alice@{DOMAIN} 1048576S")
    old = os.stat(size_file).st_mtime - 3600
    os.utime(size_file, (old, old))  # stale: vpopmail recounts it anyway
    assert "(stale; the next delivery recounts)" in vcheck(vhome).stdout
    healthy(vhome)
    size_file.write_text("1048576S\nnot numbers\n")
    failed(vhome, "maildirsize", "cannot be parsed", "vsetuserquota")
    size_file.unlink()
    size_file.symlink_to("/etc/hostname")
    failed(vhome, "maildirsize", "is not a regular file", f"rm {size_file} && vsetuserquota")
    size_file.unlink()
    healthy(vhome)
    # a user without a quota and a left-over maildirsize (Dovecot would enforce it)
    (dom / "bob" / "Maildir" / "maildirsize").write_text("1000S\n0 0\n")
    fix = failed(vhome, "maildirsize", "exists but the user has no quota",
                 f"vsetuserquota bob@{DOMAIN} NOQUOTA", f"bob@{DOMAIN}")
    apply_fix(vhome, fix)
    healthy(vhome, f"bob@{DOMAIN}")


def test_vcheck_maildirsize_reads_the_record_quota_as_a_delivery(vhome: Install) -> None:
    """A record quota of ``1M`` (older vpopmail, control panels, by hand) is 1048576S to a
    delivery, which writes that into maildirsize: vcheck agrees (before: a mismatch, whose
    fix only rewrote the record)."""
    dom = site(vhome)
    if vhome.backend == "cdb":
        vpasswd = dom / "vpasswd"
        vpasswd.write_text(re.sub(r"(?m)^(alice:.*):1048576S$", r"\1:1M", vpasswd.read_text()))
        vhome.ok("vmkpasswd", DOMAIN)
    else:
        vhome.database.rows("UPDATE vpopmail SET pw_shell = '1M' WHERE pw_name = 'alice'")
    assert vhome.ok("vuserinfo", "-q", f"alice@{DOMAIN}").strip() == "1M"
    (dom / "alice" / "Maildir" / "maildirsize").write_text("1048576S\n0 0\n")
    healthy(vhome)


def test_vcheck_flags(vhome: Install) -> None:
    site(vhome)
    address = f"alice@{DOMAIN}"
    vhome.ok("vmoduser", "-p", "-d", address)
    fix = failed(vhome, "flags", "POP3 logins are refused (NO_POP)", f"vmoduser -x -d {address}")
    apply_fix(vhome, fix)
    healthy(vhome)
    assert vhome.ok("vuserinfo", "-g", address) == "1\n"  # NO_PASSWD_CHNG kept
    vhome.ok("vmoduser", "-b", address)
    failed(vhome, "flags", "incoming mail bounces (BOUNCE_MAIL)", f"vmoduser -x -d {address}")
    vhome.ok("vmoduser", "-x", address)
    vhome.ok("vmoddomlimits", "-g", "is", DOMAIN)
    fix = failed(vhome, "flags", "IMAP logins are refused (NO_IMAP) from the domain limits; "
                 "SMTP AUTH is refused (NO_SMTP) from the domain limits",
                 f"vmoddomlimits -g '' {DOMAIN} (every user), or vmoduser -o {address}")
    apply_fix(vhome, f"vmoduser -o {address}")
    healthy(vhome)
    # NO_RELAY only matters with roaming users on
    vhome.ok("vmoduser", "-r", address)
    assert "NO_RELAY is set, but roaming users are off" in vcheck(vhome).stdout
    vhome.set_config("relay", "roaming_users", True)
    failed(vhome, "flags", "no relaying after a POP/IMAP login (NO_RELAY)",
           f"vmoduser -x -o {address}")


def test_vcheck_never_offers_to_chown_a_directory_outside_the_domain(root_vhome: Install,
                                                                      tmp_path: Path) -> None:
    """A user directory set to another uid's directory (vmoduser -D /etc) is named and the
    record is the fix (before: "chown -R 89:89 /etc && chmod 700 /etc")."""
    inst = root_vhome
    site(inst)
    foreign = tmp_path / "etc-like"
    foreign.mkdir(mode=0o755)
    (foreign / "keep").write_text("root's\n")
    inst.ok("vmoduser", "-D", str(foreign), f"alice@{DOMAIN}")
    shown = failed(inst, "Maildir", f"{foreign} is outside the domain directory",
                   f"vmoduser -D {inst.domains}")
    assert "chown" not in shown and "chmod" not in shown, shown
    assert os.stat(foreign / "keep").st_uid == 0
    inst.ok("vmoduser", "-D", str(inst.domains / DOMAIN / "alice"), f"alice@{DOMAIN}")
    healthy(inst)


def test_vcheck_unreadable_as_another_user(root_vhome: Install) -> None:
    site(root_vhome)
    result = vcheck(root_vhome, as_user="nobody")
    if root_vhome.backend == "mysql":  # the configuration holds the database password
        assert (result.returncode, result.stdout) == (
            154, f"Error: configuration error: cannot read {root_vhome.config_path}: "
                 f"Permission denied (uid {pwd.getpwnam('nobody').pw_uid}): run vcheck as root\n")
        root_vhome.config_path.chmod(0o644)
        result = vcheck(root_vhome, as_user="nobody")
    assert result.returncode == 5, result.stdout
    assert "cannot read" in result.stdout and "Permission denied" in result.stdout
    assert f"run vcheck as root or as the domain owner (uid {root_vhome.uid})" in result.stdout
    healthy(root_vhome)
    assert vcheck(root_vhome, as_user=root_vhome.user).returncode == 0
