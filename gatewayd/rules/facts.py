"""What the rule conditions look at for one message (`Facts`), read lazily from what the pipeline
built: the event data, the headers (the block read from the raw message only when a condition
asks for a header the parser did not keep), the body and the inline text parts past it; and why
each may be only part of the message's (see gatewayd.rules.conditions on failing closed).
"""

from __future__ import annotations

import email.header
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from gatewayd.message import MAX_HEADER_CHARS, AttachedText, ParsedMessage, Skipped, SkipReason
from gatewayd.message.html import MAX_HTML_TOKENS, Scan, html_to_text
from gatewayd.message.limits import MAX_ATTACHED_BYTES, MAX_ATTACHED_TOTAL, MAX_HTML_CHARS
from gatewayd.message.lowercase import lower
from gatewayd.message.structure import plain_header_fields
from gatewayd.rules.match import RegexBudget

BULK_PRECEDENCE = ("bulk", "list", "junk")
MAX_HEADER_BYTES = 256 * 1024
_PARSER_CUT = f"longer than {MAX_HEADER_CHARS} characters, or cut by the fetch"
_HEADERS = BytesHeaderParser(policy=compat32)
_WORD_END = re.compile(r"[\s;(]")
_ATTACHED_CAPS = f"{MAX_ATTACHED_BYTES // 1024} KiB of a part read, {MAX_ATTACHED_TOTAL // 1024} KiB in all"
# attached.py's location of an inline text part past the body (not one in a forwarded message)
_INLINE = "inline:"


class Undecided(Exception):
    """A test that cannot be decided for this message; the message is the test and the reason."""


@dataclass(slots=True)
class Facts:
    """What conditions look at, for one message."""

    data: Mapping[str, Any]
    # The headers the parser kept; any other is read from `raw` when a condition asks.
    known: Mapping[str, list[str]]
    text: str
    budget: RegexBudget = field(default_factory=RegexBudget)
    # Tests that could not be decided (a regex out of time), for the event's `rules_errors`.
    errors: list[str] = field(default_factory=list)
    raw: bytes = b""
    rule: str = ""  # the rule being evaluated, to name it in `errors`
    text_cut: bool = False  # `text` may be only part of the body text
    text_markup_capped: bool = False  # cut only by the HTML converter's cap on markup
    parts_unseen: bool = False  # the message has parts that were not read (attachments among them)
    headers_cut: frozenset[str] = frozenset()  # headers whose values the message parser cut short
    # Text outside the body (attached.py), among it the inline text parts past the body, and the
    # parts left unread: the `body` test reads those parts too, as a mail client shows them.
    attached: tuple[AttachedText, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    # Conditions ask for a few names of a block of dozens: the block is read once, when a name may
    # be in it, and only the values asked for are unfolded (per name, once).
    _block: bytes | None = field(default=None, init=False, repr=False)
    _partial: str | None = field(default=None, init=False, repr=False)  # why the headers are not all read
    _last_field: str | None = field(default=None, init=False, repr=False)  # of a block cut short
    _cut: dict[str, str] = field(default_factory=dict, init=False, repr=False)  # name -> why values are cut
    _lowered: bytes = field(default=b"", init=False, repr=False)
    _fields: dict[str, list[str]] | None = field(default=None, init=False, repr=False)
    _values: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False)
    _bodies: list[str] | None = field(default=None, init=False, repr=False)
    _html_not_all_read: str | None = field(default=None, init=False, repr=False)  # an inline part's location

    @classmethod
    def of(cls, message: ParsedMessage, data: Mapping[str, Any]) -> Facts:
        """The facts of a parsed message, with `data` as the pipeline built it so far."""
        return cls(
            data,
            message.headers,
            message.text,
            raw=message.raw,
            text_cut=message.text_cut,
            text_markup_capped=message.text_markup_capped,
            parts_unseen=message.parts_unseen,
            headers_cut=message.headers_cut,
            attached=message.attached,
            skipped=message.skipped,
        )

    def values(self, name: str) -> list[str]:
        """A top-level header's values as written (unfolded, not decoded), in order; `name` in
        lower case. Read-only: the list is shared by every condition asking."""
        found = self._values.get(name)
        if found is None:
            found = self._values[name] = self._read(name)
        return found

    def has(self, name: str) -> bool:
        """Whether `values(name)` is non-empty. A header the parser kept always is (the block's
        values, else the kept ones), so it needs no reading of the block."""
        return bool(self.known.get(name)) or bool(self.values(name))

    def header(self, name: str) -> list[str]:
        return [_decode(value) for value in self.values(lower(name))]

    def headers_partial(self) -> str | None:
        """Why the message's headers may hold more than was read (then a header not found may be
        there all the same), or None. A parser failure is known once a header in the block is read."""
        # No raw message but one the fetch brought nothing of: its headers were cut short too.
        if self._block is None and (self.raw or self.data.get("truncated") is True):
            self._block, self._partial = _header_block(self.raw, self.data.get("truncated") is True)
            self._lowered = self._block.lower()
            if self._partial is not None:
                self._last_field = _last_field(self._block)
        return self._partial

    def value_cut(self, name: str) -> str | None:
        """Why a value `header(name)` gives may be only the start of the header's, or None."""
        self.values(name)
        return self._cut.get(name)

    def parsed_cut(self, name: str) -> str | None:
        """Why a value of header `name` in the event data (subject, addresses) may be only the start
        of the header's, or None."""
        return _PARSER_CUT if name in self.headers_cut else None

    def parts_partial(self) -> str | None:
        return "the message's parts were not all read" if self.parts_unseen else None

    def bodies(self) -> list[str]:
        """The body text, then the text of each inline text part past it: what a reader sees."""
        if not self.attached:  # most mail: one body part, or a text and an HTML alternative
            return [self.text]
        if self._bodies is None:
            self._bodies = [self.text]
            for part in self.attached:
                if part.location.startswith(_INLINE):  # HTML: its visible text; an invite: also its HTML
                    if part.text:
                        self._bodies.append(part.text)
                    if part.html:
                        text, scan = html_to_text(part.html, enough=MAX_HTML_CHARS)
                        self._bodies.append(text)
                        if scan is not Scan.WHOLE:
                            self._html_not_all_read = self._html_not_all_read or part.location
        return self._bodies

    def bodies_cut(self) -> str | None:
        """Why a text of `bodies()` may end where it was cut, not where it ends, or None."""
        if self.text_markup_capped:
            return f"the body text was not all read (its HTML past the {MAX_HTML_TOKENS} tags read)"
        if self.text_cut:
            return "the body text was not all read (cut at 256 KiB, or by the fetch)"
        for part in self.attached:
            if part.read_in_part and part.location.startswith(_INLINE):
                return f"the inline text part {part.location} was not all read ({_ATTACHED_CAPS})"
        for skipped in self.skipped:  # read as far as it was fetched
            if skipped.reason is SkipReason.PARTLY_FETCHED and skipped.location.startswith(_INLINE):
                return f"the inline text part {skipped.location} was not all read ({skipped.reason})"
        self.bodies()  # what it found past the markup it reads at most
        if self._html_not_all_read is not None:
            return f"the inline text part {self._html_not_all_read} was not all read (its HTML markup)"
        return None

    def bodies_partial(self) -> str | None:
        """Why `bodies()` may not be all the text a reader sees, or None."""
        if cut := self.bodies_cut():
            return cut
        for skipped in self.skipped:
            if skipped.location.startswith(_INLINE):
                return f"the inline text part {skipped.location} was not all read ({skipped.reason})"
        return self.parts_partial()

    def _read(self, name: str) -> list[str]:
        if self._fields is None and self.raw:
            self.headers_partial()
            try:
                # A field's name is in the block as written: when it is not there, no need to read.
                absent = name.encode("ascii", "surrogateescape") not in self._lowered
            except UnicodeEncodeError:  # no field name read as ASCII (or escaped bytes) can equal it
                absent = True
            if not absent:
                self._fields, parsed = _header_fields(self._block or b"")
                if not parsed:
                    self._partial = self._partial or "the header parser failed on them"
        raw_values = self._fields.get(name) if self._fields is not None else None
        if raw_values:
            if name == self._last_field and self._partial:  # the block was cut in it, or right after it
                self._cut[name] = self._partial
            return [_unfold(value) for value in raw_values]
        if name in self.headers_cut:
            self._cut[name] = _PARSER_CUT
        return self.known.get(name, [])

    def section(self, name: str) -> Mapping[str, Any]:
        """A stage's part of the event data: empty when the stage is not configured; a stage that
        failed on this message left its key null, and nothing can be decided on it."""
        value = self.data.get(name)
        if value is None and name in self.data:
            raise Undecided(f"the {name} stage failed on this message")
        return value if isinstance(value, dict) else {}


def _header_block(raw: bytes, truncated: bool) -> tuple[bytes, str | None]:
    """The header block (ended by an empty line), and why it may not be all of it, or None."""
    end = raw.find(b"\r\n\r\n")
    end = raw.find(b"\n\n") if end < 0 else end
    if 0 <= end < MAX_HEADER_BYTES:
        return raw[:end] + b"\r\n\r\n", None
    if end >= MAX_HEADER_BYTES or len(raw) > MAX_HEADER_BYTES:
        block = raw[:MAX_HEADER_BYTES] + b"\r\n\r\n"
        return block, f"the headers are longer than {MAX_HEADER_BYTES // 1024} KiB"
    # No empty line: a message of headers alone, unless the fetch cut it before the end of them.
    return raw + b"\r\n\r\n", "the fetch cut the headers short" if truncated else None


def _last_field(block: bytes) -> str:
    """The lower-cased name of the last field of a header block: the one a cut may have cut into."""
    for line in reversed(block.rstrip(b"\r\n").split(b"\n")):
        if line[:1] not in (b" ", b"\t"):  # not a continuation line
            return line.partition(b":")[0].strip().lower().decode("ascii", "surrogateescape")
    return ""


def _header_fields(block: bytes) -> tuple[dict[str, list[str]], bool]:
    """Lower-cased name -> raw values, in order, of the fields in a header block; and whether the
    block was read to its end."""
    found: dict[str, list[str]] = {}
    try:
        # A plain block is read as the parser reads it, without the parser (0.15 ms a message).
        plain = plain_header_fields(block.decode("ascii", "surrogateescape"))
        fields = plain[0] if plain is not None else _HEADERS.parsebytes(block).raw_items()
        for name, value in fields:
            found.setdefault(lower(name), []).append(value)
    except Exception:  # hostile headers: the conditions see what the parser kept
        return found, False
    return found, True


def _unfold(value: str) -> str:
    return " ".join(value.split())


def _decode(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:  # malformed encoded words: match the raw text
        return value


# -- what conditions ask ----------------------------------------------------------------------------


def as_number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def is_list(facts: Facts) -> bool:
    # Not any() over a generator: one that stops early is closed by raising GeneratorExit in it, a
    # traceback each time on Python 3.11 (most mail asked has a List-Id).
    return facts.has("list-id") or facts.has("list-post") or facts.has("list-unsubscribe")


def list_ids(facts: Facts) -> list[str]:
    """Each List-Id value as written, and the id in its angle brackets (RFC 2919: `Users
    <users.lists.example>` is the list `users.lists.example`)."""
    found = []
    for value in facts.header("list-id"):
        found.append(value.strip())
        start, end = value.rfind("<"), value.rfind(">")
        if 0 <= start < end:
            found.append(value[start + 1 : end].strip())
    return found


def is_bulk(facts: Facts) -> bool:
    """`Precedence: bulk`, `list` or `junk`, in any case: its first word, as senders append
    parameters (`bulk; x`) or comments (`bulk (newsletter)`)."""
    return any(_first_word(v) in BULK_PRECEDENCE for v in facts.header("precedence"))


def _first_word(value: str) -> str:
    words = _WORD_END.split(value.strip(), maxsplit=1)
    return lower(words[0])


def is_auto_submitted(facts: Facts) -> bool:
    return any(lower(v.split(";")[0].strip()) not in ("", "no") for v in facts.header("auto-submitted"))


def attachment_types(facts: Facts) -> list[str]:
    found = []
    for attachment in facts.data.get("attachments") or []:
        if isinstance(attachment, dict):
            found.append(str(attachment.get("content_type") or ""))
            name = attachment.get("filename")
            if isinstance(name, str) and "." in name:
                found.append("." + lower(name.rpartition(".")[2]))
    return found


def dkim_results(facts: Facts) -> list[str]:
    return [str(d.get("result")) for d in facts.section("auth").get("dkim") or [] if isinstance(d, dict)]


def auth_symbols(facts: Facts) -> list[str]:
    """The symbols of the auth stage's findings (FROM_LOOKALIKE_DOMAIN, NOT_ALIGNED, ...)."""
    findings = facts.section("auth").get("findings") or []
    return [str(f.get("symbol")) for f in findings if isinstance(f, dict)]


def nested(stage: str, *keys: str) -> Callable[[Facts], list[str]]:
    """A string in a stage's part of the event data."""

    def get(facts: Facts) -> list[str]:
        value: Any = facts.section(stage)
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return [value] if isinstance(value, str) else []

    return get


def spam_score(facts: Facts) -> float | None:
    return as_number(facts.section("spam").get("score"))


def injection_score(facts: Facts) -> float | None:
    return as_number(facts.section("injection").get("score"))
