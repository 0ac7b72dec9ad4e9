"""vchangepw: let a user change its own password (interactive, usable as a login shell)."""
from __future__ import annotations

import getpass
import sys

from vpopmail.passwords import dummy_check, verify_password
from vpopmail.cli.common import error, open_api, prompt_password, run
from vpopmail.cmdline import OPTIONS, answer
from vpopmail.errors import TemporaryError, VpopmailError

MAX_ADDRESS = 160
USAGE = """\
vchangepw: usage: vchangepw (no arguments: it asks, on the terminal)
Asks for an email address, its old password and the new one twice, and changes the password
if the old one is right (and the account may change its password). Usable as a login shell.
Exit status: 0 changed (or no address given), 3 wrong address or password, else the
error's vpopmail code.
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 1 and args[0] in OPTIONS:  # any other arguments: a login shell's, ignored
        return answer(args[0], USAGE)

    def body() -> int:
        print("Please enter the email address: ", end="", flush=True)
        address = sys.stdin.readline()
        if not address:
            print("\n")
            return 0
        address = address.strip()
        if len(address) > MAX_ADDRESS:
            print("\nError: email address too long")
            return 3
        print(address)
        api = open_api(config)
        old = getpass.getpass("Enter old password: ") if sys.stdin.isatty() else \
            sys.stdin.readline().rstrip("\n")
        scheme = api.config.passwords_scheme
        try:
            user, entry = api.get_user(address)
            known = verify_password(old, user.passwd, scheme)
        except TemporaryError:
            raise
        except VpopmailError:
            dummy_check(old, scheme)  # an unknown address costs what a wrong password costs
            known = False
        if not known:
            _log_failure(address)
            error("authentication failed!")
            return 3
        api.set_password(address, prompt_password(address), honour_flag=True)
        print("Password successfully changed.")
        return 0

    return run(body, USAGE)


def _log_failure(address: str) -> None:
    import syslog

    syslog.openlog("vchangepw", 0, syslog.LOG_AUTH)
    syslog.syslog(syslog.LOG_NOTICE, f"vchangepw: authentication failed {address}")
