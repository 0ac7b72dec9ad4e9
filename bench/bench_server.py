"""Benchmark: vpopmail-server with the C front ends against the direct Python programs.

    .venv/bin/python bench/bench_server.py [--runs 31] [--count 1000] [--loop 100] [--no-sql]
                                           [--c-vpopmail HOME]

Run as root. Installs pyvpopmail with the front ends into bench/work/server (example.com, alice
with a 100G quota, SHA-512-crypt password), starts bin/vpopmail-server, and measures, in
interleaved rounds (each in an order of its own, a sync after each delivery row), whole
processes:
- a 4 KB delivery as qmail-local runs the ``.qmail-default`` line (``sh -c`` of it as uid 89,
  the message on a seekable file, qmail-local's environment, cwd = the domain directory):
  front end + server, the direct Python program (PREFIX/libexec/vdelivermail), the
  interpreter floor and ``/bin/true``; fsync on (the default) and off;
- a login as a checkpassword call (root, the credentials on fd 3, exec /bin/true): the same
  four;
with the SQL backend too (a private MariaDB, as bench_delivery.py) unless --no-sql; where
the install's front ends are musl's (musl-gcc), the same source built by cc (glibc) beside
them, at the same server. Then
throughput: --count 4 KB deliveries at concurrency 10 and --count logins at concurrency 20
(xargs -P), front end + server and direct: per second, CPU seconds per item (the clients'
and the server's with its workers), and the server's peak RSS. Also the cost of a fork from
the warm server against handing a connection to a pre-forked worker (the choice of design),
and the Maildir system calls of one delivery alone, in the benchmark's process (a lower
bound for any delivery program, whatever its language).
With --c-vpopmail HOME (a C vpopmail 5.4 built and installed here with the cdb backend, its
compile-time home HOME: not packaged, so not part of any default run) C's vdelivermail and
vchkpw run in the same rounds and loops, and throughput, on a domain example.com where its
own commands make alice (100G quota) and bob afresh (C's default hash, MD5-crypt; C built with
roaming users on, as ours runs its MD5-crypt logins), C's alice delivering into our alice's
Maildir (a new file's cost depends on that directory's history: Setup.clean); without it
the comparison uses the C figures measured earlier on this machine class.
Writes the "Server" section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from bench_delivery import message, qmail_local_env  # noqa: E402
from common import (POP_ENV, RESULTS, WORK, add_alice, install, machine_line,  # noqa: E402
                    mariadb_ready, owner, peak_rss, private_mariadb,
                    replace_section, shell_loop, sql_config, sql_copy_users,
                    start_server, timed, wrapper_python)
from vpopmail import config as vconfig  # noqa: E402

HERE = WORK / "server"
DOMAIN = "example.com"
#: C vpopmail 5.4.33 on this machine class, 100 in a loop from one shell (c-vpopmail-observed.md
#: section 7): a 4 KB delivery without fsync, an MD5-crypt login, and their exec floors
C_DELIVERY_MS, C_LOGIN_MS, C_DELIVERY_FLOOR_MS, C_LOGIN_FLOOR_MS = 2.11, 1.43, 1.47, 0.50
#: the rows of a C vpopmail built here (--c-vpopmail)
C_NAME = "C vpopmail 5.4.33"
C_DELIVERY = f"{C_NAME} vdelivermail (no fsync: it has none)"
C_LOGIN = f"{C_NAME} vchkpw, MD5-crypt"
#: the rows of the front ends built by the system's cc, where the install's are musl's
GLIBC_DELIVERY = "front end built by cc (glibc) + server, fsync"
GLIBC_LOGIN = "front end built by cc (glibc) + server, MD5-crypt"
OURS_DELIVERY = "front end + server, fsync"
#: rounds of loops (each row's loop figure is their median)
LOOP_ROUNDS = 7
#: row -> (median seconds, peak RSS KiB, seconds per run in a shell loop)
Rows = dict[str, tuple[float, int, float]]


class CVpopmail:
    """A C vpopmail install (its compile-time home ``home``) with example.com made afresh by
    its own commands: alice (100G quota) gets the deliveries, bob (password pw) logs in."""

    def __init__(self, home: Path) -> None:
        self.bin = home / "bin"
        self.domain_dir = home / "domains" / DOMAIN
        commands = [["vadduser", "-q", str(100 << 30), f"alice@{DOMAIN}", "pw"],
                    ["vadduser", f"bob@{DOMAIN}", "pw"]]
        if self.domain_dir.is_dir():  # an earlier run's users go
            for name in ("alice", "bob"):
                subprocess.run([str(self.bin / "vdeluser"), f"{name}@{DOMAIN}"],
                               capture_output=True)
        else:
            commands.insert(0, ["vadddomain", DOMAIN, "pm-secret"])
        for argv in commands:
            subprocess.run([str(self.bin / argv[0]), *argv[1:]], check=True, capture_output=True)
        self.maildir = self.domain_dir / "alice" / "Maildir"
        if not (self.maildir / "new").is_dir():
            raise SystemExit(f"C vadduser made no {self.maildir}")

    def share(self, maildir: Path) -> None:
        """Deliver into ``maildir`` (ours): alice's Maildir becomes a link to it. A new file's
        cost depends on the inodes freed lately in its directory's block group (see
        :meth:`Setup.clean`): in one Maildir both sides meet the same."""
        shutil.rmtree(self.maildir)
        self.maildir.symlink_to(maildir)


class Setup:
    def __init__(self, database: object | None, c_home: Path | None = None) -> None:
        user, group, uid, gid = owner()
        self.ids = (uid, gid)
        self.prefix = install(HERE, user, group, frontends=True)
        self.bin = self.prefix / "bin"
        self.libexec = self.prefix / "libexec"
        if not (self.libexec / "vdelivermail").exists():
            raise SystemExit("no C front ends were built (is there a C compiler?)")
        self.domain_dir, self.maildir = add_alice(self.bin, DOMAIN)
        self.config = self.prefix / "etc" / "vpopmail.toml"
        self.nosync = HERE / "vpopmail-nosync.toml"
        self.nosync.write_text(self.config.read_text().replace("file_sync = true",
                                                               "file_sync = false"))
        self.nosync.chmod(0o644)
        vconfig.load(str(self.nosync))  # its cache: only the file's owner (root) writes one
        self.message = message(4096, HERE)
        self.credentials = HERE / "fd3"
        self.credentials.write_bytes(b"alice@example.com\0pw\0\0")
        # bob has an MD5-crypt hash: the hash of C vpopmail's figures (issue 14)
        md5 = HERE / "vpopmail-md5.toml"
        md5.write_text(self.config.read_text().replace('scheme = "sha512-crypt"',
                                                       'scheme = "md5-crypt"'))
        subprocess.run([str(self.bin / "vadduser"), f"bob@{DOMAIN}", "pw"], check=True,
                       capture_output=True, env={"PATH": "/usr/bin:/bin",
                                                 "VPOPMAIL_CONFIG": str(md5)})
        self.md5_credentials = HERE / "fd3-md5"
        self.md5_credentials.write_bytes(b"bob@example.com\0pw\0\0")
        #: the MD5-crypt logins run with roaming users on, as C vpopmail's build (and issue
        #: 14's measure): each refreshes its IP's open-smtp line
        self.roaming = HERE / "vpopmail-roaming.toml"
        self.roaming.write_text(self.config.read_text().replace("roaming_users = false",
                                                                "roaming_users = true"))
        if "roaming_users = true" not in self.roaming.read_text():
            raise SystemExit(f"no relay.roaming_users in {self.config}")
        self.roaming.chmod(0o644)
        vconfig.load(str(self.roaming))
        self.sql: Path | None = None
        if database is not None:
            self.sql = sql_config(self.prefix, database, self.config,  # type: ignore[arg-type]
                                  HERE / "vpopmail-sql.toml", False)
            sql_copy_users(self.prefix, self.sql)
        self.python = wrapper_python(self.libexec / "vdelivermail")
        subprocess.run(["chown", "-R", f"{user}:{group}", str(self.domain_dir)], check=True)
        os.chown(HERE, uid, gid)
        #: copies of the front ends: where no server socket is (the fallback, interleaved), and
        #: where a second server with a fresh worker per request (requests_per_worker = 1) listens
        self.down, self.other = HERE / "down", HERE / "forking"
        for place in (self.down, self.other):
            for sub in ("bin", "libexec", "run"):
                (place / sub).mkdir(parents=True)
            for name in ("vdelivermail", "vchkpw"):
                shutil.copy2(self.bin / name, place / "bin" / name)
                (place / "libexec" / name).symlink_to(self.libexec / name)
        #: the front ends as the system's cc builds them (glibc), at the same server's socket:
        #: beside the install's, where musl-gcc built those
        self.glibc = HERE / "glibc" / "bin"
        self.glibc_built = libc_of(self.bin / "vdelivermail") != "glibc" and glibc_frontends(
            self.glibc, self.prefix)
        self.other_config = HERE / "vpopmail-forking.toml"
        self.other_config.write_text(self.config.read_text().replace(
            'server_socket = "run/server.sock"', f'server_socket = "{self.other}/run/server.sock"'
        ).replace("requests_per_worker = 1000", "requests_per_worker = 1"))
        vconfig.load(str(self.other_config))
        self.server: subprocess.Popen[bytes] | None = None
        self.other_server: subprocess.Popen[bytes] | None = None
        #: where :meth:`clean` moves the delivered messages (removed by :meth:`discard`)
        self.held = HERE / "held"
        self.held.mkdir()
        self.held_names = itertools.count()
        self.c = CVpopmail(c_home) if c_home else None
        if self.c:
            self.c.share(self.maildir)
            self.c_credentials = HERE / "fd3-c"
            self.c_credentials.write_bytes(b"bob@example.com\0pw\0\0")

    def start(self) -> None:
        self.server = self.launch(HERE / "server.log", {})
        self.other_server = self.launch(HERE / "forking.log",
                                       {"VPOPMAIL_CONFIG": str(self.other_config)})

    def launch(self, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return start_server([str(self.bin / "vpopmail-server")], log, env)

    def stop(self) -> None:
        for server in (self.server, self.other_server):
            if server is not None:
                server.send_signal(signal.SIGTERM)
                server.wait()

    def clean(self) -> None:
        """Empty the Maildir (C's too: the same, see :meth:`CVpopmail.share`) by moving its
        files aside (:meth:`hold`), not deleting them. On ext4 without a journal (this
        machine's) a new file skips, one by one, each inode of its block group freed in the
        last minute (six while that inode's table block is unwritten: recently_deleted() in
        ext4's inode allocator); thousands of deletions in one Maildir made a file's creation
        there cost up to 190 us against 5 us in an untouched directory, more than the two
        fsyncs, and more for the side whose Maildir had seen more rows."""
        for sub in ("new", "cur", "tmp"):
            for entry in os.scandir(self.maildir / sub):
                self.hold(entry.path)

    def hold(self, path: str) -> None:
        """Move ``path`` into :attr:`held` (the file keeps its inode)."""
        os.rename(path, self.held / str(next(self.held_names)))

    def discard(self) -> None:
        """Delete what :meth:`clean` moved aside, and what the Maildir still holds."""
        self.clean()
        shutil.rmtree(self.held)

    # -- one whole process --------------------------------------------------------------------
    def deliveries(self) -> dict[str, tuple[list[str], dict[str, str], Path]]:
        """row -> (the .qmail-default line's command, environment, directory)."""
        env = qmail_local_env(self.domain_dir)
        nosync = qmail_local_env(self.domain_dir, self.nosync)
        args = ["", "bounce-no-mailbox"]
        rows = {
            "`/bin/true` (exec floor)": (["/bin/true"], env),
            "interpreter floor `python -I -S -c pass`": ([self.python, "-I", "-S", "-c", "pass"],
                                                         env),
            "direct Python vdelivermail, fsync": ([str(self.libexec / "vdelivermail"), *args], env),
            OURS_DELIVERY: ([str(self.bin / "vdelivermail"), *args], env),
            "front end + server, a fresh worker per request, fsync": (
                [str(self.other / "bin" / "vdelivermail"), *args], env),
            "front end, no server (fallback), fsync": (
                [str(self.down / "bin" / "vdelivermail"), *args], env),
            "direct Python vdelivermail, no fsync": ([str(self.libexec / "vdelivermail"), *args],
                                                     nosync),
            "front end + server, no fsync": ([str(self.bin / "vdelivermail"), *args], nosync),
        }
        if self.glibc_built:
            rows[GLIBC_DELIVERY] = ([str(self.glibc / "vdelivermail"), *args], env)
        if self.sql:
            sql = qmail_local_env(self.domain_dir, self.sql)
            rows["direct Python vdelivermail, SQL, fsync"] = (
                [str(self.libexec / "vdelivermail"), *args], sql)
            rows["front end + server, SQL, fsync"] = ([str(self.bin / "vdelivermail"), *args], sql)
        placed = {name: (argv, env, self.domain_dir) for name, (argv, env) in rows.items()}
        if self.c:
            placed[C_DELIVERY] = ([str(self.c.bin / "vdelivermail"), *args],
                                  qmail_local_env(self.c.domain_dir), self.c.domain_dir)
        return placed

    def logins(self) -> dict[str, tuple[list[str], dict[str, str], Path]]:
        """row -> (argv, environment, the credentials for fd 3)."""
        sql = {**POP_ENV, "VPOPMAIL_CONFIG": str(self.sql)} if self.sql else {}
        sha, md5 = self.credentials, self.md5_credentials
        roaming = {**POP_ENV, "VPOPMAIL_CONFIG": str(self.roaming)}
        rows = {
            "`/bin/true` (exec floor, fd 3 open)": (["/bin/true"], POP_ENV, sha),
            "interpreter floor `python -I -S -c pass`": ([self.python, "-I", "-S", "-c", "pass"],
                                                         POP_ENV, sha),
            "direct Python vchkpw": ([str(self.libexec / "vchkpw"), "/bin/true"], POP_ENV, sha),
            "front end + server": ([str(self.bin / "vchkpw"), "/bin/true"], POP_ENV, sha),
            "front end + server, MD5-crypt": ([str(self.bin / "vchkpw"), "/bin/true"], roaming,
                                              md5),
            "front end + server, a fresh worker per request": (
                [str(self.other / "bin" / "vchkpw"), "/bin/true"], POP_ENV, sha),
            "front end, no server (fallback)": ([str(self.down / "bin" / "vchkpw"), "/bin/true"],
                                                POP_ENV, sha),
        }
        if self.glibc_built:
            rows[GLIBC_LOGIN] = ([str(self.glibc / "vchkpw"), "/bin/true"], roaming, md5)
        if sql:
            rows["direct Python vchkpw, SQL"] = ([str(self.libexec / "vchkpw"), "/bin/true"], sql,
                                                 sha)
            rows["front end + server, SQL"] = ([str(self.bin / "vchkpw"), "/bin/true"], sql, sha)
        if self.c:
            rows[C_LOGIN] = ([str(self.c.bin / "vchkpw"), "/bin/true"], POP_ENV,
                             self.c_credentials)
        return rows

    def single(self, runs: int, loop: int, loops: int = LOOP_ROUNDS
               ) -> tuple[Rows, Rows, tuple[float, float], list[float]]:
        """Per row: (median seconds, peak KiB, seconds per run in a shell loop of ``loop``, the
        median of ``loops`` rounds); rounds interleaved, their rows in an order of their own
        (:func:`shuffled`), each delivery row followed by :meth:`settle`. And the Maildir
        floor (:func:`maildir_floor`), measured after each round of loops (its median): the
        file system's state changes from minute to minute. And, with C vpopmail, per round of
        loops our delivery with fsync less C's (seconds)."""
        deliver: dict[str, list[tuple[float, int]]] = {}
        login: dict[str, list[tuple[float, int]]] = {}
        for number in range(runs):
            deliveries, logins = self.deliveries(), self.logins()
            for name in shuffled(deliveries, number):
                argv, env, cwd = deliveries[name]
                deliver.setdefault(name, []).append(timed(
                    ["/bin/sh", "-c", shlex.join(argv)], self.message, env, cwd, self.ids))
                self.settle()
            for name in shuffled(logins, number):
                argv, env, fd3 = logins[name]
                login.setdefault(name, []).append(timed(argv, b"", env, None, fd3=fd3))
        looped: dict[str, list[float]] = {}
        floors: list[tuple[float, float]] = []
        message = self.message.read_bytes()
        for number in range(loops):
            logins = self.logins()
            self.delivery_loops(self.deliveries(), number, loop, looped)
            for name in shuffled(logins, number):
                argv, env, fd3 = logins[name]
                looped.setdefault("login " + name, []).append(shell_loop(
                    argv, env, None, loop, fd3=fd3))
            floors.append(maildir_floor(self.maildir, message, self.hold, 3, loop))
            self.settle()
        delivery_rows = {name: (median(deliver[name])[0], peak_rss(
            ["/bin/sh", "-c", shlex.join(argv)], self.message, env, cwd, self.ids) or 0,
            statistics.median(looped[name]))
            for name, (argv, env, cwd) in self.deliveries().items()}
        login_rows = {name: (median(login[name])[0], peak_rss(argv, self.message, env, fd3=fd3)
                             or 0, statistics.median(looped["login " + name]))
                      for name, (argv, env, fd3) in self.logins().items()}
        self.settle()
        floor = (statistics.median(f[0] for f in floors), statistics.median(f[1] for f in floors))
        paired = ([ours - c for ours, c in zip(looped[OURS_DELIVERY], looped[C_DELIVERY])]
                  if self.c else [])
        return delivery_rows, login_rows, floor, paired

    def beside_c(self, rounds: int, loop: int) -> tuple[dict[str, float], list[float]]:
        """Only the 4 KB delivery rows of the comparison with C, in ``rounds`` rounds of
        loops (shuffled, each followed by :meth:`settle`): per row the median seconds a run;
        and per round our delivery with fsync less C's. None of the other rows run between
        (the direct Python programs, SQL, a worker forked per request)."""
        assert self.c is not None
        names = ["`/bin/true` (exec floor)", OURS_DELIVERY, "front end + server, no fsync",
                 C_DELIVERY]
        every = self.deliveries()
        rows = {name: every[name] for name in names}
        looped: dict[str, list[float]] = {name: [] for name in names}
        for number in range(rounds):
            self.delivery_loops(rows, number, loop, looped)
        paired = [ours - c for ours, c in zip(looped[OURS_DELIVERY], looped[C_DELIVERY])]
        return {name: statistics.median(times) for name, times in looped.items()}, paired

    def delivery_loops(self, rows: dict[str, tuple[list[str], dict[str, str], Path]],
                       number: int, loop: int, looped: dict[str, list[float]]) -> None:
        """Round ``number`` of delivery ``rows``: each a shell loop of ``loop`` runs (seconds a
        run appended to ``looped[name]``), in the round's order (:func:`shuffled`), each
        followed by :meth:`settle`."""
        for name in shuffled(rows, number):
            argv, env, cwd = rows[name]
            looped.setdefault(name, []).append(shell_loop(argv, env, cwd, loop, self.ids,
                                                          stdin=self.message))
            self.settle()

    def settle(self) -> None:
        """Empty the Maildir (:meth:`clean`) and write out what is unwritten (sync): what one
        row left unsynced (C's deliveries, ours without fsync) must not be written out during
        the next row. Here a file created while some thousand unsynced ones were being
        written out cost 112 us against 21 us before, for some 20 s."""
        self.clean()
        os.sync()

    # -- throughput ---------------------------------------------------------------------------
    def load(self, argv: list[str], env: dict[str, str], count: int, jobs: int, user: bool,
             server_proc: subprocess.Popen[bytes] | None, cwd: Path | None = None
             ) -> tuple[float, float, int, int]:
        """(items/s, CPU s/item, server peak KiB, largest worker KiB) of ``count`` runs of the
        shell ``script`` through ``xargs -P jobs``."""
        server = psutil.Process(server_proc.pid) if server_proc else None
        before_server = server_cpu(server) if server else 0.0
        peak_worker = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set() and server is not None:
                try:
                    for child in server.children():
                        peak_worker[0] = max(peak_worker[0], child.memory_info().rss // 1024)
                except psutil.Error:
                    pass
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        ids = {"user": self.ids[0], "group": self.ids[1], "extra_groups": []} if user else {}
        subprocess.run(["xargs", "-P", str(jobs), "-n", "1", *argv],
                       input="".join(f"{n}\n" for n in range(count)).encode(), check=True,
                       env=env, cwd=cwd or self.domain_dir, stdout=subprocess.DEVNULL, **ids)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        done.set()
        sampler.join()
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        peak = 0
        if server is not None:
            cpu += server_cpu(server) - before_server
            with open(f"/proc/{server.pid}/status") as fh:
                peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
        return count / wall, cpu / count, peak, peak_worker[0]

    def throughput(self, count: int) -> dict[str, tuple[float, float, int, int]]:
        deliver = ["/bin/sh", "-c", 'exec "$0" "" bounce-no-mailbox < "$MSG"']
        login = ["/bin/sh", "-c", 'exec "$0" /bin/true 3< "$CRED"']
        denv = {**qmail_local_env(self.domain_dir), "MSG": str(self.message)}
        lenv = {**POP_ENV, "CRED": str(self.credentials)}
        rows = {}
        for label, program, server in (("front end + server", self.bin, self.server),
                                       ("front end + server, a fresh worker per request",
                                        self.other / "bin",
                                        self.other_server),
                                       ("direct Python", self.libexec, None)):
            rows[f"{count} deliveries of 4 KB, concurrency 10, {label}"] = self.load(
                [*deliver, str(program / "vdelivermail")], denv, count, 10, True, server)
            self.settle()
            rows[f"{count} logins, concurrency 20, {label}"] = self.load(
                [*login, str(program / "vchkpw")], lenv, count, 20, False, server)
        if self.c:  # MD5-crypt logins on both sides: C's hash; deliveries without fsync too
            md5 = {**POP_ENV, "CRED": str(self.md5_credentials),
                   "VPOPMAIL_CONFIG": str(self.roaming)}
            rows[f"{count} logins, concurrency 20, front end + server, MD5-crypt"] = self.load(
                [*login, str(self.bin / "vchkpw")], md5, count, 20, False, self.server)
            nosync = {**qmail_local_env(self.domain_dir, self.nosync), "MSG": str(self.message)}
            rows[f"{count} deliveries of 4 KB, concurrency 10, front end + server, no fsync"] = \
                self.load([*deliver, str(self.bin / "vdelivermail")], nosync, count, 10, True,
                          self.server)
            self.settle()
            rows[f"{count} deliveries of 4 KB, concurrency 10, {C_NAME} (no fsync)"] = self.load(
                [*deliver, str(self.c.bin / "vdelivermail")],
                {**qmail_local_env(self.c.domain_dir), "MSG": str(self.message)}, count, 10,
                True, None, self.c.domain_dir)
            self.settle()
            rows[f"{count} logins, concurrency 20, {C_NAME}, MD5-crypt"] = self.load(
                [*login, str(self.c.bin / "vchkpw")],
                {**POP_ENV, "CRED": str(self.c_credentials)}, count, 20, False, None)
        return rows


def server_cpu(server: psutil.Process) -> float:
    """CPU seconds of the server, its ended workers and its live ones (a worker outlives the
    run: its time reaches the server's children times only when it ends)."""
    total = sum(server.cpu_times()[:4])
    for worker in server.children():
        try:
            total += sum(worker.cpu_times()[:2])
        except psutil.Error:  # ended meanwhile: counted in the children times from now on
            pass
    return total


def maildir_floor(maildir: Path, message: bytes, hold: Callable[[str], None], rounds: int = 7,
                  each: int = 100) -> tuple[float, float]:
    """Seconds per delivery of the Maildir system calls alone, in this process, with the two
    fsyncs and without: create in tmp/, write, fsync, link into new/, unlink from tmp/, fsync
    new/. A lower bound, before its exec, for any program delivering there (median of
    ``rounds`` interleaved rounds of ``each``, back to back as in a shell loop); each file
    then goes to ``hold`` (:meth:`Setup.hold`)."""
    def one(name: str, sync: bool) -> None:
        tmp, new = f"{maildir}/tmp/{name}", f"{maildir}/new/{name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.write(fd, message)
        if sync:
            os.fsync(fd)
        os.close(fd)
        os.link(tmp, new)
        os.unlink(tmp)
        if sync:
            directory = os.open(f"{maildir}/new", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            os.fsync(directory)
            os.close(directory)

    timings: dict[bool, list[float]] = {True: [], False: []}
    for number in range(rounds):
        for sync in (True, False):
            names = [f"floor.{os.getpid()}.{number}.{sync:d}.{i}" for i in range(each)]
            start = time.perf_counter()
            for name in names:
                one(name, sync)
            timings[sync].append((time.perf_counter() - start) / each)
            for name in names:
                hold(f"{maildir}/new/{name}")
    return statistics.median(timings[True]), statistics.median(timings[False])


def shuffled(rows: dict[str, object], number: int) -> list[str]:
    """The names of ``rows`` in round ``number``'s order (a seeded shuffle: the same in every
    run). A row ran after the same neighbour every round before, and what ran just before moved
    it: two runs of the one same row, placed one after the other, differed by 0.06 ms."""
    names = list(rows)
    random.Random(number).shuffle(names)
    return names


def median(samples: list[tuple[float, int]]) -> tuple[float, int]:
    return statistics.median(s[0] for s in samples), max(s[1] for s in samples)


FORK_PROBE = """
import gc, os, socket, sys, time
sys.path[:0] = {path!r}
from vpopmail.server import parent as server
server.preload()
N = 300
start = time.perf_counter()
for _ in range(N):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
fork = (time.perf_counter() - start) / N
a, b = socket.socketpair()
fd = os.open("/dev/null", os.O_RDONLY)
start = time.perf_counter()
for _ in range(N):
    a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))])
    _, anc, _, _ = b.recvmsg(1, socket.CMSG_SPACE(4))
    os.close(int.from_bytes(anc[0][2][:4], sys.byteorder))
handoff = (time.perf_counter() - start) / N
print(fork, handoff)
"""


def fork_or_pool(setup: Setup) -> tuple[float, float]:
    """(fork + exit + wait of the warm server, hand a connection to a pooled worker)."""
    wrapper = (setup.libexec / "vdelivermail").read_text()
    library = eval(wrapper.split("sys.path[:0] = ", 1)[1].split("\n", 1)[0])  # noqa: S307
    site = eval(wrapper.split("sys.path.append(", 1)[1].split(")\n", 1)[0])  # noqa: S307
    path = [*library, site]
    out = subprocess.run([setup.python, "-I", "-S", "-c", FORK_PROBE.format(path=path)],
                         check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def write(runs: int, loop: int, single: tuple[Rows, Rows, tuple[float, float], list[float]],
          load: dict[str, tuple[float, float, int, int]], fork: tuple[float, float]) -> None:
    deliver, login, floor, paired = single
    lines = ["## Server: vpopmail-server and the C front ends (`bench/bench_server.py`)", "",
             machine_line(runs, "GNU time"), "",
             "One 4 KB delivery: `sh -c` of the `.qmail-default` line as uid 89, the message on a "
             "seekable file. One login: a checkpassword call as root, credentials on fd 3, "
             "SHA-512-crypt unless the row says MD5-crypt (those with roaming users on, as in C's "
             "build: each refreshes its IP's open-smtp line), exec /bin/true. \"median\": one process "
             "started from this harness (a fork of a large Python process: it adds a few "
             f"ms to every row alike); \"loop\": per run, {loop} runs back to back from one "
             f"shell, the way C vpopmail's figures were taken (median of {LOOP_ROUNDS} loops). "
             "Each round runs its rows in an order of its own (seeded), and after each delivery "
             "row the Maildir is emptied and everything unwritten is written out (`sync`): "
             "what one row leaves unsynced (C's deliveries, ours without fsync) slowed the file "
             "creations of the next one here, and a row's place in the round moved it by up to "
             "0.06 ms. C's deliveries go into our Maildir (C's is a link to it), and delivered "
             "messages are moved aside, not deleted, until the end: on this ext4 without a "
             "journal a new file skips each inode of its block group freed in the last minutes, "
             "one by one, and our Maildir, emptied by deleting after ten rows against C's one, "
             "made our deliveries pay more. Peak RSS: of the client process (the `sh -c` and "
             "what it execs for a delivery), from GNU time; the server's is below.",
             "", "| delivery | median | loop | peak RSS |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {k} | {v[0] * 1000:.2f} ms | {v[2] * 1000:.2f} ms | {v[1] / 1024:.1f} MiB |"
              for k, v in deliver.items()]
    lines += ["", "| login | median | loop | peak RSS |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {k} | {v[0] * 1000:.2f} ms | {v[2] * 1000:.2f} ms | {v[1] / 1024:.1f} MiB |"
              for k, v in login.items()]
    ours_d = deliver["front end + server, fsync"][2] * 1000
    floor_d = deliver["`/bin/true` (exec floor)"][2] * 1000
    ours_l = login["front end + server, MD5-crypt"][2] * 1000
    floor_l = login["`/bin/true` (exec floor, fd 3 open)"][2] * 1000
    synced, unsynced = floor[0] * 1000, floor[1] * 1000
    lines += ["", f"The Maildir system calls of one delivery alone (create in tmp/, write, "
              f"fsync, link into new/, unlink, fsync new/), in the benchmark's process on the "
              f"same Maildir, after each round of loops (their median): {synced:.2f} ms, "
              f"{unsynced:.2f} ms without the two fsyncs. With "
              f"the exec floor, {floor_d + synced:.2f} ms is the least any delivery with fsync "
              f"can cost here, whatever the language ({floor_d + unsynced:.2f} ms without)."]
    if GLIBC_DELIVERY in deliver:
        g_d, g_l = deliver[GLIBC_DELIVERY][2] * 1000, login[GLIBC_LOGIN][2] * 1000
        lines += ["", f"The install's front ends are musl's (packaging/install takes musl-gcc "
                  f"where Debian's musl-tools is installed); the rows \"built by cc (glibc)\" "
                  f"run the same source linked -static-pie against glibc, at the same server: "
                  f"a delivery {g_d:.2f} against {ours_d:.2f} ms ({ours_d - g_d:+.2f} ms with "
                  f"musl), an MD5-crypt login {g_l:.2f} against {ours_l:.2f} ms "
                  f"({ours_l - g_l:+.2f} ms)."]
    if C_DELIVERY in deliver:
        c_d, c_l = deliver[C_DELIVERY][2] * 1000, login[C_LOGIN][2] * 1000
        lines += ["", f"{C_NAME}, built here from its source with the cdb backend (not packaged: "
                  f"--c-vpopmail), in the same rounds and loops: a 4 KB delivery {c_d:.2f} ms "
                  f"(without fsync: it has none), an MD5-crypt login {c_l:.2f} ms. Through the "
                  f"server: a delivery with fsync {ours_d:.2f} ms ({ours_d - c_d:+.2f} ms), an "
                  f"MD5-crypt login {ours_l:.2f} ms ({ours_l - c_l:+.2f} ms); exec floors "
                  f"{floor_d:.2f} and {floor_l:.2f} ms. Our delivery with fsync less C's, round "
                  f"by round of loops: median {statistics.median(paired) * 1000:+.2f} ms "
                  f"({min(paired) * 1000:+.2f} to {max(paired) * 1000:+.2f})."]
    else:
        lines += ["", f"{C_NAME} on this machine class (c-vpopmail-observed.md section 7, not "
                  f"re-run here), in the same kind of loop: {C_DELIVERY_MS} ms a 4 KB "
                  f"delivery without fsync over an exec floor of {C_DELIVERY_FLOOR_MS} ms "
                  f"(+{C_DELIVERY_MS - C_DELIVERY_FLOOR_MS:.2f} ms), {C_LOGIN_MS} ms an MD5-crypt "
                  f"login over {C_LOGIN_FLOOR_MS} ms (+{C_LOGIN_MS - C_LOGIN_FLOOR_MS:.2f} ms). "
                  f"Here, through the server: a delivery with fsync {ours_d:.2f} ms over "
                  f"{floor_d:.2f} ms (+{ours_d - floor_d:.2f} ms), an MD5-crypt login "
                  f"{ours_l:.2f} ms over {floor_l:.2f} ms (+{ours_l - floor_l:.2f} ms)."]
    lines += ["",
              "| throughput | per second | CPU per item | server peak RSS | largest worker RSS |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for name, (rate, cpu, peak, worker) in load.items():
        server = f"{peak / 1024:.1f} MiB" if "server" in name else ""
        workers = f"{worker / 1024:.1f} MiB" if "server" in name else ""
        lines.append(f"| {name} | {rate:.0f} | {cpu * 1000:.2f} ms | {server} | {workers} |")
    lines += ["", f"A fork of the warm server (fork + exit + wait): {fork[0] * 1000:.2f} ms; "
              f"handing a connection to a waiting process (SCM_RIGHTS over a socketpair): "
              f"{fork[1] * 1000:.3f} ms. So a worker serves many requests of the one identity "
              "it took (server.requests_per_worker, 1000); the rows \"a fresh worker per "
              "request\" run a second server with requests_per_worker = 1, which forks on the "
              "request's path.", ""]
    replace_section(RESULTS, "## Server:", "\n".join(lines))
    print("\n".join(lines))


def libc_of(program: Path) -> str:
    """Which C library a static front end carries: glibc (its tunables' name) or musl."""
    return "glibc" if b"GLIBC_TUNABLES" in program.read_bytes() else "musl"


def glibc_frontends(bindir: Path, prefix: Path) -> bool:
    """Build the front ends into ``bindir`` with cc, static-pie as packaging/install links
    them, speaking to the server of the install at ``prefix`` (absolute paths baked in);
    whether it could."""
    cc = shutil.which("cc")
    if cc is None:
        return False
    bindir.mkdir(parents=True, exist_ok=True)
    for name, number in (("vdelivermail", 1), ("vchkpw", 2)):
        defines = {"VPS_PROGRAM": number, "VPS_SOCKET": f'"{prefix}/run/server.sock"',
                   "VPS_FALLBACK": f'"{prefix}/libexec/{name}"', "VPS_SERVER_UID": os.geteuid(),
                   "VPS_ALLOW_ROOT": 0, "VPS_REPLY_TIMEOUT": 600}
        built = subprocess.run([cc, "-std=c99", "-O2", "-static-pie", "-o", str(bindir / name),
                                *(f"-D{k}={v}" for k, v in defines.items()),
                                str(Path(__file__).resolve().parents[1] / "frontend" /
                                    "frontend.c")], capture_output=True)
        if built.returncode != 0:
            return False
    return True


def measure(args: argparse.Namespace, setup: Setup) -> int:
    setup.start()
    try:
        if args.delivery_beside_c:
            medians, paired = setup.beside_c(args.runs, args.loop)
        else:
            single = setup.single(args.runs, args.loop)
            load = setup.throughput(args.count)
    finally:
        setup.stop()
    setup.discard()
    if args.delivery_beside_c:
        write_beside_c(args.runs, args.loop, medians, paired)
    else:
        write(args.runs, args.loop, single, load, fork_or_pool(setup))
    return 0


def write_beside_c(rounds: int, loop: int, medians: dict[str, float],
                   paired: list[float]) -> None:
    """The section of --delivery-beside-c in bench/RESULTS.md."""
    lines = ["## Server, a delivery beside C alone (`bench/bench_server.py --delivery-beside-c`)",
             "", machine_line(rounds, None), "",
             f"Only these rows, in {rounds} rounds of loops of {loop} (each round in an order of "
             "its own, a sync after each row); the rows of the Server section above that run "
             "between them there (the direct Python programs, SQL, a worker forked per "
             "request) are left out.", "", "| row | loop |", "| --- | ---: |"]
    lines += [f"| {name} | {seconds * 1000:.3f} ms |" for name, seconds in medians.items()]
    lines += ["", f"Our delivery with fsync less C's without, round by round: median "
              f"{statistics.median(paired) * 1000:+.3f} ms ({min(paired) * 1000:+.3f} to "
              f"{max(paired) * 1000:+.3f}).", ""]
    replace_section(RESULTS, "## Server, a delivery beside C alone", "\n".join(lines))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=31)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--loop", type=int, default=100)
    parser.add_argument("--no-sql", action="store_true")
    parser.add_argument("--c-vpopmail", type=Path, metavar="HOME",
                        help="a C vpopmail built here, its compile-time home: run beside ours")
    parser.add_argument("--delivery-beside-c", action="store_true",
                        help="with --c-vpopmail: only the 4 KB delivery rows beside C's, "
                             "--runs rounds of loops")
    args = parser.parse_args(argv)
    if args.delivery_beside_c and args.c_vpopmail is None:
        parser.error("--delivery-beside-c needs --c-vpopmail")
    if os.geteuid() != 0:
        raise SystemExit("run as root (deliveries as uid 89, logins as root)")
    sql = not args.no_sql and mariadb_ready()
    with private_mariadb() if sql else contextlib.nullcontext() as database:
        return measure(args, Setup(database, args.c_vpopmail))


if __name__ == "__main__":
    sys.exit(main())
