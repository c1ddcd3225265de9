"""Value checks: each takes a raw YAML value and returns the clean value or raises _Invalid, whose
message says what was expected and what came (never a secret's value)."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Hashable
from typing import Any
from urllib.parse import urlsplit

from gatewayd.config.model import SENT_AUTO

Check = Callable[[Any], Any]


class _Invalid(Exception):
    """A value failed its check: (path suffix such as "" or "[2]", message) pairs."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        super().__init__(problems)
        self.problems = problems


def _fail(message: str) -> _Invalid:
    return _Invalid(("", message))


def _kind(value: Any) -> str:
    """What a value is, without showing it."""
    if isinstance(value, list) and not value:
        return "an empty list"
    kinds = {type(None): "null", bool: "a boolean", str: "a string", int: "an integer", float: "a number"}
    return {**kinds, dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)


def _describe(value: Any) -> str:
    """A short rendering of a (non-secret) value for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if len(repr(value)) <= 30 else "a huge number"
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...", ensure_ascii=False)
    return _kind(value)


def _check(ok: Callable[[Any], object], want: str, convert: Callable[[Any], Any] = lambda v: v) -> Check:
    """A check from a predicate; a value failing it gets `expected <want>, got <value>`."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise _fail(f"expected {want}, got {_describe(value)}")
        return convert(value)

    return check


def _is_int(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _is_number(v: Any) -> bool:  # the bound also keeps out inf, nan and ints too large for a float
    return isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < 1e18


# No setting needs more, and SQLite cannot store more (a retention count, say).
_MAX_INTEGER = 2**63 - 1


def _integer(lo: int, hi: int | None = None) -> Check:
    if hi is not None:
        return _check(lambda v: _is_int(v) and lo <= v <= hi, f"an integer {lo}-{hi}", int)
    at_least = _check(lambda v: _is_int(v) and lo <= v, f"an integer >= {lo}", int)

    def check(value: Any) -> int:
        number: int = at_least(value)
        if number > _MAX_INTEGER:
            raise _fail(f"expected an integer below 2^63, got {_describe(value)}")
        return number

    return check


def _number(lo: float, hi: float | None = None, *, above: bool = False) -> Check:
    """An int or float in range; `above` makes `lo` exclusive."""
    want = f"a number {lo}-{hi}" if hi is not None else f"a number {'>' if above else '>='} {lo}"

    def ok(v: Any) -> bool:
        return _is_number(v) and (v > lo if above else v >= lo) and (hi is None or v <= hi)

    return _check(ok, want, float)


def _choice(*options: str, fold_case: bool = False) -> Check:
    fold: Callable[[str], str] = str.lower if fold_case else str
    want = "one of " + ", ".join(map(json.dumps, options))
    return _check(lambda v: isinstance(v, str) and fold(v) in options, want, fold)


_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_LISTEN = re.compile(r"(?:\[(?P<v6>[^\]\s]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>[0-9]{1,5})")

_positive = _number(0, above=True)
_boolean = _check(lambda v: isinstance(v, bool), "true or false")
_string = _check(lambda v: isinstance(v, str) and v != "", "a non-empty string")
_address = _check(lambda v: isinstance(v, str) and _ADDRESS.fullmatch(v), "an address like name@example.com")
_DOMAIN = re.compile(r"@?[^@\s<>.]+(?:\.[^@\s<>.]+)+\.?")
_domain = _check(lambda v: isinstance(v, str) and _DOMAIN.fullmatch(v), "a domain like example.com")
# What a Host header may name: a host name or address, an IPv6 one in brackets, with a port or not.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]@]+)(?::[0-9]{1,5})?")
_host = _check(lambda v: isinstance(v, str) and _HOST.fullmatch(v), 'a host name or "host:port"')
_ident = _check(lambda v: isinstance(v, str) and _ID.fullmatch(v), "1-64 characters from A-Z a-z 0-9 . _ -")
# A login name or password goes into one IMAP or SMTP command line: a CR or LF in it would end that
# command and send the rest as another (aioimaplib quotes only quotes and backslashes), NUL separates
# AUTH PLAIN's fields.
_LINE_BREAK = re.compile(r"[\r\n\0]")
_login_name = _check(
    lambda v: isinstance(v, str) and v != "" and not _LINE_BREAK.search(v),
    "a non-empty string without line breaks",
)
# A systemd credential's name, as `LoadCredential=NAME:...` gives it: a file name in
# $CREDENTIALS_DIRECTORY, so no "/" (nor "." or "..") can lead outside it.
_credential_name = _check(
    lambda v: isinstance(v, str) and v not in ("", ".", "..") and not re.search(r"[/\0]", v),
    'a file name (the NAME of LoadCredential=NAME:...): not empty, no "/"',
)


def _secret(value: Any) -> str:  # never echoed
    if not isinstance(value, str) or not value:
        raise _fail("expected a string" if not isinstance(value, str) else "must not be empty")
    if _LINE_BREAK.search(value):
        raise _fail("must not contain a line break or NUL")
    return value


def _hex_digest(value: Any) -> str:  # not echoed: it may be the token itself, pasted by mistake
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        got = f"{len(value)} characters" if isinstance(value, str) else _kind(value)
        raise _fail(f"expected the token's SHA-256 as 64 hex characters (never the token), got {got}")
    return value.lower()


def _sent_folder(value: Any) -> str | None:
    if value is None or value is False:
        return None
    if not isinstance(value, str) or not value:
        raise _fail(f'expected "{SENT_AUTO}", a folder name, or null/false for off, got {_describe(value)}')
    return value


def _listen(value: Any) -> tuple[str, int]:
    match = _LISTEN.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match["port"]) > 65535:
        raise _fail(f'expected "host:port" or "[ipv6]:port" with a port 0-65535, got {_describe(value)}')
    return match["v6"] or match["host"], int(match["port"])


def _nullable(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def _list_of(
    item: Check,
    *,
    single_ok: bool = False,
    nonempty: bool = False,
    unique: bool = False,
    same: Callable[[Any], Hashable] = lambda clean: clean,
) -> Check:
    """`same` gives what two elements are compared by, with `unique`."""

    def check(value: Any) -> tuple[Any, ...]:
        if single_ok and isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or (nonempty and not value):
            raise _fail(f"expected a {'non-empty ' if nonempty else ''}list, got {_describe(value)}")
        out: list[Any] = []
        first_of: dict[Hashable, Any] = {}
        problems: list[tuple[str, str]] = []
        for i, element in enumerate(value):
            try:
                clean = item(element)
            except _Invalid as bad:
                problems += [(f"[{i}]{at}", message) for at, message in bad.problems]
                continue
            known = len(first_of)
            first = first_of.setdefault(same(clean), clean)
            if unique and len(first_of) == known:  # nothing new: a duplicate
                also = "" if first == clean else f" (the same as {_describe(first)})"
                problems.append((f"[{i}]", f"duplicate {_describe(clean)}{also}"))
            out.append(clean)
        if problems:
            raise _Invalid(*problems)
        return tuple(out)

    return check


def _weights(value: Any) -> dict[str, float]:
    """SYMBOL: score; each bad entry is reported under its own symbol."""
    if not isinstance(value, dict):
        raise _fail(f"expected a mapping of SYMBOL: score, got {_describe(value)}")
    problems = [
        (
            f".{symbol}",
            "expected a symbol name"
            if not isinstance(symbol, str)
            else f"expected a number, got {_describe(score)}",
        )
        for symbol, score in value.items()
        if not isinstance(symbol, str) or not _is_number(score)
    ]
    if problems:
        raise _Invalid(*problems)
    return {symbol: float(score) for symbol, score in value.items()}


# The injection score from which each `injection.level` starts; below the lowest: "none".
INJECTION_LEVELS = {"low": 0.2, "medium": 0.5, "high": 0.8}


def _injection_levels(value: Any) -> dict[str, float]:
    """Some or all of INJECTION_LEVELS' bounds, the rest default; each above the one before."""
    if not isinstance(value, dict):
        raise _fail(f"expected a mapping of level: score such as {{high: 0.9}}, got {_describe(value)}")
    unknown = [key for key in value if key not in INJECTION_LEVELS]
    if unknown:
        raise _fail(f"unknown level {_describe(unknown[0])}; the levels are {', '.join(INJECTION_LEVELS)}")
    levels = dict(INJECTION_LEVELS)
    for name, bound in value.items():
        if not _is_number(bound) or not 0 < bound <= 1:
            raise _fail(f"{name}: expected a number above 0 and at most 1, got {_describe(bound)}")
        levels[name] = float(bound)
    bounds = list(levels.values())
    if any(lower >= upper for lower, upper in itertools.pairwise(bounds)):
        order = " < ".join(f"{name} ({bound:g})" for name, bound in levels.items())
        raise _fail(f"each level must start above the one before: {order}")
    return levels


def _http_url(value: Any) -> str:
    """A server's http(s) URL: scheme, host, optional port and path; no credentials, query or fragment."""
    want = 'an http:// or https:// URL such as "http://127.0.0.1:11333"'
    if not isinstance(value, str):
        raise _fail(f"expected {want}, got {_describe(value)}")
    try:
        parts = urlsplit(value)
    except ValueError:  # "http://[::1": an unclosed IPv6 bracket
        raise _fail(f"expected {want}, got {_describe(value)}") from None
    if "@" in parts.netloc:  # not echoed: it may hold a password
        raise _fail("credentials in the URL are not supported; use `password`")
    try:
        port_ok = parts.port != 0
    except ValueError:  # not a number, or out of range
        port_ok = False
    # A space or control character in the host is no host: aiohttp would refuse it on every message.
    host = parts.hostname or ""
    host_ok = bool(host) and host.isprintable() and " " not in host
    if parts.scheme not in ("http", "https") or not host_ok or not port_ok:
        raise _fail(f"expected {want}, got {_describe(value)}")
    if parts.query or parts.fragment:
        raise _fail(f"expected {want}, without a query or fragment, got {_describe(value)}")
    return value
