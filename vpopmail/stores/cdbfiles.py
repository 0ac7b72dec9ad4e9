"""The file backend of C vpopmail's cdb module: ``vpasswd`` + ``vpasswd.cdb`` per domain.

``vpasswd`` lines are ``name:crypt:uid:gid:gecos:dir:quota[:clear]``, sorted by name; the cdb
maps name -> the rest of the line. Both are replaced atomically under ``.vpasswd.lock``,
vpasswd first, so a reader of the cdb sees the old or the new set, never a torn file.
Lookups read only the cdb (hot path); a missing cdb is rebuilt from vpasswd, as C does.

Every domain has a vpasswd, empty when it has no users (vadddomain writes one; C vpopmail's
adds the postmaster, and its vdeluser of the last user leaves an empty file). A missing
vpasswd is therefore damage — an unmounted file system, a restore in progress — and never
"no users": lookups raise CorruptData (mail is deferred, logins answer 111) and changes are
refused, so nothing rebuilds a domain's user list from nothing.
"""
import posix
import stat

from vpopmail import cdb
from vpopmail.assign import AssignEntry
from vpopmail.config import Config
from vpopmail.errors import (BadInput, CorruptData, UserDoesNotExist, UsernameExists,
                             VpopmailError)
from vpopmail.fsutil import FileLock, atomic_write, exists, join, read_regular
from vpopmail.stores import Fault, UserDatabase, VUser

TYPE_CHECKING = False  # the typing idiom without importing typing (hot path)
if TYPE_CHECKING:
    from collections.abc import Callable  # 1.5 ms with collections: never at run time

VPASSWD = "vpasswd"
VPASSWD_CDB = "vpasswd.cdb"
LOCK = ".vpasswd.lock"
LASTAUTH = "lastauth"
#: the refusal for a domain whose vpasswd is lost (``how``: what is wrong with it)
MISSING = ("{path} {how}: the users of {domain} are unknown, nothing was changed. Put it back "
           "from a backup, or write it again from vpasswd.cdb with 'vmkpasswd -r {domain}'")
GONE = "is missing (an unmounted file system? a restore in progress?)"
EMPTIED = "is empty but vpasswd.cdb holds users (a crash before it reached the disk?)"
VPASSWD_LIMIT = 1 << 30  # bytes: far beyond any domain's users (100 000 take 15 MB)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _touch_if_same(path: str, data: bytes, uid: int, gid: int) -> bool:
    """Set ``path``'s times to now if it is a regular file (never through a link or a FIFO)
    holding exactly ``data``, owned by ``uid``:``gid`` with mode 0600; False otherwise (and
    for any error: the caller writes it afresh)."""
    try:
        found, st = read_regular(path, len(data))
        if (found != data or st.st_mode != stat.S_IFREG | 0o600
                or (st.st_uid, st.st_gid) != (uid, gid)):
            return False
        posix.utime(path, follow_symlinks=False)
        return True
    except OSError:
        return False


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def parse_fields(name: str, rest: str, source: str = VPASSWD) -> VUser:
    """A user from its name and the text after ``name:`` (the cdb value)."""
    fields = rest.split(":")
    if len(fields) < 6:
        raise CorruptData(f"{source}: user {name!r} has {len(fields) + 1} fields, needs 7 or 8")
    try:
        uid, flags = int(fields[1]), int(fields[2])
    except ValueError:
        raise CorruptData(f"{source}: user {name!r} has a non-numeric uid/gid field") from None
    return VUser(name, fields[0], uid, flags, fields[3], fields[4], fields[5],
                 ":".join(fields[6:]))


def parse_line(line: str, source: str = VPASSWD) -> VUser:
    """A user from one vpasswd line (without its newline)."""
    name, colon, rest = line.partition(":")
    if not colon or not name:
        raise CorruptData(f"{source}: line without a user name: {line[:40]!r}")
    return parse_fields(name, rest, source)


def format_line(user: VUser, clear_passwords: bool) -> str:
    """The vpasswd line for ``user``; the 8th field exists only with clear passwords on."""
    line = (f"{user.name}:{user.passwd}:{user.uid}:{user.flags}:{user.gecos}:{user.dir}:"
            f"{user.quota}")
    return f"{line}:{user.clear}" if clear_passwords else line


def _name(line: bytes) -> bytes:
    return line[:line.find(b":")]


def _checked(lines: list[bytes], source: str) -> list[bytes]:
    """``lines``, if every one can be a vpasswd line (else CorruptData)."""
    for number, line in enumerate(lines, 1):
        if line.count(b":") < 6 or line.startswith(b":"):
            raise CorruptData(f"{source} line {number}: not a vpasswd line: {line[:40]!r}")
    return lines


class CdbFiles(UserDatabase):
    """Users in ``<domaindir>/vpasswd`` and ``vpasswd.cdb``.

    Writers keep the file as raw byte lines: one add is a read, a binary-search insert, a
    write and the cdb rebuild, with no per-line decoding (the cost of an add at 100k users).
    """

    #: vpasswd or its cdb (one of them left: a damaged domain, which the commands then name,
    #: rather than pass over); .qmail-default alone is no domain's (~alias may hold
    #: fastforward's)
    domain_files = (VPASSWD, VPASSWD + ".cdb")

    store_name = VPASSWD

    def __init__(self, config: Config) -> None:
        self.clear_passwords = config.passwords_clear_passwords
        self.timeout = config.locks_timeout
        self.sync = config.delivery_file_sync

    def _lock(self, domain: AssignEntry) -> FileLock:
        return FileLock(join(domain.dir, LOCK), self.timeout, domain.uid, domain.gid)

    def get_user(self, domain: AssignEntry, name: str) -> VUser | None:
        path = join(domain.dir, VPASSWD_CDB)
        key = _encode(name)
        try:
            value = cdb.lookup(path, key)
        except FileNotFoundError:
            self.rebuild_index(domain)
            value = cdb.lookup(path, key)
        except OSError as exc:
            raise CorruptData(f"{path}: {exc.strerror}") from None
        return None if value is None else parse_fields(name, _decode(value), path)

    def _missing(self, domain: AssignEntry, how: str = GONE) -> CorruptData:
        return CorruptData(MISSING.format(path=join(domain.dir, VPASSWD), how=how,
                                          domain=domain.real_domain))

    def _read_lines(self, domain: AssignEntry) -> list[bytes]:
        """The vpasswd lines (bytes, no newline); a line that cannot be a user, a missing
        vpasswd, or an empty one beside a vpasswd.cdb with records (more than its 2 KiB
        header), is an error."""
        path = join(domain.dir, VPASSWD)
        try:
            # a regular file only: a link the domain owner plants (to /etc/shadow, say) must
            # not make root copy that file's lines into vpasswd; a FIFO must not hang root
            data = read_regular(path, VPASSWD_LIMIT)[0]
        except FileNotFoundError:
            raise self._missing(domain) from None
        except OSError as exc:
            raise CorruptData(f"{path}: {exc.strerror}") from None
        lines = _checked([line for line in data.split(b"\n") if line], path)
        if not lines:
            try:
                if posix.stat(join(domain.dir, VPASSWD_CDB)).st_size > cdb.HEADER:
                    raise self._missing(domain, EMPTIED)
            except FileNotFoundError:
                pass
        return lines

    def _write(self, domain: AssignEntry, lines: list[bytes], index: bool = True) -> None:
        data = b"\n".join(lines) + b"\n" if lines else b""
        atomic_write(join(domain.dir, VPASSWD), data, 0o600, domain.uid, domain.gid,
                     self.sync)
        if index:
            self._write_cdb(domain, lines)

    def _write_cdb(self, domain: AssignEntry, lines: list[bytes]) -> None:
        from vpopmail.cdbwrite import build

        records = [(name, rest) for name, rest in (line.split(b":", 1) for line in lines)]
        atomic_write(join(domain.dir, VPASSWD_CDB), build(records), 0o600,
                     domain.uid, domain.gid, self.sync)

    def list_users(self, domain: AssignEntry) -> list[VUser]:
        return [parse_line(_decode(line)) for line in self._read_lines(domain)]

    def has_users(self, domain: AssignEntry) -> bool:
        return self._vpasswd_size(domain) > 0

    @staticmethod
    def _vpasswd_size(domain: AssignEntry) -> int:
        """The size of the domain's vpasswd, -1 if there is none; CorruptData if it cannot be
        looked at (a permission refused is no missing file: vpopbull sent nothing, exit 0)."""
        path = join(domain.dir, VPASSWD)
        try:
            return posix.stat(path).st_size
        except (FileNotFoundError, NotADirectoryError):
            return -1
        except OSError as exc:
            raise CorruptData(f"{path}: {exc.strerror}") from None

    def add_users(self, domain: AssignEntry, users: list[VUser], index: bool = True) -> None:
        new = sorted((_encode(format_line(u, self.clear_passwords)) for u in users), key=_name)
        with self._lock(domain):
            lines = self._read_lines(domain)
            names = [_name(line) for line in lines]
            taken = set(names)
            for line in new:
                if _name(line) in taken:
                    raise UsernameExists(f"{_decode(_name(line))}@{domain.real_domain}")
                taken.add(_name(line))
            if len(new) == 1 and names == sorted(names):
                import bisect  # vadduser's only: a stdlib module less for each login and delivery

                at = bisect.bisect_right(names, _name(new[0]))
                lines.insert(at, new[0])
            else:
                lines = sorted(lines + new, key=_name)
            self._write(domain, lines, index)

    def update_users(self, domain: AssignEntry, users: list[VUser], index: bool = True) -> None:
        changes = {_encode(u.name): _encode(format_line(u, self.clear_passwords)) for u in users}
        with self._lock(domain):
            lines = self._read_lines(domain)
            for i, line in enumerate(lines):
                name = _name(line)
                if name in changes:
                    lines[i] = changes.pop(name)
            if changes:
                raise UserDoesNotExist(f"{_decode(next(iter(changes)))}@{domain.real_domain}")
            self._write(domain, lines, index)

    def modify_users(self, domain: AssignEntry, names: list[str], change: "Callable[[VUser], VUser]",
                     index: bool = True) -> list[VUser]:
        """Apply ``change`` to the stored records of ``names`` under the lock, in one write, and
        return the new records: two commands changing different fields of one user (vpasswd
        and vmoduser -q) both take effect, where read-then-:meth:`update_users` kept only the
        last. Raises UserDoesNotExist (changing nothing) if one is absent."""
        wanted = {_encode(name) for name in names}
        changed = []
        with self._lock(domain):
            lines = self._read_lines(domain)
            for i, line in enumerate(lines):
                if _name(line) in wanted:
                    wanted.discard(_name(line))
                    user = change(parse_line(_decode(line)))
                    lines[i] = _encode(format_line(user, self.clear_passwords))
                    changed.append(user)
            if wanted:
                raise UserDoesNotExist(f"{_decode(next(iter(wanted)))}@{domain.real_domain}")
            self._write(domain, lines, index)
        return changed

    def delete_user(self, domain: AssignEntry, name: str) -> VUser:
        key = _encode(name)
        with self._lock(domain):
            lines = self._read_lines(domain)
            for i, line in enumerate(lines):
                if _name(line) == key:
                    removed = parse_line(_decode(lines.pop(i)))
                    self._write(domain, lines)
                    return removed
        raise UserDoesNotExist(f"{name}@{domain.real_domain}")

    def create_domain(self, domain: AssignEntry) -> None:
        """An empty vpasswd and its cdb; users already in a vpasswd (a rerun of a vadddomain
        killed after its postmaster was added) are kept. A vpasswd.cdb without its vpasswd is
        a damaged domain, not a new one: refused."""
        with self._lock(domain):
            present = exists(join(domain.dir, VPASSWD))
            if not present and exists(join(domain.dir, VPASSWD_CDB)):
                raise self._missing(domain)
            self._write(domain, self._read_lines(domain) if present else [])

    def delete_domain(self, domain: AssignEntry) -> None:
        """Nothing to do: the files go with the domain directory."""

    def rebuild_index(self, domain: AssignEntry) -> None:
        """vpasswd.cdb from vpasswd; with no vpasswd, CorruptData before the lock file is made
        (a lookup in an empty, unmounted domain directory creates nothing)."""
        if self._vpasswd_size(domain) < 0:
            raise self._missing(domain)
        with self._lock(domain):
            self._write_cdb(domain, self._read_lines(domain))

    def restore_from_index(self, domain: AssignEntry) -> int:
        """Write a lost (missing or empty) vpasswd back from vpasswd.cdb (``vmkpasswd -r``);
        the number of users. Refused if vpasswd has content or the cdb is damaged."""
        path = join(domain.dir, VPASSWD)
        index = join(domain.dir, VPASSWD_CDB)
        with self._lock(domain):
            if exists(path) and posix.stat(path).st_size:
                raise BadInput(f"{path} exists: it is the user list, and vpasswd.cdb is rebuilt "
                                  f"from it (vmkpasswd {domain.real_domain})")
            try:
                with cdb.CdbReader(index) as reader:
                    records = reader.items()
            except OSError as exc:
                raise CorruptData(f"{index}: {exc.strerror}; restore vpasswd from a backup") from None
            lines = _checked(sorted((key + b":" + value for key, value in records), key=_name),
                             index)
            self._write(domain, lines, index=False)
        return len(lines)

    def record_login(self, domain: AssignEntry, user: VUser, remote_ip: str) -> None:
        """``<dir>/lastauth``: the remote IP, no newline; its mtime is the login time. A login
        from the address already recorded only sets the time (a mail client polling from one
        place: no new file, no rename, which ext4 makes wait for the new file's data)."""
        path = join(user.dir, LASTAUTH)
        data = _encode(remote_ip)
        if not _touch_if_same(path, data, domain.uid, domain.gid):
            atomic_write(path, data, 0o600, domain.uid, domain.gid, sync=False)

    def last_login(self, domain: AssignEntry, user: VUser) -> tuple[float, str] | None:
        """lastauth's mtime and text."""
        path = join(user.dir, LASTAUTH)
        try:
            data, st = read_regular(path, 256)
            return st.st_mtime, data.decode("ascii", "replace").strip()
        except OSError:
            return None

    def verify(self, domain: AssignEntry) -> str:
        """vpasswd is readable and well formed, vpasswd.cdb holds the same records (logins
        and deliveries read only the cdb), both are owned by the domain owner."""
        name = domain.real_domain
        path = join(domain.dir, VPASSWD)
        index = join(domain.dir, VPASSWD_CDB)
        try:
            data = read_regular(path, VPASSWD_LIMIT)[0]
        except FileNotFoundError:
            raise Fault(f"{path} is missing", f"restore {path} from a backup, or write it "
                        f"again from vpasswd.cdb: vmkpasswd -r {name}") from None
        except OSError as exc:
            raise Fault(f"{path}: {exc.strerror}", f"make {path} a regular file the domain "
                        "owner can read") from None
        records: dict[bytes, bytes] = {}
        for number, line in enumerate(data.split(b"\n"), 1):
            if not line:
                continue
            if line.count(b":") < 6 or line.startswith(b":"):
                raise Fault(f"{path} line {number} is not a user record",
                            f"correct or remove line {number} of {path}, then vmkpasswd {name}")
            key, _, rest = line.partition(b":")
            records[key] = rest
        try:
            with cdb.CdbReader(index) as reader:
                indexed = reader.items()
        except FileNotFoundError:
            raise Fault(f"{index} is missing", f"vmkpasswd {name}") from None
        except VpopmailError as exc:
            raise Fault(f"{index} is corrupt: {exc}", f"vmkpasswd {name}") from None
        in_cdb = dict(indexed)
        if in_cdb != records or len(indexed) != len(in_cdb):
            differ = sorted(_decode(n) for n in set(records) | set(in_cdb)
                            if records.get(n) != in_cdb.get(n))
            shown = ", ".join(differ[:5]) + (" ..." if len(differ) > 5 else "")
            raise Fault(f"{index} does not match vpasswd ({len(differ)} users differ: "
                        f"{shown}): logins and deliveries read the cdb", f"vmkpasswd {name}")
        for file in (path, index):
            st = posix.stat(file)
            if (st.st_uid, st.st_gid) != (domain.uid, domain.gid):
                raise Fault(f"{file} belongs to {st.st_uid}:{st.st_gid}, not "
                            f"{domain.uid}:{domain.gid}: vdelivermail and vchkpw run as the "
                            f"domain owner", f"chown {domain.uid}:{domain.gid} {file}")
        return f"{len(records)} users, vpasswd.cdb matches"
