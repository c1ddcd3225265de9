"""AuthStage: the trusted Authentication-Results header and any local DKIM results, reported as
findings and a verdict; AuthOptions and the symbols' scores."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gatewayd.config import MailboxConfig
from gatewayd.message import ParsedMessage
from gatewayd.message.lowercase import lower
from gatewayd.pipeline import Finding, StageContext, StageResult
from gatewayd.pipeline.auth.dkim import DnsFunc, local_entry, resolve_txt, verify_local
from gatewayd.pipeline.auth.domains import aligned, alignment, domain_of, from_domain_of, from_domains
from gatewayd.pipeline.auth.lookalike import NO_PROTECTED, ProtectedDomains, display_name_domain
from gatewayd.pipeline.auth.results import (
    DKIM_SIGNATURE,
    NO_AUTHSERV_ID,
    AuthResult,
    AuthResultsHeader,
    UnparsableHeader,
    authentication_results,
    header_lines,
    leading_id,
    parse_authentication_results,
)

log = logging.getLogger(__name__)

UNAUTHENTICATED = "message.received.unauthenticated"

# Scores of the symbols; anything not here scores 0. `AuthOptions.scores` overrides them.
DEFAULT_SCORES: Mapping[str, float] = {
    "SPF_PASS": -0.2,
    "SPF_FAIL": 1.0,
    "SPF_SOFTFAIL": 0.5,
    "DKIM_PASS": -0.2,
    "DKIM_FAIL": 1.0,
    "DKIM_PERMERROR": 0.5,
    "DKIM_POLICY": 0.5,
    "DMARC_PASS": -0.5,
    "DMARC_FAIL": 2.0,
    "NOT_ALIGNED": 0.5,
    "FROM_MULTIPLE_DOMAINS": 1.0,
    "FROM_LOOKALIKE_DOMAIN": 2.0,
    "FROM_DISPLAY_NAME_ADDRESS": 1.0,
}
_RESULTS = {
    "spf": frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"}),
    "dkim": frozenset({"pass", "fail", "neutral", "none", "temperror", "permerror", "policy"}),
    "dmarc": frozenset({"pass", "fail", "none", "temperror", "permerror"}),
}
# Every symbol this stage can report, for validating `weights` in the config.
SYMBOLS = frozenset(
    {f"{method.upper()}_{result.upper()}" for method, results in _RESULTS.items() for result in results}
    | {"NOT_ALIGNED", "FROM_MULTIPLE_DOMAINS", "AUTH_RESULTS_UNTRUSTED", "AUTH_RESULTS_UNPARSABLE"}
    | {"FROM_LOOKALIKE_DOMAIN", "FROM_DISPLAY_NAME_ADDRESS"}
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


@dataclass(frozen=True, slots=True)
class AuthOptions:
    trusted_authserv_ids: tuple[str, ...] = ()
    # Mailbox id to its trusted ids; replaces the global list for that mailbox.
    per_mailbox: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    dkim_verify: bool = False
    # Budget for all key lookups of one message together.
    dns_timeout_seconds: float = 2.0
    scores: Mapping[str, float] = field(default_factory=dict)
    # Domains no From may look like, for every mailbox (besides each one's own and correspondents').
    protected_domains: tuple[str, ...] = ()


class Correspondents(Protocol):
    """What the auth stage asks a learning store (gatewayd.pipeline.learning.LearningStore)."""

    def correspondent_domains(self, mailbox_id: str | None) -> frozenset[str]:
        """Domains the mailbox wrote to or got ham from; the same object while unchanged, and fast
        then (it is asked for every message)."""
        ...


# The learning store of a mailbox's tenant (see spam.stage.LearningFor); may raise for an unknown one.
CorrespondentsFor = Callable[[str | None], Correspondents]


class AuthStage:
    name = "auth"
    provides: tuple[str, ...] = ("auth",)

    def __init__(
        self,
        options: AuthOptions,
        *,
        dnsfunc: DnsFunc | None = None,
        learning: CorrespondentsFor | None = None,
    ) -> None:
        """`dnsfunc(name: bytes, timeout=seconds) -> TXT bytes | None`, as dkimpy calls it; None: DNS.
        `learning`: whom each mailbox corresponds with, for lookalike domains; None: nobody."""
        self.options = options
        self._global = frozenset(_normalize(options.trusted_authserv_ids))
        self._per_mailbox = {
            mailbox: frozenset(_normalize(ids)) for mailbox, ids in options.per_mailbox.items()
        }
        self._scores = {**DEFAULT_SCORES, **options.scores}
        self._dnsfunc = dnsfunc or resolve_txt
        if options.dkim_verify:
            import dkim  # noqa: F401 - fail at startup, not on the first message
        self._learning = learning
        # Mailbox id -> (its config and correspondents it was prepared from, its protected domains).
        self._protected: dict[str | None, tuple[MailboxConfig | None, frozenset[str], ProtectedDomains]] = {}

    def trusted_ids(self, mailbox_id: str | None) -> frozenset[str]:
        if mailbox_id is not None and mailbox_id in self._per_mailbox:
            return self._per_mailbox[mailbox_id]
        return self._global

    def protected_domains(self, mailbox: MailboxConfig | None) -> ProtectedDomains:
        """The mailbox's own domains, the configured ones and its correspondents', prepared again
        only when the learning store's answer changed."""
        mailbox_id = mailbox.id if mailbox is not None else None
        learnt: frozenset[str] = frozenset()
        if self._learning is not None:
            try:
                learnt = self._learning(mailbox_id).correspondent_domains(mailbox_id)
            except Exception:  # the own and configured domains are still protected
                log.warning("reading the correspondents of %s failed", mailbox_id, exc_info=True)
        cached = self._protected.get(mailbox_id)
        if cached is not None and cached[0] is mailbox and cached[1] is learnt:
            return cached[2]
        own = (mailbox.address, mailbox.imap.username) if mailbox is not None else ()
        domains = (*own, *self.options.protected_domains, *learnt)
        protected = ProtectedDomains(domains) if domains else NO_PROTECTED
        self._protected[mailbox_id] = (mailbox, learnt, protected)
        return protected

    async def check(self, message: ParsedMessage, context: StageContext) -> StageResult:
        mailbox_id = context.mailbox.id if context.mailbox is not None else None
        local: list[dict[str, Any]] = []
        if self._wants_local_dkim(message):
            local = await self.verify_dkim(message.raw)
        protected = self.protected_domains(context.mailbox)
        return await asyncio.to_thread(
            self.evaluate, message, mailbox_id, local_dkim=local, protected=protected
        )

    def check_sync(self, message: ParsedMessage, context: StageContext) -> StageResult | None:
        """Without local DKIM work the stage is pure CPU; with it, the async path does DNS."""
        if self._wants_local_dkim(message):
            return None
        mailbox = context.mailbox
        protected = self.protected_domains(mailbox)
        return self.evaluate(message, mailbox.id if mailbox is not None else None, protected=protected)

    def _wants_local_dkim(self, message: ParsedMessage) -> bool:
        return bool(
            self.options.dkim_verify
            and not message.data.get("truncated")  # a cut body can only fail its hash
            and DKIM_SIGNATURE.search(header_lines(message.raw))
        )

    async def verify_dkim(self, raw: bytes) -> list[dict[str, Any]]:
        """Local DKIM entries for `raw`; never raises, never waits much past the DNS budget."""
        budget = self.options.dns_timeout_seconds
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(verify_local, raw, self._dnsfunc, budget), budget + 0.5
            )
        except TimeoutError:
            # The worker thread ends on its own: every lookup it makes is bounded by the same deadline.
            return [local_entry(None, None, "temperror", "verification timed out")]
        except Exception as exc:
            log.debug("local DKIM verification failed", exc_info=True)
            return [local_entry(None, None, "permerror", type(exc).__name__)]

    def evaluate(
        self,
        message: ParsedMessage,
        mailbox_id: str | None,
        *,
        local_dkim: Sequence[Mapping[str, Any]] = (),
        protected: ProtectedDomains = NO_PROTECTED,
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
                if chosen is None and not blocked and leading_id(value) in trusted_ids:
                    blocked = True
                    detail += "; its authserv-id is trusted, so the headers below it are not used"
                notes.append(self._finding("AUTH_RESULTS_UNPARSABLE", detail))
                continue
            key = lower(header.authserv_id) if header.authserv_id is not None else NO_AUTHSERV_ID
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
        from_domain = from_domain_of(message.data)
        data, findings, unauthenticated = self._report(chosen, from_domain, local_dkim)
        # Two From domains (two addresses, or two From headers): the receiving server authenticated
        # one of them at most, and which one the agent's mail client shows is anyone's guess.
        from_headers = message.headers.get("from", [])
        # Two domains need two "@": the address parsing is skipped for nearly every message.
        several = len(from_headers) > 1 or any(header.count("@") > 1 for header in from_headers)
        domains = from_domains(from_headers) if several else []
        if len(domains) > 1:
            if data["verdict"] == "pass":
                data["verdict"] = "none"
            notes.insert(0, self._finding("FROM_MULTIPLE_DOMAINS", f"From names {', '.join(domains[:4])}"))
        data["impersonation"] = self._impersonation(message, from_domain, protected, notes)
        findings += notes
        data["findings"] = [finding.as_dict() for finding in findings]
        return StageResult(
            data={"auth": data},
            findings=tuple(findings),
            event_type=UNAUTHENTICATED if unauthenticated else None,
        )

    def _impersonation(
        self,
        message: ParsedMessage,
        from_domain: str | None,
        protected: ProtectedDomains,
        notes: list[Finding],
    ) -> list[dict[str, str]]:
        """Lookalike From domains and display names naming another domain, whatever SPF, DKIM and
        DMARC said: they authenticate the domain, not the reader's reading of it. The verdict
        stays; rules act on these findings (`auth: {findings: ...}`)."""
        found: list[dict[str, str]] = []
        lookalike = protected.resembled(from_domain)
        if lookalike is not None:
            how = "embeds" if lookalike.embedded else "resembles"
            detail = f"{lookalike.domain} {how} {lookalike.resembles}"
            notes.append(self._finding("FROM_LOOKALIKE_DOMAIN", detail))
            found.append({"symbol": "FROM_LOOKALIKE_DOMAIN", **lookalike.as_dict()})
        sender = message.data.get("from")
        name = sender.get("name") if isinstance(sender, dict) else None
        named = display_name_domain(name, from_domain) if isinstance(name, str) else None
        if named is not None:
            detail = f"display name names {named.resembles}, the From is at {named.domain}"
            notes.append(self._finding("FROM_DISPLAY_NAME_ADDRESS", detail))
            found.append({"symbol": "FROM_DISPLAY_NAME_ADDRESS", **named.as_dict()})
        return found

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
            domain = domain_of(props.get("smtp.mailfrom")) or domain_of(props.get("smtp.helo"))
            mode = alignment(domain, from_domain)
            spf = {
                "result": normalized,
                "domain": domain,
                "aligned": aligned(mode),
                "alignment": mode or None,
            }

        dkim: list[dict[str, Any]] = []
        for result, normalized in by_method.get("dkim", ()):
            props = result.properties
            domain = domain_of(props.get("header.d")) or domain_of(props.get("header.i"))
            mode = alignment(domain, from_domain)
            dkim.append(
                {
                    "result": normalized,
                    "domain": domain,
                    "selector": props.get("header.s") or None,
                    "aligned": aligned(mode),
                    "alignment": mode or None,
                    "source": "header",
                }
            )
        for entry in local_dkim:
            mode = alignment(entry.get("domain"), from_domain)
            dkim.append({**entry, "aligned": aligned(mode), "alignment": mode or None})

        dmarc: dict[str, Any] = {"result": None, "policy": None, "domain": None}
        dmarc_result: str | None = None  # the result when it is about the From domain (see below)
        if "dmarc" in by_method:
            result, normalized = by_method["dmarc"][0]
            props = result.properties
            dmarc = {
                "result": normalized,
                "policy": _dmarc_policy(result),
                "domain": domain_of(props.get("header.from")),
            }
            # A result for another domain than the From shown (a second From header or address the
            # server looked at instead) says nothing about this sender.
            if dmarc["domain"] is None or dmarc["domain"] == from_domain:
                dmarc_result = normalized

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
        elif unauthenticated:  # before DMARC: a "pass" beside failing SPF and DKIM contradicts them
            verdict = "fail"
        elif dmarc_result == "pass":
            verdict = "pass"
        elif dmarc_result == "fail":
            verdict = "fail"
        else:
            verdict = "pass" if aligned_pass else "none"

        if trusted:
            findings += self._method_findings(spf, dkim, dmarc, dmarc_result)
            if not aligned_pass and dmarc_result != "pass" and from_domain:
                passed = [f"spf={spf['domain']}"] if spf["result"] == "pass" else []
                passed += [f"dkim={e['domain']}" for e in dkim if e["result"] == "pass"]
                passed += [f"dmarc={dmarc['domain']}"] if dmarc["result"] == "pass" else []
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
        self,
        spf: Mapping[str, Any],
        dkim: Sequence[Mapping[str, Any]],
        dmarc: Mapping[str, Any],
        dmarc_result: str | None,
    ) -> list[Finding]:
        spf_result = spf["result"] or "none"
        spf_detail = f"{spf['domain'] or 'no domain'}{_align_note(spf)}" if spf["result"] else "no SPF result"
        findings = [self._finding(f"SPF_{spf_result.upper()}", spf_detail)]
        findings += self._dkim_findings(dkim) or [self._finding("DKIM_NONE", "no DKIM result")]
        if dmarc_result:
            policy = f", p={dmarc['policy']}" if dmarc["policy"] else ""
            dmarc_detail = f"{dmarc['domain'] or 'no domain'}{policy}"
        elif dmarc["result"]:
            dmarc_detail = f"none for the From domain; {dmarc['result']} for {dmarc['domain']}"
        else:
            dmarc_detail = "no DMARC result"
        findings.append(self._finding(f"DMARC_{(dmarc_result or 'none').upper()}", dmarc_detail))
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
    return [lower(i.strip()) for i in ids if i and i.strip()]


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
    return lower(policy) if policy else None
