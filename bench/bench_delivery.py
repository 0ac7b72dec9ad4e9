"""Benchmark: whole-process delivery of one message, against the interpreter floor and the peers.

    .venv/bin/python bench/bench_delivery.py [--sizes 1024,4096,1048576] [--runs 31] [--loop 100]
                                             [--no-sql]

Installs pyvpopmail into bench/work/delivery, adds example.com with a user that has a quota
(so the Maildir++ check and the maildirsize append run), and delivers a message of each size
from a seekable file, as qmail-local would (its environment, cwd = the domain directory, the
domain owner's uid). In the same run, interleaved, it times the interpreter floor
(``python -I -S -c pass`` with the wrappers' interpreter), ``/bin/true``, Courier's
``deliverquota`` into a Maildir with a quota, and Dovecot's ``dovecot-lda`` into a Maildir,
each with its sync on and off, and vdelivermail with the SQL backend (``users.backend =
"mysql"`` on a private MariaDB started for the run, the same user copied there by ``vconvert
-c -m``; reads as the SELECT-only account over the unix socket, sync on and off, and over TCP to
127.0.0.1 without sync). Each figure is the median of --runs whole processes, and a
--loop of back-to-back deliveries from one shell per figure; peak RSS comes from GNU time. Writes the
"Delivery" section of bench/RESULTS.md, with ``python -X importtime`` of the hot path (and
what the SQL backend imports more).
Run as root it delivers as the vpopmail user (uid 89), as in production.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (WORK, add_alice, added_imports, import_report, install,  # noqa: E402
                    machine_line, mariadb_ready, median_of, owner, peak_rss,
                    private_mariadb, publish, results_table, shell_loop,
                    sql_config, sql_copy_users, timed, wrapper_python)
from vpopmail import config as vconfig  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:
    from mariadb_site import Database

HERE = WORK / "delivery"
DOMAIN = "example.com"
#: C vpopmail 5.4.33 on this machine class (c-vpopmail-observed.md section 7)
C_VDELIVERMAIL_MS = 2.11
C_CHAIN_FLOOR_MS = 1.47
NOSYNC = "pyvpopmail vdelivermail, no fsync"
SYNC = "pyvpopmail vdelivermail, fsync (default)"
SQL_NOSYNC = "pyvpopmail vdelivermail, SQL (socket), no fsync"
SQL_SYNC = "pyvpopmail vdelivermail, SQL (socket), fsync (default)"
SQL_TCP = "pyvpopmail vdelivermail, SQL (TCP 127.0.0.1), no fsync"
HEADER = (b"From: Sender <sender@remote.test>\nTo: alice@example.com\nSubject: bench\n"
          b"Message-ID: <bench@remote.test>\n\n")


def message(size: int, where: Path = HERE) -> Path:
    """``where``/msg<size>: a message of ``size`` bytes (HEADER, lines of text), 0644."""
    path = where / f"msg{size}"
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n"
    body = (line * (size // len(line) + 1))[:max(0, size - len(HEADER) - 1)]
    path.write_bytes(HEADER + body + b"\n")
    path.chmod(0o644)
    return path


def qmail_local_env(domain_dir: Path, config: Path | None = None) -> dict[str, str]:
    """qmail-local's environment for a delivery to alice@example.com (``config``: a
    VPOPMAIL_CONFIG instead of the installed one)."""
    env = {"USER": DOMAIN, "HOME": str(domain_dir), "LOCAL": f"{DOMAIN}-alice",
           "EXT": "alice", "DEFAULT": "alice", "EXT2": "", "EXT3": "", "EXT4": "",
           "HOST": DOMAIN, "HOST2": "example", "HOST3": "example", "HOST4": "example",
           "SENDER": "sender@remote.test", "NEWSENDER": "sender@remote.test",
           "RECIPIENT": f"{DOMAIN}-alice@{DOMAIN}",
           "DTLINE": f"Delivered-To: {DOMAIN}-alice@{DOMAIN}\n",
           "RPLINE": "Return-Path: <sender@remote.test>\n", "PATH": "/usr/bin:/bin"}
    if config is not None:
        env["VPOPMAIL_CONFIG"] = str(config)
    return env


class Setup:
    """The installed site, the peers' Maildirs and configs, and how to run each tool."""

    def __init__(self, database: "Database | None") -> None:
        self.user, self.group, uid, gid = owner()
        self.ids = (uid, gid)
        prefix = install(HERE, self.user, self.group)
        self.bin = prefix / "bin"
        self.config = prefix / "etc" / "vpopmail.toml"
        self.domain_dir, self.maildir = add_alice(self.bin, DOMAIN)
        self.nosync = HERE / "vpopmail-nosync.toml"
        self.nosync.write_text(self.config.read_text().replace("file_sync = true",
                                                               "file_sync = false"))
        self.nosync.chmod(0o644)
        vconfig.load(str(self.nosync))  # its cache: only the file's owner (root) writes one
        #: row name -> the SQL backend's config (none without a database)
        self.sql: dict[str, Path] = {}
        if database is not None:
            for name, source, tcp in ((SQL_NOSYNC, self.nosync, False),
                                      (SQL_SYNC, self.config, False),
                                      (SQL_TCP, self.nosync, True)):
                dest = HERE / f"vpopmail-sql-{len(self.sql)}.toml"
                self.sql[name] = sql_config(prefix, database, source, dest, tcp)
            sql_copy_users(prefix, self.sql[SQL_SYNC])
        self.python = wrapper_python(self.bin / "vdelivermail")
        self.peers: dict[str, list[str]] = {}
        self.peer_env: dict[str, dict[str, str]] = {}
        if shutil.which("deliverquota"):
            courier = HERE / "courier" / "Maildir"
            courier.parent.mkdir()
            subprocess.run(["maildirmake", str(courier)], check=True, stdin=subprocess.DEVNULL)
            subprocess.run(["maildirmake", "-q", "100000000000S", str(courier)], check=True,
                           stdin=subprocess.DEVNULL)
            self.peers["Courier deliverquota"] = [str(shutil.which("deliverquota")), str(courier)]
        if os.path.exists("/usr/lib/dovecot/dovecot-lda"):
            for sync in ("always", "never"):
                home = HERE / f"dovecot-{sync}"
                for sub in ("run", "state"):
                    (home / sub).mkdir(parents=True)
                (home / "dovecot.conf").write_text(
                    f"mail_location = maildir:{home}/Maildir\nmail_fsync = {sync}\nprotocols =\n"
                    f"ssl = no\nlog_path = {home}/log\nbase_dir = {home}/run\n"
                    f"state_dir = {home}/state\nquota_full_tempfail = no\n")
                name = f"Dovecot dovecot-lda (mail_fsync={sync})"
                self.peers[name] = ["/usr/lib/dovecot/dovecot-lda", "-c",
                                    str(home / "dovecot.conf"), "-f", "sender@remote.test"]
                self.peer_env[name] = {"HOME": str(home), "USER": self.user,
                                       "PATH": "/usr/bin:/bin"}
        subprocess.run(["chown", "-R", f"{self.user}:{self.group}", str(HERE)], check=True)

    def tools(self) -> dict[str, tuple[list[str], dict[str, str], Path | None]]:
        """name -> (argv, environment, cwd)."""
        vdm = [str(self.bin / "vdelivermail"), "", "bounce-no-mailbox"]
        tools = {
            "`/bin/true` (exec floor)": (["/bin/true"], {"PATH": "/usr/bin:/bin"}, None),
            "interpreter floor `python -I -S -c pass`": (
                [self.python, "-I", "-S", "-c", "pass"], {"PATH": "/usr/bin:/bin"}, None),
            NOSYNC: (vdm, qmail_local_env(self.domain_dir, self.nosync), self.domain_dir),
            SYNC: (vdm, qmail_local_env(self.domain_dir), self.domain_dir),
        }
        for name, config in self.sql.items():
            tools[name] = (vdm, qmail_local_env(self.domain_dir, config), self.domain_dir)
        for name, argv in self.peers.items():
            tools[name] = (argv, self.peer_env.get(name, {"PATH": "/usr/bin:/bin"}), HERE)
        return tools

    def clean(self) -> None:
        """Empty every Maildir's new/ (keeps directory scans from growing between sizes)."""
        for new in HERE.rglob("new"):
            if new.parent.name == "Maildir" or (new.parent / "cur").is_dir():
                for path in new.iterdir():
                    path.unlink()
        for size_file in HERE.rglob("maildirsize"):
            size_file.write_text(size_file.read_text().splitlines()[0] + "\n0 0\n")


def importtime(setup: Setup, msg: Path) -> list[str]:
    """``-X importtime`` lines of one delivery, with the start-up bundle and without it, and
    what the SQL backend (socket) imports more."""
    env = qmail_local_env(setup.domain_dir, setup.nosync)
    wrapper = [setup.python, "-X", "importtime", str(setup.bin / "vdelivermail"), "", "x"]

    def deliver(argv: list[str], env: dict[str, str]) -> str:
        with open(msg, "rb") as stdin:
            return subprocess.run(argv, stdin=stdin, capture_output=True, text=True, env=env,
                                  cwd=setup.domain_dir, user=setup.ids[0], group=setup.ids[1],
                                  extra_groups=[]).stderr

    out = []
    for label, argv in (
            ("installed wrapper (modules from the bundle)", wrapper),
            ("plain imports from lib/pyvpopmail (no bundle)",
             [setup.python, "-X", "importtime", "-I", "-S", "-c",
              f"import sys; sys.path[:0] = [{str(setup.bin.parent / 'lib' / 'pyvpopmail')!r}]; "
              f"from delivery.vdelivermail import main; sys.exit(main(['', 'x']))"])):
        out += import_report(label, deliver(argv, env))
    if setup.sql:
        out += added_imports("the installed wrapper with the SQL backend (socket)",
                             deliver(wrapper, env),
                             deliver(wrapper, qmail_local_env(setup.domain_dir,
                                                              setup.sql[SQL_NOSYNC])))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1024,4096,1048576")
    parser.add_argument("--runs", type=int, default=31)
    parser.add_argument("--loop", type=int, default=100)
    parser.add_argument("--no-sql", action="store_true",
                        help="leave out the SQL backend's figures (no MariaDB started)")
    args = parser.parse_args(argv)
    sql = not args.no_sql and mariadb_ready()
    with private_mariadb() if sql else contextlib.nullcontext() as database:
        return measure(args, Setup(database))


def measure(args: argparse.Namespace, setup: Setup) -> int:
    tools = setup.tools()
    table: dict[int, dict[str, tuple[tuple[float, int], float]]] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        msg = message(size)
        samples: dict[str, list[tuple[float, int]]] = {name: [] for name in tools}
        for _ in range(args.runs):
            for name, (argv_, env, cwd) in tools.items():
                samples[name].append(timed(argv_, msg, env, cwd, setup.ids))
        table[size] = {}
        for name, (argv_, env, cwd) in tools.items():
            per = shell_loop(argv_, env, cwd, args.loop, setup.ids, stdin=msg)
            wall, rss = median_of(samples[name])
            rss = max(peak_rss(argv_, msg, env, cwd, setup.ids) or rss for _ in range(3))
            table[size][name] = ((wall, rss), per)
            print(f"{size:>8} B  {name:45s} {table[size][name][0][0] * 1000:7.2f} ms "
                  f"(loop {per * 1000:.2f} ms)  {table[size][name][0][1] / 1024:.1f} MiB",
                  flush=True)
        setup.clean()
    write_results(table, args.runs, args.loop, importtime(setup, message(4096)))
    return 0


def write_results(table: dict[int, dict[str, tuple[tuple[float, int], float]]], runs: int,
                  loop_count: int, imports: list[str]) -> None:
    floor_name = "interpreter floor `python -I -S -c pass`"
    lines = ["## Delivery: vdelivermail (`bench/bench_delivery.py`)", "",
             machine_line(runs, "GNU time (max of 3 runs)"), "",
             f"One message from a seekable file to a user with a quota, qmail-local's environment; "
             f"\"loop\" = {loop_count} deliveries back to back from one shell, per message. "
             "\"over floor\" = our median minus the interpreter floor's in the same run.", ""]
    for size, rows in table.items():
        floor = rows[floor_name][0][0]
        lines += [f"### {size:,} bytes", "",
                  *results_table(rows, floor, "pyvpopmail")]
    four = table.get(4096)
    if four:
        nosync, sync = four[NOSYNC][0][0], four[SYNC][0][0]
        lines += [f"4 KB: our work over the floor without fsync "
                  f"{(nosync - four[floor_name][0][0]) * 1000:.2f} ms (target 1.5 ms); the fsyncs "
                  f"(file + new/) add {(sync - nosync) * 1000:.2f} ms. C vpopmail's vdelivermail "
                  f"(no fsync, quoted from c-vpopmail-observed.md, not re-run: not packaged) took "
                  f"{C_VDELIVERMAIL_MS} ms in a loop on this machine class, over an exec floor of "
                  f"{C_CHAIN_FLOOR_MS} ms.", ""]
        if SQL_TCP in four:
            lines += [f"4 KB, the SQL backend over the cdb files (medians): no fsync "
                      f"{(four[SQL_NOSYNC][0][0] - nosync) * 1000:+.2f} ms, fsync "
                      f"{(four[SQL_SYNC][0][0] - sync) * 1000:+.2f} ms; TCP instead of the "
                      f"socket {(four[SQL_TCP][0][0] - four[SQL_NOSYNC][0][0]) * 1000:+.2f} ms. "
                      "SQL rows: users.backend = \"mysql\" on a private MariaDB 10.11 on this "
                      "machine, read as the SELECT-only account (the valias query, then the "
                      "user's row).", ""]
    publish("## Delivery:", lines, "4 KB delivery, no fsync", imports)


if __name__ == "__main__":
    sys.exit(main())
