"""One exception hierarchy that keeps vpopmail's numeric ``VA_*`` codes.

Hot-path safe: imports nothing, and builds a class only when it is first used.
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


#: name -> (VA code, message, temporary). The classes are made on first use (PEP 562
#: module ``__getattr__``): creating all of them costs 0.35 ms, paid by every delivery
#: and login otherwise. Codes from -100 down are ours, not in C vpopmail (which printed
#: a warning, or answered "not found" for a local fault that then bounced real mail).
_TABLE: dict[str, tuple[int, str, bool]] = {
    "IllegalUsername": (-1, "Illegal username", False),
    "UsernameExists": (-2, "Username exists", False),
    "BadDir": (-3, "Unable to chdir to vpopmail directory", False),
    "BadDomainsDir": (-5, "Unable to chdir to vpopmail/domains directory", False),
    "BadDomainDir": (-6, "Unable to chdir to vpopmail/domains/domain directory", False),
    "UserDirExists": (-7, "User's directory already exists", False),
    "SubdirCreation": (-9, "Creation of user's subdirectories failed", False),
    "UserDoesNotExist": (-10, "User does not exist", False),
    "DomainDoesNotExist": (-11, "Domain does not exist", False),
    "InvalidDomainName": (-12, "Invalid domain name", False),
    "DomainAlreadyExists": (-13, "Domain already exists", False),
    "CouldNotMakeDomainDir": (-14, "Could not make domain dir", False),
    "CouldNotUpdateFile": (-17, "Could not update file", True),
    "CryptFailed": (-18, "Crypt failed", False),
    "BadChar": (-20, "bad character", False),
    "BadUid": (-22, "running as invalid uid", False),
    "NoAuthConnection": (-23, "no authentication database connection", True),
    "UserNameTooLong": (-25, "user name too long", False),
    "DomainNameTooLong": (-26, "domain name too long", False),
    "PasswdTooLong": (-27, "password too long", False),
    "GecosTooLong": (-28, "gecos too long", False),
    "QuotaTooLong": (-29, "quota too long", False),
    "DirTooLong": (-30, "dir too long", False),
    "ClearPasswdTooLong": (-31, "clear password too long", False),
    "InvalidEmailChar": (-34, "invalid email character", False),
    "CannotReadLimits": (-36, "can't read domain limits", False),
    "CannotReadAssign": (-37, "can't read users/assign file", True),
    "CannotDeleteCatchall": (-55, "can't delete catchall account", False),
    "CorruptData": (-100, "corrupt data file", True),
    "LockTimeout": (-101, "File busy try again later!", True),
    "ConfigError": (-102, "configuration error", True),
    "BadInput": (-104, "bad input", False),
    "AliasDomainsExist": (-103, "Alias domains exist, use -f to delete them too", False),
    "DeliveryFailed": (-105, "system error", True),
    "OverQuota": (-106, "user is over quota", False),
    "OutsideDomain": (-107, "not a real directory of the domain", False),
}


def __getattr__(name: str) -> type[VpopmailError]:
    """The error class ``name`` (``from vpopmail.errors import UserDoesNotExist``)."""
    try:
        code, message, temporary = _TABLE[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    cls = _define(name, code, message, temporary)
    globals()[name] = cls
    return cls
