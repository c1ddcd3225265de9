"""The watcher: one IMAP connection per (mailbox, folder), turning new UIDs into stored events.

(Several folders of one account can share a connection instead: see `gatewayd.imap.notify`,
which drives these same per-folder watchers over one NOTIFY session.)

Exactly once: each message becomes an event with the dedupe key (mailbox, folder, UIDVALIDITY,
UID), stored in the same transaction as the folder's UID checkpoint. After a crash the same UIDs
are fetched again and the store skips what it already has.

After a push of a few new messages (the count of EXISTS since the last sync of the same SELECT is
at most FETCH_BATCH) the sync takes them from the push itself when the server sent them with it
(NOTIFY MessageNew with FETCH attributes, asked for in `attach`), still in IDLE (a rule that acts
ends it with its first command), else fetches them at once with
`UID FETCH <checkpoint+1>:*`, without the UID SEARCH round trip; the first sync of a SELECT, a
larger backlog, and a sync no EXISTS called for (a probe, a poll that found nothing) search first
and fetch in batches of FETCH_BATCH.

Commits: a message a push brought is stored and published on its own as soon as it is processed
(latency first). Messages a search found (a backlog: the catch-up after a reconnect or restart, a
burst larger than one batch, a poll) are stored in group commits of up to GROUP_COMMIT_MESSAGES,
or whatever was processed within GROUP_COMMIT_SECONDS: one transaction instead of one per message
costs about a quarter of the store's CPU per message, and a backlog is late already.

Shutdown (`drain`): what the watcher holds is stored and published before subscribers are told
`closing`, and no more mail is processed; the connection stays open until the pool logs out
after the SSE connections are closed, announcing each deliberate end as `mailbox.disconnected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

from gatewayd.config import MailboxConfig
from gatewayd.events import (
    MAILBOX_CONNECTED,
    MAILBOX_DISCONNECTED,
    MAILBOX_ERROR,
    Event,
    NewEvent,
    rfc3339,
)
from gatewayd.imap.act import MailActions, SessionActions
from gatewayd.imap.resync import new_uids
from gatewayd.imap.sent import SentLearner
from gatewayd.imap.session import ImapError, ImapSession, Selected
from gatewayd.message import FetchedMessage
from gatewayd.store import Checkpoint, EventStore

log = logging.getLogger(__name__)

FETCH_BATCH = 50
# A catch-up's group commit: at most this many messages, held at most this long (see above).
GROUP_COMMIT_MESSAGES = 50
GROUP_COMMIT_SECONDS = 0.025
# Back-off: network trouble retries fast and grows; a refused login retries slowly.
NETWORK_BACKOFF = (1.0, 60.0)
AUTH_BACKOFF = (60.0, 900.0)


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
class WatcherState:
    """What /healthz reports about one watcher."""

    state: str = "starting"  # starting | connected | idle | polling | backoff | stopped
    since: str = ""
    last_error: str | None = None
    uidvalidity: int | None = None
    last_uid: int | None = None
    reconnects: int = 0
    # True while the folder is watched over its account's shared NOTIFY connection.
    notify: bool = False
    # ms from a push reaching the watcher to each event it brought being published (the last
    # PUSH_SAMPLES): gatewayd's own share of a message's latency, whatever the server's delay.
    push_to_event_ms: deque[float] = field(default_factory=lambda: deque(maxlen=PUSH_SAMPLES))


PUSH_SAMPLES = 200


class StopReason(enum.StrEnum):
    """Why a watcher left its server on purpose: the `reason` of its `mailbox.disconnected`."""

    ON_DEMAND_IDLE = "on_demand_idle"  # the last subscriber left, and the linger passed
    SHUTDOWN = "shutdown"


@dataclass(slots=True)
class _Held:
    """Processed messages whose events are not stored yet: a group commit in the making."""

    events: list[NewEvent] = field(default_factory=list)
    # One per message: what its rules wait for once its event is stored (the rules journal).
    settle: list[SessionActions] = field(default_factory=list)
    # Stored with them (None: nothing to store).
    checkpoint: Checkpoint | None = None
    since: float = 0.0


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Capped exponential back-off with full jitter (never below half the step)."""
    step = min(cap, base * 2 ** min(attempt, 20))
    return step / 2 + random.random() * step / 2


def retry_delay(kind: str, attempt: int, established: bool) -> tuple[float, int]:
    """How long to wait before reconnecting, and the attempt number after that: from the start
    after a connection that was `established` (lost), else one step further (failed again)."""
    base, cap = AUTH_BACKOFF if kind == "auth" else NETWORK_BACKOFF
    return backoff_delay(0 if established else attempt, base, cap), 1 if established else attempt + 1


class FolderWatcher:
    def __init__(
        self,
        mailbox: MailboxConfig,
        folder: str,
        store: EventStore,
        process: MessageProcessor,
        publish: Publisher,
        sent: SentLearner | None = None,
    ) -> None:
        """`sent`: the mailbox's Sent folder learner, checked on this watcher's connection (one
        watcher per mailbox has it)."""
        self.mailbox = mailbox
        self.folder = folder
        self.sent = sent
        self._store = store
        self._process = process
        self._publish = publish
        self.status = WatcherState(since=rfc3339())
        self._session: ImapSession | None = None
        # This connection's NOTIFY reports new mail in the Sent folder (see `sent_folder`).
        self._sent_notify = False
        self._pushed_at: float | None = None  # when the push the current sync answers came
        # The folder's checkpoint as this watcher last stored it (None: read it from the store).
        self._checkpoint: Checkpoint | None = None
        # The last complete sync: the SELECT it ran on and the session's `arrived` count before it.
        # Every message above the checkpoint since then was reported by an EXISTS counted after.
        self._synced: tuple[Selected, int] | None = None
        self._held = _Held()
        # Held while a group is stored and published: `drain` waits for one in progress.
        self._committing = asyncio.Lock()
        self._draining = False
        # The connection got as far as a complete first sync: a failure after that is a lost
        # connection (retry at once), before it a failed attempt (back off further each time, or
        # a message that fails every sync would have the watcher reconnect every second).
        self._established = False
        # `mailbox.connected` is the last connection event stored: a `mailbox.disconnected` follows
        # only then. (State "connected" starts before the first sync, which a stop may interrupt.)
        self._announced = False
        # The reason of the next deliberate stop (the pool sets it before cancelling).
        self.stop_reason = StopReason.SHUTDOWN

    @property
    def key(self) -> tuple[str, str]:
        return (self.mailbox.id, self.folder)

    def set_state(self, state: str) -> None:
        if self.status.state != state:
            self.status.state = state
            self.status.since = rfc3339()

    async def _emit(self, event_type: str, **data: object) -> None:
        event = NewEvent(event_type, self.mailbox.agent_id, self.mailbox.id, {"folder": self.folder, **data})
        self._publish(await self._store.append([event]))

    async def run(self, session: ImapSession | None = None) -> None:
        """Watch until cancelled; on cancellation leave the server politely (LOGOUT).

        `session`: a connection already open (and nothing selected) to start with.
        """
        attempt = 0
        try:
            while True:
                try:
                    self._session = session or await ImapSession.open(self.mailbox.imap)
                    session = None
                    await self._watch(self._session)
                except ImapError as exc:
                    attempt = await self._back_off(str(exc), exc.kind, attempt)
                except Exception as exc:
                    # A bug or a store failure must not end the watch for good: report, retry.
                    log.exception("%s/%s: unexpected error", self.mailbox.id, self.folder)
                    reason = f"internal error: {type(exc).__name__}"
                    attempt = await self._back_off(reason, "internal", attempt)
        finally:
            await asyncio.shield(self._leave(self._session))

    async def _leave(self, session: ImapSession | None) -> None:
        await self.announce_stop()
        if session is not None:
            await session.logout()

    async def announce_stop(self) -> None:
        """A deliberate end (before LOGOUT): `mailbox.disconnected` with `stop_reason` if
        `mailbox.connected` was the last event (a lost connection was reported already), then
        state `stopped`."""
        if self._announced:
            self._announced = False
            with contextlib.suppress(Exception):  # the store may be what failed
                await self._emit(MAILBOX_DISCONNECTED, reason=str(self.stop_reason), retry_in_ms=None)
        self.set_state("stopped")

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

    async def _back_off(self, reason: str, kind: str, attempt: int) -> int:
        """Report the failure, wait, and return the next attempt number."""
        if self._session is not None:
            self._session.abort()
            self._session = None
        delay, next_attempt = self.next_delay(kind, attempt)
        await self.report_failure(reason, kind, delay)
        await asyncio.sleep(delay)
        return next_attempt

    def next_delay(self, kind: str, attempt: int) -> tuple[float, int]:
        """How long to wait before reconnecting, and the attempt number after that."""
        return retry_delay(kind, attempt, self.take_established())

    def take_established(self) -> bool:
        """Whether the connection that just failed had completed its first sync here; forgotten."""
        established, self._established = self._established, False
        return established

    async def report_failure(self, reason: str, kind: str, delay: float) -> None:
        """State, log line and event of a failed or lost connection (the caller waits `delay`)."""
        connected, self._announced = self._announced, False
        self.status.last_error = reason
        self.status.reconnects += 1
        self.set_state("backoff")
        log.warning("%s/%s: %s; retrying in %.1fs", self.mailbox.id, self.folder, reason, delay)
        retry_ms = int(delay * 1000)
        with contextlib.suppress(Exception):  # the store may be what failed
            if connected:
                await self._emit(MAILBOX_DISCONNECTED, reason=reason, retry_in_ms=retry_ms)
            else:
                await self._emit(MAILBOX_ERROR, reason=reason, kind=kind, retry_in_ms=retry_ms)

    async def attach(self, session: ImapSession, notify: bool = False) -> None:
        """SELECT the folder on this session, catch up, and announce the connection."""
        selected = await session.select(self.folder)
        self._sent_notify = False
        if not notify:
            # The first Sent check finds the folder, so that NOTIFY can report its new mail too.
            await self.check_sent(session)
            sent = self.sent_folder()
            pushed = await session.push_new_mail(self.mailbox.fetch_max_bytes, [sent] if sent else [])
            self._sent_notify = pushed and sent is not None
        self.status.uidvalidity = selected.uidvalidity
        self.status.notify = notify
        self.set_state("connected")
        self.status.last_error = None
        resynced = await self._sync(session, initial=True)
        self._established = True
        await self._announce_connected(session, selected.uidvalidity, resynced)

    async def _announce_connected(self, session: ImapSession, uidvalidity: int, resynced: bool) -> None:
        await self._emit(
            MAILBOX_CONNECTED,
            host=self.mailbox.imap.host,
            uidvalidity=uidvalidity,
            idle=session.supports_idle,
            notify=self.status.notify,
            uidvalidity_changed=resynced,
        )
        self._announced = True

    async def check_sent(self, session: ImapSession) -> None:
        """Out of IDLE on `session`: learn from the Sent folder if it changed (gatewayd.imap.sent)."""
        if self.sent is not None and not self._draining:  # no new read during a shutdown
            await self.sent.check(session)

    def sent_folder(self) -> str | None:
        """The Sent folder to learn from, if known and not one this connection watches anyway."""
        folder = self.sent.folder if self.sent is not None else None
        return folder if folder is not None and folder != self.folder else None

    def sent_notified(self) -> None:
        """NOTIFY reported new mail in the Sent folder: learn it now, in the background."""
        if self.sent is not None and not self._draining:
            self.sent.notified()

    def _take_sent_notified(self, session: ImapSession) -> None:
        if not self._sent_notify:
            return
        sent = self.sent_folder()
        if sent is not None and session.untagged.take_notified([sent]):
            self.sent_notified()

    def _sent_due_in(self) -> float | None:
        """Seconds until the Sent folder's check is due on this connection (None: never; its
        NOTIFY reports the folder's new mail instead)."""
        if self.sent is None or self._sent_notify or self._draining:
            return None
        return self.sent.due_in()

    async def catch_up(self, session: ImapSession, pushed_at: float | None = None) -> None:
        """On a session shared with other folders: SELECT this one if needed, then sync.
        `pushed_at`: when the push that reported new mail here reached gatewayd, if one did."""
        selected = session.selected
        if selected is None or selected.folder != self.folder:
            selected = await session.select(self.folder)
            self.status.uidvalidity = selected.uidvalidity
        if await self._sync_pushed(session, pushed_at):
            # The folder was recreated or rebuilt under a connection that stayed up: say so as a
            # reconnect would (its agent may hold UIDs of the old one).
            await self._announce_connected(session, selected.uidvalidity, resynced=True)

    async def _sync_pushed(self, session: ImapSession, pushed_at: float | None) -> bool:
        """A sync whose events, with `pushed_at`, are timed from that push (`push_to_event_ms`).
        Returns True when UIDVALIDITY had changed."""
        self._pushed_at = pushed_at
        try:
            return await self._sync(session)
        finally:
            self._pushed_at = None

    async def _watch(self, session: ImapSession) -> None:
        await self.attach(session)
        renew = self.mailbox.imap.idle_renew_seconds
        probe = self.mailbox.imap.read_timeout_seconds
        idle_until = 0.0
        while True:
            self._take_sent_notified(session)
            due_in = self._sent_due_in()
            if session.idling and due_in is not None and due_in <= 0 and not session.push_pending:
                # Pushes processed in IDLE keep a busy connection from ever falling silent for the
                # probe: leave IDLE for the Sent folder's check between two of them, never with
                # one waiting.
                await session.idle_done()
            if not session.idling:
                # Out of IDLE anyway (after connecting, a probe, a command): no push waits on it;
                # new mail reported to it is synced next.
                await self.check_sent(session)
            if session.untagged.exists_seen and not session.idling:
                # New mail was reported during the last sync's commands. (In IDLE, its push is
                # still queued: read below, with the message it may carry.)
                await self._sync(session)
                continue
            if not session.supports_idle:
                self.set_state("polling")
                await asyncio.sleep(self.mailbox.imap.poll_interval_seconds)
                await session.noop()
                await self._sync(session)
                continue
            if not session.idling:
                await session.idle_start()
                self.set_state("idle")
                idle_until = time.monotonic() + renew
            # Wait for EXISTS; every `probe` seconds of silence (and at the renew time, or when the
            # Sent folder's check is due) leave IDLE: the DONE round trip proves the connection
            # alive, and the sync catches pushes a server failed to send.
            while True:
                remaining = idle_until - time.monotonic()
                sent_due_in = self._sent_due_in()
                timeout = min(probe, remaining, probe if sent_due_in is None else sent_due_in)
                lines = await session.wait_push(max(0.0, timeout))
                self._take_sent_notified(session)
                if any(line.endswith(b"EXISTS") for line in lines) or not lines:
                    break
            if not lines:
                await session.idle_done()
            # New mail is synced still in IDLE: when its push brought it whole, no command is
            # needed unless a rule acts (the first command ends IDLE; see ImapSession._call).
            await self._sync_pushed(session, time.monotonic() if lines else None)

    async def _sync(self, session: ImapSession, initial: bool = False) -> bool:
        """Announce every UID above the checkpoint. Returns True when UIDVALIDITY had changed."""
        if self._draining:
            await self._park()
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
        new = arrived - synced[1] if synced is not None and synced[0] is selected and not initial else None
        if not fresh and new is not None and 0 < new <= FETCH_BATCH and session.untagged.exists:
            await self._announce_new(session, checkpoint, new)
        else:
            uids = await session.uids_from(checkpoint.last_uid + 1)
            for start in range(0, len(uids), FETCH_BATCH):
                batch = uids[start : start + FETCH_BATCH]
                await self._announce(session, batch, checkpoint.uidvalidity)
        self._synced = (selected, arrived)
        return resynced

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
        self.status.last_uid = checkpoint.last_uid
        # Published before any await: meanwhile another watcher could store and publish a later
        # seq, and a stream drops an event older than one it has sent.
        self._publish(stored)
        if self._pushed_at is not None and stored:
            elapsed_ms = round((time.monotonic() - self._pushed_at) * 1000, 3)
            self.status.push_to_event_ms.extend([elapsed_ms] * len(stored))
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
