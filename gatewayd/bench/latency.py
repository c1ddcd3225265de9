"""Scenario 1: delivery → event latency, against a bare IMAP IDLE client on the same server.

Messages go over LMTP at a steady 20 msg/s in two phases, each with gatewayd (full default
pipeline, store, bus, HTTP) against a floor: a raw-socket IMAP session in IDLE on a *twin*
mailbox of the same server that gets the same message just before (twins, because a session's
sync writes Dovecot's index, which starts the debounce timer of other sessions on the mailbox).

- spread: round-robin over 40 mailboxes, one message per mailbox every 2 s: what an agent's
  mailbox sees; Dovecot tells each idling session 500 ms after the change (NOTIFY_DELAY_MSECS
  in mailbox-watch.c, no setting), and that constant is the floor.
- one busy mailbox: all messages to one mailbox, at random moments (a Poisson process of the
  same mean rate, seeded: the same schedule in every run). Dovecot's debounce starts at the
  first change and later ones ride along, so the floor spreads over 0-500 ms; a client that
  leaves IDLE to fetch restarts that timer from the next change. A second, diagnostic floor
  does exactly that (DONE, UID FETCH, IDLE) on its own twin: what any fetching watcher pays.
  Random, not evenly spaced: 20 msg/s every 50 ms puts exactly ten messages in each 500 ms
  window, and whether the eleventh makes it depends on a few milliseconds of phase, which
  swung this phase's p50 by several ms between runs and hid what leaving IDLE costs.
  Under steady mail a session's windows chain: the index write of its own sync after each
  notification starts its next window, so its windows follow each other every 500 ms plus that
  sync, whatever the arrivals. A session whose sync takes longer (gatewayd's: Dovecot sends the
  new messages with the push, on a busy CPU) drifts from the floor's rhythm by a few ms a window;
  the phase reports both rhythms and the drift, which moves this p50 difference from run to run.

For each message the clock starts when the server's 250 to its delivery arrives (one LMTP
transaction per mailbox), and stops when the SSE client reads its event, or when the floor
reads `* N EXISTS` with N covering it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from gatewayd.bench.gateway import GatewayProcess
from gatewayd.bench.gateway_config import TOKEN
from gatewayd.bench.harness import Bench, sleep_until, wait_until
from gatewayd.bench.imap_floor import ImapFetchingClient, ImapIdleClient, ImapPushClient
from gatewayd.bench.lmtp import LmtpClient, bench_mail
from gatewayd.bench.machine import ensure_inotify
from gatewayd.bench.sse_client import SseConnection, open_sse
from gatewayd.bench.stats import Result, latency_rows, percentile, summary
from gatewayd.sandbox.dovecot import PASSWORD

NAME = "latency"
TITLE = "1. delivery -> SSE event latency"
QUICK = {"messages": 20, "busy_messages": 20, "acting_messages": 8, "rate": 20.0, "mailboxes": 4, "warmup": 2}
# The busy phase is four times the spread one: over 500 arrivals gatewayd's p50 averaged some
# 6 ms lower than over 2,000 (docs/benchmarks-history.md, twenty-second pass), the luck of a short
# schedule that a mailbox busy for minutes does not have.
FULL = {
    "messages": 500,
    "busy_messages": 2000,
    "acting_messages": 200,
    "rate": 20.0,
    "mailboxes": 40,
    "warmup": 3,
}
BUSY = 100_000  # subject numbers of the busy-mailbox phase start here
# The acting phase's mail (subjects from ACTING on) is a mailing list's: the benchmark rules'
# `newsletters` adds a keyword to each, so its event waits for the journal and an IMAP STORE.
ACTING = 200_000
LIST_ID = "List-Id: Bench announcements <announce.bench.example>\r\n"
BUSY_SEED = 2026  # the busy phase's random arrival times: the same in every run


@dataclass(frozen=True)
class Arrival:
    """One message event as a subscriber saw it."""

    at: float  # monotonic time its last byte was read
    stored: float  # its created_at (stamped in the store's append), as a monotonic time
    stages_ms: float  # the sum of its pipeline_ms
    acted: bool = False  # a rule acted on it

    @classmethod
    def of(cls, at: float, created_at: str | None, pipeline_ms: float, acted: bool = False) -> Arrival:
        stored = math.nan
        if created_at:
            wall = datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()
            stored = wall - (time.time() - time.monotonic())
        return cls(at, stored, pipeline_ms, acted)


def stages_ms(data: dict[str, Any]) -> float:
    timings = data.get("pipeline_ms") or {}
    return float(sum(timings.values())) if isinstance(timings, dict) else 0.0


class SubjectSink:
    """Each message event, by the `n` of its `bench <n>` subject."""

    def __init__(self) -> None:
        self.arrived: dict[int, Arrival] = {}

    def on_event(self, index: int, event_id: str, event_type: str, data: bytes, at: float) -> None:
        if not event_type.startswith("message."):
            return
        envelope = json.loads(data)
        subject = envelope["data"].get("subject") or ""
        if subject.startswith("bench ") and int(subject.split()[1]) not in self.arrived:
            fields = envelope["data"]
            acted = bool(fields.get("rules_applied"))
            arrival = Arrival.of(at, envelope.get("created_at"), stages_ms(fields), acted)
            self.arrived[int(subject.split()[1])] = arrival

    def on_closing(self, index: int, at: float) -> None:
        pass


async def deliver_paced(
    lmtp: LmtpClient,
    recipients: list[list[str]],
    first: int,
    count: int,
    rate: float,
    seed: int | None = None,
    headers: str = "",
) -> tuple[dict[int, list[float]], float]:
    """Deliver `bench <n>` for n in first..first+count-1 on a schedule, cycling through the
    recipient groups: to each mailbox of the group in turn, one LMTP transaction each (Dovecot
    answers a multi-recipient DATA only once all are delivered: that would hide each one's end).

    The schedule is `rate` messages a second: evenly spaced, or with a `seed` the arrivals of a
    Poisson process of that rate (exponential gaps), the same for the same seed. `headers`: more
    header lines for every message.
    Returns each message's delivery-end times (in group order) and the worst lateness.
    """
    ends: dict[int, list[float]] = {}
    late = 0.0
    start = time.monotonic() + 0.05
    gaps = random.Random(seed) if seed is not None else None
    due = start
    for i in range(count):
        n = first + i
        if i:
            due = start + i / rate if gaps is None else due + gaps.expovariate(rate)
        await sleep_until(due)
        late = max(late, time.monotonic() - due)
        message = bench_mail(f"bench {n}", size=2000, headers=headers)
        ends[n] = [await lmtp.deliver(mailbox, message) for mailbox in recipients[i % len(recipients)]]
    return ends, late


@dataclass
class Phase:
    """What one measured phase collected, for `latency_result`."""

    ends: dict[int, float]  # delivery end to gatewayd's mailbox
    floor_ends: dict[int, float]  # delivery end to the floor's twin
    floor_seen: dict[int, float | None]  # when the floor saw it
    arrived: dict[int, Arrival]
    late: float


async def spread_phase(
    bench: Bench,
    lmtp: LmtpClient,
    users: list[str],
    first: int,
    messages: int,
    rate: float,
    arrivals: Callable[[], Awaitable[dict[int, Arrival]]],
    profile: tuple[str, int],
    headers: str = "",
) -> Phase:
    """Round-robin over gatewayd's `users`, each message to a floor-watched twin first."""
    dovecot = bench.dovecot
    twins = bench.users("twin", len(users))
    floors = [await ImapIdleClient.connect(dovecot.host, dovecot.imap_port, twin, PASSWORD) for twin in twins]
    try:
        bases = [floor.count for floor in floors]
        groups = [[twin, user] for twin, user in zip(twins, users, strict=True)]
        async with bench.profile(*profile):
            group_ends, late = await deliver_paced(lmtp, groups, first, messages, rate, headers=headers)
            for j, (floor, base) in enumerate(zip(floors, bases, strict=True)):
                await floor.wait_count(base + len(range(j, messages, len(users))), 60)
            deadline = time.monotonic() + 60
            while True:  # missing ones are reported by latency_result
                arrived = await arrivals()
                if len(arrived) >= messages or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
    finally:
        for floor in floors:
            await floor.close()
    k = len(users)
    seen = {
        n: floors[(n - first) % k].seen_at(bases[(n - first) % k] + (n - first) // k + 1) for n in group_ends
    }
    return Phase(
        ends={n: times[1] for n, times in group_ends.items()},
        floor_ends={n: times[0] for n, times in group_ends.items()},
        floor_seen=seen,
        arrived=arrived,
        late=late,
    )


def latency_result(result: Result, label: str, phase: Phase, key: str = "", targets: bool = True) -> bool:
    """Latency rows against the floor (with the issue's targets unless not `targets`), and where
    gatewayd's share goes; False if mail went missing."""
    gateway_ms, floor_ms, to_store, to_client, stages = [], [], [], [], []
    missing = 0
    for n, end in sorted(phase.ends.items()):
        seen, arrival = phase.floor_seen.get(n), phase.arrived.get(n)
        if seen is None or arrival is None:
            missing += 1
            continue
        gateway_ms.append((arrival.at - end) * 1000)
        floor_ms.append((seen - phase.floor_ends[n]) * 1000)
        to_store.append((arrival.stored - seen) * 1000)
        to_client.append((arrival.at - arrival.stored) * 1000)
        stages.append(arrival.stages_ms)
    if missing:
        result.error = f"{label}: {missing} of {len(phase.ends)} messages never arrived"
        return False
    result.samples[f"{key}gateway_ms"] = gateway_ms
    result.samples[f"{key}floor_ms"] = floor_ms
    result.plot_titles[key] = label
    latency_rows(result, label, gateway_ms, floor_ms, targets=targets)
    # created_at splits gatewayd's share: before it, DONE + SEARCH + FETCH + pipeline (and, for
    # mail that rode along in a batch, the messages before it); after it, commit, bus, HTTP.
    result.add("  floor EXISTS -> event stored (created_at) p50", percentile(to_store, 50), "ms")
    result.add("  event stored -> read by the SSE client p50", percentile(to_client, 50), "ms")
    result.add("  of which pipeline stages (pipeline_ms) p50", percentile(stages, 50), "ms")
    if phase.late > 0.025:  # half a send interval at 20 msg/s
        result.note(f"{label}: the sender fell up to {phase.late * 1000:.0f} ms behind its schedule")
    return True


async def busy_phase(
    bench: Bench,
    lmtp: LmtpClient,
    user: str,
    messages: int,
    rate: float,
    sink: SubjectSink,
    result: Result,
    gateway: GatewayProcess,
) -> Phase | None:
    """Every message to one mailbox; the floor and the diagnostic floors each on a twin of it."""
    dovecot = bench.dovecot
    floor_user, fetch_user, push_user = bench.users("busy", 3)
    floor = await ImapIdleClient.connect(dovecot.host, dovecot.imap_port, floor_user, PASSWORD)
    fetching = await ImapFetchingClient.connect(dovecot.host, dovecot.imap_port, fetch_user, PASSWORD)
    pushed = await ImapPushClient.connect(dovecot.host, dovecot.imap_port, push_user, PASSWORD)
    try:
        # gatewayd's mailbox third, as before the push floor was added: the same offsets to the floor.
        group = [floor_user, fetch_user, user, push_user]
        async with bench.profile(f"{NAME}-busy", gateway.pid):
            group_ends, late = await deliver_paced(lmtp, [group], BUSY, messages, rate, seed=BUSY_SEED)
            await floor.wait_count(messages, 30)
            await pushed.wait_count(messages, 30)
            await wait_until(lambda: len(fetching.fetched) >= messages, 30, "the fetching client")
            await wait_until(lambda: sum(n >= BUSY for n in sink.arrived) >= messages, 30, "the SSE events")
    finally:
        await floor.close()
        await fetching.close()
        await pushed.close()
    ordered = [group_ends[n] for n in sorted(group_ends)]
    fetch_ms = [
        (at - times[1]) * 1000 for at, times in zip(fetching.fetched[:messages], ordered, strict=True)
    ]
    push_seen = [pushed.seen_at(k + 1) for k in range(len(ordered))]
    phase = Phase(
        ends={n: times[2] for n, times in group_ends.items()},
        floor_ends={n: times[0] for n, times in group_ends.items()},
        floor_seen={n: floor.seen_at(i + 1) for i, n in enumerate(sorted(group_ends))},
        arrived={n: a for n, a in sink.arrived.items() if n >= BUSY},
        late=late,
    )
    if not latency_result(result, "one busy mailbox", phase, "busy."):
        return None
    fetch = summary(fetch_ms)
    floor_ms = result.samples["busy.floor_ms"]
    result.add("  bare client that fetches on EXISTS p50", fetch["p50"], "ms", floor=percentile(floor_ms, 50))
    result.add("  bare client that fetches on EXISTS p99", fetch["p99"], "ms", floor=percentile(floor_ms, 99))
    if None in push_seen:
        seen = push_seen.index(None)
        result.note(f"one busy mailbox: the push floor saw {seen} of {len(ordered)} messages")
    else:
        push = summary([(at - times[3]) * 1000 for at, times in zip(push_seen, ordered, strict=True) if at])
        for key in ("p50", "p99"):
            result.add(
                f"  bare client that gets each message with its push {key}",
                push[key],
                "ms",
                floor=percentile(floor_ms, int(key[1:])),
            )
    # gatewayd's windows are its bursts of events (a window's events come within a few ms).
    floor_windows = window_starts([at for at in phase.floor_seen.values() if at is not None])
    gateway_windows = window_starts([arrival.at for arrival in phase.arrived.values()])
    floor_period, gateway_period = median_gap(floor_windows), median_gap(gateway_windows)
    result.add("  floor's windows: one every (median)", floor_period, "ms")
    result.add("  gatewayd's windows: one every (median)", gateway_period, "ms")
    drift = (gateway_period - floor_period) * (len(gateway_windows) - 1)
    result.add("  gatewayd's windows drifted from the floor's over the phase by", drift, "ms")
    # gatewayd's own share, whatever the luck of Dovecot's windows: from each push reaching the
    # watcher to its events published, as /healthz reports it (the last 200 messages).
    async with aiohttp.ClientSession() as session:
        health = await gateway.health(session) or {}
    watchers = health.get("watchers", [])
    own = next((w.get("push_to_event_ms") for w in watchers if w.get("mailbox_id") == user), None)
    if own:
        for key in ("p50", "p99"):
            result.add(f"  gatewayd push -> event published {key} (last {own['count']})", own[key], "ms")
    else:
        result.note("one busy mailbox: /healthz reported no push_to_event_ms for it")
    return phase


async def acting_phase(
    bench: Bench,
    lmtp: LmtpClient,
    users: list[str],
    messages: int,
    rate: float,
    sink: SubjectSink,
    result: Result,
    pid: int,
) -> None:
    """The spread phase again with mail a rule acts on (a keyword): what the rules journal's synced
    commits and the IMAP STORE add before the event. A diagnostic beside the issue's scenario, whose
    generated mail no rule acts on: no target."""

    async def arrivals() -> dict[int, Arrival]:
        return {n: a for n, a in sink.arrived.items() if n >= ACTING}

    profile = (f"{NAME}-acting", pid)
    phase = await spread_phase(bench, lmtp, users, ACTING, messages, rate, arrivals, profile, LIST_ID)
    label = f"{len(users)} mailboxes, 1 msg/{len(users) / rate:g} s each, a rule acting"
    if latency_result(result, label, phase, "acting.", targets=False):
        acted = sum(arrival.acted for arrival in phase.arrived.values())
        result.add("  of which a rule acted on", acted, "messages")


def window_starts(moments: list[float], quiet: float = 0.1) -> list[float]:
    """The first of each burst of moments (seconds; a burst ends after `quiet` seconds of none)."""
    ordered = sorted(moments)
    return ordered[:1] + [later for earlier, later in itertools.pairwise(ordered) if later - earlier > quiet]


def median_gap(moments: list[float]) -> float:
    """The median time between consecutive moments, in ms."""
    return percentile([(b - a) * 1000 for a, b in itertools.pairwise(moments)], 50)


async def run(bench: Bench, size: dict[str, float]) -> Result:
    messages, rate, warmup = int(size["messages"]), float(size["rate"]), int(size["warmup"])
    busy_messages, acting_messages = int(size["busy_messages"]), int(size["acting_messages"])
    result = Result(NAME, TITLE, size=dict(size))
    users = bench.users("lat", int(size["mailboxes"]) + 1)
    # One inotify instance per idling Dovecot session: gatewayd's, the floors and their twins.
    result.note(ensure_inotify(2 * len(users) + 2))
    spread, busy = users[:-1], users[-1]
    dovecot = bench.dovecot
    gateway = await GatewayProcess.start(bench, users)
    sse: SseConnection | None = None
    lmtp: LmtpClient | None = None
    try:
        await gateway.wait_watchers(len(users))
        sink = SubjectSink()
        sse = await open_sse(gateway.host, gateway.port, "/events?types=message.*", TOKEN, sink=sink)
        lmtp = await LmtpClient.connect(dovecot.host, dovecot.lmtp_port)
        # Warm-up: first-use costs (imports, caches, SQLite pages) are not what is measured.
        for n in range(warmup):
            await lmtp.deliver(spread[n % len(spread)], bench_mail(f"bench {n}"))
            await wait_until(functools.partial(sink.arrived.__contains__, n), 10, f"warm-up event {n}")

        async def arrivals() -> dict[int, Arrival]:
            return {n: a for n, a in sink.arrived.items() if warmup <= n < BUSY}

        phase = await spread_phase(bench, lmtp, spread, warmup, messages, rate, arrivals, (NAME, gateway.pid))
        label = f"{len(spread)} mailboxes, 1 msg/{len(spread) / rate:g} s each"
        if latency_result(result, label, phase):
            busy_result = await busy_phase(bench, lmtp, busy, busy_messages, rate, sink, result, gateway)
            if busy_result is not None and acting_messages:
                await acting_phase(bench, lmtp, spread, acting_messages, rate, sink, result, gateway.pid)
    finally:
        if lmtp is not None:
            await lmtp.close()
        if sse is not None:
            sse.close()
        gateway.kill()
    if result.error:
        return result
    full = not bench.quick
    count = len(result.samples["gateway_ms"]) + len(result.samples.get("busy.gateway_ms", []))
    result.add(
        "messages", count, target=">= 500 (full run)" if full else "", met=count >= 500 if full else None
    )
    result.add("delivery rate", rate, "msg/s")
    result.note(
        "floor: a raw-socket IMAP IDLE session on a twin mailbox of the same server; Dovecot with "
        "inotify and its default mailbox_idle_check_interval (30 s), no imap_hibernate"
    )
    result.note(f"one busy mailbox: arrivals at random (Poisson, mean {rate:g} msg/s, seed {BUSY_SEED})")
    return result
