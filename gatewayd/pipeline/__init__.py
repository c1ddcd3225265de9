"""The inline pipeline between FETCH and publish: every message becomes one event here.

Today it parses the message; the scoring stages and the user's rules plug in here, so that no
event is ever published before it has been through them.
"""

from __future__ import annotations

from gatewayd.config import MailboxConfig
from gatewayd.events import MESSAGE_RECEIVED, NewEvent
from gatewayd.message import FetchedMessage, from_address, parse_message


def dedupe_key(mailbox_id: str, message: FetchedMessage) -> str:
    """Exactly once per (mailbox, folder, UIDVALIDITY, UID)."""
    return f"{mailbox_id}\x1f{message.folder}\x1f{message.uidvalidity}\x1f{message.uid}"


class Pipeline:
    async def process(self, mailbox: MailboxConfig, message: FetchedMessage) -> NewEvent | None:
        data = parse_message(message)
        return NewEvent(
            type=MESSAGE_RECEIVED,
            agent_id=mailbox.agent_id,
            mailbox_id=mailbox.id,
            data=data,
            dedupe_key=dedupe_key(mailbox.id, message),
            from_address=from_address(data),
        )
