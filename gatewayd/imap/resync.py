"""After a UIDVALIDITY change: which messages of the renumbered folder are new.

The server renumbered the folder (an index rebuild, a restore), so the old checkpoint says nothing
about the new UIDs. A message is new, and announced under the new UIDVALIDITY, when both hold:

- its Message-ID was never announced for this folder (`EventStore.known_message_ids`);
- it arrived (INTERNALDATE) after the folder was last known synced under an earlier UIDVALIDITY
  (`EventStore.last_synced_at`): everything older was announced then, or was in the folder before
  gatewayd watched it, or had its events pruned by retention; none of it is news.

A message without a Message-ID is judged by the second rule alone. When no sync of the folder is
stored at all (retention pruned every event of it), nothing is announced, as on a first connect.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

from gatewayd.events import parse_rfc3339
from gatewayd.message.fields import internaldate

# UID -> (Message-ID, INTERNALDATE), as `ImapSession.message_ids` returns them.
Headers = Mapping[int, tuple[str | None, str | None]]


def new_uids(headers: Headers, known: Collection[str], synced_at: datetime | None) -> list[int]:
    """The UIDs to announce, ascending (see the module docstring)."""
    if synced_at is None:
        return []
    return sorted(
        uid
        for uid, (message_id, date) in headers.items()
        if not (message_id and message_id in known) and _arrived_after(date, synced_at)
    )


def _arrived_after(date: str | None, moment: datetime) -> bool:
    """Whether an INTERNALDATE is later than `moment`; an unreadable one is not (old, quiet)."""
    try:
        arrived = internaldate(date)
    except (ValueError, OverflowError):
        return False
    return arrived is not None and parse_rfc3339(arrived) > moment
