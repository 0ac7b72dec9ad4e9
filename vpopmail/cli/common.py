"""What every admin command shares: option parsing, the API handle, errors and prompts.

Messages go to stdout, as C vpopmail's (``Error: <text>``), and the exit status is the VA code
masked to a byte (``Domain does not exist`` -11 -> 245), so scripts written for C keep working.
"""
from __future__ import annotations

import sys

from vpopmail import __version__, config
from vpopmail.api import Vpopmail
from vpopmail.cmdline import OPTIONS, answer
from vpopmail.errors import VpopmailError, explain

TYPE_CHECKING = False  # the typing idiom without importing collections (start-up)
if TYPE_CHECKING:
    from collections.abc import Callable

USAGE_EXIT = 255


class UsageError(Exception):
    """Bad command line: the command prints its usage."""


class Answer(Exception):
    """``--help`` or ``--version`` among the options: answered instead of running."""


def getopt(argv: list[str], spec: str) -> tuple[list[tuple[str, str]], list[str]]:
    """POSIX getopt with GNU argument permutation and ``x::`` (optional, attached) arguments.

    ``spec`` is C getopt's option string. Returns ([(letter, value)], operands).
    ``--help`` and ``--version`` (before any ``--``) raise :class:`Answer`; any other long
    option is a usage error.
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
        if arg in OPTIONS:
            raise Answer(arg)
        if not arg.startswith("-") or arg == "-":
            operands.append(arg)
            continue
        if arg.startswith("--"):  # named whole, as getopt_long does: no command has long options
            raise UsageError(f"unrecognized option '{arg}'")
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


def selected_fields(letters: list[str]) -> str:
    """The field letters vuserinfo/vdominfo were given, in order; '' (every field) when the
    last is ``-a``: C's DisplayAll, set by -a and cleared by each field letter."""
    selected, every = "", False
    for letter in letters:
        every = letter == "a"
        if not every:
            selected += letter
    return "" if every else selected


def print_version() -> None:
    print(f"version: pyvpopmail {__version__}")


def error(message: str) -> None:
    print(f"Error: {message}")


def random_option(length: str, given: str | None) -> str:
    """``-r[len]``: a random password of ``len`` (8) characters; refused beside a password
    operand (C stored the operand and printed it as the "Random password")."""
    if given is not None:
        raise UsageError("don't use -r option when giving password on command line")
    from vpopmail.passwords import random_password

    return random_password(number(length or "8", "length"))


def prompt_password(name: str) -> str:
    """Ask twice on a terminal (as vgetpasswd); read one line when stdin is not a terminal.
    End of input (Ctrl-D, or no line at all) raises EOFError: :func:`run` reports it."""
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")
    import getpass

    while True:
        first = getpass.getpass(f"Please enter password for {name}: ")
        if first == getpass.getpass("enter password again: "):
            return first
        print("Passwords do not match, try again")


def run(body: Callable[[], int | None], usage: str,
        messages: dict[type, str] | None = None, *, wrong: str | None = None) -> int:
    """Run a command body: ``--help`` prints ``usage``; usage errors print ``wrong`` (C's exact
    text, where ``usage`` adds our options to it) or else ``usage`` (exit 255); library errors
    print ``Error: ...`` with the error's ``status`` as exit status (``messages`` replaces a
    class's text); end of input at a prompt (which comes before any change) or an interrupt,
    one line on stderr (exit 255 or 130), no traceback."""
    name = sys.argv[0].rsplit("/", 1)[-1]
    try:
        return body() or 0
    except Answer as option:
        return answer(option.args[0], usage)
    except UsageError as exc:
        if str(exc):
            print(f"{name}: {exc}", file=sys.stderr)
        print(usage if wrong is None else wrong, end="")
        return USAGE_EXIT
    except (EOFError, KeyboardInterrupt) as exc:
        # the terminal's cursor is still after the prompt
        start = "\n" if sys.stdin.isatty() else ""
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else \
            "end of input, nothing changed"
        print(f"{start}{name}: {what}", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else USAGE_EXIT
    except VpopmailError as exc:
        for kind, text in (messages or {}).items():
            if isinstance(exc, kind):
                error(text)
                break
        else:
            error(explain(exc, name))
        return exc.status


def open_api(config_path: str | None) -> Vpopmail:
    """The API over the installed configuration ($VPOPMAIL_CONFIG overrides the baked path)."""
    return Vpopmail(config.load(config_path))
