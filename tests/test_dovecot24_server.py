"""Dovecot 2.4 (Debian 13's 2.4.1, chrooted: tests/dovecot_site.py's Dovecot24), which has no
checkpassword driver, logging pyvpopmail's users in through vpopmail-server with the shipped
packaging/dovecot/dovecot24-vpopmail-server.conf and vpopmail-auth.lua (Dovecot's Lua passdb
and userdb asking the server over HTTP on its socket, the server running vchkpw): on both
user backends, on a root install whose server lists root (Dovecot's auth-worker) in
server.dovecot_callers."""
from __future__ import annotations

import collections
import contextlib
import imaplib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from delivery_site import DOMAIN, MESSAGE, Site, qmail_local_env
from dovecot_site import Dovecot, new_source_ip
from install_site import CLEAN_ENV, REPO, Install, as_user_argv
from login_site import POP_ENV
import mariadb_site
from server_site import (Server, held_socket, open_sockets, running_server, served_login_site,
                         server_of, wait_for, without_fallbacks)
from vpopmail import wire

pytestmark = pytest.mark.both_backends

PACKAGING = REPO / "packaging" / "dovecot"
SHIPPED_SOCKET = '"/home/vpopmail/run/lookup.sock"'
SHIPPED_LUA = "/etc/dovecot/vpopmail-auth.lua"
PASSWORD = "pw"


def shipped_config(directory: Path, socket_path: Path) -> list[Path]:
    """The shipped files as an operator installs them: the script's SOCKET set to the
    server's socket, the .conf naming where the script is; nothing else changed."""
    directory.mkdir()
    lua = (PACKAGING / "vpopmail-auth.lua").read_text()
    assert lua.count(SHIPPED_SOCKET) == 1
    lua_path = directory / "vpopmail-auth.lua"
    lua_path.write_text(lua.replace(SHIPPED_SOCKET, f'"{socket_path}"'))
    conf = (PACKAGING / "dovecot24-vpopmail-server.conf").read_text()
    assert conf.count(SHIPPED_LUA) == 2  # passdb and userdb
    conf_path = directory / "dovecot24-vpopmail-server.conf"
    conf_path.write_text(conf.replace(SHIPPED_LUA, str(lua_path)))
    return [conf_path]


@pytest.fixture
def mail_site(root_vhome: Install) -> Iterator[Site]:
    """example.com with alice (password pw, one message delivered) on a root install with
    roaming relay on, its server running and serving root's HTTP lookups (``.server``)."""
    root_vhome.set_config("server", "dovecot_callers", "root")
    root_vhome.set_config("relay", "roaming_users", True)
    with served_login_site(root_vhome) as login_site:
        site = Site(root_vhome, True)
        assert site.deliver("alice").returncode == 0
        site.server = server_of(login_site)  # type: ignore[attr-defined]
        yield site


def server(site: Site) -> Server:
    return site.server  # type: ignore[attr-defined, no-any-return]


def lookup_socket(site: Site) -> Path:
    """The server's socket for Dovecot's lookups (paths.lookup_socket)."""
    return site.inst.prefix / "run" / "lookup.sock"


@pytest.fixture
def dovecot(mail_site: Site, tmp_path: Path,
            dovecot24_factory: Callable[..., Dovecot]) -> Dovecot:
    inst = mail_site.inst
    shared = [tmp_path, inst.prefix.parent]
    if inst.database is not None:
        shared.append(Path(inst.database.server.socket).parent)
    return dovecot24_factory(uid=inst.uid, gid=inst.gid, shared=shared,
                             includes=shipped_config(tmp_path / "conf", lookup_socket(mail_site)))


#: a client of the server's HTTP lookups: the request on stdin, the answer on stdout
CLIENT = """import socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
try:
    sock.sendall(sys.stdin.buffer.read())
    sock.shutdown(socket.SHUT_WR)
except OSError:  # the server answered and closed before taking all of it
    pass
try:
    while chunk := sock.recv(65536):
        sys.stdout.buffer.write(chunk)
except ConnectionResetError:
    pass
"""


def http(site: Site, request: bytes, user: str | None = None, at: Path | None = None) -> bytes:
    """The server's answer to ``request``, sent by ``user`` (default root) to the socket
    ``at`` (default the server's main one)."""
    wrap = as_user_argv(user) if user else []
    done = subprocess.run([*wrap, sys.executable, "-I", "-c", CLIENT,
                           str(at or server(site).socket)],
                          input=request, capture_output=True, timeout=30, check=True)
    return done.stdout


def post(kind: str, **fields: str) -> bytes:
    """A lookup as vpopmail-auth.lua sends it."""
    body = urlencode(fields).encode()
    return (f"POST http://vpopmail-server/{kind} HTTP/1.1\r\nHost: vpopmail-server\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def test_pop3_login_reads_mail_records_lastauth_and_opens_the_relay(mail_site: Site,
                                                                    dovecot: Dovecot) -> None:
    """What vchkpw did behind Dovecot 2.3's checkpassword driver, it does behind 2.4's Lua
    passdb: the login is checked by vchkpw, lastauth and the roaming relay follow."""
    source = new_source_ip()
    with dovecot.pop3_login(f"alice@{DOMAIN}", PASSWORD, source) as client:
        assert client.stat()[0] == 1
        _, lines, _ = client.retr(1)
    assert (b"\n".join(lines) + b"\n").endswith(MESSAGE)
    recorded = mail_site.inst.last_login(f"alice@{DOMAIN}")
    assert recorded is not None and recorded[1] == source
    api = mail_site.inst.api()
    try:  # the roaming IPs as the backend keeps them (open-smtp, or the SQL relay table)
        relayed = [line for _, line in api.stores.relay().entries()]
    finally:
        api.backend.close()
    assert any(line.startswith(f'{source}:allow,RELAYCLIENT="",'.encode()) for line in relayed)
    assert " Error" not in dovecot.log_text()


def test_imap_login_reads_the_users_mail(dovecot: Dovecot) -> None:
    client = dovecot.imap_login(f"Alice@{DOMAIN}", PASSWORD, new_source_ip())
    try:
        assert client.select("INBOX") == ("OK", [b"1"])
        status, fetched = client.fetch("1", "(BODY.PEEK[])")
        assert status == "OK"
        assert fetched[0][1].replace(b"\r\n", b"\n").endswith(MESSAGE)  # type: ignore[index]
    finally:
        client.logout()
    assert " Error" not in dovecot.log_text()


@pytest.mark.parametrize("login,password", [(f"alice@{DOMAIN}", "wrong"),
                                            (f"nobody@{DOMAIN}", PASSWORD),
                                            ("alice@other.example", PASSWORD)])
def test_bad_login_is_a_clean_rejection(dovecot: Dovecot, login: str, password: str) -> None:
    dovecot.assert_refused(login, password)


def test_a_flag_refuses_its_service_only(mail_site: Site, dovecot: Dovecot) -> None:
    mail_site.ok("vmoduser", "-i", f"alice@{DOMAIN}")
    with dovecot.pop3_login(f"alice@{DOMAIN}", PASSWORD, new_source_ip()) as client:
        assert client.stat()[0] == 1
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        dovecot.imap_login(f"alice@{DOMAIN}", PASSWORD, new_source_ip())
    mail_site.ok("vmoduser", "-x", f"alice@{DOMAIN}")
    dovecot.imap_login(f"alice@{DOMAIN}", PASSWORD, new_source_ip()).logout()


def test_a_service_with_no_flag_of_its_own_is_checked_as_pop(mail_site: Site,
                                                             dovecot: Dovecot) -> None:
    """A login of a service vchkpw has no flag for (doveadm's, ManageSieve's, LMTP's) is
    checked as behind Dovecot 2.3's checkpassword driver, whose program (checkpassword-reply)
    made vchkpw guess POP: a user without POP access is refused, not let in as an SMTP AUTH
    login; SMTP's flag is for submission."""
    mail_site.ok("vmoduser", "-p", f"alice@{DOMAIN}")
    assert dovecot.auth_test(f"alice@{DOMAIN}", PASSWORD).returncode == 77
    for service in ("sieve", "lmtp", "doveadm"):
        answer = http(mail_site, post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD,
                                      service=service, rip="192.0.2.7"))
        assert status_of(answer) == 403, (service, answer)
    mail_site.ok("vmoduser", "-x", f"alice@{DOMAIN}")
    mail_site.ok("vmoduser", "-s", f"alice@{DOMAIN}")
    assert dovecot.auth_test(f"alice@{DOMAIN}", PASSWORD).returncode == 0
    answer = http(mail_site, post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD,
                                  service="submission", rip="192.0.2.7"))
    assert status_of(answer) == 403, answer


def test_doveadm_auth_test_and_user_lookups(mail_site: Site, dovecot: Dovecot) -> None:
    tested = dovecot.auth_test(f"alice@{DOMAIN}", PASSWORD)
    assert tested.returncode == 0, tested.stderr
    assert dovecot.auth_test(f"alice@{DOMAIN}", "wrong").returncode == 77
    found = dovecot.doveadm("user", f"alice@{DOMAIN}")
    assert found.returncode == 0, found.stderr
    fields = dict(line.split("\t", 1) for line in found.stdout.splitlines()[1:])
    assert fields["uid"] == str(mail_site.inst.uid) and fields["gid"] == str(mail_site.inst.gid)
    assert fields["home"] == str(mail_site.user_dir("alice"))
    assert dovecot.doveadm("user", f"nobody@{DOMAIN}").returncode == 67


def test_alias_domain_and_a_changed_password(mail_site: Site, dovecot: Dovecot) -> None:
    """user@alias logs in as the real domain's user; a password changed with vpasswd is the
    one the very next login needs."""
    mail_site.ok("vaddaliasdomain", DOMAIN, "alias.example")
    tested = dovecot.auth_test("alice@alias.example", PASSWORD)
    assert tested.returncode == 0, tested.stderr
    assert f"user=alice@{DOMAIN}" in tested.stdout
    mail_site.ok("vpasswd", f"alice@{DOMAIN}", "Changed-2")
    assert dovecot.auth_test(f"alice@{DOMAIN}", PASSWORD).returncode == 77
    dovecot.imap_login(f"alice@{DOMAIN}", "Changed-2", new_source_ip()).logout()


def test_with_the_server_down_a_login_is_a_temporary_failure(mail_site: Site,
                                                             dovecot: Dovecot) -> None:
    """Never "wrong password" because the server is not there: Dovecot answers a temporary
    failure, and the client may try again."""
    server(mail_site).stop()
    tested = dovecot.auth_test(f"alice@{DOMAIN}", PASSWORD)
    assert tested.returncode == 75, (tested.stdout, tested.stderr)
    with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
        dovecot.imap_login(f"alice@{DOMAIN}", PASSWORD, new_source_ip())
    checked = mail_site.inst.run("vcheck", f"alice@{DOMAIN}")  # a fault, where it is not without
    assert checked.returncode != 0, checked.stdout
    assert ("Dovecot 2.4's logins through vpopmail-auth.lua (server.dovecot_callers: root) fail"
            in checked.stdout), checked.stdout


def test_vcheck_says_logins_wait_while_systemd_holds_the_lookup_socket(mail_site: Site
                                                                       ) -> None:
    """With the server down and systemd holding the lookup socket, Dovecot's logins wait in
    its queue for the next server (test_a_lookup_socket_systemd_holds_outlives_the_server):
    vcheck says so, a fault still (they wait until a server comes), where it said that
    they fail; with the socket gone too, they fail (above)."""
    server(mail_site).stop()
    path = lookup_socket(mail_site)
    with held_socket(path):
        checked = mail_site.inst.run("vcheck", f"alice@{DOMAIN}")
    assert checked.returncode == 12, checked.stdout
    assert (f"Dovecot 2.4's logins through vpopmail-auth.lua (server.dovecot_callers: root) "
            f"wait in the queue of {path}, which listens while the server is down"
            in checked.stdout), checked.stdout
    assert " fail" not in checked.stdout, checked.stdout

@pytest.mark.sql_only
def test_a_login_whose_lastauth_row_waits_on_a_lock_logs_in(mail_site: Site,
                                                            dovecot: Dovecot) -> None:
    """lastauth locked (a backup's read lock): the login waits locks.timeout (20 s by
    default) at the lastauth REPLACE and goes on without the row, as through Dovecot 2.3's
    checkpassword, within Dovecot's own 60 s auth-worker lookup timeout; a wrong password
    (no lastauth row) is refused at once. Before, vpopmail-auth.lua gave up after 15 s: a
    temporary failure for the right password while the lock lasted."""
    database = mail_site.inst.database
    assert database is not None
    assert mariadb_site.CLIENT is not None
    client = [mariadb_site.CLIENT, "--no-defaults", "-S", database.server.socket, "-uroot",
              database.name, "-e", "LOCK TABLES lastauth READ; SELECT SLEEP(60)"]
    with subprocess.Popen(client, stdout=subprocess.DEVNULL) as locker:
        try:
            time.sleep(1)
            with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                dovecot.imap_login(f"alice@{DOMAIN}", "wrong", new_source_ip())
            started = time.monotonic()
            session = dovecot.imap_login(f"alice@{DOMAIN}", PASSWORD, new_source_ip(),
                                         timeout=90)
            assert 20 <= time.monotonic() - started < 45
            assert session.select("INBOX") == ("OK", [b"1"])
            session.logout()
        finally:
            locker.kill()
    assert dovecot.imap_login(f"alice@{DOMAIN}", PASSWORD, new_source_ip()).logout()


def test_lookups_answer_vchkpws_decisions(mail_site: Site) -> None:
    """The HTTP lookups themselves: the fields of a login and of a userdb lookup; 403 for a
    wrong password or an unknown user alike; 404 for a userdb lookup of no user; the
    password never in the server's log."""
    answer = http(mail_site, post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD,
                                  service="imap", rip="192.0.2.7", lip="192.0.2.1"))
    assert status_of(answer) == 200, answer
    home = mail_site.user_dir("alice")
    assert answer.split(b"\r\n\r\n", 1)[1].decode() == (
        f"user=alice@{DOMAIN}\nuserdb_home={home}\nuserdb_uid={mail_site.inst.uid}\n"
        f"userdb_gid={mail_site.inst.gid}\n")
    answer = http(mail_site, post("userdb", user=f"alice@{DOMAIN}", service="lmtp"))
    assert answer.split(b"\r\n\r\n", 1)[1].decode() == (
        f"user=alice@{DOMAIN}\nhome={home}\nuid={mail_site.inst.uid}\n"
        f"gid={mail_site.inst.gid}\n")
    for login, password in ((f"alice@{DOMAIN}", "wrong-pw"), (f"bob@{DOMAIN}", "pw")):
        assert status_of(http(mail_site, post("passdb", user=login, password=password,
                                              service="pop3", rip="192.0.2.7"))) == 403
    assert status_of(http(mail_site, post("userdb", user=f"bob@{DOMAIN}"))) == 404
    assert "wrong-pw" not in server(mail_site).log.read_text()


@pytest.mark.parametrize("request_bytes", [
    b"GET /passdb HTTP/1.1\r\n\r\n",
    post("other", user="alice@example.com"),
    post("passdb", user="alice@example.com", password="pw", extra="1"),
    post("passdb", password="pw"),
    post("passdb", user="alice@example.com")[:-5],  # the body cut short: the peer leaves
    b"POST /passdb HTTP/1.1\r\nContent-Length: 99999\r\n\r\n",
    b"POST /passdb HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /passdb HTTP/1.1\r\n" + b"X: y\r\n" * 2000 + b"\r\n",
    post("passdb", user="alice@example.com\0x", password="pw"),
])
def test_a_bad_request_is_refused_and_the_server_serves_on(mail_site: Site,
                                                           request_bytes: bytes) -> None:
    answer = http(mail_site, request_bytes)
    assert status_of(answer) in (400, 0), answer  # 0: dropped (no whole request came)
    good = http(mail_site, post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD))
    assert status_of(good) == 200, good


def form(body: bytes) -> bytes:
    """A /passdb request of ``body`` as it is."""
    return b"POST /passdb HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body


@pytest.mark.parametrize("request_bytes", [
    b"POST /passdb HTTP/1.1\r\nContent-Length: \xb2\r\n\r\nuser=a",  # a digit, not 0-9
    form(b"user=alice%40example.com&password=pw&Secret-42"),  # a client that did not encode
    form(b"user=alice%40example.com&password=pw&Secret-42=pw2"),  # its password's & or =
])
def test_a_malformed_request_is_answered_400_without_its_values_in_the_log(
        mail_site: Site, request_bytes: bytes) -> None:
    """A 400 (Dovecot's temporary failure), never a dropped connection; what the log says of
    it names no field's value: a password's part is not in the log."""
    answer = http(mail_site, request_bytes)
    assert status_of(answer) == 400, (answer, server(mail_site).lines())
    log = server(mail_site).log.read_text()
    assert "refused a lookup" in log and "Secret" not in log, log


def test_credentials_longer_than_any_login_are_refused_not_a_fault(mail_site: Site) -> None:
    """Past what vchkpw reads (512 bytes: no user name and password are that long) a login is
    refused and a lookup finds no user (before: 503, a fault that Dovecot logged as an error,
    for anyone to cause)."""
    long = post("passdb", user=f"alice@{DOMAIN}", password="p" * 600, service="imap")
    assert status_of(http(mail_site, long)) == 403
    user = post("userdb", user="a" * 300 + f"@{DOMAIN}" + "b" * 300)
    assert status_of(http(mail_site, user)) == 404
    ok = post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD, service="imap")
    assert status_of(http(mail_site, ok)) == 200


def test_a_caller_not_listed_gets_no_answer(mail_site: Site) -> None:
    """Only server.dovecot_callers may ask: anyone else's HTTP is not even read as such."""
    answer = http(mail_site, post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD),
                  user="nobody")
    assert answer == b""
    assert any("not a vpopmail-server request" in line for line in server(mail_site).lines())


def test_a_listed_unprivileged_caller_is_served_lookups_only(root_vhome: Install) -> None:
    """A caller listed besides root (an auth-worker run as another user) is served with the
    vpopmail user's rights, for lookups alone: its vchkpw and vdelivermail runs are
    declined (its front ends then run the Python programs as itself)."""
    root_vhome.set_config("server", "dovecot_callers", "root nobody")
    with served_login_site(root_vhome) as login_site:
        site = Site(root_vhome, True)
        site.server = server_of(login_site)  # type: ignore[attr-defined]
        answer = http(site, post("passdb", user=f"alice@{DOMAIN}", password="pw",
                                 service="imap"), user="nobody")
        assert status_of(answer) == 200, answer
        login = login_site.login(f"alice@{DOMAIN}", "pw", wrap=tuple(as_user_argv("nobody")))
        assert login.code == 111  # the Python vchkpw, as nobody, cannot read the users
        assert any("served for Dovecot's lookups only" in line
                   for line in server(site).lines())


def test_a_lookup_after_a_root_login_runs_in_the_servers_state(root_vhome: Install) -> None:
    """A worker serving root's lookups also serves root's own vchkpw runs (qmail-popup's), each
    in its caller's environment and file-size limit: a lookup after one runs in the server's,
    not that caller's. An ad-hoc run with VPOPMAIL_CONFIG naming another file does not make
    Dovecot's logins read that file; a login under a small file-size limit does not keep the
    next lookup from recording lastauth; the reason of a lookup's 503 is in the server's log,
    not in the descriptors the last caller was given back."""
    root_vhome.set_config("server", "dovecot_callers", "root")
    with served_login_site(root_vhome) as login_site:
        site = Site(root_vhome, True)
        site.server = server_of(login_site)  # type: ignore[attr-defined]
        lookup = post("passdb", user=f"alice@{DOMAIN}", password="pw", service="imap",
                      rip="192.0.2.71")
        assert status_of(http(site, lookup)) == 200
        other = login_site.login(f"alice@{DOMAIN}", "pw",
                                 env={**POP_ENV, "VPOPMAIL_CONFIG": "/nonexistent.toml"})
        assert other.code == 111  # its own run reads the file it names
        answer = http(site, lookup)
        assert status_of(answer) == 200, (answer, server(site).lines())
        limited = login_site.login(f"alice@{DOMAIN}", "pw", program=["/bin/true"],
                                   wrap=("prlimit", "--fsize=1:"))
        assert limited.code == 0
        assert status_of(http(site, post("passdb", user=f"alice@{DOMAIN}", password="pw",
                                          service="imap", rip="192.0.2.72"))) == 200
        recorded = root_vhome.last_login(f"alice@{DOMAIN}")
        assert recorded is not None and recorded[1] == "192.0.2.72", server(site).lines()
        if root_vhome.backend == "cdb":  # a fault: the user file damaged
            (site.domain_dir / "vpasswd.cdb").write_bytes(b"\xff" * 100)
            answer = http(site, post("passdb", user=f"alice@{DOMAIN}", password="pw"))
            assert status_of(answer) == 503  # and why, in the server's log
            assert any("user database unreadable" in line for line in server(site).lines()), \
                server(site).lines()


def test_a_caller_list_naming_no_user_stops_the_server(root_vhome: Install) -> None:
    root_vhome.ok("vadddomain", DOMAIN, "secret")
    root_vhome.set_config("server", "dovecot_callers", "no-such-user-here")
    result = subprocess.run([str(root_vhome.bin / "vpopmail-server")], capture_output=True,
                            text=True, env=CLEAN_ENV, cwd="/", timeout=60)
    assert result.returncode == 111
    reason = "server.dovecot_callers: there is no user 'no-such-user-here'"
    assert reason in result.stderr
    checked = root_vhome.run("vcheck", f"postmaster@{DOMAIN}")
    assert checked.returncode != 0, checked.stdout
    assert reason in checked.stdout and "vpopmail-server does not start" in checked.stdout


def test_only_the_listed_root_may_connect_to_the_lookup_socket(mail_site: Site) -> None:
    """With root the one caller listed, its socket is root's alone (0600): no other user can
    even queue there."""
    path = lookup_socket(mail_site)
    st = path.stat()
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (0, "0o600")
    denied = subprocess.run([*as_user_argv("nobody"), sys.executable, "-I", "-c", CLIENT,
                             str(path)], input=b"", capture_output=True, timeout=30)
    assert denied.returncode != 0 and b"PermissionError" in denied.stderr
    answer = http(mail_site, post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD),
                  at=path)
    assert status_of(answer) == 200, answer


#: as ``nobody``: keeps argv[2] connections to the socket argv[1], a byte sent on each (so
#: each takes a worker, which waits for the rest of a request); one the server drops is
#: made again at once, until killed
HOLDER = """import select, socket, sys
def hold():
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(sys.argv[1])
    sock.send(b"V")
    return sock
held = [hold() for _ in range(int(sys.argv[2]))]
print("held", flush=True)
while True:
    for sock in select.select(held, [], [])[0]:
        sock.recv(64)
        sock.close()
        held[held.index(sock)] = hold()
"""


def test_a_user_holding_every_other_worker_does_not_stop_dovecots_logins(
        root_vhome: Install) -> None:
    """Dovecot's lookups have no fallback (the front ends run the Python programs when the
    server cannot serve them): workers are kept for server.dovecot_callers, so a local user
    holding all the others leaves its logins served (before: declined after
    server.request_timeout, a temporary failure for every IMAP and POP3 login)."""
    root_vhome.set_config("server", "dovecot_callers", "root")
    root_vhome.set_config("server", "workers", 4)
    root_vhome.set_config("server", "request_timeout", 3)
    with served_login_site(root_vhome) as login_site:
        site = Site(root_vhome, True)
        site.server = server_of(login_site)  # type: ignore[attr-defined]
        holder = subprocess.Popen([*as_user_argv("nobody"), sys.executable, "-I", "-c", HOLDER,
                                   str(server(site).socket), "12"], stdout=subprocess.PIPE)
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
            for at in (lookup_socket(site), server(site).socket):
                answer = http(site, post("passdb", user=f"alice@{DOMAIN}", password="pw"),
                              at=at)
                assert status_of(answer) == 200, (at, answer, server(site).lines())
        finally:
            holder.kill()
            holder.wait()


#: as its user: argv[2] connections to the socket argv[1], a byte sent on each; prints how
#: many of them the server closed within argv[3] seconds
PROBER = """import select, socket, sys, time
held, closed = [], 0
for _ in range(int(sys.argv[2])):
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(sys.argv[1])
    try:
        sock.send(b"V")
        held.append(sock)
    except OSError:  # closed already
        closed += 1
deadline = time.monotonic() + float(sys.argv[3])
while held and time.monotonic() < deadline:
    for sock in select.select(held, [], [], 0.1)[0]:
        try:
            sock.recv(64)
        except OSError:
            pass
        held.remove(sock)
        closed += 1
print(closed, flush=True)
"""


def test_a_caller_not_listed_is_dropped_at_the_lookup_socket(root_vhome: Install) -> None:
    """With a caller listed besides root the lookup socket is open to every user (0666), but
    it serves only the listed callers: anyone else's connection there is closed at once, not
    queued past the server's main socket's bound (BACKLOG) or handed a worker until
    server.request_timeout (a local user could fill the server's descriptors there: every
    accept then failed, and the socket, always polled, made the loop spin logging it)."""
    root_vhome.set_config("server", "dovecot_callers", "root nobody")
    root_vhome.set_config("server", "request_timeout", 30)
    with served_login_site(root_vhome) as login_site:
        site = Site(root_vhome, True)
        site.server = server_of(login_site)  # type: ignore[attr-defined]
        path = lookup_socket(site)
        assert oct(path.stat().st_mode & 0o777) == "0o666"
        probed = subprocess.run([*as_user_argv("daemon"), sys.executable, "-I", "-c", PROBER,
                                 str(path), "20", "5"], capture_output=True, text=True,
                                timeout=60, check=True)
        assert probed.stdout.strip() == "20", (probed.stdout, server(site).lines())
        answer = http(site, post("passdb", user=f"alice@{DOMAIN}", password="pw",
                                 service="imap"), user="nobody", at=path)
        assert status_of(answer) == 200, answer


def test_a_server_out_of_descriptors_leaves_the_lookup_socket_alone_a_while(
        mail_site: Site) -> None:
    """An accept that fails (EMFILE: the server at its descriptor limit) leaves the caller in
    the lookup socket's queue, which stays readable: the socket is not polled for a while, as
    the main one (before: polled again at once, the loop spun, a log line each turn); the
    caller is served once a descriptor is free."""
    pid = server(mail_site).proc.pid
    taken = {int(fd) for fd in Path(f"/proc/{pid}/fd").iterdir() for fd in [fd.name]}
    lowest = min(set(range(len(taken) + 1)) - taken)
    limits = Path(f"/proc/{pid}/limits").read_text()
    hard = next(line.split()[4] for line in limits.splitlines()
                if line.startswith("Max open files"))
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={lowest}:{hard}"], check=True)
    client = subprocess.Popen([sys.executable, "-I", "-c", CLIENT, str(lookup_socket(mail_site))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert client.stdin is not None
        client.stdin.write(post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD))
        client.stdin.close()
        time.sleep(1)
        failed = sum("cannot accept" in line for line in server(mail_site).lines())
        assert 0 < failed <= 20, failed
    finally:
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={hard}:{hard}"], check=True)
    assert client.stdout is not None
    answer = client.stdout.read()
    client.wait(timeout=30)
    assert status_of(answer) == 200, (answer, server(mail_site).lines()[-5:])


def ask(path: Path, request: bytes) -> bytes:
    """``request`` sent over a connection to ``path`` from this process; the whole answer."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_reload_keeps_the_lookup_socket(mail_site: Site) -> None:
    """SIGHUP re-executes the server, and its lookup socket stays open across the exec
    (Dovecot's logins have no fallback, where the front ends run the Python programs): every
    lookup sent meanwhile is answered by the one process or the other (before: the socket
    was gone until the new process listened, and those lookups failed)."""
    request = post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD, service="imap")
    answers: list[object] = []
    done = threading.Event()

    def keep_asking() -> None:
        while not done.is_set():
            try:
                answers.append(status_of(ask(lookup_socket(mail_site), request)))
            except OSError as exc:
                answers.append(type(exc).__name__)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        time.sleep(0.3)
        server(mail_site).proc.send_signal(signal.SIGHUP)
        wait_for(server(mail_site), listening=2)
        time.sleep(0.3)
    finally:
        done.set()
        asker.join()
    assert answers and set(answers) == {200}, (collections.Counter(answers),
                                                server(mail_site).lines())
    st = lookup_socket(mail_site).stat()
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (0, "0o600")


def lookup_in_thread(path: Path, request: bytes) -> tuple[threading.Thread, list[object]]:
    """``request`` sent to ``path`` from a thread, started: its answer's status (or the
    error's name) is put in the list when it comes."""
    answers: list[object] = []

    def asking() -> None:
        try:
            answers.append(status_of(ask(path, request)))
        except OSError as exc:
            answers.append(type(exc).__name__)

    asker = threading.Thread(target=asking)
    asker.start()
    return asker, answers


def test_a_lookup_socket_systemd_holds_outlives_the_server(mail_site: Site) -> None:
    """The lookup socket passed by systemd (socket activation: packaging/service/systemd's
    vpopmail-lookup.socket) listens while the server is down: a lookup sent while it is
    stopped, reloading or killed waits in the socket's queue and the next server answers it
    (before: a server that stopped removed it, and Dovecot 2.4's HTTP client, refused, backed
    off for up to a minute). The server's own socket is made and removed as ever (the front
    ends run the Python programs while it is down)."""
    server(mail_site).stop()
    path = lookup_socket(mail_site)
    request = post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD, service="imap")
    with held_socket(path) as held:
        path.chmod(0o666)  # the unit's SocketMode; the server's setting wins
        with running_server(mail_site.inst, passed=held) as first:
            assert status_of(ask(path, request)) == 200
            assert any(f"lookups at {path}: the socket systemd holds" in line
                       for line in first.lines()), first.lines()
            assert oct(path.stat().st_mode & 0o777) == "0o600"
            first.proc.send_signal(signal.SIGHUP)
            wait_for(first, listening=2)
            assert status_of(ask(path, request)) == 200
        assert path.exists() and not first.socket.exists()
        asker, answers = lookup_in_thread(path, request)
        time.sleep(0.5)
        assert not answers, answers  # waiting, not refused
        with running_server(mail_site.inst, passed=held) as second:
            asker.join(60)
            assert answers == [200], second.lines()
            second.proc.kill()  # a crash: its workers go with it
            second.proc.wait()
            asker, answers = lookup_in_thread(path, request)
            time.sleep(0.5)
        assert not answers, answers
        with running_server(mail_site.inst, passed=held) as third:
            asker.join(60)
            assert answers == [200], third.lines()


def test_a_socket_passed_that_is_not_the_lookup_socket_is_closed(mail_site: Site,
                                                                  tmp_path: Path) -> None:
    """A socket unit listening elsewhere than paths.lookup_socket: its socket is closed with
    a log line saying why, and the server makes its own lookup socket."""
    server(mail_site).stop()
    with held_socket(tmp_path / "other.sock") as held:
        with running_server(mail_site.inst, passed=held) as started:
            assert status_of(ask(lookup_socket(mail_site), post(
                "passdb", user=f"alice@{DOMAIN}", password=PASSWORD, service="imap"))) == 200
            assert (f"socket activation: descriptor 3 closed: {tmp_path / 'other.sock'} is "
                    f"not paths.lookup_socket ({lookup_socket(mail_site)})"
                    in started.lines()[0]), started.lines()
        assert not lookup_socket(mail_site).exists()


def test_the_front_ends_socket_passed_by_systemd_is_given_up_saying_so(mail_site: Site
                                                                       ) -> None:
    """A socket unit listening at paths.server_socket (the front ends' socket, never
    systemd's: held while the server is down, it would keep them waiting): the server says
    so, declines the callers queued there (they run the Python program) and makes its own
    socket in its place (before: it found systemd's listening, waited 10 s for an answer and
    stopped, saying that "a server already listens on PATH: pid 1 took the connection but
    did not answer within 10 s")."""
    server(mail_site).stop()
    path = server(mail_site).socket
    with held_socket(path) as held:
        path.chmod(0o666)  # a socket unit's default SocketMode
        systemds = path.stat().st_ino
        queued: list[int] = []
        delivery = threading.Thread(target=lambda: queued.append(
            mail_site.deliver("alice").returncode))
        delivery.start()
        time.sleep(0.3)
        assert not queued  # waiting at systemd's socket
        with running_server(mail_site.inst, passed=held) as started:
            delivery.join(20)
            assert queued == [0], started.lines()
            assert (f"socket activation: descriptor 3 closed: it is paths.server_socket "
                    f"({path}), the front ends' socket" in started.lines()[0]), started.lines()
            assert path.stat().st_ino != systemds
            without_fallbacks(mail_site.inst)
            assert mail_site.deliver("alice").returncode == 0
        assert not path.exists()
    assert len(mail_site.new_files(mail_site.maildir("alice"))) == 3


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed")
def test_systemd_socket_activate_starts_the_server_at_the_first_lookup(mail_site: Site) -> None:
    """systemd's own socket activation tool listens at the lookup socket and starts the
    server at the first connection, passing the socket: that first lookup is answered."""
    server(mail_site).stop()
    path = lookup_socket(mail_site)
    inst = mail_site.inst
    log = inst.prefix.parent / "activated.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(["systemd-socket-activate", "-l", str(path),
                                 str(inst.bin / "vpopmail-server")],
                                stdout=fh, stderr=fh, env=CLEAN_ENV, cwd="/")
    started = Server(inst, proc, log)
    try:
        deadline = time.monotonic() + 20
        while not path.exists():  # systemd-socket-activate listens
            assert proc.poll() is None and time.monotonic() < deadline, started.lines()
            time.sleep(0.02)
        answer = ask(path, post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD,
                                service="imap"))
        assert status_of(answer) == 200, started.lines()
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    finally:
        assert started.stop() == 0, started.lines()


def test_with_the_lookup_socket_held_logins_wait_out_a_crash(mail_site: Site,
                                                             dovecot: Dovecot) -> None:
    """With systemd holding the lookup socket, a login while the server is down (killed,
    restarting) waits for it instead of failing, and the logins after its return are
    answered at once. Without it Dovecot's HTTP client, refused, waits before it connects
    again, twice as long after each failure, up to a minute (not shortened by its settings
    in 2.4.1): the first login after a few seconds' outage waited 10 to 23 s, past Dovecot's
    own 60 s lookup limit once."""
    server(mail_site).stop()
    with held_socket(lookup_socket(mail_site)) as held:
        with running_server(mail_site.inst, passed=held) as first:
            assert dovecot.auth_test(f"alice@{DOMAIN}", PASSWORD).returncode == 0
            first.proc.kill()
            first.proc.wait()
        during: list[subprocess.CompletedProcess[str]] = []
        login = threading.Thread(target=lambda: during.append(
            dovecot.auth_test(f"alice@{DOMAIN}", PASSWORD)))
        login.start()
        time.sleep(3)
        assert not during, during  # waiting, not refused
        with running_server(mail_site.inst, passed=held):
            login.join(60)
            assert during and during[0].returncode == 0, during
            started = time.monotonic()
            tested = dovecot.auth_test(f"alice@{DOMAIN}", PASSWORD)
            took = time.monotonic() - started
    assert tested.returncode == 0, (tested.stdout, tested.stderr)
    assert took < 5, took  # not a benchmark: the backoff it replaces took 10 s and more


#: socket path -> the status requests :func:`served` has made of that server
_STATUS_ASKED: dict[str, int] = {}


def served(site: Site) -> int:
    """The requests the server reports served, less the status requests this module made of
    it, once the count has settled (a worker counts a request after its answer, so a count
    may lag: how many status requests settling takes varies)."""
    socket = str(server(site).socket)

    def count() -> int:
        state = wire.ask_status(socket, uid=os.geteuid())[1]
        _STATUS_ASKED[socket] = _STATUS_ASKED.get(socket, 0) + 1
        found = re.search(r"(\d+) requests?,", state)
        assert found, state
        return int(found.group(1))

    last, now = -1, count()
    while now != last + 1:  # unchanged but for the status request itself
        time.sleep(0.2)
        last, now = now, count()
    return now - _STATUS_ASKED[socket]


def test_a_login_asks_the_server_once(mail_site: Site, dovecot: Dovecot) -> None:
    """The shipped configuration's userdb prefetch: an IMAP or POP3 login takes its userdb
    fields (uid, gid, home) from the passdb's answer, so the server runs vchkpw once a login
    (before: a passdb and then a userdb lookup, two requests, and a server restarted between
    them failed the login); doveadm's user lookups, which make no passdb lookup, still ask
    the server's userdb."""
    before = served(mail_site)
    session = dovecot.imap_login(f"alice@{DOMAIN}", PASSWORD, new_source_ip())
    assert session.select("INBOX") == ("OK", [b"1"])
    session.logout()
    with dovecot.pop3_login(f"alice@{DOMAIN}", PASSWORD, new_source_ip()) as client:
        assert client.stat()[0] == 1
    after = served(mail_site)
    assert after - before == 2, (before, after)  # two logins
    found = dovecot.doveadm("user", f"alice@{DOMAIN}")
    assert found.returncode == 0, found.stderr
    assert f"home\t{mail_site.user_dir('alice')}" in found.stdout
    assert served(mail_site) == after + 1  # one userdb lookup


@pytest.mark.parametrize("count", ["3", "²"])
def test_what_socket_activation_passes_amiss_is_left_alone(mail_site: Site, tmp_path: Path,
                                                           count: str) -> None:
    """Descriptors that LISTEN_FDS counts but are not open (3 for one socket), or a count in
    other digits than ASCII ones (sd_listen_fds(3) takes it as no count): the server's own
    files are never taken for passed sockets and closed (before, its lock and listener got
    those numbers and it closed its own socket: its workers failed, its stop raised), nor
    does it raise ValueError at its start; a passed file that is not a socket is closed."""
    server(mail_site).stop()
    path = lookup_socket(mail_site)
    held_here = count == "3"  # else not taken: held elsewhere, the server makes its own
    with held_socket(path if held_here else tmp_path / "held.sock") as held, \
            open(tmp_path / "file", "wb") as other:
        passed = [held, None, None] if held_here else [held]
        with running_server(mail_site.inst, passed=passed, count=count) as started:
            assert status_of(ask(path, post("passdb", user=f"alice@{DOMAIN}",
                                             password=PASSWORD, service="imap"))) == 200
            assert mail_site.deliver("alice").returncode == 0
            assert subprocess.run([str(mail_site.inst.bin / "vpopmail-server"), "--status"],
                                  env=CLEAN_ENV, capture_output=True).returncode == 0
            assert any("the socket systemd holds" in line
                       for line in started.lines()) == held_here, started.lines()
        assert started.proc.returncode == 0, started.lines()
        with running_server(mail_site.inst, passed=[held, other], count="2") as started:
            fds = [os.readlink(f"/proc/{started.proc.pid}/fd/{fd}")
                   for fd in os.listdir(f"/proc/{started.proc.pid}/fd")]
            assert str(tmp_path / "file") not in fds, fds


def test_a_stop_answers_the_lookups_it_took_from_the_socket_systemd_holds(
        mail_site: Site) -> None:
    """Lookups the server took from systemd's socket but had no worker for yet cannot go back
    to its queue: at a stop they are answered first, as at a reload, so none fails (before:
    declined with the front ends' DECLINE, which Dovecot's HTTP client read as a broken
    answer: of 200 lookups asked at once of 2 workers, about 120 failed)."""
    server(mail_site).stop()
    mail_site.inst.set_config("server", "workers", 2)
    path = lookup_socket(mail_site)
    request = post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD, service="imap")
    with held_socket(path) as held:
        with running_server(mail_site.inst, passed=held) as first:
            askers = [lookup_in_thread(path, request) for _ in range(200)]
            time.sleep(0.3)
            first.proc.send_signal(signal.SIGTERM)
            assert first.proc.wait(60) == 0, first.lines()
        with running_server(mail_site.inst, passed=held):
            for asker, _ in askers:
                asker.join(60)
    answers = collections.Counter(answer for _, answered in askers for answer in answered)
    assert answers == {200: 200}, (answers, first.lines())


def test_the_socket_systemd_holds_is_kept_through_reloads_that_leave_it_unused(
        mail_site: Site) -> None:
    """A reload whose configuration leaves systemd's socket unused (server.dovecot_callers
    emptied, paths.lookup_socket moved) keeps it open, not polled, and a later reload that
    names it again takes it back (before: closed, so that reload made its own socket there,
    found systemd's listening, waited 10 s for an answer and exited 111); the mode follows
    server.dovecot_callers."""
    server(mail_site).stop()
    inst = mail_site.inst
    path = lookup_socket(mail_site)
    request = post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD, service="imap")
    edits = [("server", "dovecot_callers", "root,vpopmail"), ("server", "dovecot_callers", ""),
             ("server", "dovecot_callers", "root"), ("paths", "lookup_socket", "run/moved.sock"),
             ("paths", "lookup_socket", "run/lookup.sock")]
    with held_socket(path) as held:
        with running_server(inst, passed=held) as started:
            for starts, (section, key, value) in enumerate(edits, 2):
                inst.set_config(section, key, value)
                started.proc.send_signal(signal.SIGHUP)
                wait_for(started, listening=starts, timeout=5)
                now = path.parent / ("moved.sock" if value == "run/moved.sock" else "lookup.sock")
                if value:
                    assert status_of(ask(now, request)) == 200, (value, started.lines())
                    assert oct(path.stat().st_mode & 0o777) == (
                        "0o666" if value == "root,vpopmail" else "0o600"), value
        assert path.exists() and not (path.parent / "moved.sock").exists()


def test_a_sigkill_under_a_backlog_leaves_the_lookups_in_the_queue_systemd_holds(
        mail_site: Site) -> None:
    """With systemd holding the lookup socket, lookups left in its queue outlive a SIGKILL of
    the server (the next one answers them), so the server takes from it no more than its
    workers can be handed at once: a lookup taken and then waiting in the server for a
    worker would die with it, a failed login that the server alone caused (before: it took
    all it could, and of 300 lookups queued for 2 workers, killed after the first 10
    answers, 285 to 289 were reset unanswered; with 32 workers 5 to 254). What it holds
    between an accept and the hand-over to a worker, some tens of microseconds, still dies
    with it: one a worker at most (a kill just after an answer, as here, when a worker
    has said it is free, lost one in about a third of the runs)."""
    server(mail_site).stop()
    mail_site.inst.set_config("server", "workers", 2)
    path = lookup_socket(mail_site)
    request = post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD, service="imap")
    with held_socket(path) as held:
        with running_server(mail_site.inst, passed=held) as first:
            asked = [asking(path, request) for _ in range(300)]
            answered = select.poll()
            for sock in asked:
                answered.register(sock, select.POLLIN)
            deadline = time.monotonic() + 30
            while len(answered.poll(10)) < 10 and time.monotonic() < deadline:
                pass
            taken = open_sockets(first.proc.pid)
            first.proc.kill()
            first.proc.wait()
        with running_server(mail_site.inst, passed=held):
            answers = collections.Counter(status_or_error(sock) for sock in asked)
    assert answers[200] >= 300 - 2, (answers, f"{taken} sockets open", first.lines()[-3:])


def asking(path: Path, request: bytes) -> socket.socket:
    """A connection to ``path`` (queued at it: connect does not wait for the accept) that has
    sent ``request``."""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(60)
    sock.connect(str(path))
    sock.sendall(request)
    return sock


def status_or_error(sock: socket.socket) -> object:
    """The status of the answer read to its end on ``sock`` (0: none), or the error's name."""
    answer = b""
    with sock:
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError as exc:
            return type(exc).__name__
    return status_of(answer)


def test_lookups_are_taken_while_other_callers_keep_every_worker(mail_site: Site) -> None:
    """With every worker taken by the front ends' callers (one worker, deliveries as the
    vpopmail user and qmail-popup's logins as root, each identity queueing behind the other
    in the server), a lookup still waits in the server in its turn and is answered (before:
    the server took a lookup only when a worker was idle or one could be forked, which the
    callers waiting in it took first: lookups stayed in the socket's queue for as long as
    the load lasted, 30 s and more)."""
    server(mail_site).stop()
    inst = mail_site.inst
    inst.set_config("server", "workers", 1)
    work = inst.prefix.parent / "loops"
    work.mkdir(mode=0o755)
    (work / "message").write_bytes(MESSAGE)
    (work / "fd3").write_bytes(f"alice@{DOMAIN}\0{PASSWORD}\0\0".encode())
    deliveries = ([*as_user_argv(inst.user), "/bin/sh", "-c", LOOP,
                   str(inst.bin / "vdelivermail"), "", "bounce-no-mailbox"],
                  qmail_local_env("alice", DOMAIN, str(mail_site.domain_dir)), "message")
    logins = (["/bin/sh", "-c", LOOP, str(inst.bin / "vchkpw"), "/bin/true"], POP_ENV, "fd3")
    request = post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD, service="imap")
    with running_server(inst) as started:
        loops = [subprocess.Popen(argv, env={**env, "INPUT": str(work / name)},
                                  cwd=str(mail_site.domain_dir), start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for argv, env, name in (deliveries, logins) * 3]
        took = []
        try:
            time.sleep(1)
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                asked = time.monotonic()
                sock = asking(lookup_socket(mail_site), request)
                sock.settimeout(10)
                answer = status_or_error(sock)
                took.append(time.monotonic() - asked)
                assert answer == 200, (answer, took, started.lines()[-3:])
        finally:
            for loop in loops:
                os.killpg(loop.pid, signal.SIGKILL)
                loop.wait()
    assert max(took) < 5, took


#: argv[0] (a front end) run again and again with its arguments, ``$INPUT`` as its fd 0 (a
#: delivery's message) and fd 3 (a login's), until killed
LOOP = 'while :; do "$0" "$@" <"$INPUT" 3<"$INPUT"; done'


def deliveries_among_lookups(site: Site, workers: int, loops: int, deliveries: int,
                             settle: float = 0, request_timeout: int | None = None
                             ) -> list[float]:
    """The seconds each of ``deliveries`` deliveries to alice took, one after another, while
    ``loops`` threads ask lookups without a pause, on a server of ``workers`` workers (and
    ``request_timeout``), the deliveries starting ``settle`` seconds after the lookups; every
    lookup answered 200, and no caller declined."""
    server(site).stop()
    inst = site.inst
    inst.set_config("server", "workers", workers)
    if request_timeout is not None:
        inst.set_config("server", "request_timeout", request_timeout)
    request = post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD, service="imap")
    answers: list[object] = []
    done = threading.Event()

    def ask_on() -> None:
        while not done.is_set():
            answers.append(status_or_error(asking(lookup_socket(site), request)))

    took = []
    with running_server(inst) as started:
        askers = [threading.Thread(target=ask_on) for _ in range(loops)]
        for asker in askers:
            asker.start()
        try:
            time.sleep(settle)
            for _ in range(deliveries):
                asked = time.monotonic()
                assert site.deliver("alice").returncode == 0
                took.append(time.monotonic() - asked)
        finally:
            done.set()
            for asker in askers:
                asker.join()
        lines = started.lines()
    assert answers and set(answers) == {200}, collections.Counter(answers)
    assert not [line for line in lines if "declined" in line], lines[-5:]
    return took


def test_deliveries_are_served_while_lookups_keep_every_worker(mail_site: Site) -> None:
    """The workers kept for server.dovecot_callers are a floor for them, not a ceiling for
    the others: with every worker serving lookups (two workers, lookups asked three at a
    time), a delivery still gets one, an idle lookup worker retired for it (before: the
    lookups' workers were counted against the other callers' share, which then never had
    room; each delivery was declined after server.request_timeout and ran Python)."""
    took = deliveries_among_lookups(mail_site, workers=2, loops=3, deliveries=5, settle=1,
                                    request_timeout=3)
    assert max(took) < 3, took


def test_two_identities_taking_turns_keep_their_workers(mail_site: Site) -> None:
    """With a worker for each of two identities (two workers: Dovecot's lookups, deliveries
    as the vpopmail user), each keeps its own: a caller whose identity's worker has just
    answered, and says so a moment later, waits for it, no idle worker of the other identity
    retired for it (before: a lookup asked just after the last one's answer retired the
    delivery worker, the next delivery retired the lookup worker in turn: a worker forked
    for about every other delivery, 154 forks in 6 s of one lookup loop and one delivery
    loop)."""
    new = mail_site.maildir("alice") / "new"
    before = set(new.iterdir())
    deliveries_among_lookups(mail_site, workers=2, loops=1, deliveries=30)
    pids = {re.search(r"P(\d+)", path.name).group(1)  # type: ignore[union-attr]
            for path in set(new.iterdir()) - before}
    assert len(pids) <= 3, len(pids)


def test_the_oldest_caller_has_the_worker_retired_for_it(mail_site: Site) -> None:
    """Callers are served oldest first: a delivery waiting for the one worker, which
    Dovecot's lookups keep (workers = 1, none kept), has it retired for it before a lookup
    that came after is handed it (before: each time the lookup worker said it was idle, the
    lookup waiting behind the delivery was handed it, and the retire came only when no
    lookup waited: with two lookup loops, 6 deliveries in 5 s, up to 2.9 s each, some
    declined at server.request_timeout)."""
    took = deliveries_among_lookups(mail_site, workers=1, loops=2, deliveries=5, settle=0.5,
                                    request_timeout=3)
    assert max(took) < 1, took


@contextlib.contextmanager
def relay_held(site: Site, seconds: int) -> Iterator[None]:
    """For ``seconds``, what a roaming login writes held by another process: open-smtp.lock
    (cdb files), the lastauth table (SQL): a login waits for it (less than locks.timeout)."""
    inst = site.inst
    if inst.database is not None:
        assert mariadb_site.CLIENT is not None
        argv = [mariadb_site.CLIENT, "--no-defaults", "--unbuffered", "-S",
                inst.database.server.socket, "-uroot", inst.database.name, "-e",
                f"LOCK TABLES lastauth READ; SELECT 'held'; SELECT SLEEP({seconds})"]
    else:
        lock = inst.prefix / "etc" / "open-smtp.lock"  # the vpopmail user's, as vchkpw makes it
        lock.touch(0o600)
        os.chown(lock, inst.uid, inst.gid)
        argv = [sys.executable, "-c", "import fcntl, os, sys, time\n"
                "fd = os.open(sys.argv[1], os.O_RDWR)\n"
                "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\n"
                "time.sleep(float(sys.argv[2]))\n", str(lock), str(seconds)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None
        assert "held" in holder.stdout.readline()
        yield


def behind_a_held_worker(site: Site, second: Callable[[bytes], object], held: int = 4
                         ) -> tuple[object, object, list[str]]:
    """The one worker (server.request_timeout 1 s) held ``held`` s by a login waiting on a lock, a
    delivery waiting behind it, then ``second`` run with the lookup request (it asks a
    lookup, taken to wait behind the delivery): (the held login's answer, what ``second``
    returned, the server's log lines); the delivery exited 0."""
    server(site).stop()
    inst = site.inst
    inst.set_config("server", "workers", 1)
    inst.set_config("server", "request_timeout", 1)
    request = post("passdb", user=f"alice@{DOMAIN}", password=PASSWORD, service="imap",
                   rip=new_source_ip())
    delivered: list[int] = []
    with running_server(inst) as started:
        site.server = started  # type: ignore[attr-defined]  # server(site) for ``second``
        with relay_held(site, held):
            first = asking(lookup_socket(site), request)
            time.sleep(0.5)  # the first holds the worker, waiting for the lock
            delivery = threading.Thread(
                target=lambda: delivered.append(site.deliver("alice").returncode))
            delivery.start()
            time.sleep(0.2)  # the delivery waits in the server: the next lookup is taken
            result = second(request)
            answer = status_or_error(first)
            delivery.join()
        lines = started.lines()
    assert delivered == [0]
    return answer, result, lines


def test_a_lookup_waits_past_request_timeout_for_a_worker(mail_site: Site) -> None:
    """Dovecot's lookups have no fallback and vpopmail-auth.lua waits 45 s for an answer: one
    taken to wait in its turn (behind a delivery) that finds every worker held longer than
    server.request_timeout (the one worker's login waiting on a lock) waits on and is
    answered, not declined (before: declined with the delivery, which runs Python, while
    Dovecot reads the decline as a broken answer: a temporary failure of the login)."""
    def ask(request: bytes) -> object:
        sock = asking(lookup_socket(mail_site), request)
        sock.shutdown(socket.SHUT_WR)  # half closed after its request: still waiting
        return status_or_error(sock)  # once the held worker is free

    answer, second, lines = behind_a_held_worker(mail_site, ask)
    assert [answer, second] == [200, 200], lines[-5:]
    declined = [line for line in lines if "declined" in line]
    assert len(declined) <= 1 and f"uid {mail_site.inst.uid}:" in "".join(declined), declined


def test_a_lookup_whose_client_gave_up_is_dropped_unrun(mail_site: Site) -> None:
    """A lookup waiting past server.request_timeout whose client has closed its connection
    (Dovecot gave up) is dropped with a line saying so, not run later for no one (a login
    with its lastauth and relay writes); the one served meanwhile is answered."""
    def ask_and_leave(request: bytes) -> None:
        asking(lookup_socket(mail_site), request).close()
        time.sleep(1.5)  # past the request timeout, while the worker is held

    answer, _, lines = behind_a_held_worker(mail_site, ask_and_leave)
    assert answer == 200
    dropped = [line for line in lines if "dropped" in line]
    assert len(dropped) == 1 and "uid 0: its client hung up" in dropped[0], lines[-5:]


def test_a_reload_waits_no_longer_than_before_for_a_lookup_past_its_deadline(
        mail_site: Site) -> None:
    """SIGHUP while a lookup taken from the lookup socket waits past server.request_timeout
    for a worker held by a long request: the reload goes ahead at once (the lookup declined,
    as a lookup was before it could wait past its deadline), not once a worker frees up: a
    reload accepts no more at the server's socket, so meanwhile every caller without a
    socket of its identity waited there (before: the reload took as long as the held
    worker, 8 s here, and a delivery sent during it as long)."""
    took: dict[str, float] = {}

    def reload(request: bytes) -> object:
        sock = asking(lookup_socket(mail_site), request)
        time.sleep(1.5)  # past the request timeout, while the worker is held
        started = server(mail_site)
        asked = time.monotonic()
        started.proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)
        delivery = mail_site.deliver("alice")
        took["delivery"] = time.monotonic() - asked
        wait_for(started, listening=2)
        took["reload"] = time.monotonic() - asked
        return delivery.returncode, status_or_error(sock)

    answer, (delivered, second), lines = behind_a_held_worker(mail_site, reload, held=8)
    assert answer == 200 and delivered == 0, lines[-5:]
    assert took["reload"] < 2 and took["delivery"] < 2, (took, second, lines[-6:])
