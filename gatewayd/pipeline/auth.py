"""Sender authentication: SPF, DKIM and DMARC as the receiving server recorded them.

The receiving MTA writes its verdicts into `Authentication-Results` (RFC 8601). Anyone can write that
header too, so only headers whose authserv-id is trusted for the mailbox count; every other one is
reported (AUTH_RESULTS_UNTRUSTED, score 0) and otherwise ignored. Of several trusted headers only the
topmost (the most recent) is used: servers prepend their headers, so a forged copy carrying a trusted id
sits below the real one. Merging several trusted headers would let such a copy fill in a method the
real header left out (Gmail omits `dkim` for unsigned mail), so setups where several milters each write
a header under the same id see only the topmost one. A trusted header that cannot be parsed stops the
search: the headers below it are not used either. A header without an authserv-id (Microsoft 365
writes them so) is trusted only where the trusted list holds the literal `(none)`.

Verdict: `unknown` without a trusted header; else `pass` on DMARC pass, `fail` on DMARC fail or when
the message is unauthenticated (below), `pass` when an aligned SPF or DKIM identifier passed, `none`
otherwise.

Unauthenticated (the event becomes `message.received.unauthenticated`), from the trusted header plus
any local DKIM results: SPF is `fail` or `softfail`, no DKIM result is `pass`, and either some DKIM
result is `fail` or `permerror` (a signature that is there but does not verify), or the message carries
no DKIM result besides `none` and DMARC is `fail`. Unsigned mail with a failing SPF and no failing DMARC
is therefore not flagged: plenty of small domains send exactly that.

Alignment with the From domain is relaxed (same organisational domain) and reported as `strict` when
the domains are identical. The organisational domain is approximated without the Public Suffix List:
the last two labels, or the last three when the last two are a common two-level public suffix
(`co.uk`, `com.au`, ...). For a suffix not listed (`pvt.k12.ma.us`) two unrelated registrants look
aligned; the receiving server's own DMARC result, which takes precedence, uses the real list.

Optionally (`dkim_verify`) the DKIM signatures are verified here too with dkimpy, in a worker thread
under a DNS budget; these entries carry `"source": "local"`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gatewayd.message import MAX_HEADER_CHARS, ParsedMessage
from gatewayd.pipeline import Finding, StageContext, StageResult

log = logging.getLogger(__name__)

UNAUTHENTICATED = "message.received.unauthenticated"
# In a trusted list: also trust Authentication-Results headers that name no authserv-id.
NO_AUTHSERV_ID = "(none)"
# Headers looked at per message, signatures verified locally: a flood of them is no honest mail.
MAX_HEADERS = 20
MAX_LOCAL_SIGNATURES = 5
_MAX_TOKENS = 1000

DnsFunc = Callable[..., bytes | None]

# Scores of the symbols; anything not here scores 0. `AuthOptions.scores` overrides them.
DEFAULT_SCORES: Mapping[str, float] = {
    "SPF_PASS": -0.2,
    "SPF_FAIL": 1.0,
    "SPF_SOFTFAIL": 0.5,
    "DKIM_PASS": -0.2,
    "DKIM_FAIL": 1.0,
    "DKIM_PERMERROR": 0.5,
    "DMARC_PASS": -0.5,
    "DMARC_FAIL": 2.0,
    "NOT_ALIGNED": 0.5,
}
_RESULTS = {
    "spf": frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"}),
    "dkim": frozenset({"pass", "fail", "neutral", "none", "temperror", "permerror", "policy"}),
    "dmarc": frozenset({"pass", "fail", "none", "temperror", "permerror"}),
}
# Every symbol this stage can report, for validating `weights` in the config.
SYMBOLS = frozenset(
    {f"{method.upper()}_{result.upper()}" for method, results in _RESULTS.items() for result in results}
    | {"NOT_ALIGNED", "AUTH_RESULTS_UNTRUSTED", "AUTH_RESULTS_UNPARSABLE"}
)
# Older or vendor spellings; Gmail's and Microsoft's `bestguesspass` means no DMARC record was found.
_ALIASES = {
    "hardfail": "fail",
    "tempfail": "temperror",
    "temp-error": "temperror",
    "permfail": "permerror",
    "perm-error": "permerror",
    "bestguesspass": "none",
}
# Second-level labels under which registrants get the third level (see the module doc).
_TWO_LEVEL_SUFFIX_LIST = """
    co.uk org.uk ac.uk gov.uk me.uk ltd.uk plc.uk net.uk sch.uk nhs.uk police.uk
    com.au net.au org.au edu.au gov.au asn.au id.au co.nz net.nz org.nz ac.nz govt.nz school.nz
    co.jp ne.jp or.jp ac.jp go.jp ad.jp ed.jp gr.jp lg.jp com.br net.br org.br gov.br edu.br
    co.za org.za gov.za ac.za net.za com.cn net.cn org.cn gov.cn edu.cn ac.cn com.hk org.hk edu.hk
    com.tw org.tw edu.tw com.sg org.sg edu.sg gov.sg com.my org.my co.in net.in org.in gov.in ac.in
    co.kr or.kr ac.kr go.kr co.il org.il ac.il gov.il com.mx org.mx gob.mx com.ar gob.ar com.tr org.tr
    gov.tr co.id or.id ac.id go.id com.ua org.ua co.th ac.th go.th com.vn com.ph com.pk com.ng co.ke
    com.eg com.sa com.co com.pe com.ve com.ec com.uy com.py com.bo com.gt com.do com.pa com.pl com.es
    com.pt com.gr com.cy com.mt co.at or.at ac.at gv.at co.hu
"""
_TWO_LEVEL_SUFFIXES = frozenset(_TWO_LEVEL_SUFFIX_LIST.split())


@dataclass(frozen=True, slots=True)
class AuthOptions:
    trusted_authserv_ids: tuple[str, ...] = ()
    # Mailbox id to its trusted ids; replaces the global list for that mailbox.
    per_mailbox: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    dkim_verify: bool = False
    # Budget for all key lookups of one message together.
    dns_timeout_seconds: float = 2.0
    scores: Mapping[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Parsing Authentication-Results (RFC 8601)


@dataclass(frozen=True, slots=True)
class AuthResult:
    """One resinfo: `dkim=pass (comment) header.d=example.com header.s=sel`."""

    method: str  # lower-cased, without a method version
    result: str  # lower-cased as written
    reason: str | None
    properties: Mapping[str, str]  # lower-cased `ptype.property` (or bare vendor key) to its value
    comments: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuthResultsHeader:
    authserv_id: str | None  # None: the header names none (Microsoft 365 style)
    results: tuple[AuthResult, ...]  # empty for `none`


class UnparsableHeader(ValueError):
    pass


# Whitespace, an operator, a quoted string, or an atom; "(" is handled apart (comments nest).
_TOKEN = re.compile(r'[ \t\r\n]+|([;=])|("(?:[^"\\]|\\.)*")|([^ \t\r\n;=()"]+)', re.S)
_COMMENT_CHARS = re.compile(r"[()\\]")
_KEYWORD = re.compile(r"[a-z0-9][a-z0-9_-]*")
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_LEADING_ID = re.compile(r'\s*(?:\([^()]*\)\s*)*"?([^\s;()"=]+)"?\s*(=?)')


def _comment_end(text: str, start: int) -> int:
    depth, position = 0, start
    while True:
        match = _COMMENT_CHARS.search(text, position)
        if match is None:
            raise UnparsableHeader("unterminated comment")
        position = match.end()
        char = match.group()
        if char == "\\":
            position += 1
        elif char == "(":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return position


# One findall covers the usual header; nested comments and errors (the last group) take the slow path.
_FAST_TOKEN = re.compile(
    r'([ \t\r\n]*)(?:([;=])|("(?:[^"\\]|\\.)*")|\(((?:[^()\\]|\\.)*)\)|([^ \t\r\n;=()"]+)|(.))', re.S
)


def _tokenize(text: str) -> list[tuple[str, str]]:
    """(kind, text) with kind "v" (a value), ";", "=", or "c" (a comment's inside).

    A quoted string and an atom written without space between are one value, so a quoted local
    part (`smtp.mailfrom="a;dkim=pass"@x.example`) stays inside its property.
    """
    pieces = _FAST_TOKEN.findall(text)
    if len(pieces) > _MAX_TOKENS or any(piece[5] for piece in pieces):
        return _tokenize_slowly(text)
    tokens: list[tuple[str, str]] = []
    glued = False
    for space, operator, quoted, comment, atom, _ in pieces:
        if operator:
            tokens.append((operator, operator))
            glued = False
        elif quoted or atom:
            value = _QUOTED_PAIR.sub(r"\1", quoted[1:-1]) if quoted else atom
            if glued and not space:
                tokens[-1] = ("v", tokens[-1][1] + value)
            else:
                tokens.append(("v", value))
            glued = True
        else:
            tokens.append(("c", comment))
            glued = False
    return tokens


def _tokenize_slowly(text: str) -> list[tuple[str, str]]:
    """`_tokenize` one token at a time: nests comments, and says what is wrong."""
    tokens: list[tuple[str, str]] = []
    position, end = 0, len(text)
    glued = False  # the last token is a value the next piece of value continues
    while position < end:
        if len(tokens) > _MAX_TOKENS:
            raise UnparsableHeader("too many tokens")
        if text[position] == "(":
            stop = _comment_end(text, position)
            tokens.append(("c", text[position + 1 : stop - 1]))
            position, glued = stop, False
            continue
        match = _TOKEN.match(text, position)
        if match is None:
            raise UnparsableHeader("unterminated quoted string" if text[position] == '"' else "stray ')'")
        position = match.end()
        operator, quoted, atom = match.groups()
        if operator:
            tokens.append((operator, operator))
            glued = False
        elif quoted is not None or atom is not None:
            value = _QUOTED_PAIR.sub(r"\1", quoted[1:-1]) if quoted is not None else atom or ""
            if glued:
                tokens[-1] = ("v", tokens[-1][1] + value)
            else:
                tokens.append(("v", value))
            glued = True
        else:
            glued = False
    return tokens


def parse_authentication_results(value: str) -> AuthResultsHeader:
    """Parse one header value; raises UnparsableHeader when its structure is broken."""
    segments: list[list[tuple[str, str]]] = [[]]
    comments: list[list[str]] = [[]]
    for kind, text in _tokenize(value[:MAX_HEADER_CHARS]):
        if kind == ";":
            segments.append([])
            comments.append([])
        elif kind == "c":
            comments[-1].append(text)
        else:
            segments[-1].append((kind, text))
    head = segments[0]
    authserv_id: str | None = None
    start = 1
    if any(kind == "=" for kind, _ in head):
        start = 0  # no authserv-id: the first segment is already a result
    else:
        values = [text for _, text in head]
        if not values or not values[0]:
            raise UnparsableHeader("no authserv-id")
        if len(values) > 2 or (len(values) == 2 and values[1] != "1"):
            raise UnparsableHeader("unexpected words after the authserv-id (or an unknown version)")
        authserv_id = values[0]
    results = []
    for segment, notes in zip(segments[start:], comments[start:], strict=True):
        if not segment or (len(segment) == 1 and segment[0][1].lower() == "none"):
            continue  # an empty segment (trailing ";"), or `none`: no result
        results.append(_resinfo(segment, notes))
    return AuthResultsHeader(authserv_id, tuple(results))


def _resinfo(segment: list[tuple[str, str]], comments: list[str]) -> AuthResult:
    kinds = [kind for kind, _ in segment]
    if kinds[:3] != ["v", "=", "v"]:
        raise UnparsableHeader(f"expected method=result, got {' '.join(t for _, t in segment[:3])[:60]!r}")
    method = segment[0][1].split("/", 1)[0].strip().lower()
    result = segment[2][1].lower()
    if not _KEYWORD.fullmatch(method) or not _KEYWORD.fullmatch(result):
        raise UnparsableHeader(f"bad method or result {method[:30]!r}={result[:30]!r}")
    reason: str | None = None
    properties: dict[str, str] = {}
    i, end = 3, len(segment)
    while i < end:
        if kinds[i] == "v" and i + 1 < end and kinds[i + 1] == "=":
            key = segment[i][1].lower()
            # `key= next.key=value`: an empty value, not a value named like a key.
            if i + 2 < end and kinds[i + 2] == "v" and not (i + 3 < end and kinds[i + 3] == "="):
                text, i = segment[i + 2][1], i + 3
            else:
                text, i = "", i + 2
            if key == "reason":
                reason = text if reason is None else reason
            else:
                properties.setdefault(key, text)
        else:
            i += 1  # a stray word or "=": not RFC 8601, skipped rather than losing the header
    return AuthResult(method, result, reason, properties, tuple(comments))


def _leading_id(value: str) -> str | None:
    match = _LEADING_ID.match(value)
    if match is None:
        return None
    return NO_AUTHSERV_ID if match.group(2) else match.group(1).lower()


# Header lines searched in the raw header block, for when `ParsedMessage.headers` does not keep them.
_DKIM_SIGNATURE = re.compile(rb"^dkim-signature[ \t]*:", re.I | re.M)
_AR_HEADER = re.compile(rb"^authentication-results[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.I | re.M)


def authentication_results(message: ParsedMessage) -> list[str]:
    """The message's Authentication-Results values, topmost first."""
    values = message.headers.get("authentication-results")
    if values is not None:
        return values[:MAX_HEADERS]
    found = []
    for match in _AR_HEADER.finditer(_header_block(message.raw)):
        text = match.group(1).decode("utf-8", "replace")[:MAX_HEADER_CHARS]
        found.append(text.replace("\r", "").replace("\n", ""))
        if len(found) >= MAX_HEADERS:
            break
    return found


def _header_block(raw: bytes) -> bytes:
    ends = [end for end in (raw.find(b"\n\n"), raw.find(b"\n\r\n")) if end >= 0]
    return raw[: min(ends)] if ends else raw  # bytes.find: a regex here costs 10 µs a message


# ---------------------------------------------------------------------------------------------
# Domains and alignment


def _domain(value: str | None) -> str | None:
    """The lower-cased domain of an address, `@domain` or bare domain."""
    if not value:
        return None
    domain = value.strip().strip("<>").rsplit("@", 1)[-1].strip().rstrip(".").lower()
    return domain if domain and domain != "none" else None  # Microsoft writes `header.d=none`


def organizational_domain(domain: str) -> str:
    labels = domain.split(".")
    if len(labels) >= 3 and f"{labels[-2]}.{labels[-1]}" in _TWO_LEVEL_SUFFIXES:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def alignment(domain: str | None, from_domain: str | None) -> str | None:
    """`strict` (identical), `relaxed` (same organisational domain), "" (not aligned), None (unknown)."""
    if not domain or not from_domain:
        return None
    if domain == from_domain:
        return "strict"
    return "relaxed" if organizational_domain(domain) == organizational_domain(from_domain) else ""


def _aligned(mode: str | None) -> bool | None:
    return None if mode is None else bool(mode)


def _from_domain(data: Mapping[str, Any]) -> str | None:
    sender = data.get("from")
    address = sender.get("address") if isinstance(sender, dict) else None
    return _domain(address) if isinstance(address, str) and "@" in address else None


# ---------------------------------------------------------------------------------------------
# The stage


class AuthStage:
    name = "auth"
    provides = ("auth",)

    def __init__(self, options: AuthOptions, *, dnsfunc: DnsFunc | None = None) -> None:
        """`dnsfunc(name: bytes, timeout=seconds) -> TXT bytes | None`, as dkimpy calls it; None: DNS."""
        self.options = options
        self._global = frozenset(_normalize(options.trusted_authserv_ids))
        self._per_mailbox = {
            mailbox: frozenset(_normalize(ids)) for mailbox, ids in options.per_mailbox.items()
        }
        self._scores = {**DEFAULT_SCORES, **options.scores}
        self._dnsfunc = dnsfunc or _resolve_txt
        if options.dkim_verify:
            import dkim  # noqa: F401 - fail at startup, not on the first message

    def trusted_ids(self, mailbox_id: str | None) -> frozenset[str]:
        if mailbox_id is not None and mailbox_id in self._per_mailbox:
            return self._per_mailbox[mailbox_id]
        return self._global

    async def check(self, message: ParsedMessage, context: StageContext) -> StageResult:
        mailbox_id = context.mailbox.id if context.mailbox is not None else None
        local: list[dict[str, Any]] = []
        if self._wants_local_dkim(message):
            local = await self.verify_dkim(message.raw)
        return await asyncio.to_thread(self.evaluate, message, mailbox_id, local_dkim=local)

    def check_sync(self, message: ParsedMessage, context: StageContext) -> StageResult | None:
        """Without local DKIM work the stage is pure CPU; with it, the async path does DNS."""
        if self._wants_local_dkim(message):
            return None
        return self.evaluate(message, context.mailbox.id if context.mailbox is not None else None)

    def _wants_local_dkim(self, message: ParsedMessage) -> bool:
        return bool(
            self.options.dkim_verify
            and not message.data.get("truncated")  # a cut body can only fail its hash
            and _DKIM_SIGNATURE.search(_header_block(message.raw))
        )

    async def verify_dkim(self, raw: bytes) -> list[dict[str, Any]]:
        """Local DKIM entries for `raw`; never raises, never waits much past the DNS budget."""
        budget = self.options.dns_timeout_seconds
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(_verify_local, raw, self._dnsfunc, budget), budget + 0.5
            )
        except TimeoutError:
            # The worker thread ends on its own: every lookup it makes is bounded by the same deadline.
            return [_local_entry(None, None, "temperror", "verification timed out")]
        except Exception as exc:
            log.debug("local DKIM verification failed", exc_info=True)
            return [_local_entry(None, None, "permerror", type(exc).__name__)]

    def evaluate(
        self,
        message: ParsedMessage,
        mailbox_id: str | None,
        *,
        local_dkim: Sequence[Mapping[str, Any]] = (),
    ) -> StageResult:
        trusted_ids = self.trusted_ids(mailbox_id)
        notes: list[Finding] = []
        chosen: AuthResultsHeader | None = None
        blocked = False  # a trusted header that could not be parsed hides the ones below it
        for number, value in enumerate(authentication_results(message), 1):
            try:
                header = parse_authentication_results(value)
            except UnparsableHeader as exc:
                detail = f"header {number}: {exc}"
                if chosen is None and not blocked and _leading_id(value) in trusted_ids:
                    blocked = True
                    detail += "; its authserv-id is trusted, so the headers below it are not used"
                notes.append(self._finding("AUTH_RESULTS_UNPARSABLE", detail))
                continue
            key = header.authserv_id.lower() if header.authserv_id is not None else NO_AUTHSERV_ID
            if key in trusted_ids:
                if chosen is None and not blocked:
                    chosen = header
                continue
            claims = ", ".join(f"{r.method}={r.result}" for r in header.results[:6]) or "none"
            shown = repr(header.authserv_id[:80]) if header.authserv_id is not None else "(none)"
            notes.append(
                self._finding(
                    "AUTH_RESULTS_UNTRUSTED", f"authserv-id {shown} is not trusted; ignored ({claims})"
                )
            )
        from_domain = _from_domain(message.data)
        data, findings, unauthenticated = self._report(chosen, from_domain, local_dkim)
        findings += notes
        data["findings"] = [finding.as_dict() for finding in findings]
        return StageResult(
            data={"auth": data},
            findings=tuple(findings),
            event_type=UNAUTHENTICATED if unauthenticated else None,
        )

    def _report(
        self,
        header: AuthResultsHeader | None,
        from_domain: str | None,
        local_dkim: Sequence[Mapping[str, Any]],
    ) -> tuple[dict[str, Any], list[Finding], bool]:
        findings: list[Finding] = []
        by_method: dict[str, list[tuple[AuthResult, str]]] = {}
        for result in header.results if header else ():
            allowed = _RESULTS.get(result.method)
            if allowed is None:
                continue  # iprev, arc, bimi, compauth, vendor x-...: not reported
            normalized = _ALIASES.get(result.result, result.result)
            if normalized not in allowed:
                findings.append(
                    self._finding(
                        "AUTH_RESULTS_UNPARSABLE", f"unknown result {result.method}={result.result}"
                    )
                )
                continue
            by_method.setdefault(result.method, []).append((result, normalized))

        spf: dict[str, Any] = {"result": None, "domain": None, "aligned": None, "alignment": None}
        if "spf" in by_method:
            result, normalized = by_method["spf"][0]
            props = result.properties
            domain = _domain(props.get("smtp.mailfrom")) or _domain(props.get("smtp.helo"))
            mode = alignment(domain, from_domain)
            spf = {
                "result": normalized,
                "domain": domain,
                "aligned": _aligned(mode),
                "alignment": mode or None,
            }

        dkim: list[dict[str, Any]] = []
        for result, normalized in by_method.get("dkim", ()):
            props = result.properties
            domain = _domain(props.get("header.d")) or _domain(props.get("header.i"))
            mode = alignment(domain, from_domain)
            dkim.append(
                {
                    "result": normalized,
                    "domain": domain,
                    "selector": props.get("header.s") or None,
                    "aligned": _aligned(mode),
                    "alignment": mode or None,
                    "source": "header",
                }
            )
        for entry in local_dkim:
            mode = alignment(entry.get("domain"), from_domain)
            dkim.append({**entry, "aligned": _aligned(mode), "alignment": mode or None})

        dmarc: dict[str, Any] = {"result": None, "policy": None, "domain": None}
        if "dmarc" in by_method:
            result, normalized = by_method["dmarc"][0]
            props = result.properties
            dmarc = {
                "result": normalized,
                "policy": _dmarc_policy(result),
                "domain": _domain(props.get("header.from")),
            }

        trusted = header is not None
        spf_failed = spf["result"] in ("fail", "softfail")
        dkim_results = [entry["result"] for entry in dkim]
        dkim_passed = "pass" in dkim_results
        dkim_failed = any(r in ("fail", "permerror") for r in dkim_results)
        unsigned = all(r == "none" for r in dkim_results)
        unauthenticated = (
            trusted
            and spf_failed
            and not dkim_passed
            and (dkim_failed or (unsigned and dmarc["result"] == "fail"))
        )
        aligned_pass = (spf["result"] == "pass" and spf["aligned"]) or any(
            entry["result"] == "pass" and entry["aligned"] for entry in dkim
        )
        if not trusted:
            verdict = "unknown"
        elif dmarc["result"] == "pass":
            verdict = "pass"
        elif dmarc["result"] == "fail" or unauthenticated:
            verdict = "fail"
        else:
            verdict = "pass" if aligned_pass else "none"

        if trusted:
            findings += self._method_findings(spf, dkim, dmarc)
            if not aligned_pass and dmarc["result"] != "pass" and from_domain:
                passed = [f"spf={spf['domain']}"] if spf["result"] == "pass" else []
                passed += [f"dkim={e['domain']}" for e in dkim if e["result"] == "pass"]
                if passed:
                    detail = f"From domain {from_domain}; passed only for {', '.join(passed)}"
                    findings.append(self._finding("NOT_ALIGNED", detail))
        elif dkim:  # local results only: shown, but no verdict without the server's SPF and DMARC
            findings += self._dkim_findings(dkim)
        data = {
            "trusted": trusted,
            "authserv_id": header.authserv_id if header else None,
            "spf": spf,
            "dkim": dkim,
            "dmarc": dmarc,
            "from_domain": from_domain,
            "verdict": verdict,
        }
        return data, findings, unauthenticated

    def _method_findings(
        self, spf: Mapping[str, Any], dkim: Sequence[Mapping[str, Any]], dmarc: Mapping[str, Any]
    ) -> list[Finding]:
        spf_result = spf["result"] or "none"
        spf_detail = f"{spf['domain'] or 'no domain'}{_align_note(spf)}" if spf["result"] else "no SPF result"
        findings = [self._finding(f"SPF_{spf_result.upper()}", spf_detail)]
        findings += self._dkim_findings(dkim) or [self._finding("DKIM_NONE", "no DKIM result")]
        dmarc_result = dmarc["result"] or "none"
        if dmarc["result"]:
            policy = f", p={dmarc['policy']}" if dmarc["policy"] else ""
            dmarc_detail = f"{dmarc['domain'] or 'no domain'}{policy}"
        else:
            dmarc_detail = "no DMARC result"
        findings.append(self._finding(f"DMARC_{dmarc_result.upper()}", dmarc_detail))
        return findings

    def _dkim_findings(self, dkim: Sequence[Mapping[str, Any]]) -> list[Finding]:
        # One finding per symbol, as rspamd does: two passing signatures are not twice the evidence.
        details: dict[str, list[str]] = {}
        for entry in dkim:
            selector = f" s={entry['selector']}" if entry.get("selector") else ""
            local = "local: " if entry.get("source") == "local" else ""
            text = f"{local}{entry.get('domain') or 'no domain'}{selector}{_align_note(entry)}"
            details.setdefault(f"DKIM_{entry['result'].upper()}", []).append(text)
        return [self._finding(symbol, "; ".join(texts)) for symbol, texts in details.items()]

    def _finding(self, symbol: str, detail: str) -> Finding:
        return Finding(symbol, self._scores.get(symbol, 0.0), detail)


def _normalize(ids: Sequence[str]) -> list[str]:
    return [i.strip().lower() for i in ids if i and i.strip()]


def _align_note(entry: Mapping[str, Any]) -> str:
    mode = entry.get("alignment")
    if mode:
        return f" ({mode}ly aligned)"
    return " (not aligned)" if entry.get("aligned") is False else ""


_POLICY_IN_COMMENT = re.compile(r"(?:^|[\s,;])p=([a-z]+)", re.I)


def _dmarc_policy(result: AuthResult) -> str | None:
    """`policy.dmarc`, Fastmail's `policy.published-domain-policy`, or Gmail's `(p=REJECT ...)`."""
    props = result.properties
    policy = props.get("policy.dmarc") or props.get("policy.published-domain-policy")
    if not policy:
        for comment in result.comments:
            match = _POLICY_IN_COMMENT.search(comment)
            if match:
                policy = match.group(1)
                break
    return policy.lower() if policy else None


# ---------------------------------------------------------------------------------------------
# Local DKIM verification (dkimpy, blocking: runs in a worker thread)


def _local_entry(domain: str | None, selector: str | None, result: str, detail: str) -> dict[str, Any]:
    return {"result": result, "domain": domain, "selector": selector, "source": "local", "detail": detail}


def _resolve_txt(name: bytes, timeout: float = 5.0) -> bytes | None:
    """TXT lookup for dkimpy: None when the name has no record; raises on any DNS trouble.

    dkimpy's own lookup returns None when no server answers, which would turn an outage into a
    missing key (permerror) rather than a temperror.
    """
    import dns.rdatatype
    import dns.resolver  # dnspython: a dependency of dkimpy

    try:
        answer = dns.resolver.resolve(
            name.decode("ascii", "replace"), "TXT", lifetime=timeout, raise_on_no_answer=False
        )
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    for rrset in answer.response.answer:
        if rrset.rdtype == dns.rdatatype.TXT:
            return b"".join(next(iter(rrset)).strings)
    return None


class _KeyLookup:
    """Wraps the TXT lookup to remember why it failed: dkimpy folds DNS trouble and missing or bad
    keys into the same False as a signature that does not match."""

    def __init__(self, dnsfunc: DnsFunc, deadline: float) -> None:
        self.dnsfunc = dnsfunc
        self.deadline = deadline
        self.failure: tuple[str, str] | None = None

    def __call__(self, name: bytes, timeout: float = 5.0) -> bytes | None:
        import dkim

        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.failure = ("temperror", "DNS budget spent")
            raise dkim.DnsTimeoutError("DNS budget spent")
        try:
            txt = self.dnsfunc(name, timeout=min(timeout, remaining))
        except Exception as exc:
            self.failure = ("temperror", f"key lookup failed: {type(exc).__name__}")
            raise dkim.DnsTimeoutError(str(exc)) from exc
        if not txt:
            self.failure = ("permerror", "no key published")
            return txt
        try:
            dkim.evaluate_pk(name, txt)
        except Exception as exc:
            self.failure = ("permerror", f"bad key record: {str(exc)[:80]}")
        return txt


class _QuietLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """dkimpy logs every failing signature at error level; here that is an ordinary verdict."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


_DKIM_LOG = _QuietLog(logging.getLogger(__name__ + ".dkimpy"), {})
_TAG = re.compile(rb"(?:^|;)\s*([ds])\s*=\s*([^;\s]+)")


def _verify_local(raw: bytes, dnsfunc: DnsFunc, budget: float) -> list[dict[str, Any]]:
    import dkim

    deadline = time.monotonic() + budget
    try:
        verifier = dkim.DKIM(raw, logger=_DKIM_LOG, timeout=budget)
    except Exception as exc:  # dkimpy raises on headers it cannot split
        return [_local_entry(None, None, "permerror", f"unreadable message: {type(exc).__name__}")]
    signatures = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    entries = []
    for index, signature in enumerate(signatures[:MAX_LOCAL_SIGNATURES]):
        tags = {key.decode(): value.decode("ascii", "replace") for key, value in _TAG.findall(signature)}
        lookup = _KeyLookup(dnsfunc, deadline)
        try:
            verifier.verify_headerprep(index)  # raises on a malformed signature: no lookup for it
            if verifier.verify(index, dnsfunc=lookup):
                result, detail = "pass", "signature verified"
            else:
                result, detail = lookup.failure or ("fail", "signature does not verify")
        except dkim.ValidationError as exc:
            # Past the prep, dkimpy raises this for a body hash mismatch: an ordinary failure.
            if lookup.failure or "body hash mismatch" in str(exc):
                result, detail = lookup.failure or ("fail", "body hash mismatch")
            else:
                result, detail = "permerror", f"ValidationError: {str(exc)[:80]}"
        except Exception as exc:  # a malformed signature header: DKIMException and worse
            result, detail = "permerror", f"{type(exc).__name__}: {str(exc)[:80]}"
        entries.append(_local_entry(_domain(tags.get("d")), tags.get("s"), result, detail))
    return entries
