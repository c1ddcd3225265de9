"""Agents and their mailboxes: ids unique across the file, one watcher per folder of an account,
parents without cycles, and each agent's tenant resolved."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from gatewayd.config.accounts import _imap, _smtp
from gatewayd.config.checks import _ADDRESS, _kind
from gatewayd.config.context import _Context
from gatewayd.config.model import DEFAULT_TENANT, AgentConfig, ImapConfig, MailboxConfig, RulesConfig
from gatewayd.config.schema import _AGENT, _MAILBOX, _build, _section


def _rules(inline: Any, file: str | None, path: str, ctx: _Context) -> RulesConfig:
    if not isinstance(inline, list):
        ctx.errors.append(f"{path}rules: expected a list of rules, got {_kind(inline)}")
        inline = []
    return RulesConfig(tuple(inline), ctx.path(file) if file else None)


def _mailbox(data: Any, path: str, agent_id: str, ctx: _Context) -> MailboxConfig | None:
    before = len(ctx.errors)
    v = _section(data, path, _MAILBOX, ctx.errors)
    if v is None:
        return None
    if "id" in v:
        ctx.unique(("mailbox", v["id"]), f'duplicate mailbox id "{v["id"]}"', f"{path}.id")
    # imap, smtp and the rules are independent: each is checked, so one run reports them all.
    imap = _imap(v["imap"], f"{path}.imap", ctx) if "imap" in v else None
    smtp = _smtp(v["smtp"], f"{path}.smtp", ctx) if v.get("smtp") is not None else None
    rules = _rules(v["rules"], v.get("rules_file"), f"{path}.", ctx)
    if imap is not None:
        _watch_once(imap, path, ctx)
    if len(ctx.errors) > before or imap is None:
        return None
    trusted = v["trusted_authserv_ids"]
    address = v["address"] or (imap.username if _ADDRESS.fullmatch(imap.username) else None)
    return _build(
        MailboxConfig,
        v,
        agent_id=agent_id,
        imap=imap,
        trusted_authserv_ids=trusted and tuple(trusted),
        address=address,
        smtp=smtp,
        rules=rules,
        tenant=DEFAULT_TENANT,  # resolved with the agent's (see _fleets)
    )


def _watch_once(imap: ImapConfig, path: str, ctx: _Context) -> None:
    """Refuse a folder of an account that another mailbox watches already: both watchers would act
    on every message (rules twice, auto-replies twice). Host names and usernames are compared
    without case, as servers (and DNS) compare them."""
    account = (imap.host.lower().rstrip("."), imap.port, imap.username.casefold())
    for folder in imap.folders:  # already normalised by folder_key
        first = ctx.watched.setdefault((*account, folder), path)
        if first != path:
            ctx.errors.append(
                f"{path}: watches the same folder as {first} ({imap.username} on {imap.host}:{imap.port},"
                f" {json.dumps(folder, ensure_ascii=False)})"
            )


def _agent(data: Any, path: str, ctx: _Context) -> AgentConfig | None:
    v = _section(data, path, _AGENT, ctx.errors)
    if v is None:
        return None
    first_of_its_id = "id" in v and ctx.unique(
        ("agent", v["id"]), f'duplicate agent id "{v["id"]}"', f"{path}.id"
    )
    for i, digest in enumerate(v.get("token_sha256", ())):
        label = "duplicate token hash; a token must identify exactly one agent"
        ctx.unique(("token", digest), label, f"{path}.token_sha256[{i}]")
    raw = v["mailboxes"]
    if not isinstance(raw, list):
        ctx.errors.append(f"{path}.mailboxes: expected a list, got {_kind(raw)}")
        raw = []
    mailboxes = [_mailbox(item, f"{path}.mailboxes[{i}]", v.get("id", ""), ctx) for i, item in enumerate(raw)]
    # What _fleets() checks (parents, tenants) needs the agent's id, parent and tenant alone: a
    # mailbox's problems or a token hash's do not hide those (parse_config raises on them all the
    # same). A second agent of one id stays out: the checks are of the first.
    if not first_of_its_id or "parent" not in v or "tenant" not in v:
        return None
    # `tenant` stays None when not given: _fleets() resolves it from the parent.
    parsed = tuple(m for m in mailboxes if m is not None)
    return _build(AgentConfig, v, mailboxes=parsed, token_sha256=v.get("token_sha256", ()))


def _fleets(agents: list[tuple[str, AgentConfig]], ctx: _Context) -> list[AgentConfig]:
    """Check every `parent` (known, no cycle) and resolve every tenant; `agents` are (path, agent).

    A sub-agent inherits its parent's tenant; naming a different one is an error, so a token's
    subtree never spans two tenants.
    """
    known = {agent_id for kind, agent_id in ctx.first_use if kind == "agent"}
    parents = {agent.id: agent.parent for _, agent in agents}
    for path, agent in agents:
        if agent.parent is not None and agent.parent not in known:
            ctx.errors.append(f'{path}.parent: unknown agent "{agent.parent}"')
    index = {agent.id: i for i, (_, agent) in enumerate(agents)}
    walked: dict[str, bool] = {}  # False: on the walk in progress; True: known to end at a root
    cycles: list[list[str]] = []
    for _, agent in agents:
        chain: list[str] = []
        current: str | None = agent.id
        while current is not None and current in parents and current not in walked:
            walked[current] = False
            chain.append(current)
            current = parents[current]
        if current is not None and walked.get(current) is False:
            cycle = chain[chain.index(current) :]
            start = min(range(len(cycle)), key=lambda i: index[cycle[i]])
            cycles.append(cycle[start:] + cycle[:start])
        walked.update(dict.fromkeys(chain, True))
    for cycle in sorted(cycles, key=lambda c: index[c[0]]):
        ctx.errors.append(f"{agents[index[cycle[0]]][0]}.parent: cycle {' → '.join([*cycle, cycle[0]])}")
    _tenant_spellings(agents, ctx)
    by_id = {agent.id: (path, agent) for path, agent in agents}
    # None: unknown. An agent that failed to parse or is unknown, or one on a cycle (the walk up
    # from it would never end): its sub-agents' tenants are not compared with it, the other
    # agents' are, whatever the errors above.
    tenants: dict[str, str | None] = {agent_id: None for cycle in cycles for agent_id in cycle}
    resolved = []
    for _, agent in agents:
        chain = [agent.id]  # up to the root, or to an agent resolved before or on a cycle
        while chain[-1] not in tenants and (up := by_id.get(chain[-1])) and up[1].parent is not None:
            chain.append(up[1].parent)
        for agent_id in reversed(chain):
            if agent_id in tenants:
                continue
            if agent_id not in by_id:
                tenants[agent_id] = None
                continue
            path, member = by_id[agent_id]
            inherited = tenants[member.parent] if member.parent is not None else DEFAULT_TENANT
            if member.tenant and member.parent is not None and inherited and member.tenant != inherited:
                ctx.errors.append(
                    f'{path}.tenant: "{member.tenant}" differs from the tenant "{inherited}" of its parent'
                    f' "{member.parent}"; a parent and its sub-agents share one tenant'
                )
            tenants[agent_id] = member.tenant or inherited
        tenant = tenants[agent.id] or DEFAULT_TENANT
        mailboxes = tuple(replace(mailbox, tenant=tenant) for mailbox in agent.mailboxes)
        resolved.append(replace(agent, tenant=tenant, mailboxes=mailboxes))
    return resolved


def _tenant_spellings(agents: list[tuple[str, AgentConfig]], ctx: _Context) -> None:
    """Refuse tenant ids that differ only in case: each tenant has files named after it
    (`learning.acme.db`), and on a case-insensitive filesystem two such tenants would share them."""
    first: dict[str, tuple[str, str]] = {}  # casefolded id -> (the id as first written, its key)
    for path, agent in agents:
        if not agent.tenant:
            continue
        spelling, where = first.setdefault(agent.tenant.casefold(), (agent.tenant, f"{path}.tenant"))
        if spelling != agent.tenant:
            ctx.errors.append(
                f'{path}.tenant: "{agent.tenant}" differs only in case from the tenant "{spelling}" of'
                f" {where}; tenants name files, which would collide on a case-insensitive filesystem"
            )
