"""vpopmail-server's parent: it listens, reads each caller's credentials (never a byte the
caller sends), hands connections to workers (:mod:`vpopmail.server.worker`), and opens each
identity's own socket, where that identity's workers accept its next connections themselves."""
import contextlib
import errno
import os
import select
import signal
import socket
import sys
import time

from vpopmail import config as vconfig
from vpopmail import wire
from vpopmail.cmdline import USAGE_ERROR
from vpopmail.errors import CannotServe
from vpopmail.server.worker import (BUSY, COUNTERS, IDLE, RELOAD_PREFIX, RETIRE, RETIRE_LAST,
                                    Identity, Settings, decline, decline_queued, events_now,
                                    identify, log, plan_class, readable, work)
from vpopmail.stores import drop_kept_connections
from vpopmail.wire import identity_socket

BACKLOG = 1024
#: the settings that name the sockets (what an error about one says)
SERVER_SOCKET, LOOKUP_SOCKET = "paths.server_socket", "paths.lookup_socket"
#: how long (s) a reload waits for ``vpopmail-server --check`` (:func:`refusal`)
CHECK_TIMEOUT = 60
#: how often (ms) the parent looks, while a worker serves or callers wait here, for callers
#: queued at an identity's socket whose workers are all serving (none of them would take it
#: before its request ends) and for a free worker for those waiting here; while workers live
#: but none serves, once a second (one may start a long request without telling)
TICK = 50
#: how long (s) the listener is left alone after an accept failed (EMFILE and the like)
REST = 0.1
#: the signals that wake the server's loop: stop, reload, a worker ended
WAKERS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
#: what a reloading server tells the process it becomes: the pids of its workers not yet
#: collected (they stay its children across exec, serve their last request and end)
PREVIOUS = RELOAD_PREFIX + "PREVIOUS"
#: and its lock (a descriptor: :func:`hold`), kept across exec
KEPT_LOCK = RELOAD_PREFIX + "LOCK"
#: and its lookup socket, kept open across exec (``fd:inode:path``: the descriptor, its path
#: and that path's inode): Dovecot's logins have no fallback, so none may find it gone
KEPT_LOOKUPS = RELOAD_PREFIX + "LOOKUPS"
#: and the socket systemd passed (:func:`activated_lookups`), kept open across exec (its
#: descriptor) whether or not the configuration names it: left listening when the server
#: stops, so never made again by the server
KEPT_HELD = RELOAD_PREFIX + "HELD"
#: systemd's socket activation (sd_listen_fds(3)): the descriptors it passes start here
LISTEN_FDS_START = 3
#: and its shared lock on the installation's library (:func:`library_lock`), kept across exec
#: until the new process has imported what it runs
KEPT_LIBRARY = RELOAD_PREFIX + "LIBRARY"


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


def check_directory(path: str, key: str) -> None:
    """The directory of the socket the setting ``key`` names must be writable by no one but
    root or this user."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CannotServe(f"socket directory {path} ({key}): {exc.strerror}") from None
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        raise CannotServe(f"{path} ({key}) must belong to root or uid {os.geteuid()} and be "
                          f"writable by no one else")


def bind(path: str, mode: int, owner: tuple[int, int] | None = None) -> socket.socket:
    """A listening socket at ``path`` (unused) with ``mode`` (and ``owner``)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    if owner is not None:
        os.chown(path, *owner)
    os.chmod(path, mode)
    sock.listen(BACKLOG)
    return sock


def check_path(path: str, key: str) -> None:
    """A socket may be made at ``path`` (the setting ``key``, which an error names): short
    enough, in a directory :func:`check_directory` accepts, where this process may make
    files (else what :func:`listen` would say: ``--check`` as another user than root)."""
    if len(os.fsencode(path)) >= 108:
        raise CannotServe(f"socket path {path} ({key}) is longer than 107 bytes")
    directory = os.path.dirname(path) or "."
    check_directory(directory, key)
    if not os.access(directory, os.W_OK | os.X_OK, effective_ids=True):
        read_only = os.statvfs(directory).f_flag & os.ST_RDONLY
        code = errno.EROFS if read_only else errno.EACCES
        raise cannot_listen(path, OSError(code, os.strerror(code)))


def check_start(settings: vconfig.Config) -> None:
    """What a start needs before it makes anything (CannotServe, ConfigError otherwise): the
    users the server.* settings name exist, both sockets (the lookups' with
    server.dovecot_callers) may be made where the settings say, and the code the workers run
    imports (:func:`preload`; what its import raised, as CannotServe)."""
    settings.smtp_auth_callers()
    check_path(settings.home_path("server_socket"), SERVER_SOCKET)
    if settings.dovecot_callers():
        check_path(settings.home_path("lookup_socket"), LOOKUP_SOCKET)
    try:
        preload()
    except Exception as exc:  # noqa: BLE001 - whatever a broken module raises, said in a line
        said = (f"{exc.msg} ({exc.filename}, line {exc.lineno})"
                if isinstance(exc, SyntaxError) else str(exc))  # its str: the base name alone
        raise CannotServe(f"the installed code does not import: {type(exc).__name__}: "
                          f"{said}") from None


def refusal(program: str) -> str | None:
    """Why a vpopmail-server run as ``program`` would stop at once, found by running
    ``program --check`` as it would run (the installed code and configuration: a module that
    does not import, a TOML error, a server.* setting naming no user, a socket that cannot be
    made); None when it would start. Asked before a reload closes anything: Dovecot's lookups,
    which have no fallback, would fail until it is mended."""
    import subprocess

    try:
        checked = subprocess.run([program, "--check"], stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True, errors="replace",
                                 timeout=CHECK_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{program} --check: {exc}"
    if checked.returncode == 0:
        return None
    if checked.returncode == USAGE_ERROR:  # its usage, not why: it knows no --check
        return (f"{program} does not know --check (a version before it, installed over this "
                f"one): restart vpopmail-server to run it")
    said = checked.stderr.strip().splitlines() or [f"exit status {checked.returncode}"]
    return f"{said[-1].removeprefix('vpopmail-server: ')} ({program} --check)"


def installation_of(program: str) -> str:
    """The installation (PREFIX) whose bin/ holds ``program``, links followed: a server
    started through a link to its wrapper is that installation's."""
    return os.path.dirname(os.path.dirname(os.path.realpath(program)))


def library_lock(program: str) -> int:
    """The lock packaging/install holds while it changes the installation of ``program``
    (PREFIX/lib/install.lock, beside the bin/ its links lead to), taken shared without waiting
    (BlockingIOError while an install holds it; CannotServe, naming it, where it cannot be
    locked): its descriptor, kept across a reload's exec until the new process has imported
    what it runs (:func:`release_library`), so that it never loads part of one library and
    part of the next; -1 where there is no such file (no install of this version yet)."""
    import fcntl

    path = os.path.join(installation_of(program), "lib", "install.lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError as exc:  # ENOLCK (an NFS lock daemon down), say
        os.close(fd)
        raise CannotServe(f"cannot lock {path}: {exc.strerror}") from None
    return fd


def release_library() -> None:
    """At a start after a reload, the lock :func:`library_lock` took before it, released: what
    the new process runs is imported."""
    kept = os.environ.pop(KEPT_LIBRARY, "")
    if kept.isdigit():
        with contextlib.suppress(OSError):
            os.close(int(kept))


def unused(path: str) -> None:
    """Refuse (CannotServe) when something listens at ``path``, named from a status request
    (so the running server logs no dropped connection)."""
    try:
        pid = wire.ask_status(path, uid=os.geteuid())[0]
        raise CannotServe(f"a server (pid {pid}) already listens on {path}")
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    except (OSError, wire.Drop, wire.NoAnswer) as exc:  # a stranger, an old or stuck server
        raise CannotServe(f"a server already listens on {path}: {exc}") from None


def holder(path: str) -> int | None:
    """The pid of the server that holds the lock of the server socket ``path`` (:func:`hold`:
    it serves there, or is starting or reloading), read from /proc/locks without touching the
    lock or the socket; None when none holds it, or there is no such file (or the holder is in
    another pid namespace: the kernel lists only the locks of processes this one sees)."""
    try:
        st = os.stat(socket_lock(path))
        with open("/proc/locks", encoding="ascii") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        if fields[1:2] == ["FLOCK"] and len(fields) > 5 and fields[5] == where:
            return int(fields[4])
    return None


def socket_lock(path: str) -> str:
    """The lock file of the server socket ``path`` (:func:`hold`, :func:`holder`)."""
    return f"{path}.lock"


def hold(path: str) -> int:
    """The lock of the server socket ``path`` (``PATH.lock`` beside it, flock'd), held while
    this server lives, across a reload's exec (KEPT_LOCK; each worker closes its copy, so
    that a server killed with its workers still serving does not keep the next one out): of
    two servers started at once, one makes its sockets, the other refuses. ``path`` has
    passed :func:`check_path`."""
    import fcntl

    lock = socket_lock(path)
    kept = os.environ.pop(KEPT_LOCK, "")
    fd = int(kept) if kept.isdigit() else -1
    try:
        if fd >= 0 and not os.path.samestat(os.fstat(fd), os.stat(lock)):
            raise OSError(f"{kept} is not {lock}")  # the lock of the path before the reload
    except OSError:
        with contextlib.suppress(OSError):
            os.close(fd)  # (a descriptor the variable named that is not open: nothing)
        fd = -1
    try:
        if fd < 0:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise cannot_listen(path, exc) from None
    os.set_inheritable(fd, False)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        unused(path)
        raise CannotServe(f"another vpopmail-server is starting on {path}") from None
    return fd


def listen(path: str, mode: int = 0o666) -> socket.socket:
    """A listening socket at ``path`` (which has passed :func:`check_path`) with ``mode``
    (the server's: every user may ask, each gets no more than its own rights); refuses when
    something listens there already (:func:`unused`)."""
    unused(path)
    staging = f"{path}.{os.getpid()}"
    try:
        os.unlink(staging)
    except FileNotFoundError:
        pass
    try:
        sock = bind(staging, mode)
        os.replace(staging, path)
    except OSError as exc:
        raise cannot_listen(path, exc) from None
    return sock


def cannot_listen(path: str, exc: OSError) -> CannotServe:
    """What stops a server that may not make its socket at ``path`` (or the lock beside it)."""
    hint = "" if os.geteuid() == 0 else " (start vpopmail-server as root)"
    return CannotServe(f"cannot listen on {path}: {exc.strerror}{hint}")


def lookup_mode(callers: frozenset[int]) -> int:
    """The lookup socket's mode: the server's user alone may connect where it is the only one
    of ``callers`` (root, as Dovecot's auth-worker runs), so no other user can queue there;
    else anyone (the others are dropped as they are accepted: Server.take)."""
    return 0o600 if callers <= {os.geteuid()} else 0o666


def previous_workers() -> set[int]:
    """At a start after a reload, the workers the replaced process left (its PREVIOUS, taken
    out of the environment), those of them that are this process's children: an inherited
    variable names no one else."""
    named = os.environ.pop(PREVIOUS, "")
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as fh:
                found.update(map(int, fh.read().split()))
        except OSError:
            pass
    return found.intersection(int(pid) for pid in named.split(",") if pid.isdigit())


def kept_lookups(path: str | None, mode: int, log_fd: int) -> socket.socket | None:
    """At a start after a reload, the lookup socket the replaced process made and kept open
    (its KEPT_LOOKUPS, taken out of the environment) if it still listens at ``path`` (with
    ``mode``); one the configuration no longer names is closed (one log line) and its path
    removed."""
    fd, _, rest = os.environ.pop(KEPT_LOOKUPS, "").partition(":")
    inode, _, kept = rest.partition(":")
    if not (fd.isdigit() and inode.isdigit() and kept):
        return None
    try:
        sock = socket.socket(fileno=int(fd))
    except OSError:
        return None
    try:
        if not listens(sock):
            raise OSError(f"descriptor {fd} is not a listening Unix socket")
        if kept != path or os.stat(kept).st_ino != int(inode):
            unlink_if(kept, int(inode))
            raise OSError(f"{kept} is no longer the lookup socket")
        os.chmod(kept, mode)
    except OSError as exc:
        log(log_fd, f"the lookup socket kept across the reload is closed: {exc}")
        sock.close()
        return None
    os.set_inheritable(sock.fileno(), False)
    return sock


def kept_held() -> socket.socket | None:
    """At a start after a reload, the socket systemd passed that the replaced process kept
    open (its KEPT_HELD, taken out of the environment)."""
    fd = os.environ.pop(KEPT_HELD, "")
    try:
        sock = socket.socket(fileno=int(fd)) if fd.isascii() and fd.isdigit() else None
    except OSError:
        return None
    if sock is not None:
        os.set_inheritable(sock.fileno(), False)
    return sock


def listens(sock: socket.socket) -> bool:
    """Whether ``sock`` is a listening Unix stream socket."""
    return (sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1)


def take_passed(sock: socket.socket, path: str, mode: int) -> str | None:
    """Why the socket ``sock`` systemd passed cannot be the lookup socket at ``path``; None
    when it is (its path then given ``mode``)."""
    try:
        name = sock.getsockname()
        if not listens(sock) or not isinstance(name, str) or not name.startswith("/"):
            return f"not a listening Unix stream socket with a path ({name!r})"
        if not same_file(name, path):
            return f"{name} is not {LOOKUP_SOCKET} ({path})"
        os.chmod(path, mode)
    except OSError as exc:
        return f"{exc.filename or 'the socket'}: {exc.strerror}"
    return None


def same_file(name: str, path: str) -> bool:
    """Whether ``name`` and ``path`` name the same file (False when either is missing)."""
    try:
        return os.path.samestat(os.stat(name), os.stat(path))
    except FileNotFoundError:  # (either: a socket unit's path, or the setting's)
        return False


def activated_lookups(path: str, mode: int, log_fd: int, server_path: str
                      ) -> tuple[socket.socket | None, socket.socket | None]:
    """The lookup socket systemd passed (socket activation, sd_listen_fds(3): LISTEN_PID and
    LISTEN_FDS, taken out of the environment) if it is a listening Unix stream socket at
    ``path`` (then given ``mode``): its socket unit keeps it listening while the server is
    down or restarting, so Dovecot's lookups wait in its queue instead of failing. Any other
    descriptor passed is closed, with a log line; the front ends' socket (at
    ``server_path``) is the server's own: with it held, they would wait for a server that
    may not come, where they run the Python programs. So that one, if passed, is returned
    too, for :func:`give_up` once the server holds the socket's lock. Called before this
    process opens anything: a descriptor counted but not open would otherwise be one of its
    own."""
    pid = os.environ.pop("LISTEN_PID", "")
    count = os.environ.pop("LISTEN_FDS", "")
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid != str(os.getpid()) or not (count.isascii() and count.isdigit()):
        return None, None
    found = front_ends = None
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            log(log_fd, f"socket activation: descriptor {fd}: {exc.strerror}")
            if exc.errno == errno.ENOTSOCK:
                os.close(fd)
            continue
        os.set_inheritable(fd, False)
        if front_ends is None and named(sock, server_path):
            log(log_fd, f"socket activation: descriptor {fd} closed: it is {SERVER_SOCKET} "
                        f"({server_path}), the front ends' socket, which the server makes "
                        f"itself (held by systemd while the server is down, it would keep "
                        f"them waiting where they run the Python programs): the callers "
                        f"queued at it are declined; a socket unit is for {LOOKUP_SOCKET} "
                        f"({path}) only")
            front_ends = sock
            continue
        why = ("a lookup socket was passed before it" if found is not None
               else take_passed(sock, path, mode))
        if why is None:
            found = sock
        else:
            log(log_fd, f"socket activation: descriptor {fd} closed: {why}")
            sock.close()
    return found, front_ends


def named(sock: socket.socket, path: str) -> bool:
    """Whether the socket ``sock`` was bound at ``path``: its name names the file there, or
    is ``path`` (a file since removed)."""
    try:
        name = sock.getsockname()
    except OSError:
        return False
    return isinstance(name, str) and bool(name) and (
        same_file(name, path) or os.path.normpath(name) == os.path.normpath(path))


def give_up(sock: socket.socket, path: str) -> None:
    """The front ends' socket systemd passed (:func:`activated_lookups`), given up once this
    server holds the lock of ``path`` (no other server makes a socket there): its file
    removed, so that the server makes its own in its place and no caller queues at it any
    more, the callers queued at it declined (they run the Python programs), and closed."""
    name = sock.getsockname()
    if same_file(name, path):
        with contextlib.suppress(OSError):
            os.unlink(path)
    sock.setblocking(False)
    decline_queued(sock)
    sock.close()


def woken(wake: int) -> bytes:
    """The signals the wakeup pipe ``wake`` holds, a byte each (none: empty)."""
    try:
        return os.read(wake, 256)
    except BlockingIOError:
        return b""


def stops(signals: bytes) -> bool:
    """Whether ``signals`` (:func:`woken`'s) hold one that stops the server."""
    return signal.SIGTERM in signals or signal.SIGINT in signals


def unlink_if(path: str, inode: int) -> None:
    """Remove ``path`` if it is still the socket we made (inode ``inode``)."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


class Direct:
    """One identity's own socket: its workers accept there, the parent only opens it, takes
    from it what they leave, and closes it with the identity's last worker."""

    __slots__ = ("path", "sock", "inode")

    def __init__(self, path: str, identity: Identity) -> None:
        try:
            os.unlink(path)  # a killed server's (the directory is ours alone)
        except FileNotFoundError:
            pass
        self.path = path
        # only the identity may connect (its workers check each caller anyway)
        self.sock = bind(path, 0o600, identity[:2] if os.geteuid() == 0 else None)
        self.sock.setblocking(False)
        self.inode = os.stat(path).st_ino


class Worker:
    """The parent's view of one worker: its control socket, the identity it holds, and its
    slot in the shared request counters."""

    __slots__ = ("pid", "control", "identity", "slot")

    def __init__(self, pid: int, control: socket.socket, identity: Identity, slot: int) -> None:
        self.pid = pid
        self.control = control
        self.identity = identity
        self.slot = slot


class Waiting:
    """An accepted connection that has not yet been handed to a worker: until ``deadline``
    its peer may be silent (then it is dropped); once it has sent, until the new
    ``deadline`` it may wait for a worker (then it is declined, but for a lookup: taken from
    the lookup socket, ``lookup``, it waits on)."""

    __slots__ = ("conn", "pid", "identity", "deadline", "lookup")

    def __init__(self, conn: socket.socket, pid: int, identity: Identity, deadline: float,
                 lookup: bool = False) -> None:
        self.conn = conn
        self.pid = pid
        self.identity = identity
        self.deadline = deadline
        self.lookup = lookup


class Server:
    """The parent: it accepts, reads each peer's credentials (never a byte it sends), waits
    until the peer has sent something, and hands the connection to an idle worker holding the
    peer's identity, forking one when there is none and fewer than ``server.workers`` run
    (an idle worker of another identity is retired to make room). The rest wait, in order.
    With its first worker an identity gets its own socket (:class:`Direct`), where the front
    ends of that identity connect first and its workers accept them without this process;
    a worker that finds more of them waiting says so (BUSY) and the parent takes one, to be
    served here (by another worker, forked if need be)."""

    def __init__(self, settings: vconfig.Config, config: str | None) -> None:
        self.path = settings.home_path("server_socket")
        self.settings = Settings(settings, config)
        #: Dovecot 2.4's socket (server.dovecot_callers), and the workers kept for those
        #: callers: no other identity forks past server.workers less these (a local user
        #: holding every other worker cannot make Dovecot's logins fail: they have no
        #: fallback, where the front ends run the Python programs)
        callers = self.settings.dovecot_callers
        self.lookup_setting = settings.home_path("lookup_socket")
        self.lookup_path = self.lookup_setting if callers else None
        self.kept = min(max(2, self.settings.workers // 8), self.settings.workers // 2
                        ) if callers else 0
        self.lookups: socket.socket | None = None
        #: the socket systemd passed (:func:`activated_lookups`), held for the server's life
        #: (across reloads) even while the configuration leaves it unused: never made again,
        #: removed nor declined
        self.held: socket.socket | None = None
        self.busy: dict[int, Worker] = {}  # control fd -> worker
        self.idle: dict[int, Worker] = {}  # control fd -> worker, longest idle first
        self.ending: dict[int, int] = {}  # pid -> counter slot, of workers not yet collected
        self.exited: set[int] = set()  # pids collected before their control socket closed
        #: after a reload (SIGHUP re-executes this process), the last generation's workers
        #: still serving or ending: they count against server.workers until collected
        self.previous: set[int] = set()
        self.unsent: dict[int, Waiting] = {}  # connection fd -> nothing readable yet
        self.ready: list[Waiting] = []  # readable, waiting for a worker, oldest first
        self.direct: dict[Identity, Direct] = {}
        self.slots = list(range(self.settings.workers))  # free counter slots
        self.served = 0  # the requests of the workers collected
        self.poll = select.poll()
        self.listener: socket.socket | None = None
        self.wake: tuple[int, int] | None = None
        self.lock = -1  # :func:`hold`'s descriptor
        self.library = -1  # :func:`library_lock`'s, from a reload's check to its exec
        #: until when (time.monotonic's) the listener is not polled after a failed accept
        self.resting = 0.0

    @property
    def activated(self) -> bool:
        """Whether the lookup socket is the one systemd passed (:attr:`held`)."""
        return self.lookups is not None and self.lookups is self.held

    def publish(self) -> None:
        COUNTERS.pack_into(self.settings.counters, 0, self.served,
                           len(self.busy) + len(self.idle) + len(self.previous),
                           len(self.unsent) + len(self.ready))

    def serve(self) -> int:
        """Serve until SIGTERM/SIGINT (after :func:`check_start`); SIGHUP re-executes. Signals
        only wake the loop (a byte on the wakeup pipe): nothing is raised asynchronously."""
        release_library()
        mode = lookup_mode(self.settings.dovecot_callers)
        self.held, front_ends = kept_held(), None
        if self.held is None:
            self.held, front_ends = activated_lookups(self.lookup_setting, mode,
                                                      self.settings.log_fd, self.path)
        self.lock = hold(self.path)
        if front_ends is not None:
            give_up(front_ends, self.path)
        self.listener = listener = listen(self.path)
        listener.setblocking(False)
        identity = os.stat(self.path).st_ino
        lookups_inode = 0
        self.lookups = kept_lookups(self.lookup_path, mode, self.settings.log_fd)
        if self.held is not None:
            why = take_passed(self.held, self.lookup_setting, mode)  # (0600 with no callers)
            if why is None and self.lookup_path is None:
                why = "server.dovecot_callers is empty"
            if why is None and self.lookups is None:
                self.lookups = self.held
            elif why is not None:
                log(self.settings.log_fd, f"the socket systemd passed is held, unused: {why}")
        if self.lookup_path is not None:
            try:
                if self.lookups is None:
                    self.lookups = listen(self.lookup_path, mode)
            except BaseException:
                unlink_if(self.path, identity)
                listener.close()
                raise
            self.lookups.setblocking(False)
            lookups_inode = os.stat(self.lookup_path).st_ino
        self.wake = wake = os.pipe()
        for fd in wake:
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake[1])
        for signum in WAKERS:
            signal.signal(signum, lambda signum, frame: None)
        # a reload execs with WAKERS blocked: those that came meanwhile wake the loop now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WAKERS)
        # the replaced process's workers, counted once SIGCHLD wakes the loop: those that
        # ended before (idle ones leave at once) are collected now
        self.previous = previous_workers()
        self.reap()
        if self.activated:
            log(self.settings.log_fd, f"lookups at {self.lookup_path}: the socket systemd "
                                      f"holds (it listens while the server is down)")
        log(self.settings.log_fd, f"listening on {self.path} (pid {os.getpid()}, "
            f"{self.settings.workers} workers, {self.settings.requests_per_worker} requests "
            f"a worker)")
        again = False
        try:
            again = self.loop(listener, wake[0])
        finally:
            signal.set_wakeup_fd(-1)
            for fd in wake:
                os.close(fd)
            for worker in (*self.busy.values(), *self.idle.values()):
                worker.control.close()  # idle workers leave; busy ones after their request
            # nothing of these was run: declined, the front ends run the program (a closed
            # connection would leave one with piped input no choice but 111)
            for waiting in (*self.unsent.values(), *self.ready):
                decline(waiting.conn)
            for direct in self.direct.values():
                unlink_if(direct.path, direct.inode)
                decline_queued(direct.sock)
                direct.sock.close()
            unlink_if(self.path, identity)
            decline_queued(listener)
            listener.close()
            if self.held is not None and again:
                os.set_inheritable(self.held.fileno(), True)
                os.environ[KEPT_HELD] = str(self.held.fileno())
            elif self.held is not None:
                self.held.close()  # systemd's copy listens on: the next server answers
            if self.lookups is None or self.activated:
                pass  # none, or systemd's (kept above)
            elif again:  # kept for the next process, queue and all
                os.set_inheritable(self.lookups.fileno(), True)
                os.environ[KEPT_LOOKUPS] = (f"{self.lookups.fileno()}:{lookups_inode}:"
                                            f"{self.lookup_path}")
            else:
                assert self.lookup_path is not None
                unlink_if(self.lookup_path, lookups_inode)
                decline_queued(self.lookups)
                self.lookups.close()
        if again:  # WAKERS blocked (see loop)
            for signum in WAKERS:
                signal.signal(signum, signal.SIG_DFL)
            os.environ[PREVIOUS] = ",".join(map(str, sorted(self.uncollected())))
            os.set_inheritable(self.lock, True)
            os.environ[KEPT_LOCK] = str(self.lock)
            if self.library >= 0:
                os.set_inheritable(self.library, True)
                os.environ[KEPT_LIBRARY] = str(self.library)
            os.execv(sys.argv[0], sys.argv)
        return 0

    def loop(self, listener: socket.socket, wake: int) -> bool:
        """The main loop; True for a reload. At SIGHUP (unless :func:`refusal` finds that the
        new process could not start: then one log line says why) nothing more is accepted,
        and the connections already taken are handed to workers (or declined at their
        deadlines, as ever) before the loop ends: none of them is declined for the reload
        (Dovecot's lookups have no fallback), and those that come meanwhile wait in the
        sockets' queues (the lookup socket's, for the next process). So too at SIGTERM with
        the lookup socket systemd's (its queue waits for the next server, but not what was
        taken from it); a second SIGTERM stops at once."""
        self.poll.register(wake, select.POLLIN)
        reloading = False
        stopping = False  # with the lookup socket systemd's: answering what was taken
        # the listening sockets, each polled while it is taken from; the lookup socket even
        # when too many wait (only the listed callers are kept there), not while the server
        # is out of descriptors
        accepting = {sock: True for sock in (listener, self.lookups) if sock is not None}
        for sock in accepting:
            self.poll.register(sock, select.POLLIN)
        while True:
            serving = self.ready or self.busy or not all(map(self.free, self.idle.values()))
            timeout = (TICK if serving or not all(accepting.values())
                       else 1000 if self.direct or self.unsent else None)
            for fd, _ in self.poll.poll(timeout):
                if fd == wake:
                    signals = woken(wake)
                    if stops(signals):
                        if stopping or not self.activated or not (self.unsent or self.ready):
                            log(self.settings.log_fd, "stopping")
                            return False
                        log(self.settings.log_fd, "stopping once the connections taken are "
                                                  "answered")
                        stopping, reloading = True, False
                    elif signal.SIGHUP in signals and not reloading and not stopping:
                        refused = self.reload_refusal()
                        if refused is not None:
                            log(self.settings.log_fd, f"not reloading: {refused}; serving "
                                                      f"on as started")
                        else:
                            log(self.settings.log_fd, "reloading")
                            reloading = True
                    if stopping or reloading:
                        for sock in [sock for sock, taking in accepting.items() if taking]:
                            accepting[sock] = False
                            self.poll.unregister(sock)
                    self.reap()
                elif fd == listener.fileno():
                    self.accept(listener)
                elif self.lookups is not None and fd == self.lookups.fileno():
                    self.accept(self.lookups, self.lookup_room(64))
                elif fd in self.unsent:
                    self.poll.unregister(fd)
                    waiting = self.unsent.pop(fd)
                    waiting.deadline = time.monotonic() + self.settings.timeout
                    self.ready.append(waiting)
                else:
                    self.heard(fd)
            self.expire()
            if stopping or reloading:  # the connections taken are handed on, no more
                self.dispatch(final=True)
                if self.unsent or self.ready:
                    continue
                if reloading:
                    # blocked across exec (the mask is kept): a SIGHUP or SIGTERM from now
                    # waits for the new process's handlers instead of being lost with this
                    # one's wakeup pipe, and one that came during the reload stops it here
                    signal.pthread_sigmask(signal.SIG_BLOCK, WAKERS)
                    if not stops(woken(wake)):
                        return True
                log(self.settings.log_fd, "stopping")
                return False
            self.unblock()
            self.dispatch()
            # too many waiting, or no descriptor to take one with (a failed accept leaves
            # its socket readable: polled again at once, the loop would spin): leave the rest
            # in the listen queue; and the lookups no worker could take now (lookup_room)
            resting = time.monotonic() < self.resting
            full = len(self.unsent) + len(self.ready) >= BACKLOG or resting
            wanted = {listener: not full}
            if self.lookups is not None:
                wanted[self.lookups] = not resting and self.lookup_room(1) > 0
            for sock, taking in wanted.items():
                if accepting[sock] != taking:
                    accepting[sock] = taking
                    if taking:
                        self.poll.register(sock, select.POLLIN)
                    else:
                        self.poll.unregister(sock)
            self.publish()

    def reload_refusal(self) -> str | None:
        """Why a SIGHUP must not reload now: an install under way (it reloads the server when
        it ends), its lock that cannot be taken, or :func:`refusal`'s reason; None when it
        may, the library locked meanwhile (:func:`library_lock`)."""
        try:
            self.library = library_lock(sys.argv[0])
        except BlockingIOError:
            return "an install is under way (its lib/install.lock is held): it reloads the " \
                   "server when it ends"
        except CannotServe as exc:
            return str(exc)
        refused = refusal(sys.argv[0])
        if refused is not None and self.library >= 0:
            os.close(self.library)
            self.library = -1
        return refused

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
            if pid in self.previous:
                self.previous.discard(pid)
            elif pid in self.ending:
                self.release(self.ending.pop(pid))
            else:
                self.exited.add(pid)

    def uncollected(self) -> set[int]:
        """The pids of the workers not yet collected: serving, idle, ending, or left from
        before a reload."""
        return {worker.pid for worker in (*self.busy.values(), *self.idle.values())} | set(
            self.ending) | self.previous

    def release(self, slot: int) -> None:
        """A collected worker's counter slot: its count kept, the slot free for the next."""
        self.served += self.settings.take_count(slot)
        self.slots.append(slot)

    def ended(self, worker: Worker) -> None:
        """``worker`` will serve no more: its place is free once its process is collected;
        its identity's socket closes with the identity's last worker."""
        self.poll.unregister(worker.control)
        worker.control.close()
        if worker.pid in self.exited:
            self.exited.discard(worker.pid)
            self.release(worker.slot)
        else:
            self.ending[worker.pid] = worker.slot
        if not self.has_worker(worker.identity):
            self.close_direct(worker.identity)

    def has_worker(self, identity: Identity) -> bool:
        """Whether a worker (busy or idle, not ending) holds ``identity``."""
        return any(worker.identity == identity
                   for worker in (*self.busy.values(), *self.idle.values()))

    def open_direct(self, identity: Identity) -> Direct | None:
        """``identity``'s own socket, made now if it has none (None: no room for its name,
        or it could not be made: the identity is then served through the parent only)."""
        if identity in self.direct:
            return self.direct[identity]
        path = identity_socket(self.path, *identity)
        if path is None:
            return None
        try:
            direct = self.direct[identity] = Direct(path, identity)
        except OSError as exc:
            log(self.settings.log_fd, f"cannot make {path}: {exc.strerror}")
            return None
        return direct

    def close_direct(self, identity: Identity) -> None:
        """Remove ``identity``'s socket (its front ends come here again) and take over the
        connections left in its queue."""
        direct = self.direct.pop(identity, None)
        if direct is None:
            return
        unlink_if(direct.path, direct.inode)
        self.take_direct(direct, BACKLOG)
        direct.sock.close()

    def take_direct(self, direct: Direct, most: int) -> None:
        """Take up to ``most`` connections waiting at ``direct``, as if accepted here."""
        deadline = time.monotonic() + self.settings.timeout
        for _ in range(most):
            try:
                conn, _ = direct.sock.accept()
            except OSError:  # none left (or EMFILE: they wait for a worker there)
                return
            conn.setblocking(True)
            self.take(conn, deadline)

    def accept(self, listener: socket.socket, most: int = 64) -> None:
        """Take up to ``most`` connections waiting at ``listener``; at the lookup socket, only
        server.dovecot_callers' (it is polled while the main socket's queue is full: anyone
        else's would wait there unbounded)."""
        callers = self.settings.dovecot_callers if listener is self.lookups else None
        deadline = time.monotonic() + self.settings.timeout
        for _ in range(most):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the client stays in the queue,
                # and the listening sockets are left alone a while (see loop)
                log(self.settings.log_fd, f"cannot accept: {exc.strerror}")
                self.resting = time.monotonic() + REST
                return
            self.take(conn, deadline, callers)

    def take(self, conn: socket.socket, deadline: float,
             callers: frozenset[int] | None = None) -> None:
        """An accepted connection: its peer's identity read, it waits for its request;
        closed at once if its peer is not one of ``callers``."""
        known = identify(conn, self.settings.log_fd)
        if known is None:
            return
        if callers is not None and known[1][0] not in callers:
            log(self.settings.log_fd, f"dropped pid {known[0]} uid {known[1][0]}: not a "
                                      f"server.dovecot_callers caller, at the lookup socket")
            conn.close()
            return
        waiting = Waiting(conn, *known, deadline, lookup=callers is not None)
        if readable(conn):  # the front end sends at once: most are readable already
            self.ready.append(waiting)
        else:
            self.unsent[conn.fileno()] = waiting
            self.poll.register(conn, select.POLLIN)

    def lookup_room(self, most: int) -> int:
        """How many more lookups (at most ``most``) to take from the lookup socket now: as
        many as workers can be handed them at once (one to be forked: a fork takes a few
        milliseconds, the next is counted once it is done; the free idle workers; the idle
        ones of server.dovecot_callers, which serve a lookup handed to them next), less those
        taken and still waiting here. The rest wait in the socket's queue: taken, a lookup
        dies with this process, while the queue of the socket systemd holds outlives a
        SIGKILL (the next server answers it). With none of those and other callers waiting
        here or every idle worker serving a caller of its own, one lookup still waits here in
        its turn: the workers that free up go to the callers waiting here first, and only a
        lookup waiting here gets an idle worker retired for it."""
        held = sum(waiting.lookup for waiting in (*self.unsent.values(), *self.ready))
        room = (self.running() < self.settings.workers) - held
        callers = self.settings.dovecot_callers
        for worker in self.idle.values():
            if room >= most:
                break
            room += worker.identity[0] in callers or self.free(worker)
        if room <= 0 and not held and (self.ready or self.idle):
            return min(1, most)
        return max(0, min(room, most))

    def heard(self, fd: int) -> None:
        """A worker said it is idle, busy with more waiting at its identity's socket, or
        ending, or it went away."""
        worker = self.busy.pop(fd, None) or self.idle.pop(fd, None)
        if worker is None:
            return
        try:
            said = worker.control.recv(16)
        except OSError:
            said = b""
        if said == IDLE:
            self.idle[fd] = worker
        elif said == BUSY:
            self.busy[fd] = worker
            direct = self.direct.get(worker.identity)
            if direct is not None:
                self.take_direct(direct, 1)
        else:
            self.ended(worker)

    def expire(self) -> None:
        """Drop connections silent past the request timeout (an idle worker leaves by
        itself after ``server.idle_timeout``)."""
        now = time.monotonic()
        for fd, waiting in list(self.unsent.items()):
            if waiting.deadline <= now:
                log(self.settings.log_fd, f"dropped pid {waiting.pid} uid {waiting.identity[0]}: "
                    f"timed out before a request")
                self.poll.unregister(fd)
                del self.unsent[fd]
                waiting.conn.close()

    def retire(self, fd: int) -> None:
        """Tell the idle worker ``fd`` to leave, after the caller it may have accepted at its
        identity's socket: the identity's other workers serve what is queued there; when it
        is the last, this process takes the socket's queue over first (:meth:`close_direct`)."""
        worker = self.idle.pop(fd)
        last = not self.has_worker(worker.identity)
        if last:
            self.close_direct(worker.identity)
        with contextlib.suppress(OSError):
            worker.control.send(RETIRE_LAST if last else RETIRE)
        self.ended(worker)

    def free(self, worker: Worker) -> bool:
        """Whether an idle ``worker`` is really idle: not serving a caller it accepted at its
        identity's socket (which it does not tell this process)."""
        return not self.settings.is_serving(worker.slot)

    def full(self, identity: Identity) -> bool:
        """Whether no other worker may be forked for ``identity`` (:meth:`fits`)."""
        return not self.fits(identity)

    def running(self) -> int:
        """The workers that count against ``server.workers``."""
        return len(self.busy) + len(self.idle) + len(self.ending) + len(self.previous)

    def fits(self, identity: Identity, leaving: Worker | None = None) -> bool:
        """Whether a worker may be forked for ``identity`` (once the idle worker ``leaving``
        has ended): fewer than ``server.workers`` run (or are ending, or are left from
        before a reload), and for a caller not in server.dovecot_callers fewer than
        ``server.workers`` less the workers kept for those callers run for the others (the
        ones ending or left from before a reload counted among the others): the kept
        workers are a floor for Dovecot's lookups, not a ceiling for everyone else."""
        callers = self.settings.dovecot_callers
        running = self.running() - (leaving is not None)
        if running >= self.settings.workers:
            return False
        if identity[0] in callers:
            return True
        lookups = sum(worker.identity[0] in callers
                      for worker in (*self.busy.values(), *self.idle.values()))
        others = running - lookups + (leaving is not None and leaving.identity[0] in callers)
        return others < self.settings.workers - self.kept

    def room(self, identity: Identity) -> bool:
        """Whether another worker can be had for ``identity``: one can be forked, or a free
        one retired to make room for it."""
        return self.fits(identity) or any(self.fits(identity, worker)
                                          for worker in self.idle.values() if self.free(worker))

    def unblock(self) -> None:
        """Take a caller queued at an identity's socket when each of the identity's workers
        is serving a request and another worker can be had: it is served by that one rather
        than after a long request ends. (With no room it stays queued for the identity's
        workers, the first one free.)"""
        for identity, direct in self.direct.items():
            if (not any(worker.identity == identity and self.free(worker)
                        for worker in self.idle.values())
                    and readable(direct.sock) and self.room(identity)):
                self.take_direct(direct, 1)

    def dispatch(self, final: bool = False) -> None:
        """Hand the ready connections to workers, oldest first (:meth:`make_room` for one
        that finds none). Those that find none by their deadline are declined, but for a
        lookup, which waits on, unless ``final``: the last ones handed on before a reload or
        a stop, which accepts no more meanwhile (a lookup waiting on, it waited for as long
        as a worker was held, and every caller at the server's socket with it)."""
        left = []
        for waiting in self.ready:
            worker = self.idle_worker(waiting.identity, free=True)
            if worker is not None:
                worker = self.hand(worker, waiting)
            else:  # a new worker; with no room and none free to retire, the next of one
                worker = self.fork(waiting)  # serving a caller it accepted
                if worker is None and not any(map(self.free, self.idle.values())):
                    worker = self.hand(self.idle_worker(waiting.identity, free=False), waiting)
            if worker is None:
                if waiting.deadline <= time.monotonic():
                    # every worker held (by another identity's endless requests, say):
                    # declined, nothing of it read, its front end runs the program itself;
                    # a lookup has no program to run: it waits on, until Dovecot gives up
                    # (or the server reloads or stops: ``final``)
                    if not waiting.lookup or final:
                        log(self.settings.log_fd, f"declined pid {waiting.pid} uid "
                            f"{waiting.identity[0]}: no worker for it within "
                            f"server.request_timeout")
                        decline(waiting.conn)
                        continue
                    # its client closed its end (not merely its writing half): not run
                    # later for no one
                    if events_now(waiting.conn) & select.POLLHUP:
                        log(self.settings.log_fd, f"dropped pid {waiting.pid} uid "
                            f"{waiting.identity[0]}: its client hung up while it waited "
                            f"for a worker")
                        waiting.conn.close()
                        continue
                self.make_room(waiting)
                left.append(waiting)
                continue
            waiting.conn.close()
            self.busy[worker.control.fileno()] = worker
        self.ready = left

    def make_room(self, waiting: Waiting) -> None:
        """Retire an idle worker of another identity whose place ``waiting`` (which found no
        worker) may then have, a free one first, else one that leaves after the request it
        serves; once (a worker still ending makes room too), and in the callers' order: a
        caller that came later is not handed the worker retired for an older one (when the
        retire came after the hand-overs, each lookup worker that said it was idle went to
        the lookup waiting behind a delivery: with one worker the delivery waited seconds,
        until declined)."""
        if self.ending or not self.may_retire_for(waiting, time.monotonic()):
            return
        order = sorted(self.idle.items(), key=lambda item: not self.free(item[1]))
        fd = next((fd for fd, worker in order if worker.identity != waiting.identity and
                   self.fits(waiting.identity, worker)), None)
        if fd is not None:
            self.retire(fd)

    def may_retire_for(self, waiting: Waiting, now: float) -> bool:
        """Whether an idle worker of another identity may be retired for ``waiting``: its
        identity has no worker, or it has waited ``TICK`` for the ones it has (one that has
        just answered says IDLE a moment later; a long request is what the retire is for).
        Retiring at once, two identities taking turns on two workers each retired the
        other's worker at about every request, forking one for the next."""
        waited = self.settings.timeout - (waiting.deadline - now)
        return waited >= TICK / 1000 or not self.has_worker(waiting.identity)

    def hand(self, worker: Worker | None, waiting: Waiting) -> Worker | None:
        """``worker``, once ``waiting``'s connection is sent to it; None when there is none
        or it is gone (the connection waits for another)."""
        if worker is None:
            return None
        try:
            worker.control.sendmsg([waiting.pid.to_bytes(4, sys.byteorder, signed=True)],
                                   [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                     waiting.conn.fileno().to_bytes(4, sys.byteorder))])
        except OSError:
            self.ended(worker)
            return None
        return worker

    def idle_worker(self, identity: Identity, free: bool) -> Worker | None:
        """The most recently idle worker holding ``identity`` (the long-idle ones retire)
        that is not serving a caller it accepted at the identity's socket (``free``) or, if
        none is, one that is (it takes the connection when that request ends)."""
        serving = None
        for fd in reversed(self.idle):
            if self.idle[fd].identity == identity:
                if self.free(self.idle[fd]):
                    return self.idle.pop(fd)
                serving = fd if serving is None else serving
        return None if free or serving is None else self.idle.pop(serving)

    def fork(self, first: Waiting) -> Worker | None:
        """A new worker for ``first``'s identity, born with ``first`` to serve (it takes no
        other before); None when ``server.workers`` run (or are ending) or no process could
        be made."""
        identity = first.identity
        if self.full(identity):
            return None
        try:  # out of descriptors (EMFILE), say: the caller waits, or is declined in time
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as exc:
            log(self.settings.log_fd, f"cannot fork: {exc.strerror}")
            return None
        direct = self.open_direct(identity)
        try:
            pid = os.fork()
        except OSError as exc:
            log(self.settings.log_fd, f"cannot fork: {exc.strerror}")
            ours.close()
            theirs.close()
            return None
        slot = self.slots[-1]
        if pid:
            self.exited.discard(pid)  # an earlier process's (a worker of the last generation)
            self.slots.pop()
            theirs.close()
            self.poll.register(ours, select.POLLIN)
            return Worker(pid, ours, identity, slot)
        code = 0
        try:
            signal.set_wakeup_fd(-1)
            for signum in WAKERS:
                signal.signal(signum, signal.SIG_DFL)
            # what the parent holds closed first: a parent at its RLIMIT_NOFILE leaves the
            # new worker no descriptor for a copy (EMFILE: the worker failed, its caller
            # read that as the server's death)
            self.forget(direct, first)
            conn = socket.socket(fileno=first.conn.detach())
            ours.close()
            work(theirs, identity, self.settings, slot, direct.sock if direct else None,
                 (conn, first.pid))
        except BaseException as exc:  # noqa: BLE001 - a worker must never return to the loop
            log(self.settings.log_fd, f"worker failed: {type(exc).__name__}: {exc}")
            code = 1
        finally:
            drop_kept_connections()  # a goodbye to the SQL servers, which os._exit does not say
            os._exit(code)

    def forget(self, own: Direct | None, first: Waiting) -> None:
        """In a new worker: close its copies of what the parent holds (other workers' control
        sockets, waiting clients but ``first``, the listener, other identities' sockets, the
        wakeup pipe), so that each end sees the other leave."""
        for worker in (*self.busy.values(), *self.idle.values()):
            worker.control.close()
        for waiting in (*self.unsent.values(), *self.ready):
            if waiting is not first:
                waiting.conn.close()
        for direct in self.direct.values():
            if direct is not own:
                direct.sock.close()
        assert self.listener is not None and self.wake is not None
        self.listener.close()
        for sock in (self.lookups, self.held):
            if sock is not None:
                sock.close()
        for fd in (*self.wake, self.lock, *([self.library] if self.library >= 0 else [])):
            os.close(fd)
