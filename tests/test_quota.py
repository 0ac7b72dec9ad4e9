"""Maildir++ quotas (maildir.quota): quota strings, limits, usage scans and maildirsize."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maildir.maildir import make_maildir
from maildir.quota import (NOQUOTA, counted_dirs, deliver_with_quota, format_quota, has_quota,
                           parse_limits, read_maildirsize, scan_usage, usage_percent, write_maildirsize)

# behaviour.md B.1 [run] vectors, with the two deliberate fixes ("1G", lowercase "c")
FORMAT_VECTORS = [
    ("NOQUOTA", "NOQUOTA"),
    ("noquota", ""),
    ("10M", "10485760S"), ("10MB", "10485760S"), ("10m", "10485760S"), ("10mb", "10485760S"),
    ("5K", "5120S"), ("5KB", "5120S"),
    ("1000000", "1000000S"), ("1000000S", "1000000S"),
    ("1000000S,1000C", "1000000S,1000C"),
    ("1000C", "1000C"),
    ("10485760S,0C", "10485760S"),
    ("0", ""), ("", ""), ("abc", ""), ("NOQUOTAX", ""),
    ("1G", "1073741824S"),                 # C: "1S" (G unsupported) -- fixed
    ("2.5M", "2097152S"),
    ("100,200", "200S"),
    ("1000000s,50c", "1000000S,50C"),      # C: "50S" (lowercase c not a count) -- fixed
    (" 100", "100S"),
]


@pytest.mark.parametrize(("text", "expected"), FORMAT_VECTORS)
def test_format_quota_vectors(text: str, expected: str) -> None:
    assert format_quota(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("1g", "1073741824S"), ("2GB", "2147483648S"), ("1kb", "1024S"), ("-5", ""), ("-5C", ""),
    ("100S,5C,200S", "200S,5C"), ("5C,100", "100S,5C"), ("+7", "7S"), ("\t42", "42S"),
])
def test_format_quota_more(text: str, expected: str) -> None:
    assert format_quota(text) == expected


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_format_quota_never_raises_and_is_idempotent(text: str) -> None:
    out = format_quota(text)
    assert isinstance(out, str)
    if out:
        assert format_quota(out) == out
        assert out == NOQUOTA or has_quota(out)


quota_like = st.lists(
    st.tuples(st.from_regex(r"[ \t+-]?[0-9]{0,12}(\.[0-9])?", fullmatch=True),
              st.sampled_from(["", "S", "s", "C", "c", "K", "KB", "M", "mb", "G", "gB", "B", "x"])),
    min_size=1, max_size=4).map(lambda parts: ",".join(n + u for n, u in parts))


@settings(max_examples=200, deadline=None)
@given(quota_like)
def test_format_quota_idempotent_on_quota_like_text(text: str) -> None:
    out = format_quota(text)
    if out:
        assert format_quota(out) == out
        size, count = parse_limits(out)
        assert (size > 0) == ("S" in out) and (count > 0) == ("C" in out)


def test_format_quota_never_raises_on_long_digit_runs() -> None:
    assert format_quota("9" * 5000).endswith("S")


@pytest.mark.parametrize(("quota", "limits"), [
    ("NOQUOTA", (0, 0)), ("", (0, 0)), ("1048576S", (1048576, 0)), ("1000C", (0, 1000)),
    ("1000000S,1000C", (1000000, 1000)), ("5000", (5000, 0)), ("10X", (10, 0)),
    ("0S", (0, 0)), ("abc", (0, 0)),
])
def test_parse_limits(quota: str, limits: tuple[int, int]) -> None:
    assert parse_limits(quota) == limits
    assert has_quota(quota) == (limits != (0, 0))


# behaviour.md H qcalc vectors, through usage_percent (which gets the usage *after* the message):
# quota 1000S, 900 bytes used + a 100-byte message = 1000 -> exactly full (100 %, not over);
# + a 101-byte message -> over (capped at 100). quota 10C: 9 messages -> 90 %, 10 -> 100 %.
@pytest.mark.parametrize(("quota", "usage", "percent"), [
    ("1000S", (900, 5), 90),
    ("1000S", (900 + 100, 5 + 1), 100),
    ("1000S", (900 + 101, 5 + 1), 100),
    ("1000S", (999, 0), 99),
    ("1000S", (0, 0), 0),
    ("10C", (0, 9), 90),
    ("10C", (0, 10), 100),
    ("10C", (0, 11), 100),
    ("1000S,10C", (500, 9), 90),
    ("1000S,10C", (950, 2), 95),
    ("NOQUOTA", (10**9, 10**6), 0),
    ("", (5, 5), 0),
    ("1048576S", (1048576 * 2, 1), 100),
])
def test_usage_percent(quota: str, usage: tuple[int, int], percent: int) -> None:
    assert usage_percent(quota, usage) == percent


# scan_usage -------------------------------------------------------------------------------------

def put(path: Path, content: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    box = tmp_path / "Maildir"
    make_maildir(str(box))
    return box


def test_scan_usage(maildir: Path) -> None:
    put(maildir / "new" / "1.1.host,S=100", b"12345")            # 100 (tag wins over size)
    put(maildir / "cur" / "2.2.host,S=200:2,S", b"x")            # 200
    put(maildir / "cur" / "3.3.host:2,S", b"abc")                # 3 (stat)
    put(maildir / "cur" / "4.4.host,S=1000:2,ST", b"")           # trashed: skipped
    put(maildir / "cur" / "5.5.host,S=1000:2,T", b"")            # trashed: skipped
    put(maildir / "cur" / "6.6.host,S=50:2,aT", b"")             # T after a lower-case flag: 50
    put(maildir / "cur" / "7.7.host,S=70,W=90:2,", b"")          # ,W= ignored: 70
    put(maildir / "cur" / "8.8.host,S=abc:2,", b"four")          # no digits: 0, as Courier
    put(maildir / "cur" / "9.9.host,S=1,S=9:2,", b"")            # last ,S= before ':' : 9
    put(maildir / "cur" / ".hidden,S=999", b"")                  # dot file: skipped
    put(maildir / "tmp" / "10.10.host,S=10000", b"")             # tmp/ not counted
    put(maildir / ".Trash" / "cur" / "11.11.host,S=5000:2,S", b"")   # .Trash: skipped
    put(maildir / ".Folder" / "new" / "12.12.host,S=30", b"")    # 30
    put(maildir / ".Folder" / "cur" / "13.13.host:2,", b"xy")    # 2 (stat)
    put(maildir / ".Trash.Sub" / "cur" / "14.14.host,S=7:2,", b"")   # only ".Trash" is excluded
    put(maildir / "Folder" / "new" / "15.15.host,S=3000", b"")   # not a Maildir++ folder
    put(maildir / ".notadir", b"junk")                           # ignored
    assert scan_usage(str(maildir)) == (100 + 200 + 3 + 50 + 70 + 0 + 9 + 30 + 2 + 7, 10)


def test_scan_usage_empty_and_missing(maildir: Path, tmp_path: Path) -> None:
    assert scan_usage(str(maildir)) == (0, 0)
    assert scan_usage(str(tmp_path / "nothing")) == (0, 0)


def test_counted_dirs_order(maildir: Path) -> None:
    for folder in (".B", ".A", ".Trash"):
        make_maildir(str(maildir / folder))
    assert counted_dirs(str(maildir)) == [
        str(maildir / "new"), str(maildir / "cur"), str(maildir / ".A" / "new"),
        str(maildir / ".A" / "cur"), str(maildir / ".B" / "new"), str(maildir / ".B" / "cur")]


def test_scan_usage_reads_a_tag_as_courier_does(maildir: Path) -> None:
    """The ASCII digits after ``,S=``, none of them 0 (a non-ASCII digit is none)."""
    put(maildir / "cur" / "1.1.host,S=\u00b2:2,S", b"abcd")
    put(maildir / "cur" / "2.2.host,S=12ab:2,S", b"abcd")
    assert scan_usage(str(maildir)) == (12, 2)


# maildirsize ------------------------------------------------------------------------------------

def test_write_maildirsize_exact_bytes(maildir: Path) -> None:
    write_maildirsize(str(maildir), "1048576S", (0, 0))
    path = maildir / "maildirsize"
    assert path.read_bytes() == b"1048576S\n0 0\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(maildir / "tmp") == []
    assert read_maildirsize(str(maildir)) == ("1048576S", 0, 0, 1)


def test_write_maildirsize_replaces(maildir: Path) -> None:
    write_maildirsize(str(maildir), "1048576S", (0, 0))
    with open(maildir / "maildirsize", "a") as fh:
        fh.write("265 1\n4162 1\n")
    assert read_maildirsize(str(maildir)) == ("1048576S", 4427, 2, 3)
    write_maildirsize(str(maildir), "5000S,10C", (4957, 4))
    assert (maildir / "maildirsize").read_bytes() == b"5000S,10C\n4957 4\n"
    assert read_maildirsize(str(maildir)) == ("5000S,10C", 4957, 4, 1)


@settings(max_examples=40, deadline=None)
@given(quota=st.sampled_from(["1048576S", "5000S", "100C", "5000S,100C", "NOQUOTA"]),
       size=st.integers(min_value=0, max_value=10**12), count=st.integers(min_value=0, max_value=10**6))
def test_maildirsize_round_trip(quota: str, size: int, count: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        make_maildir(tmp + "/Maildir")
        write_maildirsize(tmp + "/Maildir", quota, (size, count))
        assert read_maildirsize(tmp + "/Maildir") == (quota, size, count, 1)


@pytest.mark.parametrize(("content", "expected"), [
    (b"1000S\n500 2\n-100 -1\n", ("1000S", 400, 1, 2)),
    (b"1000S\n500 2\n\n300\n", ("1000S", 800, 2, 2)),
    (b"1000S\n", ("1000S", 0, 0, 0)),
    (b"1000S", None),
    (b"1000S\n12 x\n", None),
    (b"1000S\nabc def\n", None),
])
def test_read_maildirsize(maildir: Path, content: bytes, expected: object) -> None:
    (maildir / "maildirsize").write_bytes(content)
    assert read_maildirsize(str(maildir)) == expected


def reference_sums(data: bytes) -> tuple[str, int, int, int] | None:
    """What maildirsize says, summed from scratch in one go (its first 5120 bytes): the quota
    line, then each non-blank line's size and count (a missing count is 0)."""
    head, newline, rest = data[:5120].partition(b"\n")
    rows = [line.split() + [b"0"] for line in rest.split(b"\n") if line.split()]
    try:
        sizes, counts = [int(f[0]) for f in rows], [int(f[1]) for f in rows]
    except ValueError:
        return None
    if not newline:
        return None
    return head.decode("ascii", "replace").strip(), sum(sizes), sum(counts), len(rows)


LINE = st.one_of(
    st.builds(lambda size, n: f"{size} {n}\n".encode(), st.integers(-10**6, 10**9),
              st.integers(-5, 5)),
    st.sampled_from([b"\n", b"  \n", b"12\n", b"4096 1", b"1 2 3\n", b"x y\n", b"4 1\r\n"]))
LINES = st.lists(LINE, max_size=4).map(b"".join)
STEP = st.tuples(st.sampled_from(["append", "rewrite", "replace"]), LINES)


@settings(max_examples=150, deadline=None)
@given(start=st.lists(LINE, max_size=6), steps=st.lists(STEP, max_size=12))
def test_maildirsize_read_again_sums_as_from_scratch(start: list[bytes],
                                                     steps: list[tuple[str, bytes]]) -> None:
    """A process that reads one maildirsize again and again (a server worker) sums only what
    was appended: whatever happened to the file between reads (appends, a line half written,
    a rewrite in place, a new file), it finds what a first read would."""
    import tempfile

    from maildir import quota

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "maildirsize"
        path.write_bytes(b"1000S\n" + b"".join(start))
        for kind, what in [("read", b""), *steps]:
            if kind == "append":
                with open(path, "ab") as fh:
                    fh.write(what)
            elif kind == "rewrite":  # same inode, earlier bytes changed
                with open(path, "r+b") as fh:
                    fh.write(b"2000S\n" + what)
            elif kind == "replace":
                path.unlink()
                path.write_bytes(b"3000S\n" + what)
            assert read_maildirsize(tmp) == reference_sums(path.read_bytes())
        quota._summed.clear()
        assert read_maildirsize(tmp) == reference_sums(path.read_bytes())


def test_read_maildirsize_missing(maildir: Path) -> None:
    assert read_maildirsize(str(maildir)) is None


def test_noquota_constant() -> None:
    assert NOQUOTA == "NOQUOTA"
    assert not has_quota(NOQUOTA)


def test_deliver_with_quota_checks_writes_and_counts(maildir: Path) -> None:
    """The one quota step of vdelivermail and vpopbull: over the limit nothing is written and
    the notice hears it; under it the write's size lands in maildirsize; without a quota
    the write is all that happens."""
    box = str(maildir)
    heard: list[tuple[bool, int]] = []
    written: list[int] = []

    def write() -> int:
        written.append(600)
        (maildir / "new" / f"{len(written)}.M1P1.host,S=600").write_bytes(b"x" * 600)
        return 600

    assert deliver_with_quota(box, "1000S", 600, write, lambda *a: heard.append(a)) == (True, "")
    assert read_maildirsize(box) == ("1000S", 600, 1, 2)
    assert deliver_with_quota(box, "1000S", 600, write, lambda *a: heard.append(a)) == (False, "")
    assert heard == [(False, 0), (True, 60)] and written == [600]
    assert deliver_with_quota(box, "", 600, write, lambda *a: heard.append(a)) == (True, "")
    assert written == [600, 600] and len(heard) == 2
