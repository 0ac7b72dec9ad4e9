"""Benchmark: a batch of messages drained by a real qmail through vdelivermail.

    .venv/bin/python bench/bench_qmail_drain.py --qmail QMAILDIR [--c-vpopmail HOME]
                                                [--messages 200] [--runs 7]

Run as root, with a qmail installed at QMAILDIR (not packaged in Debian: notqmail built from
its source) whose qmail-send is not running: the benchmark starts and stops it. Installs
pyvpopmail with the front ends into bench/work/drain (paths.qmail_dir = QMAILDIR) and starts
its vpopmail-server; each row is a virtual domain of its own, made by the installation's
own vadddomain (users/assign, virtualdomains, rcpthosts) with alice (100G quota; every
row's alice has the first row's Maildir: :meth:`Site.share`), whose ``.qmail-default`` runs:
- the front end with the server, fsync on (the default) and off (VPOPMAIL_CONFIG on the
  ``.qmail-default`` line: a configuration with ``file_sync = false``);
- the direct Python vdelivermail (PREFIX/libexec/vdelivermail: what runs without the
  server);
- with --c-vpopmail HOME (a C vpopmail 5.4 built here with the cdb backend, its
  compile-time home HOME), C's vdelivermail, in a domain made by C's own commands.
Each round, in an order of its own, queues --messages 4 KB messages to the row's alice with
qmail-queue while qmail-send is down, starts ``qmail-start ./Maildir/``, and times until
they are all in alice's Maildir/new (qmail-local runs the ``.qmail-default`` line as uid 89,
at most control/concurrencylocal at once); then it waits for the queue to empty, stops
qmail-send (SIGTERM) and moves the messages aside. CPU: everything qmail started (this
process is their subreaper: qmail-send, qmail-lspawn, qmail-local, the shells, the delivery
programs) and the server with its workers, from qmail-start to its stop. A deferral or a
bounce stops the benchmark. The domains are deleted at the end.
Writes the "qmail drain" section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from bench_delivery import message  # noqa: E402
from bench_server import C_NAME, server_cpu  # noqa: E402
from common import (RESULTS, WORK, add_alice, install, machine_line, owner,  # noqa: E402
                    replace_section, start_server)

HERE = WORK / "drain"
HEADING = "## qmail drain: a batch through real qmail (`bench/bench_qmail_drain.py`)"
SERVER, NOSYNC, DIRECT = ("front end + server, fsync", "front end + server, no fsync",
                          "direct Python vdelivermail, fsync")
C_ROW = f"{C_NAME} vdelivermail (no fsync: it has none)"
#: the row -> its domain
DOMAINS = {SERVER: "server.drain.test", NOSYNC: "nosync.drain.test",
           DIRECT: "direct.drain.test", C_ROW: "c.drain.test"}
PR_SET_CHILD_SUBREAPER = 36
DRAIN_TIMEOUT = 300.0


class Qmail:
    """The qmail at ``home``: queueing, and qmail-send started and stopped around a drain."""

    def __init__(self, home: Path) -> None:
        self.home = home
        for program in ("qmail-start", "qmail-queue", "qmail-send", "qmail-newu"):
            if not os.access(home / "bin" / program, os.X_OK):
                raise SystemExit(f"no {home}/bin/{program}: is qmail installed at {home}?")
        if self.running():
            raise SystemExit(f"a qmail-send of {home} runs: stop it first")
        self.concurrency = self.control("concurrencylocal", "10")
        self.log = HERE / "qmail.log"

    def control(self, name: str, default: str) -> str:
        path = self.home / "control" / name
        return path.read_text().strip() if path.exists() else default

    def running(self) -> bool:
        """Whether a qmail-send of this qmail runs (its working directory is queue/)."""
        queue = os.path.realpath(self.home / "queue")
        for process in psutil.process_iter(["name"]):
            with contextlib.suppress(psutil.Error):
                if process.info["name"] == "qmail-send" and process.cwd() == queue:
                    return True
        return False

    def queue(self, message: Path, recipient: str, count: int) -> None:
        """``count`` copies of ``message`` to ``recipient`` through qmail-queue."""
        envelope = HERE / "envelope"
        envelope.write_bytes(f"Fbench@localhost\0T{recipient}\0\0".encode())
        for _ in range(count):
            with open(message, "rb") as body, open(envelope, "rb") as sender:
                subprocess.run([str(self.home / "bin" / "qmail-queue")], stdin=body,
                               stdout=sender, check=True)

    def queued(self) -> int:
        """Messages in the queue (what qmail-qstat counts: the files under queue/mess)."""
        mess = self.home / "queue" / "mess"
        return sum(len(os.listdir(mess / part)) for part in os.listdir(mess))

    @contextlib.contextmanager
    def sending(self, spare: int | None) -> Iterator[None]:
        """qmail-send (qmail-start's process) running, its log appended to :attr:`log`; on the
        way out SIGTERM, then every process qmail started reaped: this process is their
        subreaper, so that their CPU is in its children times (``spare``: a child of this
        process not to wait for)."""
        with open(self.log, "ab") as log:
            send = subprocess.Popen([str(self.home / "bin" / "qmail-start"), "./Maildir/"],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
                                    env={"PATH": f"{self.home}/bin:/usr/bin:/bin"})
        try:
            yield
        finally:
            send.send_signal(signal.SIGTERM)
            send.wait()
            for child in psutil.Process().children():
                if child.pid != spare:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(child.pid, 0)


class Site:
    """Our installation with its server and a domain per row, C's domain beside them."""

    def __init__(self, qmail: Qmail, c_home: Path | None) -> None:
        user, group, uid, gid = owner()
        self.prefix = install(HERE, user, group, frontends=True, qmail=qmail.home)
        self.bin = self.prefix / "bin"
        if not (self.prefix / "libexec" / "vdelivermail").exists():
            raise SystemExit("no C front ends were built (is there a C compiler?)")
        self.qmail = qmail
        self.c_bin = c_home / "bin" if c_home else None
        self.maildirs: dict[str, Path] = {}
        config = self.prefix / "etc" / "vpopmail.toml"
        nosync = HERE / "vpopmail-nosync.toml"
        nosync.write_text(config.read_text().replace("file_sync = true", "file_sync = false"))
        nosync.chmod(0o644)
        self.message = message(4096, HERE)
        self.held = HERE / "held"
        self.held.mkdir()
        self.held_count = 0
        self.server: subprocess.Popen[bytes] | None = None
        for row in (SERVER, NOSYNC, DIRECT):
            domain_dir, self.maildirs[row] = add_alice(self.bin, DOMAINS[row])
            program = f"{self.bin}/vdelivermail"
            command = {NOSYNC: f"VPOPMAIL_CONFIG={nosync} {program}",
                       DIRECT: f"{self.prefix}/libexec/vdelivermail"}.get(row)
            if command:
                dot_qmail = domain_dir / ".qmail-default"
                text = dot_qmail.read_text()
                if program not in text:
                    raise SystemExit(f"{dot_qmail} does not run {program}: {text!r}")
                dot_qmail.write_text(text.replace(program, command))
        if c_home:
            domain = DOMAINS[C_ROW]
            for argv in (["vadddomain", domain, "pm-secret"],
                         ["vadduser", "-q", str(100 << 30), f"alice@{domain}", "pw"]):
                subprocess.run([str(c_home / "bin" / argv[0]), *argv[1:]], check=True,
                               capture_output=True)
            self.maildirs[C_ROW] = c_home / "domains" / domain / "alice" / "Maildir"
        self.share()
        os.chown(HERE, uid, gid)

    def share(self) -> None:
        """Every row delivers into the first row's Maildir (the others' become links to it):
        what a new file costs depends on the inodes freed lately in its directory's block
        group (bench_server's Setup.clean), so in one Maildir every row meets the same."""
        shared = self.maildirs[SERVER]
        for row, maildir in self.maildirs.items():
            if maildir != shared:
                shutil.rmtree(maildir)
                maildir.symlink_to(shared)

    def start(self) -> None:
        self.server = start_server([str(self.bin / "vpopmail-server")], HERE / "server.log")

    def stop(self) -> None:
        if self.server is not None:
            self.server.send_signal(signal.SIGTERM)
            self.server.wait()

    def remove_domains(self) -> None:
        for row in (SERVER, NOSYNC, DIRECT):
            subprocess.run([str(self.bin / "vdeldomain"), DOMAINS[row]], capture_output=True)
        if self.c_bin:
            subprocess.run([str(self.c_bin / "vdeldomain"), DOMAINS[C_ROW]],
                           capture_output=True)

    def clean(self, maildir: Path) -> None:
        """Move the delivered messages aside (their inodes kept: see bench_server's
        Setup.clean) and write everything out."""
        for sub in ("new", "cur", "tmp"):
            for entry in os.scandir(maildir / sub):
                self.held_count += 1
                os.rename(entry.path, self.held / str(self.held_count))
        subprocess.run(["sync"], check=True)

    def drain(self, row: str, count: int) -> tuple[float, float]:
        """(seconds until ``count`` messages queued for the row's alice are all in her
        Maildir/new, CPU seconds of qmail's processes and the server meanwhile)."""
        new = self.maildirs[row] / "new"
        self.qmail.queue(self.message, f"alice@{DOMAINS[row]}", count)
        subprocess.run(["sync"], check=True)
        log_start = self.qmail.log.stat().st_size if self.qmail.log.exists() else 0
        server = psutil.Process(self.server.pid) if self.server else None
        before_server = server_cpu(server) if server else 0.0
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        with self.qmail.sending(self.server.pid if self.server else None):
            while len(os.listdir(new)) < count:
                if time.perf_counter() - start > DRAIN_TIMEOUT:
                    raise SystemExit(f"{row}: {len(os.listdir(new))} of {count} delivered "
                                     f"after {DRAIN_TIMEOUT:.0f} s; see {self.qmail.log}")
                time.sleep(0.002)
            wall = time.perf_counter() - start
            while self.qmail.queued():
                time.sleep(0.01)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if server is not None:
            cpu += server_cpu(server) - before_server
        with open(self.qmail.log, "rb") as fh:
            fh.seek(log_start)
            log = fh.read().decode(errors="replace")
        faults = [line for line in log.splitlines() if ": deferral: " in line
                  or ": failure: " in line]
        if faults or len(os.listdir(new)) != count:
            raise SystemExit(f"{row}: {len(os.listdir(new))} in new/ of {count}; "
                             f"qmail: {faults[:3]}")
        self.clean(self.maildirs[row])
        return wall, cpu


def measure(site: Site, runs: int, count: int) -> dict[str, list[tuple[float, float]]]:
    rows = [SERVER, NOSYNC, DIRECT] + ([C_ROW] if site.c_bin else [])
    samples: dict[str, list[tuple[float, float]]] = {row: [] for row in rows}
    for row in rows:  # a warm-up drain of each (workers forked, caches read)
        site.drain(row, 10)
    for number in range(runs):
        order = rows[:]
        random.Random(number).shuffle(order)
        for row in order:
            samples[row].append(site.drain(row, count))
            print(f"round {number + 1}/{runs} {row}: {samples[row][-1][0]:.2f} s", flush=True)
    return samples


def write(samples: dict[str, list[tuple[float, float]]], runs: int, count: int,
          qmail_home: Path, concurrency: str, server_peak: int) -> None:
    lines = [HEADING, "",
             machine_line(runs, None),
             "",
             f"{count} messages of 4 KB queued with qmail-queue while qmail-send is down, then "
             f"qmail-send started: the time until all are in the recipient's Maildir/new "
             f"(qmail-local runs the domain's `.qmail-default` line as uid 89, "
             f"concurrencylocal {concurrency}). CPU: qmail's processes (qmail-send, "
             f"qmail-lspawn, qmail-local, the shells, the delivery programs) and "
             f"vpopmail-server with its workers, from qmail-send's start to its stop "
             f"(after the queue emptied). Rows in an order of their own each round, all "
             f"into one Maildir (the other rows' alice has a link to it), its messages moved "
             f"aside and everything written out (`sync`) after each row. qmail: "
             f"{qmail_home} (qmail 1.03 built here from its source: not packaged in "
             f"Debian).", "",
             "| row | drain (median) | range | messages per second | CPU per message |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for row, points in samples.items():
        walls = [wall for wall, _ in points]
        cpu = statistics.median(c for _, c in points) / count
        lines.append(f"| {row} | {statistics.median(walls):.2f} s | "
                     f"{min(walls):.2f}-{max(walls):.2f} s | "
                     f"{count / statistics.median(walls):.0f} | {cpu * 1000:.2f} ms |")
    if C_ROW in samples:
        for row in (SERVER, NOSYNC):
            paired = [ours[0] - c[0] for ours, c in zip(samples[row], samples[C_ROW])]
            lines += ["", f"{row} less C's, round by round: median "
                      f"{statistics.median(paired):+.2f} s ({min(paired):+.2f} to "
                      f"{max(paired):+.2f})."]
    lines += ["", f"vpopmail-server's peak RSS: {server_peak / 1024:.1f} MiB.", ""]
    text = "\n".join(lines)
    replace_section(RESULTS, HEADING, text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qmail", type=Path, required=True, metavar="QMAILDIR",
                        help="a qmail installed here, its qmail-send not running")
    parser.add_argument("--c-vpopmail", type=Path, metavar="HOME",
                        help="a C vpopmail built here, its compile-time home: run beside ours")
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root (qmail-send runs its deliveries as uid 89)")
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
    qmail = Qmail(args.qmail)
    site = Site(qmail, args.c_vpopmail)
    try:
        site.start()
        samples = measure(site, args.runs, args.messages)
        assert site.server is not None
        with open(f"/proc/{site.server.pid}/status") as fh:
            peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
    finally:
        site.stop()
        site.remove_domains()
    write(samples, args.runs, args.messages, qmail.home, qmail.concurrency, peak)
    return 0


if __name__ == "__main__":
    sys.exit(main())
