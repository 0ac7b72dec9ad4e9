"""vmoduser: change flags, quota, gecos, password or directory of a user or a whole domain."""
from __future__ import annotations

import os
import sys

from vpopmail.api import Vpopmail
from vpopmail.cli.common import UsageError, getopt, open_api, print_version, run
from vpopmail.errors import BadChar, UserDoesNotExist
from vpopmail.flags import SA_ADMIN, SA_EXPERT, VMODUSER_LETTERS
from vpopmail.stores import VUser

USAGE = """\
vmoduser: usage: [options] email_addr or domain (for each user in domain)
options: -v ( display the vpopmail version number )
         -n ( don't rebuild the vpasswd.cdb file )
         -q quota ( set quota )
         -c comment (set the comment/gecos field )
         -e encrypted_passwd (set the password field )
         -C clear_text_passwd (set the password field )
         -D dir (set the user's directory )
the following options are bit flags in the gid int field
         -x ( clear all flags )
         -d ( don't allow user to change password )
         -p ( disable POP access )
         -s ( disable SMTP AUTH access )
         -w ( disable webmail [IMAP from localhost*] access )
            ( * a POP3 or IMAP login from 127.0.0.1 or ::1 is webmail )
         -i ( disable non-webmail IMAP access )
         -b ( bounce all mail )
         -o ( user is not subject to domain limits )
         -r ( disable roaming user/pop-before-smtp )
         -a ( grant qmailadmin administrator privileges )
         -S ( grant system administrator privileges - access all domains )
         -E ( grant expert privileges - edit .qmail files )
         -f ( disable spamassassin)
         -F ( delete spam)
         -m ( disable maildrop)
  [The following flags aren't used directly by vpopmail but are]
  [included for other programs that share the user database.]
         -u ( set no dialup flag )
         -0 ( set V_USER0 flag )
         -1 ( set V_USER1 flag )
         -2 ( set V_USER2 flag )
         -3 ( set V_USER3 flag )
"""


def field_changes(api: Vpopmail, user: VUser, settings: dict[str, str]) -> dict[str, object]:
    """The fields the command line sets outright (flags aside), password hashed here."""
    changes: dict[str, object] = {}
    if settings.get("c"):  # an empty -c changes nothing, as in C
        changes["gecos"] = api.gecos_text(settings["c"])
    if "q" in settings:
        changes["quota"] = api.quota_string(settings["q"])
    if "D" in settings:
        directory = settings["D"]
        if not directory.startswith("/") or any(c in directory for c in ":\n\0"):
            raise BadChar(f"directory {directory!r} must be absolute, without ':' or newline")
        changes["dir"] = os.path.normpath(directory)
    if "C" in settings or "e" in settings:
        hashed = (api.with_password(user, settings["C"]) if "C" in settings
                  else api.with_password(user, settings["e"], encrypted=True))
        changes.update(passwd=hashed.passwd, clear=hashed.clear)
    return changes


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        options, args = getopt(sys.argv[1:] if argv is None else argv,
                               "D:avunxc:q:dpswibro0123he:C:fFSEm")
        settings: dict[str, str] = {}
        set_flags = 0
        for letter, value in options:
            if letter == "v":
                print_version()
            elif letter == "h":
                print(USAGE, end="")
                return 0
            elif letter in VMODUSER_LETTERS:
                bit = VMODUSER_LETTERS[letter]
                if bit in (SA_ADMIN, SA_EXPERT) and os.getuid() != 0:
                    continue  # system-wide privileges are root's to grant, as in C
                set_flags |= bit
            else:
                settings[letter] = value
        if len(args) != 1:
            raise UsageError("")
        api = open_api(config)
        try:
            targets = list(api.iter_targets(args[0]))
        except UserDoesNotExist as exc:  # user@real.domain, as C names it
            print(f"no such user {exc.detail}")
            return 255
        if not targets:
            return 0
        entry = targets[0][1]
        # hashes are made first; the flags are ORed into the record as stored at write time,
        # under the backend's lock, so a concurrent vpasswd or vmoduser is not undone
        changes = {user.name: field_changes(api, user, settings) for user, _ in targets}
        with api.domain_lock(entry):
            users = api.modify_users(entry, list(changes), lambda u: u.copy(
                flags=(0 if "x" in settings else u.flags) | set_flags, **changes[u.name]),
                "n" not in settings)
            if "q" in settings:
                for user in users:
                    api.update_maildirsize(user, entry)
        return 0

    return run(body, USAGE)
