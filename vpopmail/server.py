"""vpopmail-server: the resident process behind the C front ends of vdelivermail and vchkpw.

A Python start costs more than C vpopmail's whole delivery, so ``bin/vdelivermail`` and
``bin/vchkpw`` are small C programs (frontend/frontend.c) that hand their run to this server
over a Unix socket (``paths.server_socket``) and exit with its answer. The parent accepts,
reads the credentials the kernel recorded at connect (SO_PEERCRED, SO_PEERGROUPS: the peer
cannot change them afterwards), waits until the peer has sent something (a silent client ties
up no worker) and hands the connection to a worker that holds exactly that identity: uid, gid
and supplementary groups, taken once when the parent forked it from its warm, preloaded self.
The parent never reads what a client sends. A worker puts the peer's descriptors, environment,
working directory, umask and file-size limit in place, calls the same ``main`` the direct
program calls, gives the descriptors back, replies, and waits for the next connection of its
identity: a process is never shared by two identities. It ends after
``server.requests_per_worker`` requests (1: a fresh worker for every request), when idle for
``server.idle_timeout`` seconds, when a request left it with other ids or open descriptors, or
when the parent leaves. At most ``server.workers`` workers live; an idle one of another
identity is retired to make room, and connections wait in order. Nothing of a request is kept
for the next: every run loads the configuration and opens the cdb files or the SQL connection
itself, so an admin change is seen by the very next delivery or login.

vchkpw runs the next program in its own process, so for it the worker returns an exec plan
(the ids, directory, argv and environment the Python vchkpw would have exec'd with) and the
front end does setgroups/setgid/setuid, chdir and execve.

Protocol version 1 (frontend/frontend.c holds the same text). Integers are unsigned 32-bit
(fsize 64-bit) in host byte order: both ends run on the same machine.

    request  = "VPSq" version:u8 program:u8 nfds:u8 0:u8 length:u32   (12 bytes; the nfds
               descriptors 0,1,2 (and 3 for vchkpw) ride on it as SCM_RIGHTS)
               then ``length`` bytes: umask argc envc fsize_cur:u64 fsize_max:u64
               then NUL-terminated strings: cwd, argc arguments, envc "NAME=value" entries.
               program: 0 status, 1 vdelivermail, 2 vchkpw. Bounds: argc <= 1024, argument
               bytes <= 128 KiB, environment bytes <= 64 KiB, envc <= 4096, length <= 256 KiB.
    reply    = "VPSr" version:u8 kind:u8 0:u16 length:u32 then ``length`` (<= 256 KiB) bytes:
       kind 1 EXIT     code:u32 (0..255)
       kind 2 PLAN     change:u32 uid gid ngroups(<=256) argc envc, ngroups gids, then
                       NUL-terminated strings: path, cwd ("" = stay), argc args, envc env
       kind 3 DECLINE  (nothing read or run: a busy, foreign-version or unable server)
       kind 4 STATUS   text

A worker declines (the front end then runs the Python program itself) when it cannot take the
peer's identity (a server not running as root serving another user) or enter its directory.
Garbage, a version mismatch, wrong descriptor counts or oversized requests drop the client
with one log line on stderr; the server goes on.
"""
import contextlib
import errno
import functools
import mmap
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable

from vpopmail import config as vconfig
from vpopmail.errors import VpopmailError

VERSION = 1
#: what frontend.c's vps_ident starts with (packaging/install tells its front ends by it too)
FRONTEND_IDENT = b"pyvpopmail front end"
STATUS, VDELIVERMAIL, VCHKPW = 0, 1, 2
#: program -> the descriptors its front end sends
NFDS = {STATUS: 0, VDELIVERMAIL: 3, VCHKPW: 4}
EXIT, PLAN, DECLINE, STATUS_REPLY = 1, 2, 3, 4
HEADER = struct.Struct("=4sBBBxI")
BODY = struct.Struct("=IIIQQ")
PLAN_HEAD = struct.Struct("=IIIIII")
#: what the parent publishes for --status: requests finished, workers alive, clients waiting
COUNTERS = struct.Struct("=QQQ")
MAX_ARGS, MAX_ARG_BYTES = 1024, 128 * 1024
MAX_ENV, MAX_ENV_BYTES = 4096, 64 * 1024
MAX_MESSAGE = 256 * 1024
MAX_GROUPS = 256  # what SO_PEERGROUPS can return through Python's getsockopt (1 KiB)
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
BACKLOG = 1024
#: the signals that wake the server's loop: stop, reload, a worker ended
WAKERS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


class Drop(Exception):
    """The client is dropped with this one-line reason."""


class Decline(Exception):
    """The client is told to run the program itself (nothing of its request was used)."""


# -- the wire -----------------------------------------------------------------------------------

def reply(conn: socket.socket, kind: int, payload: bytes = b"") -> None:
    conn.sendall(HEADER.pack(b"VPSr", VERSION, kind, 0, len(payload)) + payload)


def recv_exact(conn: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(min(size - len(data), 65536))
        if not chunk:
            raise Drop(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


class Request:
    """One parsed request; ``fds`` are the received descriptors (close-on-exec, unplaced)."""

    def __init__(self, program: int, fds: list[int], body: bytes) -> None:
        self.program = program
        self.fds = fds
        self.umask, argc, envc, self.fsize_cur, self.fsize_max = 0, 0, 0, 0, 0
        self.cwd = b"/"
        self.argv: list[bytes] = []
        self.env: list[bytes] = []
        if program == STATUS:
            return
        if len(body) < BODY.size:
            raise Drop("request body too short")
        self.umask, argc, envc, self.fsize_cur, self.fsize_max = BODY.unpack_from(body)
        if argc < 1 or argc > MAX_ARGS or envc > MAX_ENV:
            raise Drop(f"request with {argc} arguments and {envc} environment entries")
        strings = body[BODY.size:].split(b"\0")
        if len(strings) != 2 + argc + envc or strings[-1]:
            raise Drop("request strings do not match their counts")
        self.cwd = strings[0]
        self.argv = strings[1:1 + argc]
        self.env = strings[1 + argc:-1]
        if sum(map(len, self.argv)) + argc > MAX_ARG_BYTES:
            raise Drop("arguments over 128 KiB")
        if sum(map(len, self.env)) + envc > MAX_ENV_BYTES:
            raise Drop("environment over 64 KiB")
        if self.umask > 0o777:
            raise Drop("umask out of range")


def read_request(conn: socket.socket) -> Request:
    """The request on ``conn``; Drop for anything malformed (its descriptors closed)."""
    fds: list[int] = []
    try:
        data, ancillary, flags, _ = conn.recvmsg(HEADER.size, socket.CMSG_SPACE(4 * 4),
                                                 socket.MSG_CMSG_CLOEXEC)
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds.extend(struct.unpack(f"={usable // 4}i", payload[:usable]))
        if flags & socket.MSG_CTRUNC:
            raise Drop("too many descriptors")
        if not data:
            raise Drop("connection closed before a request")
        data += recv_exact(conn, HEADER.size - len(data))
        magic, version, program, nfds, length = HEADER.unpack(data)
        if magic != b"VPSq":
            raise Drop("not a vpopmail-server request")
        if version != VERSION:
            reply(conn, DECLINE)
            raise Drop(f"protocol version {version}, not {VERSION}")
        if program not in NFDS or nfds != NFDS[program] or len(fds) != nfds:
            raise Drop(f"program {program} with {len(fds)} descriptors")
        if length > MAX_MESSAGE:
            raise Drop(f"request of {length} bytes")
        return Request(program, fds, recv_exact(conn, length))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


# -- the worker ---------------------------------------------------------------------------------

Identity = tuple[int, int, tuple[int, ...]]  # uid, gid, sorted supplementary groups


def peer_identity(conn: socket.socket) -> tuple[int, Identity]:
    """(pid, identity) the kernel recorded when the peer connected."""
    pid, uid, gid = struct.unpack("=iII", conn.getsockopt(socket.SOL_SOCKET,
                                                          socket.SO_PEERCRED, 12))
    raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * MAX_GROUPS)
    return pid, (uid, gid, tuple(sorted(struct.unpack(f"={len(raw) // 4}I", raw))))


def take_identity(identity: Identity) -> None:
    """Become exactly the peer: as root, its ids and groups; otherwise only our own user."""
    uid, gid, groups = identity
    if os.geteuid() == 0:
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
        return
    if (uid, gid) != (os.getuid(), os.getgid()) or set(groups) != set(os.getgroups()):
        raise Decline(f"cannot serve uid {uid} gid {gid} without root")


def is_identity(identity: Identity) -> bool:
    """Whether this process holds exactly ``identity`` (real, effective and saved ids). A
    root peer's run may leave other effective ids (vchkpw's seteuid steps): they are taken
    back first."""
    uid, gid, groups = identity
    if uid == 0 and os.getresuid()[0] == 0:
        os.seteuid(0)
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
    return (os.getresuid() == (uid, uid, uid) and os.getresgid() == (gid, gid, gid)
            and tuple(sorted(os.getgroups())) == groups)


def high(fd: int) -> int:
    """A close-on-exec copy of ``fd`` above the descriptors a program uses; ``fd`` closed."""
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64)
    os.close(fd)
    return moved


def set_stage(request: Request) -> None:
    """The peer's descriptors, environment, directory, umask and file-size limit (the soft
    limit: the worker keeps its hard limit for the next request)."""
    import resource

    try:
        os.chdir(request.cwd)
    except OSError as exc:
        raise Decline(f"cannot enter {request.cwd!r}: {exc.strerror}") from None
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    wanted = resource.RLIM_INFINITY if request.fsize_cur >= 2**63 else request.fsize_cur
    if hard != resource.RLIM_INFINITY and (wanted == resource.RLIM_INFINITY or wanted > hard):
        wanted = hard
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (wanted, hard))
    except (OSError, ValueError) as exc:
        raise Decline(f"cannot take the file size limit: {exc}") from None
    os.umask(request.umask)
    moved = [high(fd) for fd in request.fds]
    for target, fd in enumerate(moved):
        os.dup2(fd, target)
        os.close(fd)
    os.environb.clear()
    for entry in request.env:
        name, sep, value = entry.partition(b"=")
        if sep and name and name not in os.environb:
            os.environb[name] = value
    sys.argv = [os.fsdecode(arg) for arg in request.argv]


def clear_stage(nfds: int, null: int) -> None:
    """Give the peer's descriptors back (its pipes must see their end when it exits) and
    leave its directory."""
    sys.stdout.flush()
    sys.stderr.flush()
    for fd in range(min(nfds, 3)):
        os.dup2(null, fd)
    if nfds > 3:
        with contextlib.suppress(OSError):  # vchkpw closes it once the credentials are read
            os.close(3)
    os.chdir("/")


class ExecPlan(BaseException):
    """What vchkpw would exec, as whom and where; passes through vchkpw's handlers."""

    def __init__(self, path: str, argv: list[str], env: dict[str, str],
                 ids: Identity | None, cwd: bytes | None) -> None:
        super().__init__(path)
        self.path = path
        self.argv = argv
        self.env = env
        self.ids = ids
        self.cwd = cwd


@functools.cache
def plan_class() -> type:
    """vchkpw's Vchkpw whose last steps become an :class:`ExecPlan` (imported on use): the
    worker keeps its ids and directory, the front end takes the ones the plan names."""
    from auth.backend import VUser, close_backends
    from auth.vchkpw import SMTP, TEMPORARY, Finish, Vchkpw
    from vpopmail.assign import AssignEntry

    class PlanningVchkpw(Vchkpw):
        plan_ids: Identity | None = None
        plan_cwd: bytes | None = None

        def final_ids(self, entry: AssignEntry, user: VUser, service: str) -> None:
            if not self.root or service == SMTP or self.dovecot:
                super().final_ids(entry, user, service)
                if service != SMTP and not self.dovecot:
                    self.plan_cwd = os.getcwdb()
                return
            try:  # enter the directory as the user will, then take the worker's ids back
                os.seteuid(0)
                os.setgroups([])
                os.setegid(entry.gid)
                os.seteuid(entry.uid)
                try:
                    os.chdir(user.dir)
                finally:
                    os.seteuid(0)
                    os.setgroups(self.groups)
                    os.setegid(self.ids[0])
                    os.seteuid(self.ids[1])
            except OSError as exc:
                raise Finish(TEMPORARY, f"cannot become uid {entry.uid} in {user.dir} "
                                        f"({exc})") from None
            self.plan_ids, self.plan_cwd = (entry.uid, entry.gid, ()), os.fsencode(user.dir)

        def exec(self, command: list[str], env: dict[str, str]) -> None:
            self.log.close()
            close_backends()
            path = command[0]
            candidates = ([path] if "/" in path else
                          [os.path.join(d, path) for d in os.get_exec_path(env)])
            error = errno.ENOENT
            for candidate in candidates:
                if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                    raise ExecPlan(candidate, command, env, self.plan_ids, self.plan_cwd)
                if os.path.exists(candidate):
                    error = errno.EACCES
            raise Finish(TEMPORARY, f"cannot run {path} ({os.strerror(error)})")

    return PlanningVchkpw


def encode_plan(plan: ExecPlan, peer: Identity, cwd: bytes) -> bytes:
    """The PLAN payload: the ids the program is to run with (``change`` when they are not
    the peer's), its directory if not the peer's, the program, argv and environment."""
    ids = plan.ids or (os.geteuid(), os.getegid(), tuple(sorted(os.getgroups())))
    change = ids != peer
    here = plan.cwd if plan.cwd is not None else cwd
    strings = [os.fsencode(plan.path), b"" if here == cwd else here,
               *(os.fsencode(a) for a in plan.argv),
               *(os.fsencode(f"{k}={v}") for k, v in plan.env.items())]
    if any(b"\0" in s for s in strings):
        raise ValueError("NUL in the exec plan")
    uid, gid, groups = ids
    return (PLAN_HEAD.pack(int(change), uid, gid, len(groups), len(plan.argv), len(plan.env))
            + struct.pack(f"={len(groups)}I", *groups) + b"".join(s + b"\0" for s in strings))


def run_request(request: Request, config: str | None, peer: Identity) -> tuple[int, bytes]:
    """Run the program the direct way; the reply (kind, payload)."""
    if request.program == VDELIVERMAIL:
        from delivery.vdelivermail import main as deliver

        code = deliver(sys.argv[1:], config=config)
    else:
        from auth.vchkpw import main as login

        try:
            code = login(sys.argv, config=config, runner=plan_class())
        except ExecPlan as plan:
            return PLAN, encode_plan(plan, peer, request.cwd)
    return EXIT, struct.pack("=I", code & 0xFF)


def serve_one(conn: socket.socket, pid: int, identity: Identity, settings: "Settings",
              null: int) -> None:
    """One connection of a worker that holds ``identity``: from its request to its reply."""
    try:
        conn.settimeout(settings.timeout)
        request = read_request(conn)
        conn.settimeout(None)
        if request.program == STATUS:
            reply(conn, STATUS_REPLY, settings.status().encode())
            return
        try:
            set_stage(request)
        except Decline:
            for fd in request.fds:
                os.close(fd)
            raise
        try:
            kind, payload = run_request(request, settings.config, identity)
        finally:
            clear_stage(len(request.fds), null)
        reply(conn, kind, payload)
    except Decline as exc:
        log(settings.log_fd, f"declined pid {pid} uid {identity[0]}: {exc}")
        try:
            reply(conn, DECLINE)
        except OSError:
            pass
    except Drop as exc:
        log(settings.log_fd, f"dropped pid {pid} uid {identity[0]}: {exc}")
    except (OSError, ValueError) as exc:
        log(settings.log_fd, f"dropped pid {pid} uid {identity[0]}: {exc}")


def log(fd: int, text: str) -> None:
    try:
        os.write(fd, f"vpopmail-server: {text}\n".encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def open_descriptors(keep: set[int] = set()) -> list[int]:
    """The descriptors open above 2 but for ``keep``."""
    import fcntl

    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                fcntl.fcntl(fd, fcntl.F_GETFD)
            except OSError:
                continue  # the directory listing's own descriptor, closed by now
            found.append(fd)
    return found


def work(control: socket.socket, identity: Identity, settings: "Settings") -> None:
    """A worker's life: take ``identity`` once, then serve the connections the parent hands
    over ``control`` one at a time, telling it after each one whether it stays ("." idle)
    or ends ("x"). It ends after ``server.requests_per_worker`` requests, when the parent
    leaves, or when a request left it changed (other ids, descriptors left open)."""
    control = socket.socket(fileno=high(control.detach()))  # above what a request takes
    null = high(os.open(os.devnull, os.O_RDWR))
    keep = set(open_descriptors())  # what the worker started with
    declined: str | None = None
    try:
        take_identity(identity)
    except (OSError, Decline) as exc:
        declined = str(exc)
    for served in range(1, settings.requests_per_worker + 1):
        try:
            data, ancillary, _, _ = control.recvmsg(4, socket.CMSG_SPACE(4),
                                                    socket.MSG_CMSG_CLOEXEC)
        except OSError:
            return
        fds = [int.from_bytes(payload[:4], sys.byteorder) for level, kind, payload in ancillary
               if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS]
        if not data or len(fds) != 1:
            return
        pid = int.from_bytes(data, sys.byteorder, signed=True)
        conn = socket.socket(fileno=high(fds[0]))
        if declined is not None:
            log(settings.log_fd, f"declined uid {identity[0]}: {declined}")
            with contextlib.suppress(OSError):
                reply(conn, DECLINE)
            conn.close()
            with contextlib.suppress(OSError):
                control.send(b"x")
            return
        serve_one(conn, pid, identity, settings, null)
        conn.close()
        stray = open_descriptors(keep)
        last = served == settings.requests_per_worker or bool(stray) or not is_identity(identity)
        if stray:
            log(settings.log_fd, f"worker ends: descriptors {stray} left open by a request " + str([os.readlink(f"/proc/self/fd/{fd}") for fd in stray]))
        try:
            control.send(b"x" if last else b".")
        except OSError:  # the server left
            return
        if last:
            return


# -- the parent ---------------------------------------------------------------------------------

def preload() -> None:
    """Import what the workers run, so that a fork starts warm."""
    import gc

    import auth.cdbfiles  # noqa: F401
    import auth.passwords  # noqa: F401
    import auth.vchkpw  # noqa: F401
    import delivery.vdelivermail  # noqa: F401
    import fcntl  # noqa: F401
    import resource  # noqa: F401
    import vpopmail.limits  # noqa: F401
    import vpopmail.relay  # noqa: F401
    import auth.mysql

    try:  # the SQL driver too, wherever it is installed (a request may name an SQL config)
        auth.mysql._driver()
    except (ImportError, VpopmailError):
        pass
    plan_class()
    gc.freeze()  # the workers then share these pages instead of copying them at the next GC


def check_directory(path: str) -> None:
    """The socket's directory must be writable by no one but root or this user."""
    st = os.stat(path)
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        raise VpopmailError(f"{path} must belong to root or uid {os.geteuid()} and be "
                            f"writable by no one else")


def listen(path: str) -> socket.socket:
    """A listening socket at ``path``; refuses when a server already answers there."""
    if len(os.fsencode(path)) >= 108:
        raise VpopmailError(f"socket path {path} is longer than 107 bytes")
    check_directory(os.path.dirname(path) or ".")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        raise VpopmailError(f"a server already listens on {path}")
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    finally:
        probe.close()
    staging = f"{path}.{os.getpid()}"
    try:
        os.unlink(staging)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(staging)
    os.chmod(staging, 0o666)  # every user may ask: each gets no more than its own rights
    os.replace(staging, path)
    sock.listen(BACKLOG)
    return sock


class Settings:
    """What a worker needs of the server: small values, fixed at the server's start."""

    def __init__(self, settings: vconfig.Config, config: str | None) -> None:
        self.config = config
        self.workers = int(settings.server_workers)  # type: ignore[call-overload]
        self.requests_per_worker = int(
            settings.server_requests_per_worker)  # type: ignore[call-overload]
        self.idle_timeout = int(settings.server_idle_timeout)  # type: ignore[call-overload]
        self.timeout = int(settings.server_request_timeout)  # type: ignore[call-overload]
        self.log_fd = high(os.dup(2))
        self.started = time.time()
        self.counters = mmap.mmap(-1, COUNTERS.size)  # the parent writes, a worker reads

    def status(self) -> str:
        """The state as the parent last published it (read in a worker)."""
        served, workers, waiting = COUNTERS.unpack_from(self.counters)
        return (f"pid {os.getppid()}, up {int(time.time() - self.started)} s, "
                f"{served} requests, {workers} workers of {self.workers}, {waiting} waiting, "
                f"up to {self.requests_per_worker} requests a worker\n")


class Worker:
    """The parent's view of one worker: its control socket and the identity it holds."""

    __slots__ = ("pid", "control", "identity", "since")

    def __init__(self, pid: int, control: socket.socket, identity: Identity) -> None:
        self.pid = pid
        self.control = control
        self.identity = identity
        self.since = time.monotonic()


class Waiting:
    """An accepted connection that has not yet been handed to a worker."""

    __slots__ = ("conn", "pid", "identity", "deadline")

    def __init__(self, conn: socket.socket, pid: int, identity: Identity, deadline: float) -> None:
        self.conn = conn
        self.pid = pid
        self.identity = identity
        self.deadline = deadline


class Server:
    """The parent: it accepts, reads each peer's credentials (never a byte it sends), waits
    until the peer has sent something, and hands the connection to an idle worker holding the
    peer's identity, forking one when there is none and fewer than ``server.workers`` run
    (an idle worker of another identity is retired to make room). The rest wait, in order."""

    def __init__(self, settings: vconfig.Config, config: str | None) -> None:
        self.path = settings.home_path("server_socket")
        self.settings = Settings(settings, config)
        self.busy: dict[int, Worker] = {}  # control fd -> worker
        self.idle: dict[int, Worker] = {}  # control fd -> worker, longest idle first
        self.ending: set[int] = set()  # pids of workers that end and are not yet collected
        self.exited: set[int] = set()  # pids collected before their control socket closed
        self.unsent: dict[int, Waiting] = {}  # connection fd -> nothing readable yet
        self.ready: list[Waiting] = []  # readable, waiting for a worker, oldest first
        self.served = 0
        self.poll = select.poll()
        self.listener: socket.socket | None = None
        self.wake: tuple[int, int] | None = None

    def publish(self) -> None:
        COUNTERS.pack_into(self.settings.counters, 0, self.served,
                           len(self.busy) + len(self.idle), len(self.unsent) + len(self.ready))

    def serve(self) -> int:
        """Serve until SIGTERM/SIGINT; SIGHUP re-executes. Signals only wake the loop (a byte
        on the wakeup pipe): nothing is raised asynchronously."""
        preload()
        self.listener = listener = listen(self.path)
        listener.setblocking(False)
        identity = os.stat(self.path).st_ino
        self.wake = wake = os.pipe()
        for fd in wake:
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake[1])
        for signum in WAKERS:
            signal.signal(signum, lambda signum, frame: None)
        log(self.settings.log_fd, f"listening on {self.path} (pid {os.getpid()}, "
            f"{self.settings.workers} workers, {self.settings.requests_per_worker} requests "
            f"a worker)")
        try:
            again = self.loop(listener, wake[0])
        finally:
            signal.set_wakeup_fd(-1)
            for fd in wake:
                os.close(fd)
            for worker in (*self.busy.values(), *self.idle.values()):
                worker.control.close()  # idle workers leave; busy ones after their request
            for waiting in (*self.unsent.values(), *self.ready):
                waiting.conn.close()  # nothing was run: the front ends run the program
            listener.close()
            try:
                if os.stat(self.path).st_ino == identity:
                    os.unlink(self.path)
            except OSError:
                pass
        if again:
            for signum in WAKERS:
                signal.signal(signum, signal.SIG_DFL)
            os.execv(sys.argv[0], sys.argv)
        return 0

    def loop(self, listener: socket.socket, wake: int) -> bool:
        """The main loop; True for a reload."""
        self.poll.register(wake, select.POLLIN)
        self.poll.register(listener, select.POLLIN)
        accepting = True
        while True:
            timeout = 1000 if (self.unsent or self.idle) else None
            for fd, _ in self.poll.poll(timeout):
                if fd == wake:
                    signals = os.read(wake, 256)
                    if signal.SIGTERM in signals or signal.SIGINT in signals:
                        log(self.settings.log_fd, "stopping")
                        return False
                    if signal.SIGHUP in signals:
                        log(self.settings.log_fd, "reloading")
                        return True
                    self.reap()
                elif fd == listener.fileno():
                    self.accept(listener)
                elif fd in self.unsent:
                    self.poll.unregister(fd)
                    self.ready.append(self.unsent.pop(fd))
                else:
                    self.heard(fd)
            self.expire()
            self.dispatch()
            full = len(self.unsent) + len(self.ready) >= BACKLOG
            if full == accepting:  # too many waiting: leave the rest in the listen queue
                accepting = not full
                if accepting:
                    self.poll.register(listener, select.POLLIN)
                else:
                    self.poll.unregister(listener)
            self.publish()

    def reap(self) -> None:
        """Collect the workers that exited (a worker's end is counted when its control
        socket closes, which may come before or after this)."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.ending:
                self.ending.discard(pid)
            else:
                self.exited.add(pid)

    def ended(self, worker: Worker) -> None:
        """``worker`` will serve no more: its place is free once its process is collected."""
        self.poll.unregister(worker.control)
        worker.control.close()
        if worker.pid in self.exited:
            self.exited.discard(worker.pid)
        else:
            self.ending.add(worker.pid)

    def accept(self, listener: socket.socket) -> None:
        deadline = time.monotonic() + self.settings.timeout
        for _ in range(64):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the client stays in the queue
                log(self.settings.log_fd, f"cannot accept: {exc.strerror}")
                return
            try:
                pid, identity = peer_identity(conn)
            except OSError as exc:
                log(self.settings.log_fd, f"dropped a client: {exc.strerror}")
                conn.close()
                continue
            waiting = Waiting(conn, pid, identity, deadline)
            probe = select.poll()  # the front end sends at once: most are readable already
            probe.register(conn, select.POLLIN)
            if probe.poll(0):
                self.ready.append(waiting)
            else:
                self.unsent[conn.fileno()] = waiting
                self.poll.register(conn, select.POLLIN)

    def heard(self, fd: int) -> None:
        """A worker said it is done ("." idle, "x" ending) or went away."""
        worker = self.busy.pop(fd, None) or self.idle.pop(fd, None)
        if worker is None:
            return
        try:
            said = worker.control.recv(16)
        except OSError:
            said = b""
        if said:
            self.served += 1
        if said.endswith(b"."):
            worker.since = time.monotonic()
            self.idle[fd] = worker
            return
        self.ended(worker)

    def expire(self) -> None:
        """Drop connections silent past the request timeout; retire long-idle workers."""
        now = time.monotonic()
        for fd, waiting in list(self.unsent.items()):
            if waiting.deadline <= now:
                log(self.settings.log_fd, f"dropped pid {waiting.pid} uid {waiting.identity[0]}: "
                    f"timed out before a request")
                self.poll.unregister(fd)
                del self.unsent[fd]
                waiting.conn.close()
        for fd, worker in list(self.idle.items()):
            if now - worker.since >= self.settings.idle_timeout:
                self.retire(fd)

    def retire(self, fd: int) -> None:
        self.ended(self.idle.pop(fd))  # it reads the end of its control socket and leaves

    def dispatch(self) -> None:
        """Hand the ready connections to workers, oldest first."""
        left = []
        for waiting in self.ready:
            worker = self.idle_worker(waiting.identity) or self.fork(waiting.identity)
            if worker is None:
                left.append(waiting)
                continue
            try:
                worker.control.sendmsg([waiting.pid.to_bytes(4, sys.byteorder, signed=True)],
                                       [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                         waiting.conn.fileno().to_bytes(4, sys.byteorder))])
            except OSError:  # the worker is gone: the connection waits for another
                self.ended(worker)
                left.append(waiting)
                continue
            waiting.conn.close()
            self.busy[worker.control.fileno()] = worker
        self.ready = left
        if self.ready and self.idle:  # what waits needs another identity: make room
            self.retire(next(iter(self.idle)))

    def idle_worker(self, identity: Identity) -> Worker | None:
        """The most recently idle worker holding ``identity`` (the long-idle ones retire)."""
        for fd in reversed(self.idle):
            if self.idle[fd].identity == identity:
                return self.idle.pop(fd)
        return None

    def fork(self, identity: Identity) -> Worker | None:
        """A new worker for ``identity``; None when ``server.workers`` run (or are ending) or
        no process could be made."""
        if len(self.busy) + len(self.idle) + len(self.ending) >= self.settings.workers:
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError as exc:
            log(self.settings.log_fd, f"cannot fork: {exc.strerror}")
            ours.close()
            theirs.close()
            return None
        if pid:
            theirs.close()
            self.poll.register(ours, select.POLLIN)
            return Worker(pid, ours, identity)
        code = 0
        try:
            signal.set_wakeup_fd(-1)
            for signum in WAKERS:
                signal.signal(signum, signal.SIG_DFL)
            self.forget()
            ours.close()
            work(theirs, identity, self.settings)
        except BaseException as exc:  # noqa: BLE001 - a worker must never return to the loop
            log(self.settings.log_fd, f"worker failed: {type(exc).__name__}: {exc}")
            code = 1
        finally:
            os._exit(code)

    def forget(self) -> None:
        """In a new worker: close its copies of what the parent holds (other workers' control
        sockets, waiting clients, the listener, the wakeup pipe), so that each end sees the
        other leave."""
        for worker in (*self.busy.values(), *self.idle.values()):
            worker.control.close()
        for waiting in (*self.unsent.values(), *self.ready):
            waiting.conn.close()
        assert self.listener is not None and self.wake is not None
        self.listener.close()
        for fd in self.wake:
            os.close(fd)


# -- the command --------------------------------------------------------------------------------

def is_front_end(path: str) -> bool:
    """Whether ``path`` is one of our C front ends (it carries frontend.c's identity)."""
    try:
        with open(path, "rb") as fh:
            return FRONTEND_IDENT in fh.read(1 << 20)
    except OSError:
        return False


def ask_status(path: str) -> str:
    """The state the server at ``path`` reports; OSError or Drop when none answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
        sock.sendall(HEADER.pack(b"VPSq", VERSION, STATUS, 0, 0))
        magic, _, kind, _, length = HEADER.unpack(recv_exact(sock, HEADER.size))
        if magic != b"VPSr" or kind != STATUS_REPLY or length > MAX_MESSAGE:
            raise Drop("unexpected reply")
        return recv_exact(sock, length).decode("utf-8", "replace")
    finally:
        sock.close()


def status(path: str) -> int:
    """``--status``: ask the server at ``path`` for its state."""
    try:
        text = ask_status(path)
    except (OSError, Drop) as exc:
        print(f"vpopmail-server is down ({path}: {exc}); the front ends run the Python "
              f"programs directly")
        return 1
    print(f"vpopmail-server is up on {path}: {text}", end="")
    return 0


def run(config: str | None, status_only: bool = False) -> int:
    """Serve until stopped (or, ``status_only``, report whether a server is up); the exit
    status. bin/vpopmail-server (vpopmail.cli.vpopmail_server) parses the command line."""
    try:
        settings = vconfig.load(config)
        if status_only:
            return status(settings.home_path("server_socket"))
        return Server(settings, config).serve()
    except VpopmailError as exc:
        print(f"vpopmail-server: {exc}", file=sys.stderr)
        return 111
