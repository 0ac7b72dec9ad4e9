"""A mail site for delivery tests: an install with a domain and users, and a way to run the
installed vdelivermail exactly as qmail-local runs it (its environment, cwd = the domain
directory, the domain owner's uid, the message on a seekable stdin or a pipe)."""
from __future__ import annotations

import mailbox
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from install_site import Install, as_user_argv
from vpopmail.assign import AssignEntry
from vpopmail.config import Config
from vpopmail.stores import open_stores

DOMAIN = "example.com"
SENDER = "sender@remote.test"
RETURN_PATH = b"Return-Path: <sender@remote.test>\n"
MESSAGE = (b"From: Sender <sender@remote.test>\nTo: alice@example.com\nSubject: anchor test\n"
           b"Date: Sat, 28 Nov 2026 03:30:00 +0000\nMessage-ID: <anchor-test-1@remote.test>\n\n"
           b"Hello alice, this is a small test message.\n")


def qmail_local_env(user: str, domain: str = DOMAIN, home: str = "", sender: str = SENDER
                    ) -> dict[str, str]:
    """The variables qmail-local sets for ``user@domain`` delivered through the domain's
    ``.qmail-default`` (reference c-vpopmail-observed.md section 5), plus PATH."""
    local = f"{domain}-{user}"
    dashes = user.split("-")
    labels = domain.split(".")
    env = {
        "USER": domain, "HOME": home, "LOCAL": local, "EXT": user, "DEFAULT": user,
        "HOST": domain, "SENDER": sender, "NEWSENDER": sender,
        "RECIPIENT": f"{local}@{domain}", "DTLINE": f"Delivered-To: {local}@{domain}\n",
        "RPLINE": f"Return-Path: <{sender}>\n",
        "UFLINE": f"From {sender} Sat Nov 28 03:30:00 2026\n",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }
    for n in (2, 3, 4):
        env[f"EXT{n}"] = "-".join(dashes[n - 1:])
        env[f"HOST{n}"] = ".".join(labels[:max(1, len(labels) - (n - 1))])
    return env


class Site:
    """One install with ``example.com``; ``deliver`` runs vdelivermail as qmail-local would."""

    def __init__(self, inst: Install, unprivileged: bool) -> None:
        self.inst = inst
        self.unprivileged = unprivileged
        self.domain_dir = inst.domains / DOMAIN
        self._where: tuple[Config, AssignEntry] | None = None

    @classmethod
    def create(cls, inst: Install, unprivileged: bool, **users: str | None) -> "Site":
        """``example.com`` with ``users`` (name=quota, None for NOQUOTA) on ``inst``."""
        site = cls(inst, unprivileged)
        site.ok("vadddomain", DOMAIN, "secret")
        for name, quota in users.items():
            site.add_user(name, quota)
        return site

    def ok(self, command: str, *args: str) -> str:
        return self.inst.ok(command, *args)

    def add_user(self, name: str, quota: str | None = None) -> Path:
        self.ok("vadduser", f"{name}@{DOMAIN}", "pw")
        if quota:
            self.ok("vsetuserquota", f"{name}@{DOMAIN}", quota)
        return self.user_dir(name)

    def user_dir(self, name: str) -> Path:
        """``name``'s directory as the configured backend stores it. The configuration and the
        domain's entry are read at the first call only, so a test may then damage users/cdb or
        the configuration file and still find the mailboxes."""
        if self._where is None:
            api = self.inst.api()
            self._where = (api.config, api.get_domain(DOMAIN))
            api.backend.close()
        config, entry = self._where
        backend = open_stores(config).users
        try:
            return Path(next(u.dir for u in backend.list_users(entry) if u.name == name))
        finally:
            backend.close()

    def maildir(self, name: str) -> Path:
        return self.user_dir(name) / "Maildir"

    def argv(self, *args: str) -> list[str]:
        command = [str(self.inst.bin / "vdelivermail"), *args]
        return [*as_user_argv(self.inst.user), *command] if self.unprivileged else command

    def deliver(self, user: str, message: bytes = MESSAGE, action: str = "bounce-no-mailbox", *,
                args: tuple[str, ...] | None = None, pipe: bool = False,
                env: dict[str, str] | None = None, drop: tuple[str, ...] = (),
                domain: str = DOMAIN, wrap: tuple[str, ...] = ()
                ) -> subprocess.CompletedProcess[bytes]:
        """Run vdelivermail '' ACTION for ``user@domain`` with ``message`` on stdin, under
        the command ``wrap`` (e.g. prlimit's) if given."""
        variables = qmail_local_env(user, domain, str(self.domain_dir))
        variables.update(env or {})
        for name in drop:
            variables.pop(name, None)
        argv = [*wrap, *self.argv(*(args if args is not None else ("", action)))]
        cwd = self.domain_dir if self.domain_dir.is_dir() else "/"
        if pipe:
            return subprocess.run(argv, input=message, capture_output=True, env=variables,
                                  cwd=cwd, timeout=60)
        with tempfile.TemporaryFile() as fh:
            fh.write(message)
            fh.seek(0)
            return subprocess.run(argv, stdin=fh, capture_output=True, env=variables, cwd=cwd,
                                  timeout=60)

    def new_files(self, maildir: Path) -> list[Path]:
        return sorted((maildir / "new").iterdir())

    def only_message(self, maildir: Path) -> bytes:
        files = self.new_files(maildir)
        assert len(files) == 1, files
        assert not list((maildir / "tmp").iterdir())
        return files[0].read_bytes()


def assert_readable_by_mailbox(maildir: Path) -> None:
    """Python's own Maildir reader must parse every message we wrote."""
    box = mailbox.Maildir(str(maildir), factory=None, create=False)
    for key in box.keys():
        message = box[key]
        assert message["Delivered-To"], key
        assert os.path.basename(box._lookup(key)).count(",S=") == 1  # noqa: SLF001


@pytest.fixture
def tiny_fs(site: Site) -> Iterator[Path]:
    """bob's Maildir on a 256 KiB tmpfs (skipped where mounting is not allowed); needs a
    ``site`` fixture with a user ``bob`` in the importing module."""
    maildir = site.maildir("bob")
    shutil.rmtree(maildir)
    maildir.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs",
                              str(maildir)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir()
        yield maildir
    finally:
        subprocess.run(["umount", str(maildir)], check=True)


@pytest.fixture
def inject(site: Site) -> Path:
    """A stand-in qmail-inject (qmail is not packaged in Debian) that records its argv and
    input and exits with the code in ``exit`` (0 unless a test writes one)."""
    record = site.inst.prefix / "inject"
    record.mkdir()
    script = site.inst.qmaildir / "bin" / "qmail-inject"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!/bin/sh\nn=$(ls {record} | grep -c '^argv')\n"
                      f"printf '%s\\n' \"$@\" > {record}/argv.$n\ncat > {record}/data.$n\n"
                      f"exit $(cat {record}/exit 2>/dev/null || echo 0)\n")
    script.chmod(0o755)
    if site.unprivileged:
        shutil.chown(record, site.inst.user, site.inst.group)
    return record


def make_folder(site: Site, maildir: Path, name: str, marker: bool = True) -> Path:
    """The Maildir++ folder ``maildir/name`` (cur, new, tmp; its ``maildirfolder`` file with
    ``marker``), owned as the Maildir is."""
    folder = maildir / name
    for sub in ("", "cur", "new", "tmp"):
        (folder / sub).mkdir(exist_ok=True)
    if marker:
        (folder / "maildirfolder").touch()
    if site.unprivileged:
        for path in [folder, *folder.iterdir()]:
            shutil.chown(path, site.inst.user, site.inst.group)
    return folder


def write_dotqmail(site: Site, path: Path, text: str, mode: int = 0o600) -> None:
    path.write_text(text)
    path.chmod(mode)
    if site.unprivileged:
        shutil.chown(path, site.inst.user, site.inst.group)
