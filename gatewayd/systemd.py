"""sd_notify(3) without a dependency: one datagram to $NOTIFY_SOCKET; the watchdog's keep-alive."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send e.g. "READY=1" to systemd; a no-op (False) when not run under Type=notify. As with
    sd_notify(3), a socket that cannot take it (gone, refused: a NOTIFY_SOCKET inherited from
    elsewhere; full: systemd busy) is logged and returns False, never blocking the event loop:
    the daemon runs and shuts down all the same."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address  # abstract socket namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.send(state.encode(), socket.MSG_DONTWAIT)
    except OSError as exc:
        log.warning("cannot notify systemd at NOTIFY_SOCKET %s: %s", address, exc.strerror or exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """How often to send WATCHDOG=1: half the unit's WatchdogSec=, as sd_watchdog_enabled(3)
    reads it from the environment; None when systemd expects no keep-alive from this process."""
    usec, pid = os.environ.get("WATCHDOG_USEC", ""), os.environ.get("WATCHDOG_PID")
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:  # "²" passes isdigit(), not int()
        return None
    if pid is not None and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


async def keep_watchdog_fed(interval: float) -> None:
    """WATCHDOG=1 every `interval` seconds from the event loop: a loop stuck for WatchdogSec gets
    the daemon restarted (Restart=on-failure)."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
