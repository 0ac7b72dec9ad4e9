"""vpopmail.stores.relay's RelayTable, the library itself on real files in tmp_path: open-smtp's
lines, the tcp.smtp.cdb it compiles (read back with tinycdb's ``cdb -d`` and compared with what
Debian's tcprules makes of the same rules, an IPv4 client's in both of tcpserver's spellings),
clearing by age, the generation counters kept in
open-smtp.lock, and the lock held by another process. (The login and clearopensmtp paths
through the installed programs: test_vchkpw.py and test_reliability_concurrency.py.)"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import cdb_dump, cdb_text, time_limit
from vpopmail.config import Config, validate
from vpopmail.errors import BadInput, CouldNotUpdateFile, LockTimeout
from vpopmail.stores.relay import RelayTable

NOW = 1_700_000_000
STATIC = b"127.:allow,RELAYCLIENT=\"\"\n:allow\n"
OPEN = b':allow,RELAYCLIENT="",RBLSMTPD=""'  # what follows the IP on an open-smtp line
STATIC_RECORDS = [(b"127.", b"+RELAYCLIENT=\0"), (b"", b"")]


def roamers(*ips: bytes) -> list[tuple[bytes, bytes]]:
    """The cdb records of roaming IPv4 addresses: each as tcpserver without -6 looks it up,
    then as ``tcpserver -6`` does (IPv4-mapped)."""
    return [(key, b"+RELAYCLIENT=\0+RBLSMTPD=\0") for ip in ips for key in (ip, b"::ffff:" + ip)]


def table(home: Path, **relay: object) -> RelayTable:
    """A RelayTable over ``home`` (owned by whoever runs the tests), files under home/etc."""
    (home / "etc").mkdir(parents=True, exist_ok=True)
    config = Config(validate({"paths": {"vpopmail_home": str(home)},
                              "owner": {"uid": os.getuid(), "gid": os.getgid()},
                              "relay": relay, "delivery": {"file_sync": False}}))
    return RelayTable(config, timeout=0.5)


@pytest.fixture
def relay(tmp_path: Path) -> RelayTable:
    made = table(tmp_path)
    Path(made.tcp_smtp).write_bytes(STATIC)
    return made


def lines(t: RelayTable) -> list[bytes]:
    return Path(t.open_smtp).read_bytes().splitlines()


def counters(t: RelayTable) -> tuple[int, int]:
    """(wanted, built) as open-smtp.lock holds them."""
    wanted, built = Path(t.open_smtp + ".lock").read_bytes().split()
    return int(wanted), int(built)


def tcprules_dump(bindir: Path, tmp_path: Path, text: bytes) -> bytes:
    """``cdb -d`` of what Debian's tcprules (or its IPv6 build) compiles from ``text``."""
    out = tmp_path / "tcprules.cdb"
    subprocess.run([str(bindir / "tcprules"), str(out), str(tmp_path / "tcprules.tmp")],
                   input=text, check=True, capture_output=True)
    return cdb_dump(out)


def test_open_relay_writes_the_line_and_compiles_as_tcprules(relay: RelayTable, plain: Path,
                                                              tmp_path: Path) -> None:
    """open-smtp gets C's line for the IP; the cdb, tcp.smtp's records followed by each IP's
    rule, then the same rule for its IPv4-mapped form (the key ``tcpserver -6`` looks up for
    an IPv4 client: test_vchkpw.py's test_an_ipv4_roamer_relays_whichever_tcpserver_has_6)."""
    assert relay.open_relay("192.0.2.1", now=NOW) is True
    assert relay.open_relay("198.51.100.20", now=NOW + 1) is True
    assert lines(relay) == [b"192.0.2.1" + OPEN + b"\t%d" % NOW,
                            b"198.51.100.20" + OPEN + b"\t%d" % (NOW + 1)]
    assert cdb_dump(Path(relay.cdb)) == cdb_text(STATIC_RECORDS
                                                 + roamers(b"192.0.2.1", b"198.51.100.20"))
    assert tcprules_dump(plain, tmp_path, STATIC) == cdb_text(STATIC_RECORDS)
    for path in (relay.open_smtp, relay.cdb):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path
    assert counters(relay) == (2, 2)
    assert sorted(os.listdir(os.path.dirname(relay.cdb))) == [
        "open-smtp", "open-smtp.lock", "tcp.smtp", "tcp.smtp.cdb", "tcp.smtp.cdb.lock"]


def test_the_cdb_is_what_the_ipv6_tcprules_makes_of_the_rules(relay: RelayTable, ipv6: Path,
                                                             tmp_path: Path) -> None:
    """Byte for byte what the IPv6 build of tcprules (Debian's rejects ``::ffff:``) compiles
    from tcp.smtp followed by each roaming rule in tcpserver's spellings: an IPv4 client's
    twice, whichever spelling it logged in with, each address once; an IPv6 client's once."""
    for ip in ("192.0.2.1", "::ffff:198.51.100.20", "2001:db8::1", "198.51.100.20"):
        relay.open_relay(ip, now=NOW)
    expected = STATIC + b"".join(ip + OPEN + b"\n" for ip in (
        b"192.0.2.1", b"::ffff:192.0.2.1", b"198.51.100.20", b"::ffff:198.51.100.20",
        b"2001:db8::1"))
    out = tmp_path / "tcprules.cdb"
    subprocess.run([str(ipv6 / "tcprules"), str(out), str(tmp_path / "tcprules.tmp")],
                   input=expected, check=True, capture_output=True)
    assert Path(relay.cdb).read_bytes() == out.read_bytes()


def test_a_known_ip_only_gets_its_time_refreshed(relay: RelayTable) -> None:
    """In place: its line keeps its place, the file its inode; no compile."""
    relay.open_relay("192.0.2.1", now=NOW)
    relay.open_relay("192.0.2.2", now=NOW)
    before = os.stat(relay.cdb)
    with open(relay.open_smtp, "rb") as held:  # its inode cannot be reused meanwhile
        assert relay.open_relay("192.0.2.1", now=NOW + 60) is False
        assert os.path.samestat(os.fstat(held.fileno()), os.stat(relay.open_smtp))
    assert lines(relay) == [b"192.0.2.1" + OPEN + b"\t%d" % (NOW + 60),
                            b"192.0.2.2" + OPEN + b"\t%d" % NOW]
    after = os.stat(relay.cdb)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # no compile
    assert counters(relay) == (2, 2)


def test_a_known_ip_is_never_refreshed_through_a_second_name(relay: RelayTable,
                                                            tmp_path: Path) -> None:
    """open-smtp with another name (a hard link planted by whoever may write etc/): its
    refresh replaces the file, the other name keeps its contents."""
    relay.open_relay("192.0.2.1", now=NOW)
    other = tmp_path / "elsewhere"
    os.link(relay.open_smtp, other)
    kept = other.read_bytes()
    assert relay.open_relay("192.0.2.1", now=NOW + 60) is False
    assert other.read_bytes() == kept
    assert lines(relay) == [b"192.0.2.1" + OPEN + b"\t%d" % (NOW + 60)]
    assert os.stat(relay.open_smtp).st_nlink == 1


@pytest.mark.parametrize("text", [
    b"192.0.2.1" + OPEN + b"\t99\n",  # a time of another length
    b"192.0.2.1" + OPEN + b"\t%d\n192.0.2.1" % NOW + OPEN + b"\t%d\n" % NOW,  # twice
    b"192.0.2.1:allow\t%d\n" % NOW,  # not vpopmail's rule
    b"192.0.2.1" + OPEN + b"\n",  # no time
])
def test_a_known_ip_whose_line_cannot_be_refreshed_in_place_is_rewritten(
        relay: RelayTable, text: bytes) -> None:
    """Where the address's line is not vpopmail's one line with a time of ten digits, the
    file is written anew (one line, vpopmail's, last), as before."""
    Path(relay.open_smtp).write_bytes(b"198.51.100.7" + OPEN + b"\t%d\n" % NOW + text)
    with open(relay.open_smtp, "rb") as held:
        assert relay.open_relay("192.0.2.1", now=NOW + 60) is False
        assert not os.path.samestat(os.fstat(held.fileno()), os.stat(relay.open_smtp))
    assert lines(relay) == [b"198.51.100.7" + OPEN + b"\t%d" % NOW,
                            b"192.0.2.1" + OPEN + b"\t%d" % (NOW + 60)]


def test_no_static_rules_file(tmp_path: Path) -> None:
    relay = table(tmp_path)
    relay.open_relay("192.0.2.9", now=NOW)
    assert cdb_dump(Path(relay.cdb)) == (b"+9,25:192.0.2.9->+RELAYCLIENT=\0+RBLSMTPD=\0\n"
                                         b"+16,25:::ffff:192.0.2.9->+RELAYCLIENT=\0+RBLSMTPD=\0\n\n")


def test_clear_drops_old_and_timeless_lines_and_recompiles(relay: RelayTable, plain: Path,
                                                           tmp_path: Path) -> None:
    limit = NOW - 180 * 60
    Path(relay.open_smtp).write_bytes(
        b"192.0.2.1" + OPEN + b"\t%d\n" % (limit - 1) + b"192.0.2.2" + OPEN + b"\t%d\n" % limit
        + b"192.0.2.3" + OPEN + b"\n" + b"192.0.2.4" + OPEN + b"\tsoon\n"
        + b"192.0.2.5" + OPEN + b"\t%d\n" % (limit + 1))
    assert relay.clear(180, now=NOW) == 4
    assert lines(relay) == [b"192.0.2.5" + OPEN + b"\t%d" % (limit + 1)]
    assert cdb_dump(Path(relay.cdb)) == cdb_text(STATIC_RECORDS + roamers(b"192.0.2.5"))
    assert relay.clear(180, now=NOW) == 0
    assert relay.clear(0, now=limit + 1) == 1
    assert lines(relay) == []
    assert cdb_dump(Path(relay.cdb)) == tcprules_dump(plain, tmp_path, STATIC)


def test_an_ipv4_client_is_one_dotted_line_however_it_logged_in(relay: RelayTable) -> None:
    """One IPv4 client logged in through an IMAP server under tcpserver -6 (TCPREMOTEIP
    ``::ffff:a.b.c.d``) and a POP server without it: open-smtp keeps one line, in C's dotted
    form, with the later login's time (C's clearopensmtp and vchkpw rebuild with the system's
    tcprules, whose IPv4-only build stops at a ``::ffff:`` line: found by the differential fuzz
    against C); the cdb holds both spellings until that line expires."""
    assert relay.open_relay("::ffff:192.0.2.7", now=NOW) is True
    assert lines(relay) == [b"192.0.2.7" + OPEN + b"\t%d" % NOW]
    assert relay.open_relay("192.0.2.7", now=NOW + 300) is False
    assert relay.open_relay("::ffff:192.0.2.7", now=NOW + 600) is False
    assert lines(relay) == [b"192.0.2.7" + OPEN + b"\t%d" % (NOW + 600)]
    assert cdb_dump(Path(relay.cdb)) == cdb_text(STATIC_RECORDS + roamers(b"192.0.2.7"))
    assert relay.clear(10, now=NOW + 600) == 0
    assert relay.clear(10, now=NOW + 1200) == 1
    assert cdb_dump(Path(relay.cdb)) == cdb_text(STATIC_RECORDS)


def test_a_mapped_line_an_earlier_version_wrote_gives_way_to_the_dotted_one(
        relay: RelayTable) -> None:
    """open-smtp from an earlier version holds a ``::ffff:`` line: the client's next login
    (either spelling) replaces it with the dotted line, its cdb rules unchanged."""
    Path(relay.open_smtp).write_bytes(b"::ffff:192.0.2.7" + OPEN + b"\t%d\n" % NOW)
    relay.compile(relay._owe_compile())
    before = Path(relay.cdb).read_bytes()
    assert cdb_dump(Path(relay.cdb)) == cdb_text(STATIC_RECORDS + roamers(b"192.0.2.7")[::-1])
    assert relay.open_relay("::ffff:192.0.2.7", now=NOW + 60) is False
    assert lines(relay) == [b"192.0.2.7" + OPEN + b"\t%d" % (NOW + 60)]
    assert Path(relay.cdb).read_bytes() == before  # no new address: not compiled again


def test_a_time_in_the_future_expires_from_now_not_never(relay: RelayTable) -> None:
    """A login while the clock was ten years ahead: once the clock is right again,
    clearopensmtp counts the entry from now, so it goes after relay_clear_minutes (C kept it
    relaying for ten years)."""
    later = NOW + 10 * 365 * 86400
    relay.open_relay("192.0.2.1", now=later)
    relay.open_relay("192.0.2.2", now=NOW)
    assert relay.clear(180, now=NOW) == 0
    assert lines(relay) == [b"192.0.2.1" + OPEN + b"\t%d" % NOW,
                            b"192.0.2.2" + OPEN + b"\t%d" % NOW]
    assert relay.clear(180, now=NOW + 180 * 60) == 2
    assert lines(relay) == []
    assert b"192.0.2.1" not in cdb_dump(Path(relay.cdb))


def test_lines_that_are_not_an_ip_never_become_rules(relay: RelayTable) -> None:
    """open-smtp damaged or edited by hand: a line whose address is empty, a prefix or a host
    name would be a rule letting every client (or a whole network) relay; like the SQL
    table's odd rows it is left out of the cdb and dropped at the next write. A line of an
    address in another spelling comes back in vpopmail's."""
    stamp = b"\t%d\n" % NOW
    Path(relay.open_smtp).write_bytes(
        b':allow,RELAYCLIENT=""' + stamp + b'10.:allow,RELAYCLIENT=""' + stamp
        + b'=evil.example:allow,RELAYCLIENT=""' + stamp + b"\xff:allow" + stamp
        + b'2001_db8__1:allow,RELAYCLIENT="",RBLSMTPD=""' + stamp
        + b'192.0.2.1:allow,RELAYCLIENT=""' + stamp + b"2001:DB8::0:1" + OPEN + stamp)
    assert relay.open_relay("192.0.2.2", now=NOW)
    keys = [line.split(b"->")[0].partition(b":")[2] for line in
            cdb_dump(Path(relay.cdb)).splitlines() if line]
    assert keys == [b"127.", b"", b"192.0.2.1", b"::ffff:192.0.2.1", b"2001:db8::1",
                    b"192.0.2.2", b"::ffff:192.0.2.2"]  # b"": tcp.smtp's
    assert lines(relay) == [b"192.0.2.1" + OPEN + b"\t%d" % NOW,
                            b"2001:db8::1" + OPEN + b"\t%d" % NOW,
                            b"192.0.2.2" + OPEN + b"\t%d" % NOW]


def test_clear_without_open_smtp_compiles_the_static_rules(relay: RelayTable, plain: Path,
                                                           tmp_path: Path) -> None:
    assert relay.clear(60, now=NOW) == 0
    assert Path(relay.open_smtp).read_bytes() == b""
    assert cdb_dump(Path(relay.cdb)) == tcprules_dump(plain, tmp_path, STATIC)


def test_rebuild_off_leaves_the_compile_owed(tmp_path: Path) -> None:
    off = table(tmp_path, rebuild_tcpserver=False)
    off.open_relay("192.0.2.1", now=NOW)
    assert lines(off) == [b"192.0.2.1" + OPEN + b"\t%d" % NOW]
    assert not os.path.exists(off.cdb)
    assert counters(off) == (1, 0)
    on = table(tmp_path)  # switched back on: the next login compiles what is owed
    assert on.open_relay("192.0.2.1", now=NOW + 1) is False
    assert cdb_dump(Path(on.cdb)) == cdb_text(roamers(b"192.0.2.1"))
    assert counters(on) == (1, 1)


def test_a_compile_owed_by_a_killed_process_is_done_by_the_next_login(relay: RelayTable) -> None:
    """A process killed between counting its change and compiling leaves wanted > built: the
    next login of a known IP (no change of its own) compiles."""
    relay.open_relay("192.0.2.1", now=NOW)
    Path(relay.open_smtp).write_bytes(Path(relay.open_smtp).read_bytes()
                                      + b"192.0.2.2" + OPEN + b"\t%d\n" % NOW)
    Path(relay.open_smtp + ".lock").write_bytes(b"%20d %20d\n" % (2, 1))
    assert relay.open_relay("192.0.2.1", now=NOW + 1) is False
    assert b"192.0.2.2->" in cdb_dump(Path(relay.cdb))
    assert counters(relay) == (2, 2)


def test_bad_address_changes_nothing(relay: RelayTable) -> None:
    relay.open_relay("192.0.2.1", now=NOW)
    before = (Path(relay.open_smtp).read_bytes(), Path(relay.cdb).read_bytes(), counters(relay))
    for bad in ("", "192.0.2", "example.com", "192.0.2.1\n:allow", "::1:allow"):
        with pytest.raises(BadInput):
            relay.open_relay(bad, now=NOW)
    assert (Path(relay.open_smtp).read_bytes(), Path(relay.cdb).read_bytes(),
            counters(relay)) == before


def test_bad_static_rules_keep_the_ip_and_the_compile_owed(relay: RelayTable) -> None:
    """A syntax error in tcp.smtp: BadInput naming it, the old cdb stays, the IP is recorded
    and its compile owed, so fixing tcp.smtp and the next login bring it in."""
    relay.open_relay("192.0.2.1", now=NOW)
    old = Path(relay.cdb).read_bytes()
    Path(relay.tcp_smtp).write_bytes(b"1.2.3.4:bogus\n")
    with pytest.raises(BadInput, match="tcp.smtp"):
        relay.open_relay("192.0.2.2", now=NOW)
    assert Path(relay.cdb).read_bytes() == old
    assert lines(relay)[-1] == b"192.0.2.2" + OPEN + b"\t%d" % NOW
    assert counters(relay) == (2, 1)
    Path(relay.tcp_smtp).write_bytes(STATIC)
    relay.open_relay("192.0.2.2", now=NOW + 1)
    assert b"192.0.2.2->" in cdb_dump(Path(relay.cdb))


@pytest.mark.parametrize("plant", ["fifo", "dev-zero", "lock-fifo"])
def test_planted_relay_file_is_refused_without_waiting(relay: RelayTable, plant: str) -> None:
    """open-smtp, or its lock, replaced in etc/ (the vpopmail user's to add to) by a FIFO or a
    link to a device: a login and clearopensmtp give up at once with a temporary error instead
    of waiting on the FIFO for ever (holding open-smtp.lock) or reading /dev/zero until memory
    runs out; nothing is written through the link."""
    relay.open_relay("192.0.2.1", now=NOW)
    target = relay.open_smtp + (".lock" if plant == "lock-fifo" else "")
    os.unlink(target)
    if plant == "dev-zero":
        os.symlink("/dev/zero", target)
    else:
        os.mkfifo(target)
    cdb = Path(relay.cdb).read_bytes()
    with time_limit(5):
        with pytest.raises(CouldNotUpdateFile, match=target):
            relay.open_relay("192.0.2.2", now=NOW)
        with pytest.raises(CouldNotUpdateFile, match=target):
            relay.clear(60, now=NOW)
    assert Path(relay.cdb).read_bytes() == cdb
    assert stat.S_ISFIFO(os.lstat(target).st_mode) or os.readlink(target) == "/dev/zero"


@pytest.fixture
def held(relay: RelayTable) -> Iterator[str]:
    """open-smtp.lock held by another process until the test ends; yields the lock's path."""
    path = relay.open_smtp + ".lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
         "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\nsys.stdin.read()\n", path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield path
    finally:
        holder.communicate(timeout=10)


def test_lock_held_elsewhere_times_out_and_changes_nothing(relay: RelayTable,
                                                           held: str) -> None:
    with pytest.raises(LockTimeout):
        relay.open_relay("192.0.2.1", now=NOW)
    with pytest.raises(LockTimeout):
        relay.clear(60, now=NOW)
    assert not os.path.exists(relay.open_smtp) and not os.path.exists(relay.cdb)


@pytest.mark.parametrize("known", [False, True])
def test_the_time_recorded_is_when_the_lock_was_had(tmp_path: Path, known: bool) -> None:
    """A login that waited for open-smtp.lock records the time it got it, not the time it
    began to wait: a login that came later but wrote first is never given an older time (and
    the relay never closes earlier than relay_clear_minutes after the write)."""
    relay = table(tmp_path)
    relay.timeout = 10
    Path(relay.tcp_smtp).write_bytes(STATIC)
    if known:
        relay.open_relay("192.0.2.1", now=NOW)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
         "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(2)\n"
         "print(int(time.time()), flush=True)\n", relay.open_smtp + ".lock"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    relay.open_relay("192.0.2.1")
    done = int(time.time())
    released = int(holder.communicate(timeout=10)[0])
    [line] = lines(relay)
    assert line.startswith(b"192.0.2.1" + OPEN + b"\t")
    assert released <= int(line.rpartition(b"\t")[2]) <= done
