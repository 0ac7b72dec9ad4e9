"""vipmap: show or edit the IP map that gives bare-name logins a domain by local address."""
from __future__ import annotations

import sys

from vpopmail import ipmap
from vpopmail.cli.common import UsageError, getopt, open_api, print_version, run
from vpopmail.errors import BadInput, DomainDoesNotExist

USAGE = """\
vipmap: usage: [options] ip domain
options: -d delete mapping
         -a add mapping
         -p print mapping
         -v show version
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        args = sys.argv[1:] if argv is None else argv
        if not args:
            raise UsageError("")
        options, operands = getopt(args, "vpda")
        action = "p"
        for letter, _ in options:
            if letter == "v":
                print_version()
            else:
                action = letter
        if action == "p" and operands:  # a forgotten -a must not look like success
            raise UsageError("")
        api = open_api(config)
        if action == "p":
            for ip, domain in ipmap.read_map(api.config):
                print(f"{ip} {domain}")
            return 0
        if len(operands) != 2:
            raise UsageError("")
        ip, domain = ipmap.check_ip(operands[0]), operands[1].lower()
        if action == "a" and api.find_domain(domain) is None:
            raise DomainDoesNotExist(domain)
        if not ipmap.change_map(api.config, ip, domain, add=action == "a") and action == "d":
            raise BadInput(f"no mapping {ip} {domain}")
        return 0

    return run(body, USAGE)
