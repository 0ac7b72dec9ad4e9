"""An installed vpopmail-server whose workers time the phases of each request (measurement
only; bench/bench_sqlgap.py --probe starts it).

    PYTHON -IS bench/sqlgap_probe.py PREFIX SITE_PACKAGES LOG

PYTHON, PREFIX and SITE_PACKAGES as in PREFIX/bin/vpopmail-server. The functions below are
wrapped before the server starts (its workers are forks); after each request a worker appends
to LOG one line: its pid, then name=nanoseconds/calls for each wrapped function called
(inclusive times), and the pieces of each SQL statement (building it, the round trip of
handle.query, store_result, fetching and decoding the rows). Wrappers for what a tree lacks
are left out, so any tree of the project can be probed.
"""
import os
import sys
import time

prefix, site, log_path = sys.argv[1:4]
sys.path[:0] = [f"{prefix}/lib/pyvpopmail"]
sys.path.append(site)
import vpopmail  # noqa: E402

vpopmail.restore_environ()
vpopmail.use_bytecode()

import posix  # noqa: E402

import delivery.vdelivermail as vd  # noqa: E402
import maildir.maildir as mdir  # noqa: E402
from delivery.message import Message  # noqa: E402
from vpopmail import assign, stores  # noqa: E402
from vpopmail import config as vconfig  # noqa: E402
from vpopmail.server import worker  # noqa: E402
from vpopmail.stores import cdbfiles, sql  # noqa: E402

ns = time.perf_counter_ns
times: dict[str, list[int]] = {}
LOG = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def add(key: str, spent: int) -> None:
    slot = times.setdefault(key, [0, 0])
    slot[0] += spent
    slot[1] += 1


def wrap(owner: object, name: str) -> None:
    original = getattr(owner, name)
    key = f"{getattr(owner, '__name__', owner)}.{name}"
    static = isinstance(owner, type) and isinstance(owner.__dict__.get(name), staticmethod)

    def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
        start = ns()
        try:
            return original(*args, **kwargs)
        finally:
            add(key, ns() - start)

    setattr(owner, name, staticmethod(timed) if static else timed)


def wrap_property(owner: type, name: str) -> None:
    getter = owner.__dict__[name].fget
    key = f"{owner.__name__}.{name}"

    def timed(self):  # type: ignore[no-untyped-def]
        start = ns()
        try:
            return getter(self)
        finally:
            add(key, ns() - start)

    setattr(owner, name, property(timed))


def _run(self, handle, text, params):  # type: ignore[no-untyped-def]
    """Connection._run's steps (any tree's), each timed."""
    t0 = ns()
    pieces = text.encode().split(b"%s")
    statement = pieces[0] + b"".join(self.literal(handle, p) + piece
                                     for p, piece in zip(params, pieces[1:]))
    t1 = ns()
    self.answer_pending = True
    handle.query(statement)
    t2 = ns()
    result = handle.store_result()
    self.answer_pending = False
    t3 = ns()
    rows = [] if result is None else [
        tuple(None if v is None else v.decode("utf-8", "surrogateescape") for v in row)
        for row in result.fetch_row(0)]
    add("sql.build", t1 - t0)
    add("sql.round_trip(handle.query)", t2 - t1)
    add("sql.store_result", t3 - t2)
    add("sql.fetch_and_decode", ns() - t3)
    return rows


sql.Connection._run = _run  # type: ignore[method-assign]
for owner, names in (
        (worker, ["serve_one", "read_request", "confine", "set_stage", "run_request",
                  "clear_stage", "reply"]),
        (vconfig, ["load"]),
        (vd, ["open_stores", "close_stores"]),
        (vd.Vdelivermail, ["__init__", "run", "check_loop", "_deliver", "process_valias",
                           "_find_user", "check_user", "_ensure_home", "run_dotqmail",
                           "deliver_maildir", "inject_forwards"]),
        (assign, ["lookup"]),
        (Message, ["from_fd"]),
        (mdir, ["write_tmp", "write_message", "link_new", "fsync_dir"]),
        (posix, ["fsync"]),
        (sql.MySQLDatabase, ["__init__", "read", "read_with_user", "get_user", "release"]),
        (sql.Connection, ["open", "query", "release"]),
        (sql.SqlAliases, ["select_lines", "select_with_user"]),
        (cdbfiles.CdbFiles, ["__init__", "get_user"])):
    for name in names:
        if hasattr(owner, name):
            wrap(owner, name)
for name in ("valias", "users"):
    if isinstance(stores.Stores.__dict__.get(name), property):
        wrap_property(stores.Stores, name)

timed_serve = worker.serve_one


def serve_one(*args, **kwargs):  # type: ignore[no-untyped-def]
    times.clear()
    try:
        return timed_serve(*args, **kwargs)
    finally:
        fields = " ".join(f"{key}={spent}/{calls}" for key, (spent, calls) in times.items())
        os.write(LOG, f"{os.getpid()} {fields}\n".encode())


worker.serve_one = serve_one
from vpopmail.cli.vpopmail_server import main  # noqa: E402

del sys.argv[1:]
sys.exit(main(config=f"{prefix}/etc/vpopmail.toml"))
