"""One authenticated IMAP connection with a folder selected, over aioimaplib.

This module hides aioimaplib's rough edges (see docs in the README): it detects a lost
connection while idling, upgrades STARTTLS by hand, reads literals instead of ENVELOPE, and
never lets the password reach an exception message or a log line.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import aioimaplib

from gatewayd.config import TLS_IMPLICIT, TLS_STARTTLS, ImapConfig
from gatewayd.imap.errors import ImapAuthError, ImapConnectionLost, ImapError, ImapTlsError
from gatewayd.imap.fetch import FETCH_ITEMS, PushedMessages, parse_fetch
from gatewayd.imap.login import login
from gatewayd.imap.names import decode_mailbox, folder_key, quoted_mailbox
from gatewayd.imap.parts import fetch_parts
from gatewayd.message import FetchedMessage
from gatewayd.tls import client_context

log = logging.getLogger(__name__)
# aioimaplib logs every line at debug and stray responses at info: never let it near our logs.
logging.getLogger("aioimaplib").setLevel(logging.WARNING)
logging.getLogger("aioimaplib.aioimaplib").setLevel(logging.WARNING)
# aioimaplib knows no NOTIFY (RFC 5465): register it as a command that runs alone, like SELECT.
aioimaplib.Commands.setdefault(
    "NOTIFY", aioimaplib.Cmd("NOTIFY", (aioimaplib.AUTH, aioimaplib.SELECTED), aioimaplib.Exec.is_sync)
)

_LOST = [b"gatewayd: connection lost"]
# Pushed messages kept for the next sync at most (the watcher fetches at most 50 after a push).
_PUSHED_MAX = 50
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_EXISTS = re.compile(rb"\A\* (\d+) EXISTS\Z")
_EXPUNGE = re.compile(rb"\A\* \d+ EXPUNGE\Z")
_STATUS_UIDNEXT = re.compile(rb"UIDNEXT (\d+)")
_STATUS_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")
# `* STATUS name (...)`, the name an atom or a quoted string (a literal is left unparsed).
_STATUS = re.compile(rb'\A\* STATUS (?:"((?:[^"\\]|\\.)*)"|([^\s(){"]+)) \(')


def tls_context(config: ImapConfig) -> ssl.SSLContext:
    return client_context(config.ca_file, config.verify_cert)


@dataclass(frozen=True, slots=True)
class Selected:
    folder: str
    uidvalidity: int
    uidnext: int | None


class ImapSession:
    """Use `await ImapSession.open(config, folder)`; every call raises an ImapError subclass."""

    def __init__(self, config: ImapConfig, client: aioimaplib.IMAP4) -> None:
        self.config = config
        self._client = client
        self._lost = False
        self._idle_task: asyncio.Future[aioimaplib.Response] | None = None
        self.selected: Selected | None = None
        # Set whenever the server reports EXISTS, in IDLE or not: aioimaplib drops an EXISTS
        # that arrives during another command, so the watcher checks this after each sync.
        self.exists_seen = False
        # The selected folder's message count as the server last reported it (EXISTS, less one per
        # EXPUNGE since), and a running total of the messages it reported added (each EXISTS above
        # the count: new mail). `arrived` never goes down; the watcher compares it between two
        # syncs of the same `selected` to know how many messages at most are new.
        self.exists: int | None = None
        self.arrived = 0
        # With NOTIFY: the folders a `* STATUS` reported changed, whenever it came (None: a
        # STATUS whose folder name could not be read). Read and cleared by take_notified().
        self._notified: set[str | None] = set()
        # The folder of a STATUS command in flight: its answer is not a notification.
        self._status_query: str | None = None
        # Folders SELECTed away from since take_left() was last called.
        self._left: set[str] = set()
        # New messages the server pushed whole (after `push_new_mail`), for fetch_from.
        self._pushed = PushedMessages(_PUSHED_MAX)
        protocol = client.protocol
        untagged = protocol._untagged_response

        def note(line: bytes) -> object:
            # Sees every untagged line first, before aioimaplib strips its `* ` markers.
            if line.endswith(b" EXISTS"):
                self.exists_seen = True
                self._count_exists(line)
            elif line.endswith(b" EXPUNGE"):
                if self.exists and _EXPUNGE.match(line):
                    self.exists -= 1
            elif line.startswith(b"* STATUS "):
                folder = _status_folder(line)
                if folder is None or self._status_query is None or folder_key(folder) != self._status_query:
                    self._notified.add(folder)
            return untagged(line)

        protocol._untagged_response = note

    def _count_exists(self, line: bytes) -> None:
        match = _EXISTS.match(line)
        if match is None:
            return
        count = int(match.group(1))
        if self.exists is not None and count > self.exists:
            self.arrived += count - self.exists
        self.exists = count

    @classmethod
    async def open(cls, config: ImapConfig) -> ImapSession:
        session: ImapSession | None = None

        def connection_lost(_exc: Exception | None) -> None:
            if session is not None:
                session._on_lost()

        timeout = config.connect_timeout_seconds
        try:
            if config.tls == TLS_IMPLICIT:
                client: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
                    config.host, config.port, timeout=timeout, ssl_context=tls_context(config)
                )
                client.protocol.conn_lost_cb = connection_lost
            else:
                client = aioimaplib.IMAP4(
                    config.host, config.port, timeout=timeout, conn_lost_cb=connection_lost
                )
            session = cls(config, client)
            await client.wait_hello_from_server()
            if config.tls == TLS_STARTTLS:
                await session._starttls()
            response = await asyncio.wait_for(
                login(client.protocol, config.username, config.password.reveal()), timeout
            )
            if response.result == "OK" and not any(b"CAPABILITY" in bytes(line) for line in response.lines):
                # The server did not say what it offers once logged in (IDLE, NOTIFY): ask.
                await asyncio.wait_for(client.protocol.capability(), timeout)
        except ImapError:
            await _abandon(session)
            raise
        except ssl.SSLError as exc:
            await _abandon(session)
            raise ImapTlsError(f"TLS failed: {exc.reason or type(exc).__name__}") from None
        except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
            await _abandon(session)
            raise ImapConnectionLost(
                f"cannot connect to {config.host}:{config.port}: {_describe(exc)}"
            ) from None
        if response.result != "OK":
            await _abandon(session)
            text = _text(response.lines[-1:]) if response.lines else response.result
            raise ImapAuthError(f"login refused for {config.username}: {text}")
        return session

    async def _starttls(self) -> None:
        protocol = self._client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise ImapTlsError("server does not offer STARTTLS")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        response = await asyncio.wait_for(protocol.execute(command), self.config.connect_timeout_seconds)
        if response.result != "OK":
            raise ImapTlsError(f"STARTTLS refused: {_text(response.lines)}")
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            protocol.transport, protocol, tls_context(self.config), server_hostname=self.config.host
        )
        protocol.transport = transport
        # Capabilities announced before TLS must not be trusted (RFC 3501 6.2.1).
        await asyncio.wait_for(protocol.capability(), self.config.connect_timeout_seconds)

    def _on_lost(self) -> None:
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

        Notifications come during IDLE and at the start of any command; take_notified() collects
        the STATUS ones whenever they came.
        """
        mailboxes = " ".join(quoted_mailbox(folder) for folder in folders)
        await self._notify_set(
            _selected_events(max_bytes),
            f"(MAILBOXES ({mailboxes}) (MessageNew MessageExpunge))",
            *_new_mail_events(also),
        )

    async def push_new_mail(self, max_bytes: int, also: Sequence[str] = ()) -> bool:
        """Ask the server to send each new message of the selected folder with its EXISTS push
        (NOTIFY MessageNew with FETCH attributes, RFC 5465 5.2), so that `fetch_from` after a push
        needs no round trip, and new mail in the folders `also` as STATUS (take_notified). False
        when the server has no NOTIFY or refuses this use of it."""
        if not self.supports_notify:
            return False
        try:
            await self._notify_set(_selected_events(max_bytes), *_new_mail_events(also))
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
        self._status_query = folder_key(folder)
        try:
            request = self._client.status(quoted_mailbox(folder), "(UIDNEXT UIDVALIDITY)")
            response = await self._call("STATUS", request)
        finally:
            self._status_query = None
        for line in response.lines:
            # aioimaplib kept only what follows `* STATUS `; a notification about another folder
            # may sit here too.
            name = _status_folder(b"* STATUS " + bytes(line))
            if name is not None and folder_key(name) == folder_key(folder):
                uidnext, uidvalidity = _STATUS_UIDNEXT.search(line), _STATUS_UIDVALIDITY.search(line)
                return (
                    int(uidnext.group(1)) if uidnext else None,
                    int(uidvalidity.group(1)) if uidvalidity else None,
                )
        return None, None

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

    def take_notified(self, folders: Sequence[str]) -> set[str]:
        """Which of these folders a STATUS reported since the last call (all of them when a
        STATUS named a folder that cannot be matched, so nothing is ever missed)."""
        notified, self._notified = self._notified, set()
        by_name = {folder_key(folder): folder for folder in folders}
        found = {by_name.get(folder_key(name)) if name is not None else None for name in notified}
        return set(folders) if None in found else {folder for folder in found if folder is not None}

    def _check(self, response: aioimaplib.Response, what: str) -> aioimaplib.Response:
        if self._lost:
            raise ImapConnectionLost("connection lost")
        if response.result != "OK":
            raise ImapError(f"{what} failed: {response.result} {_text(response.lines[-1:])}")
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
            raise ImapConnectionLost(f"{what} failed: {_describe(exc)}") from None
        return self._check(response, what)

    async def select(self, folder: str, read_only: bool = False) -> Selected:
        """SELECT the folder (`read_only`: EXAMINE it, which changes no flag, not even \\Recent)."""
        if self.selected is not None and self.selected.folder != folder:
            # A push the server held back for the folder we leave is lost with it (see notify.py).
            self._left.add(self.selected.folder)
        # The EXISTS in the answer is the new folder's count, not new mail.
        self.exists = None
        self._pushed.clear()
        command = "EXAMINE" if read_only else "SELECT"
        opening = self._client.examine if read_only else self._client.select
        response = await self._call(command, opening(quoted_mailbox(folder)))
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
        response = await self._call("UID FETCH", self._client.uid("fetch", _uid_set(uids), items))
        fetched = parse_fetch(response.lines, self.selected.folder, self.selected.uidvalidity, present=True)
        return await fetch_parts(self.fetch_raw, [m for m in fetched if m.uid in wanted], max_bytes)

    async def fetch_raw(self, uids: Sequence[int], items: str) -> Sequence[bytes | bytearray]:
        """The lines of the answer to `UID FETCH <uids> <items>`, as aioimaplib hands them over."""
        response = await self._call("UID FETCH", self._client.uid("fetch", _uid_set(uids), items))
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
        response = await self._call("UID FETCH", self._client.uid("fetch", _uid_set(uids), items))
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
            raise ImapConnectionLost(f"IDLE not accepted: {_describe(exc)}") from None

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


async def _abandon(session: ImapSession | None) -> None:
    if session is not None:
        session.abort()


def _uid_set(uids: Sequence[int]) -> str:
    """Compress sorted UIDs into ranges: 1,2,3,7 -> 1:3,7."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid != prev + 1:
            parts.append(f"{start}:{prev}" if start != prev else str(start))
            start = uid
        prev = uid
    parts.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(parts)


def _selected_events(max_bytes: int) -> str:
    return f"(SELECTED (MessageNew {FETCH_ITEMS.format(max_bytes=max_bytes)} MessageExpunge))"


def _new_mail_events(folders: Sequence[str]) -> list[str]:
    if not folders:
        return []
    return [f"(MAILBOXES ({' '.join(quoted_mailbox(folder) for folder in folders)}) (MessageNew))"]


def _status_folder(line: bytes) -> str | None:
    match = _STATUS.match(line)
    if match is None:
        return None
    quoted, atom = match.groups()
    name = re.sub(rb"\\(.)", rb"\1", quoted) if quoted is not None else atom
    return decode_mailbox(name.decode("utf-8", "replace"))


def _text(lines: Sequence[bytes | bytearray]) -> str:
    return " ".join(bytes(line).decode("utf-8", "replace") for line in lines)[:200]


def _describe(exc: BaseException) -> str:
    # Never str() an aioimaplib command error: a Command's repr includes its arguments.
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TimeoutError):
        return "timed out"
    return type(exc).__name__
