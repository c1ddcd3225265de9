"""Polling helpers: tests wait for a condition with a generous bound, never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def hold_loop_until(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    """Poll without yielding to the event loop, so what another thread hands the loop meanwhile
    (an executor's result) waits in its queue until the test has acted."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def watcher_states(gw: Any, mailbox_id: str | None = None) -> list[str]:
    return [str(w["state"]) for w in gw.daemon.pool.health() if mailbox_id in (None, w["mailbox_id"])]


def idle(gw: Any, mailbox_id: str | None = None) -> bool:
    states = watcher_states(gw, mailbox_id)
    return bool(states) and all(state == "idle" for state in states)
