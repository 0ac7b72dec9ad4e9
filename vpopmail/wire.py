"""The front ends' protocol with vpopmail-server (frontend/frontend.c holds the same text),
and what a client of it needs: asking the server's state, telling our front ends by their
identity string.

Protocol version 2 (frontend/frontend.c holds the same text). Integers are unsigned 32-bit
(nice signed, resource limits 64-bit) in host byte order: both ends run on the same machine.

    request  = "VPSq" version:u8 program:u8 nfds:u8 0:u8 length:u32   (12 bytes; the nfds
               descriptors 0,1,2 (and 3 for vchkpw) ride on it as SCM_RIGHTS)
               then ``length`` bytes: umask argc envc nice:i32, then the 16 resource limits
               of Linux by number (RLIMIT_CPU 0 .. RLIMIT_RTTIME 15) as cur:u64 max:u64,
               then NUL-terminated strings: cwd, argc arguments, envc "NAME=value" entries.
               program: 0 status, 1 vdelivermail, 2 vchkpw. Bounds: argc <= 1024, argument
               bytes <= 128 KiB, environment bytes <= 64 KiB, envc <= 4096, length <= 256 KiB.
    reply    = "VPSr" version:u8 kind:u8 0:u16 length:u32 then ``length`` (<= 256 KiB) bytes:
       kind 1 EXIT     code:u32 (0..255)
       kind 2 PLAN     change:u32 uid gid ngroups(<=256) argc envc, ngroups gids, then
                       NUL-terminated strings: path, cwd ("" = stay), argc args, envc env
       kind 3 DECLINE  (nothing read or run: a busy, foreign-version or unable server)
       kind 4 STATUS   text

A front end connects first to its identity's socket (:func:`identity_socket`), where the
workers holding that identity accept it, then to the server's socket; the protocol is the same.

A worker declines (the front end then runs the Python program itself) when it cannot take the
peer's identity (a server not running as root serving another user) or enter its directory.
Garbage, a version mismatch, wrong descriptor counts or oversized requests drop the client
with one log line on stderr; the server goes on.
"""
import os
import resource
import socket
import struct
import time

VERSION = 2
#: what frontend.c's vps_ident starts with (packaging/install tells its front ends by it too)
FRONTEND_IDENT = b"pyvpopmail front end"
STATUS, VDELIVERMAIL, VCHKPW = 0, 1, 2
#: program -> the descriptors its front end sends
NFDS = {STATUS: 0, VDELIVERMAIL: 3, VCHKPW: 4}
EXIT, PLAN, DECLINE, STATUS_REPLY = 1, 2, 3, 4
HEADER = struct.Struct("=4sBBBxI")
#: Linux's resource limits, by number: RLIMIT_CPU (0) .. RLIMIT_RTTIME (15)
LIMITS = 16
#: a caller's nice value and its resource limits by number, each (cur, max), 2**64 - 1 for
#: RLIM_INFINITY: as a request carries them, and as the programs a delivery runs get them
CallerLimits = tuple[int, tuple[tuple[int, int], ...]]
#: RLIM_INFINITY as a request carries it (the resource module says -1)
INFINITY = 2**64 - 1
BODY = struct.Struct(f"=IIIi{2 * LIMITS}Q")
PLAN_HEAD = struct.Struct("=IIIIII")
MAX_ARGS, MAX_ARG_BYTES = 1024, 128 * 1024
MAX_ENV, MAX_ENV_BYTES = 4096, 64 * 1024
MAX_MESSAGE = 256 * 1024
#: the first read of a request (bytes; the rest of a longer one is read after it)
FIRST_READ = 16 * 1024
#: socket.MSG_CTRUNC as a plain int: ``int & MsgFlag`` runs enum's Python code (1.4 us)
MSG_CTRUNC = int(socket.MSG_CTRUNC)


def to_rlimit(value: int) -> int:
    """A resource limit as a request carries it, as the resource module takes it: from
    2**63 on (no finite limit is that large) RLIM_INFINITY."""
    return resource.RLIM_INFINITY if value >= 2**63 else value


class Drop(Exception):
    """The client is dropped with this one-line reason."""


class Decline(Exception):
    """The client is told to run the program itself (nothing of its request was used)."""


def reply(conn: socket.socket, kind: int, payload: bytes = b"") -> None:
    conn.sendall(HEADER.pack(b"VPSr", VERSION, kind, 0, len(payload)) + payload)


def recv_exact(conn: socket.socket, size: int, deadline: float | None = None) -> bytes:
    """``size`` bytes from ``conn``; with ``deadline`` (time.monotonic's) all of them by then
    (TimeoutError), however the peer trickles them."""
    data = bytearray()
    while len(data) < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            conn.settimeout(left)
        chunk = receive(conn, min(size - len(data), 65536))
        if not chunk:
            raise Drop(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def receive(conn: socket.socket, size: int) -> bytes:
    """``conn.recv(size)``; a receive timeout (SO_RCVTIMEO, which a blocking socket reports as
    EAGAIN) is Drop("timed out")."""
    try:
        return conn.recv(size)
    except BlockingIOError:
        raise Drop("timed out") from None


class Request:
    """One parsed request; ``fds`` are the received descriptors (close-on-exec, unplaced)."""

    def __init__(self, program: int, fds: list[int], body: bytes) -> None:
        self.program = program
        self.fds = fds
        self.umask, argc, envc, self.nice = 0, 0, 0, 0
        #: the caller's resource limits, (cur, max) by number (RLIM_INFINITY as 2**64 - 1)
        self.limits: tuple[tuple[int, int], ...] = ()
        self.cwd = b"/"
        self.argv: list[bytes] = []
        self.env: list[bytes] = []
        if program == STATUS:
            return
        if len(body) < BODY.size:
            raise Drop("request body too short")
        self.umask, argc, envc, self.nice, *limits = BODY.unpack_from(body)
        self.limits = tuple(zip(limits[::2], limits[1::2]))
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


def read_request(conn: socket.socket, deadline: float | None = None) -> Request:
    """The request on ``conn``; Drop for anything malformed (its descriptors closed). A front
    end sends the header, its descriptors and the body with one sendmsg: one read takes a
    request of up to FIRST_READ bytes whole. With ``deadline`` (time.monotonic's) the rest of
    a longer one must have come by then (TimeoutError), however the peer trickles it."""
    fds: list[int] = []
    try:
        try:
            data, ancillary, flags, _ = conn.recvmsg(FIRST_READ, socket.CMSG_SPACE(4 * 4),
                                                     socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            raise Drop("timed out") from None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds.extend(struct.unpack(f"={usable // 4}i", payload[:usable]))
        if flags & MSG_CTRUNC:
            raise Drop("too many descriptors")
        if not data:
            raise Drop("connection closed before a request")
        if len(data) < HEADER.size:
            data += recv_exact(conn, HEADER.size - len(data), deadline)
        magic, version, program, nfds, length = HEADER.unpack_from(data)
        if magic != b"VPSq":
            raise Drop("not a vpopmail-server request")
        if version != VERSION:
            reply(conn, DECLINE)
            raise Drop(f"protocol version {version}, not {VERSION}")
        if program not in NFDS or nfds != NFDS[program] or len(fds) != nfds:
            raise Drop(f"program {program} with {len(fds)} descriptors")
        if length > MAX_MESSAGE:
            raise Drop(f"request of {length} bytes")
        body = data[HEADER.size:HEADER.size + length]
        if len(body) < length:
            body += recv_exact(conn, length - len(body), deadline)
        if deadline is not None and len(data) < HEADER.size + length:
            conn.settimeout(None)  # blocking again, as it came, for the reply
        return Request(program, fds, body)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def front_end_socket(path: str) -> str | None:
    """The server socket the C front end at ``path`` was built for, as frontend.c's identity
    carries it (VPS_SOCKET: relative to the installation unless absolute; "" from a front end
    built before it said); None when ``path`` is not one of ours."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(4 << 20)  # a static build is ~0.8 MiB
    except OSError:
        return None
    start = data.find(FRONTEND_IDENT)
    if start < 0:
        return None
    end = data.find(b"\0", start)
    ident = data[start:len(data) if end < 0 else end]
    return os.fsdecode(ident.partition(b", socket ")[2])


def front_ends_built(home: str) -> dict[str, str]:
    """Of ``home``'s bin/vdelivermail and bin/vchkpw, those that are our C front ends: name ->
    the server socket each was built for, normalized, a relative one under ``home`` ("" where
    it does not say: built before front ends did)."""
    built = {}
    for name in ("vdelivermail", "vchkpw"):
        socket = front_end_socket(os.path.join(home, "bin", name))
        if socket is not None:
            built[name] = os.path.normpath(os.path.join(home, socket)) if socket else ""
    return built


def stale_front_ends(built: dict[str, str], path: str) -> str | None:
    """What :func:`front_ends_built`'s ``built`` says when some were built for another socket
    than ``path`` (the configured one, where no request of theirs comes); None when none
    were."""
    path = os.path.normpath(path)
    stale = {name: socket for name, socket in built.items() if socket and socket != path}
    if not stale:
        return None
    return (f"{' and '.join(f'bin/{name}' for name in stale)} "
            f"{'were' if len(stale) > 1 else 'was'} built for "
            f"{', '.join(sorted(set(stale.values())))}, not {path} (paths.server_socket): no "
            f"delivery or login through {'them' if len(stale) > 1 else 'it'} reaches the server "
            f"there, the Python programs run instead")


def server_uid(home: str) -> int | None:
    """The uid the installation at ``home`` builds its front ends to accept as the server's
    (VPS_SERVER_UID): its installer's, who owns ``bin/`` (root; a sandbox's user). None when
    ``bin/`` cannot be looked at."""
    try:
        return os.stat(os.path.join(home, "bin")).st_uid
    except OSError:
        return None


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of ``sock``, as the kernel recorded
    them at connect (SO_PEERCRED)."""
    pid, uid, gid = struct.unpack("=iII", sock.getsockopt(socket.SOL_SOCKET,
                                                          socket.SO_PEERCRED, 12))
    return pid, uid, gid


class NoAnswer(Exception):
    """A server listens but did not answer in time."""


class OtherProtocol(Drop):
    """The server at the socket speaks another protocol version: one started before an
    upgrade (it declines every request: the front ends run the Python programs)."""

    def __init__(self, pid: int, version: int) -> None:
        super().__init__(f"pid {pid} speaks protocol version {version}, not {VERSION}: a "
                         f"server started before an upgrade (reload it: SIGHUP)")
        self.pid = pid


class Stranger(Drop):
    """The listener at the socket runs as another uid than the server's: not our server."""

    def __init__(self, pid: int, uid: int) -> None:
        super().__init__(f"the listener (pid {pid}) runs as uid {uid}")
        self.pid, self.uid = pid, uid


#: what the front ends do meanwhile (--status and vcheck say it)
NO_ANSWER_MEANS = ("the front ends wait for it, up to server.reply_timeout: then a caller it "
                   "took answers 111, one it did not take runs the Python program")


#: how long (seconds) ``vpopmail-server --status`` and vcheck wait for the server's answer
STATUS_WAIT = 10


def ask_status(path: str, wait: float = STATUS_WAIT, uid: int | None = None
               ) -> tuple[int, str]:
    """(pid, state) of the server at ``path``: the pid that listens there (as the kernel
    recorded it: SO_PEERCRED) and the state it reports; OSError or Drop when none
    answers there (OtherProtocol: one of another protocol version; Stranger: with ``uid``, a
    listener of another uid, which is sent nothing), NoAnswer when its whole answer did not
    come within ``wait`` seconds (a worker of the asker's identity answers: every worker is
    busy, or the server is stopped or stuck), or its listen queue is full."""
    deadline = time.monotonic() + wait  # for the whole answer: a trickle cannot hold us
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(wait)
    try:
        try:
            sock.connect(path)
        except BlockingIOError:  # a listener whose queue is full: callers wait at connect
            raise NoAnswer("its queue of waiting callers is full") from None
        pid, peer_uid, _ = peer_credentials(sock)
        if uid is not None and peer_uid != uid:
            raise Stranger(pid, peer_uid)
        sock.sendall(HEADER.pack(b"VPSq", VERSION, STATUS, 0, 0))
        try:
            magic, version, kind, _, length = HEADER.unpack(
                recv_exact(sock, HEADER.size, deadline))
            if magic == b"VPSr" and kind == DECLINE and version != VERSION:
                raise OtherProtocol(pid, version)
            if magic != b"VPSr" or kind != STATUS_REPLY or length > MAX_MESSAGE:
                raise Drop("unexpected reply")
            text = recv_exact(sock, length, deadline)
        except TimeoutError:
            raise NoAnswer(f"pid {pid} took the connection but did not answer within "
                           f"{wait:g} s") from None
        return pid, text.decode("utf-8", "replace")
    finally:
        sock.close()


def identity_socket(path: str, uid: int, gid: int, groups: "tuple[int, ...]") -> str | None:
    """Where the workers that hold one caller identity accept its connections themselves,
    beside the server's socket ``path`` (frontend.c's identity_path names it the same way):
    ``path.HASH``, HASH the 64-bit FNV-1a of uid, gid and the sorted groups as 32-bit
    host-order values, in hex; None when that is too long for a socket address."""
    digest = 0xCBF29CE484222325
    for byte in struct.pack(f"=II{len(groups)}I", uid, gid, *sorted(groups)):
        digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    named = f"{path}.{digest:016x}"
    return named if len(os.fsencode(named)) < 108 else None
