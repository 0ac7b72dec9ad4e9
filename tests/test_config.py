"""Runtime configuration (vpopmail.config): schema, validation, marshal cache, render, locate."""
from __future__ import annotations

import marshal
import os
import shutil
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpopmail import config
from vpopmail.config import DEFAULT_PATH, ENV_VAR, SCHEMA, Config, defaults, load, locate, render, validate
from vpopmail.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def bump_mtime(path: Path) -> None:
    """Make an edit visible even on a coarse-timestamp filesystem."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


# defaults ---------------------------------------------------------------------------------------

def test_defaults() -> None:
    c = defaults()
    assert c.home == "/home/vpopmail"
    assert c.domains_root == "/home/vpopmail/domains"
    assert c.qmail_dir == "/var/qmail"
    assert (c.uid, c.gid) == (89, 89)
    assert (c.owner_user, c.owner_group) == ("vpopmail", "vchkpw")
    assert c.passwords_scheme == "sha512-crypt"
    assert c.passwords_clear_passwords is False
    assert c.users_hashed_dirs is True
    assert c.users_backend == "cdb"
    assert c.users_quota_warn_percent == 90
    assert c.users_default_action == "bounce-no-mailbox"
    assert c.relay_relay_clear_minutes == 180
    assert c.delivery_file_sync is True
    assert c.logging_level == "e"
    assert c.locks_timeout == 20
    assert c.home_path("tcp_smtp") == "/home/vpopmail/etc/tcp.smtp"
    assert c.home_path("tcp_smtp_cdb") == "/home/vpopmail/etc/tcp.smtp.cdb"
    assert c.home_path("open_smtp") == "/home/vpopmail/etc/open-smtp"
    assert c.home_path("qmail_inject") == "/var/qmail/bin/qmail-inject"
    assert set(c.values) == {f"{s}_{k}" for s, keys in SCHEMA.items() for k in keys}
    with pytest.raises(AttributeError):
        c.no_such_setting  # noqa: B018


def test_absolute_paths_stay_absolute() -> None:
    c = Config(validate({"paths": {"tcp_smtp": "/etc/tcp.smtp", "vpopmail_home": "/srv/vp",
                                   "domains_dir": "/mail/domains"}}))
    assert c.home_path("tcp_smtp") == "/etc/tcp.smtp"
    assert c.home_path("open_smtp") == "/srv/vp/etc/open-smtp"
    assert c.domains_root == "/mail/domains"


# validation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    {"bogus": {}},
    {"paths": {"bogus": "x"}},
    {"paths": 5},
    {"owner": {"uid": "89"}},
    {"owner": {"uid": True}},            # a bool is not an int
    {"owner": {"uid": 89.0}},
    {"users": {"hashed_dirs": 1}},       # an int is not a bool
    {"paths": {"vpopmail_home": 1}},
    {"passwords": {"scheme": "rot13"}},
    {"logging": {"level": "x"}},
    {"users": {"backend": "postgres"}},
    {"users": {"quota_warn_percent": 0}},
    {"users": {"quota_warn_percent": 101}},
    {"locks": {"timeout": -1}},
])
def test_validate_refuses(raw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        validate(raw, "test.toml")


@pytest.mark.parametrize(("raw", "text"), [
    ({"owner": {"uid": "89"}}, "test.toml: owner.uid must be int, got '89'"),
    ({"owner": {"uid": True}}, "test.toml: owner.uid must be int, got True"),
    ({"users": {"hashed_dirs": 1}}, "test.toml: users.hashed_dirs must be bool, got 1"),
    ({"paths": {"vpopmail_home": 1}}, "test.toml: paths.vpopmail_home must be str, got 1"),
    ({"paths": {"vpopmail_home": "/a\0b"}}, "test.toml: paths.vpopmail_home contains a NUL character"),
    ({"logging": {"level": "x"}}, "test.toml: logging.level must be one of n, e, y, p, v"),
    ({"server": {"workers": 0}}, "test.toml: server.workers must be >= 1"),
    ({"server": {"workers": 10**12}}, "test.toml: server.workers must be at most 4096"),
    ({"delivery": {"max_hops": 0}}, "test.toml: delivery.max_hops must be >= 1"),
    ({"users": {"quota_warn_percent": 101}}, "test.toml: users.quota_warn_percent must be 1..100"),
    ({"relay": {"lock_timeout": -1}}, "test.toml: relay.lock_timeout must be >= 0"),
    ({"mysql": {"read_timeout": -1}}, "test.toml: mysql.read_timeout must be >= 0"),
    # a statement waiting on a lock would be cut short: a read timeout, not the lock's
    ({"mysql": {"read_timeout": 20}}, "test.toml: mysql.read_timeout must be more than "
     "locks.timeout (20 s), which a statement may wait on a lock; 0 takes locks.timeout + 10"),
    ({"mysql": {"read_timeout": 1}, "locks": {"timeout": 0}},
     "test.toml: mysql.read_timeout must be more than locks.timeout (1 s), which a statement "
     "may wait on a lock; 0 takes locks.timeout + 10"),
    # a relative home went into users/assign and .qmail-default as it was, relative
    ({"paths": {"vpopmail_home": "home/vpopmail"}},
     "test.toml: paths.vpopmail_home must be an absolute path, not 'home/vpopmail'"),
    ({"paths": {"qmail_dir": ""}}, "test.toml: paths.qmail_dir must be an absolute path, not ''"),
    # a misspelt name gets the nearest known one
    ({"relay": {"roaming_user": True}},
     "test.toml: unknown key relay.roaming_user; did you mean roaming_users?"),
    ({"pasword": {}}, "test.toml: unknown section [pasword]; did you mean passwords?"),
    ({"locks": {"speed": 3}}, "test.toml: unknown key locks.speed"),
    # a key in another section (or outside any) is named where it is, not as a near one of
    # this section (server.auth_logging was "did you mean root_logins?")
    ({"server": {"auth_logging": True}},
     "test.toml: unknown key server.auth_logging; did you mean logging.auth_logging?"),
    ({"passwords": {"root_logins": True}},
     "test.toml: unknown key passwords.root_logins; did you mean server.root_logins?"),
    ({"roaming_users": True},
     "test.toml: unknown section [roaming_users]; did you mean relay.roaming_users?"),
])
def test_validate_texts(raw: dict[str, object], text: str) -> None:
    with pytest.raises(ConfigError) as refused:
        validate(raw, "test.toml")
    assert refused.value.detail == text


def test_every_key_is_a_typed_attribute(tmp_path: Path) -> None:
    """Config declares each SCHEMA key with its type and default (what mypy checks call sites
    against), and a loaded file, parsed or from the cache, gives each key that type."""
    other = {str: "/x", int: 7, bool: True}
    raw = {s: {k: other[kind] for k, (_, kind) in keys.items()
               if (s, k) not in config._CHOICES} for s, keys in SCHEMA.items()}
    raw["mysql"]["read_timeout"] = 8  # more than locks.timeout
    path = write(tmp_path / "v.toml", render(validate(raw)))
    for loaded in (load(str(path)), load(str(path))):  # parsed, then from the cache
        for section, keys in SCHEMA.items():
            for key, (default, kind) in keys.items():
                name = f"{section}_{key}"
                assert Config.__annotations__[name] is kind
                assert getattr(Config, name) == default and type(default) is kind
                value = getattr(loaded, name)
                assert type(value) is kind and value == loaded.values[name]
                if (section, key) not in config._CHOICES:
                    assert value == raw[section][key], name
    assert (tmp_path / "v.toml.cache").exists()


def test_validate_accepts_edges() -> None:
    values = validate({"users": {"quota_warn_percent": 100}, "locks": {"timeout": 0},
                       "passwords": {"scheme": "bcrypt"}, "mysql": {"read_timeout": 2}})
    assert values["users_quota_warn_percent"] == 100
    assert values["locks_timeout"] == 0
    assert values["passwords_scheme"] == "bcrypt"
    assert Config(values).sql_read_timeout == 2


@pytest.mark.parametrize(("locks", "read", "bound"), [(20, 0, 30), (0, 0, 11), (5, 0, 15),
                                                      (5, 6, 6), (20, 300, 300)])
def test_sql_read_timeout_is_more_than_the_lock_wait(locks: int, read: int, bound: int) -> None:
    """What an SQL statement's answer may take: mysql.read_timeout, or by default locks.timeout
    (the least the server takes: 1 s) and 10 s more."""
    config = Config(validate({"locks": {"timeout": locks}, "mysql": {"read_timeout": read}}))
    assert config.sql_read_timeout == bound


def test_load_refuses_unknown_key_in_file(tmp_path: Path) -> None:
    path = write(tmp_path / "v.toml", "[locks]\ntimeout = 5\nspeed = 3\n")
    with pytest.raises(ConfigError):
        load(str(path))
    assert not (tmp_path / "v.toml.cache").exists()


def test_load_refuses_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load(str(write(tmp_path / "bad.toml", "[locks\ntimeout = \n")))
    with pytest.raises(ConfigError):
        load(str(write(tmp_path / "type.toml", "[locks]\ntimeout = \"20\"\n")))
    with pytest.raises(ConfigError):
        load(str(tmp_path / "missing.toml"))


# the marshal cache ------------------------------------------------------------------------------

def test_cache_written_and_used_when_fresh(tmp_path: Path) -> None:
    path = write(tmp_path / "v.toml", "[locks]\ntimeout = 7\n")
    assert load(str(path)).locks_timeout == 7
    cache = tmp_path / "v.toml.cache"
    version, ident, values = marshal.loads(cache.read_bytes())
    assert version == config._CACHE_VERSION
    assert tuple(ident) == config._identity(path.stat())
    assert values["locks_timeout"] == 7
    # doctor the cache: a fresh cache is believed without reading the TOML (by a process that
    # has not read the file yet)
    values["locks_timeout"] = 99
    cache.write_bytes(marshal.dumps((version, ident, values)))
    config._read.clear()
    loaded = load(str(path))
    assert loaded.locks_timeout == 99
    assert loaded.path == str(path)


def test_cache_refreshed_when_the_file_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "v.toml", "[locks]\ntimeout = 7\n")
    assert load(str(path)).locks_timeout == 7
    write(path, "[locks]\ntimeout = 8\n")          # same size
    bump_mtime(path)
    assert load(str(path)).locks_timeout == 8
    write(path, "[locks]\ntimeout = 12345\n")      # other size, same second
    assert load(str(path)).locks_timeout == 12345
    _, ident, values = marshal.loads((tmp_path / "v.toml.cache").read_bytes())
    assert tuple(ident) == config._identity(path.stat())
    assert values["locks_timeout"] == 12345


def test_cache_refreshed_when_the_file_is_replaced(tmp_path: Path) -> None:
    path = write(tmp_path / "v.toml", "[locks]\ntimeout = 7\n")
    load(str(path))
    new = write(tmp_path / "new.toml", "[locks]\ntimeout = 9\n")
    os.replace(new, path)                          # another inode
    assert load(str(path)).locks_timeout == 9


@pytest.mark.parametrize("garbage", [
    b"", b"garbage", b"\xff" * 40, marshal.dumps(5), marshal.dumps((1, 2)),
    marshal.dumps((1, (1, 2, 3, 4), {}))[:-3], marshal.dumps(("x", None, None)),
])
def test_corrupt_cache_is_ignored(tmp_path: Path, garbage: bytes) -> None:
    path = write(tmp_path / "v.toml", "[locks]\ntimeout = 7\n")
    (tmp_path / "v.toml.cache").write_bytes(garbage)
    assert load(str(path)).locks_timeout == 7
    version, _, values = marshal.loads((tmp_path / "v.toml.cache").read_bytes())
    assert version == config._CACHE_VERSION and values["locks_timeout"] == 7


def test_a_file_read_once_is_not_read_again_until_it_changes(tmp_path: Path) -> None:
    """What a server worker loads per request: the same values while the file's status is the
    same; a change of contents or of mode is seen at the next load."""
    path = write(tmp_path / "v.toml", "[locks]\ntimeout = 7\n")
    first = load(str(path))
    (tmp_path / "v.toml.cache").unlink()
    assert load(str(path)).values is first.values
    assert not (tmp_path / "v.toml.cache").exists()  # nothing was read or written
    path.chmod(0o640)
    assert load(str(path)).values is not first.values
    write(path, "[locks]\ntimeout = 8\n")
    bump_mtime(path)
    assert load(str(path)).locks_timeout == 8


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change ids")
def test_what_root_read_is_not_lent_to_other_ids(tmp_path: Path) -> None:
    """A worker forked from a root server after it loaded a root-only config must not get its
    values: it reads the file with its own ids, as the direct program would, and fails."""
    here = Path(tempfile.mkdtemp(dir="/tmp"))  # reachable by uid 89 (tmp_path's parents are not)
    here.chmod(0o755)
    path = write(here / "v.toml", "[locks]\ntimeout = 7\n")
    path.chmod(0o600)
    assert load(str(path)).locks_timeout == 7
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(89)
            os.setuid(89)
            load(str(path))
            os._exit(0)
        except ConfigError:
            os._exit(3)
        except BaseException:
            os._exit(4)
    status = os.waitpid(pid, 0)[1] >> 8
    shutil.rmtree(here)
    assert status == 3


def as_uid_89(work: Callable[[], None]) -> int:
    """The exit status of a forked child that runs ``work`` as uid/gid 89 (0: it returned)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(89)
            os.setuid(89)
            work()
            os._exit(0)
        except BaseException:
            os._exit(4)
    return os.waitpid(pid, 0)[1] >> 8


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change ids")
def test_a_cache_forged_by_another_uid_is_ignored_and_replaced() -> None:
    """In a root installation etc/ is writable by the vpopmail user's group: a cache that uid
    89 made where none was, fresh for the TOML file and saying what it likes, is not believed
    by root, who reads the TOML and puts its own cache in its place."""
    here = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chown(here, 0, 89)
        here.chmod(0o1775)
        path = write(here / "v.toml", "[locks]\ntimeout = 7\n")
        cache = here / "v.toml.cache"
        forged = validate({"locks": {"timeout": 99}, "paths": {"domains_dir": "/etc"}})
        data = marshal.dumps((config._CACHE_VERSION, config._identity(path.stat()), forged))
        assert as_uid_89(lambda: cache.write_bytes(data)) == 0
        assert cache.stat().st_uid == 89
        config._read.clear()
        loaded = load(str(path))
        assert (loaded.locks_timeout, loaded.paths_domains_dir) == (7, "domains")
        st = cache.stat()
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert marshal.loads(cache.read_bytes())[2]["locks_timeout"] == 7
    finally:
        config._read.clear()
        shutil.rmtree(here)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change ids")
def test_only_the_owner_of_the_file_writes_its_cache() -> None:
    """uid 89 reading root's config in a directory it may write parses it and leaves no
    cache (one it made would be ignored by root anyway); root's cache, it believes."""
    here = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        here.chmod(0o1777)
        path = write(here / "v.toml", "[locks]\ntimeout = 7\n")

        def check() -> None:
            assert load(str(path)).locks_timeout == 7

        config._read.clear()
        assert as_uid_89(check) == 0
        assert sorted(os.listdir(here)) == ["v.toml"]
        load(str(path))  # root: the owner
        values = marshal.loads((here / "v.toml.cache").read_bytes())
        values[2]["locks_timeout"] = 8  # root's cache, doctored by root: believed by 89
        (here / "v.toml.cache").write_bytes(marshal.dumps(values))

        def believed() -> None:
            assert load(str(path)).locks_timeout == 8

        config._read.clear()
        assert as_uid_89(believed) == 0
    finally:
        config._read.clear()
        shutil.rmtree(here)


def test_cache_of_another_version_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path / "v.toml", "[locks]\ntimeout = 7\n")
    values = validate({"locks": {"timeout": 99}})
    (tmp_path / "v.toml.cache").write_bytes(
        marshal.dumps((config._CACHE_VERSION + 1, config._identity(path.stat()), values)))
    assert load(str(path)).locks_timeout == 7


def test_unwritable_cache_is_not_fatal(tmp_path: Path) -> None:
    path = write(tmp_path / "v.toml", "[locks]\ntimeout = 7\n")
    (tmp_path / "v.toml.cache").mkdir()            # cannot be replaced by a file
    assert load(str(path)).locks_timeout == 7
    assert load(str(path)).locks_timeout == 7
    assert [p.name for p in tmp_path.iterdir() if ".cache." in p.name] == []


# render -----------------------------------------------------------------------------------------

def test_render_defaults_round_trip() -> None:
    text = render(defaults().values)
    assert validate(tomllib.loads(text)) == defaults().values
    assert "[paths]" in text and 'vpopmail_home = "/home/vpopmail"' in text
    assert "hashed_dirs = true" in text and "timeout = 20" in text


safe_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30)


@settings(max_examples=60, deadline=None)
@given(home=safe_text, default_domain=safe_text, log_name=safe_text,
       uid=st.integers(min_value=0, max_value=2**32), timeout=st.integers(min_value=0, max_value=10**6),
       warn=st.integers(min_value=1, max_value=100), hashed=st.booleans(),
       clear=st.booleans(), scheme=st.sampled_from(config._CHOICES[("passwords", "scheme")]),
       level=st.sampled_from(config._CHOICES[("logging", "level")]))
def test_render_round_trip(home: str, default_domain: str, log_name: str, uid: int, timeout: int,
                           warn: int, hashed: bool, clear: bool, scheme: str, level: str) -> None:
    values = dict(defaults().values)
    values.update(paths_vpopmail_home=f"/{home}", users_default_domain=default_domain,
                  logging_log_name=log_name, owner_uid=uid, locks_timeout=timeout,
                  users_quota_warn_percent=warn, users_hashed_dirs=hashed,
                  passwords_clear_passwords=clear, passwords_scheme=scheme, logging_level=level)
    assert validate(tomllib.loads(render(values))) == values


@pytest.mark.parametrize("value", ["a\nb", "a\x01b", "a\x7fb"])
def test_render_escapes_control_characters(value: str) -> None:
    values = dict(defaults().values)
    values["users_default_domain"] = value
    assert validate(tomllib.loads(render(values)))["users_default_domain"] == value


def test_render_then_load(tmp_path: Path) -> None:
    values = validate({"paths": {"vpopmail_home": str(tmp_path)}, "locks": {"timeout": 3}})
    path = write(tmp_path / "v.toml", render(values))
    assert load(str(path)).values == values


# locate -----------------------------------------------------------------------------------------

def test_locate_honours_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "env.toml", "[locks]\ntimeout = 4\n")
    monkeypatch.setenv(ENV_VAR, str(path))
    assert locate() == str(path)
    assert locate("/baked/vpopmail.toml") == str(path)
    assert load("/baked/vpopmail.toml").locks_timeout == 4
    assert load().locks_timeout == 4


def test_locate_without_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert locate("/baked/vpopmail.toml") == "/baked/vpopmail.toml"
    assert locate() == DEFAULT_PATH == "/home/vpopmail/etc/vpopmail.toml"
    monkeypatch.setenv(ENV_VAR, "")
    assert locate("/baked/vpopmail.toml") == "/baked/vpopmail.toml"


@pytest.mark.parametrize("named", ["\u00b2", "\u0663"])
def test_a_caller_named_in_other_digits_is_no_user(named: str) -> None:
    """server.dovecot_callers and smtp_auth_callers take uids in ASCII digits only: others
    are names (of no user: a ConfigError naming them; before, int() took U+0663 as uid 3 and
    U+00B2 raised ValueError)."""
    for key, read in (("dovecot_callers", Config.dovecot_callers),
                      ("smtp_auth_callers", Config.smtp_auth_callers)):
        settings = Config(validate({"server": {key: named}}))
        with pytest.raises(ConfigError, match=f"server.{key}: there is no user '{named}'"):
            read(settings)
