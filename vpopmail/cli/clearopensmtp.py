"""clearopensmtp: forget roaming IPs older than relay.relay_clear_minutes and rebuild
tcp.smtp.cdb (run from cron, e.g. every 30 minutes; as root it works as the vpopmail user)."""
from __future__ import annotations

import os

from vpopmail import config as vconfig
from vpopmail.cli.common import operands, run
from vpopmail.stores import open_stores

USAGE = """\
clearopensmtp: usage: [options]
options:
-v (print version number)
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        operands(argv, 0)
        settings = vconfig.load(config)
        if os.geteuid() == 0 and settings.uid != 0:
            os.setgroups([])
            os.setgid(settings.gid)
            os.setuid(settings.uid)
        open_stores(settings).relay(settings.locks_timeout).clear(
            settings.relay_relay_clear_minutes)
        return 0

    return run(body, USAGE)
