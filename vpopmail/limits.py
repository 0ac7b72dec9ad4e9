"""Domain limits: ``<domaindir>/.qmailadmin-limits``, else ``~vpopmail/etc/vlimits.default``.

With the SQL backend and ``mysql.limits_table`` (C's --enable-mysql-limits) a domain's limits are
its row of the ``limits`` table instead of the domain file (vlimits.default still applies to
domains without a row): vpopmail.stores.Stores.domain_limits chooses.

Lines are ``key: value`` (any of space, tab, ``:`` separate them), ``#`` comments, and bare
boolean keys that are on by their presence. C vpopmail refused to add users when neither file
existed; here the built-in defaults (no limits) apply then.
"""
import posix

from vpopmail import flags
from vpopmail.assign import AssignEntry
from vpopmail.config import Config
from vpopmail.errors import BadInput, CannotReadLimits, LimitReached
from vpopmail.fsutil import atomic_write, join, read_regular, remember, status

TYPE_CHECKING = False  # the typing idiom without importing collections (start-up)
if TYPE_CHECKING:
    from collections.abc import Iterable


DOMAIN_FILE = ".qmailadmin-limits"
DEFAULT_FILE = "vlimits.default"

#: numeric keys and their defaults, in the order they are written
NUMBERS = {
    "maxpopaccounts": -1, "maxaliases": -1, "maxforwards": -1, "maxautoresponders": -1,
    "maxmailinglists": -1, "quota": 0, "maxmsgcount": 0, "default_quota": 0,
    "default_maxmsgcount": 0, "perm_account": 0, "perm_alias": 0, "perm_forward": 0,
    "perm_autoresponder": 0, "perm_maillist": 0, "perm_quota": 0, "perm_defaultquota": 0,
}
#: the values each number may be given: its ``limits`` column's range (C's int; the sizes and
#: message counts bigint unsigned, read by C as long long; the perm columns but perm_maillist
#: tinyint)
RANGES = dict.fromkeys(NUMBERS, (-(1 << 31), (1 << 31) - 1))
RANGES.update(dict.fromkeys(("quota", "maxmsgcount", "default_quota", "default_maxmsgcount"),
                            (0, (1 << 63) - 1)))
RANGES.update(dict.fromkeys(("perm_account", "perm_alias", "perm_forward", "perm_autoresponder",
                             "perm_quota", "perm_defaultquota"), (-128, 127)))
#: boolean key -> (user flag it forces, vmoddomlimits -g letter), in the order C writes them
SWITCHES = {
    "disable_pop": (flags.NO_POP, "p"),
    "disable_imap": (flags.NO_IMAP, "i"),
    "disable_dialup": (flags.NO_DIALUP, "u"),
    "disable_password_changing": (flags.NO_PASSWD_CHNG, "d"),
    "disable_webmail": (flags.NO_WEBMAIL, "w"),
    "disable_external_relay": (flags.NO_RELAY, "r"),
    "disable_smtp": (flags.NO_SMTP, "s"),
    "disable_spamassassin": (flags.NO_SPAMASSASSIN, "c"),
    "delete_spam": (flags.DELETE_SPAM, "x"),
    "disable_maildrop": (flags.NO_MAILDROP, "m"),
}
#: keys whose column in the SQL ``limits`` table has another name (C's vlimits.c)
SQL_NAMES = {"quota": "diskquota", "default_quota": "defaultquota",
             "default_maxmsgcount": "defaultmaxmsgcount",
             "disable_password_changing": "disable_passwordchanging",
             "disable_external_relay": "disable_relay"}
#: the limits on how many of a thing a domain holds, and the things as refusals name them;
#: -1 is unlimited (qmailadmin's test: any other number is a cap)
COUNTED = {"maxpopaccounts": "email accounts", "maxaliases": "aliases",
           "maxforwards": "forwards", "maxautoresponders": "autoresponders",
           "maxmailinglists": "mailing lists"}
UNLIMITED = -1
PERM_CREATE, PERM_MODIFY, PERM_DELETE = 1, 2, 4
PERM_LETTERS = {"c": PERM_CREATE, "m": PERM_MODIFY, "d": PERM_DELETE,
                "a": PERM_CREATE | PERM_MODIFY | PERM_DELETE}


class Limits:
    """The numeric limits and the boolean switches of one limits file."""

    __slots__ = ("numbers", "switches", "source")

    def __init__(self, numbers: dict[str, int] | None = None, switches: set[str] | None = None,
                 source: str = "") -> None:
        self.numbers = dict(NUMBERS, **(numbers or {}))
        self.switches = set(switches or ())
        self.source = source

    @property
    def flag_mask(self) -> int:
        """The user flags these limits force on every user without V_OVERRIDE."""
        mask = 0
        for key in self.switches:
            mask |= SWITCHES[key][0]
        return mask

    @classmethod
    def parse(cls, text: str, source: str = "") -> "Limits":
        limits = cls(source=source)
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            key = line.split(None, 1)[0].split(":", 1)[0]
            value = line[len(key):].lstrip(" \t:")
            if key in SWITCHES:
                limits.switches.add(key)
            elif key in NUMBERS:
                try:
                    limits.numbers[key] = int(value)
                except ValueError:
                    raise CannotReadLimits(f"{source} line {number}: {key} needs a number") from None
            else:
                raise CannotReadLimits(f"{source} line {number}: unknown key {key!r}")
        return limits

    def limited(self, key: str) -> bool:
        """Whether the counted limit ``key`` (one of :data:`COUNTED`) is set."""
        return self.numbers[key] != UNLIMITED

    def check_room(self, key: str, have: int, adding: int, domain: str) -> None:
        """Raise LimitReached if ``adding`` more to the ``have`` that ``domain`` holds would
        pass the counted limit ``key``: qmailadmin refuses an addition when the domain holds
        as many as the limit (so 0, or a negative number other than -1, refuses all)."""
        limit = self.numbers[key]
        if limit != UNLIMITED and have + adding > limit:
            raise LimitReached(f"{domain} has {have} {COUNTED[key]}, its limit ({key}) is "
                               f"{limit}")

    def check(self, before: dict[str, int]) -> None:
        """Raise BadInput for a number changed from ``before`` that its ``limits`` column
        cannot hold; values already stored are left to their reader."""
        for key, value in sorted(self.numbers.items()):
            low, high = RANGES[key]
            if before.get(key) != value and not low <= value <= high:
                raise BadInput(f"{key} {value} is out of range ({low} to {high})")

    def sql_row(self) -> dict[str, int]:
        """The ``limits`` table columns and values for these limits."""
        row = {SQL_NAMES.get(key, key): value for key, value in self.numbers.items()}
        row.update({SQL_NAMES.get(key, key): int(key in self.switches) for key in SWITCHES})
        return row

    @classmethod
    def from_sql(cls, row: dict[str, int], source: str) -> "Limits":
        return cls({key: row[SQL_NAMES.get(key, key)] for key in NUMBERS},
                   {key for key in SWITCHES if row[SQL_NAMES.get(key, key)]}, source)

    def render(self) -> str:
        """The file as C's vlimits_write_limits_file writes it: the switches between
        default_maxmsgcount and the perm lines."""
        numbers = [f"{key}: {self.numbers[key]}" for key in NUMBERS]
        split = list(NUMBERS).index("perm_account")
        switches = [key for key in SWITCHES if key in self.switches]
        return "\n".join(numbers[:split] + switches + numbers[split:]) + "\n"


def count_forwards(pairs: "Iterable[tuple[str, str]]") -> int:
    """How many forwards a domain's aliases (``(alias, line)`` pairs) hold, as qmailadmin
    counts them against maxforwards: every alias but a blackhole (its first line a ``#``
    comment), a mailing list (a line running an ezmlm program) and an autoresponder (a line
    running autorespond or qmail-autoresponder)."""
    first: dict[str, str] = {}
    other: set[str] = set()
    for alias, line in pairs:
        first.setdefault(alias, line)
        if line.startswith("|") and any(
                word.rsplit("/", 1)[-1].startswith(("ezmlm-", "autorespond", "qmail-autorespond"))
                for word in line[1:].split()):
            other.add(alias)
    return sum(1 for alias, line in first.items()
               if alias not in other and not line.startswith("#"))


def domain_file(domain_dir: str) -> str:
    return join(domain_dir, DOMAIN_FILE)


def default_file(vpopmail_home: str) -> str:
    return join(vpopmail_home, "etc", DEFAULT_FILE)


#: (path, effective uid, gid) -> (the file's status when read, what it parsed to): a process
#: that reads a limits file again (a server worker, at every login and delivery) takes it from
#: here while the file's :func:`~vpopmail.fsutil.status` is what it was, one lstat instead of
#: the open and reads (the same check as the cdb lookups' memo)
_parsed: dict[tuple[str, int, int], tuple[tuple[int, ...], Limits]] = {}
PARSED_FILES = 256


def read_file(path: str) -> Limits | None:
    """The limits of the file at ``path`` (a copy of its own), or None if there is none."""
    memo = (path, posix.geteuid(), posix.getegid())
    known = _parsed.get(memo)
    try:
        if known is None or status(posix.stat(path, follow_symlinks=False)) != known[0]:
            data, st = read_regular(path)
            known = (status(st), Limits.parse(data.decode("utf-8"), path))
            remember(_parsed, memo, known, PARSED_FILES)
        return Limits(known[1].numbers, known[1].switches, path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CannotReadLimits(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CannotReadLimits(f"{path}: not UTF-8 text") from None


def read(domain_dir: str, vpopmail_home: str) -> Limits:
    """The limits in force for a domain: its own file, else the default file, else none."""
    return (read_file(domain_file(domain_dir)) or read_file(default_file(vpopmail_home))
            or Limits(source="built-in defaults"))


def from_table_row(config: Config, entry: AssignEntry, row: dict[str, int] | None) -> Limits:
    """The limits of ``entry`` given its ``limits`` row (None: it has none, so the defaults)."""
    if row is not None:
        return Limits.from_sql(row, f"limits table, domain {entry.real_domain}")
    return read_file(default_file(config.home)) or Limits(source="built-in defaults")


def write(path: str, limits: Limits, uid: int | None = None, gid: int | None = None) -> None:
    atomic_write(path, limits.render().encode(), 0o600, uid, gid)


#: the ``limits`` table's columns, in C's order
COLUMNS = list(Limits().sql_row())
