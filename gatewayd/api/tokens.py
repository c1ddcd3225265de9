"""Token management over HTTP, for tokens with the `admin` scope: `/v1/tokens`.

An admin token manages the run-time tokens of its own subtree only, and never hands out a scope
it does not hold itself. `gatewayd token create|list|revoke` does the same from the shell.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gatewayd.api.auth import Principal, authenticate, tenant_problem
from gatewayd.api.body import read_json
from gatewayd.api.context import Gateway
from gatewayd.api.errors import ApiError
from gatewayd.store.tokens import ADMIN, READ, TokenRecord, TokenStore, parse_duration, parse_scopes

REVOKED = "token_revoked"
_CREATE_KEYS = frozenset({"agent", "scopes", "expires_in"})


async def _admin(request: web.Request) -> tuple[Gateway, Principal, TokenStore]:
    gateway = Gateway.of(request)
    principal = await authenticate(request, gateway.config, gateway.tokens)
    principal.require(ADMIN)
    if gateway.tokens is None:
        raise ApiError(503, "run-time tokens are not available")
    return gateway, principal, gateway.tokens


async def create_token(request: web.Request) -> web.Response:
    """POST /v1/tokens {"agent": ID, "scopes": ["read"], "expires_in": "30d"} -> 201 with the token."""
    _, principal, tokens = await _admin(request)
    body = await _body(request)
    unknown = sorted(set(body) - _CREATE_KEYS)
    if unknown:
        # A misspelt key must not make a token other than the one asked for (one never expiring).
        raise ApiError(400, f"{unknown[0]}: unknown key; expected {', '.join(sorted(_CREATE_KEYS))}")
    agent_id = body.get("agent", principal.agent.id)
    if not isinstance(agent_id, str):
        raise ApiError(400, "agent: expected an agent id")
    if agent_id not in principal.agents:
        raise ApiError(403, f"agent {agent_id[:64]!r} is not accessible with this token")
    scopes_given = body.get("scopes", [READ])
    if not isinstance(scopes_given, str | list):
        raise ApiError(400, 'scopes: expected a list like ["read"]')
    expires = body.get("expires_in")
    if expires is not None and not isinstance(expires, str):
        raise ApiError(400, "expires_in: expected a duration like 30d")
    try:
        scopes = parse_scopes(scopes_given)
    except ValueError as exc:
        raise ApiError(400, f"scopes: {exc}") from None
    try:
        expires_in = parse_duration(expires) if expires is not None else None
    except ValueError as exc:
        raise ApiError(400, f"expires_in: {exc}") from None
    beyond = [scope for scope in scopes if scope not in principal.scopes]
    if beyond:
        lacking = ", ".join(beyond)
        raise ApiError(403, f"cannot grant a scope this token lacks: {lacking}", "insufficient_scope")
    issued = await tokens.create(agent_id, principal.agent.tenant, scopes, expires_in)
    return web.json_response({"token": issued.token, **issued.record.as_dict()}, status=201)


async def list_tokens(request: web.Request) -> web.Response:
    gateway, principal, tokens = await _admin(request)
    records = [r for r in await tokens.records(principal.agents) if _reaches(principal, r, gateway)]
    return web.json_response({"tokens": [record.as_dict() for record in records]})


async def revoke_token(request: web.Request) -> web.Response:
    gateway, principal, tokens = await _admin(request)
    token_id = request.match_info["token_id"]
    found = (await tokens.get([token_id])).get(token_id)
    if found is None or not _reaches(principal, found, gateway):
        raise ApiError(404, f"no token {token_id[:40]!r} for this token")
    record = await tokens.revoke(token_id)
    gateway.end_streams(token_id, REVOKED)  # this process's streams at once; others at their check
    return web.json_response((record or found).as_dict())


def _reaches(principal: Principal, record: TokenRecord, gateway: Gateway) -> bool:
    """The record is of the principal's subtree and tenant (an agent id reused in another tenant
    keeps the tokens made there out of reach)."""
    return (
        record.agent_id in principal.agents
        and tenant_problem(record, principal.agent, gateway.config) is None
    )


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    body = await read_json(request, "a JSON object")
    if not isinstance(body, dict):
        raise ApiError(400, "body: expected a JSON object")
    return body
