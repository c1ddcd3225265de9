"""A rule: a name, a condition (`if`), actions (`then`), and whether evaluation stops after it.

    - name: invoices
      if: {from: "@billing.example", has_attachments: true}
      then: [{move: {folder: Invoices, create: true}}, {add_keywords: invoice}]
      stop: true

`parse_rules` checks a list of rules and reports every problem with its path, naming the rule:
`rules[1] "invoices".then[0].move.folder: expected a folder name`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gatewayd.rules.actions import Action, parse_action
from gatewayd.rules.conditions import All, AnyOf, Condition, Not, Text
from gatewayd.rules.syntax import Invalid, _unknown, parse_condition

RULE_KEYS = ("name", "if", "then", "stop")


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    condition: Condition | None  # None: every message
    actions: tuple[Action, ...]
    stop: bool = False
    # Where it was defined, for messages: "rules[0]", "agents[0].mailboxes[1].rules[2]", a file.
    origin: str = ""


def parse_rules(raw: Any, path: str) -> tuple[list[Rule], list[str]]:
    """The rules that parsed, and every problem as `<path>[i] "name".<key>: <problem>`."""
    if not isinstance(raw, list | tuple):
        return [], [f"{path}: expected a list of rules"]
    rules: list[Rule] = []
    errors: list[str] = []
    names: dict[str, int] = {}
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"].strip():
            where += f' "{item["name"].strip()}"'
        before = len(errors)
        rule = _rule(item, where, errors)
        if rule is not None:
            if rule.name in names:
                errors.append(f"{where}.name: duplicate rule name (first used at {path}[{names[rule.name]}])")
            names.setdefault(rule.name, i)
        if rule is not None and len(errors) == before:
            rules.append(rule)
    return rules, errors


def _rule(item: Any, where: str, errors: list[str]) -> Rule | None:
    if not isinstance(item, dict):
        errors.append(f"{where}: expected a mapping with name, if, then")
        return None
    for key in item:
        if key not in RULE_KEYS:
            errors.append(f"{where}.{key}: {_unknown(key, RULE_KEYS)}")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.append(
            f"{where}.name: {'missing required key' if name is None else 'expected a non-empty string'}"
        )
        name = ""
    condition = None
    if "if" in item:
        try:
            condition = parse_condition(item["if"])
        except Invalid as bad:
            errors += [f"{where}.if{at}: {message}" for at, message in bad.problems]
    actions: list[Action] = []
    then = item.get("then")
    if not isinstance(then, list) or not then:
        problem = "missing required key" if then is None else "expected a non-empty list of actions"
        errors.append(f"{where}.then: {problem}")
    else:
        for j, value in enumerate(then):
            try:
                actions.append(parse_action(value))
            except Invalid as bad:
                errors += [f"{where}.then[{j}]{at}: {message}" for at, message in bad.problems]
    stop = item.get("stop", False)
    if not isinstance(stop, bool):
        errors.append(f"{where}.stop: expected true or false")
    return Rule(
        name.strip(), condition, tuple(actions), bool(stop) or any(a.kind == "stop" for a in actions), where
    )


def conditions(condition: Condition | None) -> Iterator[Condition]:
    """Every condition in a tree, depth first."""
    if condition is None:
        return
    yield condition
    if isinstance(condition, All | AnyOf):
        for child in condition.children:
            yield from conditions(child)
    elif isinstance(condition, Not):
        yield from conditions(condition.child)


def uses_regex(rules: list[Rule] | tuple[Rule, ...]) -> bool:
    return any(isinstance(c, Text) and c.regexes for rule in rules for c in conditions(rule.condition))
