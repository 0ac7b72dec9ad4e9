"""The Dovecot harness (tests/dovecot_site.py) against the real Dovecot 2.3.19, with a tiny shell
checkpassword program (not vchkpw). Also records, as asserted behaviour, what Dovecot does with
each checkpassword exit code, what it gives the program (environment, fd 3), and how it treats a
program that changes uid before exec'ing checkpassword-reply."""
from __future__ import annotations

import imaplib
import os
import poplib
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from dovecot_site import CHECKPASSWORD_REPLY, Dovecot, alive, new_source_ip, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")

MAIL_UID = MAIL_GID = 89
MESSAGE = b"From: bob@example.net\nTo: alice@example.com\nSubject: harness\n\nHello alice.\n"
#: alice@example.com/secret; code-N@example.com exits N whatever the password; setuid@… answers
#: with alice's home (no ids) after setpriv to uid 89; anything else exits 1 (3, "unknown", for
#: a userdb lookup).
#: Each run leaves DUMP/<user>.<AUTHORIZED or login>.{env,fd3}: the environment exactly as
#: exec'd (from /proc, before sh adds PWD) and the bytes read from fd 3.
PROGRAM = r"""#!/bin/sh
mode=${AUTHORIZED:-login}
/bin/cat <&3 > "@DUMP@/fd3.$$"
user=$(/usr/bin/tr '\0' '\n' < "@DUMP@/fd3.$$" | /usr/bin/sed -n 1p)
pass=$(/usr/bin/tr '\0' '\n' < "@DUMP@/fd3.$$" | /usr/bin/sed -n 2p)
/bin/mv "@DUMP@/fd3.$$" "@DUMP@/$user.$mode.fd3"
/bin/cat /proc/$$/environ > "@DUMP@/$user.$mode.env"
answer() {
  HOME=@HOME@ userdb_uid=89 userdb_gid=89 EXTRA="userdb_uid userdb_gid"
  export HOME userdb_uid userdb_gid EXTRA
  if [ "$AUTHORIZED" = 1 ]; then AUTHORIZED=2; export AUTHORIZED; fi
}
case $user in
  code-*@example.com) code=${user#code-}; exit "${code%%@*}" ;;
  setuid@example.com)  # no userdb_uid/gid: see what checkpassword-reply makes of the uid
    answer; unset userdb_uid userdb_gid EXTRA
    exec /usr/bin/setpriv --reuid=89 --regid=89 --clear-groups "$@" ;;
  alice@example.com)
    if [ "$AUTHORIZED" = 1 ] || [ "$pass" = secret ]; then answer; exec "$@"; fi ;;
esac
[ "$AUTHORIZED" = 1 ] && exit 3
exit 1
"""
POP3_TEMPFAIL = b"-ERR [SYS/TEMP] Temporary authentication failure."
POP3_AUTHFAIL = b"-ERR [AUTH] Authentication failed."
#: every variable Dovecot 2.3.19 sets for a POP3 login through this config (plus TZ if the
#: master had one); no PATH, no HOME, no AUTHORIZED
LOGIN_ENV = {
    "AUTH_AUTH_DOMAIN", "AUTH_AUTH_USER", "AUTH_AUTH_USERNAME", "AUTH_CERT", "AUTH_DOMAIN",
    "AUTH_DOMAIN_FIRST", "AUTH_DOMAIN_LAST", "AUTH_LIP", "AUTH_LOCAL_IP", "AUTH_LOCAL_PORT",
    "AUTH_LPORT", "AUTH_MECH", "AUTH_MECHANISM", "AUTH_ORIGINAL_DOMAIN", "AUTH_ORIGINAL_USER",
    "AUTH_ORIGINAL_USERNAME", "AUTH_ORIG_DOMAIN", "AUTH_ORIG_USER", "AUTH_ORIG_USERNAME",
    "AUTH_PID", "AUTH_REAL_LIP", "AUTH_REAL_LOCAL_IP", "AUTH_REAL_LOCAL_PORT", "AUTH_REAL_LPORT",
    "AUTH_REAL_REMOTE_IP", "AUTH_REAL_REMOTE_PORT", "AUTH_REAL_RIP", "AUTH_REAL_RPORT",
    "AUTH_REMOTE_IP", "AUTH_REMOTE_PORT", "AUTH_RIP", "AUTH_RPORT", "AUTH_SECURED",
    "AUTH_SERVICE", "AUTH_SESSION", "AUTH_USER", "AUTH_USERNAME", "CLIENT_LIMIT", "CONFIG_FILE",
    "DOVECOT_CHILD_PROCESS", "DOVECOT_HOSTDOMAIN", "DOVECOT_HOSTNAME", "DOVECOT_PRESERVE_ENVS",
    "DOVECOT_VERSION", "GENERATION", "IDLE_KILL", "LOCAL_IP", "LOG_DEBUG", "LOG_SERVICE",
    "ORIG_UID", "PROCESS_LIMIT", "PROCESS_MIN_AVAIL", "PROTO", "REMOTE_IP", "SERVICE",
    "SERVICE_NAME", "SOCKET0_SETTINGS", "SOCKET1_SETTINGS", "SOCKET2_SETTINGS",
    "SOCKET3_SETTINGS", "SOCKET4_SETTINGS", "SOCKET5_SETTINGS", "SOCKET_COUNT",
    "STATS_WRITER_SOCKET_PATH", "TCPLOCALIP", "TCPLOCALPORT", "TCPREMOTEIP", "TCPREMOTEPORT",
}
#: a userdb lookup from doveadm: AUTHORIZED=1; no client address, so no TCP*/LOCAL_IP/
#: REMOTE_IP/AUTH_*IP/AUTH_SESSION (ports and AUTH_PID are 0, AUTH_MECH empty); PROTO=TCP stays
LOOKUP_ENV = (LOGIN_ENV | {"AUTHORIZED"}) - {
    "AUTH_LIP", "AUTH_LOCAL_IP", "AUTH_REAL_LIP", "AUTH_REAL_LOCAL_IP", "AUTH_REAL_REMOTE_IP",
    "AUTH_REAL_RIP", "AUTH_REMOTE_IP", "AUTH_RIP", "AUTH_SESSION", "LOCAL_IP", "REMOTE_IP",
    "TCPLOCALIP", "TCPLOCALPORT", "TCPREMOTEIP", "TCPREMOTEPORT"}


@dataclass
class Mailsite:
    """A world-reachable directory with alice's Maildir (one message) and the program."""
    root: Path
    home: Path
    dump: Path
    program: Path

    def record(self, user: str, mode: str = "login") -> tuple[dict[str, str], bytes]:
        """The environment and fd 3 bytes of the program's last run for ``user``."""
        raw = (self.dump / f"{user}.{mode}.env").read_bytes()
        env = dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)
        return env, (self.dump / f"{user}.{mode}.fd3").read_bytes()


@pytest.fixture(scope="module")
def mailsite() -> Iterator[Mailsite]:
    # pytest's tmp_path is under a 0700 directory: the pop3/imap processes (uid 89) could not
    # reach a Maildir there. Dovecot's own directory can stay in tmp_path.
    root = Path(tempfile.mkdtemp(prefix="pyvpopmail-dovecot-"))
    try:
        root.chmod(0o755)
        home, dump = root / "alice", root / "dump"
        dump.mkdir(mode=0o700)
        for sub in ("cur", "new", "tmp"):
            (home / "Maildir" / sub).mkdir(parents=True)
        (home / "Maildir" / "new" / "1700000000.1.harness").write_bytes(MESSAGE)
        for path in [home, *home.rglob("*")]:
            os.chown(path, MAIL_UID, MAIL_GID)
        program = root / "checkpassword"
        program.write_text(PROGRAM.replace("@DUMP@", str(dump)).replace("@HOME@", str(home)))
        program.chmod(0o755)
        yield Mailsite(root, home, dump, program)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def dovecot(mailsite: Mailsite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    """The main mode: passdb checkpassword + userdb prefetch."""
    with Dovecot(tmp_path_factory.mktemp("dovecot"), str(mailsite.program)) as server:
        yield server


@pytest.fixture(scope="module")
def dovecot_userdb(mailsite: Mailsite, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[Dovecot]:
    """passdb checkpassword + userdb prefetch, then userdb checkpassword; auth_debug on."""
    with Dovecot(tmp_path_factory.mktemp("dovecot-userdb"), str(mailsite.program),
                 userdb_checkpassword=True, auth_debug=True) as server:
        yield server


def session_lines(log: str, ip: str) -> str:
    """The lines of ``log`` about a client at ``ip`` (auth and login lines name it)."""
    return "\n".join(line for line in log.splitlines() if re.search(rf"\b{re.escape(ip)}\b", line))


# -- logins through passdb checkpassword + userdb prefetch ---------------------------------


def test_pop3_login_reads_the_maildir(dovecot: Dovecot) -> None:
    mark = dovecot.log_mark()
    with dovecot.pop3_login("alice@example.com", "secret") as pop:
        assert pop.stat() == (1, len(MESSAGE.splitlines()) + len(MESSAGE))  # CRLF octets
        _resp, lines, _octets = pop.retr(1)
    assert b"\n".join(lines) + b"\n" == MESSAGE
    log = dovecot.wait_log(r"pop3\(alice@example.com\).*Disconnected: Logged out", mark)
    assert "pop3-login: Info: Login: user=<alice@example.com>, method=PLAIN, rip=127.0.0.1" in log
    assert "Error" not in log


def test_imap_login_selects_and_fetches(dovecot: Dovecot) -> None:
    with dovecot.imap_login("alice@example.com", "secret", new_source_ip()) as imap:
        assert imap.select("INBOX") == ("OK", [b"1"])
        status, data = imap.fetch("1", "(BODY.PEEK[])")
    assert status == "OK"
    assert data[0][1] == MESSAGE.replace(b"\n", b"\r\n")  # type: ignore[index]


def test_wrong_password_is_a_clean_failure(dovecot: Dovecot) -> None:
    ip, mark = new_source_ip(), dovecot.log_mark()
    with pytest.raises(poplib.error_proto) as refused:
        dovecot.pop3_login("alice@example.com", "wrong", ip)
    assert refused.value.args[0] == POP3_AUTHFAIL
    dovecot.wait_log(rf"auth: Info: checkpassword\(alice@example.com,{re.escape(ip)},<[^>]+>\)"
                     r": Login failed \(status=1\)$", mark)
    log = session_lines(dovecot.wait_log(rf"auth failed.*rip={re.escape(ip)},", mark), ip)
    assert "pop3-login: Info: Disconnected: Connection closed (auth failed, 1 attempts" in log
    assert "Error" not in log and "temporary" not in log
    with pytest.raises(imaplib.IMAP4.error) as imap_refused:
        dovecot.imap_login("alice@example.com", "wrong", new_source_ip())
    assert imap_refused.value.args[0] == b"[AUTHENTICATIONFAILED] Authentication failed."


def test_doveadm_auth_test(dovecot: Dovecot) -> None:
    good = dovecot.auth_test("alice@example.com", "secret")
    assert good.returncode == 0 and "passdb: alice@example.com auth succeeded" in good.stdout
    bad = dovecot.auth_test("alice@example.com", "wrong")
    assert bad.returncode == 77 and "auth failed" in bad.stdout
    assert "temp_fail" not in bad.stdout


# -- what Dovecot makes of each exit code ----------------------------------------------------

#: exit code -> (POP3 answer, auth log line after "checkpassword(USER,IP,<SESSION>): ")
PASSDB_EXITS = {
    1: (POP3_AUTHFAIL, r"auth: Info: .*: Login failed \(status=1\)$"),
    2: (POP3_TEMPFAIL, (r"auth: Error: .*: Child \d+ exited with status 2 "
                        r"\(tried to use userdb-only checkpassword program for passdb\?\)$")),
    3: (POP3_TEMPFAIL, r"auth: Error: .*: Child \d+ exited with status 3$"),
    111: (POP3_TEMPFAIL, r"auth: Error: .*: Child \d+ exited with status 111$"),
    0: (POP3_TEMPFAIL, r"auth: Error: .*: Received no input$"),  # 0 without exec'ing the reply
}


@pytest.mark.parametrize("code", list(PASSDB_EXITS))
def test_login_exit_codes(dovecot: Dovecot, code: int) -> None:
    """Only 1 is a clean failure for a login; 2, 3, 111 (and 0 with no reply) are internal
    errors that the client sees as a temporary failure."""
    answer, line = PASSDB_EXITS[code]
    ip, mark = new_source_ip(), dovecot.log_mark()
    with ThreadPoolExecutor(1) as pool:  # each failure takes 0.5 s: run both at once
        via_doveadm = pool.submit(dovecot.auth_test, f"code-{code}@example.com", "x")
        with pytest.raises(poplib.error_proto) as refused:
            dovecot.pop3_login(f"code-{code}@example.com", "x", ip)
        assert via_doveadm.result().returncode == 77
        assert ("code=temp_fail" in via_doveadm.result().stdout) == (code != 1)
    assert refused.value.args[0].startswith(answer)  # temporary ones add " [host:time]"
    dovecot.wait_log(line.replace(".*", rf"checkpassword\(code-{code}@example.com,"
                                        rf"{re.escape(ip)},<[^>]+>\)"), mark)
    log = session_lines(dovecot.wait_log(rf"pop3-login: .*rip={re.escape(ip)},", mark), ip)
    reason = "auth failed, 1 attempts" if code == 1 else "auth service reported temporary failure"
    assert f"Disconnected: Connection closed ({reason}" in log


#: user -> (doveadm user exit code, auth log line after "checkpassword(USER): ")
USERDB_EXITS = {
    "alice@example.com": (0, None),  # AUTHORIZED=2 set, reply program exits 2 after writing
    "nobody@example.com": (67, r"auth: Info: .*: User unknown$"),  # the program exits 3
    "code-3@example.com": (67, r"auth: Info: .*: User unknown$"),
    "code-1@example.com": (75, r"auth: Error: .*: Child \d+ exited with status 1$"),
    "code-111@example.com": (75, r"auth: Error: .*: Child \d+ exited with status 111$"),
    "code-2@example.com": (75, r"auth: Error: .*: Received no input$"),  # 2 but no reply
    "code-0@example.com": (75, r"auth: Error: .*: Child \d+ exited with status 0$"),
}


@pytest.mark.parametrize("user", list(USERDB_EXITS))
def test_userdb_lookup_exit_codes(dovecot_userdb: Dovecot, mailsite: Mailsite, user: str
                                  ) -> None:
    """For a lookup without a login, 2 (from the reply program) is success, 3 is a clean
    "unknown user" (doveadm exit 67), anything else an internal error (doveadm exit 75)."""
    status, line = USERDB_EXITS[user]
    mark = dovecot_userdb.log_mark()
    result = dovecot_userdb.doveadm("user", user)
    assert result.returncode == status, result
    log = dovecot_userdb.wait_log(rf"checkpassword\({re.escape(user)}\): Finished userdb", mark)
    if line:
        log = dovecot_userdb.wait_log(line.replace(".*", re.escape(f"checkpassword({user})")),
                                      mark)
    if status == 0:
        assert result.stdout.split() == ["field", "value", "uid", "89", "gid", "89", "home",
                                         str(mailsite.home), "mail", "maildir:~/Maildir"]
    elif status == 67:
        assert f"userdb lookup: user {user} doesn't exist" in result.stdout
    else:
        assert f"Error: auth-master: userdb lookup({user}): Auth USER lookup failed" \
            in result.stderr
    assert ("Error" in log) == (status == 75)


def test_login_with_userdb_checkpassword_runs_the_program_once(dovecot_userdb: Dovecot,
                                                              mailsite: Mailsite) -> None:
    mark = dovecot_userdb.log_mark()
    with dovecot_userdb.pop3_login("alice@example.com", "secret", new_source_ip()) as pop:
        assert pop.stat()[0] == 1
    log = dovecot_userdb.wait_log(r"pop3\(alice@example.com\).*Disconnected", mark)
    assert log.count("): execute: ") == 1
    assert f"): execute: {mailsite.program} {CHECKPASSWORD_REPLY}\n" in log
    assert re.search(r"prefetch\(alice@example.com,.*\): success", log)
    assert f"home={mailsite.home}\tuid=89\tgid=89" in log


# -- what the program gets -------------------------------------------------------------------


def test_login_environment_and_fd3(dovecot: Dovecot, mailsite: Mailsite) -> None:
    ip = new_source_ip()
    with dovecot.pop3_login("alice@example.com", "secret", ip):
        pass
    env, fd3 = mailsite.record("alice@example.com")
    assert fd3 == b"alice@example.com\0secret\0\0"  # user, password, empty timestamp
    assert set(env) - {"TZ"} == LOGIN_ENV
    assert env["TCPREMOTEIP"] == env["REMOTE_IP"] == env["AUTH_RIP"] == ip
    assert env["TCPLOCALIP"] == env["LOCAL_IP"] == "127.0.0.1"
    assert env["TCPLOCALPORT"] == env["AUTH_LPORT"] == str(dovecot.pop3_port)
    assert env["TCPREMOTEPORT"].isdigit() and env["PROTO"] == "TCP"
    assert env["SERVICE"] == env["AUTH_SERVICE"] == "pop3" and env["SERVICE_NAME"] == "auth"
    assert env["AUTH_USER"] == "alice@example.com" and env["AUTH_USERNAME"] == "alice"
    assert env["AUTH_DOMAIN"] == "example.com" and env["AUTH_MECH"] == "PLAIN"
    assert env["ORIG_UID"] == "0"  # the auth process runs as root (service auth { user = root })
    # "secured" only when the client address is the local one (127.0.0.1 to 127.0.0.1), TLS
    # or login_trusted_networks: from another 127.x address the login is not
    assert env["AUTH_SECURED"] == ""
    assert env["CONFIG_FILE"] == str(dovecot.run_dir / "config")
    with dovecot.imap_login("alice@example.com", "secret", new_source_ip()):
        pass
    env, _ = mailsite.record("alice@example.com")
    assert env["SERVICE"] == "imap" and env["TCPLOCALPORT"] == str(dovecot.imap_port)


def test_lookup_environment_and_fd3(dovecot_userdb: Dovecot, mailsite: Mailsite) -> None:
    assert dovecot_userdb.doveadm("user", "alice@example.com").returncode == 0
    env, fd3 = mailsite.record("alice@example.com", "1")
    assert fd3 == b"alice@example.com\0\0\0"  # no password, no timestamp
    assert set(env) - {"TZ"} == LOOKUP_ENV
    assert env["AUTHORIZED"] == "1" and env["SERVICE"] == env["AUTH_SERVICE"] == "doveadm"
    assert env["AUTH_LPORT"] == env["AUTH_RPORT"] == env["AUTH_PID"] == "0"


# -- a program that changes uid before the reply ---------------------------------------------


def test_setuid_before_reply_is_refused(dovecot_userdb: Dovecot) -> None:
    ip, mark = new_source_ip(), dovecot_userdb.log_mark()
    with pytest.raises(poplib.error_proto) as refused:
        dovecot_userdb.pop3_login("setuid@example.com", "secret", ip)
    assert refused.value.args[0].startswith(POP3_TEMPFAIL)
    log = dovecot_userdb.wait_log(rf"pop3-login: .*rip={re.escape(ip)},", mark)
    assert ("auth: Error: Error: checkpassword: The checkpassword couldn't be run securely. "
            "See http://wiki2.dovecot.org/AuthDatabase/CheckPassword#Security") in log
    assert re.search(rf"auth: Error: checkpassword\(setuid@example.com,{re.escape(ip)},<[^>]+>\)"
                     r": Child \d+ exited with status 111", log)
    assert dovecot_userdb.doveadm("user", "setuid@example.com").returncode == 75


def test_setuid_allowed_with_insecure_setuid(mailsite: Mailsite,
                                             dovecot_factory: Callable[..., Dovecot],
                                             ) -> None:
    server = dovecot_factory(str(mailsite.program), env={"INSECURE_SETUID": "1"},
                             userdb_checkpassword=True, auth_debug=True)
    mark = server.log_mark()
    with server.pop3_login("setuid@example.com", "secret", new_source_ip()) as pop:
        assert pop.stat()[0] == 1
    log = server.wait_log(r"pop3\(setuid@example.com\).*Disconnected", mark)
    # the program gave no ids: checkpassword-reply adds the ones it runs as
    assert re.search(r"Received input: userdb_home=\S+\tuserdb_uid=89\tuserdb_gid=89", log)
    assert "Error" not in log
    env, _ = mailsite.record("setuid@example.com")
    assert env["INSECURE_SETUID"] == "1"  # import_environment reaches the program
    assert server.doveadm("user", "setuid@example.com").returncode == 0
    master, children = server.process, server.processes()
    assert master is not None and {p.cmdline()[0].rpartition("/")[2] for p in children} >= {
        "anvil", "log", "config", "stats", "auth"}
    server.stop()  # the factory stops it again at teardown: a no-op
    assert master.poll() is not None and server.process is None
    assert not any(alive(child) for child in children) and not server.processes()


def test_config_is_self_contained(dovecot: Dovecot) -> None:
    text = dovecot.conf.read_text()
    assert "/etc/dovecot" not in text and "include" not in text
    assert f"port = {dovecot.pop3_port}" in text and f"args = {dovecot.checkpassword}" in text
