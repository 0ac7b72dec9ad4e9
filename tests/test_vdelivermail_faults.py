"""Local faults make vdelivermail defer (111) with one clear line, and lose nothing: no partial
message in new/, nothing left in tmp/. C vpopmail bounced (100) on several of these."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from install_site import Install
from delivery_site import MESSAGE, Site, qmail_local_env

NO_MAILBOX = b"Sorry, no mailbox here by that name. (#5.1.1)\n"


@pytest.fixture
def site(vhome: Install) -> Site:
    return Site.create(vhome, False, bob="10M")


@pytest.fixture
def vsite(root_vhome: Install) -> Site:
    """A root install where vdelivermail runs as the vpopmail user (file modes matter)."""
    return Site.create(root_vhome, True, bob="10M")


def assert_deferred(site: Site, result: subprocess.CompletedProcess[bytes], *words: bytes) -> None:
    assert result.returncode == 111, result
    assert result.stdout.endswith(b"\n") and b"Traceback" not in result.stdout + result.stderr
    for word in words:
        assert word in result.stdout, result.stdout
    maildir = site.maildir("bob")
    if maildir.is_dir():
        assert list((maildir / "new").iterdir()) == []
        assert list((maildir / "tmp").iterdir()) == []


def users_cdb(site: Site) -> Path:
    return site.inst.qmaildir / "users" / "cdb"


def test_truncated_users_cdb(site: Site) -> None:
    path = users_cdb(site)
    path.write_bytes(path.read_bytes()[:1000])
    assert_deferred(site, site.deliver("bob"), b"users/cdb")


def test_garbage_users_cdb(site: Site) -> None:
    path = users_cdb(site)
    data = bytearray(path.read_bytes())
    data[:2048] = os.urandom(2048)
    path.write_bytes(bytes(data))
    result = site.deliver("bob")
    assert result.returncode in (111, 100)  # random tables may still say "absent" correctly
    if result.returncode == 100:
        assert result.stdout == NO_MAILBOX
    else:
        assert_deferred(site, result)


def test_missing_users_cdb(site: Site) -> None:
    users_cdb(site).unlink()
    assert_deferred(site, site.deliver("bob"), b"users/cdb")


def test_unreadable_users_cdb(vsite: Site) -> None:
    users_cdb(vsite).chmod(0o600)
    os.chown(users_cdb(vsite), 0, 0)
    assert_deferred(vsite, vsite.deliver("bob"), b"users/cdb", b"Permission denied")


@pytest.mark.parametrize("damage", ["truncate", "garbage-pointer"])
def test_corrupt_vpasswd_cdb(site: Site, damage: str) -> None:
    path = site.domain_dir / "vpasswd.cdb"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:len(data) - 40]
    else:
        for slot in range(256):  # every table pointer past the end of the file
            data[slot * 8:slot * 8 + 4] = (len(data) + 1000).to_bytes(4, "little")
            data[slot * 8 + 4:slot * 8 + 8] = (2).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert_deferred(site, site.deliver("bob"), b"vpasswd.cdb")


def test_unreadable_vpasswd_cdb(vsite: Site) -> None:
    path = vsite.domain_dir / "vpasswd.cdb"
    os.chown(path, 0, 0)
    assert_deferred(vsite, vsite.deliver("bob"), b"vpasswd.cdb", b"Permission denied")


def test_missing_vpasswd_cdb_is_rebuilt(site: Site) -> None:
    (site.domain_dir / "vpasswd.cdb").unlink()
    assert site.deliver("bob").returncode == 0
    assert (site.domain_dir / "vpasswd.cdb").exists()


def test_lock_timeout_rebuilding_vpasswd_cdb(site: Site) -> None:
    site.inst.set_config("locks", "timeout", 1)
    (site.domain_dir / "vpasswd.cdb").unlink()
    # lockf locks are per process: hold it from a child while vdelivermail runs
    ready, go = os.pipe()
    holder = subprocess.Popen(
        ["python3", "-c", "import fcntl,os,sys; f=open(sys.argv[1],'a+'); "
         "fcntl.lockf(f, fcntl.LOCK_EX); os.write(1, b'x'); sys.stdin.read()",
         str(site.domain_dir / ".vpasswd.lock")], stdin=subprocess.PIPE, stdout=go)
    try:
        assert os.read(ready, 1) == b"x"
        assert_deferred(site, site.deliver("bob"), b"vpasswd.lock")
    finally:
        holder.communicate(b"")
        os.close(ready)
        os.close(go)


def test_maildir_not_creatable(vsite: Site) -> None:
    home = vsite.user_dir("bob")
    shutil.rmtree(home / "Maildir")
    os.chown(home, 0, 0)
    home.chmod(0o755)
    result = vsite.deliver("bob")
    assert_deferred(vsite, result, b"(#5.9.9)")


def test_maildir_unwritable(vsite: Site) -> None:
    tmp = vsite.maildir("bob") / "tmp"
    os.chown(tmp, 0, 0)
    assert_deferred(vsite, vsite.deliver("bob"), b"system error", b"Permission denied")


def test_file_size_limit_is_a_write_error(site: Site) -> None:
    """An injected write error (RLIMIT_FSIZE: EFBIG mid-message) defers and leaves tmp/ empty."""
    big = MESSAGE + b"q" * 200_000
    argv = ["prlimit", "--fsize=65536", "--", *site.argv("", "bounce-no-mailbox")]
    with tempfile.TemporaryFile() as fh:
        fh.write(big)
        fh.seek(0)
        result = subprocess.run(argv, stdin=fh, capture_output=True, cwd=site.domain_dir,
                                env=qmail_local_env("bob", home=str(site.domain_dir)))
    assert_deferred(site, result, b"system error", b"File too large")


def test_disk_full_defers(site: Site, tiny_fs: Path) -> None:
    assert site.deliver("bob").returncode == 0
    delivered = list((tiny_fs / "new").iterdir())
    result = site.deliver("bob", MESSAGE + b"f" * 400_000)
    assert result.returncode == 111, result
    assert b"No space left on device" in result.stdout
    assert list((tiny_fs / "new").iterdir()) == delivered
    assert list((tiny_fs / "tmp").iterdir()) == []


def test_spool_failure_defers(vsite: Site) -> None:
    os.chown(vsite.domain_dir, 0, 0)
    vsite.domain_dir.chmod(0o755)
    result = vsite.deliver("bob", pipe=True)
    assert_deferred(vsite, result, b"spool")


def test_missing_config_defers(site: Site) -> None:
    site.inst.config_path.unlink()
    assert_deferred(site, site.deliver("bob"), b"vpopmail.toml")


def test_wrong_uid_defers(vsite: Site) -> None:
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            str(vsite.inst.bin / "vdelivermail"), "", "bounce-no-mailbox"]
    vsite.inst.config_path.chmod(0o644)
    (vsite.inst.config_path.parent / "vpopmail.toml.cache").unlink(missing_ok=True)
    result = subprocess.run(argv, input=MESSAGE, capture_output=True, cwd="/",
                            env=qmail_local_env("bob", home=str(vsite.domain_dir)))
    assert result.returncode == 111, result
    assert b"uid 65534" in result.stdout


def test_root_drops_to_domain_owner(vsite: Site) -> None:
    """Run as root by hand, vdelivermail still writes as the domain's owner."""
    root_site = Site(vsite.inst, unprivileged=False)
    assert root_site.deliver("bob").returncode == 0
    [path] = list((vsite.maildir("bob") / "new").iterdir())
    assert (path.stat().st_uid, path.stat().st_gid) == (vsite.inst.uid, vsite.inst.gid)


def test_fifo_as_maildirsize_neither_hangs_nor_loses(site: Site) -> None:
    """A FIFO where maildirsize belongs (damage: only the domain's owner can make one) is not a
    maildirsize: it is recounted into a regular file and the message delivered (before: the
    delivery waited on the FIFO for ever, holding a qmail-local slot; C's safe open did not)."""
    maildir = site.maildir("bob")
    path = maildir / "maildirsize"
    path.unlink()
    os.mkfifo(path, 0o600)
    result = site.deliver("bob", wrap=("timeout", "20"))
    assert result.returncode == 0, result
    assert len(list((maildir / "new").iterdir())) == 1
    assert path.is_file() and path.read_text().startswith("10485760S\n")


@pytest.mark.parametrize("hops", [0, -5])
def test_a_hop_limit_below_one_defers(site: Site, hops: int) -> None:
    """delivery.max_hops of 0 or less (a typo) is a configuration error: every delivery
    defers naming the key (before: every message bounced as looping, none delivered)."""
    site.inst.set_config("delivery", "max_hops", hops)
    assert_deferred(site, site.deliver("bob"), b"delivery.max_hops must be >= 1")
