"""Benchmark: what the SQL backend adds to a 4 KB delivery through the C front end and
vpopmail-server, against the cdb files, for one or more source trees (before/after).

    .venv/bin/python bench/bench_sqlgap.py [--rounds 31] [--loop 100] [--nosync]
                                           [--query-cache] [--probe] LABEL=TREE ...

Run as root. Each TREE (a source checkout: this one, or ``git archive COMMIT`` unpacked) is
installed by its own packaging/install into bench/work/sqlgap/LABEL (example.com, alice with
a 100G quota), with its own database on one private MariaDB (bench/common.py's) holding the
same users, and its own vpopmail-server. Each round runs every (tree, backend) row once, a
shell loop of --loop deliveries as bench/bench_server.py runs them (qmail-local's
environment, uid 89, the message on a seekable file), the rows in an order of their own,
the Maildir emptied and synced after each. Prints per row the median and quartiles of the
rounds, per tree SQL - cdb paired by round, and the last tree against the first, per backend.
``--nosync``: delivery.file_sync off (the disk's noise out); ``--query-cache``: MariaDB's
query cache on. ``--probe``: the servers run under bench/sqlgap_probe.py, whose workers time
the phases of each request, printed per tree as medians, cdb beside SQL (inclusive times;
its wrappers add about a microsecond a call). Prints only: bench/RESULTS.md is not written.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1]),
                str(Path(__file__).resolve().parents[1] / "tests")]
from bench_delivery import message as write_message, qmail_local_env  # noqa: E402
from common import (WORK, add_alice, owner, private_mariadb, shell_loop,  # noqa: E402
                    sql_config, sql_copy_users, start_server)
from vpopmail import config as vconfig  # noqa: E402

HERE = WORK / "sqlgap"
DOMAIN = "example.com"
PROBE = Path(__file__).resolve().parent / "sqlgap_probe.py"


class Tree:
    """One source tree installed, with its database, users and running server."""

    def __init__(self, label: str, source: Path, database: object, probe: bool,
                 nosync: bool) -> None:
        user, group, uid, gid = owner()
        self.label, self.ids = label, (uid, gid)
        here = HERE / label
        shutil.rmtree(here, ignore_errors=True)
        here.mkdir(parents=True)
        here.chmod(0o755)
        self.prefix = here / "vpopmail"
        subprocess.run([sys.executable, str(source / "packaging" / "install"), "--prefix",
                        str(self.prefix), "--qmaildir", str(here / "qmail"), "--user", user,
                        "--group", group, "--venv", sys.prefix], check=True,
                       capture_output=True)
        self.bin = self.prefix / "bin"
        self.domain_dir, self.maildir = add_alice(self.bin, DOMAIN)
        config = self.prefix / "etc" / "vpopmail.toml"
        if nosync:
            text = config.read_text()
            assert "file_sync = true" in text
            config.write_text(text.replace("file_sync = true", "file_sync = false"))
            vconfig.load(str(config))
        self.sql = sql_config(self.prefix, database, config,
                              here / "vpopmail-sql.toml", False)
        sql_copy_users(self.prefix, self.sql)
        subprocess.run(["chown", "-R", f"{user}:{group}", str(self.domain_dir)], check=True)
        self.held = here / "held"
        self.held.mkdir()
        self.count = 0
        self.probe_log = here / "probe.log"
        log = here / "server.log"
        argv = [str(self.bin / "vpopmail-server")]
        if probe:  # the wrapper's interpreter and library path, then the probe's wrappers
            text = (self.bin / "vpopmail-server").read_text()
            site = next(line.split("'")[1] for line in text.splitlines()
                        if line.startswith("sys.path.append("))
            argv = [text.split()[0][2:], "-IS", str(PROBE), str(self.prefix), site,
                    str(self.probe_log)]
        self.server = start_server(argv, log)

    def rows(self) -> dict[str, tuple[list[str], dict[str, str]]]:
        argv = [str(self.bin / "vdelivermail"), "", "bounce-no-mailbox"]
        return {f"{self.label} cdb": (argv, qmail_local_env(self.domain_dir)),
                f"{self.label} sql": (argv, qmail_local_env(self.domain_dir, self.sql))}

    def settle(self) -> None:
        """Empty the Maildir (its files moved aside, not deleted: see bench_server's
        Setup.clean) and write everything out."""
        for sub in ("new", "cur", "tmp"):
            for entry in os.scandir(self.maildir / sub):
                os.rename(entry.path, self.held / str(self.count))
                self.count += 1
        os.sync()

    def stop(self) -> None:
        self.server.send_signal(signal.SIGTERM)
        self.server.wait()


def spread(label: str, samples: list[float]) -> str:
    q1, median, q3 = statistics.quantiles(samples, n=4)
    return f"{label} median {statistics.median(samples):+.3f} ms (quartiles {q1:+.3f} {q3:+.3f})"


def phases(log: Path) -> None:
    """The probe's lines: per phase, the median of the cdb and the SQL requests (µs)."""
    kinds: dict[str, dict[str, list[float]]] = {"cdb": collections.defaultdict(list),
                                                "sql": collections.defaultdict(list)}
    for line in log.read_text().splitlines():
        fields = dict(item.rsplit("=", 1) for item in line.split()[1:])
        kind = "sql" if any(name.startswith(("sql.", "MySQL")) for name in fields) else "cdb"
        for name, value in fields.items():
            kinds[kind][name].append(int(value.split("/")[0]) / 1000)
    names = list(dict.fromkeys([*kinds["cdb"], *kinds["sql"]]))
    width = max(map(len, names))
    print(f"{'phase (µs)':{width}s}      cdb      sql     diff")
    for name in names:
        cdb, sql = (statistics.median(kinds[k][name]) if kinds[k][name] else 0.0
                    for k in ("cdb", "sql"))
        print(f"{name:{width}s} {cdb:8.1f} {sql:8.1f} {sql - cdb:+8.1f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--loop", type=int, default=100)
    parser.add_argument("--nosync", action="store_true", help="delivery.file_sync = false")
    parser.add_argument("--query-cache", action="store_true",
                        help="MariaDB's query cache on (query_cache_type = ON, 1 MB)")
    parser.add_argument("--probe", action="store_true", help="time the workers' phases")
    parser.add_argument("trees", nargs="+", help="LABEL=SOURCE")
    args = parser.parse_args()
    from mariadb_site import new_database

    HERE.mkdir(parents=True, exist_ok=True)
    message = write_message(4096, HERE)
    with private_mariadb() as first:
        if args.query_cache:
            first.server.sql("SET GLOBAL query_cache_size = 1048576, query_cache_type = 1")
        trees: list[Tree] = []
        try:
            for number, spec in enumerate(args.trees):
                label, _, source = spec.partition("=")
                database = first if number == 0 else new_database(first.server)
                trees.append(Tree(label, Path(source), database, args.probe, args.nosync))
            rows = {name: (row, tree) for tree in trees for name, row in tree.rows().items()}
            for (argv, env), tree in rows.values():  # warm-up: workers, connections, caches
                shell_loop(argv, env, tree.domain_dir, 20, tree.ids, stdin=message)
                tree.settle()
            for tree in trees:  # the warm-up's lines go (the workers append: O_APPEND)
                if tree.probe_log.exists():
                    os.truncate(tree.probe_log, 0)
            times: dict[str, list[float]] = {name: [] for name in rows}
            for number in range(args.rounds):
                order = list(rows)
                random.Random(number).shuffle(order)
                for name in order:
                    (argv, env), tree = rows[name]
                    times[name].append(1000 * shell_loop(argv, env, tree.domain_dir, args.loop,
                                                         tree.ids, stdin=message))
                    tree.settle()
        finally:
            for tree in trees:
                tree.stop()
    width = max(map(len, rows))
    for name, samples in times.items():
        print(spread(f"{name:{width}s}", samples).replace("+", ""))
    for tree in trees:
        print(spread(f"{tree.label}: sql - cdb, paired by round,",
                     [s - c for s, c in zip(times[f"{tree.label} sql"],
                                            times[f"{tree.label} cdb"])]))
    if len(trees) > 1:
        a, b = trees[0].label, trees[-1].label
        for backend in ("cdb", "sql"):
            print(spread(f"{backend}: {b} - {a}, paired by round,",
                         [y - x for x, y in zip(times[f"{a} {backend}"],
                                                times[f"{b} {backend}"])]))
    if args.probe:
        for tree in trees:
            print(f"\n{tree.label}: the workers' phases, median of each request's")
            phases(tree.probe_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
