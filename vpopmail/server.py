"""vpopmail-server: the resident process behind the C front ends of vdelivermail and vchkpw.

A Python start costs more than C vpopmail's whole delivery, so ``bin/vdelivermail`` and
``bin/vchkpw`` are small C programs (frontend/frontend.c) that hand their run to this server
over a Unix socket (``paths.server_socket``) and exit with its answer. The server has the hot
paths imported; per connection it forks a worker that takes the peer's uid, gid and
supplementary groups (SO_PEERCRED, SO_PEERGROUPS: the credentials the kernel recorded at
connect, so a peer cannot change them afterwards) before it reads a byte of the request, then
puts the peer's descriptors, environment, working directory, umask and file-size limit in
place and calls the same ``main`` the direct program calls. The parent only accepts and forks:
it never reads what a client sends. At most ``server.workers`` workers run; more connections
wait in the listen queue. Nothing is cached across requests: every worker is a fresh fork
that loads the configuration, opens the cdb files or the SQL connection itself, and ends.

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
import errno
import mmap
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable

from vpopmail import config as vconfig
from vpopmail.errors import VpopmailError

VERSION = 1
STATUS, VDELIVERMAIL, VCHKPW = 0, 1, 2
#: program -> the descriptors its front end sends
NFDS = {STATUS: 0, VDELIVERMAIL: 3, VCHKPW: 4}
EXIT, PLAN, DECLINE, STATUS_REPLY = 1, 2, 3, 4
HEADER = struct.Struct("=4sBBBxI")
BODY = struct.Struct("=IIIQQ")
PLAN_HEAD = struct.Struct("=IIIIII")
#: what the parent publishes for --status: requests (accepted, or with prefork: finished),
#: workers alive
COUNTERS = struct.Struct("=QQ")
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

def peer_identity(conn: socket.socket) -> tuple[int, int, int, list[int]]:
    """(pid, uid, gid, groups) the kernel recorded when the peer connected."""
    pid, uid, gid = struct.unpack("=iII", conn.getsockopt(socket.SOL_SOCKET,
                                                          socket.SO_PEERCRED, 12))
    raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * MAX_GROUPS)
    return pid, uid, gid, list(struct.unpack(f"={len(raw) // 4}I", raw))


def take_identity(uid: int, gid: int, groups: list[int]) -> None:
    """Become exactly the peer: as root, its ids and groups; otherwise only our own user."""
    if os.geteuid() == 0:
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
        return
    if (uid, gid) != (os.getuid(), os.getgid()) or set(groups) != set(os.getgroups()):
        raise Decline(f"cannot serve uid {uid} gid {gid} without root")


def high(fd: int) -> int:
    """A close-on-exec copy of ``fd`` above the descriptors a program uses; ``fd`` closed."""
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64)
    os.close(fd)
    return moved


def set_stage(request: Request) -> None:
    """The peer's descriptors, environment, directory, umask and file-size limit."""
    import resource

    try:
        os.chdir(request.cwd)
    except OSError as exc:
        raise Decline(f"cannot enter {request.cwd!r}: {exc.strerror}") from None
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (
            resource.RLIM_INFINITY if request.fsize_cur >= 2**63 else request.fsize_cur,
            resource.RLIM_INFINITY if request.fsize_max >= 2**63 else request.fsize_max))
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


class ExecPlan(BaseException):
    """What vchkpw would exec; passes through vchkpw's handlers to the worker."""

    def __init__(self, path: str, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(path)
        self.path = path
        self.argv = argv
        self.env = env


def plan_class() -> type:
    """vchkpw's Vchkpw whose final exec becomes an :class:`ExecPlan` (imported on use)."""
    from auth.vchkpw import TEMPORARY, Finish, Vchkpw
    from vpopmail.stores import close_stores

    class PlanningVchkpw(Vchkpw):
        def exec(self, command: list[str], env: dict[str, str]) -> None:
            self.log.close()
            close_stores()
            path = command[0]
            candidates = ([path] if "/" in path else
                          [os.path.join(d, path) for d in os.get_exec_path(env)])
            error = errno.ENOENT
            for candidate in candidates:
                if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                    raise ExecPlan(candidate, command, env)
                if os.path.exists(candidate):
                    error = errno.EACCES
            raise Finish(TEMPORARY, f"cannot run {path} ({os.strerror(error)})")

    return PlanningVchkpw


def encode_plan(plan: ExecPlan, peer: tuple[int, int, list[int]], cwd: bytes) -> bytes:
    """The PLAN payload: the ids vchkpw ended with (``change`` when they are not the
    peer's), its directory if it moved, the program, argv and environment."""
    uid, gid, groups = os.getuid(), os.getgid(), os.getgroups()
    change = (uid, gid, sorted(groups)) != (peer[0], peer[1], sorted(peer[2]))
    here = os.getcwdb()
    strings = [os.fsencode(plan.path), b"" if here == cwd else here,
               *(os.fsencode(a) for a in plan.argv),
               *(os.fsencode(f"{k}={v}") for k, v in plan.env.items())]
    if any(b"\0" in s for s in strings):
        raise ValueError("NUL in the exec plan")
    return (PLAN_HEAD.pack(int(change), uid, gid, len(groups), len(plan.argv), len(plan.env))
            + struct.pack(f"={len(groups)}I", *groups) + b"".join(s + b"\0" for s in strings))


def run_request(request: Request, config: str | None, peer: tuple[int, int, list[int]]) -> tuple[int, bytes]:
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


def serve_one(conn: socket.socket, config: str | None, timeout: int, log_fd: int,
              status: Callable[[], str]) -> None:
    """A worker: one connection from taking the peer's identity to its reply."""
    pid = uid = -1
    try:
        try:
            pid, uid, gid, groups = peer_identity(conn)
            take_identity(uid, gid, groups)
        except OSError as exc:
            raise Decline(f"cannot take the peer's identity: {exc}") from None
        conn.settimeout(timeout)
        request = read_request(conn)
        conn.settimeout(None)
        if request.program == STATUS:
            reply(conn, STATUS_REPLY, status().encode())
            return
        try:
            set_stage(request)
        except Decline:
            for fd in request.fds:
                os.close(fd)
            raise
        kind, payload = run_request(request, config, (uid, gid, groups))
        sys.stdout.flush()
        sys.stderr.flush()
        reply(conn, kind, payload)
    except Decline as exc:
        log(log_fd, f"declined pid {pid} uid {uid}: {exc}")
        try:
            reply(conn, DECLINE)
        except OSError:
            pass
    except Drop as exc:
        log(log_fd, f"dropped pid {pid} uid {uid}: {exc}")
    except (OSError, ValueError) as exc:
        log(log_fd, f"dropped pid {pid} uid {uid}: {exc}")


def log(fd: int, text: str) -> None:
    try:
        os.write(fd, f"vpopmail-server: {text}\n".encode("utf-8", "backslashreplace"))
    except OSError:
        pass


# -- the parent ---------------------------------------------------------------------------------

def preload() -> None:
    """Import what the workers run, so that a fork starts warm."""
    import gc

    import auth.passwords  # noqa: F401
    import auth.vchkpw  # noqa: F401
    import delivery.vdelivermail  # noqa: F401
    import fcntl  # noqa: F401
    import resource  # noqa: F401
    import select  # noqa: F401
    from vpopmail.stores import preload as preload_stores

    preload_stores()
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


class Server:
    """The accept loop with at most ``server.workers`` workers."""

    def __init__(self, settings: vconfig.Config, config: str | None) -> None:
        self.settings = settings
        self.config = config
        self.path = settings.home_path("server_socket")
        self.workers = int(settings.server_workers)  # type: ignore[call-overload]
        self.timeout = int(settings.server_request_timeout)  # type: ignore[call-overload]
        self.prefork = bool(settings.server_prefork)
        self.children: set[int] = set()
        self.served = 0
        self.started = time.time()
        self.counters = mmap.mmap(-1, COUNTERS.size)  # shared with the workers
        self.log_fd = high(os.dup(2))

    def publish(self) -> None:
        """The counters, where the worker answering --status reads them."""
        COUNTERS.pack_into(self.counters, 0, self.served, len(self.children))

    def status(self) -> str:
        """The state as the parent last published it (read in a worker)."""
        served, children = COUNTERS.unpack_from(self.counters)
        mode = "prefork" if self.prefork else "fork per request"
        return (f"pid {os.getppid()}, up {int(time.time() - self.started)} s, {mode}, "
                f"{served} requests, {children} workers of {self.workers}\n")

    def reap(self) -> None:
        """Collect the workers that ended (with prefork, each one is a request done)."""
        while self.children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.served += self.prefork

    def serve(self) -> int:
        """Accept (or keep the pool full) until SIGTERM/SIGINT; SIGHUP re-executes. Signals
        only wake the loop (a byte on the wakeup pipe): nothing is raised asynchronously."""
        preload()
        listener = listen(self.path)
        listener.setblocking(False)
        identity = os.stat(self.path).st_ino
        wake = os.pipe()
        for fd in wake:
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake[1])
        for signum in WAKERS:
            signal.signal(signum, lambda signum, frame: None)
        stop = os.pipe() if self.prefork else None
        log(self.log_fd, f"listening on {self.path} (pid {os.getpid()}, {self.workers} workers, "
            f"{'prefork' if self.prefork else 'fork per request'})")
        try:
            again = self.loop(listener, wake[0], stop)
        finally:
            signal.set_wakeup_fd(-1)
            for fd in (*wake, *(stop or ())):
                os.close(fd)  # the stop pipe's end: idle pooled workers leave
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

    def loop(self, listener: socket.socket, wake: int, stop: tuple[int, int] | None) -> bool:
        """The main loop; True for a reload."""
        import select

        while True:
            self.reap()
            if stop is not None:
                while len(self.children) < self.workers and self.fork(listener, stop=stop):
                    pass
            self.publish()
            watch = [wake]
            if stop is None and len(self.children) < self.workers:
                watch.append(listener.fileno())
            ready, _, _ = select.select(watch, [], [], 1.0)
            if wake in ready:
                signals = os.read(wake, 256)
                if signal.SIGTERM in signals or signal.SIGINT in signals:
                    log(self.log_fd, "stopping")
                    return False
                if signal.SIGHUP in signals:
                    log(self.log_fd, "reloading")
                    return True
            if listener.fileno() in ready:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(True)
                self.served += 1
                self.fork(listener, conn)

    def fork(self, listener: socket.socket, conn: socket.socket | None = None,
             stop: tuple[int, int] | None = None) -> bool:
        """A worker for ``conn``, or (``stop``: server.prefork) one that accepts its own;
        False if none could be forked."""
        try:
            pid = os.fork()
        except OSError as exc:
            log(self.log_fd, f"cannot fork: {exc.strerror}")
            if conn is not None:
                conn.close()  # the client saw no reply byte: it runs the program itself
            return False
        if pid:
            self.children.add(pid)
            if conn is not None:
                conn.close()
            return True
        code = 0
        try:
            signal.set_wakeup_fd(-1)
            for signum in WAKERS:
                signal.signal(signum, signal.SIG_DFL)
            if stop is not None:
                os.close(stop[1])
                conn = next_client(listener, stop[0])
            listener.close()
            if conn is not None:
                serve_one(conn, self.config, self.timeout, self.log_fd, self.status)
        except BaseException as exc:  # noqa: BLE001 - a worker must never return to the loop
            log(self.log_fd, f"worker failed: {type(exc).__name__}: {exc}")
            code = 1
        finally:
            os._exit(code)


def next_client(listener: socket.socket, stop: int) -> socket.socket | None:
    """A pooled worker's connection; None once ``stop`` is closed (the server left)."""
    import select

    while True:
        ready, _, _ = select.select([listener, stop], [], [])
        if stop in ready:
            return None
        try:
            conn, _ = listener.accept()
        except BlockingIOError:  # another worker took it
            continue
        conn.setblocking(True)
        return conn


# -- the command --------------------------------------------------------------------------------

def status(path: str) -> int:
    """``--status``: ask the server at ``path`` for its state."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
        sock.sendall(HEADER.pack(b"VPSq", VERSION, STATUS, 0, 0))
        head = recv_exact(sock, HEADER.size)
        magic, version, kind, _, length = HEADER.unpack(head)
        if magic != b"VPSr" or kind != STATUS_REPLY or length > MAX_MESSAGE:
            raise Drop("unexpected reply")
        text = recv_exact(sock, length).decode("utf-8", "replace")
    except (OSError, Drop) as exc:
        print(f"vpopmail-server is down ({path}: {exc}); the front ends run the Python "
              f"programs directly")
        return 1
    finally:
        sock.close()
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
