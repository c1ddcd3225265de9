"""The pipeline framework: order, findings, budgets and what a failing stage does to the event."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gatewayd.message import FetchedMessage, ParsedMessage, parse
from gatewayd.pipeline import (
    INLINE_MAX_BYTES,
    ON_ERROR_SKIP_REST,
    Finding,
    Pipeline,
    StageContext,
    StageResult,
    StageSpec,
    _within,
)

RAW = b"From: Bob <bob@example.org>\r\nSubject: hi\r\nMessage-ID: <p1@example.org>\r\n\r\nHello there.\r\n"


def parsed(raw: bytes = RAW) -> ParsedMessage:
    return parse(FetchedMessage("INBOX", 7, 1, raw, len(raw), (), None))


def large() -> ParsedMessage:
    """A message over the size the CPU stages check on the event loop."""
    return parsed(RAW + b"More text.\r\n" * (INLINE_MAX_BYTES // 10))


class Recorder:
    """A stage that reports what it saw of earlier stages."""

    def __init__(self, name: str, provides: tuple[str, ...] = (), event_type: str | None = None) -> None:
        self.name = name
        self.provides = provides or (name,)
        self.event_type = event_type
        self.seen: list[str] = []

    async def check(self, message: ParsedMessage, context: StageContext) -> StageResult:
        self.seen = list(context.earlier)
        finding = Finding(self.name.upper(), 1.0, f"subject {message.data['subject']!r}")
        return StageResult({self.provides[0]: {"ok": True}}, (finding,), self.event_type)


class Raises(Recorder):
    async def check(self, message: ParsedMessage, context: StageContext) -> StageResult:
        raise RuntimeError("boom")


class Hangs(Recorder):
    async def check(self, message: ParsedMessage, context: StageContext) -> StageResult:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")


async def test_stages_run_in_order_and_see_earlier_results() -> None:
    first, second = Recorder("spam"), Recorder("auth", event_type="message.received.unauthenticated")
    outcome = await Pipeline([StageSpec(first), StageSpec(second)]).run(parsed())
    assert second.seen == ["spam"]
    assert outcome.type == "message.received.unauthenticated"
    assert outcome.data["spam"] == {"ok": True} and outcome.data["auth"] == {"ok": True}
    assert set(outcome.data["pipeline_ms"]) == {"spam", "auth"}
    assert all(ms >= 0 for ms in outcome.data["pipeline_ms"].values())
    assert outcome.data["pipeline_errors"] == []
    assert outcome.data["subject"] == "hi"  # the parsed event data is kept


@pytest.mark.parametrize("failing", [Raises("auth"), Hangs("auth")])
async def test_a_failing_stage_never_loses_the_message(failing: Any) -> None:
    later = Recorder("injection")
    pipeline = Pipeline([StageSpec(Recorder("spam")), StageSpec(failing, 0.2), StageSpec(later)])
    outcome = await asyncio.wait_for(pipeline.run(parsed()), 10)
    (error,) = outcome.data["pipeline_errors"]
    assert error["stage"] == "auth" and error["on_error"] == "continue"
    assert error["error"] == ("timeout" if isinstance(failing, Hangs) else "RuntimeError")
    assert outcome.data["auth"] is None  # its keys are present, and null
    assert outcome.data["injection"] == {"ok": True}  # later stages still ran
    assert later.seen == ["spam"]
    assert outcome.type == "message.received"


async def test_on_error_suspect_raises_the_spam_verdict() -> None:
    class Ham(Recorder):
        async def check(self, message: ParsedMessage, context: StageContext) -> StageResult:
            return StageResult({"spam": {"verdict": "ham", "score": 0.0, "findings": []}})

    outcome = await Pipeline([StageSpec(Ham("spam")), StageSpec(Raises("auth"), 1, "suspect")]).run(parsed())
    assert outcome.data["spam"]["verdict"] == "suspect"


async def test_malformed_mail_still_goes_through() -> None:
    outcome = await Pipeline([StageSpec(Recorder("spam"))]).run(parsed(b"\xff\xfe garbage \x00 no headers"))
    assert outcome.data["spam"] == {"ok": True}
    assert outcome.data["subject"] is None


def test_a_misspelt_weight_symbol_is_a_config_error() -> None:
    from gatewayd.config import ConfigError, parse_config
    from gatewayd.pipeline.build import check_weights

    config = parse_config(
        {"pipeline": {"spam": {"weights": {"URL_IP_LITERALL": 2}}}, "agents": [{"id": "a"}]}, env={}
    )
    with pytest.raises(ConfigError) as caught:
        check_weights(config)
    assert caught.value.errors == [
        'pipeline.spam.weights.URL_IP_LITERALL: unknown symbol (did you mean "URL_IP_LITERAL"?)'
    ]
    check_weights(
        parse_config({"pipeline": {"auth": {"weights": {"SPF_TEMPERROR": 1}}}, "agents": [{"id": "a"}]})
    )


class SyncRecorder(Recorder):
    """A CPU stage: the pipeline runs consecutive ones in one go (a large message: in one worker
    thread)."""

    def __init__(self, name: str, sleep: float = 0.0, fail: bool = False) -> None:
        super().__init__(name)
        self.sleep, self.fail, self.threads = sleep, fail, set[int]()

    def check_sync(self, message: ParsedMessage, context: StageContext) -> StageResult:
        import threading
        import time

        self.threads.add(threading.get_ident())
        self.seen = list(context.earlier)
        time.sleep(self.sleep)
        if self.fail:
            raise ValueError("bad input")
        return StageResult({self.name: {"ok": True}})


@pytest.mark.parametrize("size", ["small", "large"])
async def test_on_error_skip_rest_stops_the_pipeline_and_reports_what_it_skipped(size: str) -> None:
    later, rules = SyncRecorder("injection"), Recorder("rules", ("rules_applied", "labels"))
    stages = [StageSpec(Recorder("spam")), StageSpec(Raises("auth"), 1, "skip_rest"), StageSpec(later)]
    outcome = await Pipeline([*stages, StageSpec(rules)]).run(parsed() if size == "small" else large())
    assert later.seen == rules.seen == []  # never ran
    assert outcome.data["spam"] == {"ok": True} and outcome.data["auth"] is None
    # The event has the same shape as without the failure: every skipped key is there, null.
    assert outcome.data["injection"] is None
    assert outcome.data["rules_applied"] is None and outcome.data["labels"] is None
    errors = [(e["stage"], e["error"], e["detail"]) for e in outcome.data["pipeline_errors"]]
    skipped = "not run: auth failed (on_error: skip_rest)"
    assert errors == [
        ("auth", "RuntimeError", "boom"),
        ("injection", "skipped", skipped),
        ("rules", "skipped", skipped),
    ]


@pytest.mark.parametrize("size", ["small", "large"])
async def test_cpu_stages_run_on_the_loop_for_small_mail_else_share_one_worker_thread(size: str) -> None:
    import threading

    first, second, third = SyncRecorder("spam"), SyncRecorder("injection"), SyncRecorder("rules")
    stages = [StageSpec(first), StageSpec(second), StageSpec(Recorder("auth")), StageSpec(third)]
    outcome = await Pipeline(stages).run(parsed() if size == "small" else large())
    assert outcome.data["spam"] == outcome.data["injection"] == outcome.data["rules"] == {"ok": True}
    assert third.seen == ["spam", "injection", "auth"]
    loop_thread = threading.get_ident()
    if size == "small":
        assert first.threads == second.threads == {loop_thread}
    else:
        assert len(first.threads) == 1 and first.threads == second.threads
        assert loop_thread not in first.threads
    assert outcome.data["pipeline_errors"] == []


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize(("sleep", "fail", "error"), [(0.0, True, "ValueError"), (0.3, False, "timeout")])
async def test_a_failing_or_overrunning_cpu_stage_never_loses_the_message(
    sleep: float, fail: bool, error: str, size: str
) -> None:
    bad, later = SyncRecorder("spam", sleep=sleep, fail=fail), SyncRecorder("injection")
    outcome = await Pipeline([StageSpec(bad, 0.1), StageSpec(later, 5)]).run(
        parsed() if size == "small" else large()
    )
    assert [(e["stage"], e["error"]) for e in outcome.data["pipeline_errors"]] == [("spam", error)]
    assert outcome.data["spam"] is None and outcome.data["injection"] == {"ok": True}


async def test_a_hung_cpu_stage_on_a_large_message_is_abandoned_and_the_later_ones_still_run() -> None:
    import threading

    hung, after = SyncRecorder("spam", sleep=3.0), SyncRecorder("injection")
    outcome = await asyncio.wait_for(
        Pipeline([StageSpec(hung, 0.1), StageSpec(after, 0.1), StageSpec(Recorder("auth"))]).run(large()), 10
    )
    errors = {e["stage"]: e["error"] for e in outcome.data["pipeline_errors"]}
    assert errors == {"spam": "timeout"}  # on_error continue: the rest of its batch runs
    assert outcome.data["spam"] is None
    assert outcome.data["injection"] == outcome.data["auth"] == {"ok": True}
    # In a thread of its own, beside the one the hung stage still holds, not on the loop.
    assert after.threads and not after.threads & (hung.threads | {threading.get_ident()})


async def test_a_hung_cpu_stage_with_skip_rest_stops_the_stages_after_it() -> None:
    hung, after = SyncRecorder("spam", sleep=3.0), SyncRecorder("injection")
    pipeline = Pipeline([StageSpec(hung, 0.1, ON_ERROR_SKIP_REST), StageSpec(after, 0.1)])
    outcome = await asyncio.wait_for(pipeline.run(large()), 10)
    first_error = outcome.data["pipeline_errors"][0]
    assert (first_error["stage"], first_error["error"]) == ("spam", "timeout")
    assert not after.threads
    assert "injection" in outcome.data and outcome.data["injection"] is None  # the shape is kept
    assert [(e["stage"], e["error"]) for e in outcome.data["pipeline_errors"]] == [
        ("spam", "timeout"),
        ("injection", "skipped"),
    ]


async def _checks(events: list[str]) -> dict[str, Any]:
    """Async checks that wait in every way a stage's check may, or never."""

    async def at_once() -> str:
        return "done"

    async def raises_at_once() -> str:
        raise ValueError("at once")

    async def waits(seconds: float) -> str:
        await asyncio.sleep(seconds)
        await asyncio.sleep(0)  # a bare yield
        return f"waited {seconds}"

    async def raises_after_waiting() -> str:
        await asyncio.sleep(0.01)
        raise ValueError("after waiting")

    async def overruns_then_waits() -> str:
        time.sleep(0.15)  # noqa: ASYNC251 - past the deadline before it first waits
        await asyncio.sleep(0.5)
        return "late"

    async def overruns_without_waiting() -> str:
        time.sleep(0.15)  # noqa: ASYNC251 - past the deadline, never waiting
        return "late but never waited"

    async def swallows_its_cancellation() -> str:
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            events.append("cancelled")
            return "swallowed"
        return "not cancelled"

    async def cleans_up() -> str:
        try:
            await asyncio.sleep(1)
        finally:
            await asyncio.sleep(0.01)  # waits again while cancelled
            events.append("cleaned up")
        return "unreachable"

    async def in_a_thread() -> str:
        return await asyncio.to_thread(lambda: "from a thread")

    return {
        "at_once": at_once,
        "raises_at_once": raises_at_once,
        "waits": lambda: waits(0.01),
        "waits_too_long": lambda: waits(1),
        "raises_after_waiting": raises_after_waiting,
        "overruns_then_waits": overruns_then_waits,
        "overruns_without_waiting": overruns_without_waiting,
        "swallows_its_cancellation": swallows_its_cancellation,
        "cleans_up": cleans_up,
        "in_a_thread": in_a_thread,
    }


async def _outcome(within: Any, check: Any) -> tuple[str, str]:
    try:
        return "result", await within(check())
    except TimeoutError:
        return "timeout", ""
    except Exception as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize(
    "name",
    [
        "at_once",
        "raises_at_once",
        "waits",
        "waits_too_long",
        "raises_after_waiting",
        "overruns_then_waits",
        "overruns_without_waiting",
        "swallows_its_cancellation",
        "cleans_up",
        "in_a_thread",
    ],
)
async def test_a_stage_budget_is_what_asyncio_timeout_makes_it(name: str) -> None:
    """`_within` sets its timer only once a check waits, with the same outcome as asyncio.timeout."""

    async def plain(check: Any) -> Any:
        async with asyncio.timeout(0.1):
            return await check

    async def lazy(check: Any) -> Any:
        return await _within(check, 0.1)

    outcomes = []
    for within in (plain, lazy):
        events: list[str] = []
        outcomes.append((await _outcome(within, (await _checks(events))[name]), events))
    assert outcomes[0] == outcomes[1]


async def test_a_cancelled_pipeline_cancels_the_check_waiting_within_its_budget() -> None:
    events: list[str] = []
    check = (await _checks(events))["cleans_up"]
    task = asyncio.ensure_future(_within(check(), 10))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == ["cleaned up"]
