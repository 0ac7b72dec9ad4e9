"""users/assign + users/cdb (vpopmail.assign) and qmail's control files (vpopmail.qmail)."""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpopmail import assign
from vpopmail.assign import (AssignEntry, cdb_records, control_sort_key, domain_sort_key,
                             insert_sorted, parse_entry, sort_key)
from vpopmail.cdbwrite import build
from vpopmail.errors import CorruptData, DomainAlreadyExists, DomainDoesNotExist
from vpopmail.qmail import MAX_RCPTHOSTS, QmailFiles

needs_tinycdb = pytest.mark.skipif(shutil.which("cdb") is None, reason="needs tinycdb's cdb tool")

HOME_DIR = "/home/vpopmail/domains/example.com"
GOLDEN_ENTRY = AssignEntry("example.com", "example.com", 89, 89, HOME_DIR)
GOLDEN_TEXT = "+example.com-:example.com:89:89:/home/vpopmail/domains/example.com:-::\n.\n"
GOLDEN_RECORDS = [
    (b"!example.com-", b"example.com\x0089\x0089\x00/home/vpopmail/domains/example.com\x00-\x00"),
    (b"", b"-"),
]


def cdb_dump(path: str | Path) -> bytes:
    return subprocess.run(["cdb", "-d", str(path)], check=True, capture_output=True).stdout


def entry(domain: str, real: str | None = None, uid: int = 89, gid: int = 89) -> AssignEntry:
    real = real or domain
    return AssignEntry(domain, real, uid, gid, f"/home/vpopmail/domains/{real}")


def read(path: str) -> str:
    with open(path, encoding="latin-1") as fh:
        return fh.read()


# golden: what C vpopmail + qmail-newu wrote -----------------------------------------------------

def test_golden_line_and_records() -> None:
    assert GOLDEN_ENTRY.line() + "\n.\n" == GOLDEN_TEXT
    assert cdb_records(GOLDEN_TEXT) == GOLDEN_RECORDS
    assert parse_entry(GOLDEN_ENTRY.line()) == GOLDEN_ENTRY
    assert not GOLDEN_ENTRY.is_alias


@needs_tinycdb
def test_golden_files_written_by_add_assign(api) -> None:
    qmail: QmailFiles = api.qmail
    qmail.add_assign(GOLDEN_ENTRY)
    assert read(qmail.path("users", "assign")) == GOLDEN_TEXT
    dump = cdb_dump(qmail.path("users", "cdb"))
    # c-vpopmail-observed.md §4 shows "+13,61:" for this record, but its text was rewritten to
    # the default /home/vpopmail paths: the value as printed is 55 bytes (every length in that
    # section is 6 bytes more than its printed text, i.e. the real home path was 6 characters
    # longer). The record text itself must match exactly.
    observed = ("+13,61:!example.com-->example.com^@89^@89^@/home/vpopmail/domains/example.com^@-^@\n"
                "+0,1:->-\n")
    expected = observed.replace("^@", "\0").replace("+13,61:", "+13,55:").encode() + b"\n"
    assert dump == expected
    assert len(GOLDEN_RECORDS[0][1]) + 6 == 61


def test_golden_users_cdb_is_the_built_records(api) -> None:
    api.qmail.add_assign(GOLDEN_ENTRY)
    with open(api.qmail.path("users", "cdb"), "rb") as fh:
        assert fh.read() == build(GOLDEN_RECORDS)


# qmail-newu semantics (behaviour.md D.3) --------------------------------------------------------

def test_equals_line_key_has_trailing_nul() -> None:
    records = cdb_records("=joe:joe:1000:1000:/home/joe:::\n.\n")
    assert records == [(b"!joe\0", b"joe\x001000\x001000\x00/home/joe\x00\x00"), (b"", b"")]


def test_keys_are_lowercased_values_are_not() -> None:
    records = cdb_records("=JoE:JoE:1:2:/Home/JoE:::\n+Example.COM-:Example.COM:89:89:/D/Ex:-::\n.\n")
    assert records[0] == (b"!joe\0", b"JoE\x001\x002\x00/Home/JoE\x00\x00")
    assert records[1] == (b"!example.com-", b"Example.COM\x0089\x0089\x00/D/Ex\x00-\x00")


def test_value_is_cut_at_the_sixth_colon() -> None:
    records = cdb_records("+a.com-:u:1:2:/d:-:ext:more:stuff:\n.\n")
    assert records[0] == (b"!a.com-", b"u\x001\x002\x00/d\x00-\x00ext")


def test_lines_after_the_dot_are_ignored() -> None:
    text = "+a.com-:u:1:2:/d:-::\n.\nno colon here\n\0 even a NUL\n+b.com-:u:1:2:/d:-::\n"
    assert cdb_records(text) == [(b"!a.com-", b"u\x001\x002\x00/d\x00-\x00"), (b"", b"-")]


def test_dot_line_may_carry_text_and_lack_a_newline() -> None:
    assert cdb_records("+a.com-:u:1:2:/d:-::\n.whatever") == cdb_records("+a.com-:u:1:2:/d:-::\n.\n")
    assert cdb_records(".") == [(b"", b"")]
    assert cdb_records(".\n") == [(b"", b"")]


def test_wildchars_are_distinct_last_characters_in_order() -> None:
    text = ("+a.com-:u:1:2:/d:-::\n+b.com.:u:1:2:/d:-::\n+c.com-:u:1:2:/d:-::\n"
            "=x:u:1:2:/d:::\n+d.com+:u:1:2:/d:-::\n.\n")
    assert cdb_records(text)[-1] == (b"", b"-.+")


def test_wildchar_keeps_its_original_case() -> None:
    # qmail-newu.c: byte_chr(wildchars.s, wildchars.len, line.s[i - 1]) -- line, not key
    assert cdb_records("+FOO:u:1:2:/d:-::\n.\n")[-1] == (b"", b"O")


@pytest.mark.parametrize("text", [
    "+a.com-:u:1:2:/d:-::\n",                    # no final '.'
    "+a.com-:u:1:2:/d:-::",                      # ... and no newline
    "",                                          # empty file
    "+a.com-:u:1:2:/\0d:-::\n.\n",               # NUL in a line
    "+a.com-\n.\n",                              # no ':'
    ":u:1:2:/d:-::\n.\n",                        # ':' at position 0
    "\n.\n",                                     # empty line
    "+a.com-:u:1:2:/d:-:\n.\n",                  # only 5 colons after the name
])
def test_malformed_assign_is_corrupt(text: str) -> None:
    with pytest.raises(CorruptData):
        cdb_records(text)


def test_parse_entry_ignores_other_shapes() -> None:
    assert parse_entry("=joe:joe:1000:1000:/home/joe:::") is None
    assert parse_entry("+a.com-:u:x:2:/d:-::") is None
    assert parse_entry("+a.com:u:1:2:/d:-::") is None
    assert parse_entry("+a.com-:u:1:2:/d") is None
    assert parse_entry("+alias.org-:example.com:89:89:/d/example.com:-::") == AssignEntry(
        "alias.org", "example.com", 89, 89, "/d/example.com")


# sort order -------------------------------------------------------------------------------------

def test_sort_key_puts_the_last_two_labels_first() -> None:
    assert sort_key("+x.example.com-:x:1:1:/d:-::") == "example.com.x"
    assert sort_key("+a.b.example.com-:x:1:1:/d:-::") == "example.com.a.b"
    assert sort_key("+example.com-:x:1:1:/d:-::") == "example.com"


def test_domain_sort_key_is_c_extract_domain() -> None:
    """C's extract_domain: the last two labels first, then the rest in order; strtok drops
    empty labels and reads at most 10; one label stays as it is (hand-run vectors)."""
    assert domain_sort_key("example.com") == "example.com"
    assert domain_sort_key("a.b.c.example.com") == "example.com.a.b.c"
    assert domain_sort_key("localhost") == "localhost"
    assert domain_sort_key("com.") == "com."
    assert domain_sort_key("a..b.c") == "b.c.a"
    labels = [f"l{i}" for i in range(12)]
    assert domain_sort_key(".".join(labels)) == ".".join(["l8", "l9", *labels[:8]])
    assert sort_key("+mail.example.com-:mail.example.com:89:89:/d:-::") == "example.com.mail"
    assert control_sort_key("mail.example.com:mail.example.com") == "example.com.mail"


def test_insert_sorted_is_c_update_file() -> None:
    """A sorted file gets the line before the first greater key; a file out of order is
    sorted as a whole, as C's next vadddomain did ("Out of order entries found")."""
    key = control_sort_key
    assert insert_sorted(["alpha.com", "zeta.org"], "www.beta.net", key) == [
        "alpha.com", "www.beta.net", "zeta.org"]
    assert insert_sorted(["alpha.com", "beta.net"], "zeta.org", key) == [
        "alpha.com", "beta.net", "zeta.org"]
    assert insert_sorted(["zeta.org", "alpha.com"], "mail.beta.com", key) == [
        "alpha.com", "mail.beta.com", "zeta.org"]
    assert insert_sorted([], "a.com", key) == ["a.com"]


def test_subdomain_sorts_next_to_its_parent() -> None:
    domains = ["zz.example.com", "b.org", "example.net", "x.example.com", "example.com", "a.com",
               "mail.b.org"]
    lines = sorted((entry(d).line() for d in domains), key=sort_key)
    order = [parse_entry(line).domain for line in lines]
    assert order == ["a.com", "b.org", "mail.b.org", "example.com", "x.example.com",
                     "zz.example.com", "example.net"]


def test_add_assign_keeps_assign_sorted(api) -> None:
    qmail: QmailFiles = api.qmail
    domains = ["zz.example.com", "b.org", "example.net", "x.example.com", "example.com", "a.com"]
    for domain in domains:
        qmail.add_assign(entry(domain))
    qmail.add_assign(entry("alias.example.net", "example.com"))
    lines = qmail.assign_lines()
    assert lines == sorted(lines, key=sort_key)
    assert [e.domain for e in qmail.entries()] == [
        "a.com", "b.org", "example.com", "x.example.com", "zz.example.com", "example.net",
        "alias.example.net"]
    alias = qmail.entries()[-1]
    assert alias.is_alias and alias.dir == "/home/vpopmail/domains/example.com"
    assert read(qmail.path("users", "assign")).endswith("\n.\n")


# lookup -----------------------------------------------------------------------------------------

def test_lookup_real_and_alias_domain(api) -> None:
    qmail: QmailFiles = api.qmail
    qmail.add_assign(entry("example.com"))
    qmail.add_assign(entry("alias.org", "example.com"))
    real = assign.lookup(qmail.root, "example.com")
    assert real == entry("example.com")
    alias = assign.lookup(qmail.root, "alias.org")
    assert alias == AssignEntry("alias.org", "example.com", 89, 89, "/home/vpopmail/domains/example.com")
    assert alias.is_alias
    assert assign.lookup(qmail.root, "other.org") is None
    assert assign.lookup(qmail.root, "com") is None


def test_lookup_without_users_cdb_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "users").mkdir()
    with pytest.raises(CorruptData):
        assign.lookup(str(tmp_path), "example.com")
    with pytest.raises(CorruptData):
        assign.lookup(str(tmp_path / "nowhere"), "example.com")


@pytest.mark.parametrize("keep", [0, 10, 2047, 2100])
def test_lookup_in_truncated_users_cdb_is_corrupt(tmp_path: Path, keep: int) -> None:
    (tmp_path / "users").mkdir()
    records = cdb_records("".join(entry(f"d{i}.example").line() + "\n" for i in range(40)) + ".\n")
    data = build(records)
    (tmp_path / "users" / "cdb").write_bytes(data[:keep])
    for i in range(40):
        with pytest.raises(CorruptData):
            assign.lookup(str(tmp_path), f"d{i}.example")


def test_lookup_of_a_bad_record_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "cdb").write_bytes(build([
        (b"!bad.com-", b"bad.com\x00eighty\x0089\x00/d\x00-\x00"),
        (b"!short.com-", b"short.com\x0089"),
    ]))
    for domain in ("bad.com", "short.com"):
        with pytest.raises(CorruptData):
            assign.lookup(str(tmp_path), domain)


domain_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domain_name = st.builds(lambda labels: ".".join(labels), st.lists(domain_label, min_size=2, max_size=4))


@settings(max_examples=40, deadline=None)
@given(domains=st.lists(domain_name, min_size=1, max_size=30, unique=True), data=st.data())
def test_every_domain_is_found_after_build(domains: list[str], data: st.DataObject) -> None:
    reals = domains[: max(1, len(domains) // 2)]
    entries = [AssignEntry(d, d, 89, 89, f"/home/vpopmail/domains/{d}") for d in reals]
    for alias in domains[len(reals):]:
        target = data.draw(st.sampled_from(reals))
        entries.append(AssignEntry(alias, target, 89, 89, f"/home/vpopmail/domains/{target}"))
    lines = sorted((e.line() for e in entries), key=sort_key)
    text = "".join(line + "\n" for line in lines) + ".\n"
    with tempfile.TemporaryDirectory() as tmp:
        os.mkdir(os.path.join(tmp, "users"))
        with open(os.path.join(tmp, "users", "cdb"), "wb") as fh:
            fh.write(build(cdb_records(text)))
        for e in entries:
            assert assign.lookup(tmp, e.domain) == e
        assert assign.lookup(tmp, "not-there.invalid") is None


# QmailFiles: rcpthosts, morercpthosts, virtualdomains, locals -----------------------------------

def control(qmail: QmailFiles, name: str) -> str:
    return read(qmail.path("control", name))


def test_add_domain_writes_the_control_files(api) -> None:
    qmail: QmailFiles = api.qmail
    os.makedirs(qmail.path("control"), exist_ok=True)
    with open(qmail.path("control", "locals"), "w") as fh:
        fh.write("localhost\nexample.com\nmail.example.org\n")
    qmail.add_domain(entry("example.com"))
    assert control(qmail, "rcpthosts") == "example.com\n"
    assert control(qmail, "virtualdomains") == "example.com:example.com\n"
    assert control(qmail, "locals") == "localhost\nmail.example.org\n"
    assert not os.path.exists(qmail.path("control", "morercpthosts"))
    assert not os.path.exists(qmail.path("control", "morercpthosts.cdb"))
    assert read(qmail.path("users", "assign")) == entry("example.com").line() + "\n.\n"


def test_add_domain_creates_empty_locals(api) -> None:
    qmail: QmailFiles = api.qmail
    if os.path.exists(qmail.path("control", "locals")):
        os.unlink(qmail.path("control", "locals"))
    qmail.add_domain(entry("example.com"))
    assert control(qmail, "locals") == ""


def test_add_domain_twice_is_refused(api) -> None:
    qmail: QmailFiles = api.qmail
    qmail.add_domain(entry("example.com"))
    with pytest.raises(DomainAlreadyExists):
        qmail.add_domain(entry("example.com"))
    assert control(qmail, "rcpthosts") == "example.com\n"


@needs_tinycdb
def test_morercpthosts_past_fifty_domains(api) -> None:
    qmail: QmailFiles = api.qmail
    qmail.sync = False
    names = [f"d{i:02d}.example" for i in range(MAX_RCPTHOSTS + 2)]
    for name in names:
        qmail.add_domain(entry(name))
    assert control(qmail, "rcpthosts") == "".join(n + "\n" for n in names[:50])
    assert control(qmail, "morercpthosts") == "d50.example\nd51.example\n"
    assert cdb_dump(qmail.path("control", "morercpthosts.cdb")) == (
        b"+11,0:d50.example->\n+11,0:d51.example->\n\n")
    assert control(qmail, "virtualdomains") == "".join(f"{n}:{n}\n" for n in names)
    for name in names:
        assert assign.lookup(qmail.root, name) == entry(name)

    qmail.remove_domain("d51.example")
    assert control(qmail, "morercpthosts") == "d50.example\n"
    assert cdb_dump(qmail.path("control", "morercpthosts.cdb")) == b"+11,0:d50.example->\n\n"
    qmail.remove_domain("d50.example")
    assert control(qmail, "morercpthosts") == ""
    assert cdb_dump(qmail.path("control", "morercpthosts.cdb")) == b"\n"
    qmail.remove_domain("d07.example")
    assert "d07.example" not in control(qmail, "rcpthosts").split("\n")
    assert "d07.example:d07.example\n" not in control(qmail, "virtualdomains")
    assert assign.lookup(qmail.root, "d07.example") is None
    assert assign.lookup(qmail.root, "d08.example") == entry("d08.example")


@needs_tinycdb
def test_morercpthosts_cdb_skips_comments_like_qmail_newmrh(api) -> None:
    qmail: QmailFiles = api.qmail
    os.makedirs(qmail.path("control"), exist_ok=True)
    with open(qmail.path("control", "rcpthosts"), "w") as fh:
        fh.write("".join(f"r{i:02d}.example\n" for i in range(MAX_RCPTHOSTS)))
    with open(qmail.path("control", "morercpthosts"), "w") as fh:
        fh.write("# extra hosts\nold.example\n")
    qmail.add_domain(entry("new.example"))
    assert control(qmail, "morercpthosts") == "# extra hosts\nnew.example\nold.example\n"
    assert cdb_dump(qmail.path("control", "morercpthosts.cdb")) == (
        b"+11,0:new.example->\n+11,0:old.example->\n\n")


@needs_tinycdb
def test_remove_domain_leaves_empty_files(api) -> None:
    qmail: QmailFiles = api.qmail
    qmail.add_domain(entry("example.com"))
    qmail.remove_domain("example.com")
    assert read(qmail.path("users", "assign")) == ".\n"
    assert control(qmail, "rcpthosts") == ""
    assert control(qmail, "virtualdomains") == ""
    assert cdb_dump(qmail.path("users", "cdb")) == b"+0,0:->\n\n"
    assert assign.lookup(qmail.root, "example.com") is None
    with pytest.raises(DomainDoesNotExist):
        qmail.remove_domain("example.com")


def test_remove_domain_keeps_other_virtualdomains_lines(api) -> None:
    qmail: QmailFiles = api.qmail
    qmail.add_domain(entry("example.com"))
    qmail.add_domain(entry("example.org"))
    with open(qmail.path("control", "virtualdomains"), "a") as fh:
        fh.write("lists.example.com:alias-lists\n")
    qmail.remove_domain("example.com")
    assert control(qmail, "virtualdomains") == ("example.org:example.org\n"
                                                "lists.example.com:alias-lists\n")
    assert control(qmail, "rcpthosts") == "example.org\n"


def test_foreign_lines_in_assign_are_preserved(api) -> None:
    qmail: QmailFiles = api.qmail
    foreign = ["=joe:joe:1000:1000:/home/joe:::", "+list-:lists:1001:1001:/var/lists:-::"]
    os.makedirs(qmail.path("users"), exist_ok=True)
    with open(qmail.path("users", "assign"), "w") as fh:
        fh.write("\n".join(foreign) + "\n.\n")
    qmail.add_domain(entry("example.com"))
    qmail.add_domain(entry("b.org"))
    lines = qmail.assign_lines()
    assert all(f in lines for f in foreign)
    assert len(lines) == 4
    qmail.remove_domain("example.com")
    assert qmail.assign_lines() == [line for line in lines if "example.com" not in line]
    records = dict(cdb_records(read(qmail.path("users", "assign"))))
    assert records[b"!joe\0"] == b"joe\x001000\x001000\x00/home/joe\x00\x00"
    assert records[b"!list-"] == b"lists\x001001\x001001\x00/var/lists\x00-\x00"
    from vpopmail.cdb import lookup as cdb_lookup
    assert cdb_lookup(qmail.path("users", "cdb"), b"!joe\0") == records[b"!joe\0"]
    assert assign.lookup(qmail.root, "b.org") == entry("b.org")


def test_assign_without_final_dot_is_refused(api) -> None:
    qmail: QmailFiles = api.qmail
    os.makedirs(qmail.path("users"), exist_ok=True)
    with open(qmail.path("users", "assign"), "w") as fh:
        fh.write(entry("a.com").line() + "\n")
    with pytest.raises(CorruptData):
        qmail.add_domain(entry("example.com"))
    assert read(qmail.path("users", "assign")) == entry("a.com").line() + "\n"


def test_random_add_order_gives_sorted_assign(api) -> None:
    qmail: QmailFiles = api.qmail
    qmail.sync = False
    domains = [f"{p}{i}.example.{tld}" for i in range(4) for p in ("a", "m") for tld in ("com", "net")]
    domains += ["example.com", "example.net"]
    random.Random(7).shuffle(domains)
    for domain in domains:
        qmail.add_assign(entry(domain))
    lines = qmail.assign_lines()
    assert lines == sorted(lines, key=sort_key)
    assert len(lines) == len(domains)
