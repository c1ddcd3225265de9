"""IMAP actions on the message being processed, over the watcher's own connection.

While the pipeline runs, the watcher's connection has its folder selected (and may still be in
IDLE: the first command ends it): the rules act through that connection (no second login per
message). `MailActions` is what the rules engine needs; `SessionActions` implements it on an
`ImapSession`. Every method raises an `ImapError` subclass.

MOVE (RFC 6851) is used where the server has it; elsewhere UID COPY, then `\\Deleted`, then UID
EXPUNGE of that one UID (UIDPLUS; without it the message is left marked `\\Deleted`, since a plain
EXPUNGE would also remove whatever else the user had marked). Where the message lands comes from
the COPYUID response code (UIDPLUS); without it the new UID is unknown (None), and `locate` finds
the message there by its identity (`gatewayd.message.identity`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aioimaplib

from gatewayd.imap.names import quote, quoted_mailbox
from gatewayd.imap.session import ImapError, ImapSession
from gatewayd.message import FetchedMessage, parse
from gatewayd.message.identity import Identity, header_digest

_COPYUID = re.compile(rb"\[COPYUID (\d+) ([0-9:,]+) ([0-9:,]+)\]")
GMAIL_CAPABILITY = "X-GM-EXT-1"
# `locate` compares at most this many candidates (the newest: a message moved there just now), of
# which it fetches this much: a header block longer than that is never matched by its digest.
LOCATE_CANDIDATES = 20
LOCATE_BYTES = 65536


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a copied or moved message now is; uidvalidity and uid are None without COPYUID."""

    folder: str
    uidvalidity: int | None
    uid: int | None


class MailActions(Protocol):
    """What the rules may do to a message of the selected folder. Guarantees:

    - Every call finishes (or raises) before it returns: the next action sees its effect.
    - `move` and `copy` to a missing folder fail with a TRYCREATE-style error unless `create`.
    - `after_store` callbacks run once the batch's events are stored (the watcher calls `settle`).
    """

    folder: str
    uidvalidity: int

    @property
    def gmail(self) -> bool: ...

    async def store(self, uid: int, add: bool, flags: Sequence[str]) -> None: ...

    async def store_labels(self, uid: int, add: bool, labels: Sequence[str]) -> None: ...

    async def copy(self, uid: int, folder: str, create: bool) -> Placement: ...

    async def move(self, uid: int, folder: str, create: bool) -> Placement: ...

    async def present(self, uid: int) -> bool: ...

    async def fetch(self, uid: int, max_bytes: int) -> FetchedMessage | None: ...

    async def locate(self, folder: str, identity: Identity) -> Placement | None:
        """Find a message by its identity in another folder (over a second connection); None when
        it is not there or has no identity that can be looked for."""
        ...

    def after_store(self, callback: Callable[[], Awaitable[None]]) -> None: ...


class SessionActions:
    """`MailActions` over the watcher's session; one per batch of messages."""

    def __init__(self, session: ImapSession) -> None:
        if session.selected is None:
            raise ValueError("the session has no folder selected")
        self._session = session
        self.folder = session.selected.folder
        self.uidvalidity = session.selected.uidvalidity
        self._callbacks: list[Callable[[], Awaitable[None]]] = []

    @property
    def gmail(self) -> bool:
        return GMAIL_CAPABILITY in self._session.capabilities

    @property
    def _client(self) -> aioimaplib.IMAP4:
        return self._session._client

    async def _uid(self, what: str, *args: str) -> list[bytes]:
        response = await self._session._call(what, self._client.uid(*args))
        return [bytes(line) for line in response.lines]

    async def store(self, uid: int, add: bool, flags: Sequence[str]) -> None:
        if flags:
            item = ("+" if add else "-") + "FLAGS.SILENT"
            await self._uid("UID STORE", "store", str(uid), item, f"({' '.join(flags)})")

    async def store_labels(self, uid: int, add: bool, labels: Sequence[str]) -> None:
        if labels:
            item = ("+" if add else "-") + "X-GM-LABELS"
            listed = " ".join(quoted_mailbox(label) for label in labels)
            await self._uid("UID STORE", "store", str(uid), item, f"({listed})")

    async def copy(self, uid: int, folder: str, create: bool) -> Placement:
        lines = await self._to_folder("UID COPY", "copy", uid, folder, create)
        return _placement(folder, lines)

    async def move(self, uid: int, folder: str, create: bool) -> Placement:
        capabilities = self._session.capabilities
        if "MOVE" in capabilities:
            lines = await self._to_folder("UID MOVE", "move", uid, folder, create)
            return _placement(folder, lines)
        lines = await self._to_folder("UID COPY", "copy", uid, folder, create)
        await self.store(uid, True, ["\\Deleted"])
        if "UIDPLUS" in capabilities:
            await self._uid("UID EXPUNGE", "expunge", str(uid))
        return _placement(folder, lines)

    async def _to_folder(self, what: str, command: str, uid: int, folder: str, create: bool) -> list[bytes]:
        mailbox = quoted_mailbox(folder)
        try:
            return await self._uid(what, command, str(uid), mailbox)
        except ImapError as exc:
            if not create or "TRYCREATE" not in str(exc):
                raise
        await self._session._call("CREATE", self._client.create(mailbox))
        with contextlib.suppress(ImapError):  # so that mail clients show it
            await self._session._call("SUBSCRIBE", self._client.subscribe(mailbox))
        return await self._uid(what, command, str(uid), mailbox)

    async def present(self, uid: int) -> bool:
        return uid in await self._session.uids_from(uid)

    async def fetch(self, uid: int, max_bytes: int) -> FetchedMessage | None:
        found = await self._session.fetch([uid], max_bytes)
        return found[0] if found else None

    async def locate(self, folder: str, identity: Identity) -> Placement | None:
        if identity.message_id:
            criteria: tuple[str, ...] = ("HEADER", "Message-ID", quote(identity.message_id))
        elif identity.header_sha256 and identity.size is not None:
            criteria = ("LARGER", str(identity.size - 1), "SMALLER", str(identity.size + 1))
        else:
            return None
        other = await ImapSession.open(self._session.config)
        try:
            selected = await other.select(folder)
            response = await other._call("UID SEARCH", other._client.uid_search(*criteria, charset=None))
            uids = [int(t) for line in response.lines[:-1] for t in bytes(line).split() if t.isdigit()]
            candidates = sorted(uids)[-LOCATE_CANDIDATES:]
            fetched = await other.fetch(candidates, LOCATE_BYTES)
        finally:
            await other.logout()
        for message in sorted(fetched, key=lambda m: m.uid, reverse=True):
            if identity.matches(Identity.of(parse(message).data, header_digest(message.raw))):
                return Placement(folder, selected.uidvalidity, message.uid)
        return None

    def after_store(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._callbacks.append(callback)

    async def settle(self) -> None:
        """The batch's events are stored: run what waited for that (the rules journal)."""
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            await callback()


def _placement(folder: str, lines: Sequence[bytes]) -> Placement:
    for line in lines:
        if match := _COPYUID.search(line):
            destination = match.group(3).decode()
            uid = int(destination.split(",")[-1].split(":")[-1])
            return Placement(folder, int(match.group(1)), uid)
    return Placement(folder, None, None)
