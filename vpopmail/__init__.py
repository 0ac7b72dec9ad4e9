"""pyvpopmail: vpopmail's virtual-domain mail library for qmail, in Python."""
import posix
import sys

__version__ = "0.1.0"
#: The C release whose behaviour and formats this follows.
VPOPMAIL_COMPAT = "5.4.33"

TYPE_CHECKING = False  # the typing idiom without importing typing (hot path)
if TYPE_CHECKING:
    from collections.abc import MutableMapping


def environ_bytes() -> "MutableMapping[bytes, bytes]":
    """The environment, to read and to change for the programs we run: ``os.environb`` once
    ``os`` is loaded (the server, the admin commands, the tests), else ``posix.environ``, the
    dict ``os.environb`` is made from. The hot paths never import ``os`` (vpopmail.fsutil)."""
    os = sys.modules.get("os")
    if os is None:
        return posix.environ
    environ: MutableMapping[bytes, bytes] = os.environb
    return environ


def environ_text() -> dict[str, str]:
    """A copy of the environment as text, decoded as ``os.environ`` decodes it."""
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    return {name.decode(encoding, errors): value.decode(encoding, errors)
            for name, value in environ_bytes().items()}


def restore_environ() -> None:
    """Undo the interpreter's C-locale coercion (PEP 538) in the environment, so that the
    programs we run (vchkpw's next program, .qmail programs, qmail-inject) get the environment
    we were given, as C vpopmail's do. Under the C or POSIX locale (qmail-local and qmail-popup
    set none) Python sets ``LC_CTYPE=C.UTF-8`` before any Python code runs, whatever -I says;
    the environment this process was started with is read back from /proc/self/environ.
    The bin/ wrappers call this first."""
    environ = environ_bytes()
    if b"LC_CTYPE" not in environ:
        return
    try:
        with open("/proc/self/environ", "rb") as fh:
            given = fh.read().split(b"\0")
    except OSError:  # no /proc: left as it is
        return
    original = next((entry[9:] for entry in given if entry.startswith(b"LC_CTYPE=")), None)
    # posix.environ is a plain dict: the C environment (what a child started without an
    # environment of its own inherits) is changed too
    if original is None:
        del environ[b"LC_CTYPE"]
        posix.unsetenv(b"LC_CTYPE")
    else:
        environ[b"LC_CTYPE"] = original
        posix.putenv(b"LC_CTYPE", original)
