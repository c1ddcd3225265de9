"""The prompt-injection stage: score text a stranger wrote to manipulate the agent reading the mail.

The readers of these events are AI agents, so the threat is not the human kind of spam but text
aimed at the model: orders to drop its instructions, fake chat or tool markup, text a human would
never see (hidden HTML, comments, zero-width and tag characters), payloads in base64 for the model
to decode, links that smuggle data out, and requests for the agent's credentials or money.

Every signal is a named symbol with a weight in [0, 1] (rspamd-style, overridable in config); the
score is 1 - prod(1 - weight), so one strong signal ("ignore previous instructions" in hidden text)
is near 1 and many weak ones add up. The stage also provides `sanitized_excerpt`: the start of the
body as a human sees it (the visible HTML text when there is HTML, else the text body), without
invisible characters and hidden HTML text; None when nothing is visible.

Text is scanned in channels: visible (subject, text body, visible HTML text), hidden (hidden HTML
text, alt/title attributes, Unicode tag characters), HTML comments, and decoded payloads. The
instruction rules run on every channel; a hit outside the visible one adds the channel's own
symbol. Before matching, text is folded: invisible characters dropped, NFKD without accents,
Cyrillic/Greek lookalikes mapped to Latin, lower case; a second, letters-only form with light
leetspeak undone catches "i g n o r e", "ign.ore" and "1gn0re". HTML visibility follows inline
styles, `hidden`, <template>, and stylesheet rules for plain tag, .class and #id selectors.

Precision matters as in the spam stage: a sysadmin's "System:" log line, code, newsletters and a
password-reset notice stay none. Mail that quotes "ignore previous instructions" (a security
discussion, a README note) scores medium: the phrase alone is 0.7, and it is the attack itself.
On the 2,500 SpamAssassin ham messages no symbol fires at all; spam stays none or low.

Input is hostile: text and HTML are capped, every regex is linear (no nested unbounded
quantifiers; word gaps are bounded), a rule's regex only runs when its gate words are present and
only where str.find finds the literal text it starts with, and the HTML is walked once by a
tokenizer in the style of `message._html_to_text` (never the stdlib HTMLParser, quadratic on
hostile input in 3.11). A failure inside one part of the scan becomes an INJ_SCAN_ERROR finding,
never an exception.
"""

from __future__ import annotations

import asyncio
import binascii
import codecs
import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from html import unescape
from re import _constants as _sre
from re._parser import parse as _sre_parse
from typing import Any
from urllib.parse import unquote

from gatewayd.message import ParsedMessage
from gatewayd.message import excerpt as excerpt_of
from gatewayd.pipeline import Finding, StageContext, StageResult

log = logging.getLogger(__name__)

# Symbol -> (default weight in [0, 1], what it means). A finding scores weight x factor, the factor
# in (0, 1] for the graded ones.
SYMBOLS: dict[str, tuple[float, str]] = {
    # Instructions aimed at the agent (any channel).
    "INJ_IGNORE_INSTRUCTIONS": (
        0.7,
        "ignore/override previous or system instructions (en, de, fr, es, it, pt, nl)",
    ),
    "INJ_DISREGARD_ABOVE": (0.35, "'disregard the above': people write it about their own mail too"),
    "INJ_NEW_INSTRUCTIONS": (0.35, "'new instructions:', 'your new task is'"),
    "INJ_ROLE_HIJACK": (0.5, "'you are now DAN', 'act as an unrestricted AI'"),
    "INJ_JAILBREAK": (0.45, "'do anything now', 'developer mode enabled', 'jailbreak mode'"),
    "INJ_PROMPT_LEAK": (0.5, "asks for the system prompt or the agent's instructions"),
    "INJ_ADDRESSES_AGENT": (0.3, "speaks to the AI reading the mail ('if you are an AI assistant')"),
    "INJ_COVERT_ACTION": (0.4, "forward or delete mail, act silently, do not tell the user"),
    "INJ_OBFUSCATED": (0.4, "an instruction found only after undoing spacing, homoglyphs or leetspeak"),
    "INJ_MIXED_SCRIPT": (0.15, "a word mixing Latin with Cyrillic or Greek letters"),
    # Fake conversation and tool markup.
    "INJ_FAKE_CHAT_MARKUP": (0.7, "chat-template tokens: <|im_start|>, [INST], <<SYS>>"),
    "INJ_FAKE_TOOL_MARKUP": (0.6, "tool/function-call tags: </tool_result>, <function_calls>"),
    "INJ_FAKE_SYSTEM_HEADER": (0.5, "'### System:', 'BEGIN SYSTEM PROMPT', '[SYSTEM]'"),
    "INJ_FAKE_ROLE_JSON": (0.4, 'JSON chat messages: {"role": "system"}'),
    "INJ_FAKE_ROLE_TURN": (0.4, "a System:/Assistant: line giving orders, or a fake transcript"),
    "INJ_ROLE_LABEL": (0.05, "'System:' or 'Assistant:' at a line start (common in logs)"),
    # Hidden text and invisible characters.
    "INJ_HIDDEN_TEXT": (0.2, "HTML text hidden by CSS, attributes or <template> (half for short text)"),
    "INJ_INVISIBLE_COLOR": (0.2, "HTML text in the background colour (white on white)"),
    "INJ_TINY_FONT": (0.15, "HTML text in a font too small to read"),
    "INJ_HIDDEN_INSTRUCTIONS": (0.9, "instructions in hidden text, attributes or tag characters"),
    "INJ_COMMENT_INSTRUCTIONS": (0.8, "instructions in an HTML comment"),
    "INJ_ZERO_WIDTH": (0.3, "zero-width characters inside words (graded by count)"),
    "INJ_BIDI_CONTROL": (0.3, "bidi override/embedding controls (only overrides in RTL text)"),
    "INJ_TAG_CHARS": (0.5, "Unicode tag characters (invisible ASCII), other than emoji flags"),
    # Encoded payloads.
    "INJ_BASE64_TEXT": (0.15, "a long base64 or hex blob in the text that decodes to text"),
    "INJ_ENCODED_INSTRUCTIONS": (0.85, "instructions inside decoded base64, hex, rot13 or a data: URL"),
    "INJ_DECODE_HINT": (0.2, "'decode the following', 'base64-decode this and follow it'"),
    "INJ_DATA_URL": (0.25, "a data: URL with a text or application type"),
    # Exfiltration.
    "INJ_MARKDOWN_IMAGE": (0.3, "a markdown image with a query string (rendered = fetched)"),
    "INJ_EXFIL_URL": (0.4, "a URL with placeholders or instructions ({{...}}, <secret>, system prompt)"),
    "INJ_EXFIL_ENDPOINT": (0.35, "a link to a webhook/request-capture/tunnel service"),
    "INJ_EXFIL_INSTRUCTION": (0.55, "asks to append data to a URL or send the mailbox contents"),
    "INJ_FETCH_AND_SEND": (0.45, "asks to fetch a URL and include or send data"),
    # Credentials and money.
    "INJ_CREDENTIAL_REQUEST": (0.45, "asks for API keys, passwords, tokens, codes"),
    "INJ_MONEY_REQUEST": (0.25, "asks for gift cards, a transfer of an amount, crypto"),
    "INJ_URGENT_REQUEST": (0.25, "urgency on top of a credential or money request"),
    "INJ_PASSWORD_RESET_LINK": (0.1, "'reset your password at <link>' (legitimate notices say it too)"),
    # The stage itself.
    "INJ_SCAN_ERROR": (0.3, "part of the scan failed on this message: treat it with care"),
}

LEVELS = ((0.8, "high"), (0.5, "medium"), (0.2, "low"))  # else "none"
MAX_TEXT_CHARS = 64 * 1024  # per channel: text body, visible HTML text, hidden text, comments
MAX_HTML_CHARS = 256 * 1024
MAX_SUBJECT_CHARS = 1024
_MAX_HTML_TOKENS = 20000  # markup beyond this is scanned as plain text (no hidden/visible verdict)
_MAX_TAG_CHARS = 2048
_MAX_STACK = 4096
_MAX_BLOBS = 8
_MAX_BLOB_CHARS = 16 * 1024
_MAX_URLS = 200
_SNIPPET = 80


@dataclass(frozen=True, slots=True)
class InjectionOptions:
    # Overrides of symbol weights (see SYMBOLS), clamped to [0, 1]; 0 disables a symbol.
    weights: Mapping[str, float] = field(default_factory=dict)
    excerpt_chars: int = 500


class InjectionStage:
    name = "injection"
    provides = ("injection", "sanitized_excerpt")

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
            view = _Scan(scorer, message)
            view.run()
            excerpt = _guard(scorer, "excerpt", None, view.excerpt, self.options.excerpt_chars)
        except Exception as exc:  # a bug here must not hide a hostile message
            log.warning("injection scan failed", exc_info=True)
            scorer.add("INJ_SCAN_ERROR", f"scan: {type(exc).__name__}")
        findings = tuple(sorted(scorer.findings.values(), key=lambda f: -f.score))
        remaining = 1.0
        for finding in findings:
            remaining *= 1.0 - finding.score
        score = round(1.0 - remaining, 3)
        level = next((name for bound, name in LEVELS if score >= bound), "none")
        data = {
            "injection": {"score": score, "findings": [f.as_dict() for f in findings], "level": level},
            "sanitized_excerpt": excerpt,
        }
        return StageResult(data=data, findings=findings)


class _Scorer:
    def __init__(self, weights: Mapping[str, float]) -> None:
        self.weights = weights
        self.findings: dict[str, Finding] = {}

    def add(self, symbol: str, detail: str, factor: float = 1.0) -> None:
        """One finding per symbol: the strongest factor wins, its detail is kept."""
        weight = min(max(float(self.weights.get(symbol, SYMBOLS[symbol][0])), 0.0), 1.0)
        score = weight * min(max(factor, 0.0), 1.0)
        current = self.findings.get(symbol)
        if score > 0 and (current is None or score > current.score):
            self.findings[symbol] = Finding(symbol, score, detail[:160])


def _guard(scorer: _Scorer, part: str, fallback: Any, run: Callable[..., Any], *args: Any) -> Any:
    """Run one part of the scan; its failure is a finding, not the loss of the others."""
    try:
        return run(*args)
    except Exception as exc:
        log.warning("injection scan part %s failed", part, exc_info=True)
        scorer.add("INJ_SCAN_ERROR", f"{part}: {type(exc).__name__}")
        return fallback


# ---------------------------------------------------------------------------------------------
# Characters: invisible ones, lookalikes, folding


# Every format (Cf) character of Unicode 15, private use (Co), invisible fillers (combining
# grapheme joiner, Hangul fillers, Khmer inherent vowels, braille blank) and lone surrogates.
_INVISIBLE_BMP = (
    r"\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e"
    r"\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\ue000-\uf8ff"
    r"\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0\u2800"
    r"\ud800-\udfff"  # lone surrogates: never valid in the UTF-8 JSON of an event
)
_INVISIBLE_CLASS = _INVISIBLE_BMP + (
    r"\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    r"\U000e0000-\U000e007f\U000f0000-\U000ffffd\U00100000-\U0010fffd"
)
INVISIBLE = re.compile(f"[{_INVISIBLE_CLASS}]+")
# The regex engine looks for one character of a class much faster than for a run ("[...]+"), and
# for BMP characters than for astral ones, which only text with astral characters can hold.
_INVISIBLE_BMP_CHAR = re.compile(f"[{_INVISIBLE_BMP}]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_ZERO_WIDTH = "\u200b\u200c\u200d\u2060-\u2064\ufeff\u180e"
_ZW_ANY = re.compile(f"[{_ZERO_WIDTH}]")
_ZW_IN_WORD = re.compile(f"(?<=[A-Za-z0-9])[{_ZERO_WIDTH}]+(?=[A-Za-z0-9])")
_BIDI = re.compile(r"[\u202a-\u202e\u2066-\u2069]")
_BIDI_OVERRIDE = re.compile(r"[\u202d\u202e]")
_RTL_LETTER = re.compile(r"[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc]")
_TAG_RUN = re.compile(r"[\U000e0000-\U000e007f]+")  # astral: only looked for where _astral() says
_MIXED_SCRIPT = re.compile(r"[A-Za-z][\u0370-\u03ff\u0400-\u04ff]|[\u0370-\u03ff\u0400-\u04ff][A-Za-z]")
# A character that _ZW_IN_WORD, _BIDI or _MIXED_SCRIPT needs: one fast pass rules them all out.
_NOTABLE = re.compile(f"[{_ZERO_WIDTH}\u202a-\u202e\u2066-\u2069\u0370-\u04ff]")
_COMBINING = re.compile(r"[\u0300-\u036f]")  # one character, not a run: see _INVISIBLE_BMP_CHAR

# Cyrillic, Greek and a few Latin lookalikes of Latin letters (a small map, not all of UTS #39).
_CONFUSABLES = str.maketrans(
    {
        **dict(zip("АВЕКМНОРСТХУІЈЅԁԌҺӀԚԜ", "ABEKMHOPCTXYIJSdGHIQW", strict=True)),
        **dict(zip("аеорсухіјѕһӏԛԝкмтпгьв", "aeopcyxijshlqwkmtnrbb", strict=True)),
        **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "ABEZHIKMNOPTYX", strict=True)),
        **dict(zip("αεικνορτυχηωγ", "aeikvoptuxnwy", strict=True)),
        **dict(zip("ıȷǀɡոսẹօ", "ijlgnueo", strict=True)),
    }
)
_LOOKALIKE = re.compile("[" + re.escape("".join(map(chr, _CONFUSABLES))) + "]")
# Letters-only form: leetspeak digits and signs read as letters, everything else dropped (one C pass).
_LEET = bytes.maketrans(b"0134578@$!|", b"oieastbasii")
_NOT_LETTER_OR_LEET = bytes(c for c in range(256) if not (97 <= c <= 122 or c in b"0134578@$!|"))


def _squash(folded: str) -> str:
    return folded.encode("utf-8", "replace").translate(_LEET, _NOT_LETTER_OR_LEET).decode("ascii")


def _astral(text: str) -> bool:
    """Whether `text` has a character beyond U+FFFF (two UTF-16 code units): one C pass."""
    return not text.isascii() and len(text.encode("utf-16-le", "surrogatepass")) > 2 * len(text)


def _latin1_bytes(text: str) -> bytes | None:
    """`text` in Latin-1 when it is all below U+0100, else None."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return None


def _latin1(text: str) -> bool:
    """Whether `text` is all below U+0100, where no invisible character but the soft hyphen can be,
    nor accents, lookalikes, zero-width or bidi characters: a C copy, where a regex tests each."""
    return _latin1_bytes(text) is not None


def _drop_invisible(text: str) -> str:
    if _latin1(text):
        return text.replace("\xad", "")
    return INVISIBLE.sub("", text) if _INVISIBLE_BMP_CHAR.search(text) or _astral(text) else text


def strip_invisible(text: str) -> str:
    """Text without invisible characters and controls (whitespace kept)."""
    return _CONTROLS.sub(" ", text if text.isascii() else _drop_invisible(text))


def _fold(text: str) -> str:
    """Lower case, accents and invisible characters dropped, lookalikes mapped to Latin."""
    if text.isascii():
        return text.lower()
    data = _latin1_bytes(text)
    if data is not None and not data.translate(None, _FOLDS_IN_LATIN1):
        return data.translate(_LATIN1_FOLD, _LATIN1_DROPPED).decode("latin-1")
    return _fold_unicode(text)


def _fold_unicode(text: str) -> str:
    text = unicodedata.normalize("NFKD", _drop_invisible(text))
    if not _latin1(text):
        text = _COMBINING.sub("", text)
        # str.translate looks up every character in a dict, slowly: most text has no lookalike.
        if _LOOKALIKE.search(text):
            text = text.translate(_CONFUSABLES)
    return text.lower()


# Latin-1 text folds a character at a time: NFKD decomposes each alone, into Latin-1 and accents
# (U+0300-U+036F, which _fold drops), but for "µ¼½¾"; lower case maps Latin-1 to itself. So one
# C pass over its bytes folds it, where NFKD, the regex dropping accents and lower() take three.
_LATIN1_FOLDS = [_fold_unicode(chr(c)) for c in range(256)]
_LATIN1_FOLD = bytes(ord(f) if len(f) == 1 and f < "\u0100" else c for c, f in enumerate(_LATIN1_FOLDS))
_LATIN1_DROPPED = bytes(c for c, f in enumerate(_LATIN1_FOLDS) if not f)  # the soft hyphen
_FOLDS_IN_LATIN1 = bytes(c for c, f in enumerate(_LATIN1_FOLDS) if len(f) <= 1 and f < "\u0100")  # not µ¼½¾
_LATIN1_LOWER = bytes(ord(chr(c).lower()) for c in range(256))


def _lower(text: str) -> str:
    """text.lower(), which for text beyond ASCII looks up each character's full case mapping."""
    if text.isascii():
        return text.lower()
    data = _latin1_bytes(text)
    return text.lower() if data is None else data.translate(_LATIN1_LOWER).decode("latin-1")


def _unaccent(text: str) -> str:
    """Accents dropped, nothing else: what the rules see when nobody disguised anything."""
    return _COMBINING.sub("", unicodedata.normalize("NFD", text))


# Latin-1 whitespace as str.split() sees it (\x1c-\x1f, \x85, \xa0 too) as spaces, and the runs of
# spaces left to collapse.
_LATIN1_SPACE_TO_SPACE = bytes(0x20 if chr(c).isspace() else c for c in range(256))
_SPACE_RUN = re.compile(b"  +")


def _collapse(text: str) -> str:
    """Whitespace runs as single spaces, none at the ends: " ".join(text.split())."""
    data = _latin1_bytes(text)
    if data is None:
        return " ".join(text.split())
    # Split and join make an object per word; on bytes a translate and a regex that jumps from
    # one double space to the next are C passes.
    spaced = data.translate(_LATIN1_SPACE_TO_SPACE)
    return _SPACE_RUN.sub(b" ", spaced).strip(b" ").decode("latin-1")


def _shown(text: str) -> str:
    """The words of `text` as a human sees them: _collapse(strip_invisible(text))."""
    if text.isascii():
        # ASCII has no invisible characters, and its controls are whitespace (dropped here too) or
        # not printable: a printable result means there was nothing to strip.
        collapsed = _collapse(text)
        if collapsed.isprintable():
            return collapsed
    return _collapse(strip_invisible(text))


def _snippet(text: str) -> str:
    text = _shown(text)
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Rules on folded text (lower case, whitespace collapsed to single spaces)


_PUNCT = bytes(c for c in range(128) if not chr(c).isalnum())  # "don't" gives "don" and "t"
_PUNCT_TO_SPACE = bytes.maketrans(_PUNCT, b" " * len(_PUNCT))


def _words(text: str) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """The words of `text` (split at punctuation) that a word rule's gate or literal start names
    (_RULE_WORDS), for the gates; and for the starts, these with the words beyond ASCII split again
    at non-ASCII characters: where a word starts, these hold the word, whatever precedes it ("—send"
    gives "send"). Bytes: translate is C; intersecting with a list builds no set of all the words."""
    split = text.encode("utf-8", "replace").translate(_PUNCT_TO_SPACE).split()
    words = _RULE_WORDS.intersection(split)
    if text.isascii():
        return words, words
    beyond = b" ".join(word for word in split if not word.isascii()).translate(_NON_ASCII_TO_SPACE)
    return words, words.union(_RULE_WORDS.intersection(beyond.split()))


_NON_ASCII_TO_SPACE = bytes(range(128)) + b" " * 128


_MAX_STARTS = 24  # more literal starts would cost more str.find passes than they save
_REPEATS = (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT)
_FIRST_WORD = re.compile(r"([A-Za-z0-9]+)[^A-Za-z0-9]")
_ASCII_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def _literals(items: Iterable[tuple[Any, Any]]) -> set[str] | None:
    """The strings a parsed regex sequence matches, when they are a few literal ones; else None."""
    strings = {""}
    for op, value in items:
        if op is _sre.LITERAL:
            options = {chr(value)}
        elif op is _sre.AT:  # \b and the like match no text
            options = {""}
        elif op is _sre.IN and all(kind is _sre.LITERAL for kind, _ in value):
            options = {chr(char) for _, char in value}
        elif op is _sre.SUBPATTERN and not value[1] & re.IGNORECASE:
            options = _literals(value[3])
        elif op is _sre.BRANCH:
            branches = [_literals(branch) for branch in value[1]]
            options = None if None in branches else set().union(*branches)
        elif op in _REPEATS and value[:2] in ((0, 1), (1, 1)):  # "x?"
            options = _literals(value[2])
            if options is not None and value[0] == 0:
                options.add("")
        else:
            return None
        if options is None or len(strings) * len(options) > _MAX_STARTS:
            return None
        strings = {head + tail for head in strings for tail in options}
    return strings


def _starts(regex: re.Pattern[str]) -> tuple[tuple[str, frozenset[bytes] | None], ...] | None:
    """Literal strings that every match of `regex` begins with, each with the first words a match
    beginning with it can have (None: not known); None when the regex does not begin with literal
    text. The strings stop early (each is one more pass over the text); the words look further:
    "(?:ignore|forget)s?\\b " starts with "ignore" or "forget", its first word is one of "ignore",
    "ignores", "forget", "forgets"."""
    if regex.flags & re.IGNORECASE:
        return None
    items = list(_sre_parse(regex.pattern, regex.flags))
    starts = longer = {""}
    rest = len(items)  # the items after `longer`
    for index, (op, value) in enumerate(items):
        options = _literals([(op, value)])
        if options is None and op in _REPEATS and value[0] >= 1 and starts == {""}:
            starts = longer = _literals(value[2]) or {""}  # "#{1,6}" starts with "#"
            break
        if options is None or len(longer) * len(options) > _MAX_STARTS:
            rest = index
            break
        # Starts only grow while that adds no strings or one is too short to be rare ("a").
        if starts is longer and (len(options) == 1 or min(map(len, starts)) < 4):
            starts = longer = {head + tail for head in longer for tail in options}
        else:
            longer = {head + tail for head in longer for tail in options}
    if "" in starts:
        return None
    # Where "act" occurs, "act as" does too: one search covers both.
    shortest = sorted(s for s in starts if not any(s != t and s.startswith(t) for t in starts))
    # A string that is one word ("print") is all of it when no letter or digit can follow.
    after = _heads(items[rest:]) if rest < len(items) else None
    whole = after is not None and "" not in after and after.isdisjoint(_ASCII_ALNUM)
    return tuple(
        (start, _first_words((s for s in longer if s.startswith(start)), whole)) for start in shortest
    )


def _first_words(strings: Iterable[str], whole: bool) -> frozenset[bytes] | None:
    words = set()
    for string in strings:
        word = _FIRST_WORD.match(string)
        if word is None and not (whole and string.isascii() and string.isalnum()):
            return None
        words.add((word.group(1) if word else string).encode())
    return frozenset(words)


def _heads(items: list[tuple[Any, Any]]) -> set[str] | None:
    """The characters a match of parsed regex `items` can start with ("" when it can be empty), or
    None when they are not a few literal ones."""
    heads: set[str] = set()
    for op, value in items:
        if op is _sre.AT:
            continue
        if op is _sre.SUBPATTERN and not value[1] & re.IGNORECASE:
            first = _heads(value[3])
        elif op is _sre.BRANCH:
            branches = [_heads(branch) for branch in value[1]]
            first = None if None in branches else set().union(*branches)
        elif op in _REPEATS:
            first = _heads(value[2])
            if first is not None and value[0] == 0:
                first.add("")
        else:
            first = _literals([(op, value)])
        if first is None:
            return None
        heads |= {string[:1] for string in first}
        if "" not in first:
            return heads - {""}
    return heads


def _at_word_start(text: str, position: int) -> bool:
    return position == 0 or not (text[position].isalnum() and text[position - 1].isalnum())


@dataclass(frozen=True, slots=True)
class _Pattern:
    """A rule's regex and the literal strings its matches start with (None: unknown).

    The regex engine tries every position whose character could start a match: in a long mail
    that is a third of its letters for a pattern starting "(?:send|give|share|...)". str.find
    jumps between occurrences of the starts instead, the regex is tried only there, and a start
    whose first word is not in the text is not looked for. That only decides whether there is a
    match; the regex then runs as before, so which match is found does not change.
    """

    regex: re.Pattern[str]
    starts: tuple[tuple[str, frozenset[bytes] | None], ...] | None

    def first(self, text: str, boundary: bool, start_words: frozenset[bytes] | None) -> re.Match[str] | None:
        """The first match, or with `boundary` the first at a word start (see _first_at_word_start).
        `start_words`: the second set of _words(text), or None when not known."""
        if self.starts is not None and not self._matches_at_a_start(text, boundary, start_words):
            return None
        return _first_at_word_start(self.regex, text) if boundary else self.regex.search(text)

    def _matches_at_a_start(self, text: str, boundary: bool, start_words: frozenset[bytes] | None) -> bool:
        match = self.regex.match
        for start, words in self.starts or ():
            if boundary and words is not None and start_words is not None and words.isdisjoint(start_words):
                continue
            position = text.find(start)
            while position >= 0:
                if (not boundary or _at_word_start(text, position)) and match(text, position):
                    return True
                position = text.find(start, position + 1)
        return False


# Gate substrings grouped by first character: a pass for the group's common prefix ("<") rules
# out "<tool", "</tool", "<function"..., and one regex pass finds any of them where `in` would take
# a pass each. The regex is None when the prefix is itself one of them. It spells the prefix out
# ("<(?:tool|/tool|...)"): the engine then jumps between its occurrences, where for "<tool|</tool"
# it tests every character against each alternative's first one.
_Substrings = tuple[tuple[str, re.Pattern[str] | None], ...]


def _substrings(items: Iterable[str]) -> _Substrings:
    by_first: dict[str, list[str]] = {}
    for item in items:
        by_first.setdefault(item[0], []).append(item)
    prefixes = [(os.path.commonprefix(same), same) for same in by_first.values()]  # noqa: RUF071 (not paths)
    return tuple(
        (
            prefix,
            None
            if prefix in same
            else re.compile(
                re.escape(prefix) + "(?:" + "|".join(re.escape(s[len(prefix) :]) for s in same) + ")"
            ),
        )
        for prefix, same in prefixes
    )


@dataclass(frozen=True, slots=True)
class _Rule:
    """A symbol's patterns and its gate: every gate group needs one of its words (or substrings)
    in the text before the patterns run, so most rules cost a set lookup on most mail.

    Each pattern starts with a literal or a flat alternation of words, never `\\b` or a nested
    group: its literal starts are then known (see _Pattern). The word boundary at the start is
    checked on the match instead.
    """

    symbol: str
    gate: tuple[tuple[frozenset[bytes], _Substrings], ...]
    patterns: tuple[_Pattern, ...]

    def opens(self, words: frozenset[bytes], text: str) -> bool:
        for group, substrings in self.gate:
            if group.isdisjoint(words):
                for prefix, rest in substrings:
                    if prefix in text and (rest is None or rest.search(text)):
                        break
                else:
                    return False
        return True


def _rule(symbol: str, gate: str, *alternatives: str) -> _Rule:
    """`gate`: groups separated by "&", each of words or "~substrings" ("+" for a space)."""
    groups = []
    for group in gate.split("&"):
        items = group.split()
        words = frozenset(i.encode() for i in items if not i.startswith("~"))
        groups.append((words, _substrings(i[1:].replace("+", " ") for i in items if i.startswith("~"))))
    patterns = tuple(_Pattern(regex, _starts(regex)) for regex in map(re.compile, alternatives))
    return _Rule(symbol, tuple(groups), patterns)


class _RuleIndex:
    """Rules in order, indexed by the words of their first gate group: a text's words pick the few
    rules whose gates may open, where asking every rule costs a call per rule on every channel."""

    def __init__(self, rules: tuple[_Rule, ...]) -> None:
        self.rules = rules
        # A first group with substrings can open without any of its words.
        self.always = frozenset(index for index, rule in enumerate(rules) if rule.gate[0][1])
        self.by_word: dict[bytes, list[int]] = {}
        for index, rule in enumerate(rules):
            for word in rule.gate[0][0]:
                self.by_word.setdefault(word, []).append(index)

    def candidates(self, words: frozenset[bytes]) -> list[_Rule]:
        picked = set(self.always)
        for word in words:
            picked.update(self.by_word.get(word, ()))
        return [self.rules[index] for index in sorted(picked)]


_W = r"(?:[a-z0-9'’-]+ )"  # one word and its space: gaps are {0,n}, so matching stays linear
_QUALIFIER = (
    r"(?:previous|prior|preceding|above|earlier|former|original|initial|existing|old|system|developer"
    r"|safety|all|your)"
)
_INSTR = r"(?:instructions?|prompts?|system prompt|directives?|guidelines|guardrails|programming|commands)\b"

_SECRET = (
    r"(?: own| current| full| admin)? (?:api[ -]?keys?|passwords?|passwd|passphrase|passcodes?|"
    r"pin(?: codes?)?|credentials|login(?: details| credentials| info)?|access (?:tokens?|keys?)|"
    r"auth(?:entication)? tokens?|bearer tokens?|secret keys?|private keys?|ssh keys?|seed phrase|"
    r"recovery (?:phrase|codes?)|mnemonic|2fa codes?|otp|one[- ]time (?:pass)?codes?|verification "
    r"codes?|security codes?|credit card(?: numbers?| details| info)?|card numbers?|bank "
    r"(?:details|account (?:details|numbers?)))\b"
)

_WORD_RULES = (
    _rule(
        "INJ_IGNORE_INSTRUCTIONS",
        "ignore ignores disregard disregards forget forgets override overrides bypass neglect follow obey",
        rf"(?:ignore|disregard|forget|override|bypass|neglect)s?\b {_W}{{0,4}}?{_QUALIFIER} {_W}{{0,2}}?"
        rf"{_INSTR}",
        r"(?:ignore|disregard|forget)\b (?:all|everything|anything|whatever) (?:[a-z']+ ){0,3}?"
        r"(?:above|before this|previously|you(?:'ve| have) been told|you were told)\b",
        r"do not (?:follow|obey) (?:the |your |any )?(?:previous|prior|above|original|system) "
        r"(?:instructions|rules|prompt)",
    ),
    _rule(
        "INJ_IGNORE_INSTRUCTIONS",  # de
        "anweisungen instruktionen befehle anordnungen vorgaben",
        r"(?:ignorier|missacht|vergiss|vergessen|uberschreib)[a-z]{0,4} (?:[a-z]+ ){0,4}?"
        r"(?:vorherigen?|vorigen?|bisherigen?|obigen?|vorangegangenen?|fruheren?|alten|ursprunglichen?|"
        r"alle|deine|ihre)[a-z]{0,2} (?:[a-z]+ )?(?:anweisungen|instruktionen|befehle|anordnungen|vorgaben)",
        r"(?:vorherigen?|vorigen?|bisherigen?|obigen?|fruheren?|alle)[a-z]{0,2} (?:[a-z]+ )?"
        r"(?:anweisungen|instruktionen|befehle) (?:[a-z]+ ){0,2}?(?:ignorieren|vergessen|missachten)",
    ),
    _rule(
        "INJ_IGNORE_INSTRUCTIONS",  # fr, es, it, pt, nl
        "instructions instruction instrucciones istruzioni instrucoes instructies opdrachten",
        r"(?:ignore[rsz]?|ignorez|oublie[rsz]?|negligez?)\b (?:[a-z']+ ){0,3}?instructions? "
        r"(?:[a-z']+ )?(?:precedentes?|anterieures?|ci-dessus|precedemment|d'avant|du systeme|initiales?)",
        r"(?:ignora[rn]?|ignore[n]?|olvida[rn]?|olvide[n]?|omite|omitir|descarta[r]?)\b (?:[a-z]+ ){0,3}?"
        r"instrucciones (?:[a-z]+ )?(?:anteriores|previas|precedentes|de arriba|del sistema|iniciales)",
        r"(?:ignora|ignorate|dimentica|dimenticate)\b (?:[a-z']+ ){0,3}?istruzioni (?:[a-z]+ )?"
        r"(?:precedenti|sopra|originali|di sistema)",
        r"(?:ignore|ignora|esqueca|esquece)\b (?:[a-z]+ ){0,3}?instrucoes (?:[a-z]+ )?"
        r"(?:anteriores|previas|acima|do sistema)",
        r"(?:negeer|vergeet)\b (?:[a-z]+ ){0,3}?(?:vorige|eerdere|voorgaande|bovenstaande) "
        r"(?:instructies|opdrachten)",
    ),
    _rule(
        "INJ_DISREGARD_ABOVE",
        "above",
        r"(?:ignore|disregard|forget)\b (?:all of |everything |all |anything )?"
        r"(?:the |that |what(?:'s| is) )?(?:text |message |content )?(?:above|written above|said above|"
        r"stated above)\b",
    ),
    _rule(
        "INJ_NEW_INSTRUCTIONS",
        "instruction instructions task goal objective purpose mission directive anweisungen instruktionen "
        "befehle consignes consigne instrucciones ordenes",
        r"(?:new|updated|revised|real|actual|true|secret|hidden|override|admin|system|priority) "
        r"instructions? ?:",
        r"your (?:new|real|actual|true|only|next|primary|updated) (?:task|goal|objective|instructions?|"
        r"purpose|mission|directive) (?:is|are|will be|now)\b",
        r"neue (?:anweisungen|instruktionen|befehle) ?:",
        r"nouvelles? (?:instructions?|consignes) ?:",
        r"nuevas? (?:instrucciones|ordenes) ?:",
    ),
    _rule(
        "INJ_ROLE_HIJACK",
        "now henceforth longer act behave pretend roleplay role",
        r"you are (?:now|from now on|henceforth)\b (?:[a-z'-]+ ){0,3}?(?:dan|an? (?:ai|assistant|chatbot|"
        r"language model|llm)|unrestricted|unfiltered|uncensored|jailbroken|evil|in (?:developer|god|dan|"
        r"jailbreak|unrestricted) mode)\b",
        r"you are no longer (?:bound|restricted|constrained|an? (?:ai|assistant|language model))\b",
        r"(?:act|behave|pretend|roleplay|role-play)(?: as(?: if| though)?| like| to be)"
        r"(?: you (?:are|were))? (?:an? |the |my )?(?:unrestricted|unfiltered|uncensored|jailbroken|dan|"
        r"(?:[a-z'-]+ ){0,2}?(?:ai|chatbot|language model|llm|gpt|ai assistant|ai agent))\b",
        r"from now on,? (?:you(?: are|'re| will| must| shall| should)?|your)\b (?:[a-z'-]+ ){0,4}?"
        r"(?:dan|ai|obey|unrestricted|unfiltered|jailbroken|no restrictions)\b",
    ),
    _rule(
        "INJ_ROLE_HIJACK",
        "bist & jetzt nun sofort",
        r"du bist (?:jetzt|nun|ab sofort|ab jetzt) (?:[a-z]+ ){0,2}?(?:ki|dan|uneingeschrankt|ohne)\b",
    ),
    _rule(
        "INJ_ROLE_HIJACK",
        "es etes & maintenant desormais present",
        r"(?:tu es|vous etes) (?:maintenant|desormais|a present) (?:[a-z']+ ){0,2}?(?:ia|dan|sans|libre)\b",
    ),
    _rule(
        "INJ_ROLE_HIJACK", "eres", r"(?:ahora|a partir de ahora) eres (?:[a-z]+ ){0,2}?(?:ia|dan|sin|libre)\b"
    ),
    _rule("INJ_JAILBREAK", "anything", r"do anything now\b"),
    _rule(
        "INJ_JAILBREAK",
        "dan developer god jailbreak jailbroken unrestricted & mode prompt enabled activated ai assistant "
        "chatbot gpt llm model",
        r"dan mode\b",
        r"jailbr(?:eak|oken) (?:mode|prompt|enabled|activated|ai|assistant|chatbot|gpt|llm|model)\b",
        r"(?:developer|god|jailbreak|unrestricted) mode (?:enabled|activated|on|engaged|output)\b",
        r"(?:enter|enable|activate|switch (?:in)?to|now in|you are in) (?:developer|god|dan|jailbreak|"
        r"unrestricted) mode\b",
    ),
    _rule(
        "INJ_JAILBREAK",
        "ethical moral safety content & guidelines restrictions filters limitations",
        r"without (?:any )?(?:ethical|moral|safety|content) (?:guidelines|restrictions|filters|"
        r"limitations)\b",
    ),
    _rule(
        "INJ_PROMPT_LEAK",
        "prompt prompts instructions preprompt",
        r"(?:reveal|print|output|show|display|repeat|tell|give|share|send|leak|disclose|include|paste|dump"
        r"|write|copy|append|forward|return|recite|provide)(?: me| us| back| out)?"
        r"(?: (?:all|the|your|of|full|entire|complete|exact|original|hidden|secret|initial|verbatim|current))"
        r"{0,4} (?:system prompts?|system instructions|initial instructions|hidden instructions|original "
        r"instructions|developer (?:prompt|message|instructions)|instructions above|prompt above|pre-?prompt"
        r"|instructions you (?:were|have been) given|confidential instructions)\b",
        r"what (?:is|are|were) your (?:system prompt|instructions|initial instructions|original "
        r"instructions)\b",
    ),
    _rule(
        "INJ_ADDRESSES_AGENT",
        "ai llm llms model models assistant assistants agent agents chatbot bot gpt chatgpt claude copilot "
        "gemini intelligence",
        r"if you(?: are|'re) an? (?:ai|artificial intelligence|llm|large language model|language model|ai "
        r"assistant|ai agent|assistant|chatbot|bot|automated (?:system|agent|assistant)|email (?:assistant|"
        r"agent))\b",
        r"(?:note|message|instructions?|attention|hey|hello|hi|dear|important) (?:to |for )?(?:the |any |"
        r"all )?(?:ai|llm|gpt|chatgpt|ai assistant|language model|ai agent|ai model|"
        r"email assistant)s? ?[:,!-]",
        r"(?:ai|llm|language model|ai assistant|ai agent|ai model|email assistant|assistant|agent|model)s? "
        r"(?:reading|processing|summari[sz]ing|parsing|analy[sz]ing|handling|triaging) (?:this|these) "
        r"(?:e-?mails?|messages?|mail|text|documents?|inbox)\b",
    ),
    _rule(
        "INJ_COVERT_ACTION",
        "forward & emails mails messages inbox conversations correspondence attachments threads contacts",
        r"forward (?:all |every |each |the (?:last|latest|most recent|previous|first) (?:\d+ |[a-z]+ )?|"
        r"all of (?:the |your |my )?|my |the user'?s |your |these |those |any |\d+ )(?:[a-z-]+ )?"
        r"(?:e-?mails|messages|mails|inbox|conversations|correspondence|attachments|threads|contacts)\b",
    ),
    _rule(
        "INJ_COVERT_ACTION",
        "delete erase wipe purge & emails messages inbox mailbox conversation conversations history logs "
        "traces evidence contacts",
        r"(?:delete|erase|wipe|purge)\b(?: (?:all|every|the|your|my|this|these|those|user's|of|other|"
        r"previous)){0,3} (?:e-?mails|messages|inbox|mailbox|conversations?|chat history|logs|traces|"
        r"evidence|contacts)\b",
    ),
    _rule(
        "INJ_COVERT_ACTION",
        "not don dont never without & user users owner owners human humans recipient recipients operator "
        "operators principal principals",
        r"(?:do not|don't|dont|never|without) (?:tell|telling|inform|informing|notify|notifying|alert|"
        r"alerting|mention|mentioning|reveal|revealing|warn|warning)(?: (?:this|it|anything|about this|"
        r"them))?(?: to| with)? (?:the |your )?(?:user|owner|human|recipient|operator|principal)s?\b",
    ),
    _rule(
        "INJ_COVERT_ACTION",
        "silently secretly quietly covertly discreetly",
        r"(?:silently|secretly|quietly|covertly|discreetly) (?:[a-z']+ ){0,2}?(?:forward|send|delete|"
        r"transfer|email|copy|upload|exfiltrate|execute|visit|share)\b",
    ),
    _rule(
        "INJ_EXFIL_INSTRUCTION",
        "append add attach include insert embed put encode concatenate & url link query parameter param "
        "image request querystring markdown",
        r"(?:append|add|attach|include|insert|embed|put|encode|concatenate)(?: (?:the|all|your|any|"
        r"user'?s?|their|my)){0,3} (?:[a-z'-]+ ){0,3}?(?:system prompt|conversation|chat history|api keys?|"
        r"passwords?|credentials|secrets?|tokens?|previous (?:e-?mails|messages)|e-?mails?|inbox|contents?|"
        r"user data|private data|personal data|memory|context|session|data)\b (?:[a-z'-]+ ){0,4}?(?:to|in|"
        r"into|as|inside|at the end of) (?:the |this |that |a |an )?(?:[a-z'-]+ ){0,2}?(?:url|link|query|"
        r"parameter|param|image|request|query string|querystring|markdown)\b",
    ),
    _rule(
        "INJ_EXFIL_INSTRUCTION",
        "send forward email post upload & content contents",
        r"(?:send|forward|email|post|upload) (?:me |us )?(?:the )?(?:full |entire |complete )?contents? of "
        r"(?:the |your |this |my )?(?:inbox|mailbox|previous e-?mails|last e-?mails|other e-?mails|"
        r"conversation|system prompt|memory|instructions|context|chat)\b",
    ),
    _rule(
        "INJ_FETCH_AND_SEND",
        "visit open fetch load request browse go navigate call curl access "
        "& include append add send post submit paste report return upload "
        "& data content contents secrets secret keys key passwords password credentials tokens token "
        "history conversation inbox prompt",
        r"(?:visit|open|fetch|load|request|browse to|go to|navigate to|call|curl|access)\b (?:[^ ]+ ){0,6}?"
        r"(?:and|then) (?:include|append|add|send|post|submit|paste|report|return|upload)\b "
        r"(?:[a-z']+ ){0,4}?(?:data|contents?|secrets?|keys?|passwords?|credentials|tokens?|history|"
        r"conversation|inbox|system prompt)\b",
    ),
    _rule(
        "INJ_CREDENTIAL_REQUEST",
        "send give share provide tell email e forward text dm pm paste reply respond answer confirm verify "
        "submit disclose reveal include what "
        "& api apikey key keys password passwords passwd passphrase passcode passcodes pin credentials "
        "login token tokens seed recovery mnemonic 2fa otp code codes card bank",
        r"(?:send|give|share|provide|tell|email|e-mail|forward|text|dm|pm|paste)(?: me| us| back| over)"
        rf"(?: with)? (?:your|the|all|all your|the agent's|the user's|any){_SECRET}",
        rf"(?:reply|respond|answer) with (?:your|the|all|all your|the agent's|the user's|any){_SECRET}",
        r"(?:provide|share|confirm|verify|submit|disclose|reveal|send|forward|paste|include) "
        rf"(?:your|all your|the agent's|the user's){_SECRET}",
        r"what (?:is|are) your (?:api[ -]?keys?|passwords?|credentials|access tokens?|secret keys?)\b",
    ),
    _rule(
        "INJ_CREDENTIAL_REQUEST",  # de, fr, es
        "passwort passworter kennwort zugangsdaten schlussel passe identifiants cle cles jeton contrasena "
        "contrasenas credenciales clave claves",
        r"(?:sende|senden sie|schicke?|schicken sie|gib|geben sie|nenne|nennen sie)(?: mir| uns)? "
        r"(?:dein|deine|ihr|ihre|das|die|alle)[a-z]{0,2} (?:passwort|passworter|kennwort|zugangsdaten|"
        r"api-schlussel)\b",
        r"(?:envoie|envoyez|donne|donnez|communique|communiquez|transmets|transmettez)(?:-moi|-nous| moi|"
        r" nous)? (?:ton|ta|tes|votre|vos|le|la|les) (?:mot de passe|mots de passe|identifiants|cles? api|"
        r"jeton)\b",
        r"(?:envia|envie|enviame|manda|mande|mandame|dame|deme|comparte)(?: me| nos)? (?:tu|tus|su|sus|la|"
        r"las|el|los) (?:contrasenas?|credenciales|claves? (?:de )?api|token)\b",
    ),
    _rule(
        "INJ_COVERT_ACTION",  # de, fr, es: forward the mail
        "leite leiten transfere transferez reenvia reenvie",
        r"(?:leite|leiten sie) (?:[a-z-]+ ){0,3}?(?:e-mails|emails|mails|nachrichten)\b(?: [^ ]+){0,4}? "
        r"weiter\b",
        r"(?:transfere|transferez) (?:tous |toutes )?(?:les |tes |vos )?(?:e-mails|emails|mails|messages|"
        r"courriels)\b",
        r"(?:reenvia|reenvie) (?:todos )?(?:los |tus |sus )?(?:correos|e-mails|emails|mensajes)\b",
    ),
    _rule(
        "INJ_MONEY_REQUEST",
        "buy purchase get pick grab & gift giftcard giftcards itunes google steam amazon prepaid",
        r"(?:buy|purchase|get|pick up|grab)(?: me| us)? (?:some |a few |several |\d+ |two |three |four "
        r"|five |ten )?(?:[a-z]+ )?(?:gift ?cards?|itunes cards?|google play cards?|steam cards?|"
        r"amazon cards?|prepaid cards?)\b",
    ),
    _rule(
        "INJ_MONEY_REQUEST",
        "wire transfer send remit & ~$ ~€ ~£ usd eur gbp dollars euros btc bitcoin bitcoins eth crypto "
        "ethereum usdt",
        r"(?:wire|transfer|send|remit)(?: me| us)? (?:(?:us|usd|eur|gbp) ?)?[$€£] ?\d",
        r"(?:wire|transfer|send|remit)(?: me| us)? \d[\d,.]* ?(?:usd|eur|gbp|dollars|euros|btc|"
        r"bitcoins?|eth)\b",
        r"(?:send|transfer) (?:[a-z]+ ){0,3}?(?:bitcoin|btc|crypto|ethereum|usdt) to\b",
    ),
    _rule(
        "INJ_DECODE_HINT",
        "decode deobfuscate base64 unscramble rot13 rot convert",
        r"(?:decode|deobfuscate|base64[- ]?decode|unscramble|convert from (?:hex|base64)|rot-?13)\b "
        r"(?:[a-z0-9']+ ){0,3}?(?:the following|following|this|below|the string|the payload|and (?:follow|"
        r"execute|run|do|obey))",
    ),
    _rule(
        "INJ_PASSWORD_RESET_LINK",
        "reset",
        r"reset your password (?:at|here|by|using|via|with|on)\b",
        r"click (?:here|the link|below|this link) to reset your password\b",
    ),
)
_WORD_INDEX = _RuleIndex(_WORD_RULES)
# What _words keeps: the gate words and the first words of literal starts.
_RULE_WORDS = frozenset().union(
    *(words for rule in _WORD_RULES for words, _ in rule.gate),
    *(
        words
        for rule in _WORD_RULES
        for pattern in rule.patterns
        for _, words in pattern.starts or ()
        if words
    ),
)
_URGENCY = re.compile(
    r"\b(?:urgent(?:ly)?|immediately|asap|right (?:now|away)|within (?:the next )?(?:\d+|one|two|"
    r"twenty-four) (?:hours?|minutes?)|as soon as possible|time[- ]sensitive|without delay|act now|"
    r"final (?:notice|warning)|will be (?:suspended|locked|closed|terminated|deleted))\b"
)

# Letters-only form ("ignorepreviousinstructions"): obfuscated spacing, dots and leetspeak.
_SQUASHED_RULES = (
    _rule(
        "INJ_IGNORE_INSTRUCTIONS",
        "~ignor ~disregard ~forget",
        r"ignore(?:all|any|the|your|of){0,3}(?:previous|prior|above|earlier|preceding|former|initial|"
        r"original|system)(?:instruction|prompt|directive|guideline|command)",
        r"disregard(?:all|any|the|your){0,3}(?:previous|prior|above|earlier|preceding|system)"
        r"(?:instruction|prompt|directive|guideline|command)",
        r"forget(?:all|the){0,2}(?:your|previous|prior|above|earlier)(?:instruction|prompt|directive|"
        r"guideline)",
        r"ignorier(?:e|en)(?:sie)?(?:alle|die|deine|ihre){0,2}(?:vorherigen|bisherigen|vorigen|obigen)"
        r"(?:anweisungen|instruktionen)",
        r"ignore[rz]?(?:toutes|les|tes|vos){0,3}instructions(?:precedentes|anterieures)",
        r"ignorar?(?:todas|las|tus){0,3}instrucciones(?:anteriores|previas)",
    ),
    _rule("INJ_JAILBREAK", "~anything ~developer", r"doanythingnow", r"developermode(?:enabled|activated)"),
    _rule(
        "INJ_PROMPT_LEAK",
        "~systemprompt",
        r"(?:reveal|print|show|output|repeat|leak)(?:me)?(?:your|the)(?:full|entire)?systemprompt",
    ),
)

# Markup rules run on the lower-cased text with its lines kept; their gates are substrings.
_MARKUP_RULES = (
    _rule(
        "INJ_FAKE_CHAT_MARKUP",
        "~<| ~[inst ~[/inst ~<<sys ~<</sys ~_of_turn>",
        r"<\|[a-z_]{2,24}\|>",
        r"\[/?inst\]",
        r"<</?sys>>",
        r"<(?:start|end)_of_turn>",
    ),
    _rule(
        "INJ_FAKE_TOOL_MARKUP",
        "~<tool ~</tool ~<function ~</function ~<system ~</system ~<assistant ~</assistant ~<antml ~</antml "
        "~<instructions ~</instructions",
        r"</?(?:tool_results?|tool_calls?|tool_use|tool_response|function_calls|function_results?|"
        r"function_call|system-reminder|system_message|system_prompt|system|assistant|antml:[a-z_]{1,30}|"
        r"instructions)>",
    ),
    _rule(
        "INJ_FAKE_SYSTEM_HEADER",
        "~# & ~system ~assistant ~new+instructions",
        r"#{1,6}[ \t]{0,20}(?:system|assistant|system prompt|new instructions)[ \t]{0,20}(?::|\n|$)",
    ),
    _rule(
        "INJ_FAKE_SYSTEM_HEADER",
        "~system+prompt ~system+message ~system+instruction ~[admin+ ~admin+override ~admin+prompt "
        "~admin+instruction ~system+override",
        r"(?:begin|end|start) (?:of )?(?:the )?system (?:prompt|message|instructions)\b",
        r"\[(?:system (?:note|message|override|prompt|instruction)|admin override)\]",
        r"(?:system|admin) (?:override|prompt|instruction) ?:",
    ),
    _rule(
        "INJ_FAKE_ROLE_JSON",
        "~role",
        r"[\"']role[\"'][ \t]{0,20}:[ \t]{0,20}[\"'](?:system|assistant|developer|tool|function)[\"']",
    ),
)
_INSTRUCTION_SYMBOLS = frozenset(
    {
        "INJ_IGNORE_INSTRUCTIONS",
        "INJ_NEW_INSTRUCTIONS",
        "INJ_ROLE_HIJACK",
        "INJ_JAILBREAK",
        "INJ_PROMPT_LEAK",
        "INJ_ADDRESSES_AGENT",
        "INJ_COVERT_ACTION",
        "INJ_EXFIL_INSTRUCTION",
        "INJ_FETCH_AND_SEND",
        "INJ_CREDENTIAL_REQUEST",
        "INJ_FAKE_CHAT_MARKUP",
        "INJ_FAKE_TOOL_MARKUP",
        "INJ_FAKE_SYSTEM_HEADER",
    }
)
# At a line start: after a "\n" (the text gets one in front), a literal the regex engine jumps
# to, where "(?m)^" has it try every position.
_ROLE_LINE = re.compile(
    r"\n[ \t>]{0,20}(system|assistant|human|user|ai|model|tool)[ \t]*:[ \t]*([^\n]{0,200})"
)
_ROLE_DIRECTIVE = re.compile(
    r"\b(?:you(?: are| must| will| should|'re)|your (?:task|role|instructions|job)|ignore|always|never|"
    r"from now on|the user)\b"
)


def _run_rules(
    rules: Iterable[_Rule],
    text: str,
    words: frozenset[bytes],
    hits: dict[str, str],
    boundary: bool = True,
    start_words: frozenset[bytes] | None = None,
) -> None:
    for rule in rules:
        if rule.symbol in hits or not rule.opens(words, text):
            continue
        for pattern in rule.patterns:
            match = pattern.first(text, boundary, start_words)
            if match is not None:
                hits[rule.symbol] = _snippet(match.group(0))
                break


def _first_at_word_start(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    for count, match in enumerate(pattern.finditer(text)):
        if _at_word_start(text, match.start()):
            return match
        if count >= 1000:  # "signore signore ...": the letters-only form still sees the real one
            break
    return None


def _instructions(text: str) -> dict[str, str]:
    """Instruction and markup symbols found in `text` -> a snippet of what matched."""
    text = text[: 4 * MAX_TEXT_CHARS]  # callers cap each part; this bounds a channel of several
    hits: dict[str, str] = {}
    lowered = _lower(text)
    _run_rules(_MARKUP_RULES, lowered, frozenset(), hits)
    _role_lines(lowered, hits)
    folded = _collapse(lowered if text.isascii() else _fold(text))
    words, start_words = _words(folded)
    _run_rules(_WORD_INDEX.candidates(words), folded, words, hits, start_words=start_words)
    found = [s for s in hits if s in _INSTRUCTION_SYMBOLS]
    if found and not text.isascii():
        plain = _collapse(_unaccent(lowered))
        if plain != folded:  # lookalikes, compatibility forms or invisible characters changed something
            clear: dict[str, str] = {}
            _run_rules([rule for rule in _WORD_RULES if rule.symbol in found], plain, _words(plain)[0], clear)
            masked = [s for s in found if s not in clear]
            if masked:
                hits.setdefault("INJ_OBFUSCATED", f"lookalike or invisible characters: {hits[masked[0]]}")
    squashed = _squash(folded)
    squashed_hits: dict[str, str] = {}
    _run_rules(_SQUASHED_RULES, squashed, frozenset(), squashed_hits, boundary=False)
    for symbol, snippet in squashed_hits.items():
        if symbol not in hits:
            hits[symbol] = snippet
            hits.setdefault("INJ_OBFUSCATED", f"spaced or leetspeak: {snippet}")
    return hits


def _role_lines(lowered: str, hits: dict[str, str]) -> None:
    """'System:' lines: weak alone (logs), strong when they give orders or fake a transcript."""
    if "system" not in lowered and "assistant" not in lowered:
        return
    labels: set[str] = set()
    for count, match in enumerate(_ROLE_LINE.finditer("\n" + lowered)):
        if count >= 50:
            break
        label, rest = match.groups()
        labels.add(label)
        if label in ("system", "assistant"):
            hits.setdefault("INJ_ROLE_LABEL", _snippet(match.group(0)))
            if _ROLE_DIRECTIVE.search(rest):
                hits.setdefault("INJ_FAKE_ROLE_TURN", _snippet(match.group(0)))
    if "assistant" in labels and labels & {"user", "human"}:
        hits.setdefault("INJ_FAKE_ROLE_TURN", "a user/assistant transcript")


# ---------------------------------------------------------------------------------------------
# HTML: visible text, hidden text by reason, comments, attributes, URLs


# As message._TAG: a tag ends at the first ">" outside quotes, matched within _MAX_TAG_CHARS;
# beyond that the loose form ends it at its first ">" (linear either way).
_TAG = re.compile(r"""<(/?)([A-Za-z][A-Za-z0-9:_-]*)((?:[^>"']++|"[^"]*+"|'[^']*+')*+)>""")
_LOOSE_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:_-]*)([^>]*)>")
_ATTR = re.compile(r"""([^\s"'>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?""")
_STRIP_TAGS = re.compile(r"<[^<>]{0,2048}>")
_RAW_TEXT = {
    name: re.compile(rf"</{name}(?=[\s/>])", re.I)
    for name in ("script", "style", "title", "iframe", "noembed", "noframes", "xmp")
}
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
    | {"param", "keygen", "basefont", "frame", "isindex"}
)
_BLOCK = frozenset(
    {
        *("address", "article", "aside", "blockquote", "body", "br", "dd", "div", "dl", "dt", "fieldset"),
        *("figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr"),
        *("li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody", "td", "tfoot", "th", "thead"),
        *("tr", "ul", "option", "center"),
    }
)
# Opening one of these closes an open <p> (the HTML parsing rule, simplified to the innermost one).
_CLOSES_P = frozenset(
    _BLOCK - {"br", "td", "th", "tr", "tbody", "thead", "tfoot", "dd", "dt", "li", "option"}
)
_IMPLIED_END = {"li": ("li",), "td": ("td", "th"), "th": ("td", "th"), "tr": ("td", "th", "tr"),
                "option": ("option",), "dt": ("dt", "dd"), "dd": ("dt", "dd")}  # fmt: skip
_FAKE_TAGS = frozenset(
    {"tool_result", "tool_results", "tool_call", "tool_use", "function_calls", "function_results", "system"}
    | {"system-reminder", "system_prompt", "assistant", "instructions", "im_start"}
)
_TEXT_ATTRS = ("alt", "title", "aria-label", "placeholder")
_URL_ATTRS = ("href", "src", "action", "background", "data", "poster", "formaction")
_NOTED_ATTRS = frozenset((*_TEXT_ATTRS, *_URL_ATTRS, "type"))
_STYLE_PROPS = frozenset(
    {"display", "visibility", "opacity", "font-size", "font", "color", "background", "background-color"}
    | {"background-image", "height", "max-height", "width", "max-width", "overflow", "position", "left"}
    | {"top", "right", "bottom", "text-indent", "clip", "clip-path", "transform", "margin-left", "margin-top"}
)

_Rgb = tuple[int, int, int]
_TRANSPARENT = "transparent"
_UNKNOWN = "unknown"  # a background image or colour we cannot read: no colour verdict
_WHITE: _Rgb = (255, 255, 255)
_NAMED_COLOURS: dict[str, _Rgb] = {
    "white": _WHITE, "black": (0, 0, 0), "snow": (255, 250, 250), "ivory": (255, 255, 240),
    "whitesmoke": (245, 245, 245), "ghostwhite": (248, 248, 255), "azure": (240, 255, 255),
    "mintcream": (245, 255, 250), "floralwhite": (255, 250, 240), "seashell": (255, 245, 238),
    "aliceblue": (240, 248, 255), "honeydew": (240, 255, 240), "lavenderblush": (255, 240, 245),
    "linen": (250, 240, 230), "red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255),
    "gray": (128, 128, 128), "grey": (128, 128, 128), "silver": (192, 192, 192),
    "yellow": (255, 255, 0), "navy": (0, 0, 128), "orange": (255, 165, 0), "maroon": (128, 0, 0),
    "purple": (128, 0, 128), "lightgray": (211, 211, 211), "lightgrey": (211, 211, 211),
    "darkgray": (169, 169, 169), "darkgrey": (169, 169, 169),
}  # fmt: skip
_HEX_COLOUR = re.compile(r"#?([0-9a-f]{8}|[0-9a-f]{6}|[0-9a-f]{3,4})(?![0-9a-z])")
_RGB_COLOUR = re.compile(
    r"rgba?\(\s*(\d{1,3})%?\s*[, ]\s*(\d{1,3})%?\s*[, ]\s*(\d{1,3})%?\s*(?:[,/]\s*([\d.]{1,8})(%?))?"
)
_LENGTH = re.compile(r"\s*(-?\d{0,6}\.?\d{1,6})\s*(px|pt|em|rem|%|ex|ch|vw|vh|cm|mm|in|pc)?")
_PX_PER = {"px": 1.0, "pt": 4 / 3, "em": 16.0, "rem": 16.0, "%": 0.16, "ex": 8.0, "ch": 8.0, "vw": 10.0,
           "vh": 10.0, "cm": 37.8, "mm": 3.78, "in": 96.0, "pc": 16.0, "": 1.0}  # fmt: skip


def _colour(value: str | None) -> _Rgb | str | None:
    """A CSS or HTML colour value: RGB, _TRANSPARENT, or None when unreadable."""
    if not value:
        return None
    value = value.strip().lower()
    if value.startswith("transparent"):
        return _TRANSPARENT
    match = _HEX_COLOUR.match(value)
    if match and (value.startswith("#") or len(match.group(1)) == 6):
        digits = match.group(1)
        if len(digits) in (3, 4):
            digits = "".join(c * 2 for c in digits)
        if len(digits) == 8 and int(digits[6:], 16) <= 16:
            return _TRANSPARENT
        return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))
    match = _RGB_COLOUR.match(value)
    if match:
        red, green, blue, alpha, percent = match.groups()
        if alpha:
            try:
                if float(alpha) / (100 if percent else 1) <= 0.05:
                    return _TRANSPARENT
            except ValueError:
                pass
        return (min(int(red), 255), min(int(green), 255), min(int(blue), 255))
    return _NAMED_COLOURS.get(value.split()[0] if value.split() else "")


_COLOUR_IN_VALUE = re.compile(r"#[0-9a-f]{3,8}(?![0-9a-z])|rgba?\(")


def _background(value: str) -> _Rgb | str | None:
    """The colour of a background (shorthand) value; _UNKNOWN for images; None to inherit."""
    value = value.strip().lower()[:300]
    found = _COLOUR_IN_VALUE.search(value)
    if found:
        return _colour(value[found.start() :]) or _UNKNOWN
    for token in re.split(r"[\s,]+", value):
        if token in _NAMED_COLOURS:
            return _NAMED_COLOURS[token]
    if "url(" in value or "gradient" in value:
        return _UNKNOWN
    if not value or value.startswith(("transparent", "none", "inherit", "initial", "unset")):
        return None
    return _UNKNOWN


def _px(value: str | None) -> float | None:
    if not value:
        return None
    match = _LENGTH.match(value)
    if not match:
        return None
    try:
        return float(match.group(1)) * _PX_PER[match.group(2) or ""]
    except ValueError:
        return None


def _strip_css_comments(css: str) -> str:
    """CSS without /* comments */ ("display:/**/none"), in one pass."""
    if "/*" not in css:
        return css
    kept, position = [], 0
    while position >= 0:
        start = css.find("/*", position)
        kept.append(css[position : start if start >= 0 else len(css)])
        end = css.find("*/", start + 2) if start >= 0 else -1
        position = end + 2 if end >= 0 else -1
    return "".join(kept)


def _declarations(style: str) -> dict[str, str]:
    """The CSS declarations we look at, comments and !important dropped."""
    style = _strip_css_comments(style[:4000])
    found = {}
    for declaration in style.split(";"):
        prop, colon, value = declaration.partition(":")
        prop = prop.strip().lower()
        if colon and prop in _STYLE_PROPS:
            found[prop] = value.lower().replace("!important", "").strip()
    return found


_CLIPPED_AWAY = re.compile(r"rect\(\s*0|inset\(\s*50%|circle\(\s*0")  # compiled: a call per element


def _sticky_reason(css: Mapping[str, str]) -> str | None:
    """Why an element hides everything in it, whatever its children say; None if it does not."""
    if css.get("display", "").startswith("none"):
        return "display:none"
    opacity = css.get("opacity")
    if opacity:
        number = _px(opacity.rstrip("%"))
        if number is not None and number / (100 if opacity.endswith("%") else 1) <= 0.05:
            return "opacity:0"
    if css.get("overflow", "").startswith(("hidden", "clip")) and any(
        _px(css.get(prop)) == 0 for prop in ("height", "max-height", "width", "max-width")
    ):
        return "zero size"
    offsets = ("left", "top", "right", "bottom", "margin-left", "margin-top")
    if css.get("position", "").startswith(("absolute", "fixed")) and any(
        (_px(css.get(prop)) or 0) <= -500 for prop in offsets
    ):
        return "off-screen"
    if (_px(css.get("text-indent")) or 0) <= -500:
        return "off-screen"
    clip = css.get("clip", "") + css.get("clip-path", "")
    if _CLIPPED_AWAY.match(clip):
        return "clipped"
    if css.get("transform", "").startswith("scale(0"):
        return "scaled to zero"
    return None


def _tiny(css: Mapping[str, str]) -> bool | None:
    """Whether a font-size makes text unreadable; None when the element sets no size."""
    size = css.get("font-size")
    if size is None and "font" in css:  # the shorthand: "bold 0/0 a" hides text too
        tokens = css["font"].replace("/", " ").split()
        size = next((t for t in tokens if t[:1].isdigit() or t[:1] == "."), None)
    if size is None:
        return None
    px = _px(size)
    return px is not None and px <= 2


@dataclass(slots=True)
class _Box:
    """What an open element passes to its content (never changed, so elements share it; not
    frozen, which is slow to make)."""

    sticky: str | None  # display:none and the like: nothing inside can undo it
    invisible: bool  # visibility:hidden, which a child can undo
    tiny: bool
    fg: _Rgb | str | None  # None: the default text colour
    bg: _Rgb | str
    reason: str | None  # why text directly inside is hidden; None when visible


# What an element says of its box (see _Box), None for what it leaves to its parent.
_Own = tuple[str | None, bool | None, bool | None, _Rgb | str | None, _Rgb | str | None]
_SAYS_NOTHING: _Own = (None, None, None, None, None)
_DEFAULT_BG = "default"  # white, unless the stylesheet sets backgrounds we cannot attribute
_ROOT = ("#root", _Box(None, False, False, None, _DEFAULT_BG, None))
_Open = tuple[str, _Box]  # an open element's name and box


class _HtmlView:
    """One forward walk over the HTML, linear in its length."""

    def __init__(self, html: str) -> None:
        self.visible: list[str] = []
        self.hidden: dict[str, list[str]] = {}  # reason -> text
        self.comments: list[str] = []
        self.attributes: list[str] = []
        self.urls: list[str] = []
        self.fake_tags: list[str] = []
        self.rest = ""  # markup beyond the token cap, tags stripped
        self.rules: dict[str, dict[str, str]] = {}  # ".class", "#id", "tag" -> declarations
        # A stylesheet colouring things by selectors we do not follow ("td.x a"): white text
        # on the default background may then sit on a dark one.
        self.colours_unsure = False
        self.unknown_bg: set[str] = set()  # selectors that complex rules may give a background
        self._sizes = {"visible": 0, "hidden": 0, "comments": 0, "attributes": 0}
        # Tags repeat ("<td class=x>" in every row): each distinct inside of a tag is parsed once,
        # and what it says of the box (_own) is worked out once per name and stylesheet.
        self._parsed: dict[str, tuple[dict[str, str], list[str], list[str]]] = {}
        self._owns: dict[tuple[str, str], tuple[bool, _Own | None]] = {}
        self._walk(html)
        self.visible_text = "".join(self.visible)

    def _keep(self, bucket: list[str], kind: str, text: str) -> None:
        if self._sizes[kind] < MAX_TEXT_CHARS:
            bucket.append(text)
            self._sizes[kind] += len(text)

    def _walk(self, html: str) -> None:
        stack: list[_Open] = [_ROOT]
        open_names: dict[str, int] = {}
        position, end = 0, len(html)
        # Quotes that never close in a tag make each strict match scan its whole window; after a
        # few such tags ("<a b='>' x <a b='>' ...") every tag ends at its first ">".
        strict_budget = 32
        sizes, visible = self._sizes, self.visible
        for _ in range(_MAX_HTML_TOKENS):
            if position >= end:
                return
            lt = html.find("<", position)
            if lt != position:
                text = html[position : lt if lt >= 0 else end]
                if stack[-1][1].reason is None and "&" not in text:  # most text: _text, inlined
                    if sizes["visible"] < MAX_TEXT_CHARS:
                        visible.append(text)
                        sizes["visible"] += len(text)
                else:
                    self._text(stack[-1][1], text)
            if lt < 0:
                return
            tag = _TAG.match(html, lt, lt + _MAX_TAG_CHARS) if strict_budget > 0 else None
            if tag is None:
                tag = _LOOSE_TAG.match(html, lt)
                strict_budget -= tag is not None
            if tag is None:
                position = self._not_a_tag(html, lt, stack[-1][1])
                continue
            position = tag.end()
            closing, name, inside = tag.groups()
            name = name.lower()
            if name in _FAKE_TAGS or name.startswith("antml:"):
                self.fake_tags.append(tag.group(0)[:_SNIPPET])
            # Words either side of a block are apart, even when it is hidden (_keep, inlined).
            if name in _BLOCK and sizes["visible"] < MAX_TEXT_CHARS:
                visible.append(" ")
                sizes["visible"] += 1
            if closing:
                if open_names.get(name):  # then an element of that name is open, above the root
                    popped = stack.pop()[0]  # each pop undoes one push: linear overall
                    open_names[popped] -= 1
                    while popped != name:
                        popped = stack.pop()[0]
                        open_names[popped] -= 1
                continue
            attrs = self._attributes(inside) if inside and not inside.isspace() else {}
            if name in _RAW_TEXT:
                close = _RAW_TEXT[name].search(html, position)
                if name == "style":
                    self._stylesheet(html[position : close.start() if close else end])
                position = (html.find(">", close.end()) + 1 or end) if close else end
                continue
            if name in _VOID:
                continue
            top = stack[-1][0]
            if (top == "p" and name in _CLOSES_P) or top in _IMPLIED_END.get(name, ()):
                self._pop(stack, open_names)
            if name == "tr" and stack[-1][0] == "tr":
                self._pop(stack, open_names)
            if len(stack) < _MAX_STACK:
                stack.append((name, self._box(name, inside, attrs, stack[-1][1])))
                open_names[name] = open_names.get(name, 0) + 1
        self.rest = _STRIP_TAGS.sub(" ", html[position : position + MAX_TEXT_CHARS * 2])

    @staticmethod
    def _pop(stack: list[_Open], open_names: dict[str, int]) -> None:
        if len(stack) > 1:
            open_names[stack.pop()[0]] -= 1

    def _not_a_tag(self, html: str, lt: int, box: _Box) -> int:
        if html.startswith("<!--", lt):
            close = html.find("-->", lt + 4)
            self._keep(
                self.comments, "comments", html[lt + 4 : close if close >= 0 else lt + 4 + MAX_TEXT_CHARS]
            )
            return close + 3 if close >= 0 else len(html)
        if html.startswith(("<!", "<?", "</"), lt):  # declaration, processing instruction, bogus end tag
            close = html.find(">", lt)
            return close + 1 if close >= 0 else len(html)
        if html[lt + 1 : lt + 2].isalpha():  # a tag with no ">" after it: the rest is that tag,
            self._keep(self.attributes, "attributes", html[lt : lt + MAX_TEXT_CHARS])  # unseen but read
            return len(html)
        self._text(box, "<")
        return lt + 1

    def _text(self, box: _Box, text: str) -> None:
        if "&" in text:
            text = unescape(text)
        if box.reason is None:
            self._keep(self.visible, "visible", text)
        elif not text.isspace():
            self._keep(self.hidden.setdefault(box.reason, []), "hidden", text)

    def _attributes(self, inside: str) -> dict[str, str]:
        parsed = self._parsed.get(inside)
        if parsed is None:  # (the insides are disjoint parts of the HTML: the cache is no bigger)
            parsed = self._parsed[inside] = _parse_attributes(inside)
        attrs, texts, urls = parsed
        for text in texts:
            self._keep(self.attributes, "attributes", text)
        if urls and len(self.urls) < _MAX_URLS:
            self.urls += urls
        return attrs

    def _box(self, name: str, inside: str, attrs: Mapping[str, str], parent: _Box) -> _Box:
        own = self._owns.get((name, inside))
        if own is None:
            own = self._owns[name, inside] = self._own(name, attrs)
        bare, says = own
        # Saying nothing, the element is its parent again. (The parent's reason came from the same
        # fields, maybe before a stylesheet made colours unsure: then the colour check is made again,
        # but for an element with neither attributes nor CSS, which always takes the parent's.)
        if says is None and (bare or not self.colours_unsure or not isinstance(parent.fg, tuple)):
            return parent
        sticky, invisible, tiny, fg, bg = says or _SAYS_NOTHING
        sticky = parent.sticky or sticky
        invisible = parent.invisible if invisible is None else invisible
        tiny = parent.tiny if tiny is None else tiny
        fg = parent.fg if fg is None else fg
        bg = parent.bg if bg is None else bg
        reason = sticky or ("visibility:hidden" if invisible else None) or ("tiny font" if tiny else None)
        if reason is None and fg == _TRANSPARENT:
            reason = "transparent text"
        elif reason is None and isinstance(fg, tuple):
            under = _WHITE if bg == _DEFAULT_BG and not self.colours_unsure else bg
            if (
                isinstance(under, tuple)
                and abs(fg[0] - under[0]) <= 16
                and abs(fg[1] - under[1]) <= 16
                and abs(fg[2] - under[2]) <= 16
            ):
                reason = "same colour as background"
        return _Box(sticky, invisible, tiny, fg, bg, reason)

    def _own(self, name: str, attrs: Mapping[str, str]) -> tuple[bool, _Own | None]:
        """Whether the element has neither attributes nor CSS, and what its name, attributes and
        the stylesheet say of its box before its parent counts (None: nothing)."""
        css: dict[str, str] = {}
        if self.rules or self.unknown_bg:  # a stylesheet
            keys = [name, *("." + cls.lower() for cls in attrs.get("class", "").split()[:20])]
            if attrs.get("id"):
                keys.append("#" + attrs["id"].lower())
            for key in keys:
                css.update(self.rules.get(key, {}))
            if self.unknown_bg and not self.unknown_bg.isdisjoint(keys):
                css.setdefault("background-image", "url()")
        if attrs.get("style"):
            css.update(_declarations(attrs["style"]))
        sticky = (
            (_sticky_reason(css) if css else None)
            or ("hidden attribute" if "hidden" in attrs else None)
            or ("<template>" if name == "template" else None)
        )
        visibility = css.get("visibility")
        invisible = None if visibility is None else visibility.startswith(("hidden", "collapse"))
        tiny = _tiny(css) if css else None
        fg = _colour(
            css.get("color") or attrs.get("color") or (attrs.get("text") if name == "body" else None)
        )
        bg_value = css.get("background-color") or css.get("background") or attrs.get("bgcolor")
        bg = _background(bg_value) if bg_value else None
        if bg is None and (attrs.get("background") or "url(" in css.get("background-image", "")):
            bg = _UNKNOWN
        says = (sticky, invisible, tiny, fg, bg)
        return not css and not attrs, None if says == _SAYS_NOTHING else says

    def _stylesheet(self, css: str) -> None:
        """Rules for plain tag, .class and #id selectors at top level (not inside @media)."""
        self._owns.clear()  # new rules change what elements say
        css = _strip_css_comments(css[:MAX_TEXT_CHARS]).replace("<!--", " ").replace("-->", " ")
        depth, start, selector, in_at_rule = 0, 0, "", False
        for brace in re.finditer(r"[{}]", css):
            if brace.group(0) == "{":
                if depth == 0:
                    selector = css[start : brace.start()].strip().lower()
                    in_at_rule = selector.startswith("@")
                depth += 1
                start = brace.end()
                continue
            depth = max(depth - 1, 0)
            if depth == 0 and not in_at_rule:
                css_decls = _declarations(css[start : brace.start()])
                backgrounds = css_decls.keys() & {"background", "background-color", "background-image"}
                for part in selector.split(",")[:50]:
                    key = _simple_selector(part.strip()[:200])
                    if key is not None and css_decls:
                        self.rules.setdefault(key, {}).update(css_decls)
                    elif backgrounds:
                        # ".wrap td.dark": whatever has class "dark" may sit on a background we do
                        # not know, so no colour verdict there (over-approximating is the safe side).
                        subject = re.split(r"[\s>+~]+", part.strip()[:200])[-1].split(":")[0]
                        subject_key = _simple_selector(subject)
                        if subject_key is None:
                            self.colours_unsure = True
                        else:
                            self.unknown_bg.add(subject_key)
            start = brace.end()


def _parse_attributes(inside: str) -> tuple[dict[str, str], list[str], list[str]]:
    """A tag's attributes; the text of those that show text (alt, title...) and its URLs."""
    attrs: dict[str, str] = {}
    for key, double, single, bare in _ATTR.findall(inside, 0, _MAX_TAG_CHARS):
        value = double or single or bare  # "" for a group that did not take part
        attrs.setdefault(key.lower(), unescape(value) if "&" in value else value)
    if attrs.keys().isdisjoint(_NOTED_ATTRS):  # most tags: class, style, width...
        return attrs, [], []
    texts = [attrs[key] + "\n" for key in _TEXT_ATTRS if attrs.get(key, "").strip()]
    if attrs.get("type", "").lower() == "hidden" and attrs.get("value"):
        texts.append(attrs["value"] + "\n")
    return attrs, texts, [attrs[key].strip() for key in _URL_ATTRS if attrs.get(key)]


def _simple_selector(selector: str) -> str | None:
    match = re.fullmatch(r"[a-z0-9]*([.#][\w-]{1,64})|([a-z][a-z0-9]{0,15})", selector)
    if match is None:
        return None
    return match.group(1) or match.group(2)


# ---------------------------------------------------------------------------------------------
# URLs, encoded payloads


_URL_TAIL = re.compile(r"://[^\s<>\"'`\]\)]{1,2048}")  # a literal first: the engine skips ahead fast
_MARKDOWN_IMAGE = re.compile(r"!\[[^\]\n]{0,300}\]\(\s*<?((?:https?:)?//[^\s)>]{1,2048})", re.I)
_DATA_URL = re.compile(r"data:([a-z]{1,20}/[a-z0-9.+-]{1,60})((?:;[a-z0-9=.+-]{1,60}){0,4}),", re.I)
_DATA_PAYLOAD = re.compile(r"[A-Za-z0-9+/=%._~-]{1,16384}")
_SECRET_WORD = (
    r"(?:secret|data|password|api|token|key|system|prompt|conversation|chat|summary|context|history|memory"
    r"|insert|credential)"
)
# Template holes in a URL that a model is meant to fill in; "{{" alone is enough.
_PLACEHOLDER = re.compile(
    rf"\{{\{{|\$\{{|\{{{_SECRET_WORD}[a-z0-9_ .-]{{0,40}}\}}|<{_SECRET_WORD}[a-z0-9_ -]{{0,40}}>"
    rf"|\[{_SECRET_WORD}[a-z0-9_ -]{{0,40}}\]|append[ +_-](?:the|your|all|here)|include[ +_-](?:the|your|all)"
    r"|system[ +_-]?prompt|conversation[ +_-]?history|chat[ +_-]?history"
)
_EXFIL_HOSTS = (
    "webhook.site", "requestbin.com", "requestbin.net", "requestcatcher.com", "pipedream.net", "hookbin.com",
    "beeceptor.com", "ngrok.io", "ngrok-free.app", "ngrok.app", "ngrok.dev", "burpcollaborator.net",
    "oastify.com", "interact.sh", "oast.pro", "oast.live", "oast.site", "oast.online", "oast.fun", "oast.me",
    "canarytokens.com", "postb.in", "ptsv2.com", "ptsv3.com", "trycloudflare.com", "serveo.net", "loca.lt",
    "localtunnel.me", "dnslog.cn", "ceye.io", "requestrepo.com", "webhook.cool", "mockbin.org",
)  # fmt: skip
_EXFIL_PATHS = ("discord.com/api/webhooks", "discordapp.com/api/webhooks")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX_RUN = re.compile(r"[0-9a-fA-F]{80,}")
# No payload without a run of 60 base64 characters (80 for hex): most mail stops here. Runs are
# looked for in the UTF-8 bytes with their characters mapped to "a" (C passes), not by a regex
# trying every letter.
_BASE64_TO_A = bytes(0x61 if chr(c) in "+/=_-" or chr(c).isalnum() else 0x20 for c in range(128)) + b" " * 128
_HEX_TO_A = bytes(0x61 if chr(c) in "0123456789abcdefABCDEF" else 0x20 for c in range(128)) + b" " * 128
_BASE64_GAP = re.compile(r"\s{1,4}")


_HOST_END = re.compile(r"[/?#\\]")


def _host(url: str) -> str:
    rest = url.split("://", 1)[-1].lstrip("/")
    host = _HOST_END.split(rest, maxsplit=1)[0]
    return host.rpartition("@")[2].split(":")[0].lower().rstrip(".")


def _printable_text(data: bytes) -> str | None:
    """`data` as text when it mostly is (so random bytes and binary blobs are left alone)."""
    text = data.decode("utf-8", "replace")
    if not text:
        return None
    if text.isascii():  # then `data` is `text`: count by deleting bytes (C passes)
        printable = len(data) - len(data.translate(None, _PRINTABLE_ASCII))
        letters = len(data) - len(data.translate(None, _ASCII_LETTERS))
    else:  # count each distinct character's test once
        counts = Counter(text)
        printable = sum(n for c, n in counts.items() if c.isprintable() or c in "\r\n\t")
        letters = sum(n for c, n in counts.items() if c.isalpha())
    return text if printable >= 0.95 * len(text) and letters >= 0.5 * len(text) else None


_PRINTABLE_ASCII = bytes(c for c in range(128) if chr(c).isprintable() or chr(c) in "\r\n\t")
_ASCII_LETTERS = bytes(c for c in range(128) if chr(c).isalpha())


def _base64_blobs(text: str) -> Iterable[str]:
    """Runs of base64 of 80+ characters, joined across the line breaks of wrapped blobs."""
    blob: list[str] = []
    size = last_end = found = 0
    for match in _BASE64_RUN.finditer(text):
        if blob and not _BASE64_GAP.fullmatch(text, last_end, match.start()):
            if size >= 80:
                yield "".join(blob)
                found += 1
            blob, size = [], 0
        if found >= _MAX_BLOBS:
            return
        if size < _MAX_BLOB_CHARS:
            blob.append(match.group(0))
            size += len(blob[-1])
        last_end = match.end()
    if size >= 80:
        yield "".join(blob)


def _decode_base64(blob: str) -> str | None:
    if blob.isalpha() or blob.isdigit():  # a long word or number is not a payload
        return None
    data = blob.replace("-", "+").replace("_", "/").rstrip("=")
    data = data[: len(data) - len(data) % 4] if len(data) % 4 == 1 else data
    try:
        return _printable_text(binascii.a2b_base64(data + "=" * (-len(data) % 4)))
    except (binascii.Error, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# The scan of one message


class _Scan:
    def __init__(self, scorer: _Scorer, message: ParsedMessage) -> None:
        self.scorer = scorer
        subject = message.data.get("subject") if isinstance(message.data, dict) else None
        self.subject = subject[:MAX_SUBJECT_CHARS] if isinstance(subject, str) else ""
        self.text = message.text[:MAX_TEXT_CHARS] if isinstance(message.text, str) else ""
        self.html = message.html[:MAX_HTML_CHARS] if isinstance(message.html, str) else None
        self.view: _HtmlView | None = None

    def run(self) -> None:
        add, guard = self.scorer.add, self._guard
        if self.html:
            self.view = guard("html", None, _HtmlView, self.html)
        view = self.view
        visible = "\n".join([self.subject, self.text, view.visible_text if view else ""])
        # What a human sees: the text body may be the HTML's text with its hidden parts included
        # (message.py), and preview lines there are padded with zero-width joiners.
        shown = "\n".join([self.subject, view.visible_text if view else self.text])
        hidden = "\n".join("".join(chunks) for chunks in view.hidden.values()) if view else ""
        comments = "\n".join(view.comments) if view else ""
        guard("characters", None, self._characters, visible, hidden, shown)
        guard("visible", None, self._channel, visible, None, None)
        if view is not None:
            guard("html-hidden", None, self._hidden_html, view)
            if comments.strip():
                comment_text = _STRIP_TAGS.sub(" ", comments)  # conditional comments hold markup
                guard("comments", None, self._channel, comment_text, "INJ_COMMENT_INSTRUCTIONS", "comment")
            if view.rest.strip():  # past the token cap: scanned, but we cannot tell visible from hidden
                guard("html-rest", None, self._channel, view.rest, None, None)
            for tag in view.fake_tags[:1]:
                add("INJ_FAKE_TOOL_MARKUP", f"tag {_snippet(tag)!r} in the HTML")
        attributes = "".join(view.attributes) if view else ""
        everything = "\n".join([visible, hidden, comments, attributes])
        guard("encoded", None, self._encoded, everything)
        guard("urls", None, self._urls, visible, view.urls if view else [])
        guard("requests", None, self._requests, visible)

    def _guard(self, part: str, fallback: Any, run: Callable[..., Any], *args: Any) -> Any:
        return _guard(self.scorer, part, fallback, run, *args)

    def _channel(self, text: str, meta: str | None, where: str | None) -> dict[str, str]:
        """Scan one channel; outside the visible one an instruction adds the channel's `meta` symbol."""
        hits = _instructions(text)
        for symbol, snippet in hits.items():
            self.scorer.add(symbol, f"{where}: {snippet!r}" if where else repr(snippet))
        if meta is not None:
            strong = [s for s in hits if s in _INSTRUCTION_SYMBOLS]
            if strong:
                self.scorer.add(meta, f"{where}: {hits[strong[0]]!r}")
        return hits

    def _hidden_html(self, view: _HtmlView) -> None:
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
            detail = f"{reasons}: {amount} chars: {_snippet(parts[0][2])!r}"
            self.scorer.add(symbol, detail, 1.0 if amount >= 150 else 0.5)
        if view.attributes:
            self._channel("".join(view.attributes), "INJ_HIDDEN_INSTRUCTIONS", "hidden (attribute)")

    def _characters(self, visible: str, hidden: str, shown: str) -> None:
        """Zero-width characters inside words anywhere, or many of them where a human looks; bidi
        controls; tag characters; words mixing scripts."""
        if _astral(visible) or _astral(hidden):
            self._tag_characters(visible + "\n" + hidden)
        if visible.isascii():
            return
        notable = not _latin1(visible) and _NOTABLE.search(visible) is not None
        in_word = sum(len(m.group(0)) for m in _ZW_IN_WORD.finditer(visible)) if notable else 0
        total = 0 if _latin1(shown) else len(_ZW_ANY.findall(shown))
        if in_word:
            detail = f"{total} zero-width characters, {in_word} inside words"
            self.scorer.add("INJ_ZERO_WIDTH", detail, 0.4 + in_word / 10)
        elif total >= 10:
            self.scorer.add("INJ_ZERO_WIDTH", f"{total} zero-width characters", 0.3)
        if not notable:
            return
        bidi = _BIDI_OVERRIDE if _RTL_LETTER.search(visible) else _BIDI
        controls = len(bidi.findall(visible))
        if controls:
            self.scorer.add("INJ_BIDI_CONTROL", f"{controls} bidi control characters", 0.5 + controls / 4)
        mixed = _MIXED_SCRIPT.search(visible)
        if mixed:
            around = visible[max(mixed.start() - 12, 0) : mixed.end() + 12]
            self.scorer.add("INJ_MIXED_SCRIPT", repr(_snippet(around)))

    def _tag_characters(self, text: str) -> None:
        """Unicode tag characters spell invisible ASCII: decode it and scan it as hidden text."""
        smuggled: list[str] = []
        for count, match in enumerate(_TAG_RUN.finditer(text)):
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
                "INJ_TAG_CHARS", f"{sum(map(len, smuggled))} tag characters: {_snippet(decoded)!r}"
            )
            self._channel(decoded, "INJ_HIDDEN_INSTRUCTIONS", "hidden (tag characters)")

    def _encoded(self, text: str) -> None:
        decoded: list[str] = []
        data = text.encode("utf-8", "replace")
        if b"a" * 60 in data.translate(_BASE64_TO_A):
            for blob in _base64_blobs(text):
                plain = _decode_base64(blob)
                if plain:
                    decoded.append(plain)
            hex_runs = _HEX_RUN.finditer(text) if b"a" * 80 in data.translate(_HEX_TO_A) else ()
            for count, match in enumerate(hex_runs):
                if count >= _MAX_BLOBS:
                    break
                hex_digits = match.group(0)[:_MAX_BLOB_CHARS]
                plain = _printable_text(bytes.fromhex(hex_digits[: len(hex_digits) // 2 * 2]))
                if plain:
                    decoded.append(plain)
        if decoded:
            self.scorer.add("INJ_BASE64_TEXT", f"{len(decoded)} blob(s), e.g. {_snippet(decoded[0])!r}")
        if "13" in text and any(hint in text for hint in ("rot13", "ROT13", "Rot13", "rot-13", "ROT-13")):
            decoded.append(codecs.encode(text[:MAX_TEXT_CHARS], "rot13"))
        if "data:" in text or "DATA:" in text:
            for count, match in enumerate(_DATA_URL.finditer(text)):
                if count >= _MAX_BLOBS:
                    break
                decoded += self._data_url(match, text)
        if decoded:
            self._channel("\n".join(decoded)[:MAX_TEXT_CHARS], "INJ_ENCODED_INSTRUCTIONS", "decoded")

    def _data_url(self, match: re.Match[str], text: str) -> list[str]:
        mime, params = match.group(1).lower(), match.group(2).lower()
        if mime.startswith(("image/", "audio/", "video/", "font/")):
            return []
        self.scorer.add("INJ_DATA_URL", f"data:{mime}")
        payload = _DATA_PAYLOAD.match(text, match.end())
        if not payload:
            return []
        if "base64" in params:
            plain = _decode_base64(unquote(payload.group(0)))
            return [plain] if plain else []
        return [unquote(payload.group(0))]

    def _urls(self, visible: str, html_urls: list[str]) -> None:
        urls = [m.group(0) for _, m in zip(range(_MAX_URLS), _URL_TAIL.finditer(visible), strict=False)]
        urls += html_urls[:_MAX_URLS]
        if "![" in visible:
            for match in _MARKDOWN_IMAGE.finditer(visible):
                if "?" in match.group(1):
                    self.scorer.add("INJ_MARKDOWN_IMAGE", repr(_snippet(match.group(0))))
                    break
        # A repeated URL adds nothing: every finding here has factor 1, so a repeat never replaces one.
        for url in dict.fromkeys(urls):
            if url.lower().startswith("data:"):
                data = _DATA_URL.match(url)
                if data:
                    decoded = self._data_url(data, url)
                    if decoded:
                        self._channel("\n".join(decoded), "INJ_ENCODED_INSTRUCTIONS", "decoded data: URL")
                continue
            lowered = (unquote(url[:2048]) if "%" in url else url[:2048]).lower()
            host = _host(lowered)
            if host.endswith(_EXFIL_HOSTS) or any(path in lowered for path in _EXFIL_PATHS):
                self.scorer.add("INJ_EXFIL_ENDPOINT", f"link to {host}")
            if _PLACEHOLDER.search(lowered.split("://", 1)[-1]):
                self.scorer.add("INJ_EXFIL_URL", repr(_snippet(url)))

    def _requests(self, visible: str) -> None:
        """Urgency only counts on top of a request for credentials or money."""
        findings = self.scorer.findings
        if "INJ_CREDENTIAL_REQUEST" not in findings and "INJ_MONEY_REQUEST" not in findings:
            return
        urgent = _URGENCY.search(_collapse(_fold(visible)))
        if urgent:
            self.scorer.add("INJ_URGENT_REQUEST", repr(_snippet(urgent.group(0))))

    def excerpt(self, limit: int) -> str | None:
        """About `limit` characters of what a human sees, cut at a word boundary."""
        if limit <= 0:
            return None
        source = self.view.visible_text if self.view is not None else ""
        if source.isspace() or not source:
            source = self.text
        return excerpt_of(source, limit, _shown)
