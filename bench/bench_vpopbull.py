"""Benchmark: vpopbull over one domain of 10,000 users, by copy, hard link and symbolic link.

    .venv/bin/python bench/bench_vpopbull.py [--users 10000] [--runs 3]

Installs pyvpopmail into bench/work/bulletin, adds bull.test and fills it with ``vadduser -f``
(one process; every user gets a 10 MB quota, so each delivery also checks and appends to
``maildirsize``). Then times whole ``vpopbull`` processes over the domain (run as root, as an
operator would: vpopbull works as the domain owner itself), each mode --runs times, interleaved
(median; each run adds one more message to every Maildir): ``-n`` (read the users only, the
floor of any run), copies with and without ``delivery.file_sync`` (fsync of each message and of
``new/``), hard links and symbolic links (both made durable by one syncfs at the end). The
message is 2 KiB.
Writes the "Bulletin" section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import RESULTS, WORK, install, machine_line, owner, replace_section, timed  # noqa: E402

from vpopmail import config as vconfig  # noqa: E402

HERE = WORK / "bulletin"
DOMAIN = "bull.test"
BODY = ("The mail service will be down for maintenance on Saturday from 22:00 to 23:00 UTC. "
        "Messages sent to you in that hour wait in the senders' queues and arrive afterwards.\n")
MESSAGE = ("From: Postmaster <postmaster@bull.test>\nSubject: Maintenance on Saturday\n"
           "Date: Sat, 28 Nov 2026 03:30:00 +0000\nMessage-ID: <bulletin-1@bull.test>\n\n"
           + BODY * 12).encode()[:2048]
MODES = {
    "`-n` (list only: read the users)": ["-n"],
    "copy (`-c`, default), fsync": ["-c"],
    "copy (`-c`), `delivery.file_sync = false`": ["-c"],
    "hard links (`-h`), one syncfs at the end": ["-h"],
    "symbolic links (`-s`), one syncfs at the end": ["-s"],
}
NO_SYNC = "copy (`-c`), `delivery.file_sync = false`"
LIST_ONLY = "`-n` (list only: read the users)"


def set_sync(config_path: Path, on: bool) -> None:
    values = vconfig.parse_file(str(config_path))
    values["delivery_file_sync"] = on
    config_path.write_text(vconfig.render(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    user, group, _, _ = owner()
    prefix = install(HERE, user, group)
    bin_ = prefix / "bin"
    config_path = prefix / "etc" / "vpopmail.toml"
    subprocess.run([str(bin_ / "vadddomain"), DOMAIN, "pm-secret"], check=True)
    batch = "".join(f"user{i}@{DOMAIN} pw{i}\n" for i in range(args.users - 1)).encode()
    start = time.perf_counter()
    subprocess.run([str(bin_ / "vadduser"), "-q", "10M", "-f", "-"], input=batch, check=True)
    fill = time.perf_counter() - start
    print(f"filled {args.users} users in {fill:.1f} s", flush=True)
    message = HERE / "bulletin.txt"
    message.write_bytes(MESSAGE)
    message.chmod(0o644)
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in MODES}
    for run in range(args.runs):
        for name, options in MODES.items():
            set_sync(config_path, name != NO_SYNC)
            sample = timed([str(bin_ / "vpopbull"), *options, "-f", str(message), DOMAIN])
            samples[name].append(sample)
            print(f"run {run + 1}: {name}: {sample[0]:.2f} s", flush=True)
    set_sync(config_path, True)
    write_results(args.users, args.runs, fill, samples)
    return 0


def write_results(users: int, runs: int, fill: float,
                  samples: dict[str, list[tuple[float, int]]]) -> None:
    lines = [
        "## Bulletin: vpopbull (`bench/bench_vpopbull.py`)",
        "",
        machine_line(runs),
        "",
        f"One domain of {users:,} users (filled by one `vadduser -q 10M -f` in {fill:.1f} s), "
        f"each with a 10 MB quota; a {len(MESSAGE):,}-byte message; whole `vpopbull` process "
        "run as root (it works as the domain owner), stderr not a terminal (no progress bar).",
        "",
        "| mode | whole command | per user | per user over `-n` | peak RSS |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    floor = statistics.median(v[0] for v in samples[LIST_ONLY])
    for name, values in samples.items():
        wall = statistics.median(v[0] for v in values)
        rss = max(v[1] for v in values)
        over = "" if name == LIST_ONLY else f"{(wall - floor) / users * 1e6:.0f} µs"
        lines.append(f"| {name} | {wall:.2f} s | {wall / users * 1e6:.0f} µs | {over} "
                     f"| {rss / 1024:.1f} MiB |")
    lines += [
        "",
        "Each user costs a quota check (maildirsize read), the write and one appended "
        "maildirsize line. Copies are vdelivermail's durable delivery (O_EXCL tmp file, fsync, "
        "link into new/, fsync of new/: two journal commits per user); links point at a file "
        "fsynced once, so one syncfs per file system before exit makes them all durable. "
        "C vpopmail's vpopbull did no syncs, quota checks or maildirsize updates (one "
        "`fopen`+`fwrite` per user, or one `link`); it is not packaged for Debian and was not "
        "run here. Other work shared the machine during the run; medians of interleaved runs.",
        "",
    ]
    replace_section(RESULTS, "## Bulletin:", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
