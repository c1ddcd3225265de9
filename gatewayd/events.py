"""The event envelope every subscriber sees, and the event types gatewayd emits."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any

import orjson

MESSAGE_RECEIVED = "message.received"
MAILBOX_CONNECTED = "mailbox.connected"
MAILBOX_DISCONNECTED = "mailbox.disconnected"
MAILBOX_ERROR = "mailbox.error"
STREAM_GAP = "stream.gap"
CLOSING = "closing"


# "00" to "99" and "000" to "999", looked up: formatting a number ("%02d") takes ~1,000 instructions.
_TWO_DIGITS = tuple(f"{number:02}" for number in range(100))
_THREE_DIGITS = tuple(f"{number:03}" for number in range(1000))


def rfc3339(moment: datetime | None = None) -> str:
    """UTC, millisecond precision, `Z` suffix: sorts as text in the same order as in time."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    # isoformat(timespec="milliseconds") less its "+00:00", written from the fields: isoformat
    # takes 13k instructions (its offset), this 6k. Runs for every event and for a message's dates.
    year, two = moment.year, _TWO_DIGITS
    return (
        f"{year if year >= 1000 else f'{year:04}'}-{two[moment.month]}-{two[moment.day]}T{two[moment.hour]}:"
        f"{two[moment.minute]}:{two[moment.second]}.{_THREE_DIGITS[moment.microsecond // 1000]}Z"
    )


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp; raises ValueError. A timestamp without offset is refused."""
    moment = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("timestamp needs a UTC offset or Z")
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 with an offset that leaves the calendar
        raise ValueError("timestamp out of range") from None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event not yet stored. `dedupe_key` makes the store keep the first of equal keys only."""

    type: str
    agent_id: str
    mailbox_id: str | None
    data: dict[str, Any]
    dedupe_key: str | None = None
    # Lower-cased sender address, indexed for the `from=` filter.
    from_address: str | None = None


def compact_json(value: Any) -> str:
    """Event data as stored and sent: compact UTF-8 JSON. orjson: 1.4 against 18 µs for a
    typical event's data with json.dumps (same text; NaN becomes null instead of invalid JSON).

    A lone surrogate in any string (no UTF-8 can carry one) becomes U+FFFD: one odd character of
    hostile mail must never make its event unstorable, and its folder stuck behind it."""
    return compact_json_utf8(value).decode()


def compact_json_utf8(value: Any) -> bytes:
    """`compact_json`'s text as the UTF-8 bytes orjson writes: the store keeps them as they are."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return orjson.dumps(_without_surrogates(value), option=orjson.OPT_NON_STR_KEYS)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def without_lone_surrogates(text: str) -> str:
    """`text` with U+FFFD for any surrogate code point: UTF-7, UTF-16 and the escape codecs decode
    them from hostile input, and no UTF-8 (an event's JSON) can carry one."""
    if text.isascii() or not _LONE_SURROGATE.search(text):
        return text
    return _LONE_SURROGATE.sub("\ufffd", text)


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return without_lone_surrogates(value)
    if isinstance(value, dict):
        return {_without_surrogates(key): _without_surrogates(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_surrogates(item) for item in value]
    return value


# A str as a JSON string, exactly as json.dumps(..., ensure_ascii=False) writes it (its C encoder).
_string = encode_basestring


class Event:
    """A stored event. `seq` orders events; `id` is its opaque public form.

    Built for the hot paths: a replayed event keeps its data as the stored JSON, as UTF-8 bytes
    (`data_utf8`), copied into its SSE frame as they are and only decoded if someone reads `data`
    or `data_json`; the SSE frame is encoded once, however many subscribers the event goes to.
    """

    __slots__ = (
        "_chunk",
        "_data",
        "_data_json",
        "_data_utf8",
        "_frame",
        "agent_id",
        "created_at",
        "from_address",
        "id",
        "mailbox_id",
        "seq",
        "type",
    )

    def __init__(
        self,
        seq: int,
        id: str,
        type: str,
        created_at: str,
        agent_id: str,
        mailbox_id: str | None,
        data: dict[str, Any] | None = None,
        from_address: str | None = None,
        *,
        data_json: str | None = None,
        data_utf8: bytes | None = None,
    ) -> None:
        if data is None and data_json is None and data_utf8 is None:
            data = {}
        self.seq, self.id, self.type, self.created_at = seq, id, type, created_at
        self.agent_id, self.mailbox_id, self.from_address = agent_id, mailbox_id, from_address
        self._data, self._data_json, self._data_utf8 = data, data_json, data_utf8
        self._frame: bytes | None = None
        self._chunk: bytes | None = None

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            self._data = json.loads(self._data_json or self._data_utf8 or "{}")
        return self._data

    @property
    def data_json(self) -> str:
        if self._data_json is None:
            if self._data_utf8 is not None:
                self._data_json = self._data_utf8.decode()
            else:
                self._data_json = compact_json(self._data)
        return self._data_json

    def envelope(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "created_at": self.created_at,
            "agent_id": self.agent_id,
            "mailbox_id": self.mailbox_id,
            "data": self.data,
        }

    def to_json(self) -> str:
        """The envelope as one line of JSON, byte for byte what json.dumps would give
        (`ensure_ascii=False`, compact separators), built by formatting: a replay frames
        thousands of events a second."""
        return f"{self._envelope_head()}{self.data_json}}}"

    def _envelope_head(self) -> str:
        """to_json up to the data's value."""
        mailbox = "null" if self.mailbox_id is None else _string(self.mailbox_id)
        return (
            f'{{"id":{_string(self.id)},"type":{_string(self.type)},"created_at":{_string(self.created_at)},'
            f'"agent_id":{_string(self.agent_id)},"mailbox_id":{mailbox},"data":'
        )

    @property
    def sse_frame(self) -> bytes:
        """`id:`, `event:` and `data:` lines, encoded once and shared by every subscriber."""
        if self._frame is None:
            head = f"id: {self.id}\nevent: {self.type}\ndata: {self._envelope_head()}"
            if self._data_utf8 is not None:
                # A replayed event's data goes in as the store's bytes: no decode, no re-encode.
                self._frame = b"%b%b}\n\n" % (head.encode(), self._data_utf8)
            else:
                self._frame = f"{head}{self.data_json}}}\n\n".encode()
        return self._frame

    @property
    def sse_chunk(self) -> bytes:
        """`sse_frame` as one HTTP/1.1 chunk (`Transfer-Encoding: chunked`), also encoded once."""
        if self._chunk is None:
            frame = self.sse_frame
            self._chunk = b"%x\r\n%b\r\n" % (len(frame), frame)
        return self._chunk

    def _key(self) -> tuple[Any, ...]:
        return (
            self.seq,
            self.id,
            self.type,
            self.created_at,
            self.agent_id,
            self.mailbox_id,
            self.from_address,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return self._key() == other._key() and self.data == other.data

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Event(seq={self.seq}, id={self.id!r}, type={self.type!r}, mailbox_id={self.mailbox_id!r})"
