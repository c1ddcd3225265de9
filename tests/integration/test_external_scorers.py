"""The external spam scorers against the real rspamd and spamd (Debian packages, see scripts/setup),
and their fall-back to the built-in score when a scorer is down, silent or garbled. Only the silent
and garbled scorers are fakes: failures a real daemon cannot be made to produce on demand."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from email.utils import formatdate, make_msgid
from typing import Any

import pytest

from gatewayd.config import MailboxConfig, parse_config
from gatewayd.message import FetchedMessage, ParsedMessage, parse
from gatewayd.pipeline import Outcome, Pipeline
from gatewayd.pipeline.build import build_pipeline
from gatewayd.pipeline.external import (
    ExternalScoring,
    RspamdClient,
    ScorerProtocolError,
    SpamdClient,
)
from gatewayd.sandbox.dovecot import SandboxUnavailable, free_port
from gatewayd.sandbox.rspamd import Rspamd
from gatewayd.sandbox.spamd import Spamd

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
MAILBOX = "agent@example.com"


def message(body: str, subject: str, extra: str = "") -> bytes:
    # A current Date: rspamd scores old ones (DATE_IN_PAST).
    return (
        f"{extra}From: Alice Martin <alice@example.org>\r\nTo: {MAILBOX}\r\nSubject: {subject}\r\n"
        f"Date: {formatdate()}\r\nMessage-ID: {make_msgid(domain='example.org')}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}\r\n"
    ).encode()


HAM = message(
    "Hi,\r\n\r\nshall we meet on Thursday at noon to go through the quarterly figures? The usual room"
    " is fine by me; I will bring the printouts.\r\n\r\nBest,\r\nAlice",
    "Thursday meeting",
)
SPAM = message(
    f"This is the GTUBE test message.\r\n\r\n{GTUBE}", "Test message", "Return-Path: <bounce@example.net>\r\n"
)


def parsed(raw: bytes) -> ParsedMessage:
    return parse(FetchedMessage("INBOX", 1, 1, raw, len(raw), (), None))


# --- the real daemons, one of each for the module ----------------------------------------------------


@pytest.fixture(scope="module")
def daemons() -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    """Both start at once: rspamd's first start on a machine takes ~15 s (see sandbox/rspamd.py)."""
    started: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name, create in (("rspamd", Rspamd.create), ("spamd", Spamd.create)):
        try:
            daemon = create()
            daemon.launch()
            started[name] = daemon
        except SandboxUnavailable as exc:
            problems[name] = str(exc)
    for name, daemon in list(started.items()):
        try:
            daemon.wait_ready()
        except SandboxUnavailable as exc:
            problems[name] = str(exc)
    yield started, problems
    for daemon in started.values():
        daemon.destroy()


def _need(daemons: tuple[dict[str, Any], dict[str, str]], name: str) -> Any:
    started, problems = daemons
    if name in problems:
        message = (
            f"the real {name} these tests need is unavailable (scripts/setup installs it): {problems[name]}"
        )
        if os.environ.get("CI") == "true":  # CI must run them: a missing daemon is a failure there
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return started[name]


@pytest.fixture(scope="module")
def rspamd(daemons: tuple[dict[str, Any], dict[str, str]]) -> Rspamd:
    daemon: Rspamd = _need(daemons, "rspamd")
    return daemon


@pytest.fixture(scope="module")
def spamd(daemons: tuple[dict[str, Any], dict[str, str]]) -> Spamd:
    daemon: Spamd = _need(daemons, "spamd")
    return daemon


def configured(spam: dict[str, Any]) -> tuple[Pipeline, MailboxConfig]:
    """The spam stage as `gatewayd` builds it from this `pipeline.spam` section."""
    imap = {"host": "127.0.0.1", "username": MAILBOX, "password": "x"}
    mailboxes = [{"id": "inbox", "imap": imap}]
    data = {"pipeline": {"stages": ["spam"], "spam": spam}, "agents": [{"id": "a", "mailboxes": mailboxes}]}
    config = parse_config(data, env={})
    return build_pipeline(config, None), config.mailboxes()[0]


async def run(spam: dict[str, Any], raw: bytes) -> Outcome:
    pipeline, mailbox = configured(spam)
    return await pipeline.run(parsed(raw), mailbox)


def findings(outcome: Outcome) -> dict[str, dict[str, Any]]:
    return {f["symbol"]: f for f in outcome.data["spam"]["findings"]}


# --- real daemons ------------------------------------------------------------------------------------


async def test_rspamd_scores_gtube_as_spam_and_ham_low(rspamd: Rspamd) -> None:
    client = RspamdClient(rspamd.url, timeout_seconds=5)
    spam = await client.check(SPAM, rcpt=MAILBOX)
    assert spam.is_spam and spam.action == "reject"
    assert spam.threshold is not None and spam.score >= spam.threshold
    assert "GTUBE" in dict(spam.symbols)

    ham = await client.check(HAM, rcpt=MAILBOX)
    # Below "add header" (6): the message is scored after delivery, without the SMTP client's
    # host name, so HFILTER_HOSTNAME_UNKNOWN (2.5) is all it may get.
    assert not ham.is_spam and ham.action in ("no action", "greylist") and ham.score < 6, ham


async def test_spamd_scores_gtube_as_spam_and_ham_low(spamd: Spamd) -> None:
    client = SpamdClient(spamd.host, spamd.port, timeout_seconds=5)
    spam = await client.check(SPAM)
    assert spam.is_spam and spam.threshold == 5.0 and spam.score >= 1000
    assert spam.symbols[0] == ("GTUBE", 1000.0)

    ham = await client.check(HAM)
    assert not ham.is_spam and ham.score < 2, ham


async def test_gtube_is_spam_in_the_spam_stage_through_both_scorers(rspamd: Rspamd, spamd: Spamd) -> None:
    alone = await run({}, SPAM)
    assert alone.data["spam"]["verdict"] == "ham"  # the built-in heuristics know nothing of GTUBE

    # Generous timeouts: here the point is the answer, not the budget (a loaded CI machine).
    spam = {
        "timeout_ms": 5000,
        "rspamd": {"url": rspamd.url, "timeout_ms": 4000},
        "spamd": {"port": spamd.port, "timeout_ms": 4000, "weight": 0.01},
    }
    outcome = await run(spam, SPAM)
    data = outcome.data["spam"]
    assert outcome.data["pipeline_errors"] == []
    assert data["verdict"] == "spam"
    found = findings(outcome)
    assert found["RSPAMD_SCORE"]["score"] == 15.0 and "reject: GTUBE" in found["RSPAMD_SCORE"]["detail"]
    spamd_score = data["external"]["spamd"]["score"]
    assert spamd_score >= 1000 and found["SPAMD_SCORE"]["score"] == round(spamd_score * 0.01, 3)
    assert f"{spamd_score:g} / 5 spam: GTUBE 1000" in found["SPAMD_SCORE"]["detail"]
    assert data["score"] == round(alone.data["spam"]["score"] + 15 + spamd_score * 0.01, 2)
    assert data["external"]["rspamd"]["is_spam"] and data["external"]["rspamd"]["action"] == "reject"
    assert data["external"]["spamd"]["symbols"][0] == {"symbol": "GTUBE", "score": 1000.0}
    # rspamd was told the envelope the gateway knows: the mailbox, and the Return-Path.
    log = (rspamd.root / "log" / "rspamd.log").read_text()
    assert "from: <bounce@example.net>" in log and f"rcpts: <{MAILBOX}>" in log


async def test_ham_stays_ham_through_both_scorers(rspamd: Rspamd, spamd: Spamd) -> None:
    spam = {
        "timeout_ms": 5000,
        "rspamd": {"url": rspamd.url, "timeout_ms": 4000},
        "spamd": {"port": spamd.port, "timeout_ms": 4000},
    }
    outcome = await run(spam, HAM)
    data = outcome.data["spam"]
    assert data["verdict"] == "ham" and outcome.data["pipeline_errors"] == []
    assert {"RSPAMD_SCORE", "SPAMD_SCORE"} <= set(findings(outcome))
    assert not data["external"]["rspamd"]["is_spam"] and not data["external"]["spamd"]["is_spam"]


async def test_an_rspamd_error_reply_is_a_protocol_error(rspamd: Rspamd) -> None:
    # The client posts to URL/checkv2: under another path the real rspamd answers 500.
    client = RspamdClient(f"{rspamd.url}/nothing", timeout_seconds=5)
    with pytest.raises(ScorerProtocolError, match="HTTP 500: invalid command"):
        await client.check(HAM)


# --- failures: the built-in score, an UNAVAILABLE finding, within the stage's budget -----------------


@pytest.fixture
async def fake_server() -> AsyncIterator[Callable[[bytes | None], Any]]:
    """A loopback server that reads the request, then sends `reply` and closes, or (None) says
    nothing until the client gives up."""
    servers: list[asyncio.Server] = []

    async def start(reply: bytes | None) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if reply is None:
                    await reader.read()  # until the client hangs up
                else:
                    await reader.read(65536)
                    writer.write(reply)
                    await writer.drain()
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def built_in(raw: bytes) -> dict[str, Any]:
    return dict((await run({}, raw)).data["spam"])


def assert_fell_back(outcome: Outcome, built: dict[str, Any], reason: str) -> None:
    data = outcome.data["spam"]
    assert outcome.data["pipeline_errors"] == []
    assert (data["verdict"], data["score"]) == (built["verdict"], built["score"])
    assert data["external"] == {"rspamd": None, "spamd": None}
    found = findings(outcome)
    for symbol in ("RSPAMD_UNAVAILABLE", "SPAMD_UNAVAILABLE"):
        assert found[symbol]["score"] == 0 and reason in found[symbol]["detail"], found[symbol]
    assert "RSPAMD_SCORE" not in found and "SPAMD_SCORE" not in found


async def test_a_stopped_scorer_falls_back_to_the_built_in_score() -> None:
    # Nothing listens on these ports: what a stopped daemon looks like (connection refused).
    spam = {"rspamd": {"url": f"http://127.0.0.1:{free_port()}"}, "spamd": {"port": free_port()}}
    outcome = await run(spam, SPAM)
    assert_fell_back(outcome, await built_in(SPAM), "refused")
    assert outcome.data["pipeline_ms"]["spam"] < 250


async def test_a_silent_scorer_times_out_within_the_stage_budget(fake_server: Any) -> None:
    port = await fake_server(None)
    # The defaults: 150 ms per scorer, 250 ms for the stage. Both scorers wait at once, so the
    # stage takes one timeout, not two.
    spam = {"rspamd": {"url": f"http://127.0.0.1:{port}"}, "spamd": {"port": port}}
    pipeline, mailbox = configured(spam)
    assert isinstance(pipeline.stages[0].stage, ExternalScoring)
    started = time.perf_counter()
    outcome = await pipeline.run(parsed(HAM), mailbox)
    elapsed = time.perf_counter() - started
    assert_fell_back(outcome, await built_in(HAM), "within 150 ms")
    assert 0.15 <= elapsed < 0.25 and outcome.data["pipeline_ms"]["spam"] < 250


@pytest.mark.parametrize(
    ("rspamd_reply", "spamd_reply", "rspamd_reason", "spamd_reason"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nnot json",
            b"SPAMD/1.1 76 Bad header line: (Content-Length mismatch)\r\n\r\n",
            "rspamd replied HTTP 200: not json",
            "spamd error 76: Bad header line",
        ),
        (
            b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"action": "x"}',
            b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n",
            "rspamd reply without a score",
            "spamd reply without a valid Spam header",
        ),
        (b"garbage\r\n\r\n", b"garbage\r\n\r\n", "bad reply from rspamd", "not a spamd reply"),
        (
            # Python's json reads NaN; and 400 digits are a float's inf: either would poison the total.
            b'HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{"score": NaN}',
            b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; " + b"9" * 400 + b" / 5.0\r\n\r\n",
            "rspamd reply without a score",
            "spamd sent a number out of range",
        ),
    ],
    ids=["error-reply", "no-score", "not-the-protocol", "not-finite"],
)
async def test_a_garbled_reply_falls_back_with_the_reason(
    fake_server: Any, rspamd_reply: bytes, spamd_reply: bytes, rspamd_reason: str, spamd_reason: str
) -> None:
    rspamd_port, spamd_port = await fake_server(rspamd_reply), await fake_server(spamd_reply)
    spam = {"rspamd": {"url": f"http://127.0.0.1:{rspamd_port}"}, "spamd": {"port": spamd_port}}
    outcome = await run(spam, SPAM)
    assert_fell_back(outcome, await built_in(SPAM), "")
    found = findings(outcome)
    assert rspamd_reason in found["RSPAMD_UNAVAILABLE"]["detail"], found["RSPAMD_UNAVAILABLE"]
    assert spamd_reason in found["SPAMD_UNAVAILABLE"]["detail"], found["SPAMD_UNAVAILABLE"]
