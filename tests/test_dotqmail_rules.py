"""A user's ``.qmail`` (and a catch-all directory's) read by the installed vdelivermail exactly as
qmail-local reads one (notqmail qmail-local.c: blank first line, comment-only files, zero bytes),
the Delivered-To of every spelling of a Maildir line, forwards injected once after every local
delivery succeeded, and default actions that would deliver nowhere (issue 13, findings 1, 4, 5).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from install_site import Install
from delivery_site import MESSAGE, RETURN_PATH, Site, write_dotqmail

BLANK = b"Uh-oh: first line of .qmail file is blank. (#4.2.1)\n"
BAD_SYNTAX = b"vdelivermail: invalid syntax in .qmail-default file\n"

#: (.qmail text, exit code, messages left in the Maildir): qmail-local's rules
RULES = [
    ("", 0, 1),                              # zero bytes: the default delivery
    ("\n", 111, 0),                          # a blank first line defers ...
    ("   \n", 111, 0),                       # ... once trailing spaces and tabs are stripped
    ("\n\n\n", 111, 0),
    (" \t \n", 111, 0),
    ("\t", 111, 0),                          # no newline at all
    ("\n./Maildir/\n", 111, 0),              # whatever follows
    ("  \n# c\n./Maildir/\n", 111, 0),
    ("\r\n", 111, 0),                        # (a CR is stripped too: see delivery/dotqmail.py)
    ("#\n", 0, 0),                           # comments only: delivered nowhere, on purpose
    ("# c\n\n \n", 0, 0),                    # later blank lines are skipped
    ("+list\n", 0, 0),
    ("+other\n", 0, 0),                      # a + line other than +list does nothing
    ("#\n\n./Maildir/\n", 0, 1),
    ("+other\n./Maildir/\n", 0, 1),
    ("./Maildir/", 0, 1),                    # no final newline
    ("./Maildir/ \t\n", 0, 1),
    ("./Maildir/\n\n\t\n./Maildir/\n", 0, 2),
]


@pytest.fixture
def site(each_install: Install) -> Site:
    return Site.create(each_install, each_install.mode == "root", alice="1M", bob=None)


def clear(maildir: Path) -> None:
    for path in (maildir / "new").iterdir():
        path.unlink()


@pytest.mark.parametrize("place", ["user", "catch-all directory"])
def test_dotqmail_lines_as_qmail_local_reads_them(site: Site, place: str) -> None:
    home = site.user_dir("alice" if place == "user" else "bob")
    maildir = home / "Maildir"
    for text, code, delivered in RULES:
        write_dotqmail(site, home / ".qmail", text)
        if place == "user":
            result = site.deliver("alice")
        else:
            result = site.deliver("nobody", action=str(home))
        assert result.returncode == code, (text, result)
        if code == 111:
            assert result.stdout.endswith(BLANK), (text, result.stdout)
        assert len(site.new_files(maildir)) == delivered, text
        clear(maildir)


def test_empty_dotqmail_ext_ends_the_search(site: Site) -> None:
    """The first .qmail file that exists is the one followed, even with zero bytes (then the
    default delivery): qmail-local and C vpopmail both stop there."""
    site.inst.set_config("users", "qmail_ext", True)
    bob = site.user_dir("bob")
    write_dotqmail(site, bob / ".qmail", "#\n")
    write_dotqmail(site, bob / ".qmail-lists", "")
    assert site.deliver("bob-lists").returncode == 0
    assert len(site.new_files(bob / "Maildir")) == 1


def test_dotqmail_that_is_no_file_counts_as_absent(site: Site) -> None:
    (site.user_dir("alice") / ".qmail").mkdir()
    assert site.deliver("alice").returncode == 0
    assert len(site.new_files(site.maildir("alice"))) == 1


def test_delivered_to_names_the_maildir_owner(site: Site) -> None:
    """Every spelling of a Maildir in alice's .qmail stamps its owner's address (C: alice's
    own ./Maildir/ gives alice@example.com, bob's path bob@example.com)."""
    alice, bob = site.user_dir("alice"), site.user_dir("bob")
    assert alice.parent == bob.parent  # few users: no hash buckets, so ../bob is bob
    for line, owner in [("./Maildir/", "alice"), (f"{alice}/Maildir/", "alice"),
                        (f"{alice}/./Maildir/", "alice"), (f"{bob}/Maildir/", "bob"),
                        ("../bob/Maildir/", "bob"), ("./../bob/Maildir/", "bob")]:
        write_dotqmail(site, alice / ".qmail", line + "\n")
        result = site.deliver("alice")
        assert result.returncode == 0, (line, result)
        maildir = site.maildir(owner)
        assert site.only_message(maildir) == (
            RETURN_PATH + f"Delivered-To: {owner}@example.com\n".encode() + MESSAGE), line
        clear(maildir)
    # the catch-all directory's .qmail as well (C: the Maildir's owner, not the recipient)
    write_dotqmail(site, bob / ".qmail", "./Maildir/\n")
    assert site.deliver("nobody", action=str(bob)).returncode == 0
    assert b"Delivered-To: bob@example.com\n" in site.only_message(bob / "Maildir")


def test_own_address_in_dotqmail_is_a_loop(site: Site) -> None:
    """With the right Delivered-To, a message that went through alice's ./Maildir/ and comes
    back is caught by the loop check."""
    write_dotqmail(site, site.user_dir("alice") / ".qmail", "./Maildir/\n")
    assert site.deliver("alice").returncode == 0
    [first] = site.new_files(site.maildir("alice"))
    again = first.read_bytes().removeprefix(RETURN_PATH)
    result = site.deliver("alice", again)
    assert (result.returncode, result.stdout) == (100, b"mail is looping\n")


def test_forward_injected_once_after_local_deliveries(site: Site, inject: Path) -> None:
    """A forward before a Maildir line that fails goes out with the delivery that succeeds,
    once, not with every attempt (as qmail-local: forwards last, in one injection)."""
    if not site.unprivileged:
        pytest.skip("root writes to any new/: needs the root install's delivering user")
    vsite = site
    alice = vsite.user_dir("alice")
    new = alice / "Maildir" / "new"
    write_dotqmail(vsite, alice / ".qmail", "&fwd@remote.test\n./Maildir/\nother@remote.test\n")
    os.chown(new, 0, 0)
    new.chmod(0o755)
    for _ in range(3):
        result = vsite.deliver("alice")
        assert result.returncode == 111, result
    assert list(inject.iterdir()) == []
    shutil.chown(new, vsite.inst.user, vsite.inst.group)
    new.chmod(0o700)
    assert vsite.deliver("alice").returncode == 0
    assert sorted(p.name for p in inject.iterdir()) == ["argv.0", "data.0"]
    assert (inject / "argv.0").read_text() == "--\nfwd@remote.test\nother@remote.test\n"
    assert (inject / "data.0").read_bytes() == (
        RETURN_PATH + b"Delivered-To: alice@example.com\n" + MESSAGE)
    assert len(vsite.new_files(alice / "Maildir")) == 1


@pytest.mark.parametrize(("text", "code", "sent"), [
    ("&a@remote.test\n|exit 111\n", 111, []),            # a program that defers: nothing sent
    ("&a@remote.test\n|exit 100\n", 100, []),            # or bounces
    ("&a@remote.test\n|exit 99\n&b@remote.test\n./Maildir/\n", 99, ["a@remote.test"]),
])
def test_forwards_wait_for_programs(site: Site, inject: Path, text: str, code: int,
                                    sent: list[str]) -> None:
    """99 stops at the program and sends the forwards before it (qmail-local's flag99)."""
    write_dotqmail(site, site.user_dir("alice") / ".qmail", text)
    assert site.deliver("alice").returncode == code
    if sent:
        assert sorted(p.name for p in inject.iterdir()) == ["argv.0", "data.0"]
        assert (inject / "argv.0").read_text().split("\n")[1:-1] == sent
    else:
        assert list(inject.iterdir()) == []
    assert site.new_files(site.maildir("alice")) == []


@pytest.mark.parametrize("action", ["", "  ", "#", "# all mail", "+list", "+x"])
def test_default_action_that_delivers_nowhere_defers(site: Site, action: str) -> None:
    """C exited 0 (or ran qmail-inject with an empty address): the mail of every unknown
    recipient was gone."""
    result = site.deliver("nobody", action=action)
    assert (result.returncode, result.stdout) == (111, BAD_SYNTAX)
    assert site.deliver("alice", action=action).returncode == 0  # users are not concerned


def test_forward_through_an_alias_domain_that_comes_back_is_a_loop(site: Site,
                                                                    inject: Path) -> None:
    """A forward for bob@alias.test carries ``Delivered-To: bob@alias.test`` (C's DTLINE
    transform); when the copy comes back to bob@alias.test (a remote forward that adds no
    Delivered-To), the loop check must know it, as it does for bob@example.com: else each round
    trip sends one more copy, up to the hop limit."""
    site.ok("vaddaliasdomain", "example.com", "alias.test")
    write_dotqmail(site, site.user_dir("bob") / ".qmail", "&carol@remote.test\n")
    assert site.deliver("bob", domain="alias.test").returncode == 0
    sent = (inject / "data.0").read_bytes()
    assert sent == RETURN_PATH + b"Delivered-To: bob@alias.test\n" + MESSAGE
    result = site.deliver("bob", sent.removeprefix(RETURN_PATH), domain="alias.test")
    assert (result.returncode, result.stdout) == (100, b"mail is looping\n")
    assert sorted(p.name for p in inject.iterdir()) == ["argv.0", "data.0"]
