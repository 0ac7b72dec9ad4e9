"""vdeldomain: delete a virtual domain (with -f, its alias domains too)."""
from __future__ import annotations

import sys

from vpopmail.cli.common import UsageError, getopt, open_api, print_version, run
from vpopmail.errors import AliasDomainsExist

USAGE = """\
vdeldomain: usage: [options] domain_name
options: -v (print version number)
options: -f (force delete of virtual domains)
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        options, args = getopt(sys.argv[1:] if argv is None else argv, "vf")
        letters = {letter for letter, _ in options}
        if "v" in letters:
            print_version()
        if len(args) != 1:
            raise UsageError("")
        api = open_api(config)
        try:
            removed = api.delete_domain(args[0], force="f" in letters)
        except AliasDomainsExist:
            print("Warning: Alias domains exist:")
            for alias in api.aliases_of(api.get_domain(args[0]).real_domain):
                print(f"   {alias}")
            print("   use -f to force delete of domain and all aliases")
            return AliasDomainsExist.code & 0xFF
        if removed:
            print("Warning: Alias domains deleted:")
            for alias in removed:
                print(f"   {alias}")
        return 0

    return run(body, USAGE)
