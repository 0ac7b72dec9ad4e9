"""vconvert: convert user databases between formats (C vpopmail 5.4's options).

The first format option names the source, the second the destination, as in C:

- ``-c -e``: the cdb backend (vpasswd + vpasswd.cdb) to the etc format: vpasswd lines
  ``name:crypt:uid:flags:gecos:dir:quota[:clear]``, one file per domain (``-f FILE``, ``-f -``
  for stdout, or ``-f DIR`` for ``DIR/<domain>``).
- ``-e -c -f FILE|DIR|-``: those lines back into the cdb backend, every field as it is (hash,
  clear text, uid, flags, gecos, quota; the directory when it is the user's own in that
  domain, else a new one).
- ``-e -c`` without ``-f``: what C's -e did: the system's accounts (/etc/passwd, with hashes
  from /etc/shadow when it can be read) become users of the named domains; accounts without a
  usable hash are skipped.
- ``-p FILE -c``: ``user:crypted_password`` lines (C's -p) become users.
- ``-c -m`` / ``-m -c``: every user of every real domain (or of the named domains) copied
  from the cdb files into the MySQL tables, or back, whatever ``users.backend`` says (both
  stores are opened explicitly; ``[mysql]`` must point at the database). Records are copied
  as they are (hash, clear text, uid, all flag bits, UTF-8 gecos, quota, directory: the
  directories are the same on both sides); one transaction per domain in SQL, one write per
  domain in vpasswd. Aliases are not converted: ``.qmail-<alias>`` files keep working with
  SQL (qmail-local reads them before vdelivermail), while ``valias`` rows are read only by
  the MySQL backend, so -m -c names the domains that have some.
- ``-S`` (sqwebmail-pass files) is refused with a message.

Each domain is checked completely before anything of it changes. Users the domain already has
are not touched: each is named (C's "user NAME domain DOMAIN did not add") and the exit status
is then UsernameExists's (254); the others are added.
"""
from __future__ import annotations

import os
import sys
from typing import TypeVar

from vpopmail.api import NewUser, Vpopmail
from vpopmail.assign import AssignEntry
from vpopmail.cli.common import UsageError, error, getopt, open_api, print_version, run
from vpopmail.errors import BadInput, CorruptData, UsernameExists, VpopmailError, explain
from vpopmail.fsutil import atomic_write
from vpopmail.names import check_domain, check_user
from vpopmail.stores import Stores, UserDatabase, VUser, open_copy
from vpopmail.stores.cdbfiles import format_line, parse_line

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from vpopmail.stores.protocols import AliasStore

USAGE = """\
vconvert: usage
 The first option sets which format to convert FROM,
 the second option sets which format to convert TO.
 -e = etc format
 -c = cdb format
 -m = sql format
 -S = set sqwebmail passwords
 -v = version
 -d = debug info
 -p file = user:crypted_password file (FROM only, with -c)
 -f file = the etc format file, - for stdin/stdout, or a directory of
           files named after the domains; without -f, -e -c reads the
           system's /etc/passwd and /etc/shadow
 [domain ...] the domains to convert (default: every domain)
"""
SYSTEM_PASSWD = "/etc/passwd"
SYSTEM_SHADOW = "/etc/shadow"
NO_SQWEBMAIL = "-S (sqwebmail-pass files) is not supported: sqwebmail reads vpopmail itself"
T = TypeVar("T", VUser, NewUser)


# the etc format --------------------------------------------------------------------------------

def export_text(api: Vpopmail, entry: AssignEntry) -> str:
    """A domain's users as vpasswd lines; the clear-text field whenever there is one."""
    keep_clear = api.config.passwords_clear_passwords
    return "".join(format_line(u, keep_clear or bool(u.clear)) + "\n"
                   for u in api.backend.list_users(entry))


def parse_export(text: str, source: str) -> list[VUser]:
    """The records in etc-format text; a line that is not a vpasswd line is an error."""
    users = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            users.append(parse_line(line, source))
        except CorruptData as exc:
            raise BadInput(f"{source} line {number}: not a vpasswd line ({exc.detail})") from None
    return users


def read_source(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise BadInput(f"{path}: {exc.strerror}") from None


def system_accounts(api: Vpopmail, passwd: str, shadow: str) -> tuple[list[NewUser], list[str]]:
    """C's etc_to_default: (accounts with a usable hash as new users, skipped names).

    With a readable shadow file the hash comes from it (accounts absent from it are passed
    over, as C did); otherwise from the passwd field. Hashes of two characters or fewer
    (``x``, ``*``, ``!!``) are skipped, as are names vpopmail cannot store. The gecos is the
    full-name part (before the first comma), at most 64 characters.
    """
    hashes: dict[str, str] | None = None
    try:
        with open(shadow, encoding="utf-8", errors="surrogateescape") as fh:
            hashes = {f[0]: f[1] for f in (line.rstrip("\n").split(":") for line in fh)
                      if len(f) > 1}
    except OSError:
        pass
    specs, skipped = [], []
    for line in read_source(passwd).split("\n"):
        fields = line.split(":")
        if len(fields) < 7 or not fields[0]:
            continue
        name = fields[0]
        if hashes is not None and name not in hashes:
            continue
        crypted = hashes[name] if hashes is not None else fields[1]
        try:
            name = check_user(name.lower(), api.config.users_hashed_dirs)
        except VpopmailError:
            skipped.append(name)
            continue
        if len(crypted) <= 2:
            skipped.append(name)
            continue
        specs.append(NewUser(name, encrypted=crypted, gecos=fields[4].split(",")[0][:64]))
    return specs, skipped


def pair_accounts(text: str, source: str) -> list[NewUser]:
    """C's -p format: ``user:crypted`` (or blank separated) lines; the gecos is the name."""
    specs = []
    for line in text.split("\n"):
        tokens = [t for t in line.replace("\t", " ").replace(":", " ").split(" ") if t]
        if len(tokens) >= 2:
            specs.append(NewUser(tokens[0].lower(), encrypted=tokens[1], gecos=tokens[0].lower()))
        elif tokens:
            raise BadInput(f"{source}: no password for {tokens[0]!r}")
    return specs


# the run ---------------------------------------------------------------------------------------

def copy_stores(api: Vpopmail, source: str) -> tuple[Stores, Stores]:
    """(source, destination) of a -c -m / -m -c copy: the cdb files and MySQL, opened
    explicitly whatever ``users.backend`` says (:func:`vpopmail.stores.open_copy`)."""
    files, sql = open_copy(api.config)
    return (files, sql) if source == "c" else (sql, files)


def check_utf8(user: VUser) -> None:
    """SQL columns hold UTF-8 text: refuse a record with other bytes (a Latin-1 gecos written
    by hand into a vpasswd) rather than let the server reject the whole domain."""
    for label, value in (("password", user.passwd), ("gecos", user.gecos),
                         ("directory", user.dir), ("quota", user.quota),
                         ("clear-text password", user.clear)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadInput(f"{user.name}: the {label} is not UTF-8 text") from None


class Convert:
    def __init__(self, api: Vpopmail, source: str, target: str, path: str | None,
                 pairs: str | None, debug: bool) -> None:
        self.api = api
        self.source, self.target = source, target
        self.path, self.pairs, self.debug = path, pairs, debug
        self.status = 0
        # progress goes to stderr when the data itself goes to stdout
        self.out = sys.stderr if target == "e" and path in (None, "-") else sys.stdout
        #: (source, destination) of a copy between the cdb files and MySQL
        self.stores = copy_stores(api, source) if "m" in (source, target) else None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def plan(self, domains: list[str]) -> "Sequence[tuple[AssignEntry, str | None]]":
        """(domain entry, file or None) for each domain to convert, every one checked first."""
        directory = self.path not in (None, "-") and os.path.isdir(self.path or "")
        if self.stores:
            entries = ([self.api.get_domain(d) for d in domains] if domains
                       else self.api.real_domains())
            unique = {e.real_domain: e for e in entries}  # an alias domain names its real one
            return [(e, None) for e in unique.values()]
        if self.source == "e" and self.path is None or self.source == "p":
            if not domains:
                raise UsageError("name the domain(s) to add the accounts to")
            return [(self.api.get_domain(d), None) for d in domains]
        if self.path is None:  # export to stdout
            if len(domains) != 1:
                raise UsageError("-c -e without -f writes one domain to stdout: name it")
            return [(self.api.get_domain(domains[0]), "-")]
        if not directory:
            if len(domains) != 1:
                raise UsageError(f"{self.path} is not a directory: name exactly one domain")
            return [(self.api.get_domain(domains[0]), self.path)]
        assert self.path is not None
        if domains:
            entries = [self.api.get_domain(d) for d in domains]
            found = [(e, os.path.join(self.path, e.real_domain)) for e in entries]
        elif self.source == "c":
            found = [(e, os.path.join(self.path, e.real_domain)) for e in self.api.real_domains()]
        else:
            names = sorted(n for n in os.listdir(self.path) if not n.startswith("."))
            found = [(self.api.get_domain(check_domain(n)), os.path.join(self.path, n))
                     for n in names]
        if self.source == "e":
            for _, file in found:
                if not os.path.isfile(file):
                    raise BadInput(f"{file}: no such file")
        return found

    def domain(self, entry: AssignEntry, path: str | None) -> None:
        try:
            count = self.convert(entry, path)
        except VpopmailError as exc:
            self.say(f"converting {entry.real_domain} domain conversion failed")
            print(f"Error: {explain(exc, 'vconvert')}", file=self.out)
            self.status = exc.status
            return
        self.say(f"converting {entry.real_domain} done")
        if self.debug:
            self.say(f"{count} users")

    def convert(self, entry: AssignEntry, path: str | None) -> int:
        api = self.api
        if self.stores:
            return self.copy(entry, *self.stores)
        if self.source == "c":
            text = export_text(api, entry)
            if path == "-":
                sys.stdout.write(text)
                sys.stdout.flush()
            else:
                assert path is not None
                atomic_write(path, text.encode("utf-8", "surrogateescape"), 0o600,
                             sync=api.config.delivery_file_sync)
            return text.count("\n")
        if self.source == "p":
            assert self.pairs is not None
            specs = pair_accounts(read_source(self.pairs), self.pairs)
            return self.add(entry, self.new_only(entry, specs))
        if path is None:
            specs, skipped = system_accounts(api, SYSTEM_PASSWD, SYSTEM_SHADOW)
            for name in skipped:
                self.say(f"skipping {name}")
            return self.add(entry, self.new_only(entry, specs))
        users = self.new_only(entry, parse_export(read_source(path), path))
        self.warn_clear(users, path)
        if self.debug:
            for user in users:
                self.say(user.name)
        return len(api.import_users(entry, users)) if users else 0

    def warn_clear(self, users: list[VUser], source: str) -> None:
        if not self.api.config.passwords_clear_passwords and any(u.clear for u in users):
            print(f"warning: passwords.clear_passwords is off: the clear-text passwords in "
                  f"{source} are not kept", file=sys.stderr)

    def copy(self, entry: AssignEntry, source: Stores, target: Stores) -> int:
        """Copy the domain's users from ``source`` to ``target`` as they are, all checked
        first; users ``target`` already has are left alone and named (as -e -c does)."""
        users = [self.api.imported_record(user) for user in source.users.list_users(entry)]
        if self.target == "m":
            for user in users:
                check_utf8(user)
        target.users.create_domain(entry)  # the tables (SQL), vpasswd and its cdb (files)
        users = self.new_only(entry, users, target.users)
        self.warn_clear(users, f"{entry.real_domain}'s vpasswd")
        if self.debug:
            for user in users:
                self.say(user.name)
        if users:
            target.users.add_users(entry, users)
        if self.source == "m":
            self.warn_valias(entry, source.aliases)
        return len(users)

    def copy_alias_domains(self) -> None:
        """The alias domains into the SQL aliasdomains table (mysql.aliasdomains_table), as
        vadddomain makes it there: Dovecot's SQL queries join it."""
        assert self.stores is not None
        with self.api.qmail.assign_lock():
            self.api.sync_alias_domains(self.stores[1].alias_domains_table)

    def warn_valias(self, entry: AssignEntry, aliases: AliasStore) -> None:
        names = aliases.names(entry)
        if names:
            print(f"warning: {entry.real_domain} has aliases in the valias table "
                  f"({', '.join(names)}): only users.backend = \"mysql\" delivers them; "
                  "with the cdb backend make them .qmail-<alias> files (valias)",
                  file=sys.stderr)

    def new_only(self, entry: AssignEntry, items: list[T],
                 store: UserDatabase | None = None) -> list[T]:
        """The users not in the domain (of ``store``, default the configured backend) yet;
        the others are named (C's "did not add") and make the exit status UsernameExists's."""
        existing = {u.name for u in (store or self.api.backend).list_users(entry)}
        for item in items:
            if item.name.lower() in existing:
                self.say(f"user {item.name} domain {entry.real_domain} did not add")
                self.status = UsernameExists.code & 0xFF
        return [item for item in items if item.name.lower() not in existing]

    def add(self, entry: AssignEntry, specs: list[NewUser]) -> int:
        if self.debug:
            for spec in specs:
                self.say(spec.name)
        if specs:
            self.api.add_users(entry, specs)
        return len(specs)


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        options, domains = getopt(sys.argv[1:] if argv is None else argv, "mcep:Svdf:")
        formats: list[str] = []
        path = pairs = None
        debug = sqwebmail = False
        for letter, value in options:
            if letter == "v":
                print_version()
            elif letter == "d":
                debug = True
            elif letter == "S":
                sqwebmail = True
            elif letter == "f":
                path = value
            else:
                formats.append(letter)
                if letter == "p":
                    pairs = value
        if sqwebmail:
            error(NO_SQWEBMAIL)
            return 255
        if len(formats) != 2:
            raise UsageError("give two formats: the one to convert from, then the one to")
        source, target = formats
        if (source, target) not in (("c", "e"), ("e", "c"), ("p", "c"), ("c", "m"), ("m", "c")):
            raise UsageError(f"unknown conversion: -{source} to -{target}")
        if path is not None and "e" not in formats:
            raise UsageError("-f goes with -e")
        api = open_api(config)
        job = Convert(api, source, target, path, pairs, debug)
        for entry, file in job.plan([d.lower() for d in domains]):
            job.domain(entry, file)
        if target == "m":
            job.copy_alias_domains()
        return job.status

    return run(body, USAGE)
