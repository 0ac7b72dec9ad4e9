"""vaddaliasdomain: make one domain an alias of another."""
from __future__ import annotations

from vpopmail.cli.common import UsageError, error, open_api, operands, run
from vpopmail.errors import DomainAlreadyExists

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
        entries = [api.find_domain(d) for d in (first, second)]
        known = [entry is not None for entry in entries]
        if all(known):
            # one an alias of the other: a half-made alias is finished, a whole one refused
            half = next((e for e in entries if e is not None and e.is_alias
                         and {e.domain, e.real_domain} == {first, second}), None)
            try:
                if half is None:
                    raise DomainAlreadyExists(second)
                api.add_alias_domain(half.real_domain, half.domain)
            except DomainAlreadyExists:
                error("Both domains already exist, unable to create alias.")
                return 255
            return 0
        if not any(known):
            error(f"Neither '{first}' or '{second}'  exist, unable to create alias.")
            return 255
        real, alias = (first, second) if known[0] else (second, first)
        try:
            api.add_alias_domain(real, alias)
        except DomainAlreadyExists:
            if api.find_domain(alias) is None:
                raise
            # made meanwhile (a vaddaliasdomain or vadddomain at the same moment, checked
            # under users/assign's lock): worded as the check above
            error("Both domains already exist, unable to create alias.")
            return 255
        return 0

    return run(body, USAGE)
