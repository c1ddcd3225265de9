"""Local DKIM verification (dkimpy, blocking: runs in a worker thread) under a DNS budget."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from gatewayd.pipeline.auth.domains import domain_of

# Signatures verified locally per message: a flood of them is no honest mail.
MAX_LOCAL_SIGNATURES = 5

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
        entries.append(local_entry(domain_of(tags.get("d")), tags.get("s"), result, detail))
    return entries
