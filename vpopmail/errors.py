"""One exception hierarchy that keeps vpopmail's numeric ``VA_*`` codes and C's texts.

Each class names its C constant (``VA_USER_DOES_NOT_EXIST``) in its docstring; codes from -100
down are ours, not in C vpopmail (which printed a warning, or answered "not found" for a local
fault that then bounced real mail); -108 to -113 are the alias errors of vpopmail/aliases.py.
A local fault (unreadable file, lock timeout, disk full) is a :class:`TemporaryError`: mail
must be deferred (111), never bounced, and a login answered "try again", never "wrong password".

Hot-path safe: imports nothing. Defining the classes costs about as much as the lazy table it
replaced did on first use (the README's Performance section has the figures).
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
