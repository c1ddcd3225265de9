"""The parts a message's prefix missed: fetched on their own, so that no text hides past the cap.

The first FETCH brings the first `max_bytes` of each message (`BODY.PEEK[]<0.N>`). A text part
after a large attachment lies beyond that prefix, out of sight of every stage. So for each message
larger than its prefix whose prefix is multipart, `fetch_parts` asks for the BODYSTRUCTURE (one
`UID FETCH` for the batch), then for each leaf part the prefix lacks (or holds cut) its MIME header
and, for an inline text part (the body, a further text part, a calendar invite), its content up to
what is left of `max_bytes` (the text fetched per message stays within the cap). Of an attached
text file (by its type, or application/octet-stream by its file name) or a forwarded message (its
own header and body) the start the injection stage reads is fetched (attached.read_attached),
within its budget: MAX_ATTACHED_BYTES decoded of each, MAX_ATTACHED_PARTS parts and
MAX_ATTACHED_TOTAL in all, counting those the prefix holds. Other attachments are never fetched,
their size comes from the BODYSTRUCTURE. Messages that need the same items share one `UID FETCH`:
the attached texts ride in the one that fetches the MIME headers.

A message within the cap costs nothing more. Whatever goes wrong here (a BODYSTRUCTURE that cannot
be read, a part the server refuses or leaves out) leaves the message as its prefix alone, logged:
it is never lost. Only a lost connection is raised, for the watcher to fetch again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gatewayd.imap.bodystructure import BodyStructureError, LeafPart, leaf_parts
from gatewayd.imap.errors import ImapConnectionLost, ImapError
from gatewayd.imap.response import Value, fetch_items
from gatewayd.message import MAX_HEADER_CHARS, FetchedMessage, FetchedPart, whole_leaf_types
from gatewayd.message.attached import read_attached
from gatewayd.message.limits import MAX_ATTACHED_BYTES, MAX_ATTACHED_PARTS, MAX_ATTACHED_TOTAL, safe

log = logging.getLogger(__name__)

# `UID FETCH` of these items for these UIDs, the answer's lines as aioimaplib hands them over.
RawFetch = Callable[[Sequence[int], str], Awaitable[Sequence[bytes | bytearray]]]
# Encoded bytes fetched beyond an attached text's share of the budget: one base64 line, so that the
# decoded start the scanner reads is all there.
_SLACK = 78


@dataclass(frozen=True, slots=True)
class _Wanted:
    """One leaf part to fetch: its MIME header, and `length` bytes of its content (0: none)."""

    index: int
    leaf: LeafPart
    length: int


async def fetch_parts(
    fetch: RawFetch, messages: list[FetchedMessage], max_bytes: int
) -> list[FetchedMessage]:
    """`messages` with the parts their prefixes missed (see the module docstring)."""
    cut = [m for m in messages if len(m.raw) < m.size]  # the common case: none, and no thread hop
    if not cut:
        return messages
    # Parsing a prefix of up to fetch_max_bytes takes milliseconds: not on the loop.
    prefixes = await asyncio.to_thread(_prefixes, cut)
    if not prefixes:
        return messages
    structures = await _fetch_items(fetch, sorted(prefixes), "(UID BODYSTRUCTURE)")
    plans: dict[int, list[_Wanted]] = {}
    for uid, types in prefixes.items():
        try:
            leaves = leaf_parts(structures.get(uid, {}).get(b"BODYSTRUCTURE"))
        except BodyStructureError as exc:
            log.warning(
                "UID %d: unreadable BODYSTRUCTURE (%s); checking its first %d bytes", uid, exc, max_bytes
            )
            continue
        if wanted := _wanted(leaves, types, max_bytes):
            plans[uid] = wanted
    by_items: dict[str, list[int]] = {}
    for uid, wanted in plans.items():
        by_items.setdefault(_items(wanted), []).append(uid)
    parts: dict[int, tuple[FetchedPart, ...]] = {}
    for items, uids in by_items.items():
        answers = await _fetch_items(fetch, uids, items)
        for uid in uids:
            fetched = _parts(plans[uid], answers.get(uid, {}))
            if fetched is None:
                log.warning(
                    "UID %d: parts asked for were not sent; checking its first %d bytes", uid, max_bytes
                )
            else:
                parts[uid] = fetched
    return [dataclasses.replace(m, parts=parts[m.uid]) if m.uid in parts else m for m in messages]


def _prefixes(messages: list[FetchedMessage]) -> dict[int, list[str]]:
    """UID -> the types of the leaf parts each prefix holds whole, for the messages to complete."""
    return {m.uid: types for m in messages if (types := safe(None, _whole_leaf_types, m)) is not None}


def _whole_leaf_types(message: FetchedMessage) -> list[str] | None:
    return whole_leaf_types(message.raw, message.size)


async def _fetch_items(fetch: RawFetch, uids: Sequence[int], items: str) -> dict[int, dict[bytes, Value]]:
    """The answer by UID; empty when the server refuses the command (each message stays its prefix)."""
    try:
        return fetch_items(await fetch(uids, items))
    except ImapConnectionLost:
        raise
    except ImapError as exc:
        log.warning("fetching %s failed (%s); checking the messages' first bytes only", items[:40], exc)
        return {}


def _wanted(leaves: list[LeafPart], prefix_types: list[str], max_bytes: int) -> list[_Wanted]:
    """The leaves from the first the prefix lacks on, with how much of each one's content to fetch.

    When the prefix's whole leaves are not the first leaves of the BODYSTRUCTURE (the two parsers
    disagree about a malformed message), every leaf is fetched again.
    """
    first = len(prefix_types)
    if [leaf.content_type for leaf in leaves[:first]] != prefix_types:
        first = 0
    budget = max_bytes
    texts = _AttachedTextBudget(leaves[:first])
    wanted: list[_Wanted] = []
    for index, leaf in enumerate(leaves[first:], start=first):
        length = 0
        if leaf.content_type.startswith("text/") and not leaf.attachment:  # as body.bodies reads them
            length = min(leaf.encoded_size, budget)
            budget -= length
        elif _attached_text(leaf):
            length = texts.take(leaf)
        wanted.append(_Wanted(index, leaf, length))
    return wanted


class _AttachedTextBudget:
    """What the injection stage reads of attached text files and forwarded messages (attached.py), in
    encoded bytes to fetch: those the prefix holds whole count against it first."""

    def __init__(self, in_prefix: list[LeafPart]) -> None:
        held = [leaf for leaf in in_prefix if _attached_text(leaf)]
        self.parts = MAX_ATTACHED_PARTS - len(held)
        self.total = MAX_ATTACHED_TOTAL - sum(min(leaf.size, MAX_ATTACHED_BYTES) for leaf in held)

    def take(self, leaf: LeafPart) -> int:
        decoded = min(leaf.size, MAX_ATTACHED_BYTES, self.total)
        if self.parts <= 0 or decoded <= 0:
            return 0
        self.parts -= 1
        self.total -= decoded
        if decoded == leaf.size:
            return leaf.encoded_size
        return min(leaf.encoded_size, -(-decoded * leaf.encoded_size // leaf.size) + _SLACK)


def _attached_text(leaf: LeafPart) -> bool:
    """An attachment the injection stage reads (a text file, a forwarded message): one with a file
    name or an attachment disposition, or of any type but text/*, as body.is_attachment has it."""
    is_file = leaf.attachment or not leaf.content_type.startswith("text/")
    return is_file and read_attached(leaf.content_type, leaf.filename)


def _items(wanted: list[_Wanted]) -> str:
    items = ["UID"]
    for part in wanted:
        items.append(f"BODY.PEEK[{part.leaf.section}.MIME]<0.{MAX_HEADER_CHARS}>")
        if part.length:
            items.append(f"BODY.PEEK[{part.leaf.section}]<0.{part.length}>")
    return "(" + " ".join(items) + ")"


def _parts(wanted: list[_Wanted], answer: dict[bytes, Value]) -> tuple[FetchedPart, ...] | None:
    """The fetched parts of one message; None when an item asked for is missing."""
    parts: list[FetchedPart] = []
    for part in wanted:
        section = part.leaf.section.encode()
        header = answer.get(b"BODY[" + section + b".MIME]")
        content = answer.get(b"BODY[" + section + b"]") if part.length else b""
        if not isinstance(header, bytes) or not isinstance(content, bytes):
            return None
        cut = len(content) < part.leaf.encoded_size
        parts.append(
            FetchedPart(
                index=part.index,
                section=part.leaf.section,
                header=header,
                content=content,
                size=part.leaf.size if cut else None,
                cut=cut,
            )
        )
    return tuple(parts)
