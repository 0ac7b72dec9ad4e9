"""Differential tests against Courier's own Maildir++ implementation (Debian ``maildrop``:
``maildirmake``, ``deliverquota``): both delivering into one Maildir keep one consistent
``maildirsize``, and both make the same over-quota decision from the same state."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from install_site import Install
from delivery_site import DOMAIN, Site, make_folder, write_dotqmail
from maildir.quota import load_maildirsize, scan_usage

pytestmark = pytest.mark.skipif(shutil.which("deliverquota") is None,
                                reason="Courier's deliverquota (Debian maildrop) not installed")
OVER_QUOTA = 77  # deliverquota's exit when the message does not fit


@pytest.fixture
def site(vhome: Install) -> Site:
    return Site.create(vhome, False, carol="20000S")


def deliverquota(maildir: Path, message: bytes) -> int:
    return subprocess.run(["deliverquota", str(maildir)], input=message, capture_output=True,
                          timeout=30).returncode


def consistent(maildir: Path) -> tuple[int, int]:
    """maildirsize's totals, asserted equal to what is really in the Maildir."""
    found = load_maildirsize(str(maildir))
    assert found is not None
    assert (found.bytes, found.messages) == scan_usage(str(maildir))
    return found.bytes, found.messages


def test_courier_reads_our_new_maildir(site: Site) -> None:
    maildir = site.maildir("carol")
    assert (maildir / "maildirsize").read_text() == "20000S\n0 0\n"
    assert deliverquota(maildir, b"Subject: c\n\nhello\n") == 0
    assert consistent(maildir) == (len(b"Subject: c\n\nhello\n"), 1)


def test_same_decisions_at_the_boundary(site: Site, tmp_path: Path) -> None:
    """Fill the box alternately with both tools; before each step, decide the same message
    from the same state with both, and require the same answer."""
    maildir = site.maildir("carol")
    snapshot = tmp_path / "snapshot"
    sizes = [3000, 5000, 2500, 4000, 1500, 2000, 900, 600, 400, 300, 200, 100, 60, 30, 10, 5, 1]
    accepted = {True: 0, False: 0}
    for step, size in enumerate(sizes):
        message = b"Subject: s%d\n\n" % step
        message += b"m" * (size - len(message) - 1) + b"\n"
        shutil.copytree(maildir, snapshot, symlinks=True)
        ours = site.deliver("carol", message).returncode
        assert ours in (0, 100)
        shutil.rmtree(maildir)
        shutil.copytree(snapshot, maildir, symlinks=True)
        theirs = deliverquota(maildir, message)
        assert theirs in (0, OVER_QUOTA)
        assert (ours == 0) == (theirs == 0), (step, size, consistent(maildir))
        if step % 2 == 0:  # keep our delivery's state on even steps
            shutil.rmtree(maildir)
            shutil.copytree(snapshot, maildir, symlinks=True)
            assert site.deliver("carol", message).returncode == ours
        shutil.rmtree(snapshot)
        accepted[ours == 0] += 1
        consistent(maildir)
    assert accepted[True] and accepted[False]  # the run crossed the boundary
    # exactly full: a message that fits to the byte is accepted by both, one more byte by neither
    used, _ = consistent(maildir)
    free = 20000 - used
    if free > 0:
        exact = b"x" * (free - 1) + b"\n"
        shutil.copytree(maildir, snapshot, symlinks=True)
        assert deliverquota(maildir, exact + b"!") == OVER_QUOTA
        assert site.deliver("carol", exact + b"!").returncode == 100
        assert deliverquota(maildir, exact) == 0
        shutil.rmtree(maildir)
        shutil.copytree(snapshot, maildir, symlinks=True)
        assert site.deliver("carol", exact).returncode == 0


def test_concurrent_mixed_deliveries_keep_maildirsize_exact(site: Site) -> None:
    site.ok("vsetuserquota", f"carol@{DOMAIN}", "100000000S")
    maildir = site.maildir("carol")

    def one(n: int) -> int:
        message = b"Subject: n%d\n\n" % n + b"c" * (n * 37 % 900) + b"\n"
        if n % 3 == 0:
            return deliverquota(maildir, message)
        return site.deliver("carol", message).returncode

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(36)))
    assert results == [0] * 36
    assert consistent(maildir)[1] == 36
    assert list((maildir / "tmp").iterdir()) == []


def test_odd_size_tags_count_as_courier_counts_them(tmp_path: Path) -> None:
    """A recount reads a ``,S=`` tag as Courier's does, its leading digits (``,S=12ab`` is 12
    bytes, ``,S=`` none), so that maildirsize does not change with who last recounted it
    (before: the file's size, 42 bytes against Courier's 30). Courier recounts an old
    maildirsize that says over quota at its next delivery."""
    maildir = tmp_path / "Maildir"
    subprocess.run(["maildirmake", str(maildir)], check=True)
    for name, size in (("1.M1P1.h,S=12ab:2,S", 19), ("2.M2P2.h,S=:2,S", 5),
                       ("3.M3P3.h,S=7:2,S", 7), ("4.M4P4.h:2,S", 11)):
        (maildir / "cur" / name).write_bytes(b"x" * size)
    assert scan_usage(str(maildir)) == (30, 4)
    (maildir / "maildirsize").write_text("100S\n1000 1\n")
    old = time.time() - 3600
    os.utime(maildir / "maildirsize", (old, old))
    message = b"Subject: t\n\nbody\n"
    assert deliverquota(maildir, message) == 0
    assert (maildir / "maildirsize").read_text().split("\n")[1].split() == ["30", "4"]


def test_a_negative_total_is_recounted_as_courier_does(site: Site, tmp_path: Path) -> None:
    """maildirsize lines that sum below zero (deletions counted twice, say, by an IMAP server
    after a recount) are damage: Courier recounts, and so must we (before: the negative total
    was believed, the quota did not hold until the file grew to 5120 bytes or aged 15 minutes,
    and every delivery meanwhile was accepted into a full mailbox)."""
    maildir = site.maildir("carol")
    filler = b"Subject: f\n\n" + b"f" * 17000 + b"\n"
    assert site.deliver("carol", filler).returncode == 0
    with open(maildir / "maildirsize", "a") as fh:
        fh.write("-90000 -3\n")
    message = b"Subject: m\n\n" + b"m" * 5000 + b"\n"
    snapshot = tmp_path / "snapshot"
    shutil.copytree(maildir, snapshot, symlinks=True)
    assert deliverquota(snapshot, message) == OVER_QUOTA
    result = site.deliver("carol", message)
    assert result.returncode == 100 and b"over quota" in result.stdout, result
    assert consistent(maildir)[1] == 1


def test_a_last_line_without_its_newline_is_recounted(site: Site) -> None:
    """maildirsize ending in half a line (another writer stopped by a full disk, a hand
    edit) is recounted before the next line is appended (before: ``100 1`` + ``72 1`` ran
    together into ``100 172 1``, 172 messages: with a count limit every later message
    bounced until the file aged 15 minutes; Courier appends too, but reads only the first
    two numbers of such a line)."""
    site.ok("vsetuserquota", f"carol@{DOMAIN}", "20000S,5C")
    maildir = site.maildir("carol")
    (maildir / "maildirsize").write_text("20000S,5C\n100 1")
    for _ in range(2):
        result = site.deliver("carol")
        assert result.returncode == 0, result
    assert consistent(maildir)[1] == 2
    assert deliverquota(maildir, b"Subject: c\n\nhello\n") == 0
    assert consistent(maildir)[1] == 3


def test_a_delivery_into_trash_is_neither_checked_nor_counted(site: Site, tmp_path: Path) -> None:
    """``.Trash`` is not counted (by the recount, ours and Courier's): a ``.qmail`` line into
    it is neither held to the quota nor added to maildirsize, as deliverquota does (before:
    each such delivery was added, maildirsize ran ahead of every recount, and a message that
    did not fit bounced although it would not have counted)."""
    maildir = site.maildir("carol")
    make_folder(site, maildir, ".Trash")
    home = maildir.parent
    write_dotqmail(site, home / ".qmail", "./Maildir/.Trash/\n")
    assert site.deliver("carol").returncode == 0
    message = b"Subject: big\n\n" + b"b" * 30000 + b"\n"
    snapshot = tmp_path / "snapshot"
    shutil.copytree(maildir, snapshot, symlinks=True)
    assert deliverquota(snapshot / ".Trash", message) == 0
    result = site.deliver("carol", message)
    assert (result.returncode, result.stdout) == (0, b"")
    assert len(list((maildir / ".Trash" / "new").iterdir())) == 2
    assert consistent(maildir) == (0, 0) == consistent(snapshot)
