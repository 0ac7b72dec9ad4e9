"""The catch-all line's words, split as /bin/sh splits them (a differential against dash)."""
from __future__ import annotations

import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st

from vpopmail.catchall import action_of, line, sh_words

#: characters sh takes without expanding or running anything (no $, `, operators, globs)
WORDISH = st.text(alphabet="ab@-/. \t'\"\\", max_size=24)


def sh_split(text: str) -> list[str] | None:
    """What /bin/sh hands a program for the command line ``text`` (None: a syntax error)."""
    result = subprocess.run(["/bin/sh", "-c", f"printf '%s\\0' {text}"], capture_output=True)
    if result.returncode != 0:
        return None
    words = result.stdout.split(b"\0")[:-1]
    return [w.decode() for w in words] if text.strip(" \t") else []


@settings(max_examples=300, deadline=None)
@given(WORDISH)
def test_words_as_sh_splits_them(text: str) -> None:
    ours = sh_words(text)
    if ours is None:
        assert sh_split(text) is None, text
    else:
        expected = sh_split(text)
        assert expected is not None, text
        assert (ours or [""]) == (expected or [""]), text


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1,
               max_size=40))
def test_every_action_written_reads_back(action: str) -> None:
    assert action_of(line("/home/vpopmail/bin/vdelivermail", action)) == action


def test_c_and_quoted_lines() -> None:
    assert action_of("| /home/vpopmail/bin/vdelivermail '' bounce-no-mailbox\n") == \
        "bounce-no-mailbox"
    assert action_of('| /v/bin/vdelivermail "" "sales$dept@other.com"\n') == "sales$dept@other.com"
    assert action_of("| /v/bin/vdelivermail '' 'a'\\''b@x.org'\n") == "a'b@x.org"
    assert action_of("| /v/bin/vdelivermail '' 'unterminated\n") is None
    assert action_of("| /v/bin/other '' x\n") is None and action_of("&x@y.org\n") is None
