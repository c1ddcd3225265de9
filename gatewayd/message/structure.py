"""The MIME structure: the guarded compat32 parse and its fast path for plain single-part messages,
the top-level headers we keep, the leaf parts, and the part the fetch cap cut into."""

from __future__ import annotations

import functools
import logging
import re
from email import errors
from email.message import Message
from email.parser import BytesHeaderParser, Parser
from email.policy import compat32
from itertools import repeat
from typing import Any, cast

from gatewayd.message.limits import MAX_DEPTH, MAX_HEADER_CHARS, MAX_PARTS, safe
from gatewayd.message.lowercase import lower
from gatewayd.message.text import clean_header, fix_surrogates

log = logging.getLogger(__name__)

# Headers kept raw under data["headers"] for later pipeline stages.
RAW_HEADERS = ("list-id", "auto-submitted", "precedence", "return-path")
_WANTED = frozenset(
    {"from", "to", "cc", "reply-to", "subject", "date", "message-id", "in-reply-to", "references"}
) | frozenset(RAW_HEADERS)


class _TooManyPartsError(Exception):
    def __init__(self, root: _GuardedMessage) -> None:
        super().__init__("MIME structure too deep or too large")
        self.root = root


class _GuardedMessage(Message):
    """A compat32 Message that stops the parse beyond MAX_DEPTH levels or MAX_PARTS parts.

    The feed parser attaches each new part to its parent as soon as the part starts, so this is
    where depth and count are known. Raising aborts the parse; the tree built so far holds only
    whole parts (the one refused had not begun), and the caller keeps it, marked `_gw_stopped`:
    parts may follow that were never read.
    """

    _gw_depth = 0
    _gw_parts = 1
    _gw_root: _GuardedMessage | None = None
    _gw_stopped = False
    # (the header list, its length, lower-cased name -> position of its first field): the
    # stages look a part's headers up a dozen times, and Message.get lower-cases every field
    # name on each call. Valid while the list is the same object of the same length: the stdlib
    # appends fields, builds a new list to delete one, and replace_header keeps the name and
    # the position.
    _gw_index: tuple[list[tuple[str, Any]], int, dict[str, int]] | None = None
    # Message's private field list (set in its __init__; typeshed does not declare it).
    _headers: list[tuple[str, Any]]

    def attach(self, payload: Message) -> None:  # type: ignore[override]
        root = self._gw_root or self
        if self._gw_depth >= MAX_DEPTH or root._gw_parts >= MAX_PARTS:
            raise _TooManyPartsError(root)
        root._gw_parts += 1
        payload._gw_depth = self._gw_depth + 1  # type: ignore[attr-defined]
        payload._gw_root = root  # type: ignore[attr-defined]
        super().attach(payload)

    def _gw_first(self) -> dict[str, int]:
        """Lower-cased field name -> position of its first field."""
        headers = self._headers
        index = self._gw_index
        if index is None or index[0] is not headers or index[1] != len(headers):
            first: dict[str, int] = {}
            for position, (key, _) in enumerate(headers):
                first.setdefault(lower(key), position)
            index = self._gw_index = (headers, len(headers), first)
        return index[2]

    def get(self, name: str, failobj: Any = None) -> Any:
        """What Message.get gives (the first field of that name, or failobj), by the index."""
        position = self._gw_first().get(lower(name))
        if position is None:
            return failobj
        key, value = self._headers[position]
        if type(value) is str and value.isascii() and self.policy is compat32:
            return value  # what compat32's header_fetch_parse gives an ASCII value, for a method call less
        # Any: typeshed says str, but compat32 gives a Header for raw 8-bit values (and compiled
        # code would check the str).
        policy: Any = self.policy
        return policy.header_fetch_parse(key, value)

    def get_content_type(self) -> str:
        """What Message.get_content_type gives, from a cache keyed by the field's value: a message
        asks for its type (or its main or subtype) half a dozen times."""
        value = self.get("content-type", _MISSING)
        if value is _MISSING:
            return self.get_default_type()
        if type(value) is not str or len(value) > _MAX_CACHED_PARAMS_CHARS:
            return super().get_content_type()
        return _content_type(value)

    def __contains__(self, name: str) -> bool:
        return lower(name) in self._gw_first()

    def _get_params_preserve(self, failobj: Any, header: str) -> Any:
        """What Message._get_params_preserve gives (the parameters of the first `header` field,
        their quotes kept), from a cache: get_param parses them anew on every call, and a message
        asks for its charset and filenames, each time taking 3-5 µs."""
        value = self.get(header, _MISSING)
        if value is _MISSING:
            return failobj
        if type(value) is not str or len(value) > _MAX_CACHED_PARAMS_CHARS:
            raw = self._headers[self._gw_first()[lower(header)]][1]
            if isinstance(raw, str) and len(raw) > MAX_HEADER_CHARS:
                # The stdlib's parameter parsing slices the rest of the value at every ";": the
                # square of its length (190 KB of "; a=b" took 2 s of CPU).
                return list(_parse_params(raw[:MAX_HEADER_CHARS]))
            # A Header object, or not worth keeping (typeshed does not declare this private method).
            return super()._get_params_preserve(failobj, header)  # type: ignore[misc]
        return list(_params(value))  # a list of its own: get_params(unquote=False) hands it out


_MISSING = object()
_MAX_CACHED_PARAMS_CHARS = 512


def _parse_params(value: str) -> tuple[tuple[str, Any], ...]:
    """Message._get_params_preserve of a field with this value: a function of the value alone."""
    stub = Message()
    stub.set_raw("Content-Type", value)
    return tuple(Message._get_params_preserve(stub, None, "content-type"))  # type: ignore[attr-defined]


# A few dozen Content-Type values make up most mail, so the cache mostly hits.
_params = functools.lru_cache(maxsize=1024)(_parse_params)


@functools.lru_cache(maxsize=1024)
def _content_type(value: str) -> str:
    """Message.get_content_type of a part whose Content-Type field has this value."""
    stub = Message()
    stub.set_raw("Content-Type", value)
    return stub.get_content_type()


_PARSER = Parser(_class=_GuardedMessage, policy=compat32)
_HEADER_PARSER = BytesHeaderParser(policy=compat32)
# Where a header field starts, after a line end: its name and the colon (group 1: the name, then
# the white space before the value), or a line that is no continuation (no group: no field).
_FIELD_START = re.compile(r"\n(?:([\041-\071\073-\176]++):[ \t]*+|(?![ \t]))")


def parse(raw: bytes) -> Message:
    try:
        return _parse_structure(raw)
    except _TooManyPartsError as exc:
        log.debug("MIME deeper than %d or over %d parts; keeping the first", MAX_DEPTH, MAX_PARTS)
        exc.root._gw_stopped = True
        return exc.root
    except Exception:
        log.debug("MIME parse failed; falling back to the headers alone", exc_info=True)
    try:
        return _HEADER_PARSER.parsebytes(raw)  # the body becomes one text payload
    except Exception:
        log.debug("header parse failed too", exc_info=True)
        return Message()


def _parse_structure(raw: bytes) -> Message:
    """What BytesParser.parsebytes(raw) gives; a plain single-part message without the feed parser."""
    text = raw.decode("ascii", "surrogateescape")  # as BytesParser does
    root = _plain_single_part(text)
    return root if root is not None else _PARSER.parsestr(text)


def _plain_single_part(text: str) -> Message | None:
    """The feed parser's result for a single-part message with a plain header block, else None.

    The feed parser takes about 90 µs for a typical 4 KB message, most of it passing each line of
    the headers and the body through a stack of generators. From a plain header block (no envelope
    "From " line, no line it would record a defect for, lines ended by LF or CRLF) plain_header_fields
    reads the same headers as its `_parse_headers` and `compat32.header_source_parse`: the name up
    to the first colon; the value from its first non-blank character, continuation lines kept as
    they are, the final line end stripped. A single-part body is then the rest of the text as it
    stands. Multipart and message/* bodies are left to the parser.
    """
    plain = plain_header_fields(text)
    if plain is None:
        return None
    fields, end = plain
    root = _GuardedMessage(policy=compat32)
    root._headers = fields  # what set_raw of each field builds under compat32, without a call per field
    if root.get_content_maintype() in ("multipart", "message"):
        return None
    root.set_payload(text[end:])
    return root


def plain_header_fields(text: str) -> tuple[list[tuple[str, str]], int] | None:
    """The fields (name, value) the feed parser reads from the header block that starts `text`,
    and where the block ends (after its empty line); None when the block is not a plain one (see
    _plain_single_part), for the parser to read.

    A plain block is header fields (a name of printable ASCII but for the space and the colon, a
    colon, the value, then its continuation lines, which start with a space or a tab) up to its
    first empty line, and only a CR followed by an LF ends a line (the feed parser takes a CR
    without an LF for a line end where this does not). Found by string methods and one split at
    the line ends that start a field: a regular expression that matched each field to its end
    took 80 instructions a character, a sixth of the parse.
    """
    start = _empty_line(text)
    if start is None:
        return None
    end = start + 1 if text.startswith("\n", start) else start + 2
    if start == 0:
        return [], end
    with_cr = text.find("\r", 0, start) >= 0
    if with_cr and text.count("\r", 0, start) != text.count("\r\n", 0, start):
        return None  # a CR without an LF
    # "\n", name, value, name, value ... from the field lines (the last one's LF left off).
    pieces = _FIELD_START.split("\n" + text[: start - 1])
    names = pieces[1::2]
    if pieces[0] or None in names:  # a continuation line first, or a line that starts no field
        return None
    # The value from its first character past the white space after the colon, continuation
    # lines kept as they are, less the line end(s) it ends with (without a CR, none is left).
    values = pieces[2::2]
    return list(zip(names, map(str.rstrip, values, repeat("\r\n")) if with_cr else values, strict=True)), end


def _empty_line(text: str) -> int | None:
    """Where the first empty line of `text` starts (one that is only a line end, LF or CRLF), if any."""
    if text.startswith(("\n", "\r\n")):
        return 0
    # The kind the first line's end suggests is looked for first, the other only before it: a
    # body can be long. Without a CR there is no CRLF to look for (most mail, as stored).
    first_line_end = text.find("\n")
    crlf = text.startswith("\r", first_line_end - 1)
    found = text.find("\n\r\n" if crlf else "\n\n")
    before = found + 2 if found >= 0 else len(text)
    if crlf or text.find("\r", 0, before) >= 0:
        other = text.find("\n\n" if crlf else "\n\r\n", 0, before)
        if other >= 0:
            return other + 1
    return found + 1 if found >= 0 else None


def collect_headers(root: Message, block_cut: bool = False) -> tuple[dict[str, list[str]], frozenset[str]]:
    """Lower-cased name -> unfolded, cleaned values of the top-level headers we use, in order; and
    the names of those with a value not all there: longer than MAX_HEADER_CHARS, or the last
    header of a block the fetch cut (`block_cut`)."""
    found: dict[str, list[str]] = {}
    cut: set[str] = set()
    for name, value in root.raw_items():
        key = lower(name)  # a str: the parser never stores another kind of name
        if key in _WANTED:
            text = str(value)
            if len(text) > MAX_HEADER_CHARS:  # clean_header keeps only the start
                cut.add(key)
            found.setdefault(key, []).append(clean_header(text))
    names = root.keys() if block_cut else ()
    if names and lower(names[-1]) in _WANTED:
        cut.add(lower(names[-1]))
    return found, frozenset(cut)


_HEADER_BLOCK_END = re.compile(rb"\n\r?\n")


_NOT_CLOSED = (errors.CloseBoundaryNotFoundDefect, errors.StartBoundaryNotFoundDefect)


def header_block_ended(raw: bytes) -> bool:
    """Whether `raw` holds the empty line that ends the top-level header block."""
    return _HEADER_BLOCK_END.search(raw) is not None


def leaves(root: Message) -> tuple[list[tuple[Message, tuple[Message, ...]]], bool]:
    """Leaf parts in document order with their multipart ancestors, and whether all were walked
    (not when the parse itself stopped before the end: see _GuardedMessage).

    message/* parts (forwarded mail, delivery reports) are leaves: they are attachments of this
    message, and their insides are not its body.
    """
    leaves: list[tuple[Message, tuple[Message, ...]]] = []
    stack: list[tuple[Message, tuple[Message, ...]]] = [(root, ())]
    walked = 0
    while stack:
        part, ancestors = stack.pop()
        walked += 1
        if walked > MAX_PARTS:
            return leaves, False
        # is_multipart() first: get_payload() of a leaf may decode it with its charset.
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            if len(ancestors) >= MAX_DEPTH:
                return leaves, False
            inner = (*ancestors, part)
            children = cast("list[Message | str]", part.get_payload())  # a multipart's is a list
            stack.extend((child, inner) for child in reversed(children) if isinstance(child, Message))
        else:
            safe(None, _repair_headers, part)
            leaves.append((part, ancestors))
    # A parse stopped at MAX_DEPTH or MAX_PARTS kept only the parts before the one it refused.
    return leaves, not (isinstance(root, _GuardedMessage) and root._gw_stopped)


def _repair_headers(part: Message) -> None:
    """Give Content-Type and Content-Disposition with raw 8-bit bytes real characters.

    compat32 hands such a header out as an "unknown-8bit" Header object whose str() replaces
    every byte by U+FFFD, so a raw UTF-8 filename ("Größe.pdf") would come out as "Gr����e.pdf".
    """
    for name, value in part.raw_items():
        if lower(name) in ("content-type", "content-disposition") and not str(value).isascii():
            part.replace_header(name, fix_surrogates(str(value)))


def unclosed(root: Message) -> bool:
    """Whether a multipart ended before its closing boundary, or before its first (then the parser
    keeps it as no multipart): parts may follow that were not read."""
    return root.get_content_maintype() == "multipart" and any(
        isinstance(d, _NOT_CLOSED) for d in root.defects
    )


def cut_part(leaves: list[tuple[Message, tuple[Message, ...]]], walked_all: bool) -> Message | None:
    """The part the fetch cap cut into, for a truncated message.

    That is the last leaf, unless some multipart around it saw its closing boundary (then the
    cut fell into an epilogue and every part is whole). With parts left unwalked, the cut lies
    beyond those we list.
    """
    if not leaves or not walked_all:
        return None
    part, ancestors = leaves[-1]
    if all(any(isinstance(d, errors.CloseBoundaryNotFoundDefect) for d in a.defects) for a in ancestors):
        return part
    return None
