"""qmail's ``users/assign`` and the ``users/cdb`` that qmail-newu builds from it.

Reading (``lookup``) is on the hot path and imports only the lean cdb reader; building the
cdb (``cdb_records``) reproduces qmail-newu byte for byte, so no qmail binary is needed.
"""
from vpopmail import cdb
from vpopmail.errors import BadInput, CorruptData
from vpopmail.fsutil import join
from vpopmail.record import SlotRecord

TYPE_CHECKING = False  # the typing module costs milliseconds on the hot path
if TYPE_CHECKING:
    from collections.abc import Callable


class AssignEntry(SlotRecord):
    """One vpopmail ``+domain-:real:uid:gid:dir:-::`` line."""

    __slots__ = ("domain", "real_domain", "uid", "gid", "dir")

    def __init__(self, domain: str, real_domain: str, uid: int, gid: int, dir: str) -> None:
        self.domain = domain
        self.real_domain = real_domain
        self.uid = uid
        self.gid = gid
        self.dir = dir

    @property
    def is_alias(self) -> bool:
        return self.domain != self.real_domain

    def line(self) -> str:
        return f"+{self.domain}-:{self.real_domain}:{self.uid}:{self.gid}:{self.dir}:-::"


def parse_entry(line: str) -> AssignEntry | None:
    """The vpopmail entry on an assign line, or None for lines of another shape (kept as is)."""
    fields = line.split(":")
    if len(fields) < 7 or not fields[0].startswith("+") or not fields[0].endswith("-"):
        return None
    if not (_is_id(fields[2]) and _is_id(fields[3])):
        return None
    return AssignEntry(fields[0][1:-1], fields[1], int(fields[2]), int(fields[3]), fields[4])


def _is_id(text: str | bytes) -> bool:
    """A uid/gid field: ASCII digits only (int() would take "-1", " 8_9 " and "٨٩"; a -1
    given to seteuid means "no change", so a root process would stay root)."""
    return 0 < len(text) <= 10 and text.isascii() and text.isdigit()


#: the largest uid or gid: uid_t's range less (uid_t)-1, which chown and seteuid read as "no
#: change" (a root process would stay root)
MAX_ID = 0xFFFFFFFE


def check_fields(uid: int, gid: int, directory: str) -> None:
    """Raise BadInput unless a users/assign line can hold ``uid``, ``gid`` and ``directory``
    as qmail-newu and qmail-lspawn read it: ids in 0..MAX_ID; an absolute directory of
    printable ASCII without ``:`` (the field separator; a newline would end the line, and the
    file is Latin-1 where the file system's names are UTF-8 bytes)."""
    for label, value in (("uid", uid), ("gid", gid)):
        if not 0 <= value <= MAX_ID:
            raise BadInput(f"{label} {value} is not an id (0 to {MAX_ID})")
    if not directory.startswith("/") or any(not " " <= c <= "~" or c == ":" for c in directory):
        raise BadInput(f"{directory!r}: users/assign holds only an absolute directory of "
                       "printable ASCII without ':'")


def domain_sort_key(name: str) -> str:
    """C vpopmail's sort key of a domain (extract_domain): its last two labels first
    (x.example.com -> example.com.x); empty labels dropped and at most 10 labels read, as
    strtok read them; a one-label name as it is."""
    labels = [label for label in name.split(".") if label][:10]
    if len(labels) < 2:
        return name
    return ".".join(labels[-2:] + labels[:-2])


def sort_key(line: str) -> str:
    """The key of an assign line: the name between ``+`` and ``:`` less its last character."""
    return domain_sort_key(line.split(":", 1)[0][1:-1])


def control_sort_key(line: str) -> str:
    """The key of an rcpthosts, morercpthosts or virtualdomains line: the part before ``:``."""
    return domain_sort_key(line.split(":", 1)[0])


def insert_sorted(lines: list[str], new: str, key: "Callable[[str], str]") -> list[str]:
    """``lines`` with ``new`` added as C vpopmail's update_file adds it: before the first line
    whose key is greater (else last); and if the lines were not in key order, all of them
    sorted (C's "Out of order entries found ... Sorting", which rewrote such a file)."""
    new_key = key(new)
    keys = [key(line) for line in lines]
    at = next((i for i, k in enumerate(keys) if k > new_key), len(lines))
    result = lines[:at] + [new] + lines[at:]
    if any(a > b for a, b in zip(keys, keys[1:])):
        result.sort(key=key)
    return result


def cdb_records(text: str, source: str = "users/assign") -> list[tuple[bytes, bytes]]:
    """The records qmail-newu writes for an assign file, in its order (the wildcard set last)."""
    records = []
    wildchars = ""
    try:
        data = text.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise CorruptData(f"{source}: character {text[exc.start]!r} is not Latin-1") from None
    for raw in data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"):
        if raw.startswith(b"."):
            break
        if b"\0" in raw:
            raise CorruptData(f"{source}: NUL in line")
        colon = raw.find(b":")
        if colon <= 0:
            raise CorruptData(f"{source}: line without a name: {raw[:60]!r}")
        kind, name, rest = raw[:1], raw[1:colon].lower(), raw[colon + 1:]
        if kind not in (b"=", b"+"):
            raise CorruptData(f"{source}: line must start with = or +: {raw[:60]!r}")
        fields = rest.split(b":")
        if len(fields) < 7:
            raise CorruptData(f"{source}: too few fields: {raw[:60]!r}")
        value = b"\0".join(fields[:6])
        if kind == b"=":
            records.append((b"!" + name + b"\0", value))
        else:
            records.append((b"!" + name, value))
            last = raw[colon - 1:colon].decode("latin-1")  # qmail-newu keeps its case
            if last and last not in wildchars:
                wildchars += last
    else:
        raise CorruptData(f"{source}: missing final '.' line")
    records.append((b"", wildchars.encode("latin-1")))
    return records


def lookup(qmail_dir: str, domain: str) -> AssignEntry | None:
    """Resolve ``domain`` (lower case) through ``users/cdb`` as vpopmail's vget_assign does.

    An alias domain resolves to its real domain's entry (``entry.domain`` keeps the alias).
    Missing or corrupt ``users/cdb`` raises :class:`CorruptData`: a local fault, never "no such
    domain".
    """
    path = join(qmail_dir, "users", "cdb")
    try:
        value = cdb.lookup(path, b"!" + domain.encode("latin-1") + b"-")
    except OSError as exc:
        raise CorruptData(f"{path}: {exc.strerror}") from None
    if value is None:
        return None
    fields = value.split(b"\0")
    if len(fields) < 4 or not (_is_id(fields[1]) and _is_id(fields[2])):
        raise CorruptData(f"{path}: bad record for {domain}")
    return AssignEntry(domain, fields[0].decode("latin-1"), int(fields[1]), int(fields[2]),
                       fields[3].decode("latin-1"))
