"""The event envelope every subscriber sees, and the event types gatewayd emits."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

MESSAGE_RECEIVED = "message.received"
MAILBOX_CONNECTED = "mailbox.connected"
MAILBOX_DISCONNECTED = "mailbox.disconnected"
MAILBOX_ERROR = "mailbox.error"
STREAM_GAP = "stream.gap"
CLOSING = "closing"


def rfc3339(moment: datetime | None = None) -> str:
    """UTC, millisecond precision, `Z` suffix: sorts as text in the same order as in time."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp; raises ValueError. A timestamp without offset is refused."""
    moment = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("timestamp needs a UTC offset or Z")
    return moment.astimezone(UTC)


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


@dataclass(frozen=True, slots=True)
class Event:
    """A stored event. `seq` orders events; `id` is its opaque public form."""

    seq: int
    id: str
    type: str
    created_at: str
    agent_id: str
    mailbox_id: str | None
    data: dict[str, Any] = field(repr=False)
    from_address: str | None = None

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
        return json.dumps(self.envelope(), ensure_ascii=False, separators=(",", ":"))
