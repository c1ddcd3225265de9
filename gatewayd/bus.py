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

    __slots__ = ("_queue", "matches", "overflowed")

    def __init__(self, matches: Callable[[Event], bool], maxsize: int) -> None:
        self.matches = matches
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.overflowed = False

    def offer(self, event: Event) -> None:
        if self.overflowed or not self.matches(event):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            # The reader is busy (its queue is full): it sees the flag at its next get().
            self.overflowed = True

    async def get(self) -> Event:
        return await self._queue.get()

    def pending(self) -> int:
        return self._queue.qsize()


class Bus:
    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    def subscribe(self, matches: Callable[[Event], bool], maxsize: int) -> Subscription:
        subscription = Subscription(matches, maxsize)
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
