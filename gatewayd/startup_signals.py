"""Stop signals (SIGTERM, SIGINT) in the first moments of a command, before it can act on them.

Importing what a command needs takes a fraction of a second, long enough for a SIGTERM from
systemd or a quick Ctrl-C to land in it and get its default action: killed with nothing closed,
or a KeyboardInterrupt traceback. The entry point holds them first, importing nothing heavy;
the command then takes them over (`take`) or leaves them to their defaults (`release`).
"""

from __future__ import annotations

import signal
from types import FrameType

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_held: list[int] = []
_holding = False


def hold() -> None:
    """The entry point's first step: a stop signal is noted, no more, until `take` or `release`."""
    global _holding
    _holding = True
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _note)


def _note(signum: int, _frame: FrameType | None) -> None:
    _held.append(signum)


def take() -> int | None:
    """The first stop signal held so far, for a command whose own handlers are now installed."""
    global _holding
    _holding = False
    return _held[0] if _held else None


def release() -> None:
    """A command that leaves stop signals to their defaults: restored, and one held is acted on now
    (SIGTERM ends the process, SIGINT raises KeyboardInterrupt). Nothing when none were held."""
    if not _holding:
        return
    take()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if _held:
        signal.raise_signal(_held[0])
