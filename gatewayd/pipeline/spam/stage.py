"""SpamStage: the sender lists, the checks of this package and the learning store's signals,
summed into a verdict.

The allowlist is honoured on the From address only, and the blocklist also on Reply-To and
Return-Path: whoever forges a blocked address gains nothing, while an allowlist that honoured any
header would let anyone in. From itself is forgeable too; the auth stage runs after this one, so
its verdict cannot be consulted here (a forged allowlisted From is the auth stage's finding).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gatewayd.message import ParsedMessage
from gatewayd.message.lowercase import lower
from gatewayd.pipeline import StageContext, StageResult
from gatewayd.pipeline.spam.addresses import address_of
from gatewayd.pipeline.spam.content import content_signals
from gatewayd.pipeline.spam.headers import ADDR_IN_TEXT, header_signals, raw_headers
from gatewayd.pipeline.spam.symbols import Scorer, Verdict, combine

log = logging.getLogger(__name__)


# sender_reputation["listed"]
ALLOWED, BLOCKED = "allow", "block"


class Learning(Protocol):
    """What the spam stage asks a learning store (gatewayd.pipeline.learning.LearningStore).

    Called synchronously from a worker thread, once each per message, possibly while another
    thread trains: implementations must be thread-safe and fast (well under a millisecond). A call
    that raises costs only its own findings; the heuristic verdict still comes out.
    """

    def bayes(self, message: ParsedMessage) -> float | None:
        """P(spam) in [0, 1], or None while not trained enough."""
        ...

    def signature_match(self, message: ParsedMessage) -> str | None:
        """A detail string when the body fuzzy-matches a known spam signature."""
        ...

    def reputation(self, address: str | None, mailbox_id: str | None) -> dict[str, Any]:
        """{"ham": int, "spam": int, "sent_to": bool} for a sender (per mailbox when given)."""
        ...


# The learning store of a mailbox's tenant (None: no mailbox, as in `check-message`), so that no
# tenant's reports score another's mail (TenantLearning.for_mailbox); may raise for an unknown one.
LearningFor = Callable[[str | None], Learning]


@dataclass(frozen=True, slots=True)
class SpamOptions:
    suspect_threshold: float = 5.0
    spam_threshold: float = 10.0
    # Overrides of symbol weights (see SYMBOLS); 0 disables a symbol.
    weights: Mapping[str, float] = field(default_factory=dict)
    # Sender lists: "boss@example.com", "@example.org" or "example.org" (exactly that domain), or
    # fnmatch globs such as "*@*.partner.example"; case-insensitive. The blocklist wins.
    allow: tuple[str, ...] = ()
    block: tuple[str, ...] = ()


def verdict_for(total: float, listed: str | None, options: SpamOptions) -> Verdict:
    """The sender lists decide first, whatever the score; then the thresholds (also used by
    `external.py`, which adds the external scorers' findings to the total)."""
    if listed == ALLOWED:
        return Verdict.HAM
    if listed == BLOCKED or total >= options.spam_threshold:
        return Verdict.SPAM
    if total >= options.suspect_threshold:
        return Verdict.SUSPECT
    return Verdict.HAM


# The stage's event data keys, for the stage that wraps it (gatewayd.pipeline.external) too: a
# compiled class's attribute is its instances', not the class's (setup.py).
PROVIDES = ("spam", "sender_reputation")


class SpamStage:
    """The `spam` stage: provides `spam` (verdict, score, findings, thresholds) and
    `sender_reputation` (the From address, its list, and what the learning store knows of it)."""

    name = "spam"
    provides: tuple[str, ...] = PROVIDES

    def __init__(self, options: SpamOptions, learning: LearningFor | None = None) -> None:
        self.options = options
        self.learning = learning
        self._allow = _SenderList(options.allow)
        self._block = _SenderList(options.block)

    async def check(self, message: ParsedMessage, context: StageContext) -> StageResult:
        return await asyncio.to_thread(self.check_sync, message, context)

    def check_sync(self, message: ParsedMessage, context: StageContext) -> StageResult:
        mailbox = context.mailbox
        # The configured `address` (which defaults to the IMAP username when that is an address).
        address = mailbox.address if mailbox else None
        return self.score(message, address, mailbox.id if mailbox else None)

    def score(
        self, message: ParsedMessage, mailbox_address: str | None, mailbox_id: str | None = None
    ) -> StageResult:
        """The verdict on one message; pure apart from the learning store's lookups."""
        scorer = Scorer(self.options.weights)
        sender = address_of(message.data.get("from"))
        listed = self._listed(message, sender)
        if listed == ALLOWED:
            scorer.add("ALLOWLIST", sender or "")
        elif listed == BLOCKED:
            scorer.add("BLOCKLIST", sender or "")
        heads = raw_headers(message.raw)
        header_signals(scorer, message, heads, sender, mailbox_address)
        content_signals(scorer, message, heads, sender)
        reputation = {"ham": 0, "spam": 0, "sent_to": False}
        learning = _ask(self.learning, mailbox_id) if self.learning is not None else None
        if learning is not None:
            reputation = _learning_signals(scorer, learning, message, sender, mailbox_id)

        findings = combine(scorer)
        total = sum((f.score for f in findings), 0.0)  # a float even with no findings
        options = self.options
        verdict = verdict_for(total, listed, options)
        findings = sorted(findings, key=lambda f: -abs(f.score))
        data = {
            "spam": {
                "verdict": verdict.value,
                "score": round(total, 2),
                "findings": [f.as_dict() for f in findings],
                "thresholds": {"suspect": options.suspect_threshold, "spam": options.spam_threshold},
            },
            "sender_reputation": {"address": sender, "listed": listed, **reputation},
        }
        return StageResult(data=data, findings=tuple(findings))

    def _listed(self, message: ParsedMessage, sender: str | None) -> str | None:
        if self._block:  # most deployments list nobody: no addresses to gather then
            others = [address_of(entry) for entry in message.data.get("reply_to") or []]
            return_path = (message.data.get("headers") or {}).get("return-path")
            others += ADDR_IN_TEXT.findall(return_path or "")
            if self._block.matches([sender, *others]):
                return BLOCKED
        if self._allow.matches([sender]):  # From only: see the module docstring
            return ALLOWED
        return None


class _SenderList:
    def __init__(self, patterns: Iterable[str]) -> None:
        self.exact: set[str] = set()
        self.domains: set[str] = set()
        self.globs: list[str] = []
        for pattern in patterns:
            pattern = lower(pattern.strip())
            if not pattern:
                continue
            if any(c in pattern for c in "*?["):
                self.globs.append(pattern)
            elif pattern.startswith("@"):
                self.domains.add(pattern[1:])
            elif "@" not in pattern:
                self.domains.add(pattern)  # a bare domain
            else:
                self.exact.add(pattern)

    def __bool__(self) -> bool:
        """Whether the list has any pattern."""
        return bool(self.exact or self.domains or self.globs)

    def matches(self, addresses: Iterable[str | None]) -> bool:
        for address in addresses:
            if not address:
                continue
            address = lower(address)
            if address in self.exact or address.rpartition("@")[2] in self.domains:
                return True
            if any(fnmatch.fnmatchcase(address, glob) for glob in self.globs):
                return True
        return False


def _learning_signals(
    scorer: Scorer, learning: Learning, message: ParsedMessage, sender: str | None, mailbox_id: str | None
) -> dict[str, Any]:
    """The learned signals. A failing lookup costs its own findings, never the verdict."""
    p = _ask(learning.bayes, message)
    if isinstance(p, (int, float)):
        if p > 0.99:
            scorer.add("BAYES_SPAM", f"p={p:.3f}")
        elif p > 0.9:
            scorer.add("BAYES_SPAM", f"p={p:.3f}", 0.5)
        elif p < 0.01:
            scorer.add("BAYES_HAM", f"p={p:.3f}")
        elif p < 0.1:
            scorer.add("BAYES_HAM", f"p={p:.3f}", 0.5)
    match = _ask(learning.signature_match, message)
    if match:
        scorer.add("FUZZY_SIGNATURE", str(match))
    found = _ask(learning.reputation, sender, mailbox_id)
    found = found if isinstance(found, Mapping) else {}
    ham, spam = int(found.get("ham") or 0), int(found.get("spam") or 0)
    sent_to = bool(found.get("sent_to"))
    if sent_to:
        scorer.add("REPUTATION_SENT_TO", f"mailbox wrote to {sender}")
    # Full weight from 5 messages on, times the sender's share of that label.
    if ham > spam:
        scorer.add("REPUTATION_HAM", f"{ham} ham, {spam} spam", min(ham, 5) / 5 * ham / (ham + spam))
    elif spam > ham:
        scorer.add("REPUTATION_SPAM", f"{ham} ham, {spam} spam", min(spam, 5) / 5 * spam / (ham + spam))
    return {"ham": ham, "spam": spam, "sent_to": sent_to}


def _ask(lookup: Callable[..., Any], *args: Any) -> Any:
    try:
        return lookup(*args)
    except Exception:
        log.warning("learning store lookup %s failed; scoring without it", lookup.__name__, exc_info=True)
        return None
