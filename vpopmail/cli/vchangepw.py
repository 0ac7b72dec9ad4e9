"""vchangepw: let a user change its own password (interactive, usable as a login shell)."""
from __future__ import annotations

import getpass
import sys

from auth.passwords import dummy_check, verify_password
from vpopmail.cli.common import error, open_api, prompt_password, run
from vpopmail.errors import VpopmailError

MAX_ADDRESS = 160


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
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
        scheme = str(api.config.passwords_scheme)
        try:
            user, entry = api.get_user(address)
            known = verify_password(old, user.passwd, scheme)
        except VpopmailError as exc:
            if exc.temporary:
                raise
            dummy_check(old, scheme)  # an unknown address costs what a wrong password costs
            known = False
        if not known:
            _log_failure(address)
            error("authentication failed!")
            return 3
        api.set_password(address, prompt_password(address), honour_flag=True)
        print("Password successfully changed.")
        return 0

    return run(body, "")


def _log_failure(address: str) -> None:
    import syslog

    syslog.openlog("vchangepw", 0, syslog.LOG_AUTH)
    syslog.syslog(syslog.LOG_NOTICE, f"vchangepw: authentication failed {address}")
