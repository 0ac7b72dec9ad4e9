"""What every installed command says about itself: --help and --version, the man pages made
from the same text, the messages an operator meets (bad input, EOF or Ctrl-C at a prompt); the
environment the programs we run get; what the admin commands load at start-up."""
from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import pytest

from install_site import CLEAN_ENV, REPO, Install, install
from delivery_site import Site
from vpopmail import VPOPMAIL_COMPAT, __version__
from helpers import DOMAIN

with open(REPO / "pyproject.toml", "rb") as _fh:
    COMMANDS = sorted(tomllib.load(_fh)["project"]["scripts"])


def test_every_command_answers_help_and_version(vhome: Install) -> None:
    """Without reading the configuration (here: broken), as a newcomer may meet it."""
    vhome.config_path.write_text("[users\n")
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


#: the commands whose command line is not parsed by vpopmail.cli.common.getopt: the hot paths
#: and vchangepw take no options, vpopmail-server and vpopmaild use argparse
NOT_GETOPT = ("vchangepw", "vchkpw", "vdelivermail", "vpopmail-server", "vpopmaild")


@pytest.mark.parametrize("wrong", ["--bogus", "--verbose=1", "--hepl"])
def test_unknown_long_option_is_named_whole(vhome: Install, wrong: str) -> None:
    """An operator who tries a long option the command does not have is told which, not
    getopt's "invalid option -- '-'" (before: the first letter after the dash was named,
    which reads as if "-" itself were refused); the usage follows on stdout, exit 255."""
    for name in sorted(set(COMMANDS) - set(NOT_GETOPT)):
        result = vhome.run(name, wrong, "x@y.test")
        assert result.returncode == 255, (name, result)
        assert result.stderr == f"{name}: unrecognized option '{wrong}'\n", (name, result)
        assert name in result.stdout.split("\n")[0], (name, result.stdout)


def test_hot_paths_answer_help_only_by_hand(vhome: Install) -> None:
    """vdelivermail: only a sole argument (.qmail-default gives two). vchkpw: only with no
    fd 3 (a server's login whose next program were named --help still logs in)."""
    result = vhome.run("vdelivermail", "--help", "bounce-no-mailbox")
    assert (result.returncode, result.stdout) == \
        (111, "vdelivermail: no EXT environment varilable\n")
    vhome.ok("vadddomain", DOMAIN, "secret")
    login = subprocess.run(["sh", "-c", f'exec {vhome.bin / "vchkpw"} --help 3<&0'],
                           input=f"postmaster@{DOMAIN}\0wrong\0\0", capture_output=True,
                           text=True, env=CLEAN_ENV)
    assert (login.returncode, login.stdout) == (1, "")  # a wrong password, not the usage



def test_every_command_has_a_man_page(vhome: Install) -> None:
    """PREFIX/man/man8/<command>.8, made from the --help text, renders without a warning."""
    for name in COMMANDS:
        page = vhome.prefix / "man" / "man8" / f"{name}.8"
        assert page.read_text().startswith(f'.TH {name.upper()} 8 ')
        usage = vhome.run(name, "--help").stdout
        if not shutil.which("groff"):
            continue
        shown = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-Wbreak", str(page)],
                               capture_output=True, text=True, env={**CLEAN_ENV, "LANG": "C"})
        assert (shown.returncode, shown.stderr) == (0, ""), (name, shown.stderr)
        # "-Wbreak": long paths; no overstrike (bold), no justification
        text = " ".join(re.sub(r".\x08", "", shown.stdout).split())
        assert f"NAME {name} - " in text, (name, text)
        assert " ".join(usage.splitlines()[0].split()) in text, (name, text)


# what --help tells an operator -----------------------------------------------------------------

def test_vcheck_help_numbers_every_step(vhome: Install) -> None:
    """vcheck exits with the number of the step that failed: its --help numbers every step
    the walk makes, under the names it prints (before: steps 12 and 13 were not named, nor
    any number)."""
    vhome.ok("vadddomain", DOMAIN, "secret")
    walk = vhome.run("vcheck", f"postmaster@{DOMAIN}")
    assert walk.returncode == 0, walk
    steps = [line[:19].split(maxsplit=1) for line in walk.stdout.splitlines()
             if line[:2].strip().isdigit()]
    assert [int(number) for number, _ in steps] == list(range(1, 14))
    usage = vhome.run("vcheck", "--help").stdout
    for number, name in steps:
        assert re.search(rf"^ *{number} {re.escape(name.strip())}\b", usage, re.M), (number, usage)
    assert "13 installation" in (vhome.prefix / "man" / "man8" / "vcheck.8").read_text()


def test_quota_options_say_what_a_quota_may_be(vhome: Install) -> None:
    """-q reads "quota_in_bytes" (C's text) but takes 50M, as README's first steps use it."""
    for name in ("vadduser", "vadddomain", "vsetuserquota"):
        usage = vhome.run(name, "--help").stdout
        assert "10K/10M/10G, a count (100C)" in usage, (name, usage)


def test_vmkpasswd_help_names_its_restore_option(vhome: Install) -> None:
    """-r (write a lost vpasswd back from vpasswd.cdb) is in --help and the man page; the
    usage a wrong command line gets stays C's one line."""
    usage = vhome.run("vmkpasswd", "--help").stdout
    assert usage.startswith("vmkpasswd: usage: domain \n") and "\n  -r " in usage, usage
    assert "-r " in (vhome.prefix / "man" / "man8" / "vmkpasswd.8").read_text()
    assert vhome.run("vmkpasswd").stdout == "vmkpasswd: usage: domain \n"


def test_vmoduser_help_says_what_webmail_is_here(vhome: Install) -> None:
    """C's text sent the reader to vchkpw.c, which no installation has."""
    usage = vhome.run("vmoduser", "--help").stdout
    assert "vchkpw.c" not in usage and "127.0.0.1" in usage, usage


def test_vpopmaild_help_says_how_it_runs(vhome: Install) -> None:
    usage = vhome.run("vpopmaild", "--help").stdout
    assert usage.startswith("usage: vpopmaild [-t read_timeout_seconds]\n")
    assert "tcpserver" in usage and "default 60" in usage, usage


def test_installer_help_says_qmaildir_is_required() -> None:
    """--qmaildir has no default: its help must not read as one (before: "(/var/qmail)")."""
    shown = subprocess.run([sys.executable, str(REPO / "packaging" / "install"), "--help"],
                           capture_output=True, text=True, env=CLEAN_ENV)
    assert shown.returncode == 0, shown
    # named as README runs it, not "install" (coreutils' install has that name)
    assert shown.stdout.startswith("usage: packaging/install [-h] --prefix PREFIX"), shown
    text = " ".join(shown.stdout.split())
    assert "--qmaildir QMAILDIR qmail's directory, e.g. /var/qmail (required, but not with " \
        "--rollback)" in text, text


# EOF and interrupts at prompts -----------------------------------------------------------------

def on_terminal(inst: Install, script: list[tuple[bytes, bytes]], *argv: str
                ) -> tuple[int, str]:
    """Run a command on a new terminal (a pty, its controlling terminal as at a login) and
    type each (prompt, keys) of ``script`` once the prompt shows: (exit status, all it wrote)."""
    pid, fd = pty.fork()
    if pid == 0:
        # a login's signal dispositions, whatever this process inherited (a test run started
        # in the background ignores SIGINT and SIGQUIT; nohup, SIGHUP; Python, SIGPIPE)
        for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGPIPE,
                       signal.SIGXFSZ):
            signal.signal(signum, signal.SIG_DFL)
        os.execve(str(inst.bin / argv[0]), list(argv), CLEAN_ENV)
    seen, typed = b"", 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child has gone and the terminal with it
                break
            if not chunk:
                break
            seen += chunk
        if typed < len(script) and seen.endswith(script[typed][0]):
            time.sleep(0.1)  # getpass turns the echo off after writing its prompt
            os.write(fd, script[typed][1])
            typed += 1
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


@pytest.mark.parametrize("keys,code,text", [(b"\x04", 255, "vadduser: end of input, nothing changed"),
                                            (b"\x03", 130, "vadduser: interrupted")],
                         ids=["ctrl-d", "ctrl-c"])
def test_vadduser_prompt_eof_and_interrupt(vhome: Install, keys: bytes, code: int,
                                           text: str) -> None:
    vhome.ok("vadddomain", DOMAIN, "secret")
    before = sorted(p.name for p in (vhome.domains / DOMAIN).iterdir())
    status, output = on_terminal(vhome, [(b"password for carol@" + DOMAIN.encode() + b": ", keys)],
                                 "vadduser", f"carol@{DOMAIN}")
    assert status == code, output
    assert "Traceback" not in output
    assert output.rstrip().endswith(text), output
    assert sorted(p.name for p in (vhome.domains / DOMAIN).iterdir()) == before
    assert "carol" not in vhome.vusers(DOMAIN)


def test_password_prompts_at_end_of_input(vhome: Install) -> None:
    """A closed stdin (no line at all) is not an empty password: vpasswd keeps the old one,
    vadduser adds nobody; vchangepw's old-password prompt on a terminal likewise."""
    vhome.ok("vadddomain", DOMAIN, "secret")
    vhome.ok("vadduser", f"alice@{DOMAIN}", "pw1")
    stored = vhome.vuser(f"alice@{DOMAIN}").passwd
    for argv in (["vpasswd", f"alice@{DOMAIN}"], ["vadduser", f"carol@{DOMAIN}"]):
        result = vhome.run(*argv, input="")
        assert (result.returncode, result.stderr) == \
            (255, f"{argv[0]}: end of input, nothing changed\n"), result
    assert vhome.vuser(f"alice@{DOMAIN}").passwd == stored
    assert "carol" not in vhome.vusers(DOMAIN)
    status, output = on_terminal(vhome, [(b"email address: ", f"alice@{DOMAIN}\n".encode()),
                                         (b"old password: ", b"\x04")], "vchangepw")
    assert (status, output.rstrip().splitlines()[-1]) == \
        (255, "vchangepw: end of input, nothing changed"), output
    assert vhome.vuser(f"alice@{DOMAIN}").passwd == stored


# the environment of the programs we run --------------------------------------------------------

def environment_after_login(inst: Install, env: dict[str, str]) -> dict[str, str]:
    """What the program vchkpw runs after a good login finds in its environment."""
    result = subprocess.run([str(inst.bin / "vchkpw"), "/usr/bin/env", "-0"],
                            input=f"postmaster@{DOMAIN}\0secret\0\0".encode(),
                            capture_output=True, env=env, close_fds=False,
                            preexec_fn=lambda: os.dup2(0, 3))  # the credentials on fd 3
    assert result.returncode == 0, result
    return dict(entry.split("=", 1) for entry in result.stdout.decode().split("\0") if entry)


@pytest.mark.parametrize("locale", [{}, {"LANG": "C"}, {"LC_CTYPE": "C"}, {"LC_ALL": "POSIX"},
                                    {"LC_CTYPE": "C.UTF-8"}], ids=str)
def test_vchkpw_passes_the_environment_it_was_given(vhome: Install,
                                                    locale: dict[str, str]) -> None:
    """C's vchkpw adds HOME, USER, SHELL and VPOPUSER and nothing else; under the C locale
    (qmail-popup gives none) the interpreter's LC_CTYPE=C.UTF-8 must not leak through."""
    vhome.ok("vadddomain", DOMAIN, "secret")
    given = {**CLEAN_ENV, "TCPREMOTEIP": "192.0.2.7", **locale}
    assert environment_after_login(vhome, given) == {
        **given, "HOME": str(vhome.domains / DOMAIN / "postmaster"), "USER": "postmaster",
        "SHELL": "NOLOGIN", "VPOPUSER": f"postmaster@{DOMAIN}"}


def test_dot_qmail_programs_get_qmail_locals_locale(vhome: Install, tmp_path: Path) -> None:
    """A .qmail program run by vdelivermail sees no LC_CTYPE unless qmail-local gave one."""
    site = Site.create(vhome, False, alice=None)
    dump = tmp_path / "env.out"
    (site.user_dir("alice") / ".qmail").write_text(f"|/usr/bin/env > {dump}\n")
    for locale in ({}, {"LC_CTYPE": "C"}):
        result = site.deliver("alice", env=locale)
        assert result.returncode == 0, result
        seen = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
        assert seen.get("LC_CTYPE") == locale.get("LC_CTYPE"), seen


# messages --------------------------------------------------------------------------------------

def test_quota_that_is_not_one_is_bad_input(vhome: Install) -> None:
    """'abc' is not too long, it is no quota (C's "quota too long" stays for the 20-character
    limit)."""
    vhome.ok("vadddomain", DOMAIN, "secret")
    for argv in (["vadduser", "-q", "abc", f"carol@{DOMAIN}", "pw"],
                 ["vsetuserquota", f"postmaster@{DOMAIN}", "abc"]):
        result = vhome.run(*argv)
        assert (result.returncode, result.stdout) == \
            (152, "Error: bad input: 'abc' is not a quota (use NOQUOTA, 10M, 1000000S,100C)\n")
    result = vhome.run("vsetuserquota", f"postmaster@{DOMAIN}", "1" * 21 + "S")
    assert result.stdout.startswith("Error: quota too long")


def test_quota_with_a_unit_that_is_not_one_is_bad_input(vhome: Install) -> None:
    """A typo in the unit is refused, not read up to it (before: 10Q was stored as 10 bytes,
    exit 0, and every message to the user bounced as over quota; 1.5G was 1 GB)."""
    vhome.ok("vadddomain", DOMAIN, "secret")
    for quota in ("10Q", "1.5G", "1e9", "5 000 000", "10M,", "M", "10MC", "+10M"):
        for argv in (["vadduser", "-q", quota, f"carol@{DOMAIN}", "pw"],
                     ["vsetuserquota", f"postmaster@{DOMAIN}", quota],
                     ["vmoduser", "-q", quota, f"postmaster@{DOMAIN}"]):
            result = vhome.run(*argv)
            assert (result.returncode, result.stdout) == (152, f"Error: bad input: {quota!r} is "
                                                          f"not a quota (use NOQUOTA, 10M, "
                                                          f"1000000S,100C)\n"), argv
    assert vhome.vuser(f"postmaster@{DOMAIN}").quota == "NOQUOTA"
    # more than a quota can be: C's reader saturates (before: stored as 9223372036854775807S)
    for quota in ("99999999999999999999", "9999999999G", "9999999999999999999C"):
        result = vhome.run("vsetuserquota", f"postmaster@{DOMAIN}", quota)
        assert (result.returncode, result.stdout) == (152, f"Error: bad input: {quota!r} is "
                                                      "larger than a quota can be "
                                                      "(9223372036854775806 at most)\n"), quota
    for quota, stored in (("10MB", "10485760S"), ("10 M", "10485760S"), ("2g", "2147483648S"),
                          ("5kS", "5120S"),
                          ("10M,100c", "10485760S,100C"), ("1000000", "1000000S"),
                          ("noquota", "NOQUOTA")):
        vhome.ok("vsetuserquota", f"postmaster@{DOMAIN}", quota)
        assert vhome.vuser(f"postmaster@{DOMAIN}").quota == stored, quota


def test_quota_is_what_was_written_or_refused(vhome: Install) -> None:
    """Blanks after a unit are blanks (before: ``"10M "``, as a script's variable may give
    it, was stored as 10 bytes and ``"100C "`` as a 10-byte size: every message bounced as
    over quota), and a quota of two sizes or two counts is refused (before: the last one
    won, ``5M,1000C,3`` was a 3-byte quota)."""
    vhome.ok("vadddomain", DOMAIN, "secret")
    address = f"postmaster@{DOMAIN}"
    for quota, stored in (("10M ", "10485760S"), ("100C ", "100C"),
                          ("5M ,1000C\t", "5242880S,1000C"), (" 2K", "2048S")):
        for argv in (["vsetuserquota", address, quota], ["vmoduser", "-q", quota, address]):
            vhome.ok(*argv)
            assert vhome.vuser(address).quota == stored, argv
    for quota in ("5M,1000C,3", "100,5", "5C,10C", "1M,1M"):
        for argv in (["vadduser", "-q", quota, f"carol@{DOMAIN}", "pw"],
                     ["vsetuserquota", address, quota]):
            result = vhome.run(*argv)
            assert (result.returncode, result.stdout) == (152, f"Error: bad input: {quota!r} is "
                                                          f"not a quota (use NOQUOTA, 10M, "
                                                          f"1000000S,100C)\n"), argv
    assert vhome.vuser(address).quota == "2048S"


def test_missing_mysql_driver_names_the_fix(vhome: Install, tmp_path: Path) -> None:
    """An install without mysqlclient asked for the MySQL backend (vconvert -c -m on a cdb
    site) names what is missing and how an installed prefix gets it."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_paths()["purelib"])
    own = next(venv.glob("lib/python*/site-packages"))
    for entry in site.iterdir():  # the test venv's packages, but for mysqlclient
        if not entry.name.lower().startswith(("mysqldb", "mysqlclient")):
            (own / entry.name).symlink_to(entry)
    inst = install(tmp_path / "nomysql", tmp_path / "nomysql-qmail", vhome.user, vhome.group,
                   venv)
    inst.ok("vadddomain", DOMAIN, "secret")
    result = inst.run("vconvert", "-c", "-m")
    assert result.returncode == 154, result
    assert "users.backend" not in result.stdout and "packaging/install --mysql" in result.stdout


# start-up --------------------------------------------------------------------------------------

#: what the common admin commands must not load: libraries that cost milliseconds each
#: (python-runtime-facts.md) and that only rarer paths need (a scheme C's crypt() lacks, a
#: qmail-send to signal, a tree to copy), and qmail's files, which user commands never touch
ADMIN_HEAVY = {"passlib", "psutil", "subprocess", "shutil", "re", "enum", "collections", "socket",
               "typing", "logging", "argparse", "datetime", "hashlib", "tempfile", "pathlib",
               "vpopmail.qmail"}


def imported(inst: Install, *argv: str) -> set[str]:
    """The modules one run of an installed command loads (python -X importtime)."""
    wrapper = inst.bin / argv[0]
    python = wrapper.read_text().split("\n", 1)[0][2:].split()[0]
    result = subprocess.run([python, "-X", "importtime", "-I", "-S", str(wrapper), *argv[1:]],
                            capture_output=True, text=True, env=CLEAN_ENV)
    assert result.returncode == 0, result
    return {line.split("|")[-1].strip() for line in result.stderr.splitlines()
            if line.startswith("import time:")}


def test_admin_commands_load_only_what_they_use(vhome: Install) -> None:
    vhome.ok("vadddomain", DOMAIN, "secret")
    address = f"carol@{DOMAIN}"
    for argv in (["vadduser", address, "pw"], ["vpasswd", address, "pw2"], ["vuserinfo", address],
                 ["vdeluser", address], ["vadddomain", "--version"]):
        assert not imported(vhome, *argv) & ADMIN_HEAVY, argv
