"""Rules as written in YAML, checked: every problem is an `Invalid` with its key path.

A condition is a mapping; each key is one test and all of them must hold. `all`, `any` and `not`
combine conditions (gatewayd.rules.conditions evaluates them).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any

from gatewayd.pipeline.auth.domains import ascii_domain
from gatewayd.rules.conditions import (
    AUTH_RESULTS,
    AUTH_SYMBOLS,
    AUTH_VERDICTS,
    INJECTION_LEVELS,
    VERDICTS,
    Addresses,
    All,
    AnyOf,
    Condition,
    Globs,
    Not,
    OneOf,
    Predicate,
    Range,
    Text,
)
from gatewayd.rules.facts import (
    Facts,
    as_number,
    attachment_types,
    auth_symbols,
    dkim_results,
    injection_score,
    is_auto_submitted,
    is_bulk,
    is_list,
    list_ids,
    nested,
    spam_score,
)
from gatewayd.rules.match import AddressPattern, compile_regex, fold_address

_SIZE = re.compile(r"(?i)\s*([0-9]+(?:\.[0-9]+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*")
_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class Invalid(Exception):
    """A condition or action that does not parse: (path suffix, message) pairs."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        super().__init__(problems)
        self.problems = problems


def _strings(value: Any, what: str = "a string or a list of strings") -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise Invalid(("", f"expected {what}"))
    return tuple(items)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(("", "expected true or false"))
    return value


def _choices(options: Sequence[str]) -> Callable[[Any], tuple[str, ...]]:
    def parse(value: Any) -> tuple[str, ...]:
        values = _strings(value, "one of " + ", ".join(options) + " (or a list of them)")
        bad = [v for v in values if v not in options]
        if bad:
            raise Invalid(("", f'unknown value "{bad[0]}": expected one of {", ".join(options)}'))
        return values

    return parse


def _auth_symbols(value: Any) -> tuple[str, ...]:
    """Symbols of the auth stage's findings; there are too many to list them all in an error."""
    values = _strings(value, "auth finding symbols like FROM_LOOKALIKE_DOMAIN (or a list of them)")
    for symbol in values:
        if symbol not in AUTH_SYMBOLS:
            close = difflib.get_close_matches(symbol, AUTH_SYMBOLS, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise Invalid(("", f'unknown auth finding "{symbol}"{hint}'))
    return values


def parse_size(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise Invalid(("", 'expected a size: bytes, or a number with K, M or G (1024-based) like "10M"'))
    return float(match.group(1)) * _UNITS[(match.group(2) or "b")[0].lower()]


def _range(get: Callable[[Facts], float | None], value: Any, size: bool = False) -> Range:
    keys = ("over", "under", "at_least", "at_most")
    if not isinstance(value, dict) or not value:
        raise Invalid(("", "expected a mapping with over, under, at_least and/or at_most"))
    bounds: dict[str, float] = {}
    for key, bound in value.items():
        if key not in keys:
            raise Invalid((f".{key}", _unknown(key, keys)))
        try:
            bounds[key] = parse_size(bound) if size else _finite(bound)
        except Invalid as bad:
            raise Invalid(*[(f".{key}{at}", message) for at, message in bad.problems]) from None
    return Range(get, **bounds)


def _finite(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 1e18:
        return float(value)
    raise Invalid(("", "expected a number"))


def _unknown(key: object, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    return "unknown key" + (f' (did you mean "{close[0]}"?)' if close else "")


def _text(
    what: str,
    get: Callable[[Facts], list[str]],
    value: Any,
    partial: Callable[[Facts], str | None],
    header: bool = False,
    cut: Callable[[Facts], str | None] | None = None,
    ends_cut: Callable[[Facts], str | None] | None = None,
) -> Text:
    """A plain string means `contains`. `partial`: why the values may not be all of them; `cut`:
    why a value may be only the start of a header's; `ends_cut`: why a text may end at a cut."""
    if isinstance(value, str):
        return Text(what, get, contains=(value.casefold(),), partial=partial, cut=cut, ends_cut=ends_cut)
    keys = ("contains", "equals", "regex", *(("exists",) if header else ()))
    if not isinstance(value, dict) or not value:
        raise Invalid(("", f"expected a string (contains) or a mapping with {', '.join(keys)}"))
    parts: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for key, item in value.items():
        if key not in keys:
            problems.append((f".{key}", _unknown(key, keys)))
            continue
        try:
            if key == "regex":
                patterns = _strings(item)
                compiled = []
                for i, pattern in enumerate(patterns):
                    try:
                        compiled.append(compile_regex(pattern))
                    except ValueError as exc:
                        at = f"[{i}]" if isinstance(item, list) else ""
                        problems.append((f".regex{at}", str(exc)))
                parts["regexes"] = tuple(compiled)
            elif key == "exists":
                parts["exists"] = _bool(item)
            else:
                parts[key] = tuple(
                    s.casefold().strip() if key == "equals" else s.casefold() for s in _strings(item)
                )
        except Invalid as bad:
            problems += [(f".{key}{at}", message) for at, message in bad.problems]
    if problems:
        raise Invalid(*problems)
    return Text(what, get, partial=partial, cut=cut, ends_cut=ends_cut, **parts)


def _header(value: Any) -> Condition:
    if isinstance(value, list):
        tests, problems = [], []
        for i, item in enumerate(value):
            try:
                tests.append(_header(item))
            except Invalid as bad:
                problems += [(f"[{i}]{at}", message) for at, message in bad.problems]
        if problems or not tests:
            raise Invalid(*(problems or [("", "expected a non-empty list")]))
        return All(tuple(tests))
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"].strip():
        raise Invalid(("", "expected a mapping with name and contains, equals, regex or exists"))
    name = value["name"].strip().lower()
    rest = {k: v for k, v in value.items() if k != "name"} or {"exists": True}
    return _text(
        f"header {name}",
        lambda facts: facts.header(name),
        rest,
        Facts.headers_partial,
        header=True,
        cut=lambda facts: facts.value_cut(name),
    )


def _addresses(field_name: str, value: Any) -> Addresses:
    if isinstance(value, dict):
        keys = ("address", "domain", "glob")
        patterns: list[AddressPattern] = []
        for key, item in value.items():
            if key not in keys:
                raise Invalid((f".{key}", _unknown(key, keys)))
            try:
                texts = _strings(item)
            except Invalid as bad:
                raise Invalid(*[(f".{key}{at}", m) for at, m in bad.problems]) from None
            for text in texts:
                if key == "domain":
                    patterns.append(AddressPattern("domain", ascii_domain(text.strip().lstrip("@"))))
                elif key == "glob":
                    patterns.append(AddressPattern.glob(text.strip()))
                else:
                    patterns.append(AddressPattern(key, fold_address(text)))
        if not patterns:
            raise Invalid(("", "expected address, domain and/or glob"))
        return Addresses(field_name, tuple(patterns))
    return Addresses(field_name, tuple(AddressPattern.parse(text) for text in _strings(value)))


def _list_id(value: Any) -> Condition:
    if isinstance(value, bool):
        return Predicate(is_list, value, "list_id", Facts.headers_partial)
    return Globs(
        list_ids, _strings(value), "list_id", Facts.headers_partial, lambda f: f.value_cut("list-id")
    )


def _auth(value: Any) -> Condition:
    if isinstance(value, str | list):
        return OneOf(nested("auth", "verdict"), _choices(AUTH_VERDICTS)(value))
    keys = {
        "verdict": AUTH_VERDICTS,
        "spf": AUTH_RESULTS,
        "dkim": AUTH_RESULTS,
        "dmarc": AUTH_RESULTS,
        "findings": AUTH_SYMBOLS,
    }
    if not isinstance(value, dict) or not value:
        raise Invalid(
            (
                "",
                "expected a verdict (pass, fail, none, unknown)"
                " or a mapping of verdict, spf, dkim, dmarc, findings",
            )
        )
    tests: list[Condition] = []
    for key, item in value.items():
        if key not in keys:
            raise Invalid((f".{key}", _unknown(key, tuple(keys))))
        try:
            values = _auth_symbols(item) if key == "findings" else _choices(keys[key])(item)
        except Invalid as bad:
            raise Invalid(*[(f".{key}{at}", m) for at, m in bad.problems]) from None
        get = {
            "verdict": nested("auth", "verdict"),
            "spf": nested("auth", "spf", "result"),
            "dmarc": nested("auth", "dmarc", "result"),
            "dkim": dkim_results,
            "findings": auth_symbols,
        }[key]
        tests.append(OneOf(get, values))
    return All(tuple(tests))


_TESTS: dict[str, Callable[[Any], Condition]] = {
    "from": lambda v: _addresses("from", v),
    "to": lambda v: _addresses("to", v),
    "cc": lambda v: _addresses("cc", v),
    "reply_to": lambda v: _addresses("reply_to", v),
    "subject": lambda v: _text(
        "subject",
        lambda f: [str(f.data.get("subject") or "")],
        v,
        Facts.headers_partial,
        cut=lambda f: f.parsed_cut("subject"),
    ),
    "body": lambda v: _text("body", Facts.bodies, v, Facts.bodies_partial, ends_cut=Facts.bodies_cut),
    "header": _header,
    "list_id": _list_id,
    "bulk": lambda v: Predicate(
        is_bulk, _bool(v), "bulk", Facts.headers_partial, lambda f: f.value_cut("precedence")
    ),
    "auto_submitted": lambda v: Predicate(
        is_auto_submitted,
        _bool(v),
        "auto_submitted",
        Facts.headers_partial,
        lambda f: f.value_cut("auto-submitted"),
    ),
    "has_attachments": lambda v: Predicate(
        lambda f: bool(f.data.get("has_attachments")), _bool(v), "has_attachments", Facts.parts_partial
    ),
    "attachment_type": lambda v: Globs(attachment_types, _strings(v), "attachment_type", Facts.parts_partial),
    "size": lambda v: _range(lambda f: as_number(f.data.get("size")), v, size=True),
    "spam_verdict": lambda v: OneOf(nested("spam", "verdict"), _choices(VERDICTS)(v)),
    "spam_score": lambda v: _range(spam_score, v),
    "auth": _auth,
    "injection_score": lambda v: _range(injection_score, v),
    "injection_level": lambda v: OneOf(nested("injection", "level"), _choices(INJECTION_LEVELS)(v)),
    "folder": lambda v: Globs(lambda f: [str(f.data.get("folder") or "")], _strings(v)),
}
CONDITION_KEYS = ("all", "any", "not", *_TESTS)


def parse_condition(value: Any) -> Condition:
    """Parse a condition mapping; raises Invalid with every problem found, paths relative to it."""
    if not isinstance(value, dict) or not value:
        raise Invalid(("", f"expected a mapping of conditions ({', '.join(CONDITION_KEYS[:8])}, ...)"))
    tests: list[Condition] = []
    problems: list[tuple[str, str]] = []
    for key, item in value.items():
        try:
            if key in ("all", "any"):
                if not isinstance(item, list) or not item:
                    raise Invalid(("", "expected a non-empty list of conditions"))
                children = []
                for i, child in enumerate(item):
                    try:
                        children.append(parse_condition(child))
                    except Invalid as bad:
                        problems += [(f".{key}[{i}]{at}", message) for at, message in bad.problems]
                tests.append(All(tuple(children)) if key == "all" else AnyOf(tuple(children)))
            elif key == "not":
                tests.append(Not(parse_condition(item)))
            elif key in _TESTS:
                tests.append(_TESTS[key](item))
            else:
                problems.append((f".{key}", _unknown(key, CONDITION_KEYS)))
        except Invalid as bad:
            problems += [(f".{key}{at}", message) for at, message in bad.problems]
    if problems:
        raise Invalid(*problems)
    return tests[0] if len(tests) == 1 else All(tuple(tests))
