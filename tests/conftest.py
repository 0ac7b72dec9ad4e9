"""Fixtures and hooks: a real installation per test (tests/install_site.py copies one into
tmp_path), run as qmail and an operator would run it, on each user backend and server mode,
plus a library-level handle on it. Helpers live in helper modules (install_site.py, helpers.py,
the *_site.py modules), which never import this file (tests/test_suite_layout.py)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from delivery_site import inject, tiny_fs  # noqa: F401 - fixtures of the helper modules
from dovecot_site import dovecot24_factory, dovecot_factory  # noqa: F401
from install_site import (REPO, TEMPLATES, VENV, Install, as_user_argv, install, own_account,
                          vpopmail_user_exists)
from mariadb_site import mariadb, mariadb_replica, replicated_db, sql_db  # noqa: F401
from ucspi_site import ipv6, loopback6, plain  # noqa: F401
from vpopmail.api import Vpopmail


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


BACKENDS = ("cdb", "mysql")
#: how modules marked ``through_server`` run the hot paths: the front ends with no server
#: (they exec the Python programs), or through a running vpopmail-server (root install only:
#: the production mode)
SERVER_MODES = ("direct", "server")
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


@pytest.fixture(autouse=True)
def _close_sql_stores() -> Iterator[None]:
    """Close the SQL connections a test opened in this process (``Install.api()`` and the
    like) when it ends. The stores list every SQL database they open for close_stores(), which
    the programs call before they exit; nothing calls it in this process, so each store a test
    left open kept its connections to the session's MariaDB until the worker ended: tens of
    them after a few hundred tests, and the fifty simultaneous logins of test_vchkpw.py then
    met "Too many connections (1040)"."""
    yield
    from vpopmail.stores import close_stores

    close_stores()


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
    return _on_backend(install(tmp_path / "vpopmail", tmp_path / "qmail", *own_account()), request)


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
    # short enough for the identities' server sockets (run/server.sock.HASH) to fit in 107 bytes
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:30]
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
