"""vchkpw: the checkpassword program of POP3/IMAP servers and SMTP AUTH (``vchkpw prog args``).

The server writes ``login\\0password\\0timestamp\\0`` (at most 512 bytes) on fd 3. On success
vchkpw execs ``prog`` as the domain's owner, in the user's directory, with HOME, USER,
SHELL=NOLOGIN and VPOPUSER set, as C vpopmail 5.4 does (for SMTP AUTH with no change of uid or
directory). Exit codes follow the checkpassword convention servers understand: 1 rejected, 2
misuse, 111 temporary failure (C vpopmail said 3 for "backend down", so a broken cdb locked
everyone out). vpopmail's detailed reason goes to syslog, with its tags
(``vchkpw-pop3: password fail bob@example.com:192.0.2.7``); passwords only at the log levels
that ask for them (p, v).

Privileges: started as root, vchkpw switches its effective ids to the domain's owner as soon
as it knows the domain, so the user database, lastauth and Maildir are touched only with that
uid's rights, and to the vpopmail owner for the open-smtp files; the final setuid is done just
before the exec.

Dovecot's checkpassword driver (recognised by ``ORIG_UID`` in the environment) gets what it
documents: no setuid (its checkpassword-reply refuses to run after one), the uid and gid as
``userdb_uid``/``userdb_gid`` extra fields instead, USER as the full address, ``AUTHORIZED=2``
for its userdb lookups (``AUTHORIZED=1``, no password) and exit 3 for an unknown user there.

This is the login hot path: lean imports; hashes go through the C library's crypt().
"""
import posix

from vpopmail.passwords import dummy_check, is_locked, verify_password
from vpopmail import assign, environ_text
from vpopmail import config as vconfig
from vpopmail.assign import AssignEntry
from vpopmail.errors import DOVECOT_NO_USER, MISUSE, REJECTED, TEMPORARY, VpopmailError
from vpopmail.flags import NO_IMAP, NO_POP, NO_RELAY, NO_SMTP, NO_WEBMAIL, V_OVERRIDE
from vpopmail.fsutil import join
from vpopmail.names import is_valid_domain, is_valid_user, split_address
from vpopmail.stores import VUser, close_stores, open_stores
from vpopmail.syslog_client import LOG_ERR, Syslog, printable

MAX_INPUT = 512
POP, SMTP, IMAP, WEBMAIL = "pop", "smtp", "imap", "webmail"
#: TCPLOCALPORT -> (log tag, service), as C vpopmail
PORTS = {"25": ("smtp", SMTP), "465": ("smtps", SMTP), "587": ("submission", SMTP),
         "110": ("pop3", POP), "995": ("pop3s", POP), "143": ("imap", IMAP),
         "993": ("imaps", IMAP)}
#: Dovecot's SERVICE -> service (SERVICE=doveadm etc. fall back to C's guess)
DOVECOT_SERVICES = {"pop3": POP, "imap": IMAP, "smtp": SMTP, "submission": SMTP}
DENIED = {POP: (NO_POP, "pop"), SMTP: (NO_SMTP, "smtp"), IMAP: (NO_IMAP, "imap"),
          WEBMAIL: (NO_WEBMAIL, "webmail")}
LOCALHOST = frozenset({"127.0.0.1", "::ffff:127.0.0.1", "::1"})
IP_CHARS = frozenset("0123456789abcdefABCDEF.:")
#: logging.level -> (log failed passwords, log successes, include the password)
LEVELS = {"n": (False, False, False), "e": (True, False, False), "y": (True, True, False),
          "p": (True, False, True), "v": (True, True, True)}
# "runnning" (sic): C's text, which log watchers may match
MISUSE_TEXT = ("vchkpw is only for talking with qmail-popup and qmail-pop3d. "
               "It is not for runnning on the command line.")
USAGE = """\
vchkpw: usage: vchkpw program [args...]
The checkpassword program of POP3/IMAP servers and SMTP AUTH (qmail-popup host vchkpw
qmail-pop3d Maildir). It reads login\\0password\\0timestamp\\0 on file descriptor 3 and,
if the password is right, runs program as the domain's owner in the user's directory with
HOME, USER, SHELL=NOLOGIN and VPOPUSER set. Exit status: 1 rejected, 2 misuse, 111
temporary failure (the program's own status after a successful login).
"""


class Finish(Exception):
    """Ends the run with exit ``code``; ``text`` goes to syslog (always, or only for the
    password class of messages when ``password_class``)."""

    def __init__(self, code: int, text: str = "", password_class: bool = False) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.password_class = password_class


def read_input(fd: int = 3) -> bytes:
    """Everything the server wrote on ``fd`` (at most MAX_INPUT bytes), then close it."""
    data = b""
    try:
        while len(data) <= MAX_INPUT:
            chunk = posix.read(fd, MAX_INPUT + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        try:
            posix.close(fd)
        except OSError:
            pass
    return data


def parse_input(data: bytes) -> tuple[str, str, str]:
    """(login, secret, timestamp) from checkpassword input; Finish(2) for malformed input."""
    if len(data) > MAX_INPUT:
        raise Finish(MISUSE, f"input on fd 3 longer than {MAX_INPUT} bytes")
    fields = data.split(b"\0")
    if len(fields) < 3:
        raise Finish(MISUSE, "input on fd 3 is not login\\0password\\0")
    login, secret, stamp = (f.decode("utf-8", "surrogateescape") for f in fields[:3])
    return login, secret, stamp


def remote_ip(environ: dict[str, str]) -> str:
    """The client's address as the server gave it (TCPREMOTEIP, else REMOTE_HOST); anything
    that is not an IP address is kept with its odd characters made ``_``."""
    ip = (environ.get("TCPREMOTEIP") or environ.get("REMOTE_HOST") or "")[:64]
    return ip if IP_CHARS.issuperset(ip) else "".join(c if c in IP_CHARS else "_" for c in ip)


def detect_service(environ: dict[str, str], program: str, ip: str) -> tuple[str, str]:
    """(service, log tag) the way C vpopmail guesses it, with Dovecot's SERVICE as a hint."""
    port = environ.get("TCPLOCALPORT") or "0"
    if port in PORTS:
        tag, service = PORTS[port]
    elif environ.get("SERVICE", "") in DOVECOT_SERVICES:
        tag = environ["SERVICE"]
        service = DOVECOT_SERVICES[tag]
    else:
        tag = port
        service = SMTP if "true" in program else IMAP if "imap" in program else POP
    if service != SMTP and ip in LOCALHOST:
        return WEBMAIL, "webmail"
    return service, tag


class Vchkpw:
    """One login. ``environ`` is the server's environment (str values)."""

    def __init__(self, config: vconfig.Config, environ: dict[str, str] | None = None) -> None:
        self.config = config
        self.environ = environ_text() if environ is None else dict(environ)
        self.ip = remote_ip(self.environ)
        self.dovecot = "ORIG_UID" in self.environ
        self.lookup_only = self.dovecot and self.environ.get("AUTHORIZED") == "1"
        self.log = Syslog(config.logging_log_name, config.logging_syslog_socket)
        self.levels = LEVELS.get(config.logging_level, LEVELS["e"])
        self.tag = "vchkpw-0"
        self.address = ""
        self.stores = open_stores(config)  # opened at first use (one server connection for SQL)
        self.secret = ""
        self.relay_allowed = False
        self.root = posix.geteuid() == 0
        self.groups = posix.getgroups() if self.root else []
        self.ids = (posix.getegid(), posix.geteuid())

    # -- the run ------------------------------------------------------------------------------
    def run(self, argv: list[str], fd: int = 3) -> int:
        """Authenticate and exec ``argv[1:]``; return an exit code if there is no exec."""
        program = argv[1] if len(argv) > 1 else ""
        try:
            try:
                data = read_input(fd)
            except OSError:
                to_stderr(f"{self.tag}: {MISUSE_TEXT}")
                return MISUSE
            login, self.secret, stamp = parse_input(data)
            service, tag = detect_service(self.environ, program, self.ip)
            self.tag = f"vchkpw-{tag}"
            if not program:
                raise Finish(MISUSE, "no program to run after the login")
            entry, user = self.authenticate(login, stamp, service)
            self.succeed(entry, user, login.lower(), service, argv[1:])
        except Finish as end:
            line = f"{self.tag}: {end.text} {self.address}:{self.ip}"
            if end.text and (self.levels[0] or not end.password_class):
                self.log.send(line, LOG_ERR if end.code == TEMPORARY else 5)
                self.sql_log(end.text, end.code)
            if end.text and end.code in (TEMPORARY, MISUSE):
                # a local fault or a misuse: also where the operator looks first (the
                # server's log; a shell), whether or not a syslog daemon listens
                shown = line if self.address else f"{self.tag}: {end.text}"
                to_stderr(printable(shown))
            return end.code
        return TEMPORARY  # not reached: succeed() execs or raises

    def authenticate(self, login: str, stamp: str, service: str) -> tuple[AssignEntry, VUser]:
        """The domain and user of a login whose password (or digest) is right."""
        if not login:
            raise Finish(REJECTED, "null user name given")
        name, domain = self.split_login(login)
        self.address = f"{name}@{domain}"
        if not self.secret and not self.lookup_only:
            raise Finish(REJECTED, "null password given", password_class=True)
        if not name or not domain:
            raise self.not_found()
        if not is_valid_user(name) or not is_valid_domain(domain):
            raise Finish(REJECTED, "invalid user/domain characters", password_class=True)
        entry, user = None, None
        try:
            backend = self.stores.users  # before the domain: same cost either way
            entry = assign.lookup(self.config.qmail_dir, domain)
            if entry is not None:
                self.become(entry.uid, entry.gid)
                user = backend.get_user(entry, name)
        except (OSError, VpopmailError) as exc:
            raise Finish(TEMPORARY, f"user database unreadable ({exc})") from None
        if entry is None or user is None:
            raise self.not_found()
        if self.lookup_only:
            if self.environ.get("CREDENTIALS_LOOKUP"):
                raise Finish(TEMPORARY, "credentials lookups are not supported")
            return entry, user
        method = self.check_secret(entry, user, stamp, service)
        self.check_access(entry, user, service)
        if self.levels[1]:
            self.log.send(f"{self.tag}: ({method}) login success {self.address}:{self.ip}")
            self.sql_log(f"({method}) login success", 0)
        return entry, user

    def sql_log(self, text: str, code: int) -> None:
        """C's --enable-sql-logging (mysql.sql_logging): what goes to syslog also becomes a
        ``vlog`` row (``error`` = our exit code; the password only at levels p and v, as in
        syslog). C inserted password failures twice; here each event is one row."""
        name, _, domain = self.address.partition("@")
        try:
            log = self.stores.auth_log
            if log is None:
                return
            log.log_event(name, domain, self.address, self.ip, f"{self.tag}: {text}", code,
                          self.secret if self.levels[2] else "")
        except (OSError, VpopmailError) as exc:
            self.log.send(f"{self.tag}: could not write vlog ({exc}) {self.address}:{self.ip}",
                          LOG_ERR)

    def not_found(self) -> Finish:
        """The rejection of an unknown user or domain. The password is first checked against
        a fixed dummy hash of the configured scheme, so that the answer takes as long as a
        wrong password's and its timing does not tell which users exist (C vpopmail's did)."""
        if self.lookup_only:
            return Finish(DOVECOT_NO_USER, "vpopmail user not found")
        self.waste_a_check()
        return Finish(REJECTED, "vpopmail user not found")

    def waste_a_check(self) -> None:
        """Check the password against the dummy hash (the cost of a wrong password)."""
        dummy_check(self.secret, self.config.passwords_scheme)

    def split_login(self, login: str) -> tuple[str, str]:
        name, domain = split_address(login)
        if not domain and not any(c in login for c in "@%/"):
            from vpopmail.ipmap import default_domain

            domain = default_domain(self.config, self.environ,
                                    self.environ.get("TCPLOCALIP", ""))
        return name, domain

    def check_secret(self, entry: AssignEntry, user: VUser, stamp: str, service: str) -> str:
        """How the login proved itself (APOP, CRAM-MD5 or PLAIN); Finish(1) if it did not.
        An empty hash refuses every method unless learn_passwords is on (as C); a locked one
        (:func:`is_locked`) every method, where C let a digest of the clear text in."""
        if not user.passwd and not self.config.passwords_learn_passwords:
            self.waste_a_check()
            raise Finish(REJECTED, "user has no password", password_class=True)
        if user.clear and stamp and service in (POP, SMTP) and not is_locked(user.passwd):
            from vpopmail.passwords import check_challenge

            kind = "APOP" if service == POP else "CRAM-MD5"
            if check_challenge(kind, user.clear, stamp, self.secret):
                return kind
        if not user.passwd:
            self.store_password(entry, user, learn=True)
            return "PLAIN"
        if not verify_password(self.secret, user.passwd, self.config.passwords_scheme):
            shown = f" (pass: '{self.secret}')" if self.levels[2] else ""
            raise Finish(REJECTED, f"password fail{shown}", password_class=True)
        learn = (self.config.passwords_learn_passwords and
                 self.config.passwords_clear_passwords and not user.clear)
        if learn or self.config.passwords_rehash_on_login:
            self.store_password(entry, user, learn)
        return "PLAIN"

    def store_password(self, entry: AssignEntry, user: VUser, learn: bool) -> None:
        """Store the proven password: as the hash where there is none or (rehash_on_login) it
        is of another scheme, and (``learn`` with clear passwords on) as clear text where that
        is empty. A failure to store is logged; the login goes on."""
        from vpopmail.passwords import hash_password, needs_rehash

        scheme = self.config.passwords_scheme
        changed = user.copy()
        try:
            if not user.passwd or (self.config.passwords_rehash_on_login
                                   and needs_rehash(user.passwd, scheme)):
                changed.passwd = hash_password(self.secret, scheme)
            if learn and self.config.passwords_clear_passwords and not user.clear:
                changed.clear = self.secret
            if (changed.passwd, changed.clear) != (user.passwd, user.clear):
                self.stores.users.modify_users(
                    entry, [user.name], lambda u: u.copy(passwd=changed.passwd, clear=changed.clear))
        except (OSError, VpopmailError) as exc:  # CryptFailed included
            self.log.send(f"{self.tag}: could not store the password ({exc}) "
                          f"{self.address}:{self.ip}", LOG_ERR)

    def check_access(self, entry: AssignEntry, user: VUser, service: str) -> None:
        """The user's flags, ORed with the domain limits unless V_OVERRIDE, allow ``service``."""
        flags = user.flags
        if not flags & V_OVERRIDE:
            try:
                flags |= self.stores.domain_limits(entry).flag_mask
            except VpopmailError as exc:
                raise Finish(TEMPORARY, f"domain limits unreadable ({exc})") from None
        bit, name = DENIED[service]
        if flags & bit:
            raise Finish(REJECTED, f"{name} access denied")
        self.relay_allowed = service != SMTP and not flags & NO_RELAY

    # -- after the password -------------------------------------------------------------------
    def succeed(self, entry: AssignEntry, user: VUser, login: str, service: str,
                command: list[str]) -> None:
        """lastauth, the relay opening, the environment, the final ids, then exec."""
        if (self.root and entry.uid == 0 and service != SMTP and not self.dovecot
                and not self.config.root_logins):
            # what the front end refuses in a plan (VPS_ALLOW_ROOT), refused here before
            # anything is written: the same answer directly, through the server, and whatever
            # groups the caller holds (a plan that keeps the caller's ids is not checked there)
            raise Finish(TEMPORARY, "the domain's owner is uid 0: logins as root are refused "
                                    "(server.root_logins is off)")
        if not self.lookup_only:
            user = self.ensure_home(entry, user)
            if self.config.logging_auth_logging:
                try:
                    self.stores.users.record_login(entry, user, self.ip)
                except (OSError, VpopmailError) as exc:
                    self.log.send(f"{self.tag}: could not record the login ({exc}) "
                                  f"{self.address}:{self.ip}", LOG_ERR)
            if self.relay_allowed and self.ip and self.config.relay_roaming_users:
                self.open_relay()
        env = self.environ
        env.update(HOME=user.dir, SHELL="NOLOGIN", VPOPUSER=login,
                   USER=f"{user.name}@{entry.real_domain}" if self.dovecot else user.name)
        if self.dovecot:
            env["userdb_uid"], env["userdb_gid"] = str(entry.uid), str(entry.gid)
            env["EXTRA"] = " ".join([*env.get("EXTRA", "").split(), "userdb_uid", "userdb_gid"])
            if self.lookup_only:
                env["AUTHORIZED"] = "2"
        self.final_ids(entry, user, service)
        self.exec(command, env)

    def ensure_home(self, entry: AssignEntry, user: VUser) -> VUser:
        from maildir import is_maildir

        if user.dir and is_maildir(join(user.dir, "Maildir")):
            return user
        from vpopmail.api import Vpopmail

        try:
            return Vpopmail(self.config).ensure_home(entry, user)
        except (OSError, VpopmailError) as exc:
            raise Finish(TEMPORARY, f"cannot make the user directory ({exc})") from None

    def open_relay(self) -> None:
        """Record the client's IP for POP-before-SMTP; never fails the login."""
        try:
            self.become(self.config.uid, self.config.gid)
            self.stores.relay().open_relay(self.ip)
        except (OSError, VpopmailError) as exc:
            self.log.send(f"{self.tag}: relay not opened ({exc}) {self.address}:{self.ip}",
                          LOG_ERR)

    def become(self, uid: int, gid: int) -> None:
        """Switch the effective ids (root only; the real ids stay, for the final step)."""
        if not self.root or (posix.geteuid(), posix.getegid()) == (uid, gid):
            return
        posix.seteuid(0)
        posix.setgroups([gid])
        posix.setegid(gid)
        posix.seteuid(uid)

    def take_back_ids(self) -> None:
        """Root: back to the effective ids and groups we were started with."""
        posix.seteuid(0)
        posix.setgroups(self.groups)
        posix.setegid(self.ids[0])
        posix.seteuid(self.ids[1])

    def final_ids(self, entry: AssignEntry, user: VUser, service: str) -> None:
        """POP/IMAP/webmail: become the domain owner for good and enter the user directory.
        SMTP AUTH and Dovecot: back to the ids we were started with."""
        try:
            if self.root:
                if service == SMTP or self.dovecot:
                    self.take_back_ids()
                    return
                posix.seteuid(0)
                posix.setgroups([])
                posix.setgid(entry.gid)
                posix.setuid(entry.uid)
            if service != SMTP and not self.dovecot:
                posix.chdir(user.dir)
        except OSError as exc:
            raise Finish(TEMPORARY, f"cannot become uid {entry.uid} in {user.dir} ({exc})") from None

    def exec(self, command: list[str], env: dict[str, str]) -> None:
        import _signal

        for signum in (_signal.SIGPIPE, _signal.SIGXFSZ):
            _signal.signal(signum, _signal.SIG_DFL)
        self.log.close()
        close_stores()
        try:
            exec_path(command, env)
        except OSError as exc:
            for signum in (_signal.SIGPIPE, _signal.SIGXFSZ):  # as Python had them: the
                _signal.signal(signum, _signal.SIG_IGN)  # reason's write must not kill us
            raise Finish(TEMPORARY, f"cannot run {command[0]} ({exc.strerror})") from None


def exec_candidates(name: str, env: dict[str, str]) -> list[str]:
    """Where ``os.execvpe`` looks for ``name``: itself if it holds a ``/``, else in each
    directory of ``env``'s PATH (``/bin:/usr/bin`` without one), in order."""
    if "/" in name:
        return [name]
    return [join(directory, name) for directory in env.get("PATH", "/bin:/usr/bin").split(":")]


def exec_path(argv: list[str], env: dict[str, str]) -> None:
    """``os.execvpe(argv[0], argv, env)`` (see :func:`exec_candidates`); raises the first
    error that is not "not there" (EACCES, ENOEXEC...), else the last."""
    first: OSError | None = None
    last: OSError | None = None
    for candidate in exec_candidates(argv[0], env):
        try:
            posix.execve(candidate, argv, env)
        except (FileNotFoundError, NotADirectoryError) as exc:
            last = exc
        except OSError as exc:
            last = exc
            first = first or exc
    assert last is not None  # at least one candidate
    raise first or last


def main(argv: list[str] | None = None, *, config: str | None = None,
         runner: type[Vchkpw] = Vchkpw, environ: dict[str, str] | None = None) -> int:
    """Entry point; ``runner``: the Vchkpw class (vpopmail-server's returns an exec plan);
    ``environ``: the server's variables when they are not this process's environment."""
    import sys

    argv = sys.argv if argv is None else argv
    if len(argv) == 2 and argv[1] in ("--help", "--version") and not _fd_open(3):
        # only by hand: with fd 3 open (a server's login), "--help" is the program to run
        from vpopmail.cmdline import answer
        return answer(argv[1], USAGE)
    try:
        settings = vconfig.load(config)
    except VpopmailError as exc:
        to_stderr(f"vchkpw: {exc}")
        return TEMPORARY
    try:
        return runner(settings, environ).run(argv)
    except Exception as exc:  # a bug must not read as "wrong password" (Python exits 1)
        to_stderr(f"vchkpw: internal error: {type(exc).__name__}: {exc}")
        return TEMPORARY
    finally:
        close_stores()


def to_stderr(line: str) -> None:
    """Write ``line`` to stderr; a closed stderr, or a pipe whose reader is gone, is passed
    over: the exit code is the answer (an OSError here would end the run with 1, which the
    caller reads as a wrong password)."""
    try:
        posix.write(2, f"{line}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def _fd_open(fd: int) -> bool:
    try:
        posix.fstat(fd)
    except OSError:
        return False
    return True
