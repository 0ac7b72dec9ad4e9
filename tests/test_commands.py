"""The installed admin commands, run as an operator runs them (subprocesses, real files).

The golden scenario is C vpopmail 5.4.33's (reference c-vpopmail-observed.md section 4):
``vadddomain example.com secret``, ``vadduser alice@example.com pw1``, ``vadduser
bob@example.com pw2``, ``vsetuserquota alice@example.com 1M``; every file it leaves is checked
byte for byte, with this install's paths and owner instead of /home/vpopmail and 89:89.

All three admin-command modules run on both user backends (both_backends, tests/conftest.py):
users are read back through the backend (``stored_users``); vpasswd's own lines and vpasswd.cdb
are checked where the backend is cdb, and their absence where it is MariaDB.
"""
from __future__ import annotations

import os
import stat
import subprocess

import pytest

from vpopmail.passwords import verify_password
from install_site import CLEAN_ENV, NO_BACKEND, Install
from helpers import (DOMAIN, assign_line, cdb_dump, cdb_text, check_index, check_owner, domain_dir,
                     golden, mode, ok_as_vpopmail, state, stored_users, vpasswd_lines)

pytestmark = pytest.mark.both_backends

PASSWORDS = {"alice": "pw1", "bob": "pw2", "postmaster": "secret"}
#: .dir-control of a directory holding three entries, flat (reference section 4)
DIR_CONTROL_3 = "3\n0\n3\n0 0 0\n61 61 61\n0 2 2\n0 0 0\n\n"


# the golden scenario ---------------------------------------------------------------------------

def check_golden_files(inst: Install, clear: bool = False) -> None:
    """Every file of the golden scenario, with this install's paths and owner."""
    dom = domain_dir(inst)
    uid, gid = inst.uid, inst.gid
    users_dir = inst.qmaildir / "users"
    control = inst.qmaildir / "control"

    # qmail's files
    assert (users_dir / "assign").read_text() == f"{assign_line(inst, DOMAIN)}\n.\n"
    value = b"\0".join([DOMAIN.encode(), b"%d" % uid, b"%d" % gid, str(dom).encode(), b"-", b""])
    assert cdb_dump(users_dir / "cdb") == cdb_text([(b"!example.com-", value), (b"", b"-")])
    assert (control / "rcpthosts").read_text() == "example.com\n"
    assert (control / "virtualdomains").read_text() == "example.com:example.com\n"
    assert (control / "locals").read_text() == ""
    assert not (control / "morercpthosts").exists()
    for path in (users_dir / "assign", users_dir / "cdb", control / "rcpthosts",
                 control / "virtualdomains", control / "locals"):
        assert mode(path) == 0o644, path

    # the domain
    assert mode(inst.domains) == 0o750
    assert mode(dom) == 0o700
    qmail_default = dom / ".qmail-default"
    assert qmail_default.read_text() == f"| {inst.prefix}/bin/vdelivermail '' bounce-no-mailbox\n"
    assert mode(qmail_default) == 0o600
    assert (dom / ".dir-control").read_text() == DIR_CONTROL_3
    assert (inst.domains / ".dir-control").read_text() == DIR_CONTROL_3.replace("3", "1", 1)
    assert mode(dom / ".dir-control") == 0o600

    # the users: 7 fields (8 with clear passwords), the C field values; in vpasswd: sorted
    users = stored_users(inst)
    assert sorted(users) == ["alice", "bob", "postmaster"]
    expect = {"alice": ("alice", "1048576S"), "bob": ("bob", "NOQUOTA"),
              "postmaster": ("Postmaster", "NOQUOTA")}
    for name, fields in users.items():
        assert len(fields) == (8 if clear else 7), fields
        assert fields[2:7] == ["1", "0", expect[name][0], str(dom / name), expect[name][1]]
        assert fields[1].startswith("$6$"), fields  # the configured default scheme
        assert verify_password(PASSWORDS[name], fields[1])
        assert not verify_password(PASSWORDS[name] + "x", fields[1])
        if clear:
            assert fields[7] == PASSWORDS[name]
    if inst.backend == "cdb":
        assert vpasswd_lines(inst) == [":".join(users[name]) for name in sorted(users)]
        assert mode(dom / "vpasswd") == 0o600
        assert mode(dom / "vpasswd.cdb") == 0o600
    check_index(inst)

    # the users' trees
    for name in ("alice", "bob", "postmaster"):
        home = dom / name
        maildir = home / "Maildir"
        for directory in (home, maildir, maildir / "cur", maildir / "new", maildir / "tmp"):
            assert directory.is_dir() and mode(directory) == 0o700, directory
        assert (inst.last_login(f"{name}@{DOMAIN}") or (0, ""))[1] == "0.0.0.0"
        if inst.backend == "cdb":  # SQL: a lastauth row instead (C's vset_lastauth)
            assert (home / "lastauth").read_bytes() == b"0.0.0.0"
            assert mode(home / "lastauth") == 0o600
        files = ["Maildir", "lastauth"] if inst.backend == "cdb" else ["Maildir"]
        assert sorted(p.name for p in home.iterdir()) == files
        assert list((home / "Maildir" / "tmp").iterdir()) == []
    assert (dom / "alice" / "Maildir" / "maildirsize").read_bytes() == b"1048576S\n0 0\n"
    assert mode(dom / "alice" / "Maildir" / "maildirsize") == 0o600
    assert not (dom / "bob" / "Maildir" / "maildirsize").exists()
    assert not (dom / "postmaster" / "Maildir" / "maildirsize").exists()

    # nothing else: no stray temp files
    files = [".dir-control", ".qmail-default", "alice", "bob", "postmaster"]
    if inst.backend == "cdb":
        files += ["vpasswd", "vpasswd.cdb"]
    assert sorted(p.name for p in dom.iterdir() if not p.name.endswith(".lock")) == files


def test_golden_scenario_user_install(vhome: Install) -> None:
    golden(vhome)
    check_golden_files(vhome)
    check_owner(vhome)
    assert vhome.uid == os.getuid()
    assert (vhome.qmaildir / "users" / "assign").stat().st_uid == os.getuid()


def test_golden_scenario_clear_passwords(vhome: Install) -> None:
    vhome.set_config("passwords", "clear_passwords", True)
    golden(vhome)
    check_golden_files(vhome, clear=True)
    assert vhome.ok("vuserinfo", "-C", f"bob@{DOMAIN}") == "pw2\n"
    # a new hash drops the clear text it would no longer match (C kept it: APOP took "pw2")
    vhome.ok("vmoduser", "-e", "$1$abc$defghijklmnopqrstuvw", f"bob@{DOMAIN}")
    assert vhome.ok("vuserinfo", "-C", f"bob@{DOMAIN}") == "\n"


def test_golden_scenario_root_install(root_vhome: Install) -> None:
    inst = root_vhome
    golden(inst)
    check_golden_files(inst)
    assert (inst.uid, inst.gid) == (89, 89)
    check_owner(inst)
    for path in (inst.qmaildir / "users" / "assign", inst.qmaildir / "users" / "cdb"):
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o644), path
    # the vpopmail user (what vchkpw/vdelivermail run as) reads users with the admin commands
    out = ok_as_vpopmail(inst, "vuserinfo", f"alice@{DOMAIN}")
    assert out.startswith("name:   alice\n")
    assert "quota:     1048576S\n" in out
    assert ok_as_vpopmail(inst, "vuserinfo", "-d", f"bob@{DOMAIN}") == \
        f"{domain_dir(inst) / 'bob'}\n"


def test_vadduser_as_vpopmail_user_owns_its_files(root_vhome: Install) -> None:
    inst = root_vhome
    golden(inst)
    ok_as_vpopmail(inst, "vadduser", f"carol@{DOMAIN}", "pw3")
    assert sorted(stored_users(inst)) == ["alice", "bob", "carol", "postmaster"]
    check_index(inst)
    check_owner(inst)


# usage -----------------------------------------------------------------------------------------

USAGE_FIRST = {
    "vadddomain": "vadddomain: usage: vadddomain [options] virtual_domain [postmaster password]",
    "vdeldomain": "vdeldomain: usage: [options] domain_name",
    "vaddaliasdomain": "vaddaliasdomain: usage: [options] real_domain alias_domain",
    "vadduser": "vadduser: usage: [options] email_address [passwd]",
    "vdeluser": "vdeluser: usage: [options] email_address",
    "vpasswd": "vpasswd: usage: [options] email_address [password]",
    "vmoduser": "vmoduser: usage: [options] email_addr or domain (for each user in domain)",
    "vuserinfo": "vuserinfo: usage: [options] email_address",
    "vsetuserquota": "vsetuserquota: [options] email_address|domain_name quota",
    "vmoddomlimits": "vmoddomlimits: usage: [options] domain ",
    "vmoddomain": "vmoddomain: usage: vmoddomain [options] domain",
    "vmkpasswd": "vmkpasswd: usage: domain ",
}


@pytest.mark.cdb_only(NO_BACKEND)  # usage texts
@pytest.mark.parametrize("command", sorted(USAGE_FIRST))
def test_usage_without_arguments(vhome: Install, command: str) -> None:
    before = state(vhome)
    result = vhome.run(command)
    assert result.returncode == 255, result
    assert result.stdout.split("\n")[0] == USAGE_FIRST[command]
    assert result.stdout.startswith(f"{command}: usage:" if command != "vsetuserquota"
                                    else "vsetuserquota: [options]")
    assert "Traceback" not in result.stderr
    assert state(vhome) == before


def test_vmkpasswd_usage_is_exactly_c(vhome: Install) -> None:
    assert vhome.run("vmkpasswd").stdout == "vmkpasswd: usage: domain \n"
    assert vhome.run("vmkpasswd", "a.com", "b.com").returncode == 255


# concurrency -----------------------------------------------------------------------------------

def start_together(inst: Install, argvs: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Start every command at once (no waiting between starts), then collect them all."""
    procs = [subprocess.Popen([str(inst.bin / argv[0]), *argv[1:]], env=CLEAN_ENV, cwd="/",
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for argv in argvs]
    results = []
    for proc, argv in zip(procs, argvs):
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return results


@pytest.mark.parametrize("count", [2, 8])
def test_concurrent_vadduser_same_domain(vhome: Install, count: int) -> None:
    vhome.ok("vadddomain", DOMAIN, "secret")
    names = [f"user{i}" for i in range(count)]
    results = start_together(vhome, [["vadduser", f"{n}@{DOMAIN}", f"pw-{n}"] for n in names])
    for result in results:
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
    users = stored_users(vhome)
    assert sorted(users) == sorted(names + ["postmaster"])
    check_index(vhome)
    for name in names:
        assert verify_password(f"pw-{name}", users[name][1])
        assert (domain_dir(vhome) / name / "Maildir" / "new").is_dir()
    assert (domain_dir(vhome) / ".dir-control").read_text().split("\n")[0] == str(count + 1)


def test_concurrent_vadddomain(vhome: Install) -> None:
    domains = ["one.example", "two.example"]
    results = start_together(vhome, [["vadddomain", d, "secret"] for d in domains])
    for result in results:
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
    assign = (vhome.qmaildir / "users" / "assign").read_text().splitlines()
    assert sorted(assign[:-1]) == sorted(assign_line(vhome, d) for d in domains)
    assert assign[-1] == "."
    dump = cdb_dump(vhome.qmaildir / "users" / "cdb")
    for d in domains:
        assert f":!{d}-->{d}\0".encode() in dump
    assert sorted((vhome.qmaildir / "control" / "rcpthosts").read_text().split()) == domains
    assert sorted((vhome.qmaildir / "control" / "virtualdomains").read_text().split()) == \
        [f"{d}:{d}" for d in domains]
    assert (vhome.domains / ".dir-control").read_text().split("\n")[0] == "2"
    for d in domains:
        assert vhome.ok("vuserinfo", "-n", f"postmaster@{d}") == "postmaster\n"
