"""vpopmaild's line protocol: ``+OK `` / ``+OK+`` / ``-ERR major.minor text`` answers, CRLF
lines, multi-line answers ended by ``.``; requests read with a timeout, a length cap and no NUL.
"""
from __future__ import annotations

import os
import select
import time

OK = "+OK "
OK_MORE = "+OK+"
END = "."
#: C's strtok delimiter sets
TOKENS = " \n\t\r"
PASS_TOKENS = "\n\r"
PARAM_TOKENS = " =:\n\r"
#: C reads a request with fgets into 1024 bytes: 1023 characters and the newline
MAX_LINE = 1023
READ_TIMEOUT = 60.0

#: vpopmaild.msg's ErrorMessages, by major number (37 and 38 had no text in C: it read past
#: the end of its table)
MESSAGES = {
    1: "Can't open authentication database", 2: "Too many actions before login",
    3: "Read Timeout", 4: "Invalid Command", 5: "Too many invalid login attempts",
    6: "Email Address Required", 7: "Password Required", 8: "Invalid Login",
    9: "Not Authorized", 10: "Invalid Email Address", 11: "Not Authorized for domain",
    12: "User does not exist", 13: "Domain Required", 14: "Alias Name Required",
    15: "Invalid Alias Name Supplied", 16: "Alias Line Required", 17: "Alias Insertion Failed",
    18: "Alias Removal Failed", 19: "Alias Deletion Failed",
    20: "Invalid Directory.  .. not allowed in path",
    21: "Invalid Directory.  % not allowed in path",
    22: "Invalid Directory.  Do you need a trailing '/'?",
    23: "Invalid Directory. Found / before @", 24: "Invalid Directory. Can't parse email address",
    25: "Invalid Directory. Unknown email address", 26: "Unauthorized Directory.",
    27: "Directory Required.", 28: "Source File Name Required",
    29: "Destination File Name Required", 30: "Filename Required",
    31: "Could not open assign file", 32: "IP Required", 33: "Not Available",
    34: "Could not get limits", 35: "Could not set limits", 36: "Not Implemented yet",
    37: "IP Required", 38: "Invalid Domain",
}


class Refusal(Exception):
    """An ``-ERR`` answer; ``text`` defaults to C's message of ``major``."""

    def __init__(self, major: int, minor: int, text: str | None = None) -> None:
        super().__init__(f"-ERR {major}.{minor:03d} {MESSAGES[major] if text is None else text}")


class Raw(Refusal):
    """An ``-ERR`` answer written exactly as given (C's get_*_size used no major.minor)."""

    def __init__(self, text: str) -> None:
        Exception.__init__(self, f"-ERR {text}")


class Hangup(Exception):
    """The connection ends: the client closed it, or it must be dropped (``answer`` last)."""

    def __init__(self, answer: str = "", code: int = 0) -> None:
        super().__init__(answer)
        self.answer = answer
        self.code = code


class BadLine(Exception):
    """A request line that is refused as a whole (too long, NUL byte)."""


class Tokens:
    """C's ``strtok`` over one request line: each call skips leading delimiters, takes the
    token up to the next delimiter and consumes that one delimiter."""

    def __init__(self, line: str) -> None:
        self.line = line
        self.pos = 0

    def next(self, delimiters: str = TOKENS) -> str | None:
        line, i = self.line, self.pos
        while i < len(line) and line[i] in delimiters:
            i += 1
        if i >= len(line):
            self.pos = len(line)
            return None
        j = i
        while j < len(line) and line[j] not in delimiters:
            j += 1
        self.pos = min(j + 1, len(line))
        return line[i:j]


def atoi(text: str | None) -> int:
    """C's atoi: the leading (signed) decimal digits, 0 if none."""
    text = (text or "").lstrip(" \t")
    sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+") if
                                                           text[:1] == "+" else text)
    number = ""
    for ch in digits:
        if not ch.isdigit() or not ch.isascii():
            break
        number += ch
    return sign * int(number) if number else 0


class Channel:
    """The connection: requests from ``rfd``, answers to ``wfd``."""

    def __init__(self, rfd: int = 0, wfd: int = 1, timeout: float = READ_TIMEOUT) -> None:
        self.rfd, self.wfd, self.timeout = rfd, wfd, timeout
        self.buffer = b""
        self.eof = False

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.rfd], [], [], remaining)[0]:
            raise TimeoutError
        chunk = os.read(self.rfd, 4096)
        if not chunk:
            self.eof = True
        self.buffer += chunk

    def pending(self, wait: float) -> bool:
        """Whether more input is here or comes within ``wait`` seconds (a client that sent
        its next lines without waiting for an answer)."""
        return bool(self.buffer) or self.eof or bool(select.select([self.rfd], [], [], wait)[0])

    def read_line(self) -> str:
        """The next request line without its line end. Raises TimeoutError when none comes
        within the timeout, Hangup at the end of input, BadLine (after discarding it) for a
        line longer than MAX_LINE or one holding a NUL byte."""
        deadline = time.monotonic() + self.timeout
        too_long = False
        while True:
            cut = self.buffer.find(b"\n")
            if cut < 0 and len(self.buffer) > MAX_LINE + 1:  # + its CR, the LF yet to come
                too_long = True
                self.buffer = b""
            if cut >= 0:
                raw, self.buffer = self.buffer[:cut], self.buffer[cut + 1:]
                break
            if self.eof:
                if not self.buffer and not too_long:
                    raise Hangup()
                raw, self.buffer = self.buffer, b""
                break
            self._fill(deadline)
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        if too_long or len(raw) > MAX_LINE:
            raise BadLine(f"line longer than {MAX_LINE} characters")
        if b"\0" in raw:
            raise BadLine("NUL byte in line")
        return raw.decode("utf-8", "surrogateescape")

    def read_block(self, limit: int) -> tuple[list[str], str]:
        """Lines up to a ``.`` line (C: any line starting with ``.``, here exactly ``.``).
        Returns (lines, problem): after a bad line or ``limit`` bytes the rest is read and
        dropped, and ``problem`` says why; it is "" when all is well."""
        lines: list[str] = []
        size, problem = 0, ""
        while True:
            try:
                line = self.read_line()
            except BadLine as exc:
                problem = problem or str(exc)
                continue
            if line == END:
                return lines, problem
            size += len(line) + 1
            if size > limit:
                problem = problem or f"more than {limit} bytes"
            if not problem:
                lines.append(line)

    def send(self, *lines: str) -> None:
        """Write ``lines``, at most PIPE_BUF bytes once the client can take them; a client
        that takes nothing for ``timeout`` seconds is dropped (Hangup), as C's wait_write."""
        data = "".join(line + "\r\n" for line in lines).encode("utf-8", "surrogateescape")
        while data:
            if not select.select([], [self.wfd], [], self.timeout)[1]:
                raise Hangup("", 1)
            data = data[os.write(self.wfd, data[:select.PIPE_BUF]):]
