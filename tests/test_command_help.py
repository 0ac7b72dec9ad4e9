"""What every installed command says about itself: --help and --version, the man pages made
from the same text, and the messages an operator meets (bad input, EOF or Ctrl-C at a prompt)."""
from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import CLEAN_ENV, REPO, Install
from test_commands import DOMAIN
from vpopmail import VPOPMAIL_COMPAT, __version__

with open(REPO / "pyproject.toml", "rb") as _fh:
    COMMANDS = sorted(tomllib.load(_fh)["project"]["scripts"])


def test_every_command_answers_help_and_version(vhome: Install) -> None:
    for name in COMMANDS:
        result = vhome.run(name, "--help")
        assert (result.returncode, result.stderr) == (0, ""), (name, result)
        assert name in result.stdout.split("\n")[0], (name, result.stdout)  # C's own texts
        result = vhome.run(name, "--version")
        assert (result.returncode, result.stderr) == (0, ""), (name, result)
        assert result.stdout == \
            f"{name} (pyvpopmail) {__version__}, compatible with vpopmail {VPOPMAIL_COMPAT}\n"


def test_help_among_options_and_c_version_option(vhome: Install) -> None:
    """--help wins wherever it stands among the options; after ``--`` it is an operand. C's
    -v is kept as C has it: the version line, then the command goes on (here: the usage)."""
    result = vhome.run("vuserinfo", "-n", "--help", "x@y.test")
    assert result.returncode == 0 and result.stdout.startswith("vuserinfo: usage:")
    result = vhome.run("vadduser", "-v")
    assert result.returncode == 255
    assert result.stdout.startswith(f"version: pyvpopmail {__version__}\nvadduser: usage:")
    result = vhome.run("vdeluser", "--", "--help")
    assert result.returncode != 0 and "usage" not in result.stdout


def test_hot_paths_answer_help_only_by_hand(vhome: Install) -> None:
    """vdelivermail: only a sole argument (.qmail-default gives two). vchkpw: only with no
    fd 3 (a server's login whose next program were named --help still logs in)."""
    result = vhome.run("vdelivermail", "--help", "bounce-no-mailbox")
    assert (result.returncode, result.stdout) == \
        (100, "vdelivermail: no EXT environment varilable\n")
    vhome.ok("vadddomain", DOMAIN, "secret")
    login = subprocess.run(["sh", "-c", f'exec {vhome.bin / "vchkpw"} --help 3<&0'],
                           input=f"postmaster@{DOMAIN}\0wrong\0\0", capture_output=True,
                           text=True, env=CLEAN_ENV)
    assert (login.returncode, login.stdout) == (1, "")  # a wrong password, not the usage
