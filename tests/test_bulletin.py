"""vpopmail.api.bulletin, the library under vpopbull, on a real sandbox install: the opened
message (sizes, its real path for symbolic links, no descriptor left behind when refused), the
exclude list and the domain choice, a run's summary and report, and the hard-link source
removed after each domain. (Bad files, quotas and each method's files through the installed
vpopbull: test_toolbox_tools.py.)"""
from __future__ import annotations

import io
import os
import pty
from pathlib import Path
from typing import Any

import pytest

from helpers import ALIAS, DOMAIN, site
from install_site import Install
from vpopmail.api import Vpopmail
from vpopmail.api.bulletin import (DELIVERED, EXCLUDED, HARD_LINK, SYMLINK, Bulletin, Message,
                                   Progress, read_exclude, select_domains)
from vpopmail.errors import BadInput, DomainDoesNotExist

DATA = b"From: Postmaster <postmaster@example.com>\nSubject: Maintenance\n\nTonight.\n"


@pytest.fixture
def api(vhome: Install) -> Vpopmail:
    """The API over a site: example.com (postmaster, alice, bob) and its alias alias.test."""
    site(vhome)
    return vhome.api()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_message_sizes_and_real_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bulletin.txt").write_bytes(DATA)
    os.symlink("bulletin.txt", tmp_path / "link.txt")
    monkeypatch.chdir(tmp_path)
    message = Message.open("link.txt")  # relative, through a link: C linked to cwd/file
    try:
        assert message.path == str(tmp_path / "bulletin.txt")
        assert (message.size, message.rfc822_size) == (len(DATA), len(DATA) + DATA.count(b"\n"))
        assert os.pread(message.fd, 100, 0) == DATA
    finally:
        message.close()
    assert message.fd == -1
    message.close()  # twice is harmless


def test_a_refused_message_leaves_no_descriptor_open(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(b"Subject: no sender\n\nbody\n")
    before = open_fds()
    for path in (tmp_path / "bad.txt", tmp_path):
        with pytest.raises(BadInput):
            Message.open(str(path))
    with pytest.raises(FileNotFoundError):
        Message.open(str(tmp_path / "missing"))
    assert open_fds() == before


def test_read_exclude(api: Vpopmail, tmp_path: Path) -> None:
    path = tmp_path / "exclude"
    path.write_text(f"# staff\n\n  Alice@{DOMAIN.upper()}  \nbob@{ALIAS}\nx@unknown.test\n")
    assert read_exclude(api, str(path)) == {f"alice@{DOMAIN}", f"bob@{DOMAIN}", "x@unknown.test"}
    path.write_text("alice@example.com\n\nalice example.com\n")
    with pytest.raises(BadInput, match="line 3: 'alice example.com' is not an email address"):
        read_exclude(api, str(path))


def test_select_domains(api: Vpopmail) -> None:
    api.add_domain("empty.test", "secret")
    api.delete_user("postmaster@empty.test")
    assert [e.real_domain for e in select_domains(api, [ALIAS, DOMAIN])] == [DOMAIN]
    assert [e.real_domain for e in select_domains(api, [])] == [DOMAIN]  # once; none empty
    with pytest.raises(DomainDoesNotExist):
        select_domains(api, [DOMAIN, "nosuch.test"])


def test_no_message_is_refused_unless_a_dry_run(api: Vpopmail) -> None:
    with pytest.raises(BadInput, match="no message"):
        Bulletin(api, None)
    run = Bulletin(api, None, dry_run=True)
    reports: list[tuple[str, str, str]] = []
    for entry, users in run.plan(select_domains(api, [DOMAIN])):
        run.send(entry, users, lambda *report: reports.append(report))
    assert sorted(reports) == [(f"{n}@{DOMAIN}", "listed", "") for n in ("alice", "bob",
                                                                        "postmaster")]


def send_all(api: Vpopmail, tmp_path: Path, method: str, **options: Any
             ) -> tuple[Bulletin, list[tuple[str, str, str]]]:
    """Send DATA to the domain with ``method`` and Bulletin's ``options``: the run and its
    reports."""
    (tmp_path / "bulletin.txt").write_bytes(DATA)
    message = Message.open(str(tmp_path / "bulletin.txt"))
    run = Bulletin(api, message, method, **options)
    reports: list[tuple[str, str, str]] = []
    try:
        for entry, users in run.plan(select_domains(api, [DOMAIN])):
            run.send(entry, users, lambda *report: reports.append(report))
    finally:
        message.close()
    return run, reports


@pytest.mark.parametrize("method", [HARD_LINK, SYMLINK])
def test_send_reports_each_user_and_leaves_no_source_behind(api: Vpopmail, tmp_path: Path,
                                                            method: str) -> None:
    run, reports = send_all(api, tmp_path, method, exclude={f"bob@{DOMAIN}"})
    assert sorted(reports) == [(f"alice@{DOMAIN}", DELIVERED, ""),
                               (f"bob@{DOMAIN}", EXCLUDED, ""),
                               (f"postmaster@{DOMAIN}", DELIVERED, "")]
    assert run.summary.counts == {DELIVERED: 2, EXCLUDED: 1, "over quota": 0, "failed": 0,
                                  "listed": 0}
    assert run.summary.failures == []
    dom = api.get_domain(DOMAIN).dir
    placed = [next((Path(dom) / n / "Maildir" / "new").iterdir()) for n in ("alice", "postmaster")]
    assert not list((Path(dom) / "bob" / "Maildir" / "new").iterdir())
    for name in ("alice", "bob", "postmaster"):  # the hard-link source was removed
        assert not list((Path(dom) / name / "Maildir" / "tmp").iterdir())
    if method == HARD_LINK:
        assert len({p.stat().st_ino for p in placed}) == 1 and placed[0].stat().st_nlink == 2
    else:
        assert [os.readlink(p) for p in placed] == [str(tmp_path / "bulletin.txt")] * 2


def test_progress_bar() -> None:
    stream = io.StringIO()
    assert not Progress.wanted(1000, 10, stream)  # not a terminal
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as terminal:
        assert Progress.wanted(10, 10, terminal) and not Progress.wanted(9, 10, terminal)
    os.close(master)
    bar = Progress(4, stream, width=8)
    bar.step("sending")
    bar.step("sending", 3)  # the last step is always drawn
    assert stream.getvalue().endswith("\rsending [########] 4/4 100% 0 s left\x1b[K")
    bar.clear()
    assert stream.getvalue().endswith("\r\x1b[K")
    bar.finish("sent")
    assert stream.getvalue().endswith("sent [########] 4/4 100% 0 s left\x1b[K\n")


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_stored_quota_is_read_as_vdelivermail_reads_it(vhome: Install, api: Vpopmail,
                                                         tmp_path: Path, dry_run: bool) -> None:
    """A record holding an unformatted quota (``50M``, as older vpopmail or a control panel
    stored it) is 50 MB to vpopbull as to vdelivermail (before: 50 bytes, so alice was
    skipped as over quota)."""
    vpasswd = Path(api.get_domain(DOMAIN).dir) / "vpasswd"
    lines = [line.split(":") for line in vpasswd.read_text().splitlines()]
    for fields in lines:
        if fields[0] == "alice":
            fields[6] = "50M"
    vpasswd.write_text("".join(":".join(fields) + "\n" for fields in lines))
    vhome.ok("vmkpasswd", DOMAIN)
    reports = send_all(api, tmp_path, HARD_LINK, dry_run=dry_run)[1]
    [alice] = [report for report in reports if report[0] == f"alice@{DOMAIN}"]
    assert alice[1] == ("listed" if dry_run else DELIVERED), alice
