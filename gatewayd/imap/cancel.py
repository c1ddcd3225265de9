"""Ending watcher tasks for sure: Python 3.11's `asyncio.wait_for` returns the answer instead of
raising when a cancellation comes as its inner future finishes, and the task goes on as if never
cancelled. A task group cancels its tasks once; these are cancelled again until they end."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

# How long a cancelled task has to end before it is cancelled again.
RECANCEL_SECONDS = 0.5


async def cancel_until_done(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel the tasks, again every RECANCEL_SECONDS, until every one has ended. A cancellation
    of the caller meanwhile does not cut the wait short (the tasks would outlive it): it is raised
    once they have ended."""
    pending = {task for task in tasks if not task.done()}
    cancelled = False
    while pending:
        for task in pending:
            task.cancel()
        try:
            await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
        except asyncio.CancelledError:
            cancelled = True
        pending = {task for task in pending if not task.done()}
    if cancelled:
        raise asyncio.CancelledError
