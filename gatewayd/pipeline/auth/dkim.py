"""Local DKIM verification (dkimpy, blocking: runs in a worker thread) under a DNS budget."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from gatewayd.message.lowercase import lower
from gatewayd.pipeline.auth.domains import domain_of

# Signatures verified locally per message: a flood of them is no honest mail.
MAX_LOCAL_SIGNATURES = 5
# Headers the event shows or the parser reads the body by. A signature covers the bottom-most copies
# of what it lists, while readers take the topmost: a copy added above a signed one is what they see.
_SHOWN_HEADERS = frozenset(
    {
        b"from", b"to", b"cc", b"reply-to", b"subject", b"date", b"message-id", b"in-reply-to",
        b"references", b"mime-version", b"content-type", b"content-transfer-encoding",
    }
)  # fmt: skip

DnsFunc = Callable[..., bytes | None]


def local_entry(domain: str | None, selector: str | None, result: str, detail: str) -> dict[str, Any]:
    return {"result": result, "domain": domain, "selector": selector, "source": "local", "detail": detail}


def resolve_txt(name: bytes, timeout: float = 5.0) -> bytes | None:
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


class _QuietLog(logging.LoggerAdapter):
    """dkimpy logs every failing signature at error level; here that is an ordinary verdict."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


_DKIM_LOG = _QuietLog(logging.getLogger(__name__ + ".dkimpy"), {})
_TAG = re.compile(rb"(?:^|;)\s*([ds])\s*=\s*([^;\s]+)")


def verify_local(raw: bytes, dnsfunc: DnsFunc, budget: float) -> list[dict[str, Any]]:
    import dkim

    deadline = time.monotonic() + budget
    try:
        verifier = dkim.DKIM(raw, logger=_DKIM_LOG, timeout=budget)
    except Exception as exc:  # dkimpy raises on headers it cannot split
        return [local_entry(None, None, "permerror", f"unreadable message: {type(exc).__name__}")]
    signatures = [value for name, value in verifier.headers if lower(name) == b"dkim-signature"]
    entries = []
    for index, signature in enumerate(signatures[:MAX_LOCAL_SIGNATURES]):
        tags = {key.decode(): value.decode("ascii", "replace") for key, value in _TAG.findall(signature)}
        lookup = _KeyLookup(dnsfunc, deadline)
        try:
            # Raises on a malformed signature: no lookup for it.
            fields, signed, _ = verifier.verify_headerprep(index)
            if verifier.verify(index, dnsfunc=lookup):
                unsigned = _unsigned_content(verifier, fields, signed)
                result, detail = ("policy", unsigned) if unsigned else ("pass", "signature verified")
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
        entries.append(local_entry(domain_of(tags.get("d")), tags.get("s"), result, detail))
    return entries


def _unsigned_content(verifier: Any, fields: dict[bytes, bytes], signed: list[bytes]) -> str | None:
    """What a verified signature leaves unsigned of what the agent is shown, if anything: body past
    its `l=` (a sender can append any text), or a shown header added above the signed copy."""
    import dkim.canonicalization

    if b"l" in fields:
        policy = dkim.canonicalization.CanonicalizationPolicy.from_c_value(fields.get(b"c", b"simple/simple"))
        length, total = int(fields[b"l"]), len(policy.canonicalize_body(verifier.body))
        if length < total:
            return f"l={length} signs {length} of {total} body bytes; the rest is unsigned"
    present: dict[bytes, int] = {}
    for name, _ in verifier.headers:
        present[name.lower()] = present.get(name.lower(), 0) + 1
    for name in dict.fromkeys(signed):
        if name in _SHOWN_HEADERS and present.get(name, 0) > signed.count(name):
            return f"an unsigned {name.decode()} header above the signed one"
    return None
