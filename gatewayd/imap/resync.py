"""After a UIDVALIDITY change: which messages of the renumbered folder are new.

The server renumbered the folder (an index rebuild, a restore), so the old checkpoint says nothing
about the new UIDs. What the store remembers of the folder under its old numbering decides
(`EventStore.folder_history`):

- When messages were announced from it, a message is new when its Message-ID was never announced
  for the folder (`EventStore.known_message_ids`) and it arrived (INTERNALDATE) no earlier than the
  second the newest announced one arrived in. Both times are the server's, so no clock skew comes
  in, and mail that arrived while that one was being processed is not lost. Older mail with an
  unknown Message-ID is quiet: it was in the folder before gatewayd watched it, or retention
  pruned its record. A message without a Message-ID cannot be told from one announced before, so
  it must have arrived in a later second: one that arrived in that very second and was never
  fetched stays quiet (rather than every such message announced again).
- When none was announced, every message that arrived after a watcher first connected to the
  folder is new (that time is gatewayd's: FIRST_WATCHED_MARGIN allows for the server's clock).
- When the store remembers nothing of the folder (retention pruned it all), nothing is
  announced, as on a first connect.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime, timedelta

from gatewayd.events import parse_rfc3339
from gatewayd.message.fields import internaldate
from gatewayd.store import FolderHistory

# UID -> (Message-ID, INTERNALDATE), as `ImapSession.message_ids` returns them.
Headers = Mapping[int, tuple[str | None, str | None]]

# Clock skew between gatewayd and the server fits well in it.
FIRST_WATCHED_MARGIN = timedelta(seconds=60)


def new_uids(headers: Headers, known: Collection[str], history: FolderHistory) -> list[int]:
    """The UIDs to announce, ascending (see the module docstring)."""
    if history.newest_arrival is not None:
        since = history.newest_arrival.replace(microsecond=0)  # INTERNALDATE has whole seconds
        return sorted(
            uid
            for uid, (message_id, date) in headers.items()
            if (arrived := _arrival(date)) is not None
            and (arrived >= since if message_id else arrived > since)
            and message_id not in known
        )
    if history.first_watched is not None:
        since = history.first_watched - FIRST_WATCHED_MARGIN
        return sorted(
            uid
            for uid, (message_id, date) in headers.items()
            if (arrived := _arrival(date)) is not None and arrived >= since and message_id not in known
        )
    return []


def _arrival(date: str | None) -> datetime | None:
    """An INTERNALDATE as a time; None when unreadable (treated as old: quiet)."""
    try:
        arrived = internaldate(date)
    except (ValueError, OverflowError):
        return None
    return parse_rfc3339(arrived) if arrived is not None else None
