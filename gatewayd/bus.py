"""In-process fan-out of stored events to live subscribers.

Each subscriber has a bounded queue: a slow one can neither grow memory nor stall the others.
When its queue is full it is marked overflowed and its stream closes; the client resumes by id
from the store, so nothing is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from gatewayd.events import Event


class Subscription:
    """One live subscriber. `get()` waits for the next matching event."""

    __slots__ = ("_on_overflow", "_queue", "matches", "overflowed")

    def __init__(
        self, matches: Callable[[Event], bool], maxsize: int, on_overflow: Callable[[], None] | None = None
    ) -> None:
        self.matches = matches
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.overflowed = False
        self._on_overflow = on_overflow

    def offer(self, event: Event) -> None:
        if self.overflowed or not self.matches(event):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            # The reader may be stuck writing to a client that stopped reading: cut it loose.
            if self._on_overflow is not None:
                self._on_overflow()

    async def get(self) -> Event:
        return await self._queue.get()

    def pending(self) -> int:
        return self._queue.qsize()


class Bus:
    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    def subscribe(
        self, matches: Callable[[Event], bool], maxsize: int, on_overflow: Callable[[], None] | None = None
    ) -> Subscription:
        subscription = Subscription(matches, maxsize, on_overflow)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def publish(self, events: Iterable[Event]) -> None:
        for event in events:
            for subscription in self._subscriptions:
                subscription.offer(event)

    def __len__(self) -> int:
        return len(self._subscriptions)
