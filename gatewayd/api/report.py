"""POST /v1/messages/{event_id}/report: a user says a message was spam or ham; the gateway learns."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gatewayd.api.auth import authenticate
from gatewayd.api.body import read_json
from gatewayd.api.context import Gateway
from gatewayd.api.errors import STORE_RETRY_AFTER_SECONDS, ApiError
from gatewayd.api.params import event_seq, single
from gatewayd.events import NewEvent
from gatewayd.imap.session import ImapError, ImapFolderMissing, ImapSession, Selected
from gatewayd.message import parse
from gatewayd.store import EventQuery, is_store_failure
from gatewayd.store.tokens import READ

LABELS = ("spam", "ham")
MESSAGE_REPORTED = "message.reported"

log = logging.getLogger(__name__)


async def report_message(request: web.Request) -> web.Response:
    gateway = Gateway.of(request)
    principal = await authenticate(request, gateway.config, gateway.tokens)
    principal.require(READ)
    event_id = request.match_info["event_id"]
    seq = event_seq(gateway.store, "event_id", event_id)
    label = await _label(request)
    # The token's subtree only: an event of anyone else is "not found", never "forbidden".
    found = await gateway.store.read_after(EventQuery(agent_ids=principal.agents), seq - 1, 1)
    if not found or found[0].seq != seq:
        raise ApiError(404, f"no event {event_id!r} for this token")
    event = found[0]
    if not event.type.startswith("message.received") or event.mailbox_id is None:
        raise ApiError(400, f"event {event_id!r} is a {event.type}, not a received message")
    if gateway.learning is None:
        raise ApiError(409, "learning is not enabled", code="learning_disabled")
    mailbox = principal.mailboxes(gateway.config).get(event.mailbox_id)
    if mailbox is None:
        raise ApiError(409, f"mailbox {event.mailbox_id!r} is no longer configured", "message_gone")
    data = event.data
    # Events from before gatewayd recorded it have no tenant: their mailbox's is the best guess.
    if data.get("tenant", mailbox.tenant) != mailbox.tenant:
        # Training the tenant the mailbox has now would teach it another tenant's mail; not naming
        # either: the other is not this token's business.
        raise ApiError(
            409,
            "the message was received while its mailbox belonged to another tenant: it cannot teach this one",
            "tenant_changed",
        )
    try:
        async with gateway.report_sessions:
            session = await ImapSession.open(mailbox.imap)
            try:
                selected = await _select(session, data["folder"])
                if selected.uidvalidity != data["uidvalidity"]:
                    raise ApiError(
                        409, "the folder was renumbered since; the message cannot be found", "message_gone"
                    )
                fetched = await session.fetch([data["uid"]], mailbox.fetch_max_bytes)
            finally:
                await session.logout()
    except ImapError as exc:
        raise ApiError(503, f"mailbox unavailable: {exc}", "mailbox_unavailable") from None
    if not fetched:
        raise ApiError(409, "the message is no longer in its folder", "message_gone")
    try:
        changed = await asyncio.to_thread(gateway.learning.train, parse(fetched[0]), label, mailbox.id)
    except Exception as exc:
        if not is_store_failure(exc):
            raise
        # Not the event store's failure, which the generic 503 would name.
        log.warning("report of %s: the learning store failed: %s", event_id, exc)
        raise ApiError(
            503,
            f"the learning store is unavailable ({exc}); try again later",
            "learning_unavailable",
            {"Retry-After": str(STORE_RETRY_AFTER_SECONDS)},
        ) from None
    # Recorded for the mailbox's own agent, so everyone above it in the fleet sees it too.
    report = NewEvent(
        MESSAGE_REPORTED,
        mailbox.agent_id,
        mailbox.id,
        {"event_id": event_id, "label": label, "message_id": data.get("message_id"), "learned": changed},
    )
    gateway.bus.publish(await gateway.store.append([report]))
    return web.json_response({"event_id": event_id, "label": label, "learned": changed})


async def _select(session: ImapSession, folder: str) -> Selected:
    """SELECT the event's folder; ApiError 409 when it was deleted since, so that only a server
    failing is a 503."""
    try:
        return await session.select(folder)
    except ImapFolderMissing:
        raise ApiError(
            409, f"the folder {folder!r} no longer exists; the message is gone", "message_gone"
        ) from None


async def _label(request: web.Request) -> str:
    label = single(request, "label")
    if label is None and request.can_read_body:
        body = await read_json(request, 'JSON like {"label": "spam"}')
        label = body.get("label") if isinstance(body, dict) else None
    if label not in LABELS:
        raise ApiError(400, 'label: expected "spam" or "ham"')
    return label
