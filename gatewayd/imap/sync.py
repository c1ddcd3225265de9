"""A folder's sync: every message above its UID checkpoint processed, stored and published once.

Exactly once: each message becomes an event with the dedupe key (mailbox, folder, UIDVALIDITY,
UID), stored in the same transaction as the folder's UID checkpoint. After a crash the same UIDs
are fetched again and the store skips what it already has.

After a push of a few new messages (the count of EXISTS since the last sync of the same SELECT is
at most FETCH_BATCH) the sync takes them from the push itself when the server sent them with it
(NOTIFY MessageNew with FETCH attributes, asked for by the watcher), still in IDLE (a rule that
acts ends it with its first command), else fetches them at once with
`UID FETCH <checkpoint+1>:*`, without the UID SEARCH round trip; the first sync of a SELECT, a
larger backlog, and a sync no EXISTS called for (a probe, a poll that found nothing) search first
and fetch in batches of FETCH_BATCH.

Commits: a message a push brought is stored and published on its own as soon as it is processed
(latency first; the store commits it with the appends other watchers make in the same turn of the
loop, gatewayd.store.sqlite_group). Messages a search found (a backlog: the catch-up after a
reconnect or restart, a burst larger than one batch, a poll) are stored in group commits of up to
GROUP_COMMIT_MESSAGES, or whatever was processed within GROUP_COMMIT_SECONDS: one transaction
instead of one per message costs about a quarter of the store's CPU per message, and a backlog is
late already.

Shutdown (`drain`): what is held is stored and published before subscribers are told `closing`,
and no more mail is processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

from gatewayd.config import MailboxConfig
from gatewayd.events import Event, NewEvent
from gatewayd.imap.act import MailActions, SessionActions
from gatewayd.imap.resync import new_uids
from gatewayd.imap.session import ImapSession, Selected
from gatewayd.imap.status import WatcherState
from gatewayd.message import FetchedMessage
from gatewayd.store import Checkpoint, EventStore

log = logging.getLogger(__name__)

FETCH_BATCH = 50
# A catch-up's group commit: at most this many messages, held at most this long (see above).
GROUP_COMMIT_MESSAGES = 50
GROUP_COMMIT_SECONDS = 0.025


class MessageProcessor(Protocol):
    """The pipeline, as the watcher sees it (gatewayd.pipeline.Pipeline)."""

    async def process(
        self, mailbox: MailboxConfig, message: FetchedMessage, actions: MailActions | None = None
    ) -> NewEvent | None:
        """The event to store for one message (None: publish nothing), acting through `actions`."""
        ...

    async def recover(self, mailbox: MailboxConfig, actions: MailActions) -> None:
        """Finish what a crash interrupted in the selected folder (the rules journal)."""
        ...


Publisher = Callable[[list[Event]], None]


@dataclass(slots=True)
class _Held:
    """Processed messages whose events are not stored yet: a group commit in the making."""

    events: list[NewEvent] = field(default_factory=list)
    # One per message: what its rules wait for once its event is stored (the rules journal).
    settle: list[SessionActions] = field(default_factory=list)
    # Stored with them (None: nothing to store).
    checkpoint: Checkpoint | None = None
    since: float = 0.0


class FolderSync:
    """The sync of one (mailbox, folder), on whatever connection has it selected; the folder's
    only writer of its checkpoint."""

    def __init__(
        self,
        mailbox: MailboxConfig,
        folder: str,
        store: EventStore,
        process: MessageProcessor,
        publish: Publisher,
        status: WatcherState,
    ) -> None:
        """`status`: the watcher's, whose `last_uid` and `push_to_event_ms` the sync keeps."""
        self.mailbox = mailbox
        self.folder = folder
        self._store = store
        self._process = process
        self._publish = publish
        self._status = status
        self._pushed_at: float | None = None  # when the push the current sync answers came
        # The folder's checkpoint as this sync last stored it (None: read it from the store).
        self._checkpoint: Checkpoint | None = None
        # The last complete sync: the SELECT it ran on and the session's `arrived` count before it.
        # Every message above the checkpoint since then was reported by an EXISTS counted after.
        self._synced: tuple[Selected, int] | None = None
        self._held = _Held()
        # Held while a group is stored and published: `drain` waits for one in progress.
        self._committing = asyncio.Lock()
        self._draining = False

    @property
    def draining(self) -> bool:
        """Drained for shutdown: no more mail is processed."""
        return self._draining

    async def drain(self) -> None:
        """Shutdown, before subscribers are told: store and publish what is held (waiting for a
        commit in progress), and process no more mail. A message being processed now is stored
        when it is done."""
        self._draining = True
        await self._commit()

    @staticmethod
    async def _park() -> NoReturn:
        """Drained: wait for the cancellation that ends the watcher (and then LOGOUT)."""
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable: the future is never resolved")

    async def run(self, session: ImapSession, initial: bool = False, pushed_at: float | None = None) -> bool:
        """Announce every UID above the checkpoint. Returns True when UIDVALIDITY had changed.

        `initial`: the first sync of a connection (the checkpoint is read from the store).
        `pushed_at`: when the push this sync answers reached gatewayd: its events are timed from
        it (`WatcherState.push_to_event_ms`).
        """
        if self._draining:
            await self._park()
        self._pushed_at = pushed_at
        try:
            session.untagged.exists_seen = False
            selected = session.selected
            assert selected is not None
            # Before any command: an EXISTS answered to one of this sync's commands counts for the next.
            arrived = session.untagged.arrived
            synced, self._synced = self._synced, None
            # First what a crash interrupted (a message moved away before its event was stored).
            await self._process.recover(self.mailbox, SessionActions(session))
            # The watcher is its folder's only writer of the checkpoint: the store is read once per
            # connection (or after a failed append), then the last one written is kept here.
            checkpoint = self._checkpoint
            if initial or checkpoint is None:
                checkpoint = await self._store.get_checkpoint(self.mailbox.id, self.folder)
            resynced = fresh = False
            if checkpoint is None:
                checkpoint = await self._first_checkpoint(session)
                fresh = True
            elif checkpoint.uidvalidity != selected.uidvalidity:
                checkpoint = await self._resync_after_uidvalidity_change(session, checkpoint)
                resynced = fresh = True
            self._checkpoint = checkpoint
            # How many messages at most are new: those the server reported since the last sync of
            # this very SELECT (None: unknown).
            new = (
                arrived - synced[1] if synced is not None and synced[0] is selected and not initial else None
            )
            if not fresh and new is not None and 0 < new <= FETCH_BATCH and session.untagged.exists:
                await self._announce_new(session, checkpoint, new)
            else:
                uids = await session.uids_from(checkpoint.last_uid + 1)
                for start in range(0, len(uids), FETCH_BATCH):
                    batch = uids[start : start + FETCH_BATCH]
                    await self._announce(session, batch, checkpoint.uidvalidity)
            self._synced = (selected, arrived)
            return resynced
        finally:
            self._pushed_at = None

    async def _announce(
        self, session: ImapSession, uids: list[int], uidvalidity: int, keep: Checkpoint | None = None
    ) -> None:
        """Fetch a batch found by UID SEARCH, then store and publish each message (`_deliver`).

        The last one's checkpoint covers the whole batch: a UID expunged before FETCH is skipped
        for good. `keep`: the checkpoint to store instead (a resync moves it only at its end).
        """
        messages = sorted(await session.fetch(uids, self.mailbox.fetch_max_bytes), key=lambda m: m.uid)
        await self._deliver(session, messages, max(uids), uidvalidity, group=True, keep=keep)

    async def _announce_new(self, session: ImapSession, checkpoint: Checkpoint, new: int) -> None:
        """After a push: every message above the checkpoint, as the push brought them or in one
        `UID FETCH n:*` (`ImapSession.fetch_from`; at most `new` are new).

        Only what comes back counts: the checkpoint moves to the highest UID processed, and
        stays where it is when nothing new came back (all expunged, or `n:*` above the highest
        UID, which returns that highest message: below n, dropped by `fetch_from`).
        """
        messages = await session.fetch_from(checkpoint.last_uid + 1, self.mailbox.fetch_max_bytes, new)
        if messages:
            await self._deliver(session, messages, messages[-1].uid, checkpoint.uidvalidity)

    async def _deliver(
        self,
        session: ImapSession,
        messages: list[FetchedMessage],
        last_uid: int,
        uidvalidity: int,
        group: bool = False,
        keep: Checkpoint | None = None,
    ) -> None:
        """Store and publish each message (ascending UIDs): at once, or in group commits.

        Each append carries the checkpoint up to its last message, in the same transaction (so a
        crash never loses or repeats one), and the rules journal of its messages is settled right
        after it; the last one's carries `last_uid` (`keep`: that checkpoint on every append). A
        failure stores what was processed before it. Once drained, it stores what it holds and
        processes nothing more.
        """
        process = self._process.process
        try:
            for index, message in enumerate(messages):
                if self._draining:
                    break
                # The rules act on the message over this very connection (selected; IDLE ends at need).
                actions = SessionActions(session)
                event = await process(self.mailbox, message, actions)
                done = last_uid if index == len(messages) - 1 else message.uid
                self._hold(event, actions, keep or self._checkpoint_at(uidvalidity, done))
                held = self._held
                if (
                    not group
                    or len(held.settle) >= GROUP_COMMIT_MESSAGES
                    or time.monotonic() - held.since >= GROUP_COMMIT_SECONDS
                ):
                    await self._commit()
                # A small message is checked and stored without leaving the loop: let the streams
                # and the other mailboxes have it between two messages of a batch.
                await asyncio.sleep(0)
            if not messages:
                self._held.checkpoint = keep or self._checkpoint_at(uidvalidity, last_uid)
        except BaseException:
            with contextlib.suppress(Exception):  # the store may be what failed
                await self._commit()
            raise
        await self._commit()
        if self._draining:
            await self._park()

    def _checkpoint_at(self, uidvalidity: int, last_uid: int) -> Checkpoint:
        return Checkpoint(self.mailbox.id, self.folder, uidvalidity, last_uid)

    def _hold(self, event: NewEvent | None, actions: SessionActions, checkpoint: Checkpoint) -> None:
        held = self._held
        if not held.settle:
            held.since = time.monotonic()
        held.settle.append(actions)
        if event is not None:
            held.events.append(event)
        held.checkpoint = checkpoint

    async def _commit(self) -> None:
        """Store and publish what is held, if anything; one commit at a time (see `drain`)."""
        async with self._committing:
            held, self._held = self._held, _Held()
            if held.checkpoint is not None:
                await self._store_and_publish(held.events, held.checkpoint, held.settle)

    async def _store_and_publish(
        self, events: list[NewEvent], checkpoint: Checkpoint, settle: list[SessionActions]
    ) -> None:
        self._checkpoint = None  # unknown until the append is known to have committed
        stored = await self._store.append(events, checkpoint)
        self._checkpoint = checkpoint
        self._status.last_uid = checkpoint.last_uid
        # Published before any await: meanwhile another watcher could store and publish a later
        # seq, and a stream drops an event older than one it has sent.
        self._publish(stored)
        if self._pushed_at is not None and stored:
            elapsed_ms = round((time.monotonic() - self._pushed_at) * 1000, 3)
            self._status.push_to_event_ms.extend([elapsed_ms] * len(stored))
        for actions in settle:
            await actions.settle()  # the rules journal: these events are stored now

    async def _first_checkpoint(self, session: ImapSession) -> Checkpoint:
        """First connect ever: start at UIDNEXT, minus the last `backfill` messages."""
        selected = session.selected
        assert selected is not None
        all_uids = await session.uids_from(1)
        last_uid = all_uids[-1] if all_uids else 0
        if selected.uidnext is not None:
            last_uid = max(last_uid, selected.uidnext - 1)
        backfill = self.mailbox.backfill
        if backfill and all_uids:
            last_uid = all_uids[-backfill] - 1 if len(all_uids) >= backfill else 0
        checkpoint = Checkpoint(self.mailbox.id, self.folder, selected.uidvalidity, last_uid)
        await self._store.append([], checkpoint)
        return checkpoint

    async def _resync_after_uidvalidity_change(self, session: ImapSession, old: Checkpoint) -> Checkpoint:
        """UIDs were renumbered: announce only the messages `gatewayd.imap.resync` finds new.

        They are stored with the old checkpoint, moved past the folder only at the end: a crash
        in between repeats the resync, and the store's dedupe keys skip what was announced.
        """
        selected = session.selected
        assert selected is not None
        log.warning(
            "%s/%s: UIDVALIDITY changed from %s to %s; resynchronising by Message-ID",
            self.mailbox.id,
            self.folder,
            old.uidvalidity,
            selected.uidvalidity,
        )
        uids = await session.uids_from(1)
        headers: dict[int, tuple[str | None, str | None]] = {}
        for start in range(0, len(uids), 500):
            headers.update(await session.message_ids(uids[start : start + 500]))
        ids = [mid for mid, _ in headers.values() if mid]
        known = await self._store.known_message_ids(self.mailbox.id, self.folder, ids)
        history = await self._store.folder_history(self.mailbox.id, self.folder, selected.uidvalidity)
        if history.newest_arrival is None and history.first_watched is None:
            log.warning("%s/%s: no earlier sync stored; announcing none of it", self.mailbox.id, self.folder)
        fresh = new_uids(headers, known, history)
        for start in range(0, len(fresh), FETCH_BATCH):
            await self._announce(session, fresh[start : start + FETCH_BATCH], selected.uidvalidity, keep=old)
        last_uid = uids[-1] if uids else max(0, (selected.uidnext or 1) - 1)
        checkpoint = self._checkpoint_at(selected.uidvalidity, last_uid)
        await self._store.append([], checkpoint)
        return checkpoint
