"""Group commit: the appends made in one turn of the event loop share one transaction.

Under load several watchers finish a message in the same turn of the loop (one poll returns the
data of many mailboxes). Committed one by one, each append pays a transaction's fixed cost: the
write lock, and the WAL frames of every b-tree it touches, about 11 pages for one message (~0.12 ms
of CPU against ~0.05 ms a message in a group). Held until the loop's next turn, the appends of a
turn commit together, as PostgreSQL's and MySQL's group commits do: the more watchers are ready at
once, the larger the group, so the store's cost per message falls as the load rises. A lone append
waits one turn of the loop (a few microseconds).

Each append still gets its own answer: when a group's transaction fails, its appends run again one
by one, so an error reaches only the appends it belongs to. An append whose caller is cancelled
before its group commits is not stored. Groups commit one at a time, in order, and each group's
callers resume in its order, so events are published in seq order.
"""

from __future__ import annotations

import asyncio

from gatewayd.store.sqlite_append import Append, append_rows
from gatewayd.store.sqlite_writer import APPEND_PAGES, SqliteWriter

# What an append gets back: the created_at of its transaction and each row's seq (None: skipped).
Appended = tuple[str, list[int | None]]


class GroupCommit:
    """The event log's appends, committed in groups (one per turn of the loop) by `writer`."""

    def __init__(self, writer: SqliteWriter) -> None:
        self._writer = writer
        self._waiting: list[tuple[Append, asyncio.Future[Appended]]] = []
        # A commit task is scheduled that has not taken `_waiting` yet: a new append joins it.
        self._scheduled = False
        self._committing = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def append(self, append: Append) -> Appended:
        """Commit `append` (its rows and checkpoint) with the others of this turn of the loop."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Appended] = loop.create_future()
        self._waiting.append((append, answer))
        if not self._scheduled:
            self._scheduled = True
            task = loop.create_task(self._commit())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await answer

    async def close(self) -> None:
        """Wait for the groups already scheduled to commit."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _commit(self) -> None:
        async with self._committing:
            # Taken only now: appends made while the group before was committing join this one.
            self._scheduled = False
            group = [(append, answer) for append, answer in self._waiting if not answer.cancelled()]
            self._waiting = []
            try:
                if len(group) == 1:
                    await self._commit_one(*group[0])
                elif group:
                    await self._commit_group(group)
            except BaseException as exc:  # cancelled (the loop is closing): no caller may hang
                for _, answer in group:
                    if answer.done():
                        continue
                    if isinstance(exc, asyncio.CancelledError):
                        answer.cancel()
                    else:
                        answer.set_exception(exc)
                raise

    async def _commit_group(self, group: list[tuple[Append, asyncio.Future[Appended]]]) -> None:
        appends = [append for append, _ in group]
        pages = APPEND_PAGES + sum(len(rows) for rows, _ in appends)
        try:
            created_at, seqs = await self._writer.write(append_rows, appends, pages=pages)
        except Exception:
            # Which append failed, and whether the others can commit, only their own
            # transactions can tell.
            for append, answer in group:
                if not answer.cancelled():
                    await self._commit_one(append, answer)
            return
        for (_, answer), append_seqs in zip(group, seqs, strict=True):
            if not answer.cancelled():  # committed all the same: as if cancelled just after
                answer.set_result((created_at, append_seqs))

    async def _commit_one(self, append: Append, answer: asyncio.Future[Appended]) -> None:
        pages = APPEND_PAGES + len(append[0])
        try:
            created_at, (seqs,) = await self._writer.write(append_rows, [append], pages=pages)
        except Exception as exc:
            if not answer.cancelled():
                answer.set_exception(exc)
        else:
            if not answer.cancelled():
                answer.set_result((created_at, seqs))
