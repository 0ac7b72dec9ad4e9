"""User commands through the installed bin/: vuserinfo, vmoduser, vpasswd, vdeluser, vmkpasswd,
vadduser (-O, -f and bad input) and vsetuserquota, on real files."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from vpopmail.passwords import verify_password
from install_site import Install
from helpers import (ASCTIME, DOMAIN, cdb_dump, check_index, domain_dir, golden, refused,
                     run_as_vpopmail, state, stored_users, vpasswd_cdb_expected, vpasswd_cdb_names,
                     vpasswd_lines)

pytestmark = pytest.mark.both_backends


# vuserinfo -------------------------------------------------------------------------------------

def test_vuserinfo_default_output(vhome: Install) -> None:
    dom = golden(vhome)
    passwd = stored_users(vhome)["alice"][1]
    lines = vhome.ok("vuserinfo", f"alice@{DOMAIN}").splitlines()
    assert lines[:12] == [
        "name:   alice",
        f"passwd: {passwd}",
        "clear passwd: ",
        "comment/gecos: alice",
        "uid:    1",
        "gid:    0",
        "flags:  0",
        "gecos: alice",
        "limits: No user limits set.",
        f"dir:       {dom / 'alice'}",
        "quota:     1048576S",
        "usage:     0%",
    ]
    assert re.fullmatch(f"account created: {ASCTIME}", lines[12]), lines[12]
    assert lines[13:] == ["last auth: Never logged in"]


def test_vuserinfo_noquota_user_and_postmaster(vhome: Install) -> None:
    golden(vhome)
    out = vhome.ok("vuserinfo", f"postmaster@{DOMAIN}")
    assert "comment/gecos: Postmaster\n" in out
    assert "quota:     NOQUOTA\nusage:     NOQUOTA\n" in out


def test_vuserinfo_selectors(vhome: Install) -> None:
    dom = golden(vhome)
    assert vhome.ok("vuserinfo", "-n", "-d", "-q", "-Q", f"alice@{DOMAIN}") == \
        f"alice\n{dom / 'alice'}\n1048576S\n0%\n"
    # the order is fixed (name, dir, quota, usage), whatever the order of the options
    assert vhome.ok("vuserinfo", "-Q", "-q", "-d", "-n", f"ALICE@{DOMAIN}") == \
        f"alice\n{dom / 'alice'}\n1048576S\n0%\n"
    assert vhome.ok("vuserinfo", "-n", "-q", "-Q", f"bob@{DOMAIN}") == "bob\nNOQUOTA\nNOQUOTA\n"
    assert vhome.ok("vuserinfo", "-u", "-g", "-c", f"postmaster@{DOMAIN}") == "1\n0\nPostmaster\n"


def test_vuserinfo_whole_domain(vhome: Install) -> None:
    golden(vhome)
    assert vhome.ok("vuserinfo", "-n", "-D", DOMAIN) == "alice\nbob\npostmaster\n"


def test_vuserinfo_unknown_user(vhome: Install) -> None:
    golden(vhome)
    result = vhome.run("vuserinfo", f"nobody@{DOMAIN}")
    assert (result.returncode, result.stdout) == (255, f"no such user nobody@{DOMAIN}\n")


# vmoduser and domain-wide limits ---------------------------------------------------------------

def test_vmoduser_flags(vhome: Install) -> None:
    golden(vhome)
    address = f"alice@{DOMAIN}"
    assert vhome.ok("vmoduser", "-b", address) == ""
    assert stored_users(vhome)["alice"][3] == "16"
    assert vhome.ok("vuserinfo", "-g", address) == "16\n"
    assert "        mail will be bounced back to sender\n" in vhome.ok("vuserinfo", address)
    check_index(vhome)

    vhome.ok("vmoduser", "-x", address)
    assert stored_users(vhome)["alice"][3] == "0"
    assert "limits: No user limits set.\n" in vhome.ok("vuserinfo", address)

    vhome.ok("vmoduser", "-p", address)
    assert stored_users(vhome)["alice"][3] == "2"
    lines = vhome.ok("vuserinfo", address).splitlines()
    at = lines.index("limits:")
    assert lines[at + 1] == "        pop access closed"
    assert lines[at + 2].startswith("dir:")
    assert "        * = set by domain-wide limits" not in lines
    # other users are untouched
    assert stored_users(vhome)["bob"][3] == "0"


def test_vmoduser_unknown_user(vhome: Install) -> None:
    golden(vhome)
    before = state(vhome)
    result = vhome.run("vmoduser", "-p", f"nobody@{DOMAIN}")
    assert (result.returncode, result.stdout) == (255, f"no such user nobody@{DOMAIN}\n")
    assert state(vhome) == before


def test_domain_wide_limits_in_vuserinfo(vhome: Install) -> None:
    golden(vhome)
    assert vhome.ok("vmoddomlimits", "-g", "p", DOMAIN) == ""
    out = vhome.ok("vuserinfo", f"alice@{DOMAIN}")
    lines = out.splitlines()
    assert "gid:    0" in lines and "flags:  2" in lines
    at = lines.index("limits:")
    assert lines[at + 1:at + 3] == ["        pop access closed (*)",
                                    "        * = set by domain-wide limits"]
    # the user's own bit shows without the star, the domain's with it
    vhome.ok("vmoduser", "-b", f"alice@{DOMAIN}")
    lines = vhome.ok("vuserinfo", f"alice@{DOMAIN}").splitlines()
    at = lines.index("limits:")
    assert lines[at + 1:at + 4] == ["        pop access closed (*)",
                                    "        mail will be bounced back to sender",
                                    "        * = set by domain-wide limits"]
    # the stored record keeps only the user's bits
    assert stored_users(vhome)["alice"][3] == "16"
    # V_OVERRIDE: the domain's limits no longer apply
    vhome.ok("vmoduser", "-x", "-o", f"bob@{DOMAIN}")
    out = vhome.ok("vuserinfo", f"bob@{DOMAIN}")
    assert "(*)" not in out and "pop access closed" not in out
    assert "        user is not subject to domain limits\n" in out


# vpasswd ---------------------------------------------------------------------------------------

def test_vpasswd_sets_a_verifiable_password(vhome: Install) -> None:
    golden(vhome)
    old = stored_users(vhome)["alice"][1]
    assert vhome.ok("vpasswd", f"alice@{DOMAIN}", "n3w-Secret") == ""
    new = stored_users(vhome)["alice"][1]
    assert new != old
    assert verify_password("n3w-Secret", new)
    assert not verify_password("pw1", new)
    check_index(vhome)
    # everything else of the record is kept
    assert stored_users(vhome)["alice"][2:] == ["1", "0", "alice",
                                                  str(domain_dir(vhome) / "alice"), "1048576S"]


def test_vpasswd_random(vhome: Install) -> None:
    golden(vhome)
    out = vhome.ok("vpasswd", "-r", f"bob@{DOMAIN}")
    match = re.fullmatch(r"Random password: (\S{8})\n", out)
    assert match, out
    assert verify_password(match.group(1), stored_users(vhome)["bob"][1])
    assert not verify_password("pw2", stored_users(vhome)["bob"][1])


@pytest.mark.parametrize("argv", [["vpasswd", "-r", f"bob@{DOMAIN}", "given"],
                                  ["vadduser", "-r", f"carol@{DOMAIN}", "given"],
                                  ["vadduser", "-r12", f"carol@{DOMAIN}", "given"],
                                  ["vadddomain", "-r", "other.org", "given"]])
def test_random_password_and_a_given_one_are_refused(vhome: Install, argv: list[str]) -> None:
    """-r beside a password operand is a usage error, nothing changed (before: the operand
    was stored and printed as "Random password: given", exit 0)."""
    golden(vhome)
    before = state(vhome)
    result = vhome.run(*argv)
    assert result.returncode == 255, result
    assert result.stderr == (f"{argv[0]}: don't use -r option when giving password on "
                             f"command line\n")
    assert "usage" in result.stdout and "Random password" not in result.stdout
    assert state(vhome) == before


def test_an_empty_password_operand_is_asked_for(vhome: Install) -> None:
    """An empty password operand (an unset "$PW") is no password given: asked for, as C
    did; an empty answer is refused (before: vadduser and vadddomain made accounts without a
    password, vpasswd stored a hash of nothing, each with exit 0)."""
    golden(vhome)
    before = state(vhome)
    for argv in (["vadduser", f"carol@{DOMAIN}", ""], ["vadddomain", "other.org", ""]):
        result = vhome.run(*argv, input="\n")
        assert result.returncode == 255, result
        assert result.stdout.startswith("Error: No password entered\n"), result
        assert vhome.run(*argv).stderr == f"{argv[0]}: end of input, nothing changed\n"
    assert state(vhome) == before
    vhome.ok("vadduser", f"carol@{DOMAIN}", "", input="carol-pw\n")
    assert verify_password("carol-pw", stored_users(vhome)["carol"][1])
    vhome.ok("vpasswd", f"bob@{DOMAIN}", "", input="piped-pw\n")
    assert verify_password("piped-pw", stored_users(vhome)["bob"][1])


def test_vpasswd_reads_password_from_stdin(vhome: Install) -> None:
    golden(vhome)
    assert vhome.run("vpasswd", f"bob@{DOMAIN}", input="piped-pw\n").returncode == 0
    assert verify_password("piped-pw", stored_users(vhome)["bob"][1])


def test_vpasswd_unknown_user(vhome: Install) -> None:
    golden(vhome)
    refused(vhome, "vpasswd", f"nobody@{DOMAIN}", "x")


# vdeluser --------------------------------------------------------------------------------------

def test_vdeluser(vhome: Install) -> None:
    dom = golden(vhome)
    assert vhome.ok("vdeluser", f"bob@{DOMAIN}") == ""
    assert sorted(stored_users(vhome)) == ["alice", "postmaster"]
    check_index(vhome)
    assert not (dom / "bob").exists()
    assert (dom / ".dir-control").read_text().split("\n")[0] == "2"
    result = vhome.run("vuserinfo", f"bob@{DOMAIN}")
    assert result.returncode == 255
    refused(vhome, "vdeluser", f"bob@{DOMAIN}", code=246, starts="Error: User does not exist")
    refused(vhome, "vdeluser", "bob@nosuch.com", code=245, starts="Error: Domain does not exist")


def test_vdeluser_keeps_a_directory_another_user_lives_in(vhome: Install) -> None:
    """Users given one directory with vmoduser -D (a shared mailbox): deleting one removes
    its record only, and neither vadduser nor vdeluser of a name whose directory is another
    user's home takes it for a leftover (before: alice's home went with carol, mail and all,
    while alice stayed in vpasswd; a vadduser or vdeluser of "bob" emptied alice's home)."""
    dom = golden(vhome)
    alice = dom / "alice"
    mail = alice / "Maildir" / "new" / "1.M1P1.host"
    mail.write_text("alice's mail\n")
    vhome.ok("vadduser", f"carol@{DOMAIN}", "pw3")
    for home in (alice, alice / "Maildir"):  # her home, and a part of it
        vhome.ok("vmoduser", "-D", str(home), f"carol@{DOMAIN}")
        assert vhome.ok("vdeluser", f"carol@{DOMAIN}") == ""
        assert mail.read_text() == "alice's mail\n"
        vhome.ok("vadduser", f"carol@{DOMAIN}", "pw3")
    assert sorted(stored_users(vhome)) == ["alice", "bob", "carol", "postmaster"]
    # bob's name on alice's home: vdeluser of bob, then vadduser and vdeluser of the name
    vhome.ok("vmoduser", "-D", str(dom / "bob"), f"alice@{DOMAIN}")
    vhome.ok("vdeluser", f"bob@{DOMAIN}")
    (dom / "bob" / "Maildir" / "new" / "2.M1P1.host").write_text("alice's new mail\n")
    refused(vhome, "vdeluser", f"bob@{DOMAIN}", code=246, starts="Error: User does not exist")
    result = vhome.run("vadduser", f"bob@{DOMAIN}", "pw2")
    assert result.returncode == 249 and result.stdout.startswith(
        "Error: User's directory already exists: "), result
    assert (dom / "bob" / "Maildir" / "new" / "2.M1P1.host").exists()
    check_index(vhome)


# vmkpasswd and vadduser -O ---------------------------------------------------------------------

@pytest.mark.cdb_only("vpasswd.cdb itself")
def test_vmkpasswd_rebuilds_deleted_cdb(vhome: Install) -> None:
    dom = golden(vhome)
    original = (dom / "vpasswd.cdb").read_bytes()
    (dom / "vpasswd.cdb").unlink()
    result = vhome.run("vmkpasswd", DOMAIN)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert (dom / "vpasswd.cdb").read_bytes() == original
    assert (os.stat(dom / "vpasswd.cdb").st_mode & 0o777) == 0o600
    assert cdb_dump(dom / "vpasswd.cdb") == vpasswd_cdb_expected(vhome)


def test_vmkpasswd_unknown_domain(vhome: Install) -> None:
    golden(vhome)
    before = state(vhome)
    assert vhome.run("vmkpasswd", "nosuch.com").returncode != 0
    assert state(vhome) == before


@pytest.mark.cdb_only("-O defers the vpasswd.cdb index; SQL has no index to defer")
def test_vadduser_optimized_defers_the_index(vhome: Install) -> None:
    dom = golden(vhome)
    assert vhome.ok("vadduser", "-O", f"carol@{DOMAIN}", "pw3") == ""
    assert vhome.ok("vadduser", "-O", f"dave@{DOMAIN}", "pw4") == ""
    assert [line.split(":")[0] for line in vpasswd_lines(vhome)] == \
        ["alice", "bob", "carol", "dave", "postmaster"]
    assert vpasswd_cdb_names(vhome) == ["alice", "bob", "postmaster"]
    assert (dom / "carol" / "Maildir" / "cur").is_dir()
    vhome.ok("vmkpasswd", DOMAIN)
    assert vpasswd_cdb_names(vhome) == ["alice", "bob", "carol", "dave", "postmaster"]
    assert cdb_dump(dom / "vpasswd.cdb") == vpasswd_cdb_expected(vhome)
    assert vhome.ok("vuserinfo", "-n", f"dave@{DOMAIN}") == "dave\n"


# vadduser -f (bulk) ----------------------------------------------------------------------------

def test_vadduser_bulk_file_hashes_past_99_users(vhome: Install, tmp_path: Path) -> None:
    vhome.ok("vadddomain", DOMAIN, "secret")
    names = [f"u{i:03d}" for i in range(200)]
    batch = tmp_path / "batch.txt"
    batch.write_text("# bulk\n\n" + "".join(f"{n}@{DOMAIN} pw-{n}\n" for n in names))
    result = vhome.run("vadduser", "-f", str(batch), timeout=300)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
    dom = domain_dir(vhome)
    users = stored_users(vhome)
    assert sorted(users) == sorted(names + ["postmaster"])
    check_index(vhome)
    # postmaster is the domain's 1st user, u000 its 2nd, ...: the 100th-199th go to bucket 0/,
    # the 200th and 201st to bucket 1/
    for position, name in enumerate(names, start=2):
        bucket = "" if position < 100 else "0" if position < 200 else "1"
        home = dom / bucket / name if bucket else dom / name
        assert users[name][5] == str(home), (position, name)
        assert (home / "Maildir" / "new").is_dir()
    assert users["u097"][5] == str(dom / "u097") and users["u098"][5] == str(dom / "0" / "u098")
    # one directory per user, nowhere else
    homes = sorted(p.parent.name for p in dom.rglob("Maildir"))
    assert homes == sorted(names + ["postmaster"])
    assert sum(1 for p in (dom / "0").iterdir() if p.is_dir()) == 100
    assert (dom / ".dir-control").read_text().split("\n")[0] == "201"
    assert verify_password("pw-u150", users["u150"][1])
    assert vhome.ok("vuserinfo", "-d", f"u150@{DOMAIN}") == f"{dom / '0' / 'u150'}\n"
    # deleting a hashed user and adding another reuses its bucket
    vhome.ok("vdeluser", f"u150@{DOMAIN}")
    vhome.ok("vadduser", f"late@{DOMAIN}", "x")
    assert vhome.ok("vuserinfo", "-d", f"late@{DOMAIN}") == f"{dom / '0' / 'late'}\n"


def test_vadduser_bulk_file_with_a_bad_line_adds_nobody(vhome: Install, tmp_path: Path) -> None:
    golden(vhome)
    batch = tmp_path / "batch.txt"
    batch.write_text(f"carol@{DOMAIN} pw\nbad..name@{DOMAIN} pw\n")
    refused(vhome, "vadduser", "-f", str(batch), starts="Error: Illegal username")
    batch.write_text(f"carol@{DOMAIN} pw\nalice@{DOMAIN} pw\n")
    refused(vhome, "vadduser", "-f", str(batch))
    batch.write_text(f"carol@{DOMAIN} pw\ndave@nosuch.com pw\n")
    refused(vhome, "vadduser", "-f", str(batch), starts="Error: Domain does not exist")
    batch.write_text(f"carol@{DOMAIN} pw extra\n")
    refused(vhome, "vadduser", "-f", str(batch))


def test_vadduser_bulk_file_two_domains_bad_line_adds_nobody(vhome: Install,
                                                             tmp_path: Path) -> None:
    golden(vhome)
    vhome.ok("vadddomain", "other.org", "secret")
    batch = tmp_path / "batch.txt"
    batch.write_text(f"carol@{DOMAIN} pw\ndave@other.org pw\nbad..name@other.org pw\n")
    refused(vhome, "vadduser", "-f", str(batch))


# vadduser: bad input ---------------------------------------------------------------------------

BAD_ADDRESSES = {
    "dotdot-slash": "../evil@example.com",
    "slash": "a/b@example.com",
    "colon": "a:b@example.com",
    "newline": "a\nb@example.com",
    "dotdot": "..@example.com",
    "dotdot-inside": "x..y@example.com",
    "hidden": ".hidden@example.com",
    "too-long": "a" * 65 + "@example.com",
    "reserved-vpasswd": "vpasswd@example.com",
    "reserved-cdb": "vpasswd.cdb@example.com",
    "one-char": "z@example.com",
    "empty": "@example.com",
}


@pytest.mark.parametrize("address", BAD_ADDRESSES.values(), ids=BAD_ADDRESSES.keys())
def test_vadduser_refuses_bad_names(vhome: Install, address: str) -> None:
    golden(vhome)
    refused(vhome, "vadduser", address, "x")
    # C vpopmail made <domains>/evil for ../evil: nothing of the kind anywhere in the install
    top = vhome.prefix.parent
    assert not [p for p in top.rglob("*") if p.name in ("evil", "b", "a:b", "..", ".hidden")]
    assert sorted(stored_users(vhome)) == ["alice", "bob", "postmaster"]
    check_index(vhome)


def test_vadduser_65_chars_refused_64_accepted(vhome: Install) -> None:
    golden(vhome)
    refused(vhome, "vadduser", "b" * 65 + f"@{DOMAIN}", "x", starts="Error: user name too long")
    vhome.ok("vadduser", "b" * 64 + f"@{DOMAIN}", "x")
    assert "b" * 64 in stored_users(vhome)


def test_vadduser_unknown_domain(vhome: Install) -> None:
    golden(vhome)
    refused(vhome, "vadduser", "carol@nosuch.com", "x", code=245,
            starts="Error: Domain does not exist")
    assert not (vhome.domains / "nosuch.com").exists()


def test_vadduser_duplicate_user(vhome: Install) -> None:
    golden(vhome)
    result = refused(vhome, "vadduser", f"bob@{DOMAIN}", "other")
    assert result.stdout == "Error: User already exists\n"
    assert verify_password("pw2", stored_users(vhome)["bob"][1])
    refused(vhome, "vadduser", f"BOB@{DOMAIN}", "other", starts="Error: User already exists")


def test_vadduser_refuses_a_name_that_is_an_alias(vhome: Install, tmp_path: Path) -> None:
    """Aliases come first in delivery (qmail-local's .qmail-<alias>, vdelivermail's valias
    rows): a user named as one would get none of its mail, so vadduser refuses it, as valias
    refuses an alias named as a user."""
    golden(vhome)
    vhome.ok("valias", "-i", f"carol@{DOMAIN}", f"sales@{DOMAIN}")
    result = refused(vhome, "vadduser", f"sales@{DOMAIN}", "pw", code=254)
    assert result.stdout == (f"Error: sales@{DOMAIN} is an alias: a user of that name would get "
                             "none of its mail (remove the alias with valias -d first)\n")
    batch = tmp_path / "batch.txt"
    batch.write_text(f"carol@{DOMAIN} pw\nsales@{DOMAIN} pw\n")
    refused(vhome, "vadduser", "-f", str(batch), starts=f"Error: sales@{DOMAIN} is an alias")
    assert sorted(stored_users(vhome)) == ["alice", "bob", "postmaster"]
    vhome.ok("valias", "-d", f"sales@{DOMAIN}")
    vhome.ok("vadduser", f"sales@{DOMAIN}", "pw")
    assert "sales" in stored_users(vhome)


def test_a_dash_default_alias_and_the_users_it_would_shadow(vhome: Install) -> None:
    """qmail-local (and vdelivermail's valias rows) try ``.qmail-john-default`` for
    john-smith before ``.qmail-default``: an alias john-default would take the mail of every
    user named john-*, and such a user made after it would get none. Both are refused, as an
    alias named as a user is (before: accepted, the mail silently the alias's)."""
    golden(vhome)
    vhome.ok("vadduser", f"john-smith@{DOMAIN}", "pw")
    result = refused(vhome, "valias", "-i", f"carol@{DOMAIN}", f"john-default@{DOMAIN}",
                     code=254)
    assert result.stdout == (f"Error: john-default@{DOMAIN} would take the mail of the user "
                             f"john-smith@{DOMAIN} (qmail-local tries .qmail-john-default "
                             f"before .qmail-default, as vdelivermail the valias rows)\n")
    vhome.ok("valias", "-i", f"carol@{DOMAIN}", f"sales-default@{DOMAIN}")
    result = refused(vhome, "vadduser", f"sales-eu@{DOMAIN}", "pw", code=254)
    assert result.stdout == (f"Error: sales-default@{DOMAIN} is an alias that takes the mail of "
                             f"sales-eu@{DOMAIN}: that user would get none of it (remove the "
                             "alias with valias -d first)\n")
    vhome.ok("vadduser", f"sales@{DOMAIN}", "pw")  # .qmail-sales is tried, not sales-default
    assert "sales-eu" not in stored_users(vhome) and "sales" in stored_users(vhome)


def test_vadduser_gecos_with_newline(vhome: Install) -> None:
    golden(vhome)
    refused(vhome, "vadduser", "-c", "first\nsecond", f"carol@{DOMAIN}", "x")
    refused(vhome, "vadduser", "-c", "g" * 65, f"carol@{DOMAIN}", "x")
    refused(vhome, "vadduser", f"carol@{DOMAIN}", "pass\nword")


def test_vadduser_gecos_with_a_colon_is_refused_as_c_refuses_it(vhome: Install) -> None:
    """C's vadduser answers VA_BAD_CHAR and adds nothing (found by the differential fuzz
    against C 5.4.33: the user was added with the colon dropped); vmoduser -c drops it, as
    C's vauth_setpw does."""
    golden(vhome)
    refused(vhome, "vadduser", "-c", "a:b", f"carol@{DOMAIN}", "x", code=236,
            starts="Error: bad character")
    vhome.ok("vmoduser", "-c", "a:b", f"alice@{DOMAIN}")
    assert stored_users(vhome)["alice"][4] == "ab"


def test_vuserinfo_a_after_selectors_shows_all_fields(vhome: Install) -> None:
    """As C's vuserinfo: -a after -n shows everything, -n after -a the name (found by the
    differential fuzz against C 5.4.33)."""
    golden(vhome)
    everything = vhome.ok("vuserinfo", f"alice@{DOMAIN}")
    assert vhome.ok("vuserinfo", "-n", "-a", f"alice@{DOMAIN}") == everything
    assert vhome.ok("vuserinfo", "-a", "-n", f"alice@{DOMAIN}") == "alice\n"


def test_an_empty_comment_is_the_users_name_or_no_change_as_in_c(vhome: Install) -> None:
    """vadduser -c '' gives the user its name as comment, vmoduser -c '' leaves the comment
    as it is, as C's (found by the differential fuzz against C 5.4.33: both stored an empty
    comment)."""
    golden(vhome)
    vhome.ok("vadduser", "-c", "", f"carol@{DOMAIN}", "x")
    assert stored_users(vhome)["carol"][4] == "carol"
    vhome.ok("vmoduser", "-c", "Carol Smith", f"carol@{DOMAIN}")
    vhome.ok("vmoduser", "-c", "", f"carol@{DOMAIN}")
    assert stored_users(vhome)["carol"][4] == "Carol Smith"


def test_vadduser_gecos_and_quota_accepted(vhome: Install) -> None:
    dom = golden(vhome)
    vhome.ok("vadduser", "-c", "Carol Smith", "-q", "5M", f"carol@{DOMAIN}", "x")
    assert stored_users(vhome)["carol"][4:] == ["Carol Smith", str(dom / "carol"), "5242880S"]
    assert (dom / "carol" / "Maildir" / "maildirsize").read_bytes() == b"5242880S\n0 0\n"


@pytest.mark.parametrize("quota", ["abc", "", "x" * 30])
def test_quota_garbage_refused(vhome: Install, quota: str) -> None:
    golden(vhome)
    refused(vhome, "vadduser", "-q", quota, f"carol@{DOMAIN}", "x")
    refused(vhome, "vsetuserquota", f"alice@{DOMAIN}", quota)
    refused(vhome, "vsetuserquota", DOMAIN, quota)
    refused(vhome, "vmoduser", "-q", quota, f"alice@{DOMAIN}")


def test_vsetuserquota_domain_wide_and_noquota(vhome: Install) -> None:
    dom = golden(vhome)
    assert vhome.ok("vsetuserquota", DOMAIN, "10M") == ""
    assert {n: f[6] for n, f in stored_users(vhome).items()} == \
        {"alice": "10485760S", "bob": "10485760S", "postmaster": "10485760S"}
    for name in ("alice", "bob", "postmaster"):
        assert (dom / name / "Maildir" / "maildirsize").read_bytes() == b"10485760S\n0 0\n"
    vhome.ok("vsetuserquota", f"bob@{DOMAIN}", "NOQUOTA")
    assert stored_users(vhome)["bob"][6] == "NOQUOTA"
    assert not (dom / "bob" / "Maildir" / "maildirsize").exists()
    refused(vhome, "vsetuserquota", f"nobody@{DOMAIN}", "1M", code=246)


@pytest.mark.cdb_only("a damaged vpasswd file")
def test_corrupt_vpasswd_line(vhome: Install) -> None:
    dom = golden(vhome)
    with open(dom / "vpasswd", "a") as fh:
        fh.write("this is not a vpasswd line\n")
    result = refused(vhome, "vadduser", f"carol@{DOMAIN}", "x")
    assert "vpasswd" in result.stdout
    assert not (dom / "carol").exists()
    assert vpasswd_lines(vhome)[-1] == "this is not a vpasswd line"


def test_vmoduser_gecos_with_newline_refused(vhome: Install) -> None:
    golden(vhome)
    refused(vhome, "vmoduser", "-c", "first\nsecond", f"alice@{DOMAIN}")


def test_vmoduser_gecos_too_long_refused(vhome: Install) -> None:
    golden(vhome)
    refused(vhome, "vmoduser", "-c", "g" * 65, f"alice@{DOMAIN}")


# permission faults: commands run as the vpopmail user (root ignores file modes) -----------------

def test_vadduser_unwritable_domain_dir(root_vhome: Install) -> None:
    inst = root_vhome
    dom = golden(inst)
    os.chmod(dom, 0o500)
    try:
        result = refused(inst, "vadduser", f"carol@{DOMAIN}", "x", as_vpopmail=True)
    finally:
        os.chmod(dom, 0o700)
    assert "Could not update file" in result.stdout
    assert not (dom / "carol").exists()
    assert "carol" not in stored_users(inst)
    # the same command works once the directory is writable again
    assert run_as_vpopmail(inst, "vadduser", f"carol@{DOMAIN}", "x").returncode == 0
    assert sorted(stored_users(inst)) == ["alice", "bob", "carol", "postmaster"]
    check_index(inst)


@pytest.mark.cdb_only("the vpasswd lock file refuses (SQL down: test_sql_backend.py)")
def test_vadduser_fails_after_making_the_directory(root_vhome: Install) -> None:
    """The user database refuses the vpopmail user (its lock is root's) only after the user
    directory was made: the directory and the .dir-control slot are given back."""
    inst = root_vhome
    dom = golden(inst)
    lock = dom / ".vpasswd.lock"
    os.chown(lock, 0, 0)
    os.chmod(lock, 0o600)
    result = refused(inst, "vadduser", f"carol@{DOMAIN}", "x", as_vpopmail=True)
    assert "Could not update file" in result.stdout
    assert not (dom / "carol").exists()
    assert (dom / ".dir-control").read_text().split("\n")[0] == "3"


@pytest.mark.cdb_only("vpasswd rewrites files in the domain directory; SQL writes none there")
def test_vpasswd_as_vpopmail_unwritable(root_vhome: Install) -> None:
    inst = root_vhome
    dom = golden(inst)
    os.chmod(dom, 0o500)
    try:
        refused(inst, "vpasswd", f"alice@{DOMAIN}", "new", as_vpopmail=True)
    finally:
        os.chmod(dom, 0o700)
    assert verify_password("pw1", stored_users(inst)["alice"][1])
