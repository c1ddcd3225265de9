"""`gatewayd token create|list|revoke`: run-time tokens, kept hashed beside the event log.

They open the store named by the configuration (`-c`), while the daemon runs or not: the daemon
reads the same table on every request, so a revoked token is refused at once and its open
streams are closed within `server.token_check_seconds`. Run as root on a store in another user's
directory (the service's), they leave every file there to that user (gatewayd.store.ownership).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from gatewayd.cli_config import DEFAULT_CONFIG, EXIT_CONFIG, load_for_command
from gatewayd.config import Config
from gatewayd.store.ownership import prepare_for_root
from gatewayd.store.tokens import READ, SCOPES, SqliteTokenStore, TokenStore, parse_duration, parse_scopes


def add_token_commands(token_commands: Any) -> None:
    """The create, list and revoke subcommands of `gatewayd token`."""
    create = token_commands.add_parser("create", help="make a token for an agent; it is shown once")
    _config_option(create)
    create.add_argument("--agent", required=True, metavar="ID", help="the agent the token belongs to")
    create.add_argument(
        "--scope",
        default=READ,
        metavar="SCOPES",
        help=f"comma-separated, some of {','.join(SCOPES)} (default: {READ})",
    )
    create.add_argument("--expires", metavar="DURATION", help="e.g. 30d, 12h, 90m, 2w (default: never)")
    create.set_defaults(func=cmd_token_create)

    listing = token_commands.add_parser("list", help="every run-time token (never the token itself)")
    _config_option(listing)
    listing.add_argument("--agent", metavar="ID", help="only this agent's tokens")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=cmd_token_list)

    revoke = token_commands.add_parser("revoke", help="revoke a token by its id; its streams are closed")
    _config_option(revoke)
    revoke.add_argument("token_id", metavar="ID", help="the token's id (tok_...), as `token list` shows")
    revoke.set_defaults(func=cmd_token_revoke)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, help=f"YAML configuration file (default: {DEFAULT_CONFIG})"
    )


def _with_store(args: argparse.Namespace, work: Callable[[Config, TokenStore], Awaitable[int]]) -> int:
    # They never log in, nor use the rules: a token can be revoked while a rules file is broken.
    config = load_for_command(args.config, secrets=False)
    if config is None:
        return EXIT_CONFIG

    owners_path = prepare_for_root(config.store.path, f"token {args.token_command}")

    async def run() -> int:
        store = SqliteTokenStore(owners_path or config.store.path, create=owners_path is None)
        await store.open()
        try:
            return await work(config, store)
        finally:
            await store.close()

    return asyncio.run(run())


def _unknown_agent(command: str, agent_id: str, config_path: str, config: Config) -> bool:
    """Whether `agent_id` is not in the configuration (a usage error, said in one line)."""
    try:
        config.agent(agent_id)
    except KeyError:
        nor = ", nor any token of it" if command == "list" else ""
        print(f"gatewayd token {command}: no agent {agent_id!r} in {config_path}{nor}", file=sys.stderr)
        return True
    return False


def _note_unconfigured(agent_ids: list[str], config_path: str, config: Config) -> None:
    """Say on stderr which of these agents the configuration no longer has: their tokens are
    refused already, and are listed so that they can be revoked."""
    configured = {agent.id for agent in config.agents}
    gone = [agent_id for agent_id in agent_ids if agent_id not in configured]
    if gone:
        names = ", ".join(repr(agent_id) for agent_id in gone)
        print(f"note: no agent {names} in {config_path} any more: their tokens are refused", file=sys.stderr)


def cmd_token_create(args: argparse.Namespace) -> int:
    try:
        scopes = parse_scopes(args.scope)
        expires_in = parse_duration(args.expires) if args.expires else None
    except ValueError as exc:
        print(f"gatewayd token create: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    async def create(config: Config, store: TokenStore) -> int:
        if _unknown_agent("create", args.agent, args.config, config):
            return EXIT_CONFIG
        agent = config.agent(args.agent)
        issued = await store.create(agent.id, agent.tenant, scopes, expires_in)
        record = issued.record
        print(f"token: {issued.token}")
        print(f"id: {record.id}")
        print(f"agent: {record.agent_id}")
        print(f"tenant: {record.tenant}")
        print(f"scopes: {','.join(record.scopes)}")
        print(f"expires: {record.expires_at or 'never'}")
        print("# shown once: only its SHA-256 is stored. Revoke with: gatewayd token revoke " + record.id)
        return 0

    return _with_store(args, create)


def cmd_token_list(args: argparse.Namespace) -> int:
    async def listing(config: Config, store: TokenStore) -> int:
        records = await store.records([args.agent] if args.agent else None)
        # An agent gone from the configuration may have tokens left to find and revoke; with
        # none, the id is most likely a typo.
        if args.agent and not records and _unknown_agent("list", args.agent, args.config, config):
            return EXIT_CONFIG
        _note_unconfigured(sorted({r.agent_id for r in records}), args.config, config)
        if args.json:
            for record in records:
                print(json.dumps(record.as_dict()))
            return 0
        rows = [("ID", "AGENT", "TENANT", "SCOPES", "CREATED", "EXPIRES", "REVOKED")]
        rows += [
            (
                r.id,
                r.agent_id,
                r.tenant or "-",
                ",".join(r.scopes),
                r.created_at,
                r.expires_at or "-",
                r.revoked_at or "-",
            )
            for r in records
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        return 0

    return _with_store(args, listing)


def cmd_token_revoke(args: argparse.Namespace) -> int:
    async def revoke(config: Config, store: TokenStore) -> int:
        before = (await store.get([args.token_id])).get(args.token_id)
        if before is None:
            print(f"gatewayd token revoke: no token {args.token_id!r}", file=sys.stderr)
            return 1
        record = await store.revoke(args.token_id)
        revoked_at = record.revoked_at if record else before.revoked_at
        if before.revoked_at is not None:
            print(f"{args.token_id} was already revoked at {before.revoked_at}")
        else:
            print(f"revoked {args.token_id} ({before.agent_id}) at {revoked_at}")
        _note_unconfigured([before.agent_id], args.config, config)
        return 0

    return _with_store(args, revoke)
