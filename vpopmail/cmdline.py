"""``--help`` and ``--version``, answered alike by every command.

The admin commands reach this through :func:`vpopmail.cli.common.getopt`; vdelivermail,
vchkpw and vchangepw (whose arguments are not options) only for a sole ``--help`` or
``--version`` argument, and they load this module only then.
"""
import os
import sys

from vpopmail import VPOPMAIL_COMPAT, __version__

OPTIONS = ("--help", "--version")
#: the exit status of a command line that vpopmail-server and vpopmaild do not take (their
#: usage on stderr): what a vpopmail-server before --check answers a reload's check with
USAGE_ERROR = 2


def version_text(name: str) -> str:
    return f"{name} (pyvpopmail) {__version__}, compatible with vpopmail {VPOPMAIL_COMPAT}\n"


def answer(option: str, usage: str) -> int:
    """Print ``usage`` for --help, the version line for --version, on stdout; exit status 0."""
    text = usage if option == "--help" else version_text(os.path.basename(sys.argv[0]))
    sys.stdout.write(text)
    return 0
