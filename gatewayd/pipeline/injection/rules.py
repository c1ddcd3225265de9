"""The rule machinery: a rule is a symbol, a gate of words or substrings, and patterns whose literal
starts are worked out from the regex at import; the index picks the rules a text's words may open."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from re import _constants as _sre  # type: ignore[attr-defined]  # private stdlib: no stubs
from re._parser import parse as _sre_parse  # type: ignore[import-not-found]  # private stdlib: no stubs
from typing import Any, cast

from gatewayd.pipeline.injection.characters import snippet

_MAX_STARTS = 24  # more literal starts would cost more str.find passes than they save
_REPEATS = (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT)
_FIRST_WORD = re.compile(r"([A-Za-z0-9]+)[^A-Za-z0-9]")
_ASCII_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def _literals(items: Iterable[tuple[Any, Any]]) -> set[str] | None:
    """The strings a parsed regex sequence matches, when they are a few literal ones; else None."""
    strings = {""}
    options: set[str] | None
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
            options = None if None in branches else set().union(*cast("list[set[str]]", branches))
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


def _heads(items: Iterable[tuple[Any, Any]]) -> set[str] | None:
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
            first = None if None in branches else set().union(*cast("list[set[str]]", branches))
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
    # One start, and the regex begins with a literal character: the engine then looks for the
    # literal text it begins with as fast as str.find does ("#{1,6}" it would try everywhere).
    scans: bool = False

    def first(self, text: str, boundary: bool, start_words: frozenset[bytes] | None) -> re.Match[str] | None:
        """The first match, or with `boundary` the first at a word start (see _first_at_word_start).
        `start_words`: the second set of _words(text), or None when not known."""
        if self.starts is not None and not self._matches_at_a_start(text, boundary, start_words):
            return None
        return _first_at_word_start(self.regex, text) if boundary else self.regex.search(text)

    def _matches_at_a_start(self, text: str, boundary: bool, start_words: frozenset[bytes] | None) -> bool:
        if self.scans:
            return self._matches_at_the_start(text, boundary, start_words)
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

    def _matches_at_the_start(self, text: str, boundary: bool, start_words: frozenset[bytes] | None) -> bool:
        """_matches_at_a_start for a regex with one start that begins with a literal character (see
        `scans`): the engine jumps between its occurrences itself and tries the rest there, and only
        matches come back here. Every match begins with the start: these are the occurrences that
        match."""
        (_, words), *_ = self.starts or ()
        if boundary and words is not None and start_words is not None and words.isdisjoint(start_words):
            return False
        search = self.regex.search
        found = search(text)
        while found is not None:
            if not boundary or _at_word_start(text, found.start()):
                return True
            found = search(text, found.start() + 1)
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
    prefixes = [os.path.commonprefix(same) for same in by_first.values()]  # noqa: RUF071 (not paths)
    # Where a prefix holds another ("[admin " holds "admin "), its substrings are only there when
    # the shorter prefix is: they join that prefix's regex (no regex: that prefix opens the group
    # alone), and the longer prefix costs no pass of its own. The shortest prefix held is never
    # one that holds another, or that one would be shorter still.
    merged: dict[str, list[str]] = {}
    for prefix, same in zip(prefixes, by_first.values(), strict=True):
        held = [p for p in prefixes if p != prefix and p in prefix]
        merged.setdefault(min(held, key=len) if held else prefix, []).extend(same)
    return tuple((prefix, _any_of(prefix, same)) for prefix, same in merged.items())


def _any_of(prefix: str, same: list[str]) -> re.Pattern[str] | None:
    """None when `prefix` is one of `same`, else a regex for any of `same` (see above)."""
    if prefix in same:
        return None
    alternatives = [s for s in same if s.startswith(prefix)]
    parts = [re.escape(prefix) + "(?:" + "|".join(re.escape(s[len(prefix) :]) for s in alternatives) + ")"]
    return re.compile("|".join(parts + [re.escape(s) for s in same if not s.startswith(prefix)]))


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


def rule(symbol: str, gate: str, *alternatives: str) -> _Rule:
    """`gate`: groups separated by "&", each of words or "~substrings" ("+" for a space)."""
    groups = []
    for group in gate.split("&"):
        items = group.split()
        words = frozenset(i.encode() for i in items if not i.startswith("~"))
        groups.append((words, _substrings(i[1:].replace("+", " ") for i in items if i.startswith("~"))))
    patterns = tuple(_pattern(regex) for regex in map(re.compile, alternatives))
    return _Rule(symbol, tuple(groups), patterns)


def _pattern(regex: re.Pattern[str]) -> _Pattern:
    starts = _starts(regex)
    items = list(_sre_parse(regex.pattern, regex.flags))
    literal_first = bool(items) and items[0][0] is _sre.LITERAL and not regex.flags & re.IGNORECASE
    return _Pattern(regex, starts, starts is not None and len(starts) == 1 and literal_first)


class RuleIndex:
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


def run_rules(
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
                hits[rule.symbol] = snippet(match.group(0))
                break


def _first_at_word_start(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    for count, match in enumerate(pattern.finditer(text)):
        if _at_word_start(text, match.start()):
            return match
        if count >= 1000:  # "signore signore ...": the letters-only form still sees the real one
            break
    return None
