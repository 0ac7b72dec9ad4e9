"""User and domain name rules (vpopmail.names)."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpopmail.errors import (DomainNameTooLong, IllegalUsername, InvalidDomainName,
                             UserNameTooLong)
from vpopmail.names import (MAX_DOMAIN, MAX_USER, RESERVED_PREFIX, USER_CHARS, check_domain,
                            check_user, split_address)


# is_username_valid vectors of behaviour.md H; "a/b" is now refused (no path separators)
@pytest.mark.parametrize("name", ["john.doe", "a+b", "postmaster", "x_y", "o'brien", "a-b",
                                  "A.B", "1234", "x" * MAX_USER, "a.b.c", "{curly}", "#hash",
                                  "tilde~", "question?", "pipe|"])
def test_valid_user_names(name: str) -> None:
    assert check_user(name) == name


@pytest.mark.parametrize("name", ["a%b", "a b", "a:b", "a@b", "\u00fc", "a/b", "/", "..", ".",
                                  "../evil", "a/../b", ".hidden", "a..b", "vpasswd",
                                  "vpasswd.cdb", "vpasswd.lock", "cdb.tmp", "a\0b", "a\nb",
                                  "a\tb", "a\\b", "a,b", "a\"b", "a;b", "(x)", "a<b", "", "x\r"])
def test_invalid_user_names(name: str) -> None:
    with pytest.raises(IllegalUsername):
        check_user(name)


def test_reserved_names_are_all_refused() -> None:
    for name in ("vpasswd", "cdb.tmp", "vpasswd.cdb", "vpasswd.lock", RESERVED_PREFIX + "x"):
        with pytest.raises(IllegalUsername):
            check_user(name)


def test_too_long_user_name() -> None:
    with pytest.raises(UserNameTooLong):
        check_user("x" * (MAX_USER + 1))
    with pytest.raises(UserNameTooLong):
        check_user("a/" * 40)


def test_one_character_names_only_without_hashing() -> None:
    for name in ("a", "Z", "0", "+"):
        with pytest.raises(IllegalUsername):
            check_user(name)
        with pytest.raises(IllegalUsername):
            check_user(name, hashed_dirs=True)
        assert check_user(name, hashed_dirs=False) == name
    with pytest.raises(IllegalUsername):
        check_user(".", hashed_dirs=False)
    with pytest.raises(IllegalUsername):
        check_user("/", hashed_dirs=False)


def test_errors_carry_vpopmail_codes() -> None:
    with pytest.raises(IllegalUsername) as info:
        check_user("a b")
    assert info.value.code == -1
    with pytest.raises(UserNameTooLong) as too_long:
        check_user("x" * 65)
    assert too_long.value.code == -25


def test_temp_file_names_of_the_domain_dir_are_refused() -> None:
    for name in ("vpasswd.tmp.4242", "vpasswd.cdb.tmp.4242"):
        with pytest.raises(IllegalUsername):
            check_user(name)


name_chars = st.sampled_from(sorted(USER_CHARS) + ["/", "\0", "\n", ".", ".", ":", "@", "%", " ",
                                                    "\u00fc", "\\"])


@settings(max_examples=300, deadline=None)
@given(name=st.one_of(st.text(name_chars, max_size=70), st.text(max_size=20),
                      st.sampled_from(["..", ".", "../x", "x/..", "vpasswd", "a", "ab"])),
       hashed=st.booleans())
def test_accepted_names_are_one_safe_path_component(name: str, hashed: bool) -> None:
    try:
        check_user(name, hashed_dirs=hashed)
    except (IllegalUsername, UserNameTooLong):
        return
    assert os.path.basename(name) == name
    assert "/" not in name and "\0" not in name and "\n" not in name
    assert ".." not in name
    assert not name.startswith(".")
    assert name not in ("vpasswd", "cdb.tmp") and not name.startswith(RESERVED_PREFIX)
    assert 0 < len(name) <= MAX_USER
    assert os.path.normpath(os.path.join("/d/example.com", name)) == "/d/example.com/" + name
    assert name.isascii()


# domains ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["example.com", "a-b.example", "x.y", "mail.example.co.uk",
                                  "localhost", "123.example", "EXAMPLE.COM", "d" * MAX_DOMAIN])
def test_valid_domains(name: str) -> None:
    assert check_domain(name) == name


@pytest.mark.parametrize("name", ["", "a", "ab", "-example.com", "example.com-", ".example.com",
                                  "example.com.", "exa..mple.com", "exa_mple.com",
                                  "ex\u00e4mple.com", "example com", "example.com/", "../etc",
                                  "a/b.com", "example.com\n", "exam\0ple.com", "user@example.com",
                                  "ex:ample.com"])
def test_invalid_domains(name: str) -> None:
    with pytest.raises(InvalidDomainName):
        check_domain(name)


def test_too_long_domain() -> None:
    with pytest.raises(DomainNameTooLong):
        check_domain("d" * (MAX_DOMAIN + 1))


@settings(max_examples=200, deadline=None)
@given(st.text(st.sampled_from("ab.-/_0\0:"), max_size=12) | st.text(max_size=12))
def test_accepted_domains_are_safe_path_components(name: str) -> None:
    try:
        check_domain(name)
    except (InvalidDomainName, DomainNameTooLong):
        return
    assert os.path.basename(name) == name
    assert ".." not in name and not name.startswith(".") and "\0" not in name
    assert len(name) >= 3


# split_address (behaviour.md H parse_email vectors) ----------------------------------------------

@pytest.mark.parametrize(("address", "expected"), [
    ("bob@example.com", ("bob", "example.com")),
    ("bob%example.com", ("bob", "example.com")),
    ("bob/example.com", ("bob", "example.com")),
    ("BOB@Example.COM", ("bob", "example.com")),
    ("bob", ("bob", "default.org")),
    ("Bob", ("bob", "default.org")),
    ("bob@", ("bob", "")),
    ("@example.com", ("", "example.com")),
    ("bob@a@b", ("bob", "a@b")),
])
def test_split_address(address: str, expected: tuple[str, str]) -> None:
    assert split_address(address, "Default.ORG") == expected


def test_split_address_without_default() -> None:
    assert split_address("bob") == ("bob", "")


def test_split_address_prefers_at_sign() -> None:
    assert split_address("a%b@c.com") == ("a%b", "c.com")
    assert split_address("bob/x@example.com") == ("bob/x", "example.com")


def test_split_a_percent_b_at_c_is_refused_either_way() -> None:
    """H: a%b@c.com is refused (C: the user part a%b is invalid)."""
    user, domain = split_address("a%b@c.com")
    with pytest.raises((IllegalUsername, InvalidDomainName)):
        check_user(user, hashed_dirs=False)
        check_domain(domain)
