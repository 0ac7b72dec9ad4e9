"""vpopmaild's commands after a login: users, domains, limits, aliases, the IP map and lists,
each through the same library API as the admin commands (same checks, locks and texts), with
C's level, authorisation checks and answer formats. File commands are in ``files``."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from maildir.quota import scan_usage
from vpopmail import flags, ipmap, limits
from vpopmail.errors import TemporaryError, VpopmailError, explain
from vpopmail.fsutil import OwnerIds
from vpopmail.vpopmaild import files
from vpopmail.vpopmaild.protocol import (END, MESSAGES, OK, OK_MORE, PARAM_TOKENS, PASS_TOKENS,
                                         Raw, Refusal, Tokens, atoi)
from vpopmail.names import is_valid_domain, is_valid_user, split_address
from vpopmail.passwords import cost_is_bounded
from vpopmail.stores import VUser
from vpopmail.vpopmaild.session import Session

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar

    from vpopmail.assign import AssignEntry

    T = TypeVar("T")

#: bytes of option lines one mod_user or set_limits may send
MAX_OPTIONS = 65536
#: how long mod_user waits for option lines sent without waiting for its first +OK
PIPELINED_WAIT = 0.05


@contextmanager
def _failing(major: int, minor: int) -> Iterator[None]:
    """A library error in the block is answered ``-ERR <major>.<minor>`` with its text, after
    C's message of ``major`` unless that is 0 (C's ``-ERR 0.<minor> <verror text>``); a
    permission refused to vpopmaild not run as root says so (:func:`explain`)."""
    try:
        yield
    except VpopmailError as exc:
        text = explain(exc, "vpopmaild")
        raise Refusal(major, minor, f"{MESSAGES[major]}: {text}" if major else text) from None


def page_range(tokens: Tokens) -> tuple[int, int]:
    """[start, end) of ``page per_page`` (1-based pages, C's atoi); (0, 0) is everything."""
    page = max(atoi(tokens.next()), 0)
    per_page = max(atoi(tokens.next()), 0)
    if page > 0 and per_page > 0:
        return (page - 1) * per_page, page * per_page
    return 0, 0


def paged(items: list[T], bounds: tuple[int, int]) -> list[T]:
    start, end = bounds
    return items[start:end] if end else items


# -- users ------------------------------------------------------------------------------------

def user_info(s: Session, t: Tokens) -> None:
    s.require_admin(601)
    name, domain = s.address(t, (602, 603))
    s.check_domain(domain, 11, 604)
    user, _ = s.find_user(name, domain, Refusal(12, 605))
    s.check_account(user, 604)
    s.send(OK_MORE, *s.user_lines(user), END)


def add_user(s: Session, t: Tokens) -> None:
    s.require_admin(301)
    name, domain = s.address(t, (302, 303))
    s.check_domain(domain, 11, 304)
    password = t.next(PASS_TOKENS)
    if password is None:
        raise Refusal(7, 305)
    with _failing(0, 305):
        # a domain administrator is held to the domain's maxpopaccounts, as qmailadmin holds
        # them (C's vpopmaild checked no limit: the limits the system administrator set for
        # a domain were the domain administrator's to pass)
        s.api.add_user(f"{name}@{domain}", password, limited=s.domain_admin)
    s.send(OK)


def del_user(s: Session, t: Tokens) -> None:
    s.require_admin(401)
    name, domain = s.address(t, (402, 403))
    s.check_domain(domain, 9, 404)
    with _failing(0, 405):
        s.check_account(s.api.get_user(f"{name}@{domain}")[0], 404)
        s.api.delete_user(f"{name}@{domain}")
    s.send(OK)


#: mod_user's flag options: name -> (bit, who may set it: "any", "override" (a system admin, or
#: a domain admin with V_OVERRIDE), "admin" (domain or system admin), "system")
FLAG_OPTIONS = {
    "no_password_change": (flags.NO_PASSWD_CHNG, "override"), "no_pop": (flags.NO_POP, "override"),
    "no_webmail": (flags.NO_WEBMAIL, "override"), "no_imap": (flags.NO_IMAP, "override"),
    "bounce_mail": (flags.BOUNCE_MAIL, "override"), "no_relay": (flags.NO_RELAY, "override"),
    "no_dialup": (flags.NO_DIALUP, "override"), "user_flag_0": (flags.V_USER0, "override"),
    "user_flag_1": (flags.V_USER1, "override"), "user_flag_2": (flags.V_USER2, "any"),
    "user_flag_3": (flags.V_USER3, "any"), "no_smtp": (flags.NO_SMTP, "override"),
    "system_admin_privileges": (flags.SA_ADMIN, "system"),
    "system_expert_privileges": (flags.SA_EXPERT, "system"),
    "domain_admin_privileges": (flags.QA_ADMIN, "admin"),
    "override_domain_limits": (flags.V_OVERRIDE, "system"),
    "no_spamassassin": (flags.NO_SPAMASSASSIN, "any"), "delete_spam": (flags.DELETE_SPAM, "any"),
    "no_maildrop": (flags.NO_MAILDROP, "any"),
}


def mod_user(s: Session, t: Tokens) -> None:
    """``mod_user user@domain``, ``+OK``, option lines up to ``.``, then the result."""
    name, domain = s.address(t, (501, 502))
    if s.domain_admin and not s.own_domain(domain):
        raise Refusal(11, 503)
    if not s.flags & (flags.QA_ADMIN | flags.SA_ADMIN) and not s.is_me(name, domain):
        raise Refusal(11, 504)
    try:
        user, entry = s.find_user(name, domain, Refusal(12, 505))
        s.check_account(user, 503)
    except Refusal:
        # option lines a client sent without waiting for the answer are read and dropped (C
        # ran them as commands); one that waits for it (Net_Vpopmaild) gets it at once
        if s.channel.pending(PIPELINED_WAIT):
            s.channel.read_block(MAX_OPTIONS)
        raise
    # a client that sent its option lines without waiting for this +OK gets it only once the
    # change is made (the same lines, later): Roundcube's password driver reads one line,
    # takes it for the result and hangs up, and its user logs in with the new password at once
    early = s.channel.pending(PIPELINED_WAIT)
    if not early:
        s.send(OK)
    try:
        _modify_user(s, user, entry)
    except Refusal:
        if early:
            s.send(OK)
        raise
    s.send(*[OK, OK] if early else [OK])


def _modify_user(s: Session, user: VUser, entry: AssignEntry) -> None:
    """mod_user's option lines up to ``.``, applied."""
    lines, problem = s.channel.read_block(MAX_OPTIONS)
    if problem:
        raise Refusal(0, 507, f"option lines refused: {problem}")
    override = s.system_admin or bool(s.flags & flags.QA_ADMIN and s.flags & flags.V_OVERRIDE)
    allowed = {"any": True, "override": override, "system": s.system_admin,
               "admin": bool(s.flags & (flags.QA_ADMIN | flags.SA_ADMIN))}
    fields: dict[str, object] = {}
    steps: list[tuple[int, int]] = []  # (bits to clear, bits to set), in order
    with _failing(0, 507):
        for line in lines:
            tokens = Tokens(line)
            param, value = tokens.next(PARAM_TOKENS), tokens.next(PASS_TOKENS)
            if param is None or value is None:
                continue
            if param == "comment":
                fields["gecos"] = s.api.gecos_text(value)
            elif param == "quota" and override:
                fields["quota"] = s.api.quota_string(value)
            elif param in ("encrypted_password", "clear_text_password"):
                # the flag stops a user changing its own password (qmailadmin's "disable
                # password changing"); its administrators still set it
                if (not (s.system_admin or s.domain_admin)
                        and s.api.effective_flags(user, entry) & flags.NO_PASSWD_CHNG):
                    raise Refusal(0, 507, f"{user.name}@{entry.real_domain} may not change "
                                  "its password")
                if (param == "encrypted_password" and not s.system_admin
                        and not cost_is_bounded(value)):
                    raise Refusal(0, 507, "an encrypted_password whose check may be dear (a "
                                  "form or cost parameters past what vpopmaild takes below a "
                                  "system administrator)")
                hashed = s.api.with_password(user, value, param == "encrypted_password")
                fields.update(passwd=hashed.passwd, clear=hashed.clear)
            elif param == "clear_all_flags" and override:
                steps.append((~0, 0))
            elif param in FLAG_OPTIONS and allowed[FLAG_OPTIONS[param][1]]:
                bit, number = FLAG_OPTIONS[param][0], atoi(value)
                if number in (0, 1):
                    steps.append((bit, bit) if number else (bit, 0))

    def change(current: VUser) -> VUser:
        value = current.flags
        for clear, add in steps:
            value = (value & ~clear) | add
        return current.copy(flags=value, **fields)

    with _failing(0, 507), s.api.domain_lock(entry):
        changed = s.api.modify_users(entry, [user.name], change)
        if "quota" in fields:
            s.api.update_maildirsize(changed[0], entry)


def _domain_arg(t: Tokens, minors: tuple[int, int]) -> str:
    """The next token as a domain (C's EMAIL_REQD or DOMAIN_REQD: ``minors[0]`` major)."""
    domain = t.next()
    if domain is None:
        raise Refusal(minors[0], minors[1])
    return domain.lower()


def user_count(s: Session, t: Tokens) -> None:
    s.require_admin(2601)
    domain = _domain_arg(t, (13, 2602))
    s.check_domain(domain, 11, 2603)
    with _failing(0, 2605):
        users, _ = s.api.list_users(domain)
    s.send(OK_MORE, f"count {len(users)}", END)


def list_users(s: Session, t: Tokens) -> None:
    s.require_admin(2701)
    domain = _domain_arg(t, (6, 2702))
    s.check_domain(domain, 11, 2703)
    bounds = page_range(t)
    with _failing(0, 2705):
        users, _ = s.api.list_users(domain)
    lines = [OK_MORE]
    for user in paged(users, bounds):
        lines += [*s.user_lines(user), ""]
    s.send(*lines, END)


def get_lastauth(s: Session, t: Tokens) -> None:
    s.require_admin(3701)
    name, domain = s.address(t, (3702, 3703))
    s.check_domain(domain, 11, 3704)
    user, entry = s.find_user(name, domain, Refusal(12, 3705))
    s.check_account(user, 3704)
    if not s.api.config.logging_auth_logging:
        s.send(OK)
        return
    when, ip = s.api.backend.last_login(entry, user) or (0, "")
    s.send(OK_MORE, f"time {int(when)}", f"ip {ip}", END)


def get_user_size(s: Session, t: Tokens) -> None:
    if not s.flags & (flags.QA_ADMIN | flags.SA_ADMIN):
        raise Raw("3801 not authorized")
    text = t.next()
    if text is None:
        raise Raw("3802 email_address required")
    try:
        name, domain = s.address(Tokens(text), (3802, 3803))
    except Refusal:
        raise Raw("3803 invalid email address") from None
    if s.domain_admin and not s.own_domain(domain):
        raise Raw("3804 not authorized for domain")
    user, entry = s.find_user(name, domain, Raw("3805 user does not exist"))
    size, count = _usage(user, entry.uid, entry.gid)
    if size < 0:
        raise Raw("3806 unable to fetch size of user account")
    s.send(OK_MORE, f"size {size}", f"count {count}", END)


def _usage(user: VUser, uid: int, gid: int) -> tuple[int, int]:
    """(bytes, messages) in the user's Maildir, counted with the domain owner's ids;
    (-1, -1) if it cannot be read."""
    try:
        with OwnerIds(uid, gid):
            return scan_usage(os.path.join(user.dir, "Maildir"))
    except OSError:
        return -1, -1


def get_domain_size(s: Session, t: Tokens) -> None:
    if not s.flags & (flags.QA_ADMIN | flags.SA_ADMIN):
        raise Raw("3901 not authorized")
    domain = t.next()
    if domain is None:
        raise Raw("3902 domain required")
    domain = domain.lower()
    if s.domain_admin and not s.own_domain(domain):
        raise Raw("3903 not authorized for domain")
    with _failing(0, 3905):
        users, entry = s.api.list_users(domain)
    lines = [OK_MORE]
    total_size = total_count = 0
    for user in users:
        size, count = _usage(user, entry.uid, entry.gid)
        if size < 0:
            raise Raw(f"3904 unable to fetch size of user accounts '{user.name}'")
        lines += [f"user {user.name}@{domain}", f"size {size}", f"count {count}"]
        total_size += size
        total_count += count
    s.send(*lines, f"domain {domain}", f"size {total_size}", f"count {total_count}", END)


# -- domains ----------------------------------------------------------------------------------

def _entries(s: Session, minor: int) -> list[AssignEntry]:
    try:
        return s.api.domains()
    except TemporaryError:
        raise Refusal(31, minor) from None


def list_domains(s: Session, t: Tokens) -> None:
    s.require_system_admin(2301)
    bounds = page_range(t)
    entries = paged(_entries(s, 2302), bounds)
    s.send(OK_MORE, *(f"{e.real_domain} {e.domain}" for e in entries), END)


def find_domain(s: Session, t: Tokens) -> None:
    s.require_system_admin(2401)
    domain = _domain_arg(t, (13, 2402))
    per_page = atoi(t.next())
    names = [e.domain for e in _entries(s, 2403)]
    if domain not in names:
        s.send(OK_MORE, END)
        return
    index = names.index(domain)
    page = index // per_page + 1 if per_page > 0 else index + 1
    s.send(OK_MORE, f"page {page}", END)


def domain_count(s: Session, t: Tokens) -> None:
    s.require_system_admin(2501)
    s.send(OK_MORE, f"count {len(_entries(s, 2502))}", END)


def add_domain(s: Session, t: Tokens) -> None:
    s.require_system_admin(801)
    domain = _domain_arg(t, (13, 802))
    password = t.next(PASS_TOKENS)
    if password is None:
        raise Refusal(7, 803)
    with _failing(0, 804):
        s.api.add_domain(domain, password, postmaster_gecos="postmaster")  # C's, lower-case
    s.send(OK)


def add_alias_domain(s: Session, t: Tokens) -> None:
    s.require_system_admin(1201)
    domain = _domain_arg(t, (13, 1202))
    alias = _domain_arg(t, (14, 1203))
    with _failing(0, 1204):
        s.api.add_alias_domain(domain, alias)
    s.send(OK)


def del_domain(s: Session, t: Tokens) -> None:
    """Delete a domain with its alias domains (C's vdeldomain() library call does)."""
    s.require_system_admin(1301)
    domain = _domain_arg(t, (13, 1302))
    with _failing(0, 1303):
        s.api.delete_domain(domain, force=True)
    s.send(OK)


def dom_info(s: Session, t: Tokens) -> None:
    s.require_system_admin(1401)
    domain = _domain_arg(t, (13, 1402))
    try:
        entry = s.api.get_domain(domain)
        aliases = s.api.aliases_of(entry.real_domain)
    except VpopmailError as exc:
        raise Refusal(0, 1403 if isinstance(exc, TemporaryError) else 1404,
                      explain(exc, "vpopmaild")) from None
    real = s.api.get_domain(entry.real_domain)
    s.send(OK_MORE, f"domain {real.domain}", f"path {real.dir}", f"uid {real.uid}",
           f"gid {real.gid}", *(f"alias {alias}" for alias in aliases), END)


# -- limits -----------------------------------------------------------------------------------

#: the protocol's limit names -> the limits file's numeric keys, in get_limits' order
NUMBER_NAMES = {
    "max_popaccounts": "maxpopaccounts", "max_aliases": "maxaliases",
    "max_forwards": "maxforwards", "max_autoresponders": "maxautoresponders",
    "max_mailinglists": "maxmailinglists", "disk_quota": "quota", "max_msgcount": "maxmsgcount",
    "default_quota": "default_quota", "default_maxmsgcount": "default_maxmsgcount",
}
SWITCH_NAMES = ("disable_pop", "disable_imap", "disable_dialup", "disable_password_changing",
                "disable_webmail", "disable_external_relay", "disable_smtp",
                "disable_spamassassin", "delete_spam", "disable_maildrop")
PERM_NAMES = ("perm_account", "perm_alias", "perm_forward", "perm_autoresponder",
              "perm_maillist", "perm_quota", "perm_defaultquota")


def get_limits(s: Session, t: Tokens) -> None:
    s.require_system_admin(3401)
    domain = _domain_arg(t, (13, 3402))
    with _failing(34, 3403):
        current = s.api.domain_limits(s.api.get_domain(domain))
    numbers = current.numbers
    s.send(OK_MORE, *(f"{name} {numbers[key]}" for name, key in NUMBER_NAMES.items()),
           *(f"{name} {int(name in current.switches)}" for name in SWITCH_NAMES),
           *(f"{name} {numbers[name]}" for name in PERM_NAMES), END)


def set_limits(s: Session, t: Tokens) -> None:
    """``set_limits domain``, ``+OK``, ``name value`` lines up to ``.``, then the result."""
    s.require_system_admin(3501)
    domain = _domain_arg(t, (13, 3502))
    with _failing(34, 3505):
        entry = s.api.get_domain(domain)
    s.send(OK)
    lines, problem = s.channel.read_block(MAX_OPTIONS)
    if problem:
        raise Refusal(35, 3504, f"Could not set limits: option lines refused: {problem}")
    numbers: dict[str, int] = {}
    switches: dict[str, bool] = {}
    for line in lines:
        tokens = Tokens(line)
        param, value = tokens.next(PARAM_TOKENS), tokens.next(PARAM_TOKENS)
        if param is None:
            continue
        if value is None:
            s.send("  Warning: missing value")
        elif param in NUMBER_NAMES or param in PERM_NAMES:
            numbers[NUMBER_NAMES.get(param, param)] = atoi(value)
        elif param in SWITCH_NAMES:
            switches[param] = atoi(value) != 0
        else:
            s.send("  Warning: invalid option")

    def edit(current: limits.Limits) -> bool:
        current.numbers.update(numbers)
        for name, on in switches.items():
            (current.switches.add if on else current.switches.discard)(name)
        return True

    with _failing(35, 3504):
        s.api.change_domain_limits(entry, edit)
    s.send(OK)


def del_limits(s: Session, t: Tokens) -> None:
    s.require_system_admin(3601)
    domain = _domain_arg(t, (13, 3602))
    with _failing(0, 3603):
        s.api.delete_domain_limits(s.api.get_domain(domain))
    s.send(OK)


# -- aliases ----------------------------------------------------------------------------------

def _alias_target(s: Session, t: Tokens, minor: int) -> str:
    """The ``alias@domain`` argument, checked as C's add/remove/delete_alias do."""
    s.require_admin(minor + 1)
    text = t.next()
    if text is None:
        raise Refusal(14, minor + 2)
    name, domain = split_address(text, s.api.default_domain())
    if not (is_valid_user(name) and is_valid_domain(domain)) or not name:
        raise Refusal(15, minor + 3)
    if s.domain_admin and not s.own_domain(domain):
        raise Refusal(11, minor + 4)
    return f"{name}@{domain}"


def _domain_admin_line(s: Session, line: str) -> None:
    """A domain administrator's alias line: an address, a ``#`` comment, or a maildir inside
    their domain's directory. qmail-local runs the line as the domain owner, so C's way (any
    line) let them run programs as it and write to any file it may write."""
    assert s.entry is not None
    if line[:1] not in "|/.":
        return
    own, parts = s.entry.dir.rstrip("/").split("/"), line.split("/")
    if (line.endswith("/") and parts[:len(own)] == own and len(parts) > len(own) + 1
            and not {"", ".", ".."} & set(parts[len(own):-1])):
        return
    raise Refusal(17, 907, "Alias Insertion Failed: a domain administrator's alias lines are "
                  "addresses, # comments, or maildirs of the domain")


def add_alias(s: Session, t: Tokens) -> None:
    address = _alias_target(s, t, 900)
    line = t.next()
    if line is None:
        raise Refusal(16, 906)
    if s.domain_admin:
        _domain_admin_line(s, line)
    with _failing(17, 907):
        alias, entry = s.api.resolve_alias(address)
        # a domain administrator's new alias is held to the domain's maxforwards, as in
        # qmailadmin (C's vpopmaild checked no limit)
        s.api.add_alias_line(entry, alias, address, line, limited=s.domain_admin)
    s.send(OK)


def remove_alias(s: Session, t: Tokens) -> None:
    address = _alias_target(s, t, 1000)
    line = t.next()
    if line is None:
        raise Refusal(16, 1006)
    with _failing(18, 1007):
        alias, entry = s.api.resolve_alias(address)
        s.api.remove_alias_line(entry, alias, address, line)
    s.send(OK)


def delete_alias(s: Session, t: Tokens) -> None:
    address = _alias_target(s, t, 1100)
    with _failing(19, 1106):
        alias, entry = s.api.resolve_alias(address)
        s.api.delete_alias(entry, alias, address)
    s.send(OK)


def list_alias(s: Session, t: Tokens) -> None:
    """``list_alias domain`` (every line of every alias) or ``list_alias alias@domain``."""
    s.require_admin(2801)
    text = _domain_arg(t, (13, 2802))
    name, _, domain = text.rpartition("@")
    if "@" in text and not (name and is_valid_user(name) and is_valid_domain(domain)):
        raise Refusal(10, 2803)
    if s.domain_admin and not s.own_domain(domain):
        raise Refusal(11, 2804)
    store = s.api.stores.aliases
    with _failing(0, 2806):
        if name:
            alias, entry = s.api.resolve_alias(text)
            pairs = [(alias, line) for line in store.lines(entry, alias) or []]
        else:
            entry = s.api.get_domain(domain)
            pairs = store.all(entry)
    # named in the real domain, as C printed them
    s.send(OK_MORE, *(f"{alias}@{entry.real_domain} {line}" for alias, line in pairs), END)


# -- IP map -----------------------------------------------------------------------------------

def get_ip_map(s: Session, t: Tokens) -> None:
    s.require_system_admin(3001)
    ip = t.next()
    if ip is None:
        raise Refusal(37, 3002)
    found = [domain for mapped, domain in ipmap.read_map(s.api.config) if mapped == ip]
    if not found:
        raise Refusal(0, 3003, "error")
    s.send(OK_MORE, f"{ip} {found[0]}", END)


def _ip_and_domain(s: Session, t: Tokens, minors: tuple[int, int, int]) -> tuple[str, str]:
    ip = t.next()
    if ip is None:
        raise Refusal(32 if minors[0] == 3102 else 37, minors[0])
    domain = _domain_arg(t, (13, minors[1]))
    try:
        return ipmap.check_ip(ip), domain
    except VpopmailError as exc:
        raise Refusal(0, minors[2], f"error: {exc}") from None


def add_ip_map(s: Session, t: Tokens) -> None:
    s.require_system_admin(3101)
    ip, domain = _ip_and_domain(s, t, (3102, 3103, 3105))
    try:
        known = s.api.find_domain(domain) is not None
    except VpopmailError:
        known = False
    if not known:
        raise Refusal(38, 3104)
    ipmap.change_map(s.api.config, ip, domain, add=True)
    s.send(OK)


def del_ip_map(s: Session, t: Tokens) -> None:
    s.require_system_admin(3201)
    ip, domain = _ip_and_domain(s, t, (3202, 3203, 3204))
    if not ipmap.change_map(s.api.config, ip, domain, add=False):
        raise Refusal(0, 3204, f"error: no mapping {ip} {domain}")
    s.send(OK)


def show_ip_map(s: Session, t: Tokens) -> None:
    s.require_system_admin(3301)
    s.send(OK_MORE, *(f"{ip} {domain}" for ip, domain in ipmap.read_map(s.api.config)), END)


# -- mailing lists ----------------------------------------------------------------------------

def list_lists(s: Session, t: Tokens) -> None:
    """The domain's ezmlm lists: its ``.qmail-<list>`` files whose first line runs
    ezmlm-reject, sorted case-insensitively, as C names them."""
    s.require_admin(2901)
    domain = _domain_arg(t, (6, 2902))
    s.check_domain(domain, 11, 2903)
    try:
        entry = s.api.get_domain(domain)
    except VpopmailError:
        raise Refusal(11, 2904) from None
    bounds = page_range(t)
    found = []
    with OwnerIds(entry.uid, entry.gid):
        try:
            names = os.listdir(entry.dir)
        except OSError as exc:
            raise Refusal(0, 2905, exc.strerror) from None
        for name in sorted(names, key=str.lower):
            if name.startswith(".qmail-") and "ezmlm-reject" in _first_line(entry.dir, name):
                found.append(name)
    s.send(OK_MORE, *paged(found, bounds), END)


def _first_line(directory: str, name: str) -> str:
    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        return os.read(fd, 1024).split(b"\n", 1)[0].decode("utf-8", "replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def _no_ezmlm(minor: int) -> Callable[[Session, Tokens], None]:
    """add_list, del_list, mod_list: they run ezmlm-make, which is not shipped."""
    def refuse(s: Session, t: Tokens) -> None:
        raise Refusal(36, minor, "Not Implemented: mailing lists need ezmlm-make, which "
                      "pyvpopmail does not ship")

    return refuse


#: C's Functions table, in its order: (level, command, usage); an empty usage is a heading.
#: help shows the rows up to the session's level (list_users twice, as in C).
HELP = [
    (2, "Domain", ""), (2, "user_info", "user_domain<crlf>"),
    (3, "list_domains", "[page per_page]<crlf>"), (3, "find_domain", "domain [per-page]<crlf>"),
    (3, "domain_count", "<crlf>"), (3, "add_alias_domain", "domain alias<crlf>"),
    (3, "add_domain", "domain postmaster-password<crlf>"), (3, "del_domain", "domain<crlf>"),
    (3, "dom_info", "domain<crlf>"), (2, "get_limits", "domain<crlf>"),
    (3, "set_limits", "domain (option lines)<crlf>.<crlf>"), (3, "del_limits", "domain<crlf>"),
    (2, "get_domain_size", "domain<crlf>"),
    (1, "User", ""), (2, "add_user", "user@domain password<crlf>"),
    (2, "del_user", "user@domain<crlf>"), (2, "user_count", "domain <crlf>"),
    (2, "list_users", "domain [page per_page]<crlf>"), (2, "list_users", "domain<crlf>"),
    (2, "list_lists", "domain<crlf>"),
    (1, "mod_user", "user@domain (option lines)<crlf>.<crlf>"),
    (1, "get_lastauth", "user@domain<crlf>"), (1, "get_user_size", "user@domain<crlf>"),
    (2, "Alias", ""), (2, "add_alias", "user@domain user@otherdomain<crlf>"),
    (2, "delete_alias", "user@domain<crlf>"), (2, "list_alias", "domain<crlf>"),
    (2, "remove_alias", "user@domain user@otherdomain<crlf>"),
    (1, "File System", ""), (1, "mk_dir", "/full/path/to/dir<crlf>"),
    (1, "rm_dir", "/full/path/to/dir<crlf>"), (1, "list_dir", "/full/path/to/dir<crlf>"),
    (1, "rm_file", "/full/path/to/file<crlf>"), (1, "rename_file", "/full/path/to/file<crlf>"),
    (1, "write_file", "/full/path (data lines)<crlf>.<crlf>"),
    (1, "read_file", "/full/path<crlf>"), (1, "stat_file", "/full/path<crlf>"),
    (1, "IP Map", ""), (1, "get_ip_map", "domain<crlf>"), (3, "add_ip_map", "ip domain<crlf>"),
    (3, "del_ip_map", "ip domain<crlf>"), (3, "show_ip_map", "domain<crlf>"),
    (2, "Mailing List", ""),
    (2, "add_list", "domain listname (command line options)<crlf>"),
    (2, "del_list", "domain listname<crlf>"),
    (2, "mod_list", "domain listname (command line options)<crlf>"),
    (0, "Utility", ""), (0, "exit", "quit"), (0, "quit", "quit"), (0, "q", "quit"),
    (0, "help", "help"),
]

_HANDLERS = {
    "user_info": user_info, "list_domains": list_domains, "find_domain": find_domain,
    "domain_count": domain_count, "add_alias_domain": add_alias_domain,
    "add_domain": add_domain, "del_domain": del_domain, "dom_info": dom_info,
    "get_limits": get_limits, "set_limits": set_limits, "del_limits": del_limits,
    "get_domain_size": get_domain_size, "add_user": add_user, "del_user": del_user,
    "user_count": user_count, "list_users": list_users, "list_lists": list_lists,
    "mod_user": mod_user, "get_lastauth": get_lastauth, "get_user_size": get_user_size,
    "add_alias": add_alias, "delete_alias": delete_alias, "list_alias": list_alias,
    "remove_alias": remove_alias, "mk_dir": files.mk_dir, "rm_dir": files.rm_dir,
    "list_dir": files.list_dir, "rm_file": files.rm_file, "rename_file": files.rename_file,
    "write_file": files.write_file, "read_file": files.read_file,
    "stat_file": files.stat_file, "get_ip_map": get_ip_map, "add_ip_map": add_ip_map,
    "del_ip_map": del_ip_map, "show_ip_map": show_ip_map, "add_list": _no_ezmlm(4001),
    "del_list": _no_ezmlm(4101), "mod_list": _no_ezmlm(4201),
}
#: command -> (level it needs, handler)
COMMANDS = {name: (level, _HANDLERS[name]) for level, name, usage in HELP
            if usage and name in _HANDLERS}
