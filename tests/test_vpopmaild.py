"""vpopmaild, the network administration daemon: the protocol of vpopmail 5.4.33's vpopmaild
(reference c-vpopmail-observed.md section 9), run as tcpserver runs it, on both user backends.

Each command at each level: allowed, refused (C's answer), and aimed at the wrong object;
the answer formats (expanded, compact, silent); bad input (unknown commands, over-long lines,
NUL bytes, a silent client, repeated failed logins, hostile names)."""
from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from pathlib import Path

import pytest

from vpopmail.cmdline import USAGE_ERROR
from vpopmail.passwords import verify_password
from install_site import CLEAN_ENV, NO_BACKEND, Install, as_user_argv
from login_site import SyslogSink
from vpopmail import flags
from vpopmaild_site import (DOMAIN, OTHER, USERS, Client, after_login, built_sites,  # noqa: F401
                            converse, rsite, site, user_dir, vchkpw_accepts)

pytestmark = pytest.mark.both_backends

FLAG_NAMES = ["no_password_change", "no_pop", "no_webmail", "no_imap", "bounce_mail", "no_relay",
              "no_dialup", "user_flag_0", "user_flag_1", "user_flag_2", "user_flag_3", "no_smtp",
              "domain_admin_privileges", "override_domain_limits", "no_spamassassin",
              "delete_spam", "no_maildrop", "system_admin_privileges"]
LOGIN_HELP = ["+OK+", "", "Login", "login login user@domain password - expanded bitmaps",
              "clogin login user@domain password - compact bitmapts",
              "slogin login user@domain password - silent results", "", "Utility",
              "help help", "exit quit", "quit quit", "q quit", "."]


# logging in -----------------------------------------------------------------------------------

@pytest.mark.cdb_only(NO_BACKEND)
def test_greeting_help_and_quit_before_login(site: Install) -> None:
    answers, code = converse(site, "HELP", "", "   ", "quit")
    assert answers == ["+OK ", *LOGIN_HELP, "+OK "]
    assert code == 0


def test_login_answers_expanded_compact_and_silent(site: Install) -> None:
    pm = site.vuser(f"postmaster@{DOMAIN}")
    entry = site.api().get_domain(DOMAIN)
    head = ["+OK+", f"vpopmail_dir {site.prefix}", f"domain_dir {entry.dir}",
            f"uid {entry.uid}", f"gid {entry.gid}", "name postmaster", "comment Postmaster",
            "quota NOQUOTA", f"user_dir {pm.dir}", f"encrypted_password {pm.passwd}",
            "clear_text_password "]
    answers, _ = converse(site, f"login postmaster@{DOMAIN} secret")
    flag_lines = [f"{name} {int(name == 'domain_admin_privileges')}" for name in FLAG_NAMES]
    assert answers == ["+OK ", *head, *flag_lines, "."]
    answers, _ = converse(site, f"clogin postmaster@{DOMAIN} secret")
    assert answers == ["+OK ", *head, "gidflags 4096", "."]
    answers, _ = converse(site, f"slogin postmaster@{DOMAIN} secret")
    assert answers == ["+OK ", "+OK "]


def test_login_needs_its_parameters_and_hides_who_exists(site: Install) -> None:
    answers, code = converse(site, "login", f"login alice@{DOMAIN}", f"login nobody@{DOMAIN} pw1",
                             f"login alice@{DOMAIN} wrong")
    assert answers == ["+OK ", "-ERR 6.203 Email Address Required", "-ERR 7.204 Password Required",
                       "-ERR 8.207 Invalid Login", "-ERR 8.207 Invalid Login",
                       "-ERR 5.102 Too many invalid login attempts"]  # four requests: C's limit
    assert code == 1


def test_failed_logins_drop_the_connection_after_three(site: Install) -> None:
    """1000 wrong passwords in one connection: three answers, then C's 5.105 and the end."""
    answers, code = converse(site, *[f"login alice@{DOMAIN} wrong{i}" for i in range(1000)])
    assert answers == ["+OK ", *["-ERR 8.207 Invalid Login"] * 3,
                       "-ERR 5.105 Too many invalid login attempts"]
    assert code == 1


@pytest.mark.cdb_only(NO_BACKEND)
def test_four_requests_at_most_before_a_login(site: Install) -> None:
    answers, code = converse(site, "help", "bogus", "", "user_info alice@example.com",
                             f"login alice@{DOMAIN} pw1")
    assert answers[0] == "+OK " and answers[1:14] == LOGIN_HELP
    assert answers[14:] == ["-ERR 4.104 Invalid Command", "-ERR 4.104 Invalid Command",
                            "-ERR 5.102 Too many invalid login attempts"]
    assert code == 1


@pytest.mark.cdb_only(NO_BACKEND)
def test_no_timing_difference_between_unknown_user_and_wrong_password(site: Install) -> None:
    """A login for a user that does not exist checks the password against a dummy hash of the
    configured scheme: it takes as long as a wrong password for a real user. The two kinds
    alternate on each connection (two failures: the third would drop it), each kind first
    on every other connection (the first login of a process pays its first-use costs), and
    the fastest of each is compared, so load on the other CPUs does not decide the outcome."""
    times: dict[str, list[float]] = {"known": [], "unknown": []}
    kinds = [("known", f"alice@{DOMAIN}"), ("unknown", f"nobody@{DOMAIN}")]
    for round_ in range(8):
        client = Client(site)
        assert client.line() == "+OK "
        for kind, address in (kinds if round_ % 2 == 0 else kinds[::-1]):
            start = time.perf_counter()
            assert client.ask(f"slogin {address} wrong") == "-ERR 8.207 Invalid Login"
            times[kind].append(time.perf_counter() - start)
        client.close()
    known, unknown = min(times["known"]), min(times["unknown"])
    assert 0.5 < unknown / known < 2, (known, unknown)
    assert unknown > 0.001  # a hash was computed


@pytest.mark.cdb_only(NO_BACKEND)
def test_no_timing_difference_between_unknown_and_locked_or_legacy_accounts(site: Install
                                                                          ) -> None:
    """A locked account (``*``, ``!hash``) and a hash of a cheaper scheme (MD5-crypt kept from
    C vpopmail) cost what an unknown user costs, as in vchkpw: before, vpopmaild checked them
    without the configured scheme, so a locked account was refused at once and an MD5 one in
    a tenth of the time, and the reply time told that these accounts exist. bcrypt (about
    50 ms a check) puts the gap far above the noise; measured as the test above."""
    from vpopmail.passwords import hash_password

    site.set_config("passwords", "scheme", "bcrypt")
    site.ok("vmoduser", "-e", "*", f"alice@{DOMAIN}")
    site.ok("vmoduser", "-e", hash_password("pw2", "md5-crypt"), f"bob@{DOMAIN}")
    cases = {"locked": f"alice@{DOMAIN}", "md5": f"bob@{DOMAIN}", "unknown": f"nobody@{DOMAIN}"}
    times: dict[str, list[float]] = {kind: [] for kind in cases}
    for round_ in range(4):
        for pair in (("locked", "unknown"), ("md5", "unknown")):
            client = Client(site)
            assert client.line() == "+OK "
            for kind in (pair if round_ % 2 == 0 else pair[::-1]):
                start = time.perf_counter()
                assert client.ask(f"slogin {cases[kind]} wrong") == "-ERR 8.207 Invalid Login"
                times[kind].append(time.perf_counter() - start)
            client.close()
    unknown = min(times["unknown"])
    assert unknown > 0.01, times  # bcrypt was computed
    for kind in ("locked", "md5"):
        assert min(times[kind]) > 0.6 * unknown, times


@pytest.mark.cdb_only(NO_BACKEND)
def test_a_pipelined_mod_user_is_done_before_its_first_ok(site: Install) -> None:
    """A client that sends mod_user's option lines without waiting for its +OK (Roundcube's
    password driver reads that one line as the result and hangs up) gets that +OK only once
    the change is in vpasswd; the same lines as before, and a client that waits for the +OK
    before it sends them still gets it at once."""
    vpasswd = user_dir(site, f"alice@{DOMAIN}").parent / "vpasswd"
    client = Client(site)
    try:
        assert client.line() == "+OK "
        assert client.ask(f"slogin postmaster@{DOMAIN} {USERS[f'postmaster@{DOMAIN}']}") == "+OK "
        before = vpasswd.read_bytes()
        assert client.proc.stdin is not None
        client.proc.stdin.write(f"mod_user alice@{DOMAIN}\r\nclear_text_password Pipe-1\r\n"
                                f".\r\n".encode())
        client.proc.stdin.flush()
        assert client.line() == "+OK "
        assert vpasswd.read_bytes() != before  # before: the +OK came before the lines were read
        assert client.line() == "+OK "
        assert client.ask(f"mod_user alice@{DOMAIN}") == "+OK "  # waiting: at once
        client.send("clear_text_password Wait-2")
        assert client.ask(".") == "+OK "
    finally:
        client.close()
    assert vchkpw_accepts(site, f"alice@{DOMAIN}", "Wait-2")


def test_a_refused_mod_user_answers_a_client_that_waits(site: Install) -> None:
    """Net_Vpopmaild's modUser sends ``mod_user`` and waits for its answer before any option
    line: a refusal (no such user, a system administrator's account) comes at once and the
    next request is a request (before: vpopmaild waited for option lines, the client for the
    answer, until the timeout)."""
    client = Client(site, "-t", "20")
    try:
        assert client.line() == "+OK "
        assert client.ask(f"slogin postmaster@{DOMAIN} {USERS[f'postmaster@{DOMAIN}']}") == "+OK "
        client.send(f"mod_user nobody@{DOMAIN}")
        assert client.line(5) == "-ERR 12.505 User does not exist"
        client.send(f"mod_user admin@{DOMAIN}")
        assert client.line(5) == "-ERR 9.503 Not Authorized: a system administrator's account"
        assert client.ask(f"user_count {DOMAIN}") == "+OK+"
        assert client.line() == "count 4" and client.line() == "."
    finally:
        client.close()


@pytest.mark.cdb_only(NO_BACKEND)
def test_bad_lines_are_refused_and_the_session_goes_on(site: Install) -> None:
    answers, code = converse(
        site, b"x" * 5000 + b"\r\n", b"help\0\r\n", f"LOGIN alice@{DOMAIN} pw1".encode() + b"\r\n",
        "", "\t", "no_such_command", "login again", b"y" * 100000 + b"\n", "quit")
    assert answers[0] == "+OK "
    assert answers[1] == "-ERR 4.108 Invalid Command: line longer than 1023 characters"
    assert answers[2] == "-ERR 4.108 Invalid Command: NUL byte in line"
    assert answers[3] == "+OK+" and answers[-5] == "."
    assert answers[-4:] == ["-ERR 4.107 Invalid Command", "-ERR 4.107 Invalid Command",
                            "-ERR 4.108 Invalid Command: line longer than 1023 characters",
                            "+OK "]
    assert code == 0


@pytest.mark.cdb_only(NO_BACKEND)
def test_a_longest_line_whose_lf_comes_later_is_taken(site: Install) -> None:
    """1023 characters are allowed: their CR may arrive before the LF (two TCP segments),
    which must not make the line too long (before: refused with -ERR 4.108)."""
    client = Client(site)
    try:
        assert client.line() == "+OK "
        assert client.proc.stdin is not None
        for part in (b"x" * 1023 + b"\r", b"\n"):
            client.proc.stdin.write(part)
            client.proc.stdin.flush()
            time.sleep(0.3)
        assert client.line() == "-ERR 4.104 Invalid Command"
    finally:
        client.close()


@pytest.mark.cdb_only(NO_BACKEND)
def test_a_silent_client_times_out(site: Install) -> None:
    client = Client(site, "-t", "1")
    start = time.monotonic()
    assert client.line() == "+OK "
    assert client.line(10) == "-ERR 3.103 Read Timeout"
    assert client.line(10) is None
    assert 0.9 < time.monotonic() - start < 5
    assert client.close() == 1
    client = Client(site, "-t", "1")
    assert client.line() == "+OK "
    assert client.ask(f"slogin alice@{DOMAIN} pw1") == "+OK "
    assert client.line(10) == "-ERR 3.106 Read Timeout"
    assert client.close() == 1
    # a client that stops in the middle of a command's lines (before: dropped in silence,
    # exit 0, as if it had said quit)
    for command in (f"write_file alice@{DOMAIN}/notes", f"mod_user alice@{DOMAIN}"):
        client = Client(site, "-t", "1")
        assert client.line() == "+OK "
        assert client.ask(f"slogin alice@{DOMAIN} pw1") == "+OK "
        client.send(f"{command}\r\ncomment half")  # one write: no +OK before the lines
        assert client.line(10) == "-ERR 3.106 Read Timeout"
        assert client.line(10) is None
        assert client.close() == 1


@pytest.mark.cdb_only(NO_BACKEND)
def test_the_timeout_may_be_attached_to_its_option(site: Install) -> None:
    """``-t1`` as ``-t 1`` (getopt's two spellings; before, the attached one was refused with
    the usage); a timeout that is not a positive number of seconds is still refused."""
    client = Client(site, "-t1")
    assert client.line() == "+OK "
    assert client.line(10) == "-ERR 3.103 Read Timeout"
    assert client.close() == 1
    for args in (["-t0"], ["-tx"], ["-t"], ["-t", "0"], ["-t1", "2"], ["-x1"], ["-t", "²"]):
        refused = site.run("vpopmaild", *args, input="")
        assert (refused.returncode, refused.stdout) == (USAGE_ERROR, ""), (args, refused)
        assert refused.stderr.startswith("usage: vpopmaild"), (args, refused)


def test_logins_go_to_syslog_as_vchkpw_logs_them(site: Install, tmp_path: Path) -> None:
    """Failures always (the tags and texts of vchkpw's), successes at levels y and v, the
    password only at levels p and v."""
    sink = SyslogSink(tmp_path / "log")
    site.set_config("logging", "syslog_socket", str(sink.path))
    tcp = {"TCPREMOTEIP": "192.0.2.10"}
    converse(site, f"login alice@{DOMAIN} Guess-Me", f"login nobody@{DOMAIN} Guess-Me",
             f"login @{DOMAIN} Guess-Me", env=tcp)
    after_login(site, f"alice@{DOMAIN}", env=tcp)
    assert sink.texts() == [f"vpopmaild: password fail alice@{DOMAIN}:192.0.2.10",
                            f"vpopmaild: vpopmail user not found nobody@{DOMAIN}:192.0.2.10",
                            f"vpopmaild: vpopmail user not found @{DOMAIN}:192.0.2.10"]
    site.set_config("logging", "level", "y")
    converse(site, f"login alice@{DOMAIN} Guess-Me", env=tcp)
    after_login(site, f"alice@{DOMAIN}", env=tcp)
    messages = sink.messages()
    assert not any("Guess-Me" in m for m in messages)
    assert [m.split("]: ", 1)[1] for m in messages] == [
        f"vpopmaild: password fail alice@{DOMAIN}:192.0.2.10",
        f"vpopmaild: (PLAIN) login success alice@{DOMAIN}:192.0.2.10"]
    assert messages[0].startswith("<21>") and " vpopmail[" in messages[0]
    site.set_config("logging", "level", "p")
    converse(site, f"login alice@{DOMAIN} Guess-Me")
    assert sink.texts() == [f"vpopmaild: password fail (pass: 'Guess-Me') alice@{DOMAIN}:"]
    sink.close()



def test_not_run_as_root_it_says_so(rsite: Install) -> None:
    """vpopmaild run as another user than root in a root install (a tcpserver line with
    ``-u``): a permission refused is named with the fix, ``(uid N): run vpopmaild as root``,
    in its answer, in syslog and on stderr, as the admin commands name it (before: "corrupt
    data file: .../vpasswd.cdb: Permission denied" to an ordinary user, which sends the
    operator looking for damage; a bare "Permission denied" otherwise)."""
    sink = SyslogSink(rsite.prefix.parent / "log")
    try:
        rsite.set_config("logging", "syslog_socket", str(sink.path))
        nobody = pwd.getpwnam("nobody").pw_uid
        fix = f" (uid {nobody}): run vpopmaild as root"
        result = subprocess.run([*as_user_argv("nobody"), str(rsite.bin / "vpopmaild")],
                                input=f"login alice@{DOMAIN} pw1\r\nquit\r\n".encode(),
                                capture_output=True, cwd="/", timeout=60,
                                env={**CLEAN_ENV, "TCPREMOTEIP": "192.0.2.10"})
        answers, stderr = result.stdout.decode().split("\r\n"), result.stderr.decode()
        if rsite.backend == "mysql":  # its database password: the vpopmail user's to read
            assert stderr == (f"vpopmaild: configuration error: cannot read "
                                     f"{rsite.config_path}: Permission denied{fix}\n"), result
            assert (answers, result.returncode) == (
                ["-ERR 1.101 Can't open authentication database", ""], 111), result
        else:
            assert stderr == "" and answers[0] == "+OK " and answers[2] == "+OK ", result
            refusal = answers[1]
            assert refusal.startswith("-ERR 1.206 Can't open authentication database: "
                                      "Permission denied: "), refusal
            assert refusal.endswith(fix) and "corrupt" not in refusal, refusal
            reason = refusal.split("database: ", 1)[1]
            assert sink.texts() == [f"vpopmaild: user database unreadable ({reason}) "
                                    f"alice@{DOMAIN}:192.0.2.10"]
        # the vpopmail user logs in, and is told so where root's files are needed
        lock = rsite.qmaildir / "users" / "assign.lock"
        assert after_login(rsite, f"admin@{DOMAIN}", "add_domain new.org pw",
                           as_user="vpopmail") == [
            f"-ERR 0.804 Could not update file: lock {lock}: Permission denied "
            f"(uid {rsite.uid}): run vpopmaild as root"]
        assert not (rsite.domains / "new.org").exists()
    finally:
        sink.close()
        sink.path.unlink()

# levels -----------------------------------------------------------------------------------------

LEVEL_CASES = [
    # a user: commands above the level are unknown, as in C
    (f"alice@{DOMAIN}", f"user_info bob@{DOMAIN}", "-ERR 4.107 Invalid Command"),
    (f"alice@{DOMAIN}", "list_domains", "-ERR 4.107 Invalid Command"),
    (f"alice@{DOMAIN}", f"add_user eve@{DOMAIN} pw", "-ERR 4.107 Invalid Command"),
    (f"alice@{DOMAIN}", f"del_user bob@{DOMAIN}", "-ERR 4.107 Invalid Command"),
    (f"alice@{DOMAIN}", f"get_lastauth alice@{DOMAIN}", "-ERR 9.3701 Not Authorized"),
    (f"alice@{DOMAIN}", f"get_user_size alice@{DOMAIN}", "-ERR 3801 not authorized"),
    (f"alice@{DOMAIN}", f"get_ip_map 127.0.0.1", "-ERR 9.3001 Not Authorized"),
    (f"alice@{DOMAIN}", f"mod_user bob@{DOMAIN}", "-ERR 11.504 Not Authorized for domain"),
    (f"alice@{DOMAIN}", "read_file /etc/passwd", "-ERR 26.1512 Unauthorized Directory."),
    (f"alice@{DOMAIN}", "list_dir /", "-ERR 26.1512 Unauthorized Directory."),
    (f"alice@{DOMAIN}", f"list_dir bob@{DOMAIN}/", "-ERR 12.1508 User does not exist"),
    # the domain admin: within the domain
    (f"postmaster@{DOMAIN}", f"get_limits {DOMAIN}", "-ERR 9.3401 Not Authorized"),
    (f"postmaster@{DOMAIN}", f"dom_info {DOMAIN}", "-ERR 4.107 Invalid Command"),
    (f"postmaster@{DOMAIN}", f"add_domain x.net pw", "-ERR 4.107 Invalid Command"),
    (f"postmaster@{DOMAIN}", f"user_info carol@{OTHER}", "-ERR 11.604 Not Authorized for domain"),
    (f"postmaster@{DOMAIN}", f"add_user eve@{OTHER} pw", "-ERR 11.304 Not Authorized for domain"),
    (f"postmaster@{DOMAIN}", f"del_user carol@{OTHER}", "-ERR 9.404 Not Authorized"),
    (f"postmaster@{DOMAIN}", f"mod_user carol@{OTHER}", "-ERR 11.503 Not Authorized for domain"),
    (f"postmaster@{DOMAIN}", f"user_count {OTHER}", "-ERR 11.2603 Not Authorized for domain"),
    (f"postmaster@{DOMAIN}", f"list_users {OTHER}", "-ERR 11.2703 Not Authorized for domain"),
    (f"postmaster@{DOMAIN}", f"list_alias {OTHER}", "-ERR 11.2804 Not Authorized for domain"),
    (f"postmaster@{DOMAIN}", f"add_alias x@{OTHER} y@{DOMAIN}",
     "-ERR 11.904 Not Authorized for domain"),
    (f"postmaster@{DOMAIN}", f"get_domain_size {OTHER}", "-ERR 3903 not authorized for domain"),
    (f"postmaster@{DOMAIN}", f"list_lists {OTHER}", "-ERR 11.2903 Not Authorized for domain"),
    (f"postmaster@{DOMAIN}", f"list_dir {OTHER}/", "-ERR 26.1511 Unauthorized Directory."),
    (f"postmaster@{DOMAIN}", f"list_dir carol@{OTHER}/", "-ERR 11.1507 Not Authorized for domain"),
    (f"postmaster@{DOMAIN}", "add_ip_map 10.0.0.1 example.com", "-ERR 4.107 Invalid Command"),
    (f"postmaster@{DOMAIN}", f"add_list {DOMAIN} l",
     "-ERR 36.4001 Not Implemented: mailing lists need ezmlm-make, which pyvpopmail does not ship"),
    # missing arguments
    (f"admin@{DOMAIN}", "user_info", "-ERR 6.602 Email Address Required"),
    (f"admin@{DOMAIN}", "add_domain", "-ERR 13.802 Domain Required"),
    (f"admin@{DOMAIN}", "add_domain x.net", "-ERR 7.803 Password Required"),
    (f"admin@{DOMAIN}", "find_domain", "-ERR 13.2402 Domain Required"),
    (f"admin@{DOMAIN}", "add_alias_domain x.net", "-ERR 14.1203 Alias Name Required"),
    (f"admin@{DOMAIN}", "rename_file a@b.c/x", "-ERR 29.3801 Destination File Name Required"),
    (f"admin@{DOMAIN}", "mk_dir", "-ERR 27.1601 Directory Required."),
    (f"admin@{DOMAIN}", "add_ip_map", "-ERR 32.3102 IP Required"),
    (f"admin@{DOMAIN}", "del_ip_map 10.0.0.1", "-ERR 13.3203 Domain Required"),
    # wrong objects
    (f"admin@{DOMAIN}", f"user_info nobody@{DOMAIN}", "-ERR 12.605 User does not exist"),
    (f"admin@{DOMAIN}", "dom_info nowhere.net",
     "-ERR 0.1404 Domain does not exist: nowhere.net"),
    # an unknown domain is an error (C answered an empty list or a zero)
    (f"admin@{DOMAIN}", "user_count nowhere.net",
     "-ERR 0.2605 Domain does not exist: nowhere.net"),
    (f"admin@{DOMAIN}", "list_users nowhere.net",
     "-ERR 0.2705 Domain does not exist: nowhere.net"),
    (f"admin@{DOMAIN}", "get_domain_size nowhere.net",
     "-ERR 0.3905 Domain does not exist: nowhere.net"),
    (f"admin@{DOMAIN}", "list_alias nowhere.net",
     "-ERR 0.2806 Domain does not exist: nowhere.net"),
    (f"admin@{DOMAIN}", "del_limits nowhere.net",
     "-ERR 0.3603 Domain does not exist: nowhere.net"),
    (f"admin@{DOMAIN}", f"add_alias alice@{DOMAIN} bob@x.net",
     f"-ERR 17.907 Alias Insertion Failed: alice@{DOMAIN} is a user: an alias of that name "
     "would take its mail"),
    (f"admin@{DOMAIN}", f"get_user_size nobody@{DOMAIN}", "-ERR 3805 user does not exist"),
    (f"admin@{DOMAIN}", "list_lists nowhere.net", "-ERR 11.2904 Not Authorized for domain"),
    (f"admin@{DOMAIN}", "add_ip_map 10.0.0.1 nowhere.net", "-ERR 38.3104 Invalid Domain"),
    (f"admin@{DOMAIN}", "get_ip_map 10.9.9.9", "-ERR 0.3003 error"),
]


def test_each_level_gets_c_answers(site: Install) -> None:
    """Every case of LEVEL_CASES, one connection per login (a wrong answer names its case)."""
    assert_cases(site, LEVEL_CASES)


def assert_cases(site: Install, all_cases: list[tuple[str, str, str]]) -> None:
    """Each (login, request, answer) of ``all_cases`` answered as expected, one connection
    per login (a wrong answer names its case)."""
    for address in dict.fromkeys(a for a, _, _ in all_cases):
        cases = [(r, e) for a, r, e in all_cases if a == address]
        answers = after_login(site, address, *(r for r, _ in cases))
        assert list(zip([r for r, _ in cases], answers)) == cases


#: addresses C's parse_email refuses (a character outside vpopmail's sets): Invalid Email
#: Address (Invalid Alias Name for the alias commands) before any other check, as in C
BAD_ADDRESS_CASES = [
    (f"postmaster@{DOMAIN}", f"user_info x:y@{OTHER}", "-ERR 10.603 Invalid Email Address"),
    (f"postmaster@{DOMAIN}", f"get_user_size x:y@{OTHER}", "-ERR 3803 invalid email address"),
    (f"postmaster@{DOMAIN}", f"list_alias x:y@{OTHER}", "-ERR 10.2803 Invalid Email Address"),
    (f"postmaster@{DOMAIN}", f"add_alias x:y@{OTHER} bob@{DOMAIN}",
     "-ERR 15.903 Invalid Alias Name Supplied"),
    (f"admin@{DOMAIN}", f"del_user x:y@{DOMAIN}", "-ERR 10.403 Invalid Email Address"),
    (f"admin@{DOMAIN}", f"mod_user a%b@{DOMAIN}", "-ERR 10.502 Invalid Email Address"),
    (f"admin@{DOMAIN}", f"get_lastauth alice@{DOMAIN}@x", "-ERR 10.3703 Invalid Email Address"),
    (f"admin@{DOMAIN}", f"add_user caf\u00e9@{DOMAIN} pw", "-ERR 10.303 Invalid Email Address"),
    (f"admin@{DOMAIN}", f"delete_alias x:y@{DOMAIN}", "-ERR 15.1103 Invalid Alias Name Supplied"),
]


def test_an_address_with_a_refused_character_is_invalid(site: Install) -> None:
    """Found by the differential fuzz against C: such an address got whichever later check
    failed first (11.604 Not Authorized for domain, 0.405 Illegal username, 12.505 User does
    not exist, 19.1106 Alias Deletion Failed)."""
    assert_cases(site, BAD_ADDRESS_CASES)


def test_help_shows_the_commands_of_the_level(site: Install) -> None:
    def commands(address: str) -> list[str]:
        lines = after_login(site, address, "help")
        return [line.split()[0] for line in lines[1:-1] if " " in line]

    user, admin, system = (commands(a) for a in (f"alice@{DOMAIN}", f"postmaster@{DOMAIN}",
                                                 f"admin@{DOMAIN}"))
    assert "mod_user" in user and "add_user" not in user and "list_domains" not in user
    assert "add_user" in admin and "add_domain" not in admin
    assert "add_domain" in system and system.count("list_users") == 2


# users ------------------------------------------------------------------------------------------

def test_add_user_count_list_and_delete(site: Install) -> None:
    pm = f"postmaster@{DOMAIN}"
    assert after_login(site, pm, f"add_user dave@{DOMAIN} has spaces") == ["+OK "]
    assert verify_password("has spaces", site.vuser(f"dave@{DOMAIN}").passwd)
    assert after_login(site, pm, f"add_user dave@{DOMAIN} x") == \
        [f"-ERR 0.305 Username exists: dave@{DOMAIN}"]
    assert after_login(site, pm, f"user_count {DOMAIN}") == ["+OK+", "count 5", "."]
    page = after_login(site, pm, f"list_users {DOMAIN} 2 2")
    assert [line for line in page if line.startswith("name ")] == ["name bob", "name dave"]
    assert page[0] == "+OK+" and page[-1] == "." and page[-2] == ""
    everyone = after_login(site, f"admin@{DOMAIN}", f"clogin admin@{DOMAIN} adm1",
                           f"list_users {DOMAIN}")
    assert len([line for line in everyone if line.startswith("name ")]) == 5
    assert after_login(site, pm, f"del_user dave@{DOMAIN}") == ["+OK "]
    assert "dave" not in site.vusers(DOMAIN)
    assert after_login(site, pm, f"del_user dave@{DOMAIN}")[0].startswith("-ERR 0.405 User does")


def test_hostile_user_names_are_refused_and_nothing_is_made(site: Install) -> None:
    before = sorted(p.name for p in site.domains.iterdir())
    pm = f"postmaster@{DOMAIN}"
    for name in ("../evil", ".hidden", "vpasswd", "a" * 70):
        answer = after_login(site, pm, f"add_user {name}@{DOMAIN} pw")
        assert answer[0].startswith("-ERR 0.305 "), answer
    assert sorted(p.name for p in site.domains.iterdir()) == before
    assert sorted(site.vusers(DOMAIN)) == ["admin", "alice", "bob", "postmaster"]


def test_user_changes_own_password_comment_and_allowed_flags_only(site: Install) -> None:
    me = f"alice@{DOMAIN}"
    answers = after_login(site, me, f"mod_user {me}", "comment Alice Liddell",
                          "clear_text_password new secret", "quota 1M", "no_pop 1",
                          "user_flag_2 1", "system_admin_privileges 1", "bogus 1", ".")
    assert answers == ["+OK ", "+OK "]
    user = site.vuser(me)
    assert user.gecos == "Alice Liddell" and user.quota == "NOQUOTA"
    assert user.flags == flags.V_USER2
    assert vchkpw_accepts(site, me, "new secret") and not vchkpw_accepts(site, me, "pw1")


def test_admins_change_quota_and_flags(site: Install) -> None:
    target = f"bob@{DOMAIN}"
    answers = after_login(site, f"admin@{DOMAIN}", f"mod_user {target}", "quota 1M", "no_pop 1",
                          "no_imap=1", "domain_admin_privileges:1", ".")
    assert answers == ["+OK ", "+OK "]
    user = site.vuser(target)
    assert user.quota == "1048576S"
    assert user.flags == flags.NO_POP | flags.NO_IMAP | flags.QA_ADMIN
    # a domain admin without V_OVERRIDE cannot change quota or flags, but grants QA_ADMIN
    answers = after_login(site, f"postmaster@{DOMAIN}", f"mod_user {target}", "quota 5M",
                          "clear_all_flags 1", "no_smtp 1", "domain_admin_privileges 0", ".")
    assert answers == ["+OK ", "+OK "]
    user = site.vuser(target)
    assert user.quota == "1048576S" and user.flags == flags.NO_POP | flags.NO_IMAP
    answers = after_login(site, f"admin@{DOMAIN}", f"user_info {target}")
    assert "gidflags 10" in answers and "quota 1048576S" in answers  # slogin: compact


def test_bad_option_values_change_nothing(site: Install) -> None:
    target = f"bob@{DOMAIN}"
    before = site.vuser(target)
    answers = after_login(site, f"admin@{DOMAIN}", f"mod_user {target}", "no_pop 1",
                          "quota lots", ".")
    assert answers[0] == "+OK " and answers[1].startswith("-ERR 0.507 bad input: 'lots' is not a quota")
    assert site.vuser(target) == before
    answers = after_login(site, f"admin@{DOMAIN}", f"mod_user nobody@{DOMAIN}", "no_pop 1", ".",
                          f"user_count {DOMAIN}")
    assert answers == ["-ERR 12.505 User does not exist", "+OK+", "count 4", "."]


def test_no_password_change_flag_refuses_a_clear_text_password(site: Install) -> None:
    site.ok("vmoduser", "-d", f"bob@{DOMAIN}")
    answers = after_login(site, f"bob@{DOMAIN}", f"mod_user bob@{DOMAIN}",
                          "clear_text_password other", ".")
    assert answers == ["+OK ", f"-ERR 0.507 bob@{DOMAIN} may not change its password"]
    assert vchkpw_accepts(site, f"bob@{DOMAIN}", "pw2")


@pytest.mark.parametrize("admin", [f"postmaster@{DOMAIN}", f"admin@{DOMAIN}"])
def test_no_password_change_flag_leaves_the_administrators_able_to_set_it(site: Install,
                                                                          admin: str) -> None:
    """The flag (qmailadmin's "disable password changing") stops the user, not its domain's
    or the system's administrators (before: they too were answered 0.507)."""
    site.ok("vmoduser", "-d", f"bob@{DOMAIN}")
    answers = after_login(site, admin, f"mod_user bob@{DOMAIN}", "clear_text_password Reset-1",
                          ".")
    assert answers == ["+OK ", "+OK "]
    assert vchkpw_accepts(site, f"bob@{DOMAIN}", "Reset-1")


def test_lastauth_and_sizes(site: Install) -> None:
    assert vchkpw_accepts(site, f"alice@{DOMAIN}", "pw1")
    maildir = user_dir(site, f"alice@{DOMAIN}") / "Maildir"
    (maildir / "new" / "1.M1P1.host,S=5").write_bytes(b"hello")
    answers = after_login(site, f"postmaster@{DOMAIN}", f"get_lastauth alice@{DOMAIN}",
                          f"get_user_size alice@{DOMAIN}", f"get_domain_size {DOMAIN}")
    assert answers[0] == "+OK+" and answers[1].startswith("time ") and answers[3] == "."
    assert abs(int(answers[1].split()[1]) - time.time()) < 120
    assert answers[4:8] == ["+OK+", "size 5", "count 1", "."]
    assert answers[8] == "+OK+" and answers[-4:] == [f"domain {DOMAIN}", "size 5", "count 1", "."]
    assert f"user alice@{DOMAIN}" in answers


# domains and limits -----------------------------------------------------------------------------

def test_domains_as_system_admin(site: Install) -> None:
    sa = f"admin@{DOMAIN}"
    assert after_login(site, sa, "add_domain new.net npw", "add_alias_domain new.net alias.net",
                       "domain_count") == ["+OK ", "+OK ", "+OK+", "count 4", "."]
    assert vchkpw_accepts(site, "postmaster@new.net", "npw")
    info = after_login(site, sa, "dom_info alias.net")
    new = site.api().get_domain("new.net")
    assert info == ["+OK+", "domain new.net", f"path {new.dir}", f"uid {new.uid}",
                    f"gid {new.gid}", "alias alias.net", "."]
    listing = after_login(site, sa, "list_domains")
    assert listing[0] == "+OK+" and listing[-1] == "."
    assert sorted(listing[1:-1]) == sorted(["new.net alias.net", "new.net new.net",
                                            f"{DOMAIN} {DOMAIN}", f"{OTHER} {OTHER}"])
    assert after_login(site, sa, "list_domains 2 3") == ["+OK+", listing[4], "."]
    position = listing[1:-1].index("new.net new.net")
    assert after_login(site, sa, "find_domain new.net 2") == \
        ["+OK+", f"page {position // 2 + 1}", "."]
    assert after_login(site, sa, "find_domain nowhere.net") == ["+OK+", "."]
    assert after_login(site, sa, "add_domain new.net x")[0].startswith(
        "-ERR 0.804 Domain already exists")
    assert after_login(site, sa, "add_domain ../x.net pw")[0].startswith("-ERR 0.804 ")
    assert after_login(site, sa, "del_domain new.net") == ["+OK "]
    assert site.api().find_domain("new.net") is None and site.api().find_domain("alias.net") is None
    assert not (site.domains / "new.net").exists()


def test_add_domain_postmaster_as_c_writes_it(site: Install) -> None:
    """add_domain's postmaster is C 5.4.33 vpopmaild's: comment "postmaster" (C's vadddomain
    writes "Postmaster"), POP flag, no quota; in vpasswd C's line (found by the differential
    fuzz: ours wrote "Postmaster")."""
    assert after_login(site, f"admin@{DOMAIN}", "add_domain new.net npw") == ["+OK "]
    user = site.vuser("postmaster@new.net")
    assert (user.uid, user.flags, user.gecos, user.quota) == (1, 0, "postmaster", "NOQUOTA")
    if site.backend == "cdb":
        line = (site.domains / "new.net" / "vpasswd").read_text()
        clear = ":npw" if site.api().config.passwords_clear_passwords else ""  # C's build: clear on
        assert line == f"postmaster:{user.passwd}:1:0:postmaster:{user.dir}:NOQUOTA{clear}\n"


def test_limits_get_set_and_delete(site: Install) -> None:
    sa = f"admin@{DOMAIN}"
    answers = after_login(site, sa, f"get_limits {DOMAIN}")
    assert answers[0] == "+OK+" and answers[-1] == "."
    assert answers[1:4] == ["max_popaccounts -1", "max_aliases -1", "max_forwards -1"]
    assert "disable_pop 0" in answers and "perm_defaultquota 0" in answers
    assert len(answers) == 28
    answers = after_login(site, sa, f"set_limits {DOMAIN}", "max_popaccounts 10",
                          "disable_pop 1", "perm_account=3", "default_quota: 1000000",
                          "no_value", "weird 1", ".")
    assert answers == ["+OK ", "  Warning: missing value", "  Warning: invalid option", "+OK "]
    current = site.api().domain_limits(site.api().get_domain(DOMAIN))
    assert current.numbers["maxpopaccounts"] == 10 and current.numbers["perm_account"] == 3
    assert current.numbers["default_quota"] == 1000000 and "disable_pop" in current.switches
    assert "max_popaccounts 10" in after_login(site, sa, f"get_limits {DOMAIN}")
    assert not vchkpw_accepts(site, f"alice@{DOMAIN}", "pw1")  # disable_pop
    assert after_login(site, sa, f"del_limits {DOMAIN}") == ["+OK "]
    assert vchkpw_accepts(site, f"alice@{DOMAIN}", "pw1")
    assert after_login(site, sa, f"del_limits {DOMAIN}") == ["+OK "]  # no file: nothing to do
    assert after_login(site, sa, "get_limits nowhere.net")[0].startswith(
        "-ERR 34.3403 Could not get limits")


def test_set_limits_refuses_numbers_the_limits_cannot_hold(site: Install) -> None:
    """C's atoi gave any number; one past its ``limits`` column's range, or a default quota
    longer than a user record holds, is refused and nothing changes."""
    sa = f"admin@{DOMAIN}"
    before = site.api().domain_limits(site.api().get_domain(DOMAIN)).numbers
    for line in ("max_popaccounts 99999999999", "perm_alias -300", "disk_quota -1",
                 "default_quota 99999999999999999999"):
        answers = after_login(site, sa, f"set_limits {DOMAIN}", "max_aliases 7", line, ".")
        assert answers[0] == "+OK " and answers[1].startswith("-ERR 35.3504 Could not set "
                                                             "limits: bad input:"), answers
        assert site.api().domain_limits(site.api().get_domain(DOMAIN)).numbers == before
    answers = after_login(site, sa, f"set_limits {DOMAIN}", "default_quota 10000000000",
                          "default_maxmsgcount 10000000", ".")
    assert answers[1].startswith("-ERR 35.3504 Could not set limits: quota too long"), answers
    assert site.api().domain_limits(site.api().get_domain(DOMAIN)).numbers == before


# aliases and the IP map -------------------------------------------------------------------------

def test_aliases(site: Install) -> None:
    pm = f"postmaster@{DOMAIN}"
    assert after_login(site, pm, f"add_alias info@{DOMAIN} alice@{DOMAIN}",
                       f"add_alias info@{DOMAIN} bob@{DOMAIN}") == ["+OK ", "+OK "]
    assert after_login(site, pm, f"list_alias {DOMAIN}") == \
        ["+OK+", f"info@{DOMAIN} alice@{DOMAIN}", f"info@{DOMAIN} bob@{DOMAIN}", "."]
    assert after_login(site, pm, f"remove_alias info@{DOMAIN} bob@{DOMAIN}",
                       f"list_alias info@{DOMAIN}") == \
        ["+OK ", "+OK+", f"info@{DOMAIN} alice@{DOMAIN}", "."]
    assert after_login(site, pm, f"delete_alias info@{DOMAIN}", f"list_alias info@{DOMAIN}") == \
        ["+OK ", "+OK+", "."]
    # through an alias domain the lines name the real domain, as C's list_alias printed them
    # (found by the differential fuzz against C 5.4.33: they named the alias domain)
    site.ok("vaddaliasdomain", DOMAIN, "alias.net")
    sa = f"admin@{DOMAIN}"
    assert after_login(site, sa, f"add_alias info@{DOMAIN} alice@{DOMAIN}",
                       "list_alias alias.net", "list_alias INFO@alias.net") == \
        ["+OK ", "+OK+", f"info@{DOMAIN} alice@{DOMAIN}", ".",
         "+OK+", f"info@{DOMAIN} alice@{DOMAIN}", "."]
    for request_line in (f"add_alias ../x@{DOMAIN} y@{DOMAIN}", f"add_alias alice@{DOMAIN} y@b.c",
                         f"add_alias z@{DOMAIN} {'a' * 170}@{DOMAIN}"):
        assert after_login(site, pm, request_line)[0].startswith("-ERR 17.907 Alias Insertion")
    assert after_login(site, pm, f"delete_alias nope@{DOMAIN}")[0].startswith("-ERR 19.1106 ")
    assert after_login(site, pm, f"remove_alias nope@{DOMAIN} x@y.z")[0].startswith("-ERR 18.1007")


@pytest.mark.cdb_only(NO_BACKEND)
def test_ip_map(site: Install) -> None:
    sa = f"admin@{DOMAIN}"
    assert after_login(site, sa, f"add_ip_map 10.0.0.1 {DOMAIN}", "get_ip_map 10.0.0.1",
                       "show_ip_map", f"del_ip_map 10.0.0.1 {DOMAIN}", "show_ip_map") == \
        ["+OK ", "+OK+", f"10.0.0.1 {DOMAIN}", ".", "+OK+", f"10.0.0.1 {DOMAIN}", ".", "+OK ",
         "+OK+", "."]
    assert after_login(site, sa, f"add_ip_map 10.0.0.1\t{DOMAIN}x")[0] == \
        "-ERR 38.3104 Invalid Domain"
    assert after_login(site, sa, f"add_ip_map not-an-ip {DOMAIN}")[0].startswith(
        "-ERR 0.3105 error: ")
    assert after_login(site, sa, f"del_ip_map 10.0.0.2 {DOMAIN}")[0].startswith("-ERR 0.3204 ")


@pytest.mark.cdb_only(NO_BACKEND)
def test_list_lists_finds_ezmlm_lists(site: Install) -> None:
    domain = site.domains / DOMAIN
    assert after_login(site, f"postmaster@{DOMAIN}", f"list_lists {DOMAIN}") == ["+OK+", "."]
    (domain / ".qmail-team").write_text("|/usr/bin/ezmlm-reject '/x/team'\n|/usr/bin/ezmlm-send\n")
    (domain / ".qmail-Alpha").write_text("|/usr/bin/ezmlm-reject '/x/alpha'\n")
    (domain / ".qmail-team-default").write_text("|/usr/bin/ezmlm-manage '/x/team'\n")
    (domain / ".qmail-info").write_text("&alice@example.com\n")
    assert after_login(site, f"postmaster@{DOMAIN}", f"list_lists {DOMAIN}",
                       f"list_lists {DOMAIN} 2 1") == \
        ["+OK+", ".qmail-Alpha", ".qmail-team", ".", "+OK+", ".qmail-team", "."]
