"""Scenario 4's end-to-end part: the CPU the real daemon spends per message, all of its work counted.

The in-process measure leaves out what only the daemon does: the IMAP push and FETCH, the rules'
actions carried out (journal, IMAP commands), the SSE stream. Here `gatewayd run` watches one
mailbox, with its learning store trained as in process, and one SSE client follows it; the same
corpus is delivered over one LMTP connection as fast as Dovecot takes it, and the gateway's CPU
time (every thread, /proc/PID/stat) from before the first delivery to the last event gives its
messages per CPU-second. Twice: with the benchmark configuration's rules (gateway_config.RULES),
which act on part of the corpus (a keyword for list mail, a move for spam), and with no rules.
The in-process rate of the same run is the floor: the pipeline and the store alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gatewayd.bench.gateway import GatewayProcess
from gatewayd.bench.gateway_config import RULES, TOKEN, gateway_config
from gatewayd.bench.harness import Bench, wait_until
from gatewayd.bench.lmtp import LmtpClient
from gatewayd.bench.sse_client import open_sse
from gatewayd.bench.stats import Result
from gatewayd.config import parse_config
from gatewayd.message import ParsedMessage

# Seconds allowed per message for the events to come: a generous sanity bound, not a target.
SECONDS_PER_MESSAGE = 0.2


class _Events:
    """The message events a client received, and how many a rule acted on."""

    def __init__(self) -> None:
        self.count = 0
        self.acted = 0

    def on_event(self, index: int, event_id: str, event_type: str, data: bytes, at: float) -> None:
        self.count += 1
        applied = json.loads(data).get("data", {}).get("rules_applied") or []
        if any(action.get("action") != "tag" for rule in applied for action in rule.get("actions", [])):
            self.acted += 1

    def on_closing(self, index: int, at: float) -> None:
        pass


async def run(
    bench: Bench,
    result: Result,
    messages: list[bytes],
    training: list[tuple[ParsedMessage, str]],
    floor: float,
) -> None:
    """Both rule sets' rows, against `floor`, the in-process rate (one commit per message)."""
    for label, rules in (("the benchmark rules acting", RULES), ("no rules", [])):
        found = await measure(bench, messages, training, rules)
        result.add(
            f"end to end, {label}: messages per gatewayd CPU-second",
            len(messages) / found["cpu"] if found["cpu"] else None,  # below the clock tick: unmeasured
            "msg/s",
            floor=floor,
        )
        result.note(
            f"end to end, {label}: {found['events']:.0f} events, {found['acted']:.0f} acted on by a rule;"
            f" delivered in {found['delivered']:.1f} s, the last event after {found['wall']:.1f} s"
        )


def train(bench: Bench, user: str, store: Path, training: list[tuple[ParsedMessage, str]]) -> None:
    """Train the learning store the gateway will open (beside `store`), as in process."""
    from gatewayd.pipeline.build import open_learning

    config = parse_config(gateway_config(bench, [user], store, 0), env={}, base_dir=store.parent)
    learning = open_learning(config)
    try:
        for message, label in training:
            learning.train(message, label)
    finally:
        learning.close()


async def measure(
    bench: Bench,
    messages: list[bytes],
    training: list[tuple[ParsedMessage, str]],
    rules: list[dict[str, Any]],
) -> dict[str, float]:
    """One daemon, one mailbox: `messages` delivered over LMTP; its CPU seconds and the events."""
    workdir = bench.workdir("end-to-end")
    (user,) = bench.users("e2e", 1)
    store = workdir / "events.db"
    if training:
        train(bench, user, store, training)
    gateway = await GatewayProcess.start(bench, [user], store=store, rules=rules)
    lmtp: LmtpClient | None = None
    try:
        await gateway.wait_watchers(1)
        events = _Events()
        path = f"/events?mailbox={user}&types=message.*"
        client = await open_sse(gateway.host, gateway.port, path, TOKEN, sink=events)
        try:
            lmtp = await LmtpClient.connect(bench.dovecot.host, bench.dovecot.lmtp_port)
            cpu, wall = gateway.cpu_seconds(), time.monotonic()
            for raw in messages:
                await lmtp.deliver(user, raw)
            delivered = time.monotonic() - wall
            await wait_until(
                lambda: events.count >= len(messages), SECONDS_PER_MESSAGE * len(messages) + 30, "events"
            )
            cpu = gateway.cpu_seconds() - cpu
            wall = time.monotonic() - wall
        finally:
            client.close()
        await gateway.terminate()
    finally:
        if lmtp is not None:
            await lmtp.close()
        gateway.kill()
    return {"cpu": cpu, "wall": wall, "delivered": delivered, "events": events.count, "acted": events.acted}
