"""The Maildir writer and the Maildir++ quota check (library level, real files)."""
from __future__ import annotations

import mailbox
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import maildir.maildir as md
from maildir.maildir import deliver, hostname, make_maildir
from maildir.quota import (RECALC_SIZE, STALE_SECONDS, add_usage, check_quota, is_over,
                           load_maildirsize, recalculate, scan_usage, write_maildirsize)
from vpopmail.errors import DeliveryFailed, TemporaryError

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def source(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "source"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


@pytest.fixture
def box(tmp_path: Path) -> Path:
    path = tmp_path / "Maildir"
    make_maildir(str(path))
    return path


@SETTINGS
@given(header=st.binary(max_size=200), body=st.binary(max_size=3000),
       chunk=st.sampled_from([1, 7, 64, 65536]))
def test_deliver_writes_exactly_and_counts_rfc822_size(tmp_path: Path, header: bytes, body: bytes,
                                                       chunk: int) -> None:
    maildir = tmp_path / f"M{time.monotonic_ns()}"
    make_maildir(str(maildir))
    fd = source(tmp_path, body)
    old = md.CHUNK
    md.CHUNK = chunk
    try:
        delivered = deliver(str(maildir), header, fd, sync=False)
    finally:
        md.CHUNK = old
        os.close(fd)
    data = Path(delivered.path).read_bytes()
    assert data == header + body
    assert delivered.size == len(data)
    assert delivered.rfc822_size == len(re.sub(rb"(?<!\r)\n", b"\r\n", data))
    name = os.path.basename(delivered.path)
    assert name.endswith(f",S={len(data)},W={delivered.rfc822_size}")
    assert os.listdir(maildir / "tmp") == []


def test_mailbox_reads_what_we_write(box: Path, tmp_path: Path) -> None:
    fd = source(tmp_path, b"Subject: hi\r\n\r\nbody\r\n")
    for _ in range(3):
        deliver(str(box), b"Delivered-To: a@b.test\n", fd)
    os.close(fd)
    messages = list(mailbox.Maildir(str(box), create=False))
    assert len(messages) == 3 and all(m["Subject"] == "hi" for m in messages)


def test_hostname_is_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    class Uname:
        nodename = "a/b:c"
    monkeypatch.setattr(md.posix, "uname", lambda: Uname)
    assert hostname() == "a\\057b\\072c"


def test_missing_maildir_is_a_temporary_failure(tmp_path: Path) -> None:
    fd = source(tmp_path, b"x\n")
    with pytest.raises(DeliveryFailed) as caught:
        deliver(str(tmp_path / "nope"), b"", fd)
    assert isinstance(caught.value, TemporaryError) and "No such file" in str(caught.value)


def test_link_never_overwrites(box: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fd = source(tmp_path, b"second\n")
    first = deliver(str(box), b"", fd)
    monkeypatch.setattr(md, "hostname", lambda: "x")
    real_link = os.link
    monkeypatch.setattr(md.posix, "link", lambda a, b: real_link(a, first.path))
    with pytest.raises(DeliveryFailed):
        deliver(str(box), b"", fd)
    assert Path(first.path).read_bytes() == b"second\n"
    assert os.listdir(box / "tmp") == []


# -- maildirsize ---------------------------------------------------------------------------------

lines = st.lists(st.tuples(st.integers(-10**9, 10**12), st.integers(-1000, 10**6),
                           st.sampled_from(["{} {}", "{:>12} {:>12}", "{:>14} {:>14}"])),
                 max_size=40)


@SETTINGS
@given(quota=st.sampled_from(["1000S", "5000S,10C", "7C"]), rows=lines)
def test_maildirsize_sums_any_line_format(box: Path, quota: str,
                                          rows: list[tuple[int, int, str]]) -> None:
    text = quota + "\n" + "".join(fmt.format(b, c) + "\n" for b, c, fmt in rows)
    (box / "maildirsize").write_text(text)
    found = load_maildirsize(str(box))
    assert found is not None
    assert (found.quota, found.bytes, found.messages, found.lines) == (
        quota, sum(r[0] for r in rows), sum(r[1] for r in rows), len(rows))


@SETTINGS
@given(usage=st.tuples(st.integers(0, 10**9), st.integers(0, 10**6)))
def test_write_then_load_roundtrip(box: Path, usage: tuple[int, int]) -> None:
    write_maildirsize(str(box), "123S,4C", usage)
    found = load_maildirsize(str(box))
    assert found and (found.bytes, found.messages, found.lines) == (*usage, 1)
    assert os.listdir(box / "tmp") == []


@given(limit=st.integers(1, 10**9), used=st.integers(0, 10**9), size=st.integers(0, 10**9),
       climit=st.integers(1, 1000), count=st.integers(0, 1000))
def test_is_over_is_strictly_greater(limit: int, used: int, size: int, climit: int,
                                     count: int) -> None:
    assert is_over(f"{limit}S", (used, 0), size) == (used + size > limit)
    assert is_over(f"{climit}C", (0, count), 1) == (count + 1 > climit)
    assert is_over(f"{limit}S,{climit}C", (used, count), size) == (
        used + size > limit or count + 1 > climit)


def test_check_quota_vectors(box: Path) -> None:
    """behaviour.md section H: 1000S, used 900/5: +100 fits, +101 does not; 10C at 9 and 10."""
    write_maildirsize(str(box), "1000S", (900, 5))
    assert check_quota(str(box), "1000S", 100) == (False, 90)
    assert check_quota(str(box), "1000S", 101)[0] is True
    write_maildirsize(str(box), "10C", (0, 9))
    assert check_quota(str(box), "10C", 1)[0] is False
    write_maildirsize(str(box), "10C", (0, 10))
    assert check_quota(str(box), "10C", 1)[0] is True


def put(box: Path, name: str, size: int, sub: str = "new") -> None:
    (box / sub / name).write_bytes(b"x" * size)


def test_recalculation_triggers(box: Path) -> None:
    put(box, "1.a,S=300", 300)
    put(box, "2.b", 200, "cur")
    put(box, "3.c:2,ST", 50, "cur")                 # trashed: not counted
    os.makedirs(box / ".Trash" / "cur")
    put(box, "4.d", 999, ".Trash/cur")               # .Trash: not counted
    os.makedirs(box / ".Sent" / "new")
    put(box, "5.e", 10, ".Sent/new")
    assert scan_usage(str(box)) == (510, 3)
    # missing -> recalculated
    assert check_quota(str(box), "1000S", 1) == (False, 51)
    assert (box / "maildirsize").read_text() == "1000S\n510 3\n"
    # a stale file is recalculated even under quota (vpopmail's rule)
    (box / "maildirsize").write_text("1000S\n1 1\n")
    old = time.time() - STALE_SECONDS - 5
    os.utime(box / "maildirsize", (old, old))
    assert check_quota(str(box), "1000S", 1) == (False, 51)
    # a fresh file is trusted
    (box / "maildirsize").write_text("1000S\n1 1\n")
    assert check_quota(str(box), "1000S", 1) == (False, 0)
    # a file of 5120 bytes or more is recalculated
    (box / "maildirsize").write_text("1000S\n" + "0 0\n" * (RECALC_SIZE // 4))
    assert check_quota(str(box), "1000S", 1) == (False, 51)
    # over quota with several lines: recalculated before refusing
    (box / "maildirsize").write_text("1000S\n900 1\n100 1\n")
    assert check_quota(str(box), "1000S", 10) == (False, 51)
    # over quota with one line: refused without a scan
    (box / "maildirsize").write_text("1000S\n995 1\n")
    assert check_quota(str(box), "1000S", 10) == (True, 99)
    # a changed quota rewrites the first line
    assert check_quota(str(box), "2000S", 10) == (False, 25)
    assert (box / "maildirsize").read_text() == "2000S\n510 3\n"


def test_add_usage_appends_or_recalculates(box: Path) -> None:
    put(box, "1.a,S=40", 40)
    add_usage(str(box), "100S", 40)           # missing: recalculated (includes the message)
    assert (box / "maildirsize").read_text() == "100S\n40 1\n"
    add_usage(str(box), "100S", 7)
    assert (box / "maildirsize").read_text() == "100S\n40 1\n7 1\n"


def test_symlinked_maildirsize_is_ignored(box: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("1000S\n0 0\n")
    (box / "maildirsize").symlink_to(target)
    assert load_maildirsize(str(box)) is None
    recalculate(str(box), "1000S")
    assert not (box / "maildirsize").is_symlink()
    assert target.read_text() == "1000S\n0 0\n"


def test_link_new_takes_a_fresh_name_when_one_is_taken(box: Path, tmp_path: Path) -> None:
    """The one naming owner: a link into new/ under a name already there is retried with a
    fresh stem, never made over it (vpopbull's links and deliver share it)."""
    staged = md.write_tmp(str(box), b"To: a@b\n", source(tmp_path, b"body\n"), sync=False)
    first = md.link_new(str(box), lambda path: os.link(staged.path, path), staged.st,
                        staged.size, staged.rfc822_size, staged.stem)
    second = md.link_new(str(box), lambda path: os.symlink(staged.path, path), staged.st,
                         staged.size, staged.rfc822_size, staged.stem)
    md.discard(staged.path)
    assert first != second and os.path.dirname(first) == str(box / "new")
    tail = (f"V{staged.st.st_dev:X}I{staged.st.st_ino:X}.{hostname()},S={staged.size},"
            f"W={staged.rfc822_size}")
    assert first == f"{box}/new/{staged.stem}{tail}" and second.endswith(tail)
    assert os.path.islink(second) and not os.path.islink(first)
    assert sorted(os.listdir(box / "tmp")) == []


def test_write_tmp_failure_leaves_nothing(box: Path, tmp_path: Path) -> None:
    """A source that cannot be read: DeliveryFailed, and tmp/ stays empty."""
    bad = os.open(tmp_path, os.O_RDONLY)  # a directory: pread fails with EISDIR
    try:
        with pytest.raises(DeliveryFailed, match="cannot write"):
            md.write_tmp(str(box), b"x", bad)
    finally:
        os.close(bad)
    assert os.listdir(box / "tmp") == []


# the tmp/ sweep after a crash on a file system without a journal ---------------------------------

def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True)


@pytest.fixture
def journal_less(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(image, mount point): an ext4 file system without a journal in a file, loop-mounted
    (skipped where that is not allowed); unmounted at the end if still mounted."""
    if os.geteuid() != 0 or shutil.which("debugfs") is None:
        pytest.skip("needs root, mkfs.ext4 and debugfs (e2fsprogs)")
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    made = run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(image), "8M")
    mounted = run("mount", "-o", "loop", str(image), str(mnt)) if made.returncode == 0 else made
    if mounted.returncode != 0:
        pytest.skip(f"cannot make and loop-mount an ext4 image here: {mounted.stderr.strip()}")
    try:
        yield image, mnt
    finally:
        if os.path.ismount(mnt):
            run("umount", str(mnt))


def test_the_sweep_keeps_a_tmp_name_whose_link_count_is_one_short(
        journal_less: tuple[Path, Path]) -> None:
    """The state a crash can leave without a journal: a delivered message named in new/ (and
    another in cur/) and, stale, by its first name in tmp/, its inode counting one link (the
    unlink and the inode's new count never reached the disk; made here with debugfs). The
    36-hour sweep keeps those names (unlinking one would free the message) and removes a
    stale file of its own and a stale second name with the right count."""
    image, mnt = journal_less
    maildir = mnt / "Maildir"
    make_maildir(str(maildir))
    tmp = maildir / "tmp"
    messages = {"new/1.M1P1V1I1.host,S=5": b"one\n", "cur/2.M2P2V1I2.host,S=5:2,S": b"two\n",
                "new/3.M3P3V1I3.host,S=7": b"three\n"}
    for number, (name, data) in enumerate(messages.items(), 1):
        (maildir / name).write_bytes(data)
        os.link(maildir / name, tmp / f"{number}.tmpname")
    (tmp / "4.killed").write_bytes(b"part")
    short = [os.stat(tmp / f"{n}.tmpname").st_ino for n in (1, 2)]
    old = time.time() - md.TMP_STALE_SECONDS - 600
    for name in os.listdir(tmp):
        os.utime(tmp / name, (old, old))
    assert run("umount", str(mnt)).returncode == 0
    for inode in short:
        edited = run("debugfs", "-w", "-R", f"sif <{inode}> links_count 1", str(image))
        assert edited.returncode == 0, edited
    assert run("mount", "-o", "loop", str(image), str(mnt)).returncode == 0
    assert [os.stat(tmp / f"{n}.tmpname").st_nlink for n in (1, 2, 3)] == [1, 1, 2]
    assert md.clean_tmp(str(maildir)) == 2
    assert sorted(os.listdir(tmp)) == ["1.tmpname", "2.tmpname"]
    assert {name: (maildir / name).read_bytes() for name in messages} == messages
