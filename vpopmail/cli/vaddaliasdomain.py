"""vaddaliasdomain: make one domain an alias of another."""
from __future__ import annotations

from vpopmail.cli.common import UsageError, error, open_api, operands, run

USAGE = """\
vaddaliasdomain: usage: [options] real_domain alias_domain
options: -v (print version number)
note: for backward compatability, you can swap real_domain and alias_domain.
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        first, second = (a.lower() for a in operands(argv, 2))
        if first == second:
            error("real domain and alias domain are the same!")
            raise UsageError("")
        api = open_api(config)
        known = [api.find_domain(d) is not None for d in (first, second)]
        if all(known):
            error("Both domains already exist, unable to create alias.")
            return 255
        if not any(known):
            error(f"Neither '{first}' or '{second}'  exist, unable to create alias.")
            return 255
        real, alias = (first, second) if known[0] else (second, first)
        api.add_alias_domain(real, alias)
        return 0

    return run(body, USAGE)
