"""A real installation of this repository (packaging/install) for the tests: ``install``
copies one made once per process; ``Install`` runs its commands as an operator would. Imported
by conftest.py's fixtures, the *_site.py modules and the tests."""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

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
#: path (vdelivermail adds vpopmail.passwords: a delivery checks no password). ``os`` too
#: (1.4 ms, with _collections_abc): the hot paths call ``posix`` (vpopmail/fsutil.py); and
#: ``bisect``, a small one that only vadduser needs.
HEAVY = {"os", "bisect", "__future__", "subprocess", "logging", "typing", "enum", "re", "tomllib", "email",
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
                                       "tests/install_site.py install() cannot copy it")
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
        if not _templates:  # a killed run's, whose process had this pid: not ours
            shutil.rmtree(TEMPLATES, ignore_errors=True)
        base = TEMPLATES / str(len(_templates))
        base.mkdir(mode=0o755, parents=True)
        TEMPLATES.chmod(0o755)
        _templates[key] = Template(base, user, group, venv, mode)
    _templates[key].copy(prefix, qmaildir)
    return Install(prefix, qmaildir, user, group, mode)


def own_account() -> tuple[str, str]:
    """(user, group) names of the process running the tests: a sandbox install's owner."""
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


def vpopmail_user_exists() -> bool:
    try:
        pwd.getpwnam("vpopmail")
        grp.getgrnam("vchkpw")
    except KeyError:
        return False
    return True


#: the reason for ``cdb_only`` on a both_backends test whose outcome no backend can change
#: (usage, input refused before any lookup, .qmail program exit codes): its SQL run would cost
#: time and test nothing more
NO_BACKEND = "the user backend plays no part in this"
