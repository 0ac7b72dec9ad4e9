"""vpasswd: set a user's password."""
from __future__ import annotations

import sys

from vpopmail.cli.common import (UsageError, getopt, open_api, print_version, prompt_password,
                                  random_option, run)

USAGE = """\
vpasswd: usage: [options] email_address [password]
options: -v (print version number)
         -r generate a random password
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        options, args = getopt(sys.argv[1:] if argv is None else argv, "vr")
        letters = {letter for letter, _ in options}
        if "v" in letters:
            print_version()
        if not args or len(args) > 2:
            raise UsageError("")
        api = open_api(config)
        api.get_user(args[0])
        if "r" in letters:
            password = random_option("", args[1] if len(args) > 1 and args[1] else None)
        elif len(args) > 1 and args[1]:  # an empty one (an unset "$PW") is asked for, as in C
            password = args[1]
        else:
            password = prompt_password(args[0])
        api.set_password(args[0], password, honour_flag=True)
        if "r" in letters:
            print(f"Random password: {password}")
        return 0

    return run(body, USAGE)
