"""Dovecot 2.4's logins through vpopmail-server: 2.4 has no checkpassword driver, so its Lua
passdb and userdb (packaging/dovecot/vpopmail-auth.lua, Debian's dovecot-auth-lua) ask the
server over HTTP on its lookup socket (``paths.lookup_socket``; the main socket serves them
too), one POST a connection, as the callers of ``server.dovecot_callers`` only:

    POST /passdb  user=alice%40example.com&password=...&service=imap&rip=192.0.2.7&lip=...
    POST /userdb  user=alice%40example.com&service=lmtp&rip=&lip=

Each runs vchkpw as Dovecot 2.3's checkpassword driver ran it (its variables: ORIG_UID,
SERVICE, TCPREMOTEIP, TCPLOCALIP; AUTHORIZED=1 for a userdb lookup, which needs no
password; the credentials on descriptor 3), so a login does all a vchkpw login does (the
flags and domain limits, lastauth, the roaming relay, learned and rehashed passwords, the
user's Maildir made where it is missing). The answer: 200 with ``name=value`` lines (values
percent-encoded) of what vchkpw would have exec'd Dovecot's reply with (``user``, ``home``,
``uid``, ``gid``); 403 when vchkpw refused the login (exit 1: wrong password, unknown user,
service denied), 404 when a userdb lookup found no user (exit 3), 503 for a local fault
(exit 111: Dovecot answers a temporary failure, never a wrong password), 400 for a request
that is not one of these."""
import os
import socket
import time

from vpopmail.wire import Drop

#: what a request may hold: its head (request line and headers), its body
MAX_HEAD, MAX_BODY = 4096, 4096
#: the start of every request this module serves (peeked at before the binary protocol)
METHOD = b"POST "
KINDS = ("/passdb", "/userdb")
#: the request's fields (any other is refused)
FIELDS = frozenset({"user", "password", "service", "rip", "lip"})
#: vchkpw's program, as Dovecot 2.3's driver named it (never run): for a SERVICE it has no
#: flag for (doveadm, sieve, lmtp) vchkpw then checks a POP login, as it did behind 2.3
PROGRAM = "/usr/lib/dovecot/checkpassword-reply"
#: vchkpw's exit code -> HTTP status
STATUS = {1: 403, 3: 404}
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           503: "Service Unavailable"}


class BadRequest(Exception):
    """A request this module does not serve (400)."""


def is_lookup(conn: socket.socket, deadline: float) -> bool:
    """Whether the connection's first bytes are METHOD's (peeked: nothing is consumed), as
    soon as they tell; False when the peer sent less and closed."""
    while True:
        seen = conn.recv(len(METHOD), socket.MSG_PEEK)
        if not METHOD.startswith(seen) or len(seen) == len(METHOD) or not seen:
            return seen == METHOD
        if time.monotonic() > deadline:
            raise Drop("timed out")
        time.sleep(0.001)  # a peer that sent part of the word: the rest comes at once


def read_lookup(conn: socket.socket, deadline: float) -> tuple[str, dict[str, str]]:
    """(kind, fields) of the request on ``conn``: ``/passdb`` or ``/userdb`` and its form
    fields. BadRequest for anything else; Drop when the peer leaves or is too slow."""
    from urllib.parse import parse_qsl, urlsplit

    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            raise BadRequest("request head too long")
        data += _receive(conn, deadline)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    target, _, version = rest.partition(" ")
    if method != "POST" or not version.startswith("HTTP/1."):
        raise BadRequest(f"not a POST request: {lines[0][:80]!r}")
    kind = urlsplit(target).path
    if kind not in KINDS:
        raise BadRequest(f"no such lookup: {kind[:80]!r}")
    length = None
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest("a header without a colon")
        if name.strip().lower() == "transfer-encoding":
            raise BadRequest("a transfer encoding (send Content-Length)")
        if name.strip().lower() == "content-length":
            if length is not None or not value.strip().isdecimal():  # 0-9 (latin-1)
                raise BadRequest("a bad Content-Length")
            length = int(value)
    if length is None or length > MAX_BODY:
        raise BadRequest(f"a body of {length} bytes (Content-Length, at most {MAX_BODY})")
    while len(body) < length:
        body += _receive(conn, deadline)
    try:
        pairs = parse_qsl(body[:length].decode("ascii"), keep_blank_values=True,
                          strict_parsing=bool(length), errors="surrogateescape",
                           max_num_fields=8)
    # what is logged quotes no part of the body but FIELDS' names: a client that did not
    # encode a password's & or = would have its parts there (the ValueError's text, a name)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"a bad form body ({exc.reason} at byte {exc.start})") from None
    except ValueError:
        raise BadRequest("a bad form body (a field without =, or more than 8)") from None
    fields = dict(pairs)
    if len(fields) != len(pairs) or not FIELDS.issuperset(fields) or not fields.get("user"):
        named = sorted(name if name in FIELDS else "?" for name, _ in pairs)
        raise BadRequest(f"fields {named} (user and {', '.join(sorted(FIELDS - {'user'}))} "
                         f"only, each once)")
    if any("\0" in value for value in fields.values()):
        raise BadRequest("a NUL in a field")
    return kind, fields


def _receive(conn: socket.socket, deadline: float) -> bytes:
    if time.monotonic() > deadline:
        raise Drop("timed out")
    try:
        chunk = conn.recv(MAX_HEAD + MAX_BODY)
    except BlockingIOError:
        raise Drop("timed out") from None
    if not chunk:
        raise Drop("the peer closed the connection mid-request")
    return chunk


def vchkpw_variables(kind: str, fields: dict[str, str], caller: int) -> dict[str, str]:
    """What Dovecot 2.3's checkpassword driver gave vchkpw, for this request."""
    variables = {"ORIG_UID": str(caller), "SERVICE": fields.get("service", ""),
                 "TCPREMOTEIP": fields.get("rip", ""), "TCPLOCALIP": fields.get("lip", ""),
                 "PATH": "/usr/bin:/bin"}
    if kind == "/userdb":
        variables["AUTHORIZED"] = "1"
    return variables


def credentials(kind: str, fields: dict[str, str]) -> bytes:
    """vchkpw's descriptor 3: the login and (for /passdb) the password, NUL-terminated."""
    password = fields.get("password", "") if kind == "/passdb" else ""
    return (fields["user"] + "\0" + password + "\0\0").encode("utf-8", "surrogateescape")


def answer(kind: str, env: dict[str, str]) -> dict[str, str]:
    """The fields of a 200 from vchkpw's exec environment: Dovecot's name for the user (the
    real domain's, for a login through an alias domain), its home and ids."""
    fields = {"user": env["USER"], "home": env["HOME"], "uid": env["userdb_uid"],
              "gid": env["userdb_gid"]}
    if kind == "/passdb":  # a passdb gives the userdb's fields with its prefix
        fields = {"user": fields.pop("user"), **{f"userdb_{k}": v for k, v in fields.items()}}
    return fields


def respond(conn: socket.socket, status: int, fields: dict[str, str] | None = None) -> None:
    """Send the HTTP answer and end the connection (one request a connection: a worker is
    never held by a client's idle keep-alive)."""
    from urllib.parse import quote

    body = "".join(f"{name}={quote(value, safe='/@:+,')}\n"
                   for name, value in (fields or {}).items()).encode("ascii")
    head = (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii")
    conn.sendall(head + body)


def feed_descriptor_3(data: bytes) -> None:
    """A pipe holding ``data`` (less than a pipe's buffer) as descriptor 3, its writing end
    closed: vchkpw reads it to its end."""
    read, write = os.pipe()
    try:
        os.write(write, data)
    finally:
        os.close(write)
    if read != 3:
        os.dup2(read, 3, inheritable=False)
        os.close(read)
