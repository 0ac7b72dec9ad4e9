"""Benchmark: what the SQL driver costs a hot-path process, mysqlclient (C) against PyMySQL.

    .venv/bin/python bench/bench_sqldriver.py [--runs 31] [--loop 50]

Starts a private MariaDB (tests/mariadb_site.py's server), installs pyvpopmail into
bench/work/sqldriver with ``users.backend = "mysql"`` and adds alice@example.com, so the
``vpopmail`` table is the one the commands create. PyMySQL goes into a throwaway virtualenv,
bench/work/pymysql-venv (not a dependency of the project). Every row is a whole
``python -I -S -c CODE`` process with the wrappers' interpreter, ending in ``os._exit`` as the
installed wrappers do, interleaved with the interpreter floor (``-c pass``) in the same run:
mysqlclient's ``from MySQLdb import _mysql`` (with the package's ``__init__``), the same module
loaded alone (a bare ``MySQLdb`` package registered first, so the ``__init__`` with its DB-API
layer and ``datetime`` never runs: what ``vpopmail.stores.sql._driver`` does), each followed by connect + one SELECT of alice's row by
primary key as the SELECT-only account, over the unix socket and over TCP to 127.0.0.1, one
with a normal interpreter exit (the C library's teardown), and PyMySQL the same way. Then an
A/B on the installed hot paths with the SQL backend (socket): vdelivermail (4 KB, no fsync)
and vchkpw (SHA-512-crypt), each run by a launcher that execs the wrapper, as shipped and with
``import MySQLdb`` first (the package, as the hot paths loaded it before). Medians of --runs, a --loop of back-to-back runs from one shell, peak RSS from
GNU time. Writes the "SQL driver" section of bench/RESULTS.md with ``python -X importtime`` of
each driver's import.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_delivery import message, qmail_local_env  # noqa: E402
from bench_vchkpw import POP_ENV, STAMP  # noqa: E402
from common import (WORK, added_imports, install, machine_line,  # noqa: E402
                    measure_all, owner, peak_rss, private_mariadb, publish, results_table,
                    shell_loop, sql_config, timed, wrapper_python)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from mariadb_site import Database

HERE = WORK / "sqldriver"
PYMYSQL_VENV = WORK / "pymysql-venv"
DOMAIN = "example.com"
SELECT = ("SELECT pw_name, pw_passwd, pw_uid, pw_gid, pw_gecos, pw_dir, pw_shell, "
          "pw_clear_passwd FROM vpopmail WHERE pw_name = 'alice' AND pw_domain = 'example.com'")
EXIT = "import os; os._exit(0)"
FLOOR = "interpreter floor `python -I -S -c pass`"
OS_EXIT = "`import os; os._exit(0)` (how the wrappers end)"
PKG = "mysqlclient: `from MySQLdb import _mysql` (the package)"
BARE = "mysqlclient: `_mysql` alone (bare package)"
SOCK = "mysqlclient: import + connect (socket) + SELECT"
TCP = "mysqlclient: import + connect (TCP 127.0.0.1) + SELECT"
BARE_SOCK = "mysqlclient: `_mysql` alone + connect (socket) + SELECT"
NORMAL = "mysqlclient: import + connect (socket) + SELECT, normal exit"
PY = "PyMySQL: `import pymysql`"
PY_SOCK = "PyMySQL: import + connect (socket) + SELECT"
PY_TCP = "PyMySQL: import + connect (TCP 127.0.0.1) + SELECT"
HOT = {"vdelivermail": "vdelivermail, SQL (socket), launcher + wrapper, {}",
       "vchkpw": "vchkpw, SQL (socket), launcher + wrapper, {}"}
WITH_PKG, WITH_BARE = "the package imported first", "as shipped (`_mysql` alone)"
#: row prefixes that get a column "over floor"
MEASURED = ("`import os", "mysqlclient", "PyMySQL", "vdelivermail", "vchkpw")


class Tool(NamedTuple):
    argv: list[str]
    env: dict[str, str]
    stdin: Path = Path(os.devnull)
    cwd: Path | None = None
    user: tuple[int, int] | None = None
    fd3: Path | None = None


def pymysql_site() -> str:
    """site-packages of the throwaway PyMySQL virtualenv (made on first use)."""
    python = PYMYSQL_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PYMYSQL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "PyMySQL"], check=True)
    return subprocess.check_output(
        [str(python), "-c", "import pymysql, os; print(os.path.dirname(pymysql.__path__[0]))"],
        text=True).strip()


class Setup:
    """The installed SQL site, the code of each driver row, and the launchers of the A/B."""

    def __init__(self, database: "Database") -> None:
        import MySQLdb

        user, group, uid, gid = owner()
        self.ids = (uid, gid)
        prefix = install(HERE, user, group)
        self.bin = prefix / "bin"
        nosync = HERE / "vpopmail-nosync.toml"
        nosync.write_text((prefix / "etc" / "vpopmail.toml").read_text()
                          .replace("file_sync = true", "file_sync = false"))
        self.config = sql_config(prefix, database, nosync, HERE / "vpopmail-sql.toml")
        env = {"PATH": "/usr/bin:/bin", "VPOPMAIL_CONFIG": str(self.config)}
        for argv in (["vadddomain", DOMAIN, "pm-secret"], ["vadduser", f"alice@{DOMAIN}", "pw"]):
            subprocess.run([str(self.bin / argv[0]), *argv[1:]], check=True, capture_output=True,
                           env=env)
        if len(database.rows(SELECT)) != 1:
            raise SystemExit("alice is not in the vpopmail table")
        self.domain_dir = prefix / "domains" / DOMAIN
        self.python = wrapper_python(self.bin / "vdelivermail")
        self.msg = message(4096)
        self.cred = HERE / "cred"
        self.cred.write_bytes(f"alice@{DOMAIN}\0pw\0{STAMP}\0".encode())
        site = os.path.dirname(MySQLdb.__path__[0])
        self.path = {"mysqlclient": f"import sys; sys.path[:0] = [{site!r}]; ",
                     "PyMySQL": f"import sys; sys.path[:0] = [{pymysql_site()!r}]; "}
        #: registered before the import, MySQLdb's __init__ never runs: only _mysql loads
        self.bare = (f"m = type(sys)('MySQLdb'); m.__path__ = [{MySQLdb.__path__[0]!r}]; "
                     "sys.modules['MySQLdb'] = m; ")
        server = database.server
        from mariadb_site import PASSWORD, RO

        login = f"user={RO!r}, password={PASSWORD!r}, database={database.name!r}, " \
                "charset='utf8mb4', connect_timeout=5, "
        self.where = {"socket": f"unix_socket={server.socket!r}",
                      "tcp": f"host='127.0.0.1', port={server.port}"}
        self.connect = {
            "mysqlclient": f"c = _mysql.connect({login}{{where}}); c.query({SELECT!r}); "
                           "r = c.store_result(); r.fetch_row(0); ",
            "PyMySQL": f"c = pymysql.connect({login}{{where}}); cur = c.cursor(); "
                       f"cur.execute({SELECT!r}); cur.fetchall(); "}

    def code(self, driver: str, connect: str = "", bare: bool = False, exit_: bool = True
             ) -> str:
        """The -c code of a driver row: import, then (``connect``: "socket" or "tcp") connect
        and SELECT alice's row; ``bare``: mysqlclient's _mysql alone."""
        load = "import pymysql; " if driver == "PyMySQL" else \
            (self.bare if bare else "") + "from MySQLdb import _mysql; "
        work = self.connect[driver].format(where=self.where[connect]) if connect else ""
        return self.path[driver] + load + work + (EXIT if exit_ else "")

    def tools(self) -> dict[str, Tool]:
        plain = {"PATH": "/usr/bin:/bin"}

        def py(code: str) -> Tool:
            return Tool([self.python, "-I", "-S", "-c", code], plain)

        tools = {FLOOR: py("pass"), OS_EXIT: py(EXIT), PKG: py(self.code("mysqlclient")),
                 BARE: py(self.code("mysqlclient", bare=True)),
                 SOCK: py(self.code("mysqlclient", "socket")),
                 TCP: py(self.code("mysqlclient", "tcp")),
                 BARE_SOCK: py(self.code("mysqlclient", "socket", bare=True)),
                 NORMAL: py(self.code("mysqlclient", "socket", exit_=False)),
                 PY: py(self.code("PyMySQL")),
                 PY_SOCK: py(self.code("PyMySQL", "socket")),
                 PY_TCP: py(self.code("PyMySQL", "tcp"))}
        sql_env = {"VPOPMAIL_CONFIG": str(self.config)}
        for bare in (False, True):
            for name, args, tool in (
                    ("vdelivermail", ["", "bounce-no-mailbox"],
                     Tool([], qmail_local_env(self.domain_dir, self.config), self.msg,
                          self.domain_dir, self.ids)),
                    ("vchkpw", ["/bin/true"], Tool([], {**POP_ENV, **sql_env}, fd3=self.cred))):
                wrapper = self.bin / name
                # vpopmail.stores.sql._driver loads _mysql alone; importing the package first is how
                # the hot paths loaded it before
                first = "" if bare else f"{self.path['mysqlclient']}import MySQLdb; "
                launcher = f"import sys; {first}exec(open({str(wrapper)!r}).read())"
                tools[HOT[name].format(WITH_BARE if bare else WITH_PKG)] = tool._replace(
                    argv=[self.python, "-I", "-S", "-c", launcher, *args])
        return tools

    def once(self, tool: Tool) -> tuple[float, int]:
        return timed(tool.argv, tool.stdin, tool.env, tool.cwd, tool.user, fd3=tool.fd3)

    def loop(self, tool: Tool, count: int) -> float:
        return shell_loop(tool.argv, tool.env, tool.cwd, count, tool.user, stdin=tool.stdin,
                          fd3=tool.fd3)

    def peak(self, tool: Tool) -> int | None:
        return peak_rss(tool.argv, tool.stdin, tool.env, tool.cwd, tool.user, fd3=tool.fd3)

    def importtime(self) -> list[str]:
        """What each driver's import adds to ``import os; os._exit(0)`` (``-X importtime``)."""
        def stderr(code: str) -> str:
            return subprocess.run([self.python, "-X", "importtime", "-I", "-S", "-c", code],
                                  capture_output=True, text=True, check=True).stderr

        floor = stderr(EXIT)
        return [*added_imports("mysqlclient, `from MySQLdb import _mysql`", floor,
                               stderr(self.code("mysqlclient"))),
                *added_imports("mysqlclient, `_mysql` alone (bare package)", floor,
                               stderr(self.code("mysqlclient", bare=True))),
                *added_imports("PyMySQL, `import pymysql`", floor, stderr(self.code("PyMySQL")))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=31)
    parser.add_argument("--loop", type=int, default=50)
    args = parser.parse_args(argv)
    with private_mariadb() as database:
        setup = Setup(database)
        table = measure_all(setup.tools(), setup.once, setup.loop, setup.peak, args.runs,
                            args.loop)
        write_results(table, args.runs, args.loop, setup.importtime())
    return 0


def write_results(table: dict[str, tuple[tuple[float, int], float]], runs: int, loop_count: int,
                  imports: list[str]) -> None:
    floor = table[FLOOR][0][0]

    def ms(name: str, base: str = FLOOR, sign: str = "+") -> str:
        return f"{(table[name][0][0] - table[base][0][0]) * 1000:{sign}.2f} ms"

    def rss(name: str) -> str:
        return f"{table[name][0][1] / 1024:.1f} MiB"

    def saved(name: str) -> str:
        return ms(HOT[name].format(WITH_PKG), HOT[name].format(WITH_BARE), "")

    lines = ["## SQL driver: mysqlclient and PyMySQL (`bench/bench_sqldriver.py`)", "",
             machine_line(runs, "GNU time (max of 3 runs)"), "",
             "Whole `python -I -S -c CODE` processes with the wrappers' interpreter, each "
             "ending in `os._exit(0)` as the installed wrappers do (except the \"normal exit\" "
             "row); `os` is not loaded at start-up with -S, and importing it costs about what "
             "the normal exit it skips does (the second row). Connect as the SELECT-only account "
             "of a private MariaDB 10.11 on this machine, then one SELECT of a user's row by "
             "primary key from the `vpopmail` table the commands created. \"bare package\": an "
             "empty `MySQLdb` module with the package's `__path__` put into `sys.modules` first, "
             "so only the C module `_mysql` (and its `_exceptions`) loads, not the package's "
             "`__init__`. The last four rows run the installed wrappers with users.backend = "
             "\"mysql\" (socket) through a launcher (`-c \"exec(open(wrapper).read())\"`), as "
             "shipped (`vpopmail.stores.sql._driver` loads `_mysql` alone, as the bare package does) and "
             "with `import MySQLdb` first (what the hot paths did before): vdelivermail "
             "delivering 4 KB without fsync, vchkpw a SHA-512-crypt login. "
             f"\"loop\" = {loop_count} runs back to back from one shell, per run; \"over "
             f"floor\" = the median minus the interpreter floor's in the same run.", "",
             *results_table(table, floor, MEASURED)]
    lines += [f"Over the floor: mysqlclient import {ms(PKG)}, import + connect + SELECT "
              f"{ms(SOCK)} (socket), {ms(TCP)} (TCP); PyMySQL import {ms(PY)}, import + "
              f"connect + SELECT {ms(PY_SOCK)} (socket), {ms(PY_TCP)} (TCP). PyMySQL costs "
              f"{ms(PY_SOCK, SOCK, '')} more per process than mysqlclient over the socket: "
              f"mysqlclient (`MySQLdb._mysql`) is the driver. Peak RSS: "
              f"{rss(SOCK)} (mysqlclient) and {rss(PY_SOCK)} (PyMySQL) against {rss(FLOOR)}.", "",
              f"The package's `__init__` (DB-API layer, `MySQLdb.times` → `datetime`, "
              f"constants): `_mysql` alone saves {ms(PKG, BARE, '')} on the import and "
              f"{ms(SOCK, BARE_SOCK, '')} with connect + SELECT; on the installed hot paths "
              f"(as shipped against the package imported first) {saved('vdelivermail')} per "
              f"delivery and {saved('vchkpw')} per login (medians). A normal interpreter exit (no `import os; os._exit(0)`) costs "
              f"{ms(NORMAL, SOCK)} against the same work ending in `os._exit` (the "
              f"interpreter's and libmariadb's teardown).", ""]
    publish("## SQL driver:", lines, "each driver's import over `import os; os._exit(0)`",
            imports)


if __name__ == "__main__":
    sys.exit(main())
