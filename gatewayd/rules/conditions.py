"""Rule conditions evaluated on one message (gatewayd.rules.syntax parses them from YAML).

A condition is a mapping; each key is one test and all of them must hold. `all`, `any` and `not`
combine conditions. The tests read the event data the pipeline built (so the spam, auth and
injection verdicts are there) plus the message's headers and decoded body text. A test on a verdict
whose stage is not configured is false.

A test that cannot be decided for this message (a regex out of time, a verdict whose stage failed
on it) raises `Undecided`, and conditions fail closed: `all` and `any` decide without it when their
other children do (a false one, a true one), `not` of it is undecided too, and a rule whose `if` is
undecided does not match. So a message that makes a test fail can never make a rule fire that
would not fire whatever the test said (`not: {subject: {regex: ...}}` against a slow regex).

The same holds for a test that found nothing in what was read of a message only partly read: the
body text (cut at 256 KiB, by the fetch, or at the HTML converter's cap on markup) and the inline
text parts past it (not fetched, or past the budget attached.py reads them within), the headers
(longer than `MAX_HEADER_BYTES`, cut by the fetch, or beyond the parser), the parts (an attachment
past them, or past the MIME parser's limits on parts and nesting). Not finding is no proof of
absence there, so the test is undecided; a match found is still a match, unless more text could undo
it: `equals` on a body text cut short, and a regex match that ends at its cut or whose pattern looks
past the match (`stands_past_cut`).

A header value itself cut short (longer than the message parser keeps, or the last of headers cut)
is only part of the value, which may be cut inside an address (`a@example.com` of
`a@example.com.evil.test`) or an RFC 2047 encoded word (then its raw text is what is read): every
test on it, the addresses, `contains`, `bulk` and `auto_submitted` among them, is undecided, whether
it matches or not; only `exists` is decided.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import regex

from gatewayd.pipeline.auth.stage import SYMBOLS as AUTH_STAGE_SYMBOLS
from gatewayd.rules.facts import Facts, Undecided
from gatewayd.rules.match import AddressPattern, RegexTimeout, glob_any, stands_past_cut

VERDICTS = ("ham", "suspect", "spam")
AUTH_VERDICTS = ("pass", "fail", "none", "unknown")
AUTH_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy")
AUTH_SYMBOLS = tuple(sorted(AUTH_STAGE_SYMBOLS))
INJECTION_LEVELS = ("none", "low", "medium", "high")


class Condition(Protocol):
    def test(self, facts: Facts) -> bool:
        """Whether the condition holds; raises Undecided when that cannot be known."""
        ...


# -- combinators ----------------------------------------------------------------------------------


def _moot(facts: Facts, undecided: Undecided) -> None:
    """An undecided test whose combinator was decided by another child: reported all the same."""
    facts.errors.append(f'rule "{facts.rule}": {undecided} (decided without it)')


def _decide(children: tuple[Condition, ...], facts: Facts, decisive: bool) -> bool:
    """`decisive` as soon as a child says it (False for `all`, True for `any`), whatever others
    left undecided (those are noted as moot); else undecided if a child was, else `not decisive`."""
    undecided: Undecided | None = None
    for child in children:
        try:
            if bool(child.test(facts)) is decisive:
                if undecided is not None:
                    _moot(facts, undecided)
                return decisive
        except Undecided as exc:
            if undecided is not None:
                _moot(facts, exc)
            else:
                undecided = exc
    if undecided is not None:
        raise undecided
    return not decisive


@dataclass(frozen=True, slots=True)
class All:
    children: tuple[Condition, ...]

    def test(self, facts: Facts) -> bool:
        return _decide(self.children, facts, decisive=False)


@dataclass(frozen=True, slots=True)
class AnyOf:
    children: tuple[Condition, ...]

    def test(self, facts: Facts) -> bool:
        return _decide(self.children, facts, decisive=True)


@dataclass(frozen=True, slots=True)
class Not:
    child: Condition

    def test(self, facts: Facts) -> bool:
        return not self.child.test(facts)


# -- tests ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Addresses:
    field: str  # from | to | cc | reply_to
    patterns: tuple[AddressPattern, ...]

    def test(self, facts: Facts) -> bool:
        if cut := facts.parsed_cut(self.field.replace("_", "-")):
            raise _value_undecided(self.field, cut)
        value = facts.data.get(self.field)
        entries = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
        addresses = [
            e["address"] for e in entries if isinstance(e, dict) and isinstance(e.get("address"), str)
        ]
        if any(p.matches(a) for a in addresses for p in self.patterns):
            return True
        return _not_found(self.field, facts.headers_partial())


@dataclass(frozen=True, slots=True)
class Text:
    """contains, equals (both caseless: Unicode case folding, so "ss" matches "ß"), regex, exists: all
    given must hold. `contains` and `equals` are given folded (gatewayd.rules.syntax folds them)."""

    what: str  # subject | body | header <name>
    get: Callable[[Facts], list[str]]
    contains: tuple[str, ...] = ()
    equals: tuple[str, ...] = ()
    regexes: tuple[regex.Pattern[str], ...] = ()
    exists: bool | None = None
    # Why the values may be only part of the message's (a cut text, headers not all read), or None.
    partial: Callable[[Facts], str | None] | None = None
    # Why a value may be only the start of a header's, or None: then only `exists` is decided.
    cut: Callable[[Facts], str | None] | None = None
    # Why a text may end where it was cut (the body), or None: then a match more text could undo
    # (`equals`, a regex match at the cut) is undecided.
    ends_cut: Callable[[Facts], str | None] | None = None

    def test(self, facts: Facts) -> bool:
        cut = self.cut(facts) if self.cut is not None and self.exists is not False else None
        if cut is not None and (self.contains or self.equals or self.regexes):
            raise _value_undecided(self.what, cut)
        held = self._holds(facts)
        if held == (self.exists is not False):
            return held  # a match found (or, for `exists: false`, a value found) is decided
        return _not_found(self.what, self.partial(facts) if self.partial else None, held)

    def _holds(self, facts: Facts) -> bool:
        values = self.get(facts)
        if self.exists is not None and bool(values) != self.exists:
            return False
        if self.contains and not any(c in v.casefold() for v in values for c in self.contains):
            return False
        if self.equals and not any(v.strip().casefold() in self.equals for v in values):
            return False
        if self.equals and (why := self._ends_cut(facts)):
            raise Undecided(f"{self.what}: equals matched, but {why}")
        return self._searched(facts, values) if self.regexes else True

    def _searched(self, facts: Facts, values: list[str]) -> bool:
        """Whether a regex matches a value; undecided when the matches found may be undone by the
        text past a cut (the first match of each pattern in each value is looked at)."""
        undone: str | None = None
        try:
            for pattern in self.regexes:
                for value in values:
                    match = facts.budget.search(pattern, value)
                    if match is None:
                        continue
                    why = self._ends_cut(facts)
                    if why is None or stands_past_cut(pattern, match, len(value)):
                        return True
                    undone = (
                        undone or f"regex {pattern.pattern[:60]!r} matched, but {why}, and more may undo it"
                    )
        except RegexTimeout as exc:
            raise Undecided(f"{self.what}: {exc}") from None
        if undone is not None:
            raise Undecided(f"{self.what}: {undone}")
        return False

    def _ends_cut(self, facts: Facts) -> str | None:
        return self.ends_cut(facts) if self.ends_cut is not None else None


@dataclass(frozen=True, slots=True)
class Predicate:
    """A yes/no property of the message (bulk, auto_submitted, has_attachments, list_id: true)."""

    get: Callable[[Facts], bool]
    expected: bool
    what: str = ""
    partial: Callable[[Facts], str | None] | None = None  # as for Text: then "no" is not decided
    cut: Callable[[Facts], str | None] | None = None  # as for Text: then nothing is decided

    def test(self, facts: Facts) -> bool:
        if self.cut is not None and (cut := self.cut(facts)):
            raise _value_undecided(self.what, cut)
        if self.get(facts):
            return self.expected
        return _not_found(self.what, self.partial(facts) if self.partial else None, not self.expected)


@dataclass(frozen=True, slots=True)
class Globs:
    get: Callable[[Facts], list[str]]
    patterns: tuple[str, ...]
    what: str = ""
    partial: Callable[[Facts], str | None] | None = None  # as for Text
    cut: Callable[[Facts], str | None] | None = None  # as for Text: then no glob is decided

    def test(self, facts: Facts) -> bool:
        values = self.get(facts)
        cut = self.cut(facts) if self.cut is not None else None
        if cut is not None:
            raise _value_undecided(self.what, cut)
        if any(glob_any(self.patterns, value) for value in values):
            return True
        return _not_found(self.what, self.partial(facts) if self.partial else None)


@dataclass(frozen=True, slots=True)
class Range:
    get: Callable[[Facts], float | None]
    over: float | None = None
    under: float | None = None
    at_least: float | None = None
    at_most: float | None = None

    def test(self, facts: Facts) -> bool:
        value = self.get(facts)
        if value is None:
            return False
        return (
            (self.over is None or value > self.over)
            and (self.under is None or value < self.under)
            and (self.at_least is None or value >= self.at_least)
            and (self.at_most is None or value <= self.at_most)
        )


@dataclass(frozen=True, slots=True)
class OneOf:
    get: Callable[[Facts], list[str]]
    values: tuple[str, ...]

    def test(self, facts: Facts) -> bool:
        return any(map(self.values.__contains__, self.get(facts)))  # no generator: see facts.is_list


def _value_undecided(what: str, cut: str) -> Undecided:
    return Undecided(f"{what}: undecided, as its value was not all read ({cut})")


def _not_found(what: str, partial: str | None, result: bool = False) -> bool:
    """`result` of a test that found nothing, unless what it looked in was not all read."""
    if partial is not None:
        raise Undecided(f"{what}: not found, but {partial}")
    return result
