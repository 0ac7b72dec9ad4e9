"""What goes wrong, and what the programs answer: one exception hierarchy that keeps vpopmail's
numeric ``VA_*`` codes and C's texts, then the exit codes of vdelivermail and vchkpw, each named
once, with C's fixed texts.

Each class names its C constant (``VA_USER_DOES_NOT_EXIST``) in its docstring; codes from -100
down are ours, not in C vpopmail (which printed a warning, or answered "not found" for a local
fault that then bounced real mail); -108 to -113 are the alias errors of vpopmail/aliases.py.
A local fault (unreadable file, lock timeout, disk full) is a :class:`TemporaryError`: mail
must be deferred (:data:`DEFER`), never bounced, and a login answered :data:`TEMPORARY`,
never "wrong password".

Hot-path safe: imports nothing. Both hot paths import this module anyway, so the exit codes
cost no module of their own; the classes are built at import (docs/performance.md has the
cost).
"""


class VpopmailError(Exception):
    """Base of every error the library raises; ``code`` is vpopmail's VA_* number."""

    code = -1
    message = "vpopmail error"

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(f"{self.message}: {detail}" if detail else self.message)

    @property
    def status(self) -> int:
        """Exit status of the admin commands: the code's low byte (C's ``exit(verrori)``)."""
        return self.code & 0xFF


class TemporaryError(VpopmailError):
    """A local fault: defer the mail, answer "try again later"; never a bounce or a refusal."""


class IllegalUsername(VpopmailError):
    """VA_ILLEGAL_USERNAME"""
    code = -1
    message = "Illegal username"


class UsernameExists(VpopmailError):
    """VA_USERNAME_EXISTS"""
    code = -2
    message = "Username exists"


class BadDomainDir(VpopmailError):
    """VA_BAD_V_DIR"""
    code = -6
    message = "Unable to chdir to vpopmail/domains/domain directory"


class UserDirExists(VpopmailError):
    """VA_EXIST_U_DIR"""
    code = -7
    message = "User's directory already exists"


class SubdirCreation(VpopmailError):
    """VA_SUBDIR_CREATION"""
    code = -9
    message = "Creation of user's subdirectories failed"


class UserDoesNotExist(VpopmailError):
    """VA_USER_DOES_NOT_EXIST"""
    code = -10
    message = "User does not exist"


class DomainDoesNotExist(VpopmailError):
    """VA_DOMAIN_DOES_NOT_EXIST"""
    code = -11
    message = "Domain does not exist"


class InvalidDomainName(VpopmailError):
    """VA_INVALID_DOMAIN_NAME"""
    code = -12
    message = "Invalid domain name"


class DomainAlreadyExists(VpopmailError):
    """VA_DOMAIN_ALREADY_EXISTS"""
    code = -13
    message = "Domain already exists"


class CouldNotMakeDomainDir(VpopmailError):
    """VA_COULD_NOT_MAKE_DOMAIN_DIR"""
    code = -14
    message = "Could not make domain dir"


class CouldNotUpdateFile(TemporaryError):
    """VA_COULD_NOT_UPDATE_FILE"""
    code = -17
    message = "Could not update file"


class CryptFailed(VpopmailError):
    """VA_CRYPT_FAILED"""
    code = -18
    message = "Crypt failed"


class BadChar(VpopmailError):
    """VA_BAD_CHAR"""
    code = -20
    message = "bad character"


class BadUid(VpopmailError):
    """VA_BAD_UID"""
    code = -22
    message = "running as invalid uid"


class NoAuthConnection(TemporaryError):
    """VA_NO_AUTH_CONNECTION"""
    code = -23
    message = "no authentication database connection"


class UserNameTooLong(VpopmailError):
    """VA_USER_NAME_TOO_LONG"""
    code = -25
    message = "user name too long"


class DomainNameTooLong(VpopmailError):
    """VA_DOMAIN_NAME_TOO_LONG"""
    code = -26
    message = "domain name too long"


class PasswdTooLong(VpopmailError):
    """VA_PASSWD_TOO_LONG"""
    code = -27
    message = "password too long"


class GecosTooLong(VpopmailError):
    """VA_GECOS_TOO_LONG"""
    code = -28
    message = "gecos too long"


class QuotaTooLong(VpopmailError):
    """VA_QUOTA_TOO_LONG"""
    code = -29
    message = "quota too long"


class CannotReadLimits(VpopmailError):
    """VA_CANNOT_READ_LIMITS"""
    code = -36
    message = "can't read domain limits"


class CannotReadAssign(TemporaryError):
    """VA_CANNOT_READ_ASSIGN"""
    code = -37
    message = "can't read users/assign file"


class CannotDeleteCatchall(VpopmailError):
    """VA_CANNOT_DELETE_CATCHALL"""
    code = -55
    message = "can't delete catchall account"


class CorruptData(TemporaryError):
    """Ours: a damaged data file (cdb, vpasswd, assign, maildirsize)."""
    code = -100
    message = "corrupt data file"


class LockTimeout(TemporaryError):
    """Ours: a lock not obtained in time."""
    code = -101
    message = "File busy try again later!"


class ConfigError(TemporaryError):
    """Ours: an unreadable or invalid vpopmail.toml."""
    code = -102
    message = "configuration error"


class AliasDomainsExist(VpopmailError):
    """Ours: vdeldomain of a domain that still has alias domains."""
    code = -103
    message = "Alias domains exist, use -f to delete them too"


class BadInput(VpopmailError):
    """Ours: an argument or input line refused."""
    code = -104
    message = "bad input"


class DeliveryFailed(TemporaryError):
    """Ours: a Maildir write that failed (not over quota)."""
    code = -105
    message = "system error"


class OverQuota(VpopmailError):
    """Ours: the file system's quota (EDQUOT) refused a delivery."""
    code = -106
    message = "user is over quota"


class OutsideDomain(VpopmailError):
    """Ours: a path that is not a real directory of the domain."""
    code = -107
    message = "not a real directory of the domain"


class CannotServe(VpopmailError):
    """Ours: vpopmail-server cannot make its socket (a bad path or directory, a server already
    there, a user who may not). The text is the whole message: the program names itself
    before it, and a "vpopmail error" between says nothing."""
    code = -114
    message = "cannot serve"

    def __str__(self) -> str:
        return self.detail or self.message


class LimitReached(VpopmailError):
    """Ours: a domain administrator's addition past a limit of the domain (maxpopaccounts,
    maxforwards), refused as qmailadmin refuses it."""
    code = -115
    message = "Domain limit reached"


def explain(exc: VpopmailError, program: str) -> str:
    """``exc``'s text for an operator; a permission refused to a process not running as root
    (an ordinary user, or the vpopmail user, in a root installation) says so and names the
    fix, ``run PROGRAM as root``: a "corrupt data file" would send the operator looking for
    damage. The admin commands and vpopmaild answer with it."""
    cause = exc.__context__
    if not isinstance(cause, PermissionError):
        return str(exc)
    import posix  # built in; only on this error path

    euid = posix.geteuid()
    if euid == 0:
        return str(exc)
    text = str(exc)
    if isinstance(exc, CorruptData) and cause.filename:
        text = f"{cause.strerror}: {cause.filename}"
    elif isinstance(exc, CorruptData):
        text = exc.detail
    return f"{text} (uid {euid}): run {program} as root"


# Outcomes: vdelivermail -> qmail-local, which reads only the exit code and what was printed on
# stdout (qmail-send logs the text, or puts it in the bounce) ----------------------------------
DELIVERED = 0
#: delivered, and qmail-local reads no further instructions of the .qmail file (a program's 99)
STOP = 99
#: a permanent failure: qmail-send bounces the message with the text printed
BOUNCE = 100
#: a temporary failure, and every local fault: qmail-send tries again later
DEFER = 111

NO_MAILBOX = "Sorry, no mailbox here by that name. (#5.1.1)"  # BOUNCE (or .no-user.msg)
LOOPING = "mail is looping"  # BOUNCE
OVER_QUOTA = "user is over quota"  # BOUNCE (or .over-quota.msg)
BAD_SYNTAX = "vdelivermail: invalid syntax in .qmail-default file"  # DEFER
SYSTEM_ERROR = "system error"  # DEFER: the Maildir write failed
INJECT_FAILED = "system error calling qmail-inject"  # DEFER, or qmail-inject's own exit code
VALIASES_DONE = "vdelivermail: valiases processed"  # DELIVERED
DATABASE_DOWN = "vdelivermail: deferred, database down"  # DEFER

# Outcomes: vchkpw -> the POP3/IMAP server or SMTP AUTH (checkpassword; after a good login it
# execs the next program, whose exit code is the answer) ---------------------------------------
REJECTED = 1
MISUSE = 2
#: Dovecot's "unknown user", for its userdb lookups (AUTHORIZED=1) only
DOVECOT_NO_USER = 3
#: a temporary failure, and every local fault (C vpopmail answered 3, "wrong password")
TEMPORARY = 111
