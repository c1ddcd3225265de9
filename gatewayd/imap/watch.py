"""The watcher: one IMAP connection per (mailbox, folder), turning new UIDs into stored events.

(Several folders of one account can share a connection instead: see `gatewayd.imap.notify`,
which drives these same per-folder watchers over one NOTIFY session.)

The watcher keeps its connection: it connects, SELECTs the folder and asks for new mail with its
push (`attach`), idles and syncs on every EXISTS (a push's new mail still in IDLE), leaves IDLE
after `read_timeout_seconds` of silence or for the Sent folder's check, and reconnects with
back-off, storing `mailbox.connected`, `mailbox.disconnected` and `mailbox.error`. The sync itself
(checkpoints, exactly once, group commits) is `gatewayd.imap.sync`'s.

Shutdown (`drain`): no more mail is processed, and the connection stays open until the pool logs
out after the SSE connections are closed, announcing each deliberate end as `mailbox.disconnected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time

from gatewayd.config import MailboxConfig
from gatewayd.events import MAILBOX_CONNECTED, MAILBOX_DISCONNECTED, MAILBOX_ERROR, NewEvent, rfc3339
from gatewayd.imap.sent import SentLearner
from gatewayd.imap.session import ImapError, ImapSession
from gatewayd.imap.status import WatcherState
from gatewayd.imap.sync import FolderSync, MessageProcessor, Publisher
from gatewayd.store import EventStore

log = logging.getLogger(__name__)

# Back-off: network trouble retries fast and grows; what lasts until someone acts (a refused
# login, a watched folder that does not exist: ImapError.lasting) retries slowly.
NETWORK_BACKOFF = (1.0, 60.0)
AUTH_BACKOFF = (60.0, 900.0)


class StopReason(enum.StrEnum):
    """Why a watcher left its server on purpose: the `reason` of its `mailbox.disconnected`."""

    ON_DEMAND_IDLE = "on_demand_idle"  # the last subscriber left, and the linger passed
    SHUTDOWN = "shutdown"
    NOTIFY_RETRY = "notify_retry"  # a folder's own connection, ended to share NOTIFY's again


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Capped exponential back-off with full jitter (never below half the step)."""
    step = min(cap, base * 2 ** min(attempt, 20))
    return step / 2 + random.random() * step / 2


def retry_delay(lasting: bool, attempt: int, established: bool) -> tuple[float, int]:
    """How long to wait before reconnecting (slowly for a `lasting` failure), and the attempt
    number after that: from the start after a connection that was `established` (lost), else one
    step further (failed again)."""
    base, cap = AUTH_BACKOFF if lasting else NETWORK_BACKOFF
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
        self._publish = publish
        self.status = WatcherState(since=rfc3339())
        self._sync = FolderSync(mailbox, folder, store, process, publish, self.status)
        self._session: ImapSession | None = None
        # This connection's NOTIFY reports new mail in the Sent folder (see `sent_folder`).
        self._sent_notify = False
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
                    attempt = await self._back_off(str(exc), exc.kind, attempt, exc.lasting)
                except Exception as exc:
                    # A bug or a store failure must not end the watch for good: report, retry.
                    log.exception("%s/%s: unexpected error", self.mailbox.id, self.folder)
                    reason = f"internal error: {type(exc).__name__}"
                    attempt = await self._back_off(reason, "internal", attempt, lasting=False)
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
        await self._sync.drain()

    async def _back_off(self, reason: str, kind: str, attempt: int, lasting: bool) -> int:
        """Report the failure, wait, and return the next attempt number."""
        if self._session is not None:
            self._session.abort()
            self._session = None
        delay, next_attempt = retry_delay(lasting, attempt, self.take_established())
        await self.report_failure(reason, kind, delay)
        await asyncio.sleep(delay)
        return next_attempt

    @property
    def connected(self) -> bool:
        """Whether its connection is up past its first sync (`mailbox.connected` its last event)."""
        return self._announced

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
        resynced = await self._sync.run(session, initial=True)
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
        if self.sent is not None and not self._sync.draining:  # no new read during a shutdown
            await self.sent.check(session)

    def sent_folder(self) -> str | None:
        """The Sent folder to learn from, if known and not one this connection watches anyway."""
        folder = self.sent.folder if self.sent is not None else None
        return folder if folder is not None and folder != self.folder else None

    def sent_notified(self) -> None:
        """NOTIFY reported new mail in the Sent folder: learn it now, in the background."""
        if self.sent is not None and not self._sync.draining:
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
        if self.sent is None or self._sent_notify or self._sync.draining:
            return None
        return self.sent.due_in()

    async def catch_up(self, session: ImapSession, pushed_at: float | None = None) -> None:
        """On a session shared with other folders: SELECT this one if needed, then sync.
        `pushed_at`: when the push that reported new mail here reached gatewayd, if one did."""
        selected = session.selected
        if selected is None or selected.folder != self.folder:
            selected = await session.select(self.folder)
            self.status.uidvalidity = selected.uidvalidity
        if await self._sync.run(session, pushed_at=pushed_at):
            # The folder was recreated or rebuilt under a connection that stayed up: say so as a
            # reconnect would (its agent may hold UIDs of the old one).
            await self._announce_connected(session, selected.uidvalidity, resynced=True)

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
                await self._sync.run(session)
                continue
            if not session.supports_idle:
                self.set_state("polling")
                await asyncio.sleep(self.mailbox.imap.poll_interval_seconds)
                await session.noop()
                await self._sync.run(session)
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
            await self._sync.run(session, pushed_at=time.monotonic() if lines else None)
