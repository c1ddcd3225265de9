"""LearningStore: scoring from memory, training written through to the file, and reloading memory
when another process trained it.

The memory (token counts and clues, signature buckets, sender rows) is this object's own
attributes, read by its scoring methods directly: they run for every message, and the concept
modules' functions (bayes.py, nearest.py, senders.py) are given what they need rather than an
object to look it up in.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from operator import itemgetter
from pathlib import Path
from typing import Any

from gatewayd.message import ParsedMessage
from gatewayd.pipeline.learning import persistence
from gatewayd.pipeline.learning.bayes import Clues, TokenCounts, apply_deltas, count_tokens
from gatewayd.pipeline.learning.combine import MAX_CLUES, combine_clues
from gatewayd.pipeline.learning.nearest import (
    Buckets,
    Scans,
    add_signature,
    matching,
    nearest_distance,
    remove_signatures,
)
from gatewayd.pipeline.learning.persistence import SentMark, Snapshot
from gatewayd.pipeline.learning.senders import (
    ALL_MAILBOXES,
    SenderRow,
    Senders,
    correspondent_domains,
    reputation_address,
    sender_row,
    set_sender_row,
)
from gatewayd.pipeline.learning.signatures import message_digest, signature
from gatewayd.pipeline.learning.tokens import tokenize
from gatewayd.store import opening

log = logging.getLogger(__name__)

SPAM = "spam"
HAM = "ham"
LABELS = (SPAM, HAM)

# Another process's training is looked for at most this often (a PRAGMA per check).
RELOAD_CHECK_SECONDS = 1.0
# The most domains `correspondent_domains` gives (the most frequent): what the auth stage protects
# from lookalikes stays cheap to prepare, whatever a tenant has learnt.
MAX_CORRESPONDENT_DOMAINS = 500


class LearningStore:
    """Bayes counts, spam signatures and sender reputation in one SQLite file (one tenant's, see
    tenants.py: the file knows no tenants); thread-safe."""

    def __init__(
        self,
        path: Path,
        min_training: int = 200,
        signature_distance: int = 50,
        reload_in_background: bool = False,
        create: bool = True,
    ) -> None:
        self.path = Path(path)
        self.min_training = min_training
        self.signature_distance = signature_distance
        # The daemon's choice: another process's training is loaded in a thread of its own while
        # scoring goes on with what memory holds (a load takes 0.1-0.5 s for 100,000 senders and
        # would hold up every message and stream meanwhile). Elsewhere it is loaded at once.
        self.reload_in_background = reload_in_background
        # False: the file must exist (made for its directory's owner by gatewayd.store.ownership).
        self._create = create
        self._lock = threading.Lock()
        with opening("learning store", self.path):
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = persistence.connect(self.path, create)
        self._tokens: TokenCounts = {}
        self._nspam = self._nham = 0
        # What tokens scored since the counts last changed say (see bayes.py).
        self._clues = Clues(self._tokens, self._nspam, self._nham)
        self._signatures: Buckets = {}
        self._scans: Scans = {}
        self._senders: Senders = {}
        self._sender_rows: dict[SenderRow, SenderRow] = {}
        # Per mailbox: the generation its correspondent domains were counted at, and them.
        self._correspondents: dict[str | None, tuple[int, frozenset[str]]] = {}
        self._data_version = -1
        self._checked_at = 0.0
        # Bumped by every change to memory made here: a background load started before one may
        # miss it, and is then dropped (the next check starts another).
        self._generation = 0
        self._loading: threading.Thread | None = None
        self._closed = False
        with self._lock:
            self._reload_if_changed(force=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            loading = self._loading
        if loading is not None:
            loading.join()  # it installs nothing now; it only has its own connection to close
        with self._lock:
            self._db.close()

    def __enter__(self) -> LearningStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -----------------------------------------------------------------------------------------
    # Scoring (the spam stage's Learning protocol)

    def bayes(self, message: ParsedMessage) -> float | None:
        """P(spam) in [0, 1]; None until `min_training` spam and ham messages were trained."""
        with self._lock:
            self._reload_if_changed()
            if self._nspam < self.min_training or self._nham < self.min_training:
                return None
        tokens = tokenize(message)
        with self._lock:
            # Looked up in C; only tokens not met since the counts last changed cost Python work.
            found = list(map(self._clues.__getitem__, tokens))
        clues = list(filter(None, found))  # a token that is no clue is cached as ()
        if len(clues) > MAX_CLUES:
            # What heapq.nlargest(MAX_CLUES, ...) by strength gives: sort() is stable with
            # reverse=True, so equally strong clues keep their order there too.
            clues.sort(key=itemgetter(0), reverse=True)
            del clues[MAX_CLUES:]
        return combine_clues(clues)  # 0.5 without clues

    def signature_match(self, message: ParsedMessage) -> str | None:
        """Why the body is a near duplicate of a message reported as spam, or None."""
        with self._lock:
            self._reload_if_changed()
            if not any(self._signatures.values()):
                return None  # no spam reported (yet): nothing to compare the body with
        digest = signature(message)
        if digest is None:
            return None
        with self._lock:
            self._reload_if_changed()
            best = nearest_distance(digest, self._signatures, self._scans, self.signature_distance)
        if best is None:
            return None
        return f"tlsh distance {best} to a message reported as spam"

    def reputation(self, address: str | None, mailbox_id: str | None) -> dict[str, Any]:
        """Reports about a sender: `ham`/`spam` over all mailboxes of this store (one tenant's, see
        tenants.py), `mailbox_ham`/`mailbox_spam` in `mailbox_id`, and `sent_to`: `mailbox_id` (any
        mailbox when None) wrote to it.

        Answered from memory: this store's own training and `record_sent` show at once, another
        process's (the `gatewayd learn` CLI) once noticed, within RELOAD_CHECK_SECONDS, as for Bayes.
        """
        result: dict[str, Any] = {"ham": 0, "spam": 0, "sent_to": False, "mailbox_ham": 0, "mailbox_spam": 0}
        if not address:
            return result
        address = address.lower()
        with self._lock:
            self._reload_if_changed()
            overall = self._senders.get(ALL_MAILBOXES, {}).get(address)
            # An empty mailbox_id is the overall row, which gives no `sent_to` then (as the SQL did).
            mailbox = self._senders.get(mailbox_id, {}).get(address) if mailbox_id else None
        if overall is not None:
            result.update(ham=overall[0], spam=overall[1])
            if mailbox_id is None:
                result["sent_to"] = bool(overall[2])
        if mailbox is not None:
            result.update(mailbox_ham=mailbox[0], mailbox_spam=mailbox[1], sent_to=bool(mailbox[2]))
        return result

    def correspondent_domains(self, mailbox_id: str | None) -> frozenset[str]:
        """The domains `mailbox_id` (any mailbox when None) wrote to, and those of senders reported
        as ham more often than as spam (in any mailbox of this store, as `gatewayd learn` trains
        none in particular): up to MAX_CORRESPONDENT_DOMAINS, the most addresses first. The same
        object until the senders change, so a caller may keep what it derives from it."""
        with self._lock:
            self._reload_if_changed()
            cached = self._correspondents.get(mailbox_id)
            if cached is not None and cached[0] == self._generation:
                return cached[1]
            domains = correspondent_domains(self._senders, mailbox_id, MAX_CORRESPONDENT_DOMAINS)
            self._correspondents[mailbox_id] = (self._generation, domains)
            return domains

    # -----------------------------------------------------------------------------------------
    # Learning

    def train(self, message: ParsedMessage, label: str, mailbox_id: str | None = None) -> bool:
        """Learn `message` as `label` ("spam" or "ham"); True when anything changed.

        The same message (Message-ID and body) trained again under the same label is a no-op;
        under the other label its earlier training is undone first.
        """
        if label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, not {label!r}")
        digest = message_digest(message)
        tokens = tokenize(message)
        body_signature = signature(message)
        address = reputation_address(message)
        fresh = self._snapshot_if_stale()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")  # no other process can commit until we are done
            try:
                if fresh is not None:
                    self._install_if_current(*fresh)
                self._reload_if_changed(force=True)  # memory plus this call's deltas must equal disk
                earlier = persistence.trained_as(db, digest)
                if earlier is not None and earlier[0] == label:
                    db.execute("ROLLBACK")
                    return False
                deltas: dict[str, list[int]] = {}
                totals = [0, 0]  # messages: spam, ham
                senders: list[tuple[str, str, int, int]] = []  # applied to memory once committed
                if earlier is not None:  # re-labelled: take the earlier report back
                    count_tokens(deltas, totals, tokens, _column(earlier[0]), -1)
                    self._count_sender(senders, earlier[1], earlier[2], earlier[0], -1)
                count_tokens(deltas, totals, tokens, _column(label), +1)
                self._count_sender(senders, address, mailbox_id, label, +1)
                persistence.write_tokens(db, deltas, totals)
                persistence.write_message(db, digest, label, address, mailbox_id, time.time())
                added, removed = self._change_signatures(digest, body_signature, label)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._apply(deltas, totals, added, removed, senders)
        return True

    def record_sent(self, mailbox_id: str, address: str) -> None:
        """`mailbox_id` wrote to `address` (the send path)."""
        self.learn_sent(mailbox_id, [address])

    def learn_sent(self, mailbox_id: str, addresses: Iterable[str], mark: SentMark | None = None) -> None:
        """`mailbox_id` wrote to each of `addresses`, and (with `mark`) its Sent folder is learnt up
        to there: both in one transaction, so a crash neither loses nor repeats a message."""
        addresses = sorted({address.lower() for address in addresses})
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                persistence.write_sent(db, mailbox_id, addresses, mark)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            for address in addresses:
                for mailbox in (mailbox_id, ALL_MAILBOXES):
                    ham, spam, _ = sender_row(self._senders, address, mailbox)
                    set_sender_row(self._senders, self._sender_rows, address, mailbox, (ham, spam, 1))
            if addresses:  # the mark alone is not in memory: a background load in progress stays good
                self._generation += 1

    def sent_mark(self, mailbox_id: str) -> SentMark | None:
        """Where `learn_sent` last left the mailbox's Sent folder; None: never learnt from."""
        with self._lock:
            return persistence.read_sent_mark(self._db, mailbox_id)

    def counts(self) -> dict[str, int]:
        """Messages trained per label, and distinct tokens and signatures known."""
        with self._lock:
            self._reload_if_changed()
            return {
                SPAM: self._nspam,
                HAM: self._nham,
                "tokens": len(self._tokens),
                "signatures": sum(len(bucket) for bucket in self._signatures.values()),
            }

    def token_counts(self, token: str) -> tuple[int, int]:
        """(spam, ham) messages that had `token`: to explain a Bayes score."""
        with self._lock:
            self._reload_if_changed()
            return self._tokens.get(token, (0, 0))

    # -----------------------------------------------------------------------------------------
    # Internals; all called with the lock held

    def _forget_clues(self) -> None:
        """Clues afresh, from the counts and totals as they now are."""
        self._clues = Clues(self._tokens, self._nspam, self._nham)

    def _count_sender(
        self,
        changes: list[tuple[str, str, int, int]],
        address: str | None,
        mailbox_id: str | None,
        label: str,
        sign: int,
    ) -> None:
        """Count in the database, and add to `changes` what `_apply` then counts in memory."""
        if not address:
            return
        column = "spam" if label == SPAM else "ham"
        for mailbox in {ALL_MAILBOXES, mailbox_id or ALL_MAILBOXES}:
            persistence.count_sender(self._db, address, mailbox, column, sign)
            changes.append((address, mailbox, 1 if label == SPAM else 0, sign))

    def _change_signatures(
        self, digest: str, body_signature: str | None, label: str
    ) -> tuple[dict[str, str], set[str]]:
        """Add the signature of a spam; on a ham report drop every signature the ham matches."""
        added: dict[str, str] = {}
        removed: set[str] = set()
        if label == SPAM:
            if body_signature is not None:
                added[digest] = body_signature
                persistence.write_signature(self._db, digest, body_signature)
            return added, removed
        removed.add(digest)  # a message once reported as spam, now as ham
        if body_signature is not None:
            removed |= matching(body_signature, self._signatures, self.signature_distance)
        persistence.delete_signatures(self._db, removed)
        return added, removed

    def _apply(
        self,
        deltas: dict[str, list[int]],
        totals: list[int],
        added: dict[str, str],
        removed: set[str],
        senders: list[tuple[str, str, int, int]],
    ) -> None:
        """Bring memory in line with a committed training."""
        for address, mailbox, column, sign in senders:  # as _count_sender's SQL: a row even at zero
            row = list(sender_row(self._senders, address, mailbox))
            row[column] = max(0, row[column] + sign)
            set_sender_row(self._senders, self._sender_rows, address, mailbox, (row[0], row[1], row[2]))
        self._generation += 1
        self._nspam, self._nham = max(0, self._nspam + totals[0]), max(0, self._nham + totals[1])
        apply_deltas(self._tokens, deltas)
        self._forget_clues()  # every probability depends on the message totals
        remove_signatures(self._signatures, removed)
        for digest, text in added.items():
            add_signature(self._signatures, digest, text)
        if added or removed:
            self._scans = {}

    def _reload_if_changed(self, force: bool = False) -> None:
        """Bring memory in line with another connection's commits (the CLI's training, say): at
        once, or in the background (see `reload_in_background`); always at once when `force`d,
        since training counts on top of what is on disk."""
        now = time.monotonic()
        if not force and now - self._checked_at < RELOAD_CHECK_SECONDS:
            return
        self._checked_at = now
        version = persistence.file_version(self._db)
        if version == self._data_version:
            return
        if force or not self.reload_in_background:
            self._install(persistence.load(self._db), version)
        elif self._loading is None:
            self._loading = threading.Thread(
                target=self._load_in_background,
                args=(version, self._generation),
                name="gatewayd-learning-load",
                daemon=True,
            )
            self._loading.start()

    def _load_in_background(self, version: int, generation: int) -> None:
        snapshot = None
        try:
            snapshot = persistence.read_snapshot(self.path, self._create)
        except Exception as exc:  # memory stays as it was; the next check tries again
            log.warning("reloading the learning store failed: %s", exc)
        with self._lock:
            self._loading = None
            if snapshot is not None and generation == self._generation and not self._closed:
                self._install(snapshot, version)

    def _snapshot_if_stale(self) -> tuple[Snapshot, int, int] | None:
        """For training: when another connection committed since memory was loaded, the file read
        without the lock (a load under it would hold up scoring on the event loop for as long),
        with the data_version and generation it was read after; None when memory is current or
        the read failed (training then loads under the lock, as it always may)."""
        with self._lock:
            version = persistence.file_version(self._db)
            if version == self._data_version:
                return None
            generation = self._generation
        try:
            return persistence.read_snapshot(self.path, self._create), version, generation
        except sqlite3.Error:
            return None

    def _install_if_current(self, snapshot: Snapshot, version: int, generation: int) -> None:
        """Install a snapshot from `_snapshot_if_stale` inside training's write transaction if it
        is exactly the file: nothing committed elsewhere since `version` (BEGIN IMMEDIATE keeps
        it so from now on) and nothing changed memory here since `generation`."""
        if generation == self._generation and persistence.file_version(self._db) == version:
            self._install(snapshot, version)

    def _install(self, snapshot: Snapshot, version: int) -> None:
        self._generation += 1
        self._nspam, self._nham = snapshot.nspam, snapshot.nham
        self._tokens, self._signatures, self._scans = snapshot.tokens, snapshot.signatures, {}
        self._forget_clues()
        self._senders, self._sender_rows = snapshot.senders, snapshot.sender_rows
        self._data_version = version  # only now: a load that failed is tried again


def _column(label: str) -> int:
    """The column of `label` in token counts and message totals: spam, ham."""
    return 0 if label == SPAM else 1
