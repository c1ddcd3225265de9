"""Auto-reply and forward texts: Jinja templates in a sandbox, filled with the message's fields.

Jinja's `ImmutableSandboxedEnvironment` keeps a template away from Python internals (no attribute
walks to `__class__`, no mutation of the values passed in). On top of it: no `range` or `lipsum`
(a loop can only walk the message's own short lists), `*` and `**` that refuse huge results, and a
cap on the rendered size. Templates are compiled at load, and a name that is not one of `FIELDS`, or
a filter that does not exist, is an error then, not when the first message arrives. Compiling folds
no constant filter or `%` (Jinja would evaluate `{{ ''|center(10**9) }}` right then).

The sandbox bounds what a template may touch, not what it costs: nested loops over the excerpt, a
filter asked for a gigabyte, a macro that doubles a string at each call. So a template of plain
fields (`{{ sender_name }}`, `{% if subject %}`) is filled here, its output bounded by the fields,
and one that computes (loops, filters, calls, operators, macros) in a child process with limits on
memory, CPU and wall time (`gatewayd.rules.renderer`): one that runs out of them fails its action,
and never holds up the event loop or grows the daemon.
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes, pass_context
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT = 64 * 1024
_MAX_PRODUCT = 100_000
# The child process that renders a computing template: address space, CPU seconds, wall seconds.
RENDER_MEMORY = 512 * 1024 * 1024
RENDER_CPU_SECONDS = 2
RENDER_TIMEOUT = 10.0
# The nodes of a template whose output is bounded by the fields it shows.
_PLAIN = (
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Slice,
    nodes.Const,
    nodes.If,
    nodes.Not,
    nodes.And,
    nodes.Or,
    nodes.Compare,
    nodes.Operand,
    nodes.CondExpr,
)

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
    # Intercepted operators are not folded at compile time: `"%900000000s" % ""` would be.
    intercepted_binops = frozenset({"*", "**", "%"})

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
        if operator_name == "%":
            return operator.mod(left, right)
        return operator.mul(left, right)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _unfolded(function: Callable[..., Any]) -> Callable[..., Any]:
    """The filter as one that takes the context, which Jinja never evaluates at compile time."""
    takes = getattr(getattr(function, "jinja_pass_arg", None), "name", None)

    @pass_context
    def call(context: Context, *args: Any, **kwargs: Any) -> Any:
        first = {"context": context, "eval_context": context.eval_ctx, "environment": context.environment}
        return function(*([first[takes]] if takes in first else []), *args, **kwargs)

    return call


_ENV = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
for _name in ("range", "lipsum"):  # lipsum(10**6) writes for minutes
    _ENV.globals.pop(_name, None)
_ENV.filters = {name: _unfolded(function) for name, function in _ENV.filters.items()}


class Template:
    """A compiled template; `render` raises ValueError with the reason on failure."""

    def __init__(self, source: str) -> None:
        if not isinstance(source, str):
            raise ValueError("expected the template text (a string)")
        try:
            tree = _ENV.parse(source)
            # Compiling finds what parsing does not: an unknown filter or test (TemplateAssertionError).
            undeclared = meta.find_undeclared_variables(tree)
            self._template = _ENV.from_string(source)
        except TemplateSyntaxError as exc:
            raise ValueError(f"template syntax error on line {exc.lineno}: {exc.message}") from None
        # Jinja checks the filters and tests inside an `{% if %}` only when that branch runs: an
        # unknown one there would fail the action at the first message that takes it.
        for node in tree.find_all((nodes.Filter, nodes.Test)):
            kind, known = ("filter", _ENV.filters) if isinstance(node, nodes.Filter) else ("test", _ENV.tests)
            if node.name not in known:
                line = node.lineno
                raise ValueError(f"template syntax error on line {line}: No {kind} named '{node.name}'.")
        for name in sorted(undeclared):
            if name not in FIELDS and not _assigned(tree, name):
                close = difflib.get_close_matches(name, FIELDS, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                raise ValueError(f'unknown field "{name}"{hint}; fields: {", ".join(FIELDS)}')
        self.source = source
        self.plain = all(isinstance(node, _PLAIN) for node in tree.find_all(nodes.Node))

    def render_here(self, context: Mapping[str, Any]) -> str:
        """The text, rendered in this process (unbounded in time and memory but for the output):
        for a plain template; one that computes goes through `TemplateRenderer`."""
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
        except Exception as exc:  # undefined names, sandbox refusals, filter errors, MemoryError
            detail = f": {str(exc)[:200]}" if str(exc) else ""  # a MemoryError has none
            raise ValueError(f"template failed: {type(exc).__name__}{detail}") from None
        return "".join(out)


def _assigned(tree: nodes.Template, name: str) -> bool:
    return any(
        isinstance(node, nodes.Name) and node.name == name and node.ctx in ("store", "param")
        for node in tree.find_all(nodes.Name)
    )


def context_for(data: Mapping[str, Any], mailbox_id: str, address: str | None, rule: str) -> dict[str, Any]:
    """The template fields of a message's event data; one the message lacks is empty (not "None")."""
    sender = data.get("from")
    if not isinstance(sender, dict):
        sender = {}
    sender_address = str(sender.get("address") or "")
    return {
        "subject": str(data.get("subject") or ""),
        "sender": {"address": sender_address, "name": str(sender.get("name") or "")},
        "sender_address": sender_address,
        "sender_name": str(sender.get("name") or sender_address),
        "to": [str(e.get("address")) for e in data.get("to") or [] if isinstance(e, dict)],
        "date": str(data.get("date") or ""),
        "message_id": str(data.get("message_id") or ""),
        "excerpt": str(data.get("sanitized_excerpt") or data.get("body_text_excerpt") or ""),
        "folder": str(data.get("folder") or ""),
        "mailbox": {"id": mailbox_id, "address": address or ""},
        "rule": rule,
    }
