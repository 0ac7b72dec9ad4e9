"""SMTP AUTH for servers that run vchkpw as an unprivileged user (qmail-smtpd's SMTP AUTH
patches run it as qmaild; C vpopmail installed vchkpw setuid root for them): vpopmail-server
serves the users ``server.smtp_auth_callers`` names with the vpopmail user's rights, for
SMTP AUTH logins only, and their program runs as themselves."""
from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from delivery_site import DOMAIN, MESSAGE, qmail_local_env
from install_site import CLEAN_ENV, Install, as_user_argv
from login_site import POP_ENV, LoginSite
from server_site import served_login_site, server_of, without_fallbacks, worker_ids

pytestmark = pytest.mark.both_backends

#: a user the site lists in server.smtp_auth_callers (qmaild's stand-in), and one it does not
CALLER, STRANGER = "nobody", "daemon"
#: what tcpserver sets for qmail-smtpd on port 25 (whose SMTP AUTH runs vchkpw /bin/true)
SMTP_ENV = {**POP_ENV, "TCPLOCALPORT": "25"}
IMAP_ENV = {**POP_ENV, "TCPLOCALPORT": "143"}


@pytest.fixture
def site(root_vhome: Install) -> Iterator[LoginSite]:
    """example.com with alice (password pw) on a root install with roaming relay on, its
    server serving CALLER for SMTP AUTH."""
    root_vhome.set_config("server", "smtp_auth_callers", CALLER)
    root_vhome.set_config("relay", "roaming_users", True)
    with served_login_site(root_vhome) as login_site:
        yield login_site


def as_caller(site: LoginSite, password: str, env: dict[str, str] = SMTP_ENV,
              user: str = CALLER) -> tuple[int, bool, dict[str, str], str]:
    """vchkpw run by ``user`` as qmail-smtpd's SMTP AUTH runs it: (exit code, whether the
    program ran, what it recorded, stderr)."""
    login = site.login("alice@example.com", password, env=env, wrap=tuple(as_user_argv(user)))
    return login.code, login.ran, login.env, login.stderr


def test_an_smtp_auth_login_of_a_listed_caller_is_checked_and_runs_as_the_caller(
        site: LoginSite) -> None:
    """Served by a worker that holds the vpopmail user's ids (only those: not root), the
    program runs as the caller, in its directory, with vchkpw's variables; a wrong password
    is a rejection (1), not a fault."""
    without_fallbacks(site.inst)
    account = pwd.getpwnam(CALLER)
    code, ran, env, stderr = as_caller(site, "pw")
    assert (code, ran, stderr) == (0, True, ""), stderr
    assert (env["uid"], env["gid"], env["cwd"]) == (str(account.pw_uid), str(account.pw_gid), "/")
    assert (env["USER"], env["HOME"], env["VPOPUSER"]) == (
        "alice", str(site.user_dir("alice")), "alice@example.com")
    assert as_caller(site, "wrong")[:2] == (1, False)
    held = [ids for ids in worker_ids(server_of(site)) if ids[0][0] != "0"]
    vpopmail = str(site.inst.uid)
    assert held and all(ids == ([vpopmail] * 4, [str(site.inst.gid)] * 4, [str(site.inst.gid)])
                        for ids in held), held
    assert not (site.inst.prefix / "etc" / "open-smtp").exists()  # SMTP AUTH opens no relay


@pytest.mark.parametrize("env", [POP_ENV, IMAP_ENV], ids=["pop3", "imap"])
def test_other_logins_of_a_listed_caller_are_refused_as_a_fault(site: LoginSite,
                                                                env: dict[str, str]) -> None:
    """A POP3 or IMAP login would need root's setuid and open the relay: refused with 111 (as
    the caller's direct program would fail), before anything is read or written, and said."""
    without_fallbacks(site.inst)
    code, ran, _, stderr = as_caller(site, "pw", env)
    assert (code, ran) == (111, False)
    assert "served for SMTP AUTH only (server.smtp_auth_callers)" in stderr, stderr
    assert not (site.inst.prefix / "etc" / "open-smtp").exists()


def test_a_listed_caller_cannot_ask_for_a_lookup_without_the_password(site: LoginSite) -> None:
    """Dovecot's userdb lookup (AUTHORIZED=1) skips the password: trusted from a caller that
    could read the users itself, not from one served with the vpopmail user's rights."""
    without_fallbacks(site.inst)
    lookup = {**SMTP_ENV, "ORIG_UID": "0", "AUTHORIZED": "1"}
    for password in ("pw", "anything"):
        code, ran, _, stderr = as_caller(site, password, lookup)
        assert (code, ran) == (111, False)
        assert "(AUTHORIZED=1) is not served for server.smtp_auth_callers" in stderr, stderr


def test_a_listed_caller_cannot_name_another_configuration(site: LoginSite) -> None:
    """VPOPMAIL_CONFIG would have the vpopmail user's worker read a configuration (and the
    users, directories and database it names) of the caller's choosing: the server's is
    used (the variable is dropped: the program does not get it either)."""
    without_fallbacks(site.inst)
    code, ran, env, stderr = as_caller(site, "pw", {**SMTP_ENV, "VPOPMAIL_CONFIG": "/nowhere"})
    assert (code, ran, stderr) == (0, True, "") and "VPOPMAIL_CONFIG" not in env
    assert as_caller(site, "wrong", {**SMTP_ENV, "VPOPMAIL_CONFIG": "/nowhere"})[:2] == (1, False)


def test_a_listed_callers_delivery_is_not_served(site: LoginSite) -> None:
    """Only vchkpw is served with the vpopmail user's rights: a delivery run by the caller is
    declined (its front end runs the Python program, as the caller)."""
    without_fallbacks(site.inst)
    before = len(server_of(site).lines())
    with tempfile.TemporaryFile() as message:
        message.write(MESSAGE)
        message.seek(0)
        result = subprocess.run([*as_user_argv(CALLER), str(site.inst.bin / "vdelivermail"), "",
                                 "bounce-no-mailbox"], stdin=message, capture_output=True,
                                env=qmail_local_env("alice", DOMAIN, str(site.domain_dir)),
                                cwd="/", timeout=60)
    assert (result.returncode, result.stderr) == (42, b"fallback used\n")
    new = server_of(site).lines()[before:]
    assert any("declined" in line and "SMTP AUTH only" in line for line in new), new


def test_a_caller_not_listed_is_served_with_its_own_rights(site: LoginSite) -> None:
    """Another unprivileged user gets what its direct program gets: it cannot read the
    domain's files, a temporary failure, never a rejection."""
    code, ran, _, _ = as_caller(site, "pw", user=STRANGER)
    assert (code, ran) == (111, False)


def test_with_the_server_down_a_listed_caller_gets_a_temporary_failure(site: LoginSite) -> None:
    """The Python program run by the caller itself cannot read the domain's files: 111 (the
    SMTP client is told to try again), never 1 (a wrong password)."""
    assert server_of(site).stop() == 0
    for password in ("pw", "wrong"):
        code, ran, _, _ = as_caller(site, password)
        assert (code, ran) == (111, False)
    checked = site.inst.run("vcheck", "alice@example.com")  # a fault, where it is not without
    assert checked.returncode != 0, checked.stdout
    assert "the SMTP AUTH logins of server.smtp_auth_callers (nobody) fail" in checked.stdout


@pytest.mark.parametrize(("listed", "reason"), [
    ("qmaild-nowhere", "there is no user 'qmaild-nowhere'"),
    ("root", "root (uid 0) is served with its own rights"),
    ("nobody vpopmail", "vpopmail (uid 89) is served with its own rights"),
])
def test_a_caller_list_naming_no_user_or_a_privileged_one_stops_the_server(
        root_vhome: Install, listed: str, reason: str) -> None:
    root_vhome.ok("vadddomain", DOMAIN, "secret")
    root_vhome.set_config("server", "smtp_auth_callers", listed)
    result = subprocess.run([str(root_vhome.bin / "vpopmail-server")], capture_output=True,
                            env=CLEAN_ENV, cwd="/", timeout=60)
    assert result.returncode == 111
    assert f"vpopmail-server: configuration error: server.smtp_auth_callers: {reason}" in result.stderr.decode()
    checked = root_vhome.run("vcheck", f"postmaster@{DOMAIN}")
    assert checked.returncode != 0, checked.stdout
    assert (f"server.smtp_auth_callers: {reason}" in checked.stdout
            and "vpopmail-server does not start" in checked.stdout), checked.stdout


def as_caller_in(site: LoginSite, password: str, setup: str, env: dict[str, str] = SMTP_ENV
                 ) -> tuple[int, bool, dict[str, str], str]:
    """:func:`as_caller` with the shell command ``setup`` (umask, ulimit) run first as the
    caller: what its process state makes of the login."""
    wrap = (*as_user_argv(CALLER), "/bin/sh", "-c", f'{setup}; exec "$@"', "sh")
    login = site.login("alice@example.com", password, env=env, wrap=wrap)
    return login.code, login.ran, login.env, login.stderr


#: a module whose loading records who loaded it (its euid) in the directory it is built for
RECORDER = """#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void record(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/loaded-by-%d", DIRECTORY, (int)geteuid());
    FILE *f = fopen(path, "w");
    if (f != NULL)
        fclose(f);
}
"""


def test_a_listed_callers_environment_does_not_reach_the_workers_libraries(
        site: LoginSite) -> None:
    """The caller's variables are vchkpw's data and its program's environment, never the
    worker's own: C libraries read theirs at run time, as the vpopmail user. Here libmariadb
    loads an authentication plugin the database asks for (ed25519) from MARIADB_PLUGIN_DIR
    (OpenSSL, where the worker starts it, the modules OPENSSL_CONF names): a module of the
    caller's there would run as the vpopmail user."""
    if site.inst.backend != "mysql":
        pytest.skip("libmariadb's plugins: the SQL backend")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("needs a C compiler")
    without_fallbacks(site.inst)
    server = site.inst.database.server  # type: ignore[attr-defined]
    if not server.sql("SELECT 1 FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'ed25519'"):
        server.sql("INSTALL SONAME 'auth_ed25519'")
    # not into the binary log: the replica of this server has no ed25519 plugin, and a
    # statement it cannot apply would stop its replication for the tests after this one
    server.sql("SET sql_log_bin = 0; CREATE USER IF NOT EXISTS 'vpop_ed'@'localhost' "
               "IDENTIFIED VIA ed25519 USING PASSWORD('edpw'); "
               "GRANT ALL ON `t\\_%`.* TO 'vpop_ed'@'localhost'")
    try:
        for side in ("read", "update"):
            site.inst.set_config("mysql", f"{side}_user", "vpop_ed")
            site.inst.set_config("mysql", f"{side}_password", "edpw")
        plugins = site.work / "plugins"
        plugins.mkdir(mode=0o755)
        source = plugins / "recorder.c"
        source.write_text(RECORDER)
        subprocess.run([cc, "-shared", "-fPIC", f'-DDIRECTORY="{site.work}"', "-o",
                        str(plugins / "client_ed25519.so"), str(source)], check=True)
        env = {**SMTP_ENV, "MARIADB_PLUGIN_DIR": str(plugins)}
        code, ran, _, stderr = as_caller(site, "pw", env)
        assert not list(site.work.glob("loaded-by-*")), list(site.work.glob("loaded-by-*"))
        assert (code, ran, stderr) == (0, True, ""), stderr
    finally:
        server.sql("SET sql_log_bin = 0; DROP USER IF EXISTS 'vpop_ed'@'localhost'")


def test_a_listed_callers_umask_does_not_shape_what_the_worker_makes(site: LoginSite) -> None:
    """The vpopmail user's work (the user directory a login makes again) takes none of the
    caller's umask: 777 would leave a directory no one may enter (mode 000), every later
    login and delivery of that user failing."""
    without_fallbacks(site.inst)
    shutil.rmtree(site.user_dir("alice"))
    code, ran, _, stderr = as_caller_in(site, "pw", "umask 777")
    assert (code, ran, stderr) == (0, True, ""), stderr
    assert site.user_dir("alice").stat().st_mode & 0o777 == 0o700
    assert (site.user_dir("alice") / "Maildir" / "new").is_dir()


def test_a_listed_callers_file_size_limit_does_not_cut_what_the_worker_writes(
        site: LoginSite) -> None:
    """The vpopmail user's writes take none of the caller's file-size limit: a login that
    rehashes the password (passwords.rehash_on_login) rewrites vpasswd and vpasswd.cdb, and
    1 KiB let the small vpasswd through but not the cdb, leaving the two apart."""
    if site.inst.backend != "cdb":
        pytest.skip("files: the cdb backend")
    from vpopmail.cdb import lookup

    without_fallbacks(site.inst)
    site.inst.set_config("passwords", "scheme", "md5-crypt")
    site.ok("vpasswd", "alice@example.com", "pw")
    site.inst.set_config("passwords", "scheme", "sha512-crypt")
    site.inst.set_config("passwords", "rehash_on_login", True)
    code, ran, _, stderr = as_caller_in(site, "pw", "ulimit -f 2")  # 512-byte blocks
    assert (code, ran, stderr) == (0, True, ""), stderr
    line = next(line for line in (site.domain_dir / "vpasswd").read_text().splitlines()
                if line.startswith("alice:"))
    indexed = lookup(str(site.domain_dir / "vpasswd.cdb"), b"alice")
    assert line.split(":")[1].startswith("$6$"), line
    assert indexed is not None and indexed.startswith(b"$6$"), indexed


def test_a_listed_callers_program_is_not_an_oracle_for_the_vpopmail_users_files(
        site: LoginSite) -> None:
    """The program to run is never looked at with the worker's rights, the vpopmail user's:
    the front end runs it as the caller, so that a caller with one password cannot tell which
    users, files or directories the vpopmail user's domains hold (here: alice's directory,
    and no bob's; before, one answer said "Permission denied", the other "No such file").
    A bare name, which a search of PATH with those rights would need, is refused."""
    without_fallbacks(site.inst)
    answers = []
    for name in ("alice", "bob"):
        program = str(site.domain_dir / name)
        login = site.login("alice@example.com", "pw", env=SMTP_ENV, program=[program],
                           wrap=tuple(as_user_argv(CALLER)))
        assert (login.code, login.ran) == (111, False), login
        answers.append(login.stderr.replace(program, "PROGRAM"))
    said = "vchkpw: deferred: cannot run the program of the exec plan\n"  # the front end's
    assert answers == [said, said], answers
    bare = site.login("alice@example.com", "pw", env=SMTP_ENV, program=["true"],
                      wrap=tuple(as_user_argv(CALLER)))
    assert bare.code == 111 and "names its program with a path (/bin/true)" in bare.stderr, bare

# -- a real SMTP server: Debian's qpsmtpd, whose auth_checkpassword plugin runs vchkpw as
# -- the qpsmtpd user (sudo is not installed here; with sudo it would run it as vpopmail) ----

FORKSERVER = "/usr/bin/qpsmtpd-forkserver"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_qpsmtpd(site: LoginSite, config: Path, port: int) -> subprocess.Popen[bytes]:
    """qpsmtpd on 127.0.0.1:``port`` as the qpsmtpd user, SMTP AUTH by the install's vchkpw;
    once it answers."""
    config.mkdir(mode=0o755)
    for name, text in {
        "me": "mail.example.com",
        "plugin_dirs": "/usr/share/qpsmtpd/plugins",
        "loglevel": "7",
        "plugins": f"auth/auth_checkpassword checkpw {site.inst.bin / 'vchkpw'} true /bin/true\n"
                   "rcpt_ok",
    }.items():
        (config / name).write_text(text + "\n")
    log = open(config.parent / "qpsmtpd.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([FORKSERVER, "-l", "127.0.0.1", "-p", str(port), "-u", "qpsmtpd",
                             "-H"], stdout=log, stderr=log, cwd="/",
                            env={**CLEAN_ENV, "QPSMTPD_CONFIG": str(config)})
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError((config.parent / "qpsmtpd.log").read_text())


def smtp_auth(port: int, password: str) -> int:
    """AUTH PLAIN as alice@example.com: the server's reply code."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.example.net")
        try:
            return client.login("alice@example.com", password)[0]
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code


@pytest.mark.skipif(not os.path.exists(FORKSERVER), reason="needs Debian's qpsmtpd")
def test_qpsmtpds_smtp_auth_through_the_server(root_vhome: Install) -> None:
    """Debian's qpsmtpd runs vchkpw as its own user: with ``qpsmtpd`` listed, a right password
    is accepted (235) and a wrong one refused (535), through the server."""
    if shutil.which("sudo"):
        pytest.skip("the plugin would run vchkpw through sudo")
    port = free_port()
    root_vhome.set_config("server", "smtp_auth_callers", "qpsmtpd")
    with served_login_site(root_vhome) as site:
        proc = start_qpsmtpd(site, root_vhome.prefix.parent / "qpsmtpd", port)
        try:
            without_fallbacks(root_vhome)
            assert smtp_auth(port, "pw") == 235
            assert smtp_auth(port, "wrong") == 535
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_vcheck_faults_listed_callers_without_a_vchkpw_front_end(root_vhome: Install) -> None:
    """Without the C vchkpw (an install without a compiler, or --no-frontends) nothing takes
    a listed caller's login to the server: its SMTP AUTH fails (111) as with the server
    down, and vcheck's step 12 must say so, not pass."""
    root_vhome.set_config("server", "smtp_auth_callers", CALLER)
    site = LoginSite(root_vhome, unprivileged=True)
    try:
        site.ok("vadddomain", DOMAIN, "secret")
        site.add("alice", "pw")
        for name in ("vdelivermail", "vchkpw"):  # the Python programs in bin/, as installed
            shutil.copy2(root_vhome.prefix / "libexec" / name, root_vhome.bin / name)
        code, ran, _, _ = as_caller(site, "pw")
        assert (code, ran) == (111, False)
        checked = root_vhome.run("vcheck", "alice@example.com")
        assert checked.returncode != 0, checked.stdout
        assert "server.smtp_auth_callers" in checked.stdout, checked.stdout
    finally:
        site.syslog.close()
