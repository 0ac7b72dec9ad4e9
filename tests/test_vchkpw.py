"""The installed vchkpw, run as a POP3/IMAP server or SMTP AUTH runs it, against the C program's
observed behaviour (reference c-vpopmail-observed.md section 6) with the checkpassword exit
codes (1 rejected, 2 misuse, 111 temporary) in place of C's private ones.

Every test runs in both install modes: a sandbox owned by the user running the tests, and a
root install for the vpopmail user (uid 89) where vchkpw starts as root, as under tcpserver.
And on both user backends (both_backends, tests/conftest.py): the cdb files, and MariaDB in the
root install.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from install_site import HEAVY, NO_BACKEND, Install
from delivery_site import DOMAIN
from login_site import POP_ENV, STAMP, Login, LoginSite
from server_site import running_server
from ucspi_site import binary, remote_env, tcpserver
from vpopmail import cdb
from vpopmail.stores.sql import LAYOUTS

pytestmark = [pytest.mark.both_backends, pytest.mark.through_server]

PASSWORD = "Secret-42"


@pytest.fixture
def site(each_install: Install) -> Iterator[LoginSite]:
    site = LoginSite.create(each_install, each_install.mode == "root")
    site.add("alice", PASSWORD)
    yield site
    site.syslog.close()


def env(**changes: str) -> dict[str, str]:
    values = dict(POP_ENV, **changes)
    return {k: v for k, v in values.items() if v}


# -- success: what the program is exec'd with --------------------------------------------------

def test_pop_login_runs_program_as_domain_owner_in_user_dir(site: LoginSite) -> None:
    result = site.login("alice@example.com", PASSWORD)
    assert (result.code, result.stderr, result.ran) == (0, "", True)
    home = str(site.user_dir("alice"))
    assert result.env["uid"] == str(site.inst.uid)
    assert result.env["gid"] == str(site.inst.gid)
    assert result.env["groups"] == str(site.inst.gid)
    assert result.env["cwd"] == os.path.realpath(home)
    assert (result.env["HOME"], result.env["USER"], result.env["SHELL"],
            result.env["VPOPUSER"]) == (home, "alice", "NOLOGIN", "alice@example.com")
    for name in ("TCPLOCALPORT", "TCPREMOTEIP", "PATH"):
        assert result.env[name] == POP_ENV[name]
    assert "MAILDIR" not in result.env


def test_program_exit_code_is_passed_on(site: LoginSite) -> None:
    assert site.login("alice@example.com", PASSWORD, env=env(DUMP_EXIT="7")).code == 7


def test_lastauth_records_ip_and_time(site: LoginSite) -> None:
    before = time.time()
    assert site.login("alice@example.com", PASSWORD).code == 0
    when, ip = site.inst.last_login("alice@example.com") or (0, "")
    assert ip == "192.0.2.10"
    assert before - 1 <= when <= time.time()


@pytest.mark.cdb_only("the lastauth file itself: its bytes, owner and mode")
def test_lastauth_file(site: LoginSite) -> None:
    assert site.login("alice@example.com", PASSWORD).code == 0
    lastauth = site.user_dir("alice") / "lastauth"
    assert lastauth.read_bytes() == b"192.0.2.10"
    st = lastauth.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (site.inst.uid, site.inst.gid,
                                                                0o600)



@pytest.mark.cdb_only("the lastauth file itself: kept or replaced")
def test_lastauth_from_the_same_address_only_gets_a_new_time(site: LoginSite) -> None:
    """A client polling from one place: the file stays (same inode), its time moves; another
    address, or a file vpopmail did not write as it would (mode, owner), is written afresh."""
    lastauth = site.user_dir("alice") / "lastauth"
    assert site.login("alice@example.com", PASSWORD).code == 0
    first = lastauth.stat()
    os.utime(lastauth, (first.st_atime - 100, first.st_mtime - 100))
    assert site.login("alice@example.com", PASSWORD).code == 0
    again = lastauth.stat()
    assert again.st_ino == first.st_ino and again.st_mtime >= first.st_mtime - 1
    assert lastauth.read_bytes() == b"192.0.2.10"
    assert site.login("alice@example.com", PASSWORD, env=env(TCPREMOTEIP="192.0.2.11")).code == 0
    moved = lastauth.stat()
    assert moved.st_ino != first.st_ino and lastauth.read_bytes() == b"192.0.2.11"
    lastauth.chmod(0o644)
    assert site.login("alice@example.com", PASSWORD, env=env(TCPREMOTEIP="192.0.2.11")).code == 0
    st = lastauth.stat()
    assert st.st_ino != moved.st_ino and stat.S_IMODE(st.st_mode) == 0o600
    assert lastauth.read_bytes() == b"192.0.2.11"

def test_ipv6_client_kept_as_is_in_lastauth(site: LoginSite) -> None:
    assert site.login("alice@example.com", PASSWORD, env=env(TCPREMOTEIP="2001:db8::7")).code == 0
    assert (site.inst.last_login("alice@example.com") or (0, ""))[1] == "2001:db8::7"


@pytest.mark.parametrize("login", ["alice@example.com", "ALICE@Example.COM", "alice%example.com",
                                   "alice/example.com"])
def test_login_forms(site: LoginSite, login: str) -> None:
    result = site.login(login, PASSWORD)
    assert result.code == 0, result
    assert result.env["VPOPUSER"] == login.lower()
    assert result.env["USER"] == "alice"


def test_only_ascii_letters_are_folded(site: LoginSite) -> None:
    """C lower-cases a login with tolower(): ASCII only. Python's str.lower() folds the Kelvin
    sign (U+212A) to ``k``, so a login no user has was taken for kate's (and logged, and
    set as VPOPUSER, as kate's)."""
    site.add("kate", PASSWORD)
    first = site.login("kate@example.com", PASSWORD)
    assert first.code == 0, (first, site.syslog.texts())
    result = site.login("\u212aate@example.com", PASSWORD)
    assert (result.code, result.ran) == (1, False), result


def test_long_input_is_not_truncated(site: LoginSite) -> None:
    """C kept 155 bytes of fd 3; a 128-character password after a long login still works."""
    password = "p" * 128
    site.ok("vpasswd", "alice@example.com", password)
    stamp = "<" + "1" * 300 + "@anchor.test>"
    assert len(f"alice@example.com\0{password}\0{stamp}\0") <= 512
    assert site.login("alice@example.com", password, stamp).code == 0


def test_missing_maildir_is_recreated_at_login(site: LoginSite) -> None:
    maildir = site.maildir("alice")
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).rmdir()
    assert site.login("alice@example.com", PASSWORD).code == 0
    assert all((maildir / sub).is_dir() for sub in ("new", "cur", "tmp"))
    assert (maildir / "new").stat().st_uid == site.inst.uid


# -- rejections, misuse, temporary failures ----------------------------------------------------

@pytest.mark.parametrize("login,password", [
    ("alice@example.com", "wrong"), ("alice@example.com", PASSWORD.upper()),
    ("nobody@example.com", PASSWORD), ("alice@nowhere.test", PASSWORD), ("alice", PASSWORD),
    ("alice@example.com", ""), ("", PASSWORD), ("al ice@example.com", PASSWORD),
    ("a:b@example.com", PASSWORD),
])
def test_rejected_logins_exit_1_and_run_nothing(site: LoginSite, login: str, password: str
                                                ) -> None:
    result = site.login(login, password)
    assert (result.code, result.ran, result.stderr) == (1, False, "")


def test_syslog_texts_as_c(site: LoginSite) -> None:
    site.inst.set_config("logging", "level", "y")
    site.login("alice@example.com", PASSWORD)
    site.login("alice@example.com", "wrong")
    site.login("nobody@example.com", "x")
    site.login("alice@example.com", "")
    site.login("", "x")
    site.login("alice@example.com", PASSWORD, env=env(TCPLOCALPORT="11110"))
    assert site.syslog.texts() == [
        "vchkpw-pop3: (PLAIN) login success alice@example.com:192.0.2.10",
        "vchkpw-pop3: password fail alice@example.com:192.0.2.10",
        "vchkpw-pop3: vpopmail user not found nobody@example.com:192.0.2.10",
        "vchkpw-pop3: null password given alice@example.com:192.0.2.10",
        "vchkpw-pop3: null user name given :192.0.2.10",
        "vchkpw-11110: (PLAIN) login success alice@example.com:192.0.2.10",
    ]


def test_syslog_record_format(site: LoginSite) -> None:
    site.login("alice@example.com", "wrong")
    [message] = site.syslog.messages()
    assert message.startswith("<21>")  # facility mail (2) * 8 + notice (5)
    assert " vpopmail[" in message and message.endswith(
        "]: vchkpw-pop3: password fail alice@example.com:192.0.2.10")


def test_passwords_are_logged_only_when_asked(site: LoginSite) -> None:
    for level in ("e", "y"):
        site.inst.set_config("logging", "level", level)
        site.login("alice@example.com", "Guess-Me")
        assert not any("Guess-Me" in m for m in site.syslog.messages())
    site.inst.set_config("logging", "level", "p")
    site.login("alice@example.com", "Guess-Me")
    assert site.syslog.texts() == [
        "vchkpw-pop3: password fail (pass: 'Guess-Me') alice@example.com:192.0.2.10"]


def test_default_level_logs_failures_not_successes(site: LoginSite) -> None:
    site.login("alice@example.com", PASSWORD)
    site.login("alice@example.com", "wrong")
    assert site.syslog.texts() == ["vchkpw-pop3: password fail alice@example.com:192.0.2.10"]


def test_login_with_newline_cannot_forge_log_lines(site: LoginSite) -> None:
    site.login("x\nvchkpw-pop3: (PLAIN) login success root@example.com", "pw")
    assert all("\n" not in m for m in site.syslog.messages())


def test_fd3_closed_is_misuse(site: LoginSite) -> None:
    result = site.login("alice@example.com", PASSWORD, fd3=False)
    assert result.code == 2 and not result.ran
    assert result.stderr == ("vchkpw-0: vchkpw is only for talking with qmail-popup and "
                             "qmail-pop3d. It is not for runnning on the command line.\n")


@pytest.mark.cdb_only(NO_BACKEND)  # refused before any lookup
@pytest.mark.parametrize("data", [b"alice@example.com", b"alice@example.com\0" + b"x",
                                  b"a\0" + b"p" * 600 + b"\0\0"])
def test_malformed_or_oversized_input_is_misuse(site: LoginSite, data: bytes) -> None:
    result = site.login("", data=data)
    assert (result.code, result.ran) == (2, False)


def test_no_program_is_misuse(site: LoginSite) -> None:
    result = site.login("alice@example.com", PASSWORD, program=[])
    assert result.code == 2
    assert "no program to run after the login" in result.stderr, result


def test_exec_failure_is_temporary(site: LoginSite) -> None:
    """Exit 111, and the reason on stderr too (the POP3 service's log), not only in a syslog
    that may not be running (before: nothing at all by hand or without syslogd)."""
    result = site.login("alice@example.com", PASSWORD, program=["/nonexistent/prog"])
    assert result.code == 111
    assert result.stderr == ("vchkpw-pop3: cannot run /nonexistent/prog (No such file or "
                             "directory) alice@example.com:192.0.2.10\n"), result


@pytest.mark.parametrize("stderr", ["closed", "broken pipe"])
@pytest.mark.parametrize("program, code", [([], 2), (["/nonexistent/prog"], 111)])
def test_misuse_or_fault_keeps_its_code_without_a_stderr(site: LoginSite, program: list[str],
                                                         code: int, stderr: str) -> None:
    """A misuse (2) or local fault (111) whose stderr is closed, or a pipe whose reader is
    gone (a dead log process), keeps its exit code: never 1, which qmail-popup reads as a
    wrong password (before: the write of the reason raised, and so did the wrapper's flush)."""
    source = site.work / "fd3-nostderr"
    source.write_bytes(f"alice@example.com\0{PASSWORD}\0{STAMP}\0".encode())
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(["/bin/sh", "-c", 'exec "$0" "$@" 3<"$SOURCE"' +
                                 (" 2>&-" if stderr == "closed" else ""),
                                 str(site.inst.bin / "vchkpw"), *program],
                                stdout=subprocess.PIPE, stderr=write,
                                env=dict(POP_ENV, SOURCE=str(source)), cwd="/", timeout=30)
    finally:
        os.close(write)
    assert result.returncode == code, result


def test_program_on_path_is_one_the_domain_owner_may_run(site: LoginSite) -> None:
    """A program of that name only root may run comes first on PATH: the direct program's
    execve as the domain owner fails with EACCES and goes on to the next one, as execvp; the
    server looked with its own (root's) rights, so its front end was handed the first one
    and answered 111."""
    first, second = site.work / "path-first", site.work / "path-second"
    for directory, mode in ((first, 0o700), (second, 0o755)):
        directory.mkdir(mode=0o755)
        (directory / "dumped").write_bytes(site.dump.read_bytes())
        (directory / "dumped").chmod(mode)
    result = site.login("alice@example.com", PASSWORD,
                        env=env(PATH=f"{first}:{second}:/usr/bin:/bin"),
                        program=["dumped", str(site.record)])
    assert (result.code, result.ran, result.stderr) == (0, True, ""), result


def broken_file_is_temporary(site: LoginSite, path: Path) -> None:
    """C answered 3 ("user not found") and the server told the user the password was wrong."""
    path.write_bytes(path.read_bytes()[:100])
    result = site.login("alice@example.com", PASSWORD)
    assert (result.code, result.ran) == (111, False)
    assert any("user database unreadable" in t for t in site.syslog.texts())


def test_program_is_looked_up_on_path(site: LoginSite) -> None:
    """A program named without a ``/`` is found on the PATH vchkpw was given, as execvp finds
    it (``qmail-popup host vchkpw qmail-pop3d Maildir``): past a directory that is not there
    and a file of that name that may not be run; not found at all, a temporary failure."""
    unrunnable = site.work / "unrunnable"
    unrunnable.mkdir(exist_ok=True)
    (unrunnable / site.dump.name).write_text("#!/bin/sh\nexit 9\n")
    unrunnable.chmod(0o755)
    path = f"/nonexistent:{unrunnable}:{site.dump.parent}:/usr/bin:/bin"
    found = site.login("alice@example.com", PASSWORD, env=env(PATH=path),
                       program=[site.dump.name, str(site.record)])
    assert (found.code, found.ran) == (0, True), found
    missing = site.login("alice@example.com", PASSWORD, env=env(PATH=path),
                         program=["no-such-program"])
    assert (missing.code, missing.ran) == (111, False), missing


def test_broken_users_cdb_is_temporary_not_rejection(site: LoginSite) -> None:
    broken_file_is_temporary(site, site.inst.qmaildir / "users" / "cdb")


@pytest.mark.cdb_only("vpasswd.cdb is the cdb backend's file (SQL down: test_sql_backend.py)")
def test_broken_vpasswd_cdb_is_temporary_not_rejection(site: LoginSite) -> None:
    broken_file_is_temporary(site, site.domain_dir / "vpasswd.cdb")


# -- services and flags ------------------------------------------------------------------------

@pytest.mark.parametrize("port,flag,name", [("110", "-p", "pop"), ("995", "-p", "pop"),
                                            ("143", "-i", "imap"), ("993", "-i", "imap"),
                                            ("25", "-s", "smtp"), ("587", "-s", "smtp")])
def test_service_flags_deny(site: LoginSite, port: str, flag: str, name: str) -> None:
    assert site.login("alice@example.com", PASSWORD, env=env(TCPLOCALPORT=port)).code == 0
    site.ok("vmoduser", flag, "alice@example.com")
    result = site.login("alice@example.com", PASSWORD, env=env(TCPLOCALPORT=port))
    assert (result.code, result.ran) == (1, False)
    assert site.syslog.texts()[-1].endswith(f"{name} access denied alice@example.com:192.0.2.10")


def test_webmail_is_pop_or_imap_from_localhost(site: LoginSite) -> None:
    site.ok("vmoduser", "-w", "alice@example.com")
    assert site.login("alice@example.com", PASSWORD, env=env(TCPREMOTEIP="127.0.0.1")).code == 1
    assert site.syslog.texts()[-1] == ("vchkpw-webmail: webmail access denied "
                                       "alice@example.com:127.0.0.1")
    smtp = env(TCPREMOTEIP="127.0.0.1", TCPLOCALPORT="25")
    assert site.login("alice@example.com", PASSWORD, env=smtp).code == 0
    assert site.login("alice@example.com", PASSWORD).code == 0


def test_bounce_mail_flag_does_not_block_login(site: LoginSite) -> None:
    site.ok("vmoduser", "-b", "alice@example.com")
    assert site.login("alice@example.com", PASSWORD).code == 0


def test_domain_limits_apply_unless_override(site: LoginSite) -> None:
    (site.domain_dir / ".qmailadmin-limits").write_text("disable_pop\n")
    assert site.login("alice@example.com", PASSWORD).code == 1
    site.ok("vmoduser", "-o", "alice@example.com")
    assert site.login("alice@example.com", PASSWORD).code == 0


@pytest.mark.parametrize("port,program,service", [
    ("", "/bin/true", "smtp"), ("", "imapd", "imap"), ("", "qmail-pop3d", "pop"),
    ("11110", "/bin/true", "smtp")])
def test_service_guessed_from_program_on_other_ports(site: LoginSite, port: str, program: str,
                                                     service: str) -> None:
    flag = {"smtp": "-s", "imap": "-i", "pop": "-p"}[service]
    site.ok("vmoduser", flag, "alice@example.com")
    linked = site.work / program.rsplit("/", 1)[-1]
    if not linked.exists():
        linked.symlink_to(site.dump)
    result = site.login("alice@example.com", PASSWORD, env=env(TCPLOCALPORT=port),
                        program=[str(linked), str(site.record)])
    assert result.code == 1
    assert site.syslog.texts()[-1].startswith(f"vchkpw-{port or 0}: {service} access denied")


def test_smtp_auth_keeps_ids_and_directory(site: LoginSite) -> None:
    result = site.login("alice@example.com", PASSWORD, env=env(TCPLOCALPORT="587"))
    assert result.code == 0
    assert result.env["uid"] == str(os.getuid())
    assert result.env["cwd"] == "/"
    assert (site.inst.last_login("alice@example.com") or (0, ""))[1] == "192.0.2.10"


@pytest.mark.parametrize("groups", [[], [0, 5]], ids=["no-groups", "groups"])
def test_root_owned_domain_logins_are_refused_in_every_path(site: LoginSite, server_mode: str,
                                                            groups: list[int]) -> None:
    """A domain owned by uid 0 (vadddomain -i 0): a POP login would run the program as root.
    server.root_logins (off) refuses it with 111, nothing written: before, only the front
    end's check of a plan that changes ids did, so a login ran as root directly (the server
    down) and through the server when the caller (tcpserver as root) had no supplementary
    groups (the plan then keeps the caller's ids and is not checked). A sandbox installed by
    root, whose every domain is root's, logs in as root in every path, with groups too
    (before, its front end refused a caller with groups)."""
    if os.geteuid() != 0:
        pytest.skip("needs vchkpw started as root")
    site.ok("vadddomain", "-i", "0", "-g", "0", "root.test", "pw")
    site.ok("vadduser", "bob@root.test", PASSWORD)
    before = site.inst.last_login("bob@root.test")
    source = site.work / "fd3-root"
    source.write_bytes(f"bob@root.test\0{PASSWORD}\0{STAMP}\0".encode())

    def login() -> Login:
        result = subprocess.run(["/bin/sh", "-c", 'exec "$0" "$@" 3<"$SOURCE"',
                                 str(site.inst.bin / "vchkpw"), str(site.dump), str(site.record)],
                                capture_output=True, env=dict(POP_ENV, SOURCE=str(source)),
                                cwd="/", preexec_fn=lambda: os.setgroups(groups), timeout=30)
        return Login(result, site.record)

    if site.inst.uid == 0:  # the "user" mode run by root: the sandbox, with and without server
        for result in (login(), *through_a_server(site, server_mode, login)):
            assert (result.code, result.env.get("uid")) == (0, "0"), result
        return
    result = login()
    assert (result.code, result.ran) == (111, False), result
    assert site.inst.last_login("bob@root.test") == before
    assert site.login("bob@root.test", PASSWORD, env=env(TCPLOCALPORT="587")).code == 0


def through_a_server(site: LoginSite, server_mode: str, login: Callable[[], Login]
                     ) -> list[Login]:
    """``login()`` through a server started for it (none if the test has one already)."""
    if server_mode == "server":
        return []
    with running_server(site.inst):
        return [login()]


# -- defaults for bare names -------------------------------------------------------------------

def test_bare_name_with_vpopmail_domain(site: LoginSite) -> None:
    result = site.login("alice", PASSWORD, env=env(VPOPMAIL_DOMAIN="Example.com"))
    assert result.code == 0
    assert result.env["VPOPUSER"] == "alice"


def test_bare_name_with_defaultdomain_file(site: LoginSite) -> None:
    (site.inst.prefix / "etc" / "defaultdomain").write_text("example.com\n")
    assert site.login("alice", PASSWORD).code == 0


def test_bare_name_by_local_ip_map(site: LoginSite) -> None:
    site.ok("vipmap", "-a", "192.0.2.1", DOMAIN)
    assert site.ok("vipmap", "-p") == f"192.0.2.1 {DOMAIN}\n"
    assert site.login("alice", PASSWORD).code == 0
    assert site.login("alice", PASSWORD, env=env(TCPLOCALIP="192.0.2.99")).code == 1
    site.ok("vipmap", "-d", "192.0.2.1", DOMAIN)
    assert site.ok("vipmap", "-p") == ""
    assert site.login("alice", PASSWORD).code == 1


def test_vipmap_refuses_bad_input(site: LoginSite) -> None:
    assert site.inst.run("vipmap", "-a", "not-an-ip", DOMAIN).returncode != 0
    assert site.inst.run("vipmap", "-a", "192.0.2.5", "nowhere.test").returncode != 0
    assert site.inst.run("vipmap", "-d", "192.0.2.5", DOMAIN).returncode != 0
    assert site.inst.run("vipmap").returncode == 255


# -- APOP, CRAM-MD5, learning and rehashing ----------------------------------------------------

@pytest.fixture
def clear_site(site: LoginSite) -> LoginSite:
    site.inst.set_config("passwords", "clear_passwords", True)
    site.add("tim", "tanstaaftanstaaf")
    site.add("mrose", "tanstaaf")
    return site


#: RFC 1939's APOP example (mrose, tanstaaf) and the CRAM-MD5 digest of the same stamp
STAMP = "<1896.697170952@dbc.mtview.ca.us>"
APOP = "c4c9334bac560ecc979e58001b3e22fb"
CRAM = "c02dd90e04576e500bb447ed7476be15"  # HMAC-MD5("tanstaaf", STAMP)


def test_apop_rfc1939_vector(clear_site: LoginSite) -> None:
    assert clear_site.login("mrose@example.com", APOP, STAMP).code == 0
    assert clear_site.login("mrose@example.com", APOP[:-1] + "c", STAMP).code == 1


def test_cram_md5_rfc2195_vector(clear_site: LoginSite) -> None:
    stamp = "<1896.697170952@postoffice.reston.mci.net>"
    digest = "b913a602c7eda7a495b4e6e7334d3890"
    smtp = env(TCPLOCALPORT="25")
    clear_site.inst.set_config("logging", "level", "y")
    assert clear_site.login("tim@example.com", digest, stamp, env=smtp).code == 0
    assert clear_site.syslog.texts()[-1] == ("vchkpw-smtp: (CRAM-MD5) login success "
                                             "tim@example.com:192.0.2.10")
    assert clear_site.login("tim@example.com", digest, stamp).code == 1  # not for POP
    assert clear_site.login("tim@example.com", digest, "", env=smtp).code == 1


def test_plain_password_still_works_with_clear_passwords(clear_site: LoginSite) -> None:
    assert clear_site.login("tim@example.com", "tanstaaftanstaaf").code == 0


def clear_password(site: LoginSite, name: str) -> None:
    """Store ``name`` with no password at all (encrypted and clear text empty)."""
    api = site.inst.api()
    try:
        user, entry = api.get_user(f"{name}@{DOMAIN}")
        user.passwd = user.clear = ""
        api.backend.update_users(entry, [user])
    finally:
        api.backend.close()


def test_learn_passwords(site: LoginSite) -> None:
    site.inst.set_config("passwords", "learn_passwords", True)
    site.inst.set_config("passwords", "clear_passwords", True)
    clear_password(site, "alice")
    assert site.login("alice@example.com", "Learned-1").code == 0
    alice = site.inst.vuser("alice@example.com")
    assert alice.passwd.startswith("$6$") and alice.clear == "Learned-1"
    assert site.login("alice@example.com", "Learned-1").code == 0
    assert site.login("alice@example.com", "other").code == 1


def test_no_password_rejected_without_learning(site: LoginSite) -> None:
    clear_password(site, "alice")
    assert site.login("alice@example.com", "anything").code == 1


def set_mrose_hash(site: LoginSite, passwd: str) -> None:
    """Store ``passwd`` as mrose's hash, the clear text kept."""
    api = site.inst.api()
    try:
        user, entry = api.get_user(f"mrose@{DOMAIN}")
        user.passwd = passwd
        api.backend.update_users(entry, [user])
    finally:
        api.backend.close()


def test_no_password_rejected_for_apop_and_cram_md5_too(clear_site: LoginSite) -> None:
    """An empty hash with the clear text kept: C vchkpw answers "user has no password" whatever
    APOP or CRAM-MD5 proved (found by the differential fuzz against C 5.4.33)."""
    set_mrose_hash(clear_site, "")
    clear_site.inst.set_config("logging", "level", "y")
    assert clear_site.login("mrose@example.com", APOP, STAMP).code == 1
    assert clear_site.syslog.texts()[-1] == ("vchkpw-pop3: user has no password "
                                             "mrose@example.com:192.0.2.10")
    assert clear_site.login("mrose@example.com", CRAM, STAMP,
                            env=env(TCPLOCALPORT="25")).code == 1
    assert clear_site.login("mrose@example.com", "tanstaaf", STAMP).code == 1


@pytest.mark.parametrize("lock", ["!", "*"])
def test_a_locked_account_refuses_apop_and_cram_md5_too(clear_site: LoginSite,
                                                        lock: str) -> None:
    """A hash prefixed with ``!`` or ``*`` (the usual way to lock an account) refuses the
    digest logins as it refuses the password, although the clear text is kept. C vchkpw
    5.4.33 logged such an account in by APOP or CRAM-MD5 (found by the differential fuzz
    against C)."""
    set_mrose_hash(clear_site, lock + clear_site.inst.vuser(f"mrose@{DOMAIN}").passwd)
    assert clear_site.login("mrose@example.com", APOP, STAMP).code == 1
    assert clear_site.login("mrose@example.com", CRAM, STAMP,
                            env=env(TCPLOCALPORT="25")).code == 1
    assert clear_site.login("mrose@example.com", "tanstaaf").code == 1


def test_rehash_on_login(site: LoginSite) -> None:
    site.inst.set_config("passwords", "scheme", "md5-crypt")
    site.add("carol", "Carol-pw")
    assert site.inst.vuser("carol@example.com").passwd.startswith("$1$")
    site.inst.set_config("passwords", "scheme", "sha512-crypt")
    assert site.login("carol@example.com", "Carol-pw").code == 0
    assert site.inst.vuser("carol@example.com").passwd.startswith("$1$")  # off by default
    site.inst.set_config("passwords", "rehash_on_login", True)
    assert site.login("carol@example.com", "Carol-pw").code == 0
    assert site.inst.vuser("carol@example.com").passwd.startswith("$6$")
    assert site.login("carol@example.com", "Carol-pw").code == 0
    if site.inst.backend == "cdb":  # the rewritten files stay the owner's (vchkpw ran as root)
        assert (site.domain_dir / "vpasswd.cdb").stat().st_uid == site.inst.uid


# -- Dovecot's checkpassword conventions -------------------------------------------------------

def dovecot_env(**changes: str) -> dict[str, str]:
    values = {"ORIG_UID": str(os.getuid()), "SERVICE": "imap", "PROTO": "TCP",
              "TCPLOCALPORT": "10143", "TCPREMOTEIP": "127.0.0.9", "TCPLOCALIP": "127.0.0.1",
              "EXTRA": "userdb_mail"}
    values.update(changes)
    return values


def test_dovecot_login_reports_ids_instead_of_setuid(site: LoginSite) -> None:
    result = site.login("alice@example.com", PASSWORD, "", env=dovecot_env())
    assert result.code == 0
    assert result.env["uid"] == str(os.getuid())
    assert result.env["USER"] == "alice@example.com"
    assert (result.env["userdb_uid"], result.env["userdb_gid"]) == (str(site.inst.uid),
                                                                  str(site.inst.gid))
    assert result.env["EXTRA"] == "userdb_mail userdb_uid userdb_gid"
    assert result.env["HOME"] == str(site.user_dir("alice"))


def test_dovecot_userdb_lookup(site: LoginSite) -> None:
    lookup = dovecot_env(AUTHORIZED="1")
    result = site.login("alice@example.com", "", "", env=lookup)
    assert (result.code, result.env["AUTHORIZED"]) == (0, "2")
    assert site.login("nobody@example.com", "", "", env=lookup).code == 3
    assert site.login("alice@example.com", "", "", env=env(AUTHORIZED="1")).code == 1


# -- roaming users -----------------------------------------------------------------------------

@pytest.fixture
def roaming(site: LoginSite) -> LoginSite:
    site.inst.set_config("relay", "roaming_users", True)
    return site


def open_smtp(site: LoginSite) -> list[str]:
    """The roaming IPs as open-smtp lines, as the backend keeps them: the lines of the open-smtp
    file in file order, or the rows of the SQL relay table by IP."""
    api = site.inst.api()
    try:
        return [line.decode() for _, line in api.stores.relay().entries()]
    finally:
        api.backend.close()


def relay_files(site: LoginSite) -> dict[str, int]:
    """The relay files the backend keeps in etc/ and their modes (open-smtp only for cdb)."""
    files = {"tcp.smtp.cdb": 0o644, "open-smtp.lock": 0o600}
    if site.inst.backend == "cdb":
        files["open-smtp"] = 0o644
    else:
        assert not (site.inst.prefix / "etc" / "open-smtp").exists()
    return files


def cdb_keys(site: LoginSite) -> list[bytes]:
    with cdb.CdbReader(str(site.inst.prefix / "etc" / "tcp.smtp.cdb")) as reader:
        return [key for key, _ in reader.items()]


def test_roaming_login_opens_relay(roaming: LoginSite) -> None:
    before = int(time.time())
    assert roaming.login("alice@example.com", PASSWORD).code == 0
    [line] = open_smtp(roaming)
    rule, stamp = line.split("\t")
    assert rule == '192.0.2.10:allow,RELAYCLIENT="",RBLSMTPD=""'
    assert before <= int(stamp) <= time.time()
    etc = roaming.inst.prefix / "etc"
    expected = subprocess.run(["cdb", "-d", str(etc / "tcp.smtp.cdb")], capture_output=True,
                              text=True).stdout
    assert expected == ('+4,14:127.->+RELAYCLIENT=\0\n'
                        '+10,25:192.0.2.10->+RELAYCLIENT=\0+RBLSMTPD=\0\n'
                        '+17,25:::ffff:192.0.2.10->+RELAYCLIENT=\0+RBLSMTPD=\0\n\n')
    for name, mode in relay_files(roaming).items():
        st = (etc / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (roaming.inst.uid,
                                                                    roaming.inst.gid, mode)


def test_repeat_login_refreshes_without_rebuild(roaming: LoginSite) -> None:
    assert roaming.login("alice@example.com", PASSWORD).code == 0
    assert roaming.login("alice@example.com", PASSWORD,
                         env=env(TCPREMOTEIP="192.0.2.11")).code == 0
    cdb_path = roaming.inst.prefix / "etc" / "tcp.smtp.cdb"
    before = cdb_path.stat()
    time.sleep(1.1)
    assert roaming.login("alice@example.com", PASSWORD).code == 0
    after = cdb_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    stamps = {l.split(":")[0]: int(l.split("\t")[1]) for l in open_smtp(roaming)}
    assert sorted(stamps) == ["192.0.2.10", "192.0.2.11"]
    assert stamps["192.0.2.10"] > stamps["192.0.2.11"]


@pytest.mark.cdb_only("the open-smtp file itself")
@pytest.mark.parametrize("case", ["second name", "read-only"])
def test_a_known_ip_is_refreshed_where_open_smtp_cannot_be_written_in_place(
        roaming: LoginSite, case: str) -> None:
    """A repeat login's time goes in place only into an open-smtp that is the file's one name
    and that the relay's writer may write; otherwise the file is written anew, as before
    the in-place refresh: a second name (a hard-linked backup, ``cp -al``) keeps its bytes,
    and a read-only open-smtp (chmod a-w) still gets the time, not "relay not opened"."""
    etc = roaming.inst.prefix / "etc"
    assert roaming.login("alice@example.com", PASSWORD).code == 0
    backup = roaming.work / "open-smtp.backup"
    if case == "second name":
        os.link(etc / "open-smtp", backup)
    else:
        (etc / "open-smtp").chmod(0o444)
        shutil.copyfile(etc / "open-smtp", backup)
    before = backup.read_bytes()
    time.sleep(1.1)
    assert roaming.login("alice@example.com", PASSWORD).code == 0
    [line] = open_smtp(roaming)
    assert int(line.split("\t")[1]) > int(before.split(b"\t")[1])
    assert backup.read_bytes() == before
    assert not any("relay not opened" in t for t in roaming.syslog.texts())


@pytest.mark.parametrize("case", ["smtp", "no_relay_flag", "no_ip", "domain_limit", "off"])
def test_no_relay_opened(roaming: LoginSite, case: str) -> None:
    login_env = env()
    if case == "smtp":
        login_env = env(TCPLOCALPORT="25")
    elif case == "no_relay_flag":
        roaming.ok("vmoduser", "-r", "alice@example.com")
    elif case == "no_ip":
        login_env = env(TCPREMOTEIP="")
    elif case == "domain_limit":
        (roaming.domain_dir / ".qmailadmin-limits").write_text("disable_external_relay\n")
    else:
        roaming.inst.set_config("relay", "roaming_users", False)
    assert roaming.login("alice@example.com", PASSWORD, env=login_env).code == 0
    assert open_smtp(roaming) == []


def test_ipv6_relay_entry(roaming: LoginSite) -> None:
    assert roaming.login("alice@example.com", PASSWORD, env=env(TCPREMOTEIP="2001:db8::7")
                         ).code == 0
    [line] = open_smtp(roaming)
    assert line.startswith("2001:db8::7")
    assert b"2001:db8::7" in cdb_keys(roaming)


def test_ipv4_client_of_an_ipv6_tcpserver_relays_through_either(roaming: LoginSite) -> None:
    """A POP login of an IPv4 client under ``tcpserver -6`` (TCPREMOTEIP ``::ffff:a.b.c.d``)
    opens the relay for an SMTP tcpserver with and without -6: the cdb holds both forms
    (before: only the mapped one, which an IPv4-only tcpserver never looks up). open-smtp
    gets C's dotted line, which the system's IPv4-only tcprules (C's clearopensmtp and vchkpw
    rebuild with it) compiles; a ``::ffff:`` line stopped it ("unable to parse this line")."""
    assert roaming.login("alice@example.com", PASSWORD,
                         env=env(TCPREMOTEIP="::ffff:192.0.2.7")).code == 0
    [line] = open_smtp(roaming)
    assert line.startswith("192.0.2.7:")
    keys = cdb_keys(roaming)
    assert b"::ffff:192.0.2.7" in keys and b"192.0.2.7" in keys
    work = roaming.inst.prefix / "tcprules-check"
    work.mkdir()
    compiled = subprocess.run(["tcprules", str(work / "out.cdb"), str(work / "out.tmp")],
                              input=line.partition("\t")[0] + "\n", text=True,
                              capture_output=True)
    assert compiled.returncode == 0, compiled.stderr


def test_lock_held_elsewhere_login_succeeds_without_relay(roaming: LoginSite) -> None:
    import fcntl

    roaming.inst.set_config("relay", "lock_timeout", 1)
    assert roaming.login("alice@example.com", PASSWORD, env=env(TCPREMOTEIP="192.0.2.9")
                         ).code == 0  # the lock file now exists with its real owner
    lock_path = roaming.inst.prefix / "etc" / "open-smtp.lock"
    with open(lock_path, "r+") as fh:
        fcntl.lockf(fh, fcntl.LOCK_EX)
        start = time.monotonic()
        result = roaming.login("alice@example.com", PASSWORD)
        waited = time.monotonic() - start
    assert result.code == 0 and result.ran
    assert 0.9 < waited < 10
    assert [l.split(":")[0] for l in open_smtp(roaming)] == ["192.0.2.9"]
    assert any("relay not opened" in t and "File busy" in t for t in roaming.syslog.texts())
    assert roaming.login("alice@example.com", PASSWORD).code == 0
    assert sorted(l.split(":")[0] for l in open_smtp(roaming)) == ["192.0.2.10", "192.0.2.9"]


def test_fifty_simultaneous_logins_lose_no_ip(roaming: LoginSite) -> None:
    """C vchkpw 5.4.33 kept 27 of 30. (Every login waits as long as it must for the relay's
    lock here: on a loaded machine 50 fresh processes can take longer than the 5 s default,
    after which a login goes on without the relay, as
    test_lock_held_elsewhere_login_succeeds_without_relay shows.)"""
    roaming.inst.set_config("relay", "lock_timeout", 120)
    ips = [f"192.0.2.{n}" for n in range(100, 150)]
    vchkpw = str(roaming.inst.bin / "vchkpw")
    source = roaming.work / "fd3-many"
    source.write_bytes(f"alice@example.com\0{PASSWORD}\0{STAMP}\0".encode())
    procs = [subprocess.Popen(["/bin/sh", "-c", f'exec "$0" /bin/true 3<"{source}"', vchkpw],
                              env=env(TCPREMOTEIP=ip), stderr=subprocess.PIPE) for ip in ips]
    said = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 50, (  # what a failed one said, and syslog
        [text for p, text in zip(procs, said) if p.returncode], roaming.syslog.texts())
    assert sorted(l.split(":")[0] for l in open_smtp(roaming)) == sorted(ips)
    keys = set(cdb_keys(roaming))
    assert all(ip.encode() in keys for ip in ips)


def test_clearopensmtp_drops_old_entries_and_rebuilds(roaming: LoginSite,
                                                     request: pytest.FixtureRequest) -> None:
    etc = roaming.inst.prefix / "etc"
    old = int(time.time()) - 181 * 60
    fresh = int(time.time()) - 60
    entries = {"192.0.2.1": str(old), "192.0.2.2": str(fresh), "192.0.2.3": None,  # None: no time
               "192.0.2.4": "", "192.0.2.5": "soon"}
    if roaming.inst.backend == "cdb":
        (etc / "open-smtp").write_text("".join(
            f'{ip}:allow,RELAYCLIENT="",RBLSMTPD=""' + ("" if t is None else f"\t{t}") + "\n"
            for ip, t in entries.items()))
        # the relay's file, as logins make it: the vpopmail user's (root's own, in the sticky
        # etc/ of a root install, that user could not replace)
        os.chown(etc / "open-smtp", roaming.inst.uid, roaming.inst.gid)
    else:
        database = request.getfixturevalue("sql_db")
        database.rows(f"CREATE TABLE relay ({LAYOUTS['relay']})")
        for ip, t in entries.items():
            database.rows(f"INSERT INTO relay VALUES ('{ip}', {'NULL' if t is None else repr(t)})")
    roaming.ok("clearopensmtp")
    assert open_smtp(roaming) == [f'192.0.2.2:allow,RELAYCLIENT="",RBLSMTPD=""\t{fresh}']
    assert cdb_keys(roaming) == [b"127.", b"192.0.2.2", b"::ffff:192.0.2.2"]
    for name in relay_files(roaming):
        st = (etc / name).stat()
        assert (st.st_uid, st.st_gid) == (roaming.inst.uid, roaming.inst.gid)


def test_syntax_error_in_tcp_smtp_keeps_old_cdb(roaming: LoginSite) -> None:
    etc = roaming.inst.prefix / "etc"
    assert roaming.login("alice@example.com", PASSWORD).code == 0
    before = (etc / "tcp.smtp.cdb").read_bytes()
    (etc / "tcp.smtp").write_text("127.:allow,RELAYCLIENT\n")
    assert roaming.login("alice@example.com", PASSWORD, env=env(TCPREMOTEIP="192.0.2.20")
                         ).code == 0
    assert (etc / "tcp.smtp.cdb").read_bytes() == before
    assert any("relay not opened" in t for t in roaming.syslog.texts())


# -- the hot path stays lean -------------------------------------------------------------------

@pytest.mark.parametrize(("password", "code"), [(PASSWORD, 0), ("wrong", 1)])
def test_login_imports_nothing_heavy(site: LoginSite, password: str, code: int) -> None:
    """A good login (which execs the next program) and a refused one (which leaves through the
    wrapper's exit) import nothing heavy, not even ``os``."""
    wrapper = site.inst.program("vchkpw").read_text()
    python = wrapper.split()[0][2:]
    source = site.work / "fd3-imports"
    source.write_bytes(f"alice@example.com\0{password}\0{STAMP}\0".encode())
    result = subprocess.run(["/bin/sh", "-c", f'exec "$@" 3<"{source}"', "sh", python, "-X",
                             "importtime", "-I", "-S", str(site.inst.program("vchkpw")), "/bin/true"],
                            capture_output=True, env=POP_ENV, text=True)
    assert result.returncode == code, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    storage = {"cdb": "vpopmail.stores.cdbfiles", "mysql": "vpopmail.stores.sql"}[site.inst.backend]
    assert "auth.vchkpw" in imported and storage in imported
    assert not imported & HEAVY, imported & HEAVY
    assert "posix._exit(code)" in wrapper


# -- tcpserver reads the cdb vchkpw wrote ------------------------------------------------------

def test_tcpserver_relays_for_the_roaming_ip_only(roaming: LoginSite, plain: Path) -> None:
    binary(plain, "tcpserver", "apt-get install ucspi-tcp")
    etc = roaming.inst.prefix / "etc"
    (etc / "tcp.smtp").write_text(":allow\n")
    assert roaming.login("alice@example.com", PASSWORD, env=env(TCPREMOTEIP="127.0.0.5")
                         ).code == 0
    with tcpserver(plain, etc / "tcp.smtp.cdb", "127.0.0.1") as port:
        roamer = remote_env("127.0.0.5", "127.0.0.1", port)
        other = remote_env("127.0.0.6", "127.0.0.1", port)
    assert roamer["RELAYCLIENT"] == "" and roamer["RBLSMTPD"] == ""
    assert "RELAYCLIENT" not in other


def test_ipv6_tcpserver_relays_for_the_roaming_ip(roaming: LoginSite, ipv6: Path,
                                                  loopback6: None) -> None:
    etc = roaming.inst.prefix / "etc"
    (etc / "tcp.smtp").write_text(":allow\n")
    with tcpserver(ipv6, etc / "tcp.smtp.cdb", "::1") as port:
        assert roaming.login("alice@example.com", PASSWORD, env=env(TCPREMOTEIP="::1")
                             ).code == 0  # IMAP/POP from ::1: the webmail class, still relays
        opened = remote_env("::1", "::1", port)
    assert opened["TCPREMOTEIP"] == "::1" and opened["RELAYCLIENT"] == ""


@pytest.mark.parametrize(("pop_ip", "smtp"), [
    ("127.0.0.5", "plain"), ("127.0.0.5", "-6"),
    ("::ffff:127.0.0.5", "plain"), ("::ffff:127.0.0.5", "-6"),
], ids=["pop-v4-smtp-v4", "pop-v4-smtp-6", "pop-6-smtp-v4", "pop-6-smtp-6"])
def test_an_ipv4_roamer_relays_whichever_tcpserver_has_6(roaming: LoginSite, ipv6: Path,
                                                         plain: Path, pop_ip: str,
                                                         smtp: str) -> None:
    """An IPv4 client logs in to a POP server with or without ``tcpserver -6`` (TCPREMOTEIP
    ``127.0.0.5`` or ``::ffff:127.0.0.5``), then sends through an SMTP tcpserver with or
    without -6. Under -6 the IPv6 build sets TCPREMOTEIP ``::ffff:127.0.0.5`` and looks up only
    that form (and its prefixes), never the dotted quad; without it, only the dotted quad.
    Each pair relays for the roamer alone (before: a POP login without -6 gave no relay
    through an SMTP tcpserver -6)."""
    binary(plain, "tcpserver", "apt-get install ucspi-tcp")
    etc = roaming.inst.prefix / "etc"
    (etc / "tcp.smtp").write_text(":allow\n")
    assert roaming.login("alice@example.com", PASSWORD, env=env(TCPREMOTEIP=pop_ip)).code == 0
    server = tcpserver(plain, etc / "tcp.smtp.cdb", "127.0.0.1") if smtp == "plain" else \
        tcpserver(ipv6, etc / "tcp.smtp.cdb", "127.0.0.1", "-6")
    with server as port:
        roamer = remote_env("127.0.0.5", "127.0.0.1", port)
        other = remote_env("127.0.0.6", "127.0.0.1", port)
    prefix = "::ffff:" if smtp == "-6" else ""
    assert (roamer["TCPREMOTEIP"], other["TCPREMOTEIP"]) == (prefix + "127.0.0.5",
                                                             prefix + "127.0.0.6")
    assert roamer.get("RELAYCLIENT") == "" and roamer.get("RBLSMTPD") == ""
    assert "RELAYCLIENT" not in other


#: execve(argv[cut+1:], env = argv[1:cut]) byte for byte: a caller's environment Python's
#: subprocess would refuse to build (an entry without a name)
RAW_EXEC = """
import ctypes, sys
args = [a.encode() for a in sys.argv[1:]]
cut = args.index(b"--")
env, argv = args[:cut], args[cut + 1:]
libc = ctypes.CDLL(None)
libc.execve(argv[0], (ctypes.c_char_p * (len(argv) + 1))(*argv, None),
            (ctypes.c_char_p * (len(env) + 1))(*env, None))
sys.exit(127)
"""


def test_an_environment_entry_without_a_name_is_left_out(site: LoginSite) -> None:
    """A caller's ``=x`` (no server sends one, a checkpassword caller could): the direct
    program left it in and its execve refused it (111, after lastauth was written), while the
    server's workers leave it out; now both log in and pass the rest on."""
    source = site.work / "fd3"
    source.write_bytes(f"alice@{DOMAIN}\0{PASSWORD}\0{STAMP}\0".encode())
    env = ["=x", *(f"{name}={value}" for name, value in POP_ENV.items())]
    result = subprocess.run(
        ["/bin/sh", "-c", 'f=$1; shift; exec "$@" 3<"$f"', "sh", str(source), "/usr/bin/python3",
         "-c", RAW_EXEC, *env, "--", str(site.inst.bin / "vchkpw"), str(site.dump),
         str(site.record)], capture_output=True, env=POP_ENV, cwd="/", timeout=30)
    login = Login(result, site.record)
    assert login.code == 0 and login.ran, login
    assert login.env["TCPREMOTEIP"] == POP_ENV["TCPREMOTEIP"] and "" not in login.env
