"""The outbox: auto-replies and forwards, each tried once inline and then retried in the background.

The rules make the first attempt while the message is processed, bounded by the mailbox's
`smtp.timeout_seconds`, so the event can say `ok` (with the mail's Message-ID) or what went wrong.
A failure that may pass (`retry`) is then retried by `run()`, a background task, with exponential
back-off and jitter from `smtp.retry_initial_seconds` up to `smtp.retry_max_seconds`, at most
`smtp.retry_attempts` attempts in all; when it finally goes out or is given up, a `message.action`
event says so. The watcher never waits for a retry: after a failure that may pass, or a connection
lost or timed out at the data (`unknown`), the mailbox's SMTP server counts as down, and later mail
goes straight to the queue until a background attempt gets through.

Mail is never sent twice: an attempt is recorded (`sending`) before it starts, and one that a
crash interrupted is `unknown` afterwards, never resent. One cancelled (a shutdown, an on-demand
watcher stopping) is settled before it ends, by how far it got: cut off before the data it is
`retry`, its reservation kept, and retried as any other, without waiting for the message's watcher
to come back (delivery needs none); after, `unknown`. An attempt in flight is `attempting`, so the
rules engine, finishing the message meanwhile, never takes its `sending` for a crash's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

from gatewayd.config import MailboxConfig
from gatewayd.events import Event, NewEvent
from gatewayd.send.smtp import Progress, SendResult, send
from gatewayd.store import EventStore
from gatewayd.store.journal import FAILED, HELD, RETRY, SENDING, SENT, UNKNOWN, OutboxItem, RuleJournal

log = logging.getLogger(__name__)

MESSAGE_ACTION = "message.action"
INTERRUPTED = "interrupted while sending; not sent again (it may have been delivered)"
_IDLE_WAKE_SECONDS = 60.0


def mailbox_removed(mailbox_id: str) -> str:
    """Why what a mailbox no longer configured left to do is not done."""
    return f'mailbox "{mailbox_id}" was removed from the configuration'


class SentRecorder(Protocol):
    def record_sent(self, mailbox_id: str, address: str) -> None: ...


class Outbox:
    def __init__(
        self,
        journal: RuleJournal,
        mailboxes: Mapping[str, MailboxConfig],
        store: EventStore | None = None,
        publish: Callable[[list[Event]], None] | None = None,
        learning: SentRecorder | None = None,
    ) -> None:
        self._journal = journal
        self._mailboxes = dict(mailboxes)
        self._store = store
        self._publish = publish
        self._learning = learning
        self._wake = asyncio.Event()
        # mailbox id -> until when its SMTP server counts as down (no inline attempts).
        self._down_until: dict[str, float] = {}
        # The items whose attempt is in flight, from before their `sending` to after its settlement.
        self._attempting: set[int] = set()

    def wake(self) -> None:
        self._wake.set()

    def attempting(self, item_id: int) -> bool:
        """Whether an attempt of this process is sending the item now: its `sending` is no
        crash's. True from before `sending` is written until after the attempt is settled."""
        return item_id in self._attempting

    async def send_inline(self, item: OutboxItem) -> SendResult:
        """The first attempt, from the rules; a retry is left to `run` (the watcher never waits)."""
        mailbox = self._mailboxes.get(item.mailbox_id)
        if mailbox is None or mailbox.smtp is None:
            result = SendResult(FAILED, "the mailbox has no smtp: section")
            await self._settle(item, result, attempts=item.attempts + 1, inline=True)
            return result
        if self._down_until.get(item.mailbox_id, 0) > time.monotonic():
            result = SendResult(RETRY, "the SMTP server failed recently; queued for the next attempt")
            await self._settle(item, result, attempts=item.attempts, inline=True)
            return result
        return await self._attempt(item, mailbox, inline=True)

    async def _attempt(self, item: OutboxItem, mailbox: MailboxConfig, inline: bool) -> SendResult:
        self._attempting.add(item.id)
        try:
            return await self._send_and_settle(item, mailbox, inline)
        finally:
            self._attempting.discard(item.id)

    async def _send_and_settle(self, item: OutboxItem, mailbox: MailboxConfig, inline: bool) -> SendResult:
        """One attempt, settled. One cancelled (gatewayd or the watcher stopping) is settled by how
        far it got before the cancellation goes on, so that mail cut off before the data is retried
        rather than taken for `unknown`."""
        assert mailbox.smtp is not None
        attempts = item.attempts + 1
        progress = Progress()
        try:
            await self._journal.outbox_update(item.id, SENDING, attempts=attempts)
            result = await send(
                mailbox.smtp, item.envelope_from, item.recipients, item.message, progress=progress
            )
        except asyncio.CancelledError:
            cut_off = progress.cut_off("cancelled by a stop")
            try:
                await _despite_cancellation(self._settle(item, cut_off, attempts, inline))
            except Exception:  # left `sending`: `unknown` after the restart, the safe side
                log.exception("outbox: could not record an attempt a stop cut off")
            raise
        if result.status == SENT:
            self._down_until.pop(item.mailbox_id, None)
        elif result.status in (RETRY, UNKNOWN):
            # A server that broke off or stalled at the data would hold the watcher up again.
            self._down_until[item.mailbox_id] = time.monotonic() + mailbox.smtp.retry_initial_seconds
        await self._settle(item, result, attempts, inline)
        return result

    def next_attempt_at(self, item: OutboxItem, attempts: int) -> float:
        smtp = self._mailboxes[item.mailbox_id].smtp
        assert smtp is not None
        step = min(smtp.retry_max_seconds, smtp.retry_initial_seconds * 2 ** max(0, attempts - 1))
        return time.time() + step / 2 + random.random() * step / 2

    async def _settle(self, item: OutboxItem, result: SendResult, attempts: int, inline: bool) -> str:
        """Record the attempt's outcome; returns the item's new state."""
        smtp = self._mailboxes[item.mailbox_id].smtp if item.mailbox_id in self._mailboxes else None
        state = result.status
        if state == RETRY and (smtp is None or attempts >= smtp.retry_attempts):
            state = FAILED
        next_at = self.next_attempt_at(item, max(attempts, 1)) if state == RETRY else None
        await self._journal.outbox_update(
            item.id, state, attempts=attempts, next_attempt_at=next_at, last_error=result.error
        )
        if state == SENT and self._learning is not None:
            for recipient in item.recipients:
                await asyncio.to_thread(self._learning.record_sent, item.mailbox_id, recipient)
        if state == FAILED and item.kind == "auto_reply":
            # It never went out: a later message from the same sender may be answered.
            await self._journal.release_reservation(item.mailbox_id, item.key)
        if state == RETRY:
            self.wake()
        if not inline and state in (SENT, FAILED, UNKNOWN):
            await self._announce(item, state, attempts, result.error)
        return state

    async def give_up(self, item: OutboxItem, reason: str) -> None:
        """Settle the item for good without an attempt (its mailbox or folder is gone) and announce it: mail
        never attempted or waiting for a retry is `failed` for `reason`, an attempt a crash cut off
        `unknown`; mail already settled is announced as it stands (the store skips it when it
        was announced before)."""
        if item.state in (HELD, RETRY):
            await self._settle(item, SendResult(FAILED, reason), item.attempts, inline=False)
        elif item.state == SENDING:
            await self._journal.outbox_update(item.id, UNKNOWN, last_error=INTERRUPTED)
            await self._announce(item, UNKNOWN, item.attempts, INTERRUPTED)
        else:
            await self._announce(item, item.state, item.attempts, item.last_error)

    async def _announce(self, item: OutboxItem, state: str, attempts: int, error: str | None) -> None:
        if self._store is None or self._publish is None:
            return
        data: dict[str, Any] = {
            **item.info,
            "outcome": "ok" if state == SENT else state,
            "error": error,
            "attempts": attempts,
            "sent_message_id": item.message_id,
            "to": list(item.recipients),
        }
        event = NewEvent(
            MESSAGE_ACTION, item.agent_id, item.mailbox_id, data, dedupe_key=f"outbox\x1f{item.id}\x1f{state}"
        )
        self._publish(await self._store.append([event]))

    async def run(self) -> None:
        """Retry what is due, until cancelled. First: background attempts a crash interrupted."""
        for item in await self._journal.outbox_orphans():
            await self._journal.outbox_update(item.id, UNKNOWN, last_error=INTERRUPTED)
            await self._announce(item, UNKNOWN, item.attempts, INTERRUPTED)
        while True:
            self._wake.clear()  # before reading what is due: a wake from now on is not lost
            try:
                for item in await self._journal.outbox_due(time.time()):
                    mailbox = self._mailboxes.get(item.mailbox_id)
                    if mailbox is None or mailbox.smtp is None:
                        gone = (
                            mailbox_removed(item.mailbox_id)
                            if mailbox is None
                            else "the mailbox has no smtp: section"
                        )
                        await self._settle(item, SendResult(FAILED, gone), item.attempts, False)
                        continue
                    await self._attempt(item, mailbox, inline=False)
                next_due = await self._journal.outbox_next_due()
            except Exception:
                log.exception("outbox: retrying failed")
                next_due = None
            delay = _IDLE_WAKE_SECONDS if next_due is None else max(0.0, next_due - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(delay, _IDLE_WAKE_SECONDS))


async def _despite_cancellation(work: Coroutine[Any, Any, Any]) -> None:
    """Run `work` to its end even when cancelled meanwhile (the pool cancels a stopping watcher
    again until it ends): a settlement cut short would leave the mail `sending`. Bounded by the
    journal's busy timeout; the cancellation is the caller's to raise, `work`'s exception is raised."""
    task = asyncio.create_task(work)
    while True:
        try:
            await asyncio.shield(task)
            return
        except asyncio.CancelledError:
            if task.done():
                raise
