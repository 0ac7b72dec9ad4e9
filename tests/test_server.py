"""vpopmail-server with the C front ends: the runs go through it, it sees every admin change at
once, and bad clients, crowds and its own sudden death lose nothing (issue 14). The delivery
and login suites also run whole through it (``through_server``, tests/conftest.py)."""
from __future__ import annotations

import contextlib
import os
import pwd
import re
import resource
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import snapshot
from install_site import CLEAN_ENV, INSTALL, VENV, Install, as_user_argv
from delivery_site import DOMAIN, MESSAGE, Site, qmail_local_env
from login_site import POP_ENV, LoginSite
from mariadb_site import RO, Database, MariaDB, frozen_answers_temporary, proxied
from server_site import (Server, fill_queue, open_sockets, running_server, served_login_site,
                         server_of, wait_for, without_fallbacks, worker_ids)
from vpopmail.server import status
from vpopmail.wire import BODY, DECLINE, EXIT, HEADER, LIMITS, VERSION, identity_socket

NO_MAILBOX = b"Sorry, no mailbox here by that name. (#5.1.1)\n"


@pytest.fixture
def site(root_vhome: Install, request: pytest.FixtureRequest) -> Iterator[LoginSite]:
    """example.com with alice (password pw) on a root install, its server running with a
    short request timeout; its workers serve many requests each (the default), or as
    parametrized: "fresh" (server.requests_per_worker = 1: a new worker for every request) /
    "reused"."""
    root_vhome.set_config("server", "request_timeout", 2)
    if hasattr(request, "param"):  # "fresh" / "reused", or server.* settings
        settings = request.param if isinstance(request.param, dict) else {
            "requests_per_worker": 1 if request.param == "fresh" else 1000}
        for key, value in settings.items():
            root_vhome.set_config("server", key, value)
    with served_login_site(root_vhome) as login_site:
        yield login_site


def body_of(site: Site, name: str) -> list[bytes]:
    return [p.read_bytes() for p in site.new_files(site.maildir(name))]


# -- the runs go through the server -----------------------------------------------------------

@pytest.mark.parametrize("site", ["fresh", "reused"], indirect=True)
def test_delivery_and_login_go_through_the_server(site: LoginSite) -> None:
    without_fallbacks(site.inst)
    result = site.deliver("alice")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    [data] = body_of(site, "alice")
    assert data.endswith(b"Delivered-To: alice@example.com\n" + MESSAGE)
    login = site.login("alice@example.com", "pw")
    assert login.code == 0 and login.ran, login
    assert (login.env["uid"], login.env["gid"]) == (str(site.inst.uid), str(site.inst.gid))
    assert login.env["groups"] == str(site.inst.gid)
    assert login.env["cwd"] == str(site.user_dir("alice"))
    assert (login.env["HOME"], login.env["USER"], login.env["SHELL"], login.env["VPOPUSER"]
            ) == (str(site.user_dir("alice")), "alice", "NOLOGIN", "alice@example.com")
    assert site.login("alice@example.com", "wrong").code == 1


def test_a_piped_message_leaves_the_worker_clean(site: LoginSite) -> None:
    """A message on a pipe (a wrapper's, not qmail-local's file) is spooled to an anonymous
    file; the worker closes it after the delivery and serves the next request (before: every
    such delivery left the spool open, and the worker ended, logging it, for a new one)."""
    without_fallbacks(site.inst)
    server = server_of(site)
    for _ in range(3):
        assert site.deliver("alice", pipe=True).returncode == 0
    assert len(body_of(site, "alice")) == 3
    assert not [line for line in server.lines() if "worker ends" in line], server.lines()


def test_front_ends_of_the_system_c_library_go_through_the_server(site: LoginSite) -> None:
    """The suite runs the front ends musl-gcc builds where it is installed; those the
    system's cc builds (glibc) are served alike."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no cc")
    inst = site.inst
    subprocess.run([sys.executable, str(INSTALL), "--prefix", str(inst.prefix), "--qmaildir",
                    str(inst.qmaildir), "--venv", str(VENV), "--cc", cc], check=True,
                   capture_output=True, env={**os.environ, "PYVPOPMAIL_FRONTEND_CACHE": ""})
    for name in ("vdelivermail", "vchkpw"):
        assert b"GLIBC_TUNABLES" in (inst.bin / name).read_bytes()
    wait_for(server_of(site), listening=2)  # the install had it reload
    without_fallbacks(inst)
    assert site.deliver("alice").returncode == 0 and len(body_of(site, "alice")) == 1
    login = site.login("alice@example.com", "pw")
    assert login.code == 0 and login.ran and login.env["uid"] == str(inst.uid), login
    assert site.login("alice@example.com", "wrong").code == 1


@pytest.mark.parametrize("site", [{"workers": 1}], indirect=True)
def test_each_request_gets_exactly_its_callers_environment(site: LoginSite) -> None:
    """One worker serves these logins in turn: a variable one caller had, or changed, is
    gone or has the next caller's value."""
    without_fallbacks(site.inst)
    first = site.login("alice@example.com", "pw", env={**POP_ENV, "EXTRA": "1", "TZ": "UTC"})
    assert first.code == 0 and (first.env["EXTRA"], first.env["TZ"]) == ("1", "UTC")
    second = site.login("alice@example.com", "pw", env={**POP_ENV, "TZ": "CET"})
    assert second.code == 0 and "EXTRA" not in second.env and second.env["TZ"] == "CET"
    third = site.login("alice@example.com", "pw", env=POP_ENV)
    assert third.code == 0 and "TZ" not in third.env and "EXTRA" not in third.env


def test_a_request_longer_than_the_first_read_is_read_whole(site: LoginSite) -> None:
    """A login whose environment (50 KiB, within the 64 KiB bound) makes its request longer
    than the worker's first read (wire.FIRST_READ) is served whole: the program gets the
    variable intact, and so does the next, short request."""
    without_fallbacks(site.inst)
    big = "".join(chr(ord("a") + n % 26) for n in range(50 * 1024))
    login = site.login("alice@example.com", "pw", env={**POP_ENV, "BIG": big})
    assert login.code == 0 and login.env["BIG"] == big
    again = site.login("alice@example.com", "pw", env={**POP_ENV, "SMALL": "1"})
    assert again.code == 0 and again.env["SMALL"] == "1" and "BIG" not in again.env


def test_login_program_does_not_inherit_fd3(site: LoginSite) -> None:
    without_fallbacks(site.inst)
    probe = site.work / "probe.sh"
    probe.write_text(f"#!/bin/sh\nls /proc/$$/fd > {site.work}/probe.out\n")
    probe.chmod(0o755)
    assert site.login("alice@example.com", "pw", program=[str(probe)]).code == 0
    assert "3" not in (site.work / "probe.out").read_text().split()


def test_missing_program_is_temporary_with_the_direct_log_line(site: LoginSite) -> None:
    without_fallbacks(site.inst)
    assert site.login("alice@example.com", "pw", program=["/nonexistent/prog"]).code == 111
    assert any("cannot run /nonexistent/prog (No such file or directory)" in t
               for t in site.syslog.texts())


def limits_program(site: LoginSite) -> Path:
    """alice's .qmail runs a program that writes its limits and nice value to the file
    returned."""
    out = site.inst.prefix / "limits-out"
    dotqmail = site.user_dir("alice") / ".qmail"
    dotqmail.write_text(f"|(ulimit -n; ulimit -H -n; ulimit -t; ulimit -H -t; nice) > {out}\n")
    shutil.chown(dotqmail, site.inst.user, site.inst.group)
    os.chmod(site.inst.prefix, 0o777)
    return out


def test_programs_get_the_callers_limits_capped_by_the_workers(site: LoginSite) -> None:
    """An unlimited caller's program gets the worker's hard limit, no more; a caller's higher
    soft limit the worker's hard one."""
    without_fallbacks(site.inst)
    subprocess.run(["prlimit", "--pid", str(server_of(site).proc.pid), "--cpu=100:200",
                    "--nofile=500:1000"], check=True)  # the workers forked from now on
    out = limits_program(site)
    result = site.deliver("alice", wrap=("prlimit", "--cpu=unlimited:unlimited",
                                         "--nofile=2000:3000", "--"))
    assert (result.returncode, result.stdout) == (0, b""), result
    assert out.read_text().split() == ["1000", "1000", "200", "200", "0"]


@pytest.mark.parametrize("site", [{"workers": 1}], indirect=True)
def test_programs_get_the_callers_nice_value_from_a_reniced_worker(site: LoginSite) -> None:
    """What the worker's own values are is asked when a program starts, not remembered from
    the worker's start: a worker given a higher priority since (nice -5) runs its caller's
    programs at the caller's (0), never above it."""
    without_fallbacks(site.inst)
    out = limits_program(site)
    assert site.deliver("alice").returncode == 0
    caller = out.read_text().split()
    server = server_of(site)
    workers = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True,
                             text=True, check=True).stdout.split()
    assert len(workers) == 1, workers
    os.setpriority(os.PRIO_PROCESS, int(workers[0]), -5)
    assert site.deliver("alice").returncode == 0
    assert out.read_text().split() == caller


# -- fresh state --------------------------------------------------------------------------------

def test_admin_changes_are_seen_by_the_next_request(site: LoginSite) -> None:
    without_fallbacks(site.inst)
    assert site.deliver("carol").stdout == NO_MAILBOX
    site.add("carol", "one")
    assert site.deliver("carol").returncode == 0
    assert len(body_of(site, "carol")) == 1
    assert site.login("carol@example.com", "one").code == 0
    site.ok("vpasswd", "carol@example.com", "two")
    assert site.login("carol@example.com", "one").code == 1
    assert site.login("carol@example.com", "two").code == 0
    site.ok("vdeluser", "carol@example.com")
    result = site.deliver("carol")
    assert (result.returncode, result.stdout) == (100, NO_MAILBOX)
    assert site.deliver("alice-lists").returncode == 100
    site.inst.set_config("users", "qmail_ext", True)
    assert site.deliver("alice-lists").returncode == 0
    assert len(body_of(site, "alice")) == 1


# -- workers: one identity each, reused ---------------------------------------------------------

def maildir_pids(site: LoginSite, name: str) -> list[str]:
    """The pid part (P<pid>) of each message file's name: the worker that wrote it."""
    return [re.search(r"P(\d+)", p.name).group(1)  # type: ignore[union-attr]
            for p in site.new_files(site.maildir(name))]


@pytest.mark.parametrize("site", ["fresh", "reused"], indirect=True)
def test_workers_are_reused_only_by_their_identity(site: LoginSite,
                                                   request: pytest.FixtureRequest) -> None:
    """Deliveries (uid 89) and logins (root) each get workers that hold exactly the caller's
    ids; a worker serves many requests of its identity (its pid names the messages it wrote),
    or one each with server.requests_per_worker = 1."""
    without_fallbacks(site.inst)
    for _ in range(6):
        assert site.deliver("alice").returncode == 0
        assert site.login("alice@example.com", "pw").code == 0
    pids = maildir_pids(site, "alice")
    assert len(pids) == 6
    if request.node.callspec.params["site"] == "fresh":
        assert len(set(pids)) == 6
        return
    assert len(set(pids)) < 6
    ids = worker_ids(server_of(site))
    assert ids
    for uid, gid, groups in ids:
        assert len(set(uid)) == 1 and len(set(gid)) == 1, (uid, gid)
        assert (uid[0], gid[0], groups) in ((str(site.inst.uid), str(site.inst.gid),
                                             [str(site.inst.gid)]), ("0", "0", [])), ids


def test_a_request_that_changes_the_ids_ends_its_worker(site: LoginSite) -> None:
    """vdelivermail started as root gives up root for the domain owner: that worker cannot
    serve root again and ends; the next root delivery gets a new one."""
    without_fallbacks(site.inst)
    root_site = Site(site.inst, unprivileged=False)
    for _ in range(2):
        assert root_site.deliver("alice").returncode == 0
    first, second = maildir_pids(site, "alice")
    assert first != second


@pytest.mark.parametrize("site", [{"idle_timeout": 1}], indirect=True)
def test_idle_workers_leave(site: LoginSite) -> None:
    server = server_of(site)
    assert site.deliver("alice").returncode == 0
    assert worker_ids(server)
    deadline = time.monotonic() + 15
    while worker_ids(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not worker_ids(server)
    assert not identity_sockets(server)
    without_fallbacks(site.inst)
    assert site.deliver("alice").returncode == 0


def identity_sockets(server: Server) -> dict[str, os.stat_result]:
    """The identities' own sockets beside the server's, by name (not its lock)."""
    return {path.name: path.stat() for path in server.socket.parent.iterdir()
            if path.name.startswith(f"{server.socket.name}.") and path.is_socket()}


def test_an_identitys_workers_serve_it_without_the_parent(site: LoginSite) -> None:
    """After its first request an identity has its own socket (only it may connect), where
    its workers take its requests themselves: they are served while the parent is stopped,
    and --status counts them."""
    without_fallbacks(site.inst)
    server = server_of(site)
    assert site.deliver("alice").returncode == 0
    assert site.login("alice@example.com", "pw").code == 0
    inst = site.inst
    delivery = identity_socket(str(server.socket), inst.uid, inst.gid, (inst.gid,))
    login = identity_socket(str(server.socket), 0, 0, tuple(sorted(set(os.getgroups()))))
    assert delivery and login
    found = identity_sockets(server)
    assert set(found) == {Path(delivery).name, Path(login).name}, found
    assert (found[Path(delivery).name].st_uid, found[Path(delivery).name].st_gid) == (
        inst.uid, inst.gid)
    assert all(st.st_mode & 0o777 == 0o600 for st in found.values())
    server.proc.send_signal(signal.SIGSTOP)
    try:
        for _ in range(3):
            assert site.deliver("alice").returncode == 0
            assert site.login("alice@example.com", "pw").code == 0
    finally:
        server.proc.send_signal(signal.SIGCONT)
    assert len(body_of(site, "alice")) == 4
    assert ", 8 requests," in inst.ok("vpopmail-server", "--status")


def test_another_identity_at_an_identitys_socket_is_dropped(site: LoginSite) -> None:
    """Root connecting to the delivery identity's socket (the file's mode does not stop
    root) is dropped by the worker there with one log line; nothing of it is run."""
    without_fallbacks(site.inst)
    server = server_of(site)
    assert site.deliver("alice").returncode == 0
    path = identity_socket(str(server.socket), site.inst.uid, site.inst.gid, (site.inst.gid,))
    assert path
    before = len(server.lines())
    header, body = raw_request(1, [b"vdelivermail", b"", b"bounce-no-mailbox"], [b"HOME=/"])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
        try:
            with open(os.devnull, "rb") as null:
                send_with_fds(sock, header + body, [null.fileno()] * 3)
            assert sock.recv(100) == b""  # closed without an answer
        except (BrokenPipeError, ConnectionResetError):  # closed before or after our request
            pass
    finally:
        sock.close()
    new = server.lines()[before:]
    assert len(new) == 1 and f"uid 0: it connected to the socket of uid {site.inst.uid}" in new[0]
    assert len(body_of(site, "alice")) == 1
    assert site.deliver("alice").returncode == 0


def test_an_identity_with_more_waiting_gets_more_workers(site: LoginSite) -> None:
    """Slow deliveries queue at the delivery identity's socket while its one worker is
    busy: the worker says so and the parent forks another worker for them."""
    without_fallbacks(site.inst)
    assert site.deliver("alice").returncode == 0
    home = site.user_dir("alice")
    (home / ".qmail").write_text("|sleep 1\n./Maildir/\n")
    shutil.chown(home / ".qmail", site.inst.user, site.inst.group)
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: site.deliver("alice").returncode, range(4)))
    assert codes == [0] * 4
    assert len(set(maildir_pids(site, "alice")[1:])) > 1


@pytest.mark.parametrize("first", ["handed", "accepted"])
def test_a_slow_request_does_not_hold_up_its_identitys_next(site: LoginSite, first: str
                                                            ) -> None:
    """A delivery that takes seconds (alice's .qmail program) in the identity's one worker,
    handed to it by the parent or accepted at the identity's socket with nothing else
    queued: the next delivery of that identity (bob's) queues at the socket behind it, and
    gets another worker instead of waiting for the slow one to end."""
    without_fallbacks(site.inst)
    site.add("bob", "pw")
    if first == "accepted":
        assert site.deliver("bob").returncode == 0  # the identity's worker and socket
    home = site.user_dir("alice")
    (home / ".qmail").write_text("|sleep 6\n./Maildir/\n")
    shutil.chown(home / ".qmail", site.inst.user, site.inst.group)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(lambda: site.deliver("alice").returncode)
        deadline = time.monotonic() + 10
        while not identity_sockets(server_of(site)) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # the slow one is running
        started = time.monotonic()
        assert site.deliver("bob").returncode == 0
        took = time.monotonic() - started
        assert slow.result() == 0
    assert took < 3, took


@pytest.mark.parametrize("site", ["fresh"], indirect=True)
def test_fresh_workers_under_concurrency_lose_nothing(site: LoginSite) -> None:
    """A worker per request: each one's end closes its identity's socket under clients
    queued there; the parent takes them over, so each one is served by the server."""
    without_fallbacks(site.inst)
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda _: site.deliver("alice").returncode, range(24)))
    assert codes == [0] * 24
    assert len(body_of(site, "alice")) == 24


@pytest.mark.parametrize("site", [{"workers": 2, "request_timeout": 30}], indirect=True)
def test_a_retired_worker_leaves_its_identitys_queue_to_the_others(site: LoginSite) -> None:
    """Slow deliveries (alice's .qmail takes a second) on both workers, more of them queued
    at the identity's socket, and a login waiting for room: the parent retires a delivery
    worker for the login, and that worker leaves the deliveries queued at the socket to the
    identity's other worker (before: it took the closed control socket for the parent gone
    and declined them all: their front ends ran the Python programs)."""
    without_fallbacks(site.inst)
    home = site.user_dir("alice")
    (home / ".qmail").write_text("|sleep 1\n./Maildir/\n")
    shutil.chown(home / ".qmail", site.inst.user, site.inst.group)
    with ThreadPoolExecutor(7) as pool:
        deliveries = [pool.submit(lambda: site.deliver("alice").returncode) for _ in range(2)]
        time.sleep(0.5)  # both workers busy
        deliveries += [pool.submit(lambda: site.deliver("alice").returncode)
                       for _ in range(4)]
        time.sleep(0.2)  # queued at the identity's socket
        login = pool.submit(piped_login, site, "pw")
        codes = [delivery.result() for delivery in deliveries]
        assert login.result() == 0
    assert codes == [0] * 6, codes
    assert len(body_of(site, "alice")) == 6


def busy_worker(site: LoginSite, seconds: float) -> Callable[[], int]:
    """The delivery identity's one worker kept busy ``seconds`` by alice's .qmail, its socket
    in place; the return: wait for that first delivery's exit code."""
    server = server_of(site)
    home = site.user_dir("alice")
    (home / ".qmail").write_text(f"|sleep {seconds}\n./Maildir/\n")
    shutil.chown(home / ".qmail", site.inst.user, site.inst.group)
    pool = ThreadPoolExecutor(1)
    first = pool.submit(lambda: site.deliver("alice").returncode)
    deadline = time.monotonic() + 10
    while not (identity_sockets(server) and worker_ids(server)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert identity_sockets(server) and worker_ids(server)
    pool.shutdown(wait=False)
    return first.result


@pytest.mark.parametrize("site", [{"workers": 1}], indirect=True)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_a_stop_under_callers_queued_at_an_identitys_socket(site: LoginSite,
                                                             signum: int) -> None:
    """Piped deliveries queued at the identity's socket (its one worker busy) when the server
    stops, reloads or is killed: each is declined (by the parent, or by the worker that finds
    it gone) and run by the Python program, none answered 111."""
    server = server_of(site)
    first = busy_worker(site, 2)
    with ThreadPoolExecutor(3) as pool:
        piped = [pool.submit(lambda: site.deliver("alice", pipe=True)) for _ in range(3)]
        time.sleep(0.5)
        server.proc.send_signal(signum)
        results = [f.result() for f in piped]
    assert first() == 0
    assert [r.returncode for r in results] == [0] * 3, results
    assert len(body_of(site, "alice")) == 4


@pytest.mark.parametrize("site", [{"workers": 1, "request_timeout": 10}], indirect=True)
def test_workers_left_from_before_a_reload_count_against_server_workers(site: LoginSite
                                                                        ) -> None:
    """server.workers = 1 and its one worker busy (3 s) when SIGHUP restarts the server: the
    new process counts that worker until it ends, so a login then waits for it instead of
    getting a second worker at once (within server.request_timeout: after that it would be
    declined and run by the Python program)."""
    without_fallbacks(site.inst)
    server = server_of(site)
    first = busy_worker(site, 3)
    server.proc.send_signal(signal.SIGHUP)
    wait_for(server, listening=2)
    with ThreadPoolExecutor(1) as pool:
        login = pool.submit(piped_login, site, "pw")
        most = 0
        while not login.done():
            most = max(most, len(worker_ids(server)))
            time.sleep(0.02)
        assert login.result() == 0
        most = max(most, len(worker_ids(server)))  # the login's worker stays, idle
    assert first() == 0
    assert most == 1


@pytest.mark.parametrize("site", [{"workers": 1}], indirect=True)
def test_a_reload_with_an_idle_worker_leaves_room_for_the_next(site: LoginSite) -> None:
    """server.workers = 1 and its one worker idle at SIGHUP: it leaves at once, before the
    new process looks for the workers it inherits; it must not count (it did once: every
    caller then waited for a worker that never came)."""
    without_fallbacks(site.inst)
    server = server_of(site)
    assert piped_login(site, "pw") == 0
    assert len(worker_ids(server)) == 1
    server.proc.send_signal(signal.SIGHUP)
    wait_for(server, listening=2)
    time.sleep(0.5)
    start = time.monotonic()
    assert piped_login(site, "pw") == 0
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("gap", [0.0, 0.02, 0.15])
def test_a_reload_during_a_reload_keeps_the_server(site: LoginSite, gap: float) -> None:
    """A second SIGHUP while the re-executed process is still starting (before it has its
    handlers): the server reloads again instead of dying of the signal."""
    without_fallbacks(site.inst)
    server = server_of(site)
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not any("reloading" in line for line in server.lines()):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(gap)
    server.proc.send_signal(signal.SIGHUP)
    wait_for(server, listening=3)
    assert server.proc.poll() is None, (server.proc.returncode, server.lines())
    assert site.login("alice@example.com", "pw").code == 0


@pytest.mark.parametrize("gap", [0.0, 0.1, 0.5])
def test_a_stop_during_a_reload_stops_the_server(site: LoginSite, gap: float) -> None:
    """SIGTERM while a SIGHUP's reload is under way (its --check running, its callers being
    handed over): the server stops, whether before or after the exec. Before: the signal
    was read from the wakeup pipe of the process being replaced, or not read at all, and
    the server served on."""
    server = server_of(site)
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(gap)
    server.proc.send_signal(signal.SIGTERM)
    try:
        assert server.proc.wait(timeout=20) == 0, server.lines()
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server did not stop: {server.lines()}") from None
    assert not server.socket.exists()


def piped_login(site: LoginSite, password: str) -> int:
    """vchkpw's exit code for alice with the credentials on a pipe at fd 3, as qmail-popup
    gives them (a run that failed after reading them cannot be run again)."""
    return subprocess.run(["/bin/sh", "-c", 'exec "$0" /bin/true 3<&0 </dev/null',
                           str(site.inst.bin / "vchkpw")],
                          input=f"alice@example.com\0{password}\0\0".encode(), env=POP_ENV,
                          cwd="/", capture_output=True, timeout=60).returncode


@pytest.mark.parametrize("site", [{"workers": 1}], indirect=True)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_under_callers_waiting_in_the_server(site: LoginSite, signum: int) -> None:
    """A login waiting in the server for room (its one worker busy with a delivery) when the
    server stops or reloads is declined and run by the Python program, not answered 111."""
    server = server_of(site)
    first = busy_worker(site, 2)
    with ThreadPoolExecutor(2) as pool:
        logins = [pool.submit(piped_login, site, password) for password in ("pw", "wrong")]
        time.sleep(0.7)  # (--status would wait too: a worker of its caller answers it)
        server.proc.send_signal(signum)
        codes = [f.result() for f in logins]
    assert first() == 0
    assert codes == [0, 1]


def test_a_caller_with_more_than_256_groups_is_declined(site: LoginSite) -> None:
    """SO_PEERGROUPS cannot report more than 256 groups here: such a caller is declined (its
    front end runs the Python program, as the README says), not dropped (a login's piped
    credentials could not be read again: 111)."""
    server = server_of(site)
    groups = ",".join(str(50000 + n) for n in range(300))
    before = len(server.lines())
    for _ in range(10):
        login = subprocess.run(["setpriv", f"--groups={groups}", "/bin/sh", "-c",
                                'exec "$0" /bin/true 3<&0 </dev/null',
                                str(site.inst.bin / "vchkpw")],
                               input=b"alice@example.com\0pw\0\0", env=POP_ENV, cwd="/",
                               capture_output=True, timeout=60)
        assert login.returncode == 0, login
    new = server.lines()[before:]
    assert len(new) == 10 and all("declined" in line and "groups" in line for line in new), new


@pytest.mark.parametrize("site", [{"workers": 1}], indirect=True)
def test_one_worker_serves_both_identities_in_turn(site: LoginSite) -> None:
    """server.workers = 1: an idle worker of another identity is retired to make room."""
    without_fallbacks(site.inst)
    for _ in range(3):
        assert site.deliver("alice").returncode == 0
        assert site.login("alice@example.com", "pw").code == 0
    assert len(worker_ids(server_of(site))) <= 1


def statements(server: MariaDB, sessions: list[str], run: Callable[[], None]) -> list[str]:
    """The statements the SQL ``sessions`` sent while ``run`` ran (the general log; pings are
    not in it), each cut to its first two words."""
    server.sql("SET GLOBAL log_output = 'TABLE'; TRUNCATE mysql.general_log; "
               "SET GLOBAL general_log = 1")
    try:
        run()
    finally:
        server.sql("SET GLOBAL general_log = 0")
    rows = server.rows("SELECT argument FROM mysql.general_log WHERE command_type = 'Query' AND "
                       f"thread_id IN ({', '.join(sessions)}) ORDER BY event_time")
    return [" ".join(row[0].split()[:2]) for row in rows]


def test_a_worker_keeps_its_sql_connection_and_renews_one_gone_away(root_vhome: Install,
                                                                    sql_db: Database) -> None:
    """Through the server, a worker's SQL connection serves its next request (no connect per
    delivery), with one statement for the valias rows and the user's (no rollback after it);
    killed by the database while idle, it is replaced at the next request, which succeeds."""
    root_vhome.database = sql_db
    sql_db.configure(root_vhome)
    root_vhome.backend = "mysql"
    root_vhome.set_config("server", "workers", 1)  # one worker: the requests meet the same one
    site = LoginSite(root_vhome, unprivileged=True)
    site.ok("vadddomain", DOMAIN, "secret")
    site.add("alice", "pw")

    def reader_sessions() -> list[str]:
        return [row[0] for row in sql_db.server.rows(
            f"SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{RO}' AND "
            f"DB = '{sql_db.name}'")]

    with running_server(root_vhome):
        without_fallbacks(root_vhome)
        assert site.deliver("alice").returncode == 0
        first = reader_sessions()
        assert len(first) == 1, first

        def deliver() -> None:
            assert site.deliver("alice").returncode == 0

        assert statements(sql_db.server, first, deliver) == ["SELECT alias,"]
        assert reader_sessions() == first
        sql_db.server.sql(f"KILL {first[0]}")
        result = site.deliver("alice")
        assert result.returncode == 0, result
        renewed = reader_sessions()
        assert len(renewed) == 1 and renewed != first
    assert len(body_of(site, "alice")) == 3
    site.syslog.close()


def test_sql_admin_changes_are_seen_by_the_next_delivery(root_vhome: Install,
                                                          sql_db: Database) -> None:
    """One worker, its SQL connection kept, each delivery reading the valias rows and the
    user's row in one statement: an alias row added or removed, a user added or removed, is
    seen by the very next delivery (the user's row read with the rows serves that delivery
    only)."""
    root_vhome.set_config("server", "workers", 1)
    site = sql_login_site(root_vhome, sql_db)
    team = f"team@{DOMAIN}"
    with running_server(root_vhome):
        without_fallbacks(root_vhome)
        assert site.deliver("team").stdout == NO_MAILBOX
        site.ok("valias", "-i", f"{site.maildir('alice')}/", team)
        assert site.deliver("team").returncode == 0
        assert len(body_of(site, "alice")) == 1
        site.ok("valias", "-d", team)
        assert site.deliver("team").stdout == NO_MAILBOX
        assert site.deliver("carol").stdout == NO_MAILBOX
        site.add("carol", "pw")
        assert site.deliver("carol").returncode == 0
        assert len(body_of(site, "carol")) == 1
        site.ok("vdeluser", f"carol@{DOMAIN}")
        assert site.deliver("carol").stdout == NO_MAILBOX
    assert len(body_of(site, "alice")) == 1
    site.syslog.close()


def sql_login_site(root_vhome: Install, sql_db: Database) -> LoginSite:
    """example.com on the SQL backend with alice (password pw)."""
    root_vhome.database = sql_db
    sql_db.configure(root_vhome)
    root_vhome.backend = "mysql"
    site = LoginSite(root_vhome, unprivileged=True)
    site.ok("vadddomain", DOMAIN, "secret")
    site.add("alice", "pw")
    return site


def sql_sessions(sql_db: Database) -> list[str]:
    """The ids of the database sessions our programs hold (read and update users), by user."""
    return [row[0] for row in sql_db.server.rows(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE USER IN "
        f"('{RO}', 'vpop_rw') AND DB = '{sql_db.name}' ORDER BY USER")]


def test_a_login_worker_keeps_its_sql_connections(root_vhome: Install, sql_db: Database) -> None:
    """Logins through one worker use the same two SQL sessions (the worker puts each
    request's descriptors at 0 to 3, and vchkpw closes its fd 3, so a kept connection's
    socket must not be there), each login one statement on each: the user's row, the
    lastauth row (no transaction or rollback around them). Killed by the database while
    idle, both are replaced at the next login, which succeeds and records itself."""
    root_vhome.set_config("server", "workers", 1)
    site = sql_login_site(root_vhome, sql_db)

    def logins() -> None:
        for _ in range(2):
            assert site.login("alice@example.com", "pw").code == 0
        assert site.login("alice@example.com", "wrong").code == 1

    with running_server(root_vhome):
        without_fallbacks(root_vhome)
        assert site.login("alice@example.com", "pw").code == 0
        first = sql_sessions(sql_db)
        assert len(first) == 2, first
        assert statements(sql_db.server, first, logins) == [
            "SELECT pw_name,", "REPLACE INTO"] * 2 + ["SELECT pw_name,"]
        assert sql_sessions(sql_db) == first
        sql_db.rows("UPDATE lastauth SET timestamp = 0")
        for session in first:
            sql_db.server.sql(f"KILL {session}")
        assert site.login("alice@example.com", "pw").code == 0
        renewed = sql_sessions(sql_db)
        assert len(renewed) == 2 and not set(renewed) & set(first), renewed
    assert int(sql_db.rows("SELECT timestamp FROM lastauth")[0][0]) > time.time() - 60
    site.syslog.close()


def test_a_roaming_login_writes_its_relay_row_in_one_statement(root_vhome: Install,
                                                               sql_db: Database) -> None:
    """With roaming users, a login's relay row is one INSERT committed by itself, as its
    lastauth row (C's vopen_smtp_relay: one statement), with no START TRANSACTION and
    COMMIT around it (two round trips to the server); then the rows are read back for
    tcp.smtp.cdb."""
    root_vhome.set_config("server", "workers", 1)
    root_vhome.set_config("relay", "roaming_users", True)
    site = sql_login_site(root_vhome, sql_db)

    def login() -> None:
        assert site.login("alice@example.com", "pw").code == 0

    with running_server(root_vhome):
        without_fallbacks(root_vhome)
        login()
        sql_db.rows("DELETE FROM relay")  # a new IP: the rows are read back for the cdb
        assert statements(sql_db.server, sql_sessions(sql_db), login) == [
            "SELECT pw_name,", "REPLACE INTO", "INSERT INTO", "SELECT ip_addr,"]
    assert [row[0] for row in sql_db.rows("SELECT ip_addr FROM relay")] == [
        POP_ENV["TCPREMOTEIP"]]
    site.syslog.close()


def test_a_killed_sql_connection_before_a_vlog_row(root_vhome: Install, sql_db: Database
                                                   ) -> None:
    """A kept update connection killed while idle, whose next statement is a vlog INSERT (not
    safe to send twice, so the connection is pinged first): the next failed login answers 1,
    not 111, with one vlog row, like every other login."""
    root_vhome.database = sql_db
    sql_db.configure(root_vhome)
    root_vhome.backend = "mysql"
    root_vhome.set_config("server", "workers", 1)
    root_vhome.set_config("mysql", "sql_logging", True)
    root_vhome.set_config("logging", "level", "y")
    site = LoginSite(root_vhome, unprivileged=True)
    site.ok("vadddomain", DOMAIN, "secret")
    site.add("alice", "pw")
    with running_server(root_vhome):
        without_fallbacks(root_vhome)
        assert site.login("alice@example.com", "wrong").code == 1
        (writer,) = sql_db.server.rows(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'vpop_rw' AND "
            f"DB = '{sql_db.name}'")
        sql_db.server.sql(f"KILL {writer[0]}")
        assert site.login("alice@example.com", "wrong").code == 1
        assert site.login("alice@example.com", "pw").code == 0
    assert sql_db.rows("SELECT error FROM vlog ORDER BY id") == [["1"], ["1"], ["0"]]
    site.syslog.close()


def test_a_login_whose_program_cannot_run_leaves_the_worker_clean(
        root_vhome: Install, sql_db: Database) -> None:
    """With vlog rows (mysql.sql_logging), a login whose program cannot be run (111) writes
    its vlog row and the worker keeps its connections for the next login (before: the
    request gave its connections back before that row, which then took the update one again
    and dropped it at the end, neither kept nor closed: a new connection after each such
    login, and the old one aborted)."""
    root_vhome.set_config("server", "workers", 1)
    root_vhome.set_config("mysql", "sql_logging", True)
    root_vhome.set_config("logging", "level", "y")
    site = sql_login_site(root_vhome, sql_db)
    with running_server(root_vhome) as server:
        without_fallbacks(root_vhome)
        assert site.login("alice@example.com", "pw").code == 0
        first = sql_sessions(sql_db)
        for _ in range(2):
            assert site.login("alice@example.com", "pw", program=["/nonexistent/prog"]
                              ).code == 111
        assert site.login("alice@example.com", "pw").code == 0
        assert not [line for line in server.lines() if "worker ends" in line], server.lines()
        assert sql_sessions(sql_db) == first
    assert sql_db.rows("SELECT error FROM vlog ORDER BY id") == [
        ["0"], ["0"], ["111"], ["0"], ["111"], ["0"]]
    site.syslog.close()


def aborted_connections(sql_db: Database) -> list[str]:
    """The database's log lines for connections to this test's database dropped without a
    goodbye."""
    log = (sql_db.server.base / "error.log").read_text(errors="replace")
    return [line for line in log.splitlines()
            if "Aborted connection" in line and f"db: '{sql_db.name}'" in line]


def test_workers_that_end_say_goodbye_to_the_sql_server(root_vhome: Install, sql_db: Database
                                                         ) -> None:
    """A worker that ends (server.requests_per_worker served, a reload such as an upgrade's,
    a stop) closes the SQL connections it kept between requests. Before: it left with
    os._exit, dropping them, and MariaDB logged an "Aborted connection" line and counted an
    aborted client for each, every time a worker retired and for every worker at each
    reload."""
    root_vhome.set_config("server", "requests_per_worker", 2)
    site = sql_login_site(root_vhome, sql_db)
    with running_server(root_vhome) as server:
        without_fallbacks(root_vhome)
        for _ in range(3):
            assert site.login("alice@example.com", "pw").code == 0
        server.proc.send_signal(signal.SIGHUP)
        wait_for(server, listening=2)
        assert site.login("alice@example.com", "pw").code == 0
    deadline = time.monotonic() + 10
    while sql_sessions(sql_db) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sql_sessions(sql_db)
    assert not aborted_connections(sql_db)
    site.syslog.close()


def test_a_worker_lets_go_of_connections_made_with_settings_since_changed(
        root_vhome: Install, sql_db: Database) -> None:
    """The configuration is read at each request: after a change of the [mysql] settings
    (new credentials, another server, a timeout) a worker's next request connects with the
    new ones, and the connections made with the old are closed, not kept beside them (before:
    each change left a worker's connections open for the rest of its life, up to an hour, so
    a few changes took the database's max_connections, and rotated credentials stayed
    logged in)."""
    root_vhome.set_config("server", "workers", 1)
    site = sql_login_site(root_vhome, sql_db)

    with running_server(root_vhome):
        without_fallbacks(root_vhome)
        assert site.login("alice@example.com", "pw").code == 0
        first = sql_sessions(sql_db)
        assert len(first) == 2, first
        for seconds in (3, 4):
            root_vhome.set_config("mysql", "connect_timeout", seconds)
            assert site.login("alice@example.com", "pw").code == 0
        now = sql_sessions(sql_db)
        assert len(now) == 2 and not set(now) & set(first), now
    site.syslog.close()


def test_idle_workers_give_their_sql_connections_back(root_vhome: Install, sql_db: Database
                                                      ) -> None:
    """A burst leaves a worker for each of its callers, idle up to server.idle_timeout (an
    hour): their SQL connections go back to the database after server.sql_idle_timeout
    without a request, the workers stay. Before, MariaDB at its max_connections (12 here, the
    database shared with other hosts and programs) was left full by idle delivery workers
    after a burst of deliveries, and for the hour every login (another identity), admin
    command and program run directly found "Too many connections" (111)."""
    site = sql_login_site(root_vhome, sql_db)
    root_vhome.set_config("server", "sql_idle_timeout", 1)
    limit = sql_db.server.sql("SELECT @@max_connections").strip()

    with running_server(root_vhome) as server:
        sql_db.server.sql("SET GLOBAL max_connections = 12")  # the least it takes: 10
        try:
            with ThreadPoolExecutor(16) as pool:
                codes = list(pool.map(lambda _: site.deliver("alice").returncode, range(64)))
            assert set(codes) <= {0, 111} and codes.count(0), codes
            assert len(sql_sessions(sql_db)) > 0
            deadline = time.monotonic() + 10
            while len(sql_sessions(sql_db)) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(sql_sessions(sql_db)) == 0
            assert len(worker_ids(server)) > 1  # the workers stayed
            assert site.login("alice@example.com", "pw").code == 0
            root_vhome.ok("vadduser", "bob@example.com", "pw")
            assert site.deliver("alice").returncode == 0
        finally:
            sql_db.server.sql(f"SET GLOBAL max_connections = {limit}")
    site.syslog.close()


def test_sql_idle_timeout_0_keeps_no_connection_between_requests(root_vhome: Install,
                                                                  sql_db: Database) -> None:
    """server.sql_idle_timeout = 0: a worker closes its SQL connections as soon as no request
    waits (the documented meaning), and opens new ones for the next request."""
    site = sql_login_site(root_vhome, sql_db)
    root_vhome.set_config("server", "sql_idle_timeout", 0)
    with running_server(root_vhome) as server:
        for _ in range(3):
            assert site.deliver("alice").returncode == 0
            deadline = time.monotonic() + 5
            while sql_sessions(sql_db) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sql_sessions(sql_db) == []
            assert len(worker_ids(server)) == 1  # the worker stays
        assert site.login("alice@example.com", "pw").code == 0
    assert len(body_of(site, "alice")) == 3
    site.syslog.close()


def test_a_worker_whose_sql_server_stops_answering_answers_111_and_lets_go(
        root_vhome: Install, sql_db: Database) -> None:
    """Through the server, a database that stops answering on the connections a worker kept
    (here a proxy that stops relaying): a delivery, from a file or a pipe, and a login answer
    111 after mysql.read_timeout, with one line naming the server, and the worker does not
    keep the connections that timed out; all work again once the database answers (before:
    the worker waited in a read until TCP gave up, and the front end answered 111 only after
    server.reply_timeout, 600 s)."""
    root_vhome.set_config("server", "workers", 1)
    site = sql_login_site(root_vhome, sql_db)
    root_vhome.set_config("locks", "timeout", 1)
    root_vhome.set_config("mysql", "read_timeout", 2)

    with proxied(sql_db, root_vhome) as proxy, running_server(root_vhome):
        without_fallbacks(root_vhome)
        where = f"127.0.0.1:{proxy.port}/{sql_db.name}"
        assert site.deliver("alice").returncode == 0
        assert site.login("alice@example.com", "pw").code == 0
        kept = set(sql_sessions(sql_db))
        proxy.freeze()
        frozen_answers_temporary(site, where)
        proxy.thaw()
        assert site.deliver("alice").returncode == 0
        assert site.login("alice@example.com", "pw").code == 0
        deadline = time.monotonic() + 10  # the sessions of the closed connections end
        while set(sql_sessions(sql_db)) & kept and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not set(sql_sessions(sql_db)) & kept
    assert len(body_of(site, "alice")) == 2
    site.syslog.close()


@pytest.mark.parametrize("idle", [30 * 86400, 10**9])
def test_an_idle_timeout_longer_than_poll_can_wait_is_waited(idle: int) -> None:
    """server.idle_timeout (and sql_idle_timeout) of more than poll(2) can wait at once (some
    24.8 days: 2**31 - 1 ms), as one may set to keep workers "for good": the worker waits on,
    and a connection, or the parent leaving, still ends the wait. Before: poll raised
    OverflowError, so every worker ended ("worker failed") after its first request, and its
    SQL connections were dropped without a goodbye."""
    from types import SimpleNamespace

    from vpopmail.server.worker import next_connection

    control, parent = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    waiting = select.poll()
    waiting.register(control, select.POLLIN)
    settings = SimpleNamespace(idle_timeout=idle, sql_idle_timeout=idle // 2, log_fd=-1)
    try:
        parent.close()  # the parent left
        started = time.monotonic()
        taken = next_connection(control, None, waiting, (0, 0, ()),
                                settings)  # type: ignore[arg-type]
        assert taken is None
        assert time.monotonic() - started < 5
    finally:
        control.close()


# -- when there is no server --------------------------------------------------------------------

@pytest.mark.parametrize("site", ["fresh", "reused"], indirect=True)
def test_stopped_server_leaves_the_python_programs(site: LoginSite) -> None:
    server = server_of(site)
    assert server.stop() == 0
    assert not server.socket.exists()
    assert "is down" in site.inst.run("vpopmail-server", "--status").stdout
    assert site.deliver("alice").returncode == 0
    assert site.deliver("alice", pipe=True).returncode == 0
    assert len(body_of(site, "alice")) == 2
    assert site.login("alice@example.com", "pw").code == 0
    assert site.login("alice@example.com", "wrong").code == 1


def test_status_and_reload(site: LoginSite) -> None:
    server = server_of(site)
    assert "is up" in site.inst.ok("vpopmail-server", "--status")
    server.proc.send_signal(signal.SIGHUP)
    wait_for(server, listening=2)
    assert any("reloading" in line for line in server.lines())
    without_fallbacks(site.inst)
    assert site.deliver("alice").returncode == 0
    assert server.proc.poll() is None


def test_a_reload_to_another_socket_path_and_back(site: LoginSite) -> None:
    """paths.server_socket moved to another directory and back, a reload after each: the
    server moves with it each time (its lock with it: the old path's is not kept)."""
    server = server_of(site)
    other = site.inst.prefix / "run2"
    other.mkdir(mode=0o755)
    good = site.inst.config_path.read_text()
    site.inst.config_path.write_text(good.replace('server_socket = "run/server.sock"',
                                                  'server_socket = "run2/server.sock"'))
    server.proc.send_signal(signal.SIGHUP)
    wait_for(server, listening=2)
    assert (other / "server.sock").exists() and not server.socket.exists()
    site.inst.config_path.write_text(good)
    server.proc.send_signal(signal.SIGHUP)
    wait_for(server, listening=3)
    assert server.proc.poll() is None, server.lines()
    assert "is up" in site.inst.ok("vpopmail-server", "--status")
    without_fallbacks(site.inst)
    assert site.deliver("alice").returncode == 0


BROKEN_AT_RELOAD = {
    "toml": lambda text: text + "[server\n",
    "unknown caller": lambda text: text.replace('dovecot_callers = ""',
                                                'dovecot_callers = "root dovcot"'),
    "no such directory": lambda text: text.replace('server_socket = "run/server.sock"',
                                                   'server_socket = "/nonexistent/s.sock"'),
}


def refused_reload(server: Server) -> str:
    """SIGHUP to ``server``; the one line saying it does not reload (it must live on)."""
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while not any("not reloading" in line for line in server.lines()):
        assert server.proc.poll() is None and time.monotonic() < deadline, server.lines()
        time.sleep(0.05)
    [line] = [line for line in server.lines() if "not reloading" in line]
    return line


@pytest.mark.parametrize("broken", BROKEN_AT_RELOAD)
def test_a_reload_into_a_configuration_it_cannot_start_with_keeps_the_server(
        site: LoginSite, broken: str) -> None:
    """svc -h (systemctl reload) after an edit the new process would stop at (the TOML, a
    server.* setting, a socket it cannot make): the server says why in its log and serves on
    as it was, the next SIGHUP after the fix reloads. Before: it closed its sockets and
    re-executed into "configuration error" (daemontools restarting it every second, systemd
    giving up after five): the front ends ran Python, and Dovecot 2.4's lookups, which have no
    fallback, failed until the file was mended."""
    server = server_of(site)
    good = site.inst.config_path.read_text()
    site.inst.config_path.write_text(BROKEN_AT_RELOAD[broken](good))
    line = refused_reload(server)
    reason = {"toml": "configuration error: ", "unknown caller": "there is no user 'dovcot'",
              "no such directory": "socket directory /nonexistent (paths.server_socket): "
                                    "No such file or directory"}
    assert reason[broken] in line, line
    assert not any("reloading" in line for line in server.lines() if "not" not in line)
    site.inst.config_path.write_text(good)
    assert "is up" in site.inst.ok("vpopmail-server", "--status")
    without_fallbacks(site.inst)
    assert site.deliver("alice").returncode == 0
    server.proc.send_signal(signal.SIGHUP)
    wait_for(server, listening=2)
    assert site.deliver("alice").returncode == 0
    assert server.proc.poll() is None


def test_a_reload_into_installed_code_that_does_not_import_keeps_the_server(
        site: LoginSite) -> None:
    """svc -h after an upgrade left a module the workers run broken: the server says why in
    its log and serves on with the code it started with; after the fix the next SIGHUP
    reloads. Before: it closed its sockets and re-executed into a traceback (the supervisor
    restarting it into the same one; Dovecot 2.4's lookups failed meanwhile)."""
    server = server_of(site)
    module = site.inst.prefix / "lib" / "pyvpopmail" / "vpopmail" / "stores" / "relay.py"
    good = module.read_text()
    try:
        module.write_text(good + "\ndef broken(:\n")
        line = refused_reload(server)
        assert "SyntaxError" in line and "--check)" in line, line
        assert site.deliver("alice").returncode == 0
        assert server.proc.poll() is None
    finally:
        module.write_text(good)
    server.proc.send_signal(signal.SIGHUP)
    wait_for(server, listening=2)
    without_fallbacks(site.inst)
    assert site.deliver("alice").returncode == 0


def test_a_reload_into_a_version_without_check_says_so(site: LoginSite) -> None:
    """A downgrade to a version that has no --check (its usage on stderr, exit 2): the
    refused reload says why, then a restart runs that version; the old front ends are served
    meanwhile. Before: the log said "not reloading: it did not answer within 10 s)", the last
    line of that usage."""
    server = server_of(site)
    program = site.inst.bin / "vpopmail-server"
    good = program.read_bytes()
    try:
        program.write_text("#!/bin/sh\necho 'usage: vpopmail-server [--status]' >&2\n"
                           "echo '  --status  ... within 10 s)' >&2\nexit 2\n")
        line = refused_reload(server)
        assert f"{program} does not know --check" in line and "restart" in line, line
        assert "10 s" not in line, line
        assert site.deliver("alice").returncode == 0
    finally:
        program.write_bytes(good)


def test_a_reload_waits_for_the_install_under_way(site: LoginSite) -> None:
    """A SIGHUP while packaging/install holds lib/install.lock (it is changing lib/ and bin/;
    it reloads the server itself when it ends) is refused saying so; once it is released,
    the next SIGHUP reloads, and the new process lets go of the lock it held through its
    exec, so that the next install is not held. Before: a reload while an install swapped
    the library re-executed into half of each (seen: "ImportError: cannot import name
    'USAGE_ERROR' from 'vpopmail.cmdline'") and the server died."""
    import fcntl

    server = server_of(site)
    lock = os.open(site.inst.prefix / "lib" / "install.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        line = refused_reload(server)
        assert "an install is under way" in line, line
        fcntl.flock(lock, fcntl.LOCK_UN)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(server, listening=2)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(lock)
    without_fallbacks(site.inst)
    assert site.deliver("alice").returncode == 0


def test_a_server_started_through_a_link_waits_for_the_install_under_way(
        root_vhome: Install) -> None:
    """A vpopmail-server started through a symbolic link to bin/vpopmail-server (a
    /usr/local/bin/vpopmail-server, say) finds the installation's lib/install.lock as one
    started by its own path does: a SIGHUP while an install holds it is refused. Before: it
    looked beside the link (LINKDIR/../lib/install.lock), found none, and re-executed into
    whatever half of the library the install had swapped."""
    import fcntl

    elsewhere = root_vhome.prefix.parent / "elsewhere" / "bin"
    elsewhere.mkdir(parents=True)
    (elsewhere / "vpopmail-server").symlink_to(root_vhome.bin / "vpopmail-server")
    log = root_vhome.prefix.parent / "linked-server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(elsewhere / "vpopmail-server")], stdout=fh, stderr=fh,
                                env=CLEAN_ENV, cwd="/")
    server = Server(root_vhome, proc, log)
    lock = os.open(root_vhome.prefix / "lib" / "install.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        wait_for(server)
        fcntl.flock(lock, fcntl.LOCK_EX)
        line = refused_reload(server)
        assert "an install is under way" in line, line
    finally:
        os.close(lock)
        server.stop()


def test_a_reload_where_the_install_lock_fails_is_refused(root_vhome: Install) -> None:
    """A SIGHUP while lib/install.lock cannot be locked (flock's ENOLCK: an NFS lock daemon
    down; strace injects it) is refused with a log line naming the lock and why, and the
    server serves on. Before: the OSError went up through the main loop and the server died
    with a traceback (Dovecot's lookups failing until a restart)."""
    if not shutil.which("strace"):
        pytest.skip("needs strace")
    with running_server(root_vhome) as server:
        tracer = subprocess.Popen(["strace", "-o", os.devnull, "-p", str(server.proc.pid),
                                   "-e", "trace=flock", "-e", "inject=flock:error=ENOLCK"],
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert tracer.stderr is not None
            attached = tracer.stderr.readline()
            if "attached" not in attached:
                pytest.skip(f"strace cannot trace here: {attached.strip()}")
            line = refused_reload(server)
        finally:
            tracer.terminate()
            tracer.wait()
        assert f"{root_vhome.prefix / 'lib' / 'install.lock'}: No locks available" in line, line
        assert server.proc.poll() is None
        assert "is up" in root_vhome.ok("vpopmail-server", "--status")


def test_check_says_whether_a_server_would_start(root_vhome: Install) -> None:
    """``vpopmail-server --check`` (nginx -t): exit 0 and the socket it would listen on, or
    111 and what would stop it; nothing is made either way."""
    checked = root_vhome.run("vpopmail-server", "--check")
    assert checked.returncode == 0, checked
    assert str(root_vhome.prefix / "run" / "server.sock") in checked.stdout, checked
    good = root_vhome.config_path.read_text()
    try:
        root_vhome.config_path.write_text(good.replace('dovecot_callers = ""',
                                                       'dovecot_callers = "dovcot"'))
        checked = root_vhome.run("vpopmail-server", "--check")
        assert checked.returncode == 111, checked
        assert checked.stderr.startswith("vpopmail-server: ") and \
            "there is no user 'dovcot'" in checked.stderr, checked
        assert checked.stdout == "", checked
    finally:
        root_vhome.config_path.write_text(good)
    assert not (root_vhome.prefix / "run" / "server.sock").exists()
    assert not (root_vhome.prefix / "run" / "server.sock.lock").exists()


@pytest.mark.parametrize("args", [["--check"], []], ids=["check", "start"])
def test_code_that_does_not_import_answers_111(root_vhome: Install, args: list[str]) -> None:
    """--check, or a start, over an installed module the workers run that does not import (an
    upgrade left it broken): exit 111 like any other reason a start would fail, and one line
    naming the error and the file. Before: Python's traceback and exit 1 (a start's too)."""
    module = root_vhome.prefix / "lib" / "pyvpopmail" / "vpopmail" / "stores" / "relay.py"
    good = module.read_text()
    try:
        module.write_text(good + "\ndef broken(:\n")
        checked = root_vhome.run("vpopmail-server", *args, timeout=30)
    finally:
        module.write_text(good)
    assert checked.returncode == 111, checked
    assert checked.stderr.startswith("vpopmail-server: ") and "SyntaxError" in checked.stderr \
        and "relay.py" in checked.stderr and checked.stderr.count("\n") == 1, checked


@pytest.mark.parametrize("user", ["vpopmail", "nobody"])
def test_check_as_another_user_says_it_could_not_listen(root_vhome: Install, user: str) -> None:
    """--check run by a user who cannot make the socket (the vpopmail user, nobody: run/ is
    root's) says what a start by that user says, and makes and changes nothing. Before: exit
    0, "it would listen on PATH", where the start then said "Permission denied"."""
    before = snapshot(root_vhome.prefix)
    checked = root_vhome.run("vpopmail-server", "--check", as_user=user)
    assert checked.returncode == 111, checked
    socket_path = root_vhome.prefix / "run" / "server.sock"
    assert checked.stderr == (f"vpopmail-server: cannot listen on {socket_path}: Permission "
                              f"denied (start vpopmail-server as root)\n"), checked
    started = root_vhome.run("vpopmail-server", as_user=user)
    assert started.returncode == 111 and started.stderr == checked.stderr, started
    assert snapshot(root_vhome.prefix) == before
    assert not (root_vhome.prefix / "run" / "server.sock.lock").exists()


def test_status_of_a_server_that_takes_the_connection_but_does_not_answer(
        site: LoginSite, capsys: pytest.CaptureFixture[str]) -> None:
    """A server that takes the connection but sends nothing (stopped here; with every worker
    busy it is the same) is "not answering", naming its pid, not "down": its front ends wait
    for it rather than run the Python programs."""
    server = server_of(site)
    server.proc.send_signal(signal.SIGSTOP)
    try:
        assert status(str(server.socket), wait=0.5) == 1
    finally:
        server.proc.send_signal(signal.SIGCONT)
    said = capsys.readouterr().out
    assert "is not answering" in said and f"pid {server.proc.pid} took the connection" in said
    assert "down" not in said and "the front ends run the Python programs" not in said
    assert status(str(server.socket)) == 0
    assert "is up" in capsys.readouterr().out


def fake_listener(where: Path) -> tuple[str, socket.socket]:
    """(path, listening socket) of a stand-in for a server at ``where``/server.sock."""
    path = str(where / "server.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    return path, listener


def old_server(listener: socket.socket) -> None:
    """Answer one status request at ``listener`` as a server of the previous protocol
    version does: DECLINE."""
    conn, _ = listener.accept()
    with conn:
        conn.recv(HEADER.size)
        conn.sendall(HEADER.pack(b"VPSr", VERSION - 1, 3, 0, 0))  # DECLINE


def test_status_of_a_server_of_the_previous_protocol(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A server started before an upgrade declines the new protocol's requests (the front
    ends run the Python programs): --status says so, not a bare "unexpected reply"."""
    path, listener = fake_listener(tmp_path)
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(old_server, listener)
        assert status(path) == 1
        done.result()
    listener.close()
    said = capsys.readouterr().out
    assert f"speaks protocol version {VERSION - 1}, not {VERSION}" in said, said
    assert "reload it" in said and "of another protocol version" in said and "down" not in said


def test_status_wait_bounds_the_whole_answer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A listener that answers byte by byte does not hold --status (or vcheck, or an install)
    past its wait: the wait is for the whole answer, not for each byte."""
    path, listener = fake_listener(tmp_path)

    def trickler() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(HEADER.size)
            conn.sendall(HEADER.pack(b"VPSr", VERSION, 4, 0, 1000))  # STATUS, 1000 bytes
            for _ in range(20):
                try:
                    conn.send(b"x")
                except OSError:
                    return
                time.sleep(0.2)

    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(trickler)
        started = time.monotonic()
        assert status(path, wait=1) == 1
        assert time.monotonic() - started < 2
        done.result()
    listener.close()
    said = capsys.readouterr().out
    assert "is not answering" in said and "did not answer within 1 s" in said, said


def test_status_of_a_stopped_server_with_a_full_queue(
        site: LoginSite, capsys: pytest.CaptureFixture[str]) -> None:
    """A stopped server whose listen queue is full (a front end's connect then waits): "not
    answering", not "down" (a connect on a full Unix socket queue fails at once when it may
    not wait)."""
    server = server_of(site)
    server.proc.send_signal(signal.SIGSTOP)
    held = []
    try:
        held = fill_queue(server.socket)
        assert status(str(server.socket), wait=0.5) == 1
    finally:
        server.proc.send_signal(signal.SIGCONT)
        for sock in held:
            sock.close()
    said = capsys.readouterr().out
    assert "is not answering: its queue of waiting callers is full" in said, said
    assert "down" not in said


def test_vcheck_says_whether_the_server_answers(site: LoginSite) -> None:
    """vcheck's last step: up (with the server's own state); not answering (stopped here),
    a fault: the front ends wait for it; down, no fault: the front ends run the Python
    programs."""
    checked = site.inst.run("vcheck", "alice@example.com")
    assert checked.returncode == 0, checked.stdout
    [line] = [line for line in checked.stdout.splitlines() if "vpopmail-server" in line]
    assert line.startswith("12 vpopmail-server") and " OK " in line, line
    assert "up on" in line and "serving vdelivermail and vchkpw" in line, line
    server = server_of(site)
    server.proc.send_signal(signal.SIGSTOP)  # takes connections, answers none: a fault
    try:
        checked = site.inst.run("vcheck", "alice@example.com")
    finally:
        server.proc.send_signal(signal.SIGCONT)
    assert checked.returncode != 0, checked.stdout
    assert "not answering on" in checked.stdout and "did not answer within 10 s" in checked.stdout
    server.stop()
    checked = site.inst.run("vcheck", "alice@example.com")
    assert checked.returncode == 0, checked.stdout
    assert "down (" in checked.stdout and "run the Python programs" in checked.stdout
    # a server of another protocol version (started before an upgrade): not "down", and not
    # "start one" (one listens)
    with ThreadPoolExecutor(1) as pool:
        path, listener = fake_listener(server.socket.parent)
        done = pool.submit(old_server, listener)
        checked = site.inst.run("vcheck", "alice@example.com")
        done.result()
    listener.close()
    assert checked.returncode == 0, checked.stdout
    assert "of another protocol version" in checked.stdout, checked.stdout
    assert "start bin/vpopmail-server" not in checked.stdout


def test_vcheck_says_when_the_front_ends_were_built_for_another_socket(site: LoginSite) -> None:
    """paths.server_socket changed without packaging/install (README: the path is built into
    the front ends) and the server reloaded: it answers at the new path, where no front end
    looks. vcheck's last step says so and names the fix (before: "OK ... serving
    vdelivermail and vchkpw", while every delivery and login ran the Python program, and
    server.smtp_auth_callers' logins failed)."""
    (site.inst.prefix / "run2").mkdir(mode=0o755)
    site.inst.set_config("paths", "server_socket", "run2/server.sock")
    server = server_of(site)
    server.proc.send_signal(signal.SIGHUP)
    wait_for(server, listening=2)
    checked = site.inst.run("vcheck", "alice@example.com")
    assert checked.returncode == 12, checked.stdout
    assert (f"bin/vdelivermail and bin/vchkpw were built for {site.inst.prefix}/run/server.sock,"
            f" not {site.inst.prefix}/run2/server.sock") in checked.stdout, checked.stdout
    assert "run packaging/install again" in checked.stdout, checked.stdout
    # --status too: the server is up, but not for these front ends (before: "is up" alone)
    said = site.inst.ok("vpopmail-server", "--status")
    assert f"is up on {site.inst.prefix}/run2/server.sock" in said, said
    assert (f"but bin/vdelivermail and bin/vchkpw were built for {site.inst.prefix}/run/"
            f"server.sock, not {site.inst.prefix}/run2/server.sock") in said, said


def test_vcheck_takes_another_spelling_of_the_front_ends_socket_for_it(site: LoginSite) -> None:
    """paths.server_socket spelled another way for the same path (``./run//server.sock``):
    the front ends reach the server there, and vcheck's last step passes."""
    site.inst.set_config("paths", "server_socket", "./run//server.sock")
    checked = site.inst.run("vcheck", "alice@example.com")
    assert checked.returncode == 0, checked.stdout
    assert "built for" not in checked.stdout, checked.stdout


def test_status_and_vcheck_ask_only_a_listener_of_the_front_ends_uid(site: LoginSite) -> None:
    """A process of another uid than the one the front ends accept (bin/'s owner, root here)
    listening at the server's socket is named by --status and vcheck, sent nothing, and not
    taken for the server (before, either printed what it answered)."""
    server = server_of(site)
    server.stop()
    run = site.inst.prefix / "run"
    run.chmod(0o777)
    script = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\n"
              "s.listen(4)\nprint('up',flush=True)\n"
              "while True:\n c,_=s.accept()\n print(len(c.recv(100)),flush=True)\n"
              " try: c.sendall(b'VPSr\\x02\\x04\\0\\0\\x03\\0\\0\\0ok\\n')\n"
              " except OSError: pass\n c.close()\n")
    proc = subprocess.Popen([*as_user_argv("vpopmail"), "/usr/bin/python3", "-c", script,
                             str(server.socket)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        said = site.inst.run("vpopmail-server", "--status")
        checked = site.inst.run("vcheck", "alice@example.com")
        # what each connection sent, printed once it closed (both askers have exited: read
        # before the listener is killed, which could come before its second line)
        sent = [proc.stdout.readline() for _ in range(2)]
    finally:
        proc.kill()
        proc.wait()
        run.chmod(0o755)
    assert said.returncode == 1, said
    assert f"runs as uid {pwd.getpwnam('vpopmail').pw_uid}, not 0" in said.stdout, said.stdout
    assert "is up" not in said.stdout and "front ends refuse it" in said.stdout
    assert checked.returncode != 0, checked.stdout
    assert "is not what listens on" in checked.stdout and "up on" not in checked.stdout
    assert sent == ["0\n", "0\n"]  # both connected, neither sent a byte


def test_second_server_refuses_to_start(site: LoginSite) -> None:
    """It names the running one's pid, found with a status request: the running server logs
    no dropped connection for it (before: "connection closed before a request")."""
    server = server_of(site)
    before = len(server.lines())
    second = site.inst.run("vpopmail-server")
    assert second.returncode == 111, second
    # the program's name once, then what is wrong (before: "vpopmail-server: vpopmail error:")
    assert second.stderr == (f"vpopmail-server: a server (pid {server.proc.pid}) already "
                             f"listens on {server.socket}\n"), second
    time.sleep(0.2)  # a drop would be logged at once
    assert not [line for line in server.lines()[before:] if "dropped" in line]


def test_of_two_servers_started_at_once_one_serves(root_vhome: Install) -> None:
    """Two servers started at the same moment (the systemd unit and the daemontools service
    both enabled, at boot): one listens, the other refuses (exit 111) saying so. Before:
    each asked at the socket, found no one, and made it (in a third or so of the tries
    here); the later replaced the earlier's, which ran on, "up" for its supervisor and
    logging "listening", where no front end could reach it."""
    logs = root_vhome.prefix.parent
    both = '"$1" >"$2" 2>&1 & echo $!; "$1" >"$3" 2>&1 & echo $!; wait'
    for attempt in range(10):
        outputs = [logs / f"{name}{attempt}.log" for name in "ab"]
        shell = subprocess.Popen(["sh", "-c", both, "sh", str(root_vhome.bin / "vpopmail-server"),
                                  *map(str, outputs)], stdout=subprocess.PIPE, text=True,
                                 env=CLEAN_ENV, cwd="/")
        assert shell.stdout is not None
        pids = [int(shell.stdout.readline()) for _ in outputs]
        try:
            deadline = time.monotonic() + 15
            while not any("vpopmail-server: " in p.read_text() for p in outputs if p.exists()
                          ) or sum(map(alive, pids)) == 2:
                assert time.monotonic() < deadline, [p.read_text() for p in outputs]
                time.sleep(0.05)
            [winner] = [pid for pid in pids if alive(pid)]
            said = outputs[1 - pids.index(winner)].read_text()
            assert (f"a server (pid {winner}) already listens" in said
                    or "another vpopmail-server is starting on" in said), said
            answer = root_vhome.ok("vpopmail-server", "--status")
            assert f"pid {winner}," in answer, answer
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            shell.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_server_as_another_user_than_root_names_the_fix(root_vhome: Install) -> None:
    """Started as the vpopmail user in a root install (run/ is root's): one line, no
    traceback, the program named once (before: a PermissionError traceback, exit 1; then
    "vpopmail-server: vpopmail error: cannot listen on ...")."""
    result = root_vhome.run("vpopmail-server", as_user="vpopmail")
    assert result.returncode == 111, result
    assert result.stderr == (f"vpopmail-server: cannot listen on "
                             f"{root_vhome.prefix}/run/server.sock: Permission denied (start "
                             f"vpopmail-server as root)\n")


# -- bad clients --------------------------------------------------------------------------------

def raw_request(program: int, argv: list[bytes], env: list[bytes], cwd: bytes = b"/",
                argc: int | None = None) -> tuple[bytes, bytes]:
    """(header, body) of a request as the front end builds it."""
    body = BODY.pack(0o077, len(argv) if argc is None else argc, len(env), 0,
                     *[2**64 - 1] * (2 * LIMITS))
    body += b"".join(s + b"\0" for s in [cwd, *argv, *env])
    return HEADER.pack(b"VPSq", VERSION, program, 3 if program == 1 else 4, len(body)), body


def send_with_fds(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])


def dropped_then_serving(site: LoginSite, client: object, reason: str) -> None:
    """``client`` (a callable given a connected socket) is dropped with one log line naming
    ``reason``, and the next delivery still goes through the server."""
    server = server_of(site)
    before = len(server.lines())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server.socket))
    sock.settimeout(10)
    try:
        try:
            client(sock)  # type: ignore[operator]
        except (BrokenPipeError, ConnectionResetError):  # dropped before it sent everything
            pass
        try:
            assert sock.recv(100) == b""  # closed without an answer
        except ConnectionResetError:  # closed with some of our bytes unread
            pass
    finally:
        sock.close()
    deadline = time.monotonic() + 10
    while len(server.lines()) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    new = server.lines()[before:]
    assert len(new) == 1 and "dropped" in new[0] and reason in new[0], new
    without_fallbacks(site.inst)
    assert site.deliver("alice").returncode == 0


def test_garbage_is_dropped(site: LoginSite) -> None:
    dropped_then_serving(site, lambda s: s.sendall(b"GET / HTTP/1.0\r\n\r\n"),
                         "not a vpopmail-server request")


def test_oversized_argv_is_dropped(site: LoginSite) -> None:
    with open(os.devnull) as null:
        fds = [null.fileno()] * 3
        header, body = raw_request(1, [b"x"] * 1025, [])
        dropped_then_serving(site, lambda s: (send_with_fds(s, header, fds), s.sendall(body)),
                             "1025 arguments")


def test_oversized_environment_is_dropped(site: LoginSite) -> None:
    with open(os.devnull) as null:
        fds = [null.fileno()] * 3
        header, body = raw_request(1, [b"vdelivermail", b"", b"x"], [b"A=" + b"y" * 70000])
        dropped_then_serving(site, lambda s: (send_with_fds(s, header, fds), s.sendall(body)),
                             "environment over 64 KiB")


def test_too_long_request_is_dropped(site: LoginSite) -> None:
    with open(os.devnull) as null:
        fds = [null.fileno()] * 3
        header = HEADER.pack(b"VPSq", VERSION, 1, 3, 300 * 1024)
        dropped_then_serving(site, lambda s: send_with_fds(s, header, fds), "request of")


@pytest.mark.parametrize("count", [2, 5])
def test_wrong_descriptor_count_is_dropped(site: LoginSite, count: int) -> None:
    with open(os.devnull) as null:
        header, body = raw_request(1, [b"vdelivermail", b"", b"x"], [])
        dropped_then_serving(site, lambda s: (send_with_fds(s, header, [null.fileno()] * count),
                                              s.sendall(body)),
                             "descriptors")


def test_half_closed_connection_is_dropped(site: LoginSite) -> None:
    with open(os.devnull) as null:
        header, body = raw_request(1, [b"vdelivermail", b"", b"x"], [])
        dropped_then_serving(site, lambda s: (send_with_fds(s, header, [null.fileno()] * 3),
                                              s.sendall(body[:10]), s.shutdown(socket.SHUT_WR)),
                             "connection closed after")


def test_silent_client_times_out(site: LoginSite) -> None:
    dropped_then_serving(site, lambda s: None, "timed out")


@pytest.mark.parametrize("site", ["fresh", "reused"], indirect=True)
def test_client_killed_mid_request(site: LoginSite) -> None:
    """A .qmail program keeps the worker busy; the front end is killed meanwhile: the worker
    finishes alone, and the server goes on serving."""
    without_fallbacks(site.inst)
    home = site.user_dir("alice")
    (home / ".qmail").write_text(f"|sleep 2; touch {site.work}/finished\n./Maildir/\n")
    shutil.chown(home / ".qmail", site.inst.user, site.inst.group)
    variables = qmail_local_env("alice", home=str(site.domain_dir))
    with tempfile.TemporaryFile() as fh:
        fh.write(MESSAGE)
        fh.seek(0)
        proc = subprocess.Popen(site.argv("", "bounce-no-mailbox"), stdin=fh, env=variables,
                                cwd=site.domain_dir, stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 20
    while not (site.work / "finished").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    (home / ".qmail").unlink()
    assert site.deliver("alice").returncode == 0
    assert server_of(site).proc.poll() is None


def crowd(path: Path, count: int, socks: list[socket.socket], first: bytes = b"") -> None:
    """``count`` connections to ``path`` made without waiting, each sending ``first``, added
    to ``socks`` (the caller closes them) as they are made."""
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        socks.append(sock)
        sock.setblocking(False)
        try:
            sock.connect(str(path))
            if first:
                sock.send(first)
        except OSError:  # BlockingIOError: queued; a full queue or no descriptor: refused
            pass


def test_a_thousand_simultaneous_connects(site: LoginSite) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    server = server_of(site)
    socks: list[socket.socket] = []
    try:
        crowd(server.socket, 1000, socks)
        for sock in socks:
            try:
                sock.send(b"garbage!garbage!")
            except OSError:
                pass
    finally:
        for sock in socks:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    without_fallbacks(site.inst)
    started = time.monotonic()
    assert site.deliver("alice").returncode == 0
    assert time.monotonic() - started < 30
    assert server.proc.poll() is None


# -- the server dies under load ------------------------------------------------------------------

@pytest.mark.parametrize("site", ["fresh", "reused"], indirect=True)
def test_sigkill_under_load_loses_nothing(site: LoginSite) -> None:
    """Deliveries (seekable and piped) and logins while the server is SIGKILLed: each
    delivery that exited 0 is in the Maildir, the others exited 111; no login reads 1."""
    server = server_of(site)

    def deliver(n: int) -> tuple[int, int]:
        message = MESSAGE.replace(b"anchor test", f"load {n}".encode())
        return n, site.deliver("alice", message, pipe=bool(n % 2)).returncode

    source = site.work / "fd3-load"
    source.write_bytes(b"alice@example.com\0pw\0\0")

    def login(n: int) -> int:
        return subprocess.run(["/bin/sh", "-c", f'exec "$0" /bin/true 3<"{source}"',
                               str(site.inst.bin / "vchkpw")], env=POP_ENV, cwd="/",
                              timeout=120).returncode

    with ThreadPoolExecutor(12) as pool:
        deliveries = [pool.submit(deliver, n) for n in range(60)]
        logins = [pool.submit(login, n) for n in range(30)]
        time.sleep(0.4)
        server.proc.send_signal(signal.SIGKILL)
        results = [f.result() for f in deliveries]
        codes = [f.result() for f in logins]
    assert set(code for _, code in results) <= {0, 111}, results
    assert set(codes) <= {0, 111}, codes
    stored = b"".join(body_of(site, "alice"))
    for n, code in results:
        if code == 0:
            assert f"Subject: load {n}\n".encode() in stored, n
    assert not list((site.maildir("alice") / "tmp").iterdir())


@pytest.mark.parametrize("site", [{"workers": 1}], indirect=True)
def test_sigkill_with_callers_taken_by_the_server_runs_them_in_python(site: LoginSite) -> None:
    """The front ends' socket is taken from at once, the callers waiting in the server for a
    worker (its one worker alternating between two identities): those it holds when it is
    SIGKILLed see it close and run the Python program (a seekable input, fd 3 read from a
    file), so every delivery and login succeeds, each message delivered once; only the
    lookup socket is left to its queue (test_dovecot24_server.py)."""
    server = server_of(site)
    source = site.work / "fd3-taken"
    source.write_bytes(b"alice@example.com\0pw\0\0")

    def deliver(n: int) -> int:
        return site.deliver("alice", MESSAGE.replace(b"anchor test", f"taken {n}".encode())
                            ).returncode

    def login(n: int) -> int:
        return subprocess.run(["/bin/sh", "-c", f'exec "$0" /bin/true 3<"{source}"',
                               str(site.inst.bin / "vchkpw")], env=POP_ENV, cwd="/",
                              timeout=120).returncode

    before = open_sockets(server.proc.pid)
    with ThreadPoolExecutor(40) as pool:
        deliveries = [pool.submit(deliver, n) for n in range(20)]
        logins = [pool.submit(login, n) for n in range(20)]
        deadline = time.monotonic() + 20
        while (held := open_sockets(server.proc.pid) - before) < 12:
            assert time.monotonic() < deadline, held
            time.sleep(0.005)
        server.proc.send_signal(signal.SIGKILL)
        results = [f.result() for f in deliveries]
        codes = [f.result() for f in logins]
    assert results == [0] * 20 and codes == [0] * 20, (results, codes, held)
    stored = b"".join(body_of(site, "alice"))
    assert all(stored.count(f"Subject: taken {n}\n".encode()) == 1 for n in range(20))


# -- a hostile local user: what it may hold, and for how long -----------------------------------

NOBODY = 65534


@contextmanager
def as_nobody(action: Callable[[], None]) -> Iterator[int]:
    """A child process running ``action`` as uid/gid 65534 (no groups) until the end."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            import ctypes  # a user's own process is dumpable (setuid made this one not)
            ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
            action()
        except BaseException:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    try:
        yield pid
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def trickle(path: str) -> None:
    """Connect, and send a request one byte a second, for ever."""
    header, body = raw_request(1, [b"vdelivermail", b"", b"bounce-no-mailbox"], [b"HOME=/"])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    with open(os.devnull, "rb") as null:
        send_with_fds(sock, header[:1], [null.fileno()] * 3)
    for byte in (header + body)[1:]:
        time.sleep(1)
        sock.send(bytes([byte]))
    time.sleep(3600)


@pytest.mark.parametrize("site", [{"workers": 2}], indirect=True)
def test_a_trickling_caller_holds_no_worker_past_the_request_timeout(site: LoginSite) -> None:
    """Another user sending its request a byte a second is dropped after
    server.request_timeout (2 s here) however it trickles: it cannot keep the workers."""
    path = str(server_of(site).socket)
    with as_nobody(lambda: trickle(path)), as_nobody(lambda: trickle(path)):
        time.sleep(4)
        started = time.monotonic()
        assert site.deliver("alice").returncode == 0
        assert time.monotonic() - started < 10
    assert any("dropped" in line and f"uid {NOBODY}" in line
               for line in server_of(site).lines()), server_of(site).lines()



def hold(path: str) -> None:
    """A vchkpw request whose fd 3 is a pipe never written nor closed: the worker that takes
    it reads it for ever."""
    header, body = raw_request(2, [b"vchkpw", b"/bin/true"], [b"HOME=/"])
    reader, writer = os.pipe()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    with open(os.devnull, "rb") as null:
        send_with_fds(sock, header + body, [null.fileno()] * 3 + [reader])
    time.sleep(3600)


@pytest.mark.parametrize("site", [{"workers": 2}], indirect=True)
def test_callers_of_other_identities_are_declined_while_every_worker_is_held(
        site: LoginSite) -> None:
    """Another user's requests that never end (a login whose fd 3 stays open) hold every
    worker: a delivery that finds no worker within server.request_timeout (2 s here) is
    declined, and the Python program delivers it, instead of waiting for
    server.reply_timeout and deferring. A login likewise."""
    server = server_of(site)
    path = str(server.socket)
    with as_nobody(lambda: hold(path)), as_nobody(lambda: hold(path)):
        time.sleep(2)
        started = time.monotonic()
        assert site.deliver("alice").returncode == 0
        assert site.login("alice@example.com", "pw").code == 0
        assert time.monotonic() - started < 15
    assert len([p for p in site.new_files(site.maildir("alice"))]) == 1
    assert any("no worker" in line for line in server.lines()), server.lines()


def test_running_out_of_descriptors_keeps_the_server(site: LoginSite) -> None:
    """Callers that send a byte and wait, more than the server has descriptors for (its
    RLIMIT_NOFILE lowered to 100): it neither dies (a fork's socketpair failing with EMFILE
    was not caught) nor spins logging "cannot accept"; once they are gone it serves again."""
    server = server_of(site)
    subprocess.run(["prlimit", f"--pid={server.proc.pid}", "--nofile=100:100"], check=True)
    socks: list[socket.socket] = []
    try:
        crowd(server.socket, 150, socks, b"V")
        time.sleep(3)
        assert server.proc.poll() is None, server.lines()[-5:]
    finally:
        for sock in socks:
            sock.close()
    time.sleep(3)
    assert server.proc.poll() is None, server.lines()[-5:]
    assert sum("cannot accept" in line for line in server.lines()) < 100
    assert site.deliver("alice").returncode == 0
    assert server.proc.poll() is None, server.lines()[-5:]


#: the server's request timeout of test_a_callers_declared_limits_cannot_exceed_its_own:
#: long, as nothing there is about the timeout. Within the site's 2 s, a machine loaded
#: enough to stall the caller between its connect and its request, or the server before a
#: worker took it, had the request dropped or declined (nothing delivered, nothing checked)
LONG_REQUEST_TIMEOUT = 60


@pytest.mark.parametrize("site", [{"request_timeout": LONG_REQUEST_TIMEOUT}], indirect=True)
def test_a_callers_declared_limits_cannot_exceed_its_own(site: LoginSite) -> None:
    """A caller speaking the protocol itself declares RLIM_INFINITY for every limit while
    its own hard RLIMIT_NOFILE is 64: the program its delivery runs (alice's .qmail) must
    not get more than the direct program would give it (64)."""
    home = site.user_dir("alice")
    out = home / "limit.txt"
    (home / ".qmail").write_text("|ulimit -Hn > limit.txt\n./Maildir/\n")
    shutil.chown(home / ".qmail", site.inst.user, site.inst.group)
    variables = qmail_local_env("alice", home=str(site.domain_dir))
    env = [f"{k}={v}".encode() for k, v in variables.items()]
    header, body = raw_request(1, [b"vdelivermail", b"", b"bounce-no-mailbox"], env,
                               cwd=str(site.domain_dir).encode())
    with tempfile.TemporaryFile() as message:
        message.write(MESSAGE)
        message.seek(0)
        pid = os.fork()
        if pid == 0:
            code = 1  # the child failed before an answer
            try:
                os.setgroups([site.inst.gid])
                os.setgid(site.inst.gid)
                os.setuid(site.inst.uid)
                import ctypes  # as a front end exec'd by qmail-local (setuid made us not)
                ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
                resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(server_of(site).socket))
                with open(os.devnull, "wb") as null:
                    send_with_fds(sock, header + body, [message.fileno(), null.fileno(),
                                                       null.fileno()])
                answer = sock.recv(100)
                # 0: the delivery's exit code came back; 2: dropped; 10 + kind: another answer
                code = (0 if len(answer) == 16 and answer[5] == EXIT
                        else 10 + answer[5] if len(answer) >= HEADER.size else 2)
            finally:
                os._exit(code)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    said = {1: "no answer (the caller failed, its send or read too)", 2: "dropped",
            10 + DECLINE: "declined"}.get(status, status)
    assert status == 0, (said, server_of(site).lines()[-5:])
    assert out.read_text().strip() == "64"


def deliver_in_a_read_only_sandbox(site: LoginSite, program: str) -> int:
    """The exit code of ``program`` (vdelivermail: the front end or the Python program)
    delivering to alice in a mount namespace of its own where the domains are read only."""
    domains = str(site.inst.domains)
    sandbox = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
               f'mount --bind "{domains}" "{domains}" && mount -o remount,bind,ro '
               f'"{domains}" && exec "$@"', "sh")
    front_end = str(site.inst.bin / "vdelivermail")
    argv = [program if arg == front_end else arg for arg in site.argv("", "bounce-no-mailbox")]
    with tempfile.TemporaryFile() as fh:
        fh.write(MESSAGE)
        fh.seek(0)
        result = subprocess.run([*sandbox, *argv], stdin=fh, capture_output=True,
                                env=qmail_local_env("alice", home=str(site.domain_dir)),
                                cwd=site.domain_dir, timeout=60)
    return result.returncode


def test_a_caller_in_a_read_only_mount_namespace_gets_no_write_through_the_server(
        site: LoginSite) -> None:
    """A caller whose mount namespace has the domains read only (a sandboxed service, say)
    cannot deliver directly (111): through the server it must not either, since the worker
    would write in the server's namespace."""
    assert site.deliver("alice").returncode == 0  # the delivery identity has its worker
    for program in (site.inst.prefix / "libexec" / "vdelivermail", site.inst.bin / "vdelivermail"):
        assert deliver_in_a_read_only_sandbox(site, str(program)) == 111, program
    assert len(site.new_files(site.maildir("alice"))) == 1
    assert any("another mount namespace" in line for line in server_of(site).lines())


def test_server_sandboxed_callers_serves_them_in_the_servers_view(root_vhome: Install) -> None:
    """With server.sandboxed_callers (a Dovecot or qmail unit with PrivateTmp or
    ProtectSystem, whose sandbox does not cover what vdelivermail and vchkpw write) the same
    caller is served, in the server's view of the file system: its delivery goes through."""
    root_vhome.set_config("server", "sandboxed_callers", True)
    login_site = LoginSite(root_vhome, unprivileged=True)
    login_site.ok("vadddomain", DOMAIN, "secret")
    login_site.add("alice", "pw")
    with running_server(root_vhome):
        assert deliver_in_a_read_only_sandbox(login_site, str(root_vhome.bin / "vdelivermail")) == 0
    assert len(login_site.new_files(login_site.maildir("alice"))) == 1


# -- its log ------------------------------------------------------------------------------------

def log_channel(kind: str) -> tuple[int, int]:
    """(read end, write end) of the server's log: multilog's pipe or journald's stream."""
    if kind == "pipe":
        return os.pipe()
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return reader.detach(), writer.detach()


def fill(write_end: int) -> None:
    """Fill the log channel of ``write_end`` to the brim, without making the server's copy
    non-blocking (a pipe through a file of its own, a socket with MSG_DONTWAIT)."""
    try:
        if stat.S_ISFIFO(os.fstat(write_end).st_mode):
            filler = os.open(f"/proc/self/fd/{write_end}", os.O_WRONLY | os.O_NONBLOCK)
            try:
                while True:
                    os.write(filler, b"x" * 4096)
            finally:
                os.close(filler)
        with socket.socket(fileno=os.dup(write_end)) as sock:
            while True:
                sock.send(b"x" * 4096, socket.MSG_DONTWAIT)
    except BlockingIOError:
        pass


@pytest.mark.parametrize("kind", ["pipe", "socket"])
def test_a_full_log_holds_up_no_delivery_or_login(root_vhome: Install, kind: str) -> None:
    """multilog stopped (svc -d on the log service) or stalled (its disk full) leaves the
    server's log pipe full, svscan holding it open (journald's stream fills the same way
    when it falls behind): a line that does not fit is dropped and the server goes on.
    Before: the parent, then each worker with a line to log, waited in write() until the
    logger read again; a silent caller's "dropped" line was enough to hold every later
    caller the parent takes for server.reply_timeout (then 111), every new identity's first
    delivery and login among them."""
    root_vhome.set_config("server", "request_timeout", 1)
    site = LoginSite(root_vhome, unprivileged=True)
    site.ok("vadddomain", DOMAIN, "secret")
    site.add("alice", "pw")
    without_fallbacks(root_vhome)
    read_end, write_end = log_channel(kind)
    proc = subprocess.Popen([str(root_vhome.bin / "vpopmail-server")], stdout=write_end,
                            stderr=write_end, env={"PATH": "/usr/bin:/bin"}, cwd="/")
    try:
        with os.fdopen(read_end, "rb", buffering=0) as log:
            assert b"listening on" in log.read(4096)
            fill(write_end)  # the logger reads no more
            silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            silent.connect(str(root_vhome.prefix / "run" / "server.sock"))
            time.sleep(2.5)  # dropped at server.request_timeout: its line does not fit
            silent.close()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as garbage:
                garbage.connect(str(root_vhome.prefix / "run" / "server.sock"))
                garbage.sendall(b"GET / HTTP/1.0\r\n\r\n")  # a worker's line: dropped too
                garbage.settimeout(10)
                assert garbage.recv(100) == b""
            delivery = site.deliver("alice", wrap=("timeout", "20"))
            assert (delivery.returncode, delivery.stderr) == (0, b""), delivery
            assert site.login("alice@example.com", "pw", wrap=("timeout", "20")).code == 0
            while log.read(65536) and select.select([log], [], [], 0.2)[0]:
                pass  # multilog reads again: the next lines reach it
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            seen = b""
            while b"listening on" not in seen and time.monotonic() < deadline:
                if select.select([log], [], [], 0.2)[0]:
                    seen += log.read(65536)
            assert b"reloading" in seen and b"listening on" in seen, seen
    finally:
        os.close(write_end)
        proc.kill()
        proc.wait()


def test_a_socket_that_cannot_be_made_is_named_by_its_setting(root_vhome: Install,
                                                              tmp_path: Path) -> None:
    """A start refused for a socket's directory says which setting names it: the server's or
    the Dovecot lookups' (before: only the directory, which the operator had to trace back
    to paths.server_socket or paths.lookup_socket)."""
    open_to_all = tmp_path / "open"
    open_to_all.mkdir(mode=0o777)
    open_to_all.chmod(0o777)
    good = root_vhome.config_path.read_text()
    cases = {"paths.server_socket": good.replace('server_socket = "run/server.sock"',
                                                 'server_socket = "/nonexistent/s.sock"'),
             "paths.lookup_socket": good.replace(
                 'dovecot_callers = ""', 'dovecot_callers = "root"').replace(
                 'lookup_socket = "run/lookup.sock"', f'lookup_socket = "{open_to_all}/l.sock"')}
    try:
        for key, text in cases.items():
            assert text != good
            root_vhome.config_path.write_text(text)
            started = root_vhome.run("vpopmail-server")
            assert started.returncode == 111, started
            assert f"({key})" in started.stderr, started
    finally:
        root_vhome.config_path.write_text(good)


def test_check_while_a_server_runs_says_so(root_vhome: Install) -> None:
    """--check as root while a server holds the socket: exit 0, and it says that server
    (its pid) serves there and that a reload would start with what was checked, not that a
    start would listen there (a start would be refused); the server sees nothing of it.
    Before: "it would listen on PATH"."""
    with running_server(root_vhome) as server:
        checked = root_vhome.run("vpopmail-server", "--check")
        assert checked.returncode == 0, checked
        socket_path = root_vhome.prefix / "run" / "server.sock"
        assert "would listen" not in checked.stdout, checked
        assert f"a server (pid {server.proc.pid}) already listens on {socket_path}" in \
            checked.stdout and "a reload" in checked.stdout, checked
        assert not any("dropped" in line for line in server.lines()), server.lines()
