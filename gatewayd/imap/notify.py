"""Several folders of one account over one IMAP connection, with NOTIFY (RFC 5465).

Where the server advertises NOTIFY (Dovecot does), a mailbox that watches several folders uses
one connection instead of one per folder: `NOTIFY SET` asks for new mail in the selected folder
as EXISTS and in the others as `* STATUS`; the watcher idles on whichever folder it synced last,
and on a notification leaves IDLE, SELECTs the folder that changed and syncs it. New mail in the
Sent folder, asked for too, only starts its learning (`gatewayd.imap.sent`), still in IDLE.

The per-folder work (checkpoints in the same transaction as the events, UIDVALIDITY changes,
state events) is the `FolderWatcher`'s, unchanged: this module only drives the connection.
NOTIFY is an optimisation: a server without it, one that refuses the NOTIFY command, or a
folder that cannot be selected falls back to one IDLE connection per folder; after the last,
for `notify_retry_seconds` only, since the folder may be created again (and longer while any
folder's own connection is not up: NOTIFY would fail on it again).
"""

from __future__ import annotations

import asyncio
import logging
import time

from gatewayd.config import MailboxConfig
from gatewayd.imap.cancel import cancel_until_done
from gatewayd.imap.sent import SentLearner
from gatewayd.imap.session import ImapConnectionLost, ImapError, ImapFolderMissing, ImapSession
from gatewayd.imap.sync import MessageProcessor, Publisher
from gatewayd.imap.watch import FolderWatcher, StopReason, retry_delay
from gatewayd.store import EventStore

log = logging.getLogger(__name__)


class _NotifyUnusable(Exception):
    """The server took the connection but not our use of NOTIFY on it. `transient`: a folder
    could not be selected (it may be created again), not NOTIFY itself refused."""

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.transient = transient


def _is_change(line: bytes) -> bool:
    """A push that can mean new mail: EXISTS of the selected folder, STATUS of another."""
    return line.endswith(b"EXISTS") or line.startswith(b"STATUS ")


class AccountWatcher:
    """All the folders of one mailbox, over one NOTIFY connection when the server allows it."""

    # A folder that could not be selected (deleted, then created again) ends the fall-back after
    # this long: the account goes back to its one NOTIFY connection instead of one per folder for good.
    notify_retry_seconds = 600.0

    def __init__(
        self,
        mailbox: MailboxConfig,
        store: EventStore,
        process: MessageProcessor,
        publish: Publisher,
        sent: SentLearner | None = None,
    ) -> None:
        self.mailbox = mailbox
        # The first folder's watcher checks the Sent folder, on this connection or its own.
        self.folders = [
            FolderWatcher(mailbox, folder, store, process, publish, sent if i == 0 else None)
            for i, folder in enumerate(mailbox.imap.folders)
        ]
        self._session: ImapSession | None = None
        # The Sent folder whose new mail NOTIFY reports too (None: none, or one watched here).
        self._sent: str | None = None

    async def run(self) -> None:
        """Watch until cancelled; on cancellation leave the server politely (LOGOUT)."""
        attempt = 0
        try:
            while True:
                try:
                    session = self._session = await ImapSession.open(self.mailbox.imap)
                    if session.supports_notify:
                        await self._watch(session)
                    else:
                        log.info("%s: the server has no NOTIFY; one connection per folder", self.mailbox.id)
                        self._session = None  # handed to the first folder's watcher
                        await self._per_folder(session)
                except _NotifyUnusable as exc:
                    log.warning("%s: NOTIFY unusable (%s); one connection per folder", self.mailbox.id, exc)
                    self._drop_session()
                    for watcher in self.folders:
                        if watcher.connected:  # announced on the shared connection just given up
                            await watcher.report_failure(str(exc), "protocol", 0.0)
                    await self._per_folder(None, self.notify_retry_seconds if exc.transient else None)
                    log.info("%s: trying NOTIFY again", self.mailbox.id)
                except ImapError as exc:
                    attempt = await self._back_off(str(exc), exc.kind, attempt, exc.lasting)
                except Exception as exc:
                    # A bug or a store failure must not end the watch for good: report, retry.
                    log.exception("%s: unexpected error", self.mailbox.id)
                    reason = f"internal error: {type(exc).__name__}"
                    attempt = await self._back_off(reason, "internal", attempt, lasting=False)
        finally:
            await asyncio.shield(self._leave(self._session))

    async def _leave(self, session: ImapSession | None) -> None:
        for watcher in self.folders:
            await watcher.announce_stop()
        if session is not None:
            await session.logout()

    async def _per_folder(self, session: ImapSession | None, for_seconds: float | None = None) -> None:
        """The fall-back: every folder its own IDLE connection (the first may reuse `session`).

        Returns after `for_seconds` (or the first multiple of it) at which every folder's own
        connection is up, each then logged out (`mailbox.disconnected`, reason `notify_retry`);
        without it only by cancellation (FolderWatcher.run never ends)."""
        for watcher in self.folders:
            watcher.status.notify = False
        tasks = [
            asyncio.create_task(
                watcher.run(session if i == 0 else None), name=f"watch:{self.mailbox.id}/{watcher.folder}"
            )
            for i, watcher in enumerate(self.folders)
        ]
        try:
            while True:
                done, _ = await asyncio.wait(tasks, timeout=for_seconds, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a watcher never ends by itself: what ended it goes up
                # A folder whose own connection is not up (still cannot be selected, most likely)
                # would fail NOTIFY again, after every folder reconnected twice for nothing: its
                # watcher keeps trying (and logging) on its own, the others stay as they are.
                if done or all(watcher.connected for watcher in self.folders):
                    break
            for watcher in self.folders:
                watcher.stop_reason = StopReason.NOTIFY_RETRY
        finally:
            # Not a task group: it cancels once, and a watcher that missed it would never end.
            await cancel_until_done(tasks)  # each logs out
            for watcher in self.folders:
                watcher.stop_reason = StopReason.SHUTDOWN

    def _drop_session(self) -> None:
        if self._session is not None:
            self._session.abort()
            self._session = None

    async def _back_off(self, reason: str, kind: str, attempt: int, lasting: bool) -> int:
        self._drop_session()
        # Established only when every folder completed its first sync: one failing in its own
        # must back off further each time, as for a single folder.
        established = all([watcher.take_established() for watcher in self.folders])
        delay, next_attempt = retry_delay(lasting, attempt, established)
        for watcher in self.folders:
            await watcher.report_failure(reason, kind, delay)
        await asyncio.sleep(delay)
        return next_attempt

    async def _watch(self, session: ImapSession) -> None:
        folders = [watcher.folder for watcher in self.folders]
        by_folder = {watcher.folder: watcher for watcher in self.folders}
        # UIDNEXT as of the last SELECT of each folder: everything below it has been synced.
        synced_below: dict[str, int | None] = {}
        try:
            # The first Sent check finds the folder, so that NOTIFY can report its new mail too.
            await self.folders[0].check_sent(session)
            sent = self.folders[0].sent_folder()
            self._sent = sent if sent not in folders else None
            # NOTIFY first: mail arriving from now on is reported, even during the syncs below.
            also = [self._sent] if self._sent is not None else []
            await session.notify(folders, self.mailbox.fetch_max_bytes, also)
        except ImapConnectionLost:
            raise
        except ImapError as exc:
            raise _NotifyUnusable(str(exc), transient=False) from None
        try:
            for watcher in self.folders:
                await watcher.attach(session, notify=True)
                synced_below[watcher.folder] = session.selected.uidnext if session.selected else None
        except ImapConnectionLost:
            raise
        except ImapError as exc:
            raise _NotifyUnusable(str(exc), transient=True) from None
        pending: set[str] = set()
        # Folders SELECTed away from (by us, or by a rule acting on the session) are checked
        # with STATUS before idling: mail that reached one just before was due as an EXISTS
        # (Dovecot holds pushes back up to 500 ms), which leaving the folder cancels, and the
        # selected folder gets no STATUS notification for it either.
        left: set[str] = set()
        probing = False
        # The folders the last push reported new mail in, and when it came: their syncs' events
        # are timed from it (`push_to_event_ms`).
        pushed: set[str] = set()
        pushed_at = 0.0
        renew = self.mailbox.imap.idle_renew_seconds
        probe = self.mailbox.imap.read_timeout_seconds
        while True:
            # Out of IDLE here: the Sent folder's check costs no push (its notifications count).
            await self.folders[0].check_sent(session)
            selected = session.selected.folder if session.selected else None
            pending |= self._reported(session, folders, selected)
            left |= session.take_left()
            if pending:
                # The selected folder first (no SELECT needed), then in configured order.
                folder = selected if selected in pending else next(f for f in folders if f in pending)
                pending.discard(folder)
                try:
                    await by_folder[folder].catch_up(session, pushed_at if folder in pushed else None)
                except ImapFolderMissing as exc:
                    # Deleted under the shared connection: fall back now, as when it is missing at
                    # the start, not after every folder's back-off (slow for a missing folder).
                    raise _NotifyUnusable(str(exc), transient=True) from None
                pushed.discard(folder)
                if folder != selected:
                    synced_below[folder] = session.selected.uidnext if session.selected else None
                continue
            left.discard(selected or "")
            if left:
                for folder in [f for f in folders if f in left]:
                    if await self._changed(session, by_folder[folder], synced_below.get(folder), probing):
                        pending.add(folder)
                left.clear()
                probing = False
                continue
            await session.idle_start()
            for watcher in self.folders:
                watcher.set_state("idle")
            idle_until = time.monotonic() + renew
            while True:
                remaining = idle_until - time.monotonic()
                lines = await session.wait_push(max(0.0, min(probe, remaining)))
                if not lines:
                    # Silence (or the renew time): the DONE round trip proves the connection
                    # alive, and every folder is checked in case a push was lost.
                    pending.update(f for f in folders if f == selected)
                    left.update(f for f in folders if f != selected)
                    probing = True
                    break
                if any(_is_change(line) for line in lines):
                    reported = self._reported(session, folders, selected)
                    if reported:  # else only the Sent folder's: learnt in the background, still in IDLE
                        pushed, pushed_at = reported, time.monotonic()
                        pending |= pushed
                        break
            await session.idle_done()

    def _reported(self, session: ImapSession, folders: list[str], selected: str | None) -> set[str]:
        """The folders new mail was reported in since the last call: STATUS notifications for the
        others, EXISTS for the selected one. New mail in the Sent folder starts its learning."""
        sent = self._sent
        reported = session.untagged.take_notified([*folders, sent] if sent is not None else folders)
        if sent is not None and sent in reported:
            reported.discard(sent)
            self.folders[0].sent_notified()
        if session.untagged.exists_seen and selected in folders:
            reported.add(selected)
        return reported

    @staticmethod
    async def _changed(
        session: ImapSession, watcher: FolderWatcher, synced_below: int | None, probing: bool
    ) -> bool:
        """Whether a folder that is not selected may hold mail not yet synced."""
        uidnext, uidvalidity = await session.status(watcher.folder)
        if uidnext is None or synced_below is None:
            # Cannot tell: sync it on the periodic probe only (never in a tight loop).
            return probing
        return uidnext != synced_below or uidvalidity != watcher.status.uidvalidity
