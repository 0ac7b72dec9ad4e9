"""What every admin command shares: option parsing, the API handle, errors and prompts.

Messages go to stdout, as C vpopmail's (``Error: <text>``), and the exit status is the VA code
masked to a byte (``Domain does not exist`` -11 -> 245), so scripts written for C keep working.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

from vpopmail import __version__, config
from vpopmail.api import Vpopmail
from vpopmail.errors import VpopmailError

USAGE_EXIT = 255


class UsageError(Exception):
    """Bad command line: the command prints its usage."""


def getopt(argv: list[str], spec: str) -> tuple[list[tuple[str, str]], list[str]]:
    """POSIX getopt with GNU argument permutation and ``x::`` (optional, attached) arguments.

    ``spec`` is C getopt's option string. Returns ([(letter, value)], operands).
    """
    takes: dict[str, int] = {}
    i = 0
    while i < len(spec):
        letter = spec[i]
        colons = len(spec[i + 1:]) - len(spec[i + 1:].lstrip(":"))
        takes[letter] = min(colons, 2)
        i += 1 + colons
    options: list[tuple[str, str]] = []
    operands: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            operands.extend(args)
            break
        if not arg.startswith("-") or arg == "-":
            operands.append(arg)
            continue
        j = 1
        while j < len(arg):
            letter = arg[j]
            if letter not in takes:
                raise UsageError(f"invalid option -- '{letter}'")
            rest = arg[j + 1:]
            if takes[letter] == 0:
                options.append((letter, ""))
                j += 1
                continue
            if rest or takes[letter] == 2:
                options.append((letter, rest))
            elif args:
                options.append((letter, args.pop(0)))
            else:
                raise UsageError(f"option requires an argument -- '{letter}'")
            break
    return options, operands


def operands(argv: list[str] | None, count: int) -> list[str]:
    """For commands whose only option is -v: exactly ``count`` operands, or a usage error."""
    options, args = getopt(sys.argv[1:] if argv is None else argv, "v")
    if options:
        print_version()
    if len(args) != count:
        raise UsageError("")
    return args


def number(value: str, what: str) -> int:
    """A decimal option argument, or a usage error naming it."""
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{what} must be a number, not {value!r}") from None


def print_version() -> None:
    print(f"version: pyvpopmail {__version__}")


def error(message: str) -> None:
    print(f"Error: {message}")


def prompt_password(name: str) -> str:
    """Ask twice on a terminal (as vgetpasswd); read one line when stdin is not a terminal."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    import getpass

    while True:
        first = getpass.getpass(f"Please enter password for {name}: ")
        if first == getpass.getpass("enter password again: "):
            return first
        print("Passwords do not match, try again")


def run(body: Callable[[], int | None], usage: str,
        messages: dict[type, str] | None = None) -> int:
    """Run a command body: usage errors print ``usage`` (exit 255); library errors print
    ``Error: ...`` with the VA code as exit status (``messages`` replaces a class's text)."""
    try:
        return body() or 0
    except UsageError as exc:
        if str(exc):
            print(f"{sys.argv[0].rsplit('/', 1)[-1]}: {exc}", file=sys.stderr)
        print(usage, end="")
        return USAGE_EXIT
    except VpopmailError as exc:
        for kind, text in (messages or {}).items():
            if isinstance(exc, kind):
                error(text)
                break
        else:
            error(str(exc))
        return exc.code & 0xFF
    except KeyboardInterrupt:
        return 130


def open_api(config_path: str | None) -> Vpopmail:
    """The API over the installed configuration ($VPOPMAIL_CONFIG overrides the baked path)."""
    return Vpopmail(config.load(config_path))
