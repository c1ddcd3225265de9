"""Which instruction and markup symbols a text holds: markup and role lines on its lower-cased form,
the word rules on its folded form, the letters-only form for spaced and leetspeak words."""

from __future__ import annotations

from gatewayd.pipeline.injection.characters import collapse, fold, latin1, lower, snippet, squash, unaccent
from gatewayd.pipeline.injection.limits import MAX_TEXT_CHARS
from gatewayd.pipeline.injection.phrases import (
    INSTRUCTION_SYMBOLS,
    MARKUP_RULES,
    ROLE_DIRECTIVE,
    ROLE_LINE,
    RULE_WORDS,
    SCRIPT_RULES,
    SQUASHED_RULES,
    WORD_INDEX,
    WORD_RULES,
)
from gatewayd.pipeline.injection.rules import run_rules

_PUNCT = bytes(c for c in range(128) if not chr(c).isalnum())  # "don't" gives "don" and "t"
_PUNCT_TO_SPACE = bytes.maketrans(_PUNCT, b" " * len(_PUNCT))


def _words(text: str) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """The words of `text` (split at punctuation) that a word rule's gate or literal start names
    (RULE_WORDS), for the gates; and for the starts, these with the words beyond ASCII split again
    at non-ASCII characters: where a word starts, these hold the word, whatever precedes it ("—send"
    gives "send"). Bytes: translate is C; intersecting with a list builds no set of all the words."""
    split = text.encode("utf-8", "replace").translate(_PUNCT_TO_SPACE).split()
    words = RULE_WORDS.intersection(split)
    if text.isascii():
        return words, words
    beyond = b" ".join(word for word in split if not word.isascii()).translate(_NON_ASCII_TO_SPACE)
    return words, words.union(RULE_WORDS.intersection(beyond.split()))


_NON_ASCII_TO_SPACE = bytes(range(128)) + b" " * 128


def instructions(text: str) -> dict[str, str]:
    """Instruction and markup symbols found in `text` -> a snippet of what matched."""
    text = text[: 4 * MAX_TEXT_CHARS]  # callers cap each part; this bounds a channel of several
    hits: dict[str, str] = {}
    lowered = lower(text)
    run_rules(MARKUP_RULES, lowered, frozenset(), hits)
    _role_lines(lowered, hits)
    folded = collapse(lowered if text.isascii() else fold(text))
    words, start_words = _words(folded)
    run_rules(WORD_INDEX.candidates(words), folded, words, hits, start_words=start_words)
    if not text.isascii() and not latin1(text):
        # Their gates have no spaces: tried on the text as it is, most texts (a curly quote is
        # enough to get here) need no collapsed copy.
        scripts = [rule for rule in SCRIPT_RULES if rule.opens(frozenset(), lowered)]
        if scripts:
            run_rules(scripts, collapse(lowered), frozenset(), hits, boundary=False)
    found = [s for s in hits if s in INSTRUCTION_SYMBOLS]
    if found and not text.isascii():
        plain = collapse(unaccent(lowered))
        if plain != folded:  # lookalikes, compatibility forms or invisible characters changed something
            clear: dict[str, str] = {}
            run_rules([rule for rule in WORD_RULES if rule.symbol in found], plain, _words(plain)[0], clear)
            scripts = [rule for rule in SCRIPT_RULES if rule.symbol in found]
            run_rules(scripts, plain, frozenset(), clear, boundary=False)
            masked = [s for s in found if s not in clear]
            if masked:
                hits.setdefault("INJ_OBFUSCATED", f"lookalike or invisible characters: {hits[masked[0]]}")
    squashed = squash(folded)
    squashed_hits: dict[str, str] = {}
    run_rules(SQUASHED_RULES, squashed, frozenset(), squashed_hits, boundary=False)
    for symbol, hit in squashed_hits.items():
        if symbol not in hits:
            hits[symbol] = hit
            hits.setdefault("INJ_OBFUSCATED", f"spaced or leetspeak: {hit}")
    return hits


def _role_lines(lowered: str, hits: dict[str, str]) -> None:
    """'System:' lines: weak alone (logs), strong when they give orders or fake a transcript."""
    if "system" not in lowered and "assistant" not in lowered:
        return
    labels: set[str] = set()
    for count, match in enumerate(ROLE_LINE.finditer("\n" + lowered)):
        if count >= 50:
            break
        label, rest = match.groups()
        labels.add(label)
        if label in ("system", "assistant"):
            hits.setdefault("INJ_ROLE_LABEL", snippet(match.group(0)))
            if ROLE_DIRECTIVE.search(rest):
                hits.setdefault("INJ_FAKE_ROLE_TURN", snippet(match.group(0)))
    if "assistant" in labels and labels & {"user", "human"}:
        hits.setdefault("INJ_FAKE_ROLE_TURN", "a user/assistant transcript")
