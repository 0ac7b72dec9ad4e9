"""Maildir and Maildir++: directory layout, durable delivery, quotas (``maildirsize``).

The layout check lives here so that a login (vchkpw) can make it without loading the writer.
"""
from vpopmail.fsutil import is_dir, join

SUBDIRS = ("cur", "new", "tmp")


def is_maildir(path: str) -> bool:
    """True when ``path`` has the three Maildir subdirectories."""
    return all(is_dir(join(path, sub)) for sub in SUBDIRS)
