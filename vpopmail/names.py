"""User and domain name rules (vpopmail's character sets, minus what escapes a directory).

C vpopmail allows ``/`` and ``..`` in user names, so ``vadduser ../evil@example.com`` created a
directory outside the domain; here a name is always exactly one safe path component.
Hot-path safe: imports nothing.
"""
from vpopmail.errors import (DomainNameTooLong, IllegalUsername, InvalidDomainName,
                             UserNameTooLong)

MAX_USER = 64
MAX_DOMAIN = 96
USER_CHARS = frozenset("!#$&'*+-.=?^_`{|}~0123456789"
                       "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
DOMAIN_CHARS = frozenset("-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
AT_CHARS = "@%/"
#: what vpopmail accepts in a recipient or login user part (``is_username_valid``); looking a
#: name up never makes a path from it, so this is wider than :func:`check_user`
LOOKUP_USER_CHARS = frozenset("!#$&'*+-./0123456789=?ABCDEFGHIJKLMNOPQRSTUVWXYZ^_`"
                              "abcdefghijklmnopqrstuvwxyz{|}~")
LOOKUP_DOMAIN_CHARS = frozenset("-.0123456789abcdefghijklmnopqrstuvwxyz")
#: what the user part of a forwarding address may not hold: blanks and RFC 5322 specials
ADDRESS_BAD = frozenset(" \t<>()[]\",;:\\@")
#: Files that live beside the user directories in a domain directory.
#: ``vpasswd`` and anything starting ``vpasswd.`` (the files and their temp files), and
#: ``cdb.tmp``, C vpopmail's temp file there (both may run side by side during a migration)
RESERVED_PREFIX = "vpasswd."
RESERVED_NAMES = frozenset({"vpasswd", "cdb.tmp"})


def check_user(name: str, hashed_dirs: bool = True) -> str:
    """Return ``name`` if it is a valid user name, else raise IllegalUsername / UserNameTooLong."""
    if len(name) > MAX_USER:
        raise UserNameTooLong(name[:MAX_USER] + "...")
    if (not name or not USER_CHARS.issuperset(name) or name.startswith(".") or ".." in name
            or name in RESERVED_NAMES or name.startswith(RESERVED_PREFIX)):
        raise IllegalUsername(repr(name))
    if hashed_dirs and len(name) == 1:
        # one-character names would collide with the hash buckets 0-9A-Za-z
        raise IllegalUsername(f"{name!r}: one-character names collide with hashed directories")
    return name


def check_domain(name: str) -> str:
    """Return ``name`` if it is a valid domain name, else raise InvalidDomainName."""
    if len(name) > MAX_DOMAIN:
        raise DomainNameTooLong(name[:MAX_DOMAIN] + "...")
    if (len(name) < 3 or not DOMAIN_CHARS.issuperset(name) or name[0] in "-."
            or name[-1] in "-." or ".." in name):
        raise InvalidDomainName(repr(name))
    return name


def is_address(address: str) -> bool:
    """Whether ``address`` is a ``user@domain`` qmail forwards to as it is: one ``@``, a user
    part of printable ASCII without blanks or specials, a valid domain name."""
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain and len(domain) <= MAX_DOMAIN
                and all(32 < ord(c) < 127 and c not in ADDRESS_BAD for c in local)
                and DOMAIN_CHARS.issuperset(domain) and domain[0] not in "-."
                and domain[-1] not in "-." and ".." not in domain)


def is_valid_user(name: str) -> bool:
    """A user part vdelivermail and vchkpw may look up (lower case already)."""
    return LOOKUP_USER_CHARS.issuperset(name)


def is_valid_domain(name: str) -> bool:
    """A domain vdelivermail and vchkpw may look up (lower case already)."""
    return bool(name) and LOOKUP_DOMAIN_CHARS.issuperset(name)


def ascii_lower(text: str) -> str:
    """``text`` with ASCII letters lower-cased only, as C's tolower(): str.lower() also folds
    the Kelvin sign (U+212A) to ``k``, turning an invalid name into a valid one."""
    return text.lower() if text.isascii() else "".join(
        c.lower() if c.isascii() else c for c in text)


def split_address(address: str, default_domain: str = "") -> tuple[str, str]:
    """Split ``user@domain`` (else at ``%``, else ``/``) lower-cased; a bare user gets
    ``default_domain``.

    Only splits; callers validate the parts with :func:`check_user` / :func:`check_domain`.
    """
    address = ascii_lower(address)
    for separator in AT_CHARS:  # '@' first, then '%', then '/', as C's parse_email
        cut = address.find(separator)
        if cut >= 0:
            return address[:cut], address[cut + 1:]
    return address, default_domain.lower()


def dot_qmail_order(ext: str) -> list[tuple[str, str | None]]:
    """The extensions qmail-local tries, in order, for the address extension ``ext``
    (dot-qmail(5)), each with what ``$DEFAULT`` is then: ``ext`` itself (None), then
    ``<prefix>-default`` for each ``-`` from the rightmost (the rest after that ``-``), then
    ``default`` (all of ``ext``). The one lookup order of ``.qmail-<ext>`` files and of
    ``valias`` rows."""
    found: list[tuple[str, str | None]] = [(ext, None)]
    dash = len(ext)
    while (dash := ext.rfind("-", 0, dash)) >= 0:
        found.append((ext[:dash + 1] + "default", ext[dash + 1:]))
    found.append(("default", ext))
    return found
