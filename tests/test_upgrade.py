"""packaging/install run again over a working installation, as an operator upgrades one: two
at once, over a configuration this version does not load, for another owner than the kept
configuration's, on a full disk, killed as it swaps the library, after paths.server_socket
changed under a running server, with a server that would not reload; and the hot paths'
wrappers over a library of another version."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from install_site import INSTALL, VENV, Install, as_user_argv, own_account
from server_site import running_server, wait_for


def run_install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(INSTALL), *args], capture_output=True, text=True,
                          timeout=300)


def sandbox_args(prefix: Path, qmaildir: Path) -> tuple[str, ...]:
    user, group = own_account()
    return ("--prefix", str(prefix), "--qmaildir", str(qmaildir), "--user", user, "--group",
            group, "--venv", str(VENV))


def sandbox_install(tmp_path: Path) -> tuple[Install, tuple[str, ...]]:
    """A sandbox installation in ``tmp_path`` (yours) and the install's arguments for it."""
    prefix = tmp_path / "vpopmail"
    args = sandbox_args(prefix, tmp_path / "qmail")
    assert run_install(*args).returncode == 0
    return Install(prefix, tmp_path / "qmail", *own_account()), args


def alice_install(tmp_path: Path) -> tuple[Install, tuple[str, ...]]:
    """:func:`sandbox_install` with example.com and its user alice (password pw)."""
    inst, args = sandbox_install(tmp_path)
    inst.ok("vadddomain", "example.com", "secret")
    inst.ok("vadduser", "alice@example.com", "pw")
    return inst, args


def library(prefix: Path) -> list[str]:
    """What lib/ holds but the venv and the installs' lock (an install leaves pyvpopmail
    alone)."""
    return sorted(name for name in os.listdir(prefix / "lib")
                  if name not in ("venv", "install.lock"))


def test_two_installs_at_once_both_finish_and_leave_a_whole_library(tmp_path: Path) -> None:
    """Two packaging/install runs into one PREFIX at the same moment (a configuration manager
    and an operator): each finishes and the library is whole. Before: both staged the
    library in lib/pyvpopmail.new, one renamed away or removed what the other was copying,
    and one died with a traceback while the other said "installed": lib/ was left with
    pyvpopmail.old alone, or a half-copied tree (every Python program then failed at its
    first import, vchkpw with exit 1, a wrong password)."""
    args = sandbox_args(tmp_path / "vpopmail", tmp_path / "qmail")
    assert run_install(*args).returncode == 0
    for _ in range(3):
        both = [subprocess.Popen([sys.executable, str(INSTALL), *args], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for proc in both:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0 and not err, (out, err)
        assert library(tmp_path / "vpopmail") == ["pyvpopmail"]
        inst = Install(tmp_path / "vpopmail", tmp_path / "qmail", *own_account())
        assert inst.run("vuserinfo", "--version").returncode == 0


def test_a_kept_configuration_this_version_refuses_stops_the_install_first(
        tmp_path: Path) -> None:
    """A vpopmail.toml the new version does not load (here server.workers over its bound; an
    older version accepted it): the install says why and changes nothing. Before: it
    swapped in the new library, then died with a traceback at the configuration, leaving new
    code under the old programs that could not load their configuration (every Python
    program answered 111, the server refused to reload)."""
    prefix = tmp_path / "vpopmail"
    args = sandbox_args(prefix, tmp_path / "qmail")
    assert run_install(*args).returncode == 0
    config = prefix / "etc" / "vpopmail.toml"
    config.write_text(config.read_text().replace("workers = 32", "workers = 5000"))
    before = (prefix / "lib" / "pyvpopmail").stat().st_ino
    refused = run_install(*args)
    assert refused.returncode == 1, refused
    assert "Traceback" not in refused.stderr, refused.stderr
    assert "server.workers" in refused.stderr and "nothing was changed" in refused.stderr, \
        refused.stderr
    assert (prefix / "lib" / "pyvpopmail").stat().st_ino == before


def test_an_install_for_another_owner_than_the_kept_configuration_is_refused(
        root_vhome: Install) -> None:
    """Installing again with another --user/--group than the installation's (a forgotten
    --user on an upgrade, or a wrong one) is refused before anything changes. Before: domains/
    was given to that user while the kept configuration still named the former one, and
    every delivery and login answered 111 from then on (Permission denied)."""
    inst = root_vhome
    refused = run_install("--prefix", str(inst.prefix), "--qmaildir", str(inst.qmaildir),
                          "--user", "nobody", "--group", "nogroup", "--venv", str(VENV))
    assert refused.returncode == 1, refused
    assert "owner.user = 'vpopmail'" in refused.stderr and "nothing was changed" in \
        refused.stderr, refused.stderr
    st = inst.domains.stat()
    assert (st.st_uid, st.st_gid) == (inst.uid, inst.gid)


def test_an_upgrade_without_user_keeps_the_installations_owner(tmp_path: Path) -> None:
    """The same packaging/install command again without --user/--group (README's upgrade)
    over an installation of another owner than vpopmail:vchkpw: the kept configuration's
    owner stays. Before: as root the default vpopmail:vchkpw was taken, domains/ given to it
    while the configuration named the former owner."""
    prefix, qmaildir = tmp_path / "vpopmail", tmp_path / "qmail"
    assert run_install(*sandbox_args(prefix, qmaildir)).returncode == 0
    again = run_install("--prefix", str(prefix), "--qmaildir", str(qmaildir), "--venv",
                        str(VENV))
    assert again.returncode == 0, again
    inst = Install(prefix, qmaildir, *own_account())
    st = inst.domains.stat()
    assert (st.st_uid, st.st_gid) == (inst.uid, inst.gid)


def test_a_failed_library_copy_leaves_no_staging_and_says_why(tmp_path: Path) -> None:
    """A full disk while the library is copied: one line naming the fault, the installed
    library as it was, and no half copy left. Before: a traceback of some hundred lines, and
    lib/pyvpopmail.new kept what space was left (deliveries onto that file system answered
    111 until someone found and removed it)."""
    fs = tmp_path / "fs"
    fs.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(fs)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        prefix = fs / "vpopmail"
        args = sandbox_args(prefix, tmp_path / "qmail")
        assert run_install(*args).returncode == 0
        before = (prefix / "lib" / "pyvpopmail").stat().st_ino
        st = os.statvfs(fs)
        with open(fs / "filler", "wb") as fh:
            fh.truncate(0)
            fh.write(b"\0" * (st.f_bavail * st.f_frsize - (256 << 10)))
        failed = run_install(*args)
        assert failed.returncode == 1, failed
        assert "Traceback" not in failed.stderr and len(failed.stderr.splitlines()) == 1, \
            failed.stderr
        assert "No space left on device" in failed.stderr, failed.stderr
        assert library(prefix) == ["pyvpopmail"]
        assert (prefix / "lib" / "pyvpopmail").stat().st_ino == before
        (fs / "filler").unlink()
        assert run_install(*args).returncode == 0
    finally:
        subprocess.run(["umount", str(fs)], check=True)


def test_install_after_a_new_server_socket_reloads_the_server_at_the_old_one(
        tmp_path: Path) -> None:
    """paths.server_socket changed, then the install run again as README says: the server
    listening at the socket the former front ends were built for is told to reload, and
    listens at the new one. Before: the install asked only at the new path, found nothing
    and said nothing, and the server ran on at the old one, unused (every delivery and login
    ran the Python programs) with the code it started with."""
    inst, args = sandbox_install(tmp_path)
    prefix = inst.prefix
    with running_server(inst) as server:
        inst.set_config("paths", "server_socket", "run/moved.sock")
        again = run_install(*args)
        assert again.returncode == 0, again
        assert f"reloaded vpopmail-server (pid {server.proc.pid})" in again.stdout, again.stdout
        wait_for(server, listening=2)
        assert f"listening on {prefix / 'run' / 'moved.sock'}" in server.lines()[-1]
        assert "is up" in inst.ok("vpopmail-server", "--status")


def test_install_says_why_the_running_server_would_not_reload(tmp_path: Path) -> None:
    """An install whose server would refuse to reload (here server.dovecot_callers names no
    user: the install's own configuration check does not look up users) says why and does
    not signal it. Before: "reloaded vpopmail-server (pid N) with SIGHUP: it re-executes with
    what was installed", while the server logged "not reloading" and ran on with the code it
    started with."""
    inst, args = sandbox_install(tmp_path)
    with running_server(inst) as server:
        inst.set_config("server", "dovecot_callers", "dovcot")
        again = run_install(*args)
        assert again.returncode == 0, again
        assert f"vpopmail-server (pid {server.proc.pid}) is not reloaded: configuration " \
               f"error: server.dovecot_callers: there is no user 'dovcot'" in again.stdout, \
            again.stdout
        assert "reloaded vpopmail-server" not in again.stdout, again.stdout
        assert not any("reloading" in line for line in server.lines()), server.lines()


def test_an_install_killed_as_it_swaps_the_library_leaves_one_in_place(tmp_path: Path) -> None:
    """The install killed at the moment it puts the new library in place (strace kills it as
    it enters that rename): lib/pyvpopmail is still a whole library, so the Python programs
    run (a login through the front end with the server down succeeds). Before: the
    former library had been renamed away first, so the name was missing: every Python
    program died at its first import (vchkpw exit 1, a wrong password), and a server started
    then died the same way."""
    if not shutil.which("strace"):
        pytest.skip("needs strace")
    inst, args = alice_install(tmp_path)
    prefix = inst.prefix
    staging = prefix / "lib" / "pyvpopmail.new"
    killed = subprocess.run(["strace", "-o", str(tmp_path / "trace"), "-P", str(staging),
                             "-e", "trace=rename,renameat,renameat2", "-e",
                             "inject=rename,renameat,renameat2:signal=SIGKILL",
                             sys.executable, str(INSTALL), *args], capture_output=True, text=True,
                            timeout=300)
    if "PTRACE" in killed.stderr:
        pytest.skip(f"strace cannot trace here: {killed.stderr.strip()}")
    assert "killed by SIGKILL" in (tmp_path / "trace").read_text(), killed
    assert inst.run("vuserinfo", "--version").returncode == 0
    credentials = tmp_path / "fd3"
    credentials.write_bytes(b"alice@example.com\0pw\0\0")
    login = subprocess.run(["/bin/sh", "-c", 'exec "$@" 3<"$0"', str(credentials),
                            str(prefix / "bin" / "vchkpw"), "/bin/true"], capture_output=True,
                           env={"PATH": "/usr/bin:/bin"}, cwd="/")
    assert login.returncode == 0, login
    assert run_install(*args).returncode == 0
    assert library(prefix) == ["pyvpopmail"]


@pytest.mark.parametrize("program", ["vchkpw", "vdelivermail"])
def test_a_library_the_wrapper_does_not_fit_answers_111(tmp_path: Path, program: str) -> None:
    """A hot path's wrapper over a library of another version (met while an install or a
    downgrade has swapped one and not yet the other; here the library lacks a function the
    wrapper calls) answers 111, try again later, with the traceback on stderr. Before:
    Python's exit 1, which qmail-popup takes for a wrong password."""
    inst, args = sandbox_install(tmp_path)
    prefix = inst.prefix
    inst.ok("vadddomain", "example.com", "secret")
    inst.ok("vadduser", "alice@example.com", "pw")
    package = prefix / "lib" / "pyvpopmail" / "vpopmail" / "__init__.py"
    package.write_text(package.read_text() + "\ndel use_bytecode\n")
    credentials = tmp_path / "input"
    credentials.write_bytes(b"alice@example.com\0pw\0\0" if program == "vchkpw"
                            else b"Subject: t\n\nbody\n")
    run = subprocess.run(["/bin/sh", "-c", 'exec "$@" 3<"$0" <"$0"', str(credentials),
                          str(prefix / "bin" / program), *(["/bin/true"] if program == "vchkpw"
                                                           else ["", "bounce-no-mailbox"])],
                         capture_output=True, cwd="/",
                         env={"PATH": "/usr/bin:/bin", "EXT": "alice", "HOST": "example.com",
                              "SENDER": "s@remote.test"})
    assert run.returncode == 111, run
    assert b"use_bytecode" in run.stderr, run



@pytest.mark.parametrize("planted", ["file", "fifo"])
def test_an_install_lock_planted_before_the_takeover_is_made_root_s_alone(
        planted: str) -> None:
    """A lib/install.lock that another user made before root's first install took the
    directory over (C vpopmail's ~vpopmail/lib is the vpopmail user's): the install finishes,
    and the lock is root's, 0600, a regular file no one else can open, so no one else can
    hold it (an install would wait for ever, and the server refuse every reload). Before: a
    readable file kept its mode (any user could flock it), and a FIFO hung the install at
    its open for ever."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv")
    nobody = "nobody"
    base = Path("/tmp") / f"pyvpopmail-planted-lock-{os.getpid()}"  # a path nobody reaches
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o755)
    try:
        prefix = base / "vpopmail"
        (prefix / "lib").mkdir(parents=True)
        for directory in (prefix, prefix / "lib"):
            shutil.chown(directory, nobody)
        lock = prefix / "lib" / "install.lock"
        make = ["mkfifo", str(lock)] if planted == "fifo" else ["touch", str(lock)]
        subprocess.run([*as_user_argv(nobody), *make], check=True)
        assert lock.stat().st_mode & 0o004
        done = subprocess.run([sys.executable, str(INSTALL),
                               *sandbox_args(prefix, base / "qmail")], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done
        st = lock.lstat()
        assert (st.st_uid, oct(st.st_mode)) == (0, oct(0o100600))
        held = subprocess.run([*as_user_argv(nobody), "flock", "-n", "-x", str(lock), "true"],
                              capture_output=True, text=True)
        assert held.returncode != 0 and "Permission denied" in held.stderr, held
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_an_install_held_by_a_reloading_server_says_so(tmp_path: Path) -> None:
    """While a vpopmail-server reloading from the installation holds lib/install.lock shared
    (from its check through its exec), an install waits for it and says what it waits for,
    then finishes. Before: "another install into PREFIX is running", with none running."""
    import fcntl

    inst, args = sandbox_install(tmp_path)
    lock = os.open(inst.prefix / "lib" / "install.lock", os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)  # what vpopmail.server.parent.library_lock takes
        proc = subprocess.Popen([sys.executable, str(INSTALL), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()
    finally:
        os.close(lock)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (first, out, err)
    assert "or a vpopmail-server reloading" in first and "waiting for it" in first, first


def test_an_upgrade_waits_for_the_install_under_way_before_it_changes_anything(
        tmp_path: Path) -> None:
    """An install into an installation of root's (or, in a sandbox, yours) waits for one
    under way before it sets aside or takes over anything: while another holds
    lib/install.lock, bin/ is as it was (a program of C's there is not yet set aside). Before:
    the lock was taken after take_over and set_aside, so two installs at once both set aside
    C's programs, and one died with a traceback (FileExistsError) at a link the other had
    just made."""
    import fcntl

    inst, args = sandbox_install(tmp_path)
    theirs = inst.prefix / "bin" / "vpasswd"
    theirs.unlink()
    theirs.write_text("#!/bin/sh\necho C vpopmail\n")
    theirs.chmod(0o755)
    lock = os.open(inst.prefix / "lib" / "install.lock", os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another install's
        proc = subprocess.Popen([sys.executable, str(INSTALL), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "waiting for it" in first, first
        assert not (inst.prefix / "bin" / "c-vpopmail-backup").exists()
    finally:
        os.close(lock)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (first, out, err)
    assert (inst.prefix / "bin" / "c-vpopmail-backup" / "vpasswd").read_text() == \
        "#!/bin/sh\necho C vpopmail\n"


def leftovers(prefix: Path) -> list[str]:
    """What an install staged or kept aside and left behind (NAME.pyvpopmail-new and -old,
    lib/pyvpopmail.new and .old)."""
    return sorted(str(path.relative_to(prefix)) for top in ("bin", "libexec", "man", "lib")
                  for path in (prefix / top).rglob("*.*")
                  if path.suffix in (".new", ".old", ".pyvpopmail-new", ".pyvpopmail-old")
                  and "venv" not in path.parts)


def marked(inst: Install) -> dict[str, tuple[int, bytes]]:
    """bin/vadduser and libexec/vchkpw given a line of their own (a former version's), and
    their inodes and bytes: what an install that stops must leave."""
    found = {}
    for path in (inst.prefix / "bin" / "vadduser", inst.program("vchkpw")):
        with open(path, "a") as fh:
            fh.write("# the former version's\n")
        found[str(path)] = (path.stat().st_ino, path.read_bytes())
    return found


def unchanged(files: dict[str, tuple[int, bytes]]) -> bool:
    return all((Path(path).stat().st_ino, Path(path).read_bytes()) == kept
               for path, kept in files.items())


def marked_install(tmp_path: Path
                   ) -> tuple[tuple[str, ...], Path, tuple[int, dict[str, tuple[int, bytes]]]]:
    """A sandbox installation (:func:`sandbox_install`) with two programs :func:`marked`: the
    install's arguments, PREFIX, and what an install that stops must leave (the library's
    inode, the marked programs)."""
    inst, args = sandbox_install(tmp_path)
    return args, inst.prefix, ((inst.prefix / "lib" / "pyvpopmail").stat().st_ino, marked(inst))


def left_as_it_was(failed: subprocess.CompletedProcess[str], said: str, prefix: Path,
                   former: tuple[int, dict[str, tuple[int, bytes]]]) -> None:
    """An install that stopped: exit 1 and one line, ``said`` then "nothing was installed";
    the library and the programs :func:`marked_install` recorded in place, nothing staged
    left."""
    assert failed.returncode == 1, failed
    assert "Traceback" not in failed.stderr and len(failed.stderr.splitlines()) == 1, \
        failed.stderr
    assert f"{said}; nothing was installed" in failed.stderr, failed.stderr
    assert (prefix / "lib" / "pyvpopmail").stat().st_ino == former[0]
    assert unchanged(former[1])
    assert leftovers(prefix) == []


def strace_install(args: tuple[str, ...], paths: tuple[Path, ...], calls: str, inject: str,
                   trace: Path, *more: str) -> subprocess.CompletedProcess[str]:
    """packaging/install under strace, ``inject`` done to the ``calls`` on ``paths`` (and
    each of ``more``, "CALLS:INJECT", too)."""
    filters = [arg for path in paths for arg in ("-P", str(path))]
    traced = ",".join([calls, *(each.partition(":")[0] for each in more)])
    injects = [arg for each in (f"{calls}:{inject}", *more) for arg in ("-e", f"inject={each}")]
    done = subprocess.run(["strace", "-o", str(trace), *filters, "-e", f"trace={traced}",
                           *injects, sys.executable, str(INSTALL), *args],
                          capture_output=True, text=True, timeout=300)
    if "PTRACE" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()}")
    return done


@pytest.mark.parametrize("written", [("bin/vadduser.pyvpopmail-new",),
                                     ("man/man8/vadduser.8", "man/man8/vadduser.8.pyvpopmail-new")],
                         ids=["program", "man-page"])
def test_a_full_disk_after_the_library_leaves_the_former_installation(
        tmp_path: Path, written: tuple[str, ...]) -> None:
    """The disk fills up after the library is copied, as a program or a man page is written
    (strace fails that open with ENOSPC): one line names the file, and the former library and
    programs are in place, with nothing staged left. Before: a traceback, with the new library
    swapped in under the former programs."""
    if not shutil.which("strace"):
        pytest.skip("needs strace")
    args, prefix, former = marked_install(tmp_path)
    failed = strace_install(args, tuple(prefix / name for name in written), "openat",
                            "error=ENOSPC", tmp_path / "trace")
    left_as_it_was(failed, f"{prefix / written[-1]}: No space left on device", prefix, former)
    assert library(prefix) == ["pyvpopmail"]
    assert run_install(*args).returncode == 0


def test_a_library_that_cannot_be_swapped_in_leaves_the_former_programs(tmp_path: Path) -> None:
    """The library's swap fails (strace fails the exchange with EIO) after the new programs
    were put in place: they are given back (the same files), and one line says so. Before: a
    traceback."""
    if not shutil.which("strace"):
        pytest.skip("needs strace")
    args, prefix, former = marked_install(tmp_path)
    failed = strace_install(args, (prefix / "lib" / "pyvpopmail.new",), "renameat2",
                            "error=EIO", tmp_path / "trace")
    assert "(INJECTED)" in (tmp_path / "trace").read_text()
    left_as_it_was(failed, "Input/output error", prefix, former)
    assert library(prefix) == ["pyvpopmail"]


@pytest.mark.parametrize("how", ["immutable", "read-only"])
def test_an_immutable_or_read_only_path_stops_the_install_in_one_line(tmp_path: Path,
                                                                      how: str) -> None:
    """A program of the installation made immutable (chattr +i), or lib/ a read-only bind
    mount (in a mount namespace of the test's own): one line names it, and the installation
    is as it was. Before: a traceback."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    args, prefix, former = marked_install(tmp_path)
    vchkpw = prefix / "bin" / "vchkpw"
    if how == "immutable":
        made = subprocess.run(["chattr", "+i", str(vchkpw)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"chattr +i: {made.stderr.strip()}")
        try:
            failed = run_install(*args)
        finally:
            subprocess.run(["chattr", "-i", str(vchkpw)], check=True)
        named = f"{vchkpw}: Operation not permitted"
    else:
        lib = prefix / "lib"
        failed = subprocess.run(
            ["unshare", "-m", "sh", "-c", 'mount --make-rprivate / && mount --bind "$1" "$1" '
             '&& mount -o remount,bind,ro "$1" && shift && exec "$@"', "sh", str(lib),
             sys.executable, str(INSTALL), *args], capture_output=True, text=True, timeout=300)
        if "mount" in failed.stderr and "install:" not in failed.stderr:
            pytest.skip(f"cannot bind-mount here: {failed.stderr.strip()}")
        named = f"{lib}: Read-only file system"
    left_as_it_was(failed, named, prefix, former)


def test_the_new_wrappers_are_in_place_before_the_library_is_swapped(tmp_path: Path) -> None:
    """An upgrade from a version whose hot-path wrappers answer 1 on an import failure (here:
    the guard taken out of them): killed as it swaps the library, the Python vchkpw and
    vdelivermail are already the new ones (they answer 111 for a library they do not fit),
    and they run the library still in place (a login succeeds). Before: the library was
    swapped first, so the former wrappers met the new library until they were rewritten
    (vchkpw could answer 1, a wrong password)."""
    if not shutil.which("strace"):
        pytest.skip("needs strace")
    inst, args = alice_install(tmp_path)
    prefix = inst.prefix
    guard = "sys.excepthook = defer\n"
    hot = [inst.program(name) for name in ("vchkpw", "vdelivermail")]
    for path in hot:
        text = path.read_text()
        assert guard in text
        path.write_text(text[:text.index("def defer")] + text[text.index(guard) + len(guard):])
    strace_install(args, (prefix / "lib" / "pyvpopmail.new",), "renameat2", "signal=SIGKILL",
                   tmp_path / "trace")
    assert "killed by SIGKILL" in (tmp_path / "trace").read_text()
    assert all(guard in path.read_text() for path in hot)
    credentials = tmp_path / "fd3"
    credentials.write_bytes(b"alice@example.com\0pw\0\0")
    login = subprocess.run(["/bin/sh", "-c", 'exec "$@" 3<"$0"', str(credentials),
                            str(inst.program("vchkpw")), "/bin/true"], capture_output=True,
                           env={"PATH": "/usr/bin:/bin"}, cwd="/")
    assert login.returncode == 0, login
    assert run_install(*args).returncode == 0
    assert leftovers(prefix) == [] and library(prefix) == ["pyvpopmail"]


def test_a_program_that_cannot_be_renamed_in_leaves_no_former_file_aside(tmp_path: Path
                                                                       ) -> None:
    """A rename of a staged program fails midway (strace fails bin/vadduser.pyvpopmail-new's with EIO):
    those put in place are given back, and the former files the others had kept aside as
    NAME.old are removed too. Before: every one not yet renamed stayed as NAME.old."""
    if not shutil.which("strace"):
        pytest.skip("needs strace")
    args, prefix, former = marked_install(tmp_path)
    failed = strace_install(args, (prefix / "bin" / "vadduser.pyvpopmail-new",), "rename", "error=EIO",
                            tmp_path / "trace")
    left_as_it_was(failed, f"{prefix / 'bin' / 'vadduser.pyvpopmail-new'}: Input/output error", prefix,
                   former)


def test_a_library_swap_without_exchange_that_fails_puts_the_former_back(tmp_path: Path
                                                                        ) -> None:
    """Where the file system has no exchange (strace fails renameat2 with EINVAL), the
    library is swapped by two renames; the second fails too: the former library goes back
    in place, with the former programs. Before: it stayed as lib/pyvpopmail.old, so no program
    ran, and the install said nothing was installed."""
    if not shutil.which("strace"):
        pytest.skip("needs strace")
    args, prefix, former = marked_install(tmp_path)
    staged = prefix / "lib" / "pyvpopmail.new"
    failed = strace_install(args, (staged,), "rename,renameat2", "error=EINVAL",
                            tmp_path / "trace")
    left_as_it_was(failed, f"{staged}: Invalid argument", prefix, former)
    assert library(prefix) == ["pyvpopmail"]


def test_an_install_killed_between_the_library_renames_is_mended_by_the_next(tmp_path: Path
                                                                           ) -> None:
    """Killed between the two renames of a swap without exchange (the library missing, the
    former one lib/pyvpopmail.old): the next install puts a library in place and removes the
    former one. Before: lib/pyvpopmail.old stayed for good."""
    if not shutil.which("strace"):
        pytest.skip("needs strace")
    inst, args = sandbox_install(tmp_path)
    strace_install(args, (inst.prefix / "lib" / "pyvpopmail.new",), "renameat2",
                   "error=EINVAL", tmp_path / "trace", "rename:signal=SIGKILL")
    assert "killed by SIGKILL" in (tmp_path / "trace").read_text()
    assert library(inst.prefix) == ["pyvpopmail.new", "pyvpopmail.old"]
    assert run_install(*args).returncode == 0
    assert library(inst.prefix) == ["pyvpopmail"] and leftovers(inst.prefix) == []


@pytest.mark.parametrize("killed", [("bin/vadduser.pyvpopmail-new", "rename"),
                                    ("lib/pyvpopmail.new", "rmdir")],
                         ids=["renaming-programs", "removing-former-library"])
def test_a_rollback_after_a_killed_install_leaves_nothing_of_it(
        tmp_path: Path, killed: tuple[str, str]) -> None:
    """An upgrade killed as it renames the programs in, or as it removes the former library;
    then --rollback: none of what the install had staged or kept aside stays (NAME.new,
    NAME.old, lib/pyvpopmail.new, libexec/). Before: all of it stayed, a whole library
    among it, though the rollback said it had removed the library."""
    if not shutil.which("strace"):
        pytest.skip("needs strace")
    inst, args = sandbox_install(tmp_path)
    path, call = killed
    strace_install(args, (inst.prefix / path,), call, "signal=SIGKILL", tmp_path / "trace")
    assert "killed by SIGKILL" in (tmp_path / "trace").read_text()
    assert leftovers(inst.prefix) != []
    rolled = run_install("--prefix", str(inst.prefix), "--rollback")
    assert rolled.returncode == 0, rolled
    assert leftovers(inst.prefix) == [] and library(inst.prefix) == []
    assert not (inst.prefix / "libexec").exists()


def test_an_install_without_front_ends_after_a_killed_one_leaves_nothing_behind(
        tmp_path: Path) -> None:
    """An upgrade with front ends killed as it renames bin/vchkpw in (libexec/'s programs
    already in, their former ones kept aside), then one without (no compiler now): it
    leaves nothing of the first behind. Before: libexec/vchkpw.old and vdelivermail.old
    stayed (only what this install staged was cleaned up)."""
    if not shutil.which("strace"):
        pytest.skip("needs strace")
    inst, args = sandbox_install(tmp_path)
    if not (inst.prefix / "libexec" / "vchkpw").exists():
        pytest.skip("needs a C compiler (front ends)")
    strace_install(args, (inst.prefix / "bin" / "vchkpw.pyvpopmail-new",), "rename", "signal=SIGKILL",
                   tmp_path / "trace")
    assert "killed by SIGKILL" in (tmp_path / "trace").read_text()
    again = run_install(*args, "--no-frontends")
    assert again.returncode == 0, again
    assert leftovers(inst.prefix) == [] and library(inst.prefix) == ["pyvpopmail"]
    assert sorted(os.listdir(inst.prefix / "libexec")) == []


def test_an_undo_that_fails_gives_back_the_others_and_says_why_it_began(tmp_path: Path
                                                                       ) -> None:
    """The library's swap fails (EIO), and so does giving bin/vadduser back (EIO on its
    NAME.old's rename): every other program is given back all the same, and one line says
    why the install stopped and which program is left the new one; the next install mends
    it. Before: the undo stopped at bin/vadduser (the programs renamed in before it, the hot
    paths' among them, stayed the new ones) and the line did not say what had failed."""
    if not shutil.which("strace"):
        pytest.skip("needs strace")
    args, prefix, former = marked_install(tmp_path)
    vadduser = prefix / "bin" / "vadduser"
    failed = strace_install(args, (prefix / "lib" / "pyvpopmail.new", Path(f"{vadduser}.pyvpopmail-old")),
                            "rename,renameat2", "error=EIO", tmp_path / "trace")
    assert failed.returncode == 1, failed
    assert "Traceback" not in failed.stderr and len(failed.stderr.splitlines()) == 1, \
        failed.stderr
    assert f"{prefix / 'lib' / 'pyvpopmail.new'}: Input/output error, and {vadduser} " \
           f"(Input/output error) cannot be given back" in failed.stderr, failed.stderr
    assert (prefix / "lib" / "pyvpopmail").stat().st_ino == former[0]
    assert unchanged({path: kept for path, kept in former[1].items() if path != str(vadduser)})
    assert not unchanged({str(vadduser): former[1][str(vadduser)]})
    assert run_install(*args).returncode == 0
    assert leftovers(prefix) == [] and library(prefix) == ["pyvpopmail"]


def test_a_kept_qmail_directory_is_the_one_the_install_prepares(tmp_path: Path) -> None:
    """--qmaildir names another directory than the kept configuration's paths.qmail_dir: the
    kept one wins, as for the commands (README: the install keeps the file and says so), so
    users/ and control/ are made there and nothing in the directory the option named.
    Before: they were made in the option's directory, which no command uses."""
    inst, args = sandbox_install(tmp_path)
    kept, other = tmp_path / "kept-qmail", tmp_path / "other-qmail"
    inst.set_config("paths", "qmail_dir", str(kept))
    again = run_install(*sandbox_args(inst.prefix, other))
    assert again.returncode == 0, again
    assert f"paths.qmail_dir = '{kept}', not --qmaildir {other}: the commands use {kept}" in \
        again.stdout, again.stdout
    assert not other.exists()
    assert (kept / "users" / "cdb").is_file() and (kept / "control").is_dir()


def test_an_install_does_not_reload_the_server_of_another_installation(tmp_path: Path) -> None:
    """The kept configuration's paths.server_socket names another installation's socket
    (copied from it, say), where its server runs: the install names it and leaves it alone.
    Before: it sent that server SIGHUP, which reloaded the other installation. (A
    paths.vpopmail_home naming it stops the install before anything: test_packaging.)"""
    other, _ = sandbox_install(tmp_path / "other")
    inst, args = sandbox_install(tmp_path / "this")
    with running_server(other) as server:
        inst.set_config("paths", "server_socket", str(other.prefix / "run" / "server.sock"))
        again = run_install(*args)
        assert again.returncode == 0, again
        assert "reloaded vpopmail-server" not in again.stdout, again.stdout
        assert f"(pid {server.proc.pid}) runs {other.prefix / 'bin' / 'vpopmail-server'}, " \
               f"not a program of {inst.prefix}: another installation's, left alone" in \
            again.stdout, again.stdout
        time.sleep(0.5)
        assert not any("reloading" in line for line in server.lines()), server.lines()


def test_an_operators_own_new_and_old_files_beside_the_programs_are_left_alone(
        tmp_path: Path) -> None:
    """A bin/vchkpw.old and a bin/vadduser.new of the operator's (a hand-kept copy of C's, a
    draft) survive an upgrade: the install stages and keeps aside under suffixes of its own.
    Before: vchkpw.old was removed and vadduser.new overwritten, then renamed over vadduser."""
    inst, args = sandbox_install(tmp_path)
    theirs = {inst.bin / "vchkpw.old": b"#!/bin/sh\necho a kept C vchkpw\n",
              inst.bin / "vadduser.new": b"#!/bin/sh\necho a draft\n"}
    for path, data in theirs.items():
        path.write_bytes(data)
    assert run_install(*args).returncode == 0
    assert all(path.read_bytes() == data for path, data in theirs.items())
    assert b"a draft" not in (inst.bin / "vadduser").read_bytes()
