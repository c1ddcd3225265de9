"""`gatewayd check-message`'s view of the rules: which would match, and what they would do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gatewayd.config import Config, ConfigError, MailboxConfig
from gatewayd.pipeline import Pipeline, StageSpec
from gatewayd.rules.engine import RULES_TIMEOUT_SECONDS, RulesStage
from gatewayd.rules.load import load_rules


def dry_run_mailbox(config: Config, mailbox_id: str | None) -> MailboxConfig | None:
    """The mailbox whose rules and address the dry run applies (None: the global rules only);
    ConfigError naming the known ones for an id the configuration lacks."""
    if mailbox_id is None:
        return None
    mailbox = next((m for m in config.mailboxes() if m.id == mailbox_id), None)
    if mailbox is None:
        known = ", ".join(m.id for m in config.mailboxes()) or "none"
        raise ConfigError([f'--mailbox: no mailbox "{mailbox_id}" in the configuration (mailboxes: {known})'])
    return mailbox


def with_rules(config: Config, pipeline: Pipeline) -> Pipeline:
    """The pipeline plus the rules in dry-run mode (no actions: nothing is done); a mailbox's own
    rules apply when the pipeline runs with it (dry_run_mailbox)."""
    stage = RulesStage(load_rules(config))
    return Pipeline([*pipeline.stages, StageSpec(stage, RULES_TIMEOUT_SECONDS)])


def explain(data: Mapping[str, Any]) -> list[str]:
    """Lines for the human-readable output."""
    applied = data.get("rules_applied")
    if not isinstance(applied, list):
        return []
    if not applied:
        return ["  rules: none match"]
    lines = ["  rules:"]
    for rule in applied:
        lines.append(f"    {rule['rule']}:")
        for action in rule["actions"]:
            params = {k: v for k, v in action.items() if k not in ("action", "outcome", "reason", "error")}
            shown = " ".join(f"{k}={v}" for k, v in params.items() if v not in (None, False))
            outcome = action.get("outcome")
            why = action.get("reason") or action.get("error")
            verdict = "would do" if outcome == "dry_run" else str(outcome)
            lines.append(
                f"      {action['action']} {shown}".rstrip() + f": {verdict}" + (f" ({why})" if why else "")
            )
    for error in data.get("rules_errors") or []:
        lines.append(f"    error: {error}")
    return lines
