"""vpopmaild's session: the greeting, logging in (three levels, as C), dispatch and help.

Levels as C's: 1 a user (their own account), 2 a domain administrator (postmaster, or the
QA_ADMIN flag; within their domain), 3 a system administrator (SA_ADMIN). A command above the
session's level is "Invalid Command", as in C; each command then makes C's own checks.
"""
from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Mapping

from vpopmail.passwords import dummy_check, verify_password
from auth.vchkpw import LEVELS, remote_ip
from vpopmail.api import Vpopmail
from vpopmail.assign import AssignEntry
from vpopmail.errors import TemporaryError, VpopmailError, explain
from vpopmail.flags import QA_ADMIN, SA_ADMIN
from vpopmail.names import is_valid_domain, is_valid_user, split_address
from vpopmail.stores import VUser
from vpopmail.syslog_client import LOG_ERR, LOG_NOTICE, Syslog
from vpopmail.vpopmaild.protocol import (END, OK, OK_MORE, PASS_TOKENS,
                                         BadLine, Channel, Hangup, Refusal, Tokens)

USER, DOMAIN_ADMIN, SYSTEM_ADMIN = 1, 2, 3
EXPANDED, COMPACT, SILENT = 0, 1, 2
#: C's LOGIN_ACTIVITY (requests before a login) and the failed logins that drop the
#: connection (C 5.4.33 was observed to drop it on the third)
MAX_ATTEMPTS = 4
MAX_FAILURES = 3

#: (name, text of its 0/1 line) in the order C's send_user_info prints them
FLAG_LINES = (
    (0x01, "no_password_change"), (0x02, "no_pop"), (0x04, "no_webmail"), (0x08, "no_imap"),
    (0x10, "bounce_mail"), (0x20, "no_relay"), (0x40, "no_dialup"), (0x80, "user_flag_0"),
    (0x100, "user_flag_1"), (0x200, "user_flag_2"), (0x400, "user_flag_3"), (0x800, "no_smtp"),
    (QA_ADMIN, "domain_admin_privileges"), (0x2000, "override_domain_limits"),
    (0x4000, "no_spamassassin"), (0x8000, "delete_spam"), (0x40000, "no_maildrop"),
    (SA_ADMIN, "system_admin_privileges"),
)

Handler = Callable[["Session", Tokens], None]


class Session:
    """One connection: who is logged in, at which level, and the API they act through."""

    def __init__(self, api: Vpopmail, channel: Channel) -> None:
        self.api = api
        self.channel = channel
        self.level = 0
        self.output = EXPANDED
        self.user: VUser | None = None
        self.entry: AssignEntry | None = None
        self.flags = 0
        config = api.config
        self.log = Syslog(config.logging_log_name, config.logging_syslog_socket)
        #: (log failures, log successes, show the password), as vchkpw reads logging.level
        self.levels = LEVELS.get(config.logging_level, LEVELS["e"])
        self.ip = remote_ip(dict(os.environ))

    # -- who may do what (C's AuthVpw.pw_gid tests) -------------------------------------------

    @property
    def system_admin(self) -> bool:
        return bool(self.flags & SA_ADMIN)

    @property
    def domain_admin(self) -> bool:
        """A domain administrator who is not a system administrator."""
        return bool(self.flags & QA_ADMIN) and not self.system_admin

    def require_admin(self, minor: int) -> None:
        """C's "QA or SA" test: a plain user is Not Authorized."""
        if not self.flags & (QA_ADMIN | SA_ADMIN):
            raise Refusal(9, minor)

    def require_system_admin(self, minor: int) -> None:
        if not self.system_admin:
            raise Refusal(9, minor)

    def real_domain(self, domain: str) -> str:
        """The real domain ``domain`` names (an alias domain resolves), else itself."""
        try:
            entry = self.api.find_domain(domain)
        except VpopmailError:
            return domain.lower()
        return entry.real_domain if entry is not None else domain.lower()

    def own_domain(self, domain: str) -> bool:
        assert self.entry is not None
        return self.real_domain(domain) == self.entry.real_domain

    def check_domain(self, domain: str, major: int, minor: int) -> None:
        """A domain administrator acts on their own domain only."""
        if self.domain_admin and not self.own_domain(domain):
            raise Refusal(major, minor)

    def may_manage(self, user: VUser) -> bool:
        """False for a domain administrator facing a system administrator's account (C let
        the domain's postmaster read its password, set it, or delete it)."""
        return not (self.domain_admin and user.flags & SA_ADMIN)

    def check_account(self, user: VUser, minor: int) -> None:
        if not self.may_manage(user):
            raise Refusal(9, minor, "Not Authorized: a system administrator's account")

    def find_user(self, name: str, domain: str, missing: Refusal) -> tuple[VUser, AssignEntry]:
        """The user ``name@domain`` and its domain; ``missing`` (the command's own answer) when
        either does not exist. A temporary fault is raised as it is (``-ERR 0.100``)."""
        try:
            return self.api.get_user(f"{name}@{domain}")
        except TemporaryError:
            raise
        except VpopmailError:
            raise missing from None

    def is_me(self, name: str, domain: str) -> bool:
        assert self.user is not None
        return name == self.user.name and self.own_domain(domain)

    def address(self, tokens: Tokens, minors: tuple[int, int]) -> tuple[str, str]:
        """(user, domain) of the next token: Email Address Required / Invalid Email Address
        (an empty part, or a character C's parse_email refuses: before any other check)."""
        text = tokens.next()
        if text is None:
            raise Refusal(6, minors[0])
        name, domain = split_address(text, self.api.default_domain())
        if not (is_valid_user(name) and is_valid_domain(domain)) or not name:
            raise Refusal(10, minors[1])
        return name, domain

    # -- answers -----------------------------------------------------------------------------

    def send(self, *lines: str) -> None:
        self.channel.send(*lines)

    def user_lines(self, user: VUser, flags: int | None = None) -> list[str]:
        """C's send_user_info: the fields (a system administrator's password fields empty for a
        domain administrator), then the flags (one line each, or ``gidflags`` after
        clogin/slogin)."""
        value = user.flags if flags is None else flags
        passwd, clear = (user.passwd, user.clear) if self.may_manage(user) else ("", "")
        lines = [f"name {user.name}", f"comment {user.gecos}", f"quota {user.quota}",
                 f"user_dir {user.dir}", f"encrypted_password {passwd}",
                 f"clear_text_password {clear}"]
        if self.output != EXPANDED:
            return [*lines, f"gidflags {value}"]
        return [*lines, *(f"{name} {int(bool(value & bit))}" for bit, name in FLAG_LINES)]

    # -- logging in ----------------------------------------------------------------------------

    def note(self, text: str, address: str, severity: int = LOG_NOTICE) -> None:
        """A login event in syslog, in vchkpw's form: ``vpopmaild: text user@domain:ip``."""
        self.log.send(f"vpopmaild: {text} {address}:{self.ip}", severity)

    def login(self, tokens: Tokens, output: int) -> bool | None:
        """True: logged in; False: a failed login (counted); None: a parameter was missing."""
        email = tokens.next()
        if email is None:
            self.send(str(Refusal(6, 203)))
            return None
        password = tokens.next(PASS_TOKENS)
        if password is None:
            self.send(str(Refusal(7, 204)))
            return None
        name, domain = split_address(email, self.api.default_domain())
        address = f"{name}@{domain}"
        if not name or not domain:
            if self.levels[0]:
                self.note("vpopmail user not found", address)
            self.send(str(Refusal(8, 205)))
            return False
        try:
            entry = self.api.find_domain(domain)
            user = self.api.backend.get_user(entry, name) if entry and is_valid_user(name) \
                else None
        except TemporaryError as exc:
            text = explain(exc, "vpopmaild")
            self.note(f"user database unreadable ({text})", address, LOG_ERR)
            self.send(str(Refusal(1, 206, f"Can't open authentication database: {text}")))
            return None
        except VpopmailError:
            entry = user = None
        if user is None:
            # the cost of a wrong password, and its answer: who exists does not show
            dummy_check(password, self.api.config.passwords_scheme)
            if self.levels[0]:
                self.note("vpopmail user not found", address)
            self.send(str(Refusal(8, 207)))
            return False
        if not verify_password(password, user.passwd, self.api.config.passwords_scheme):
            if self.levels[0]:
                shown = f" (pass: '{password}')" if self.levels[2] else ""
                self.note(f"password fail{shown}", address)
            self.send(str(Refusal(8, 207)))
            return False
        assert entry is not None
        if self.levels[1]:
            self.note("(PLAIN) login success", address)
        self.user, self.entry, self.output = user, entry, output
        self.flags = user.flags
        if self.flags & SA_ADMIN:
            self.level = SYSTEM_ADMIN
        elif self.flags & QA_ADMIN or user.name == "postmaster":
            self.flags |= QA_ADMIN
            self.level = DOMAIN_ADMIN
        else:
            self.level = USER
        if output == SILENT:
            self.send(OK)
        else:
            self.send(OK_MORE, f"vpopmail_dir {self.api.config.home}", f"domain_dir {entry.dir}",
                      f"uid {entry.uid}", f"gid {entry.gid}",
                      *self.user_lines(user, self.flags), END)
        return True

    def before_login(self) -> None:
        """C's first loop: up to MAX_ATTEMPTS requests (blank ones count, as in C) and
        MAX_FAILURES failed logins, then the connection is dropped."""
        failures = 0
        for _ in range(MAX_ATTEMPTS):
            command, tokens = self.request(103)
            if not command:
                continue
            if command in LOGIN_COMMANDS:
                result = self.login(tokens, LOGIN_COMMANDS[command])
                if result:
                    return
                if result is False:
                    failures += 1
                    if failures >= MAX_FAILURES:
                        raise Hangup(str(Refusal(5, 105)), 1)
            elif command == "help":
                self.help(LOGIN_HELP)
            elif command in QUIT:
                raise Hangup(OK)
            else:
                self.send(str(Refusal(4, 104)))
        raise Hangup(str(Refusal(5, 102)), 1)

    def request(self, timeout_minor: int) -> tuple[str, Tokens]:
        """The next request's command (lower case; "" for a blank or refused line) and the
        tokens after it. The database connections rest meanwhile, for the next command to
        check (the server closes one idle longer than its wait_timeout)."""
        self.api.backend.release()
        try:
            line = self.channel.read_line()
        except TimeoutError:
            raise Hangup(str(Refusal(3, timeout_minor)), 1) from None
        except BadLine as exc:
            self.send(str(Refusal(4, 108, f"Invalid Command: {exc}")))
            line = ""
        tokens = Tokens(line)
        return (tokens.next() or "").lower(), tokens

    def serve(self, commands: Mapping[str, tuple[int, Handler]],
              help_table: list[tuple[int, str, str]]) -> None:
        """Greet, log in, then answer requests until quit, the end of input or a timeout:
        ``commands`` maps a command to the level it needs and its handler, ``help_table``
        lists (level, name, usage) for help."""
        self.send(OK)
        self.before_login()
        while True:
            command, tokens = self.request(106)
            if not command:
                continue
            if command in QUIT:
                raise Hangup(OK)
            if command == "help":
                self.help([(level, name, text) for level, name, text in help_table
                           if level <= self.level])
                continue
            wanted = commands.get(command)
            if wanted is None or wanted[0] > self.level:
                self.send(str(Refusal(4, 107)))
                continue
            self.run(wanted[1], tokens)

    def run(self, handler: Handler, tokens: Tokens) -> None:
        try:
            handler(self, tokens)
        except Refusal as exc:
            self.send(str(exc))
        except VpopmailError as exc:
            self.send(f"-ERR 0.100 {explain(exc, 'vpopmaild')}")
        except Hangup:
            raise
        except TimeoutError:  # the client stopped in the middle of the command's lines
            raise Hangup(str(Refusal(3, 106)), 1) from None
        except Exception:  # noqa: BLE001 - an answer, and the reason in tcpserver's log
            traceback.print_exc(file=sys.stderr)
            self.send("-ERR 0.100 internal error")

    def help(self, table: list[tuple[int, str, str]]) -> None:
        """C's help: headings after a blank line, ``command usage`` lines, then ``.``."""
        lines = [OK_MORE]
        for _, name, text in table:
            lines += ["", name] if not text else [f"{name} {text}"]
        self.send(*lines, END)


LOGIN_COMMANDS = {"login": EXPANDED, "clogin": COMPACT, "slogin": SILENT}
QUIT = ("quit", "exit", "q")
#: C's LoginFunctions, as help shows it before a login
LOGIN_HELP = [
    (0, "Login", ""),
    (0, "login", "login user@domain password - expanded bitmaps"),
    (0, "clogin", "login user@domain password - compact bitmapts"),
    (0, "slogin", "login user@domain password - silent results"),
    (0, "Utility", ""), (0, "help", "help"), (0, "exit", "quit"), (0, "quit", "quit"),
    (0, "q", "quit"),
]
