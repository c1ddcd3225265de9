"""From matching rules to an ordered plan of steps, and from the steps' outcomes to the event.

Evaluation walks the rules in order; every rule whose condition holds matches, until one that
`stop`s. The actions of all matching rules become steps, run in a fixed order whatever the rules'
order, so each sees the message where it expects it: `report`, then flag and keyword changes
(carried along by a move), then `copy`, then `move` (one: a later move is skipped), then the mail
(`auto_reply`, `forward`: composed before anything runs). `tag`, `drop_event` and `stop` only
shape the event.

A plan is plain JSON: the journal keeps it, so a crash never needs the rules (which may have been
reloaded meanwhile) to finish a message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gatewayd.rules.actions import Action
from gatewayd.rules.facts import Facts, Undecided
from gatewayd.rules.model import Rule

OK = "ok"
ERROR = "error"
SKIPPED = "skipped"
PENDING = "pending"
DRY_RUN = "dry_run"
# In a step's outcome: what an unexpected failure of the action adds to the event's rules_errors.
RULES_ERROR = "rules_error"

_PHASE = {"report": 0, "store": 1, "store_labels": 1, "copy": 2, "move": 3, "send": 4}


def evaluate(rules: Sequence[Rule], facts: Facts) -> list[Rule]:
    """The matching rules. One whose condition is undecided does not match, and when it would
    have stopped evaluation, no later rule is evaluated either: it fails closed both ways."""
    matched = []
    for rule in rules:
        facts.rule = rule.name
        try:
            holds = rule.condition is None or rule.condition.test(facts)
        except Undecided as exc:
            later = "; no later rule is evaluated (it has stop)" if rule.stop else ""
            facts.errors.append(f'rule "{rule.name}" not applied: {exc}{later}')
            if rule.stop:
                break
            continue
        if holds:
            matched.append(rule)
            if rule.stop:
                break
    return matched


def _steps_of(action: Action, gmail: bool) -> list[dict[str, Any]]:
    kind = action.kind
    if kind in ("move", "copy"):
        return [{"kind": kind, "folder": action.get("folder"), "create": action.get("create")}]
    if kind in ("add_flags", "remove_flags"):
        return [{"kind": "store", "add": kind == "add_flags", "flags": action.get("flags")}]
    if kind == "mark_read":
        return [{"kind": "store", "add": action.get("read"), "flags": ["\\Seen"]}]
    if kind in ("add_keywords", "remove_keywords"):
        store = "store_labels" if gmail else "store"
        return [{"kind": store, "add": kind == "add_keywords", "flags": action.get("keywords")}]
    if kind == "report":
        return [{"kind": "report", "label": action.get("label")}]
    if kind in ("auto_reply", "forward"):
        return [{"kind": "send", "send": kind}]
    return []


def build(matched: Sequence[Rule], gmail: bool = False) -> dict[str, Any]:
    """The plan: `applied` (rules_applied without outcomes), `steps`, `tags`, `drop`."""
    applied: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    tags: list[str] = []
    drop = False
    for r, rule in enumerate(matched):
        entries = []
        for a, action in enumerate(rule.actions):
            entry = action.describe()
            own = _steps_of(action, gmail)
            for step in own:
                steps.append({**step, "rule": r, "action": a})
            if not own:
                entry["outcome"] = OK  # tag, drop_event, stop: nothing to do outside the event
            if action.kind == "tag":
                tags += [t for t in action.get("labels") if t not in tags]
            drop = drop or action.kind == "drop_event"
            entries.append(entry)
        applied.append({"rule": rule.name, "actions": entries})
    steps.sort(key=lambda step: _PHASE[step["kind"]])
    moved_by: str | None = None
    for index, step in enumerate(steps):
        step["index"] = index
        if step["kind"] == "move":
            if moved_by is not None:
                step["preset"] = {"outcome": SKIPPED, "reason": f'already moved by rule "{moved_by}"'}
            else:
                moved_by = applied[step["rule"]]["rule"]
    return {"applied": applied, "steps": steps, "tags": tags, "drop": drop}


def has_effects(plan: Mapping[str, Any]) -> bool:
    return any("preset" not in step for step in plan["steps"])


def _copy(value: Any) -> Any:
    """copy.deepcopy of the plan's JSON-like data, at a fraction of its cost: its only containers
    are dicts and lists (the rest, tuples of strings included, is immutable)."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def result(
    data: Mapping[str, Any],
    plan: Mapping[str, Any],
    outcomes: Mapping[int, Mapping[str, Any]],
    errors: list[str],
) -> dict[str, Any]:
    """The rules' contribution to the event data, from the plan and each step's outcome."""
    applied = _copy(plan["applied"])
    flags = [str(f) for f in data.get("flags") or []]
    extra_labels: list[str] = []
    removed_labels: set[str] = set()
    location: dict[str, Any] = {}
    auto_reply: dict[str, Any] | None = None
    errors = list(errors)
    for step in plan["steps"]:
        outcome = dict(outcomes.get(step["index"]) or step.get("preset") or {"outcome": PENDING})
        outcome.pop("state", None)
        if unexpected := outcome.pop(RULES_ERROR, None):
            errors.append(unexpected)
        entry = applied[step["rule"]]["actions"][step["action"]]
        entry.update(outcome)
        if outcome.get("outcome") not in (OK, DRY_RUN):
            continue
        kind = step["kind"]
        if kind == "store":
            wanted = step["flags"]
            flags = (
                [*flags, *(f for f in wanted if f not in flags)]
                if step["add"]
                else [f for f in flags if f not in wanted]
            )
        elif kind == "store_labels":
            if step["add"]:
                extra_labels += [label for label in step["flags"] if label not in extra_labels]
            else:
                removed_labels.update(step["flags"])
        elif kind == "move":
            location = {
                "folder": outcome.get("folder", step["folder"]),
                "uid": outcome.get("uid"),
                "uidvalidity": outcome.get("uidvalidity"),
            }
    for r, rule in enumerate(applied):
        for entry in rule["actions"]:
            if (
                entry["action"] == "auto_reply"
                and auto_reply is None
                and entry.get("outcome") not in (SKIPPED, None)
            ):
                auto_reply = {
                    "rule": plan["applied"][r]["rule"],
                    "outcome": entry.get("outcome"),
                    "message_id": entry.get("message_id"),
                    "to": entry.get("to"),
                }
    keywords = [f for f in flags if not f.startswith("\\")]
    labels = [label for label in [*keywords, *extra_labels, *plan["tags"]] if label not in removed_labels]
    out: dict[str, Any] = {
        "rules_applied": applied,
        "labels": list(dict.fromkeys(labels)),
        "auto_reply": auto_reply,
        "rules_errors": errors,
        "flags": flags,
        "moved_from": None,
    }
    if location:
        out["moved_from"] = {
            "folder": data.get("folder"),
            "uid": data.get("uid"),
            "uidvalidity": data.get("uidvalidity"),
        }
        out.update(location)
    return out
