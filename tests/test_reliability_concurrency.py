"""Concurrency and crash consistency of the writes (issue 5), on real root installs running the
installed bin/ commands: racing deliverers against one quota, roaming logins racing
clearopensmtp, admin commands racing deliveries and logins, and SIGKILL (strace fault
injection) at every state-changing syscall of an admin write, with every file checked after.

Counts are bounded for CI and can be raised: ``PYVPOPMAIL_RC_MESSAGES`` (messages per
deliverer), ``PYVPOPMAIL_RC_SECONDS`` (length of the admin race), ``PYVPOPMAIL_RC_SEED`` (the
random schedule; printed, so a failure can be replayed), ``PYVPOPMAIL_RC_ROUNDS`` (rounds of
four commands on one user), ``PYVPOPMAIL_RC_KILL_ALL=1`` (also kill at the syscalls that
change nothing visible: fsyncs, read-only opens, writes to temporary files).
"""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from install_site import CLEAN_ENV, Install
from delivery_site import DOMAIN, Site
from login_site import POP_ENV, STAMP, LoginSite
from vpopmail import cdb
from vpopmail.assign import cdb_records

PASSWORD = "Secret-42"


def env_int(name: str, default: int) -> int:
    """An integer knob from the environment (the CI value otherwise)."""
    return int(os.environ.get(name, default))


@pytest.fixture
def seed() -> int:
    """The random schedule of one test; printed, so that a failure shows how to replay it."""
    value = env_int("PYVPOPMAIL_RC_SEED", random.randrange(2**32))
    print(f"seed: PYVPOPMAIL_RC_SEED={value}")
    return value


def cdb_items(path: Path) -> list[tuple[bytes, bytes]]:
    """Every record of a cdb, read by our reader and, independently, by tinycdb's ``cdb -d``."""
    with cdb.CdbReader(str(path)) as reader:
        ours = reader.items()
    dump = subprocess.run(["cdb", "-d", str(path)], capture_output=True, check=True).stdout
    theirs = []
    pos = 0
    while dump[pos:pos + 1] == b"+":
        head, _, rest = dump[pos + 1:].partition(b":")
        klen, dlen = (int(n) for n in head.split(b","))
        start = pos + 1 + len(head) + 1
        key, value = dump[start:start + klen], dump[start + klen + 2:start + klen + 2 + dlen]
        theirs.append((key, value))
        pos = start + klen + 2 + dlen + 1
    assert dump[pos:] == b"\n", f"{path}: cdb -d output does not end cleanly"
    assert theirs == ours, path
    return ours


def vpasswd_pairs(domain_dir: Path) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """(vpasswd, vpasswd.cdb) of a domain, each as name -> rest of the line; each must parse,
    hold every name once and have 7 or 8 fields per user."""
    text = (domain_dir / "vpasswd").read_bytes()
    assert not text or text.endswith(b"\n")
    lines = [line.split(b":", 1) for line in text.split(b"\n") if line]
    items = cdb_items(domain_dir / "vpasswd.cdb")
    for source in (lines, items):
        names = [name for name, _ in source]
        assert len(set(names)) == len(names), names
        assert all(rest.count(b":") in (5, 6) for _, rest in source), source
    return dict(lines), dict(items)


def leftovers(*directories: Path) -> list[Path]:
    """Temporary files of atomic writes (``<name>.tmp.<pid>``) anywhere below ``directories``."""
    return [p for d in directories if d.exists() for p in d.rglob("*.tmp.*")]


# -- 1. deliverers racing one quota ------------------------------------------------------------

DELIVERERS = 10
PER_DELIVERER = env_int("PYVPOPMAIL_RC_MESSAGES", 100)
#: what vdelivermail puts before the message (Return-Path from RPLINE, then Delivered-To)
TRACE = b"Return-Path: <sender@remote.test>\nDelivered-To: alice@example.com\n"


def numbered_message(worker: int, n: int) -> bytes:
    """Message ``n`` of deliverer ``worker``: a unique Message-ID, all of one size."""
    head = (f"From: Sender <sender@remote.test>\nTo: alice@example.com\n"
            f"Subject: race {worker:02d}/{n:05d}\n"
            f"Message-ID: <race-{worker:02d}-{n:05d}@remote.test>\n\n").encode()
    return head + (f"{worker:02d}.{n:05d} ".encode() * 100)[:900] + b"\n"


MESSAGE_ID = re.compile(rb"^Message-ID: <race-(\d\d)-(\d{5})@remote\.test>$", re.M)


def test_racing_deliverers_respect_the_quota_within_a_bound(root_vhome: Install) -> None:
    """10 deliverers x 100 messages into one mailbox whose quota fills at about 55%.

    Each vdelivermail checks ``maildirsize``, writes, then appends its line, with no mailbox
    lock (as Courier's deliverquota and C vpopmail): deliverers that checked before the others'
    lines were appended can all be accepted, so the mailbox may end past its limit, but by less
    than one message per other deliverer: usage <= limit + (deliverers - 1) x size.
    """
    site = Site.create(root_vhome, True, alice=None)
    size = len(TRACE) + len(numbered_message(0, 0))
    total = DELIVERERS * PER_DELIVERER
    fits = total * 55 // 100
    limit = fits * size + size // 2  # room for ``fits`` messages, not one more
    site.ok("vsetuserquota", f"alice@{DOMAIN}", f"{limit}S")
    maildir = site.maildir("alice")

    def deliverer(worker: int) -> list[tuple[int, int, bytes]]:
        results = []
        for n in range(PER_DELIVERER):
            result = site.deliver("alice", numbered_message(worker, n))
            results.append((n, result.returncode, result.stdout))
        return results

    start = time.monotonic()
    with ThreadPoolExecutor(DELIVERERS) as pool:
        outcomes = {w: r for w, r in enumerate(pool.map(deliverer, range(DELIVERERS)))}
    elapsed = time.monotonic() - start
    accepted = {(w, n) for w, rows in outcomes.items() for n, code, _ in rows if code == 0}
    bounced = {(w, n) for w, rows in outcomes.items() for n, code, out in rows
               if code == 100 and out == b"user is over quota\n\n"}
    assert len(accepted) + len(bounced) == total, [
        (w, n, code, out) for w, rows in outcomes.items() for n, code, out in rows
        if code not in (0, 100)][:5]

    found: dict[tuple[int, int], Path] = {}
    for path in (maildir / "new").iterdir():
        data = path.read_bytes()
        [(worker, n)] = [(int(w), int(m)) for w, m in MESSAGE_ID.findall(data)]
        assert (worker, n) not in found, f"delivered twice: {path} {found[(worker, n)]}"
        assert data == TRACE + numbered_message(worker, n), path
        found[(worker, n)] = path
    assert set(found) == accepted, (len(found), len(accepted))
    assert not list((maildir / "tmp").iterdir()) and not list((maildir / "cur").iterdir())

    used = sum(p.stat().st_size for p in found.values())
    overshoot = used - limit
    print(f"{total} deliveries in {elapsed:.1f} s: {len(accepted)} accepted, {len(bounced)} "
          f"bounced; {fits} fit; usage {used} of {limit} bytes, overshoot "
          f"{max(overshoot, 0) / size:.2f} messages")
    assert 0 < len(bounced) and len(accepted) >= fits, "the quota must be crossed, and filled"
    assert overshoot <= (DELIVERERS - 1) * size, (overshoot / size, "messages past the limit")

    # maildirsize may lag or lead by lines appended around a recalculation; recounting fixes it
    lines = (maildir / "maildirsize").read_text().splitlines()[1:]
    counted = [sum(int(line.split()[i]) for line in lines) for i in (0, 1)]
    print(f"maildirsize before the recount: {counted[0] - used:+d} bytes, "
          f"{counted[1] - len(found):+d} messages off")
    site.ok("vsetuserquota", f"alice@{DOMAIN}", f"{limit}S")
    assert (maildir / "maildirsize").read_text() == f"{limit}S\n{used} {len(found)}\n"


# -- 2. roaming logins racing clearopensmtp ----------------------------------------------------

def test_logins_from_fifty_ips_race_clearopensmtp(root_vhome: Install) -> None:
    """50 roaming logins at once while clearopensmtp runs in a loop: every login runs its
    program, every IP ends up in open-smtp and in tcp.smtp.cdb, and only the stale entries
    clearopensmtp is for are gone."""
    site = LoginSite.create(root_vhome, True)
    try:
        site.add("alice", PASSWORD)
        site.inst.set_config("relay", "roaming_users", True)
        site.inst.set_config("relay", "relay_clear_minutes", 24 * 60)
        etc = site.inst.prefix / "etc"
        stale = int(time.time()) - 2 * 24 * 3600
        (etc / "open-smtp").write_text("".join(
            f'198.51.100.{n}:allow,RELAYCLIENT="",RBLSMTPD=""\t{stale}\n' for n in range(5)))
        shutil.chown(etc / "open-smtp", site.inst.user, site.inst.group)
        ips = [f"192.0.2.{n}" for n in range(100, 150)]
        source = site.work / "fd3-race"
        source.write_bytes(f"alice@example.com\0{PASSWORD}\0{STAMP}\0".encode())
        records = [site.work / f"ran-{n}" for n in range(len(ips))]
        done = threading.Event()
        clears: list[subprocess.CompletedProcess[str]] = []

        def clear_loop() -> None:
            while not done.is_set() or len(clears) < 3:
                clears.append(site.inst.run("clearopensmtp"))

        clearer = threading.Thread(target=clear_loop)
        clearer.start()
        try:
            while not clears:
                time.sleep(0.01)
            vchkpw = str(site.inst.bin / "vchkpw")
            procs = [subprocess.Popen(
                ["/bin/sh", "-c", f'exec "$0" "$1" "$2" 3<"{source}"', vchkpw, str(site.dump),
                 str(record)], env=dict(POP_ENV, TCPREMOTEIP=ip), cwd="/")
                for ip, record in zip(ips, records)]
            codes = [p.wait(timeout=120) for p in procs]
        finally:
            done.set()
            clearer.join()
        assert codes == [0] * len(ips)
        assert all(f"uid={site.inst.uid}" in r.read_text().splitlines() for r in records)
        assert [(c.returncode, c.stdout) for c in clears] == [(0, "")] * len(clears)
        print(f"{len(clears)} clearopensmtp runs overlapped the logins")
        lines = (etc / "open-smtp").read_text().splitlines()
        assert sorted(line.split(":")[0] for line in lines) == sorted(ips)
        keys = [key for key, _ in cdb_items(etc / "tcp.smtp.cdb")]
        assert sorted(keys) == sorted([b"127.", *(form + ip.encode() for ip in ips
                                                  for form in (b"", b"::ffff:"))])
        assert not any("relay not opened" in t for t in site.syslog.texts())
        assert leftovers(etc) == []
    finally:
        site.syslog.close()


# -- 3. admin commands racing deliveries and logins --------------------------------------------

class UserModel:
    """What one admin thread believes about its own users, from the commands that succeeded."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.present: dict[str, dict[str, str]] = {}
        self.deleted: set[str] = set()
        self.failures: list[tuple[list[str], int, str]] = []
        self.ops = 0


def admin_loop(site: LoginSite, model: UserModel, rng: random.Random, deadline: float) -> None:
    """Random vadduser/vdeluser/vmoduser/vpasswd on this thread's own users, and harmless
    changes (same password, new salt; a new gecos) to the shared stable user, until
    ``deadline``; what succeeded is recorded in ``model``."""
    while time.monotonic() < deadline:
        name = rng.choice(model.names)
        address = f"{name}@{DOMAIN}"
        password = f"pw-{model.ops}"
        quota = f"{rng.randrange(1, 99) * 1000000}S"
        fields: dict[str, str] = {}  # what a success changes in the user's model record
        roll = rng.random()
        if roll < 0.15:
            argv = ["vpasswd", f"stable@{DOMAIN}", PASSWORD] if roll < 0.08 else \
                ["vmoduser", "-c", f"stable {model.ops}", f"stable@{DOMAIN}"]
        elif name not in model.present:
            quota = rng.choice(["NOQUOTA", quota])
            argv = ["vadduser", "-q", quota, address, password]
            fields = {"quota": quota, "password": password, "flags": "0", "gecos": name}
        else:
            argv, fields = rng.choice([
                (["vdeluser", address], {}),
                (["vmoduser", "-q", quota, address], {"quota": quota}),
                (["vmoduser", "-p", address], {"flags": "2"}),
                (["vmoduser", "-x", address], {"flags": "0"}),
                (["vpasswd", address, password], {"password": password})])
        result = site.inst.run(*argv)
        model.ops += 1
        if result.returncode:
            model.failures.append((argv, result.returncode, result.stdout + result.stderr))
        elif argv[0] == "vdeluser":
            del model.present[name]
            model.deleted.add(name)
        elif argv[0] == "vadduser":
            model.present[name] = fields
            model.deleted.discard(name)
        elif fields:
            model.present[name].update(fields)


def test_admin_writes_race_deliveries_and_logins(root_vhome: Install, seed: int) -> None:
    """Two admin threads add, delete and modify users of one domain for a few seconds while a
    deliverer and a POP login hammer a stable user of the same domain: no reader sees a torn
    vpasswd.cdb (every delivery and login of the stable user succeeds), no command fails, and
    afterwards vpasswd and vpasswd.cdb agree exactly and match what the commands did."""
    from vpopmail.passwords import verify_password

    site = LoginSite.create(root_vhome, True)
    try:
        site.add("stable", PASSWORD)
        seconds = env_int("PYVPOPMAIL_RC_SECONDS", 4)
        models = [UserModel([f"t{t}u{i}" for i in range(6)]) for t in range(2)]
        deadline = time.monotonic() + seconds
        deliveries: list[int] = []
        logins: list[int] = []

        def deliver_loop() -> None:
            while time.monotonic() < deadline:
                n = len(deliveries)
                deliveries.append(site.deliver("stable", numbered_message(99, n)).returncode)

        def login_loop() -> None:
            while time.monotonic() < deadline:
                result = site.login("stable@example.com", PASSWORD)
                logins.append(result.code if result.ran else -1)

        jobs = [lambda m=m, t=t: admin_loop(site, m, random.Random(seed + t), deadline)
                for t, m in enumerate(models)] + [deliver_loop, login_loop]
        with ThreadPoolExecutor(len(jobs)) as pool:
            for future in [pool.submit(job) for job in jobs]:
                future.result()
        ops = sum(m.ops for m in models)
        print(f"{ops} admin commands, {len(deliveries)} deliveries, {len(logins)} logins "
              f"in {seconds} s")
        assert [f for m in models for f in m.failures] == []
        assert deliveries and set(deliveries) == {0}
        assert logins and set(logins) == {0}
        delivered = list((site.maildir("stable") / "new").iterdir())
        assert sorted(MESSAGE_ID.findall(p.read_bytes())[0] for p in delivered) == [
            (b"99", b"%05d" % n) for n in range(len(deliveries))]

        text, index = vpasswd_pairs(site.domain_dir)
        assert text == index
        expected = {"postmaster", "stable"} | {n for m in models for n in m.present}
        assert {name.decode() for name in text} == expected
        for model in models:
            for name, state in model.present.items():
                fields = text[name.encode()].decode().split(":")
                assert (fields[2], fields[3], fields[5]) == (state["flags"], state["gecos"],
                                                            state["quota"]), name
                assert verify_password(state["password"], fields[0]), name
                assert (Path(fields[4]) / "Maildir" / "new").is_dir()
            for name in model.deleted:
                assert not (site.domain_dir / name).exists(), name
        assert verify_password(PASSWORD, text[b"stable"].decode().split(":")[0])
        control = (site.domain_dir / ".dir-control").read_text().split("\n")
        assert int(control[0]) == len(expected)
        assert leftovers(site.domain_dir) == []
    finally:
        site.syslog.close()


def test_concurrent_changes_to_one_user_are_all_kept(root_vhome: Install) -> None:
    """vpasswd, vmoduser -q, vmoduser -c and a flag change on one user at the same moment:
    each changes its own field of the record as stored at write time, so none undoes another
    (a read, then a write of the whole record, lost about half of them)."""
    from vpopmail.passwords import verify_password

    site = Site.create(root_vhome, True, alice=None)
    address = f"alice@{DOMAIN}"
    rounds = env_int("PYVPOPMAIL_RC_ROUNDS", 12)
    for n in range(rounds):
        commands = [("vpasswd", address, f"pw-{n}"), ("vmoduser", "-q", f"{n + 1}000000S", address),
                    ("vmoduser", "-c", f"round {n}", address),
                    ("vmoduser", "-p" if n % 2 else "-x", address)]
        procs = [subprocess.Popen([str(site.inst.bin / c[0]), *c[1:]], env=CLEAN_ENV, cwd="/",
                                  stdout=subprocess.PIPE) for c in commands]
        assert [p.wait(timeout=60) for p in procs] == [0] * len(procs)
        text, index = vpasswd_pairs(site.domain_dir)
        assert text == index
        fields = text[b"alice"].decode().split(":")
        assert (fields[2], fields[3], fields[5]) == ("2" if n % 2 else "0", f"round {n}",
                                                     f"{n + 1}000000S"), (n, fields)
        assert verify_password(f"pw-{n}", fields[0]), n


def test_leftover_user_directory_is_replaced_not_inherited(root_vhome: Install) -> None:
    """A vdeluser killed while removing bob's tree leaves his mail behind with no vpasswd
    line; a new bob must get an empty mailbox, not the old one (vadduser used to refuse for
    ever: "User's directory already exists")."""
    site = Site.create(root_vhome, True, bob=None)
    assert site.deliver("bob").returncode == 0
    old_dir = site.user_dir("bob")
    lines = (site.domain_dir / "vpasswd").read_text().splitlines()
    (site.domain_dir / "vpasswd").write_text("".join(
        line + "\n" for line in lines if not line.startswith("bob:")))
    site.ok("vmkpasswd", DOMAIN)
    assert len(site.new_files(old_dir / "Maildir")) == 1
    site.ok("vadduser", f"bob@{DOMAIN}", "new-pw")
    assert site.user_dir("bob") == old_dir and site.new_files(old_dir / "Maildir") == []
    assert (old_dir / "Maildir" / "new").stat().st_uid == site.inst.uid


def test_a_directory_that_is_no_users_leftover_is_kept(vhome: Install) -> None:
    """Only what a killed vadduser or vdeluser leaves (an empty directory, or one with a
    Maildir) is replaced: another directory of the name in the domain (a mailing list's, an
    autoresponder's, one a domain admin made through vpopmaild) is refused and kept (before:
    removed with everything in it)."""
    site = Site.create(vhome, False)
    kept = site.domain_dir / "mylist"
    (kept / "subscribers").mkdir(parents=True)
    (kept / "subscribers" / "a").write_text("alice@example.org\n")
    result = vhome.run("vadduser", f"mylist@{DOMAIN}", "pw")
    assert result.returncode == 249 and result.stdout.startswith(
        "Error: User's directory already exists: "), result
    assert (kept / "subscribers" / "a").read_text() == "alice@example.org\n"
    assert "mylist" not in vhome.vusers(DOMAIN)
    (site.domain_dir / "empty").mkdir()
    vhome.ok("vadduser", f"empty@{DOMAIN}", "pw")
    assert (site.domain_dir / "empty" / "Maildir" / "new").is_dir()
    api = vhome.api()
    assert api.user_count(api.get_domain(DOMAIN)) == 2  # the refused one's slot is released


# -- 4. SIGKILL at every state-changing syscall of an admin write ------------------------------

#: the syscalls a write is made of; strace counts each per process, so ``when=N`` of one of
#: them names one point of a run (a pid namespace makes /proc, hence the scan for qmail-send,
#: the same in every run)
TRACED = ("openat,write,pwrite64,rename,renameat,renameat2,link,linkat,unlink,unlinkat,mkdir,"
          "mkdirat,rmdir,fsync,fdatasync,fchown,chown,lchown,fchownat,fchmod,chmod,fchmodat,"
          "ftruncate,utimensat")
#: syscalls by which the process changes nothing another process can see (without a crash of
#: the machine): a kill before one leaves the same files as a kill before the next change
QUIET = {"fsync", "fdatasync"}
BY_FD = {"write", "pwrite64", "fsync", "fdatasync", "fchown", "fchmod", "ftruncate"}
#: files no reader opens: atomic writes' ``<name>.tmp.<pid>``, Maildir tmp/
TEMPORARY = re.compile(r"\.tmp\.\d+$|/Maildir/tmp/")
KILL_ALL = os.environ.get("PYVPOPMAIL_RC_KILL_ALL") == "1"
CALL = re.compile(r"^(\w+)\((.*)\) += (.*)$")
PATH_ARG = re.compile(r'(?:(?:AT_FDCWD|\d+)<([^>]*)>, )?"((?:[^"\\]|\\.)*)"')
PASSWORDS = ["pw-A", "pw-A2", "pw-B", "pw-C", "pw-G", "pw-N"]


def touched(name: str, args: str) -> list[str]:
    """The paths a traced call works on (``strace -y`` shows each descriptor's path)."""
    if name in BY_FD:
        found = re.match(r"\d+<([^>]*)>", args)
        return [found.group(1)] if found else []
    if name == "utimensat":
        found = re.match(r"\d+<([^>]*)>, NULL", args)
        if found:
            return [found.group(1)]
    return [os.path.join(base or "/", path) for base, path in PATH_ARG.findall(args)]


class Point:
    """One syscall of a traced run: the ``ordinal``-th call of ``name``, on ``paths``."""

    def __init__(self, name: str, ordinal: int, paths: list[str], args: str) -> None:
        self.name = name
        self.ordinal = ordinal
        self.paths = paths
        self.args = args

    def changes(self) -> bool:
        """Whether the call changes what a reader or the next command can see: not an fsync,
        a read-only open, or a write/chmod/chown of a temporary file before its rename (a
        kill there leaves the same files as a kill at the temporary file's creation)."""
        if self.name in QUIET:
            return False
        if self.name == "openat":
            return "O_CREAT" in self.args or "O_TRUNC" in self.args
        if self.name in BY_FD and self.name != "fsync":
            return not all(TEMPORARY.search(path) for path in self.paths)
        return True

    def __repr__(self) -> str:
        return f"{self.name}#{self.ordinal}({', '.join(self.paths)})"


def parse_trace(log: Path) -> tuple[list[Point], bool]:
    """Every traced call of a run, and whether the process was killed."""
    calls: list[Point] = []
    counts: dict[str, int] = {}
    killed = False
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("+++ killed by SIGKILL"):
            killed = True
        found = CALL.match(line)
        if found:
            name, args = found.group(1), found.group(2)
            counts[name] = counts.get(name, 0) + 1
            calls.append(Point(name, counts[name], touched(name, args), args))
    return calls, killed


class KillSite(LoginSite):
    """example.com (alice, bob with a message), gone.test (postmaster, gina), roaming on with
    one fresh and one stale open-smtp entry in tcp.smtp.cdb; ``snapshot``/``restore`` put the
    files back between runs."""

    def build(self) -> None:
        inst = self.inst
        self.labels: dict[str, str] = {}  # hash -> the known password it verifies
        inst.set_config("locks", "timeout", 3)  # a lock left held would show as "File busy"
        inst.set_config("relay", "roaming_users", True)
        self.ok("vadddomain", DOMAIN, "pw-P")
        self.ok("vadduser", f"alice@{DOMAIN}", "pw-A")
        self.ok("vadduser", f"bob@{DOMAIN}", "pw-B")
        self.ok("vadddomain", "gone.test", "pw-G")
        self.ok("vadduser", "gina@gone.test", "pw-G")
        assert self.deliver("bob").returncode == 0
        etc = inst.prefix / "etc"
        (etc / "open-smtp").write_text(
            f'198.51.100.1:allow,RELAYCLIENT="",RBLSMTPD=""\t{int(time.time()) - 86400}\n')
        shutil.chown(etc / "open-smtp", inst.user, inst.group)
        assert self.login("alice@example.com", "pw-A",
                          env=dict(POP_ENV, TCPREMOTEIP="192.0.2.50")).code == 0
        self.roots = [inst.prefix / "domains", etc, inst.qmaildir]
        self.saved = inst.prefix.parent / "saved"
        self.snapshot()

    def snapshot(self) -> None:
        shutil.rmtree(self.saved, ignore_errors=True)
        self.saved.mkdir()
        for root in self.roots:
            subprocess.run(["cp", "-a", str(root), str(self.saved / root.name)], check=True)

    def restore(self) -> None:
        """Put the data files back as :meth:`snapshot` found them. The configuration stays
        in place: a new inode would make the next command rewrite its parsed cache."""
        for root in self.roots:
            keep = {"vpopmail.toml", "vpopmail.toml.cache"} if root.name == "etc" else set()
            for entry in root.iterdir():
                if entry.name not in keep:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() \
                        else entry.unlink()
            for entry in (self.saved / root.name).iterdir():
                if entry.name not in keep:
                    subprocess.run(["cp", "-a", str(entry), str(root)], check=True)

    def traced(self, argv: list[str], log: Path, inject: Point | None = None,
               fd3: bytes | None = None, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
        """Run an installed command under strace in a fresh pid namespace, optionally killed
        (SIGKILL) on entering the ``inject.ordinal``-th call of ``inject.name``."""
        trace = ["-e", f"trace={TRACED}"] if inject is None else [
            "-e", f"trace={inject.name}",
            "-e", f"inject={inject.name}:signal=SIGKILL:when={inject.ordinal}"]
        command = ["strace", "-qq", "-y", "-o", str(log), *trace, "--",
                   str(self.inst.bin / argv[0]), *argv[1:]]
        if fd3 is not None:
            (self.work / "fd3-kill").write_bytes(fd3)
            command = ["/bin/sh", "-c", f'exec "$@" 3<"{self.work / "fd3-kill"}"', "sh",
                       *command]
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", *command],
                              capture_output=True, text=True, env=env or CLEAN_ENV, cwd="/",
                              timeout=60)

    # -- what the files say ----------------------------------------------------------------
    def state(self) -> dict[str, object]:
        """Everything a reader or the next command sees, normalised (hashes by the known
        password they verify); every file must parse."""
        from vpopmail.passwords import verify_password

        def label(record: bytes) -> tuple[str, ...]:
            fields = record.decode().split(":")
            if fields[0] not in self.labels:
                known = [p for p in PASSWORDS if verify_password(p, fields[0])]
                self.labels[fields[0]] = known[0] if known else fields[0]
            return (self.labels[fields[0]], *fields[1:])

        users: dict[str, object] = {}
        for vpasswd in sorted(self.inst.domains.rglob("vpasswd")):
            directory = vpasswd.parent
            text = index = None
            if (directory / "vpasswd.cdb").exists():
                text, index = vpasswd_pairs(directory)
            else:
                text = dict(line.split(b":", 1) for line in vpasswd.read_bytes().split(b"\n")
                            if line)
            users[directory.name] = tuple(
                None if part is None else tuple(sorted((k, label(v)) for k, v in part.items()))
                for part in (text, index))
        qmail = self.inst.qmaildir
        assign = (qmail / "users" / "assign").read_text()
        assert assign.endswith(".\n"), assign
        control = {name: (qmail / "control" / name).read_bytes()
                   if (qmail / "control" / name).exists() else None
                   for name in ("rcpthosts", "morercpthosts", "virtualdomains", "locals")}
        etc = self.inst.prefix / "etc"
        opened = sorted(line.split(":")[0] for line in (etc / "open-smtp").read_text().splitlines())
        return {"users": users, "assign": assign,
                "users/cdb": cdb_items(qmail / "users" / "cdb"), "control": control,
                "open-smtp": opened, "tcp.smtp.cdb": cdb_items(etc / "tcp.smtp.cdb")}


def assert_consistent(now: dict, old: dict, new: dict) -> str:
    """The invariants after a kill; returns which of the allowed states each pair is in.

    - vpasswd/vpasswd.cdb of every domain: equal (both old or both new), or vpasswd new and
      the cdb old (killed between the two renames: readers, which read only the cdb, see the
      old user set; the next write of that domain, or vmkpasswd, rebuilds the cdb);
    - users/assign and users/cdb: the same, with assign written first;
    - each control file, open-smtp and tcp.smtp.cdb: the old or the new one, complete.
    Files of a domain that users/cdb does not route (being made or removed) only have to parse.
    """
    states = []
    routed = {value.split(b"\0")[3].decode().rsplit("/", 1)[-1]
              for key, value in now["users/cdb"] if key}
    for domain, (text, index) in now["users"].items():
        if domain not in routed or text == index or index is None and not text:
            continue  # a domain no reader reaches (being made or removed) only has to parse
        old_index = old["users"].get(domain, (None, ()))[1]  # a new domain's cdb starts empty
        assert text == new["users"][domain][0] and index in (old_index, ()), domain
        states.append(f"{domain}: vpasswd new, cdb old")
    records = cdb_records(now["assign"])
    if records != now["users/cdb"]:
        assert now["assign"] == new["assign"] and now["users/cdb"] == old["users/cdb"]
        states.append("users/assign new, users/cdb old")
    for key in ("open-smtp", "tcp.smtp.cdb"):
        assert now[key] in (old[key], new[key]), key
    for name, data in now["control"].items():
        assert data in (old["control"][name], new["control"][name]), name
    return "; ".join(states)


class Scenario:
    """One admin write to kill: its command line, the user whose visibility it changes, the
    messages a rerun may fail with, and what the files say once its work is done."""

    def __init__(self, argv: list[str], subject: tuple[str, str],
                 finished: Callable[[dict], bool], clean: tuple[str, ...] = (),
                 fd3: bytes | None = None, ip: str = "") -> None:
        self.argv = argv
        #: the login whose success must follow users/cdb and vpasswd.cdb after a kill
        self.subject = subject
        self.finished = finished
        #: how a rerun may fail (start of stdout): the command had done its work already
        self.clean = clean
        self.fd3 = fd3
        self.env = dict(POP_ENV, TCPREMOTEIP=ip) if ip else None


def stored_password(state: dict, login: str) -> str | None:
    """The password the readers' files (users/cdb, then vpasswd.cdb) hold for ``login``
    (as :meth:`KillSite.state` labels it), or None if they do not route it."""
    name, domain = login.split("@")
    for key, value in state["users/cdb"]:
        if key == b"!" + domain.encode() + b"-":
            users = state["users"].get(value.split(b"\0")[3].decode().rsplit("/", 1)[-1])
            index = dict(users[1]) if users and users[1] else {}
            return index[name.encode()][0] if name.encode() in index else None
    return None


def accepted(state: dict, domain: str) -> bool:
    """Whether qmail accepts and routes ``domain`` (rcpthosts and virtualdomains)."""
    control = state["control"]
    return (domain.encode() in (control["rcpthosts"] or b"").split()
            and f"{domain}:{domain}".encode() in (control["virtualdomains"] or b"").split())


def relayed(state: dict, ip: str) -> bool:
    return ip in state["open-smtp"] and ip.encode() in dict(state["tcp.smtp.cdb"])


SCENARIOS = {
    "vadduser": Scenario(
        ["vadduser", "carol@example.com", "pw-C"], ("carol@example.com", "pw-C"),
        lambda s: stored_password(s, "carol@example.com") == "pw-C",
        ("Error: User already exists\n",)),
    "vdeluser": Scenario(
        ["vdeluser", "bob@example.com"], ("bob@example.com", "pw-B"),
        lambda s: b"bob" not in dict(s["users"]["example.com"][0]) and
        stored_password(s, "bob@example.com") is None,
        ("Error: User does not exist: bob@example.com\n",)),
    "vpasswd": Scenario(
        ["vpasswd", "alice@example.com", "pw-A2"], ("alice@example.com", "pw-A2"),
        lambda s: stored_password(s, "alice@example.com") == "pw-A2"),
    "vadddomain": Scenario(
        ["vadddomain", "new.test", "pw-N"], ("postmaster@new.test", "pw-N"),
        lambda s: stored_password(s, "postmaster@new.test") == "pw-N" and accepted(s, "new.test"),
        ("Error: Domain already exists\n",)),
    "vdeldomain": Scenario(
        ["vdeldomain", "gone.test"], ("gina@gone.test", "pw-G"),
        lambda s: "gone.test" not in s["users"] and "gone.test" not in s["assign"]
        and not accepted(s, "gone.test") and b"gone.test" not in (s["control"]["rcpthosts"]),
        ("Error: Domain does not exist: gone.test\n",)),
    "vchkpw-roaming": Scenario(
        ["vchkpw", "/bin/true"], ("alice@example.com", "pw-A"),
        lambda s: relayed(s, "192.0.2.77"),
        fd3=f"alice@example.com\0pw-A\0{STAMP}\0".encode(), ip="192.0.2.77"),
    "clearopensmtp": Scenario(
        ["clearopensmtp"], ("alice@example.com", "pw-A"),
        lambda s: not relayed(s, "198.51.100.1") and "198.51.100.1" not in s["open-smtp"]
        and relayed(s, "192.0.2.50")),
}
SMTP_AUTH = dict(POP_ENV, TCPLOCALPORT="25")  # a login that leaves the relay files alone


def check_readers(site: KillSite, spec: Scenario, now: dict) -> str:
    """After a kill: a delivery to alice works, alice logs in with the password vpasswd.cdb
    holds, and the subject logs in exactly when users/cdb and vpasswd.cdb hold it; '' if so."""
    delivered = site.deliver("alice").returncode
    alice = site.login("alice@example.com", str(stored_password(now, "alice@example.com")),
                       env=SMTP_AUTH, timeout=20)
    subject = site.login(*spec.subject, env=SMTP_AUTH, timeout=20)
    site.syslog.messages()  # a full socket would block the next vchkpw
    visible = stored_password(now, spec.subject[0]) == spec.subject[1]
    if (delivered, alice.code, subject.code == 0) == (0, 0, visible):
        return ""
    return (f"readers: delivery {delivered}, alice {alice}, {spec.subject[0]} {subject} "
            f"(in the cdb files: {visible})")


def rerun(site: KillSite, spec: Scenario) -> subprocess.CompletedProcess[str]:
    """The same command again, as the operator (or the next login) would run it."""
    argv = [str(site.inst.bin / spec.argv[0]), *spec.argv[1:]]
    if spec.fd3 is not None:
        argv = ["/bin/sh", "-c", f'exec "$@" 3<"{site.work / "fd3-kill"}"', "sh", *argv]
    return subprocess.run(argv, capture_output=True, text=True, env=spec.env or CLEAN_ENV,
                          cwd="/", timeout=60)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sigkill_at_every_write_leaves_consistent_files(root_vhome: Install, scenario: str
                                                        ) -> None:
    """Run the command once under strace to list its syscalls, then once per syscall that
    changes the data files (:meth:`Point.changes`), killed (SIGKILL) on entering it. After
    each kill the files are in an allowed state (:func:`assert_consistent`), the readers
    (vdelivermail, vchkpw) work and see the subject user exactly when the cdb files hold it,
    and the rerun (no lock blocks, no temporary file is in the way) succeeds, or fails
    only because the work was done, and leaves the work done and the pairs agreeing."""
    if not (shutil.which("strace") and shutil.which("unshare") and shutil.which("cdb")):
        pytest.skip("needs strace, unshare (util-linux) and tinycdb")
    spec = SCENARIOS[scenario]
    site = KillSite(root_vhome, True)
    try:
        site.build()
        log = site.work / "trace"
        site.restore()
        first = site.traced(spec.argv, log, fd3=spec.fd3, env=spec.env)
        assert first.returncode == 0, first
        calls, _ = parse_trace(log)
        roots = tuple(f"{root}/" for root in site.roots)
        data = [c for c in calls if any(p.startswith(roots) for p in c.paths)]
        points = [c for c in data if KILL_ALL or c.changes()]
        new = site.state()
        assert spec.finished(new)
        site.restore()
        old = site.state()
        assert not spec.finished(old)
        problems: list[str] = []
        outcomes: dict[str, int] = {}
        for point in points:
            site.restore()
            result = site.traced(spec.argv, log, point, spec.fd3, spec.env)
            killed_calls, killed = parse_trace(log)
            where = f"{scenario} killed at {point}"
            if not killed or killed_calls[-1:] and repr(killed_calls[-1]) != repr(point):
                problems.append(f"{where}: not killed there ({killed_calls[-1:]}, {result})")
                continue
            try:
                now = site.state()
                note = assert_consistent(now, old, new)
            except AssertionError as exc:
                problems.append(f"{where}: inconsistent files: {exc!r}")
                continue
            trouble = check_readers(site, spec, now)
            again = rerun(site, spec)
            after = site.state()
            outcome = "rerun ok" if again.returncode == 0 else again.stdout.strip()
            outcome += f" | {note}" if note else ""
            outcome += " | temporary file left" if leftovers(*site.roots) else ""
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if again.returncode and not again.stdout.startswith(spec.clean or ("\0",)):
                trouble += f" rerun: {again.returncode} {again.stdout!r} {again.stderr[-300:]!r}"
            elif assert_consistent(after, old, new) or not spec.finished(after):
                trouble += f" rerun {again.stdout!r} left the work undone or the pairs apart"
            if trouble:
                problems.append(f"{where}: {trouble}")
        print(f"{scenario}: {len(calls)} traced calls, {len(data)} on the data files, "
              f"{len(points)} killed")
        for outcome, count in sorted(outcomes.items()):
            print(f"  {count:3d} x {outcome}")
        assert problems == [], "\n".join(problems)
    finally:
        site.syslog.close()
