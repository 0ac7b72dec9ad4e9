"""Parsers and formatters of the delivery agent: maildir_to_email, the trace-header scan, the
.qmail line classifier and the forward Delivered-To transform."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import delivery.message as dm
from delivery import dotqmail
from delivery.message import Message
from delivery.vdelivermail import Vdelivermail, maildir_to_email
from vpopmail import config as vconfig
from vpopmail.names import dot_qmail_order

SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


# behaviour.md A.10 [run] vectors
@pytest.mark.parametrize(("path", "cwd", "expected"), [
    ("/home/vpopmail/domains/example.com/john/Maildir/", "", "john@example.com"),
    ("/home/vpopmail/domains/0/example.com/5/john.doe/Maildir/", "", "john.doe@example.com"),
    ("/home/vpopmail/domains/example.com/john/Maildir", "", "john@example.com"),
    ("/home/vpopmail/domains/example.com/john/Maildir/.Sent/", "", "john@example.com"),
    ("/home/vpopmail/domains/example.com/postmaster/Maildir/Maildir/", "", "Maildir@example.com"),
    ("/var/mail/john/Maildir/", "", ""),
    ("./Maildir/", "/x/domains/ex.org/bob", "bob@ex.org"),
    # resolved before the search (C: "bob@.." and "" for the last two)
    ("/x/domains/ex.org/bob/./Maildir/", "", "bob@ex.org"),
    ("./../bob/Maildir/", "/x/domains/ex.org/alice", "bob@ex.org"),
    ("../bob/Maildir/", "/x/domains/ex.org/alice", "bob@ex.org"),
])
def test_maildir_to_email(path: str, cwd: str, expected: str) -> None:
    assert maildir_to_email(path, cwd) == expected


def message_of(tmp_path: Path, data: bytes) -> Message:
    path = tmp_path / f"m{os.getpid()}-{len(data)}-{hash(data)}"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    return Message(fd, len(data))


address = st.from_regex(r"[a-z0-9.]{1,10}@[a-z0-9]{1,8}\.test", fullmatch=True)


@SETTINGS
@given(others=st.lists(st.sampled_from([b"Subject: x", b"X-Long: " + b"v" * 300, b"To: a@b"]),
                       max_size=5),
       traced=st.lists(address, max_size=6), eol=st.sampled_from([b"\n", b"\r\n"]),
       fold=st.booleans(), chunk=st.sampled_from([3, 16, 65536]))
def test_trace_finds_every_delivered_to(tmp_path: Path, others: list[bytes], traced: list[str],
                                        eol: bytes, fold: bool, chunk: int) -> None:
    headers = list(others)
    for addr in traced:
        sep = eol + b"\t" if fold else b" "
        headers.append(b"Delivered-To:" + sep + addr.upper().encode())
    body = eol.join(headers) + eol + eol + b"Delivered-To: body@not.header" + eol
    old = dm.CHUNK
    dm.CHUNK = chunk
    try:
        seen, count = message_of(tmp_path, body).trace()
    finally:
        dm.CHUNK = old
    assert seen == frozenset(a.encode() for a in traced)
    assert count == len(traced)


def test_trace_of_headers_without_body(tmp_path: Path) -> None:
    seen, count = message_of(tmp_path, b"Delivered-To: a@b.test").trace()
    assert (seen, count) == (frozenset({b"a@b.test"}), 1)


@pytest.mark.parametrize(("line", "parsed"), [
    ("# c", ("comment", "# c")), ("+list", ("list", "")), ("+other", ("comment", "+other")),
    ("|  prog arg", ("program", "prog arg")), ("./Maildir/", ("maildir", "./Maildir/")),
    ("/abs/Maildir/  \t", ("maildir", "/abs/Maildir/")), ("./mbox", ("mbox", "./mbox")),
    ("&a@b.test", ("forward", "a@b.test")), ("a@b.test ", ("forward", "a@b.test")),
    ("", None), ("   ", None),
])
def test_parse_line(line: str, parsed: tuple[str, str] | None) -> None:
    assert dotqmail.parse_line(line) == parsed


@given(st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=50))
def test_parse_line_never_keeps_trailing_blanks(line: str) -> None:
    parsed = dotqmail.parse_line(line)
    if parsed is not None:
        assert parsed[1] == parsed[1].rstrip(" \t\r")
        assert parsed[0] in {"comment", "list", "program", "maildir", "mbox", "forward"}


def test_dot_qmail_order_is_qmail_locals() -> None:
    """dot-qmail(5): for ``foo-bar`` qmail-local tries .qmail-foo-bar, .qmail-foo-default,
    .qmail-default, with $DEFAULT the part the ``default`` stands for. The one order: the
    .qmail files and the valias rows both follow it."""
    assert dot_qmail_order("foo-bar") == [("foo-bar", None), ("foo-default", "bar"),
                                          ("default", "foo-bar")]
    assert dot_qmail_order("a--b") == [("a--b", None), ("a--default", "b"), ("a-default", "-b"),
                                       ("default", "a--b")]
    assert dot_qmail_order("x") == [("x", None), ("default", "x")]


def test_candidates() -> None:
    assert dotqmail.candidates("") == [".qmail"]
    assert dotqmail.candidates("a-b-c") == [".qmail-a-b-c", ".qmail-a-b-default",
                                            ".qmail-a-default", ".qmail-default", ".qmail"]
    assert dotqmail.candidates("../x") == [".qmail"]


# behaviour.md A.8 vectors, plus what happens without a DTLINE
@pytest.mark.parametrize(("dtline", "target", "expected"), [
    (b"Delivered-To: x-y-z.com-fred@x-y-z.com\n", "t@e.test", b"Delivered-To: fred@x-y-z.com\n"),
    (b"Delivered-To: alias.org-bob@alias.org\n", "t@e.test", b"Delivered-To: bob@alias.org\n"),
    (b"Delivered-To: example.com-nobody@example.com\n", "t@e.test",
     b"Delivered-To: nobody@example.com\n"),
    (b"", "t@e.test", b"Delivered-To: t@e.test\n"),
])
def test_forward_header(dtline: bytes, target: str, expected: bytes) -> None:
    run = Vdelivermail(vconfig.defaults(), {b"RPLINE": b"Return-Path: <s@r>\n", b"DTLINE": dtline})
    assert run.forward_header(target) == b"Return-Path: <s@r>\n" + expected
