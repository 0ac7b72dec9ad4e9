"""Password hashing and checking (vpopmail.passwords)."""
from __future__ import annotations

import re

import pytest

from vpopmail.passwords import (BCRYPT64, CRYPT64, SCHEMES, crypt, hash_password, random_password,
                            verify_password)
from vpopmail.errors import CryptFailed

# c-vpopmail-observed.md section 4: hashes C vpopmail wrote, with their clear-text passwords
OBSERVED = [
    ("pw1", "$1$Y3QIu8V9$jwXjUUaDsmkd9aD/UbEMb/"),
    ("pw2", "$1$PgHvGVaV$TaBACm.FGIX3fwK2lg/nm0"),
    ("secret", "$1$5X2q/ML/$7M4lF9X1Czsma6St9ZRqb1"),
]

SHAPES = {
    "sha512-crypt": re.compile(r"^\$6\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{86}$"),
    "sha256-crypt": re.compile(r"^\$5\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{43}$"),
    "md5-crypt": re.compile(r"^\$1\$[./0-9A-Za-z]{8}\$[./0-9A-Za-z]{22}$"),
    "des-crypt": re.compile(r"^[./0-9A-Za-z]{13}$"),
    "bcrypt": re.compile(r"^\$2b\$10\$[./A-Za-z0-9]{53}$"),
}


@pytest.mark.parametrize(("plain", "stored"), OBSERVED)
def test_observed_c_vpopmail_hashes(plain: str, stored: str) -> None:
    assert verify_password(plain, stored)
    assert not verify_password(plain + "x", stored)
    assert not verify_password(plain.upper(), stored)
    assert verify_password(plain, "{CRYPT}" + stored)
    assert verify_password(plain, "{crypt}" + stored)
    assert not verify_password(plain, "!" + stored)      # a locked account


@pytest.mark.parametrize("scheme", sorted(SHAPES))
def test_hash_and_verify(scheme: str) -> None:
    hashed = hash_password("h0rse!pw", scheme)
    assert SHAPES[scheme].match(hashed), hashed
    assert verify_password("h0rse!pw", hashed)
    assert not verify_password("h0rse!pX", hashed)
    assert not verify_password("", hashed)
    assert verify_password("h0rse!pw", "{CRYPT}" + hashed)
    # freshly salted (des-crypt's 12-bit salt repeats once in 4096 pairs: three new tries)
    assert {hash_password("h0rse!pw", scheme) for _ in range(3)} != {hashed}


def test_default_scheme_is_sha512() -> None:
    assert hash_password("x").startswith("$6$")


def test_prefixes() -> None:
    assert hash_password("pw", "sha512-crypt").startswith("$6$")
    assert hash_password("pw", "sha256-crypt").startswith("$5$")
    assert hash_password("pw", "md5-crypt").startswith("$1$")
    assert hash_password("pw", "bcrypt").startswith("$2b$10$")
    des = hash_password("pw", "des-crypt")
    assert len(des) == 13 and not des.startswith("$")


def test_des_uses_only_eight_characters() -> None:
    hashed = hash_password("12345678", "des-crypt")
    assert verify_password("12345678", hashed)
    assert verify_password("12345678-ignored", hashed)   # the classic DES limit
    assert not verify_password("1234567", hashed)


def test_bcrypt_salt_is_canonical() -> None:
    for _ in range(8):
        salt = hash_password("pw", "bcrypt")[7:29]
        assert len(salt) == 22 and all(c in BCRYPT64 for c in salt)
        assert salt[-1] in ".Oeu"          # the last digit carries only 2 bits


def test_unicode_password() -> None:
    hashed = hash_password("pässwörd", "sha512-crypt")
    assert verify_password("pässwörd", hashed)
    assert not verify_password("passwort", hashed)


def test_unknown_and_unavailable_schemes() -> None:
    with pytest.raises(CryptFailed):
        hash_password("pw", "rot13")
    try:
        hashed = hash_password("pw", "argon2")
    except CryptFailed:
        pass  # argon2-cffi not installed: a clean error
    else:
        assert hashed.startswith("$argon2")
        assert verify_password("pw", hashed) and not verify_password("px", hashed)
    assert "argon2" in SCHEMES


def test_nul_in_password() -> None:
    with pytest.raises(CryptFailed):
        hash_password("a\0b", "md5-crypt")
    with pytest.raises(CryptFailed):
        crypt("a\0b", "$1$abcdefgh")
    assert not verify_password("pw1\0", OBSERVED[0][1])


def test_crypt_refuses_unknown_method() -> None:
    with pytest.raises(CryptFailed):
        crypt("pw", "$9$nosuchmethod")


@pytest.mark.parametrize("stored", ["", "*", "!", "!!", "*LK*", "{CRYPT}", "{CRYPT}*", "{CRYPT}!x",
                                    "*$1$Y3QIu8V9$jwXjUUaDsmkd9aD/UbEMb/"])
def test_locked_or_empty_hashes_never_match(stored: str) -> None:
    for plain in ("", "*", "!", "pw1", stored):
        assert not verify_password(plain, stored)


@pytest.mark.parametrize("stored", ["plaintext", "$6$", "$1$abc", "$2b$10$short", "{SSHA}!!notb64",
                                    "{UNKNOWN}abc", "{SSHA}", "$5$rounds=x$", "abcdefghij!@#"])
def test_garbage_hashes_are_a_mismatch_not_an_error(stored: str) -> None:
    assert verify_password("pw", stored) is False


def test_ldap_salted_sha1() -> None:
    from passlib.hash import ldap_salted_sha1

    stored = ldap_salted_sha1.hash("pw")
    assert stored.startswith("{SSHA}")
    assert verify_password("pw", stored)
    assert not verify_password("px", stored)


@pytest.mark.parametrize("handler", ["ldap_salted_sha256", "ldap_salted_sha512", "ldap_sha1",
                                     "ldap_md5", "ldap_salted_md5"])
def test_other_ldap_schemes(handler: str) -> None:
    import passlib.hash

    stored = getattr(passlib.hash, handler).hash("pw")
    assert verify_password("pw", stored)
    assert not verify_password("px", stored)


def test_plain_schemes() -> None:
    assert verify_password("pw", "{PLAIN}pw")
    assert verify_password("pw", "{plain}pw")
    assert verify_password("p}w", "{CLEARTEXT}p}w")
    assert not verify_password("pw", "{PLAIN}px")
    assert not verify_password("", "{PLAIN}pw")
    assert not verify_password("pw ", "{PLAIN}pw")


def test_yescrypt_through_libc() -> None:
    stored = crypt("pw", "$y$j9T$abcdefghijklmnop")
    assert verify_password("pw", stored)
    assert not verify_password("px", stored)


ALPHABET = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.@!#%*")


@pytest.mark.parametrize("length", [0, 1, 8, 12, 64])
def test_random_password_length_and_alphabet(length: int) -> None:
    password = random_password(length)
    assert len(password) == length
    assert set(password) <= ALPHABET


def test_random_password_default_and_spread() -> None:
    assert len(random_password()) == 8
    many = "".join(random_password(16) for _ in range(200))
    assert set(many) <= ALPHABET
    assert len(set(many)) > 50            # uses (nearly) the whole alphabet
    assert len({random_password() for _ in range(50)}) == 50


def test_salts_use_the_crypt_alphabet() -> None:
    for _ in range(20):
        salt = hash_password("pw", "sha256-crypt").split("$")[2]
        assert len(salt) == 16 and set(salt) <= set(CRYPT64)
        assert set(hash_password("pw", "des-crypt")[:2]) <= set(CRYPT64)


# Hashes of "pw30" in every method Debian 12's libxcrypt checks that vpopmail's own list of
# crypt prefixes left out. C vchkpw hands any stored hash to crypt() and accepted each of
# them (a site imported with vconvert from another system's shadow file keeps such hashes).
LIBC_ONLY = [
    "$gy$j9T$NTUVkfXC/6s1lCG0YUvVa1$e28dxEhUVYn99KFbBzImvgrGqEuIy1BuAOpJr8L4pt7",
    "$sha1$257984$Sb263kxpaxcg7VFp5dZw$IWTqkG6VVaFyRWsZvkBOdcT7Nr25",
    "$md5,rounds=52211$IP1YHhBf$$qY6dg0ALnKbKhWvDMkiTw0",
    "_J9..T1xAtlEkOKjoirY",
    "$3$$19e6f27323b61b0e9d92fead92da77bf",
]


@pytest.mark.parametrize("stored", LIBC_ONLY)
def test_every_method_the_c_library_checks(stored: str) -> None:
    try:
        if crypt("pw30", stored) != stored:
            pytest.skip("this C library hashes differently")
    except CryptFailed:
        pytest.skip("this C library's crypt() lacks the method")
    assert verify_password("pw30", stored)
    assert verify_password("pw30", "{CRYPT}" + stored)
    assert not verify_password("pw31", stored)
