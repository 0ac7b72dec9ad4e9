# the C module behind the signal module, imported alone by vdelivermail and vchkpw
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

_Handler = Callable[[int, FrameType | None], Any] | int | None

SIG_DFL: Final[int]
SIG_IGN: Final[int]
SIGPIPE: Final[int]
SIGXFSZ: Final[int]

def signal(signalnum: int, handler: _Handler, /) -> _Handler: ...
