"""The scripts in packaging/ as a newcomer and an operator run them: the sandbox, and
packaging/install over an existing C vpopmail (its programs kept aside, ``--rollback``)."""
from __future__ import annotations

import contextlib
import marshal
import os
import pwd
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from install_site import (CLEAN_ENV, INSTALL, REPO, VENV, Install, as_user_argv, own_account,
                          run_installer, vpopmail_user_exists)
from delivery_site import Site
from helpers import snapshot
from server_site import running_server, wait_for
from vpopmail import cdb
from vpopmail import config as vconfig
from vpopmail import wire
from vpopmail.wire import VERSION, identity_socket

SANDBOX = REPO / "packaging" / "sandbox"
#: C vpopmail 5.4.33's vpasswd lines (reference c-vpopmail-observed.md section 4; 8 fields,
#: clear passwords on), with HOME standing for the domain directory
C_VPASSWD = (
    "alice:$1$Y3QIu8V9$jwXjUUaDsmkd9aD/UbEMb/:1:0:alice:HOME/alice:1048576S:pw1\n"
    "bob:$1$PgHvGVaV$TaBACm.FGIX3fwK2lg/nm0:1:0:bob:HOME/bob:NOQUOTA:pw2\n"
    "postmaster:$1$5X2q/ML/$7M4lF9X1Czsma6St9ZRqb1:1:0:Postmaster:HOME/postmaster:NOQUOTA:secret\n")
#: programs of a C vpopmail bin/: most have a pyvpopmail namesake, vpopmaild and vkill do not
C_PROGRAMS = ("vadddomain", "vadduser", "vdeluser", "vdelivermail", "vchkpw", "vuserinfo",
              "clearopensmtp", "vpopmaild", "vusagec", "vkill")


def sandbox(*args: str, where: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SANDBOX), *args], capture_output=True, text=True, timeout=300,
                          env={**CLEAN_ENV, "SANDBOX": str(where)})


@pytest.mark.parametrize("args", [("--bogus",), ("again",), ("--help", "x")])
def test_sandbox_refuses_unknown_arguments(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Anything but no argument or --help is an error that deletes nothing (it used to be a
    re-run, which deletes the sandbox and all that was added to it)."""
    kept = tmp_path / "sandbox" / "vpopmail" / "domains" / "mine.org"
    kept.mkdir(parents=True)
    result = sandbox(*args, where=tmp_path / "sandbox")
    assert result.returncode == 2, result
    assert "unknown argument" in result.stderr and "usage: packaging/sandbox" in result.stderr
    assert "nothing was changed" in result.stderr
    assert kept.is_dir() and sorted(p.name for p in (tmp_path / "sandbox").rglob("*")) == [
        "domains", "mine.org", "vpopmail"]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_sandbox_help_deletes_nothing(tmp_path: Path, flag: str) -> None:
    kept = tmp_path / "sandbox" / "message"
    kept.parent.mkdir()
    kept.write_text("mine")
    result = sandbox(flag, where=tmp_path / "sandbox")
    assert (result.returncode, result.stderr) == (0, ""), result
    assert result.stdout.startswith("usage: packaging/sandbox [--help]")
    assert "DELETES that directory and everything in it" in result.stdout
    # what it does, as README's "Try it" says: also the bounce to an unknown user
    assert "one to an unknown user (a bounce, exit 100)" in " ".join(result.stdout.split())
    assert kept.read_text() == "mine"


@pytest.mark.parametrize("existing", [False, True], ids=["new", "someone-elses"])
def test_sandbox_where_you_cannot_write_says_what_to_do(layout_base: Path,
                                                        existing: bool) -> None:
    """An ordinary user running packaging/sandbox in a checkout that is not theirs (root's
    clone) is told to choose a directory with SANDBOX=DIR, before anything is deleted or
    installed (before: the installer's "Permission denied; ... the programs and the library
    in .../vpopmail are as they were", which named neither the cause nor the way out)."""
    where = layout_base / "sandbox"
    if existing:  # root's sandbox, made by an earlier run as root
        (where / "vpopmail").mkdir(parents=True)
        (where / "message").write_text("root's")
    result = subprocess.run([*VPOPMAIL_IDS, str(SANDBOX)], capture_output=True, text=True,
                            timeout=300, cwd="/", env={**CLEAN_ENV, "SANDBOX": str(where)})
    assert result.returncode == 1, result
    assert result.stderr.startswith("packaging/sandbox: you (uid 89) cannot "), result.stderr
    assert "SANDBOX=DIR packaging/sandbox" in result.stderr, result.stderr
    assert "nothing was changed" in result.stderr, result.stderr
    assert sorted(p.name for p in layout_base.rglob("*")) == (
        ["message", "sandbox", "vpopmail"] if existing else [])


# packaging/install over C vpopmail -------------------------------------------------------------

def cdb_make(path: Path, records: list[tuple[bytes, bytes]]) -> None:
    """A cdb file written by tinycdb (as qmail-newu and C's vmkpasswd write them)."""
    if shutil.which("cdb") is None:
        pytest.skip("needs tinycdb's cdb")
    text = b"".join(b"+%d,%d:%s->%s\n" % (len(k), len(v), k, v) for k, v in records) + b"\n"
    subprocess.run(["cdb", "-c", str(path)], input=text, check=True)


def c_vpopmail(prefix: Path, qmaildir: Path) -> dict[str, bytes]:
    """A C vpopmail home with example.com and its three users, and C-named stand-in programs
    (each prints "C"); returns the programs' bytes by name."""
    home = prefix / "domains" / "example.com"
    for name in ("alice", "bob", "postmaster"):
        for sub in ("cur", "new", "tmp"):
            (home / name / "Maildir" / sub).mkdir(mode=0o700, parents=True)
    vpasswd = C_VPASSWD.replace("HOME", str(home))
    (home / "vpasswd").write_text(vpasswd)
    cdb_make(home / "vpasswd.cdb", [tuple(line.encode().split(b":", 1))  # type: ignore[misc]
                                    for line in vpasswd.splitlines()])
    (home / ".qmail-default").write_text(f"| {prefix}/bin/vdelivermail '' bounce-no-mailbox\n")
    for path in [home, *home.rglob("*")]:
        if path.is_dir():
            path.chmod(0o700)
    uid, gid = os.getuid(), os.getgid()
    (qmaildir / "users").mkdir(parents=True)
    (qmaildir / "control").mkdir()
    (qmaildir / "users" / "assign").write_text(
        f"+example.com-:example.com:{uid}:{gid}:{home}:-::\n.\n")
    cdb_make(qmaildir / "users" / "cdb", [
        (b"!example.com-", b"example.com\0%d\0%d\0%s\0-\0" % (uid, gid, bytes(home))),
        (b"", b"-")])
    (qmaildir / "control" / "rcpthosts").write_text("example.com\n")
    (qmaildir / "control" / "virtualdomains").write_text("example.com:example.com\n")
    bindir = prefix / "bin"
    bindir.mkdir()
    programs = {}
    for name in C_PROGRAMS:
        programs[name] = f"#!/bin/sh\n# C vpopmail's {name}\necho C\n".encode()
        (bindir / name).write_bytes(programs[name])
        (bindir / name).chmod(0o755)
    return programs


def run_install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(INSTALL), *args], capture_output=True, text=True)


@pytest.mark.parametrize("linked", [False, True], ids=["file", "symlink"])
def test_install_over_a_setuid_c_vchkpw_says_what_smtp_auth_needs(tmp_path: Path,
                                                                  linked: bool) -> None:
    """C's vchkpw was installed setuid for SMTP servers that run it as qmaild (also where
    bin/vchkpw is a link to it); ours is not, so the install names what such a server
    needs."""
    prefix, qmaildir = tmp_path / "vpopmail", tmp_path / "qmail"
    c_vpopmail(prefix, qmaildir)
    vchkpw = prefix / "bin" / "vchkpw"
    if linked:
        target = tmp_path / "vchkpw-5.4.33"
        vchkpw.rename(target)
        vchkpw.symlink_to(target)
        vchkpw = target
    vchkpw.chmod(0o4711)
    user, group = own_account()
    result = run_install("--prefix", str(prefix), "--qmaildir", str(qmaildir), "--user", user,
                         "--group", group, "--venv", str(VENV))
    assert result.returncode == 0, result
    assert ("C's vchkpw was setuid; pyvpopmail's is not: an SMTP server that runs it as "
            "another user than root (qmail-smtpd's SMTP AUTH as qmaild) needs that user in "
            "server.smtp_auth_callers") in result.stdout, result.stdout


def test_install_over_c_vpopmail_then_rollback(tmp_path: Path) -> None:
    """The migration as README's guide tells it: install over a C tree, the users work at once,
    C's programs are kept aside (its others stay), an upgrade keeps them, and --rollback puts
    back every one byte for byte, leaving the mail as it was."""
    prefix, qmaildir = tmp_path / "vpopmail", tmp_path / "qmail"
    programs = c_vpopmail(prefix, qmaildir)
    mail_before = snapshot(prefix / "domains", qmaildir)
    user, group = own_account()
    args = ("--prefix", str(prefix), "--qmaildir", str(qmaildir), "--user", user,
            "--group", group, "--venv", str(VENV))
    result = run_install(*args)
    assert result.returncode == 0, result
    backup = prefix / "bin" / "c-vpopmail-backup"
    replaced = sorted(set(C_PROGRAMS) - {"vusagec", "vkill"})
    assert f"kept in {backup}/ ({' '.join(replaced)})" in result.stdout, result.stdout
    assert "setuid" not in result.stdout  # this C vchkpw was not
    assert sorted(p.name for p in backup.iterdir()) == replaced
    for name in replaced:
        assert (backup / name).read_bytes() == programs[name]
        assert b"echo C" not in (prefix / "bin" / name).read_bytes()
    for name in ("vusagec", "vkill"):  # no namesake of ours: left alone
        assert (prefix / "bin" / name).read_bytes() == programs[name]

    # the C users work at once: shown, and a login with C's MD5-crypt hash succeeds
    inst = Install(prefix, qmaildir, user, group)
    shown = inst.ok("vuserinfo", "alice@example.com")
    assert "name:   alice" in shown and "quota:     1048576S" in shown, shown
    checked = inst.run("vcheck", "alice@example.com")
    assert (checked.returncode, checked.stdout.splitlines()[-1]) == (0, "all checks passed"), \
        checked
    login = subprocess.run(f"{prefix}/bin/vchkpw /bin/true 3<&0", shell=True,
                           input=b"bob@example.com\0pw2\0\0", env=CLEAN_ENV, cwd="/")
    assert login.returncode == 0
    assert snapshot(prefix / "domains" / "example.com" / "alice", qmaildir) == {
        k: v for k, v in mail_before.items()
        if k.startswith((str(prefix / "domains" / "example.com" / "alice"), str(qmaildir)))}

    # an upgrade (install again) replaces only our own programs
    again = run_install(*args)
    assert again.returncode == 0 and "kept in" not in again.stdout, again
    assert sorted(p.name for p in backup.iterdir()) == replaced

    result = run_install("--prefix", str(prefix), "--rollback")
    assert result.returncode == 0, result
    assert f"restored {len(replaced)} programs" in result.stdout, result.stdout
    assert sorted(p.name for p in (prefix / "bin").iterdir()) == sorted(C_PROGRAMS)
    for name in C_PROGRAMS:
        assert (prefix / "bin" / name).read_bytes() == programs[name]
        assert os.access(prefix / "bin" / name, os.X_OK)
    assert not (prefix / "lib" / "pyvpopmail").exists()
    assert list((prefix / "man" / "man8").iterdir()) == []  # our man pages go with us
    assert not (prefix / "libexec").exists()  # and the Python programs behind the front ends
    assert (prefix / "etc" / "vpopmail.toml").exists()  # the operator's settings stay
    assert (prefix / "domains" / "example.com" / "vpasswd").read_text() == \
        C_VPASSWD.replace("HOME", str(prefix / "domains" / "example.com"))


#: a listener at a vpopmail-server's socket (argv[1]) that answers a status request as
#: argv[2] says: "old", a server of the previous protocol version (started before an upgrade:
#: it declines every request), writing "reloaded" to argv[3] on SIGHUP; "trickle", a long
#: STATUS reply one byte every 2 s
FAKE_SERVER = f"""
import signal, socket, struct, sys, time
HEADER = struct.Struct("=4sBBBxI")
signal.signal(signal.SIGHUP, lambda *_: open(sys.argv[3], "w").write("reloaded"))
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen()
print("listening", flush=True)
while True:
    conn, _ = listener.accept()
    conn.recv(HEADER.size)
    try:
        if sys.argv[2] == "old":
            conn.sendall(HEADER.pack(b"VPSr", {VERSION - 1}, 3, 0, 0))  # DECLINE
        else:
            conn.sendall(HEADER.pack(b"VPSr", {VERSION}, 4, 0, 1 << 18))  # STATUS
            while True:
                conn.send(b"x")
                time.sleep(2)
    except OSError:
        pass
    conn.close()
"""


@contextlib.contextmanager
def fake_server(socket_path: Path, how: str, mark: Path, user: str | None = None,
                program: Path | None = None) -> Iterator[subprocess.Popen[str]]:
    """FAKE_SERVER listening at ``socket_path`` (as ``user`` if given) until the end; run as
    the script ``program`` where given (the installer reloads only a server whose program is
    in its installation), else with -c."""
    prefix = [*as_user_argv(user), "/usr/bin/python3"] if user else [sys.executable]
    if program is not None:
        program.write_text(FAKE_SERVER)
    code = [str(program)] if program is not None else ["-c", FAKE_SERVER]
    server = subprocess.Popen([*prefix, *code, str(socket_path), how, str(mark)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "listening\n"
        yield server
    finally:
        server.kill()
        server.wait()
        assert server.stdout is not None
        server.stdout.close()


@contextlib.contextmanager
def install_the_vpopmail_user_rearranged() -> Iterator[tuple[Path, tuple[str, ...]]]:
    """(PREFIX, install arguments) of a real install where the vpopmail user could listen at
    the server's socket (run/ is made mode 0777 here, as an earlier layout let that user,
    owner of the prefix, put a run/ of its own), under a directory it can reach; removed at
    the end."""
    if os.geteuid() != 0 or not vpopmail_user_exists() or not shutil.which("setpriv"):
        pytest.skip("needs root, the vpopmail user and setpriv")
    base = Path("/tmp") / f"pyvpopmail-rearranged-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o755)
    try:
        prefix, qmaildir = base / "vpopmail", base / "qmail"
        user, group = own_account()
        args = ("--prefix", str(prefix), "--qmaildir", str(qmaildir), "--user", user,
                "--group", group, "--venv", str(VENV))
        assert run_install(*args).returncode == 0
        (prefix / "run").chmod(0o777)
        (base / "marks").mkdir()
        (base / "marks").chmod(0o777)
        yield prefix, args
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_argon2_install_hashes_and_checks_argon2(tmp_path: Path) -> None:
    """--argon2 puts argon2-cffi into the installation's own venv: with passwords.scheme =
    "argon2" vadduser stores an argon2 hash and vchkpw checks it (without it vadduser fails,
    README once promised argon2 from a plain install). An install whose venv lacks it while
    the configuration asks for argon2 says so."""
    prefix, qmaildir = tmp_path / "vpopmail", tmp_path / "qmail"
    user, group = own_account()
    args = ("--prefix", str(prefix), "--qmaildir", str(qmaildir), "--user", user,
            "--group", group)
    result = run_install(*args, "--argon2")
    assert result.returncode == 0, result
    inst = Install(prefix, qmaildir, user, group)
    inst.set_config("passwords", "scheme", "argon2")
    inst.ok("vadddomain", "example.com", "Pm-pass-1")
    inst.ok("vadduser", "alice@example.com", "Alice-pass-1")
    hashed = inst.ok("vuserinfo", "-p", "alice@example.com").strip()
    assert hashed.startswith("$argon2"), hashed
    credentials = tmp_path / "fd3"
    for password, code in (("Alice-pass-1", 0), ("wrong", 1)):
        credentials.write_bytes(f"alice@example.com\0{password}\0\0".encode())
        login = subprocess.run(["/bin/sh", "-c", 'exec "$@" 3<"$0"', str(credentials),
                                str(prefix / "bin" / "vchkpw"), "/bin/true"],
                               capture_output=True, env={**CLEAN_ENV, "TCPLOCALPORT": "110"},
                               cwd="/")
        assert login.returncode == code, login
    without = run_install(*args, "--venv", str(VENV))  # the test venv has no argon2-cffi
    assert without.returncode == 0, without
    assert "passwords.scheme is argon2 but argon2-cffi is not installed" in without.stdout


def test_install_reloads_the_running_server(tmp_path: Path) -> None:
    """An upgrade (install again) tells the running vpopmail-server to reload, so it serves
    with what was installed; a server of the previous protocol version, which declines every
    request meanwhile (the front ends run the Python programs), is told too."""
    prefix, qmaildir = tmp_path / "vpopmail", tmp_path / "qmail"
    user, group = own_account()
    args = ("--prefix", str(prefix), "--qmaildir", str(qmaildir), "--user", user,
            "--group", group, "--venv", str(VENV))
    first = run_install(*args)
    assert first.returncode == 0 and "reloaded" not in first.stdout, first
    inst = Install(prefix, qmaildir, user, group)
    with running_server(inst) as server:
        again = run_install(*args)
        assert again.returncode == 0, again
        assert f"reloaded vpopmail-server (pid {server.proc.pid})" in again.stdout, again.stdout
        wait_for(server, listening=2)
        assert any("reloading" in line for line in server.lines())
        assert server.proc.poll() is None
    mark = tmp_path / "old-server-reloaded"
    with fake_server(prefix / "run" / "server.sock", "old", mark,
                     program=prefix / "bin" / "old-vpopmail-server") as old:
        upgrade = run_install(*args)
        assert upgrade.returncode == 0, upgrade
        assert f"reloaded vpopmail-server (pid {old.pid})" in upgrade.stdout, upgrade.stdout
        deadline = time.monotonic() + 10
        # the handler's open() creates the file before it writes: wait for the text itself
        while time.monotonic() < deadline and not (mark.exists() and
                                                   mark.read_text() == "reloaded"):
            time.sleep(0.05)
        assert mark.read_text() == "reloaded"


def test_install_signals_no_listener_of_another_uid() -> None:
    """A listener at the installation's socket that runs as another uid than the installer's
    (the vpopmail user, say, which owns the prefix) is not a server of this installation: the
    installer names it and sends it no signal."""
    with install_the_vpopmail_user_rearranged() as (prefix, args):
        signalled = prefix.parent / "marks" / "reloaded"
        with fake_server(prefix / "run" / "server.sock", "old", signalled, "vpopmail"):
            again = run_install(*args)
            assert again.returncode == 0, again
            assert f"runs as uid {pwd.getpwnam('vpopmail').pw_uid}, not 0: not reloaded" in \
                again.stdout, again.stdout
            time.sleep(0.3)
            assert not signalled.exists()


def test_install_is_not_held_by_a_slow_listener_of_another_uid() -> None:
    """The vpopmail user listens at the installation's socket and answers byte by byte: a
    root install is not held (before: each byte restarted the 5 s wait, for 256 KiB), and the
    listener is sent nothing."""
    with install_the_vpopmail_user_rearranged() as (prefix, args):
        mark = prefix.parent / "marks" / "reloaded"
        with fake_server(prefix / "run" / "server.sock", "trickle", mark, "vpopmail"):
            started = time.monotonic()
            again = subprocess.run([sys.executable, str(INSTALL), *args], capture_output=True,
                                   text=True, timeout=60)
            assert again.returncode == 0, again
            assert time.monotonic() - started < 30
            assert "not reloaded" in again.stdout, again.stdout
            assert not mark.exists()


def test_install_refuses_to_overwrite_a_kept_program(tmp_path: Path) -> None:
    """A C program installed again over ours, with an older one already kept: nothing is
    changed until the operator decides which to keep."""
    prefix, qmaildir = tmp_path / "vpopmail", tmp_path / "qmail"
    (prefix / "bin" / "c-vpopmail-backup").mkdir(parents=True)
    (prefix / "bin" / "c-vpopmail-backup" / "vadduser").write_text("#!/bin/sh\necho old C\n")
    (prefix / "bin" / "vadduser").write_text("#!/bin/sh\necho new C\n")
    result = run_install("--prefix", str(prefix), "--qmaildir", str(qmaildir),
                         "--venv", str(VENV))
    assert result.returncode == 1
    assert "already holds vadduser" in result.stderr, result
    assert (prefix / "bin" / "vadduser").read_text() == "#!/bin/sh\necho new C\n"
    assert sorted(p.name for p in prefix.rglob("*")) == [
        "bin", "c-vpopmail-backup", "vadduser", "vadduser"]


# packaging/service: run scripts, cron, systemd units ---------------------------------------------

SERVICE = REPO / "packaging" / "service"


def installed_copy(source: Path, inst: Install, target: Path) -> Path:
    """``source`` with /home/vpopmail replaced by ``inst``'s prefix, at ``target``."""
    target.write_text(source.read_text().replace("/home/vpopmail", str(inst.prefix)))
    return target


def test_systemd_units_verify(vhome: Install, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze")
    units = [installed_copy(unit, vhome, tmp_path / unit.name)
             for unit in sorted((SERVICE / "systemd").iterdir())]
    assert [u.name for u in units] == ["vpopmail-clearopensmtp.service",
                                       "vpopmail-clearopensmtp.timer", "vpopmail-pop3.service",
                                       "vpopmail-server.service", "vpopmail-server.socket"]
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, units)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, ""), result


def test_the_socket_unit_holds_the_lookup_socket_the_server_takes() -> None:
    """vpopmail-server.socket listens where the server's lookup socket is by default, with
    the mode the server gives it (root Dovecot callers): the server takes it as it is."""
    unit = (SERVICE / "systemd" / "vpopmail-server.socket").read_text()
    fields = dict(line.split("=", 1) for line in unit.splitlines()
                  if "=" in line and not line.startswith("#"))
    assert fields["ListenStream"] == (f"{vconfig.Config.paths_vpopmail_home}/"
                                      f"{vconfig.Config.paths_lookup_socket}")
    assert (fields["SocketUser"], fields["SocketMode"]) == ("root", "0600")


def test_the_socket_unit_is_started_with_its_service_stopped() -> None:
    """systemd refuses to start a socket unit while its service is active (socket_start:
    "Socket service ... already active, refusing."): the install steps stop the server
    first (before: enable --now of the socket with the server running failed)."""
    unit = (SERVICE / "systemd" / "vpopmail-server.socket").read_text()
    steps = " ".join(line.lstrip("# ") for line in unit.splitlines() if line.startswith("#"))
    assert ("systemctl stop vpopmail-server && systemctl enable --now vpopmail-server.socket "
            "&& systemctl start vpopmail-server") in steps


def test_run_scripts_parse() -> None:
    scripts = sorted(SERVICE.glob("*/run")) + sorted(SERVICE.glob("*/log/run"))
    assert [str(p.relative_to(SERVICE)) for p in scripts] == [
        "pop3/run", "vpopmail-server/run", "vpopmaild/run", "pop3/log/run",
        "vpopmail-server/log/run", "vpopmaild/log/run"]
    for script in scripts:
        assert os.access(script, os.X_OK), script
        subprocess.run(["sh", "-n", str(script)], check=True)


@contextlib.contextmanager
def supervised(inst: Install, name: str, scan: Path, *edits: tuple[str, str]
               ) -> Iterator[Path]:
    """packaging/service/``name`` with its log service under a real svscan in ``scan``, as
    README deploys it: the install's paths in the run script (and ``edits``), the log user
    nobody for qmaill (no qmail here) owning log/main; yields the log file. Both services
    are taken down and svscan stopped at the end."""
    if shutil.which("svscan") is None:
        pytest.skip("needs daemontools (packaging/bootstrap installs it)")
    service = scan / name
    (service / "log" / "main").mkdir(parents=True)
    shutil.chown(service / "log" / "main", "nobody")
    run = installed_copy(SERVICE / name / "run", inst, service / "run")
    text = run.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    run.write_text(text)
    log = (SERVICE / name / "log" / "run").read_text()
    assert "setuidgid qmaill " in log
    (service / "log" / "run").write_text(log.replace("setuidgid qmaill ", "setuidgid nobody "))
    for script in (run, service / "log" / "run"):
        script.chmod(0o755)
    svscan = subprocess.Popen(["svscan", str(scan)], env=CLEAN_ENV, cwd="/",
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield service / "log" / "main" / "current"
    finally:
        svscan.terminate()
        svscan.wait()
        for directory in (service, service / "log"):
            subprocess.run(["svc", "-dx", str(directory)], capture_output=True)
        deadline = time.monotonic() + 20
        while any(subprocess.run(["svok", str(d)]).returncode == 0
                  for d in (service, service / "log")) and time.monotonic() < deadline:
            time.sleep(0.05)


def log_lines(current: Path, wanted: str, count: int = 1, timeout: float = 30) -> list[str]:
    """multilog's lines in ``current`` once ``count`` of them hold ``wanted``."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        if current.exists():
            lines = current.read_text().splitlines()
            if sum(wanted in line for line in lines) >= count:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"{count} x {wanted!r} not in {current}: {lines}")


def test_vpopmail_server_under_daemontools(root_vhome: Install, tmp_path: Path) -> None:
    """The server's run script and log service under svscan: it starts, serves (--status),
    its lines reach multilog with its timestamps, svc -h reloads it (a new process
    listening), svc -d stops it cleanly."""
    service = tmp_path / "service" / "vpopmail-server"
    with supervised(root_vhome, "vpopmail-server", tmp_path / "service") as current:
        try:
            lines = log_lines(current, "vpopmail-server: listening on")
            assert all(re.match(r"@4000[0-9a-f]{20} ", line) for line in lines), lines
            status = subprocess.run([str(root_vhome.bin / "vpopmail-server"), "--status"],
                                    capture_output=True, text=True, env=CLEAN_ENV)
            assert status.returncode == 0 and " requests" in status.stdout, status
            subprocess.run(["svc", "-h", str(service)], check=True)
            log_lines(current, "vpopmail-server: reloading")
            log_lines(current, "vpopmail-server: listening on", 2)
            subprocess.run(["svc", "-d", str(service)], check=True)
            log_lines(current, "vpopmail-server: stopping")
            deadline = time.monotonic() + 60
            while "down" not in supervisor(service):
                assert time.monotonic() < deadline, "svc -d did not stop the server"
                time.sleep(0.05)
            assert not (root_vhome.prefix / "run" / "server.sock").exists()
        except AssertionError as exc:  # what the supervisor and the log say, for a CI run
            raise AssertionError(f"{exc}\n{supervisor(service)}"
                                 f"{current.read_text() if current.exists() else ''}") from None


def supervisor(service: Path) -> str:
    """svstat's line for ``service`` and its log service."""
    return subprocess.run(["svstat", str(service), str(service / "log")],
                          capture_output=True, text=True).stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_vpopmaild_under_daemontools(root_vhome: Install, tmp_path: Path) -> None:
    """vpopmaild's run script and log service under svscan (on a free port for 89): a client
    gets vpopmaild's greeting, is refused a wrong password and logs in; tcpserver's lines for
    the connection reach multilog."""
    root_vhome.ok("vadddomain", "example.com", "pm-secret")
    port = free_port()
    with supervised(root_vhome, "vpopmaild", tmp_path / "service",
                    (" 127.0.0.1 89 ", f" 127.0.0.1 {port} ")) as current:
        log_lines(current, "tcpserver: status: 0/20")
        deadline = time.monotonic() + 20
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, current.read_text()
                time.sleep(0.05)
        with client, client.makefile("rwb") as stream:
            assert stream.readline().startswith(b"+OK"), "no greeting"
            stream.write(b"login postmaster@example.com wrong\n")
            stream.flush()
            assert stream.readline().startswith(b"-ERR")
            stream.write(b"login postmaster@example.com pm-secret\n")
            stream.flush()
            assert stream.readline().startswith(b"+OK")
            stream.write(b"quit\n")
            stream.flush()
            stream.read()
        lines = log_lines(current, "tcpserver: end ")
        assert any("tcpserver: ok " in line and "127.0.0.1" in line for line in lines), lines


def memory_limit() -> int:
    """The softlimit -m of the POP3 run script, which the systemd unit repeats."""
    run = (SERVICE / "pop3" / "run").read_text()
    limit = int(run.split("softlimit -m ")[1].split()[0])
    unit = (SERVICE / "systemd" / "vpopmail-pop3.service").read_text()
    assert f"LimitAS={limit}\n" in unit and f"LimitDATA={limit}\n" in unit
    return limit


def test_memory_limit_of_the_run_scripts_is_enough(vhome: Install) -> None:
    """A login under the POP3 service's limit (softlimit -m sets the address-space, data and
    stack limits) succeeds with the heaviest hash vchkpw loads by default ({SSHA}: libpass),
    and so does a delivery; a tenth of it is not enough (the limit is in force)."""
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit")
    vhome.ok("vadddomain", "example.com", "secret")
    vhome.ok("vadduser", "carl@example.com", "x")
    limit = memory_limit()
    domain = vhome.domains / "example.com"
    vpasswd = domain / "vpasswd"
    ssha = "{SSHA}kQxmvwZhLtJzdxUA0LwW+hur4thzYWx0c2FsdA=="  # "carl-secret", salt "saltsalt"
    vpasswd.write_text("".join(
        ":".join([f[0], ssha, *f[2:]]) + "\n" if f[0] == "carl" else ":".join(f) + "\n"
        for f in (line.split(":") for line in vpasswd.read_text().splitlines())))
    vhome.ok("vmkpasswd", "example.com")

    def limited(n: int, argv: list[str], stdin: bytes, **kw: object) -> int:
        rlimits = [f"--as={n}", f"--data={n}", f"--stack={n}"]
        return subprocess.run(["prlimit", *rlimits, *argv], input=stdin, env=CLEAN_ENV,
                              capture_output=True, **kw).returncode  # type: ignore[call-overload]

    sh = ["sh", "-c", f"{vhome.bin}/vchkpw /bin/true 3<&0"]
    assert limited(limit, sh, b"carl@example.com\0carl-secret\0\0") == 0
    assert limited(limit // 10, sh, b"carl@example.com\0carl-secret\0\0") != 0
    delivery = ["env", "EXT=carl", "HOST=example.com", str(vhome.bin / "vdelivermail"), "",
                "bounce-no-mailbox"]
    assert limited(limit, delivery, b"Subject: x\n\nhi\n", cwd=domain) == 0


# README: the newcomer's copy-paste blocks --------------------------------------------------------

def readme_blocks(section: str) -> list[str]:
    """The ```sh blocks of one ``## section`` of README.md."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("\n```", 1)[0] for block in body.split("```sh\n")[1:]]


def test_readme_next_steps_work_on_a_fresh_sandbox(tmp_path: Path) -> None:
    """What README's "Next steps" tells a newcomer to paste after packaging/sandbox, pasted:
    a domain and a user added, a message delivered, a POP3 login (and a refused one), vcheck."""
    built = sandbox(where=tmp_path / "sandbox")
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert "Running packaging/sandbox again deletes" in built.stdout
    blocks = readme_blocks("Next steps")
    assert len(blocks) == 4
    result = subprocess.run(["bash", "-c", "\n".join(blocks)], capture_output=True, text=True,
                            cwd=tmp_path, env={**CLEAN_ENV, "HOME": str(tmp_path)}, timeout=120)
    out = result.stdout
    assert (result.returncode, result.stderr) == (0, ""), result
    assert "name:   carol" in out and "quota:     52428800S" in out
    delivered = out.index("Hello carol.")
    assert out.count("exit 0") == 3 and out.index("exit 0") < delivered
    assert f"logged in: USER=carol HOME={tmp_path}/sandbox/vpopmail/domains/example.org/carol" \
        in out
    assert "exit 1\n" in out and "all checks passed" in out
    assert "+example.org-:example.org:" in out


@pytest.mark.parametrize("program", ["vdelivermail", "vchkpw", "vadduser"])
def test_wrappers_search_the_standard_library_before_site_packages(vhome: Install,
                                                                   program: str) -> None:
    """The wrapper puts the installed library first and the venv's site-packages after the
    standard library, as a venv does: the hot paths' stat and bisect are found without
    listing site-packages first."""
    wrapper = vhome.program(program).read_text()
    header = wrapper.split("import vpopmail\n", 1)[0]
    python = wrapper.split()[0][2:]
    result = subprocess.run([python, "-I", "-S", "-c", header + "import stat; print(sys.path); "
                             "print(stat.__file__)"], capture_output=True, text=True, check=True)
    path, found = result.stdout.splitlines()
    entries = eval(path)  # noqa: S307 - our own repr of a list of str
    library = vhome.prefix / "lib" / "pyvpopmail"
    stdlib = os.path.dirname(found)
    assert entries[0] == str(library)
    assert entries.index(stdlib) < len(entries) - 1 and "site-packages" in entries[-1]


def wrapper_probe(inst: Install, program: str, code: str) -> list[str]:
    """stdout lines of ``code`` run after the wrapper's start (all before its import of the
    command), with the wrapper's interpreter and flags."""
    wrapper = inst.program(program).read_text()
    start = wrapper.split("\nfrom ", 1)[0] + "\n"
    python = wrapper.split()[0][2:]
    return subprocess.run([python, "-I", "-S", "-c", start + code], capture_output=True,
                          text=True, check=True).stdout.splitlines()


LOADER = "print(type(sys.modules[{name!r}].__loader__).__name__)"


@pytest.mark.parametrize("program", ["vdelivermail", "vchkpw", "vadduser"])
def test_wrappers_load_our_modules_from_their_bytecode(vhome: Install, program: str) -> None:
    """Our modules come through vpopmail.BytecodeFinder (no search of sys.path), with the
    file names of the installed library; the standard library's do not."""
    lines = wrapper_probe(vhome, program, "import delivery.vdelivermail, vpopmail.stores, bisect\n"
                          + "\n".join(LOADER.format(name=name) for name in
                                      ("delivery.vdelivermail", "vpopmail.stores", "bisect"))
                          + "\nprint(delivery.vdelivermail.main.__code__.co_filename)")
    library = vhome.prefix / "lib" / "pyvpopmail"
    assert lines == ["BytecodeFinder", "BytecodeFinder", "SourceFileLoader",
                     str(library / "delivery" / "vdelivermail.py")]


def test_changed_source_is_not_shadowed_by_its_old_bytecode(vhome: Install) -> None:
    """A module edited in place after the install is loaded from its source (the standard
    loader compiles it), as without BytecodeFinder; its new bytecode then serves again."""
    source = vhome.prefix / "lib" / "pyvpopmail" / "vpopmail" / "flags.py"
    source.write_text(source.read_text() + "PROBE = 'edited'\n")
    code = "import vpopmail.flags\nprint(vpopmail.flags.PROBE)\n" + LOADER.format(
        name="vpopmail.flags")
    assert wrapper_probe(vhome, "vdelivermail", code) == ["edited", "SourceFileLoader"]
    assert wrapper_probe(vhome, "vdelivermail", code) == ["edited", "BytecodeFinder"]


# root's layout: what the vpopmail user (every delivery's identity) may not change -----------------

VPOPMAIL_IDS = ["setpriv", "--reuid=89", "--regid=89", "--clear-groups"]


def needs_root_and_vpopmail() -> None:
    if os.geteuid() != 0 or not vpopmail_user_exists() or not shutil.which("setpriv"):
        pytest.skip("needs root, the vpopmail user and setpriv")


def as_vpopmail(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``sh -c script sh args...`` as uid 89, gid 89 (vchkpw) and no other group."""
    return subprocess.run([*VPOPMAIL_IDS, "/bin/sh", "-c", script, "sh", *args],
                          capture_output=True, text=True, cwd="/", env=CLEAN_ENV, timeout=60)


@pytest.fixture
def layout_base(shared_venv: Path) -> Iterator[Path]:
    """An empty directory uid 89 can reach, removed at the end."""
    needs_root_and_vpopmail()
    base = Path("/tmp") / f"pyvpopmail-layout-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def owner_mode(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def root_install(base: Path, venv: Path) -> Install:
    """packaging/install as root for the vpopmail user, into ``base``/vpopmail."""
    return run_installer(base / "vpopmail", base / "qmail", "vpopmail", "vchkpw", venv, "root")


#: what uid 89 tries against a root install at $1; each attempt that works prints its name
ATTACKS = r"""
p=$1
try() { name=$1; shift; if "$@" 2>/dev/null; then echo "$name"; fi; }
try rename-bin mv "$p/bin" "$p/bin.x"
try rename-etc mv "$p/etc" "$p/etc.x"
try rename-lib mv "$p/lib" "$p/lib.x"
try rename-run mv "$p/run" "$p/run.x"
try mkdir-in-prefix mkdir "$p/newdir"
try link-in-prefix ln -s /etc "$p/newlink"
try write-vchkpw sh -c "echo x >> '$p/bin/vchkpw'"
try replace-vchkpw sh -c "cp /bin/true '$p/bin/vchkpw.x' && mv -f '$p/bin/vchkpw.x' '$p/bin/vchkpw'"
try add-to-bin sh -c "echo x > '$p/bin/new'"
for f in vpopmail.toml vpopmail.toml.cache tcp.smtp; do
    try "write-$f" sh -c "echo x >> '$p/etc/$f'"
    try "replace-$f" sh -c "echo x > '$p/etc/new.$f' && mv -f '$p/etc/new.$f' '$p/etc/$f'"
    try "link-over-$f" ln -sf /etc/passwd "$p/etc/$f"
    try "remove-$f" rm -f "$p/etc/$f"
    rm -f "$p/etc/new.$f"
done
"""


def checksums(*paths: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in paths}


def test_root_install_is_roots_but_domains_and_the_relay_files(layout_base: Path,
                                                              shared_venv: Path) -> None:
    """After a root install PREFIX, bin/, lib/, libexec/, man/, run/ and the files root runs
    and reads are root's; etc/ is root:vchkpw 01775; domains/ and vlimits.default the
    vpopmail user's. uid 89 can change none of root's (rename bin/, replace bin/vchkpw,
    replace or remove vpopmail.toml, its cache or tcp.smtp, add to PREFIX), but can still
    write the roaming relay's files: a vchkpw login as the vpopmail user with roaming users
    on, and clearopensmtp as that user, then as root, and a root login, all work on the same
    files."""
    inst = root_install(layout_base, shared_venv)
    prefix, etc = inst.prefix, inst.prefix / "etc"
    assert owner_mode(prefix) == (0, 0, 0o755)
    for name in ("bin", "lib", "libexec", "man", "run"):
        assert owner_mode(prefix / name) == (0, 0, 0o755), name
    assert owner_mode(etc) == (0, 89, 0o1775)
    assert owner_mode(prefix / "domains") == (89, 89, 0o750)
    for name in ("vpopmail.toml", "vpopmail.toml.cache", "tcp.smtp"):
        assert owner_mode(etc / name) == (0, 0, 0o644), name
    assert owner_mode(etc / "vlimits.default") == (89, 89, 0o600)
    for path in [*(prefix / "bin").iterdir(), *(prefix / "libexec").iterdir()]:
        assert os.lstat(path).st_uid == 0, path

    before = checksums(etc / "vpopmail.toml", etc / "vpopmail.toml.cache", etc / "tcp.smtp",
                       prefix / "bin" / "vchkpw")
    attacks = as_vpopmail(ATTACKS, str(prefix))
    assert attacks.stdout == "", attacks
    assert checksums(*before) == before
    assert sorted(p.name for p in prefix.iterdir()) == [
        "bin", "domains", "etc", "lib", "libexec", "man", "run"]

    inst.ok("vadddomain", "example.com", "secret")
    inst.ok("vadduser", "alice@example.com", "pw1")
    inst.set_config("relay", "roaming_users", True)
    inst.ok("vdominfo", "example.com")  # root loads the edited config: its cache again
    fd3 = layout_base / "fd3"
    fd3.write_bytes(b"alice@example.com\0pw1\0\0")
    fd3.chmod(0o644)
    login = [str(prefix / "bin" / "vchkpw"), "/bin/true"]
    pop = {**CLEAN_ENV, "TCPLOCALPORT": "110", "TCPREMOTEIP": "192.0.2.10"}
    as_user = subprocess.run([*as_user_argv("vpopmail"), "/bin/sh", "-c", 'exec "$@" 3<"$0"',
                              str(fd3), *login], capture_output=True, text=True, cwd="/",
                             env=pop)
    assert as_user.returncode == 0, as_user
    inst.ok("clearopensmtp", as_user="vpopmail")
    inst.ok("clearopensmtp")
    as_root = subprocess.run(["/bin/sh", "-c", 'exec "$@" 3<"$0"', str(fd3), *login],
                             capture_output=True, text=True, cwd="/",
                             env={**pop, "TCPREMOTEIP": "192.0.2.11"})
    assert as_root.returncode == 0, as_root
    inst.ok("clearopensmtp", as_user="vpopmail")
    lines = (etc / "open-smtp").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["192.0.2.10", "192.0.2.11"]
    with cdb.CdbReader(str(etc / "tcp.smtp.cdb")) as reader:
        assert sorted(key for key, _ in reader.items()) == [
            b"127.", b"192.0.2.10", b"192.0.2.11", b"::ffff:192.0.2.10", b"::ffff:192.0.2.11"]
    for name in ("open-smtp", "open-smtp.lock", "tcp.smtp.cdb", "tcp.smtp.cdb.lock"):
        assert os.lstat(etc / name)[4:6] == (89, 89), name
    assert [p.name for p in etc.iterdir() if ".tmp." in p.name] == []


def test_a_cache_the_vpopmail_user_forged_is_ignored_by_root(layout_base: Path,
                                                            shared_venv: Path) -> None:
    """Where the config cache is missing uid 89 can make one in etc/ (group-writable): one
    fresh for the TOML file that moves the domains to a directory of its choosing. Root's
    vadddomain reads the TOML instead, makes the domain in PREFIX/domains, and replaces the
    cache with its own."""
    inst = root_install(layout_base, shared_venv)
    etc = inst.prefix / "etc"
    (etc / "vpopmail.toml.cache").unlink()
    elsewhere = layout_base / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    forge = f"""
import marshal, os, sys
sys.path[:0] = [{str(inst.prefix / "lib" / "pyvpopmail")!r}]
from vpopmail import config
path = {str(etc / "vpopmail.toml")!r}
values = config.parse_file(path)
values["paths_domains_dir"] = {str(elsewhere)!r}
with open(path + ".cache", "xb") as fh:
    marshal.dump((config._CACHE_VERSION, config._identity(os.stat(path)), values), fh)
"""
    forged = subprocess.run([*VPOPMAIL_IDS, sys.executable, "-I", "-c", forge],
                            capture_output=True, text=True, cwd="/")
    assert forged.returncode == 0, forged
    assert os.stat(etc / "vpopmail.toml.cache").st_uid == 89
    inst.ok("vadddomain", "example.com", "secret")
    assert (inst.domains / "example.com" / "postmaster").is_dir()
    assert list(elsewhere.iterdir()) == []
    st = os.stat(etc / "vpopmail.toml.cache")
    assert (st.st_uid, marshal.loads((etc / "vpopmail.toml.cache").read_bytes())[2][
        "paths_domains_dir"]) == (0, "domains")


def test_ordinary_user_sandbox_stays_the_users(layout_base: Path, shared_venv: Path) -> None:
    """Run by an ordinary user (uid 89 here) the install is a sandbox that user owns, as
    before: PREFIX and etc/ 0755, domains/ 0750, all its own."""
    (layout_base / "sandbox").mkdir()
    os.chown(layout_base / "sandbox", 89, 89)
    prefix = layout_base / "sandbox" / "vpopmail"
    result = subprocess.run(
        [*VPOPMAIL_IDS, sys.executable, str(INSTALL), "--prefix", str(prefix), "--qmaildir",
         str(layout_base / "sandbox" / "qmail"), "--venv", str(shared_venv),
         "--no-frontends"], capture_output=True, text=True, cwd="/", env=CLEAN_ENV)
    assert result.returncode == 0, result
    assert owner_mode(prefix) == (89, 89, 0o755)
    assert owner_mode(prefix / "etc") == (89, 89, 0o755)
    assert owner_mode(prefix / "domains") == (89, 89, 0o750)
    for path in [*(prefix / "bin").iterdir(), *(prefix / "etc").iterdir()]:
        assert os.lstat(path)[4:6] == (89, 89), path


def test_ordinary_users_first_install_builds_the_front_ends(layout_base: Path,
                                                             shared_venv: Path) -> None:
    """An ordinary user's first install (every packaging/sandbox run) gets the C front ends
    as root's does (before: bin/ did not exist yet when they were compiled into it, so the
    build failed and bin/ held the Python programs)."""
    if not (shutil.which("cc") or shutil.which("musl-gcc")):
        pytest.skip("needs a C compiler")
    (layout_base / "sandbox").mkdir()
    os.chown(layout_base / "sandbox", 89, 89)
    prefix = layout_base / "sandbox" / "vpopmail"
    result = subprocess.run(
        [*VPOPMAIL_IDS, sys.executable, str(INSTALL), "--prefix", str(prefix), "--qmaildir",
         str(layout_base / "sandbox" / "qmail"), "--venv", str(shared_venv)],
        capture_output=True, text=True, cwd="/", env=CLEAN_ENV)
    assert result.returncode == 0, result
    assert "could not build" not in result.stdout, result.stdout
    assert sorted(wire.front_ends_built(str(prefix))) == ["vchkpw", "vdelivermail"]
    assert sorted(os.listdir(prefix / "libexec")) == ["vchkpw", "vdelivermail"]



def test_upgrade_through_a_bind_mount_of_the_kept_vpopmail_home_is_not_refused(
        layout_base: Path, shared_venv: Path) -> None:
    """A --prefix that is the kept paths.vpopmail_home by another path (a bind mount of it,
    as a container's /home/vpopmail is of a host directory) is that home: the programs make
    domains there, whose .qmail-default calls this vdelivermail. The install goes on (before:
    stopped, since the two paths' realpath differ) and the file keeps its path."""
    inst = root_install(layout_base, shared_venv)
    mounted = layout_base / "mounted"
    mounted.mkdir()
    if subprocess.run(["mount", "--bind", str(inst.prefix), str(mounted)]).returncode:
        pytest.skip("cannot bind-mount here")
    try:
        result = run_install("--prefix", str(mounted), "--qmaildir", str(inst.qmaildir),
                             "--venv", str(shared_venv))
    finally:
        subprocess.run(["umount", str(mounted)], check=True)
    assert result.returncode == 0, result
    assert vconfig.load(str(inst.config_path)).paths_vpopmail_home == str(inst.prefix)

# upgrade of a prefix laid out the old way (C vpopmail's ~vpopmail, pyvpopmail's before) --------

def old_layout(inst: Install) -> None:
    """What C vpopmail and earlier pyvpopmail installs left: PREFIX and etc/ (0755) the
    vpopmail user's, and (C's) bin/ and its programs."""
    prefix = inst.prefix
    for path in (prefix, prefix / "etc", prefix / "bin", *(prefix / "bin").iterdir()):
        os.lchown(path, 89, 89)
    (prefix / "etc").chmod(0o755)


def upgrade(inst: Install, venv: Path) -> subprocess.CompletedProcess[str]:
    return run_install("--prefix", str(inst.prefix), "--qmaildir", str(inst.qmaildir),
                       "--user", "vpopmail", "--group", "vchkpw", "--venv", str(venv))


def test_upgrade_takes_over_an_old_layout(layout_base: Path, shared_venv: Path) -> None:
    """An install over the old layout leaves root's layout: PREFIX, etc/, bin/ and what uid
    89 owned in them become root's (without group or other write, a set-uid bit dropped),
    a cache uid 89 made is replaced by root's (the TOML's values); the relay files,
    vlimits.default and domains/ stay the vpopmail user's, and a relay file root made
    becomes that user's (unless it has another hard link), so the relay can replace it."""
    inst = root_install(layout_base, shared_venv)
    prefix, etc = inst.prefix, inst.prefix / "etc"
    old_layout(inst)
    vkill = prefix / "bin" / "vkill"  # a C program without a namesake of ours
    vkill.write_text("#!/bin/sh\necho C\n")
    os.chown(vkill, 89, 89)
    vkill.chmod(0o4775)
    values = vconfig.parse_file(str(etc / "vpopmail.toml"))
    values["paths_domains_dir"] = "/etc"
    cache = etc / "vpopmail.toml.cache"
    cache.write_bytes(marshal.dumps((vconfig._CACHE_VERSION,
                                     vconfig._identity(os.stat(etc / "vpopmail.toml")), values)))
    for name in ("vpopmail.toml.cache", "tcp.smtp"):
        os.chown(etc / name, 89, 89)
    for name in ("ip_alias_map", "open-smtp", "open-smtp.lock"):
        (etc / name).write_text("")
        os.chown(etc / name, 89, 89)
    (etc / "tcp.smtp").chmod(0o664)
    (etc / "tcp.smtp.cdb").write_bytes(b"made by root")  # say by C's tools run as root
    rootfile = layout_base / "root-only"  # and one hard-linked there: not to be given away
    rootfile.write_text("root's\n")
    os.link(rootfile, etc / "tcp.smtp.cdb.lock")

    result = upgrade(inst, shared_venv)
    assert result.returncode == 0, result
    assert owner_mode(prefix) == (0, 0, 0o755)
    assert owner_mode(prefix / "bin") == (0, 0, 0o755)
    assert owner_mode(etc) == (0, 89, 0o1775)
    assert owner_mode(prefix / "domains") == (89, 89, 0o750)
    assert owner_mode(vkill) == (0, 89, 0o755)
    for path in (prefix / "bin").iterdir():
        assert os.lstat(path).st_uid == 0 and not os.lstat(path).st_mode & 0o022, path
    assert owner_mode(etc / "tcp.smtp") == (0, 89, 0o644)
    assert os.lstat(etc / "ip_alias_map").st_uid == 0
    assert os.lstat(cache).st_uid == 0
    assert marshal.loads(cache.read_bytes())[2]["paths_domains_dir"] == "domains"
    for name in ("open-smtp", "open-smtp.lock", "vlimits.default", "tcp.smtp.cdb"):
        assert os.lstat(etc / name)[4:6] == (89, 89), name
    assert os.lstat(rootfile)[4:6] == (0, 0)
    assert "kept in" not in result.stdout  # vkill has no namesake of ours: left in place
    (etc / "tcp.smtp.cdb.lock").unlink()
    inst.ok("clearopensmtp", as_user="vpopmail")  # the relay replaces its files
    with cdb.CdbReader(str(etc / "tcp.smtp.cdb")) as reader:
        assert [key for key, _ in reader.items()] == [b"127."]


def tree_state(top: Path) -> list[tuple[str, tuple[int, int, int], bytes | None]]:
    """Every path under ``top`` (``top`` too): owner, group, mode and a file's contents."""
    return [(str(path), owner_mode(path), path.read_bytes() if path.is_file() else None)
            for path in sorted([top, *top.rglob("*")])]


@pytest.mark.parametrize("name", ["etc", "bin", "lib", "run", "domains"])
def test_upgrade_refuses_a_directory_linked_elsewhere(layout_base: Path, shared_venv: Path,
                                                      name: str) -> None:
    """uid 89, owning PREFIX in the old layout, swaps one of its directories for a link to a
    directory of root's elsewhere: the install names it, changes nothing and fails (before:
    etc/ got vpopmail.toml written and chowned to 89 there, domains/'s target was chowned to
    89, bin/ and lib/ got our programs, run/ its mode)."""
    inst = root_install(layout_base, shared_venv)
    old_layout(inst)
    target = layout_base / "root-only"
    target.mkdir(mode=0o711)
    (target / "precious").write_text("root's\n")
    moved = as_vpopmail('mv "$1/$2" "$1/$2.real" && ln -s "$3" "$1/$2"', str(inst.prefix),
                        name, str(target))
    assert moved.returncode == 0, moved
    before, prefix_before = tree_state(target), owner_mode(inst.prefix)
    result = upgrade(inst, shared_venv)
    assert result.returncode != 0
    assert result.stderr == (f"install: {inst.prefix / name} is a symbolic link: nothing was "
                             f"changed; remove or replace it and install again\n"), result
    assert tree_state(target) == before
    assert owner_mode(inst.prefix) == prefix_before == (89, 89, 0o755)


@pytest.mark.parametrize("planter", [89, 0])
def test_upgrade_does_not_follow_a_dangling_link_in_etc(layout_base: Path, shared_venv: Path,
                                                        planter: int) -> None:
    """etc/tcp.smtp is a link to where nothing is: nothing is made at its target. One of uid
    89 is refused (named; nothing changed); root's own is kept as it is (before, the
    install created the link's target)."""
    inst = root_install(layout_base, shared_venv)
    old_layout(inst)
    etc = inst.prefix / "etc"
    target = layout_base / "somewhere"
    (etc / "tcp.smtp").unlink()
    (etc / "tcp.smtp").symlink_to(target)
    os.lchown(etc / "tcp.smtp", planter, planter)
    result = upgrade(inst, shared_venv)
    assert not os.path.lexists(target)
    assert (etc / "tcp.smtp").is_symlink()
    if planter:
        assert result.returncode != 0
        assert result.stderr == (f"install: {etc / 'tcp.smtp'} is a symbolic link of uid 89: "
                                 f"nothing was changed; remove or replace it and install "
                                 f"again\n"), result
        assert owner_mode(inst.prefix) == (89, 89, 0o755)
    else:
        assert result.returncode == 0, result


def test_upgrade_refuses_a_link_of_the_vpopmail_user_in_bin(layout_base: Path,
                                                           shared_venv: Path) -> None:
    """bin/vchkpw, which root runs, swapped by uid 89 for a link to a program of its own:
    refused, named, nothing changed."""
    inst = root_install(layout_base, shared_venv)
    old_layout(inst)
    vchkpw = inst.prefix / "bin" / "vchkpw"
    swapped = as_vpopmail('rm -f "$1" && ln -s /bin/true "$1"', str(vchkpw))
    assert swapped.returncode == 0, swapped
    result = upgrade(inst, shared_venv)
    assert result.returncode != 0
    assert result.stderr == (f"install: {vchkpw} is a symbolic link of uid 89: nothing was "
                             f"changed; remove or replace it and install again\n"), result
    assert owner_mode(inst.prefix) == (89, 89, 0o755)
    assert os.readlink(vchkpw) == "/bin/true"


# review3: what an old layout's owner could keep through the takeover ------------------------------

def posix_acl(entries: list[tuple[int, int, int]]) -> bytes:
    """The system.posix_acl_* xattr value of ``entries`` (tag, perm, id), sorted as the kernel
    wants them (setfacl need not be installed)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


#: user::rwx user:89:rwx group::r-x mask::rwx other::r-x
ACL_89 = posix_acl([(0x01, 7, 0xFFFFFFFF), (0x02, 7, 89), (0x04, 5, 0xFFFFFFFF),
                    (0x10, 7, 0xFFFFFFFF), (0x20, 5, 0xFFFFFFFF)])
SET_ACL = """
import os, sys
for path in sys.argv[2:]:
    os.setxattr(path, "system.posix_acl_default", bytes.fromhex(sys.argv[1]))
    os.setxattr(path, "system.posix_acl_access", bytes.fromhex(sys.argv[1]))
"""


def test_upgrade_drops_the_acls_the_vpopmail_user_set(layout_base: Path,
                                                      shared_venv: Path) -> None:
    """uid 89, owning PREFIX in the old layout, replaces lib/ by a directory of its own with a
    default ACL that gives it rwx (and bin/, etc/ likewise): after the takeover no ACL is left
    on them, so lib/pyvpopmail, which the install makes with mkdir's 0777 (a default ACL
    ignores the umask), is not uid 89's to write (before: it added lib/pyvpopmail/struct.py,
    which every root command imported ahead of the standard library)."""
    inst = root_install(layout_base, shared_venv)
    old_layout(inst)
    prefix = inst.prefix
    made = as_vpopmail('cd "$1" && mv lib lib.orig && mkdir lib', str(prefix))
    assert made.returncode == 0, made
    acl = subprocess.run([*VPOPMAIL_IDS, sys.executable, "-I", "-c", SET_ACL, ACL_89.hex(),
                          *(str(prefix / name) for name in ("lib", "bin", "etc"))],
                         capture_output=True, text=True, cwd="/")
    if acl.returncode != 0 and "Operation not supported" in acl.stderr:
        pytest.skip("no POSIX ACLs on this filesystem")
    assert acl.returncode == 0, acl
    result = upgrade(inst, shared_venv)
    assert result.returncode == 0, result
    for path in (prefix / "lib", prefix / "lib" / "pyvpopmail", prefix / "bin", prefix / "etc"):
        for name in ("system.posix_acl_access", "system.posix_acl_default"):
            with pytest.raises(OSError):
                os.getxattr(path, name)
    planted = as_vpopmail('echo x > "$1/lib/pyvpopmail/struct.py"', str(prefix))
    assert planted.returncode != 0
    assert not (prefix / "lib" / "pyvpopmail" / "struct.py").exists()


def test_upgrade_gives_root_a_copy_not_the_vpopmail_users_inode(layout_base: Path,
                                                                shared_venv: Path) -> None:
    """A file of uid 89 that root keeps (vpopmail.toml) becomes a new root-owned inode with
    the same contents: a hard link uid 89 kept in domains/ and a descriptor it held open for
    writing reach the old inode only (before: the same inode was chowned to root, uid 89
    wrote root's configuration through the descriptor, and renamed the link over
    etc/vlimits.default.lock, which root's vmoddomlimits -d chowns to it)."""
    inst = root_install(layout_base, shared_venv)
    old_layout(inst)
    prefix, etc = inst.prefix, inst.prefix / "etc"
    text = (etc / "vpopmail.toml").read_bytes()
    kept = as_vpopmail('cd "$1" && cp etc/vpopmail.toml etc/t && mv -f etc/t etc/vpopmail.toml '
                       '&& ln etc/vpopmail.toml domains/.keep', str(prefix))
    assert kept.returncode == 0, kept
    holder = subprocess.Popen(
        [*VPOPMAIL_IDS, sys.executable, "-I", "-c",
         "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY); print('open', flush=True); "
         "sys.stdin.readline(); os.pwrite(fd, b'# uid 89 was here\\n', 0); print('wrote')",
         str(etc / "vpopmail.toml")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd="/")
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        result = upgrade(inst, shared_venv)
        assert result.returncode == 0, result
        holder.communicate("go\n", timeout=30)
    finally:
        holder.kill()
    assert (etc / "vpopmail.toml").read_bytes() == text
    assert owner_mode(etc / "vpopmail.toml")[:2] == (0, 89)
    assert os.stat(etc / "vpopmail.toml").st_nlink == 1
    assert os.stat(prefix / "domains" / ".keep").st_uid == 89
    moved = as_vpopmail('cd "$1" && mv domains/.keep etc/vlimits.default.lock', str(prefix))
    assert moved.returncode == 0, moved
    inst.ok("vmoddomlimits", "-d", "-P", "5")
    assert owner_mode(etc / "vpopmail.toml")[:2] == (0, 89)


def test_upgrade_is_not_held_by_a_fifo_in_bin(layout_base: Path, shared_venv: Path) -> None:
    """bin/vuserinfo, swapped by uid 89 for a FIFO: the install does not wait for a writer
    (before: set_aside's open of it never returned)."""
    inst = root_install(layout_base, shared_venv)
    old_layout(inst)
    fifo = as_vpopmail('rm -f "$1" && mkfifo "$1"', str(inst.prefix / "bin" / "vuserinfo"))
    assert fifo.returncode == 0, fifo
    result = run_install_within(30, "--prefix", str(inst.prefix), "--qmaildir",
                                str(inst.qmaildir), "--user", "vpopmail", "--group", "vchkpw",
                                "--venv", str(shared_venv))
    assert result.returncode == 0, result
    assert OURS_WRAPPER.match((inst.prefix / "bin" / "vuserinfo").read_bytes())


def test_upgrade_says_where_the_kept_configuration_disagrees_with_the_command_line(
        layout_base: Path, shared_venv: Path) -> None:
    """A vpopmail.toml written from the defaults before the install (Migrating, step 2) names
    /home/vpopmail and /var/qmail. Its vpopmail home not the --prefix stops the install
    before anything changes (before: a warning, then the programs made new domains under
    /home/vpopmail, where no vdelivermail of theirs is); its qmail directory not the
    --qmaildir is kept and said (the qmail directory is the test's own: the install prepares
    the kept one); one that agrees is not mentioned."""
    inst = root_install(layout_base, shared_venv)
    quiet = upgrade(inst, shared_venv)
    assert quiet.returncode == 0 and "(kept) has paths." not in quiet.stdout, quiet
    values = vconfig.defaults().values
    values["paths_qmail_dir"] = str(layout_base / "var-qmail")
    inst.config_path.write_text(vconfig.render(values))
    before = snapshot(inst.prefix)
    stopped = upgrade(inst, shared_venv)
    assert stopped.returncode == 1, stopped
    assert f"has paths.vpopmail_home = '/home/vpopmail', not --prefix {inst.prefix}" \
        in stopped.stderr and "nothing was changed" in stopped.stderr, stopped
    assert snapshot(inst.prefix) == before
    values["paths_vpopmail_home"] = str(inst.prefix)
    inst.config_path.write_text(vconfig.render(values))
    told = upgrade(inst, shared_venv)
    assert told.returncode == 0, told
    assert "paths.vpopmail_home" not in told.stdout
    assert f"paths.qmail_dir = '{layout_base / 'var-qmail'}', not --qmaildir " \
           f"{inst.qmaildir}" in told.stdout


def test_install_says_where_the_kept_configuration_disagrees_with_the_owner(
        layout_base: Path, shared_venv: Path) -> None:
    """The defaults Migrating step 2 renders name vpopmail:vchkpw as 89:89; where the site's
    vpopmail user has other ids the kept file makes new domains fail and roaming logins open
    no relay (the relay files are not uid 89's), so the install says so for each owner id
    that is not its user's (before: silence); an id that agrees is not mentioned."""
    inst = root_install(layout_base, shared_venv)
    values = vconfig.parse_file(str(inst.config_path))
    values.update(owner_uid=5089)
    inst.config_path.write_text(vconfig.render(values))
    told = upgrade(inst, shared_venv)
    assert told.returncode == 0, told
    assert "owner.uid = 5089, not vpopmail's uid 89" in told.stdout, told.stdout
    assert "owner.gid" not in told.stdout, told.stdout


def test_install_says_when_the_relay_cannot_write_its_cdb(layout_base: Path,
                                                          shared_venv: Path) -> None:
    """C built with --enable-tcpserver-file=/etc/tcp.smtp rebuilt /etc/tcp.smtp.cdb as root;
    our relay works as the vpopmail user, which cannot make files in a root-owned 0755
    directory: every roaming login then left the cdb as it was (one syslog line each), so
    the install names the directory; the default etc/ (the vpopmail group's) is not named."""
    inst = root_install(layout_base, shared_venv)
    values = vconfig.parse_file(str(inst.config_path))
    values["relay_roaming_users"] = True
    inst.config_path.write_text(vconfig.render(values))
    quiet = upgrade(inst, shared_venv)
    assert quiet.returncode == 0 and "cannot" not in quiet.stdout, quiet
    system_etc = layout_base / "system-etc"
    system_etc.mkdir(mode=0o755)
    values.update(paths_tcp_smtp=str(system_etc / "tcp.smtp"),
                  paths_tcp_smtp_cdb=str(system_etc / "tcp.smtp.cdb"))
    inst.config_path.write_text(vconfig.render(values))
    told = upgrade(inst, shared_venv)
    assert told.returncode == 0, told
    assert (f"paths.tcp_smtp_cdb is in {system_etc}, where vpopmail cannot make files: "
            "roaming logins cannot replace it") in told.stdout, told.stdout
    assert "paths.open_smtp" not in told.stdout, told.stdout


def test_upgrade_gives_the_vpopmail_user_the_buckets_of_domain_owners(
        layout_base: Path, shared_venv: Path) -> None:
    """Buckets of the shared domains root that C's (and an earlier version's) vadddomain -i
    gave the domain owner, nested ones too, and one an earlier version made 0700, become the
    vpopmail user's, 0750, named; a link named as a bucket is not followed."""
    inst = root_install(layout_base, shared_venv)
    domains = inst.domains
    inst.ok("vadddomain", "-i", "65534", "-g", "89", "owned.test", "secret")
    bucket = domains / "0"
    os.rename(domains / "owned.test", layout_base / "owned.test")
    bucket.mkdir(mode=0o700)
    os.rename(layout_base / "owned.test", bucket / "owned.test")
    (bucket / "1").mkdir(mode=0o700)
    for path in (bucket, bucket / "1"):
        os.chown(path, 65534, 89)
    (domains / "3").mkdir(mode=0o700)  # an earlier version's: the vpopmail user's, but 0700
    os.chown(domains / "3", 89, 89)
    os.symlink("/etc", domains / "2")
    os.lchown(domains / "2", 89, 89)
    old_layout(inst)
    result = upgrade(inst, shared_venv)
    assert result.returncode == 0, result
    assert owner_mode(bucket) == (89, 89, 0o750)
    assert owner_mode(bucket / "1") == (89, 89, 0o750)
    assert owner_mode(domains / "3") == (89, 89, 0o750)
    assert owner_mode(bucket / "owned.test")[:2] == (65534, 89)
    assert result.stdout.count("(a bucket of domains, 65534:89 0700) is now 89:89 0750") == 2
    assert "(a bucket of domains, 89:89 0700) is now 89:89 0750" in result.stdout
    assert os.stat("/etc").st_uid == 0 and os.lstat(domains / "2").st_uid == 89


#: as uid 89: listen at each path given (bound now), say "up", and at a line on stdin print
#: how many connections each received meanwhile
SQUATTER = """
import socket, sys
socks = []
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(8)
    s.setblocking(False)
    socks.append(s)
print("up", flush=True)
sys.stdin.readline()
counts = []
for s in socks:
    n = 0
    while True:
        try:
            s.accept()[0].close()
        except BlockingIOError:
            break
        n += 1
    counts.append(n)
print(*counts, flush=True)
"""


def test_upgrade_removes_the_sockets_the_vpopmail_user_listens_at_in_its_run(
        layout_base: Path, shared_venv: Path) -> None:
    """uid 89 swapped run/ for its own (the old layout's PREFIX was its own) and listens at
    the server's socket and at its identity's. The upgrade removes both and says so: the next
    delivery runs the Python program through the front end (before: 111, the front end
    refused the listener's uid) and nothing connected to them."""
    inst = root_install(layout_base, shared_venv)
    assert (inst.prefix / "libexec" / "vdelivermail").exists()  # front ends were built
    site = Site.create(inst, True, alice=None)
    old_layout(inst)
    swapped = as_vpopmail('mv "$1/run" "$1/run.root" && mkdir "$1/run"', str(inst.prefix))
    assert swapped.returncode == 0, swapped
    main = vconfig.load(str(inst.config_path)).home_path("server_socket")
    own = identity_socket(main, 89, 89, tuple(os.getgrouplist("vpopmail", 89)))
    assert own is not None
    squatter = subprocess.Popen([*as_user_argv("vpopmail"), sys.executable, "-I", "-c",
                                 SQUATTER, main, own], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert squatter.stdout is not None and squatter.stdout.readline() == "up\n"
        result = upgrade(inst, shared_venv)
        delivered = site.deliver("alice")
        assert squatter.stdin is not None
        squatter.stdin.write("\n")
        squatter.stdin.flush()
        counts = squatter.stdout.readline().split()
    finally:
        squatter.kill()
        squatter.wait()
    assert result.returncode == 0, result
    assert delivered.returncode == 0, delivered
    assert len(site.new_files(site.maildir("alice"))) == 1
    assert owner_mode(inst.prefix / "run") == (0, 0, 0o755)
    assert not os.path.lexists(main) and not os.path.lexists(own)
    assert result.stdout.count("a socket of uid 89") == 2, result.stdout
    assert counts == ["0", "0"]


def run_install_within(seconds: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(INSTALL), *args], capture_output=True,
                          text=True, timeout=seconds)


OURS_WRAPPER = re.compile(rb"#![^\n]* -IS\nimport sys\n")


def test_upgrade_makes_a_venv_of_the_vpopmail_user_again(layout_base: Path) -> None:
    """An old layout installed without --venv (PREFIX/lib/venv): uid 89 replaces lib/ by its
    own, whose venv/bin/python is a script of its own. The upgrade (without --venv, as the
    README's) removes that venv and makes one again instead of running its python as root
    (before: root ran it, for pip and to learn the wrappers' interpreter)."""
    prefix, qmaildir = layout_base / "vpopmail", layout_base / "qmail"
    args = ("--prefix", str(prefix), "--qmaildir", str(qmaildir), "--no-frontends")
    first = run_install(*args)
    assert first.returncode == 0, first
    for path in (prefix, prefix / "etc"):
        os.chown(path, 89, 89)
    mark = layout_base / "marks"
    mark.mkdir()
    os.chown(mark, 89, 89)
    swapped = as_vpopmail(
        'cd "$1" && mv lib lib.orig && mkdir -p lib/venv/bin && '
        'printf "#!/bin/sh\\nid -u > %s/ran\\nexec %s \\"\\$@\\"\\n" "$2" "$3" '
        '> lib/venv/bin/python && chmod 755 lib/venv/bin/python',
        str(prefix), str(mark), str(prefix / "lib.orig" / "venv" / "bin" / "python"))
    assert swapped.returncode == 0, swapped
    result = run_install(*args)
    assert not (mark / "ran").exists()
    assert result.returncode == 0, result
    assert (prefix / "lib" / "venv" / "bin" / "python").is_symlink()
