"""Bearer tokens: who is asking, which agents' events they reach, and with which scopes.

A token belongs to one agent and reaches that agent's subtree: its own mailboxes and those of
every descendant (`parent:`), never beyond, and so never another tenant (a parent and its
sub-agents always share one). Tokens come from the configuration (`token_sha256`, with every
scope) or from the token store (`gatewayd token create`, with the scopes they were made with,
until they expire or are revoked). A run-time token outlives configuration edits, so it also
records its agent's tenant and is refused once that agent id belongs to another tenant.

The token travels in `Authorization: Bearer TOKEN`, or, only when `server.allow_query_token` is
on and only on the event stream (browsers' EventSource cannot send headers), as `?access_token=`.
It is never logged: the access log is off and no log line of gatewayd carries a query string.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gatewayd.api.errors import ApiError
from gatewayd.config import AgentConfig, Config, MailboxConfig, hash_token
from gatewayd.store.tokens import SCOPES, TokenRecord, TokenStore

QUERY_TOKEN = "access_token"
# Principal.key of a token from the configuration: this prefix and the token's SHA-256 digest.
CONFIGURED_KEY_PREFIX = "sha256:"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated token."""

    agent: AgentConfig
    # The agents whose events the token reaches: the agent and all its descendants, in file order.
    agents: tuple[str, ...]
    scopes: frozenset[str]
    # What the per-token stream limit counts by.
    key: str
    # Run-time tokens only: open streams re-check it against revocation and expiry.
    token_id: str | None = None

    @property
    def configured_token(self) -> str | None:
        """The SHA-256 digest of a token from the configuration; None for a run-time token."""
        return None if self.token_id is not None else self.key.removeprefix(CONFIGURED_KEY_PREFIX)

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise ApiError(403, f'this token lacks the "{scope}" scope', code="insufficient_scope")

    def mailboxes(self, config: Config) -> dict[str, MailboxConfig]:
        """The mailboxes of the subtree, by id."""
        return {m.id: m for m in config.mailboxes() if m.agent_id in self.agents}


def bearer_token(request: web.Request, config: Config, query_token: bool = False) -> str:
    """The request's token. `query_token`: the endpoint is the event stream, where browsers'
    EventSource may send it as ?access_token= (when the server allows it); nowhere else."""
    headers = request.headers.getall("Authorization", [])
    if len(headers) > 1:
        raise ApiError(400, "give the token once: one Authorization header")
    header = headers[0] if headers else None
    in_query = request.query.getall(QUERY_TOKEN, [])
    if in_query:
        # Nothing here may echo the value: it is a credential.
        if not config.server.allow_query_token:
            raise ApiError(
                401, f"{QUERY_TOKEN} in the URL is disabled on this server; send Authorization: Bearer TOKEN"
            )
        if not query_token:
            raise ApiError(
                401,
                f"{QUERY_TOKEN} in the URL is accepted on the event stream only (for EventSource);"
                " send Authorization: Bearer TOKEN",
            )
        if header is not None or len(in_query) > 1:
            raise ApiError(400, f"give the token once: the Authorization header or one {QUERY_TOKEN}")
        if not in_query[0].strip():
            raise ApiError(401, f"empty {QUERY_TOKEN}")
        return _printable(in_query[0].strip())
    if not header:
        raise ApiError(401, "missing bearer token: send Authorization: Bearer TOKEN")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "malformed Authorization header: expected Bearer TOKEN")
    return _printable(token.strip())


def _printable(token: str) -> str:
    # Tokens are printable ASCII (gatewayd's and any a config names); other bytes in a header
    # reach us as surrogate escapes, which could not even be hashed.
    if not (token.isascii() and token.isprintable()):
        raise ApiError(401, "invalid token", code="invalid_token")
    return token


async def authenticate(
    request: web.Request, config: Config, tokens: TokenStore | None, query_token: bool = False
) -> Principal:
    """The request's principal, or ApiError 401; `query_token` as for bearer_token."""
    digest = hash_token(bearer_token(request, config, query_token))
    agent = config.agent_for_token_hash(digest)
    if agent is not None:
        key = CONFIGURED_KEY_PREFIX + digest
        return Principal(agent, config.subtree(agent.id), frozenset(SCOPES), key=key)
    record = await tokens.lookup(digest) if tokens is not None else None
    if record is None:
        raise ApiError(401, "invalid token", code="invalid_token")
    problem = record.problem()
    if problem is not None:
        raise ApiError(401, f"token {problem}", code="invalid_token")
    try:
        agent = config.agent(record.agent_id)
    except KeyError:
        raise ApiError(401, "the token's agent is no longer configured", code="invalid_token") from None
    problem = tenant_problem(record, agent, config)
    if problem is not None:
        raise ApiError(401, problem, code="invalid_token")
    return Principal(
        agent, config.subtree(agent.id), frozenset(record.scopes), key=record.id, token_id=record.id
    )


def tenant_problem(record: TokenRecord, agent: AgentConfig, config: Config) -> str | None:
    """Why this run-time token may not reach `agent` (its agent id now) across tenants, or None.

    Agent ids can be reused or moved to another tenant by editing the configuration. A token made
    before tokens recorded their tenant cannot tell which one it was made for: it is accepted
    only while the configuration has a single tenant, where there is no other to reach.
    """
    if record.tenant is None:
        if len({a.tenant for a in config.agents}) > 1:
            return (
                "token made before tokens recorded their tenant, and this server has several tenants:"
                " make a new one (gatewayd token create)"
            )
        return None
    if record.tenant != agent.tenant:
        # Not naming the agent's tenant now: that is another tenant's business.
        return "token made for another tenant than its agent's now: make a new one (gatewayd token create)"
    return None
