"""Load every rule the configuration names: `rules:` and `rules_file:`, global and per mailbox.

Order of evaluation for a mailbox: the global `rules:`, the global `rules_file`, the mailbox's own
`rules:`, then its `rules_file`. A rules file holds a list of rules, or a mapping with `rules:`.
Everything is checked at once and every problem is reported with where it is: a key path in the
configuration, or the file and the path inside it. `gatewayd check-config`, start-up and `kill -HUP`
all go through `load_rules`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatewayd.config import Config, ConfigError, MailboxConfig, RulesConfig
from gatewayd.config.safe_yaml import YamlFileError, read_yaml
from gatewayd.rules.actions import SENDS
from gatewayd.rules.model import Rule, parse_rules, uses_regex


@dataclass(frozen=True, slots=True)
class RuleBook:
    """The rules in force; replaced whole on reload, so one message always sees one version."""

    global_rules: tuple[Rule, ...] = ()
    per_mailbox: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    loaded_at: float = field(default_factory=time.time)
    # mailbox id -> uses_regex of its rules; asked for every message, the book never changes.
    _regex: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)

    def for_mailbox(self, mailbox_id: str) -> tuple[Rule, ...]:
        return self.global_rules + self.per_mailbox.get(mailbox_id, ())

    @property
    def count(self) -> int:
        return len(self.global_rules) + sum(len(rules) for rules in self.per_mailbox.values())

    def uses_regex(self, mailbox_id: str) -> bool:
        known = self._regex.get(mailbox_id)
        if known is None:
            known = self._regex[mailbox_id] = uses_regex(self.for_mailbox(mailbox_id))
        return known


def _read_file(file: Path) -> tuple[Any, list[str]]:
    try:
        data = read_yaml(file, "rules file")
    except YamlFileError as exc:
        if exc.syntax:
            return None, [f"{file}: {exc.where or 'somewhere'}: {exc.problem or 'invalid YAML'}"]
        return None, [f"{file}: {exc.where}: {exc.problem}" if exc.where else f"{file}: {exc.problem}"]
    if data is None:
        return [], []
    if isinstance(data, dict):
        unknown = [key for key in data if key != "rules"]
        if unknown:
            return None, [f"{file}: {unknown[0]}: unknown key (a rules file has only `rules:`)"]
        data = data.get("rules") or []
    return data, []


def _rules(source: RulesConfig, path: str, errors: list[str], files: list[Path]) -> tuple[Rule, ...]:
    rules, problems = parse_rules(list(source.inline), f"{path}rules")
    errors += problems
    if source.file is not None:
        files.append(source.file)
        data, problems = _read_file(source.file)
        errors += problems
        if data is not None:
            from_file, problems = parse_rules(data, f"{source.file}: rules")
            rules += from_file
            errors += problems
            names = {rule.name for rule in rules[: len(rules) - len(from_file)]}
            errors += [
                f"{rule.origin}.name: a rule named {rule.name!r} is already in {path}rules"
                for rule in from_file
                if rule.name in names
            ]
    return tuple(rules)


def _check_sending(mailbox: MailboxConfig, rules: tuple[Rule, ...], errors: list[str]) -> None:
    """Auto-replies and forwards need the mailbox's SMTP server and its own address."""
    for rule in rules:
        for j, action in enumerate(rule.actions):
            if action.kind not in SENDS:
                continue
            where = f"{rule.origin}.then[{j}].{action.kind}"
            if mailbox.smtp is None:
                errors.append(f'{where}: mailbox "{mailbox.id}" has no smtp: section to send through')
            if mailbox.address is None:
                errors.append(
                    f'{where}: mailbox "{mailbox.id}" has no address (set address:, or use an address as'
                    " imap.username)"
                )


def load_rules(config: Config) -> RuleBook:
    """Every rule of the configuration, checked; ConfigError lists every problem."""
    errors: list[str] = []
    files: list[Path] = []
    global_rules = _rules(config.rules, "", errors, files)
    per_mailbox: dict[str, tuple[Rule, ...]] = {}
    for a, agent in enumerate(config.agents):
        for m, mailbox in enumerate(agent.mailboxes):
            path = f"agents[{a}].mailboxes[{m}]."
            own = _rules(mailbox.rules, path, errors, files)
            names = {rule.name for rule in global_rules}
            errors += [
                f"{rule.origin}.name: a global rule is already named {rule.name!r}"
                for rule in own
                if rule.name in names
            ]
            if own:
                per_mailbox[mailbox.id] = own
            _check_sending(mailbox, global_rules + own, errors)
    if errors:
        raise ConfigError(list(dict.fromkeys(errors)))
    return RuleBook(global_rules, per_mailbox, tuple(dict.fromkeys(files)))
