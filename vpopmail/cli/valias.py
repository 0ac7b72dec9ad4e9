"""valias: show, add to, remove from and delete the aliases of a domain: ``.qmail-<alias>``
files in the domain directory with the cdb backend (the layout of C vpopmail without SQL and of
qmailadmin), rows of the ``valias`` table with the MySQL backend (C's --enable-valias)."""
from __future__ import annotations

import sys

from vpopmail.aliases import AliasLineExists
from vpopmail.cli.common import UsageError, getopt, open_api, print_version, run

USAGE = """\
valias: usage: [options] email_address 
options: -v ( display the vpopmail version number )
         -n ( show alias names, use just domain )
         -s ( show aliases, can use just domain )
         -d ( delete alias )
         -i alias_line (insert alias line)
         -r alias_line (remove alias line; the alias goes with its last line)

Example: valias -i fred@inter7.com bob@inter7.com
         (adds alias from bob@inter7.com to fred@inter7.com
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        options, args = getopt(sys.argv[1:] if argv is None else argv, "vnsdi:r:")
        action, line = "s", ""
        for letter, value in options:
            if letter == "v":
                print_version()
            else:
                action, line = letter, value
        if not args:
            raise UsageError("must supply alias email address")
        if len(args) > 1:
            raise UsageError(f"one email address only, not {' '.join(args)!r}")
        target = args[0].lower()
        api = open_api(config)
        aliases = api.stores.aliases
        if action == "n" and "@" in target:
            print("Please enter domain name only.", file=sys.stderr)
            return 255
        if action == "n" or action == "s" and "@" not in target:  # the domain's aliases
            entry = api.get_domain(target)
            # -s names each line's alias in the real domain, as C prints them
            shown = (aliases.names(entry) if action == "n" else
                     [f"{alias}@{entry.real_domain} -> {text}"
                      for alias, text in aliases.all(entry)])
            if not shown:  # C's valias exits 255 here
                print(f"No aliases found for domain {target}")
                return 255
            for text in shown:
                print(text)
            return 0
        alias, entry = api.resolve_alias(target)
        if action == "s":
            lines = aliases.lines(entry, alias)
            if not lines:
                print(f"No aliases {target} found")
                return 255
            for text in lines:
                print(f"{alias}@{entry.real_domain} -> {text}")
            return 0
        if action == "i":
            try:
                api.add_alias_line(entry, alias, target, line)
            except AliasLineExists as exc:  # C's one refusal of its own, on stderr
                print(f"Error: {exc}", file=sys.stderr)
                return exc.status
        elif action == "r":
            api.remove_alias_line(entry, alias, target, line)
        else:
            api.delete_alias(entry, alias, target)
        return 0

    return run(body, USAGE)
