"""Domain commands through the installed bin/: vadddomain (bad input), vdominfo,
vaddaliasdomain, vdeldomain, vmoddomlimits and vregenerate, on real files."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import CLEAN_ENV, Install
from test_commands import (DOMAIN, assign_line, cdb_dump, cdb_text, check_owner, domain_dir,
                           golden, refused, state, stored_users)

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


def test_vadddomain_duplicate(vhome: Install) -> None:
    golden(vhome)
    result = refused(vhome, "vadddomain", DOMAIN, "other", code=243)
    assert result.stdout == "Error: Domain already exists\n"
    refused(vhome, "vadddomain", DOMAIN.upper(), "other", code=243)


def test_vadddomain_random_password_and_catchall(vhome: Install) -> None:
    out = vhome.ok("vadddomain", "-r12", "-e", "postmaster", DOMAIN)
    match = re.fullmatch(r"Random password: (\S{12})\n", out)
    assert match, out
    dom = domain_dir(vhome)
    assert (dom / ".qmail-default").read_text() == \
        f"| {vhome.prefix}/bin/vdelivermail '' {dom / 'postmaster'}\n"
    from auth.passwords import verify_password
    assert verify_password(match.group(1), stored_users(vhome)["postmaster"][1])
    # the catch-all target cannot be deleted
    refused(vhome, "vdeluser", f"postmaster@{DOMAIN}", code=201)


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


def test_vdominfo_unknown_domain(vhome: Install) -> None:
    golden(vhome)
    result = vhome.run("vdominfo", "nosuch.com")
    # C printed "Invalid domain name", for a name that is valid but not here
    assert (result.returncode, result.stdout) == (245, "Error: Domain does not exist: nosuch.com\n")
    result = vhome.run("vdominfo", "-Z")
    assert result.returncode == 255 and result.stdout.startswith("vdominfo: usage:")


def test_vdominfo_alias_lines(vhome: Install) -> None:
    with_alias(vhome)
    dom = domain_dir(vhome)
    block = (f"domain: {DOMAIN}\nuid:    {vhome.uid}\ngid:    {vhome.gid}\ndir:    {dom}\n"
             f"users:  3\n")
    assert vhome.ok("vdominfo", DOMAIN) == block + f"alias: {ALIAS}\n"
    # an alias resolves to its real domain
    assert vhome.ok("vdominfo", ALIAS) == block + f"alias: {ALIAS}\n"
    assert vhome.ok("vdominfo", "-r", ALIAS) == f"{DOMAIN}\n"
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


# vdeldomain ------------------------------------------------------------------------------------

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
