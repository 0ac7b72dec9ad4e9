"""vpopmail-server's parent: it listens, reads each caller's credentials (never a byte the
caller sends), and hands connections to workers (:mod:`vpopmail.server.worker`)."""
import os
import select
import signal
import socket
import struct
import sys
import time

from vpopmail import config as vconfig
from vpopmail.errors import VpopmailError
from vpopmail.server.worker import COUNTERS, Identity, Settings, log, plan_class, work

MAX_GROUPS = 256  # what SO_PEERGROUPS can return through Python's getsockopt (1 KiB)
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
BACKLOG = 1024
#: the signals that wake the server's loop: stop, reload, a worker ended
WAKERS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def peer_identity(conn: socket.socket) -> tuple[int, Identity]:
    """(pid, identity) the kernel recorded when the peer connected."""
    pid, uid, gid = struct.unpack("=iII", conn.getsockopt(socket.SOL_SOCKET,
                                                          socket.SO_PEERCRED, 12))
    raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * MAX_GROUPS)
    return pid, (uid, gid, tuple(sorted(struct.unpack(f"={len(raw) // 4}I", raw))))


def preload() -> None:
    """Import what the workers run, so that a fork starts warm."""
    import gc

    import vpopmail.passwords  # noqa: F401
    import auth.vchkpw  # noqa: F401
    import delivery.vdelivermail  # noqa: F401
    import fcntl  # noqa: F401
    import resource  # noqa: F401
    import vpopmail.limits  # noqa: F401
    import vpopmail.stores.relay  # noqa: F401
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
        if self.ready and self.idle and not self.ending:  # another identity waits: make room
            self.retire(next(iter(self.idle)))  # (once: a worker still ending makes it too)

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
