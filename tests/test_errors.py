"""The VA_* hierarchy (vpopmail.errors, with the alias errors of vpopmail.aliases) and the exit
codes beside it: codes unique, C's codes and texts kept, local faults temporary."""
from __future__ import annotations

import pytest

from vpopmail import aliases, errors
from vpopmail.errors import TemporaryError, VpopmailError

#: C vpopmail 5.4's VA_* codes (vpopmail.h) and texts (verror() in vpopmail.c) that we raise
C_CODES = {
    -1: ("VA_ILLEGAL_USERNAME", "Illegal username"),
    -2: ("VA_USERNAME_EXISTS", "Username exists"),
    -3: ("VA_BAD_DIR", "Unable to chdir to vpopmail directory"),
    -4: ("VA_BAD_U_DIR", "Unable to chdir to vpopmail/users directory"),
    -5: ("VA_BAD_D_DIR", "Unable to chdir to vpopmail/domains directory"),
    -6: ("VA_BAD_V_DIR", "Unable to chdir to vpopmail/domains/domain directory"),
    -7: ("VA_EXIST_U_DIR", "User's directory already exists"),
    -8: ("VA_BAD_U_DIR2", "Unable to chdir to user's directory"),
    -9: ("VA_SUBDIR_CREATION", "Creation of user's subdirectories failed"),
    -10: ("VA_USER_DOES_NOT_EXIST", "User does not exist"),
    -11: ("VA_DOMAIN_DOES_NOT_EXIST", "Domain does not exist"),
    -12: ("VA_INVALID_DOMAIN_NAME", "Invalid domain name"),
    -13: ("VA_DOMAIN_ALREADY_EXISTS", "Domain already exists"),
    -14: ("VA_COULD_NOT_MAKE_DOMAIN_DIR", "Could not make domain dir"),
    -15: ("VA_COULD_NOT_OPEN_QMAIL_DEFAULT", "Could not open qmail default"),
    -16: ("VA_CAN_NOT_MAKE_DOMAINS_DIR", "Can not make domains directory"),
    -17: ("VA_COULD_NOT_UPDATE_FILE", "Could not update file"),
    -18: ("VA_CRYPT_FAILED", "Crypt failed"),
    -19: ("VA_COULD_NOT_OPEN_DOT_QMAIL", "Could not open dot qmail file"),
    -20: ("VA_BAD_CHAR", "bad character"),
    -22: ("VA_BAD_UID", "running as invalid uid"),
    -23: ("VA_NO_AUTH_CONNECTION", "no authentication database connection"),
    -24: ("VA_MEMORY_ALLOC_ERR", "memory allocation error"),
    -25: ("VA_USER_NAME_TOO_LONG", "user name too long"),
    -26: ("VA_DOMAIN_NAME_TOO_LONG", "domain name too long"),
    -27: ("VA_PASSWD_TOO_LONG", "password too long"),
    -28: ("VA_GECOS_TOO_LONG", "gecos too long"),
    -29: ("VA_QUOTA_TOO_LONG", "quota too long"),
    -30: ("VA_DIR_TOO_LONG", "dir too long"),
    -31: ("VA_CLEAR_PASSWD_TOO_LONG", "clear password too long"),
    -32: ("VA_ALIAS_LINE_TOO_LONG", "alias line too long"),
    -33: ("VA_NULL_POINTER", "null pointer"),
    -34: ("VA_INVALID_EMAIL_CHAR", "invalid email character"),
    -35: ("VA_PARSE_ERROR", "parsing database configuration file"),
    -36: ("VA_CANNOT_READ_LIMITS", "can't read domain limits"),
    -37: ("VA_CANNOT_READ_ASSIGN", "can't read users/assign file"),
    -55: ("VA_CANNOT_DELETE_CATCHALL", "can't delete catchall account"),
}
#: the local faults: what vdelivermail defers (111) and vchkpw answers 111 for, never a bounce
#: or a "wrong password"
TEMPORARY = {"CouldNotUpdateFile", "NoAuthConnection", "CannotReadAssign", "CorruptData",
             "LockTimeout", "ConfigError", "DeliveryFailed", "DotQmailUnsafe"}
#: exit statuses of the admin commands that tests of valias and vadduser pin
ALIAS_STATUS = {"NoSuchAlias": 246, "AliasIsUser": 254, "UserIsAlias": 254,
                "AliasLineExists": 255, "AliasLineTooLong": 224, "InvalidAliasLine": 152,
                "DotQmailUnsafe": 156}
BASES = {VpopmailError, TemporaryError, aliases.AliasError}


def all_errors() -> list[type[VpopmailError]]:
    found: list[type[VpopmailError]] = []
    pending = [VpopmailError]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub not in found and sub.__module__ in ("vpopmail.errors", "vpopmail.aliases"):
                found.append(sub)
                pending.append(sub)
    return [cls for cls in found if cls not in BASES]


def test_every_class_is_written_out_in_its_module() -> None:
    """Static: each class is a module attribute from import on (no lazy table)."""
    for cls in all_errors():
        module = errors if cls.__module__ == "vpopmail.errors" else aliases
        assert vars(module)[cls.__name__] is cls
    assert not hasattr(errors, "__getattr__")


def test_codes_are_unique() -> None:
    codes = [cls.code for cls in all_errors()]
    assert len(codes) == len(set(codes)), sorted(codes)


@pytest.mark.parametrize("cls", all_errors(), ids=lambda cls: cls.__name__)
def test_c_codes_keep_c_names_and_texts(cls: type[VpopmailError]) -> None:
    if cls.code > -100:
        name, text = C_CODES[cls.code]
        assert (cls.__doc__, cls.message) == (name, text)
    else:  # ours: no C constant, no C code
        assert not (cls.__doc__ or "").startswith("VA_")


def test_temporary_errors_are_exactly_the_local_faults() -> None:
    assert {cls.__name__ for cls in all_errors() if issubclass(cls, TemporaryError)} == TEMPORARY


def test_text_and_status() -> None:
    exc = errors.UserDoesNotExist("bob@example.com")
    assert (str(exc), exc.detail, exc.status) == ("User does not exist: bob@example.com",
                                                  "bob@example.com", 246)
    assert str(errors.LockTimeout()) == "File busy try again later!"
    assert str(errors.CannotServe("a server (pid 7) already listens on /run/s")) == \
        "a server (pid 7) already listens on /run/s"  # after "vpopmail-server: ", nothing else
    for name, status in ALIAS_STATUS.items():
        alias_error = getattr(aliases, name)("the whole text")
        assert (str(alias_error), alias_error.status) == ("the whole text", status)


def test_outcomes_are_the_qmail_and_checkpassword_codes() -> None:
    assert (errors.DELIVERED, errors.STOP, errors.BOUNCE, errors.DEFER) == (0, 99, 100, 111)
    assert (errors.REJECTED, errors.MISUSE, errors.DOVECOT_NO_USER,
            errors.TEMPORARY) == (1, 2, 3, 111)
    assert errors.NO_MAILBOX == "Sorry, no mailbox here by that name. (#5.1.1)"
