"""Helpers shared by the test modules: the golden scenario and a small site made with the
installed commands, reading back what they stored (cdb dumps, vpasswd, users through the
backend), refused runs that must change nothing, and a time limit for hangs."""
from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from install_site import Install

DOMAIN = "example.com"
GOLDEN_STEPS = (("vadddomain", DOMAIN, "secret"), ("vadduser", f"alice@{DOMAIN}", "pw1"),
                ("vadduser", f"bob@{DOMAIN}", "pw2"), ("vsetuserquota", f"alice@{DOMAIN}", "1M"))
ASCTIME = r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}"

# the installed commands ---------------------------------------------------------------------------------------

def golden(inst: Install) -> Path:
    """Run the C golden scenario; every step exits 0 and prints nothing. Returns the domain dir."""
    for command, *args in GOLDEN_STEPS:
        result = inst.run(command, *args)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), (command, result)
    return inst.domains / DOMAIN


def domain_dir(inst: Install, domain: str = DOMAIN) -> Path:
    return inst.domains / domain


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def cdb_dump(path: Path) -> bytes:
    """``cdb -d`` of a file (Debian tinycdb), as the reference shows it."""
    if shutil.which("cdb") is None:
        pytest.skip("needs tinycdb's cdb")
    return subprocess.run(["cdb", "-d", str(path)], capture_output=True, check=True).stdout


def cdb_text(records: list[tuple[bytes, bytes]]) -> bytes:
    """What ``cdb -d`` prints for these records, in this order."""
    return b"".join(b"+%d,%d:%s->%s\n" % (len(k), len(v), k, v) for k, v in records) + b"\n"


def vpasswd_lines(inst: Install, domain: str = DOMAIN) -> list[str]:
    return (domain_dir(inst, domain) / "vpasswd").read_text().splitlines()


def vpasswd_users(inst: Install, domain: str = DOMAIN) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in vpasswd_lines(inst, domain)}


def stored_users(inst: Install, domain: str = DOMAIN) -> dict[str, list[str]]:
    """Each user of ``domain`` as vpasswd's fields (name, passwd, uid, flags, gecos, dir, quota
    and the clear password if any), read through the configured backend (file or SQL)."""
    return {name: [u.name, u.passwd, str(u.uid), str(u.flags), u.gecos, u.dir, u.quota,
                   *([u.clear] if u.clear else [])] for name, u in inst.vusers(domain).items()}


def check_index(inst: Install, domain: str = DOMAIN) -> None:
    """The cdb backend's vpasswd.cdb holds exactly vpasswd; the SQL backend writes neither."""
    dom = domain_dir(inst, domain)
    if inst.backend == "cdb":
        assert cdb_dump(dom / "vpasswd.cdb") == vpasswd_cdb_expected(inst, domain)
        assert sorted(stored_users(inst, domain)) == vpasswd_cdb_names(inst, domain)
    else:
        assert not (dom / "vpasswd").exists() and not (dom / "vpasswd.cdb").exists()


def vpasswd_cdb_names(inst: Install, domain: str = DOMAIN) -> list[str]:
    dump = cdb_dump(domain_dir(inst, domain) / "vpasswd.cdb")
    return [m.decode() for m in re.findall(rb"^\+\d+,\d+:([^-\n]*)->", dump, re.M)]


def vpasswd_cdb_expected(inst: Install, domain: str = DOMAIN) -> bytes:
    """The vpasswd.cdb dump that matches vpasswd: key = name, value = the rest of the line."""
    records = []
    for line in vpasswd_lines(inst, domain):
        name, _, rest = line.partition(":")
        records.append((name.encode(), rest.encode()))
    return cdb_text(records)


def assign_line(inst: Install, domain: str, real: str | None = None, uid: int | None = None,
                gid: int | None = None) -> str:
    real = real or domain
    uid = inst.uid if uid is None else uid
    gid = inst.gid if gid is None else gid
    return f"+{domain}-:{real}:{uid}:{gid}:{inst.domains / real}:-::"


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every directory and file below ``roots`` (lock files aside: taking a lock may create
    one): kind, mode, owner and content. Equal snapshots = nothing was half-written."""
    seen: dict[str, tuple] = {}
    for root in roots:
        for path in sorted([root, *root.rglob("*")]):
            if path.name.endswith(".lock"):
                continue
            st = os.lstat(path)
            key = str(path)
            if stat.S_ISDIR(st.st_mode):
                seen[key] = ("d", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            else:
                seen[key] = ("f", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                             path.read_bytes())
    return seen


def state(inst: Install) -> dict[str, tuple]:
    """The mail state of an install: the domains tree and qmail's files."""
    return snapshot(inst.domains, inst.qmaildir)


def has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open; False once it has ended. Its descriptors
    come and go while it runs: each is read once, and may be gone by then."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    wanted = os.path.realpath(path)
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == wanted:
                return True
        except OSError:
            continue
    return False


def run_as_vpopmail(inst: Install, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an installed command as the install's owner (the vpopmail user in root_vhome)."""
    return inst.run(command, *args, as_user=inst.user)


def ok_as_vpopmail(inst: Install, command: str, *args: str) -> str:
    result = run_as_vpopmail(inst, command, *args)
    assert result.returncode == 0, (command, args, result)
    return result.stdout


def refused(inst: Install, *args: str, code: int | None = None, starts: str = "Error: ",
            as_vpopmail: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a command that must fail cleanly: non-zero exit, one clear line, no traceback, and
    the mail state exactly as before."""
    before = state(inst)
    result = run_as_vpopmail(inst, *args) if as_vpopmail else inst.run(*args)
    assert result.returncode != 0, result
    if code is not None:
        assert result.returncode == code, result
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(starts), result
    assert "Traceback" not in result.stderr, result.stderr
    assert state(inst) == before
    return result


def check_owner(inst: Install) -> None:
    """Everything in the domains tree belongs to the install's owner."""
    for path in [inst.domains, *inst.domains.rglob("*")]:
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (inst.uid, inst.gid), path



ALIAS = "alias.test"


def site(inst: Install, alias: bool = True) -> Path:
    """example.com (postmaster), alice with a 1 MB quota, bob without, and an alias domain."""
    inst.ok("vadddomain", DOMAIN, "secret")
    inst.ok("vadduser", f"alice@{DOMAIN}", "pw1")
    inst.ok("vadduser", f"bob@{DOMAIN}", "pw2")
    inst.ok("vsetuserquota", f"alice@{DOMAIN}", "1M")
    if alias:
        inst.ok("vaddaliasdomain", DOMAIN, ALIAS)
    return inst.domains / DOMAIN


def failed(result: subprocess.CompletedProcess[str], code: int) -> list[str]:
    """The stdout lines of a run that must fail with ``code`` and no traceback."""
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout.splitlines()


#: 64 characters: the longest gecos, with blanks, commas, quotes and non-ASCII letters
LONG_GECOS = "Zoë O'Brien-Ærø, Büro 7 & \"quoted\" <angle> (x) #1 ; ~!$%^*=+?/|"[:64]


def odd_users(inst: Install) -> None:
    """Users with every kind of value a vpasswd line can hold."""
    inst.set_config("passwords", "clear_passwords", True)
    site(inst, alias=False)
    inst.ok("vadduser", "-c", LONG_GECOS, "-q", "5M,1000C", f"carol@{DOMAIN}", "pa:ss wörd")
    inst.ok("vadduser", "-e", "ab01234567890", f"dave@{DOMAIN}")  # a DES hash, no clear text
    inst.ok("vadduser", "-n", "-q", "100C", f"erin@{DOMAIN}")  # no password at all
    inst.ok("vadduser", "-e", "{SSHA}c2FsdHNhbHRzYWx0c2FsdA==", f"f.g-h_i@{DOMAIN}")
    inst.ok("vmoduser", *[f"-{c}" for c in "dpswibrouafFSEm0123"], f"carol@{DOMAIN}")
    assert vpasswd_users(inst)["carol"][3] == str(0x7FFFF)
    # a uid other than vpopmail's 1 is kept as well, and an empty gecos (no command makes one)
    api = inst.api()
    user, entry = api.get_user(f"bob@{DOMAIN}")
    odd, _ = api.get_user(f"f.g-h_i@{DOMAIN}")
    api.backend.update_users(entry, [user.copy(uid=0, flags=0x2000), odd.copy(gecos="")])


REFUSED_ALIASES = [
    (["-i", "&x@y.org", f"alice@{DOMAIN}"], 254, "Error: alice@example.com is a user"),
    (["-i", "&x@y.org", f"../evil@{DOMAIN}"], 255, "Error: Illegal username"),
    (["-i", "&x@y.org", f".hidden@{DOMAIN}"], 255, "Error: Illegal username"),
    (["-i", "&x@y.org", f"default@{DOMAIN}"], 255, "Error: Illegal username: 'default'"),
    (["-i", "&x@y.org", f"a:b@{DOMAIN}"], 255, "Error: Illegal username"),
    (["-i", "&x@y.org", "x" * 65 + f"@{DOMAIN}"], 231, "Error: user name too long"),
    (["-i", "&x@y.org", "info@nosuch.com"], 245, "Error: Domain does not exist"),
    (["-i", "two words", f"info@{DOMAIN}"], 152, "Error: not a forwarding address"),
    (["-i", "&nodomain", f"info@{DOMAIN}"], 152, "Error: not a forwarding address"),
    (["-i", "+list", f"info@{DOMAIN}"], 152, "Error: '+' lines"),
    (["-i", "", f"info@{DOMAIN}"], 152, "Error: empty alias line"),
    (["-i", "&a@b.org\n|rm -rf /", f"info@{DOMAIN}"], 152, "Error: an alias line can not"),
    (["-i", "../x/Maildir/", f"info@{DOMAIN}"], 152, "Error: a relative path"),
    (["-i", "&" + "x" * 160 + "@y.org", f"info@{DOMAIN}"], 224, "Error: alias line too long"),
    (["-d", f"nobody@{DOMAIN}"], 246, "Error: alias nobody@example.com does not exist"),
    (["-r", "&x@y.org", f"old@{DOMAIN}"], 246, "Error: alias old@example.com has no line"),
    (["-r", "&x@y.org", f"nobody@{DOMAIN}"], 246, "Error: alias nobody@example.com does not"),
]


@contextmanager
def time_limit(seconds: int = 5) -> Iterator[None]:
    """Turn a hang (e.g. an endless probe loop) into a test failure."""
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
