"""vadduser: add users to a domain, one from the command line or many from a file (-f)."""
from __future__ import annotations

import sys

from vpopmail.api import NewUser, Vpopmail
from vpopmail.cli.common import (UsageError, error, getopt, open_api, print_version,
                                 prompt_password, random_option, run)
from vpopmail.errors import IllegalUsername, BadInput, UsernameExists
from vpopmail.names import split_address

USAGE = """\
vadduser: usage: [options] email_address [passwd]
options: -v (print the version)
         -q quota_in_bytes (sets the users quota, use NOQUOTA for unlimited)
         -c comment (sets the gecos comment field)
         -e standard_encrypted_password
         -n no_password
         -r[len] (generate a len (default 8) char random password)
         -O (do not rebuild vpasswd.cdb: for bulk adds; run vmkpasswd domain after the last)
         -f file (add the users listed in file, one 'email_address password' per line;
                  - reads them from stdin)
-q quota: NOQUOTA, bytes (1000000 or 1000000S), 10K/10M/10G, a count (100C), or both (10M,100C)
"""


def read_batch(api: Vpopmail, path: str) -> dict[str, list[NewUser]]:
    """The users a batch file lists, grouped by domain; every line is checked before any add."""
    batches: dict[str, list[NewUser]] = {}
    with sys.stdin if path == "-" else open(path, encoding="utf-8") as fh:
        for number_, line in enumerate(fh, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 2:
                raise BadInput(f"{path} line {number_}: expected 'email_address password'")
            user, domain = split_address(fields[0], api.default_domain())
            if not domain:
                raise IllegalUsername(f"{path} line {number_}: {fields[0]} is not a full address")
            batches.setdefault(domain, []).append(NewUser(user, fields[1]))
    return batches


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        options, args = getopt(sys.argv[1:] if argv is None else argv, "svc:nq:e:r::Of:")
        settings: dict[str, str] = {}
        for letter, value in options:
            if letter == "v":
                print_version()
            elif letter == "s":
                print("Warning: The -s option has been temporarily disabled.", file=sys.stderr)
            settings[letter] = value
        api = open_api(config)
        index = "O" not in settings
        if "f" in settings:
            if args:
                raise UsageError("-f takes no address")
            batches = read_batch(api, settings["f"])
            entries = {domain: api.get_domain(domain) for domain in batches}
            for domain, specs in batches.items():
                for spec in specs:
                    spec.quota = settings.get("q")
                api.check_new_users(entries[domain], specs)  # every domain before any add
            for domain, specs in batches.items():
                api.add_users(entries[domain], specs, index)
            return 0
        if not args or len(args) > 2:
            raise UsageError("")
        user, domain = split_address(args[0], api.default_domain())
        if not domain:
            print("You did not use a full email address for the user name")
            print("Only full email addresses should be used")
            return 255
        # an empty operand (an unset "$PW") is no password given: asked for, as in C
        password: str | None = args[1] if len(args) > 1 and args[1] else None
        if "n" in settings:
            password = None
        elif "e" in settings:
            password = None
        elif "r" in settings:
            password = random_option(settings["r"], password)
        elif password is None:
            password = prompt_password(args[0])
            if not password:
                error("No password entered")
                raise UsageError("")
        api.add_user(f"{user}@{domain}", password, index, encrypted=settings.get("e"),
                     gecos=settings.get("c"), quota=settings.get("q"))
        if "r" in settings:
            print(f"Random password: {password}")
        return 0

    return run(body, USAGE, {UsernameExists: "User already exists"})
