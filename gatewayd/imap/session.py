"""One authenticated IMAP connection with a folder selected, over aioimaplib.

This module hides aioimaplib's rough edges (see docs in the README): it detects a lost
connection while idling, reads literals instead of ENVELOPE, and never lets the password reach
an exception message or a log line. Connecting and logging in: `gatewayd.imap.connect`; what
the server says unasked (EXISTS, NOTIFY's STATUS): `gatewayd.imap.untagged`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import aioimaplib

from gatewayd.config import ImapConfig
from gatewayd.imap.connect import connect
from gatewayd.imap.errors import (
    ImapConnectionLost,
    ImapError,
    ImapFolderMissing,
    ImapRefused,
    describe,
    response_text,
)
from gatewayd.imap.fetch import FETCH_ITEMS, PushedMessages, parse_fetch, uid_set
from gatewayd.imap.names import folder_key, quoted_mailbox
from gatewayd.imap.parts import fetch_parts
from gatewayd.imap.untagged import Untagged, new_mail_events, selected_events, status_answer
from gatewayd.message import FetchedMessage

log = logging.getLogger(__name__)

_LOST = [b"gatewayd: connection lost"]
# Pushed messages kept for the next sync at most (the watcher fetches at most 50 after a push).
_PUSHED_MAX = 50
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
# The response code that starts a tagged answer's text: `[NONEXISTENT] Mailbox doesn't exist`.
_RESPONSE_CODE = re.compile(rb"\A\[([A-Za-z0-9-]+)")
# A refused SELECT that says the folder does not exist (RFC 5530; RFC 3501's hint to create it).
_MISSING_CODES = frozenset({"NONEXISTENT", "TRYCREATE"})


@dataclass(frozen=True, slots=True)
class Selected:
    folder: str
    uidvalidity: int
    uidnext: int | None


class ImapSession:
    """Use `await ImapSession.open(config)`, then select a folder; every call raises an ImapError subclass."""

    def __init__(self, config: ImapConfig, client: aioimaplib.IMAP4) -> None:
        self.config = config
        self._client = client
        self._lost = False
        self._idle_task: asyncio.Future[aioimaplib.Response] | None = None
        self.selected: Selected | None = None
        # EXISTS counts and NOTIFY's STATUS notifications, whenever they came: every untagged
        # line goes through it.
        self.untagged = Untagged(client.protocol._untagged_response)
        client.protocol._untagged_response = self.untagged.note
        # Folders SELECTed away from since take_left() was last called.
        self._left: set[str] = set()
        # New messages the server pushed whole (after `push_new_mail`), for fetch_from.
        self._pushed = PushedMessages(_PUSHED_MAX)

    @classmethod
    async def open(cls, config: ImapConfig) -> ImapSession:
        """Connect and log in (`gatewayd.imap.connect`); nothing is selected yet."""
        return await connect(config, functools.partial(cls, config))

    def connection_lost(self) -> None:
        """aioimaplib's connection-lost callback (see `connect`)."""
        self._lost = True
        protocol = self._client.protocol
        # Wakes a pending wait_server_push at once instead of at the read timeout.
        protocol.idle_queue.put_nowait(_LOST)
        # aioimaplib leaves pending commands waiting forever: fail them now.
        pending = [protocol.pending_sync_command, *protocol.pending_async_commands.values()]
        for command in pending:
            if command is not None:
                command._exception = aioimaplib.Abort("connection lost")
                command.close(b"connection lost", "NO")

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(self._client.protocol.capabilities)

    @property
    def supports_idle(self) -> bool:
        return "IDLE" in self._client.protocol.capabilities

    @property
    def supports_notify(self) -> bool:
        return "NOTIFY" in self._client.protocol.capabilities and self.supports_idle

    async def notify(self, folders: Sequence[str], max_bytes: int, also: Sequence[str] = ()) -> None:
        """NOTIFY SET: new mail in the selected folder comes as EXISTS with the message itself (as
        `push_new_mail`), in the others as STATUS; so does new mail (only) in the folders `also`.

        Notifications come during IDLE and at the start of any command; `untagged.take_notified`
        collects the STATUS ones whenever they came.
        """
        mailboxes = " ".join(quoted_mailbox(folder) for folder in folders)
        await self._notify_set(
            selected_events(max_bytes),
            f"(MAILBOXES ({mailboxes}) (MessageNew MessageExpunge))",
            *new_mail_events(also),
        )

    async def push_new_mail(self, max_bytes: int, also: Sequence[str] = ()) -> bool:
        """Ask the server to send each new message of the selected folder with its EXISTS push
        (NOTIFY MessageNew with FETCH attributes, RFC 5465 5.2), so that `fetch_from` after a push
        needs no round trip, and new mail in the folders `also` as STATUS (`untagged`). False
        when the server has no NOTIFY or refuses this use of it."""
        if not self.supports_notify:
            return False
        try:
            await self._notify_set(selected_events(max_bytes), *new_mail_events(also))
        except ImapConnectionLost:
            raise
        except ImapError as exc:
            log.info("%s: new mail is fetched after each push (%s)", self.config.username, exc)
            return False
        return True

    async def _notify_set(self, *events: str) -> None:
        protocol = self._client.protocol
        command = aioimaplib.Command("NOTIFY", protocol.new_tag(), "SET", *events, loop=protocol.loop)
        await self._call("NOTIFY", protocol.execute(command))

    async def status(self, folder: str) -> tuple[int | None, int | None]:
        """(UIDNEXT, UIDVALIDITY) of a folder that is not selected, without selecting it."""
        self.untagged.status_query = folder_key(folder)
        try:
            request = self._client.status(quoted_mailbox(folder), "(UIDNEXT UIDVALIDITY)")
            response = await self._call("STATUS", request)
        finally:
            self.untagged.status_query = None
        return status_answer(response.lines, folder)

    async def folder_exists(self, folder: str) -> bool:
        """Whether LIST shows the folder (a name with a wildcard may match others: then True)."""
        response = await self._call("LIST", self._client.list('""', quoted_mailbox(folder)))
        return any(isinstance(line, bytes) and line.strip() for line in response.lines[:-1])

    async def list_special_use(self) -> list[bytes]:
        """The `LIST` lines (after `LIST `) of the special-use folders (RFC 6154): asked for alone
        where the server offers the selection option, else every folder, whose lines may carry
        the attributes all the same."""
        caps = self.capabilities
        if "SPECIAL-USE" in caps and "LIST-EXTENDED" in caps:
            request = self._client.protocol.simple_command("LIST", "(SPECIAL-USE)", '""', '"*"')
        else:
            request = self._client.list('""', '"*"')
        response = await self._call("LIST", request)
        return [bytes(line) for line in response.lines[:-1] if isinstance(line, bytes)]

    def take_left(self) -> set[str]:
        """The folders this session SELECTed away from since the last call."""
        left, self._left = self._left, set()
        return left

    def _check(self, response: aioimaplib.Response, what: str) -> aioimaplib.Response:
        if self._lost:
            raise ImapConnectionLost("connection lost")
        if response.result != "OK":
            text = bytes(response.lines[-1]) if response.lines else b""
            code = _RESPONSE_CODE.match(text)
            raise ImapRefused(
                f"{what} failed: {response.result} {response_text(response.lines[-1:])}",
                response.result,
                code.group(1).decode("ascii").upper() if code else None,
            )
        return response

    async def _call(
        self, what: str, awaitable: Awaitable[aioimaplib.Response], timeout: float | None = None
    ) -> aioimaplib.Response:
        try:
            if self._lost:
                raise ImapConnectionLost("connection lost")
            # Any command ends IDLE first: aioimaplib would hold it back until DONE.
            await self.idle_done()
        except BaseException:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()  # never sent: no "never awaited" warning
            raise
        try:
            response = await asyncio.wait_for(awaitable, timeout or self.config.read_timeout_seconds)
        except (TimeoutError, aioimaplib.CommandTimeout):
            raise ImapConnectionLost(f"no answer to {what} in time") from None
        except aioimaplib.AioImapException as exc:
            if self._lost:  # the connection-lost callback failed it (aioimaplib's Abort)
                raise ImapConnectionLost(f"{what} failed: connection lost") from None
            raise ImapError(f"{what} failed: {type(exc).__name__}") from None
        except OSError as exc:
            raise ImapConnectionLost(f"{what} failed: {describe(exc)}") from None
        return self._check(response, what)

    async def select(self, folder: str, read_only: bool = False) -> Selected:
        """SELECT the folder (`read_only`: EXAMINE it, which changes no flag, not even \\Recent).
        ImapFolderMissing when the server refuses it for a folder that does not exist."""
        if self.selected is not None and self.selected.folder != folder:
            # A push the server held back for the folder we leave is lost with it (see notify.py).
            self._left.add(self.selected.folder)
        # The EXISTS in the answer is the new folder's count, not new mail.
        self.untagged.exists = None
        self._pushed.clear()
        command = "EXAMINE" if read_only else "SELECT"
        opening = self._client.examine if read_only else self._client.select
        # A SELECT deselects the folder first, whatever its outcome (RFC 3501 6.3.1): one that
        # fails leaves none selected, so nothing may read the old folder's UIDs as current.
        self.selected = None
        try:
            response = await self._call(command, opening(quoted_mailbox(folder)))
        except ImapRefused as exc:
            if await self._missing(folder, exc):
                raise ImapFolderMissing(str(exc)) from None
            raise
        if read_only:
            # aioimaplib only knows that SELECT selects; UID commands need the SELECTED state.
            self._client.protocol.state = aioimaplib.SELECTED
        uidvalidity = uidnext = None
        for line in response.lines:
            if isinstance(line, bytes):
                if match := _UIDVALIDITY.search(line):
                    uidvalidity = int(match.group(1))
                if match := _UIDNEXT.search(line):
                    uidnext = int(match.group(1))
        if uidvalidity is None:
            raise ImapError(f"{command} {folder}: server sent no UIDVALIDITY")
        self.selected = Selected(folder, uidvalidity, uidnext)
        return self.selected

    async def _missing(self, folder: str, refused: ImapRefused) -> bool:
        """Whether a refused SELECT means that the folder does not exist: the server says so, or,
        with a plain NO, LIST does not show it (a code such as NOPERM or UNAVAILABLE: it does)."""
        if refused.result != "NO":
            return False
        if refused.code is not None:
            return refused.code in _MISSING_CODES
        try:
            return not await self.folder_exists(folder)
        except ImapConnectionLost:
            raise
        except ImapError:
            return False  # cannot tell: as refused

    async def uids_from(self, first_uid: int) -> list[int]:
        """All UIDs >= first_uid, ascending. (`n:*` always includes the highest UID: filter.)"""
        response = await self._call("UID SEARCH", self._client.uid_search(f"UID {first_uid}:*", charset=None))
        uids: list[int] = []
        # aioimaplib strips the `* SEARCH` prefix; the last line is the tagged completion text.
        for line in response.lines[:-1]:
            uids.extend(int(token) for token in bytes(line).split() if token.isdigit())
        return sorted(uid for uid in uids if uid >= first_uid)

    async def fetch(self, uids: Sequence[int], max_bytes: int) -> list[FetchedMessage]:
        """Fetch metadata and the first max_bytes of each message, without setting \\Seen; for a
        larger message, the parts those bytes missed too (`gatewayd.imap.parts`).

        A UID expunged meanwhile is absent from the result, also when the server still lists it
        without its content because another session expunged it (`[EXPUNGEISSUED]`).
        """
        if not uids or self.selected is None:
            return []
        wanted = set(uids)
        items = FETCH_ITEMS.format(max_bytes=max_bytes)
        response = await self._call("UID FETCH", self._client.uid("fetch", uid_set(uids), items))
        fetched = parse_fetch(response.lines, self.selected.folder, self.selected.uidvalidity, present=True)
        return await fetch_parts(self.fetch_raw, [m for m in fetched if m.uid in wanted], max_bytes)

    async def fetch_raw(self, uids: Sequence[int], items: str) -> Sequence[bytes | bytearray]:
        """The lines of the answer to `UID FETCH <uids> <items>`, as aioimaplib hands them over."""
        response = await self._call("UID FETCH", self._client.uid("fetch", uid_set(uids), items))
        return response.lines

    async def fetch_from(
        self, first_uid: int, max_bytes: int, expected: int | None = None
    ) -> list[FetchedMessage]:
        """Every message with a UID >= first_uid, ascending, fetched as `fetch` does, in one
        `UID FETCH first_uid:*` (no SEARCH first): for a few new messages only, since the answer
        is held in memory whole.

        `n:*` means n..highest UID in either order (RFC 3501 6.4.8, RFC 9051 9): when n is above
        the highest UID the server still returns the message with the highest UID, so whatever is
        below first_uid is dropped. A message expunged meanwhile is absent, as with `fetch`.

        `expected`: how many new messages the server reported at most. When its pushes brought
        exactly that many from first_uid up (see `push_new_mail`), they are the answer, without
        a round trip.
        """
        if self.selected is None:
            return []
        if expected is not None and (pushed := self._pushed.take(first_uid, expected)) is not None:
            return await fetch_parts(self.fetch_raw, pushed, max_bytes)
        self._pushed.clear()
        items = FETCH_ITEMS.format(max_bytes=max_bytes)
        response = await self._call("UID FETCH", self._client.uid("fetch", f"{first_uid}:*", items))
        fetched = parse_fetch(response.lines, self.selected.folder, self.selected.uidvalidity, present=True)
        messages = sorted((m for m in fetched if m.uid >= first_uid), key=lambda m: m.uid)
        return await fetch_parts(self.fetch_raw, messages, max_bytes)

    async def message_ids(self, uids: Sequence[int]) -> dict[int, tuple[str | None, str | None]]:
        """UID -> (Message-ID header, INTERNALDATE), for resynchronising after a UIDVALIDITY change."""
        if not uids or self.selected is None:
            return {}
        items = "(UID INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
        response = await self._call("UID FETCH", self._client.uid("fetch", uid_set(uids), items))
        result: dict[int, tuple[str | None, str | None]] = {}
        for message in parse_fetch(response.lines, self.selected.folder, self.selected.uidvalidity):
            header = message.raw.decode("latin-1").partition(":")[2].strip() or None
            result[message.uid] = (header, message.internaldate)
        return result

    async def idle_start(self) -> None:
        try:
            self._idle_task = await asyncio.wait_for(
                self._client.idle_start(timeout=10**6), self.config.read_timeout_seconds
            )
        except (TimeoutError, aioimaplib.AioImapException) as exc:
            raise ImapConnectionLost(f"IDLE not accepted: {describe(exc)}") from None

    async def wait_push(self, timeout: float) -> list[bytes]:
        """Untagged lines pushed during IDLE, all that came so far; [] when nothing came within
        timeout."""
        try:
            pushes: list[list[bytes | bytearray]] = [await self._client.wait_server_push(timeout)]
        except TimeoutError:
            return []
        # A push read in several pieces (a large message) or a second push meanwhile: together,
        # so that the sync finds every pushed message whole, even without leaving IDLE.
        queue = self._client.protocol.idle_queue
        while not queue.empty():
            pushes.append(queue.get_nowait())
        lines: list[bytes] = []
        for push in pushes:
            if push is _LOST or self._lost:
                raise ImapConnectionLost("connection closed by server")
            self._keep_pushed(push)
            lines += [line for line in push if isinstance(line, bytes)]
        return lines

    def _keep_pushed(self, lines: Sequence[bytes | bytearray]) -> None:
        if self.selected is not None:
            self._pushed.add(lines, self.selected.folder, self.selected.uidvalidity)

    @property
    def push_pending(self) -> bool:
        """A push came during IDLE that `wait_push` has not returned yet."""
        return not self._client.protocol.idle_queue.empty()

    @property
    def idling(self) -> bool:
        """In IDLE: pushes arrive; the next command ends it first (see `_call`)."""
        return self._idle_task is not None

    async def idle_done(self) -> None:
        """End IDLE, if in it; a server that does not confirm in time is considered gone."""
        task, self._idle_task = self._idle_task, None
        if task is None:
            return
        if task.done():
            if not task.cancelled():
                task.exception()  # the connection broke while idling: the caller finds out next
            return
        if self._lost:
            raise ImapConnectionLost("connection lost")
        self._client.idle_done()
        try:
            await asyncio.wait_for(task, self.config.read_timeout_seconds)
        except (TimeoutError, aioimaplib.AioImapException):
            raise ImapConnectionLost("no answer to DONE in time") from None
        if self._lost:
            raise ImapConnectionLost("connection lost")
        # What the server pushed before it ended IDLE and nobody read yet: its EXISTS are counted
        # already (and call for the sync that follows); its messages are kept for that sync.
        queue = self._client.protocol.idle_queue
        while not queue.empty():
            self._keep_pushed(queue.get_nowait())

    async def noop(self) -> list[bytes]:
        response = await self._call("NOOP", self._client.noop())
        return [line for line in response.lines if isinstance(line, bytes)]

    async def logout(self) -> None:
        """Leave politely (DONE, LOGOUT); never raises."""
        try:
            await self.idle_done()
            if not self._lost:
                await asyncio.wait_for(self._client.logout(), 2)
        except Exception:
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """Close the connection at once, and let go of everything of it."""
        transport = self._client.protocol.transport
        if transport is not None:
            transport.close()
        # The IDLE timer aioimaplib's `idle_start` scheduled (`idle_done` cancels it, a lost
        # connection never does) would hold the client, and this session, until it fires.
        waiter = self._client._idle_waiter
        if waiter is not None:
            waiter.cancel()
        task, self._idle_task = self._idle_task, None
        if task is not None:
            # A connection lost in IDLE fails its task; the watcher knew from `wait_push` already.
            task.add_done_callback(_read_outcome)


def _read_outcome(task: asyncio.Future[aioimaplib.Response]) -> None:
    if not task.cancelled():
        task.exception()
