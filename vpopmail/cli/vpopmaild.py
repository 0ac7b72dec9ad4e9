"""vpopmaild: vpopmail's network administration daemon (vpopmail 5.4.33's protocol, as
Roundcube's vpopmaild password driver and control panels speak it). It serves one connection
on stdin/stdout, so it runs under tcpserver, as root:
``tcpserver -HRD 127.0.0.1 89 ~vpopmail/bin/vpopmaild``. It sends passwords in clear: bind it
to localhost, or put it behind stunnel."""
import sys

from vpopmail.cmdline import OPTIONS, USAGE_ERROR, answer
from vpopmail.vpopmaild.protocol import READ_TIMEOUT

USAGE = """\
usage: vpopmaild [-t read_timeout_seconds]
Serves one connection on stdin and stdout, so it runs under tcpserver, as root:
  tcpserver -HRD -c 20 127.0.0.1 89 ~vpopmail/bin/vpopmaild
-t: seconds a client may stay silent before it is dropped (default 60).
It sends passwords in clear: bind it to localhost, or put it behind stunnel.
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    timeout = READ_TIMEOUT
    if len(args) == 1 and args[0] in OPTIONS:
        return answer(args[0], USAGE)
    seconds = (args[1] if len(args) == 2 and args[0] == "-t"
               else args[0][2:] if len(args) == 1 and args[0].startswith("-t") else "")
    if seconds.isascii() and seconds.isdigit() and int(seconds) > 0:  # -t N, or -tN (getopt)
        timeout = float(seconds)
    elif args:  # stdout is the client's connection: the usage goes to stderr (tcpserver's log)
        print(USAGE, end="", file=sys.stderr)
        return USAGE_ERROR
    from vpopmail.vpopmaild.daemon import serve_connection

    return serve_connection(timeout, config)
