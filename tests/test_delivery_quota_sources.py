"""Where a delivery takes its Maildir++ quota from: the user's record, read as C vdelivermail
reads it (``format_maildirquota``: ``50M`` is 52428800 bytes, a bare number is bytes)."""
from __future__ import annotations

import pytest

from install_site import Install
from delivery_site import DOMAIN, MESSAGE, Site

BIG = MESSAGE + b"y" * (2 * 1024 * 1024) + b"\n"  # over alice's 1M


@pytest.fixture
def site(each_install: Install) -> Site:
    return Site.create(each_install, each_install.mode == "root", alice="1M", bob=None)


def set_stored_quota(site: Site, user: str, quota: str) -> None:
    """Write ``quota`` into the user's vpasswd line as another tool (C vpopmail before
    5.3, a control panel, an editor) may have stored it, and rebuild vpasswd.cdb."""
    vpasswd = site.domain_dir / "vpasswd"
    lines = []
    for line in vpasswd.read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            fields[6] = quota
        lines.append(":".join(fields) + "\n")
    vpasswd.write_text("".join(lines))
    site.ok("vmkpasswd", DOMAIN)


@pytest.mark.parametrize("stored, normal", [("50M", "52428800S"), ("50MB", "52428800S"),
                                            ("5000000", "5000000S"), ("2k", "2048S")])
def test_a_stored_quota_is_read_as_c_formats_it(site: Site, stored: str, normal: str) -> None:
    """C vdelivermail checks format_maildirquota(pw_shell): a record holding 50M means 50 MB,
    not 50 bytes (before: every message bounced as over quota), and maildirsize gets the
    Maildir++ form that Courier and Dovecot read (before: the raw 50M / 5000000)."""
    set_stored_quota(site, "alice", stored)
    maildir = site.maildir("alice")
    result = site.deliver("alice")
    assert (result.returncode, result.stdout) == (0, b""), stored
    assert (maildir / "maildirsize").read_text().split("\n")[0] == normal
    if normal == "2048S":  # the unit is honoured: a 2 MB message does not fit in 2 KB
        assert site.deliver("alice", BIG).returncode == 100
