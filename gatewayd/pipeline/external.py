"""Optional external spam scorers: rspamd over its HTTP protocol, SpamAssassin's spamd over its own.

`ExternalScoring` wraps the spam stage: it asks the configured scorers while the built-in scoring
runs, and adds each answer as one finding, `RSPAMD_SCORE` / `SPAMD_SCORE`, worth the external score
times the scorer's weight, with the scorer's top symbols in the detail. A scorer that is down, slow
or talks nonsense costs only its own finding: `RSPAMD_UNAVAILABLE` / `SPAMD_UNAVAILABLE` (score 0,
the reason as detail) and the verdict is the built-in one. Each query has its own timeout, which
the config keeps below the stage's budget, so a scorer can never make the stage overrun.

The scorers see the message after delivery, without the SMTP session (client IP, HELO), so some of
their rules fire on every message (rspamd's HFILTER_HOSTNAME_UNKNOWN, for one): tune `weight`, or
the scorer's own config.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from gatewayd.message import ParsedMessage
from gatewayd.pipeline import Finding, StageContext, StageResult
from gatewayd.pipeline.spam import SpamStage, verdict_for
from gatewayd.pipeline.spam.stage import PROVIDES

log = logging.getLogger(__name__)

# Replies are a score and some symbols; anything bigger is not a scorer answering.
_MAX_REPLY_BYTES = 1024 * 1024
# Symbols kept in the event data, and named in the finding's detail.
TOP_SYMBOLS = 10
_DETAIL_SYMBOLS = 5


class ScorerError(Exception):
    """No usable answer from an external scorer; the message is the reason, fit for a finding."""


class ScorerTimeout(ScorerError):
    pass


class ScorerUnreachable(ScorerError):
    """Connection refused, reset or lost."""


class ScorerProtocolError(ScorerError):
    """An answer, but not one of the scorer's protocol (or an error reply)."""


@dataclass(frozen=True, slots=True)
class ExternalResult:
    score: float
    threshold: float | None
    is_spam: bool
    # (name, score or None when the scorer gives none), highest |score| first.
    symbols: tuple[tuple[str, float | None], ...] = ()
    action: str | None = None  # rspamd's ("reject", "add header", ...); spamd has none

    def as_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "threshold": self.threshold,
            "is_spam": self.is_spam,
            "action": self.action,
            "symbols": [{"symbol": name, "score": score} for name, score in self.symbols[:TOP_SYMBOLS]],
        }


class Scorer(Protocol):
    """An external scorer: `check` answers within the scorer's own timeout, or raises ScorerError."""

    # Lower case; names the findings (RSPAMD_SCORE) and the key under `spam.external`.
    name: str

    async def check(
        self, raw: bytes, *, rcpt: str | None = None, mail_from: str | None = None
    ) -> ExternalResult: ...


class _Reader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


async def _read_all(stream: _Reader) -> bytes:
    chunks, size = [], 0
    while chunk := await stream.read(65536):
        size += len(chunk)
        if size > _MAX_REPLY_BYTES:
            raise ScorerProtocolError(f"reply over {_MAX_REPLY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _os_reason(exc: OSError) -> str:
    # asyncio's connect errors read "Connect call failed (...)"; the errno says what happened.
    # (A resolver's gaierror has a negative errno and a fine strerror.)
    return os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)


def _ranked(symbols: list[tuple[str, float | None]]) -> tuple[tuple[str, float | None], ...]:
    return tuple(sorted(symbols, key=lambda item: (-abs(item[1] or 0.0), item[0])))


def _number(value: Any) -> float | None:
    """A finite JSON number, else None: Python's json reads NaN, Infinity and 1e400, which would
    poison the stage's total (a NaN total is no verdict at all)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _float(text: str) -> float:
    number = float(text) + 0.0  # spamd writes "-0.0" for rules worth nothing: make it 0
    if not math.isfinite(number):  # 400 digits read as inf
        raise ScorerProtocolError(f"spamd sent a number out of range: {text[:20]}...")
    return number


# --- rspamd ---------------------------------------------------------------------------------------

# The actions that mean "spam"; "soft reject" is a temporary failure (greylisting, rate limits).
RSPAMD_SPAM_ACTIONS = frozenset({"reject", "add header", "rewrite subject"})


class RspamdClient:
    """rspamd's normal worker (or its proxy): `POST /checkv2`, the message as the body, JSON back."""

    name = "rspamd"

    def __init__(self, url: str, timeout_seconds: float, password: str | None = None) -> None:
        self.url = url.rstrip("/") + "/checkv2"
        self.timeout_seconds = timeout_seconds
        self.password = password

    async def check(
        self, raw: bytes, *, rcpt: str | None = None, mail_from: str | None = None
    ) -> ExternalResult:
        # Only the envelope the gateway knows; a made-up IP or HELO would skew rspamd's rules.
        headers = {"Rcpt": rcpt, "From": mail_from, "Password": self.password}
        try:
            async with asyncio.timeout(self.timeout_seconds):
                async with (
                    aiohttp.ClientSession(trust_env=False) as session,
                    session.post(
                        self.url, data=raw, headers={k: v for k, v in headers.items() if v}
                    ) as response,
                ):
                    body = await _read_all(response.content)
                    status = response.status
        except TimeoutError:
            raise ScorerTimeout(f"no answer from rspamd within {self.timeout_seconds * 1000:g} ms") from None
        except aiohttp.ClientConnectorError as exc:
            reason = _os_reason(exc.os_error)
            raise ScorerUnreachable(f"cannot connect to rspamd at {self.url}: {reason}") from None
        except aiohttp.ClientConnectionError as exc:
            raise ScorerUnreachable(f"connection to rspamd lost: {exc}") from None
        except aiohttp.ClientError as exc:
            raise ScorerProtocolError(f"bad reply from rspamd: {type(exc).__name__}: {exc}") from None
        return parse_rspamd_reply(status, body)


def parse_rspamd_reply(status: int, body: bytes) -> ExternalResult:
    try:
        reply = json.loads(body)
    except ValueError:
        reply = None
    if status != 200 or not isinstance(reply, dict):
        error = reply.get("error") if isinstance(reply, dict) else None
        shown = str(error) if error else body[:80].decode("utf-8", "replace")
        raise ScorerProtocolError(f"rspamd replied HTTP {status}: {shown[:120]}")
    score = _number(reply.get("score"))
    entries = reply.get("symbols") or {}
    if score is None or not isinstance(entries, dict):
        raise ScorerProtocolError("rspamd reply without a score or with malformed symbols")
    symbols = [
        (str(name), _number(entry.get("score")) if isinstance(entry, dict) else None)
        for name, entry in entries.items()
    ]
    action = reply.get("action") if isinstance(reply.get("action"), str) else None
    return ExternalResult(
        score=score,
        threshold=_number(reply.get("required_score")),
        is_spam=action in RSPAMD_SPAM_ACTIONS,
        symbols=_ranked(symbols),
        action=action,
    )


# --- spamd ----------------------------------------------------------------------------------------

_SPAMD_STATUS = re.compile(r"SPAMD/\d+\.\d+ +(\d+) *(.*)")
_SPAMD_SPAM = re.compile(r"(true|false|yes|no) *; *(-?\d+(?:\.\d+)?) */ *(-?\d+(?:\.\d+)?)", re.I)
# A row of REPORT's table: " pts rule name  description", after a "---- ----" rule.
_REPORT_ROW = re.compile(r"^ *(-?\d+(?:\.\d+)?) +([A-Z0-9_]{1,100})\b", re.M)


class SpamdClient:
    """SpamAssassin's spamd: `REPORT SPAMC/1.5`, whose reply carries the score and the rule table."""

    name = "spamd"

    def __init__(self, host: str, port: int, timeout_seconds: float) -> None:
        self.host = host
        self.port = port
        self.timeout_seconds = timeout_seconds

    async def check(
        self, raw: bytes, *, rcpt: str | None = None, mail_from: str | None = None
    ) -> ExternalResult:
        request = b"REPORT SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw
        where = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.timeout_seconds):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(request)
                    await writer.drain()
                    reply = await _read_all(reader)  # spamd closes the connection after its reply
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError:
            raise ScorerTimeout(f"no answer from spamd within {self.timeout_seconds * 1000:g} ms") from None
        except OSError as exc:
            raise ScorerUnreachable(f"cannot talk to spamd at {where}: {_os_reason(exc)}") from None
        return parse_spamd_reply(reply)


def parse_spamd_reply(reply: bytes) -> ExternalResult:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = _SPAMD_STATUS.fullmatch(lines[0])
    if status is None:
        raise ScorerProtocolError(f"not a spamd reply: {lines[0][:60]!r}")
    if status[1] != "0":
        raise ScorerProtocolError(f"spamd error {status[1]}: {status[2][:80]}")
    verdict = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "spam":
            verdict = _SPAMD_SPAM.fullmatch(value.strip())
    if verdict is None:
        raise ScorerProtocolError("spamd reply without a valid Spam header")
    report = body.decode("utf-8", "replace")
    table = report.find("\n----")
    start = report.find("\n", table + 1) if table >= 0 else -1
    rows = _REPORT_ROW.findall(report, start) if start >= 0 else []
    return ExternalResult(
        score=_float(verdict[2]),
        threshold=_float(verdict[3]),
        is_spam=verdict[1].lower() in ("true", "yes"),
        symbols=_ranked([(name, _float(points)) for points, name in rows[:200]]),
    )


# --- the stage ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Weighted:
    scorer: Scorer
    weight: float = 1.0


_ENVELOPE_ADDRESS = re.compile(r"<([^<>@\s]{1,64}@[^<>@\s]{1,253})>")


class ExternalScoring:
    """The spam stage with external scorers asked alongside it: the same name and event data keys,
    and `spam.external`: {"rspamd": result or None, "spamd": result or None} (None: not configured
    or no answer; the UNAVAILABLE finding says why)."""

    name = "spam"
    provides: tuple[str, ...] = PROVIDES

    def __init__(self, stage: SpamStage, scorers: Sequence[Weighted]) -> None:
        self.stage = stage
        self.scorers = tuple(scorers)
        self._down: set[str] = set()  # log when a scorer goes down or comes back, not per message

    async def check(self, message: ParsedMessage, context: StageContext) -> StageResult:
        address = context.mailbox.address if context.mailbox else None
        rcpt = address if address and address.isascii() else None
        return_path = _ENVELOPE_ADDRESS.search((message.data.get("headers") or {}).get("return-path") or "")
        mail_from = return_path[1] if return_path and return_path[1].isascii() else None
        asks = [asyncio.create_task(self._ask(w, message.raw, rcpt, mail_from)) for w in self.scorers]
        try:
            result = await self.stage.check(message, context)
            answers = await asyncio.gather(*asks)
        except BaseException:
            for task in asks:
                task.cancel()
            await asyncio.gather(*asks, return_exceptions=True)
            raise
        return self._merge(result, answers)

    async def _ask(
        self, weighted: Weighted, raw: bytes, rcpt: str | None, mail_from: str | None
    ) -> tuple[Finding, ExternalResult | None]:
        scorer = weighted.scorer
        symbol = scorer.name.upper()
        try:
            answer = await scorer.check(raw, rcpt=rcpt, mail_from=mail_from)
        except Exception as exc:  # a ScorerError, or a bug: either way only this finding is lost
            reason = str(exc) if isinstance(exc, ScorerError) else f"{type(exc).__name__}: {exc}"
            if scorer.name not in self._down:
                self._down.add(scorer.name)
                bug = not isinstance(exc, ScorerError)
                log.warning("%s unavailable, scoring without it: %s", scorer.name, reason, exc_info=bug)
            return Finding(f"{symbol}_UNAVAILABLE", 0.0, reason[:200]), None
        if scorer.name in self._down:
            self._down.discard(scorer.name)
            log.info("%s answers again", scorer.name)
        return Finding(f"{symbol}_SCORE", answer.score * weighted.weight, _detail(answer)), answer

    def _merge(
        self, result: StageResult, answers: Sequence[tuple[Finding, ExternalResult | None]]
    ) -> StageResult:
        findings = sorted([*result.findings, *(f for f, _ in answers)], key=lambda f: -abs(f.score))
        total = sum((f.score for f in findings), 0.0)  # a float even with no findings
        listed = (result.data.get("sender_reputation") or {}).get("listed")
        external: dict[str, Any] = {"rspamd": None, "spamd": None}
        for weighted, (_, answer) in zip(self.scorers, answers, strict=True):
            external[weighted.scorer.name] = answer.as_dict() if answer else None
        spam = {
            **result.data["spam"],
            "verdict": verdict_for(total, listed, self.stage.options).value,
            "score": round(total, 2),
            "findings": [f.as_dict() for f in findings],
            "external": external,
        }
        return StageResult({**result.data, "spam": spam}, tuple(findings), result.event_type)


def _detail(answer: ExternalResult) -> str:
    """The score against the scorer's own threshold, and its top symbols: `15 / 15 reject: GTUBE 0`."""
    threshold = f" / {answer.threshold:g}" if answer.threshold is not None else ""
    label = answer.action or ("spam" if answer.is_spam else "ham")
    named = [
        name if score is None else f"{name} {score:g}" for name, score in answer.symbols[:_DETAIL_SYMBOLS]
    ]
    return f"{answer.score:g}{threshold} {label}: {', '.join(named) or 'no symbols'}"[:200]
