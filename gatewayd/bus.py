"""In-process fan-out of stored events to live subscribers.

Each subscriber has a bounded queue: a slow one can neither grow memory nor stall the others.
When its queue is full it is marked overflowed and its stream closes; the client resumes by id
from the store, so nothing is lost.

Built for thousands of subscribers: `publish` only looks at the subscribers that can want the
event (indexed by mailbox, else by agent), and subscribers with the same query are tested once
per event, as a group. A subscriber has one waiter at a time (no task or timer per event), and
`wake()` lets its owner deliver anything else (an end, a shutdown, a keep-alive) through the
same wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable

from gatewayd.events import Event
from gatewayd.store import EventQuery, matches


class Subscription:
    """One live subscriber: `wait()` until something happens, then `take()` the queued events."""

    __slots__ = ("_events", "_maxsize", "_on_overflow", "_waiter", "matches", "overflowed", "sink")

    def __init__(
        self, matches: Callable[[Event], bool], maxsize: int, on_overflow: Callable[[], None] | None = None
    ) -> None:
        self.matches = matches
        # A list, not a deque: an idle subscriber costs 56 bytes here instead of a 0.6 KB block.
        self._events: list[Event] = []
        self._maxsize = maxsize  # <= 0: unbounded, as for asyncio.Queue
        self.overflowed = False
        self._on_overflow = on_overflow
        self._waiter: asyncio.Future[None] | None = None
        # Set by an idle reader that can take an event at once (write it to its client): returns
        # False when it cannot, and the event is queued instead. Never used while events wait in
        # the queue, so the order is kept.
        self.sink: Callable[[Event], bool] | None = None

    def offer(self, event: Event) -> None:
        if not self.overflowed and self.matches(event):
            self.put(event)

    def put(self, event: Event) -> None:
        """Queue an event already known to match."""
        if self.overflowed:
            return
        sink = self.sink
        if sink is not None and not self._events:
            try:
                if sink(event):
                    return
            except Exception:
                self.sink = None  # a broken sink must not stop the publisher; the reader takes over
        if 0 < self._maxsize <= len(self._events):
            self.overflowed = True
            # The reader may be stuck writing to a client that stopped reading: cut it loose.
            if self._on_overflow is not None:
                self._on_overflow()
        else:
            self._events.append(event)
        self.wake()

    def wake(self) -> None:
        """End the current `wait()`, if any (the owner then looks at whatever it waits for)."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _park(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None

    async def wait(self) -> None:
        """Return once an event is queued, the subscriber overflowed, or `wake()` was called."""
        if not self._events and not self.overflowed:
            await self._park()

    def take(self) -> list[Event]:
        """Every queued event, oldest first; the queue is then empty."""
        events = self._events
        if events:
            self._events = []
        return events

    async def get(self) -> Event:
        """The next event (waits for one)."""
        while not self._events:
            await self._park()
        return self._events.pop(0)

    def pending(self) -> int:
        return len(self._events)


class _Group:
    """Subscribers with equal queries: the query is tested once per event for all of them."""

    __slots__ = ("members", "query", "test")

    def __init__(self, query: EventQuery) -> None:
        self.query = query
        self.members: dict[Subscription, None] = {}  # insertion-ordered set
        self.test: Callable[[Event], bool] = lambda event: matches(query, event)


class Bus:
    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        # Subscribers by query, found through the query's mailboxes (when it names any) or else
        # its agents: an event can only match a query that lists its mailbox, or its agent.
        self._groups: dict[EventQuery, _Group] = {}
        self._group_of: dict[Subscription, _Group] = {}
        self._by_mailbox: dict[str, dict[_Group, None]] = {}
        self._by_agent: dict[str, dict[_Group, None]] = {}
        # Subscribers with an arbitrary predicate: tested for every event.
        self._others: dict[Subscription, None] = {}

    def subscribe(
        self, matches: Callable[[Event], bool], maxsize: int, on_overflow: Callable[[], None] | None = None
    ) -> Subscription:
        subscription = Subscription(matches, maxsize, on_overflow)
        self._subscriptions.add(subscription)
        self._others[subscription] = None
        return subscription

    def subscribe_query(
        self, query: EventQuery, maxsize: int, on_overflow: Callable[[], None] | None = None
    ) -> Subscription:
        """A subscriber to the events `gatewayd.store.matches(query, event)` accepts."""
        group = self._groups.get(query)
        if group is None:
            group = self._groups[query] = _Group(query)
            for index, key in self._index_keys(query):
                index.setdefault(key, {})[group] = None
        subscription = Subscription(group.test, maxsize, on_overflow)
        self._subscriptions.add(subscription)
        group.members[subscription] = None
        self._group_of[subscription] = group
        return subscription

    def _index_keys(self, query: EventQuery) -> list[tuple[dict[str, dict[_Group, None]], str]]:
        if query.mailbox_ids:
            return [(self._by_mailbox, key) for key in dict.fromkeys(query.mailbox_ids)]
        return [(self._by_agent, key) for key in dict.fromkeys(query.agent_ids)]

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        self._others.pop(subscription, None)
        group = self._group_of.pop(subscription, None)
        if group is None:
            return
        group.members.pop(subscription, None)
        if not group.members:
            del self._groups[group.query]
            for index, key in self._index_keys(group.query):
                groups = index.get(key)
                if groups is not None:
                    groups.pop(group, None)
                    if not groups:
                        del index[key]

    def publish(self, events: Iterable[Event]) -> None:
        for event in events:
            groups: Collection[_Group] | None = self._by_agent.get(event.agent_id)
            if event.mailbox_id is not None:
                by_mailbox = self._by_mailbox.get(event.mailbox_id)
                if by_mailbox:
                    groups = [*groups, *by_mailbox] if groups else by_mailbox
            if groups:
                # Copies: a callback (on_overflow) must never see a collection change under it.
                for group in tuple(groups):
                    if group.test(event):
                        for subscription in tuple(group.members):
                            subscription.put(event)
            if self._others:
                for subscription in tuple(self._others):
                    subscription.offer(event)

    def __len__(self) -> int:
        return len(self._subscriptions)
