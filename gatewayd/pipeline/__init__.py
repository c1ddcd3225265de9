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
from typing import TYPE_CHECKING, Any, Protocol

from gatewayd.config import MailboxConfig
from gatewayd.events import MESSAGE_RECEIVED, NewEvent
from gatewayd.message import FetchedMessage, ParsedMessage, from_address, parse

if TYPE_CHECKING:
    from gatewayd.imap.act import MailActions

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
    # A stage may drop the event (the rules' `drop_event`): the message is processed, nothing is published.
    drop: bool = False


@dataclass(frozen=True, slots=True)
class StageContext:
    mailbox: MailboxConfig | None
    # Results of the stages that ran before, by stage name.
    earlier: Mapping[str, StageResult]
    # The event data and type so far (with earlier stages' verdicts; what the rules look at).
    data: Mapping[str, Any] = field(default_factory=dict)
    event_type: str = MESSAGE_RECEIVED
    # IMAP actions on this message over the watcher's connection; None offline (check-message:
    # the rules then only report what they would do).
    actions: MailActions | None = None


class StageAbort(Exception):
    """Raised by a stage when the message cannot be finished now (its IMAP connection broke in the
    middle of an action): no event; the pipeline re-raises it and the watcher reconnects."""


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
    drop: bool = False


class Pipeline:
    def __init__(self, stages: Sequence[StageSpec] = ()) -> None:
        self.stages = tuple(stages)

    async def run(
        self, parsed: ParsedMessage, mailbox: MailboxConfig | None = None, actions: MailActions | None = None
    ) -> Outcome:
        """Run every stage on a parsed message; used live and by `gatewayd check-message`."""
        data = dict(parsed.data)
        results: dict[str, StageResult] = {}
        timings: dict[str, float] = {}
        errors: list[dict[str, str]] = []
        event_type = MESSAGE_RECEIVED
        force_suspect = False
        drop = False
        for spec in self.stages:
            stage = spec.stage
            started = time.perf_counter()
            try:
                seen = data
                if force_suspect:  # later stages (the rules) see the verdict the event will have
                    seen = dict(data)
                    _raise_to_suspect(seen)
                context = StageContext(mailbox, results, seen, event_type, actions)
                result = await asyncio.wait_for(stage.check(parsed, context), spec.timeout_seconds)
            except StageAbort:
                raise
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
            drop = drop or result.drop
        if force_suspect:
            _raise_to_suspect(data)
        data["pipeline_ms"] = timings
        data["pipeline_errors"] = errors
        return Outcome(event_type, data, results, drop)

    async def process(
        self, mailbox: MailboxConfig, message: FetchedMessage, actions: MailActions | None = None
    ) -> NewEvent | None:
        parsed = parse(message)
        outcome = await self.run(parsed, mailbox, actions)
        if outcome.drop:
            return None
        return NewEvent(
            type=outcome.type,
            agent_id=mailbox.agent_id,
            mailbox_id=mailbox.id,
            data=outcome.data,
            dedupe_key=dedupe_key(mailbox.id, message),
            from_address=from_address(outcome.data),
        )

    async def recover(self, mailbox: MailboxConfig, actions: MailActions) -> None:
        """Let stages that act on the server (the rules) finish what a crash interrupted."""
        for spec in self.stages:
            recover = getattr(spec.stage, "recover", None)
            if recover is not None:
                await recover(mailbox, actions)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _raise_to_suspect(data: dict[str, Any]) -> None:
    spam = data.get("spam")
    if not isinstance(spam, dict):
        data["spam"] = {"verdict": "suspect", "score": None, "findings": [], "reason": "stage failed"}
    elif spam.get("verdict") == "ham":
        data["spam"] = {**spam, "verdict": "suspect"}
