"""vpopmaild and the domain limits: a domain administrator (postmaster, or a user with the
admin flag) is held to the limits the system administrator set for the domain where
qmailadmin, the domain administrators' web panel, holds them (C's vpopmaild checked none);
a system administrator is not, and an unset limit (-1, or no limits at all) holds nobody.
A refused addition changes nothing. On both user backends."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers import has_open, state
from install_site import Install
from vpopmaild_site import (DOMAIN, OTHER, Client, after_login, built_sites, rsite,  # noqa: F401
                            site)

pytestmark = pytest.mark.both_backends

PM, SA = f"postmaster@{DOMAIN}", f"admin@{DOMAIN}"
#: example.com as built: admin (SA), postmaster, alice, bob
USERS_BUILT = ["admin", "alice", "bob", "postmaster"]


def full(have: int, limit: int, things: str = "email accounts", key: str = "maxpopaccounts"
         ) -> str:
    return f"Domain limit reached: {DOMAIN} has {have} {things}, its limit ({key}) is {limit}"


def test_a_domain_admin_adds_users_up_to_maxpopaccounts_and_no_further(site: Install) -> None:
    """The limit counts every user of the domain (postmaster too), as qmailadmin's; at the
    limit add_user answers 0.305 (C's answer for a vadduser that failed) and makes
    nothing, for the postmaster and for a user with the admin flag, V_OVERRIDE or not."""
    site.ok("vmoddomlimits", "-P", "5", DOMAIN)
    assert after_login(site, PM, f"add_user dave@{DOMAIN} pw") == ["+OK "]
    site.ok("vmoduser", "-a", "-o", f"alice@{DOMAIN}")  # a domain admin who may override
    before = state(site)
    for admin in (PM, f"alice@{DOMAIN}"):
        assert after_login(site, admin, f"add_user eve@{DOMAIN} pw") == \
            [f"-ERR 0.305 {full(5, 5)}"]
    assert state(site) == before
    assert sorted(site.vusers(DOMAIN)) == sorted([*USERS_BUILT, "dave"])
    # a place freed is a place to take
    assert after_login(site, PM, f"del_user dave@{DOMAIN}", f"add_user eve@{DOMAIN} pw",
                       f"add_user frank@{DOMAIN} pw") == ["+OK ", "+OK ", f"-ERR 0.305 {full(5, 5)}"]
    assert "frank" not in site.vusers(DOMAIN)


@pytest.mark.sql_only
def test_limits_in_the_sql_limits_table_hold_too(site: Install) -> None:
    """With the limits as rows of the ``limits`` table (C's --enable-mysql-limits)."""
    site.set_config("mysql", "limits_table", True)
    site.ok("vmoddomlimits", "-P", "5", DOMAIN)
    assert not (site.domains / DOMAIN / ".qmailadmin-limits").exists()
    assert after_login(site, PM, f"add_user dave@{DOMAIN} pw", f"add_user eve@{DOMAIN} pw") == \
        ["+OK ", f"-ERR 0.305 {full(5, 5)}"]
    assert "eve" not in site.vusers(DOMAIN)


def test_in_a_root_install_the_lock_is_the_domain_owners(rsite: Install) -> None:
    """vpopmaild as tcpserver runs it (root), the domain owned by uid 89: the limit holds,
    and the domain's lock, under which the addition is counted and made, stays the owner's
    and 0600 (no lock file of its own is made)."""
    rsite.ok("vmoddomlimits", "-P", "5", DOMAIN)
    assert after_login(rsite, PM, f"add_user dave@{DOMAIN} pw", f"add_user eve@{DOMAIN} pw") == \
        ["+OK ", f"-ERR 0.305 {full(5, 5)}"]
    made = (rsite.domains / DOMAIN / ".dir-control.lock").stat()
    assert (made.st_uid, made.st_gid, made.st_mode & 0o777) == (89, 89, 0o600)
    assert not (rsite.domains / DOMAIN / ".qmailadmin-limits.lock").exists()
    assert sorted(rsite.vusers(DOMAIN)) == sorted([*USERS_BUILT, "dave"])


def test_a_system_admin_is_not_held_to_the_limits(site: Install) -> None:
    """The system administrator sets the limits: add_user as C's, past them too."""
    site.ok("vmoddomlimits", "-P", "4", DOMAIN)
    assert after_login(site, SA, f"add_user dave@{DOMAIN} pw", f"add_user eve@{DOMAIN} pw") == \
        ["+OK ", "+OK "]
    assert after_login(site, PM, f"add_user frank@{DOMAIN} pw") == [f"-ERR 0.305 {full(6, 4)}"]


def test_unset_limits_hold_nobody(site: Install) -> None:
    """-1 (the default), no limits file: C's behaviour; the limits of another domain are its
    own; etc/vlimits.default holds a domain without a file of its own; 0 refuses every
    addition, as in qmailadmin."""
    site.ok("vmoddomlimits", "-P", "2", OTHER)  # other.org: postmaster and carol
    assert after_login(site, PM, f"add_user dave@{DOMAIN} pw") == ["+OK "]
    site.ok("vmoddomlimits", "-P", "-1", DOMAIN)
    assert after_login(site, PM, f"add_user eve@{DOMAIN} pw") == ["+OK "]
    assert after_login(site, f"postmaster@{OTHER}", f"add_user dan@{OTHER} pw") == \
        [f"-ERR 0.305 {full(2, 2).replace(DOMAIN, OTHER)}"]
    site.ok("vmoddomlimits", "-D", DOMAIN)  # the domain's own limits go: the defaults apply
    (site.prefix / "etc" / "vlimits.default").write_text("maxpopaccounts 6\n")
    assert after_login(site, PM, f"add_user frank@{DOMAIN} pw") == [f"-ERR 0.305 {full(6, 6)}"]
    site.ok("vmoddomlimits", "-P", "0", DOMAIN)
    assert after_login(site, PM, f"add_user frank@{DOMAIN} pw") == [f"-ERR 0.305 {full(6, 0)}"]
    assert "frank" not in site.vusers(DOMAIN)


def test_the_count_and_the_addition_are_one_step(site: Install) -> None:
    """Two additions at the same moment cannot both take the last place: the domain admin's
    add_user counts the users only once it holds the domain's lock, and adds under it. Here
    this process holds that lock while add_user waits for it, takes the last place meanwhile
    (its own addition joins the hold it has), and add_user is refused (counted before the
    lock, it would have added a user past the limit)."""
    site.ok("vmoddomlimits", "-P", "5", DOMAIN)
    api = site.api()
    lock = api.domain_lock(api.get_domain(DOMAIN))
    client = Client(site)
    with lock:
        assert client.line() == "+OK " and client.ask(f"slogin {PM} secret") == "+OK "
        client.send(f"add_user dave@{DOMAIN} pw")
        deadline = time.monotonic() + 30
        while not has_open(client.proc.pid, Path(lock.path)):
            assert time.monotonic() < deadline, "add_user never asked for the lock"
            time.sleep(0.005)
        with pytest.raises(TimeoutError):
            client.line(0.3)  # waiting for the lock
        api.add_user(f"eve@{DOMAIN}", "pw")  # the last place, taken meanwhile
    assert client.line() == f"-ERR 0.305 {full(5, 5)}"
    client.close()
    assert sorted(site.vusers(DOMAIN)) == sorted([*USERS_BUILT, "eve"])


def test_a_domain_admin_makes_forwards_up_to_maxforwards_and_no_further(site: Install) -> None:
    """maxforwards holds the new aliases a domain admin's add_alias makes (qmailadmin's
    aliases and forwards are one list, held to maxforwards; maxaliases only hides its
    menu): counted as qmailadmin counts forwards, so a blackhole (a ``#`` first line), a
    mailing list and an autoresponder are not forwards. A line added to an alias that
    exists adds no forward; the refusal is add_alias's own (17.907) and adds nothing."""
    site.ok("vmoddomlimits", "-F", "2", DOMAIN)
    ezmlm, robot = "|/usr/bin/ezmlm-reject", "|/usr/bin/autorespond"  # a line is one token
    assert after_login(site, SA, f"add_alias junk@{DOMAIN} #", f"add_alias team@{DOMAIN} {ezmlm}",
                       f"add_alias away@{DOMAIN} {robot}", f"add_alias away@{DOMAIN} alice@b.org"
                       ) == ["+OK "] * 4
    assert after_login(site, PM, f"add_alias info@{DOMAIN} alice@{DOMAIN}",
                       f"add_alias info@{DOMAIN} bob@{DOMAIN}",
                       f"add_alias sales@{DOMAIN} bob@{DOMAIN}") == ["+OK "] * 3
    refusal = f"-ERR 17.907 Alias Insertion Failed: {full(2, 2, 'forwards', 'maxforwards')}"
    before = after_login(site, SA, f"list_alias {DOMAIN}")
    for admin in (PM, f"alice@{DOMAIN}"):
        site.ok("vmoduser", "-a", f"alice@{DOMAIN}")
        assert after_login(site, admin, f"add_alias hr@{DOMAIN} alice@{DOMAIN}",
                           f"add_alias nobody@{DOMAIN} #") == [refusal] * 2
    assert after_login(site, PM, f"add_alias sales@{DOMAIN} alice@{DOMAIN}") == ["+OK "]
    assert sorted(after_login(site, SA, f"list_alias {DOMAIN}")) == \
        sorted([*before, f"sales@{DOMAIN} alice@{DOMAIN}"])  # no hr@, no nobody@
    # the system administrator is not held; a forward deleted frees its place
    assert after_login(site, SA, f"add_alias it@{DOMAIN} bob@{DOMAIN}") == ["+OK "]
    assert after_login(site, PM, f"delete_alias it@{DOMAIN}", f"delete_alias info@{DOMAIN}",
                       f"add_alias hr@{DOMAIN} alice@{DOMAIN}",
                       f"add_alias it@{DOMAIN} bob@{DOMAIN}") == ["+OK "] * 3 + [refusal]
