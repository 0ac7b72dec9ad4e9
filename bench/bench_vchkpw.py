"""Benchmark: whole-process POP3 logins through vchkpw, against the exec and interpreter floors.

    .venv/bin/python bench/bench_vchkpw.py [--runs 31] [--loop 100] [--no-roaming] [--no-sql]

Installs pyvpopmail into bench/work/login and adds example.com with two users: ``sha``, whose
password is SHA-512-crypt (the default scheme), and ``md5``, whose password is MD5-crypt (added
with passwords.scheme switched to md5-crypt for the moment). Each login is what tcpserver and
qmail-popup do for POP3: ``vchkpw /bin/true`` with ``login\\0password\\0timestamp\\0`` on fd 3 and
tcpserver's environment; run as root, vchkpw starts as root and drops to the domain owner (the
vpopmail user) itself, as in production. In the same run, interleaved, it times the exec floor
(``/bin/true`` with fd 3 open), the interpreter floor (``python -I -S -c pass`` with the
wrappers' interpreter), good SHA-512 and MD5 passwords, a wrong password, an unknown user, and
SHA-512 logins with roaming users on (a second config, through VPOPMAIL_CONFIG) from a known IP
(open-smtp refreshed) and from a new IP every time (tcp.smtp.cdb rebuilt), and the same users
with the SQL backend (``users.backend = "mysql"`` on a private MariaDB started for the run, the
users copied by ``vconvert -c -m``; reads as the SELECT-only account over the unix socket, and one
row over TCP to 127.0.0.1; each good login writes its lastauth row). Each figure is the
median of --runs whole processes, and a --loop of back-to-back logins from one shell
(``3<"$CRED"``) per figure; peak RSS comes from GNU time. Writes the "Login" section of
bench/RESULTS.md, with ``python -X importtime`` of one SHA-512 login (and what the SQL backend
imports more).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (POP_ENV, WORK, added_imports, as_fd3, import_report, install,  # noqa: E402
                    machine_line, mariadb_ready, measure_all, owner, peak_rss, private_mariadb,
                    publish, results_table, shell_loop, sql_config, sql_copy_users, timed,
                    wrapper_python)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from mariadb_site import Database

HERE = WORK / "login"
DOMAIN = "example.com"
#: C vpopmail 5.4.33 on this machine class (c-vpopmail-observed.md section 7)
C_VCHKPW_MS = 1.43
C_VCHKPW_RSS_MIB = 1.9
C_EXEC_FLOOR_MS = 0.50
TARGET_MS = 1.5
STAMP = "<27959.1795837166@anchor.test>"
#: shell code giving each login of a loop its own TCPREMOTEIP, 10.x.y.z from $BASE + $i
NEW_IP_EACH = ('k=$((BASE+i)); export TCPREMOTEIP="10.$((k/65536%256)).$((k/256%256)).'
               '$((k%256))"; ')
EXEC_FLOOR = "`/bin/true` (exec floor, fd 3 open)"
FLOOR = "interpreter floor `python -I -S -c pass`"
SHA = "vchkpw, SHA-512-crypt, good password"
MD5 = "vchkpw, MD5-crypt, good password"
WRONG = "vchkpw, wrong password (exit 1)"
UNKNOWN = "vchkpw, unknown user (exit 1)"
ROAM_KNOWN = "vchkpw, SHA-512, roaming, known IP (open-smtp refreshed)"
ROAM_NEW = "vchkpw, SHA-512, roaming, new IP each login (tcp.smtp.cdb rebuilt)"
#: the SQL backend's rows: the cdb row each one mirrors
SQL_ROWS = {f"vchkpw, SQL (socket), {row[len('vchkpw, '):]}": row
            for row in (SHA, MD5, WRONG, UNKNOWN)}
SQL_TCP = "vchkpw, SQL (TCP 127.0.0.1), SHA-512-crypt, good password"


class Tool(NamedTuple):
    argv: list[str]
    env: dict[str, str]
    cred: Path
    ok: int = 0
    new_ip: bool = False


class NewIPs:
    """10.x.y.z addresses never used before in this run: one at a time, or a block for a loop."""

    def __init__(self) -> None:
        self.next = 1

    def one(self) -> str:
        k = self.block(1)
        return f"10.{k >> 16 & 255}.{k >> 8 & 255}.{k & 255}"

    def block(self, count: int) -> int:
        """The first number of ``count`` fresh ones (NEW_IP_EACH turns $BASE+$i into an IP)."""
        first, self.next = self.next, self.next + count
        return first


class Setup:
    """The installed site with its two users, the credentials files, and the configs."""

    def __init__(self, database: "Database | None") -> None:
        self.user, self.group, _, _ = owner()
        prefix = install(HERE, self.user, self.group)
        self.bin = prefix / "bin"
        self.config = prefix / "etc" / "vpopmail.toml"
        self.etc = prefix / "etc"
        self.run("vadddomain", DOMAIN, "pm-secret")
        self.run("vadduser", f"sha@{DOMAIN}", "pw-sha")
        sha512 = self.config.read_text()
        self.config.write_text(switch(sha512, 'scheme = "sha512-crypt"', 'scheme = "md5-crypt"'))
        self.run("vadduser", f"md5@{DOMAIN}", "pw-md5")
        self.config.write_text(sha512)
        hashes = {line.split(":")[0]: line.split(":")[1] for line in
                  (prefix / "domains" / DOMAIN / "vpasswd").read_text().splitlines()}
        if not (hashes["sha"].startswith("$6$") and hashes["md5"].startswith("$1$")):
            raise SystemExit(f"unexpected password schemes in vpasswd: {hashes}")
        self.roaming = HERE / "vpopmail-roaming.toml"
        self.roaming.write_text(switch(sha512, "roaming_users = false", "roaming_users = true"))
        self.roaming.chmod(0o644)
        self.creds = {name: self.credentials(name, login, password) for name, login, password in
                      (("sha", f"sha@{DOMAIN}", "pw-sha"), ("md5", f"md5@{DOMAIN}", "pw-md5"),
                       ("wrong", f"sha@{DOMAIN}", "not-it"),
                       ("unknown", f"nobody@{DOMAIN}", "pw-sha"))}
        self.python = wrapper_python(self.bin / "vchkpw")
        self.ips = NewIPs()
        #: "socket" / "tcp" -> the SQL backend's config (none without a database)
        self.sql: dict[str, Path] = {}
        if database is not None:
            self.sql = {way: sql_config(prefix, database, self.config,
                                        HERE / f"vpopmail-sql-{way}.toml", tcp=way == "tcp")
                        for way in ("socket", "tcp")}
            sql_copy_users(prefix, self.sql["socket"])

    def run(self, *argv: str) -> None:
        subprocess.run([str(self.bin / argv[0]), *argv[1:]], check=True, capture_output=True)

    @staticmethod
    def credentials(name: str, login: str, password: str) -> Path:
        """What qmail-popup writes on fd 3, in a file the harness opens for each login."""
        path = HERE / f"cred-{name}"
        path.write_bytes(f"{login}\0{password}\0{STAMP}\0".encode())
        return path

    def tools(self, roaming: bool) -> dict[str, Tool]:
        vchkpw = [str(self.bin / "vchkpw"), "/bin/true"]
        roam = {**POP_ENV, "VPOPMAIL_CONFIG": str(self.roaming)}
        tools = {
            EXEC_FLOOR: Tool(["/bin/true"], POP_ENV, self.creds["sha"]),
            FLOOR: Tool([self.python, "-I", "-S", "-c", "pass"], POP_ENV, self.creds["sha"]),
            SHA: Tool(vchkpw, POP_ENV, self.creds["sha"]),
            MD5: Tool(vchkpw, POP_ENV, self.creds["md5"]),
            WRONG: Tool(vchkpw, POP_ENV, self.creds["wrong"], ok=1),
            UNKNOWN: Tool(vchkpw, POP_ENV, self.creds["unknown"], ok=1),
        }
        if roaming:
            tools[ROAM_KNOWN] = Tool(vchkpw, roam, self.creds["sha"])
            tools[ROAM_NEW] = Tool(vchkpw, roam, self.creds["sha"], new_ip=True)
        if self.sql:
            sql = {way: {**POP_ENV, "VPOPMAIL_CONFIG": str(path)}
                   for way, path in self.sql.items()}
            for name, row in SQL_ROWS.items():
                tools[name] = tools[row]._replace(env=sql["socket"])
            tools[SQL_TCP] = tools[SHA]._replace(env=sql["tcp"])
        return tools

    def env(self, tool: Tool) -> dict[str, str]:
        """The tool's environment for one login (a fresh TCPREMOTEIP where it wants one)."""
        return {**tool.env, "TCPREMOTEIP": self.ips.one()} if tool.new_ip else tool.env

    def once(self, tool: Tool) -> tuple[float, int]:
        return timed(tool.argv, Path(os.devnull), self.env(tool), ok=(tool.ok,), fd3=tool.cred)

    def loop(self, tool: Tool, count: int) -> float:
        if not tool.new_ip:
            return shell_loop(tool.argv, tool.env, None, count, fd3=tool.cred, ok=tool.ok)
        env = {**tool.env, "BASE": str(self.ips.block(count))}
        return shell_loop(tool.argv, env, None, count, fd3=tool.cred, ok=tool.ok,
                          each=NEW_IP_EACH)

    def peak(self, tool: Tool) -> int | None:
        return peak_rss(tool.argv, Path(os.devnull), self.env(tool), fd3=tool.cred)

    def open_smtp_lines(self) -> int:
        path = self.etc / "open-smtp"
        return len(path.read_text().splitlines()) if path.exists() else 0


def switch(text: str, old: str, new: str) -> str:
    if old not in text:
        raise SystemExit(f"config has no {old!r}")
    return text.replace(old, new)


def importtime(setup: Setup) -> list[str]:
    """``-X importtime`` lines of one SHA-512 login through the installed wrapper (with the
    interpreter flags of its shebang), and what the SQL backend (socket) imports more."""
    wrapper = setup.bin / "vchkpw"
    flags = wrapper.read_text().split("\n")[0].split()[1:]

    def login(env: dict[str, str]) -> str:
        with open(setup.creds["sha"], "rb") as cred:
            result = subprocess.run([setup.python, *flags, "-X", "importtime", str(wrapper),
                                     "/bin/true"], stdin=subprocess.DEVNULL, capture_output=True,
                                    text=True, env=env, **as_fd3(cred))  # type: ignore[arg-type]
        if result.returncode != 0:
            raise SystemExit(f"importtime login exited {result.returncode}: {result.stderr}")
        return result.stderr

    cdb = login(POP_ENV)
    lines = import_report(f"installed wrapper (`{' '.join(flags)}`), SHA-512-crypt login", cdb)
    if setup.sql:
        lines += added_imports("the same login with the SQL backend (socket)", cdb,
                               login({**POP_ENV, "VPOPMAIL_CONFIG": str(setup.sql["socket"])}))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=31)
    parser.add_argument("--loop", type=int, default=100)
    parser.add_argument("--no-roaming", action="store_true",
                        help="leave out the two roaming-users figures")
    parser.add_argument("--no-sql", action="store_true",
                        help="leave out the SQL backend's figures (no MariaDB started)")
    args = parser.parse_args(argv)
    sql = not args.no_sql and mariadb_ready()
    with private_mariadb() if sql else contextlib.nullcontext() as database:
        return measure(args, Setup(database))


def measure(args: argparse.Namespace, setup: Setup) -> int:
    # the warm-up also makes the lastauth rows and the known IP's first rebuild
    table = measure_all(setup.tools(not args.no_roaming), setup.once, setup.loop, setup.peak,
                        args.runs, args.loop)
    write_results(table, args.runs, args.loop, setup.open_smtp_lines(), importtime(setup))
    return 0


def write_results(table: dict[str, tuple[tuple[float, int], float]], runs: int, loop_count: int,
                  open_smtp: int, imports: list[str]) -> None:
    floor, floor_loop = table[FLOOR][0][0], table[FLOOR][1]
    starter = ("vchkpw is started as root, as tcpserver and qmail-popup start it, and drops to "
               "the vpopmail user itself" if os.geteuid() == 0 else
               f"vchkpw runs as {owner()[0]} (not root: no change of ids)")
    lines = ["## Login: vchkpw (`bench/bench_vchkpw.py`)", "",
             machine_line(runs, "GNU time (max of 3 runs)"), "",
             f"A POP3 login as tcpserver and qmail-popup make it: `vchkpw /bin/true`, the "
             f"credentials on fd 3, tcpserver's environment; {starter}. \"loop\" = {loop_count} "
             f"logins back to back from one shell (`3<\"$CRED\"`), per login. \"over floor\" = "
             f"our median minus the interpreter floor's in the same run.", "",
             *results_table(table, floor, "vchkpw")]

    def work(name: str) -> str:
        (wall, _), per = table[name]
        return (f"{(wall - floor) * 1000:.2f} ms (loop: {(per - floor_loop) * 1000:.2f} ms)")

    if SQL_TCP in table:
        lines += ["The SQL backend over the cdb files, the same login (medians): " + "; ".join(
            f"{row[len('vchkpw, '):]} {(table[name][0][0] - table[row][0][0]) * 1000:+.2f} ms"
            for name, row in SQL_ROWS.items()) + f"; TCP instead of the socket "
            f"{(table[SQL_TCP][0][0] - table[next(iter(SQL_ROWS))][0][0]) * 1000:+.2f} ms. "
            "SQL rows: users.backend = \"mysql\" on a private MariaDB 10.11 on this machine "
            "(server defaults, InnoDB commit flush on), reads as the SELECT-only account; a "
            "good login also writes its lastauth row on the update connection.", ""]
    lines += [f"Our work over the interpreter floor: MD5-crypt {work(MD5)}, SHA-512-crypt "
              f"{work(SHA)}; target {TARGET_MS} ms.", "",
              f"C vpopmail 5.4.33's vchkpw (quoted from c-vpopmail-observed.md section 7, not "
              f"re-run: not packaged) took {C_VCHKPW_MS} ms per login in a loop of 100 (good "
              f"MD5-crypt password, exec `/bin/true`, {C_VCHKPW_RSS_MIB} MiB peak) over an exec "
              f"floor (sh → `/bin/true`, fd 3 open) of {C_EXEC_FLOOR_MS} ms on this machine "
              f"class. Here, in the same kind of loop: MD5-crypt {table[MD5][1] * 1000:.2f} ms "
              f"over an exec floor of {table[EXEC_FLOOR][1] * 1000:.2f} ms.", ""]
    if ROAM_KNOWN in table:
        sha = table[SHA][0][0]
        lines += [f"Roaming users over the plain SHA-512 login: known IP "
                  f"{(table[ROAM_KNOWN][0][0] - sha) * 1000:+.2f} ms, new IP "
                  f"{(table[ROAM_NEW][0][0] - sha) * 1000:+.2f} ms (open-smtp had {open_smtp} "
                  f"lines at the end: every new-IP login adds one, and both rows share it).", ""]
    publish("## Login:", lines, "one SHA-512-crypt login", imports)


if __name__ == "__main__":
    sys.exit(main())
