"""Damaged or missing user databases (issue 13, findings 2 and 3): a zero-filled cdb, an empty
domain directory, a lost vpasswd or users/assign. Hot paths defer (delivery 111, login 111) and
create nothing; admin commands refuse, say how to recover, and change nothing."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from install_site import Install
from delivery_site import DOMAIN
from login_site import LoginSite

PASSWORD = "pw"


@pytest.fixture
def site(vhome: Install) -> Iterator[LoginSite]:
    site = LoginSite.create(vhome, False)
    site.add("bob", PASSWORD)
    site.add("carol", PASSWORD)
    yield site
    site.syslog.close()


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def assert_deferred(site: LoginSite, user: str = "bob") -> None:
    delivered = site.deliver(user)
    assert delivered.returncode == 111, delivered
    assert b"Traceback" not in delivered.stdout + delivered.stderr
    login = site.login(f"{user}@{DOMAIN}", PASSWORD)
    assert (login.code, login.ran) == (111, False), login


@pytest.mark.parametrize("which", ["vpasswd.cdb", "users/cdb"])
def test_zero_filled_cdb_defers(site: LoginSite, which: str) -> None:
    """A crash without fsync leaves the file at its size, all zeros: not "no such user"."""
    path = site.domain_dir / which if which == "vpasswd.cdb" else site.inst.qmaildir / which
    path.write_bytes(b"\0" * path.stat().st_size)
    assert_deferred(site)
    assert_deferred(site, "nosuchuser")
    assert site.new_files(site.maildir("bob")) == []


def test_empty_domain_directory_defers_and_creates_nothing(site: LoginSite) -> None:
    """An unmounted per-domain file system: the directory is there, empty."""
    site.domain_dir.rename(site.domain_dir.with_name("mounted-elsewhere"))
    site.domain_dir.mkdir()
    assert_deferred(site)
    assert list(site.domain_dir.iterdir()) == []
    assert "vpasswd is missing" in "\n".join(site.syslog.texts())


def test_lost_vpasswd_refuses_changes_and_is_restored_from_the_cdb(site: LoginSite) -> None:
    vpasswd = site.domain_dir / "vpasswd"
    original = vpasswd.read_bytes()
    vpasswd.unlink()
    before = snapshot(site.domain_dir)
    for command, *args in (("vadduser", f"u4@{DOMAIN}", "pw"), ("vdeluser", f"carol@{DOMAIN}"),
                           ("vpasswd", f"bob@{DOMAIN}", "new"), ("vmoduser", "-p", f"bob@{DOMAIN}"),
                           ("vsetuserquota", f"bob@{DOMAIN}", "5M"), ("vmkpasswd", DOMAIN)):
        result = site.inst.run(command, *args)
        assert result.returncode != 0, (command, result)
        assert "vpasswd is missing" in result.stdout and f"vmkpasswd -r {DOMAIN}" in result.stdout
        assert snapshot(site.domain_dir) == before, command
    assert site.deliver("bob").returncode == 0  # the cdb is intact: mail still flows
    assert "3 users" in site.inst.ok("vmkpasswd", "-r", DOMAIN)
    assert vpasswd.read_bytes() == original
    assert "exists" in site.inst.run("vmkpasswd", "-r", DOMAIN).stdout
    site.inst.ok("vadduser", f"u4@{DOMAIN}", "pw")
    assert set(site.inst.vusers(DOMAIN)) == {"postmaster", "bob", "carol", "u4"}


def test_vadddomain_does_not_adopt_a_domain_without_vpasswd(site: LoginSite) -> None:
    """vadddomain over a directory a killed vadddomain/vdeldomain left keeps its users; without
    the vpasswd they are unknown, so it refuses rather than start an empty list over the cdb."""
    site.inst.api().qmail.remove_assign(DOMAIN)  # users/cdb no longer routes it: a leftover
    (site.domain_dir / "vpasswd").unlink()
    before = snapshot(site.domain_dir)
    result = site.inst.run("vadddomain", DOMAIN, "pw")
    assert result.returncode != 0, result
    assert "vpasswd is missing" in result.stdout
    assert snapshot(site.domain_dir) == before


def test_lost_users_assign_refuses_vadddomain_and_vregenerate_restores_it(site: LoginSite) -> None:
    users = site.inst.qmaildir / "users"
    assign = (users / "assign").read_bytes()
    (users / "assign").unlink()
    cdb = (users / "cdb").read_bytes()
    result = site.inst.run("vadddomain", "new.test", "pw")
    assert result.returncode != 0, result
    assert "users/assign is missing" in result.stdout and "vregenerate" in result.stdout
    assert (users / "cdb").read_bytes() == cdb and not (users / "assign").exists()
    assert site.deliver("bob").returncode == 0  # users/cdb still routes the domain
    site.inst.ok("vregenerate")
    assert (users / "assign").read_bytes() == assign


def test_lost_users_cdb_is_reported_to_admin_commands(site: LoginSite) -> None:
    (site.inst.qmaildir / "users" / "cdb").unlink()
    result = site.inst.run("vadduser", f"u5@{DOMAIN}", "pw")
    assert result.returncode != 0
    assert "users/cdb is missing" in result.stdout and "qmail-newu" in result.stdout
    assert b"u5:" not in (site.domain_dir / "vpasswd").read_bytes()


def test_emptied_vpasswd_beside_a_full_cdb_refuses_changes(site: LoginSite) -> None:
    """C vpopmail rewrites vpasswd in place without fsync: a crash leaves it empty. An empty
    vpasswd while vpasswd.cdb holds users is that damage, not a domain without users."""
    vpasswd = site.domain_dir / "vpasswd"
    original = vpasswd.read_bytes()
    vpasswd.write_bytes(b"")
    before = snapshot(site.domain_dir)
    for command, *args in (("vadduser", f"u4@{DOMAIN}", "pw"), ("vmkpasswd", DOMAIN)):
        result = site.inst.run(command, *args)
        assert result.returncode != 0, (command, result)
        assert "vpasswd is empty but vpasswd.cdb holds users" in result.stdout
        assert snapshot(site.domain_dir) == before, command
    site.inst.ok("vmkpasswd", "-r", DOMAIN)
    assert vpasswd.read_bytes() == original


def test_a_domain_whose_last_user_was_deleted_stays_usable(site: LoginSite) -> None:
    """An empty vpasswd beside an empty vpasswd.cdb is a domain without users."""
    site.inst.ok("vdeluser", f"bob@{DOMAIN}")
    site.inst.ok("vdeluser", f"carol@{DOMAIN}")
    api = site.inst.api()  # vdeluser keeps the postmaster (the catch-all target)
    api.backend.delete_user(api.get_domain(DOMAIN), "postmaster")
    assert (site.domain_dir / "vpasswd").read_bytes() == b""
    assert site.deliver("bob").returncode == 100
    site.inst.ok("vadduser", f"u4@{DOMAIN}", "pw")
