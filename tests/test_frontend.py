"""The C front ends (frontend/frontend.c) against fake servers: what they do with each kind of
reply, a server that dies, an impostor socket, and exec plans they must refuse."""
from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from install_site import INSTALL, REPO, VENV, Install, as_user_argv
from delivery_site import DOMAIN, MESSAGE, Site
from login_site import LoginSite
from server_site import fill_queue, running_server
from vpopmail.wire import HEADER, VERSION, identity_socket

EXIT, PLAN, DECLINE = 1, 2, 3


def answer(kind: int, payload: bytes = b"", version: int = VERSION, length: int | None = None
           ) -> bytes:
    return HEADER.pack(b"VPSr", version, kind, 0, len(payload) if length is None else length
                       ) + payload


class FakeServer:
    """Accepts one connection at ``path``, reads the request (and ``consume`` bytes of the
    client's input descriptor), then sends ``reply`` and closes; with ``reply`` None it sends
    nothing and keeps the connection until :meth:`close` (a server that hangs)."""

    def __init__(self, path: Path, reply: bytes | None, consume: int = 0) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        path.chmod(0o666)
        self.listener.listen(5)
        self.reply = reply
        self.consume = consume
        self.requests = 0
        self.hung = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            data, ancillary, _, _ = conn.recvmsg(12, socket.CMSG_SPACE(16))
            fds = [fd for _, _, raw in ancillary
                   for fd in struct.unpack(f"{len(raw) // 4}i", raw)]
            while len(data) < 12:
                data += conn.recv(12 - len(data))
            length = HEADER.unpack(data)[4]
            body = b""
            while len(body) < length:
                body += conn.recv(length - len(body))
            self.requests += 1
            if self.consume:
                os.read(fds[0 if len(fds) == 3 else 3], self.consume)
            for fd in fds:
                os.close(fd)
            if self.reply is None:
                self.hung.wait(30)
                return
            conn.sendall(self.reply)

    def close(self) -> None:
        self.hung.set()
        self.thread.join(timeout=10)
        self.listener.close()


@pytest.fixture
def site(root_vhome: Install) -> Iterator[LoginSite]:
    login_site = LoginSite(root_vhome, unprivileged=True)
    login_site.ok("vadddomain", DOMAIN, "secret")
    login_site.add("alice", "pw")
    yield login_site
    login_site.syslog.close()


@pytest.fixture
def fake(site: LoginSite) -> Iterator[Callable[..., FakeServer]]:
    made: list[FakeServer] = []

    def make(reply: bytes | None, consume: int = 0) -> FakeServer:
        server = FakeServer(site.inst.prefix / "run" / "server.sock", reply, consume)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def delivered(site: Site) -> list[bytes]:
    return [p.read_bytes() for p in site.new_files(site.maildir("alice"))]


# -- vdelivermail -------------------------------------------------------------------------------

def test_exit_status_is_passed_on(site: LoginSite, fake: Callable[..., FakeServer]) -> None:
    server = fake(answer(EXIT, struct.pack("=I", 99)))
    result = site.deliver("alice")
    assert (result.returncode, result.stdout) == (99, b"")
    assert server.requests == 1 and delivered(site) == []


@pytest.mark.parametrize("reply, text", [
    (b"HTTP/1.0 200 OK\r\n\r\n", b"garbled reply"),
    (answer(EXIT, b"\0\0", length=4), b"truncated reply"),
    (answer(EXIT, length=1 << 20), b"oversized reply"),
    (answer(EXIT, struct.pack("=I", 300)), b"malformed exit status"),
    (answer(7), b"unexpected reply"),
    (answer(PLAN, b"\0" * 24), b"unexpected reply"),  # no exec plans for vdelivermail
], ids=["garbage", "truncated", "oversized", "status-range", "kind", "plan"])
def test_bad_replies_defer(site: LoginSite, fake: Callable[..., FakeServer], reply: bytes,
                           text: bytes) -> None:
    fake(reply)
    result = site.deliver("alice")
    assert result.returncode == 111 and text in result.stdout, result
    assert delivered(site) == []


@pytest.mark.parametrize("reply", [answer(DECLINE), answer(DECLINE, version=VERSION + 1),
                                   answer(DECLINE, version=VERSION - 1),
                                   answer(EXIT, struct.pack("=I", 0), version=VERSION + 1)],
                         ids=["decline", "other-version-decline", "older-server-decline",
                              "other-version"])
def test_declined_runs_the_python_program(site: LoginSite, fake: Callable[..., FakeServer],
                                          reply: bytes) -> None:
    server = fake(reply)
    assert site.deliver("alice").returncode == 0
    assert server.requests == 1
    [data] = delivered(site)
    assert data.endswith(MESSAGE)


def test_server_dying_with_a_seekable_message_runs_python_from_the_start(
        site: LoginSite, fake: Callable[..., FakeServer]) -> None:
    fake(b"", consume=20)
    assert site.deliver("alice").returncode == 0
    [data] = delivered(site)
    assert data.endswith(b"Delivered-To: alice@example.com\n" + MESSAGE)


def test_server_dying_with_a_piped_message_defers(site: LoginSite,
                                                  fake: Callable[..., FakeServer]) -> None:
    fake(b"", consume=20)
    result = site.deliver("alice", pipe=True)
    assert result.returncode == 111 and b"ended before answering" in result.stdout
    assert delivered(site) == []


def test_no_server_runs_python(site: LoginSite) -> None:
    result = site.deliver("alice", pipe=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert len(delivered(site)) == 1


@pytest.mark.parametrize("which", ["server", "identity"])
def test_impostor_socket_is_refused(site: LoginSite, which: str) -> None:
    """A socket whose listener is not root, at the server's path or at the caller identity's
    own: the front end sends nothing and defers."""
    run = site.inst.prefix / "run"
    run.chmod(0o777)
    path = str(run / "server.sock")
    if which == "identity":
        path = identity_socket(path, site.inst.uid, site.inst.gid, (site.inst.gid,)) or ""
    script = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\n"
              "s.listen(1)\nprint('up',flush=True)\nc,_=s.accept()\n"
              "print(len(c.recv(100)),flush=True)\n")
    proc = subprocess.Popen([*as_user_argv("vpopmail"), "/usr/bin/python3", "-c", script,
                             path], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        result = site.deliver("alice")
        assert result.returncode == 111 and b"wrong owner" in result.stdout
        assert proc.stdout.readline() == "0\n"  # nothing was sent to it
    finally:
        proc.kill()
        proc.wait()
    assert delivered(site) == []


def test_oversized_environment_skips_the_server(site: LoginSite) -> None:
    """The front end runs Python at once: it does not even connect (a connection that sends
    nothing would be logged as dropped)."""
    with running_server(site.inst) as server:
        result = site.deliver("alice", env={"BIG": "x" * 70000})
        assert result.returncode == 0
        assert "is up" in site.inst.ok("vpopmail-server", "--status")
    assert not any("dropped" in line for line in server.lines()), server.lines()
    assert len(delivered(site)) == 1


# -- vchkpw exec plans --------------------------------------------------------------------------

def plan(site: LoginSite, uid: int, gid: int, *, change: int = 1, cwd: str = "",
         groups: tuple[int, ...] = ()) -> bytes:
    argv = [str(site.dump), str(site.record)]
    strings = [str(site.dump), cwd, *argv, "PATH=/usr/bin:/bin", "PLANNED=yes"]
    return (struct.pack("=6I", change, uid, gid, len(groups), len(argv), 2)
            + struct.pack(f"={len(groups)}I", *groups)
            + b"".join(s.encode() + b"\0" for s in strings))


def test_plan_is_carried_out(site: LoginSite, fake: Callable[..., FakeServer]) -> None:
    home = str(site.user_dir("alice"))
    fake(answer(PLAN, plan(site, 89, 89, cwd=home, groups=(89,))))
    login = site.login("alice@example.com", "pw")
    assert login.code == 0 and login.ran
    assert (login.env["uid"], login.env["gid"], login.env["groups"], login.env["cwd"]
            ) == ("89", "89", "89", home)
    assert login.env["PLANNED"] == "yes" and "TCPREMOTEIP" not in login.env


def test_plan_without_change_keeps_ids(site: LoginSite, fake: Callable[..., FakeServer]) -> None:
    fake(answer(PLAN, plan(site, 89, 89, change=0)))
    login = site.login("alice@example.com", "pw")
    assert login.code == 0 and (login.env["uid"], login.env["cwd"]) == ("0", "/")


@pytest.mark.parametrize("payload, text", [
    (lambda s: plan(s, 0, 0), "uid 0 refused"),
    (lambda s: plan(s, 89, 89)[:-5], "malformed exec plan"),
    (lambda s: plan(s, 89, 89)[:20], "truncated exec plan"),
    (lambda s: plan(s, 89, 89) + b"extra\0", "malformed exec plan"),
    (lambda s: struct.pack("=6I", 1, 89, 89, 5000, 1, 0), "malformed exec plan"),
    (lambda s: plan(s, 89, 89, cwd="/nonexistent"), "cannot enter"),
], ids=["root", "cut-string", "cut-head", "trailing", "groups", "cwd"])
def test_bad_plans_are_refused(site: LoginSite, fake: Callable[..., FakeServer],
                               payload: Callable[[LoginSite], bytes], text: str) -> None:
    fake(answer(PLAN, payload(site)))
    login = site.login("alice@example.com", "pw")
    assert login.code == 111 and not login.ran and text in login.stderr, login


def test_a_server_that_does_not_answer_in_time_is_temporary(
        site: LoginSite, fake: Callable[..., FakeServer]) -> None:
    """server.reply_timeout (baked in at install): a hung server costs a 111, not a qmail-local
    or POP login waiting for ever, and the run is not made again by Python (the server may
    still finish it)."""
    site.inst.set_config("server", "reply_timeout", 1)
    subprocess.run([sys.executable, str(INSTALL), "--prefix", str(site.inst.prefix),
                    "--qmaildir", str(site.inst.qmaildir), "--venv", str(VENV)], check=True,
                   capture_output=True)
    server = fake(None)
    started = time.monotonic()
    result = site.deliver("alice")
    waited = time.monotonic() - started
    server.close()
    assert result.returncode == 111 and 1 <= waited < 10, (result, waited)
    assert b"no reply from vpopmail-server in time" in result.stdout
    assert server.requests == 1 and delivered(site) == []
    (site.inst.prefix / "run" / "server.sock").unlink()
    server = fake(None)
    started = time.monotonic()
    login = site.login("alice@example.com", "pw")
    waited = time.monotonic() - started
    server.close()
    assert login.code == 111 and not login.ran and 1 <= waited < 10, (login, waited)


def test_a_server_whose_queue_stays_full_is_left_after_the_reply_timeout(site: LoginSite
                                                                          ) -> None:
    """A listener that takes no one (stuck) with its queue full: a front end's connect
    waits server.reply_timeout at most, then the Python program runs (nothing was sent),
    rather than waiting for ever."""
    site.inst.set_config("server", "reply_timeout", 1)
    subprocess.run([sys.executable, str(INSTALL), "--prefix", str(site.inst.prefix),
                    "--qmaildir", str(site.inst.qmaildir), "--venv", str(VENV)], check=True,
                   capture_output=True)
    path = site.inst.prefix / "run" / "server.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    path.chmod(0o666)
    listener.listen(0)
    queued = []
    try:
        queued = fill_queue(path)
        started = time.monotonic()
        result = site.deliver("alice")
        waited = time.monotonic() - started
        login = site.login("alice@example.com", "pw")
    finally:
        for sock in queued:
            sock.close()
        listener.close()
    assert result.returncode == 0 and 1 <= waited < 30, (result, waited)
    assert len(delivered(site)) == 1
    assert login.code == 0 and login.ran, login


def test_both_full_queues_cost_one_reply_timeout_in_all(site: LoginSite) -> None:
    """The identity's socket and the server's both stuck with full queues: the front end
    waits server.reply_timeout once (at the first), tries the second without waiting, and
    runs the Python program."""
    site.inst.set_config("server", "reply_timeout", 2)
    subprocess.run([sys.executable, str(INSTALL), "--prefix", str(site.inst.prefix),
                    "--qmaildir", str(site.inst.qmaildir), "--venv", str(VENV)], check=True,
                   capture_output=True)
    main = site.inst.prefix / "run" / "server.sock"
    own = identity_socket(str(main), site.inst.uid, site.inst.gid, (site.inst.gid,))
    assert own is not None
    listeners, queued = [], []
    try:
        for path in (main, Path(own)):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            path.chmod(0o666)
            listener.listen(0)
            listeners.append(listener)
            queued += fill_queue(path)
        started = time.monotonic()
        result = site.deliver("alice")
        waited = time.monotonic() - started
    finally:
        for sock in (*queued, *listeners):
            sock.close()
    assert result.returncode == 0 and 2 <= waited < 3.5, (result, waited)
    assert len(delivered(site)) == 1


def test_login_server_killed_mid_reply_is_temporary(site: LoginSite,
                                                    fake: Callable[..., FakeServer]) -> None:
    fake(answer(PLAN, plan(site, 89, 89))[:30])
    login = site.login("alice@example.com", "pw")
    assert login.code == 111 and not login.ran


def test_login_server_dying_before_answering_reruns_with_seekable_credentials(
        site: LoginSite, fake: Callable[..., FakeServer]) -> None:
    fake(b"", consume=5)
    login = site.login("alice@example.com", "pw")
    assert login.code == 0 and login.ran and login.env["uid"] == "89"


# -- building -----------------------------------------------------------------------------------

@pytest.mark.parametrize("compiler", ["gcc", "musl-gcc"])
def test_frontend_is_clean_under_the_analyzer(tmp_path: Path, compiler: str) -> None:
    cc = shutil.which(compiler)
    if cc is None:
        pytest.skip(f"no {compiler}")
    for program in (1, 2):
        result = subprocess.run(
            [cc, "-std=c99", "-pedantic", "-O2", "-Wall", "-Wextra", "-Werror", "-fanalyzer",
             f"-DVPS_PROGRAM={program}", '-DVPS_SOCKET="run/server.sock"',
             '-DVPS_FALLBACK="libexec/x"', "-o", str(tmp_path / f"fe{program}"),
             str(REPO / "frontend" / "frontend.c")], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_install_without_a_compiler_keeps_the_python_programs(vhome: Install) -> None:
    assert not (vhome.bin / "vdelivermail").read_bytes().startswith(b"#!")
    result = subprocess.run([sys.executable, str(INSTALL), "--prefix", str(vhome.prefix),
                             "--qmaildir", str(vhome.qmaildir), "--cc", "/nonexistent/cc",
                             "--venv", str(VENV)], check=True, capture_output=True, text=True)
    assert "no C compiler" in result.stdout
    inst = vhome
    for name in ("vdelivermail", "vchkpw"):
        assert (inst.bin / name).read_text().startswith("#!")
        assert not (inst.prefix / "libexec" / name).exists()


def program_interpreter(path: Path) -> bool:
    """Whether the ELF program at ``path`` asks for a dynamic loader (a PT_INTERP header)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # 64-bit
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return any(struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 3  # PT_INTERP
               for i in range(phnum))


def test_front_ends_are_static_where_the_c_library_allows_else_dynamic(vhome: Install,
                                                                        tmp_path: Path) -> None:
    """No libc to load at each exec (0.2-0.4 ms of CPU a run); a compiler that cannot link
    statically still gives working front ends, linked as usual, and says so."""
    for name in ("vdelivermail", "vchkpw"):
        assert not program_interpreter(vhome.bin / name)
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc")
    no_static = tmp_path / "cc"
    no_static.write_text(f'#!/bin/sh\nfor a; do [ "$a" = -static-pie ] && {{ echo "ld: cannot '
                         f'find -lc" >&2; exit 1; }}; done\nexec {gcc} "$@"\n')
    no_static.chmod(0o755)
    result = subprocess.run([sys.executable, str(INSTALL), "--prefix", str(vhome.prefix),
                             "--qmaildir", str(vhome.qmaildir), "--cc", str(no_static),
                             "--venv", str(VENV)], check=True, capture_output=True, text=True,
                            env={**os.environ, "PYVPOPMAIL_FRONTEND_CACHE": ""})
    for name in ("vdelivermail", "vchkpw"):
        assert f"bin/{name} is linked dynamically" in result.stdout
        assert "cannot find -lc" in result.stdout
        assert program_interpreter(vhome.bin / name)
    assert vhome.run("vchkpw", "/bin/true").returncode == 2  # a real front end: no fd 3


def glibc_inside(path: Path) -> bool:
    """Whether the static program at ``path`` carries glibc (its tunables' name)."""
    return b"GLIBC_TUNABLES" in path.read_bytes()


def install_finding_compilers(vhome: Install, first: Path) -> subprocess.CompletedProcess[str]:
    """packaging/install over ``vhome`` choosing its compilers itself (no --cc, no $CC) with
    the directory ``first`` first on PATH, and no build cache."""
    env = {k: v for k, v in os.environ.items() if k != "CC"}
    return subprocess.run([sys.executable, str(INSTALL), "--prefix", str(vhome.prefix),
                           "--qmaildir", str(vhome.qmaildir), "--venv", str(VENV)],
                          check=True, capture_output=True, text=True,
                          env={**env, "PATH": f"{first}:{env['PATH']}",
                               "PYVPOPMAIL_FRONTEND_CACHE": ""})


def test_front_ends_are_built_against_musl_where_it_is_installed(vhome: Install,
                                                                  tmp_path: Path) -> None:
    """musl's static start does less than glibc's (bench/RESULTS.md); where musl-gcc cannot
    link a static program, or cannot build, cc builds them, and the installer says why."""
    musl = shutil.which("musl-gcc")
    if musl is None or shutil.which("cc") is None:
        pytest.skip("no musl-gcc or no cc")
    for name in ("vdelivermail", "vchkpw"):
        assert not glibc_inside(vhome.bin / name) and not program_interpreter(vhome.bin / name)
    broken = tmp_path / "broken"
    broken.mkdir()
    fake = broken / "musl-gcc"
    for script, said in (  # no specs to read: no rcrt1.o to start with; then a failed build;
            # then one the system cannot run (before: a traceback, nothing built)
            ('#!/bin/sh\necho "musl-gcc: no musl here" >&2; exit 1\n',
             f"install: {fake} is not used: it cannot link a static program"),
            (f'#!/bin/sh\ncase "$*" in *" -E "*) exec {musl} "$@";; esac\n'
             'echo "ld: broken" >&2; exit 1\n',
             f"is built by {shutil.which('cc')} ({fake} -static-pie: ld: broken)"),
            ("#!/nonexistent/sh\n",
             f"install: {fake} is not used: it cannot link a static program")):
        fake.write_text(script)
        fake.chmod(0o755)
        result = install_finding_compilers(vhome, broken)
        assert said in result.stdout
        for name in ("vdelivermail", "vchkpw"):
            assert glibc_inside(vhome.bin / name) and not program_interpreter(vhome.bin / name)
        assert vhome.run("vchkpw", "/bin/true").returncode == 2  # a real front end: no fd 3


def test_install_names_the_linker_s_reason_not_collect2_s(vhome: Install,
                                                            tmp_path: Path) -> None:
    """A musl-gcc whose library directory has rcrt1.o but no libc.a (a layout other than
    Debian's, or a half-installed musl): the installer's reason is the linker's line, not gcc's
    closing "collect2: error: ld returned 1 exit status" (before: only that)."""
    musl, gcc = shutil.which("musl-gcc"), shutil.which("gcc")
    specs = Path("/usr/lib/x86_64-linux-musl/musl-gcc.specs")
    if musl is None or gcc is None or shutil.which("cc") is None or not specs.exists():
        pytest.skip("no Debian musl-gcc, gcc or cc")
    libdir = tmp_path / "musl-lib"
    libdir.mkdir()
    shutil.copy(specs.parent / "rcrt1.o", libdir / "rcrt1.o")
    (libdir / "musl-gcc.specs").write_text(
        specs.read_text().replace(f"-L{specs.parent} ", f"-L{libdir} "))
    wrapper = tmp_path / "bin" / "musl-gcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {gcc} "$@" -specs "{libdir}/musl-gcc.specs"\n')
    wrapper.chmod(0o755)
    result = install_finding_compilers(vhome, wrapper.parent)
    for name in ("vdelivermail", "vchkpw"):
        line = next(line for line in result.stdout.splitlines()
                    if line.startswith(f"install: bin/{name} is built by"))
        said = line.partition(f"({wrapper} -static-pie: ")[2]
        assert "cannot find -lc" in said and "collect2" not in said, line  # ld's own words
        assert glibc_inside(vhome.bin / name) and not program_interpreter(vhome.bin / name)
    assert vhome.run("vchkpw", "/bin/true").returncode == 2


def test_musl_specs_are_the_last_ones_gcc_reads(vhome: Install, tmp_path: Path) -> None:
    """gcc reports every specs file it reads, its own default one (a ``specs`` file in its
    library directory, where a system has one) or a wrapper's extra ones first and the
    musl-gcc wrapper's, given after the arguments, last: rcrt1.o is looked for beside that
    one (before: beside the first, so such a musl-gcc was not used)."""
    gcc = shutil.which("gcc")
    specs = Path("/usr/lib/x86_64-linux-musl/musl-gcc.specs")
    if gcc is None or not specs.exists() or not (specs.parent / "rcrt1.o").exists():
        pytest.skip("no gcc or no Debian musl-gcc specs")
    extra = tmp_path / "extra" / "hardening.specs"
    extra.parent.mkdir()
    extra.write_text("*self_spec:\n+ %{!O:-O2}\n\n")
    wrapper = tmp_path / "bin" / "musl-gcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {gcc} -specs={extra} "$@" -specs "{specs}"\n')
    wrapper.chmod(0o755)
    result = install_finding_compilers(vhome, wrapper.parent)
    assert "is not used" not in result.stdout and "built by" not in result.stdout, result.stdout
    for name in ("vdelivermail", "vchkpw"):
        assert not glibc_inside(vhome.bin / name) and not program_interpreter(vhome.bin / name)
    assert vhome.run("vchkpw", "/bin/true").returncode == 2


def relro_left_writable(pid: int, program: Path) -> list[str]:
    """The lines of /proc/PID/maps that map part of ``program``'s RELRO segment (its GOT and
    .data.rel.ro, whole pages of it) writable: none once the program has started."""
    data = program.read_bytes()
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    relro = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
    relro = [h for h in relro if h[0] == 0x6474E552]  # PT_GNU_RELRO
    assert len(relro) == 1, relro
    vaddr, memsz = relro[0][3], relro[0][6]
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    ours = [line.split() for line in maps if line.endswith(str(program))]
    base = min(int(fields[0].split("-")[0], 16) for fields in ours if int(fields[2], 16) == 0)
    start, end = (base + vaddr) & ~0xFFF, (base + vaddr + memsz) & ~0xFFF
    assert end > start, (hex(start), hex(end))
    return [line for line in maps
            if int(line.split("-")[0], 16) < end and int(line.split()[0].split("-")[1], 16) > start
            and "w" in line.split()[1]]


@pytest.mark.parametrize("compiler", ["default", "cc"])
def test_front_ends_relro_is_read_only(site: LoginSite, fake: Callable[..., FakeServer],
                                       compiler: str, tmp_path: Path) -> None:
    """The GOT and .data.rel.ro of a running front end are read-only, as glibc's static start
    leaves them (before: musl's rcrt1.o relocated the program and left them writable)."""
    if compiler == "cc":
        if shutil.which("cc") is None:
            pytest.skip("no cc")
        subprocess.run([sys.executable, str(INSTALL), "--prefix", str(site.inst.prefix),
                        "--qmaildir", str(site.inst.qmaildir), "--venv", str(VENV), "--cc",
                        "cc"], check=True, capture_output=True,
                       env={**os.environ, "PYVPOPMAIL_FRONTEND_CACHE": ""})
    program = site.inst.bin / "vdelivermail"
    server = fake(None)
    message = tmp_path / "message"
    message.write_bytes(MESSAGE)
    with open(message, "rb") as stdin:
        proc = subprocess.Popen([str(program), "", "bounce-no-mailbox"], stdin=stdin,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={"PATH": "/usr/bin:/bin"}, cwd="/")
    try:
        deadline = time.monotonic() + 30
        while server.requests == 0:  # it has started, and waits for the reply
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        assert relro_left_writable(proc.pid, program) == []
    finally:
        proc.kill()
        proc.wait()
        server.close()
