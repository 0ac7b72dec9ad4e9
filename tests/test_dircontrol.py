"""Hashed directories and .dir-control (vpopmail.dircontrol)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpopmail import dircontrol
from vpopmail.dircontrol import (ALPHABET, CONTROL, FREE_LIST, DirControl, allocate, bucket_for,
                                 release, split_bucket)
from vpopmail.errors import CorruptData, CouldNotUpdateFile

# behaviour.md D.5 [run] vectors
BUCKET_VECTORS = [(1, ""), (50, ""), (99, ""), (100, "0"), (150, "0"), (199, "0"), (200, "1"),
                  (1000, "9"), (1100, "A"), (3700, "a"), (6200, "z"), (6299, "z"), (6300, "0/0"),
                  (12400, "0/z"), (12500, "1/0"), (390600, "z/z"), (390699, "z/z"),
                  (390700, "0/0/0")]

# c-vpopmail-observed.md section 4: the domain's .dir-control after 3 users
OBSERVED_AFTER_3 = "3\n0\n3\n0 0 0\n61 61 61\n0 2 2\n0 0 0\n\n"


@pytest.mark.parametrize(("n", "bucket"), BUCKET_VECTORS)
def test_bucket_for_vectors(n: int, bucket: str) -> None:
    assert bucket_for(n) == bucket


def test_bucket_sequence_is_contiguous_and_unique() -> None:
    seen = []
    for n in range(100, 390800, 100):
        bucket = bucket_for(n)
        assert bucket_for(n + 99) == bucket
        seen.append(bucket)
    assert len(seen) == len(set(seen))
    assert seen[:62] == list(ALPHABET)
    assert seen[62:64] == ["0/0", "0/1"]
    assert all(len(p) == 1 and p in ALPHABET for b in seen for p in b.split("/"))


def test_bucket_tree_full() -> None:
    last = (1 + 62 + 62 * 62 + 62 ** 3) * 100 - 1
    assert bucket_for(last) == "z/z/z"
    with pytest.raises(CouldNotUpdateFile):
        bucket_for(last + 1)


def test_fresh_render_after_three_allocations_is_the_observed_file(tmp_path: Path) -> None:
    one_by_one = tmp_path / "a"
    at_once = tmp_path / "b"
    one_by_one.mkdir()
    at_once.mkdir()
    for _ in range(3):
        assert allocate(str(one_by_one), True, None, None) == [""]
    assert allocate(str(at_once), True, None, None, count=3) == ["", "", ""]
    for directory in (one_by_one, at_once):
        path = directory / CONTROL
        assert path.read_text() == OBSERVED_AFTER_3
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    control = DirControl()
    control.cur_users = 3
    assert control.render() == OBSERVED_AFTER_3


def test_observed_domains_dir_control_after_one_domain(tmp_path: Path) -> None:
    allocate(str(tmp_path), True, None, None)
    assert (tmp_path / CONTROL).read_text() == "1\n0\n3\n0 0 0\n61 61 61\n0 2 2\n0 0 0\n\n"


def test_parse_observed_file() -> None:
    control = DirControl.parse(OBSERVED_AFTER_3)
    assert control.cur_users == 3
    assert (control.level_cur, control.level_max) == (0, 3)
    assert control.level_start == [0, 0, 0]
    assert control.level_end == [61, 61, 61]
    assert control.level_mod == [0, 2, 2]
    assert control.level_index == [0, 0, 0]
    assert control.the_dir == ""


def test_parse_without_the_dir_line() -> None:
    assert DirControl.parse("7\n0\n3\n0 0 0\n61 61 61\n0 2 2\n0 0 0").the_dir == ""


triple = st.lists(st.integers(min_value=0, max_value=10**6), min_size=3, max_size=3)
bucket_text = st.one_of(st.just(""), st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=3)
                        .map("/".join))


@settings(max_examples=100, deadline=None)
@given(cur=st.integers(min_value=0, max_value=10**7), level_cur=st.integers(0, 2),
       level_max=st.integers(0, 3), start=triple, end=triple, mod=triple, index=triple,
       the_dir=bucket_text)
def test_parse_render_round_trip(cur: int, level_cur: int, level_max: int, start: list[int],
                                 end: list[int], mod: list[int], index: list[int],
                                 the_dir: str) -> None:
    control = DirControl()
    control.cur_users, control.level_cur, control.level_max = cur, level_cur, level_max
    control.level_start, control.level_end, control.level_mod = start, end, mod
    control.level_index, control.the_dir = index, the_dir
    text = control.render()
    again = DirControl.parse(text)
    assert all(getattr(again, f) == getattr(control, f) for f in DirControl.__slots__)
    assert again.render() == text


@pytest.mark.parametrize("text", [
    "",
    "garbage",
    "3\n0\n3\n0 0 0\n61 61 61\n0 2 2\n",          # level_index missing
    "3\n0\n3\n0 0\n61 61 61\n0 2 2\n0 0 0\n\n",   # two values in a row
    "3\n0\n3\n0 0 0 0\n61 61 61\n0 2 2\n0 0 0\n\n",
    "x\n0\n3\n0 0 0\n61 61 61\n0 2 2\n0 0 0\n\n",
    "-1\n0\n3\n0 0 0\n61 61 61\n0 2 2\n0 0 0\n\n",
    "3\n0\n3\n0 a 0\n61 61 61\n0 2 2\n0 0 0\n\n",
])
def test_garbage_dir_control_is_corrupt(tmp_path: Path, text: str) -> None:
    with pytest.raises(CorruptData):
        DirControl.parse(text)
    (tmp_path / CONTROL).write_text(text)
    with pytest.raises(CorruptData):
        dircontrol.read(str(tmp_path))
    with pytest.raises(CorruptData):
        allocate(str(tmp_path), True, None, None)
    assert (tmp_path / CONTROL).read_text() == text  # left alone


def test_binary_dir_control_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / CONTROL).write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(CorruptData):
        dircontrol.read(str(tmp_path))


def test_read_defaults_when_absent(tmp_path: Path) -> None:
    control = dircontrol.read(str(tmp_path))
    assert control.render() == DirControl().render() == "0\n0\n3\n0 0 0\n61 61 61\n0 2 2\n0 0 0\n\n"


# allocate / release -----------------------------------------------------------------------------

def test_hashing_starts_at_the_hundredth(tmp_path: Path) -> None:
    buckets = allocate(str(tmp_path), True, None, None, count=150)
    assert buckets == [""] * 99 + ["0"] * 51
    assert (tmp_path / "0").is_dir()
    assert stat.S_IMODE((tmp_path / "0").stat().st_mode) == 0o700
    control = dircontrol.read(str(tmp_path))
    assert control.cur_users == 150
    assert control.the_dir == "0"
    assert allocate(str(tmp_path), True, None, None, count=50) == ["0"] * 49 + ["1"]
    assert (tmp_path / "1").is_dir()
    assert dircontrol.read(str(tmp_path)).the_dir == "1"


def test_two_level_buckets_are_created(tmp_path: Path) -> None:
    control = DirControl()
    control.cur_users = 6299
    control.point_at("z")                                # where the 6299th went
    dircontrol.write(str(tmp_path), control, None, None)
    assert allocate(str(tmp_path), True, None, None) == ["0/0"]
    assert (tmp_path / "0" / "0").is_dir()
    after = dircontrol.read(str(tmp_path))
    assert (after.cur_users, after.level_cur, after.the_dir) == (6300, 1, "0/0")
    assert after.level_index == [0, 0, 0]


def test_point_at_records_level_and_index() -> None:
    control = DirControl()
    control.point_at("1/z/A")
    assert (control.level_cur, control.level_index, control.the_dir) == (2, [1, 61, 10], "1/z/A")
    control.point_at("")
    assert (control.level_cur, control.level_index, control.the_dir) == (0, [0, 0, 0], "")


def test_not_hashed_is_always_flat(tmp_path: Path) -> None:
    control = DirControl()
    control.cur_users = 500
    dircontrol.write(str(tmp_path), control, None, None)
    assert allocate(str(tmp_path), False, None, None, count=3) == ["", "", ""]
    assert dircontrol.read(str(tmp_path)).cur_users == 503
    assert sorted(os.listdir(tmp_path)) == [CONTROL]


def test_release_and_free_list_reuse(tmp_path: Path) -> None:
    directory = str(tmp_path)
    allocate(directory, True, None, None, count=250)     # up to bucket "1"
    release(directory, "0", None, None)
    release(directory, "1", None, None)
    release(directory, "", None, None)                   # a flat entry frees no bucket
    assert dircontrol.read(directory).cur_users == 247
    assert (tmp_path / FREE_LIST).read_text() == "0\n1\n"
    assert allocate(directory, True, None, None) == ["0"]
    assert (tmp_path / FREE_LIST).read_text() == "1\n"
    assert allocate(directory, True, None, None, count=3) == ["1", "1", "1"]
    assert (tmp_path / FREE_LIST).read_text() == ""
    assert dircontrol.read(directory).cur_users == 251


def test_free_list_ignores_junk(tmp_path: Path) -> None:
    (tmp_path / FREE_LIST).write_text("../evil\n\n0\nab\n1/2\n/x\n")
    assert allocate(str(tmp_path), True, None, None, count=2) == ["0", "1/2"]
    assert not (tmp_path.parent / "evil").exists()


def test_release_never_goes_negative(tmp_path: Path) -> None:
    release(str(tmp_path), "", None, None)
    assert dircontrol.read(str(tmp_path)).cur_users == 0


def test_not_hashed_does_not_consume_free_list(tmp_path: Path) -> None:
    (tmp_path / FREE_LIST).write_text("0\n")
    assert allocate(str(tmp_path), False, None, None) == [""]
    assert (tmp_path / FREE_LIST).read_text() == "0\n"


# split_bucket -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("parent", "expected"), [
    ("/d/domains/example.com", ("/d/domains/example.com", "")),
    ("/d/domains/example.com/0", ("/d/domains/example.com", "0")),
    ("/d/domains/example.com/0/z", ("/d/domains/example.com", "0/z")),
    ("/d/domains/example.com/A/b/9", ("/d/domains/example.com", "A/b/9")),
    ("/d/domains/0/1/2/3", ("/d/domains/0", "1/2/3")),       # at most three levels
    ("/d/domains/_", ("/d/domains/_", "")),                  # not a bucket character
    ("/d/domains", ("/d/domains", "")),
])
def test_split_bucket(parent: str, expected: tuple[str, str]) -> None:
    assert split_bucket(parent) == expected


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=1, max_value=390700 + 62 ** 3 * 100 - 1000))
def test_split_bucket_inverts_bucket_for(n: int) -> None:
    bucket = bucket_for(n)
    parent = os.path.join("/home/vpopmail/domains/example.com", bucket) if bucket else \
        "/home/vpopmail/domains/example.com"
    assert split_bucket(parent) == ("/home/vpopmail/domains/example.com", bucket)


# C vpopmail 5.4.33 (cdb, USERS_BIG_DIR) on a domain of 264 users, its .dir-control then:
C_AT_264 = "264\n0\n3\n0 0 0\n61 61 61\n0 2 2\n1 0 0\n1\n"


def test_after_deletions_the_current_bucket_moves_on_as_in_c(tmp_path: Path) -> None:
    # C: 65 flat users deleted (count 199), then 3 added: all went into bucket 2 (the count
    # reached 200), and .dir-control said so
    (tmp_path / CONTROL).write_text(C_AT_264)
    for _ in range(65):
        release(str(tmp_path), "", None, None)
    assert allocate(str(tmp_path), True, None, None, count=3) == ["2", "2", "2"]
    assert (tmp_path / CONTROL).read_text() == C_AT_264.replace("264", "202").replace(
        "1 0 0\n1\n", "2 0 0\n2\n")


def test_reusing_a_freed_bucket_keeps_the_current_one_as_in_c(tmp_path: Path) -> None:
    # C: 122 users added to the 264 (into 1 and 2), u50 (flat) and n305 (bucket 1) deleted,
    # one added: it reused bucket 1 and .dir-control kept pointing at bucket 2
    (tmp_path / CONTROL).write_text(C_AT_264)
    assert allocate(str(tmp_path), True, None, None, count=122) == ["1"] * 35 + ["2"] * 87
    release(str(tmp_path), "", None, None)
    release(str(tmp_path), "1", None, None)
    assert allocate(str(tmp_path), True, None, None) == ["1"]
    assert (tmp_path / CONTROL).read_text() == C_AT_264.replace("264", "385").replace(
        "1 0 0\n1\n", "2 0 0\n2\n")


def test_a_current_bucket_that_is_no_bucket_falls_back_to_the_count(tmp_path: Path) -> None:
    (tmp_path / CONTROL).write_text(C_AT_264.replace("\n1\n", "\n../x\n"))
    assert allocate(str(tmp_path), True, None, None) == ["1"]
