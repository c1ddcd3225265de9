"""Sender reputation in memory: ham/spam reports and `sent_to` per mailbox, then address.

`LearningStore.reputation` is asked for every message, mostly about senders never reported: the
rows are keyed by mailbox first, so a sender's address is one string and its rows cost no dict of
their own, and equal rows share one tuple (most are (0, 0, 1), (1, 0, 0) and the like): half the
memory.
"""

from __future__ import annotations

from collections import Counter

from gatewayd.message import ParsedMessage, from_address
from gatewayd.pipeline.learning.tokens import ARTEFACTS

ALL_MAILBOXES = ""  # the mailbox of a sender's row over all mailboxes of the file (one tenant)
SenderRow = tuple[int, int, int]  # a learn_senders row's ham, spam, sent_to
Senders = dict[str, dict[str, SenderRow]]  # mailbox -> address -> row


def reputation_address(message: ParsedMessage) -> str | None:
    """The From address reports count for; None for the corpus's and a deployment's artefacts."""
    address = from_address(message.data)
    return None if address is None or any(a in address for a in ARTEFACTS) else address


def sender_row(senders: Senders, address: str, mailbox: str) -> SenderRow:
    return senders.get(mailbox, {}).get(address, (0, 0, 0))


def set_sender_row(
    senders: Senders, rows: dict[SenderRow, SenderRow], address: str, mailbox: str, row: SenderRow
) -> None:
    senders.setdefault(mailbox, {})[address] = rows.setdefault(row, row)


def correspondent_domains(senders: Senders, mailbox_id: str | None, limit: int) -> frozenset[str]:
    """The domains of senders reported as ham more often than as spam (any mailbox), and of those
    `mailbox_id` (any mailbox when None) wrote to: the `limit` with the most addresses."""
    addresses = [a for a, (ham, spam, _) in senders.get(ALL_MAILBOXES, {}).items() if ham > spam]
    written = senders.get(mailbox_id if mailbox_id else ALL_MAILBOXES, {})
    addresses += [address for address, (_, _, sent_to) in written.items() if sent_to]
    counts = Counter(address.rpartition("@")[2] for address in addresses)
    return frozenset(d for d, _ in counts.most_common(limit) if d)
