"""vdeluser: delete a user and its mail."""
from __future__ import annotations

from vpopmail.cli.common import open_api, operands, run

USAGE = """\
vdeluser: usage: [options] email_address
options: -v (print version number)
"""


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        address = operands(argv, 1)[0]  # first: --help needs no configuration
        open_api(config).delete_user(address)
        return 0

    return run(body, USAGE)
