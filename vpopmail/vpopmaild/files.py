"""vpopmaild's file commands, confined as C intends (a user to their directory, a domain
administrator to the domain's but for a system administrator's directory there, a system
administrator to the domains tree; below a system administrator, never vpopmail's control
files: CONTROL_PREFIXES, CONTROL_NAMES) but done safely:
paths are checked component by component (C compared string prefixes, so ``example.com``
also opened ``example.community``), every component is opened relative to its parent with
O_NOFOLLOW (a symlink planted inside leads nowhere), the work is done with the owner's ids,
and file sizes are capped."""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from vpopmail.errors import VpopmailError
from vpopmail.flags import QA_ADMIN, SA_ADMIN
from vpopmail.fsutil import OwnerIds, remove_tree_at, write_all
from vpopmail.names import split_address
from vpopmail.stores.cdbfiles import LASTAUTH
from vpopmail.vpopmaild.protocol import END, OK, OK_MORE, Refusal, Tokens
from vpopmail.vpopmaild.session import Session

#: the largest file write_file stores and read_file sends
MAX_FILE = 1 << 20
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: names no file command reaches below a system administrator: delivery instructions (a
#: ``.qmail`` program line runs as the domain owner), the user database and its locks, the
#: quota accounting, the record of the last login (get_lastauth; vdeloldusers' age)
CONTROL_PREFIXES = (".qmail", "vpasswd", ".vpasswd", ".dir-control", ".dir_control")
CONTROL_NAMES = (".valias.lock", "maildirsize", LASTAUTH)
#: what list_dir calls each kind of entry
KINDS = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISCHR, "chardev"),
         (stat.S_ISBLK, "blkdev"), (stat.S_ISFIFO, "fifo"), (stat.S_ISLNK, "link"),
         (stat.S_ISSOCK, "sock"))


class Failure(Refusal):
    """C's ``-ERR 0.<minor> <strerror>`` for a failed system call."""

    def __init__(self, minor: int, text: str) -> None:
        Exception.__init__(self, f"-ERR 0.{minor} {text}")


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def locate(s: Session, path: str, whole: bool = False) -> tuple[str, list[str], int, int]:
    """C's validate_path: (confining root, components below it, uid, gid) of ``path`` (absolute,
    ``user@domain/...`` or ``domain/...``), refused with C's answers when it is outside what the
    session may touch. ``whole``: the command removes or moves the whole tree there, so for a
    domain administrator it must not hold a system administrator's directory either (a hashed
    bucket, ``domain/0``, holds a hundred accounts)."""
    assert s.user is not None and s.entry is not None
    config = s.api.config
    if s.system_admin:
        root = os.path.join(config.home, config.paths_domains_dir)
        minor, uid, gid = 1510, config.uid, config.gid
    elif s.domain_admin:
        root, minor, uid, gid = s.entry.dir, 1511, s.entry.uid, s.entry.gid
    else:
        root, minor, uid, gid = s.user.dir, 1512, s.entry.uid, s.entry.gid
    if ".." in path:
        raise Refusal(20, 1501)
    if "%" in path:
        raise Refusal(21, 1502)
    if path.startswith("/"):
        full = path
    else:
        slash = path.find("/")
        if slash < 0:
            raise Refusal(22, 1503)
        at = path.find("@")
        if at > slash:
            raise Refusal(23, 1504)
        # a path the session may not reach is refused before any lookup, so whether its
        # domain or user exists does not show (C looked the user up first)
        if at >= 0:
            name, domain = split_address(path[:slash])
            if not name or not domain:
                raise Refusal(24, 1505)
            if s.domain_admin and not s.own_domain(domain):
                raise Refusal(11, 1507)
            if not s.flags & (QA_ADMIN | SA_ADMIN) and not s.is_me(name, domain):
                raise Refusal(12, 1508)
            user, _ = s.find_user(name, domain, Refusal(25, 1506))
            full = user.dir + path[slash:]
        else:
            try:
                entry = s.api.find_domain(path[:slash])
            except VpopmailError:
                entry = None
            if entry is None and s.system_admin:
                raise Refusal(11, 1509)
            if entry is None or not s.system_admin and not s.own_domain(entry.domain):
                raise Refusal(26, minor)  # C's answer for another domain, known or not
            full = entry.dir + path[slash:]
    base, wanted = _parts(root), _parts(full)
    if wanted[:len(base)] != base:
        raise Refusal(26, minor)
    below = wanted[len(base):]
    if not s.system_admin and any(part.startswith(CONTROL_PREFIXES) or part in CONTROL_NAMES
                                  for part in below):
        raise Refusal(26, minor, "Unauthorized Directory. (vpopmail's control files: .qmail*, "
                      "vpasswd*, .dir-control*, .valias.lock, maildirsize, lastauth)")
    if s.domain_admin and _system_admin_dir_meets(s, wanted, whole):
        raise Refusal(26, minor, "Unauthorized Directory. (a system administrator's account)")
    return root, below, uid, gid


def _system_admin_dir_meets(s: Session, wanted: list[str], whole: bool) -> bool:
    """Whether ``wanted`` is in the directory of a system administrator of the session's
    domain (whose mail and files are not the domain administrator's), or with ``whole``
    holds one."""
    assert s.entry is not None
    users, _ = s.api.list_users(s.entry.real_domain)
    return any(wanted[:len(home)] == home or whole and home[:len(wanted)] == wanted
               for home in (_parts(user.dir) for user in users
                            if user.flags & SA_ADMIN and user.dir))


@contextmanager
def confined(s: Session, path: str, minor: int, whole: bool = False
             ) -> Iterator[tuple[int, str | None]]:
    """(directory fd, last component or None for the root itself) of ``path`` (``whole``: see
    :func:`locate`), opened one component at a time without following symlinks, with the
    owner's ids for the duration."""
    root, parts, uid, gid = locate(s, path, whole)
    with ExitStack() as stack:
        stack.enter_context(OwnerIds(uid, gid))
        try:
            fd = os.open(root, _DIR)
            stack.callback(os.close, fd)
            for part in parts[:-1]:
                fd = open_dir(part, fd)
                stack.callback(os.close, fd)
        except OSError as exc:
            raise Failure(minor, _why(exc)) from None
        try:
            yield fd, (parts[-1] if parts else None)
        except OSError as exc:
            raise Failure(minor, _why(exc)) from None


def open_dir(name: str, dir_fd: int) -> int:
    """Open the directory ``name`` in ``dir_fd``; a symlink there is ELOOP (Linux says
    ENOTDIR for O_DIRECTORY first)."""
    try:
        return os.open(name, _DIR, dir_fd=dir_fd)
    except NotADirectoryError:
        if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
        raise


def _why(exc: OSError) -> str:
    """strerror, with the O_NOFOLLOW answer for a symlink said plainly."""
    if exc.errno == errno.ELOOP:
        return "Too many levels of symbolic links (symbolic links are not followed)"
    return exc.strerror or str(exc)


def _path_arg(t: Tokens, major: int, minor: int) -> str:
    path = t.next()
    if path is None:
        raise Refusal(major, minor)
    return path


def _named(name: str | None, minor: int) -> str:
    """The last component; the confining directory itself may not be the target."""
    if name is None:
        raise Failure(minor, "the top directory cannot be the target")
    return name


def mk_dir(s: Session, t: Tokens) -> None:
    with confined(s, _path_arg(t, 27, 1601), 1602) as (fd, name):
        os.mkdir(_named(name, 1602), 0o700, dir_fd=fd)
    s.send(OK)


def rm_dir(s: Session, t: Tokens) -> None:
    """Remove a directory and everything in it (fd-relative, symlinks removed not followed)."""
    with confined(s, _path_arg(t, 27, 1701), 1702, whole=True) as (fd, name):
        name = _named(name, 1702)
        if not stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
            raise Failure(1702, "Not a directory")
        remove_tree_at(fd, name, ignore_errors=False)
    s.send(OK)


def list_dir(s: Session, t: Tokens) -> None:
    lines = [OK_MORE]
    with confined(s, _path_arg(t, 27, 1801), 1802) as (fd, name):
        directory = open_dir(name, fd) if name is not None else os.dup(fd)
        try:
            for entry in sorted(os.listdir(directory)):
                if "\n" in entry or "\r" in entry:
                    continue  # cannot be one protocol line
                mode = os.stat(entry, dir_fd=directory, follow_symlinks=False).st_mode
                kind = next((text for test, text in KINDS if test(mode)), "unknown")
                lines.append(f"{entry} {kind}")
        finally:
            os.close(directory)
    s.send(*lines, END)


def rm_file(s: Session, t: Tokens) -> None:
    with confined(s, _path_arg(t, 30, 1901), 1902) as (fd, name):
        os.unlink(_named(name, 1902), dir_fd=fd)
    s.send(OK)


def rename_file(s: Session, t: Tokens) -> None:
    source = _path_arg(t, 28, 3801)
    dest = _path_arg(t, 29, 3801)
    with confined(s, source, 3803, whole=True) as (from_fd, from_name), \
            confined(s, dest, 3803, whole=True) as (to_fd, to_name):
        os.rename(_named(from_name, 3803), _named(to_name, 3803), src_dir_fd=from_fd,
                  dst_dir_fd=to_fd)
    s.send(OK)


def write_file(s: Session, t: Tokens) -> None:
    """``write_file path``, data lines up to ``.``: the file is replaced as a whole (a temp
    file renamed over it, keeping its mode; new files 0600), or not at all."""
    path = _path_arg(t, 30, 2001)
    try:
        locate(s, path)
    except Refusal:
        s.channel.read_block(MAX_FILE)  # C read them as commands
        raise
    lines, problem = s.channel.read_block(MAX_FILE)
    if problem:
        raise Failure(2002, f"nothing written: {problem}")
    data = "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")
    with confined(s, path, 2002) as (fd, name):
        name = _named(name, 2002)
        try:
            mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
            mode = stat.S_IMODE(mode) if stat.S_ISREG(mode) else 0o600
        except FileNotFoundError:
            mode = 0o600
        temp = f".vpopmaild.{os.getpid()}.tmp"
        out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=fd)
        try:
            try:
                write_all(out, data)
                os.fchmod(out, mode)
                os.fsync(out)
            finally:
                os.close(out)
            os.rename(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            os.unlink(temp, dir_fd=fd)
            raise
    s.send(OK)


def read_file(s: Session, t: Tokens) -> None:
    """The file's lines (a ``.`` line sent as ``..``), then ``.``; regular files only."""
    with confined(s, _path_arg(t, 30, 2101), 2102) as (fd, name):
        source = os.open(_named(name, 2102), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, dir_fd=fd)
        try:
            info = os.fstat(source)
            if not stat.S_ISREG(info.st_mode):
                raise Failure(2102, "not a regular file")
            if info.st_size > MAX_FILE:
                raise Failure(2102, f"file larger than {MAX_FILE} bytes")
            data = os.read(source, MAX_FILE + 1)[:MAX_FILE]
        finally:
            os.close(source)
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    s.send(OK_MORE, *(".." if line.rstrip("\r") == "." else line.rstrip("\r") for line in lines),
           END)


def stat_file(s: Session, t: Tokens) -> None:
    with confined(s, _path_arg(t, 30, 2201), 2202) as (fd, name):
        info = os.fstat(fd) if name is None else os.stat(name, dir_fd=fd, follow_symlinks=False)
    s.send(OK_MORE, f"uid: {info.st_uid}", END)
