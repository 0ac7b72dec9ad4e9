"""What every benchmark here shares: whole-process timing with peak RSS, medians, the machine
line, and rewriting one section of bench/RESULTS.md."""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import pwd
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil

TYPE_CHECKING = False
if TYPE_CHECKING:
    from mariadb_site import Database

REPO = Path(__file__).resolve().parent.parent
#: what tcpserver sets for a POP3 connection from 192.0.2.10 (plus PATH): the logins of
#: bench_vchkpw, bench_server and bench_before_after
POP_ENV = {"PATH": "/usr/bin:/bin", "PROTO": "TCP", "TCPLOCALIP": "192.0.2.1",
           "TCPLOCALPORT": "110", "TCPREMOTEIP": "192.0.2.10", "TCPREMOTEPORT": "40000"}
WORK = REPO / "bench" / "work"
RESULTS = REPO / "bench" / "RESULTS.md"
#: the top-level packages of pyvpopmail (and the config cache's marshal), for -X importtime
OUR_MODULES = ("vpopmail", "maildir", "delivery", "auth", "marshal")


def as_fd3(source: object | None) -> dict[str, object]:
    """Popen options that give the child the open file ``source`` as exactly fd 3, as a
    checkpassword server does: 3 is the one descriptor above stderr that close_fds keeps, and
    if ``source`` is not fd 3 here the forked child dup2()s it there first. Opened before
    anything else, ``source`` usually is fd 3 (the lowest free number), and then there is no
    preexec_fn, which would cost about a millisecond (no vfork, Python code in the child).
    (pass_fds=(3,) wants fd 3 open here: it is, since ``source`` got the lowest free number,
    and that is >= 3.) Nothing for None."""
    if source is None:
        return {}
    fd = source.fileno()  # type: ignore[attr-defined]
    assert fd >= 3, "stdin, stdout or stderr is closed"
    return {"pass_fds": (3,), "preexec_fn": (lambda: os.dup2(fd, 3)) if fd != 3 else None}


def timed(argv: list[str], stdin: bytes | Path = b"", env: dict[str, str] | None = None,
          cwd: Path | None = None, user: tuple[int, int] | None = None,
          ok: tuple[int, ...] = (0,), fd3: Path | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS in KiB) of one whole process; ``stdin`` is data or a file
    (opened for the child, so it is seekable); ``user`` = (uid, gid) to run as; ``fd3`` a file
    the child reads on fd 3 (checkpassword's credentials)."""
    ids = {"user": user[0], "group": user[1], "extra_groups": []} if user else {}
    with open(fd3, "rb") if fd3 else contextlib.nullcontext() as cred, \
            open(stdin, "rb") if isinstance(stdin, Path) else open(os.devnull, "rb") as source:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=source if isinstance(stdin, Path) else subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env or {"PATH": "/usr/bin:/bin"}, cwd=cwd, **ids,
                                **as_fd3(cred))  # type: ignore[arg-type]
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
             user: tuple[int, int] | None = None, fd3: Path | None = None) -> int | None:
    """Peak RSS in KiB of one run, measured by GNU time: wait4 from this (large) harness would
    also count the pages the forked child shares with it before exec. None without GNU time.
    ``fd3``: as for timed() (GNU time passes it on to the program it runs)."""
    if not os.path.exists("/usr/bin/time"):
        return None
    ids = {"user": user[0], "group": user[1], "extra_groups": []} if user else {}
    with open(fd3, "rb") if fd3 else contextlib.nullcontext() as cred, open(stdin, "rb") as source:
        result = subprocess.run(["/usr/bin/time", "-f", "%M", *argv], stdin=source,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=cwd, **ids,
                                **as_fd3(cred))  # type: ignore[arg-type]
    return int(result.stderr.strip().splitlines()[-1])


def shell_loop(argv: list[str], env: dict[str, str], cwd: Path | None, count: int,
               user: tuple[int, int] | None = None, stdin: Path | None = None,
               fd3: Path | None = None, ok: int = 0, each: str = "") -> float:
    """Seconds per run when ``count`` runs go back to back from one shell (``stdin`` and
    ``fd3`` redirected for each); ``each`` is shell code run before each run, with $i the
    iteration (to vary the environment)."""
    redirect = (' < "$STDIN"' if stdin else "") + (' 3< "$FD3"' if fd3 else "")
    check = "|| exit 1" if ok == 0 else f'; [ $? -eq {ok} ] || exit 1'
    script = (f'i=0; while [ $i -lt "$N" ]; do {each}"$@"{redirect} > /dev/null {check}; '
              'i=$((i+1)); done')
    ids = {"user": user[0], "group": user[1], "extra_groups": []} if user else {}
    files = {"STDIN": str(stdin)} if stdin else {}
    files.update({"FD3": str(fd3)} if fd3 else {})
    start = time.perf_counter()
    subprocess.run(["/bin/sh", "-c", script, "loop", *argv], check=True, cwd=cwd,
                   env={**env, "N": str(count), **files}, **ids)
    return (time.perf_counter() - start) / count


def owner() -> tuple[str, str, int, int]:
    """(user, group, uid, gid) an install here is for: vpopmail:vchkpw as root, else you."""
    if os.geteuid() == 0:
        account = pwd.getpwnam("vpopmail")
        return "vpopmail", "vchkpw", account.pw_uid, account.pw_gid
    account = pwd.getpwuid(os.getuid())
    return account.pw_name, subprocess.check_output(["id", "-gn"], text=True).strip(), \
        os.getuid(), os.getgid()


def install(here: Path, user: str, group: str, frontends: bool = False,
            qmail: Path | None = None) -> Path:
    """A fresh ``here`` (0755) with pyvpopmail installed by packaging/install into
    ``here``/vpopmail (qmail's directory ``qmail``, else ``here``/qmail), on this interpreter's
    virtualenv; returns the prefix. Without ``frontends`` bin/ holds the Python vdelivermail
    and vchkpw (what the direct-program benchmarks measure)."""
    shutil.rmtree(here, ignore_errors=True)
    here.mkdir(parents=True)
    here.chmod(0o755)
    prefix = here / "vpopmail"
    subprocess.run([sys.executable, str(REPO / "packaging" / "install"), "--prefix", str(prefix),
                    "--qmaildir", str(qmail or here / "qmail"), "--user", user, "--group", group,
                    "--venv", sys.prefix, *([] if frontends else ["--no-frontends"])],
                   check=True, capture_output=True)
    return prefix


def start_server(argv: list[str], log: Path, env: dict[str, str] | None = None
                 ) -> subprocess.Popen[bytes]:
    """vpopmail-server (``argv``) started with ``env`` beside PATH, its output in ``log``, once
    it says it listens (at most 30 s)."""
    with open(log, "wb") as fh:
        server = subprocess.Popen(argv, stdout=fh, stderr=fh,
                                  env={"PATH": "/usr/bin:/bin", **(env or {})})
    deadline = time.monotonic() + 30
    while "listening" not in log.read_text():
        if time.monotonic() > deadline:
            raise SystemExit(f"the server did not start: {log.read_text()}")
        time.sleep(0.05)
    return server


def add_alice(bin_: Path, domain: str = "example.com") -> tuple[Path, Path]:
    """Add ``domain`` and alice (password ``pw``, a 100G quota: no delivery is refused) with the
    installation's own commands in ``bin_``; return the domain's directory and alice's
    Maildir."""
    for argv in (["vadddomain", domain, "pm-secret"], ["vadduser", f"alice@{domain}", "pw"],
                 ["vsetuserquota", f"alice@{domain}", "100G"]):
        subprocess.run([str(bin_ / argv[0]), *argv[1:]], check=True, capture_output=True)
    domain_dir = bin_.parent / "domains" / domain
    home = next(line.split(":")[5] for line in (domain_dir / "vpasswd").read_text().splitlines()
                if line.startswith("alice:"))
    return domain_dir, Path(home) / "Maildir"


def wrapper_python(wrapper: Path) -> str:
    """The interpreter of an installed bin/ wrapper (the first word of its shebang)."""
    return wrapper.read_text().split()[0][2:]


def import_lines(stderr: str) -> dict[str, tuple[int, str]]:
    """Module name -> (self time in µs, line) from ``python -X importtime`` output."""
    return {line.split("|")[2].strip(): (int(line.split("|")[0].split(":")[1]), line)
            for line in stderr.splitlines()
            if line.startswith("import time:") and "self [us]" not in line}


def import_report(label: str, stderr: str) -> list[str]:
    """Markdown lines from ``python -X importtime`` output: how many modules, their summed self
    times, and the lines of pyvpopmail's own modules."""
    lines = import_lines(stderr)
    ours = [line for _, line in lines.values() if any(p in line for p in OUR_MODULES)]
    total = sum(us for us, _ in lines.values())
    return [f"{label}: {len(lines)} modules imported, {total / 1000:.2f} ms in all "
            f"(self times); pyvpopmail's own:", "", "```", *(ours or ["(none)"]), "```", ""]


def added_imports(label: str, base: str, stderr: str) -> list[str]:
    """Markdown lines: the modules ``python -X importtime`` output ``stderr`` has and ``base``
    has not, with their summed self times (and the names of those it has not and ``base``
    has)."""
    before, after = import_lines(base), import_lines(stderr)
    added = {name: v for name, v in after.items() if name not in before}
    fewer = [name for name in before if name not in after]
    total = sum(us for us, _ in added.values())
    return [f"{label}: {len(added)} modules more, {total / 1000:.2f} ms (self times)"
            f"{'; not loaded: ' + ', '.join(fewer) if fewer else ''}:", "",
            "```", *([line for _, line in added.values()] or ["(none)"]), "```", ""]


def median_of(samples: list[tuple[float, int]]) -> tuple[float, int]:
    """(median wall, largest peak RSS)."""
    return statistics.median(s[0] for s in samples), max(s[1] for s in samples)


T = TypeVar("T")


def measure_all(tools: dict[str, T], once: Callable[[T], tuple[float, int]],
                loop: Callable[[T, int], float], peak: Callable[[T], int | None], runs: int,
                loop_count: int) -> dict[str, tuple[tuple[float, int], float]]:
    """name -> ((median wall, peak KiB), seconds per loop run): one warm-up run of each tool,
    then ``runs`` rounds of one run of each (interleaved), then a loop of ``loop_count`` per
    tool; peak RSS is the largest of 3 ``peak`` runs (``once``'s when that gives None). Each
    row is printed as it is done."""
    for tool in tools.values():  # warm-up: page cache, config caches, first-use writes
        once(tool)
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in tools}
    for _ in range(runs):
        for name, tool in tools.items():
            samples[name].append(once(tool))
    table: dict[str, tuple[tuple[float, int], float]] = {}
    width = max(map(len, tools))
    for name, tool in tools.items():
        per = loop(tool, loop_count)
        wall, rss = median_of(samples[name])
        rss = max(peak(tool) or rss for _ in range(3))
        table[name] = ((wall, rss), per)
        print(f"{name:{width}s} {wall * 1000:7.2f} ms (loop {per * 1000:.2f} ms)  "
              f"{rss / 1024:.1f} MiB", flush=True)
    return table


def machine_line(runs: int, rss_source: str | None = "wait4") -> str:
    """The machine, the date and how the figures were taken (``rss_source``: where peak RSS
    comes from; None: no RSS is measured)."""
    rss = "" if rss_source is None else f", peak RSS from {rss_source}"
    return (f"{datetime.date.today()}, {platform.node()}: {psutil.cpu_count()} CPUs, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
            f"{platform.platform()}. Whole processes, median of {runs} runs{rss}.")


def replace_section(path: Path, heading: str, text: str) -> None:
    """Put ``text`` in place of the section starting with ``heading`` (or append it)."""
    old = path.read_text() if path.exists() else "# Benchmark results\n\n"
    sections = old.split("\n## ")
    kept = [sections[0]] + ["## " + s for s in sections[1:] if not ("## " + s).startswith(heading)]
    path.write_text("\n".join(s.rstrip("\n") + "\n" for s in kept) + "\n" + text)


def results_table(rows: dict[str, tuple[tuple[float, int], float]], floor: float,
                  ours: str | tuple[str, ...]) -> list[str]:
    """Markdown rows: name -> ((median s, peak KiB), loop s); rows named ``ours``… get their
    median minus ``floor`` in the last column."""
    lines = ["| program | median | loop | peak RSS | over floor |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, ((wall, rss), per) in rows.items():
        over = f"{(wall - floor) * 1000:+.2f} ms" if name.startswith(ours) else ""
        lines.append(f"| {name} | {wall * 1000:.2f} ms | {per * 1000:.2f} ms "
                     f"| {rss / 1024:.1f} MiB | {over} |")
    return lines + [""]


def publish(heading: str, lines: list[str], imports_title: str, imports: list[str]) -> None:
    """Close a section with the import report, put it into RESULTS.md and print it."""
    lines = [*lines, f"Where the start-up goes (`python -X importtime`, {imports_title}):", "",
             *imports]
    replace_section(RESULTS, heading, "\n".join(lines))
    print("\n".join(lines))


def mariadb_ready() -> bool:
    """Whether MariaDB's server and client are here (packaging/bootstrap installs them)."""
    return bool(shutil.which("mariadb-install-db") and shutil.which("mariadb")
                and (shutil.which("mariadbd") or os.path.exists("/usr/sbin/mariadbd")))


@contextlib.contextmanager
def private_mariadb() -> Iterator["Database"]:
    """A private MariaDB server (tests/mariadb_site.py's: data and socket under /tmp, TCP on a
    free loopback port) with one fresh database and the accounts vpop_ro (SELECT only) and
    vpop_rw; stopped and removed afterwards."""
    sys.path.insert(0, str(REPO / "tests"))
    from mariadb_site import MariaDB, _accounts, new_database

    base = Path("/tmp") / f"pyvp-bench-mdb-{os.getpid()}"  # a socket path has <= 107 bytes
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o755)
    server = MariaDB(base, "server", 1)
    try:
        server.start()
        _accounts(server)
        yield new_database(server)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def sql_config(prefix: Path, database: "Database", source: Path, dest: Path,
               tcp: bool = False) -> Path:
    """``dest``: the config ``source`` with ``users.backend = "mysql"`` on ``database``
    (Database.configure: reads as vpop_ro, updates as vpop_rw) over its unix socket or, with
    ``tcp``, 127.0.0.1."""
    from install_site import Install

    user, group, _, _ = owner()
    shutil.copyfile(source, dest)
    site = Install(prefix, prefix.parent / "qmail", user, group,
                   "root" if os.geteuid() == 0 else "user")
    site.config_path = dest
    database.configure(site, tcp=tcp)
    from vpopmail import config as vconfig

    vconfig.load(str(dest))  # its cache, for readers that may not write beside it
    return dest


def sql_copy_users(prefix: Path, config: Path) -> None:
    """The users of every domain copied from vpasswd into the SQL tables of ``config``
    (``vconvert -c -m``), plus the tables vadddomain creates with them (lastauth, valias), so
    both backends hold the same users with the same directories."""
    subprocess.run([str(prefix / "bin" / "vconvert"), "-c", "-m"], check=True,
                   capture_output=True, env={"PATH": "/usr/bin:/bin",
                                             "VPOPMAIL_CONFIG": str(config)})
    from vpopmail import config as vconfig
    from vpopmail.stores.sql import MySQLDatabase

    database = MySQLDatabase(vconfig.load(str(config)))
    for kind in ("lastauth", "valias"):
        database.create_table(kind)
    database.close()
