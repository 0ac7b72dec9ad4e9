"""Password hashes: make new ones, check stored ones.

Crypt-family hashes (DES, MD5, SHA-256, SHA-512, bcrypt, yescrypt) go through the C library's
crypt() (glibc/libxcrypt), reached through the ``_crypt`` extension of Python 3.11/3.12 or the
``_crypt_r`` one of the crypt-r package on 3.13+: about 1 ms per process, where importing
passlib/libpass costs 25 ms and libpass hashes SHA-512-crypt in pure Python. libpass is loaded
only for forms crypt() cannot do: ``{SSHA}``-style LDAP schemes and argon2.
"""
import posix

try:
    from _crypt import crypt as _c_crypt
except ImportError:  # Python 3.13+: the crypt-r package
    from _crypt_r import crypt as _c_crypt

from _operator import _compare_digest as _same

from vpopmail.errors import CryptFailed

CRYPT64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BCRYPT64 = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_PREFIX = {"md5-crypt": "$1$", "sha256-crypt": "$5$", "sha512-crypt": "$6$"}
_SALT_LEN = {"md5-crypt": 8, "sha256-crypt": 16, "sha512-crypt": 16, "des-crypt": 2}
SCHEMES = ("sha512-crypt", "sha256-crypt", "md5-crypt", "des-crypt", "bcrypt", "argon2")
BCRYPT_COST = 10
#: batches at least this large are hashed in parallel processes
PARALLEL_BATCH = 256
#: one fixed hash per scheme (of a random secret that was thrown away), with the cost
#: parameters hash_password uses: vchkpw checks an unknown user's password against the
#: configured scheme's, so that "no such user" takes as long as "wrong password"
DUMMY_HASHES = {
    "sha512-crypt": "$6$2iUhuKT0YFatunsE$qpNRNk0NeLsVQYUESU.qOuQuScEmxSWbKbdA/U8wQXKk2G12YOsTWJb"
                    "/cs44cy6oTOSpcBSaDB3kQ0yizyK041",
    "sha256-crypt": "$5$.ERj9.G5vZ/worXP$uQnZ0YhcOhBILsI/n9ITJphl1fEMiMuK33v3UM89.yB",
    "md5-crypt": "$1$C3f6zCK2$U9frI9fl2BFrQBTXcWAC.1",
    "des-crypt": "rPj/WfEiZi0Lk",
    "bcrypt": f"$2b${BCRYPT_COST:02d}$ZAaWIbv1ibd52FRR5B3CsuFj13/ll1H2Zm9b2bakH8M5L0XdB6NWm",
    "argon2": "$argon2id$v=19$m=65536,t=3,p=4$4BXyteefVueHhAzE+aKQwQ$SXcqhar8CU6vNqbQTGE21g+Jk"
              "ebVwqitCbBankjus1I",
}


def _salt(length: int, alphabet: str = CRYPT64) -> str:
    """``length`` uniformly random characters of a 64-character alphabet."""
    return "".join(alphabet[b & 63] for b in posix.urandom(length))


def _bcrypt_salt() -> str:
    """16 random bytes in bcrypt's base64 (22 characters; the last carries 2 bits)."""
    raw = int.from_bytes(posix.urandom(16), "big") << 4  # 132 bits = 22 six-bit digits
    return "".join(BCRYPT64[(raw >> (6 * i)) & 63] for i in range(21, -1, -1))


def _crypt_bytes(plain: bytes, setting: str) -> str:
    """crypt() on the raw bytes of a password that is not UTF-8 (a Latin-1 client: C vpopmail
    hashed the bytes as they came). ``_crypt`` takes only str, so this rare path goes
    through ctypes."""
    import ctypes

    for name in ("libcrypt.so.1", "libcrypt.so.2", "libcrypt.so"):
        try:
            function = ctypes.CDLL(name, use_errno=True).crypt
            break
        except (OSError, AttributeError):
            continue
    else:
        raise CryptFailed("no C library crypt() for a password that is not UTF-8")
    function.restype = ctypes.c_char_p
    function.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    result = function(plain, setting.encode("ascii", "replace"))
    return "" if result is None else result.decode("ascii", "replace")


def crypt(plain: str, setting: str) -> str:
    """The C library's crypt(); raise CryptFailed where it refuses (unknown method, bad salt).
    ``plain`` may carry undecodable bytes as surrogate escapes: they are hashed as bytes."""
    if "\0" in plain:
        raise CryptFailed("NUL in password")
    try:
        result = _c_crypt(plain, setting)
    except OSError as exc:
        raise CryptFailed(str(exc)) from None
    except UnicodeEncodeError:
        result = _crypt_bytes(plain.encode("utf-8", "surrogateescape"), setting)
    if not result or result.startswith("*"):
        raise CryptFailed(f"crypt() does not support {setting[:4]!r}")
    return result


def hash_password(plain: str, scheme: str = "sha512-crypt") -> str:
    """A new hash of ``plain`` in ``scheme`` (one of SCHEMES), freshly salted."""
    if scheme in _PREFIX:
        return crypt(plain, _PREFIX[scheme] + _salt(_SALT_LEN[scheme]))
    if scheme == "des-crypt":
        return crypt(plain, _salt(2))
    if scheme == "bcrypt":
        return crypt(plain, f"$2b${BCRYPT_COST:02d}${_bcrypt_salt()}")
    if scheme == "argon2":
        from passlib.hash import argon2

        try:
            return str(argon2.hash(plain))
        except Exception as exc:  # passlib raises MissingBackendError without argon2-cffi
            raise CryptFailed(f"argon2 needs the argon2-cffi package: {exc}") from None
    raise CryptFailed(f"unknown password scheme {scheme!r}")


def hash_many(passwords: list[str], scheme: str = "sha512-crypt") -> list[str]:
    """:func:`hash_password` for a batch; large batches use every CPU (crypt() holds the GIL)."""
    workers = posix.cpu_count() or 1
    if len(passwords) < PARALLEL_BATCH or workers < 2:
        return [hash_password(p, scheme) for p in passwords]
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(partial(hash_password, scheme=scheme), passwords,
                             chunksize=PARALLEL_BATCH))


def _des(stored: str) -> bool:
    """Whether ``stored`` has the shape of a traditional DES crypt() hash."""
    return len(stored) == 13 and all(c in CRYPT64 for c in stored)


def verify_password(plain: str, stored: str, scheme: str | None = None) -> bool:
    """Check ``plain`` against a stored hash of any form vpopmail and its forks write.

    Empty, ``*`` and ``!`` hashes (locked accounts) and hashes of no form a scheme checks
    never match; with ``scheme`` (vchkpw's configured one) they first cost what a wrong
    password costs (:func:`dummy_check`), so that timing does not tell a locked account from
    a live one. A wrong password for a hash of another form than ``scheme`` (an MD5-crypt
    hash kept from C vpopmail under sha512-crypt: a tenth of the work) costs that check too,
    so that it does not answer faster than an unknown user does. Comparisons are
    constant-time."""
    matched = _check(plain, stored)
    if matched is None:
        if scheme is not None:
            dummy_check(plain, scheme)
        return False
    if not matched and scheme is not None and needs_rehash(stored, scheme):
        dummy_check(plain, scheme)
    return matched


def _bare(stored: str) -> str:
    """``stored`` without an LDAP-style ``{CRYPT}`` prefix."""
    return stored[7:] if stored.upper().startswith("{CRYPT}") else stored


def is_locked(stored: str) -> bool:
    """Whether the hash ``stored`` locks its account (``!`` or ``*`` in front): no password
    and no APOP or CRAM-MD5 digest of a kept clear text logs it in."""
    return _bare(stored)[:1] in ("!", "*")


def _check(plain: str, stored: str) -> bool | None:
    """Whether ``plain`` matches ``stored``; None where no check could run."""
    stored = _bare(stored)
    if not stored or is_locked(stored):
        return None
    if stored[0] != "{" and not stored.startswith("$argon2"):
        # every method the C library knows, as C vchkpw checks it ($gy$, $sha1$, BSDi `_`…)
        try:
            return _same(crypt(plain, stored).encode(), stored.encode())
        except CryptFailed:
            pass
    return _verify_with_passlib(plain, stored)


def dummy_check(plain: str, scheme: str) -> None:
    """Spend the time a wrong password costs, for a login that has no hash to check (unknown
    user or domain): ``plain`` against the fixed :data:`DUMMY_HASHES` entry of ``scheme``."""
    verify_password(plain, DUMMY_HASHES.get(scheme, DUMMY_HASHES["sha512-crypt"]))


def check_challenge(kind: str, clear: str, challenge: str, response: str) -> bool:
    """APOP (POP3, RFC 1939) or CRAM-MD5 (SMTP AUTH, RFC 2195) against a stored clear-text
    password: ``response`` must be the lowercase hex digest of MD5(challenge + clear) or
    HMAC-MD5(clear, challenge). An empty challenge never matches (the digest would then be a
    fixed value, as good as a stolen hash)."""
    if not clear or not challenge or not response:
        return False
    if kind == "APOP":
        try:
            from _md5 import md5  # 0.1 ms; hashlib costs 2.5 ms
        except ImportError:
            from hashlib import md5

        digest = md5((challenge + clear).encode("utf-8", "surrogateescape")).hexdigest()
    else:
        import hmac

        digest = hmac.new(clear.encode("utf-8", "surrogateescape"),
                          challenge.encode("utf-8", "surrogateescape"), "md5").hexdigest()
    return _same(digest.encode(), response.encode("utf-8", "surrogateescape"))


def needs_rehash(stored: str, scheme: str) -> bool:
    """Whether ``stored`` is in another form than ``scheme`` (for passwords.rehash_on_login)."""
    if stored.upper().startswith("{CRYPT}"):
        stored = stored[7:]
    if scheme in _PREFIX:
        return not stored.startswith(_PREFIX[scheme])
    if scheme == "bcrypt":
        return not stored.startswith(("$2a$", "$2b$", "$2y$"))
    if scheme == "argon2":
        return not stored.startswith("$argon2")
    return not _des(stored)


#: the dearest cost parameters :func:`cost_is_bounded` lets through (about a second of CPU
#: and 256 MiB at most): sha-crypt rounds (passlib's default is 656,000), bcrypt's log2 cost,
#: yescrypt's log2 N and r (libxcrypt's cost 9; Debian's default is 5), argon2's memory
#: (KiB; libpass's default is 64 MiB), passes and lanes
MAX_SHA_ROUNDS = 1_000_000
MAX_BCRYPT_COST = 14
MAX_YESCRYPT = (16, 32)
MAX_ARGON2 = {"m": 1 << 18, "t": 10, "p": 16}


def cost_is_bounded(stored: str) -> bool:
    """Whether a check of ``stored`` costs at most what the MAX_* parameters allow (a hash
    dearer than that holds a CPU for minutes to days for each password anyone tries): forms
    of fixed cost (DES, MD5-crypt, the LDAP ``{…}`` forms, a locked or empty hash), and those
    whose cost parameters are read here within bounds; False for any other form."""
    if stored.upper().startswith("{CRYPT}"):
        stored = stored[7:]
    if not stored or stored[0] in "*!{" or _des(stored) or stored.startswith("$1$"):
        return True
    fields = stored.split("$")
    if len(fields) < 4 or fields[0]:
        return False
    kind, params = fields[1], fields[2]
    if kind in ("5", "6"):
        rounds = params[7:] if params.startswith("rounds=") else "5000"
        return _at_most(rounds, MAX_SHA_ROUNDS)
    if kind in ("2a", "2b", "2x", "2y"):
        return _at_most(params, MAX_BCRYPT_COST)
    if kind == "y":  # flags "j", then log2(N) - 1 and r - 1 as one crypt64 digit each
        return (len(params) == 3 and params[0] == "j" and all(c in CRYPT64 for c in params)
                and CRYPT64.index(params[1]) + 1 <= MAX_YESCRYPT[0]
                and CRYPT64.index(params[2]) + 1 <= MAX_YESCRYPT[1])
    if kind.startswith("argon2") and len(fields) >= 5:
        pairs = dict(item.partition("=")[::2] for item in fields[3].split(","))
        return (pairs.keys() == MAX_ARGON2.keys()
                and all(_at_most(pairs[key], MAX_ARGON2[key]) for key in MAX_ARGON2))
    return False


def _at_most(number: str, most: int) -> bool:
    """Whether ``number`` is written in ASCII digits (the only ones crypt reads; int() takes
    others) and is at most ``most``."""
    return number.isascii() and number.isdigit() and int(number) <= most


def _verify_with_passlib(plain: str, stored: str) -> bool | None:
    """LDAP-style ``{SCHEME}`` hashes and argon2, through libpass (slow import: rare path);
    None for a form it does not know or cannot check."""
    from passlib.context import CryptContext

    if stored.upper().startswith("{PLAIN}") or stored.upper().startswith("{CLEARTEXT}"):
        return _same(plain.encode("utf-8", "surrogateescape"),
                     stored.split("}", 1)[1].encode("utf-8", "surrogateescape"))
    context = CryptContext(schemes=["ldap_salted_sha1", "ldap_salted_sha256", "ldap_salted_sha512",
                                    "ldap_sha1", "ldap_salted_md5", "ldap_md5", "argon2"])
    try:
        return bool(context.verify(plain.encode("utf-8", "surrogateescape"), stored))
    except Exception:  # ValueError, TypeError: no such form; MissingBackendError: argon2
        return None    # without argon2-cffi


def random_password(length: int = 8) -> str:
    """A random password from vpopmail's alphabet (letters, digits, ``.@!#%*``)."""
    import secrets

    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.@!#%*"
    return "".join(secrets.choice(alphabet) for _ in range(length))
