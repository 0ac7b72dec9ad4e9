"""vpopmail-server's workers: each takes one caller identity for good and serves the
connections of that identity the parent hands it, one at a time, by calling the same ``main``
the direct programs call (see :mod:`vpopmail.server`)."""
import contextlib
import errno
import functools
import mmap
import os
import posix
import select
import socket
import struct
import sys
import time
from collections.abc import Callable

from vpopmail import config as vconfig
from vpopmail import environ_text
from vpopmail.server.lookup import STATUS as LOOKUP_STATUS
from vpopmail.server.lookup import (PROGRAM, BadRequest, answer, credentials,
                                    feed_descriptor_3, is_lookup, read_lookup, respond,
                                    vchkpw_variables)
from vpopmail.stores import drop_kept_connections, keep_connections, kept_descriptors
from vpopmail.wire import (DECLINE, EXIT, INFINITY, LIMITS, PLAN, PLAN_HEAD, STATUS, STATUS_REPLY,
                           VCHKPW, VDELIVERMAIL, Decline, Drop, Request, peer_credentials,
                           read_request, reply, to_rlimit)

#: what the parent publishes for --status: requests of the workers collected, workers alive,
#: clients waiting; then each worker slot's count of requests and whether its worker is
#: serving one (1): one that accepted at its identity's socket has told the parent nothing
COUNTERS = struct.Struct("=QQQ")
SLOT = struct.Struct("=QQ")
#: what a worker tells the parent: idle again, busy (with more waiting at its identity's
#: socket: the parent takes one), ending (it serves no more)
IDLE, BUSY, ENDING = b".", b"+", b"x"
#: what the parent tells a worker it retires, before closing the control socket (a handed
#: connection is a pid with a descriptor; these are four bytes without one): the parent is
#: still there, and the callers queued at the identity's socket are left to the identity's
#: other workers (RETIRE), or, the worker being the identity's last (RETIRE_LAST), the
#: parent has removed the socket and taken its queue over: the worker declines only those
#: that came after (a front end that found the socket as it was removed)
RETIRE, RETIRE_LAST = b"\0\0\0\0", b"\0\0\0\1"
MAX_GROUPS = 256  # what SO_PEERGROUPS can return through Python's getsockopt (1 KiB)
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13

Identity = tuple[int, int, tuple[int, ...]]  # uid, gid, sorted supplementary groups
#: what starts the names of the variables a reloading server tells the process it becomes
#: (vpopmail.server.parent); none of them is a lookup's
RELOAD_PREFIX = "VPOPMAIL_SERVER_"


def peer_identity(conn: socket.socket) -> tuple[int, Identity]:
    """(pid, identity) the kernel recorded when the peer connected."""
    pid, uid, gid = peer_credentials(conn)
    raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * MAX_GROUPS)
    return pid, (uid, gid, tuple(sorted(struct.unpack(f"={len(raw) // 4}I", raw))))


def identify(conn: socket.socket, log_fd: int) -> tuple[int, Identity] | None:
    """:func:`peer_identity`, or None (one log line) for a peer that cannot be served: one
    with more than MAX_GROUPS groups is declined (its front end runs the program itself, as
    it does for any caller with that many), one gone already is dropped."""
    try:
        return peer_identity(conn)
    except OSError as exc:
        if exc.errno == errno.ERANGE:
            log(log_fd, f"declined a client with more than {MAX_GROUPS} groups")
            decline(conn)
        else:
            log(log_fd, f"dropped a client: {exc.strerror}")
            conn.close()
        return None


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


def holds(identity: Identity) -> bool:
    """Whether this process holds exactly ``identity`` (real, effective and saved ids)."""
    uid, gid, groups = identity
    return (os.getresuid() == (uid, uid, uid) and os.getresgid() == (gid, gid, gid)
            and tuple(sorted(os.getgroups())) == groups)


def is_identity(identity: Identity) -> bool:
    """Whether this process holds exactly ``identity``. A root peer's run may leave other
    effective ids (vchkpw's seteuid steps): they are taken back first (only then: setgroups
    costs microseconds)."""
    if holds(identity):
        return True
    uid, gid, groups = identity
    if uid != 0 or os.getresuid()[0] != 0:
        return False
    os.seteuid(0)
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    return holds(identity)


def high(fd: int) -> int:
    """A close-on-exec copy of ``fd`` above the descriptors a program uses; ``fd`` closed."""
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64)
    os.close(fd)
    return moved


@functools.cache
def own_view() -> tuple[tuple[int, int], tuple[int, int]]:
    """(device, inode) of this process's mount namespace and root directory."""
    mounts, root = os.stat("/proc/self/ns/mnt"), os.stat("/")
    return (mounts.st_dev, mounts.st_ino), (root.st_dev, root.st_ino)


def same_view(pid: int) -> None:
    """Decline a caller (pid ``pid``) that sees another file system than the worker: another
    mount namespace (a sandboxed service's read-only or hidden paths) or root directory
    (chroot). The worker would read and write in the server's, where the direct program
    could not; its front end runs the program itself, in its own."""
    try:
        mounts, root = os.stat(f"/proc/{pid}/ns/mnt"), os.stat(f"/proc/{pid}/root")
    except OSError as exc:
        raise Decline(f"cannot see the caller's mount namespace: {exc.strerror}") from None
    if ((mounts.st_dev, mounts.st_ino), (root.st_dev, root.st_ino)) != own_view():
        raise Decline("the caller is in another mount namespace or root directory "
                      "(server.sandboxed_callers would serve it in the server's)")


def confine(request: Request, pid: int, sandboxed: bool = False) -> None:
    """The caller's resource limits and (for a delivery, whose programs get them) its nice
    value as the kernel has them (prlimit, getpriority of its pid ``pid``), in place of what
    its request says: a caller speaking the protocol itself could declare more than it has,
    and the programs its delivery runs would get more than the direct program gives them.
    Decline when they cannot be read (a caller gone, or one whose real and effective ids
    differ: the worker may not read its limits; its front end runs the program itself), and
    unless ``sandboxed`` (server.sandboxed_callers), a caller that sees another file system
    (:func:`same_view`)."""
    import resource

    delivery = request.program == VDELIVERMAIL
    limits = list(request.limits)
    try:
        if pid <= 0:  # in a pid namespace this process does not see
            raise ProcessLookupError(errno.ESRCH, "no pid")
        if not sandboxed:
            same_view(pid)
        for number in range(LIMITS) if delivery else (resource.RLIMIT_FSIZE,):
            soft, hard = resource.prlimit(pid, number)
            limits[number] = (soft & INFINITY, hard & INFINITY)  # RLIM_INFINITY: -1 here
        if delivery:
            request.nice = os.getpriority(os.PRIO_PROCESS, pid)
    except OSError as exc:
        raise Decline(f"cannot read the caller's limits: {exc.strerror}") from None
    request.limits = tuple(limits)


#: the umask of the requests run in the worker's own process state (nothing they make needs
#: more): a server.smtp_auth_callers caller's login, a Dovecot lookup
OWN_UMASK = 0o077


def own_place() -> None:
    """The worker's own directory and umask for a request: ``/`` and OWN_UMASK."""
    os.chdir("/")
    os.umask(OWN_UMASK)


def set_stage(request: Request, own: bool = False) -> dict[bytes, bytes]:
    """The peer's descriptors, environment, directory, umask and file-size limit (the soft
    limit: the worker keeps its hard limit for the next request); its variables, returned.
    ``own`` (a server.smtp_auth_callers caller's request, run with the vpopmail user's rights:
    see :func:`serve_one`): only its descriptors and arguments are taken; the worker keeps
    its environment (the caller's variables, which the C libraries would read at run time,
    are only returned), its file-size limit, the root directory and a umask of 077."""
    import resource

    if own:
        own_place()
    else:
        try:
            os.chdir(request.cwd)
        except OSError as exc:
            raise Decline(f"cannot enter {request.cwd!r}: {exc.strerror}") from None
        try:
            limit_file_size(request.limits[resource.RLIMIT_FSIZE][0])
        except (OSError, ValueError) as exc:
            raise Decline(f"cannot take the file size limit: {exc}") from None
        os.umask(request.umask)
    # one that is a target itself would be overwritten before its own turn: moved out first
    moved = [high(fd) if fd < len(request.fds) else fd for fd in request.fds]
    for target, fd in enumerate(moved):
        os.dup2(fd, target)
        os.close(fd)
    variables: dict[bytes, bytes] = {}
    for entry in request.env:
        name, sep, value = entry.partition(b"=")
        if sep and name and name not in variables:  # the first of a name counts, as getenv()
            variables[name] = value
    sys.argv = [os.fsdecode(arg) for arg in request.argv]
    if not own:
        put_environment(variables)
    return variables


def limit_file_size(wanted: int) -> None:
    """The soft file-size limit ``wanted`` (as a request carries it: 2**63 and up is none),
    at most the hard limit, which the worker keeps for the next request."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    wanted = to_rlimit(min(wanted, hard & INFINITY))
    if wanted != soft:  # most requests bring the last one's
        resource.setrlimit(resource.RLIMIT_FSIZE, (wanted, hard))


def put_environment(variables: dict[bytes, bytes]) -> None:
    """Make the environment ``variables``: changed, not rebuilt (most of it is the last
    request's). Read in posix.environ, the dict os.environb wraps (its mapping methods cost a
    microsecond a call); changed through os.environb, which tells the C library too (putenv,
    unsetenv)."""
    current, environ = posix.environ, os.environb
    for name in [name for name in current if name not in variables]:
        del environ[name]
    for name, value in variables.items():
        if current.get(name) != value:
            environ[name] = value


def own_stage(settings: "Settings") -> None:
    """A lookup's process state: the worker's own, whatever a root caller's request left (its
    environment, which names the configuration, and file-size limit): the server's
    environment, file-size limit and log as stderr (vchkpw's reasons), :func:`own_place`."""
    own_place()
    os.dup2(settings.log_fd, 2)
    put_environment(settings.environment)
    limit_file_size(settings.file_size)


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
def plan_class(smtp_only: bool = False, lookup: bool = False) -> type:
    """vchkpw's Vchkpw whose last steps become an :class:`ExecPlan` (imported on use): the
    worker keeps its ids and directory, the front end takes the ones the plan names.
    ``smtp_only``: a login of another class than SMTP AUTH is refused (111) before anything
    is read (a server.smtp_auth_callers caller's, served with the vpopmail user's rights).
    ``lookup``: a Dovecot 2.4 lookup's, whose answer is the plan's environment: its program
    is never run, nor looked for."""
    from vpopmail.stores import VUser
    from auth.vchkpw import SMTP, Finish, Vchkpw, exec_candidates
    from vpopmail.errors import TEMPORARY
    from vpopmail.assign import AssignEntry

    class PlanningVchkpw(Vchkpw):
        plan_ids: Identity | None = None
        plan_cwd: bytes | None = None

        def authenticate(self, login: str, stamp: str,
                         service: str) -> tuple[AssignEntry, VUser]:
            if smtp_only and service != SMTP:
                raise Finish(TEMPORARY, f"this caller is served for SMTP AUTH only "
                                        f"(server.smtp_auth_callers), not for a {service} "
                                        f"login (TCPLOCALPORT, or the program's name)")
            if smtp_only and self.lookup_only:  # Dovecot's AUTHORIZED=1: no password
                raise Finish(TEMPORARY, "a lookup without the password (AUTHORIZED=1) is not "
                                        "served for server.smtp_auth_callers")
            return super().authenticate(login, stamp, service)

        def final_ids(self, entry: AssignEntry, user: VUser, service: str) -> None:
            if not self.root or service == SMTP or self.dovecot:
                super().final_ids(entry, user, service)
                if service != SMTP and not self.dovecot:
                    self.plan_cwd = os.getcwdb()
                return
            try:  # enter the directory as the user will, then take the worker's ids back
                self.become(entry.uid, entry.gid)
                try:
                    os.chdir(user.dir)
                finally:
                    self.take_back_ids()
            except OSError as exc:
                raise Finish(TEMPORARY, f"cannot become uid {entry.uid} in {user.dir} "
                                        f"({exc})") from None
            self.plan_ids, self.plan_cwd = (entry.uid, entry.gid, ()), os.fsencode(user.dir)

        def exec(self, command: list[str], env: dict[str, str]) -> None:
            self.log.close()
            path = command[0]
            if lookup:
                raise ExecPlan(path, command, env, None, None)
            if smtp_only:
                # the caller's program, run and found by the caller: never looked at with
                # the worker's rights (the vpopmail user's), so that the answer tells the
                # caller nothing of what those reach; a bare name would need a PATH search
                if "/" not in path:
                    raise Finish(TEMPORARY, f"cannot run {path}: a server.smtp_auth_callers "
                                            f"caller names its program with a path "
                                            f"(/bin/true)")
                raise ExecPlan(path, command, env, None, self.plan_cwd)
            error = errno.ENOENT
            # the program is looked for with the ids it is to run with, as the direct
            # program's execve after its setuid: one only root may run is passed over
            ids = self.plan_ids
            if ids is not None:
                self.become(ids[0], ids[1])
            try:
                for candidate in exec_candidates(path, env):
                    if os.path.isfile(candidate) and os.access(candidate, os.X_OK,
                                                               effective_ids=ids is not None):
                        raise ExecPlan(candidate, command, env, ids, self.plan_cwd)
                    if os.path.exists(candidate):
                        error = errno.EACCES
            finally:
                if ids is not None:
                    self.take_back_ids()
            raise Finish(TEMPORARY, f"cannot run {path} ({os.strerror(error)})")

    return PlanningVchkpw


def encode_plan(plan: ExecPlan, peer: Identity, cwd: bytes) -> bytes:
    """The PLAN payload: the ids the program is to run with (``change`` when they are not
    the peer's: a plan without ids keeps the peer's), its directory if not the peer's, the
    program, argv and environment."""
    ids = plan.ids or peer
    change = ids != peer
    here = plan.cwd if plan.cwd is not None else cwd
    texts = [plan.path, *plan.argv, *(f"{k}={v}" for k, v in plan.env.items())]
    joined = "\0".join(texts)  # encoded at once, not string by string
    if joined.count("\0") != len(texts) - 1 or b"\0" in here:
        raise ValueError("NUL in the exec plan")
    path, _, rest = os.fsencode(joined).partition(b"\0")
    uid, gid, groups = ids
    return (PLAN_HEAD.pack(int(change), uid, gid, len(groups), len(plan.argv), len(plan.env))
            + struct.pack(f"={len(groups)}I", *groups)
            + b"\0".join([path, b"" if here == cwd else here, rest]) + b"\0")


def run_request(request: Request, config: str | None, peer: Identity,
                variables: dict[bytes, bytes], smtp_only: bool = False) -> tuple[int, bytes]:
    """Run the program the direct way; the reply (kind, payload). A delivery's programs get
    the caller's nice value and resource limits (delivery.vdelivermail.spawn). ``smtp_only``:
    see :func:`plan_class`; vchkpw then gets the caller's ``variables`` as its data (they are
    not the process's environment)."""
    if request.program == VDELIVERMAIL:
        from delivery.vdelivermail import main as deliver

        code = deliver(sys.argv[1:], config=config,
                       program_limits=(request.nice, request.limits))
    else:
        from auth.vchkpw import main as login

        environ = environ_text(variables) if smtp_only else None
        try:
            code = login(sys.argv, config=config, runner=plan_class(smtp_only), environ=environ)
        except ExecPlan as plan:
            return PLAN, encode_plan(plan, peer, request.cwd)
    return EXIT, struct.pack("=I", code & 0xFF)


#: what names another configuration file (vpopmail.config.locate)
CONFIG_VARIABLE = vconfig.ENV_VAR.encode() + b"="


def serve_one(conn: socket.socket, pid: int, identity: Identity, settings: "Settings",
              null: int) -> None:
    """One connection of a worker for ``identity``: from its request to its reply. For a
    server.smtp_auth_callers identity (the worker holds the vpopmail user's) only vchkpw is
    served, for SMTP AUTH, and the caller is not inspected (its limits and mount namespace
    are another user's): the login runs in the server's view and configuration (the
    caller's VPOPMAIL_CONFIG is dropped), as the vpopmail user, with the worker's own
    process state (:func:`set_stage`'s ``own``: what it writes as that user takes neither the
    caller's umask nor its file-size limit). Its variables are vchkpw's data and its
    program's environment but never the worker's: the C libraries read theirs at run time
    with the vpopmail user's rights (OPENSSL_CONF and MARIADB_PLUGIN_DIR name modules they
    load)."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, settings.receive_timeout)
        # the whole request within server.request_timeout: a caller trickling it a byte at a
        # time would hold the worker (and its place among server.workers) for ever
        deadline = time.monotonic() + settings.timeout + 0.001
        if identity[0] in settings.dovecot_callers and is_lookup(conn, deadline):
            serve_lookup(conn, identity, settings, deadline)
            return
        request = read_request(conn, deadline)
        if request.program == STATUS:
            reply(conn, STATUS_REPLY, settings.status().encode())
            return
        smtp_only = identity[0] in settings.smtp_auth_callers
        try:
            if identity[0] in settings.lookup_only_callers:
                raise Decline("server.dovecot_callers are served for Dovecot's lookups only")
            if not smtp_only:
                confine(request, pid, settings.sandboxed)
            elif request.program != VCHKPW:
                raise Decline("server.smtp_auth_callers are served for SMTP AUTH only")
            else:  # the server's configuration, not one the caller names
                request.env = [entry for entry in request.env
                               if not entry.startswith(CONFIG_VARIABLE)]
            variables = set_stage(request, own=smtp_only)
        except Decline:
            for fd in request.fds:
                os.close(fd)
            raise
        try:
            kind, payload = run_request(request, settings.config, identity, variables,
                                        smtp_only)
        finally:
            clear_stage(len(request.fds), null)
        reply(conn, kind, payload)
    except Decline as exc:
        log(settings.log_fd, f"declined pid {pid} uid {identity[0]}: {exc}")
        try:
            reply(conn, DECLINE)
        except OSError:
            pass
    except (Drop, OSError, ValueError) as exc:
        log(settings.log_fd, f"dropped pid {pid} uid {identity[0]}: {exc}")


def serve_lookup(conn: socket.socket, identity: Identity, settings: "Settings",
                 deadline: float) -> None:
    """One Dovecot 2.4 lookup of a server.dovecot_callers caller (:mod:`.lookup`): vchkpw
    run as Dovecot 2.3's checkpassword driver ran it, in the worker's own process state
    (:func:`own_stage`), its exec plan or exit code the answer."""
    from auth.vchkpw import MAX_INPUT
    from auth.vchkpw import main as login

    try:
        kind, fields = read_lookup(conn, deadline)
    except BadRequest as exc:
        log(settings.log_fd, f"refused a lookup of uid {identity[0]}: {exc}")
        respond(conn, 400)
        return
    given = credentials(kind, fields)
    if len(given) > MAX_INPUT:  # no login is that long: refused, where vchkpw says "misuse"
        respond(conn, LOOKUP_STATUS[1 if kind == "/passdb" else 3])  # (a fault to Dovecot)
        return
    own_stage(settings)
    feed_descriptor_3(given)
    found: dict[str, str] | None = None
    try:
        code = login(["vchkpw", PROGRAM], config=settings.config,
                     runner=plan_class(lookup=True),
                     environ=vchkpw_variables(kind, fields, identity[0]))
    except ExecPlan as plan:
        code, found = 0, answer(kind, plan.env)
    finally:
        with contextlib.suppress(OSError):  # vchkpw closes it once the credentials are read
            os.close(3)
    respond(conn, LOOKUP_STATUS.get(code, 503) if found is None else 200, found)


def log_descriptor() -> int:
    """The server's log (stderr), as a descriptor :func:`high` puts out of the way, that does
    not block where it can be made so: a line that does not fit while the logger reads no
    more (multilog stopped, or its disk full; journald behind) is lost rather than waited on,
    since the parent and each worker with a line to log would wait with it, and the callers
    with them. A pipe (multilog's, svlogd's) is opened afresh, so that its own file (svscan's
    and runsv's too) keeps its flags (without /proc, or a pipe no one reads: stderr as
    given); a socket (journald's stream, the service's alone) is made non-blocking."""
    import stat

    kind = os.fstat(2).st_mode
    try:
        if stat.S_ISFIFO(kind):
            return high(os.open("/proc/self/fd/2", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError:  # no /proc, another user's pipe, or one no one reads (ENXIO): as given
        pass
    fd = high(os.dup(2))
    if stat.S_ISSOCK(kind):
        os.set_blocking(fd, False)
    return fd


def log(fd: int, text: str) -> None:
    try:
        os.write(fd, f"vpopmail-server: {text}\n".encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def open_descriptors(keep: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """The descriptors open above 2 but for ``keep``."""
    import fcntl

    found = []
    for fd in sorted(set(map(int, os.listdir("/proc/self/fd"))).difference(keep, (0, 1, 2))):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            continue  # the directory listing's own descriptor, closed by now
        found.append(fd)
    return found


def describe(fd: int) -> str:
    """``fd`` and what it is open on, for the log."""
    try:
        return f"{fd} ({os.readlink(f'/proc/self/fd/{fd}')})"
    except OSError:
        return str(fd)


def work(control: socket.socket, identity: Identity, settings: "Settings", slot: int,
         direct: socket.socket | None, first: tuple[socket.socket, int]) -> None:
    """A worker's life: take ``identity`` once, serve ``first`` (connection, peer pid), then
    one at a time the connections the parent hands over ``control`` and those it accepts at
    its identity's socket ``direct``, telling the parent IDLE after each one it was handed or
    said BUSY for. It ends (ENDING) after ``server.requests_per_worker`` requests, when idle
    ``server.idle_timeout`` seconds, when the parent leaves, or when a request left it changed
    (other ids, descriptors left open)."""
    control = socket.socket(fileno=high(control.detach()))  # above what a request takes
    if direct is not None:
        direct = socket.socket(fileno=high(direct.detach()))
    null = high(os.open(os.devnull, os.O_RDWR))
    keep = set(open_descriptors())  # what the worker started with
    declined: str | None = None
    held = settings.held_identity(identity)
    try:
        take_identity(held)
    except (OSError, Decline) as exc:
        declined = str(exc)
    keep_connections()  # SQL connections stay open from one request to the next

    def run(conn: socket.socket, pid: int) -> bool:
        """Serve one connection; whether the worker is unchanged by it."""
        conn = unix_stream(high(conn.detach()))
        settings.serving(slot)
        serve_one(conn, pid, identity, settings, null)
        conn.close()
        settings.count(slot)
        stray = open_descriptors(keep | kept_descriptors())
        if stray:
            log(settings.log_fd, f"worker ends: a request left descriptors open: "
                                 f"{', '.join(map(describe, stray))}")
        return not stray and is_identity(held)

    if declined is not None:
        log(settings.log_fd, f"declined uid {identity[0]}: {declined}")
        decline(first[0])
        end(control, direct, None)
        return
    waiting = select.poll()
    for sock in (control, direct):
        if sock is not None:
            waiting.register(sock, select.POLLIN)
    taken: tuple[socket.socket, int, bool] | None = (*first, True)
    for served in range(1, settings.requests_per_worker + 1):
        if taken is None:
            try:
                taken = next_connection(control, direct, waiting, identity, settings)
            except Retired as retired:
                end(control, direct, run, keep_queue=not retired.last)
                return
            if taken is None:
                break
        conn, pid, told = taken
        taken = None
        if not told and direct is not None and readable(direct):
            told = say(control, BUSY)
        if not run(conn, pid):
            end(control, direct, None)
            return
        if served == settings.requests_per_worker:
            break
        if told and not say(control, IDLE):
            break  # the server left (end() finds it gone)
    end(control, direct, run)


#: the longest one poll(2) waits, in seconds (its timeout is an int of milliseconds): the
#: idle timeouts may be longer
LONGEST_POLL = 2_000_000


def next_connection(control: socket.socket, direct: socket.socket | None,
                    waiting: "select.poll", identity: Identity,
                    settings: "Settings") -> tuple[socket.socket, int, bool] | None:
    """The next connection to serve: (connection, peer pid, handed by the parent); None when
    idle past ``server.idle_timeout`` or the parent left. The SQL connections kept are closed
    once idle past ``server.sql_idle_timeout``. A connection at the identity's socket from
    anyone else is dropped (its front end runs the program itself). Raises
    :class:`Retired` (:func:`receive`)."""
    now = time.monotonic()
    deadline, close_sql = now + settings.idle_timeout, now + settings.sql_idle_timeout
    while True:
        holding = close_sql < deadline and bool(kept_descriptors())
        until = close_sql if holding else deadline
        events = waiting.poll(min(max(0.0, until - time.monotonic()), LONGEST_POLL) * 1000)
        if not events and time.monotonic() < until:  # a wait longer than poll's
            continue
        if not events and holding:
            drop_kept_connections()
            continue
        if not events:
            return None
        if any(fd == control.fileno() for fd, _ in events):
            handed = receive(control)
            return None if handed is None else (*handed, True)
        assert direct is not None
        try:
            accepted, _ = direct.accept()
        except OSError:  # another worker of the identity took it
            continue
        # blocking already: Linux's accept4 does not pass the listener's O_NONBLOCK on
        known = identify(accepted, settings.log_fd)
        if known is None:
            continue
        pid, peer = known
        if peer != identity:
            log(settings.log_fd, f"dropped pid {pid} uid {peer[0]}: it connected to the socket "
                                 f"of uid {identity[0]} gid {identity[1]}")
            accepted.close()
            continue
        return accepted, pid, False


class Retired(Exception):
    """The parent retired this worker (:data:`RETIRE`); ``last``: the identity's last one
    (:data:`RETIRE_LAST`)."""

    def __init__(self, last: bool) -> None:
        super().__init__()
        self.last = last


def receive(control: socket.socket) -> tuple[socket.socket, int] | None:
    """The connection the parent hands over and its peer's pid; None when it left. Raises
    :class:`Retired` when it retires this worker."""
    try:
        data, ancillary, flags, _ = control.recvmsg(4, socket.CMSG_SPACE(4),
                                                    socket.MSG_CMSG_CLOEXEC)
    except OSError:
        return None
    fds = [int.from_bytes(payload[:4], sys.byteorder) for level, kind, payload in ancillary
           if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS]
    if data in (RETIRE, RETIRE_LAST) and not fds and not flags & socket.MSG_CTRUNC:
        raise Retired(data == RETIRE_LAST)
    if not data or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    return unix_stream(fds[0]), int.from_bytes(data, sys.byteorder, signed=True)


def unix_stream(fd: int) -> socket.socket:
    """A socket object for ``fd``, a connection to the server's or an identity's socket
    (named, the kernel is not asked its type and protocol: two system calls less)."""
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)


def events_now(sock: socket.socket) -> int:
    """The poll events ``sock`` has now (readable, hung up), without waiting; 0: none."""
    probe = select.poll()
    probe.register(sock, select.POLLIN)
    return sum(events for _, events in probe.poll(0))  # one descriptor: one entry at most


def readable(sock: socket.socket) -> bool:
    return bool(events_now(sock))


def say(control: socket.socket, what: bytes) -> bool:
    """Tell the parent ``what``; False when it is gone."""
    try:
        control.send(what)
    except OSError:
        return False
    return True


def decline(conn: socket.socket) -> None:
    """Tell the front end to run the program itself."""
    with contextlib.suppress(OSError):
        reply(conn, DECLINE)
    conn.close()


def decline_queued(listener: socket.socket) -> None:
    """Decline every connection waiting at ``listener`` (a non-blocking one)."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # none left (or EMFILE: they are reset as the listener closes)
            return
        decline(conn)


def end(control: socket.socket, direct: socket.socket | None,
        run: "Callable[[socket.socket, int], bool] | None", keep_queue: bool = False) -> None:
    """Say ENDING, then, until the parent closes the control socket, serve (``run``, while
    the worker is unchanged) or decline what it handed over before it heard. With the
    parent gone (stopped, reloading, killed) no one takes over the callers queued at the
    identity's socket ``direct``: they are declined (their front ends run the program),
    not reset (a piped input could not be run again: 111). A worker the parent retired
    while others of its identity remain (``keep_queue``: it closed the control socket
    first, but is there) leaves them to those."""
    gone = not say(control, ENDING)
    while True:
        try:
            handed = receive(control)
        except Retired as retired:
            keep_queue = not retired.last
            continue
        if handed is None:
            break
        if run is None:
            decline(handed[0])
        elif not run(*handed):
            run = None
    if gone and not keep_queue and direct is not None:
        decline_queued(direct)


class Settings:
    """What a worker needs of the server: small values, fixed at the server's start."""

    def __init__(self, settings: vconfig.Config, config: str | None) -> None:
        import resource

        self.config = config
        self.workers = settings.server_workers
        self.requests_per_worker = settings.server_requests_per_worker
        self.idle_timeout = settings.server_idle_timeout
        self.sql_idle_timeout = settings.server_sql_idle_timeout
        self.timeout = settings.server_request_timeout
        #: serve callers in another mount namespace or root directory (server.sandboxed_callers)
        self.sandboxed = settings.server_sandboxed_callers
        self.smtp_auth_callers = settings.smtp_auth_callers()
        #: whose HTTP lookups are served (Dovecot 2.4's Lua passdb and userdb)
        self.dovecot_callers = settings.dovecot_callers()
        #: those of them served with the vpopmail user's rights, for lookups alone
        self.lookup_only_callers = (self.dovecot_callers - self.smtp_auth_callers
                                    - {0, settings.uid})
        #: whom the workers of both kinds of listed callers become: the vpopmail user (its
        #: group alone, as qmail-local runs it) under a root server, else the server's own
        self.smtp_auth_identity: Identity = (
            (settings.uid, settings.gid, (settings.gid,)) if os.geteuid() == 0
            else (os.getuid(), os.getgid(), tuple(sorted(os.getgroups()))))
        #: server.request_timeout as SO_RCVTIMEO's struct timeval: the request is read from
        #: a blocking socket, one system call a read (a Python timeout polls before each);
        #: 0 (no waiting, as the parent takes it) is 1 ms, not SO_RCVTIMEO's "for ever"
        seconds = settings.server_request_timeout
        self.receive_timeout = struct.pack("@ll", seconds, 0 if seconds else 1000)
        self.log_fd = log_descriptor()
        #: the server's environment (but for what a reload tells the process it becomes:
        #: RELOAD_PREFIX) and soft file-size limit: a lookup's (:func:`own_stage`)
        self.environment = {name: value for name, value in posix.environ.items()
                            if not name.startswith(RELOAD_PREFIX.encode())}
        self.file_size = resource.getrlimit(resource.RLIMIT_FSIZE)[0] & INFINITY
        self.started = time.time()
        #: shared: the parent writes COUNTERS, each worker its own slot's count after them
        self.counters = mmap.mmap(-1, COUNTERS.size + SLOT.size * self.workers)

    def held_identity(self, identity: Identity) -> Identity:
        """The identity a worker for callers of ``identity`` holds: theirs, or for
        server.smtp_auth_callers and the server.dovecot_callers other than root and the
        vpopmail user, the vpopmail user's."""
        lent = identity[0] in self.smtp_auth_callers or identity[0] in self.lookup_only_callers
        return self.smtp_auth_identity if lent else identity

    def _slot(self, slot: int) -> tuple[int, int]:
        """(offset, count) of ``slot`` in the shared counters."""
        offset = COUNTERS.size + SLOT.size * slot
        count: int = SLOT.unpack_from(self.counters, offset)[0]
        return offset, count

    def serving(self, slot: int) -> None:
        """The worker holding ``slot`` (its only writer) starts serving a request."""
        offset, count = self._slot(slot)
        SLOT.pack_into(self.counters, offset, count, 1)

    def count(self, slot: int) -> None:
        """One more request served by the worker holding ``slot``; it serves none now."""
        offset, count = self._slot(slot)
        SLOT.pack_into(self.counters, offset, count + 1, 0)

    def is_serving(self, slot: int) -> bool:
        """Whether the worker holding ``slot`` is serving a request (read by the parent)."""
        flag: int = SLOT.unpack_from(self.counters, COUNTERS.size + SLOT.size * slot)[1]
        return flag == 1

    def take_count(self, slot: int) -> int:
        """``slot``'s count, the slot cleared (by the parent, once its worker is gone)."""
        offset, count = self._slot(slot)
        SLOT.pack_into(self.counters, offset, 0, 0)
        return count

    def status(self) -> str:
        """The state as the parent last published it and the workers counted (read in a
        worker)."""
        collected, workers, waiting = COUNTERS.unpack_from(self.counters)
        served = collected + sum(count for count, _ in SLOT.iter_unpack(
            self.counters[COUNTERS.size:]))
        return (f"pid {os.getppid()}, up {int(time.time() - self.started)} s, "
                f"{served} request{'s' * (served != 1)}, {workers} of {self.workers} workers, "
                f"{waiting} waiting, up to {self.requests_per_worker} "
                f"request{'s' * (self.requests_per_worker != 1)} a worker\n")
