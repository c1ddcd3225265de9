"""Scenario 3: fan-out, N concurrent SSE subscribers on one mailbox.

The subscribers are raw sockets in a swarm process of their own. For each delivered message,
"publish" is the event's `created_at` (stamped inside the store's append, just before the
commit and the bus publish; millisecond resolution, so the figure errs high by up to ~2 ms) and
the measured time is until the last subscriber has read the event. Memory per subscriber is the
gateway's VmRSS growth from the N connections.

Floor, same run and same swarm: a bare asyncio server that writes one prepared frame of the
same size to N sockets (no auth, queues, tasks or JSON), i.e. the least a Python SSE server
can do for N subscribers on this machine.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

from gatewayd.bench.gateway import GatewayProcess
from gatewayd.bench.gateway_config import TOKEN
from gatewayd.bench.harness import Bench, sleep_until
from gatewayd.bench.lmtp import LmtpClient, bench_mail
from gatewayd.bench.sse_floor import FloorSseServer
from gatewayd.bench.stats import Result, percentile, summary
from gatewayd.bench.swarm import Swarm

NAME = "fanout"
TITLE = "3. fan-out: publish -> last of N subscribers"
QUICK = {"subscribers": 20, "events": 3, "gap": 1.0}
FULL = {"subscribers": 5000, "events": 20, "gap": 1.2}
TARGET_P99_MS = 200.0
TARGET_KIB = 20.0


async def _wait_frames(swarm: Swarm, frames: int, timeout: float) -> int:
    """Ask the swarm every 100 ms until `frames` arrived or `timeout`; returns the count."""
    deadline = time.monotonic() + timeout
    while True:
        seen = int((await swarm.ask("count"))["frames"])
        if seen >= frames or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.1)


def _spread(events: dict[str, Any], published: dict[str, float]) -> tuple[list[float], list[float], int]:
    """Per event: ms from publish to the last subscriber; ms of every single delivery; min reach."""
    last: list[float] = []
    every: list[float] = []
    reach = min((len(e["times"]) for e in events.values()), default=0)
    for event_id, entry in events.items():
        start = published[event_id]
        times = entry["times"]
        last.append((max(times) - start) * 1000)
        every.extend((t - start) * 1000 for t in times)
    return last, every, reach


async def run(bench: Bench, size: dict[str, float]) -> Result:
    count, events, gap = int(size["subscribers"]), int(size["events"]), float(size["gap"])
    result = Result(NAME, TITLE, size=dict(size))
    (user,) = bench.users("fan", 1)
    dovecot = bench.dovecot
    path = f"/events?mailbox={user}&types=message.*"
    gateway = await GatewayProcess.start(bench, [user])
    swarms: list[Swarm] = []
    lmtp: LmtpClient | None = None
    try:
        await gateway.wait_watchers(1)
        lmtp = await LmtpClient.connect(dovecot.host, dovecot.lmtp_port)
        # Warm-up: one subscriber and one event, so one-off costs do not count per subscriber.
        warm = await Swarm.start(gateway.host, gateway.port, TOKEN, [path])
        swarms.append(warm)
        await lmtp.deliver(user, bench_mail("bench warm-up", size=2000))
        await _wait_frames(warm, 1, 15)
        rss_before = gateway.rss_kib()
        swarm = await Swarm.start(gateway.host, gateway.port, TOKEN, [path] * count)
        swarms.append(swarm)
        swarm.require_all_connected()
        await asyncio.sleep(0.5)  # let the last handlers reach their wait
        rss_connected = gateway.rss_kib()
        async with bench.profile(NAME, gateway.pid):
            start = time.monotonic()
            for k in range(events):
                await sleep_until(start + k * gap)
                await lmtp.deliver(user, bench_mail(f"bench {k}", size=2000))
            # Asking parses in the swarm: not before the last event had time to arrive.
            await asyncio.sleep(max(gap, 1.0) + 1.0)
        seen = await _wait_frames(swarm, count * events, 60)
        dump = await swarm.ask("dump", timeout=120)
        rss_after = gateway.rss_kib()
    finally:
        if lmtp is not None:
            await lmtp.close()
        for each in swarms:
            await each.close()
        gateway.kill()
    if seen < count * events:
        result.error = f"only {seen} of {count * events} deliveries arrived"
        return result

    # created_at is wall-clock time; the swarm's times are monotonic: convert once.
    offset = time.time() - time.monotonic()
    published = {
        event_id: datetime.fromisoformat(entry["meta"]["created_at"].replace("Z", "+00:00")).timestamp()
        - offset
        for event_id, entry in dump["events"].items()
    }
    last, every, reach = _spread(dump["events"], published)
    frame_bytes = int(max(entry["meta"].get("size", 0) for entry in dump["events"].values()))

    floor_last, floor_every = await _floor(count, events, frame_bytes)
    p99 = percentile(last, 99)
    result.add("subscribers", count)
    result.add("reached by every event", reach, "subscribers")
    result.add(
        f"publish -> last subscriber p50 ({events} events)",
        percentile(last, 50),
        "ms",
        floor=percentile(floor_last, 50),
    )
    result.add(
        f"publish -> last subscriber p99 ({events} events)",
        p99,
        "ms",
        floor=percentile(floor_last, 99),
        target=f"<= {TARGET_P99_MS:g} ms",
        met=p99 <= TARGET_P99_MS,
    )
    everyone, floor_everyone = summary(every), summary(floor_every)
    result.add("publish -> each subscriber p50", everyone["p50"], "ms", floor=floor_everyone["p50"])
    result.add("publish -> each subscriber p99", everyone["p99"], "ms", floor=floor_everyone["p99"])
    per_subscriber = (rss_connected - rss_before) / count
    result.add(
        "gateway memory per subscriber (connected)",
        per_subscriber,
        "KiB",
        target=f"<= {TARGET_KIB:g} KiB",
        met=per_subscriber <= TARGET_KIB,
    )
    result.add("gateway memory per subscriber (after events)", (rss_after - rss_before) / count, "KiB")
    result.add("swarm connect time", float(swarm.ready["connect_s"]), "s")
    result.samples = {"last_subscriber_ms": last, "floor_last_subscriber_ms": floor_last}
    result.note(
        f"event frame {frame_bytes} bytes; floor: a bare asyncio server writing that frame to {count} sockets"
    )
    return result


async def _floor(count: int, events: int, frame_bytes: int) -> tuple[list[float], list[float]]:
    server = FloorSseServer()
    await server.start()
    swarm = await Swarm.start("127.0.0.1", server.port, TOKEN, ["/"] * count)
    published: dict[str, float] = {}
    try:
        await asyncio.sleep(0.5)
        for k in range(events):
            event_id = f"floor{k}"
            envelope = {"id": event_id, "type": "message.received", "created_at": "", "data": {}}
            pad = max(0, frame_bytes - len(json.dumps(envelope)) - 20)
            envelope["data"] = {"subject": "floor", "pad": "x" * pad}
            payload = f"id: {event_id}\nevent: message.received\ndata: {json.dumps(envelope)}\n\n".encode()
            published[event_id] = time.monotonic()
            server.broadcast(payload)
            await asyncio.sleep(0.3)
        await asyncio.sleep(1.0)
        await _wait_frames(swarm, count * events, 60)
        dump = await swarm.ask("dump", timeout=120)
    finally:
        await swarm.close()
        await server.close()
    last, every, _ = _spread(dump["events"], published)
    return last, every
