"""A message larger than its fetched prefix, joined from the prefix and the parts fetched after it.

The prefix (`BODY.PEEK[]<0.N>`) holds the top-level headers and the leaf parts up to the cap; a
text part after a large attachment lies beyond it. The IMAP layer asks `whole_leaf_types` which
leaves the prefix holds whole, fetches the others on their own (each MIME header, and the content
of the text parts and of the attachments read as text: imap/parts.py), and `join` puts them in
place of what the prefix lacked, so that every stage sees the same text as a parse of the whole
message would.
"""

from __future__ import annotations

from collections.abc import Sequence
from email.message import Message
from typing import TYPE_CHECKING

from gatewayd.message import structure

if TYPE_CHECKING:
    from gatewayd.message.parsed import FetchedPart

Leaves = list[tuple[Message, tuple[Message, ...]]]
_HEADER_END = (b"\r\n\r\n", b"\n\n")


def whole_leaf_types(raw: bytes, size: int) -> list[str] | None:
    """The content types of the leaf parts the prefix `raw` of a `size`-byte message holds whole,
    in order; None when there is nothing to fetch beyond it: the message is whole, is not
    multipart (the prefix has the start of its one body), or has more parts than are walked."""
    if len(raw) >= size:
        return None
    root = structure.parse(raw)
    if root.get_content_maintype() != "multipart":
        return None
    leaves, walked_all = structure.leaves(root)
    if not walked_all:
        return None
    cut_part = structure.cut_part(leaves, walked_all)
    whole = leaves[:-1] if cut_part is not None else leaves
    return [part.get_content_type() for part, _ in whole]


def join(
    leaves: Leaves, parts: Sequence[FetchedPart]
) -> tuple[Leaves, tuple[Message, ...], dict[Message, int | None]]:
    """The prefix's leaves before the first fetched part, then the fetched parts; which of them
    have content cut short or missing; and the decoded sizes known for those."""
    joined = leaves[: parts[0].index]
    cut: list[Message] = []
    sizes: dict[Message, int | None] = {}
    for fetched in parts:
        header = fetched.header
        if not header.endswith(_HEADER_END):  # a header cut by its own cap: end it
            header += b"\r\n\r\n"
        part = structure.parse(header + fetched.content)
        joined.append((part, ()))
        if fetched.cut:
            cut.append(part)
            sizes[part] = fetched.size
    return joined, tuple(cut), sizes
