"""vpopmail/limits.py: domain limits in qmailadmin's ``.qmailadmin-limits`` format, read from a
real install's files: what qmailadmin writes is understood, the domain file wins over
``etc/vlimits.default`` which wins over the built-in defaults, a damaged file is a clear error
that changes nothing, and the limits reach the flags and quota of users.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from install_site import Install
from vpopmail import flags, limits
from vpopmail.api import Vpopmail
from vpopmail.errors import CannotReadLimits
from helpers import refused, stored_users

DOMAIN = "example.com"
#: as qmailadmin and hand edits leave it: ": ", tabs, bare ":" and blanks, comments, switches
QMAILADMIN = ("# limits for example.com\n"
              "maxpopaccounts: 10\n"
              "maxaliases\t5\n"
              "maxforwards:3\n"
              "quota : 100\n"
              "default_quota: 1048576   # 1 MB\n"
              "\n"
              "disable_pop\n"
              "  disable_imap  \n"
              "perm_account: 7\n")


@pytest.fixture
def site(vhome: Install) -> tuple[Vpopmail, Path]:
    """example.com (postmaster, alice) and the path of its limits file."""
    vhome.ok("vadddomain", DOMAIN, "secret")
    vhome.ok("vadduser", f"alice@{DOMAIN}", "pw")
    return vhome.api(), vhome.domains / DOMAIN / limits.DOMAIN_FILE


def test_a_qmailadmin_file_is_understood(site: tuple[Vpopmail, Path]) -> None:
    api, path = site
    path.write_text(QMAILADMIN)
    found = api.domain_limits(api.get_domain(DOMAIN))
    assert found.source == str(path)
    assert {k: v for k, v in found.numbers.items() if v != limits.NUMBERS[k]} == {
        "maxpopaccounts": 10, "maxaliases": 5, "maxforwards": 3, "quota": 100,
        "default_quota": 1048576, "perm_account": 7}
    assert found.switches == {"disable_pop", "disable_imap"}
    assert found.flag_mask == flags.NO_POP | flags.NO_IMAP
    # written back in the canonical form, read back the same
    again = limits.Limits.parse(found.render())
    assert (again.numbers, again.switches) == (found.numbers, found.switches)


def test_domain_file_then_default_file_then_built_in(vhome: Install,
                                                     site: tuple[Vpopmail, Path]) -> None:
    api, path = site
    entry = api.get_domain(DOMAIN)
    default = vhome.prefix / "etc" / limits.DEFAULT_FILE
    default.unlink(missing_ok=True)
    builtin = api.domain_limits(entry)
    assert (builtin.source, builtin.numbers, builtin.switches) == (
        "built-in defaults", limits.NUMBERS, set())
    default.write_text("maxpopaccounts: 50\ndisable_smtp\n")
    assert api.domain_limits(entry).source == str(default)
    assert api.domain_limits(entry).numbers["maxpopaccounts"] == 50
    path.write_text("maxpopaccounts: 2\n")  # the domain's file replaces the default whole
    own = api.domain_limits(entry)
    assert (own.source, own.numbers["maxpopaccounts"], own.switches) == (str(path), 2, set())


def test_limits_reach_new_users_and_flags(vhome: Install, site: tuple[Vpopmail, Path]) -> None:
    api, path = site
    path.write_text("default_quota: 2097152\ndefault_maxmsgcount: 100\ndisable_smtp\n")
    vhome.ok("vadduser", f"bob@{DOMAIN}", "pw")
    assert stored_users(vhome)["bob"][6] == "2097152S,100C"
    user, entry = api.get_user(f"bob@{DOMAIN}")
    assert api.effective_flags(user, entry) == flags.NO_SMTP
    vhome.ok("vmoduser", "-o", f"bob@{DOMAIN}")  # V_OVERRIDE: the domain's switches do not apply
    user, entry = api.get_user(f"bob@{DOMAIN}")
    assert api.effective_flags(user, entry) == flags.V_OVERRIDE


@pytest.mark.parametrize("text,detail", [
    ("maxpopaccounts: ten\n", "line 1: maxpopaccounts needs a number"),
    ("# ok\nmaxpopacounts: 10\n", "line 2: unknown key 'maxpopacounts'"),
    (b"disable_pop\xff\n", "not UTF-8 text"),
])
def test_a_damaged_file_is_a_clear_error_that_changes_nothing(
        vhome: Install, site: tuple[Vpopmail, Path], text: str | bytes, detail: str) -> None:
    api, path = site
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(CannotReadLimits) as caught:
        api.domain_limits(api.get_domain(DOMAIN))
    assert f"{path}" in str(caught.value) and detail in str(caught.value)
    refused(vhome, "vadduser", f"bob@{DOMAIN}", "pw", code=220,
            starts=f"Error: can't read domain limits: {path}")


def test_a_file_read_again_gives_its_current_contents_and_a_copy_of_its_own(tmp_path: Path
                                                                            ) -> None:
    """A server worker reads the limits at every login: an edit is seen at the next read even
    with the same size and time, and what one caller changes in its copy no other sees."""
    path = tmp_path / limits.DOMAIN_FILE
    path.write_text("maxpopaccounts: 10\ndisable_pop\n")
    first = limits.read_file(str(path))
    assert first is not None and first.numbers["maxpopaccounts"] == 10
    first.numbers["maxpopaccounts"] = 99
    first.switches.add("disable_imap")
    again = limits.read_file(str(path))
    assert again is not None and again.numbers["maxpopaccounts"] == 10
    assert again.switches == {"disable_pop"} and again.source == str(path)
    stamp = path.stat()
    path.write_text("maxpopaccounts: 20\ndisable_imap\n")  # same size
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    changed = limits.read_file(str(path))
    assert changed is not None and changed.numbers["maxpopaccounts"] == 20
    assert changed.switches == {"disable_imap"}


def test_forwards_are_counted_as_qmailadmin_counts_them() -> None:
    """Every alias is a forward but a blackhole (its first line a comment), an ezmlm list and
    an autoresponder (a line running one, wherever it is on the line); a maildir, a program
    of another kind and several lines count once."""
    pairs = [("info", "&alice@example.com"), ("info", "&bob@example.com"),
             ("junk", "# delete"), ("junk", "&x@y.org"),
             ("box", "/home/vpopmail/domains/example.com/alice/Maildir/"),
             ("team", "|/usr/bin/ezmlm-reject '/d/team'"), ("team", "|/usr/bin/ezmlm-send '/d/t'"),
             ("away", "&carol@other.org"), ("away", "|preline /usr/bin/autorespond 1 1 m d"),
             ("bye", "| /usr/local/bin/qmail-autoresponder /d/BYE"),
             ("spam", "|/usr/bin/maildrop mailfilter"), ("later", "&a@b.c"), ("later", "#")]
    assert limits.count_forwards(pairs) == 4  # info, box, spam, later
    assert limits.count_forwards([]) == 0


def test_vmoddomlimits_writes_c_vpopmails_layout(site: tuple[Vpopmail, Path],
                                                 vhome: Install) -> None:
    """The file as C's vlimits_write_limits_file writes it, byte for byte (found by the
    differential fuzz against C 5.4.33): the switches after default_maxmsgcount, in C's
    order (webmail before external_relay and smtp), then the perm lines."""
    _, path = site
    vhome.ok("vmoddomlimits", "-g", "udpswirmcx", "-P", "10", "-p", "c", DOMAIN)
    assert path.read_text() == (
        "maxpopaccounts: 10\nmaxaliases: -1\nmaxforwards: -1\nmaxautoresponders: -1\n"
        "maxmailinglists: -1\nquota: 0\nmaxmsgcount: 0\ndefault_quota: 0\n"
        "default_maxmsgcount: 0\ndisable_pop\ndisable_imap\ndisable_dialup\n"
        "disable_password_changing\ndisable_webmail\ndisable_external_relay\ndisable_smtp\n"
        "disable_spamassassin\ndelete_spam\ndisable_maildrop\nperm_account: 1\n"
        "perm_alias: 0\nperm_forward: 0\nperm_autoresponder: 0\nperm_maillist: 0\n"
        "perm_quota: 0\nperm_defaultquota: 0\n")
