"""vdelivermail: deliver one message to a virtual-domain user (``| vdelivermail '' ACTION``).

qmail-local runs it from a domain's ``.qmail-default`` with the message on stdin and the
recipient in ``EXT``/``HOST``. It talks back only through its exit code (0 delivered, 99
delivered and stop, 100 bounce, 111 retry later) and the text it prints on stdout, which
qmail-send puts in the log or the bounce. Texts and codes are C vpopmail 5.4's; every local
fault (unreadable or corrupt cdb, backend down, disk full, missing directories that cannot be
made) is a 111, never a bounce. With the MySQL backend the recipient's ``valias`` rows come
first, as in C built with --enable-valias (:meth:`Vdelivermail.process_valias`).

This is the hot path: it imports only the lean readers and the Maildir writer; programs,
forwards and directory repairs load what they need when they happen.
"""
import posix
import sys
import time

import _signal

from delivery import dotqmail
from delivery.message import Message
from maildir import is_maildir
from maildir.maildir import deliver, write_message
from maildir.quota import (count_usage, counted, deliver_with_quota, folder_name,
                           load_maildirsize, quota_root, record_quota, trimmed)
from vpopmail import assign, environ_bytes
from vpopmail import config as vconfig
from vpopmail.assign import AssignEntry
from vpopmail.errors import (BAD_SYNTAX, BOUNCE, DATABASE_DOWN, DEFER, DELIVERED, INJECT_FAILED,
                             LOOPING, NO_MAILBOX, OVER_QUOTA, STOP, SYSTEM_ERROR, VALIASES_DONE,
                             DeliveryFailed, OverQuota, VpopmailError)
from vpopmail.flags import BOUNCE_MAIL
from vpopmail.fsutil import dirname, is_file, join, write_all
from vpopmail.names import ascii_lower, dot_qmail_order, is_valid_domain, is_valid_user
from vpopmail.stores import VUser, close_stores, open_stores

TYPE_CHECKING = False  # the typing idiom without importing typing (hot path)
if TYPE_CHECKING:
    from vpopmail.stores.protocols import ValiasRows
    from collections.abc import Sequence

    from vpopmail.wire import CallerLimits

USAGE = """\
vdelivermail: usage: vdelivermail '' ACTION
Run by qmail-local from a domain's .qmail-default (| vdelivermail '' bounce-no-mailbox),
with the message on stdin and the recipient in EXT and HOST. ACTION says what happens to
mail for a user that does not exist:
         bounce-no-mailbox (bounce it: "Sorry, no mailbox here by that name.")
         delete (accept and drop it)
         /path/to/directory (deliver to that directory's Maildir)
         user@domain or &user@domain (forward it)
         |program (pipe it to a program)
Exit status: 0 delivered, 99 delivered (stop the .qmail file), 100 bounced, 111 try later.
"""
#: program exit codes qmail-local and vpopmail treat as permanent failures
PERMANENT_CODES = frozenset({64, 65, 70, 76, 77, 78, 100, 112})
#: set for the lines of control/defaultdelivery to the address whose default delivery runs
#: them: a vdelivermail one of them starts (``|exec …/vdelivermail``, ``|preline …``, a script)
#: for that address is its Maildir delivery, as a line naming vdelivermail is; it does not
#: run the file again (which would start one more, and so on up to the process limit)
IN_DEFAULT_DELIVERY = b"VDELIVERMAIL_DEFAULT_DELIVERY"
#: signals children get back at their default (we ignore them)
CHILD_DEFAULT_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)


def child_limits(limits: "CallerLimits") -> "tuple[int | None, list[tuple[int, int, int]]] | None":
    """What a child must be given of the caller's ``limits`` (nice value, resource limits) to
    differ from this process: (nice or None, [(resource, soft, hard)]), each limit capped by
    this process's hard limit; None when it has them all already. Compared with this
    process's values now (the worker's file-size soft limit is each caller's; an operator may
    renice or prlimit a worker), not with those it started with."""
    import resource

    from vpopmail.wire import INFINITY, to_rlimit

    nice, caller = limits
    changes = []
    for number, (soft, hard) in enumerate(caller):
        own_soft, own_hard = (value & INFINITY for value in resource.getrlimit(number))
        hard = min(hard, own_hard)
        soft = min(soft, hard)
        if (soft, hard) != (own_soft, own_hard):
            changes.append((number, to_rlimit(soft), to_rlimit(hard)))
    wanted = None if nice == posix.getpriority(posix.PRIO_PROCESS, 0) else nice
    return None if wanted is None and not changes else (wanted, changes)


def spawn(path: str, argv: list[str], env: dict[bytes, bytes],
          actions: "Sequence[tuple[int, ...]]",
          limits: "CallerLimits | None") -> int:
    """Start ``path`` (``actions`` as posix_spawn's file actions) and return its pid; OSError
    when it cannot be started, as posix_spawn. With ``limits`` (a vpopmail-server worker's
    caller's) the child takes those that differ from this process's before it execs, each
    capped by this process's hard limit, as the program run by the direct vdelivermail would
    have them."""
    changes = None if limits is None else child_limits(limits)
    if changes is None:
        return posix.posix_spawn(path, argv, env, file_actions=actions,
                                 setsigdef=CHILD_DEFAULT_SIGNALS)
    import resource

    nice, rlimits = changes
    ready, report = posix.pipe()  # close-on-exec: the exec closes it, a failure writes errno
    try:
        pid = posix.fork()
    except OSError:
        posix.close(ready)
        posix.close(report)
        raise
    if pid == 0:
        try:  # the child: never back into the worker's code
            posix.close(ready)
            for action in actions:
                if action[0] == posix.POSIX_SPAWN_DUP2:
                    posix.dup2(action[1], action[2])
                else:
                    posix.close(action[1])
            for signal in CHILD_DEFAULT_SIGNALS:
                _signal.signal(signal, _signal.SIG_DFL)
            if nice is not None:
                try:
                    posix.setpriority(posix.PRIO_PROCESS, 0, nice)
                except OSError:  # below the worker's as another user than root: the worker's
                    pass
            for number, soft, hard in rlimits:
                resource.setrlimit(number, (soft, hard))
            posix.execve(path, argv, env)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent as posix_spawn's
            code = getattr(exc, "errno", None) or 22  # EINVAL: a ValueError of setrlimit
            posix.write(report, code.to_bytes(4, sys.byteorder))
        finally:
            posix._exit(127)
    posix.close(report)
    try:
        failed = posix.read(ready, 4)  # nothing: the exec succeeded
    finally:
        posix.close(ready)
    if failed:
        posix.waitpid(pid, 0)
        code = int.from_bytes(failed.ljust(4, b"\0"), sys.byteorder)
        raise OSError(code, posix.strerror(code))
    return pid


class Outcome(Exception):
    """Ends the run: print ``text`` (verbatim) and exit with ``code``."""

    def __init__(self, code: int, text: str = "") -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def bounce(text: str) -> Outcome:
    return Outcome(BOUNCE, text + "\n")


def defer(text: str) -> Outcome:
    return Outcome(DEFER, text + "\n")


def say(text: str) -> None:
    """Write to stdout at once (children share it, so nothing may wait in a buffer)."""
    write_all(1, text.encode("utf-8", "surrogateescape"))


def maildir_to_email(path: str, cwd: str = "") -> str:
    """``user@domain`` from a Maildir path as vpopmail derives it, or ``""``: the component
    before the last ``/Maildir``, and the nearest component to its left with a dot.

    A relative path is taken from ``cwd`` (default: the working directory), and ``.`` and
    ``..`` components are resolved first, so every spelling of a Maildir names its owner (C
    gives ``bob@..`` for ``./../bob/Maildir/`` and ``""`` for ``../bob/Maildir/``).
    """
    if not path.startswith("/"):
        path = join(cwd or posix.getcwd(), path)
    resolved: list[str] = []
    for component in path.split("/"):
        if component == "..":
            del resolved[-1:]
        elif component not in ("", "."):
            resolved.append(component)
    path = "/" + "/".join(resolved) + "/"
    at = path.rfind("/Maildir/")
    if at < 0:
        return ""
    components = path[:at].split("/")
    user = components[-1]
    for component in reversed(components[:-1]):
        if "." in component:
            return f"{user}@{component}" if user else ""
    return ""


#: why control/defaultdelivery is not followed (qmail-local's own reasons for a .qmail)
FAULTY = {dotqmail.DotQmailWritable: "writable by anyone (#4.7.0)",
          dotqmail.BlankFirstLine: "blank on its first line (#4.2.1)"}


def runs_vdelivermail(kind: str, text: str) -> bool:
    """Whether a control/defaultdelivery instruction is a program line whose command is
    vdelivermail (its first word, a path or not, maybe quoted): a forward, a Maildir or a
    program that merely holds the word elsewhere is not."""
    if kind != dotqmail.PROGRAM:
        return False
    first = text.split(None, 1)[0].strip("'\"") if text.strip() else ""
    return first.rpartition("/")[2] == "vdelivermail"


def program_outcome(status: int) -> Outcome | None:
    """What a child's wait status means for the delivery (None: go on)."""
    code = posix.waitstatus_to_exitcode(status)
    if code == DELIVERED:
        return None
    if code == STOP:
        return Outcome(STOP)
    return Outcome(BOUNCE if code in PERMANENT_CODES else DEFER)


class Vdelivermail:
    """One run. ``environ`` is qmail-local's environment (bytes), ``stdin`` the message fd."""

    def __init__(self, config: vconfig.Config, environ: dict[bytes, bytes] | None = None,
                 stdin: int = 0, program_limits: "CallerLimits | None" = None) -> None:
        self.config = config
        #: what programs and qmail-inject run under, where not this process's (see spawn)
        self.program_limits = program_limits
        # read only: posix.environ, the dict os.environb wraps (its mapping methods are slow)
        self.environ = posix.environ if environ is None else environ
        self.stdin = stdin
        self.rpline = self.environ.get(b"RPLINE", b"")
        self.dtline = self.environ.get(b"DTLINE", b"")
        self.user = ""
        self.domain = ""
        self.entry: AssignEntry | None = None
        self.extension = ""
        self.forward_only = False
        #: forward targets, injected once after every other instruction succeeded
        self.forwards: list[str] = []
        #: the recipient user's Maildir, quota and address (set once the user is found): a
        #: .qmail line into that Maildir (or a folder of it) is under the user's quota and
        #: stamps the user's address, as the default delivery does, whatever its maildirsize
        #: says or whether it is there, and wherever the record puts the directory
        self.own_maildir: tuple[str, str, str] | None = None
        self.message = Message(stdin, 0)
        #: opened at first use, once per run (one connection for valias and user)
        self.stores = open_stores(self.config)

    # -- the run ------------------------------------------------------------------------------
    def run(self, argv: list[str]) -> int:
        if len(argv) != 2:
            raise defer(BAD_SYNTAX)
        action = argv[1]
        # ASCII only, as C's tolower(): "\u212aelly" is no way to write "kelly"
        self.user = ascii_lower(self._env("EXT"))
        host = ascii_lower(self._env("HOST"))
        if not is_valid_user(self.user):
            raise bounce("invalid username")
        if not is_valid_domain(host):
            raise bounce("invalid domain name")
        try:
            self.entry = assign.lookup(self.config.qmail_dir, host)
        except VpopmailError as exc:
            raise defer(f"vdelivermail: deferred, cannot resolve {host}: {exc}") from None
        self.domain = self.entry.real_domain if self.entry else host
        self._drop_privileges()
        spool = self.entry.dir if self.entry else self.config.domains_root
        self.message = Message.from_fd(self.stdin, spool)
        self.check_loop(f"{self.user}@{self.domain}")
        if host != self.domain:  # an alias domain: its forwards carry user@alias (forward_header)
            self.check_loop(f"{self.user}@{host}")
        try:
            code = self._deliver(action)
        except Outcome as outcome:
            if outcome.code in (DELIVERED, STOP):
                self.inject_forwards()
            raise
        self.inject_forwards()
        return code

    def _deliver(self, action: str) -> int:
        """Follow the recipient's valias rows, its user's instructions or the default action;
        forwards are only collected."""
        valias = self.stores.valias if self.entry else None
        if valias is not None and self.process_valias(valias):
            raise Outcome(DELIVERED, VALIASES_DONE + "\n")
        user = self._find_user() if self.entry else None
        if user is None:
            return self.user_not_found(action)
        return self.check_user(user)

    def _env(self, name: str) -> str:
        """qmail-local always sets EXT and HOST: without one, something else started us (a
        misconfigured .qmail, a hand run), a local fault that defers (C bounced: 100)."""
        value = self.environ.get(name.encode())
        if value is None:
            # "varilable" (sic): C's text, which qmail log watchers may match
            raise defer(f"vdelivermail: no {name} environment varilable")
        return value.decode("utf-8", "surrogateescape")

    def _drop_privileges(self) -> None:
        """Run as the domain's owner: root never touches user files (qmail-local never runs
        us as root; an operator testing by hand might)."""
        if posix.geteuid() != 0:
            if self.entry and posix.geteuid() != self.entry.uid:
                raise defer(f"vdelivermail: running as uid {posix.geteuid()}, but {self.domain} "
                            f"belongs to uid {self.entry.uid}")
            return
        uid, gid = ((self.entry.uid, self.entry.gid) if self.entry
                    else (self.config.uid, self.config.gid))
        if uid != 0:
            posix.setgroups([])
            posix.setgid(gid)
            posix.setuid(uid)

    def _find_user(self) -> VUser | None:
        """The recipient's record, trying ``user`` then (qmail extensions on) the part before
        its first ``-``; sets :attr:`extension` for the ``.qmail-<ext>`` lookup."""
        assert self.entry is not None
        try:
            backend = self.stores.users
            found = backend.get_user(self.entry, self.user)
            if self.config.users_qmail_ext and "-" in self.user:
                base, _, ext = self.user.partition("-")
                self.extension = ext.replace(".", ":")
                if found is None:
                    if not is_valid_user(base):
                        raise Outcome(BOUNCE)
                    found = backend.get_user(self.entry, base)
        except OSError as exc:
            raise defer(f"vdelivermail: deferred, user database unreadable: {exc}") from None
        except VpopmailError as exc:
            raise defer(f"vdelivermail: deferred, user database error: {exc}") from None
        return found

    # -- valias rows (MySQL backend) ----------------------------------------------------------
    def process_valias(self, valias: "ValiasRows") -> bool:
        """Deliver to the ``valias`` rows of the recipient, as C's process_valias: the rows of
        ``user``; else of ``<prefix>-default`` for each ``-`` from the rightmost (``DEFAULT`` is
        then the rest, for programs); else (users.qmail_ext) of the part before the first
        ``-``. All candidates are fetched in one query, which also reads the user's row (for
        :meth:`_find_user`). Each row is one delivery instruction,
        run from the domain directory; the first that fails ends the run with its outcome
        (111 defers the whole message, and qmail delivers it again to every row later, as
        qmail-local does for a .qmail file); forwards go out last, once. Rows that are all
        blank defer. False if there is no row."""

        assert self.entry is not None
        candidates = dot_qmail_order(self.user)[:-1]  # plain ``default`` is no valias row
        if self.config.users_qmail_ext and "-" in self.user:
            candidates.append((self.user.partition("-")[0], None))
        try:
            # the user's row comes with them (one statement), for _find_user
            found = valias.select_with_user(self.entry,
                                            list(dict.fromkeys(name for name, _ in candidates)),
                                            self.user)
        except VpopmailError as exc:
            from vpopmail.errors import NoAuthConnection

            if isinstance(exc, NoAuthConnection):  # C's text, then which server and why
                raise defer(f"{DATABASE_DOWN} ({exc.detail})") from None
            raise defer(f"vdelivermail: deferred, user database error: {exc}") from None
        match = next(((name, rest) for name, rest in candidates if name in found), None)
        if match is None:
            return False
        alias, rest = match
        instructions = [item for item in map(dotqmail.parse_line, found[alias]) if item]
        if not instructions:  # valias never stores one: damage, or a foreign tool's write
            raise defer(f"vdelivermail: deferred, the valias rows of {alias}@{self.domain} "
                        "are all blank")
        if rest is not None:
            environ_bytes()[b"DEFAULT"] = rest.encode("utf-8", "surrogateescape")
        self._enter(self.entry.dir)
        for instruction in instructions:
            self.deliver_instruction(*instruction)
        return True

    # -- an existing user ---------------------------------------------------------------------
    def check_user(self, user: VUser) -> int:
        if user.flags & BOUNCE_MAIL:
            raise bounce(f"vdelivermail: account is locked email bounced {user.name}@{self.domain}")
        home = self._ensure_home(user)
        quota = record_quota(user.quota)
        address = f"{user.name}@{self.domain}"
        self.own_maildir = (join(home, "Maildir"), quota, address)
        if self.run_dotqmail(home):
            return DELIVERED
        if self.config.delivery_default_delivery and self.run_default_delivery(home):
            return DELIVERED
        self.deliver_maildir(join(home, "Maildir") + "/", quota, owner=address)
        return DELIVERED

    def _ensure_home(self, user: VUser) -> str:
        """The user's directory with a complete Maildir, re-creating what is missing."""
        assert self.entry is not None
        if user.dir and is_maildir(join(user.dir, "Maildir")):
            return user.dir
        from vpopmail.api import Vpopmail

        try:
            return Vpopmail(self.config).ensure_home(self.entry, user).dir
        except (OSError, VpopmailError) as exc:
            if user.dir:
                raise defer(f"Auto re-creation of maildir failed. (#5.9.9): {exc}") from None
            raise defer(f"Auto creation of maildir failed. (#5.9.8): {exc}") from None

    def run_dotqmail(self, home: str) -> bool:
        """Follow the first ``.qmail`` file found in ``home``; False if there is none or it is
        empty (zero bytes): then the default delivery applies, as with qmail-local."""
        for name in dotqmail.candidates(self.extension if self.config.users_qmail_ext else ""):
            path = join(home, name)
            try:
                instructions = dotqmail.read_file(path)
            except dotqmail.DotQmailWritable:
                raise defer("Uh-oh: .qmail file is writable. (#4.7.0)") from None
            except dotqmail.BlankFirstLine:
                raise defer("Uh-oh: first line of .qmail file is blank. (#4.2.1)") from None
            except OSError as exc:
                raise defer(f"vdelivermail: cannot read {path}: {exc.strerror}") from None
            if instructions is not None:
                break
        else:
            return False
        if not instructions:
            return False
        self._enter(home)
        for kind, text in instructions:
            self.deliver_instruction(kind, text)
        return True

    @staticmethod
    def _enter(home: str) -> None:
        """Work in ``home``, where qmail-local runs the lines of a ``.qmail`` (the domain's
        directory for its valias rows)."""
        try:
            posix.chdir(home)
        except OSError as exc:
            raise defer(f"vdelivermail: cannot chdir to {home}: {exc.strerror}") from None

    def run_default_delivery(self, home: str) -> bool:
        """Follow qmail's ``control/defaultdelivery`` for a user without a ``.qmail``
        (delivery.default_delivery), in the user's directory, as the lines of a ``.qmail``;
        a line naming vdelivermail (the site's own default for every qmail user) is this
        user's Maildir delivery, at its place. False if the file is missing or has no
        instruction but comments, or if a line of it started this run for the same user
        (IN_DEFAULT_DELIVERY): the Maildir delivery follows."""
        assert self.own_maildir is not None
        maildir, quota, address = self.own_maildir
        marker = address.encode("utf-8", "surrogateescape")
        if self.environ.get(IN_DEFAULT_DELIVERY) == marker:
            return False
        path = join(self.config.qmail_dir, "control", "defaultdelivery")
        try:
            instructions = dotqmail.read_file(path)
        except (dotqmail.DotQmailWritable, dotqmail.BlankFirstLine) as exc:
            raise defer(f"vdelivermail: {path} is {FAULTY[type(exc)]}") from None
        except OSError as exc:
            raise defer(f"vdelivermail: cannot read {path}: {exc.strerror}") from None
        if not instructions or all(kind == dotqmail.COMMENT for kind, _ in instructions):
            return False
        self._enter(home)
        environ_bytes()[IN_DEFAULT_DELIVERY] = marker
        for kind, text in instructions:
            if runs_vdelivermail(kind, text):
                self.deliver_maildir(maildir + "/", quota, owner=address)
            else:
                self.deliver_instruction(kind, text)
        return True

    # -- an unknown user ----------------------------------------------------------------------
    def user_not_found(self, action: str) -> int:
        recipient = f"{self.user}@{self.domain}"
        if action == "delete":
            return DELIVERED
        if action == "bounce-no-mailbox":
            raise Outcome(BOUNCE, self._site_message(".no-user.msg") or NO_MAILBOX + "\n")
        if action.startswith("/"):
            home = action if action.endswith("/") else action + "/"
            say(f"user does not exist, but will deliver to {home}\n")
            if not self.run_dotqmail(home):
                self.deliver_maildir(home + "Maildir/", "", recipient)
            return DELIVERED
        parsed = dotqmail.parse_line(action)
        if parsed is None or parsed[0] in (dotqmail.COMMENT, dotqmail.LIST):
            raise defer(BAD_SYNTAX)  # would deliver nowhere: a damaged or mistyped line
        self.deliver_instruction(*parsed, recipient=recipient)
        return DELIVERED

    def _site_file(self, name: str) -> str:
        """The domain's ``name`` file, else the one in ~vpopmail/domains, else ``""``."""
        directories = [self.entry.dir] if self.entry else []
        for directory in [*directories, self.config.domains_root]:
            path = join(directory, name)
            if is_file(path):
                return path
        return ""

    def _site_message(self, name: str) -> str:
        """A bounce text from :meth:`_site_file`, or ``""``."""
        path = self._site_file(name)
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as fh:
                return fh.read()
        except OSError:
            return ""

    # -- one instruction ----------------------------------------------------------------------
    def check_loop(self, address: str) -> None:
        """Bounce if this message already went through ``address`` or has too many hops."""
        target = address.lower().encode("utf-8", "surrogateescape")
        seen, hops = self.message.trace()
        dt = self.dtline.rstrip(b"\r\n")
        from_env = dt[:14].lower() == b"delivered-to: " and dt[14:].strip().lower() == target
        if from_env or target in seen or hops >= self.config.delivery_max_hops:
            raise bounce(LOOPING)

    def deliver_instruction(self, kind: str, text: str, recipient: str = "") -> None:
        if kind == dotqmail.COMMENT:
            return
        if kind == dotqmail.LIST:
            self.forward_only = True
            return
        self.check_loop(text)
        if self.message.size == 0:
            return
        if kind == dotqmail.FORWARD:
            self.forwards.append(text)
            return
        if self.forward_only:
            what = "prog" if kind == dotqmail.PROGRAM else "file"
            raise defer(f"Uh-oh: .qmail has {what} delivery but has x bit set. (#4.7.0)")
        if kind == dotqmail.PROGRAM:
            self.run_program(text)
        elif kind == dotqmail.MAILDIR:
            self.deliver_maildir(text, "", recipient)
        else:
            raise Outcome(DEFER, f"can't handle mbox delivery for {text}")

    def deliver_maildir(self, path: str, quota: str, recipient: str = "",
                        owner: str = "") -> None:
        """Local delivery with vpopmail's quota rules; ``recipient`` set means the default
        action's target (its Delivered-To is the original recipient), ``owner`` the address
        of the user whose Maildir it is, when known. An empty message is dropped, as C
        vpopmail drops it. The recipient user's Maildir is counted in itself and so is any
        folder of it, with its ``maildirfolder`` file or without; the quota warning goes to
        the Maildir that counts the folder (its INBOX), as Courier's deliverquota sends it."""
        if self.message.size == 0:
            return
        maildir = path if path.startswith("/") else join(posix.getcwd(), path)
        own = self._own(maildir) if not quota or not (recipient or owner) else None
        root = own[0] if own is not None else trimmed(maildir) if owner else quota_root(maildir)
        if own is not None and not (recipient or owner):
            owner = own[2]
        if not quota:
            if own is not None and own[1]:
                quota = own[1]
            else:  # no record quota text at all: maildirsize's line counts, read as C reads
                found = load_maildirsize(root)  # it (format_maildirquota: 50M is 50 MB)
                quota = record_quota(found.quota) if found else ""
        keep_count = counted(maildir)
        if not keep_count:
            quota = ""
        # the user's own Maildir is the user's, even where its path names no domain or another
        # one (C took the address from the path: a loop back to the user then went unseen)
        address = (recipient or owner or maildir_to_email(maildir)
                   or f"{self.user}@{self.domain}")

        def notice(over: bool, percent: int) -> None:
            if over:
                text = self._site_message(".over-quota.msg") or OVER_QUOTA + "\n"
                self.quota_warning(root, quota, address, bool(recipient))
                raise Outcome(BOUNCE, text + "\n")
            if percent >= self.config.users_quota_warn_percent:
                self.quota_warning(root, quota, address, bool(recipient))

        def write() -> int:
            header = (self.rpline + b"Delivered-To: "
                      + address.encode("utf-8", "surrogateescape") + b"\n")
            try:
                return deliver(maildir, header, self.message.fd,
                               self.config.delivery_file_sync).size
            except OverQuota as exc:
                # EDQUOT: the file system's quota of the delivering uid, which holds every
                # mailbox of the domain (of every domain, with the one vpopmail uid): a full
                # disk for them all, not this user's quota (C bounced every one of them)
                raise defer(f"vdelivermail: deferred, the file system's quota is exhausted: "
                            f"{exc.detail}\n{SYSTEM_ERROR}") from None
            except DeliveryFailed as exc:
                raise defer(f"vdelivermail: {exc.detail}\n{SYSTEM_ERROR}") from None

        try:
            failed = deliver_with_quota(root, quota, self.message.size, write, notice,
                                        keep_count)[1]
        except OSError as exc:
            raise defer(f"vdelivermail: deferred, cannot count the usage of {maildir}: "
                        f"{exc.strerror}") from None
        self._uncounted(failed)

    def _own(self, maildir: str) -> tuple[str, str, str] | None:
        """The recipient user's (Maildir, quota, address) if ``maildir`` is that user's
        Maildir or a folder of it (its ``maildirfolder`` file or its ``.Name`` says so), by
        device and inode (any spelling of the path), else None."""
        if self.own_maildir is None:
            return None
        path = trimmed(maildir)
        candidates = {path, quota_root(path), dirname(path) if folder_name(path) else path}
        try:
            mine = posix.stat(self.own_maildir[0])
        except OSError:
            return None
        for candidate in candidates:
            try:
                target = posix.stat(candidate)
            except OSError:
                continue
            if (mine.st_dev, mine.st_ino) == (target.st_dev, target.st_ino):
                return self.own_maildir
        return None

    @staticmethod
    def _uncounted(failed: str) -> None:
        """Say so when a delivery could not be recorded in maildirsize (it stands anyway)."""
        if failed:
            say(f"vdelivermail: warning: maildirsize not updated: {failed}\n")

    def quota_warning(self, maildir: str, quota: str, address: str, to_default: bool) -> None:
        """Deliver ``.quotawarn.msg`` into ``maildir`` (a quota root) at most once a day (the
        mtime of its ``quotawarn`` stamp). A failure here never changes the outcome of the
        delivery."""
        stamp = join(maildir, "quotawarn")
        now = time.time()
        try:
            if now - posix.stat(stamp).st_mtime < 86400:
                return
        except OSError:
            pass
        try:
            # never through a link, never waiting on a FIFO (ENXIO: no warning today)
            fd = posix.open(stamp, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC
                            | posix.O_NOFOLLOW | posix.O_NONBLOCK | posix.O_CLOEXEC, 0o644)
            try:
                posix.utime(fd, (now, now))
            finally:
                posix.close(fd)
            template = self._site_file(".quotawarn.msg")
            if not template:
                return
            date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(now))
            trace = self.dtline if to_default else f"Delivered-To: {address}\n".encode()
            fd = posix.open(template, posix.O_RDONLY | posix.O_CLOEXEC)
            try:
                delivered = deliver(maildir, trace + f"Date: {date}\n".encode(), fd,
                                    self.config.delivery_file_sync)
            finally:
                posix.close(fd)
        except (OSError, VpopmailError):
            return
        self._uncounted(count_usage(maildir, quota, delivered.size))

    def run_program(self, command: str) -> None:
        """``/bin/sh -c command`` with the message on stdin, mapped as qmail-local maps it."""
        self.message.rewind()
        env = dict(posix.environ)  # a copy of the dict os.environb wraps, at C speed
        env[b"SHELL"] = b"/bin/sh"
        actions = [] if self.message.fd == 0 else [(posix.POSIX_SPAWN_DUP2, self.message.fd, 0)]
        try:
            pid = spawn("/bin/sh", ["/bin/sh", "-c", command], env, actions,
                        self.program_limits)
            _, status = posix.waitpid(pid, 0)
        except OSError as exc:
            raise defer(f"Unable to run /bin/sh: {exc.strerror}.") from None
        outcome = program_outcome(status)
        if outcome is not None:
            raise outcome

    def forward_header(self, address: str) -> bytes:
        """``RPLINE`` + the Delivered-To a forwarded copy carries: qmail-local's DTLINE with the
        virtual domain's ``domain-`` prefix removed, else the forward target."""
        value = self.dtline[14:].rstrip(b"\r\n") if len(self.dtline) >= 15 else b""
        local, at, host = value.rpartition(b"@")
        if at:
            prefix = host.lower() + b"-"
            if local.lower().startswith(prefix):
                local = local[len(prefix):]
            return self.rpline + b"Delivered-To: " + local + b"@" + host + b"\n"
        return self.rpline + b"Delivered-To: " + address.encode("utf-8", "surrogateescape") + b"\n"

    def inject_forwards(self) -> None:
        """Inject the collected forwards, once, after every other instruction succeeded (as
        qmail-local does): a later failure that defers the message cannot have sent a copy that
        every retry would send again. Targets sharing a Delivered-To line (all of them, under
        qmail-local, which sets DTLINE) go in one qmail-inject run."""
        groups: dict[bytes, list[str]] = {}
        for address in self.forwards:
            groups.setdefault(self.forward_header(address), []).append(address)
        self.forwards = []
        for header, addresses in groups.items():
            self.forward(header, addresses)

    def forward(self, header: bytes, addresses: list[str]) -> None:
        """Re-inject the message with ``header`` to ``addresses`` through qmail-inject (envelope
        sender from the Return-Path line, which qmail-inject removes)."""
        inject = self.config.home_path("qmail_inject")
        read, write = posix.pipe()
        try:
            pid = spawn(inject, [inject, "--", *addresses], dict(posix.environ),
                        [(posix.POSIX_SPAWN_DUP2, read, 0), (posix.POSIX_SPAWN_CLOSE, write)],
                        self.program_limits)
        except OSError as exc:
            posix.close(read)
            posix.close(write)
            # C forked, then exec'd: a qmail-inject missing or not runnable is named as such
            missing = isinstance(exc, (FileNotFoundError, PermissionError, NotADirectoryError))
            what = f"Unable to run {inject}" if missing else "Unable to fork"
            raise defer(f"{what}: {exc.strerror}.\nsystem error, can't open qmail-inject") from None
        posix.close(read)
        failure = ""
        try:
            write_message(write, header, self.message.fd)
        except OSError as exc:
            failure = f"write to qmail-inject failed: {exc.strerror}\n"
        finally:
            posix.close(write)
        _, status = posix.waitpid(pid, 0)
        outcome = program_outcome(status)
        if failure:
            raise Outcome(DEFER, failure + INJECT_FAILED + "\n")
        if outcome is not None:
            outcome.text = INJECT_FAILED + "\n"
            raise outcome


def main(argv: list[str] | None = None, *, config: str | None = None,
         program_limits: "CallerLimits | None" = None) -> int:
    """Entry point: exit code for qmail-local, text on stdout. ``program_limits``: what the
    programs it runs get (vpopmail-server's worker passes its caller's)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0] in ("--help", "--version"):  # .qmail-default gives two
        from vpopmail.cmdline import answer
        return answer(argv[0], USAGE)
    posix.umask(0o077)
    # a file-size limit must fail the write (EFBIG, then 111), not kill us mid-message
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)
    run = None
    try:
        run = Vdelivermail(vconfig.load(config), program_limits=program_limits)
        return run.run(argv)
    except Outcome as outcome:
        say(outcome.text)
        return outcome.code
    except VpopmailError as exc:
        say(f"vdelivermail: deferred: {exc}\n")
        return DEFER
    except Exception as exc:  # a bug must defer the message, never bounce or lose it
        say(f"vdelivermail: deferred after an internal error: {type(exc).__name__}: {exc}\n")
        return DEFER
    finally:
        if run is not None:
            run.message.close()
        close_stores()
