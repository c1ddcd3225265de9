"""Bearer tokens: a token names one agent and sees only that agent's mailboxes and events."""

from __future__ import annotations

from aiohttp import web

from gatewayd.api.errors import ApiError
from gatewayd.config import AgentConfig, Config, hash_token


def authenticate(request: web.Request, config: Config) -> AgentConfig:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise ApiError(401, "missing bearer token: send Authorization: Bearer TOKEN")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "malformed Authorization header: expected Bearer TOKEN")
    agent = config.agent_for_token_hash(hash_token(token.strip()))
    if agent is None:
        raise ApiError(401, "invalid token", code="invalid_token")
    return agent
