"""vpopmail/api/: the library API by concern (domains, users, limits, aliases), called directly
against a real sandbox install on both user backends: what each call writes (qmail's files,
the users as the backend stores them: vpasswd and its cdb, or the SQL rows; Maildir,
maildirsize, limits files) and the VA_* classes of what it refuses, nothing changed.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from helpers import check_index, stored_users
from install_site import Install
from vpopmail import flags, limits
from vpopmail.api import Vpopmail
from vpopmail.errors import (AliasDomainsExist, BadChar, BadInput, CannotDeleteCatchall,
                             DomainAlreadyExists, DomainDoesNotExist, GecosTooLong,
                             IllegalUsername, InvalidDomainName, QuotaTooLong,
                             UserDoesNotExist, UsernameExists)

DOMAIN = "example.com"
ALIAS = "alias.test"
#: the concern modules in the order they may import each other (each only those before it)
ORDER = ["base", "limits", "aliases", "users", "domains", "__init__", "bulletin", "diagnose"]
API_DIR = Path(__file__).resolve().parents[1] / "vpopmail" / "api"
pytestmark = pytest.mark.both_backends


@pytest.fixture
def site(api: Vpopmail, vhome: Install) -> Vpopmail:
    """``api`` with example.com (postmaster) and alice."""
    api.add_domain(DOMAIN, "secret")
    api.add_user(f"alice@{DOMAIN}", "pw")
    return api


def control(vhome: Install, name: str) -> list[str]:
    return (vhome.qmaildir / "control" / name).read_text().splitlines()


def vpasswd(vhome: Install) -> list[list[str]]:
    """The users of example.com as vpasswd's fields, through the backend (files or SQL)."""
    return [fields[:7] for _, fields in sorted(stored_users(vhome).items())]


def user_dir(vhome: Install, name: str) -> Path:
    return vhome.domains / DOMAIN / name


# domains

def test_add_domain_writes_assign_rcpthosts_virtualdomains_and_dot_qmail_default(
        api: Vpopmail, vhome: Install) -> None:
    entry = api.add_domain(DOMAIN, "secret")
    directory = vhome.domains / DOMAIN
    assert (entry.domain, entry.real_domain, entry.dir) == (DOMAIN, DOMAIN, str(directory))
    assign = (vhome.qmaildir / "users" / "assign").read_text().splitlines()
    assert f"+{DOMAIN}-:{DOMAIN}:{vhome.uid}:{vhome.gid}:{directory}:-::" in assign
    assert assign[-1] == "."
    assert DOMAIN in control(vhome, "rcpthosts")
    assert f"{DOMAIN}:{DOMAIN}" in control(vhome, "virtualdomains")
    assert (directory / ".qmail-default").read_text() == (
        f"| {vhome.prefix}/bin/vdelivermail '' bounce-no-mailbox\n")
    assert [fields[0] for fields in vpasswd(vhome)] == ["postmaster"]
    assert api.find_domain(DOMAIN.upper()) == entry
    assert [e.domain for e in api.domains()] == [DOMAIN]


def test_alias_domain_routes_to_the_real_domain_and_blocks_its_deletion(
        site: Vpopmail, vhome: Install) -> None:
    site.add_alias_domain(DOMAIN, ALIAS)
    real = site.get_domain(DOMAIN)
    alias = site.get_domain(ALIAS)
    assert (alias.domain, alias.real_domain, alias.dir) == (ALIAS, DOMAIN, real.dir)
    assert (f"+{ALIAS}-:{DOMAIN}:{vhome.uid}:{vhome.gid}:{real.dir}:-::"
            in (vhome.qmaildir / "users" / "assign").read_text().splitlines())
    assert ALIAS in control(vhome, "rcpthosts")
    assert site.aliases_of(DOMAIN) == [ALIAS]
    with pytest.raises(DomainAlreadyExists):
        site.add_alias_domain(DOMAIN, ALIAS)
    with pytest.raises(AliasDomainsExist):
        site.delete_domain(DOMAIN)
    assert Path(real.dir).is_dir()
    assert site.delete_domain(DOMAIN, force=True) == [ALIAS]
    assert not Path(real.dir).exists()
    assert site.find_domain(DOMAIN) is None and site.find_domain(ALIAS) is None
    assert DOMAIN not in control(vhome, "rcpthosts") and ALIAS not in control(vhome, "rcpthosts")
    assert not any(line.startswith((f"{DOMAIN}:", f"{ALIAS}:"))
                   for line in control(vhome, "virtualdomains"))


def test_catchall_names_a_user_who_then_cannot_be_deleted(site: Vpopmail,
                                                          vhome: Install) -> None:
    entry = site.get_domain(DOMAIN)
    site.set_catchall(DOMAIN, "alice")
    alice = user_dir(vhome, "alice")
    assert (vhome.domains / DOMAIN / ".qmail-default").read_text() == (
        f"| {vhome.prefix}/bin/vdelivermail '' {alice}\n")
    assert site.catchall_of(entry) == str(alice)
    with pytest.raises(CannotDeleteCatchall):
        site.delete_user(f"alice@{DOMAIN}")
    assert alice.is_dir() and "alice" in [fields[0] for fields in vpasswd(vhome)]
    with pytest.raises(UserDoesNotExist):
        site.set_catchall(DOMAIN, "nobody")
    assert site.catchall_of(entry) == str(alice)


@pytest.mark.parametrize("name, error", [("bad_domain!", InvalidDomainName),
                                         ("-lead.test", InvalidDomainName),
                                         (DOMAIN, DomainAlreadyExists)])
def test_add_domain_refusals_change_nothing(site: Vpopmail, vhome: Install, name: str,
                                            error: type[Exception]) -> None:
    def state() -> tuple[str, list[str], list[str], list[str]]:
        return ((vhome.qmaildir / "users" / "assign").read_text(), control(vhome, "rcpthosts"),
                sorted(os.listdir(vhome.domains)), sorted(os.listdir(vhome.domains / DOMAIN)))

    before = state()
    with pytest.raises(error):
        site.add_domain(name, "secret")
    assert state() == before


def test_unknown_domain(api: Vpopmail) -> None:
    assert api.find_domain(DOMAIN) is None
    with pytest.raises(DomainDoesNotExist):
        api.get_domain(DOMAIN)
    with pytest.raises(DomainDoesNotExist):
        api.add_user(f"alice@{DOMAIN}", "pw")


# users

def test_add_user_writes_vpasswd_its_cdb_and_a_maildir(site: Vpopmail, vhome: Install) -> None:
    site.add_user(f"Bob@{DOMAIN}", "pw", gecos="Bob the builder", quota="1M")
    bob = user_dir(vhome, "bob")
    line = next(fields for fields in vpasswd(vhome) if fields[0] == "bob")
    assert line[2:] == ["1", "0", "Bob the builder", str(bob), "1048576S"]
    assert line[1].startswith("$") and line[1] != "pw"
    check_index(vhome)
    for sub in ("cur", "new", "tmp"):
        assert (bob / "Maildir" / sub).is_dir()
    assert (bob / "Maildir" / "maildirsize").read_text() == "1048576S\n0 0\n"
    user, entry = site.get_user(f"bob@{DOMAIN}")
    assert (user.name, user.gecos, user.dir, entry.domain) == ("bob", "Bob the builder",
                                                               str(bob), DOMAIN)
    assert [u.name for u in site.list_users(DOMAIN)[0]] == ["alice", "bob", "postmaster"]
    assert site.user_count(entry) == 3


@pytest.mark.parametrize("address, options, error", [
    (f"alice@{DOMAIN}", {}, UsernameExists),
    (f"ALICE@{DOMAIN}", {}, UsernameExists),
    (f"a:b@{DOMAIN}", {}, IllegalUsername),
    (f"carol@{DOMAIN}", {"gecos": "two\nlines"}, BadChar),
    (f"carol@{DOMAIN}", {"gecos": "g" * 65}, GecosTooLong),
    (f"carol@{DOMAIN}", {"quota": "lots"}, BadInput),
    (f"carol@{DOMAIN}", {"quota": "1" * 21}, QuotaTooLong),
    (f"carol@{DOMAIN}", {"encrypted": "$1$a:b"}, BadChar),
])
def test_add_user_refusals_change_nothing(site: Vpopmail, vhome: Install, address: str,
                                          options: dict[str, str], error: type[Exception]
                                          ) -> None:
    before = stored_users(vhome)
    with pytest.raises(error):
        site.add_user(address, "pw", **options)
    assert stored_users(vhome) == before
    check_index(vhome)
    assert not user_dir(vhome, "carol").exists()


def test_add_user_whose_cdb_write_fails_can_be_finished_and_deleted(
        site: Vpopmail, vhome: Install, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk at the vpasswd.cdb write, after vpasswd took the user: the user is stored,
    so its directory stays, and a rerun of vadduser or a vdeluser brings the cdb back in line
    (before: the directory was removed, and vadduser answered "exists" while vdeluser and
    every lookup answered "does not exist", for ever)."""
    if vhome.backend != "cdb":
        pytest.skip("the SQL store writes a user in one transaction")
    from vpopmail.errors import CouldNotUpdateFile
    from vpopmail.stores.cdbfiles import CdbFiles

    def full(self: CdbFiles, *args: object) -> None:
        raise CouldNotUpdateFile("vpasswd.cdb: No space left on device")

    for rerun in (True, False):
        name = "bob" if rerun else "carol"
        with monkeypatch.context() as patch:
            patch.setattr(CdbFiles, "_write_cdb", full)
            with pytest.raises(CouldNotUpdateFile):
                site.add_user(f"{name}@{DOMAIN}", "pw")
        assert name in stored_users(vhome) and (user_dir(vhome, name) / "Maildir").is_dir()
        if rerun:
            with pytest.raises(UsernameExists):
                site.add_user(f"{name}@{DOMAIN}", "pw")
            check_index(vhome)
            assert site.get_user(f"{name}@{DOMAIN}")[0].dir == str(user_dir(vhome, name))
        site.delete_user(f"{name}@{DOMAIN}")
        assert name not in stored_users(vhome) and not user_dir(vhome, name).exists()
        check_index(vhome)
    assert site.user_count(site.get_domain(DOMAIN)) == 2


@pytest.mark.parametrize("text, stored", [
    ("10M", "10485760S"), ("10 MB", "10485760S"), ("50mb", "52428800S"), ("2k", "2048S"),
    ("1G", "1073741824S"), ("100c", "100C"), ("5M,1000C", "5242880S,1000C"), ("5000", "5000S"),
    ("1000000S, 2C", "1000000S,2C"), ("noquota", "NOQUOTA"),
    ("10Mx", None), ("1e9", None), ("5 000 000", None), ("1.5G", None), ("10M\n", None),
    ("10MS5", None), ("+10M", None), ("10M,", None)])
def test_quota_text_is_a_quota_or_refused(site: Vpopmail, text: str, stored: str | None
                                          ) -> None:
    """A quota the admin commands and vpopmaild take is read whole: text C's reader would stop
    early in is refused (before: ``1e9`` was a 1-byte quota, ``5 000 000`` 5 bytes, ``10Mx``
    10 bytes, ``1.5G`` 1 GiB: every message to such a user bounced as over quota)."""
    if stored is None:
        with pytest.raises(BadInput):
            site.quota_string(text)
    else:
        assert site.quota_string(text) == stored


def test_set_quota_rewrites_maildirsize_from_a_fresh_count(site: Vpopmail,
                                                           vhome: Install) -> None:
    maildir = user_dir(vhome, "alice") / "Maildir"
    (maildir / "new" / "1000000000.M1P1.host,S=123").write_bytes(b"x" * 123)
    (maildir / "cur" / "1000000001.M1P1.host,S=77:2,S").write_bytes(b"y" * 77)
    changed = site.set_quota(f"alice@{DOMAIN}", "2000000S,10C")
    assert [(u.name, u.quota) for u in changed] == [("alice", "2000000S,10C")]
    assert (maildir / "maildirsize").read_text() == "2000000S,10C\n200 2\n"
    assert next(f for f in vpasswd(vhome) if f[0] == "alice")[6] == "2000000S,10C"
    site.set_quota(f"alice@{DOMAIN}", "noquota")
    assert not (maildir / "maildirsize").exists()
    assert next(f for f in vpasswd(vhome) if f[0] == "alice")[6] == "NOQUOTA"
    with pytest.raises(BadInput):
        site.set_quota(f"alice@{DOMAIN}", "-5")
    assert next(f for f in vpasswd(vhome) if f[0] == "alice")[6] == "NOQUOTA"


def test_set_password_rehashes_and_delete_user_removes_everything(site: Vpopmail,
                                                                  vhome: Install) -> None:
    old = next(f for f in vpasswd(vhome) if f[0] == "alice")[1]
    site.set_password(f"alice@{DOMAIN}", "new secret")
    new = next(f for f in vpasswd(vhome) if f[0] == "alice")[1]
    assert new != old and new.startswith("$")
    site.set_password(f"alice@{DOMAIN}", "$1$salt$hash", encrypted=True)
    assert next(f for f in vpasswd(vhome) if f[0] == "alice")[1] == "$1$salt$hash"
    removed = site.delete_user(f"alice@{DOMAIN}")
    assert removed.name == "alice"
    assert not user_dir(vhome, "alice").exists()
    assert [f[0] for f in vpasswd(vhome)] == ["postmaster"]
    check_index(vhome)
    with pytest.raises(UserDoesNotExist):
        site.delete_user(f"alice@{DOMAIN}")
    with pytest.raises(UserDoesNotExist):
        site.set_password(f"alice@{DOMAIN}", "pw")


def test_an_empty_password_is_refused_not_set(site: Vpopmail, vhome: Install) -> None:
    """No login takes an empty password (vchkpw: "null password given"), so setting one only
    locked the account, with exit 0 (vpasswd with '' or an empty line on stdin)."""
    before = stored_users(vhome)["alice"]
    with pytest.raises(BadInput):
        site.set_password(f"alice@{DOMAIN}", "")
    assert stored_users(vhome)["alice"] == before
    result = vhome.run("vpasswd", f"alice@{DOMAIN}", input="\n")
    assert (result.returncode, result.stdout) == (152, "Error: bad input: an empty password: no "
                                                  "login takes one\n"), result
    assert stored_users(vhome)["alice"] == before


def test_ensure_home_remakes_a_lost_maildir(site: Vpopmail, vhome: Install) -> None:
    maildir = user_dir(vhome, "alice") / "Maildir"
    (maildir / "new").rmdir()
    user, entry = site.get_user(f"alice@{DOMAIN}")
    assert site.ensure_home(entry, user).dir == str(user_dir(vhome, "alice"))
    assert sorted(os.listdir(maildir)) == ["cur", "new", "tmp"]


# limits

def test_limits_round_trip_through_the_domain_file(site: Vpopmail, vhome: Install) -> None:
    entry = site.get_domain(DOMAIN)
    path = vhome.domains / DOMAIN / limits.DOMAIN_FILE
    assert not path.exists()

    def edit(found: limits.Limits) -> bool:
        found.numbers["maxpopaccounts"] = 5
        found.numbers["default_quota"] = 3000000
        found.switches.add("disable_pop")
        return True

    site.change_domain_limits(entry, edit)
    text = path.read_text().splitlines()
    assert "maxpopaccounts: 5" in text and "default_quota: 3000000" in text
    assert "disable_pop" in text
    again = site.domain_limits(entry)
    assert again.numbers["maxpopaccounts"] == 5 and again.switches == {"disable_pop"}
    user, _ = site.get_user(f"alice@{DOMAIN}")
    assert site.effective_flags(user, entry) & flags.NO_POP
    assert not site.effective_flags(user.copy(flags=flags.V_OVERRIDE), entry) & flags.NO_POP
    assert site.default_quota(entry) == "3000000S"
    site.add_user(f"carol@{DOMAIN}", "pw")
    assert next(f for f in vpasswd(vhome) if f[0] == "carol")[6] == "3000000S"
    site.delete_domain_limits(entry)
    assert not path.exists()
    assert site.domain_limits(entry).numbers == limits.NUMBERS
    assert site.default_quota(entry) == "NOQUOTA"


# aliases

def test_alias_resolution(site: Vpopmail) -> None:
    site.add_alias_domain(DOMAIN, ALIAS)
    alias, entry = site.resolve_alias(f"Info@{ALIAS}")
    assert (alias, entry.domain, entry.real_domain) == ("info", ALIAS, DOMAIN)
    name, entry = site.resolve(f"alice@{ALIAS}")
    assert (name, entry.real_domain) == ("alice", DOMAIN)
    with pytest.raises(DomainDoesNotExist):
        site.resolve_alias("info@unknown.test")
    with pytest.raises(IllegalUsername):
        site.resolve_alias("info")  # no default domain in the sandbox


# layout

def test_concern_modules_import_each_other_one_way() -> None:
    """Each module of vpopmail/api imports only those before it in ORDER; none but those
    beside the API (bulletin, diagnose) imports the package ``vpopmail.api`` itself."""
    assert sorted(p.stem for p in API_DIR.glob("*.py")) == sorted(ORDER)
    for position, name in enumerate(ORDER):
        tree = ast.parse((API_DIR / f"{name}.py").read_text())
        targets = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        ours = {t.removeprefix("vpopmail.api.") for t in targets
                if t and t.startswith("vpopmail.api.")}
        assert ours <= set(ORDER[:position]), (name, ours)
        assert ("vpopmail.api" in targets) == (name in ("bulletin", "diagnose")), name
