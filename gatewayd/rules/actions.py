"""Rule actions as written in YAML: one mapping of one key per action, or a bare name.

then:
  - move: Archive                      # or {folder: Archive, create: true}
  - add_keywords: [invoice]
  - mark_read
  - auto_reply: {body: "Thanks, {{ sender_name }}.", period_days: 7}
  - stop
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gatewayd.rules.syntax import Invalid, _bool, _strings, _unknown
from gatewayd.rules.template import Template

SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Draft")
_SYSTEM_FLAG_SPELLING = {flag.lower(): flag for flag in SYSTEM_FLAGS}
# RFC 3501 atom: ASCII, no space, control, ( ) { % * " \ ] (a server answers 8-bit data with BAD).
_KEYWORD = re.compile(r'[^\x00-\x20\x7f-\U0010ffff(){%*"\\\]]{1,200}')
_ADDRESS = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+")
MAX_PERIOD_DAYS = 365
DEFAULT_FORWARD_MAX_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Action:
    """One action; `params` are what the event's `rules_applied` shows and the journal keeps."""

    kind: str
    params: tuple[tuple[str, Any], ...] = ()
    template: Template | None = None

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def describe(self) -> dict[str, Any]:
        return {"action": self.kind, **dict(self.params)}


def _canonical(folder: str) -> str:
    """INBOX is case-insensitive (RFC 3501 5.1): `move: inbox` is a move to INBOX, which the rules
    must know is where the message already is."""
    folder = folder.strip()
    return "INBOX" if folder.upper() == "INBOX" else folder


def _folder(value: Any) -> tuple[tuple[str, Any], ...]:
    if isinstance(value, str) and value.strip():
        return (("folder", _canonical(value)), ("create", False))
    if isinstance(value, dict):
        _only(value, ("folder", "create"))
        folder = value.get("folder")
        if not isinstance(folder, str) or not folder.strip():
            raise Invalid((".folder", "expected a folder name"))
        try:
            create = _bool(value.get("create", False))
        except Invalid:
            raise Invalid((".create", "expected true or false")) from None
        return (("folder", _canonical(folder)), ("create", create))
    raise Invalid(("", "expected a folder name or {folder, create}"))


def _only(value: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in value:
        if key not in keys:
            raise Invalid((f".{key}", _unknown(key, keys)))


def _flags(value: Any) -> tuple[str, ...]:
    flags = _strings(value, "a flag or a list of flags")
    canonical: list[str] = []
    for flag in flags:
        # System flags are case-insensitive (RFC 3501): `\seen` is `\Seen`.
        if flag.lower() == "\\deleted":
            raise Invalid(("", "\\Deleted is not allowed: use move (to Trash) instead"))
        spelling = _SYSTEM_FLAG_SPELLING.get(flag.lower())
        if spelling is None:
            raise Invalid(
                (
                    "",
                    f'"{flag}" is not a flag: expected one of {", ".join(SYSTEM_FLAGS)}'
                    " (keywords go in add_keywords)",
                )
            )
        canonical.append(spelling)
    return tuple(canonical)


def _keywords(value: Any) -> tuple[str, ...]:
    keywords = _strings(value, "a keyword or a list of keywords")
    for keyword in keywords:
        if not _KEYWORD.fullmatch(keyword):
            raise Invalid(
                (
                    "",
                    f'"{keyword}" is not a valid IMAP keyword'
                    ' (ASCII, no spaces, \\ ( ) { % * " ]; at most 200)',
                )
            )
    return keywords


def _addresses(value: Any) -> tuple[str, ...]:
    addresses = _strings(value, "an address or a list of addresses")
    for address in addresses:
        if not _ADDRESS.fullmatch(address.strip()):
            raise Invalid(("", f'"{address}" is not an address like name@example.com'))
    return tuple(a.strip() for a in addresses)


def _template(value: Any, key: str) -> Template:
    try:
        return Template(value)
    except ValueError as exc:
        raise Invalid((f".{key}", str(exc))) from None


def _auto_reply(value: Any) -> Action:
    if isinstance(value, str):
        value = {"body": value}
    if not isinstance(value, dict):
        raise Invalid(("", "expected {body, period_days, from_name} (or the body text)"))
    _only(value, ("body", "period_days", "from_name"))
    if "body" not in value:
        raise Invalid((".body", "missing required key"))
    template = _template(value["body"], "body")
    period = value.get("period_days", 7)
    if isinstance(period, bool) or not isinstance(period, int | float) or not 0 <= period <= MAX_PERIOD_DAYS:
        raise Invalid((".period_days", f"expected a number of days 0-{MAX_PERIOD_DAYS}"))
    from_name = value.get("from_name")
    if from_name is not None and (not isinstance(from_name, str) or not from_name.isprintable()):
        # A CR alone is no more allowed in a header than a LF: every reply would fail to compose.
        raise Invalid((".from_name", "expected a display name (one line, no control characters)"))
    return Action("auto_reply", (("period_days", float(period)), ("from_name", from_name)), template)


def _forward(value: Any) -> Action:
    if isinstance(value, str | list):
        value = {"to": value}
    if not isinstance(value, dict):
        raise Invalid(("", "expected an address, a list of addresses, or {to, note, max_bytes}"))
    _only(value, ("to", "note", "max_bytes"))
    if "to" not in value:
        raise Invalid((".to", "missing required key"))
    try:
        to = _addresses(value["to"])
    except Invalid as bad:
        raise Invalid(*[(f".to{at}", m) for at, m in bad.problems]) from None
    note = _template(value["note"], "note") if "note" in value else None
    max_bytes = value.get("max_bytes", DEFAULT_FORWARD_MAX_BYTES)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1024:
        raise Invalid((".max_bytes", "expected a number of bytes >= 1024"))
    return Action("forward", (("to", list(to)), ("max_bytes", max_bytes)), note)


def _switch(kind: str) -> Any:
    """`- mark_read`, `mark_read: true` (and for mark_read, `false`: mark unread)."""

    def parse(value: Any) -> Action:
        flag = True if value is None else _bool(value)
        if kind == "mark_read":
            return Action(kind, (("read", flag),))
        if not flag:
            raise Invalid(("", f"{kind}: false does nothing; leave the action out"))
        return Action(kind)

    return parse


def _report(value: Any) -> Action:
    if value not in ("spam", "ham"):
        raise Invalid(("", 'expected "spam" or "ham"'))
    return Action("report", (("label", value),))


def _tag(value: Any) -> Action:
    return Action("tag", (("labels", list(_strings(value, "a label or a list of labels"))),))


_ACTIONS: dict[str, Any] = {
    "move": lambda v: Action("move", _folder(v)),
    "copy": lambda v: Action("copy", _folder(v)),
    "add_flags": lambda v: Action("add_flags", (("flags", list(_flags(v))),)),
    "remove_flags": lambda v: Action("remove_flags", (("flags", list(_flags(v))),)),
    "add_keywords": lambda v: Action("add_keywords", (("keywords", list(_keywords(v))),)),
    "remove_keywords": lambda v: Action("remove_keywords", (("keywords", list(_keywords(v))),)),
    "mark_read": _switch("mark_read"),
    "auto_reply": _auto_reply,
    "forward": _forward,
    "report": _report,
    "tag": _tag,
    "drop_event": _switch("drop_event"),
    "stop": _switch("stop"),
}
ACTION_NAMES = tuple(_ACTIONS)
# Actions that change something outside the event (and so go through the journal).
SIDE_EFFECTS = frozenset(ACTION_NAMES) - {"tag", "drop_event", "stop"}
SENDS = frozenset({"auto_reply", "forward"})


def parse_action(value: Any) -> Action:
    if isinstance(value, str):
        name, argument = value, None
        if name in _ACTIONS and name not in ("mark_read", "drop_event", "stop"):
            raise Invalid(("", f"{name} needs an argument, e.g. `{name}: ...`"))
    elif isinstance(value, dict) and len(value) == 1:
        name, argument = next(iter(value.items()))
    else:
        raise Invalid(
            ("", "expected one action: a mapping with one key (move: Archive) or a name (mark_read)")
        )
    if name not in _ACTIONS:
        raise Invalid(
            ("", f'unknown action "{name}"' + _unknown(name, ACTION_NAMES).removeprefix("unknown key"))
        )
    try:
        return _ACTIONS[name](argument)
    except Invalid as bad:
        raise Invalid(*[(f".{name}{at}", message) for at, message in bad.problems]) from None
