"""vpopmail-server: the resident process behind the C front ends of vdelivermail and vchkpw.

With it running, bin/vdelivermail and bin/vchkpw (small C programs) hand each run to it over
its Unix socket (paths.server_socket); a worker that takes the caller's uid, gid and groups
runs the same Python code the programs run directly, without an interpreter start per
message or login. When it is down, the front ends run the Python programs in PREFIX/libexec/
themselves: only speed changes. Run it in the foreground, as root, under systemd or
daemontools (packaging/service/)."""
import sys

from vpopmail.cmdline import OPTIONS, USAGE_ERROR, answer

USAGE = """\
usage: vpopmail-server [--status | --check]
  runs in the foreground; SIGTERM stops it (requests in flight finish), SIGHUP restarts it
  with the installed code and configuration (unless --check fails: then it says why in its
  log and serves on as it was)
  --status  says whether the server is up and what it is doing (exit 1: it is down, or
            it did not answer within 10 s)
  --check   says whether a server started now would start: the installed code imports,
            the configuration loads, the sockets can be made (exit 111 and why: it would not)
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 1 and args[0] in OPTIONS:
        return answer(args[0], USAGE)
    if args not in ([], ["--status"], ["--check"]):
        print(USAGE, end="", file=sys.stderr)
        return USAGE_ERROR
    from vpopmail.server import run

    return run(config, args[0].removeprefix("--") if args else "serve")
