"""vmoddomlimits: show or change a domain's limits (.qmailadmin-limits) or the defaults."""
from __future__ import annotations

import sys

from vpopmail import limits
from vpopmail.cli.common import UsageError, getopt, number, open_api, print_version, run
from vpopmail.limits import PERM_CREATE, PERM_DELETE, PERM_LETTERS, PERM_MODIFY, SWITCHES, Limits

USAGE = """\
vmoddomlimits: usage: [options] domain 
options: -v ( display the vpopmail version number )
         -d ( use the vlimits.default file, instead of domain )
         -S ( show current settings )
         -D ( delete limits for this domain, i.e. switch to default limits)
         -Q quota-in-megabytes ( set domain disk quota, '100' = 100 MB )
         -q quota-in-bytes ( set default user quota, '10M' = 10 MB )
         -M count ( set domain max msg count )
         -m count ( set default user max msg count )
         -P count ( set max amount of pop accounts )
         -A count ( set max amount of aliases )
         -F count ( set max amount of forwards )
         -R count ( set max amount of autoresponders )
         -L count ( set max amount of mailing lists )
the following options are bit flags in the gid int field
         -g "flags"  (set flags, see below)
         gid flags:
            u ( set no dialup flag )
            d ( set no password changing flag )
            p ( set no pop access flag )
            s ( set no smtp access flag )
            w ( set no web mail access flag )
            i ( set no imap access flag )
            r ( set no external relay flag )
            c ( set no spamassasssin flag )
            x ( set delete spam flag )
            m ( set no maildrop flag )
the following options are bit flags for non postmaster admins
         -p "flags"  (set pop account flags)
         -a "flags"  (set alias flags)
         -f "flags"  (set forward flags)
         -r "flags"  (set autoresponder flags)
         -l "flags"  (set mailinglist flags)
         -u "flags"  (set mailinglist users flags)
         -o "flags"  (set mailinglist moderators flags)
         -x "flags"  (set quota flags)
         -z "flags"  (set default quota flags)
         perm flags:
            a ( set deny all flag )
            c ( set deny create flag )
            m ( set deny modify flag )
            d ( set deny delete flag )
"""
NUMBER_OPTIONS = {"Q": "quota", "M": "maxmsgcount", "m": "default_maxmsgcount",
                  "P": "maxpopaccounts", "A": "maxaliases", "F": "maxforwards",
                  "R": "maxautoresponders", "L": "maxmailinglists"}
#: perm option -> (key, bit shift inside the key)
PERM_OPTIONS = {"p": ("perm_account", 0), "a": ("perm_alias", 0), "f": ("perm_forward", 0),
                "r": ("perm_autoresponder", 0), "l": ("perm_maillist", 0),
                "u": ("perm_maillist", 3), "o": ("perm_maillist", 6), "x": ("perm_quota", 0),
                "z": ("perm_defaultquota", 0)}
SHOW_ORDER = ("disable_imap", "disable_smtp", "disable_pop", "disable_webmail",
              "disable_password_changing", "disable_external_relay", "disable_dialup",
              "disable_spamassassin", "delete_spam", "disable_maildrop")
SHOW_NAMES = ("NO_IMAP", "NO_SMTP", "NO_POP", "NO_WEBMAIL", "NO_PASSWD_CHNG", "NO_RELAY",
              "NO_DIALUP", "NO_SPAMASSASSIN", "DEL_SPAM", "NO_MAILDROP")
PERM_ROWS = (("pop account", "p"), ("alias", "a"), ("forward", "f"), ("autoresponder", "r"),
             ("mailinglist", "l"), ("mailinglist users", "u"), ("mailinglist moderators", "o"),
             ("quota", "x"), ("default quota", "z"))


def perm_bits(letters: str) -> int:
    bits = 0
    for letter in letters:
        if letter not in PERM_LETTERS:
            raise UsageError(f"unknown perm flag {letter!r}")
        bits |= PERM_LETTERS[letter]
    return bits


def perm_text(bits: int) -> str:
    return "".join(("DENY_" if bits & bit else "ALLOW_") + name.ljust(8 if bits & bit else 7)
                   for bit, name in ((PERM_CREATE, "CREATE"), (PERM_MODIFY, "MODIFY"),
                                     (PERM_DELETE, "DELETE")))


def show(title: str, lim: Limits) -> list[str]:
    n = lim.numbers
    lines = [title, "--", f"Max Pop Accounts: {n['maxpopaccounts']}",
             f"Max Aliases: {n['maxaliases']}", f"Max Forwards: {n['maxforwards']}",
             f"Max Autoresponders: {n['maxautoresponders']}",
             f"Max Mailinglists: {n['maxmailinglists']}", "GID Flags:"]
    lines += [f"  {name}" for key, name in zip(SHOW_ORDER, SHOW_NAMES) if key in lim.switches]
    letters = "".join(SWITCHES[key][1] for key in SHOW_ORDER if key in lim.switches)
    lines += [f"Flags (for commandline): {letters}", "Flags for non postmaster accounts:"]
    for label, option in PERM_ROWS:
        key, shift = PERM_OPTIONS[option]
        lines.append(f"  {(label + ':').ljust(24)}{perm_text((n[key] >> shift) & 7)}")
    lines += [f"Domain Quota: {n['quota']} MB", f"Default User Quota: {n['default_quota']} bytes",
              f"Max Domain Messages: {n['maxmsgcount']}",
              f"Default Max Messages per User: {n['default_maxmsgcount']}"]
    return lines


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        options, args = getopt(sys.argv[1:] if argv is None else argv,
                               "vSDdQ:q:M:m:P:A:F:R:L:g:p:a:f:r:l:u:o:x:z:h")
        letters = {letter for letter, _ in options}
        if "h" in letters:
            print(USAGE, end="")
            return 0
        if "v" in letters:
            print_version()
        for only, does in (("S", "shows the limits"), ("D", "deletes the limits")):
            if only in letters and letters - {"S", "v", "d", "D"}:
                # C showed (deleted) the limits and dropped the changes in silence, exit 0
                raise UsageError(f"-{only} {does} and changes none: give the changes without "
                                 f"-{only}")
        use_default = "d" in letters
        if len(args) != (0 if use_default else 1):
            raise UsageError("")
        api = open_api(config)
        entry = None
        if use_default:
            if "D" in letters:
                print("Default limits must not be deleted. If you really want to do this,")
                print("remove the vlimits.default file.")
                print("But be warned: this might stop vpopmail from working!!")
                return 255
            title = f"Default limits: {limits.default_file(api.config.home)}"
        else:
            entry = api.get_domain(args[0])
            title = f"Domain: {entry.real_domain}"
            if "D" in letters:
                api.delete_domain_limits(entry)
                print("Limits deleted")
                return 0

        def edit(current: Limits) -> bool:
            """Apply the options in their order; True if any changes something stored."""
            changed = False
            for letter, value in options:
                if letter in NUMBER_OPTIONS:
                    current.numbers[NUMBER_OPTIONS[letter]] = number(value, f"-{letter}")
                elif letter == "q":
                    size = api.quota_string(value)
                    if "C" in size:
                        raise UsageError(f"-q takes a size, not {value!r}: -m sets the message "
                                         "count")
                    current.numbers["default_quota"] = (int(size.split("S")[0]) if "S" in size
                                                        else 0)
                elif letter == "g":
                    unknown = set(value) - {v[1] for v in SWITCHES.values()}
                    if unknown:
                        raise UsageError(f"unknown gid flag {''.join(sorted(unknown))!r}")
                    current.switches = {key for key, (_, ch) in SWITCHES.items() if ch in value}
                elif letter in PERM_OPTIONS:
                    key, shift = PERM_OPTIONS[letter]
                    kept = current.numbers[key] & ~(7 << shift)
                    current.numbers[key] = kept | (perm_bits(value) << shift)
                else:
                    continue
                changed = True
            return changed

        shown_only = letters <= {"S", "v", "d"}  # nothing to change: read, without a lock
        current = api.stored_limits(entry) if shown_only else api.change_domain_limits(entry, edit)
        if "S" in letters:
            for line in show(title, current):
                print(line)
        return 0

    return run(body, USAGE)
