"""Root admin commands in a domain whose owner is not trusted (``vadddomain -i UID -g GID``).

The owner (here ``nobody`` with the vchkpw group, run through setpriv) controls every file of
its domain directory: it edits vpasswd, writes ``.dir_control_free``, plants symbolic links and
swaps names while root works. Whatever it plants, root's vadduser, vdeluser and vadddomain
create, chown and remove nothing outside that directory, and refuse with a clear error.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from install_site import CLEAN_ENV, Install

DOMAIN = "owned.test"
OWNER_UID = 65534  # nobody
OWNER_GID = 89  # vchkpw: what lets the owner reach ~vpopmail/domains (0750), as delivery must
STRACE = shutil.which("strace")


def as_owner(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as the domain owner."""
    return subprocess.run(["setpriv", f"--reuid={OWNER_UID}", f"--regid={OWNER_GID}",
                           "--clear-groups", *argv], capture_output=True, text=True,
                          env=CLEAN_ENV, cwd="/", check=check, timeout=60)


def owner_sh(script: str) -> None:
    as_owner("sh", "-ec", script)


@pytest.fixture
def site(root_vhome: Install) -> Install:
    """The root install with DOMAIN owned by the untrusted owner, users victim and alice."""
    root_vhome.ok("vadddomain", "-i", str(OWNER_UID), "-g", str(OWNER_GID), DOMAIN, "Pm-pass-1")
    root_vhome.ok("vadduser", f"victim@{DOMAIN}", "Victim-1")
    root_vhome.ok("vadduser", f"alice@{DOMAIN}", "Alice-1")
    return root_vhome


def domain_dir(inst: Install) -> Path:
    return inst.domains / DOMAIN


def outside(inst: Install, name: str) -> Path:
    """A root-owned directory beside the install, holding a root-owned file."""
    target = inst.prefix.parent / name
    target.mkdir(mode=0o755)
    (target / "precious").write_bytes(b"root data\n")
    return target


def tree(path: Path) -> list[tuple[str, int, int]]:
    """(relative path, uid, gid) of everything under ``path`` (itself included)."""
    found = [(".", path.lstat().st_uid, path.lstat().st_gid)]
    for entry in sorted(path.rglob("*")):
        st = entry.lstat()
        found.append((str(entry.relative_to(path)), st.st_uid, st.st_gid))
    return found


def vpasswd(inst: Install) -> str:
    return (domain_dir(inst) / "vpasswd").read_text()


def point_victim_at(inst: Install, directory: str) -> None:
    """The owner gives victim the directory ``directory`` in vpasswd and removes vpasswd.cdb
    (rebuilt from vpasswd by the next command)."""
    old = str(domain_dir(inst) / "victim")
    assert f":{old}:" in vpasswd(inst)
    owner_sh(f"cd {domain_dir(inst)}; sed 's|:{old}:|:{directory}:|' vpasswd > vpasswd.new; "
             "mv vpasswd.new vpasswd; rm -f vpasswd.cdb")


@pytest.mark.parametrize("how", ["dotdot", "symlink", "absolute"])
def test_vdeluser_removes_nothing_the_owner_points_outside(site: Install, how: str) -> None:
    """A user directory of ``<domain>/../../../x``, ``<domain>/lnk/x`` (lnk a link out) or
    ``/x`` in vpasswd: vdeluser refuses before anything is deleted; the tree outside stays."""
    target = outside(site, "target")
    before = tree(target)
    directory = {"dotdot": f"{domain_dir(site)}/../../../target",
                 "symlink": f"{domain_dir(site)}/lnk/target",
                 "absolute": str(target)}[how]
    if how == "symlink":
        owner_sh(f"ln -s {site.prefix.parent} {domain_dir(site)}/lnk")
    assert os.path.realpath(directory) == str(target)
    point_victim_at(site, directory)
    lines = vpasswd(site)

    result = site.run("vdeluser", f"victim@{DOMAIN}")
    assert tree(target) == before
    assert result.returncode == 149, result  # VA -107
    assert "not a real directory of the domain" in result.stdout, result
    assert "Traceback" not in result.stderr, result
    assert vpasswd(site) == lines  # nothing lost: the user is still there
    site.ok("vdeluser", f"alice@{DOMAIN}")  # the domain's own users are deleted as before
    assert not (domain_dir(site) / "alice").exists()


@pytest.mark.parametrize("leftover", [True, False])
def test_vadduser_does_not_follow_a_planted_bucket_link(site: Install, leftover: bool) -> None:
    """The owner lists bucket ``0`` as free and links ``<domain>/0`` to a root directory that
    holds (or not) a ``newguy``: root's vadduser neither removes nor creates anything there."""
    target = outside(site, "bucket-target")
    if leftover:
        (target / "newguy").mkdir()
        (target / "newguy" / "mail").write_bytes(b"root mail\n")
    before = tree(target)
    owner_sh(f"cd {domain_dir(site)}; echo 0 > .dir_control_free; ln -s {target} 0")
    lines = vpasswd(site)

    result = site.run("vadduser", f"newguy@{DOMAIN}", "Newguy-1")
    assert tree(target) == before
    assert result.returncode == 149, result
    assert "0 is a symbolic link or not a directory" in result.stdout, result
    assert vpasswd(site) == lines
    owner_sh(f"rm {domain_dir(site)}/0")
    site.ok("vadduser", f"newguy@{DOMAIN}", "Newguy-1")
    home = Path(site.ok("vuserinfo", "-d", f"newguy@{DOMAIN}").strip())
    assert home == domain_dir(site) / "0" / "newguy"  # the bucket is still free
    assert (home / "Maildir" / "new").is_dir() and home.stat().st_uid == OWNER_UID
    assert tree(target) == before


def race(site: Install, calls: str, wait_for: Path, swap: Path, target: Path, *argv: str
         ) -> subprocess.CompletedProcess[str]:
    """Run root's ``argv`` with each of ``calls`` held back 0.3 s (strace) while the owner
    waits for ``wait_for`` to appear, then moves ``swap`` aside and links its name to
    ``target``; returns root's run once the owner has swapped."""
    return owner_swaps(site, (SWAP, wait_for, swap, target),
                       ["-e", f"trace={calls}", "-e", f"inject={calls}:delay_exit=300000"], *argv)


def owner_swaps(site: Install, owner: tuple[str, Path, Path, Path], delays: list[str],
                *argv: str) -> subprocess.CompletedProcess[str]:
    """Run root's ``argv`` under strace with the ``delays`` options while the owner runs the
    script ``owner[0]`` with the paths after it; returns root's run once the owner has
    swapped."""
    script, *paths = owner
    swapper = subprocess.Popen(
        ["setpriv", f"--reuid={OWNER_UID}", f"--regid={OWNER_GID}", "--clear-groups",
         sys.executable, "-c", script, *map(str, paths)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLEAN_ENV, cwd="/")
    try:
        result = subprocess.run(
            [str(STRACE), "-f", "-qq", "-o", "/dev/null", *delays, str(site.bin / argv[0]),
             *argv[1:]],
            capture_output=True, text=True, env=CLEAN_ENV, cwd="/", timeout=120)
        out, err = swapper.communicate(timeout=30)
    finally:
        swapper.kill()
    assert out.strip() == "swapped", (out, err, result)
    return result


#: the owner's side of a race: wait for a path, move a name away, link the name elsewhere
SWAP = """
import os, sys, time
wait_for, swap, target = sys.argv[1:]
deadline = time.monotonic() + 20
while not os.path.isdir(wait_for):
    if time.monotonic() > deadline:
        sys.exit("never appeared")
    time.sleep(0.005)
os.rename(swap, swap + ".moved")
os.symlink(target, swap)
print("swapped")
"""


@pytest.mark.skipif(STRACE is None, reason="needs strace")
def test_a_bucket_swapped_for_a_link_while_root_makes_it_is_not_chowned(site: Install) -> None:
    """The owner replaces the bucket root has just made by a link to a root file while root's
    mkdir is held back: root must not chown the file."""
    target = outside(site, "chown-target")
    precious = target / "precious"
    owner_sh(f"echo Q > {domain_dir(site)}/.dir_control_free")
    bucket = domain_dir(site) / "Q"
    result = race(site, "mkdir,mkdirat", bucket, bucket, precious,
                  "vadduser", f"newguy@{DOMAIN}", "Newguy-1")
    st = precious.stat()
    assert (st.st_uid, st.st_gid) == (0, 0), result
    assert result.returncode == 149, result
    assert "Traceback" not in result.stderr, result


@pytest.mark.skipif(STRACE is None, reason="needs strace")
def test_a_user_dir_swapped_for_a_link_gets_no_lastauth_from_root(site: Install) -> None:
    """Once the new user's Maildir exists the owner replaces the user directory by a link to a
    root directory, while root's renames (the vpasswd writes) are held back: vadduser's
    lastauth must not be written there."""
    target = outside(site, "lastauth-target")
    before = tree(target)
    home = domain_dir(site) / "newguy"
    result = race(site, "rename,renameat,renameat2", home / "Maildir" / "new", home, target,
                  "vadduser", f"newguy@{DOMAIN}", "Newguy-1")
    assert tree(target) == before, result
    assert "Traceback" not in result.stderr, result


def test_vadddomain_for_another_owner_leaves_the_domains_root_to_vpopmail(
        root_vhome: Install) -> None:
    """The domains root's .dir-control and lock are vpopmail's, not the new domain owner's
    (who could otherwise steer where root puts the next domains)."""
    root_vhome.ok("vadddomain", "-i", str(OWNER_UID), "-g", str(OWNER_GID), DOMAIN, "Pm-pass-1")
    owners = {name: (st.st_uid, st.st_gid) for name in (".dir-control", ".dir-control.lock")
              for st in [(root_vhome.domains / name).lstat()]}
    assert owners == {".dir-control": (89, 89), ".dir-control.lock": (89, 89)}
    st = domain_dir(root_vhome).stat()
    assert (st.st_uid, st.st_gid) == (OWNER_UID, OWNER_GID)


@pytest.mark.parametrize("name, code", [(".dir-control", 156), (".dir_control_free", 156),
                                        (".qmailadmin-limits", 220)])
def test_a_fifo_planted_for_a_domain_file_does_not_hang_root(site: Install, name: str,
                                                             code: int) -> None:
    """root's vadduser reads the domain's .dir-control, free list and limits: a FIFO (or a
    link) the owner puts there is refused at once as damage instead of waited on."""
    owner_sh(f"cd {domain_dir(site)}; rm -f {name}; mkfifo {name}")
    lines = vpasswd(site)
    result = site.run("vadduser", f"newguy@{DOMAIN}", "Newguy-1", timeout=30)
    assert result.returncode == code, result  # VA -100 corrupt data, -36 unreadable limits
    assert f"{domain_dir(site) / name}: " in result.stdout, result
    assert "not a regular file" in result.stdout, result
    assert vpasswd(site) == lines


def test_vpasswd_linked_to_a_root_file_is_not_copied_by_root(site: Install) -> None:
    """The owner replaces vpasswd by a link to a root-only file of vpasswd-like lines (as
    /etc/shadow's are) and removes vpasswd.cdb: root's vadduser must not read that file and
    write its lines back into the owner's vpasswd."""
    secret = outside(site, "secret") / "shadow"
    secret.write_text("root:$6$salt$roothash:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    owner_sh(f"cd {domain_dir(site)}; rm -f vpasswd vpasswd.cdb; ln -s {secret} vpasswd")
    result = site.run("vadduser", f"newguy@{DOMAIN}", "Newguy-1")
    for name in ("vpasswd", "vpasswd.cdb"):
        path = domain_dir(site) / name
        if path.exists() and not path.is_symlink():
            assert b"roothash" not in path.read_bytes(), (name, result)
    assert result.returncode == 156, result  # VA -100: damage, not read
    assert f"{domain_dir(site) / 'vpasswd'}: " in result.stdout, result
    assert "symbolic links" in result.stdout, result


def test_a_fifo_planted_as_lastauth_does_not_hang_root_vuserinfo(site: Install) -> None:
    """vuserinfo (and vdeloldusers) as root read a user's lastauth: a FIFO there reads as
    'never logged in' at once."""
    owner_sh(f"cd {domain_dir(site)}/alice; rm -f lastauth; mkfifo lastauth")
    result = site.run("vuserinfo", f"alice@{DOMAIN}", timeout=30)
    assert result.returncode == 0, result
    assert "last auth: Never logged in" in result.stdout, result


#: the owner waits until root holds the domain's valias lock, then links the alias elsewhere
SWAP_WHEN_LOCKED = """
import fcntl, os, sys, time
lock, swap, target = sys.argv[1:]
fd = os.open(lock, os.O_RDWR)
deadline = time.monotonic() + 20
while True:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(fd, fcntl.LOCK_UN)
    except OSError:
        break
    if time.monotonic() > deadline:
        sys.exit("never locked")
    time.sleep(0.001)
os.rename(swap, swap + ".moved")
os.symlink(target, swap)
print("swapped")
"""


@pytest.mark.skipif(STRACE is None, reason="needs strace")
def test_an_alias_swapped_for_a_link_is_not_copied_by_root_valias(site: Install) -> None:
    """root's valias -i reads the alias file, adds a line and writes it back. Once root holds
    the lock the owner links the alias to a root-only file, while root's first call on the
    alias file is held back 1.5 s: that file's lines must not land in the owner's alias."""
    site.ok("valias", "-i", "&first@example.net", f"sales@{DOMAIN}")
    secret = outside(site, "alias-secret") / "shadow"
    secret.write_text("root:$6$salt$roothash:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    alias = domain_dir(site) / ".qmail-sales"
    result = owner_swaps(site, (SWAP_WHEN_LOCKED, domain_dir(site) / ".valias.lock", alias, secret),
                         ["-P", str(alias), "-e", "inject=all:delay_exit=1500000:when=1"],
                         "valias", "-i", "&second@example.net", f"sales@{DOMAIN}")
    assert alias.is_symlink() or b"roothash" not in alias.read_bytes(), result
    assert "Traceback" not in result.stderr, result


def test_vdeldomain_refuses_a_linked_domain_directory_before_any_change(site: Install) -> None:
    """A domain directory that is a symbolic link (moved elsewhere by hand) is refused by
    vdeldomain before users/assign or the control files change; the tree stays."""
    moved = outside(site, "moved-domain") / DOMAIN
    domain_dir(site).rename(moved)
    domain_dir(site).symlink_to(moved)
    before, assign = tree(moved), (site.qmaildir / "users" / "assign").read_text()
    result = site.run("vdeldomain", DOMAIN)
    assert result.returncode == 149, result
    assert "is a symbolic link or not a directory" in result.stdout, result
    assert tree(moved) == before
    assert (site.qmaildir / "users" / "assign").read_text() == assign


def test_vadddomain_refuses_an_owner_that_cannot_enter_the_domains_root(
        root_vhome: Install) -> None:
    """~vpopmail/domains is 0750 vpopmail:vchkpw. An owner outside that group could neither
    receive mail (vdelivermail runs as it) nor get users (made with its ids): vadddomain says
    so and makes nothing."""
    assign = root_vhome.qmaildir / "users" / "assign"
    before = assign.read_text() if assign.exists() else None
    result = root_vhome.run("vadddomain", "-i", str(OWNER_UID), "-g", str(OWNER_UID), DOMAIN,
                            "Pm-pass-1")
    assert result.returncode == 242, result  # VA -14
    assert f"the domain owner {OWNER_UID}:{OWNER_UID} cannot enter it" in result.stdout, result
    assert not domain_dir(root_vhome).exists()
    assert (assign.read_text() if assign.exists() else None) == before


# -- root reads the owner's files without following a link or waiting on a FIFO ---------------

CATCHALL_OF_ALICE = "| /var/vpopmail/bin/vdelivermail '' {home}/alice\n"


def root_only(inst: Install, name: str, data: str) -> Path:
    """A root-only (0600) file beside the install."""
    secret = outside(inst, name) / "secret"
    secret.write_text(data)
    secret.chmod(0o600)
    return secret


def test_a_fifo_planted_as_qmail_default_does_not_hang_root_vdeluser(site: Install) -> None:
    """vdeluser reads .qmail-default (is the user the catch-all?): a FIFO there is no
    catch-all, at once."""
    owner_sh(f"cd {domain_dir(site)}; rm -f .qmail-default; mkfifo .qmail-default")
    result = site.run("vdeluser", f"alice@{DOMAIN}", timeout=30)
    assert result.returncode == 0, result
    assert not (domain_dir(site) / "alice").exists()


def test_a_qmail_default_linked_to_a_root_file_is_not_read_by_root(site: Install) -> None:
    """A link to a root-only file naming alice as catch-all: root's vdeluser does not read it
    (alice is deleted), and vdominfo -c shows no action from it."""
    secret = root_only(site, "catchall", CATCHALL_OF_ALICE.format(home=domain_dir(site)))
    owner_sh(f"cd {domain_dir(site)}; rm -f .qmail-default; ln -s {secret} .qmail-default")
    shown = site.run("vdominfo", "-c", DOMAIN)
    assert "alice" not in shown.stdout and "Traceback" not in shown.stderr, shown
    result = site.run("vdeluser", f"alice@{DOMAIN}")
    assert result.returncode == 0, result
    assert not (domain_dir(site) / "alice").exists()


def test_a_fifo_planted_as_vpasswd_cdb_does_not_hang_root(site: Install) -> None:
    """vuserinfo looks the user up in vpasswd.cdb: a FIFO there is damage, reported at once."""
    owner_sh(f"cd {domain_dir(site)}; rm -f vpasswd.cdb; mkfifo vpasswd.cdb")
    result = site.run("vuserinfo", f"alice@{DOMAIN}", timeout=30)
    assert result.returncode != 0, result
    assert "not a regular file" in result.stdout + result.stderr, result
    assert "Traceback" not in result.stderr, result


def test_a_vpasswd_cdb_linked_to_a_root_file_is_not_read_by_root(site: Install) -> None:
    """A link to a root-only cdb holding a made-up alice: root's vuserinfo does not read it."""
    from vpopmail.cdbwrite import build

    secret = outside(site, "cdb") / "secret"
    line = f"alice:$1$x$rootsecret:1:0:Root Alice:{domain_dir(site)}/alice:NOQUOTA"
    secret.write_bytes(build([(b"alice", line.split(":", 1)[1].encode())]))
    secret.chmod(0o600)
    owner_sh(f"cd {domain_dir(site)}; rm -f vpasswd.cdb; ln -s {secret} vpasswd.cdb")
    result = site.run("vuserinfo", f"alice@{DOMAIN}")
    assert "Root Alice" not in result.stdout and "rootsecret" not in result.stdout, result
    assert "symbolic links" in result.stdout + result.stderr, result


def test_valias_show_waits_on_no_fifo(site: Install) -> None:
    """valias -s as root: a FIFO named as an alias is no alias, at once."""
    owner_sh(f"cd {domain_dir(site)}; mkfifo .qmail-pipe")
    result = site.run("valias", "-s", f"pipe@{DOMAIN}", timeout=30)
    assert result.returncode == 255 and "No aliases pipe@" in result.stdout, result
    assert "Traceback" not in result.stderr, result


def test_valias_show_reads_no_root_file_through_a_link(site: Install) -> None:
    """valias -s as root: an alias linked to a root-only file is not read (qmail-local, which
    runs as the owner, could not read it either)."""
    secret = root_only(site, "alias", "&root-secret@example.org\n")
    owner_sh(f"cd {domain_dir(site)}; ln -s {secret} .qmail-leak")
    for args in (["-s", f"leak@{DOMAIN}"], ["-s", DOMAIN]):
        result = site.run("valias", *args, timeout=30)
        assert "root-secret" not in result.stdout, result
        assert "Traceback" not in result.stderr, result


# the shared domains root's hashed buckets ------------------------------------------------------

def bucket_next(inst: Install) -> Path:
    """The shared domains root says 99 domains were added: the next ones go to bucket 0."""
    from vpopmail.dircontrol import DirControl

    control = DirControl()
    control.cur_users = 99
    path = inst.domains / ".dir-control"
    path.write_text(control.render())
    os.chown(path, 89, 89)
    return inst.domains / "0"


def deliver_as(inst: Install, uid: int, domain: str) -> subprocess.CompletedProcess[bytes]:
    """postmaster@``domain``'s delivery as qmail-local runs it for an owner ``uid`` (gid 89)."""
    from delivery_site import MESSAGE, qmail_local_env

    directory = inst.domains / "0" / domain
    with tempfile.TemporaryFile() as fh:
        fh.write(MESSAGE)
        fh.seek(0)
        return subprocess.run(["setpriv", f"--reuid={uid}", "--regid=89", "--clear-groups",
                               str(inst.bin / "vdelivermail"), "", "bounce-no-mailbox"],
                              stdin=fh, capture_output=True, cwd="/", timeout=60,
                              env=qmail_local_env("postmaster", domain, str(directory)))


def test_a_domain_owner_gets_no_hold_on_the_bucket_it_shares(root_vhome: Install) -> None:
    """An owned domain added to a bucket of the shared domains root that holds another domain:
    the bucket stays vpopmail's, 0750, and both domains take mail (before: vadddomain gave
    the bucket to the owner, 0700, so the other domain's deliveries answered 111 and the owner
    could rename its directory)."""
    bucket = bucket_next(root_vhome)
    root_vhome.ok("vadddomain", "plain.test", "Pm-pass-1")
    root_vhome.ok("vadddomain", "-i", str(OWNER_UID), "-g", str(OWNER_GID), DOMAIN, "Pm-pass-1")
    assert (bucket / DOMAIN).stat().st_uid == OWNER_UID
    st = bucket.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (89, 89, 0o750)
    assert deliver_as(root_vhome, 89, "plain.test").returncode == 0
    assert deliver_as(root_vhome, OWNER_UID, DOMAIN).returncode == 0
    moved = as_owner("mv", str(bucket / "plain.test"), str(bucket / "x"), check=False)
    assert moved.returncode != 0 and (bucket / "plain.test").is_dir()


def test_a_bucket_an_earlier_version_made_0700_lets_a_new_owned_domain_in(
        root_vhome: Install) -> None:
    """Bucket 0 made 0700 by an earlier version, holding a domain of vpopmail's: an owned
    domain added to it makes it 0750, so its owner reaches its directory (before the mode
    was repaired too, only the owner: the owned domain's deliveries answered 111)."""
    bucket = bucket_next(root_vhome)
    root_vhome.ok("vadddomain", "plain.test", "Pm-pass-1")
    bucket.chmod(0o700)
    root_vhome.ok("vadddomain", "-i", str(OWNER_UID), "-g", str(OWNER_GID), DOMAIN, "Pm-pass-1")
    st = bucket.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (89, 89, 0o750)
    assert deliver_as(root_vhome, OWNER_UID, DOMAIN).returncode == 0
    assert deliver_as(root_vhome, 89, "plain.test").returncode == 0


def test_a_bucket_an_earlier_version_gave_a_domain_owner_is_taken_back(
        root_vhome: Install) -> None:
    """Bucket 0 left to the owner of a domain in it (0700: an earlier version's, as C's
    vadddomain -i): the next domain added there makes it vpopmail's again, 0750, and the
    owned domain still takes mail (before: chowned, but 0700, so its owner was shut out)."""
    bucket = bucket_next(root_vhome)
    root_vhome.ok("vadddomain", "-i", str(OWNER_UID), "-g", str(OWNER_GID), DOMAIN, "Pm-pass-1")
    os.chown(bucket, OWNER_UID, OWNER_GID)
    bucket.chmod(0o700)
    root_vhome.ok("vadddomain", "plain.test", "Pm-pass-1")
    st = bucket.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (89, 89, 0o750)
    assert deliver_as(root_vhome, OWNER_UID, DOMAIN).returncode == 0
    assert deliver_as(root_vhome, 89, "plain.test").returncode == 0


# a vdeluser killed at any point of its tree removal ---------------------------------------------

OTHER_DIRS = ("vacation", ".spamassassin", "autorespond", "filters", "sieve", "Trash",
              "webmail", "backup")


@pytest.mark.skipif(STRACE is None, reason="needs strace (apt-get install strace)")
def test_vdeluser_killed_anywhere_in_the_removal_leaves_what_vadduser_replaces(
        root_vhome: Install) -> None:
    """vdeluser SIGKILLed at its n-th unlinkat (the tree's files and directories, one by one;
    strace injects the kill): the next vadduser of the name replaces what is left, and the new
    user inherits none of the old mail (before: a tree cut after its Maildir went, leaving
    vacation/ or another directory, was refused as no user's leftover, and vdeluser said the
    user did not exist)."""
    root_vhome.ok("vadddomain", "kill.test", "Pm-pass-1")
    address = "carol@kill.test"
    for n in range(1, 30):
        root_vhome.ok("vadduser", address, "Carol-1")
        home = Path(root_vhome.vuser(address).dir)
        (home / "Maildir" / "new" / "1.M1P1.host").write_text("old mail\n")
        # directories beside Maildir (a removal in listing order takes some after it: the
        # order is the file system's, ext4's by name hash)
        for name in OTHER_DIRS:
            (home / name).mkdir()
            (home / name / "data").write_text("x\n")
        (home / "lastauth").write_text("192.0.2.1")
        subprocess.run([str(STRACE), "-f", "-qq", "-o", "/dev/null", "-e", "trace=unlinkat",
                        "-e", f"inject=unlinkat:signal=KILL:when={n}",
                        str(root_vhome.bin / "vdeluser"), address],
                       capture_output=True, env=CLEAN_ENV, cwd="/", timeout=60)
        again = root_vhome.run("vadduser", address, "Carol-2")
        assert again.returncode == 0, (n, sorted(p.name for p in home.rglob("*")), again)
        assert not list((home / "Maildir" / "new").iterdir()), n
        root_vhome.ok("vdeluser", address)


@pytest.mark.skipif(STRACE is None, reason="needs strace (apt-get install strace)")
@pytest.mark.parametrize("hashed", [False, True])
def test_vdeluser_killed_in_the_removal_is_finished_by_the_next_vdeluser(
        root_vhome: Install, hashed: bool) -> None:
    """vdeluser SIGKILLed at its n-th unlinkat, after vpasswd and vpasswd.cdb had dropped the
    user: the same vdeluser again removes what is left (the old mail, in a bucket too) and
    gives back the slot in .dir-control (before: "User does not exist", exit 246, and the
    deleted user's mail stayed on disk, counted as a user, until a vadduser of the name)."""
    root_vhome.ok("vadddomain", "kill.test", "Pm-pass-1")
    domain = root_vhome.domains / "kill.test"
    if hashed:  # the next user goes into bucket 0
        (domain / ".dir-control").write_text("99\n0\n3\n0 0 0\n61 61 61\n0 2 2\n0 0 0\n\n")
    address = "carol@kill.test"
    for n in (1, 3, 5):
        root_vhome.ok("vadduser", address, "Carol-1")
        home = Path(root_vhome.vuser(address).dir)
        assert (home.parent.name == "0") is hashed
        count = (domain / ".dir-control").read_text().split("\n")[0]
        (home / "Maildir" / "new" / "1.M1P1.host").write_text("old mail\n")
        subprocess.run([str(STRACE), "-f", "-qq", "-o", "/dev/null", "-e", "trace=unlinkat",
                        "-e", f"inject=unlinkat:signal=KILL:when={n}",
                        str(root_vhome.bin / "vdeluser"), address],
                       capture_output=True, env=CLEAN_ENV, cwd="/", timeout=60)
        assert home.exists() and "carol" not in root_vhome.vusers("kill.test"), n
        again = root_vhome.run("vdeluser", address)
        assert (again.returncode, again.stdout) == (0, ""), (n, again)
        assert not home.exists(), n
        assert (domain / ".dir-control").read_text().split("\n")[0] == str(int(count) - 1), n
        assert root_vhome.run("vdeluser", address).returncode == 246, n
