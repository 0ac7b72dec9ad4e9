"""Where a delivery takes its Maildir++ quota from: the user's record, read as C vdelivermail
reads it (``format_maildirquota``: ``50M`` is 52428800 bytes, a bare number is bytes), also for
the ``.qmail`` lines that deliver into the user's own Maildir (a forward-and-keep or vacation
``.qmail``), whatever ``maildirsize`` says or whether it is there."""
from __future__ import annotations

import shutil

import pytest

from install_site import Install
from delivery_site import DOMAIN, MESSAGE, RETURN_PATH, Site, make_folder, write_dotqmail
from maildir.quota import load_maildirsize, scan_usage

BIG = MESSAGE + b"y" * (2 * 1024 * 1024) + b"\n"  # over alice's 1M


@pytest.fixture
def site(each_install: Install) -> Site:
    return Site.create(each_install, each_install.mode == "root", alice="1M", bob=None)


def set_stored_quota(site: Site, user: str, quota: str) -> None:
    """Write ``quota`` into the user's vpasswd line as another tool (C vpopmail before
    5.3, a control panel, an editor) may have stored it, and rebuild vpasswd.cdb."""
    vpasswd = site.domain_dir / "vpasswd"
    lines = []
    for line in vpasswd.read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            fields[6] = quota
        lines.append(":".join(fields) + "\n")
    vpasswd.write_text("".join(lines))
    site.ok("vmkpasswd", DOMAIN)


@pytest.mark.parametrize("stored, normal", [("50M", "52428800S"), ("50MB", "52428800S"),
                                            ("5000000", "5000000S"), ("2k", "2048S")])
def test_a_stored_quota_is_read_as_c_formats_it(site: Site, stored: str, normal: str) -> None:
    """C vdelivermail checks format_maildirquota(pw_shell): a record holding 50M means 50 MB,
    not 50 bytes (before: every message bounced as over quota), and maildirsize gets the
    Maildir++ form that Courier and Dovecot read (before: the raw 50M / 5000000)."""
    set_stored_quota(site, "alice", stored)
    maildir = site.maildir("alice")
    result = site.deliver("alice")
    assert (result.returncode, result.stdout) == (0, b""), stored
    assert (maildir / "maildirsize").read_text().split("\n")[0] == normal
    if normal == "2048S":  # the unit is honoured: a 2 MB message does not fit in 2 KB
        assert site.deliver("alice", BIG).returncode == 100


@pytest.mark.parametrize("line", ["./Maildir/", "{home}/Maildir/", "./Maildir/.Spam/"])
@pytest.mark.parametrize("state", ["missing", "stale quota line"])
def test_dotqmail_into_own_maildir_keeps_the_users_quota(site: Site, line: str,
                                                         state: str) -> None:
    """A .qmail line into the user's own Maildir (or a folder of it) is under the user's
    quota, as the default delivery is (before: only maildirsize's quota line counted, so a
    missing maildirsize meant no quota at all and it was never made again, and a stale line
    outlived every vsetuserquota)."""
    home = site.user_dir("alice")
    maildir = home / "Maildir"
    if line.endswith(".Spam/"):
        make_folder(site, maildir, ".Spam")
    write_dotqmail(site, home / ".qmail", line.format(home=home) + "\n")
    if state == "missing":
        (maildir / "maildirsize").unlink()
    else:
        (maildir / "maildirsize").write_text("100000000S\n0 0\n")
        if site.unprivileged:
            shutil.chown(maildir / "maildirsize", site.inst.user, site.inst.group)
    result = site.deliver("alice", BIG)
    assert (result.returncode, result.stdout) == (100, b"user is over quota\n\n")
    assert site.deliver("alice").returncode == 0
    assert (maildir / "maildirsize").read_text().split("\n")[0] == "1048576S"


def test_dotqmail_into_another_maildir_keeps_its_maildirsize(site: Site) -> None:
    """A line into someone else's Maildir is counted there under that Maildir's own
    maildirsize, not under the recipient's quota (unchanged)."""
    bob_maildir = site.maildir("bob")
    alice = site.user_dir("alice")
    write_dotqmail(site, alice / ".qmail", f"{bob_maildir}/\n")
    assert site.deliver("alice", BIG).returncode == 0
    assert len(site.new_files(bob_maildir)) == 1


@pytest.mark.parametrize("written, normal", [("50M", "52428800S"), ("2K", "2048S"),
                                             ("5000", "5000S")])
def test_a_maildirsize_quota_line_is_read_as_c_formats_it(site: Site, written: str,
                                                          normal: str) -> None:
    """A line into a Maildir that has no user quota here takes the quota line of its
    maildirsize, which C vdelivermail reads through format_maildirquota as it reads a user
    record: ``50M`` is 50 MB, ``2K`` 2048 bytes (before: 50 and 2 bytes, and every message
    bounced as over quota where C delivered it; found by the differential fuzz against C)."""
    bob_maildir = site.maildir("bob")
    (bob_maildir / "maildirsize").write_text(f"{written}\n0 0\n")
    if site.unprivileged:
        shutil.chown(bob_maildir / "maildirsize", site.inst.user, site.inst.group)
    write_dotqmail(site, site.user_dir("alice") / ".qmail", f"{bob_maildir}/\n")
    result = site.deliver("alice")
    assert (result.returncode, result.stdout) == (0, b"")
    assert len(site.new_files(bob_maildir)) == 1
    assert (bob_maildir / "maildirsize").read_text().split("\n")[0] == normal
    if normal == "2048S":  # the unit is honoured: a 2 MB message does not fit in 2 KB
        assert site.deliver("alice", BIG).returncode == 100


@pytest.mark.parametrize("line, marker", [("./Maildir/.Spam/", False),
                                          ("./Maildir/.Spam/./", True),
                                          ("{home}/Maildir/.Spam/", False)])
def test_every_folder_of_the_own_maildir_is_under_the_users_quota(site: Site, line: str,
                                                                   marker: bool) -> None:
    """A folder of the user's Maildir is under the user's quota and counted in the Maildir's
    maildirsize also without its ``maildirfolder`` file (folders made by hand or by an old
    tool, as C vpopmail's own ``.Junk``; the recount counts them all) and however the line
    spells it (before: either way it was taken for a Maildir of its own: no quota, a 2 MB
    message accepted into a full 1 MB mailbox and maildirsize not told)."""
    home = site.user_dir("alice")
    maildir = home / "Maildir"
    folder = make_folder(site, maildir, ".Spam", marker)
    write_dotqmail(site, home / ".qmail", line.format(home=home) + "\n")
    result = site.deliver("alice", BIG)
    assert (result.returncode, result.stdout) == (100, b"user is over quota\n\n")
    assert site.deliver("alice").returncode == 0
    [path] = site.new_files(folder)
    assert path.read_bytes() == RETURN_PATH + b"Delivered-To: alice@example.com\n" + MESSAGE
    found = load_maildirsize(str(maildir))
    assert found is not None and found.quota == "1048576S"
    assert (found.bytes, found.messages) == scan_usage(str(maildir)) == (path.stat().st_size, 1)
    assert not (folder / "maildirsize").exists()


def test_the_quota_warning_of_a_folder_delivery_goes_to_the_inbox(site: Site) -> None:
    """A delivery into a folder that finds the mailbox 90 % full leaves the warning in the
    INBOX, stamped there, as Courier's deliverquota does (before: into the folder, where a
    ``.Spam`` hides it, with a stamp of its own: a second warning the same day at the next
    delivery into the INBOX)."""
    site.ok("vsetuserquota", f"alice@{DOMAIN}", "10000S")
    (site.inst.domains / ".quotawarn.msg").write_text(
        "From: postmaster\nSubject: Mailbox nearly full\n\nYour mailbox is 90% full.\n")
    home = site.user_dir("alice")
    maildir = home / "Maildir"
    folder = make_folder(site, maildir, ".Spam")
    write_dotqmail(site, home / ".qmail", "./Maildir/.Spam/\n")
    assert site.deliver("alice", b"a" * 9100 + b"\n").returncode == 0
    assert site.deliver("alice", b"b\n").returncode == 0
    assert len(site.new_files(folder)) == 2
    [warning] = site.new_files(maildir)
    assert b"Subject: Mailbox nearly full" in warning.read_bytes()
    assert (maildir / "quotawarn").exists() and not (folder / "quotawarn").exists()
    (home / ".qmail").unlink()
    assert site.deliver("alice", b"c\n").returncode == 0  # no second warning today
    assert len(site.new_files(maildir)) == 2
    found = load_maildirsize(str(maildir))
    assert found is not None and (found.bytes, found.messages) == scan_usage(str(maildir))


@pytest.mark.parametrize("line", ["", "./Maildir/\n"])
def test_the_users_maildir_is_its_own_quota_root(site: Site, line: str) -> None:
    """A stray ``maildirfolder`` file in the user's Maildir itself (a folder moved in as a
    new user's Maildir) does not send the count to the user's directory, which no reader of
    the quota looks at (vuserinfo, vpopmaild and Dovecot read ``Maildir/maildirsize``):
    before, every delivery to the user deferred (111) for want of a ``tmp/`` there to
    write that maildirsize in, until qmail gave up on the messages."""
    home = site.user_dir("alice")
    maildir = home / "Maildir"
    (maildir / "maildirfolder").touch()
    if line:
        write_dotqmail(site, home / ".qmail", line)
    result = site.deliver("alice")
    assert (result.returncode, result.stdout) == (0, b"")
    result = site.deliver("alice", BIG)
    assert (result.returncode, result.stdout) == (100, b"user is over quota\n\n")
    found = load_maildirsize(str(maildir))
    assert found is not None and found.quota == "1048576S"
    assert (found.bytes, found.messages) == scan_usage(str(maildir)) == (
        len(site.only_message(maildir)), 1)
    assert not (home / "maildirsize").exists()


@pytest.mark.parametrize("head", ["NOQUOTA", "1000S", "0S"])
def test_a_maildirsize_under_no_quota_counts_each_delivery(site: Site, head: str) -> None:
    """bob has no quota; a maildirsize in his Maildir (Dovecot's, Courier's, an earlier
    quota's) gets each delivery appended, as C vdelivermail appends it, so that its readers'
    totals stay right (before: left as it was, counting too little until a recount); nothing
    is enforced (1000S: the message is bigger) and the file is not rewritten."""
    maildir = site.maildir("bob")
    (maildir / "maildirsize").write_text(f"{head}\n0 0\n")
    if site.unprivileged:
        shutil.chown(maildir / "maildirsize", site.inst.user, site.inst.group)
    inode = (maildir / "maildirsize").stat().st_ino
    for _ in range(2):
        assert site.deliver("bob").returncode == 0
    [size] = {len(path.read_bytes()) for path in site.new_files(maildir)}
    assert (maildir / "maildirsize").read_text() == f"{head}\n0 0\n{size} 1\n{size} 1\n"
    assert (maildir / "maildirsize").stat().st_ino == inode


def test_no_quota_makes_no_maildirsize_and_trash_counts_nothing(site: Site) -> None:
    """Without a maildirsize and without a quota none is made; a delivery into .Trash is not
    counted in the Maildir's maildirsize (Courier's deliverquota counts none there)."""
    maildir = site.maildir("bob")
    assert site.deliver("bob").returncode == 0
    assert not (maildir / "maildirsize").exists()
    make_folder(site, maildir, ".Trash")
    (maildir / "maildirsize").write_text("NOQUOTA\n0 0\n")
    if site.unprivileged:
        shutil.chown(maildir / "maildirsize", site.inst.user, site.inst.group)
    write_dotqmail(site, site.user_dir("bob") / ".qmail", "./Maildir/.Trash/\n")
    assert site.deliver("bob").returncode == 0
    assert (maildir / "maildirsize").read_text() == "NOQUOTA\n0 0\n"
