"""tcprules without tcprules: the cdb records ucspi-tcp's ``tcprules`` writes for a rules text.

The grammar is ucspi-tcp 0.88's (§D.7 of the behaviour notes) with one extension from the IPv6
patch (Debian's ucspi-tcp-ipv6): the address ends at the first ``:`` followed by ``allow`` or
``deny``, so ``::1:allow`` has the address ``::1`` where plain 0.88 rejects the line. Otherwise
plain 0.88 is followed where the two differ: a line without a colon, or of blanks only, is
skipped, one whose colons are not followed by allow/deny is rejected (the IPv6 tcprules never
returns on any of these). Write the image with :func:`vpopmail.cdbwrite.build`.

IPv6: tcpserver (IPv6 build) looks up exactly the string it puts in ``TCPREMOTEIP`` (then its
prefixes): dotted quad for an IPv4 client (``::ffff:a.b.c.d`` under ``tcpserver -6``, and then
never the dotted quad nor ``127.``-style prefixes, only ``::ffff:127.``), and for an IPv6 client
its own compact form: lower-case hex, the longest run of zero words (the first of equal runs,
even a single word) as ``::``, e.g. ``2001:db8::1:1:1:1:1`` where RFC 5952 keeps
``2001:db8:0:1:1:1:1:1``. :func:`rule_for_ip` writes the address in that form.
"""
from vpopmail.errors import BadInput

_RELAY = b':allow,RELAYCLIENT="",RBLSMTPD=""'
_ULONG = (1 << 64) - 1  # scan_ulong wraps around in an unsigned long
_DIGITS = b"0123456789"
_HEX = "0123456789abcdefABCDEF"


def _action_colon(line: bytes) -> int:
    """Index of the first ``:`` followed by ``allow`` or ``deny``; -1 if none."""
    colon = line.find(b":")
    while colon >= 0 and not line.startswith((b"allow", b"deny"), colon + 1):
        colon = line.find(b":", colon + 1)
    return colon


def _number(field: bytes) -> int:
    """tcprules' getnum: leading digits (modulo 2**64) up to the end or a NUL; -1 if invalid."""
    digits = field[:len(field) - len(field.lstrip(_DIGITS))]
    if len(digits) < len(field) and field[len(digits)]:
        return -1
    value = 0
    for at in range(0, len(digits), 1000):  # int() refuses more than 4300 digits at once
        chunk = digits[at:at + 1000]
        value = (value * 10 ** len(chunk) + int(chunk)) & _ULONG
    return value


def _unparsable(source: str, number: int, line: bytes) -> BadInput:
    return BadInput(f"{source} line {number}: unable to parse this line: {line!r}")


def compile_rules(text: bytes, source: str = "tcp.smtp") -> list[tuple[bytes, bytes]]:
    """The (key, value) records tcprules stores for ``text``, in order. A line tcprules
    rejects raises BadInput naming ``source`` and the line number."""
    records: list[tuple[bytes, bytes]] = []
    for number, line in enumerate(text.split(b"\n"), 1):
        if not line or line[0] == 35:  # '#'
            continue
        line = line.rstrip(b" \t")
        colon = _action_colon(line)
        if colon < 0:
            if b":" in line:
                raise _unparsable(source, number, line)
            continue
        if line.startswith(b"deny", colon + 1):
            data, at = [b"D\0"], colon + 5
        else:
            data, at = [], colon + 6
        end = len(line)
        while at < end:
            equals = line.find(b"=", at)
            if line[at] != 44 or equals < 0 or equals + 1 == end:  # ','
                raise _unparsable(source, number, line)
            close = line.find(line[equals + 1], equals + 2)
            if close < 0:
                raise _unparsable(source, number, line)
            data.append(b"+%s%s\0" % (line[at + 1:equals + 1], line[equals + 2:close]))
            at = close + 1
        value = b"".join(data)
        address = line[:colon]
        dash = address.find(b"-")
        if dash < 0 or b"=" in address or b"@" in address:
            records.append((address, value))
            continue
        left = address.rfind(b".", 0, dash) + 1
        right = address.find(b".", dash)
        right = len(address) if right < 0 else right
        bottom, top = _number(address[left:dash]), _number(address[dash + 1:right])
        if bottom < 0 or top < 0:
            raise _unparsable(source, number, line)
        head, tail = address[:left], address[right:]
        records.extend((b"%s%d%s" % (head, n, tail), value)
                       for n in range(bottom, min(top, 255) + 1))
    return records


def _ip4(text: str) -> list[int] | None:
    """The four octets of a dotted quad (no leading zeros, as inet_pton); None if not one."""
    parts = text.split(".")
    if len(parts) != 4 or any(not 0 < len(p) < 4 or p.lstrip("0123456789")
                              or (p[0] == "0" and p != "0") or int(p) > 255 for p in parts):
        return None
    return [int(p) for p in parts]


def _ip6(text: str) -> list[int] | None:
    """The eight 16-bit words of an IPv6 address in any text form; None if not one."""
    last = text.rpartition(":")[2]
    if "." in last:
        octets = _ip4(last)
        if octets is None:
            return None
        high, low = octets[0] << 8 | octets[1], octets[2] << 8 | octets[3]
        text = f"{text[:len(text) - len(last)]}{high:x}:{low:x}"
    head, double, tail = text.partition("::")
    halves = [half.split(":") if half else [] for half in (head, tail)]
    groups = halves[0] + halves[1]
    if any(not 0 < len(g) < 5 or g.lstrip(_HEX) for g in groups) or (
            len(groups) > 7 if double else len(groups) != 8):
        return None
    words = [int(g, 16) for g in groups]
    return words[:len(halves[0])] + [0] * (8 - len(words)) + words[len(halves[0]):]


def _ip6_fmt(words: list[int]) -> str:
    """tcpserver's text for an IPv6 address (its ip6_fmt)."""
    if words[:6] == [0, 0, 0, 0, 0, 0xFFFF]:
        return f"::ffff:{words[6] >> 8}.{words[6] & 255}.{words[7] >> 8}.{words[7] & 255}"
    start = length = run = 0
    for at, word in enumerate(words):
        run = 0 if word else run + 1
        if run > length:
            start, length = at + 1 - run, run
    hexes = [f"{word:x}" for word in words]
    if not length:
        return ":".join(hexes)
    return ":".join(hexes[:start]) + "::" + ":".join(hexes[start + length:])


def rule_for_ip(ip: str) -> bytes:
    """vpopmail's roaming-user rule for ``ip``: ``<ip>:allow,RELAYCLIENT="",RBLSMTPD=""``, the
    address in the form tcpserver looks up. Raises BadInput if ``ip`` is not an IP address."""
    if ":" in ip:
        words = _ip6(ip)
        if words is not None:
            return _ip6_fmt(words).encode() + _RELAY
    elif _ip4(ip) is not None:
        return ip.encode() + _RELAY
    raise BadInput(f"not an IP address: {ip!r}")


def ip_of_rule(rule: bytes) -> bytes:
    """The address of a rule line (IPv4 or IPv6): the text before the colon tcprules takes as
    the end of the address, or before the first colon if there is no such colon."""
    colon = _action_colon(rule)
    return rule[:colon] if colon >= 0 else rule.partition(b":")[0]
