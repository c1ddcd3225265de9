"""Auto-reply and forward texts: Jinja templates in a sandbox, filled with the message's fields.

Jinja's `ImmutableSandboxedEnvironment` keeps a template away from Python internals (no attribute
walks to `__class__`, no mutation of the values passed in). On top of it: no `range` (a loop can
only walk the message's own short lists), `*` and `**` that refuse huge results, and a cap on the
rendered size. Templates are compiled at load, and a name that is not one of `FIELDS` is an error
then, not when the first message arrives.
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT = 64 * 1024
_MAX_PRODUCT = 100_000

FIELDS = {
    "subject": "the message's subject (decoded)",
    "sender": "the sender: {address, name}",
    "sender_address": "the sender's address",
    "sender_name": "the sender's display name (or its address)",
    "to": "the To addresses",
    "date": "the message's Date (RFC 3339)",
    "message_id": "the message's Message-ID",
    "excerpt": "the start of the text, with hidden text removed",
    "folder": "the folder it arrived in",
    "mailbox": "this mailbox: {id, address}",
    "rule": "the name of the rule",
}


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            if _number(left) and _number(right) and abs(left) <= 10**6 and abs(right) <= 64:
                return operator.pow(left, right)
            raise SecurityError("** is limited to small numbers in templates")
        sequence = next((v for v in (left, right) if isinstance(v, str | list | tuple)), None)
        if sequence is not None:
            times = right if sequence is left else left
            if isinstance(times, int) and len(sequence) * times > _MAX_PRODUCT:
                raise SecurityError("that repetition would be too large")
        return operator.mul(left, right)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_ENV = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_ENV.globals.pop("range", None)


class Template:
    """A compiled template; `render` raises ValueError with the reason on failure."""

    def __init__(self, source: str) -> None:
        if not isinstance(source, str):
            raise ValueError("expected the template text (a string)")
        try:
            tree = _ENV.parse(source)
            # Compiling finds what parsing does not: an unknown filter or test (TemplateAssertionError).
            undeclared = meta.find_undeclared_variables(tree)
        except TemplateSyntaxError as exc:
            raise ValueError(f"template syntax error on line {exc.lineno}: {exc.message}") from None
        for name in sorted(undeclared):
            if name not in FIELDS and not _assigned(tree, name):
                close = difflib.get_close_matches(name, FIELDS, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                raise ValueError(f'unknown field "{name}"{hint}; fields: {", ".join(FIELDS)}')
        self.source = source
        self._template = _ENV.from_string(source)

    def render(self, context: Mapping[str, Any]) -> str:
        out: list[str] = []
        size = 0
        try:
            for chunk in self._template.generate(**context):
                out.append(chunk)
                size += len(chunk)
                if size > MAX_OUTPUT:
                    raise ValueError(f"template output over {MAX_OUTPUT} characters")
        except ValueError:
            raise
        except Exception as exc:  # undefined names, sandbox refusals, filter errors
            raise ValueError(f"template failed: {type(exc).__name__}: {str(exc)[:200]}") from None
        return "".join(out)


def _assigned(tree: nodes.Template, name: str) -> bool:
    return any(
        isinstance(node, nodes.Name) and node.name == name and node.ctx in ("store", "param")
        for node in tree.find_all(nodes.Name)
    )


def context_for(data: Mapping[str, Any], mailbox_id: str, address: str | None, rule: str) -> dict[str, Any]:
    """The template fields of a message's event data."""
    sender = data.get("from")
    if not isinstance(sender, dict):
        sender = {}
    sender_address = str(sender.get("address") or "")
    return {
        "subject": str(data.get("subject") or ""),
        "sender": {"address": sender_address, "name": sender.get("name")},
        "sender_address": sender_address,
        "sender_name": str(sender.get("name") or sender_address),
        "to": [str(e.get("address")) for e in data.get("to") or [] if isinstance(e, dict)],
        "date": data.get("date"),
        "message_id": data.get("message_id"),
        "excerpt": str(data.get("sanitized_excerpt") or data.get("body_text_excerpt") or ""),
        "folder": data.get("folder"),
        "mailbox": {"id": mailbox_id, "address": address},
        "rule": rule,
    }
