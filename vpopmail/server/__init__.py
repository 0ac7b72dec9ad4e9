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
when the parent leaves; idle for ``server.sql_idle_timeout`` seconds, it closes the SQL
connections it keeps between requests. At most ``server.workers`` workers live; an idle one of
another identity is retired to make room, and connections wait in order.

An identity also gets a socket of its own with its first worker (``server.sock.HASH``,
:func:`vpopmail.wire.identity_socket`; made by the parent in its own directory, mode 0600 and
owned by that uid): the front ends connect there first, and the identity's workers accept
there themselves, checking each peer's credentials as the parent does, so a request skips
the parent. A worker that finds more connections queued there says BUSY and the parent takes
one (forking another worker if there is room); each worker also marks in shared memory
whether it is serving, and while one is the parent looks every 50 ms for callers queued at an
identity's socket none of whose workers is free, so a long request does not hold up the
identity's next ones. The socket is removed with the identity's last worker and what was
queued at it goes the parent's way; when the parent stops, reloads or dies, what still waits
(in it or at a socket) is declined: the front ends run the Python programs (at a reload, the
callers already taken are served first, and the lookup socket stays open across the exec). What a worker
keeps from one request to the next (the configuration, cdb lookups, a limits file's parse,
maildirsize's sums, the SQL connections) is checked at every request (a file's status: inode,
size, times, mode, owner; or its bytes), so an admin change is seen by the very next delivery
or login.

vchkpw runs the next program in its own process, so for it the worker returns an exec plan
(the ids, directory, argv and environment the Python vchkpw would have exec'd with) and the
front end does setgroups/setgid/setuid, chdir and execve.

Dovecot 2.4, which has no checkpassword driver, asks the server over HTTP on a socket of
its own (``paths.lookup_socket``; its Lua passdb and userdb, as the users of
``server.dovecot_callers`` only; some workers are kept for them): a worker
runs vchkpw as Dovecot 2.3's driver ran it and answers with what it decided
(:mod:`.lookup`).

The parts: :mod:`vpopmail.wire` (the protocol), :mod:`.parent`, :mod:`.worker`, :mod:`.lookup`.
"""
import sys

from vpopmail import config as vconfig
from vpopmail.errors import VpopmailError
from vpopmail.server.parent import Server, check_start, holder
from vpopmail.wire import (NO_ANSWER_MEANS, STATUS_WAIT, Drop, NoAnswer, OtherProtocol,
                           Stranger, ask_status, front_ends_built, server_uid,
                           stale_front_ends)


def status(path: str, wait: float = STATUS_WAIT, uid: int | None = None,
           home: str | None = None) -> int:
    """``--status``: ask the server at ``path`` for its state (with ``uid``, only a listener
    of that uid is asked: the front ends refuse any other); with ``home``, say so when its
    front ends were built for another socket (they never come here)."""
    try:
        text = ask_status(path, wait, uid)[1]
    except Stranger as exc:
        print(f"vpopmail-server is not what listens on {path}: {exc}, not {uid}; the front "
              f"ends refuse it (every delivery and login answers 111) until it is stopped")
        return 1
    except NoAnswer as exc:
        print(f"vpopmail-server on {path} is not answering: {exc} (every worker busy, or the "
              f"server stopped or stuck); {NO_ANSWER_MEANS}")
        return 1
    except OtherProtocol as exc:
        print(f"vpopmail-server on {path} is of another protocol version: {exc}; until then "
              f"the front ends run the Python programs directly")
        return 1
    except (OSError, Drop) as exc:
        print(f"vpopmail-server is down ({path}: {exc}); the front ends run the Python "
              f"programs directly")
        return 1
    print(f"vpopmail-server is up on {path}: {text}", end="")
    stale = stale_front_ends(front_ends_built(home), path) if home is not None else None
    if stale:
        print(f"but {stale}: run packaging/install again")
    return 0


def run(config: str | None, action: str = "serve") -> int:
    """Serve until stopped once :func:`check_start` passes, or (``action``) "status": report
    whether a server is up, "check": whether one would start (:func:`check_start` alone); the
    exit status. bin/vpopmail-server (vpopmail.cli.vpopmail_server) parses the command line."""
    try:
        settings = vconfig.load(config)
        if action == "status":
            return status(settings.home_path("server_socket"), uid=server_uid(settings.home),
                          home=settings.home)
        check_start(settings)
        if action == "check":
            path = settings.home_path("server_socket")
            pid = holder(path)
            print("vpopmail-server: the code and configuration load; " + (
                f"it would listen on {path}" if pid is None else
                f"a server (pid {pid}) already listens on {path}: a "
                f"reload (SIGHUP) starts with them, a second start would be refused"))
            return 0
        return Server(settings, config).serve()
    except VpopmailError as exc:
        print(f"vpopmail-server: {exc}", file=sys.stderr)
        return 111
