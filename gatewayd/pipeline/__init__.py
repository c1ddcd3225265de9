"""The inline pipeline between FETCH and publish: every message becomes one event here.

Stages run in the configured order on the parsed message; each reports findings (a named
symbol, a score, a detail) and the event data it provides. No event is ever published before
the pipeline has run, so the first event an agent sees already carries every verdict.

A stage that raises or overruns its time budget never loses the message: its keys in the event
data are null, `pipeline_errors` names it, and its `on_error` decides the rest:
`continue` (the default), `suspect` (the spam verdict becomes at least `suspect`), or
`skip_rest` (no later stage runs, the rules included: each is reported in `pipeline_errors` as
`skipped`, its keys null).
"""

from __future__ import annotations

import asyncio
import threading
import time
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from gatewayd.config import MailboxConfig
from gatewayd.events import MESSAGE_RECEIVED, NewEvent
from gatewayd.message import FetchedMessage, ParsedMessage, from_address, parse

if TYPE_CHECKING:
    from gatewayd.imap.act import MailActions

ON_ERROR_CONTINUE = "continue"
ON_ERROR_SUSPECT = "suspect"
ON_ERROR_SKIP_REST = "skip_rest"
ON_ERROR_CHOICES = (ON_ERROR_CONTINUE, ON_ERROR_SUSPECT, ON_ERROR_SKIP_REST)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Finding:
    """One reason, rspamd-style: `SPF_FAIL`, `R_SUSPICIOUS_URL`, with its weight and why."""

    symbol: str
    score: float
    detail: str = ""
    # Where the stage found it, when not in the message itself: "attachment:notes.txt", "forwarded:1".
    location: str | None = None

    def as_dict(self) -> dict[str, Any]:
        found = {"symbol": self.symbol, "score": round(self.score, 3), "detail": self.detail}
        if self.location is not None:
            found["location"] = self.location
        return found


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


# Checking a message of ordinary size takes about a millisecond of CPU; handing it to a worker
# thread costs nearly as much again on a small machine (the round trip, then the same code running
# about 30 % slower on the other core: docs/benchmarks-history.md). So the CPU stages run on the event loop
# for messages up to this size, and in a worker thread for larger ones, whose checks could hold
# the loop (and every stream) for many milliseconds.
INLINE_MAX_BYTES = 32 * 1024


class SyncStage(Protocol):
    """A stage that can also run as plain CPU work. The pipeline runs consecutive such stages in
    one go, timing each: on the event loop for a message up to `INLINE_MAX_BYTES`, else in ONE
    worker-thread hop. A stage that overruns its budget is reported as a timeout and its result
    dropped (a stage on the loop cannot be interrupted, so it must stay fast on small input)."""

    def check_sync(self, message: ParsedMessage, context: StageContext) -> StageResult | None:
        """The result, or None when this message needs the async `check` (e.g. a DNS lookup)."""
        ...


class _Run:
    """The state of one message's way through the stages."""

    def __init__(
        self, parsed: ParsedMessage, mailbox: MailboxConfig | None, actions: MailActions | None
    ) -> None:
        self.parsed, self.mailbox, self.actions = parsed, mailbox, actions
        self.data = dict(parsed.data)
        self.results: dict[str, StageResult] = {}
        self.timings: dict[str, float] = {}
        self.errors: list[dict[str, str]] = []
        self.event_type = MESSAGE_RECEIVED
        self.force_suspect = False
        self.drop = False
        self.stopped_by: str | None = None  # the stage whose failure (on_error: skip_rest) ended the run
        # Guards the state against a worker thread still running after its batch timed out; each
        # thread's batch is an attempt, and only the current attempt may change the state.
        self.lock = threading.Lock()
        self.attempt = 0

    def context(self) -> StageContext:
        seen = self.data
        if self.force_suspect:  # later stages (the rules) see the verdict the event will have
            seen = dict(self.data)
            _raise_to_suspect(seen)
        return StageContext(self.mailbox, self.results, seen, self.event_type, self.actions)

    def succeed(self, spec: StageSpec, result: StageResult, elapsed_ms: float) -> None:
        self.timings[spec.stage.name] = elapsed_ms
        self.results[spec.stage.name] = result
        self.data.update(result.data)
        if result.event_type:
            self.event_type = result.event_type
        self.drop = self.drop or result.drop

    def fail(self, spec: StageSpec, error: str, detail: str, elapsed_ms: float) -> None:
        stage = spec.stage
        self.timings[stage.name] = elapsed_ms
        self.errors.append({"stage": stage.name, "error": error, "detail": detail, "on_error": spec.on_error})
        self.data.update(dict.fromkeys(stage.provides))
        if spec.on_error == ON_ERROR_SUSPECT:
            self.force_suspect = True
        elif spec.on_error == ON_ERROR_SKIP_REST and self.stopped_by is None:
            self.stopped_by = stage.name

    def timeout(self, spec: StageSpec, elapsed_ms: float) -> None:
        self.fail(spec, "timeout", f"over {spec.timeout_seconds * 1000:g} ms", elapsed_ms)


class Pipeline:
    def __init__(self, stages: Sequence[StageSpec] = ()) -> None:
        self.stages = tuple(stages)

    async def run(
        self, parsed: ParsedMessage, mailbox: MailboxConfig | None = None, actions: MailActions | None = None
    ) -> Outcome:
        """Run every stage on a parsed message; used live and by `gatewayd check-message`."""
        run = _Run(parsed, mailbox, actions)
        position = 0
        while position < len(self.stages) and run.stopped_by is None:
            batch: list[StageSpec] = []
            while position + len(batch) < len(self.stages) and hasattr(
                self.stages[position + len(batch)].stage, "check_sync"
            ):
                batch.append(self.stages[position + len(batch)])
            if batch:
                await self._run_sync(run, batch)
                position += len(batch)
            else:
                await self._run_async(run, self.stages[position])
                position += 1
        if run.stopped_by is not None:
            # Skipped, not silently missing: the event keeps its shape and says why.
            for spec in self.stages:
                if spec.stage.name not in run.timings:
                    run.fail(spec, "skipped", f"not run: {run.stopped_by} failed (on_error: skip_rest)", 0.0)
        data = run.data
        if run.force_suspect:
            _raise_to_suspect(data)
        data["pipeline_ms"] = run.timings
        data["pipeline_errors"] = run.errors
        return Outcome(run.event_type, data, run.results, run.drop)

    async def _run_async(self, run: _Run, spec: StageSpec) -> None:
        started = time.perf_counter()
        try:
            # Not wait_for: that wraps the check in a task of its own, a few loop turns a message
            # even when the check never waits (the rules stage, mostly).
            result = await _within(spec.stage.check(run.parsed, run.context()), spec.timeout_seconds)
        except StageAbort:
            raise
        except TimeoutError:
            run.timeout(spec, _ms(started))
        except Exception as exc:  # a stage's failure must never lose the message
            run.fail(spec, type(exc).__name__, str(exc)[:200], _ms(started))
        else:
            run.succeed(spec, result, _ms(started))

    async def _run_sync(self, run: _Run, batch: list[StageSpec]) -> None:
        """Consecutive CPU stages in one go, on the loop or (a large message) in one worker thread;
        a stage that needs its async path (its check_sync returned None) runs on the loop
        afterwards, in order."""
        pending: list[StageSpec] = []
        current: list[StageSpec] = []
        attempt = run.attempt

        def work() -> None:
            for index, spec in enumerate(batch):
                if run.stopped_by is not None:
                    return
                started = time.perf_counter()
                with run.lock:
                    if run.attempt != attempt:
                        return
                    context = run.context()
                current[:] = [spec]
                try:
                    result = spec.stage.check_sync(run.parsed, context)  # type: ignore[attr-defined]
                    error = None
                except Exception as exc:  # a stage's failure must never lose the message
                    result, error = None, exc
                elapsed = _ms(started)
                with run.lock:
                    if run.attempt != attempt:
                        return
                    if error is not None:
                        run.fail(spec, type(error).__name__, str(error)[:200], elapsed)
                    elif result is None:
                        pending.extend(batch[index:])  # needs the loop: finish there, in order
                        return
                    elif elapsed > spec.timeout_seconds * 1000:
                        run.timeout(spec, elapsed)
                    else:
                        run.succeed(spec, result, elapsed)
            current.clear()

        if len(run.parsed.raw) <= INLINE_MAX_BYTES:
            work()
        else:
            rest = await self._in_thread(run, batch, work, current)
            if rest and run.stopped_by is None:
                # The hung stage keeps its thread; the ones after it get a thread and budgets of
                # their own, as its on_error (not skip_rest) says they should run.
                await self._run_sync(run, rest)
        for spec in pending:
            if run.stopped_by is not None:
                return
            await self._run_async(run, spec)

    @staticmethod
    async def _in_thread(
        run: _Run, batch: list[StageSpec], work: Callable[[], None], current: list[StageSpec]
    ) -> list[StageSpec]:
        """Run `work` in a worker thread within the batch's budget; the stages it never reached
        when it had to be abandoned."""
        budget = sum(spec.timeout_seconds for spec in batch)
        started = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.to_thread(work), budget)
        except TimeoutError:
            with run.lock:
                run.attempt += 1
                # The stage still running overran: a timeout, with what its on_error says.
                hung = current[0] if current else batch[-1]
                run.timeout(hung, _ms(started))
                return batch[batch.index(hung) + 1 :]
        return []

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
            # The tenant whose learning the message belongs to, should the mailbox move to another.
            data={**outcome.data, "tenant": mailbox.tenant},
            dedupe_key=dedupe_key(mailbox.id, message),
            from_address=from_address(outcome.data),
        )

    async def recover(self, mailbox: MailboxConfig, actions: MailActions) -> None:
        """Let stages that act on the server (the rules) finish what a crash interrupted."""
        for spec in self.stages:
            recover = getattr(spec.stage, "recover", None)
            if recover is not None:
                await recover(mailbox, actions)


async def _within(check: Awaitable[_T], seconds: float) -> _T:
    """`await check` under `asyncio.timeout(seconds)`, with the timer set only when the check first
    waits: most checks never do (the rules stage, whose journal answers a new message without
    I/O), and a timer set and cancelled costs about as much as the rules' evaluation. A check
    that runs past its deadline without waiting is not interrupted either way."""
    if type(check) is not types.CoroutineType:
        async with asyncio.timeout(seconds):
            return await check
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        waiting = check.send(None)
    except StopIteration as done:
        return cast(_T, done.value)
    async with asyncio.timeout_at(deadline):
        return cast(_T, await _Resumed(check, waiting))


class _Resumed:
    """`await` of a coroutine already started, from where it waits on `waiting`: what it yields
    goes to the task, and what the task sends or throws (a cancellation) goes back into it."""

    def __init__(self, coroutine: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self.coroutine, self.waiting = coroutine, waiting

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, waiting = self.coroutine, self.waiting
        while True:
            try:
                sent = yield waiting
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:
                try:
                    waiting = coroutine.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                waiting = coroutine.send(sent)
            except StopIteration as done:
                return done.value


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _raise_to_suspect(data: dict[str, Any]) -> None:
    spam = data.get("spam")
    if not isinstance(spam, dict):
        data["spam"] = {"verdict": "suspect", "score": None, "findings": [], "reason": "stage failed"}
    elif spam.get("verdict") == "ham":
        data["spam"] = {**spam, "verdict": "suspect"}
