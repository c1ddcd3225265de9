"""The inline pipeline between FETCH and publish: every message becomes one event here.

Stages run in the configured order on the parsed message; each reports findings (a named
symbol, a score, a detail) and the event data it provides. No event is ever published before
the pipeline has run, so the first event an agent sees already carries every verdict.

A stage that raises or overruns its time budget never loses the message: its keys in the event
data are null, `pipeline_errors` names it, and its `on_error` decides the rest:
`continue` (the default), `suspect` (the spam verdict becomes at least `suspect`), or
`skip_rest` (no later stage runs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gatewayd.config import MailboxConfig
from gatewayd.events import MESSAGE_RECEIVED, NewEvent
from gatewayd.message import FetchedMessage, ParsedMessage, from_address, parse

ON_ERROR_CONTINUE = "continue"
ON_ERROR_SUSPECT = "suspect"
ON_ERROR_SKIP_REST = "skip_rest"
ON_ERROR_CHOICES = (ON_ERROR_CONTINUE, ON_ERROR_SUSPECT, ON_ERROR_SKIP_REST)


@dataclass(frozen=True, slots=True)
class Finding:
    """One reason, rspamd-style: `SPF_FAIL`, `R_SUSPICIOUS_URL`, with its weight and why."""

    symbol: str
    score: float
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "score": round(self.score, 3), "detail": self.detail}


@dataclass(frozen=True, slots=True)
class StageResult:
    """`data` is merged into the event data (keys from the stage's `provides`)."""

    data: Mapping[str, Any] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()
    # A stage may rename the event (the auth stage: `message.received.unauthenticated`).
    event_type: str | None = None


@dataclass(frozen=True, slots=True)
class StageContext:
    mailbox: MailboxConfig | None
    # Results of the stages that ran before, by stage name.
    earlier: Mapping[str, StageResult]


class Stage(Protocol):
    """A pipeline stage. Guarantees a stage keeps:

    - `check` never mutates the message; it returns its findings and the event data it provides.
    - `provides` lists every top-level event data key `check` may set (they become null when the
      stage fails, so the event shape does not depend on failures).
    - CPU-bound work should run off the event loop (e.g. `asyncio.to_thread`), so the pipeline
      can enforce the stage's time budget and the watchers keep running.
    """

    name: str
    provides: tuple[str, ...]

    async def check(self, message: ParsedMessage, context: StageContext) -> StageResult: ...


@dataclass(frozen=True, slots=True)
class StageSpec:
    stage: Stage
    timeout_seconds: float = 1.0
    on_error: str = ON_ERROR_CONTINUE


def dedupe_key(mailbox_id: str, message: FetchedMessage) -> str:
    """Exactly once per (mailbox, folder, UIDVALIDITY, UID)."""
    return f"{mailbox_id}\x1f{message.folder}\x1f{message.uidvalidity}\x1f{message.uid}"


@dataclass(frozen=True, slots=True)
class Outcome:
    type: str
    data: dict[str, Any]
    results: Mapping[str, StageResult]


class Pipeline:
    def __init__(self, stages: Sequence[StageSpec] = ()) -> None:
        self.stages = tuple(stages)

    async def run(self, parsed: ParsedMessage, mailbox: MailboxConfig | None = None) -> Outcome:
        """Run every stage on a parsed message; used live and by `gatewayd check-message`."""
        data = dict(parsed.data)
        results: dict[str, StageResult] = {}
        timings: dict[str, float] = {}
        errors: list[dict[str, str]] = []
        event_type = MESSAGE_RECEIVED
        force_suspect = False
        for spec in self.stages:
            stage = spec.stage
            started = time.perf_counter()
            try:
                context = StageContext(mailbox, results)
                result = await asyncio.wait_for(stage.check(parsed, context), spec.timeout_seconds)
            except Exception as exc:  # a stage's failure must never lose the message
                timings[stage.name] = _ms(started)
                error = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                detail = f"over {spec.timeout_seconds * 1000:g} ms" if error == "timeout" else str(exc)[:200]
                errors.append(
                    {"stage": stage.name, "error": error, "detail": detail, "on_error": spec.on_error}
                )
                data.update(dict.fromkeys(stage.provides))
                if spec.on_error == ON_ERROR_SUSPECT:
                    force_suspect = True
                elif spec.on_error == ON_ERROR_SKIP_REST:
                    break
                continue
            timings[stage.name] = _ms(started)
            results[stage.name] = result
            data.update(result.data)
            if result.event_type:
                event_type = result.event_type
        if force_suspect:
            _raise_to_suspect(data)
        data["pipeline_ms"] = timings
        data["pipeline_errors"] = errors
        return Outcome(event_type, data, results)

    async def process(self, mailbox: MailboxConfig, message: FetchedMessage) -> NewEvent | None:
        parsed = parse(message)
        outcome = await self.run(parsed, mailbox)
        return NewEvent(
            type=outcome.type,
            agent_id=mailbox.agent_id,
            mailbox_id=mailbox.id,
            data=outcome.data,
            dedupe_key=dedupe_key(mailbox.id, message),
            from_address=from_address(outcome.data),
        )


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _raise_to_suspect(data: dict[str, Any]) -> None:
    spam = data.get("spam")
    if not isinstance(spam, dict):
        data["spam"] = {"verdict": "suspect", "score": None, "findings": [], "reason": "stage failed"}
    elif spam.get("verdict") == "ham":
        data["spam"] = {**spam, "verdict": "suspect"}
