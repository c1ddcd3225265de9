"""What a client is told when events it asked for are gone or were never issued: the data of the
stream's `stream.gap` event, and the listing's `gap` member, one shape for both."""

from __future__ import annotations

from gatewayd.events import rfc3339
from gatewayd.store import EventQuery, EventStore

# `reason`: events after the resume point were pruned, or the store never issued it.
GAP_RETENTION = "retention"
GAP_UNKNOWN_ID = "unknown_id"


def gap_data(requested: str, first_available: int, reason: str) -> dict[str, object]:
    return {
        "requested": requested,
        "first_available_id": str(first_available),
        "at": rfc3339(),
        "reason": reason,
    }


async def first_available(store: EventStore, query: EventQuery) -> int:
    """The oldest seq still stored that the query selects (not the store's oldest: it may be another
    tenant's, never shown to this client); the next seq issued when there is none."""
    oldest = await store.read_after(query, 0, 1)
    return oldest[0].seq if oldest else await store.last_seq() + 1
