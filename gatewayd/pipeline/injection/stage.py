"""InjectionStage and its options; the scorer, and the scan of one message channel by channel."""

from __future__ import annotations

import asyncio
import codecs
import functools
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from gatewayd.message import AttachedText, ParsedMessage
from gatewayd.message import excerpt as excerpt_of
from gatewayd.pipeline import Finding, StageContext, StageResult
from gatewayd.pipeline.injection.characters import (
    BIDI,
    BIDI_OVERRIDE,
    MIXED_SCRIPT,
    NOTABLE,
    RTL_LETTER,
    TAG_RUN,
    ZW_ANY,
    ZW_IN_WORD,
    astral,
    collapse,
    fold,
    latin1,
    shown,
    snippet,
    visual_order,
)
from gatewayd.pipeline.injection.html import STRIP_TAGS, HtmlView
from gatewayd.pipeline.injection.instructions import instructions
from gatewayd.pipeline.injection.limits import (
    MAX_BLOB_CHARS,
    MAX_BLOBS,
    MAX_HTML_CHARS,
    MAX_NAMES,
    MAX_SUBJECT_CHARS,
    MAX_TEXT_CHARS,
    MAX_URLS,
)
from gatewayd.pipeline.injection.payloads import (
    BASE64_TO_A,
    DATA_PAYLOAD,
    DATA_URL,
    EXFIL_HOSTS,
    EXFIL_PATHS,
    HEX_RUN,
    HEX_TO_A,
    MARKDOWN_IMAGE,
    PLACEHOLDER,
    URL_TAIL,
    base64_blobs,
    decode_base64,
    host,
    printable_text,
)
from gatewayd.pipeline.injection.phrases import INSTRUCTION_SYMBOLS, URGENCY
from gatewayd.pipeline.injection.symbols import LEVELS, SYMBOLS

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InjectionOptions:
    # Overrides of symbol weights (see SYMBOLS), clamped to [0, 1]; 0 disables a symbol.
    weights: Mapping[str, float] = field(default_factory=dict)
    excerpt_chars: int = 500
    # (lowest score, level), highest first; a score below every bound is "none".
    levels: tuple[tuple[float, str], ...] = LEVELS


class InjectionStage:
    name = "injection"
    provides: tuple[str, ...] = ("injection", "sanitized_excerpt")

    def __init__(self, options: InjectionOptions) -> None:
        self.options = options

    async def check(self, message: ParsedMessage, context: StageContext) -> StageResult:
        return await asyncio.to_thread(self.evaluate, message)

    def check_sync(self, message: ParsedMessage, context: StageContext) -> StageResult:
        return self.evaluate(message)

    def evaluate(self, message: ParsedMessage) -> StageResult:
        """The verdict on one message. Never raises: a failing part becomes INJ_SCAN_ERROR."""
        scorer = _Scorer(self.options.weights)
        excerpt: str | None = None
        try:
            view = _Scan.of(scorer, message)
            view.run()
            excerpt = _guard(scorer, "excerpt", None, view.excerpt, self.options.excerpt_chars)
        except Exception as exc:  # a bug here must not hide a hostile message
            log.warning("injection scan failed", exc_info=True)
            scorer.add("INJ_SCAN_ERROR", f"scan: {type(exc).__name__}")
        for part in message.attached:  # attached files, forwarded messages, more inline text: usually none
            scorer.location = part.location
            _guard(scorer, "attached", None, _Scan.of_attached(scorer, part).run)
        scorer.location = None
        findings = tuple(sorted(scorer.findings.values(), key=lambda f: -f.score))
        remaining = 1.0
        for finding in findings:
            remaining *= 1.0 - finding.score
        score = round(1.0 - remaining, 3)
        level = next((name for bound, name in self.options.levels if score >= bound), "none")
        data = {
            "injection": {
                "score": score,
                "findings": [f.as_dict() for f in findings],
                "level": level,
                "not_scanned": [{"location": s.location, "reason": str(s.reason)} for s in message.skipped],
            },
            "sanitized_excerpt": excerpt,
        }
        return StageResult(data=data, findings=findings)


class _Scorer:
    def __init__(self, weights: Mapping[str, float]) -> None:
        self.weights = weights
        self.findings: dict[str, Finding] = {}
        self.location: str | None = None  # of the part being scanned, when not the message itself

    def add(self, symbol: str, detail: str, factor: float = 1.0) -> None:
        """One finding per symbol: the strongest factor wins, its detail is kept."""
        weight = min(max(float(self.weights.get(symbol, SYMBOLS[symbol][0])), 0.0), 1.0)
        score = weight * min(max(factor, 0.0), 1.0)
        current = self.findings.get(symbol)
        if score > 0 and (current is None or score > current.score):
            self.findings[symbol] = Finding(symbol, score, detail[:160], self.location)


def _url_signals(url: str) -> tuple[str, bool, bool]:
    """A link's host, whether it is an exfiltration endpoint, whether it holds a placeholder."""
    lowered = (unquote(url[:2048]) if "%" in url else url[:2048]).lower()
    hostname = host(lowered)
    exfil = hostname.endswith(EXFIL_HOSTS) or any(path in lowered for path in EXFIL_PATHS)
    return hostname, exfil, PLACEHOLDER.search(lowered.split("://", 1)[-1]) is not None


# Links repeat from mail to mail (list footers, trackers): a short one is looked at once (a long
# one is not kept: the cache stays a few MB).
_cached_url_signals = functools.lru_cache(maxsize=4096)(_url_signals)


def _guard(scorer: _Scorer, part: str, fallback: Any, run: Callable[..., Any], *args: Any) -> Any:
    """Run one part of the scan; its failure is a finding, not the loss of the others."""
    try:
        return run(*args)
    except Exception as exc:
        log.warning("injection scan part %s failed", part, exc_info=True)
        scorer.add("INJ_SCAN_ERROR", f"{part}: {type(exc).__name__}")
        return fallback


def _names(data: Mapping[str, Any]) -> str:
    """Display names and attachment file names: text the sender wrote that the event hands the agent
    (and a mail client shows), one per line."""
    entries: list[Any] = [data.get("from")]
    for key in ("reply_to", "to", "cc"):
        value = data.get(key)
        entries += value[:MAX_NAMES] if isinstance(value, list) else []
    names = [entry.get("name") for entry in entries if isinstance(entry, dict)]
    attachments = data.get("attachments")
    if isinstance(attachments, list):
        names += [item.get("filename") for item in attachments[:MAX_NAMES] if isinstance(item, dict)]
    return "\n".join(name[:MAX_SUBJECT_CHARS] for name in names if isinstance(name, str) and name)


# ---------------------------------------------------------------------------------------------
# The scan of one message


class _Scan:
    def __init__(self, scorer: _Scorer, subject: str, names: str, text: str, html: str | None) -> None:
        self.scorer = scorer
        self.subject = subject
        self.names = names
        self.text = text[:MAX_TEXT_CHARS]
        self.html = html[:MAX_HTML_CHARS] if html is not None else None
        self.view: HtmlView | None = None

    @classmethod
    def of(cls, scorer: _Scorer, message: ParsedMessage) -> _Scan:
        """The scan of the message itself: its subject, names, text body and HTML."""
        data = message.data if isinstance(message.data, dict) else None
        subject = data.get("subject") if data is not None else None
        return cls(
            scorer,
            subject[:MAX_SUBJECT_CHARS] if isinstance(subject, str) else "",
            _names(data) if data is not None else "",
            message.text if isinstance(message.text, str) else "",
            message.html if isinstance(message.html, str) else None,
        )

    @classmethod
    def of_attached(cls, scorer: _Scorer, part: AttachedText) -> _Scan:
        """The scan of an attached text file or forwarded message (its headers read as a subject)."""
        return cls(scorer, part.headers[: 2 * MAX_SUBJECT_CHARS], "", part.text, part.html)

    def run(self) -> None:
        add, guard = self.scorer.add, self._guard
        if self.html:
            self.view = guard("html", None, HtmlView, self.html)
        view = self.view
        visible = "\n".join([self.subject, self.names, self.text, view.visible_text if view else ""])
        # What a human sees: the text body may be the HTML's text with its hidden parts included
        # (the gatewayd/message/ package, where body.py chooses text versus HTML), and preview lines
        # there are padded with zero-width joiners.
        seen = "\n".join([self.subject, view.visible_text if view else self.text])
        hidden = "\n".join("".join(chunks) for chunks in view.hidden.values()) if view else ""
        comments = "\n".join(view.comments) if view else ""
        guard("characters", None, self._characters, visible, hidden, seen)
        guard("visible", None, self._channel, visible, None, None)
        guard("bidi", None, self._overridden, visible)
        if view is not None:
            guard("html-hidden", None, self._hidden_html, view)
            if comments.strip():
                comment_text = STRIP_TAGS.sub(" ", comments)  # conditional comments hold markup
                guard("comments", None, self._channel, comment_text, "INJ_COMMENT_INSTRUCTIONS", "comment")
            if view.rest.strip():  # past the token cap: scanned, but we cannot tell visible from hidden
                guard("html-rest", None, self._channel, view.rest, None, None)
            for tag in view.fake_tags[:1]:
                add("INJ_FAKE_TOOL_MARKUP", f"tag {snippet(tag)!r} in the HTML")
        attributes = "".join(view.attributes) if view else ""
        everything = "\n".join([visible, hidden, comments, attributes])
        guard("encoded", None, self._encoded, everything)
        guard("urls", None, self._urls, visible, view.urls if view else [])
        guard("requests", None, self._requests, visible)

    def _guard(self, part: str, fallback: Any, run: Callable[..., Any], *args: Any) -> Any:
        return _guard(self.scorer, part, fallback, run, *args)

    def _channel(self, text: str, meta: str | None, where: str | None) -> dict[str, str]:
        """Scan one channel; outside the visible one an instruction adds the channel's `meta` symbol."""
        hits = instructions(text)
        for symbol, hit in hits.items():
            self.scorer.add(symbol, f"{where}: {hit!r}" if where else repr(hit))
        if meta is not None:
            strong = [s for s in hits if s in INSTRUCTION_SYMBOLS]
            if strong:
                self.scorer.add(meta, f"{where}: {hits[strong[0]]!r}")
        return hits

    def _hidden_html(self, view: HtmlView) -> None:
        by_symbol: dict[str, list[tuple[str, int, str]]] = {}
        for reason, chunks in view.hidden.items():
            text = "".join(chunks)
            amount = len("".join(text.split()))
            if amount < 10:  # spacers and stray punctuation
                continue
            symbol = (
                "INJ_TINY_FONT" if reason == "tiny font"
                else "INJ_INVISIBLE_COLOR" if reason in ("same colour as background", "transparent text")
                else "INJ_HIDDEN_TEXT"
            )  # fmt: skip
            by_symbol.setdefault(symbol, []).append((reason, amount, text))
            self._channel(text, "INJ_HIDDEN_INSTRUCTIONS", f"hidden ({reason})")
        for symbol, parts in by_symbol.items():
            amount = sum(part[1] for part in parts)
            reasons = ", ".join(part[0] for part in parts)
            # Short hidden text is what legitimate newsletters hide (the inbox preview line).
            detail = f"{reasons}: {amount} chars: {snippet(parts[0][2])!r}"
            self.scorer.add(symbol, detail, 1.0 if amount >= 150 else 0.5)
        if view.attributes:
            self._channel("".join(view.attributes), "INJ_HIDDEN_INSTRUCTIONS", "hidden (attribute)")

    def _characters(self, visible: str, hidden: str, seen: str) -> None:
        """Zero-width characters inside words anywhere, or many of them where a human looks; bidi
        controls; tag characters; words mixing scripts."""
        if astral(visible) or astral(hidden):
            self._tag_characters(visible + "\n" + hidden)
        if visible.isascii():
            return
        notable = not latin1(visible) and NOTABLE.search(visible) is not None
        in_word = sum(len(m.group(0)) for m in ZW_IN_WORD.finditer(visible)) if notable else 0
        # `seen` is made of parts of `visible`: no zero-width character there when none is notable here.
        total = len(ZW_ANY.findall(seen)) if notable else 0
        if in_word:
            detail = f"{total} zero-width characters, {in_word} inside words"
            self.scorer.add("INJ_ZERO_WIDTH", detail, 0.4 + in_word / 10)
        elif total >= 10:
            self.scorer.add("INJ_ZERO_WIDTH", f"{total} zero-width characters", 0.3)
        if not notable:
            return
        bidi = BIDI_OVERRIDE if RTL_LETTER.search(visible) else BIDI
        controls = len(bidi.findall(visible))
        if controls:
            self.scorer.add("INJ_BIDI_CONTROL", f"{controls} bidi control characters", 0.5 + controls / 4)
        mixed = MIXED_SCRIPT.search(visible)
        if mixed:
            around = visible[max(mixed.start() - 12, 0) : mixed.end() + 12]
            self.scorer.add("INJ_MIXED_SCRIPT", repr(snippet(around)))

    def _overridden(self, visible: str) -> None:
        """Text a right-to-left override shows reversed: scanned as it reads on screen."""
        reordered = visual_order(visible)
        if reordered == visible:
            return
        before = instructions(visible)
        hits = self._channel(reordered, None, "bidi override")
        masked = [s for s in hits if s in INSTRUCTION_SYMBOLS and s not in before]
        if masked:
            self.scorer.add("INJ_OBFUSCATED", f"bidi override: {hits[masked[0]]!r}")

    def _tag_characters(self, text: str) -> None:
        """Unicode tag characters spell invisible ASCII: decode it and scan it as hidden text."""
        smuggled: list[str] = []
        for count, match in enumerate(TAG_RUN.finditer(text)):
            if count >= 1000:
                break
            run = match.group(0)
            # Emoji subdivision flags: U+1F3F4, a few tag letters, U+E007F.
            if text[match.start() - 1 : match.start()] == "\U0001f3f4" and len(run) <= 8:
                continue
            smuggled.append("".join(chr(ord(c) - 0xE0000) for c in run if 0xE0020 <= ord(c) <= 0xE007E))
        if smuggled:
            decoded = " ".join(smuggled)
            self.scorer.add(
                "INJ_TAG_CHARS", f"{sum(map(len, smuggled))} tag characters: {snippet(decoded)!r}"
            )
            self._channel(decoded, "INJ_HIDDEN_INSTRUCTIONS", "hidden (tag characters)")

    def _encoded(self, text: str) -> None:
        decoded: list[str] = []
        data = text.encode("utf-8", "replace")
        if b"a" * 60 in data.translate(BASE64_TO_A):
            for blob in base64_blobs(text):
                plain = decode_base64(blob)
                if plain:
                    decoded.append(plain)
            hex_runs = HEX_RUN.finditer(text) if b"a" * 80 in data.translate(HEX_TO_A) else ()
            for count, match in enumerate(hex_runs):
                if count >= MAX_BLOBS:
                    break
                hex_digits = match.group(0)[:MAX_BLOB_CHARS]
                plain = printable_text(bytes.fromhex(hex_digits[: len(hex_digits) // 2 * 2]))
                if plain:
                    decoded.append(plain)
        if decoded:
            self.scorer.add("INJ_BASE64_TEXT", f"{len(decoded)} blob(s), e.g. {snippet(decoded[0])!r}")
        if "13" in text and any(hint in text for hint in ("rot13", "ROT13", "Rot13", "rot-13", "ROT-13")):
            decoded.append(codecs.encode(text[:MAX_TEXT_CHARS], "rot13"))
        if "data:" in text or "DATA:" in text:
            for count, match in enumerate(DATA_URL.finditer(text)):
                if count >= MAX_BLOBS:
                    break
                decoded += self._data_url(match, text)
        if decoded:
            self._channel("\n".join(decoded)[:MAX_TEXT_CHARS], "INJ_ENCODED_INSTRUCTIONS", "decoded")

    def _data_url(self, match: re.Match[str], text: str) -> list[str]:
        mime, params = match.group(1).lower(), match.group(2).lower()
        if mime.startswith(("image/", "audio/", "video/", "font/")):
            return []
        self.scorer.add("INJ_DATA_URL", f"data:{mime}")
        payload = DATA_PAYLOAD.match(text, match.end())
        if not payload:
            return []
        if "base64" in params:
            plain = decode_base64(unquote(payload.group(0)))
            return [plain] if plain else []
        return [unquote(payload.group(0))]

    def _urls(self, visible: str, html_urls: list[str]) -> None:
        urls = [m.group(0) for _, m in zip(range(MAX_URLS), URL_TAIL.finditer(visible), strict=False)]
        urls += html_urls[:MAX_URLS]
        if "![" in visible:
            for match in MARKDOWN_IMAGE.finditer(visible):
                if "?" in match.group(1):
                    self.scorer.add("INJ_MARKDOWN_IMAGE", repr(snippet(match.group(0))))
                    break
        # A repeated URL adds nothing: every finding here has factor 1, so a repeat never replaces one.
        for url in dict.fromkeys(urls):
            if url.lower().startswith("data:"):
                data = DATA_URL.match(url)
                if data:
                    decoded = self._data_url(data, url)
                    if decoded:
                        self._channel("\n".join(decoded), "INJ_ENCODED_INSTRUCTIONS", "decoded data: URL")
                continue
            signals = _cached_url_signals if len(url) <= 512 else _url_signals
            hostname, exfil, placeholder = signals(url)
            if exfil:
                self.scorer.add("INJ_EXFIL_ENDPOINT", f"link to {hostname}")
            if placeholder:
                self.scorer.add("INJ_EXFIL_URL", repr(snippet(url)))

    def _requests(self, visible: str) -> None:
        """Urgency only counts on top of a request for credentials or money."""
        findings = self.scorer.findings
        if "INJ_CREDENTIAL_REQUEST" not in findings and "INJ_MONEY_REQUEST" not in findings:
            return
        urgent = URGENCY.search(collapse(fold(visible)))
        if urgent:
            self.scorer.add("INJ_URGENT_REQUEST", repr(snippet(urgent.group(0))))

    def excerpt(self, limit: int) -> str | None:
        """About `limit` characters of what a human sees, cut at a word boundary."""
        if limit <= 0:
            return None
        source = self.view.visible_text if self.view is not None else ""
        if source.isspace() or not source:
            source = self.text
        return excerpt_of(visual_order(source), limit, shown)
