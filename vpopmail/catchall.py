"""A domain's catch-all: the action of its ``.qmail-default``, the one line
``| <home>/bin/vdelivermail '' <action>`` that qmail-local runs through ``/bin/sh -c``.

C vpopmail wrote ``vadddomain -e`` unquoted, so the shell expanded what it held
(``-e 'sales$dept@other.com'`` forwarded to ``sales@other.com``; ``-e 'a&b@other.com'``
made every catch-all delivery exit 127). Here an action is one of the forms vdelivermail
takes, checked, and the line is quoted so that the shell hands vdelivermail exactly that one
argument; a plain action is written byte for byte as C wrote it.
"""
import os

from vpopmail.errors import BadDomainDir, BadInput, VpopmailError
from vpopmail.fsutil import read_regular
from vpopmail.names import check_user, is_address

DOT_QMAIL_DEFAULT = ".qmail-default"

SPECIAL = ("delete", "bounce-no-mailbox")
#: C vdelivermail copies at most this many characters of its action
MAX_ACTION = 299
FORMS = "an address (user@domain), a user of the domain, /path/to/dir, delete or " \
        "bounce-no-mailbox"
#: characters /bin/sh takes literally in a word (the rest is quoted)
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789@%+=:,./-_")


def check(action: str, hashed_dirs: bool = True) -> str:
    """``action`` as it is stored (a user name lower-cased), if vdelivermail takes it as
    meant: ``delete``, ``bounce-no-mailbox``, an absolute path (a home directory), an
    address, or a user name (made ``<domaindir>/<name>`` by :func:`target`). Anything else
    raises BadInput naming the forms: a control character, a relative path, an address
    vdelivermail would read as a program, comment or path (``|``, ``#``, ``+``, ``&``, ``.``
    first), a name that is neither."""
    if not action:
        raise BadInput(f"empty catch-all: give {FORMS}")
    if any(ord(c) < 32 or ord(c) == 127 for c in action):
        raise BadInput(f"control character in the catch-all {action!r}")
    if len(action) > MAX_ACTION:
        raise BadInput(f"catch-all longer than {MAX_ACTION} characters (what vdelivermail reads)")
    if action in SPECIAL or action.startswith("/"):
        return action
    if "@" in action:
        if is_address(action) and action[0] not in "#&+|.":
            return action
        raise BadInput(f"{action!r} is not an address vdelivermail forwards to: give {FORMS}")
    try:
        return check_user(action.lower(), hashed_dirs)
    except VpopmailError as exc:  # IllegalUsername, UserNameTooLong
        raise BadInput(f"{action!r} is no user name ({exc}): give {FORMS}") from None


def is_name(action: str) -> bool:
    """Whether a checked action names a user of the domain."""
    return action not in SPECIAL and not action.startswith("/") and "@" not in action


def target(action: str, domain_dir: str) -> str:
    """What vdelivermail gets for a checked action: a user name becomes
    ``<domain_dir>/<name>`` (as C's vadddomain -e), the rest stays."""
    return os.path.join(domain_dir, action) if is_name(action) else action


def quote(word: str) -> str:
    """``word`` as one /bin/sh word: as it is if every character is plain, else in single
    quotes (a ``'`` in it written ``'\\''``)."""
    if word and _PLAIN.issuperset(word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def line(vdelivermail: str, action: str) -> str:
    """The ``.qmail-default`` line that runs ``vdelivermail '' <action>``."""
    return f"| {quote(vdelivermail)} '' {quote(action)}\n"


def sh_words(text: str) -> list[str] | None:
    """``text`` split into words as /bin/sh splits a command without expansions: blanks
    separate, ``'…'`` is literal, ``"…"`` keeps all but ``\\`` before ``$ ` " \\`` or a
    newline, ``\\`` quotes the next character. None for an unterminated quote. (shlex would
    do it too, but loads re, enum and collections: milliseconds on every admin command.)"""
    words: list[str] = []
    word: list[str] | None = None
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\n":
            if word is not None:
                words.append("".join(word))
                word = None
            i += 1
            continue
        word = word if word is not None else []
        if c == "\\":
            if i + 1 == n:  # a backslash at the very end stays, as in dash
                word.append(c)
            elif text[i + 1] != "\n":  # a backslash-newline joins lines
                word.append(text[i + 1])
            i += 2
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                return None
            word.append(text[i + 1:end])
            i = end + 1
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n and text[i + 1] in '$`"\\\n':
                    i += 1
                    if text[i] == "\n":
                        i += 1
                        continue
                word.append(text[i])
                i += 1
            if i == n:
                return None
            i += 1
        else:
            word.append(c)
            i += 1
    if word is not None:
        words.append("".join(word))
    return words


def action_of(first_line: str) -> str | None:
    """The action of a vdelivermail line, split as /bin/sh splits it; None for another line."""
    if not first_line.startswith("|"):
        return None
    words = sh_words(first_line[1:])
    if words is not None and len(words) == 3 and os.path.basename(words[0]) == "vdelivermail":
        return words[2]
    return None


def read_file(domain_dir: str) -> tuple[bytes, os.stat_result] | None:
    """The contents and status of ``<domain_dir>/.qmail-default`` (None if it is missing): the
    one reader of that file. Its owner is the domain's, so it is read as
    :func:`vpopmail.fsutil.read_regular` reads (a symbolic link or a FIFO there is an OSError
    at once, never followed or waited on by root)."""
    try:
        return read_regular(os.path.join(domain_dir, DOT_QMAIL_DEFAULT))
    except FileNotFoundError:
        return None


def read(domain_dir: str) -> str | None:
    """The action in ``<domain_dir>/.qmail-default``; None if the file is missing or does not
    run vdelivermail; BadDomainDir if it cannot be read."""
    try:
        found = read_file(domain_dir)
    except OSError as exc:
        raise BadDomainDir(f"{os.path.join(domain_dir, DOT_QMAIL_DEFAULT)}: "
                           f"{exc.strerror}") from None
    if found is None:
        return None
    return action_of(found[0].partition(b"\n")[0].decode("utf-8", "surrogateescape"))
