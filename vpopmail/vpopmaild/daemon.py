"""One vpopmaild connection from greeting to goodbye: the session with the command table."""
import sys

from vpopmail import config as vconfig
from vpopmail.api import Vpopmail
from vpopmail.errors import VpopmailError, explain
from vpopmail.stores import drop_kept_connections
from vpopmail.vpopmaild.commands import COMMANDS, HELP
from vpopmail.vpopmaild.protocol import Channel, Hangup, Refusal
from vpopmail.vpopmaild.session import Session


def serve_connection(timeout: float, config: str | None) -> int:
    """Serve one connection on stdin/stdout (under tcpserver); the exit status."""
    channel = Channel(timeout=timeout)
    try:
        api = Vpopmail(vconfig.load(config))
    except VpopmailError as exc:
        print(f"vpopmaild: {explain(exc, 'vpopmaild')}", file=sys.stderr)
        channel.send(str(Refusal(1, 101)))
        return 111
    try:
        Session(api, channel).serve(COMMANDS, HELP)
    except Hangup as end:
        if end.answer:
            try:
                channel.send(end.answer)
            except OSError:
                pass
        return end.code
    except OSError:  # the client went away while we wrote
        return 0
    finally:
        api.backend.close()
        drop_kept_connections()
    return 0
