"""One exception hierarchy that keeps vpopmail's numeric ``VA_*`` codes.

Hot-path safe: imports nothing.
"""

class VpopmailError(Exception):
    """Base of every error the library raises; ``code`` is vpopmail's VA_* number."""

    code = -1
    message = "vpopmail error"
    #: A local fault (unreadable file, lock timeout, disk full): mail must be deferred, not bounced.
    temporary = False

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(f"{self.message}: {detail}" if detail else self.message)


def _define(name: str, code: int, message: str, temporary: bool = False) -> type[VpopmailError]:
    return type(name, (VpopmailError,), {"code": code, "message": message, "temporary": temporary,
                                          "__doc__": f"VA code {code}: {message}."})


IllegalUsername = _define("IllegalUsername", -1, "Illegal username")
UsernameExists = _define("UsernameExists", -2, "Username exists")
BadDir = _define("BadDir", -3, "Unable to chdir to vpopmail directory")
BadDomainsDir = _define("BadDomainsDir", -5, "Unable to chdir to vpopmail/domains directory")
BadDomainDir = _define("BadDomainDir", -6, "Unable to chdir to vpopmail/domains/domain directory")
UserDirExists = _define("UserDirExists", -7, "User's directory already exists")
SubdirCreation = _define("SubdirCreation", -9, "Creation of user's subdirectories failed")
UserDoesNotExist = _define("UserDoesNotExist", -10, "User does not exist")
DomainDoesNotExist = _define("DomainDoesNotExist", -11, "Domain does not exist")
InvalidDomainName = _define("InvalidDomainName", -12, "Invalid domain name")
DomainAlreadyExists = _define("DomainAlreadyExists", -13, "Domain already exists")
CouldNotMakeDomainDir = _define("CouldNotMakeDomainDir", -14, "Could not make domain dir")
CouldNotUpdateFile = _define("CouldNotUpdateFile", -17, "Could not update file", temporary=True)
CryptFailed = _define("CryptFailed", -18, "Crypt failed")
BadChar = _define("BadChar", -20, "bad character")
BadUid = _define("BadUid", -22, "running as invalid uid")
NoAuthConnection = _define("NoAuthConnection", -23, "no authentication database connection",
                           temporary=True)
UserNameTooLong = _define("UserNameTooLong", -25, "user name too long")
DomainNameTooLong = _define("DomainNameTooLong", -26, "domain name too long")
PasswdTooLong = _define("PasswdTooLong", -27, "password too long")
GecosTooLong = _define("GecosTooLong", -28, "gecos too long")
QuotaTooLong = _define("QuotaTooLong", -29, "quota too long")
DirTooLong = _define("DirTooLong", -30, "dir too long")
ClearPasswdTooLong = _define("ClearPasswdTooLong", -31, "clear password too long")
InvalidEmailChar = _define("InvalidEmailChar", -34, "invalid email character")
CannotReadLimits = _define("CannotReadLimits", -36, "can't read domain limits")
CannotReadAssign = _define("CannotReadAssign", -37, "can't read users/assign file", temporary=True)
CannotDeleteCatchall = _define("CannotDeleteCatchall", -55, "can't delete catchall account")
# Not in C vpopmail (which printed a warning, or answered "not found" for a local fault that
# then bounced real mail): codes from -100 down so they never collide with vpopmail's.
CorruptData = _define("CorruptData", -100, "corrupt data file", temporary=True)
LockTimeout = _define("LockTimeout", -101, "File busy try again later!", temporary=True)
ConfigError = _define("ConfigError", -102, "configuration error", temporary=True)
BadInput = _define("BadInput", -104, "bad input")
AliasDomainsExist = _define("AliasDomainsExist", -103, "Alias domains exist, use -f to delete them too")
DeliveryFailed = _define("DeliveryFailed", -105, "system error", temporary=True)
OverQuota = _define("OverQuota", -106, "user is over quota")
