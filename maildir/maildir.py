"""Maildir directory layout."""
from __future__ import annotations

import os

from vpopmail.fsutil import make_dir

SUBDIRS = ("cur", "new", "tmp")


def make_maildir(path: str, uid: int | None = None, gid: int | None = None,
                 mode: int = 0o700) -> None:
    """Create ``path`` and its cur/new/tmp (those missing), owned by uid/gid."""
    make_dir(path, mode, uid, gid)
    for sub in SUBDIRS:
        make_dir(os.path.join(path, sub), mode, uid, gid)
