"""All watchers of the gateway: one per (mailbox, folder), shared by every subscriber.

Subscribers are counted per mailbox, whoever they are (the mailbox's agent, a parent of it, any
number of each): a (mailbox, folder) is never watched twice, so a message is processed once.
A mailbox with several folders is watched by an `AccountWatcher` (one NOTIFY connection where
the server allows it); one with a single folder by a `FolderWatcher`.

`always` mailboxes are watched from start-up. `on_demand` ones start with their first
subscriber and log out `on_demand_linger_seconds` after the last one leaves, so a client that
reconnects at once does not cost a new IMAP login.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Collection, Iterable

from gatewayd.config import WATCH_ALWAYS, Config, MailboxConfig
from gatewayd.imap.cancel import cancel_until_done
from gatewayd.imap.notify import AccountWatcher
from gatewayd.imap.sent import SentLearner, SentLog
from gatewayd.imap.sync import MessageProcessor, Publisher
from gatewayd.imap.watch import FolderWatcher, StopReason
from gatewayd.store import EventStore

log = logging.getLogger(__name__)

SENT_READS_AT_ONCE = 4


class WatcherPool:
    def __init__(
        self,
        config: Config,
        store: EventStore,
        process: MessageProcessor,
        publish: Publisher,
        sent_log: SentLog | None = None,
    ) -> None:
        """`sent_log`: where the recipients of each mailbox's Sent folder are learnt (None: not)."""
        self._mailboxes = {mailbox.id: mailbox for mailbox in config.mailboxes()}
        self._store = store
        self._process = process
        self._publish = publish
        self._sent_log = sent_log
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}
        self._watchers: dict[str, list[FolderWatcher]] = {}
        self._learners: dict[str, SentLearner] = {}
        # Sent folder reads open a connection each and list the folder's UIDs: a few at a time
        # (a first start with 1,000 mailboxes would otherwise open 1,000 at once).
        self._sent_reads = asyncio.Semaphore(SENT_READS_AT_ONCE)
        self._subscribers: Counter[str] = Counter()
        self._linger: dict[str, asyncio.TimerHandle] = {}
        self._closed = False
        self._stopping: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        for mailbox in self._mailboxes.values():
            if mailbox.watch == WATCH_ALWAYS:
                self._start(mailbox)

    def _start(self, mailbox: MailboxConfig) -> None:
        if mailbox.id in self._tasks or self._closed:
            return
        sent = None
        if self._sent_log is not None and mailbox.imap.sent_folder is not None:
            sent = self._learners[mailbox.id] = SentLearner(mailbox, self._sent_log, self._sent_reads)
        if len(mailbox.imap.folders) > 1:
            account = AccountWatcher(mailbox, self._store, self._process, self._publish, sent)
            self._watchers[mailbox.id] = account.folders
            self._tasks[mailbox.id] = [asyncio.create_task(account.run(), name=f"watch:{mailbox.id}")]
        else:
            folder = mailbox.imap.folders[0]
            watcher = FolderWatcher(mailbox, folder, self._store, self._process, self._publish, sent)
            self._watchers[mailbox.id] = [watcher]
            self._tasks[mailbox.id] = [
                asyncio.create_task(watcher.run(), name=f"watch:{mailbox.id}/{watcher.folder}")
            ]
        log.info("watching %s (%s)", mailbox.id, ", ".join(mailbox.imap.folders))

    def acquire(self, mailbox_ids: Iterable[str]) -> None:
        """A subscriber wants these mailboxes watched."""
        for mailbox_id in mailbox_ids:
            self._subscribers[mailbox_id] += 1
            if handle := self._linger.pop(mailbox_id, None):
                handle.cancel()
            mailbox = self._mailboxes.get(mailbox_id)
            if mailbox is not None:
                self._start(mailbox)

    def release(self, mailbox_ids: Iterable[str]) -> None:
        for mailbox_id in mailbox_ids:
            self._subscribers[mailbox_id] -= 1
            mailbox = self._mailboxes.get(mailbox_id)
            if self._subscribers[mailbox_id] > 0 or mailbox is None or mailbox.watch == WATCH_ALWAYS:
                continue
            del self._subscribers[mailbox_id]
            if self._closed:
                continue
            loop = asyncio.get_running_loop()
            self._linger[mailbox_id] = loop.call_later(
                mailbox.on_demand_linger_seconds, self._stop_later, mailbox_id
            )

    def _stop_later(self, mailbox_id: str) -> None:
        self._linger.pop(mailbox_id, None)
        task = asyncio.create_task(self._stop(mailbox_id, StopReason.ON_DEMAND_IDLE))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _stop(self, mailbox_id: str, reason: StopReason) -> None:
        tasks = self._tasks.pop(mailbox_id, [])
        # Taken with the tasks: a subscriber back while they log out starts a learner of its own.
        learner = self._learners.pop(mailbox_id, None)
        for watcher in self._watchers.pop(mailbox_id, []):
            watcher.stop_reason = reason
        await cancel_until_done(tasks)
        if learner is not None:
            await learner.close()
        if tasks:
            log.info("stopped watching %s", mailbox_id)

    def is_watching(self, mailbox_id: str) -> bool:
        return mailbox_id in self._tasks

    async def drain(self) -> None:
        """Shutdown, before subscribers are told: every watcher stores and publishes what it
        holds and processes no more mail; the connections stay open until `close`."""
        watchers = [watcher for folders in self._watchers.values() for watcher in folders]
        results = await asyncio.gather(*(watcher.drain() for watcher in watchers), return_exceptions=True)
        for watcher, result in zip(watchers, results, strict=True):
            # Shutdown goes on (closing, LOGOUT, the stores closed): what could not be stored is
            # fetched again after the restart, its checkpoint never having moved past it.
            if isinstance(result, Exception):
                log.error("%s/%s: could not store what it held at shutdown: %s", *watcher.key, result)

    async def close(self) -> None:
        """Log out of every server (after the SSE connections are gone)."""
        self._closed = True
        for handle in self._linger.values():
            handle.cancel()
        self._linger.clear()
        stops = (self._stop(mailbox_id, StopReason.SHUTDOWN) for mailbox_id in list(self._tasks))
        await asyncio.gather(*stops, *self._stopping)

    def health(self) -> list[dict[str, object]]:
        report: list[dict[str, object]] = []
        for mailbox in self._mailboxes.values():
            watchers = self._watchers.get(mailbox.id)
            if not watchers:
                report.append({"mailbox_id": mailbox.id, "watch": mailbox.watch, "state": "not_watching"})
                continue
            for watcher in watchers:
                status = watcher.status
                report.append(
                    {
                        "mailbox_id": mailbox.id,
                        "folder": watcher.folder,
                        "watch": mailbox.watch,
                        "state": status.state,
                        "since": status.since,
                        "last_error": status.last_error,
                        "uidvalidity": status.uidvalidity,
                        "last_uid": status.last_uid,
                        "reconnects": status.reconnects,
                        "notify": status.notify,
                        "push_to_event_ms": _spread(status.push_to_event_ms),
                    }
                )
        return report


def _spread(samples: Collection[float]) -> dict[str, float] | None:
    """count, p50 and p99 of a watcher's recent samples; None before the first."""
    if not samples:
        return None
    ordered = sorted(samples)
    last = len(ordered) - 1
    return {"count": len(ordered), "p50": ordered[last // 2], "p99": ordered[last * 99 // 100]}
