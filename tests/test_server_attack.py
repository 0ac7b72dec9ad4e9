"""vpopmail-server against a hostile local user: what it may hold, and for how long."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from delivery_site import DOMAIN
from install_site import Install
from login_site import LoginSite
from server_site import running_server
from test_server import raw_request, send_with_fds, server_of, site  # noqa: F401

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
    socks = []
    try:
        for _ in range(150):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(str(server.socket))
                sock.send(b"V")
            except OSError:
                pass
            socks.append(sock)
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


def test_a_callers_declared_limits_cannot_exceed_its_own(site: LoginSite) -> None:
    """A caller speaking the protocol itself declares RLIM_INFINITY for every limit while
    its own hard RLIMIT_NOFILE is 64: the program its delivery runs (alice's .qmail) must
    not get more than the direct program would give it (64)."""
    import resource
    import shutil
    import tempfile

    from delivery_site import MESSAGE, qmail_local_env

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
            code = 1
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
                code = 0 if len(sock.recv(100)) == 16 else 1
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
    assert out.read_text().strip() == "64"


def deliver_in_a_read_only_sandbox(site: LoginSite, program: str) -> int:
    """The exit code of ``program`` (vdelivermail: the front end or the Python program)
    delivering to alice in a mount namespace of its own where the domains are read only."""
    import tempfile

    from delivery_site import MESSAGE, qmail_local_env

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
