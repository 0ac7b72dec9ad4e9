"""vregenerate: rebuild users/assign (+ users/cdb), rcpthosts and virtualdomains from the
domains tree, e.g. after qmail-pw2u or a lost /var/qmail (the seed's gen-hashed.sh recovery)."""
from __future__ import annotations

import sys

from vpopmail.cli.common import UsageError, getopt, open_api, print_version, run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from vpopmail.api import Vpopmail

USAGE = """\
vregenerate: usage: [options]
options: -v (print version number)
         -n (dry run: print what would be written)
         -f, --force (replace vpopmail entries of a users/assign that differs)
Domains are found under the vpopmail domains directory; alias domains survive only if
users/assign still names them. With the SQL backend this host's rows of the aliasdomains
table (Dovecot's queries join it) are written from users/assign too, also when it refuses.
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        raw = sys.argv[1:] if argv is None else argv
        options, args = getopt(["-f" if a == "--force" else a for a in raw], "vnf")
        letters = {letter for letter, _ in options}
        if "v" in letters:
            print_version()
        if args:
            raise UsageError("")
        api = open_api(config)
        if "n" in letters:  # a dry run writes nothing: nothing to hold the lock for
            return regenerate(api, False, "f" in letters)
        # what the tree holds, then users/assign from it: one step under users/assign's lock,
        # as vadddomain and vdeldomain change both under it (a domain made or removed between
        # the look and the write would lose its line, or get back one routed to nothing)
        with api.qmail.assign_lock():
            return regenerate(api, True, "f" in letters)

    return run(body, USAGE)


def regenerate(api: "Vpopmail", write: bool, force: bool) -> int:
    """Print what users/assign lacks and has beyond the domains tree; ``write``: then make it
    so (refused without ``force`` when it would remove entries)."""
    skipped: list[str] = []
    found = api.discover_domains(skipped)
    for path in skipped:  # a domain C took under such a name goes back by hand
        print(f"skip:   {path!r}: not a domain name")
    root = api.config.domains_root
    current = {e.line() for e in api.qmail.entries(rebuilding=True)
               if e.dir.startswith(root + "/") or e.domain in {f.domain for f in found}}
    wanted = {e.line() for e in found}
    for line in sorted(wanted - current):
        print(f"add:    {line}")
    for line in sorted(current - wanted):
        print(f"remove: {line}")
    if not write:
        return 0
    table = api.stores.alias_domains_table  # SQL: this host's rows follow users/assign
    if current - wanted and not force:
        print("Error: users/assign has entries the domains tree does not explain; "
              "users/assign not written (use --force to replace them)")
        api.sync_alias_domains(table)
        return 1
    before = {e.domain for e in api.qmail.entries(rebuilding=True)}
    api.qmail.replace_assign(found, root)
    api.qmail.ensure_routed([e.domain for e in found])
    api.sync_alias_domains(table, sorted(before - {e.domain for e in api.domains()}))
    print(f"{len(found)} domains in users/assign")
    return 0
