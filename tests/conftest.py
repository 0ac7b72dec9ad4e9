"""Fixtures: a real installation per test (packaging/install into tmp_path), run as qmail and an
operator would run it, plus a library-level handle on a temp config."""
from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dovecot_site import dovecot_factory  # noqa: F401 - fixtures for the peer tests
from ucspi_site import ipv6, loopback6, plain  # noqa: F401
from vpopmail import config as vconfig
from vpopmail.api import Vpopmail
from vpopmail.stores import VUser

if TYPE_CHECKING:
    from mariadb_site import Database

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "packaging" / "install"
VENV = Path(sys.prefix)
#: compiled front ends by their inputs (packaging/install): one build for the whole suite
FRONTEND_CACHE = Path("/tmp") / f"pyvpopmail-frontends-{os.getuid()}"
#: the environment qmail-local / qmail-popup / a cron job would give: nothing of ours
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
#: modules whose import costs milliseconds (python-runtime-facts.md); none may load on a hot
#: path (vdelivermail adds vpopmail.passwords: a delivery checks no password)
HEAVY = {"__future__", "subprocess", "logging", "typing", "enum", "re", "tomllib", "email",
         "socket", "hashlib", "hmac", "pathlib", "argparse", "dataclasses", "filelock", "psutil",
         "passlib", "cdblib", "shutil", "tempfile", "signal", "vpopmail.api", "collections",
         "datetime", "MySQLdb"}  # the last two: mysqlclient's package __init__ (vpopmail.stores.sql._driver)


def as_user_argv(user: str) -> list[str]:
    """setpriv prefix that runs a command as ``user`` with its primary group."""
    account = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups"]


class Install:
    """One installed vpopmail home; ``run`` executes its bin/ commands like an operator."""

    def __init__(self, prefix: Path, qmaildir: Path, user: str, group: str,
                 mode: str = "user") -> None:
        #: "user": a sandbox owned by whoever runs the tests; "root": installed as root for
        #: the vpopmail user, whose programs the tests run as that user (or as root where a
        #: server would start them as root)
        self.mode = mode
        self.prefix = prefix
        self.qmaildir = qmaildir
        self.user = user
        self.group = group
        self.bin = prefix / "bin"
        self.config_path = prefix / "etc" / "vpopmail.toml"
        self.domains = prefix / "domains"
        #: the user backend: "cdb" (the vpasswd files), or "mysql" once a fixture pointed the
        #: install at a test database (modules marked ``both_backends``): ``database``
        self.backend = "cdb"
        self.database: Database | None = None

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.user).pw_uid

    @property
    def gid(self) -> int:
        return grp.getgrnam(self.group).gr_gid

    def run(self, command: str, *args: str, input: str | None = None,
            env: dict[str, str] | None = None, as_user: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin / command), *args]
        if as_user:
            argv = [*as_user_argv(as_user), *argv]
        return subprocess.run(argv, input=input if input is not None else "", text=True,
                              capture_output=True, env=env or CLEAN_ENV, timeout=timeout,
                              cwd="/")

    def program(self, name: str) -> Path:
        """The Python program ``name``: behind its C front end in libexec/, else in bin/."""
        behind = self.prefix / "libexec" / name
        return behind if behind.exists() else self.bin / name

    def ok(self, command: str, *args: str, **kw: object) -> str:
        """Run a command that must succeed; return its stdout."""
        result = self.run(command, *args, **kw)  # type: ignore[arg-type]
        assert result.returncode == 0, (command, args, result.stdout, result.stderr)
        return result.stdout

    def api(self) -> Vpopmail:
        return Vpopmail(vconfig.load(str(self.config_path)))

    def vuser(self, address: str) -> VUser:
        """One user as the configured backend stores it."""
        return self.vusers(address.partition("@")[2])[address.partition("@")[0]]

    def vusers(self, domain: str) -> dict[str, VUser]:
        """The users of ``domain`` by name, as the configured backend stores them."""
        api = self.api()
        try:
            return {user.name: user for user in api.list_users(domain)[0]}
        finally:
            api.backend.close()

    def last_login(self, address: str) -> tuple[float, str] | None:
        """(time, ip) of the user's last login as the backend records it (file or row)."""
        api = self.api()
        try:
            user, entry = api.get_user(address)
            return api.backend.last_login(entry, user)
        finally:
            api.backend.close()

    def set_config(self, section: str, key: str, value: object) -> None:
        """Edit one key of the installed TOML (the cache refreshes on the next load)."""
        values = vconfig.parse_file(str(self.config_path))
        values[f"{section}_{key}"] = value
        self.config_path.write_text(vconfig.render(values))


def run_installer(prefix: Path, qmaildir: Path, user: str, group: str, venv: Path = VENV,
                  mode: str = "user") -> Install:
    """packaging/install into ``prefix`` (about 0.7 s: what ``install`` does once per process
    and kind of install)."""
    subprocess.run([sys.executable, str(INSTALL), "--prefix", str(prefix), "--qmaildir",
                    str(qmaildir), "--user", user, "--group", group, "--venv", str(venv)],
                   check=True, capture_output=True, text=True,
                   env={**os.environ, "PYVPOPMAIL_FRONTEND_CACHE": str(FRONTEND_CACHE)})
    return Install(prefix, qmaildir, user, group, mode)


class Template:
    """One real install that ``install`` copies: its two trees, and the files (relative to
    them) that name its paths and so are rewritten in each copy."""

    def __init__(self, base: Path, user: str, group: str, venv: Path, mode: str) -> None:
        self.trees = (base / "vpopmail", base / "qmail")
        run_installer(*self.trees, user, group, venv, mode)
        self.config = Path("etc", "vpopmail.toml.cache")  # made again for each copy
        self.texts: list[tuple[int, Path]] = []
        names = [str(tree).encode() for tree in self.trees]
        for number, tree in enumerate(self.trees):
            for path in sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()):
                relative = path.relative_to(tree)
                data = path.read_bytes()
                if relative == self.config or path.suffix == ".pyc" or not any(
                        name in data for name in names):
                    continue  # bytecode keeps its compile-time file names, as in an install
                if b"\0" in data:
                    raise RuntimeError(f"{path}: a binary file holds the install's path; "
                                       "tests/conftest.py install() cannot copy it")
                self.texts.append((number, relative))

    def copy(self, prefix: Path, qmaildir: Path) -> None:
        """The install at ``prefix`` and ``qmaildir`` (neither may exist)."""
        targets = (prefix, qmaildir)
        for tree, target in zip(self.trees, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-a", "--no-target-directory", str(tree), str(target)],
                           check=True)
        for number, relative in self.texts:
            path = targets[number] / relative
            data = path.read_bytes()
            for tree, target in zip(self.trees, targets):
                data = data.replace(str(tree).encode(), str(target).encode())
            with open(path, "r+b") as fh:  # the same file: its owner and mode stay
                fh.write(data)
                fh.truncate()
        (prefix / self.config).unlink()
        vconfig.load(str(prefix / "etc" / "vpopmail.toml"))  # as packaging/install does


#: templates by (user, group, venv, mode), made on first use in this process (so one set per
#: xdist worker); removed at the end of the session
_templates: dict[tuple[str, str, Path, str], Template] = {}
TEMPLATES = Path("/tmp") / f"pyvpopmail-templates-{os.getpid()}"


def install(prefix: Path, qmaildir: Path, user: str, group: str, venv: Path = VENV,
            mode: str = "user") -> Install:
    """What packaging/install makes at ``prefix`` and ``qmaildir`` for ``user``:``group``, in
    a tenth of its time: a copy of a real install of the same kind made once per process,
    with its paths rewritten (tests/test_suite_installs.py compares the two)."""
    key = (user, group, venv, mode)
    if key not in _templates:
        base = TEMPLATES / str(len(_templates))
        base.mkdir(mode=0o755, parents=True)
        TEMPLATES.chmod(0o755)
        _templates[key] = Template(base, user, group, venv, mode)
    _templates[key].copy(prefix, qmaildir)
    return Install(prefix, qmaildir, user, group, mode)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """An xdist worker's tmp paths under ``<basetemp>/gw0`` rather than ``…/popen-gw0``: the
    paths of a run without workers plus 4 characters (a home directory must fit the 160 of
    the SQL ``pw_dir`` column with a 64-character user name)."""
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker and config.option.basetemp:
        config.option.basetemp = str(Path(config.option.basetemp).with_name(worker))


def pytest_sessionfinish(session: pytest.Session) -> None:
    shutil.rmtree(TEMPLATES, ignore_errors=True)


def _me() -> tuple[str, str]:
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


BACKENDS = ("cdb", "mysql")
#: how modules marked ``through_server`` run the hot paths: the front ends with no server
#: (they exec the Python programs), or through a running vpopmail-server (root install only:
#: the production mode)
SERVER_MODES = ("direct", "server")
#: the reason for ``cdb_only`` on a both_backends test whose outcome no backend can change
#: (usage, input refused before any lookup, .qmail program exit codes): its SQL run would cost
#: time and test nothing more
NO_BACKEND = "the user backend plays no part in this"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``both_backends`` (a module's ``pytestmark``) run once per user backend,
    unless also marked ``cdb_only(reason)``, or ``sql_only`` (a check of the SQL store
    itself): ids end in ``cdb`` / ``mysql``."""
    if (metafunc.definition.get_closest_marker("through_server")
            and "server_mode" in metafunc.fixturenames):
        metafunc.parametrize("server_mode", SERVER_MODES, indirect=True)
    marked = metafunc.definition.get_closest_marker("both_backends")
    if (marked and "backend" in metafunc.fixturenames
            and not metafunc.definition.get_closest_marker("cdb_only")):
        sql_only = metafunc.definition.get_closest_marker("sql_only")
        metafunc.parametrize("backend", BACKENDS[1:] if sql_only else BACKENDS, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On "mysql", and through a running server, ``each_install`` tests run in the root
    install only (the production mode: programs as the vpopmail user reading the database
    password, a server as root; the sandbox mode of the same tests would double their time for
    little)."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec else {}
        if ((params.get("backend") == "mysql" or params.get("server_mode") == "server")
                and params.get("each_install") == "user"):
            dropped.append(item)
            continue
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The user backend of the install fixtures: "cdb" unless parametrized (both_backends)."""
    return getattr(request, "param", "cdb")


def _on_backend(inst: Install, request: pytest.FixtureRequest) -> Install:
    """Point ``inst`` at a fresh MariaDB database when the test runs on "mysql". (The install
    fixtures take ``backend`` as an argument only so that both_backends can parametrize it.)"""
    if request.getfixturevalue("backend") == "mysql":
        inst.database = request.getfixturevalue("sql_db")
        inst.database.configure(inst)
        inst.backend = "mysql"
    return inst


@pytest.fixture
def vhome(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Install:
    """A sandbox install owned by the user running the tests (the ordinary-user mode)."""
    return _on_backend(install(tmp_path / "vpopmail", tmp_path / "qmail", *_me()), request)


def vpopmail_user_exists() -> bool:
    try:
        pwd.getpwnam("vpopmail")
        grp.getgrnam("vchkpw")
    except KeyError:
        return False
    return True


def _readable_by(user: str, path: Path) -> bool:
    probe = subprocess.run([*as_user_argv(user), "test", "-r", str(path / "pyvenv.cfg")],
                           capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="session")
def shared_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the dependencies that the vpopmail user can read: the test venv if
    it can, else a copy built once per session under a world-readable temp dir."""
    if _readable_by("vpopmail", VENV):
        return VENV
    base = Path("/tmp") / f"pyvpopmail-venv-{os.getpid()}"
    subprocess.run([sys.executable, "-m", "venv", str(base)], check=True)
    subprocess.run([str(base / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    f"{REPO}[mysql]"], check=True, capture_output=True)
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    return base


@pytest.fixture
def root_vhome(tmp_path_factory: pytest.TempPathFactory, backend: str,
               request: pytest.FixtureRequest) -> Iterator[Install]:
    """An install as root for the vpopmail user (uid 89), in a directory it can reach."""
    if os.geteuid() != 0 or not vpopmail_user_exists() or not shutil.which("setpriv"):
        pytest.skip("needs root, the vpopmail user and setpriv")
    venv = request.getfixturevalue("shared_venv")
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:40]
    base = Path("/tmp") / f"pyvpopmail-root-{os.getpid()}-{label}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o755)
    try:
        yield _on_backend(install(base / "vpopmail", base / "qmail", "vpopmail", "vchkpw",
                                  venv, "root"), request)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def server_mode(request: pytest.FixtureRequest) -> str:
    """"direct" unless parametrized (``through_server``): see SERVER_MODES."""
    return getattr(request, "param", "direct")


@pytest.fixture(params=["user", "root"])
def each_install(request: pytest.FixtureRequest, backend: str, server_mode: str
                 ) -> Iterator[Install]:
    """Both install modes in turn (``Install.mode``): the sandbox, then the root install;
    with a running vpopmail-server in the "server" mode."""
    inst = request.getfixturevalue("vhome" if request.param == "user" else "root_vhome")
    if server_mode == "direct":
        yield inst
        return
    from server_site import running_server

    with running_server(inst):
        yield inst


@pytest.fixture
def api(vhome: Install) -> Vpopmail:
    """The library API over a fresh sandbox install."""
    return vhome.api()


# fixtures of helper modules that import this one (so imported last)
from delivery_site import tiny_fs  # noqa: E402, F401
from mariadb_site import mariadb, mariadb_replica, replicated_db, sql_db  # noqa: E402, F401
