"""Moves and copies in flight into another folder of the same mailbox.

A MOVE lands in its destination before its answer (with COPYUID) reaches the mover: the
destination's watcher, on its own connection, can fetch the message before the mover has recorded
where it landed (the journal's `placed` entry). So the mover registers each move or copy here
before sending it, and settles it once its outcome is journaled. A watcher that finds a new
message matching one in flight into its folder waits for that outcome instead of announcing it:

- moved or copied there (the `placed` entry, or no UID to tell, or this very UID): not announced;
- failed: it is some other message (announced as usual);
- interrupted (the connection broke) or no outcome in time: the move's intent stays open and its
  recovery finds the message here, so it is not announced here either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gatewayd.imap.names import folder_key
from gatewayd.message.identity import Identity


@dataclass(slots=True)
class InFlight:
    """One move or copy being done; `outcome` resolves to its journaled outcome (None: interrupted)."""

    identity: Identity
    outcome: asyncio.Future[Mapping[str, Any] | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Arrivals:
    def __init__(self) -> None:
        self._flying: dict[tuple[str, str], list[InFlight]] = {}

    def start(self, mailbox_id: str, folder: str, identity: Identity) -> InFlight:
        flight = InFlight(identity)
        self._flying.setdefault((mailbox_id, folder_key(folder)), []).append(flight)
        return flight

    def settle(
        self, mailbox_id: str, folder: str, flight: InFlight, outcome: Mapping[str, Any] | None
    ) -> None:
        where = (mailbox_id, folder_key(folder))
        flights = self._flying.get(where, [])
        if flight in flights:
            flights.remove(flight)
            if not flights:
                del self._flying[where]
        if not flight.outcome.done():
            flight.outcome.set_result(outcome)

    def into(self, mailbox_id: str, folder: str, identity: Identity) -> list[InFlight]:
        """The moves and copies in flight into `folder` of the message `identity` names."""
        flights = self._flying.get((mailbox_id, folder_key(folder)))
        return [f for f in flights if f.identity.matches(identity)] if flights else []
