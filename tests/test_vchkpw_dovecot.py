"""Real POP3 and IMAP logins through Dovecot 2.3 with our vchkpw as its checkpassword program
(passdb checkpassword, userdb prefetch + checkpassword), reading mail our vdelivermail
delivered. C vchkpw 5.4.33 failed here both ways (c-vpopmail-observed.md section 8): after its
setuid Dovecot's checkpassword-reply refused to run, and its exit 3 for a wrong password read
as a temporary failure. The install is the root one (mail owned by uid 89); Dovecot's auth
process runs as root and vchkpw reports the ids instead of switching to them."""
from __future__ import annotations

from collections.abc import Callable

import pytest

from delivery_site import MESSAGE, Site
from dovecot_site import Dovecot, new_source_ip

PASSWORD = "Dove-pw-1"


@pytest.fixture
def mail_site(root_vhome: object) -> Site:
    site = Site.create(root_vhome, True)  # type: ignore[arg-type]
    site.ok("vadduser", "alice@example.com", PASSWORD)
    site.inst.set_config("relay", "roaming_users", True)
    assert site.deliver("alice").returncode == 0
    return site


@pytest.fixture(params=["root", "vpopmail"])
def dovecot(request: pytest.FixtureRequest, mail_site: Site,
            dovecot_factory: Callable[..., Dovecot]) -> Dovecot:
    """Dovecot with its auth process (and so vchkpw) as root, or as the vpopmail user itself
    (then vchkpw needs and uses no privileges)."""
    return dovecot_factory(str(mail_site.inst.bin / "vchkpw"), uid=mail_site.inst.uid,
                           gid=mail_site.inst.gid, userdb_checkpassword=True,
                           auth_user=request.param)


def test_pop3_login_reads_delivered_message(mail_site: Site, dovecot: Dovecot) -> None:
    source = new_source_ip()
    with dovecot.pop3_login("alice@example.com", PASSWORD, source) as client:
        count, _ = client.stat()
        assert count == 1
        _, lines, _ = client.retr(1)
    body = b"\n".join(lines) + b"\n"
    assert body.startswith(b"Return-Path: <sender@remote.test>\nDelivered-To: alice@example.com\n")
    assert body.endswith(MESSAGE)
    assert (mail_site.user_dir("alice") / "lastauth").read_text() == source
    open_smtp = (mail_site.inst.prefix / "etc" / "open-smtp").read_text()
    assert open_smtp.startswith(f'{source}:allow,RELAYCLIENT="",RBLSMTPD=""\t')
    assert " Error" not in dovecot.log_text()


def test_imap_login_fetches_delivered_message(mail_site: Site, dovecot: Dovecot) -> None:
    client = dovecot.imap_login("alice@example.com", PASSWORD, new_source_ip())
    try:
        status, data = client.select("INBOX")
        assert (status, data) == ("OK", [b"1"])
        status, fetched = client.fetch("1", "(BODY.PEEK[])")
        assert status == "OK"
        assert fetched[0][1].replace(b"\r\n", b"\n").endswith(MESSAGE)  # type: ignore[index]
    finally:
        client.logout()


@pytest.mark.parametrize("user,password", [("alice@example.com", "wrong"),
                                           ("nobody@example.com", PASSWORD)])
def test_bad_login_is_a_clean_rejection(dovecot: Dovecot, user: str, password: str) -> None:
    dovecot.assert_refused(user, password, logged=r"Login failed \(status=1\)")


def test_doveadm_auth_and_user_lookups(mail_site: Site, dovecot: Dovecot) -> None:
    assert dovecot.auth_test("alice@example.com", PASSWORD).returncode == 0
    assert dovecot.auth_test("alice@example.com", "wrong").returncode == 77
    found = dovecot.doveadm("user", "alice@example.com")
    assert found.returncode == 0, found.stderr
    fields = dict(line.split(None, 1) for line in found.stdout.splitlines() if " " in line
                  or "\t" in line)
    assert fields["uid"].strip() == str(mail_site.inst.uid)
    assert fields["home"].strip() == str(mail_site.user_dir("alice"))
    missing = dovecot.doveadm("user", "nobody@example.com")
    assert missing.returncode == 67, (missing.stdout, missing.stderr)
