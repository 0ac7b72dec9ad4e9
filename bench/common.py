"""What every benchmark here shares: whole-process timing with peak RSS, medians, the machine
line, and rewriting one section of bench/RESULTS.md."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / "work"
RESULTS = REPO / "bench" / "RESULTS.md"


def timed(argv: list[str], stdin: bytes | Path = b"", env: dict[str, str] | None = None,
          cwd: Path | None = None, user: tuple[int, int] | None = None,
          ok: tuple[int, ...] = (0,)) -> tuple[float, int]:
    """(wall seconds, peak RSS in KiB) of one whole process; ``stdin`` is data or a file
    (opened for the child, so it is seekable); ``user`` = (uid, gid) to run as."""
    ids = {"user": user[0], "group": user[1], "extra_groups": []} if user else {}
    with open(stdin, "rb") if isinstance(stdin, Path) else open(os.devnull, "rb") as source:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=source if isinstance(stdin, Path) else subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env or {"PATH": "/usr/bin:/bin"}, cwd=cwd, **ids)
        if proc.stdin is not None:
            proc.stdin.write(stdin)  # type: ignore[arg-type]
            proc.stdin.close()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in ok:
        raise SystemExit(f"{argv} exited {code}: "
                         f"{proc.stderr.read().decode() if proc.stderr else ''}")
    return wall, usage.ru_maxrss


def peak_rss(argv: list[str], stdin: Path, env: dict[str, str], cwd: Path | None = None,
             user: tuple[int, int] | None = None) -> int | None:
    """Peak RSS in KiB of one run, measured by GNU time: wait4 from this (large) harness would
    also count the pages the forked child shares with it before exec. None without GNU time."""
    if not os.path.exists("/usr/bin/time"):
        return None
    ids = {"user": user[0], "group": user[1], "extra_groups": []} if user else {}
    with open(stdin, "rb") as source:
        result = subprocess.run(["/usr/bin/time", "-f", "%M", *argv], stdin=source,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=cwd, **ids)
    return int(result.stderr.strip().splitlines()[-1])


def median_of(samples: list[tuple[float, int]]) -> tuple[float, int]:
    """(median wall, largest peak RSS)."""
    return statistics.median(s[0] for s in samples), max(s[1] for s in samples)


def machine_line(runs: int, rss_source: str = "wait4") -> str:
    return (f"{datetime.date.today()}, {platform.node()}: {psutil.cpu_count()} CPUs, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
            f"{platform.platform()}. Whole processes, median of {runs} runs, peak RSS from "
            f"{rss_source}.")


def replace_section(path: Path, heading: str, text: str) -> None:
    """Put ``text`` in place of the section starting with ``heading`` (or append it)."""
    old = path.read_text() if path.exists() else "# Benchmark results\n\n"
    sections = old.split("\n## ")
    kept = [sections[0]] + ["## " + s for s in sections[1:] if not ("## " + s).startswith(heading)]
    path.write_text("\n".join(s.rstrip("\n") + "\n" for s in kept) + "\n" + text)
