"""delivery.default_delivery (sagredo's vpopmail --enable-defaultdelivery): a user without a
``.qmail`` gets qmail's ``control/defaultdelivery``, run in the user's directory as the lines
of a ``.qmail``; a line naming vdelivermail is the user's own Maildir delivery. The Sieve case
runs Debian's dovecot-lda with Pigeonhole, as such a site does."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from delivery_site import DOMAIN, MESSAGE, RETURN_PATH, Site, inject, write_dotqmail
from install_site import Install

pytestmark = [pytest.mark.both_backends, pytest.mark.through_server]

LDA = "/usr/lib/dovecot/dovecot-lda"
SIEVE_PLUGIN = "/usr/lib/dovecot/modules/lib90_sieve_plugin.so"


@pytest.fixture
def site(each_install: Install) -> Site:
    each_install.set_config("delivery", "default_delivery", True)
    return Site.create(each_install, each_install.mode == "root", alice="1M", bob=None)


def set_default_delivery(site: Site, text: str, mode: int = 0o644) -> None:
    path = site.inst.qmaildir / "control" / "defaultdelivery"
    path.write_text(text)
    path.chmod(mode)


def test_its_lines_are_followed_in_the_users_directory(site: Site) -> None:
    """A program line runs in the user's directory with qmail-local's variables; nothing
    goes to the Maildir besides."""
    set_default_delivery(site, '# Sieve for everyone\n| cat > "got-$EXT@$USER"\n')
    result = site.deliver("alice")
    assert (result.returncode, result.stderr) == (0, b""), result
    got = site.user_dir("alice") / f"got-alice@{DOMAIN}"
    assert got.read_bytes().endswith(MESSAGE)
    assert not site.new_files(site.maildir("alice"))


def test_a_vdelivermail_line_is_the_users_own_maildir_under_its_quota(site: Site) -> None:
    """qmail's own default for every qmail user names vdelivermail: for a vpopmail user that
    is its Maildir (with its quota and address), once, not vdelivermail run again."""
    set_default_delivery(site, "| /home/vpopmail/bin/vdelivermail '' bounce-no-mailbox\n"
                               '| cat > copy\n')
    assert site.deliver("alice").returncode == 0
    data = site.only_message(site.maildir("alice"))
    assert data == RETURN_PATH + b"Delivered-To: alice@example.com\n" + MESSAGE
    assert (site.user_dir("alice") / "copy").read_bytes().endswith(MESSAGE)
    assert (site.maildir("alice") / "maildirsize").read_text().startswith("1048576S\n")
    big = b"Subject: big\n\n" + b"x" * 1_100_000 + b"\n"
    result = site.deliver("alice", big)
    assert (result.returncode, result.stdout) == (100, b"user is over quota\n\n")


def test_only_a_program_line_running_vdelivermail_is_the_users_maildir(
        site: Site, inject: Path) -> None:
    """A forward whose address holds "vdelivermail", and a program that only names it in an
    argument, are followed as written: neither is vdelivermail run for this user."""
    set_default_delivery(site, "&vdelivermail-archive@example.net\n"
                               "| cat > vdelivermail-copy\n")
    assert site.deliver("alice").returncode == 0
    assert not site.new_files(site.maildir("alice"))
    assert (site.user_dir("alice") / "vdelivermail-copy").read_bytes().endswith(MESSAGE)
    assert (inject / "argv.0").read_text() == "--\nvdelivermail-archive@example.net\n"


def test_a_maildir_line_into_the_users_folder_keeps_its_quota(site: Site) -> None:
    """``./Maildir/.Spam/`` is a folder of the user's Maildir++ (it has its maildirfolder
    file, as maildirmake -f makes it): the user's quota holds there."""
    folder = site.maildir("alice") / ".Spam"
    for sub in ("", "tmp", "new", "cur"):
        (folder / sub).mkdir()
    (folder / "maildirfolder").touch()
    if site.unprivileged:
        for path in (folder, *folder.iterdir()):
            shutil.chown(path, site.inst.user, site.inst.group)
    set_default_delivery(site, "./Maildir/.Spam/\n")
    assert site.deliver("alice").returncode == 0
    assert len(site.new_files(folder)) == 1 and not site.new_files(site.maildir("alice"))
    result = site.deliver("alice", b"Subject: big\n\n" + b"x" * 1_100_000 + b"\n")
    assert (result.returncode, result.stdout) == (100, b"user is over quota\n\n")


def test_vdelivermail_run_through_a_wrapper_is_not_run_again(site: Site) -> None:
    """A line that runs vdelivermail through another program (``|exec …``, ``|preline …``,
    a script) is followed as written, and the vdelivermail it starts for the same recipient
    is that user's Maildir delivery, as a line naming vdelivermail is (before: that one ran
    control/defaultdelivery again, which started one more, until the process limit; every
    delivery to every user deferred, a fork bomb each time qmail retried it)."""
    home = site.user_dir("alice")
    wrapper = home / "wrap"
    write_dotqmail(site, wrapper, f'#!/bin/sh\nn=$(cat depth 2>/dev/null || echo 0)\n'
                                  f'echo $((n + 1)) > depth\n[ "$n" -lt 3 ] || exit 111\n'
                                  f'exec {site.inst.bin / "vdelivermail"} "$@"\n', 0o700)
    set_default_delivery(site, "| ./wrap '' bounce-no-mailbox\n")
    result = site.deliver("alice")
    assert (result.returncode, result.stderr) == (0, b""), result
    data = site.only_message(site.maildir("alice"))
    assert data == RETURN_PATH + b"Delivered-To: alice@example.com\n" + MESSAGE
    assert (home / "depth").read_text() == "1\n"


@pytest.mark.parametrize("text", ["", "# nothing here\n"], ids=["empty", "comments"])
def test_no_instruction_in_it_is_the_maildir_delivery(site: Site, text: str) -> None:
    set_default_delivery(site, text)
    assert site.deliver("alice").returncode == 0
    assert len(site.new_files(site.maildir("alice"))) == 1


def test_a_users_dot_qmail_comes_first_and_off_it_is_not_read(site: Site) -> None:
    set_default_delivery(site, "| cat > got\n")
    write_dotqmail(site, site.user_dir("alice") / ".qmail", "./Maildir/\n")
    assert site.deliver("alice").returncode == 0
    assert len(site.new_files(site.maildir("alice"))) == 1
    assert not (site.user_dir("alice") / "got").exists()
    os.unlink(site.user_dir("alice") / ".qmail")
    site.inst.set_config("delivery", "default_delivery", False)
    assert site.deliver("alice").returncode == 0
    assert len(site.new_files(site.maildir("alice"))) == 2
    assert not (site.user_dir("alice") / "got").exists()


@pytest.mark.parametrize(("text", "mode", "said"), [
    ("| cat > got\n", 0o666, b"is writable by anyone (#4.7.0)"),
    ("\n| cat > got\n", 0o644, b"is blank on its first line (#4.2.1)"),
])
def test_a_damaged_or_open_file_defers(site: Site, text: str, mode: int, said: bytes) -> None:
    """As qmail-local treats such a .qmail: deferred (qmail retries), never a guess."""
    set_default_delivery(site, text, mode)
    result = site.deliver("alice")
    assert result.returncode == 111 and said in result.stdout, result
    assert not site.new_files(site.maildir("alice"))
    assert not (site.user_dir("alice") / "got").exists()


SIEVE_CONF = """\
protocols =
base_dir = {base}/run
log_path = {base}/lda.log
mail_location = maildir:~/Maildir
lda_mailbox_autocreate = yes
protocol lda {{
  mail_plugins = sieve
}}
plugin {{
  sieve = file:~/sieve;active=~/.dovecot.sieve
}}
"""


@pytest.mark.skipif(not (os.path.exists(LDA) and os.path.exists(SIEVE_PLUGIN)),
                    reason="needs Debian's dovecot-core and dovecot-sieve")
def test_dovecot_lda_runs_the_users_sieve_script(site: Site) -> None:
    """The reason for the option: control/defaultdelivery hands each message to Dovecot's LDA,
    whose Sieve files it by the user's script, into the user's Maildir++ folder."""
    if site.inst.uid == 0:
        pytest.skip("dovecot-lda will not deliver as root without -d (a sandbox of root's)")
    base = site.inst.prefix.parent / "lda"  # where the domain owner can reach
    (base / "run").mkdir(parents=True)
    shutil.chown(base, site.inst.uid, site.inst.gid)
    shutil.chown(base / "run", site.inst.uid, site.inst.gid)
    conf = base / "dovecot.conf"
    conf.write_text(SIEVE_CONF.format(base=base))
    # a site's line names the user (-d "$EXT@$USER") for its running Dovecot's userdb; with
    # no Dovecot running here, the LDA takes the user it runs as, in its directory
    set_default_delivery(site, f'| HOME="$PWD" exec {LDA} -c {conf}\n')
    script = site.user_dir("alice") / ".dovecot.sieve"
    script.write_text('require "fileinto";\n'
                      'if header :contains "subject" "report" { fileinto "Reports"; }\n')
    shutil.chown(script, site.inst.uid, site.inst.gid)
    log = base / "lda.log"
    report = site.deliver("alice", b"Subject: weekly report\n\nnumbers\n")
    assert report.returncode == 0, (report, log.read_text() if log.exists() else "")
    assert site.deliver("alice").returncode == 0
    maildir = site.maildir("alice")
    [filed] = site.new_files(maildir / ".Reports")
    assert filed.read_bytes().endswith(b"Subject: weekly report\n\nnumbers\n"), log
    [inbox] = site.new_files(maildir)
    assert inbox.read_bytes().endswith(MESSAGE), log
