"""pyvpopmail: vpopmail's virtual-domain mail library for qmail, in Python."""

__version__ = "0.1.0"
#: The C release whose behaviour and formats this follows.
VPOPMAIL_COMPAT = "5.4.33"


def restore_environ() -> None:
    """Undo the interpreter's C-locale coercion (PEP 538) in ``os.environ``, so that the
    programs we run (vchkpw's next program, .qmail programs, qmail-inject) get the environment
    we were given, as C vpopmail's do. Under the C or POSIX locale (qmail-local and qmail-popup
    set none) Python sets ``LC_CTYPE=C.UTF-8`` before any Python code runs, whatever -I says;
    the environment this process was started with is read back from /proc/self/environ.
    The bin/ wrappers call this first."""
    import os

    if "LC_CTYPE" not in os.environ:
        return
    try:
        with open("/proc/self/environ", "rb") as fh:
            given = fh.read().split(b"\0")
    except OSError:  # no /proc: left as it is
        return
    original = next((entry[9:] for entry in given if entry.startswith(b"LC_CTYPE=")), None)
    if original is None:
        del os.environ["LC_CTYPE"]
    else:
        os.environb[b"LC_CTYPE"] = original
