"""Learning from the Sent folder: whoever the account writes to is a correspondent, whose mail the
spam stage then scores with REPUTATION_SENT_TO (`LearningStore.learn_sent`).

The watcher calls `SentLearner.check` on its own connection whenever it is out of IDLE anyway
(after connecting, a silence probe, a command); at most once per `read_timeout_seconds` (the
probe's period) it sends one `STATUS (UIDNEXT UIDVALIDITY)` of the Sent folder (and once, with
`sent_folder: auto`, a `LIST` for its `\\Sent` attribute). An EXISTS answered to it is synced
next, like any other; the watcher's connection never leaves its folder, so nothing it must see can
be lost. Where the server has NOTIFY, the watcher also asks for the Sent folder's new mail as
`* STATUS` and calls `notified` on it, still in IDLE: the read starts at once, without a command.
Elsewhere a busy connection, never silent for a probe, leaves IDLE between two pushes when `due_in`
says a check is due. Only when the Sent folder holds mail not learnt yet does a short-lived
connection of its own, in the background, EXAMINE it and fetch `BODY.PEEK[HEADER.FIELDS (TO CC
BCC)]` of the new messages (never a body), then log out: no connection is held open for it.

How far the folder was learnt (UIDVALIDITY and last UID) is stored with the addresses in one
transaction, so a restart carries on from there. The first time (or after a UIDVALIDITY change)
only the last SENT_BACKFILL messages are read. The account's own addresses are never learnt: mail
forged "from" the mailbox itself must not pass as a correspondent's.

Failures are logged once and never reach the watcher: a folder that does not exist (or that STATUS
or LIST refuse) ends learning for the mailbox until a restart; a failed background connection is
tried again at the next check. Only the loss of the watcher's own connection is raised, as any
command on it would.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable, Sequence
from email.parser import HeaderParser
from email.policy import compat32
from typing import Protocol

from gatewayd.config import SENT_AUTO, MailboxConfig
from gatewayd.imap.cancel import cancel_until_done
from gatewayd.imap.errors import ImapConnectionLost, ImapError
from gatewayd.imap.fetch import parse_fetch
from gatewayd.imap.names import decode_mailbox
from gatewayd.imap.session import ImapSession
from gatewayd.message.fields import addresses
from gatewayd.pipeline.learning import SentMark

log = logging.getLogger(__name__)

# The first read of a Sent folder: its most recent messages only. 200 covers weeks to months of a
# person's or an agent's correspondents (recent ones matter most), is one FETCH of about 60 KB of
# headers, and keeps the first start of 1,000 mailboxes with full Sent folders bounded.
SENT_BACKFILL = 200
FETCH_BATCH = 200
_ITEMS = "(UID BODY.PEEK[HEADER.FIELDS (TO CC BCC)])"
_SENT_ATTRIBUTE = re.compile(rb"\\Sent(?![A-Za-z])", re.IGNORECASE)
# What follows `LIST ` for one folder: (attributes) delimiter name, the name an atom or quoted.
_LIST = re.compile(rb'\A\(([^)]*)\) (?:NIL|"(?:[^"\\]|\\.)*") (?:"((?:[^"\\]|\\.)*)"|(\S+))\Z')


class SentLog(Protocol):
    """Where the recipients are learnt (`TenantLearning`); called from worker threads."""

    def sent_mark(self, mailbox_id: str) -> SentMark | None:
        """How far the mailbox's Sent folder was learnt; None: never."""
        ...

    def learn_sent(self, mailbox_id: str, addresses: Iterable[str], mark: SentMark | None = None) -> None:
        """The mailbox wrote to these addresses; its Sent folder is learnt up to `mark` (atomically)."""
        ...


class SentLearner:
    """One mailbox's Sent folder; `check` from its watcher, `close` when the watcher ends."""

    def __init__(
        self, mailbox: MailboxConfig, sent_log: SentLog, reads: asyncio.Semaphore | None = None
    ) -> None:
        """`reads`: shared by the learners of a pool, how many may read at once."""
        self.mailbox = mailbox
        self._log = sent_log
        self._reads = reads or asyncio.Semaphore(1)
        configured = mailbox.imap.sent_folder
        self._folder = None if configured == SENT_AUTO else configured
        self._mark: SentMark | None = None  # as last stored (None: not read yet, or never stored)
        self._off = configured is None
        self._failing = False  # a background failure was logged: not again until one succeeds
        self._task: asyncio.Task[None] | None = None
        self._again = False  # a notification came during a read: read once more after it
        # A STATUS at most this often: as often as the watcher probes a silent connection.
        self._interval = mailbox.imap.read_timeout_seconds
        self._checked_at: float | None = None
        own = (mailbox.address, mailbox.imap.username)
        self._own = {address.lower() for address in own if address}

    async def check(self, session: ImapSession) -> None:
        """On the watcher's session, out of IDLE: start learning what is new in the Sent folder.
        Called whenever the watcher is out of IDLE; does something at most once per interval.

        Raises only ImapConnectionLost (the session is gone)."""
        due_in = self.due_in()
        if due_in is None or due_in > 0:
            return
        self._checked_at = time.monotonic()
        try:
            folder = self._folder or await self._find_folder(session)
            if folder is None:
                return
            uidnext, uidvalidity = await session.status(folder)
        except ImapConnectionLost:
            raise
        except ImapError as exc:
            self._stop(f"cannot read the Sent folder ({exc})")
            return
        if uidnext is None or uidvalidity is None:
            self._stop("the server did not say the Sent folder's UIDNEXT and UIDVALIDITY")
            return
        if self._mark == SentMark(folder, uidvalidity, uidnext - 1):
            return  # the common case: nothing sent since
        self._start(folder, uidnext, uidvalidity)

    @property
    def folder(self) -> str | None:
        """The Sent folder once a check found it (None: not yet, or not learning)."""
        return None if self._off else self._folder

    def due_in(self) -> float | None:
        """Seconds until `check` would look at the folder again (0 or less: now); None while it
        would not (learning is off, or a read is running)."""
        if self._off or self._reading:
            return None
        if self._checked_at is None:
            return 0.0
        return self._checked_at + self._interval - time.monotonic()

    def notified(self) -> None:
        """The server reported new mail in the Sent folder (NOTIFY): read it now, in the background."""
        if self._off or self._folder is None:
            return
        if self._reading:
            self._again = True
        else:
            self._start(self._folder, None, None)

    @property
    def _reading(self) -> bool:
        return self._task is not None and not self._task.done()

    def _start(self, folder: str, uidnext: int | None, uidvalidity: int | None) -> None:
        name = f"sent:{self.mailbox.id}"
        self._task = asyncio.create_task(self._learn(folder, uidnext, uidvalidity), name=name)

    async def close(self) -> None:
        """Stop a background read (what it learnt so far stays learnt)."""
        task, self._task = self._task, None
        self._again = False
        if task is not None:
            await cancel_until_done([task])  # cancelled once, an IMAP wait_for may swallow it

    async def _find_folder(self, session: ImapSession) -> str | None:
        for line in await session.list_special_use():
            match = _LIST.match(line)
            if match and _SENT_ATTRIBUTE.search(match.group(1)):
                quoted, atom = match.group(2), match.group(3)
                name = re.sub(rb"\\(.)", rb"\1", quoted) if quoted is not None else atom
                self._folder = decode_mailbox(name.decode("utf-8", "replace"))
                return self._folder
        self._stop("the server names no folder \\Sent (set imap.sent_folder to name it)")
        return None

    def _stop(self, reason: str) -> None:
        self._off = True
        log.warning("%s: not learning from sent mail: %s", self.mailbox.id, reason)

    async def _learn(self, folder: str, uidnext: int | None, uidvalidity: int | None) -> None:
        """In the background, again while notifications came meanwhile: whatever fails is logged
        (once while it keeps failing), never raised. Without `uidnext` and `uidvalidity` (a
        notification), what the folder holds above the mark is read without a check first."""
        await self._learn_once(folder, uidnext, uidvalidity)
        while self._again:
            self._again = False
            await self._learn_once(folder, None, None)

    async def _learn_once(self, folder: str, uidnext: int | None, uidvalidity: int | None) -> None:
        try:
            read = await self._learn_new(folder, uidnext, uidvalidity)
        except Exception as exc:
            if not self._failing:
                # A server's refusal or a lost connection needs no traceback; anything else does.
                imap = isinstance(exc, ImapError)
                reason = str(exc) if imap else type(exc).__name__
                log.warning(
                    "%s: cannot learn from sent mail (%s); trying again later",
                    self.mailbox.id,
                    reason,
                    exc_info=not imap,
                )
            self._failing = True
        else:
            if read:
                log.info("%s: learnt the recipients of %d sent messages", self.mailbox.id, read)
            self._failing = False

    async def _learn_new(self, folder: str, uidnext: int | None, uidvalidity: int | None) -> int:
        """Read what the folder holds above the stored mark; returns how many messages were read."""
        if self._mark is None:
            self._mark = await asyncio.to_thread(self._log.sent_mark, self.mailbox.id)
        mark = self._mark
        if uidnext is None or uidvalidity is None:
            if mark is not None and mark.folder != folder:
                mark = None  # another folder: read it afresh (`_read` sees a renumbering itself)
        elif mark is None or (mark.folder, mark.uidvalidity) != (folder, uidvalidity):
            if mark is None and uidnext <= 1:  # a folder never used: nothing to read, now or before
                await self._save([], SentMark(folder, uidvalidity, 0))
                return 0
            mark = None  # another folder, or renumbered: read it afresh
        elif uidnext - 1 <= mark.last_uid:
            return 0
        async with self._reads:
            return await self._read(folder, mark)

    async def _read(self, folder: str, mark: SentMark | None) -> int:
        """Learn the recipients of the messages above `mark` (None: the last SENT_BACKFILL);
        returns how many messages were read."""
        session = await ImapSession.open(self.mailbox.imap)
        try:
            selected = await session.select(folder, read_only=True)
            if mark is not None and mark.uidvalidity == selected.uidvalidity:
                uids = await session.uids_from(mark.last_uid + 1)
            else:
                uids = (await session.uids_from(1))[-SENT_BACKFILL:]
            # Below UIDNEXT, whatever the search did not find is gone: learnt up to there (and
            # never below the mark: a server that does not say UIDNEXT must not send it back).
            same = mark is not None and mark.uidvalidity == selected.uidvalidity
            end = max(
                [mark.last_uid if mark is not None and same else 0, *uids[-1:], (selected.uidnext or 1) - 1]
            )
            if not uids:
                await self._save([], SentMark(folder, selected.uidvalidity, end))
            for start in range(0, len(uids), FETCH_BATCH):
                batch = uids[start : start + FETCH_BATCH]
                lines = await session.fetch_raw(batch, _ITEMS)
                last = end if start + FETCH_BATCH >= len(uids) else batch[-1]
                recipients = self._recipients(lines, folder, selected.uidvalidity)
                await self._save(recipients, SentMark(folder, selected.uidvalidity, last))
            return len(uids)
        finally:
            await session.logout()

    def _recipients(self, lines: Sequence[bytes | bytearray], folder: str, uidvalidity: int) -> set[str]:
        found: set[str] = set()
        parser = HeaderParser(policy=compat32)
        for message in parse_fetch(lines, folder, uidvalidity):
            # Decoded first: an undecodable byte becomes U+FFFD, which the store can hold.
            headers = parser.parsestr(message.raw.decode("utf-8", "replace"))
            values = [_unfold(str(v)) for name in ("to", "cc", "bcc") for v in headers.get_all(name, [])]
            for entry in addresses(values):
                address = entry["address"]
                if address and address.lower() not in self._own:
                    found.add(address.lower())
        return found

    async def _save(self, recipients: Iterable[str], mark: SentMark) -> None:
        await asyncio.to_thread(self._log.learn_sent, self.mailbox.id, recipients, mark)
        self._mark = mark


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value)
