"""Scenario 2: many mailboxes watched at once, one SSE subscriber each.

The mailboxes are `on_demand`, so a gateway that has started but watches nothing gives the
memory baseline; then one subscriber per mailbox (from a swarm process) makes gatewayd log in,
SELECT and IDLE on each. Reported: VmRSS growth per watched mailbox (its IMAP connection,
watcher and subscriber), the time from the first subscriber to every watcher idle (floor: bare
clients doing LOGIN, SELECT, IDLE on as many new mailboxes at once), and scenario 1's latency
at that load: messages go round-robin to a sample of the mailboxes, each message also to a twin
mailbox in the same LMTP transaction, watched by a bare IMAP IDLE client (the floor). Last,
SIGTERM → exit with everything up.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gatewayd.bench.gateway import GatewayProcess
from gatewayd.bench.gateway_config import TOKEN
from gatewayd.bench.harness import Bench
from gatewayd.bench.imap_floor import ImapIdleClient
from gatewayd.bench.latency import Arrival, latency_result, spread_phase
from gatewayd.bench.lmtp import LmtpClient
from gatewayd.bench.machine import ensure_inotify
from gatewayd.bench.stats import Result
from gatewayd.bench.swarm import Swarm
from gatewayd.sandbox.dovecot import PASSWORD

NAME = "mailboxes"
TITLE = "2. many mailboxes: memory, bring-up, latency under load"
QUICK = {"mailboxes": 6, "probes": 3, "messages": 15, "rate": 20.0}
# 40 probes at 20 msg/s: each sampled mailbox gets a message every 2 s. Closer than about 1 s,
# a bare IDLE session is notified at once when its own sync of the previous message re-armed
# Dovecot's debounce timer: a lucky floor that no fetching client can have.
FULL = {"mailboxes": 1000, "probes": 40, "messages": 200, "rate": 20.0}
TARGET_KIB = 100


async def run(bench: Bench, size: dict[str, float]) -> Result:
    count, probes = int(size["mailboxes"]), int(size["probes"])
    messages, rate = int(size["messages"]), float(size["rate"])
    result = Result(NAME, TITLE, size=dict(size))
    # One inotify instance per idling Dovecot session: gatewayd's and the floors.
    result.note(ensure_inotify(count + probes))
    users = bench.users("mbx", count)
    dovecot = bench.dovecot
    gateway = await GatewayProcess.start(bench, users, watch="on_demand")
    swarms: list[Swarm] = []
    lmtp: LmtpClient | None = None
    try:
        # Warm-up: one mailbox up first, so one-off costs do not count per mailbox.
        # Subscribers close on the `closing` event, so the stop time is gatewayd's own work.
        swarms.append(await Swarm.start(gateway.host, gateway.port, TOKEN, [_path(users[0])], True))
        await gateway.wait_watchers(1)
        rss_before = gateway.rss_kib()
        async with bench.profile(f"{NAME}-bring-up", gateway.pid):
            started = time.monotonic()
            paths = [_path(u) for u in users[1:]]
            swarms.append(await Swarm.start(gateway.host, gateway.port, TOKEN, paths, close_on_closing=True))
            swarms[-1].require_all_connected()
            subscribed = time.monotonic() - started
            up = await gateway.wait_watchers(count, timeout=300) - started
        rss_after = gateway.rss_kib()
        per_mailbox = (rss_after - rss_before) / max(1, count - 1)

        # Scenario 1 at this load, on a sample of the mailboxes (each with a floor-watched twin).
        lmtp = await LmtpClient.connect(dovecot.host, dovecot.lmtp_port)

        async def arrivals() -> dict[int, Arrival]:
            return _arrivals([await swarm.ask("dump") for swarm in swarms])

        phase = await spread_phase(
            bench, lmtp, users[:probes], 0, messages, rate, arrivals, (f"{NAME}-latency", gateway.pid)
        )
        rss_loaded = gateway.rss_kib()
        stop_s = await gateway.terminate()
    finally:
        if lmtp is not None:
            await lmtp.close()
        for swarm in swarms:
            await swarm.close()
        gateway.kill()
    floor_up = await _bring_up_floor(bench, count)

    result.add(
        "gateway memory per watched mailbox",
        per_mailbox,
        "KiB",
        target=f"<= {TARGET_KIB} KiB",
        met=per_mailbox <= TARGET_KIB,
    )
    result.add("gateway VmRSS with all watched", rss_after / 1024, "MiB", floor=rss_before / 1024)
    result.add(f"time to bring {count} mailboxes up", up, "s", floor=floor_up)
    result.add(f"  of which {count - 1} SSE subscribers connected", subscribed, "s")
    if not latency_result(result, f"delivery->SSE at {count} mailboxes", phase):
        return result
    result.add("gateway VmRSS after the messages", rss_loaded / 1024, "MiB")
    result.add(f"SIGTERM -> exit with {count} mailboxes up", stop_s, "s")
    warnings = bench.dovecot_warnings("inotify")
    if warnings:
        result.note(f"Dovecot fell back to polling: {warnings[-1]}")
    return result


def _arrivals(dumps: list[dict[str, Any]]) -> dict[int, Arrival]:
    """The `bench <n>` message events in swarm dumps, by n."""
    arrivals: dict[int, Arrival] = {}
    for dump in dumps:
        for entry in dump["events"].values():
            meta = entry["meta"]
            subject = meta.get("subject") or ""
            if meta["type"].startswith("message.") and subject.startswith("bench "):
                arrival = Arrival.of(entry["times"][0], meta.get("created_at"), meta.get("pipeline_ms", 0.0))
                arrivals[int(subject.split()[1])] = arrival
    return arrivals


def _path(user: str) -> str:
    return f"/events?mailbox={user}&types=message.*"


async def _bring_up_floor(bench: Bench, count: int) -> float:
    """Seconds for bare clients to LOGIN, SELECT and IDLE on as many new mailboxes at once."""
    dovecot = bench.dovecot
    users = bench.users("mbf", count)  # new ones, as the gateway's were
    await asyncio.sleep(1)  # the gateway's sessions are gone
    started = time.monotonic()
    clients = await asyncio.gather(
        *(
            ImapIdleClient.connect(dovecot.host, dovecot.imap_port, user, PASSWORD, timeout=120)
            for user in users
        ),
        return_exceptions=True,
    )
    elapsed = time.monotonic() - started
    for client in clients:
        if isinstance(client, ImapIdleClient):
            await client.close()
    failed = [c for c in clients if not isinstance(c, ImapIdleClient)]
    if failed:
        raise RuntimeError(f"{len(failed)} bare IMAP clients failed to connect: {failed[0]!r}")
    return elapsed
