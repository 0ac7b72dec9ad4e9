"""Benchmark: the SQL backend against the cdb files in a warm process, as a vpopmail-server
worker runs them (no IPC, no fork: where the SQL backend's own excess shows).

    .venv/bin/python bench/bench_sqlwarm.py [--rounds 5] [--count 400] [--code DIR ...]

Run as root. Installs pyvpopmail into bench/work/sqlwarm (example.com, alice with a 100G quota,
bob with an MD5-crypt password), starts a private MariaDB (tests/mariadb_site.py's server, as
bench_server.py) and copies the users into it. Then, in a child process per row that keeps its
SQL connections (vpopmail.stores.keep_connections) as a worker does: a login (bob, credentials
on fd 3, the server's exec plan instead of the exec) and a 4 KB delivery to alice without
fsync (uid 89, the message on a seekable stdin), ``--count`` of each after 20 to warm up, one
on the cdb files and one on the SQL backend in turn (the order alternating), so both sides see
the same moment of a busy machine: the medians of each and the median of the per-pair
differences. ``--code``: checkouts to run (default: this one), interleaved, for a before/after
(``git archive REV | tar -x -C DIR``). Also the statements one warm login and one delivery
send (the server's general log). Prints its figures; writes nothing in bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from bench_delivery import message as write_message, qmail_local_env  # noqa: E402
from common import POP_ENV, REPO, WORK, install, owner, private_mariadb, sql_config  # noqa: E402
from common import sql_copy_users  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:
    from mariadb_site import Database

HERE = WORK / "sqlwarm"
DOMAIN = "example.com"


def setup(database: "Database") -> None:
    """The site, the configs (files and SQL, fsync off), the message and the credentials."""
    user, group, uid, gid = owner()
    prefix = install(HERE, user, group)
    bin_dir = prefix / "bin"
    config = prefix / "etc" / "vpopmail.toml"
    files = HERE / "cdb.toml"
    files.write_text(config.read_text().replace('scheme = "sha512-crypt"', 'scheme = "md5-crypt"')
                     .replace("file_sync = true", "file_sync = false"))
    for argv in (["vadddomain", DOMAIN, "pm-secret"], ["vadduser", f"alice@{DOMAIN}", "pw"],
                 ["vsetuserquota", f"alice@{DOMAIN}", "100G"],
                 ["vadduser", f"bob@{DOMAIN}", "pw"]):
        subprocess.run([str(bin_dir / argv[0]), *argv[1:]], check=True, capture_output=True,
                       env={"PATH": "/usr/bin:/bin", "VPOPMAIL_CONFIG": str(files)})
    sql = sql_config(prefix, database, files, HERE / "sql.toml")
    sql_copy_users(prefix, sql)
    write_message(4096, HERE)
    (HERE / "fd3").write_bytes(b"bob@example.com\0pw\0\0")
    subprocess.run(["chown", "-R", f"{user}:{group}", str(prefix / "domains")], check=True)
    os.chown(HERE, uid, gid)  # the configs' marshal caches are written beside them


def child(code: str, what: str, count: int) -> None:
    """One row, in this process: ``count`` pairs of requests; prints a line of figures."""
    sys.path[:0] = [code]
    for name in [m for m in sys.modules if m.split(".")[0] in ("vpopmail", "auth", "delivery",
                                                                "maildir")]:
        del sys.modules[name]
    from auth.vchkpw import main as login
    from delivery.vdelivermail import main as deliver
    from vpopmail.server.worker import ExecPlan, plan_class
    from vpopmail.stores import keep_connections

    keep_connections()
    configs = {"cdb": str(HERE / "cdb.toml"), "sql": str(HERE / "sql.toml")}
    credentials = (HERE / "fd3").read_bytes()
    domain_dir = HERE / "vpopmail" / "domains" / DOMAIN
    message = os.open(HERE / "msg4096", os.O_RDONLY)
    maildir = domain_dir / "alice" / "Maildir"

    def one_login(config: str) -> None:
        read, write = os.pipe()
        os.write(write, credentials)
        os.close(write)
        if read != 3:
            os.dup2(read, 3)
            os.close(read)
        os.environ.clear()
        os.environ.update(POP_ENV)
        try:
            code = login(["vchkpw", "/bin/true"], config=config, runner=plan_class())
            raise SystemExit(f"vchkpw exit {code}")
        except ExecPlan:
            pass
        os.chdir("/")

    def one_delivery(config: str) -> None:
        os.lseek(message, 0, os.SEEK_SET)
        os.dup2(message, 0)
        os.environ.clear()
        os.environ.update(qmail_local_env(domain_dir))
        os.chdir(domain_dir)
        if deliver(["", "bounce-no-mailbox"], config=config) != 0:
            raise SystemExit("delivery failed")
        os.chdir("/")

    def clean() -> None:
        for sub in ("new", "cur", "tmp"):
            for entry in os.scandir(maildir / sub):
                os.unlink(entry.path)

    run = one_login if what == "login" else one_delivery
    if what == "delivery":
        os.setgid(owner()[3])
        os.setuid(owner()[2])
        clean()
    for _ in range(20):
        run(configs["cdb"])
        run(configs["sql"])
    times: dict[str, list[float]] = {"cdb": [], "sql": []}
    differences = []
    for i in range(count):
        took = {}
        for backend in ("cdb", "sql") if i % 2 else ("sql", "cdb"):
            start = time.perf_counter()
            run(configs[backend])
            took[backend] = time.perf_counter() - start
            times[backend].append(took[backend])
        differences.append(took["sql"] - took["cdb"])
        if what == "delivery" and i % 200 == 199:
            clean()
    if count:
        print(" ".join(f"{statistics.median(values) * 1000:.3f}"
                       for values in (times["cdb"], times["sql"], differences)))


def statements(database: "Database", code: str, what: str) -> str:
    """The statements and new connections of a request (the server's general log, which has no
    pings; the session set-up left out): the mean of a child's 20 warm-up requests on SQL."""
    server = database.server
    server.sql("SET GLOBAL log_output = 'TABLE'; TRUNCATE mysql.general_log")
    server.sql("SET GLOBAL general_log = 1")
    try:
        subprocess.run([sys.executable, __file__, "--child", code, what, "0"], check=True,
                       capture_output=True)
    finally:
        server.sql("SET GLOBAL general_log = 0")
    kinds = Counter("new connection" if kind == "Connect" else " ".join(sql.split()[:2])
                    for kind, sql in server.rows(
                        "SELECT command_type, argument FROM mysql.general_log WHERE "
                        "command_type IN ('Connect', 'Query') AND argument NOT LIKE 'root@%' "
                        "AND user_host NOT LIKE 'root%'")
                    if not sql.startswith("SET "))
    return ", ".join(f"{kind} x{count / 20:g}" for kind, count in kinds.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--code", action="append", help="a checkout to run (repeatable)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    codes = args.code or [str(REPO)]
    with private_mariadb() as database:
        setup(database)
        results: dict[tuple[str, str], list[list[float]]] = {}
        for _ in range(args.rounds):
            for what in ("login", "delivery"):
                for code in codes:
                    out = subprocess.run([sys.executable, __file__, "--child", code, what,
                                          str(args.count)], check=True, stdout=subprocess.PIPE,
                                         text=True).stdout
                    results.setdefault((code, what), []).append([float(x) for x in out.split()])
        for (code, what), rows in results.items():
            cdb, sql, diff = (statistics.median(column) for column in zip(*rows))
            print(f"{code}: {what}: cdb {cdb:.3f} ms, SQL {sql:.3f} ms, SQL - cdb (paired) "
                  f"{diff:+.3f} ms (medians of {len(rows)} rounds of {args.count})")
        for code in codes:
            for what in ("login", "delivery"):
                print(f"{code}: statements of a {what}: {statements(database, code, what)}")
    shutil.rmtree(HERE, ignore_errors=True)


if __name__ == "__main__":
    main()
