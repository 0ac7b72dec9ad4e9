"""vpasswd lines and vpasswd.cdb (vpopmail.stores.cdbfiles), against what C vpopmail wrote."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpopmail.stores import VUser
from vpopmail.assign import AssignEntry
from vpopmail.config import Config, validate
from vpopmail.errors import CorruptData, UserDoesNotExist, UsernameExists
from vpopmail.stores.cdbfiles import VPASSWD, VPASSWD_CDB, CdbFiles, format_line, parse_fields, parse_line

needs_tinycdb = pytest.mark.skipif(shutil.which("cdb") is None, reason="needs tinycdb's cdb tool")

DOMAIN_DIR = "/home/vpopmail/domains/example.com"
# c-vpopmail-observed.md section 4 (clear passwords on: 8 fields)
OBSERVED_LINES = [
    "alice:$1$Y3QIu8V9$jwXjUUaDsmkd9aD/UbEMb/:1:0:alice:/home/vpopmail/domains/example.com/alice:1048576S:pw1",
    "bob:$1$PgHvGVaV$TaBACm.FGIX3fwK2lg/nm0:1:0:bob:/home/vpopmail/domains/example.com/bob:NOQUOTA:pw2",
    "postmaster:$1$5X2q/ML/$7M4lF9X1Czsma6St9ZRqb1:1:0:Postmaster:/home/vpopmail/domains/example.com/postmaster:NOQUOTA:secret",
]
OBSERVED_USERS = [
    VUser("alice", "$1$Y3QIu8V9$jwXjUUaDsmkd9aD/UbEMb/", 1, 0, "alice", f"{DOMAIN_DIR}/alice",
          "1048576S", "pw1"),
    VUser("bob", "$1$PgHvGVaV$TaBACm.FGIX3fwK2lg/nm0", 1, 0, "bob", f"{DOMAIN_DIR}/bob",
          "NOQUOTA", "pw2"),
    VUser("postmaster", "$1$5X2q/ML/$7M4lF9X1Czsma6St9ZRqb1", 1, 0, "Postmaster",
          f"{DOMAIN_DIR}/postmaster", "NOQUOTA", "secret"),
]
# the klen,dlen pairs of the observed `cdb -d vpasswd.cdb`
OBSERVED_LENGTHS = [(5, 104), (3, 99), (10, 116)]


def make_backend(clear: bool = True) -> CdbFiles:
    return CdbFiles(Config(validate({"passwords": {"clear_passwords": clear},
                                     "delivery": {"file_sync": False}})))


def domain_in(path: Path) -> AssignEntry:
    """A domain directory as vadddomain leaves it: an empty vpasswd (no vpasswd is damage)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "vpasswd").touch()
    return AssignEntry("example.com", "example.com", os.getuid(), os.getgid(), str(path))


def cdb_dump(path: Path) -> bytes:
    return subprocess.run(["cdb", "-d", str(path)], check=True, capture_output=True).stdout


# golden lines -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "user"), list(zip(OBSERVED_LINES, OBSERVED_USERS)))
def test_observed_lines_with_clear_passwords(line: str, user: VUser) -> None:
    assert parse_line(line) == user
    assert format_line(user, clear_passwords=True) == line
    assert len(line.split(":")) == 8


@pytest.mark.parametrize(("line", "user"), list(zip(OBSERVED_LINES, OBSERVED_USERS)))
def test_observed_lines_without_clear_passwords(line: str, user: VUser) -> None:
    seven = line.rsplit(":", 1)[0]
    assert format_line(user, clear_passwords=False) == seven
    assert len(seven.split(":")) == 7
    assert parse_line(seven) == user.copy(clear="")


def test_observed_lengths_match_the_line_layout() -> None:
    """The observed dlen values are 6 more than these lines: C ran with a home path 6 characters
    longer than the /home/vpopmail printed in the reference (as in its users/cdb dump)."""
    for line, (klen, dlen) in zip(OBSERVED_LINES, OBSERVED_LENGTHS):
        name, rest = line.split(":", 1)
        assert len(name.encode()) == klen
        assert len(rest.encode()) + 6 == dlen


def test_parse_fields_is_the_cdb_value() -> None:
    name, rest = OBSERVED_LINES[0].split(":", 1)
    assert parse_fields(name, rest) == OBSERVED_USERS[0]
    assert parse_fields("x", "pw:1:0:g:/d:NOQUOTA") == VUser("x", "pw", 1, 0, "g", "/d", "NOQUOTA", "")
    assert parse_fields("x", "pw:1:0:g:/d:NOQUOTA:a:b").clear == "a:b"


@pytest.mark.parametrize("line", [
    "alice:$1$x:1:0:alice:/d/alice",                     # 6 fields
    "alice",                                             # no colon
    ":$1$x:1:0:alice:/d/alice:NOQUOTA",                  # no name
    "alice:$1$x:one:0:alice:/d/alice:NOQUOTA",           # non-numeric uid
    "alice:$1$x:1:zero:alice:/d/alice:NOQUOTA",          # non-numeric gid (flags)
    "alice:$1$x::0:alice:/d/alice:NOQUOTA",              # empty uid
    "",
])
def test_corrupt_lines(line: str) -> None:
    with pytest.raises(CorruptData):
        parse_line(line)


# vpasswd + vpasswd.cdb through the backend ------------------------------------------------------

@needs_tinycdb
def test_files_written_for_the_observed_users(tmp_path: Path) -> None:
    backend = make_backend(clear=True)
    domain = domain_in(tmp_path / "example.com")
    backend.create_domain(domain)
    backend.add_users(domain, [OBSERVED_USERS[2], OBSERVED_USERS[0]])
    backend.add_users(domain, [OBSERVED_USERS[1]])
    vpasswd = tmp_path / "example.com" / VPASSWD
    assert vpasswd.read_text() == "".join(line + "\n" for line in OBSERVED_LINES)   # sorted
    assert stat.S_IMODE(vpasswd.stat().st_mode) == 0o600
    cdb = tmp_path / "example.com" / VPASSWD_CDB
    assert stat.S_IMODE(cdb.stat().st_mode) == 0o600
    expected = b""
    for line in OBSERVED_LINES:
        name, rest = line.encode().split(b":", 1)
        expected += b"+%d,%d:%s->%s\n" % (len(name), len(rest), name, rest)
    assert cdb_dump(cdb) == expected + b"\n"
    for user in OBSERVED_USERS:
        assert backend.get_user(domain, user.name) == user
    assert backend.get_user(domain, "carol") is None
    assert backend.list_users(domain) == OBSERVED_USERS


def test_duplicate_user_is_refused(tmp_path: Path) -> None:
    backend = make_backend()
    domain = domain_in(tmp_path / "d")
    backend.add_users(domain, [OBSERVED_USERS[0]])
    with pytest.raises(UsernameExists):
        backend.add_users(domain, [OBSERVED_USERS[1], OBSERVED_USERS[0]])
    assert [u.name for u in backend.list_users(domain)] == ["alice"]
    with pytest.raises(UsernameExists):
        backend.add_users(domain, [OBSERVED_USERS[1], OBSERVED_USERS[1]])


def test_update_and_delete(tmp_path: Path) -> None:
    backend = make_backend()
    domain = domain_in(tmp_path / "d")
    backend.add_users(domain, OBSERVED_USERS)
    backend.update_users(domain, [OBSERVED_USERS[1].copy(flags=16, quota="5000S")])
    assert backend.get_user(domain, "bob") == OBSERVED_USERS[1].copy(flags=16, quota="5000S")
    with pytest.raises(UserDoesNotExist):
        backend.update_users(domain, [VUser("carol")])
    assert backend.delete_user(domain, "alice") == OBSERVED_USERS[0]
    assert backend.get_user(domain, "alice") is None
    with pytest.raises(UserDoesNotExist):
        backend.delete_user(domain, "alice")


def test_without_clear_passwords_the_eighth_field_is_absent(tmp_path: Path) -> None:
    backend = make_backend(clear=False)
    domain = domain_in(tmp_path / "d")
    backend.add_users(domain, [OBSERVED_USERS[0]])
    assert (tmp_path / "d" / VPASSWD).read_text() == OBSERVED_LINES[0].rsplit(":", 1)[0] + "\n"
    assert backend.get_user(domain, "alice") == OBSERVED_USERS[0].copy(clear="")


def test_missing_cdb_is_rebuilt_from_vpasswd(tmp_path: Path) -> None:
    domain = domain_in(tmp_path / "d")
    (tmp_path / "d" / VPASSWD).write_text("".join(line + "\n" for line in OBSERVED_LINES))
    backend = make_backend()
    assert backend.get_user(domain, "bob") == OBSERVED_USERS[1]
    assert (tmp_path / "d" / VPASSWD_CDB).exists()


@pytest.mark.parametrize("keep", [0, 100, 2047, 2060])
def test_truncated_cdb_is_corrupt_not_unknown(tmp_path: Path, keep: int) -> None:
    backend = make_backend()
    domain = domain_in(tmp_path / "d")
    backend.add_users(domain, OBSERVED_USERS)
    cdb = tmp_path / "d" / VPASSWD_CDB
    cdb.write_bytes(cdb.read_bytes()[:keep])
    for user in OBSERVED_USERS:
        with pytest.raises(CorruptData):
            backend.get_user(domain, user.name)


def test_corrupt_cdb_value_is_corrupt(tmp_path: Path) -> None:
    from vpopmail.cdbwrite import build

    domain = domain_in(tmp_path / "d")
    (tmp_path / "d" / VPASSWD_CDB).write_bytes(build([(b"alice", b"$1$x:one:0:a:/d:NOQUOTA"),
                                                      (b"bob", b"$1$x:1:0")]))
    backend = make_backend()
    for name in ("alice", "bob"):
        with pytest.raises(CorruptData):
            backend.get_user(domain, name)


@pytest.mark.parametrize("bad", ["alice:$1$x:1:0:alice:/d/alice\n",
                                 ":$1$x:1:0:alice:/d/alice:NOQUOTA\n"])
def test_malformed_vpasswd_is_corrupt_and_left_alone(tmp_path: Path, bad: str) -> None:
    domain = domain_in(tmp_path / "d")
    (tmp_path / "d" / VPASSWD).write_text(OBSERVED_LINES[1] + "\n" + bad)
    backend = make_backend()
    with pytest.raises(CorruptData):
        backend.list_users(domain)
    with pytest.raises(CorruptData):
        backend.add_users(domain, [VUser("carol", "x", 1, 0, "carol", "/d/carol")])
    assert (tmp_path / "d" / VPASSWD).read_text() == OBSERVED_LINES[1] + "\n" + bad


def test_non_numeric_uid_in_vpasswd_is_corrupt(tmp_path: Path) -> None:
    domain = domain_in(tmp_path / "d")
    (tmp_path / "d" / VPASSWD).write_text(
        OBSERVED_LINES[1] + "\nzed:$1$x:one:0:zed:/d/zed:NOQUOTA\n")
    backend = make_backend()
    with pytest.raises(CorruptData):
        backend.list_users(domain)
    with pytest.raises(CorruptData):
        backend.get_user(domain, "zed")         # the cdb is rebuilt from vpasswd, line kept
    assert backend.get_user(domain, "bob") == OBSERVED_USERS[1]


# round trip -------------------------------------------------------------------------------------

field = st.text(st.characters(blacklist_characters=":\n\r\0", blacklist_categories=("Cs",)),
                max_size=20)
users = st.builds(
    VUser,
    name=st.text(st.characters(blacklist_characters=":\n\r\0", blacklist_categories=("Cs",)),
                 min_size=1, max_size=20),
    passwd=field,
    uid=st.integers(min_value=-(2**31), max_value=2**31),
    flags=st.integers(min_value=0, max_value=2**31),
    gecos=field, dir=field, quota=field, clear=field)


@settings(max_examples=200, deadline=None)
@given(user=users)
def test_format_parse_round_trip(user: VUser) -> None:
    assert parse_line(format_line(user, clear_passwords=True)) == user
    assert parse_line(format_line(user, clear_passwords=False)) == user.copy(clear="")
    line = format_line(user, clear_passwords=True)
    name, rest = line.split(":", 1)
    assert parse_fields(name, rest) == user
