"""Matching primitives for rule conditions: address patterns, globs, bounded regular expressions.

A user's regular expression must not hang the gateway: patterns are compiled with the `regex`
package, whose matcher takes a timeout (Python's `re` has none, and a catastrophic pattern such as
`(x+x+)+y` runs for hours on a few kilobytes). Every search gets at most `REGEX_TIMEOUT` seconds and
the whole message at most `REGEX_BUDGET`; the text searched is cut to `MAX_TEXT` characters. A
search that runs out of time raises `RegexTimeout`: its condition is undecided (see
gatewayd.rules.conditions), and the event's `rules_errors` says so.

A match found in a text cut short (the body past 256 KiB) may not be one in the whole text: `foo$`
matches at the cut. `stands_past_cut` tells the matches more text cannot undo (see there).

The rules stage first evaluates on the event loop under an `InlineBudget` of `INLINE_BUDGET`:
running out of that is no verdict but `NeedsMoreTime`, and the message is evaluated again, from
the start, in a worker thread under the full budget. Ordinary patterns take microseconds, so the
thread hop (about as costly as a whole message's stages) is only paid for a slow or hostile one.
"""

from __future__ import annotations

import fnmatch
import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from encodings.idna import nameprep

import regex

from gatewayd.message.lowercase import lower
from gatewayd.pipeline.auth.domains import ascii_domain

REGEX_TIMEOUT = 0.05
REGEX_BUDGET = 0.25
INLINE_BUDGET = 0.002
MAX_TEXT = 256 * 1024
# What makes a pattern a glob (`]` too: a label is not cut out of a `[...]` holding a dot).
_WILDCARDS = "*?[]"
# A search timed out by other threads' CPU is tried again (see RegexBudget.search), up to this many
# times in all, its timeout scaled by at most this much.
_ATTEMPTS = 3
_MAX_SCALE = 8.0
# Characters a match must end before the end of a cut text to stand: `$` matches before a final
# newline, and `\b` looks at the character after the match.
CUT_MARGIN = 2
# The `(?` groups that decide on nothing past their position: non-capturing and named groups,
# lookbehind, comments, flags Python's `re` has (not regex's WORD, whose boundaries look further).
_PLAIN_GROUP = regex.compile(r"\(\?(?:[:#]|P?<(?:[=!]|\w+>)|[aiLmsux-]+[:)])")
# Backtracking verbs and possessive quantifiers: they commit to a choice made on the text they saw.
_COMMITS = regex.compile(r"\(\*|[*+?}]\+")


class RegexTimeout(Exception):
    pass


class NeedsMoreTime(Exception):
    """The regexes of an evaluation on the event loop ran out of its short budget."""


@dataclass(frozen=True, slots=True)
class AddressPattern:
    """`bob@example.org` (exact), `@example.org` or `example.org` (the domain), or a glob with
    `*`/`?`/`[...]` (`*@*.example.org`). Caseless as `contains` is (Unicode case folding), with
    domains compared in their ASCII form, as the auth stage compares them (`bücher.de` is
    `xn--bcher-kva.de`), or in Unicode form for a glob with a wildcard in a label beyond ASCII
    (`*bücher*`). `value` is given folded (`parse`, `glob` and gatewayd.rules.syntax fold it)."""

    kind: str  # address | domain | glob
    value: str
    # A glob without `@` (`*.bücher.example`) spans the local part and the domain, and cannot tell
    # which of its labels are the domain's: it also matches in this form, its labels without a
    # wildcard in ASCII form, as a glob with `@` has its domain; "" when that is `value`.
    labels_in_ascii: str = ""
    # A glob with a label holding a wildcard and a character beyond ASCII (`*@*bücher*.example`)
    # has no ASCII form (a wildcard is no punycode): it also matches in this form, against the
    # address with its domain in Unicode form (see `_in_unicode`); "" when it has no such label.
    in_unicode: str = ""

    @classmethod
    def parse(cls, text: str) -> AddressPattern:
        text = text.strip()
        if any(c in text for c in _WILDCARDS):
            return cls.glob(text)
        if text.startswith("@"):
            return cls("domain", ascii_domain(text[1:]))
        if "@" not in text:
            return cls("domain", ascii_domain(text))
        return cls("address", fold_address(text))

    def matches(self, address: str) -> bool:
        address = fold_address(address)
        if self.kind == "address":
            return address == self.value
        if self.kind == "domain":
            return address.rpartition("@")[2] == self.value
        return (
            fnmatch.fnmatchcase(address, self.value)
            or bool(self.labels_in_ascii and fnmatch.fnmatchcase(address, self.labels_in_ascii))
            or bool(self.in_unicode and _matches_in_unicode(address, self.in_unicode))
        )

    @classmethod
    def glob(cls, text: str) -> AddressPattern:
        folded = fold_address(text)
        local, at, domain = text.strip().rpartition("@")
        if at:
            in_unicode = _unicode_glob(domain)
            return cls("glob", folded, "", f"{local.casefold()}@{in_unicode}" if in_unicode else "")
        labels = [
            label if any(c in label for c in _WILDCARDS) else ascii_domain(label)
            for label in folded.split(".")
        ]
        in_ascii = ".".join(labels)
        return cls("glob", folded, in_ascii if in_ascii != folded else "", _unicode_glob(folded))


def fold_address(address: str) -> str:
    """The local part case-folded, the domain in ASCII form (a glob's `*` labels stay as they are)."""
    local, at, domain = address.strip().rpartition("@")
    return f"{local.casefold()}@{ascii_domain(domain)}" if at else address.strip().casefold()


def _unicode_glob(domain: str) -> str:
    """A domain glob in the Unicode form IDNA gives (nameprep: lower case, `ß` is `ss`), when one
    of its labels holds a wildcard and a character beyond ASCII; else "" (its ASCII form serves)."""
    labels = lower(domain).split(".")
    if not any(not label.isascii() and any(c in label for c in _WILDCARDS) for label in labels):
        return ""
    return ".".join(_unicode_label(label) for label in labels)


def _unicode_label(label: str) -> str:
    try:
        if any(c in label for c in _WILDCARDS):
            return nameprep(label)  # as IDNA reads a label, but a wildcard is no punycode
        return label.encode("idna").decode("idna")  # `xn--p1ai` is `рф`, `Bücher` `bücher`
    except UnicodeError:
        return label  # not a valid IDN label: compared as written


def _matches_in_unicode(address: str, glob: str) -> bool:
    """Whether a folded address, its domain in Unicode form (`xn--bcher-kva.example` is
    `bücher.example`), matches `glob`. A domain with a label that is no valid punycode has no
    Unicode form: it matches in none."""
    local, _, domain = address.rpartition("@")
    if "xn--" in domain:
        try:
            address = f"{local}@{domain.encode('ascii').decode('idna')}"
        except UnicodeError:
            return False
    return fnmatch.fnmatchcase(address, glob)


def glob_any(patterns: Iterable[str], text: str) -> bool:
    """Caseless (case-folded) fnmatch of text against any pattern."""
    folded = text.casefold()
    return any(fnmatch.fnmatchcase(folded, pattern.casefold()) for pattern in patterns)


class RegexBudget:
    """The regex time left for one message."""

    def __init__(self, seconds: float = REGEX_BUDGET) -> None:
        self.deadline = time.monotonic() + seconds

    def search(self, pattern: regex.Pattern[str], text: str) -> regex.Match[str] | None:
        """The first match of `pattern` in `text`, or None; RegexTimeout when the search used its own
        REGEX_TIMEOUT of CPU, or the message's budget is used up.

        `regex` times a search by the CPU time of the whole process, so other threads' work (the
        store's writes, another message's rules) counts against it: a search stopped having run
        less than half its time itself is tried again, its timeout scaled by its share of the CPU.
        """
        text = text[:MAX_TEXT]
        scale = 1.0
        for _ in range(_ATTEMPTS):
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                message = f"regex {pattern.pattern[:60]!r} skipped: the message's regex time is used up"
                raise RegexTimeout(message)
            timeout = min(REGEX_TIMEOUT, remaining)
            started = time.thread_time()
            try:
                return pattern.search(text, timeout=timeout * scale)
            except TimeoutError:
                own = time.thread_time() - started
                if own >= timeout / 2:
                    break
                scale = min(_MAX_SCALE, 1.25 * timeout * scale / max(own, 1e-4))
        raise RegexTimeout(f"regex {pattern.pattern[:60]!r} timed out after {timeout * 1000:.0f} ms")


class InlineBudget(RegexBudget):
    """The short budget of an evaluation on the event loop (see the module docstring)."""

    def __init__(self, seconds: float = INLINE_BUDGET) -> None:
        super().__init__(seconds)

    def search(self, pattern: regex.Pattern[str], text: str) -> regex.Match[str] | None:
        try:
            return super().search(pattern, text)
        except RegexTimeout:
            raise NeedsMoreTime from None


def stands_past_cut(pattern: regex.Pattern[str], match: regex.Match[str], length: int) -> bool:
    """Whether `match`, found in a text of `length` characters that may continue past its end, is
    a match of the whole text too. It is when no step of the search's path to it looked past the
    character after its end, and that character was read: the match ends `CUT_MARGIN` characters
    before the cut, and the pattern has nothing that looks further or commits on what it saw there
    (a lookahead, also in a conditional or a lookbehind; an atomic group, a possessive quantifier,
    a backtracking verb, a subroutine call, a flag beyond Python's). The path's steps (`$`, `\\b`,
    greedy quantifiers, backreferences, lookbehind) then go the same way in the whole text, so the
    match is there too, if maybe not the first. Anything else: False, though it may be a match.
    """
    return length - match.end() >= CUT_MARGIN and _sees_its_match_alone(pattern.pattern)


@functools.lru_cache(maxsize=256)
def _sees_its_match_alone(source: str) -> bool:
    """Read from the pattern's source, escapes and character classes included: a `(?=` in `[(?=]`
    makes it False, never a lookahead True."""
    return source.count("(?") == len(_PLAIN_GROUP.findall(source)) and _COMMITS.search(source) is None


def compile_regex(pattern: str) -> regex.Pattern[str]:
    """Compile as Python `re` would (version 0 syntax); raises ValueError with the reason."""
    try:
        return regex.compile(pattern, regex.V0)
    except regex.error as exc:
        raise ValueError(f"invalid regex: {exc}") from None
