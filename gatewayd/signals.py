"""What `gatewayd run` is asked by signal, from its first moments to its exit: stop (SIGTERM,
SIGINT) and reload (SIGHUP).

Left to their default actions, they would end the process on the spot before the daemon is up
(a SIGHUP from a log rotation) or in the middle of its shutdown (a second SIGTERM; a second
Ctrl-C raises KeyboardInterrupt wherever the shutdown is, which can leave it hanging). So they
are caught for the whole run: a stop is acted on once and a repeat is logged and ignored; a
reload waits until the daemon is up, and is ignored once it is shutting down.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CAUGHT = (*STOP_SIGNALS, signal.SIGHUP)


class RunSignals:
    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self._reload: Callable[[], None] | None = None
        self._reload_pending = False

    def catch(self) -> None:
        """Before the event loop runs (as `gatewayd run` starts): a signal is noted, no more."""
        for signum in CAUGHT:
            signal.signal(signum, self._caught)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop takes the signals over, for as long as it runs."""
        for signum in CAUGHT:
            loop.add_signal_handler(signum, self.received, signum)

    def started(self, reload: Callable[[], None]) -> None:
        """The daemon is up: SIGHUP calls `reload` from now on, at once if one came meanwhile."""
        self._reload = reload
        if self._reload_pending and not self.stop.is_set():
            self._reload_pending = False
            reload()

    def _caught(self, signum: int, _frame: FrameType | None) -> None:
        self.received(signum)

    def received(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stop.is_set():
            log.info("%s ignored: already shutting down", name)
        elif signum in STOP_SIGNALS:
            self.stop.set()
        elif self._reload is None:
            self._reload_pending = True
            log.info("%s: the configuration is read again once gatewayd is up", name)
        else:
            self._reload()
