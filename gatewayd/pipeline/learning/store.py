"""LearningStore: the SQLite file, training, and the Bayes counts and signatures held in memory."""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import compress
from operator import itemgetter
from pathlib import Path
from typing import Any

import tlsh

from gatewayd.message import ParsedMessage, from_address
from gatewayd.pipeline.learning.combine import MAX_CLUES, Clue, clue, combine_clues, robinson
from gatewayd.pipeline.learning.signatures import message_digest, signature
from gatewayd.pipeline.learning.tokens import ARTEFACTS, tokenize
from gatewayd.store import opening

log = logging.getLogger(__name__)

SPAM = "spam"
HAM = "ham"
LABELS = (SPAM, HAM)

# Tokens no message was trained with are cached as such too, so that scoring them again costs no
# Python work; up to this many (about 5 MB) beyond the known tokens.
MAX_UNSEEN_CACHED = 50_000
# Another process's training is looked for at most this often (a PRAGMA per check).
RELOAD_CHECK_SECONDS = 1.0
# The most domains `correspondent_domains` gives (the most frequent): what the auth stage protects
# from lookalikes stays cheap to prepare, whatever a tenant has learnt.
MAX_CORRESPONDENT_DOMAINS = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS learn_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS learn_tokens (
    token TEXT PRIMARY KEY, spam INTEGER NOT NULL, ham INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS learn_messages (
    digest TEXT PRIMARY KEY, label TEXT NOT NULL, address TEXT, mailbox TEXT,
    trained_at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS learn_signatures (digest TEXT PRIMARY KEY, tlsh TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS learn_senders (
    address TEXT NOT NULL, mailbox TEXT NOT NULL, ham INTEGER NOT NULL DEFAULT 0,
    spam INTEGER NOT NULL DEFAULT 0, sent_to INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (address, mailbox)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS learn_sent_marks (
    mailbox TEXT PRIMARY KEY, folder TEXT NOT NULL, uidvalidity INTEGER NOT NULL,
    last_uid INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO learn_meta VALUES ('nspam', 0), ('nham', 0);
"""
_ALL_MAILBOXES = ""  # the mailbox column of a sender's row over all mailboxes of this file (one tenant)
_SenderRow = tuple[int, int, int]  # a learn_senders row's ham, spam, sent_to


@dataclass(frozen=True, slots=True)
class SentMark:
    """How far a mailbox's Sent folder has been learnt from (gatewayd.imap.sent)."""

    folder: str
    uidvalidity: int
    last_uid: int


class LearningStore:
    """Bayes counts, spam signatures and sender reputation in one SQLite file (one tenant's, see
    tenants.py: the file knows no tenants); thread-safe."""

    def __init__(
        self,
        path: Path,
        min_training: int = 200,
        signature_distance: int = 50,
        reload_in_background: bool = False,
    ) -> None:
        self.path = Path(path)
        self.min_training = min_training
        self.signature_distance = signature_distance
        # The daemon's choice: another process's training is loaded in a thread of its own while
        # scoring goes on with what memory holds (a load takes 0.1-0.5 s for 100,000 senders and
        # would hold up every message and stream meanwhile). Elsewhere it is loaded at once.
        self.reload_in_background = reload_in_background
        self._lock = threading.Lock()
        with opening("learning store", self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA busy_timeout=5000")
                self._db.executescript(_SCHEMA)
            except BaseException:
                self._db.close()
                raise
        self._tokens: dict[str, tuple[int, int]] = {}  # token -> (spam, ham) messages
        # What tokens scored since the counts last changed say (see combine.clue): most tokens of a message
        # were met in earlier ones, so scoring rarely computes one.
        self._clues: dict[str, Clue] = {}
        # The clue of each (spam, ham) count met, which is all a clue depends on besides the totals:
        # tokens with equal counts (most are seen once or twice) share one tuple of floats, a few
        # thousand in all rather than one per token, which scoring then mostly finds in the CPU cache.
        self._clue_of_counts: dict[tuple[int, int], Clue] = {}
        self._nspam = self._nham = 0
        # Signatures bucketed by TLSH length value: a length value more than distance/12 apart
        # alone puts a pair beyond the distance, so only neighbouring buckets are scanned.
        self._signatures: dict[int, dict[str, tlsh.Tlsh]] = {}
        # Each bucket's signatures as a list with their quartile-ratio pairs beside it (see
        # _nearest), made when first scanned and dropped whenever the signatures change.
        self._scans: dict[int, tuple[list[tlsh.Tlsh], list[int]]] = {}
        # learn_senders by mailbox, then address: reputation() is asked for every message, mostly
        # about senders never reported. Keyed by mailbox first, so a sender's address is one string
        # and its rows cost no dict of their own.
        self._senders: dict[str, dict[str, _SenderRow]] = {}
        # Equal rows share one tuple (most are (0, 0, 1), (1, 0, 0) and the like): half the memory.
        self._sender_rows: dict[_SenderRow, _SenderRow] = {}
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
            cache = self._clues
            # Looked up in C; only tokens not met since the counts last changed cost Python work.
            found = list(map(cache.get, tokens))
            if None in found:
                self._find_clues(tokens, found)
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
            best = self._nearest(digest)
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
            overall = self._senders.get(_ALL_MAILBOXES, {}).get(address)
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
            addresses = [
                a for a, (ham, spam, _) in self._senders.get(_ALL_MAILBOXES, {}).items() if ham > spam
            ]
            written = self._senders.get(mailbox_id if mailbox_id else _ALL_MAILBOXES, {})
            addresses += [address for address, (_, _, sent_to) in written.items() if sent_to]
            counts = Counter(address.rpartition("@")[2] for address in addresses)
            domains = frozenset(d for d, _ in counts.most_common(MAX_CORRESPONDENT_DOMAINS) if d)
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
        address = _reputation_address(message)
        fresh = self._snapshot_if_stale()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")  # no other process can commit until we are done
            try:
                if fresh is not None:
                    self._install_if_current(*fresh)
                self._reload_if_changed(force=True)  # memory plus this call's deltas must equal disk
                row = db.execute(
                    "SELECT label, address, mailbox FROM learn_messages WHERE digest = ?", (digest,)
                ).fetchone()
                if row is not None and row[0] == label:
                    db.execute("ROLLBACK")
                    return False
                deltas: dict[str, list[int]] = {}
                totals = [0, 0]  # messages: spam, ham
                senders: list[tuple[str, str, int, int]] = []  # applied to memory once committed
                if row is not None:  # re-labelled: take the earlier report back
                    _count(deltas, totals, tokens, row[0], -1)
                    self._count_sender(senders, row[1], row[2], row[0], -1)
                _count(deltas, totals, tokens, label, +1)
                self._count_sender(senders, address, mailbox_id, label, +1)
                self._write_tokens(deltas, totals)
                db.execute(
                    "INSERT OR REPLACE INTO learn_messages VALUES (?, ?, ?, ?, ?)",
                    (digest, label, address, mailbox_id, time.time()),
                )
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
                db.executemany(
                    "INSERT INTO learn_senders (address, mailbox, sent_to) VALUES (?, ?, 1) "
                    "ON CONFLICT (address, mailbox) DO UPDATE SET sent_to = 1",
                    [(address, mailbox) for address in addresses for mailbox in (mailbox_id, _ALL_MAILBOXES)],
                )
                if mark is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO learn_sent_marks VALUES (?, ?, ?, ?)",
                        (mailbox_id, mark.folder, mark.uidvalidity, mark.last_uid),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            for address in addresses:
                for mailbox in (mailbox_id, _ALL_MAILBOXES):
                    ham, spam, _ = self._sender(address, mailbox)
                    self._set_sender(address, mailbox, (ham, spam, 1))
            if addresses:  # the mark alone is not in memory: a background load in progress stays good
                self._generation += 1

    def sent_mark(self, mailbox_id: str) -> SentMark | None:
        """Where `learn_sent` last left the mailbox's Sent folder; None: never learnt from."""
        with self._lock:
            row = self._db.execute(
                "SELECT folder, uidvalidity, last_uid FROM learn_sent_marks WHERE mailbox = ?", (mailbox_id,)
            ).fetchone()
        return SentMark(*row) if row is not None else None

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

    def _find_clues(self, tokens: list[str], found: list[Clue | None]) -> None:
        """Fill in `found` where it is None, and cache what was filled in."""
        cache, counts, nspam, nham = self._clues, self._tokens, self._nspam, self._nham
        of_counts = self._clue_of_counts
        if len(cache) > len(counts) + MAX_UNSEEN_CACHED:
            cache.clear()  # unseen tokens are cached too: bound what a stream of new words can add
        for i, token in enumerate(tokens):
            if found[i] is None:
                counted = counts.get(token)
                if counted is None:
                    token_clue: Clue = ()  # an unseen token scores exactly the prior: never a clue
                elif (shared := of_counts.get(counted)) is not None:
                    token_clue = shared
                else:
                    token_clue = of_counts[counted] = clue(robinson(*counted, nspam, nham))
                found[i] = cache[token] = token_clue

    def _forget_clues(self) -> None:
        self._clues, self._clue_of_counts = {}, {}

    def _write_tokens(self, deltas: dict[str, list[int]], totals: list[int]) -> None:
        self._db.executemany(
            "UPDATE learn_meta SET value = MAX(0, value + ?) WHERE key = ?",
            [(totals[0], "nspam"), (totals[1], "nham")],
        )
        self._db.executemany(
            "INSERT INTO learn_tokens VALUES (?1, MAX(0, ?2), MAX(0, ?3)) ON CONFLICT (token) DO UPDATE "
            "SET spam = MAX(0, spam + ?2), ham = MAX(0, ham + ?3)",
            [(token, s, h) for token, (s, h) in deltas.items() if s or h],
        )
        self._db.executemany(  # only an un-learn can bring a token to zero
            "DELETE FROM learn_tokens WHERE token = ? AND spam = 0 AND ham = 0",
            [(token,) for token, (s, h) in deltas.items() if s < 0 or h < 0],
        )

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
        for mailbox in {_ALL_MAILBOXES, mailbox_id or _ALL_MAILBOXES}:
            self._db.execute(
                f"INSERT INTO learn_senders (address, mailbox, {column}) VALUES (?1, ?2, MAX(0, ?3)) "
                f"ON CONFLICT (address, mailbox) DO UPDATE SET {column} = MAX(0, {column} + ?3)",
                (address, mailbox, sign),
            )
            changes.append((address, mailbox, 1 if label == SPAM else 0, sign))

    def _sender(self, address: str, mailbox: str) -> _SenderRow:
        return self._senders.get(mailbox, {}).get(address, (0, 0, 0))

    def _set_sender(self, address: str, mailbox: str, row: _SenderRow) -> None:
        self._senders.setdefault(mailbox, {})[address] = self._sender_rows.setdefault(row, row)

    def _change_signatures(
        self, digest: str, body_signature: str | None, label: str
    ) -> tuple[dict[str, str], set[str]]:
        """Add the signature of a spam; on a ham report drop every signature the ham matches."""
        added: dict[str, str] = {}
        removed: set[str] = set()
        if label == SPAM:
            if body_signature is not None:
                added[digest] = body_signature
                self._db.execute(
                    "INSERT OR REPLACE INTO learn_signatures VALUES (?, ?)", (digest, body_signature)
                )
            return added, removed
        removed.add(digest)  # a message once reported as spam, now as ham
        if body_signature is not None:
            removed |= {known for known, _ in self._within(_tlsh(body_signature))}
        self._db.executemany("DELETE FROM learn_signatures WHERE digest = ?", [(d,) for d in removed])
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
            row = list(self._sender(address, mailbox))
            row[column] = max(0, row[column] + sign)
            self._set_sender(address, mailbox, (row[0], row[1], row[2]))
        self._forget_clues()  # every probability depends on the message totals
        self._generation += 1
        self._nspam, self._nham = max(0, self._nspam + totals[0]), max(0, self._nham + totals[1])
        tokens = self._tokens
        for token, (s, h) in deltas.items():
            old = tokens.get(token, (0, 0))
            new = (max(0, old[0] + s), max(0, old[1] + h))
            if new == (0, 0):
                tokens.pop(token, None)
            else:
                tokens[token] = new
        for bucket in self._signatures.values():
            for digest in removed:
                bucket.pop(digest, None)
        for digest, text in added.items():
            parsed = _tlsh(text)
            self._signatures.setdefault(parsed.lvalue, {})[digest] = parsed
        if added or removed:
            self._scans = {}

    def _within(self, probe: tlsh.Tlsh) -> Iterable[tuple[str, int]]:
        """(digest, distance) of known signatures within `signature_distance` of `probe`."""
        for bucket in self._neighbours(probe):
            for digest, known in bucket.items():
                distance = probe.diff(known)
                if distance <= self.signature_distance:
                    yield digest, distance

    def _nearest(self, text: str) -> int | None:
        """The distance to the nearest known signature if within `signature_distance`.

        A linear scan of the neighbouring length buckets (the loop runs in C): fine up to some
        tens of thousands of reported spam. A diff costs several hundred instructions; the length
        and quartile ratios alone bound the distance from below, so the signatures they put beyond
        `signature_distance` (three in four on the corpus) are skipped by a list lookup instead.
        """
        probe = _tlsh(text)
        nearest: float = math.inf
        scanned = False
        # Nearest lengths first: every distance to a bucket k length values away is at least
        # _length_distance(k), so once that is no less than the nearest found, farther buckets
        # cannot hold a nearer signature (a near duplicate mostly has the same length value).
        for k in range(self._reach() + 1):
            length_distance = _length_distance(k)
            if length_distance >= nearest:
                break
            # By _ratio_pair: whether the ratios may still keep a signature within the distance.
            left = self.signature_distance - length_distance
            reachable = _ratios_within(probe.q1ratio, probe.q2ratio, left)
            for step in {k, -k}:
                scan = self._scan((probe.lvalue + step) % 256)
                if scan is not None:
                    scanned = True
                    known, ratio_pairs = scan
                    near = compress(known, map(reachable.__getitem__, ratio_pairs))
                    nearest = min(nearest, min(map(probe.diff, near), default=nearest))
        if not scanned:  # not `nearest == inf`: signatures all skipped are beyond the distance too
            nearest = 999  # no signature of a length within reach
        return int(nearest) if nearest <= self.signature_distance else None

    def _scan(self, lvalue: int) -> tuple[list[tlsh.Tlsh], list[int]] | None:
        """The signatures of a length bucket and their quartile-ratio pairs; None: no signature."""
        scan = self._scans.get(lvalue)
        if scan is None:
            bucket = self._signatures.get(lvalue)
            if not bucket:
                return None
            known = list(bucket.values())
            scan = self._scans[lvalue] = (known, [_ratio_pair(signature) for signature in known])
        return scan

    def _reach(self) -> int:
        # Each length step beyond the first adds 12 to the distance: farther buckets cannot match.
        return max(1, self.signature_distance // 12)

    def _neighbours(self, probe: tlsh.Tlsh) -> Iterator[dict[str, tlsh.Tlsh]]:
        reach = self._reach()
        for step in range(-reach, reach + 1):
            bucket = self._signatures.get((probe.lvalue + step) % 256)
            if bucket:
                yield bucket

    def _reload_if_changed(self, force: bool = False) -> None:
        """Bring memory in line with another connection's commits (the CLI's training, say): at
        once, or in the background (see `reload_in_background`); always at once when `force`d,
        since training counts on top of what is on disk."""
        now = time.monotonic()
        if not force and now - self._checked_at < RELOAD_CHECK_SECONDS:
            return
        self._checked_at = now
        version = self._file_version()
        if version == self._data_version:
            return
        if force or not self.reload_in_background:
            self._install(_load(self._db), version)
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
            snapshot = self._read_snapshot()
        except Exception as exc:  # memory stays as it was; the next check tries again
            log.warning("reloading the learning store failed: %s", exc)
        with self._lock:
            self._loading = None
            if snapshot is not None and generation == self._generation and not self._closed:
                self._install(snapshot, version)

    def _read_snapshot(self) -> _Snapshot:
        """The file as it is, read on a connection of its own in one read transaction: a
        consistent snapshot, and the lock stays free for scoring meanwhile."""
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA query_only=ON")
            db.execute("BEGIN")
            snapshot = _load(db)
            db.execute("COMMIT")
        finally:
            db.close()
        return snapshot

    def _snapshot_if_stale(self) -> tuple[_Snapshot, int, int] | None:
        """For training: when another connection committed since memory was loaded, the file read
        without the lock (a load under it would hold up scoring on the event loop for as long),
        with the data_version and generation it was read after; None when memory is current or
        the read failed (training then loads under the lock, as it always may)."""
        with self._lock:
            version = self._file_version()
            if version == self._data_version:
                return None
            generation = self._generation
        try:
            return self._read_snapshot(), version, generation
        except sqlite3.Error:
            return None

    def _install_if_current(self, snapshot: _Snapshot, version: int, generation: int) -> None:
        """Install a snapshot from `_snapshot_if_stale` inside training's write transaction if it
        is exactly the file: nothing committed elsewhere since `version` (BEGIN IMMEDIATE keeps
        it so from now on) and nothing changed memory here since `generation`."""
        if generation == self._generation and self._file_version() == version:
            self._install(snapshot, version)

    def _file_version(self) -> int:
        """SQLite's data_version on this store's connection: it changes when another connection
        commits (never for this connection's own commits)."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _install(self, snapshot: _Snapshot, version: int) -> None:
        self._forget_clues()
        self._generation += 1
        self._nspam, self._nham = snapshot.nspam, snapshot.nham
        self._tokens, self._signatures, self._scans = snapshot.tokens, snapshot.signatures, {}
        self._senders, self._sender_rows = snapshot.senders, snapshot.sender_rows
        self._data_version = version  # only now: a load that failed is tried again


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What scoring reads, as loaded from the file."""

    nspam: int
    nham: int
    tokens: dict[str, tuple[int, int]]
    signatures: dict[int, dict[str, tlsh.Tlsh]]
    senders: dict[str, dict[str, _SenderRow]]
    sender_rows: dict[_SenderRow, _SenderRow]


def _load(db: sqlite3.Connection) -> _Snapshot:
    meta = dict(db.execute("SELECT key, value FROM learn_meta").fetchall())
    tokens = {token: (s, h) for token, s, h in db.execute("SELECT token, spam, ham FROM learn_tokens")}
    signatures: dict[int, dict[str, tlsh.Tlsh]] = {}
    for digest, text in db.execute("SELECT digest, tlsh FROM learn_signatures"):
        parsed = _tlsh(text)
        signatures.setdefault(parsed.lvalue, {})[digest] = parsed
    senders: dict[str, dict[str, _SenderRow]] = {}
    rows: dict[_SenderRow, _SenderRow] = {}  # equal rows share one tuple, as in _set_sender
    previous = ""
    query = "SELECT address, mailbox, ham, spam, sent_to FROM learn_senders"
    for address, mailbox, ham, spam, sent_to in db.execute(query):
        if address == previous:  # rows come by address: its mailboxes share one string
            address = previous
        previous = address
        row = (ham, spam, sent_to)
        senders.setdefault(mailbox, {})[address] = rows.setdefault(row, row)
    return _Snapshot(meta.get("nspam", 0), meta.get("nham", 0), tokens, signatures, senders, rows)


def _count(
    deltas: dict[str, list[int]], totals: list[int], tokens: Iterable[str], label: str, sign: int
) -> None:
    column = 0 if label == SPAM else 1
    totals[column] += sign
    for token in tokens:
        deltas.setdefault(token, [0, 0])[column] += sign


def _length_distance(steps: int) -> int:
    """The part of a TLSH distance that comes from length values `steps` apart (as in TLSH)."""
    return steps if steps <= 1 else 12 * steps


def _ratio_pair(signature: tlsh.Tlsh) -> int:
    """A signature's two quartile ratios (4 bits each) as one index into `_ratio_distances`."""
    return signature.q1ratio * 16 + signature.q2ratio


@lru_cache(maxsize=1024)  # 256 ratio pairs times the few distances left for them
def _ratios_within(q1ratio: int, q2ratio: int, distance: int) -> list[bool]:
    """Whether the quartile ratios of a signature with these ratios and one of each `_ratio_pair`
    alone keep the pair within `distance` (see `_ratio_distances`)."""
    return [bound <= distance for bound in _ratio_distances(q1ratio, q2ratio)]


def _ratio_distances(q1ratio: int, q2ratio: int) -> list[int]:
    """The part of a TLSH distance that comes from the quartile ratios (as in TLSH), from a
    signature with these ratios to one of each `_ratio_pair`."""
    pairs = [(q1, q2) for q1 in range(16) for q2 in range(16)]
    return [_ratio_distance(q1ratio, q1) + _ratio_distance(q2ratio, q2) for q1, q2 in pairs]


def _ratio_distance(a: int, b: int) -> int:
    steps = min((a - b) % 16, (b - a) % 16)  # ratios wrap around, as in TLSH
    return steps if steps <= 1 else 12 * (steps - 1)


def _reputation_address(message: ParsedMessage) -> str | None:
    address = from_address(message.data)
    return None if address is None or any(a in address for a in ARTEFACTS) else address


def _tlsh(text: str) -> tlsh.Tlsh:
    parsed = tlsh.Tlsh()
    parsed.fromTlshStr(text)
    return parsed
