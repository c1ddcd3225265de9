"""Scenario 5: replay, N stored events streamed to one client from the start (`since=0`).

The store is filled beforehand with realistic `message.received` events (the data the
configured pipeline produced for corpus messages, cycled). Then a raw-socket client asks
gatewayd for `/events?since=0&types=message.*` (the types filter keeps out the mailbox.connected
event of the watcher the stream starts) and counts `id:` lines until it has all N. Reported:
events/s from the request to the last event, and the time to the first event byte.

Floors, same run and same file: raw `sqlite3` reading the same rows (the data as bytes, as the
store reads it), and the replay loop in process without HTTP (`gatewayd.api.stream.replay_pages`:
store pages + SSE framing).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from typing import Any

from gatewayd.api.stream import replay_pages
from gatewayd.bench.gateway import GatewayProcess
from gatewayd.bench.gateway_config import TOKEN, gateway_config
from gatewayd.bench.harness import Bench, wait_until
from gatewayd.bench.sse_client import open_sse
from gatewayd.bench.stats import Result
from gatewayd.bench.throughput import configured_pipeline, fetched, load_corpus
from gatewayd.config import parse_config
from gatewayd.events import Event, NewEvent
from gatewayd.store import EventQuery
from gatewayd.store.sqlite import SqliteEventStore

NAME = "replay"
TITLE = "5. replay from the start to one client"
QUICK = {"events": 2000}
FULL = {"events": 100000}
TARGET_PER_S = 50000.0
FILL_BATCH = 1000
# Only the stored messages: the watcher this stream starts (on demand) adds a mailbox.connected.
PATH = "/events?since=0&types=message.*"


async def _templates(config: Any, result: Result) -> list[NewEvent]:
    """Events as the pipeline makes them, for 50 corpus messages."""
    messages, _, _ = load_corpus(50)
    pipeline, learning = configured_pipeline(config, result)
    mailbox = config.mailboxes()[0]
    try:
        events = [await pipeline.process(mailbox, fetched(uid, raw)) for uid, raw in enumerate(messages, 1)]
    finally:
        if learning is not None:
            learning.close()
    return [event for event in events if event is not None]


async def fill(store: SqliteEventStore, templates: list[NewEvent], count: int, mailbox_id: str) -> None:
    for first in range(0, count, FILL_BATCH):
        batch = []
        for n in range(first, min(count, first + FILL_BATCH)):
            template = templates[n % len(templates)]
            data = {**template.data, "uid": n + 1}
            key = f"{mailbox_id}\x1fINBOX\x1f1\x1f{n + 1}"  # the shape of pipeline.dedupe_key
            batch.append(
                NewEvent(template.type, template.agent_id, mailbox_id, data, key, template.from_address)
            )
        await store.append(batch)


async def run(bench: Bench, size: dict[str, float]) -> Result:
    count = int(size["events"])
    result = Result(NAME, TITLE, size=dict(size))
    workdir = bench.workdir("replay")
    (user,) = bench.users("rep", 1)
    db = workdir / "events.db"
    config = parse_config(gateway_config(bench, [user], db, 0), env={}, base_dir=workdir)
    templates = await _templates(config, result)

    store = SqliteEventStore(db)
    await store.open()
    try:
        started = time.monotonic()
        await fill(store, templates, count, user)
        fill_s = time.monotonic() - started
        # Floor 2: the replay loop in process, without HTTP.
        query = EventQuery(agent_ids=("bench",), type_patterns=("message.*",))
        sent = 0

        async def write(frames: bytes, _last: Event) -> bool:
            nonlocal sent
            sent += len(frames)
            return True

        started = time.monotonic()
        await replay_pages(store, query, 0, write)
        in_process = count / (time.monotonic() - started)
    finally:
        await store.close()
    # Floor 1: SQLite itself.
    started = time.monotonic()
    # closing(): a connection's own `with` only ends a transaction, it never closes.
    with contextlib.closing(sqlite3.connect(db)) as sqlite_conn:
        # The data as bytes, as the store reads it for a replay.
        rows = sqlite_conn.execute(
            "SELECT seq, type, created_at, agent_id, mailbox_id, CAST(data AS BLOB), from_address"
            " FROM events ORDER BY seq"
        )
        raw_rows = sum(1 for _ in rows)
    raw_sqlite = raw_rows / (time.monotonic() - started)
    result.note(
        f"store filled with {count} events ({sent / count:.0f} bytes per SSE frame) in {fill_s:.1f} s "
        f"({count / fill_s:,.0f} events/s appended)"
    )

    gateway = await GatewayProcess.start(bench, [user], watch="on_demand", store=db)
    try:
        async with bench.profile(NAME, gateway.pid):
            requested = time.monotonic()
            conn = await open_sse(gateway.host, gateway.port, PATH, TOKEN, count_only=True)
            await wait_until(lambda: conn.events >= count, 300, f"{count} replayed events")
            conn.close()
    finally:
        gateway.kill()
    assert conn.t_first_byte is not None and conn.t_first_event is not None and conn.t_last_event is not None
    rate = conn.events / (conn.t_last_event - requested)
    result.add("events replayed", conn.events)
    result.add(
        "replay rate (request -> last event)",
        rate,
        "events/s",
        floor=in_process,
        target=f">= {TARGET_PER_S:,.0f}/s",
        met=rate >= TARGET_PER_S,
    )
    result.add("time to first byte (headers)", (conn.t_first_byte - requested) * 1000, "ms")
    result.add("time to first event", (conn.t_first_event - requested) * 1000, "ms")
    result.add("MiB streamed", conn.bytes / 2**20, "MiB")
    result.add("floor: raw sqlite3 SELECT of the rows", raw_sqlite, "rows/s")
    result.add("floor: in-process read_after + framing", in_process, "events/s")
    return result
