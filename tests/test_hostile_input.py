"""Hostile and malformed input to every parser: each answers with its own error class (or a
value), never another exception, never a hang; and the installed hot paths fed a corrupted
file defer (111) with one clear line and no traceback.

Already covered elsewhere and not repeated here: cdb truncation, garbage and huge lengths
(test_cdb.py), tcp.smtp rules fuzzed against tcprules (test_tcprules.py), quota strings
(test_quota.py), corrupt users/cdb and vpasswd.cdb under vdelivermail and vchkpw
(test_vdelivermail_faults.py, test_vchkpw.py), oversized and field-less fd-3 input.
"""
from __future__ import annotations

import grp
import os
import pwd
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from install_site import CLEAN_ENV, install
from delivery_site import DOMAIN
from helpers import time_limit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from login_site import POP_ENV, STAMP, LoginSite

from auth.vchkpw import MAX_INPUT, Finish, parse_input
from delivery import dotqmail
from maildir.maildir import make_maildir
from maildir.quota import (
    RECALC_SIZE,
    check_quota,
    is_over,
    load_maildirsize,
    parse_limits,
    scan_usage,
    usage_percent,
)
from vpopmail import assign
from vpopmail.assign import cdb_records, parse_entry
from vpopmail.cdbwrite import build
from vpopmail.config import SCHEMA, Config, parse_file, validate
from vpopmail.errors import MISUSE, ConfigError, CorruptData, VpopmailError
from vpopmail.stores.relay import RelayTable, _stamp
from vpopmail.stores.cdbfiles import parse_fields, parse_line

PASSWORD = "Secret-42"
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])




# -- vpasswd lines -------------------------------------------------------------------------------

@FUZZ
@given(st.text(st.sampled_from("ab:1-0 \t\r\n\0/\u00e9\udcff9$."), max_size=60) | st.text())
def test_vpasswd_line_parses_or_is_corrupt(line: str) -> None:
    with time_limit():
        try:
            user = parse_line(line)
        except CorruptData as exc:
            assert "vpasswd" in str(exc)
            return
    assert user.name and ":" not in user.name
    assert isinstance(user.uid, int) and isinstance(user.flags, int)
    assert line.startswith(f"{user.name}:{user.passwd}:")


@pytest.mark.parametrize("rest", ["x:" + "9" * 5000 + ":0:g:/d:NOQUOTA", "x:1:0:g:/d",
                                  "x:1:\u0661:g:/d:NOQUOTA"])
def test_vpasswd_field_edge_cases(rest: str) -> None:
    """A 5000-digit uid (past Python's int limit) is corrupt, not a ValueError."""
    try:
        user = parse_fields("alice", rest)
    except CorruptData:
        return
    assert isinstance(user.uid, int)


# -- users/assign --------------------------------------------------------------------------------

assign_text = st.lists(st.one_of(
    st.text(st.sampled_from("+=.-:abc19\0 \n\u00e9\u20ac"), max_size=40),
    st.builds(lambda d, u, g: f"+{d}-:{d}:{u}:{g}:/d/{d}:-::",
              st.text(st.sampled_from("ab.-"), min_size=1, max_size=8),
              st.sampled_from(["89", "-1", " 89", "8_9", "", "x", "9" * 12]),
              st.sampled_from(["89", "0", "-5"]))), max_size=6).map("\n".join)


@FUZZ
@given(assign_text | st.text())
def test_assign_text_builds_or_is_corrupt(text: str) -> None:
    with time_limit():
        try:
            records = cdb_records(text)
        except CorruptData as exc:
            assert "users/assign" in str(exc)
        else:
            assert records[-1][0] == b"" and all(k.startswith(b"!") for k, _ in records[:-1])
        for line in text.split("\n"):
            entry = parse_entry(line)
            assert entry is None or (0 <= entry.uid < 10**10 and 0 <= entry.gid < 10**10)


@pytest.mark.parametrize("uid", [b"-1", b" 89", b"8_9", b"", b"x", b"\xd9\xa1", b"9" * 11])
def test_users_cdb_record_with_odd_ids_is_corrupt(tmp_path: Path, uid: bytes) -> None:
    """``-1`` given to seteuid means "no change": a root process would stay root."""
    (tmp_path / "users").mkdir()
    value = b"example.com\0" + uid + b"\089\0/d/example.com\0-\0"
    (tmp_path / "users" / "cdb").write_bytes(build([(b"!example.com-", value)]))
    with pytest.raises(CorruptData):
        assign.lookup(str(tmp_path), "example.com")


# -- maildirsize and quota strings ---------------------------------------------------------------

@FUZZ
@given(data=st.binary(max_size=300) | st.lists(st.sampled_from(
    [b"1000S", b"NOQUOTA", b"-5 -1", b"9" * 30 + b" 1", b"12 x", b"\xff\xfe", b" ", b"",
     b"-99999999999 0", b"5000 2", b"1e9 1"]), max_size=8).map(b"\n".join))
def test_maildirsize_any_content(data: bytes) -> None:
    """Read, check and count against any maildirsize: a value or a recount, never an error."""
    with tempfile.TemporaryDirectory() as tmp, time_limit():
        maildir = os.path.join(tmp, "Maildir")
        make_maildir(maildir)
        with open(os.path.join(maildir, "new", "1.M1P1.host,S=700"), "wb") as fh:
            fh.write(b"x" * 700)
        with open(os.path.join(maildir, "maildirsize"), "wb") as fh:
            fh.write(data)
        found = load_maildirsize(maildir)
        assert found is None or isinstance(found.bytes, int)
        over, percent = check_quota(maildir, "5000S,10C", 100)
        assert isinstance(over, bool) and isinstance(percent, int)
        after = load_maildirsize(maildir)
        assert after is not None and after.quota == "5000S,10C"
        if found is None or found.quota != "5000S,10C":
            assert (after.bytes, after.messages, after.lines) == (700, 1, 1)  # recounted


def test_huge_maildirsize_is_read_in_part_and_recounted(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    make_maildir(str(maildir))
    (maildir / "maildirsize").write_bytes(b"5000S\n" + b"1 1\n" * 2_000_000)
    with time_limit():
        found = load_maildirsize(str(maildir))
        assert found is not None and found.lines <= RECALC_SIZE and found.file_size > 10**6
        assert check_quota(str(maildir), "5000S", 10) == (False, 0)
    assert (maildir / "maildirsize").read_bytes() == b"5000S\n0 0\n"


@FUZZ
@given(st.text(st.sampled_from("0123456789SCsc,+- \tNOQUTAkmg\u0661"), max_size=30) | st.text())
def test_quota_limits_never_raise(quota: str) -> None:
    size, count = parse_limits(quota)
    assert isinstance(size, int) and isinstance(count, int)
    assert isinstance(is_over(quota, (10, 1), 5), bool)
    assert isinstance(usage_percent(quota, (10, 1)), int)


# -- .qmail files --------------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=200) | st.lists(st.sampled_from(
    [b"|prog \xff", b"&a@b", b"./Maildir/", b"# c", b"+list", b"\0", b"/mbox", b"  ", b"\r"]),
    max_size=6).map(b"\n".join))
def test_dotqmail_any_content(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp, time_limit():
        path = os.path.join(tmp, ".qmail")
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            lines = dotqmail.read_file(path)
        except OSError as exc:
            assert b"\0" in data and "NUL byte in line" in exc.strerror
            return
        except dotqmail.BlankFirstLine:
            assert not data.split(b"\n")[0].rstrip(b" \t\r")
            return
        assert b"\0" not in data
        assert (lines == []) == (data == b"")
        assert lines is None or all(kind in {"comment", "list", "program", "maildir", "mbox",
                                             "forward"} for kind, _ in lines)


# -- open-smtp -----------------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=200) | st.lists(st.sampled_from(
    [b'192.0.2.1:allow,RELAYCLIENT="",RBLSMTPD=""\t1700000000', b"x:y\t1", b"\t", b"garbage",
     b"::1:allow\t" + b"9" * 5000, b"10.0.0.1:allow\t-5", b"\xff:allow\t1", b":allow"]),
    max_size=6).map(b"\n".join))
def test_open_smtp_any_content(data: bytes) -> None:
    """Whatever open-smtp holds, a login's update and clearopensmtp either work or raise the
    library's own error (BadInput for a line tcprules would refuse): a login goes on then."""
    with tempfile.TemporaryDirectory() as tmp, time_limit():
        config = Config(validate({"paths": {"vpopmail_home": tmp}, "owner": {
            "uid": os.getuid(), "gid": os.getgid()}, "delivery": {"file_sync": False}}))
        os.mkdir(os.path.join(tmp, "etc"))
        table = RelayTable(config, timeout=1)
        with open(table.open_smtp, "wb") as fh:
            fh.write(data)
        assert all(isinstance(_stamp(line), int) for _, line in table.entries())
        for action in (lambda: table.open_relay("192.0.2.77"), lambda: table.clear(180)):
            try:
                action()
            except VpopmailError:
                pass
        for line in Path(table.open_smtp).read_bytes().splitlines():
            assert b"\n" not in line


# -- fd 3 of vchkpw ------------------------------------------------------------------------------

fd3_fields = st.lists(st.lists(st.sampled_from([b"a", b"\xff", b"\n", b"@", b"%", b"/", b"\xe9"]),
                               max_size=6).map(b"".join), max_size=5).map(b"\0".join)


@FUZZ
@given(st.binary(max_size=MAX_INPUT + 20) | fd3_fields)
def test_fd3_input_parses_or_is_misuse(data: bytes) -> None:
    try:
        login, secret, stamp = parse_input(data)
    except Finish as end:
        assert end.code == MISUSE
        assert len(data) > MAX_INPUT or data.count(b"\0") < 2
        return
    fields = [f.encode("utf-8", "surrogateescape") for f in (login, secret, stamp)]
    assert fields == data.split(b"\0")[:3]  # nothing lost, nothing decoded wrongly


# -- the configuration ---------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=120) | st.sampled_from([
    b"[paths]\nqmail_dir = 5\n", b"a = " + b"[" * 3000, b"[owner]\nuid = -1\n",
    b"[owner]\nuid = 99999999999\n", b'[paths]\nqmail_dir = "/x\\u0000y"\n',
    b"\xef\xbb\xbf[locks]\ntimeout = 3\n", b"[locks]\ntimeout = 1e400\n", b"[[paths]]\n",
    b"paths = 3\n", b'[logging]\nlevel = "\xff"\n']))
def test_config_file_loads_or_is_a_config_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp, time_limit():
        path = os.path.join(tmp, "vpopmail.toml")
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            values = parse_file(path)
        except ConfigError as exc:
            assert path in str(exc)
            return
        assert set(values) == {f"{s}_{k}" for s, keys in SCHEMA.items() for k in keys}
        assert int(values["owner_uid"]) >= 0  # type: ignore[call-overload]


@FUZZ
@given(st.dictionaries(st.sampled_from([*SCHEMA, "bogus"]), st.one_of(
    st.dictionaries(st.sampled_from(["uid", "scheme", "qmail_dir", "level", "timeout", "x"]),
                    st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none(),
                              st.lists(st.integers(), max_size=2))),
    st.integers(), st.text(max_size=3)), max_size=4))
def test_config_validate_any_shape(raw: dict[str, object]) -> None:
    try:
        values = validate(raw, "fuzz.toml")  # type: ignore[arg-type]
    except ConfigError:
        return
    assert all(type(values[f"{s}_{k}"]) is kind for s, keys in SCHEMA.items()
               for k, (_, kind) in keys.items())


# -- the installed hot paths fed corrupted files -------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoginSite]:
    """One sandbox install for the module; each test restores what it damages."""
    base = tmp_path_factory.mktemp("hostile")
    me = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    inst = install(base / "vpopmail", base / "qmail", *me)
    login_site = LoginSite.create(inst, False)
    login_site.add("alice", PASSWORD)
    login_site.ok("vsetuserquota", f"alice@{DOMAIN}", "1M")
    yield login_site
    login_site.syslog.close()


@contextmanager
def damaged(path: Path, data: bytes) -> Iterator[None]:
    """``path`` holds ``data`` for the duration; then its old content (or absence) is back."""
    old = path.read_bytes() if path.exists() else None
    path.write_bytes(data)
    try:
        yield
    finally:
        if old is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(old)


def login(site: LoginSite, login: bytes | str, password: str = PASSWORD,
          data: bytes | None = None, **env: str) -> tuple[int, str]:
    site.syslog.messages()
    result = site.login(login, password, data=data, program=["/bin/true"],
                        env={k: v for k, v in dict(POP_ENV, **env).items() if v}, timeout=30)
    return result.code, result.stderr


def assert_clean_defer(code: int, text: str, *words: str) -> None:
    assert code == 111 and "Traceback" not in text, text
    for word in words:
        assert word in text, text


@pytest.mark.parametrize("data,words", [
    (b"\xff\xfe[paths]\n", ["not UTF-8"]), (b"a = " + b"[" * 3000 + b"\n", ["nested too deeply"]),
    (b'[paths]\nqmail_dir = "/q\\u0000"\n', ["NUL"]), (b"[owner]\nuid = -1\n", ["owner.uid"]),
    (b"[paths]\nspeed = 3\n", ["unknown key"])])
def test_corrupt_config_defers_every_program(site: LoginSite, data: bytes,
                                             words: list[str]) -> None:
    """C had no config file; ours broken must never read as "wrong password" (vchkpw exited 1
    with a traceback for a non-UTF-8 or deeply nested file) or as a bounce."""
    with damaged(site.inst.config_path, data):
        code, stderr = login(site, "alice@example.com")
        assert_clean_defer(code, stderr, *words)
        delivered = site.deliver("alice")
        assert_clean_defer(delivered.returncode, delivered.stdout.decode() +
                           delivered.stderr.decode(), *words)
        admin = site.inst.run("vuserinfo", f"alice@{DOMAIN}", timeout=30)
        assert admin.returncode != 0 and "Traceback" not in admin.stdout + admin.stderr
        assert words[0] in admin.stdout + admin.stderr, admin
    assert list((site.maildir("alice") / "new").iterdir()) == []


@pytest.mark.parametrize("uid", [b"-1", b"x"])
def test_users_cdb_with_a_bad_uid_defers(site: LoginSite, uid: bytes) -> None:
    path = site.inst.qmaildir / "users" / "cdb"
    value = f"{DOMAIN}\0".encode() + uid + f"\0{os.getgid()}\0{site.domain_dir}\0-\0".encode()
    with damaged(path, build([(f"!{DOMAIN}-".encode(), value), (b"", b"-")])):
        code, stderr = login(site, "alice@example.com")
        assert code == 111 and "Traceback" not in stderr
        assert any("user database unreadable" in t and "bad record" in t
                   for t in site.syslog.texts())
        delivered = site.deliver("alice")
        assert_clean_defer(delivered.returncode, delivered.stdout.decode(), "bad record")


def test_garbage_vpasswd_without_its_cdb_defers(site: LoginSite) -> None:
    cdb_path = site.domain_dir / "vpasswd.cdb"
    saved = cdb_path.read_bytes()
    cdb_path.unlink()
    try:
        with damaged(site.domain_dir / "vpasswd", b"alice\n\xff\xfe:::\n"):
            code, stderr = login(site, "alice@example.com")
            assert code == 111 and "Traceback" not in stderr
            delivered = site.deliver("alice")
            assert_clean_defer(delivered.returncode, delivered.stdout.decode(), "vpasswd")
    finally:
        cdb_path.write_bytes(saved)


@pytest.mark.parametrize("content,line", [(b"|echo a\0b\n", 1), (b"# ok\n&x@\0y.test\n", 2),
                                          (b"./Maildir/\n./Mail\0dir/\n", 2)])
def test_nul_in_dot_qmail_defers_with_its_line(site: LoginSite, content: bytes,
                                               line: int) -> None:
    dot_qmail = site.user_dir("alice") / ".qmail"
    with damaged(dot_qmail, content):
        dot_qmail.chmod(0o600)
        delivered = site.deliver("alice")
    assert_clean_defer(delivered.returncode, delivered.stdout.decode(),
                       f".qmail: NUL byte in line {line}")
    assert list((site.maildir("alice") / "new").iterdir()) == []


def test_non_utf8_program_line_runs_with_its_exact_bytes(site: LoginSite) -> None:
    out = site.work / "program-out"
    dot_qmail = site.user_dir("alice") / ".qmail"
    with damaged(dot_qmail, b"|printf '%s' '\xe9t\xe9 \xff' > " + str(out).encode() + b"\n"):
        dot_qmail.chmod(0o600)
        assert site.deliver("alice").returncode == 0
    assert out.read_bytes() == b"\xe9t\xe9 \xff"


@pytest.mark.parametrize("content", [bytes(range(256)) + b"\n\xff\n",
                                     b"1048576S\n-99999999999999 -5\n",
                                     b"1048576S\n" + b"12 1\n" * 3000, b"NOQUOTA\nx y\n"],
                         ids=["binary", "negative", "huge", "garbage"])
def test_garbage_maildirsize_is_recounted_at_delivery(site: LoginSite, content: bytes) -> None:
    """maildirsize is a cache: garbage in it never fails a delivery."""
    maildir = site.maildir("alice")
    with damaged(maildir / "maildirsize", content):
        delivered = site.deliver("alice")
        assert delivered.returncode == 0, delivered
        found = load_maildirsize(str(maildir))
        assert found is not None and found.quota == "1048576S"
        if not content.startswith(b"1048576S\n-"):  # C sums negative lines too: kept as is
            assert (found.bytes, found.messages) == scan_usage(str(maildir))
    for message in (maildir / "new").iterdir():
        message.unlink()


def test_non_utf8_domain_limits_defer_the_login(site: LoginSite) -> None:
    with damaged(site.domain_dir / ".qmailadmin-limits", b"disable_pop\xff\n"):
        code, stderr = login(site, "alice@example.com")
    assert code == 111 and "Traceback" not in stderr


def test_garbage_open_smtp_never_fails_a_login(site: LoginSite) -> None:
    site.inst.set_config("relay", "roaming_users", True)
    etc = site.inst.prefix / "etc"
    try:
        with damaged(etc / "open-smtp", b"\xff\xfe:nonsense\tx\n:allow,X\n\0\n"):
            code, stderr = login(site, "alice@example.com")
            assert (code, stderr) == (0, "")
            # the lines that are not an IP's are dropped, the client's IP goes in
            assert not any("relay not opened" in t for t in site.syslog.texts())
            assert [line.split(b":")[0] for line in
                    (etc / "open-smtp").read_bytes().splitlines()] == [b"192.0.2.10"]
    finally:
        site.inst.set_config("relay", "roaming_users", False)


@pytest.mark.parametrize("name,content", [("ip_alias_map", b"\xff\xfe 192.0.2.1\n\0\n"),
                                          ("defaultdomain", b"\xff\0../../etc\n")])
def test_garbage_default_domain_files_reject_bare_logins(site: LoginSite, name: str,
                                                         content: bytes) -> None:
    with damaged(site.inst.prefix / "etc" / name, content):
        code, stderr = login(site, "alice")
    assert (code, stderr) == (1, "")


@pytest.mark.parametrize("data,expected", [
    (b"al\xe9ce@example.com\0" + PASSWORD.encode() + b"\0\0", 1),
    (b"alice@ex\xe4mple.com\0" + PASSWORD.encode() + b"\0\0", 1),
    (b"alice@example.com\0" + PASSWORD.encode() + b"\n\0\0", 1),
    (b"alice@example.com\n\0" + PASSWORD.encode() + b"\0\0", 1),
    (b"\0\0\0", 1), (b"alice@example.com\0\0\0", 1),
    (b"alice@example.com\0" + PASSWORD.encode() + b"\0\0extra\0fields\0", 0),
    (b"alice@example.com\0" + PASSWORD.encode() + b"\0<" + b"1" * (MAX_INPUT - 31) + b">\0", 0),
    (b"alice@example.com\0" + PASSWORD.encode() + b"\0<" + b"1" * (MAX_INPUT - 30) + b">\0", 2),
])
def test_fd3_edge_cases(site: LoginSite, data: bytes, expected: int) -> None:
    """Rejections say nothing on stderr; misuse says what it was, never the input."""
    code, stderr = login(site, "", data=data)
    assert code == expected
    if expected == 2:
        assert stderr.startswith("vchkpw-") and \
            stderr.endswith(f": input on fd 3 longer than {MAX_INPUT} bytes\n"), stderr
    else:
        assert stderr == ""


def test_latin1_password_is_checked_as_bytes(site: LoginSite) -> None:
    """A client that sends Latin-1 gets the bytes hashed as C vpopmail hashed them (it was a
    temporary failure, a UnicodeEncodeError, for any non-UTF-8 password)."""
    from vpopmail.passwords import _crypt_bytes

    stored = _crypt_bytes(b"p\xe4ss-Word1", "$6$hostileSaltXyz")
    site.ok("vmoduser", "-e", stored, f"alice@{DOMAIN}")
    try:
        data = b"alice@example.com\0p\xe4ss-Word1\0" + STAMP.encode() + b"\0"
        assert login(site, "", data=data) == (0, "")
        assert login(site, "", data=data.replace(b"\xe4", b"\xc3\xa4")) == (1, "")  # UTF-8
        assert login(site, "", data=data.replace(b"\xe4", b"\xe5")) == (1, "")
    finally:
        site.ok("vpasswd", f"alice@{DOMAIN}", PASSWORD)


def test_cli_config_errors_name_the_file(site: LoginSite) -> None:
    with damaged(site.inst.config_path, b"\xff"):
        result = site.inst.run("vadduser", f"bob@{DOMAIN}", "pw", env=CLEAN_ENV, timeout=30)
    assert result.returncode != 0 and str(site.inst.config_path) in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
