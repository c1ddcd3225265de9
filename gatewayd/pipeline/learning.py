"""What the spam stage learns from reports: Bayes token counts, spam signatures, sender reputation.

One SQLite file (WAL) holds it all; `LearningStore` is what `gatewayd.pipeline.spam` calls through its
`Learning` protocol, from worker threads (`asyncio.to_thread`) and from `gatewayd learn`.

- Bayes: Robinson's per-token probabilities combined with Fisher's chi-square, as in SpamBayes and
  SpamAssassin's Bayes. A message counts each token once. It only gives a score once at least
  `min_training` spam and `min_training` ham were trained: a Bayes trained on a few dozen messages
  is confidently wrong.
- Signatures: TLSH of the normalised body of every message reported as spam. A near duplicate of a
  reported spam (same template, other names, numbers or tracking links) is within a small distance.
  TLSH is steady from about 1 KB of text; on shorter bodies a few changed words can move the hash
  far, so those match only when nearly identical (a missed match, never a false one). A ham report
  removes every signature it matches: someone wants that text after all.
- Reputation: ham/spam reports per lower-cased From address (overall and per mailbox), and whether
  a mailbox has written to the address.

Training is rare and scoring is hot: token counts and signatures live in memory, loaded at open,
and every `train` writes through to SQLite in the same call. Another process training the same
file (the CLI while the daemon runs) is noticed through `PRAGMA data_version` within a second and
the memory is reloaded. Training a message twice changes nothing; training it under the other
label moves it (un-learn, then learn), like `sa-learn`. Un-learning tokenises the message again,
so counts are clamped at zero should the tokeniser have changed in between. Nothing expires yet:
the 3,000 messages of the SpamAssassin corpus make 40,000 tokens, 6 MB in memory, 1.3 MB on disk.

The corpus of 2002 munged its owner's addresses to spamassassin.taint.org and carries fetchmail
`Received` lines in ham and spam alike; no token here comes from `Received` headers, and tokens
and sender addresses naming those artefacts are not learned (657 of its ham come "from"
rssfeeds@spamassassin.taint.org). A deployment's own relays cannot become spam evidence either.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

import tlsh

from gatewayd.message import FetchedMessage, ParsedMessage, from_address, parse

log = logging.getLogger(__name__)

SPAM = "spam"
HAM = "ham"
LABELS = (SPAM, HAM)

# Robinson's prior: an unseen or rare token leans towards X with the weight of S messages.
PRIOR_STRENGTH = 1.0
PRIOR_PROBABILITY = 0.5
# Tokens whose probability is within this of 0.5 say nothing and are not combined.
MIN_TOKEN_STRENGTH = 0.1
_CLUE_ABOVE, _CLUE_BELOW = 0.5 + MIN_TOKEN_STRENGTH, 0.5 - MIN_TOKEN_STRENGTH
# The most interesting tokens combined per message (SpamBayes uses 150).
MAX_CLUES = 150
# Tokens no message was trained with are cached as such too, so that scoring them again costs no
# Python work; up to this many (about 5 MB) beyond the known tokens.
MAX_UNSEEN_CACHED = 50_000
# Text tokenised per message at most, and tokens kept: bounds the cost of hostile mail.
MAX_TOKEN_TEXT = 64 * 1024
MAX_TOKENS = 3000
# Body bytes hashed for a signature at most; TLSH costs about 8 µs per KB.
MAX_SIGNATURE_TEXT = 16 * 1024
# TLSH itself needs 50 bytes with some variety. Below about 128 bytes short replies and notices
# look alike and a few changed words move the hash a lot: not worth a signature.
MIN_SIGNATURE_TEXT = 128
# Another process's training is looked for at most this often (a PRAGMA per check).
RELOAD_CHECK_SECONDS = 1.0

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
INSERT OR IGNORE INTO learn_meta VALUES ('nspam', 0), ('nham', 0);
"""
_ALL_MAILBOXES = ""  # the mailbox column of a sender's overall row
# Tokens and sender addresses containing these are never learned (see the module docstring).
ARTEFACTS = ("spamassassin", "taint")


class LearningStore:
    """Bayes counts, spam signatures and sender reputation in one SQLite file; thread-safe."""

    def __init__(self, path: Path, min_training: int = 200, signature_distance: int = 50) -> None:
        self.path = Path(path)
        self.min_training = min_training
        self.signature_distance = signature_distance
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._tokens: dict[str, tuple[int, int]] = {}  # token -> (spam, ham) messages
        # What tokens scored since the counts last changed say (see _clue): most tokens of a message
        # were met in earlier ones, so scoring rarely computes one.
        self._clues: dict[str, _Clue] = {}
        self._nspam = self._nham = 0
        # Signatures bucketed by TLSH length value: a length value more than distance/12 apart
        # alone puts a pair beyond the distance, so only neighbouring buckets are scanned.
        self._signatures: dict[int, dict[str, tlsh.Tlsh]] = {}
        self._data_version = -1
        self._checked_at = 0.0
        with self._lock:
            self._reload_if_changed(force=True)

    def close(self) -> None:
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
            # What heapq.nlargest(MAX_CLUES, ...) by strength gives: sorted() is stable with
            # reverse=True, so equally strong clues keep their order there too.
            clues = sorted(clues, key=itemgetter(0), reverse=True)[:MAX_CLUES]
        if not clues:
            return 0.5
        _, not_spam_logs, spam_logs = zip(*clues, strict=True)
        return _fisher(not_spam_logs, spam_logs)

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
        """Reports about a sender: `ham`/`spam` over all mailboxes, `mailbox_ham`/`mailbox_spam`
        in `mailbox_id`, and `sent_to`: `mailbox_id` (any mailbox when None) wrote to it."""
        result: dict[str, Any] = {"ham": 0, "spam": 0, "sent_to": False, "mailbox_ham": 0, "mailbox_spam": 0}
        if not address:
            return result
        with self._lock:
            rows = self._db.execute(
                "SELECT mailbox, ham, spam, sent_to FROM learn_senders "
                "WHERE address = ? AND mailbox IN (?, ?)",
                (address.lower(), _ALL_MAILBOXES, mailbox_id or _ALL_MAILBOXES),
            ).fetchall()
        for mailbox, ham, spam, sent_to in rows:
            if mailbox == _ALL_MAILBOXES:
                result.update(ham=ham, spam=spam)
                if mailbox_id is None:
                    result["sent_to"] = bool(sent_to)
            else:
                result.update(mailbox_ham=ham, mailbox_spam=spam, sent_to=bool(sent_to))
        return result

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
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")  # no other process can commit until we are done
            try:
                self._reload_if_changed(force=True)  # memory plus this call's deltas must equal disk
                row = db.execute(
                    "SELECT label, address, mailbox FROM learn_messages WHERE digest = ?", (digest,)
                ).fetchone()
                if row is not None and row[0] == label:
                    db.execute("ROLLBACK")
                    return False
                deltas: dict[str, list[int]] = {}
                totals = [0, 0]  # messages: spam, ham
                if row is not None:  # re-labelled: take the earlier report back
                    _count(deltas, totals, tokens, row[0], -1)
                    self._count_sender(row[1], row[2], row[0], -1)
                _count(deltas, totals, tokens, label, +1)
                self._count_sender(address, mailbox_id, label, +1)
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
            self._apply(deltas, totals, added, removed)
        return True

    def record_sent(self, mailbox_id: str, address: str) -> None:
        """`mailbox_id` wrote to `address` (from the send path or the Sent folder)."""
        with self._lock:
            self._db.executemany(
                "INSERT INTO learn_senders (address, mailbox, sent_to) VALUES (?, ?, 1) "
                "ON CONFLICT (address, mailbox) DO UPDATE SET sent_to = 1",
                [(address.lower(), mailbox_id), (address.lower(), _ALL_MAILBOXES)],
            )

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

    def _find_clues(self, tokens: list[str], found: list[_Clue | None]) -> None:
        """Fill in `found` where it is None, and cache what was filled in."""
        cache, counts, nspam, nham = self._clues, self._tokens, self._nspam, self._nham
        if len(cache) > len(counts) + MAX_UNSEEN_CACHED:
            cache.clear()  # unseen tokens are cached too: bound what a stream of new words can add
        for i, token in enumerate(tokens):
            if found[i] is None:
                counted = counts.get(token)
                # An unseen token scores exactly the prior: never a clue.
                clue = () if counted is None else _clue(_robinson(counted[0], counted[1], nspam, nham))
                found[i] = cache[token] = clue

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

    def _count_sender(self, address: str | None, mailbox_id: str | None, label: str, sign: int) -> None:
        if not address:
            return
        column = "spam" if label == SPAM else "ham"
        for mailbox in {_ALL_MAILBOXES, mailbox_id or _ALL_MAILBOXES}:
            self._db.execute(
                f"INSERT INTO learn_senders (address, mailbox, {column}) VALUES (?1, ?2, MAX(0, ?3)) "
                f"ON CONFLICT (address, mailbox) DO UPDATE SET {column} = MAX(0, {column} + ?3)",
                (address, mailbox, sign),
            )

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
        self, deltas: dict[str, list[int]], totals: list[int], added: dict[str, str], removed: set[str]
    ) -> None:
        """Bring memory in line with a committed training."""
        self._clues = {}  # every probability depends on the message totals
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

    def _within(self, probe: tlsh.Tlsh) -> Iterable[tuple[str, int]]:
        """(digest, distance) of known signatures within `signature_distance` of `probe`."""
        for bucket in self._neighbours(probe):
            for digest, known in bucket.items():
                distance = probe.diff(known)
                if distance <= self.signature_distance:
                    yield digest, distance

    def _nearest(self, text: str) -> int | None:
        """The distance to the nearest known signature if within `signature_distance`.

        A linear scan of the neighbouring length buckets at about 0.2 µs per signature (the loop
        runs in C): fine up to some tens of thousands of reported spam.
        """
        probe = _tlsh(text)
        nearest: float = math.inf
        # Nearest lengths first: every distance to a bucket k length values away is at least
        # _length_distance(k), so once that is no less than the nearest found, farther buckets
        # cannot hold a nearer signature (a near duplicate mostly has the same length value).
        for k in range(self._reach() + 1):
            if _length_distance(k) >= nearest:
                break
            for step in {k, -k}:
                bucket = self._signatures.get((probe.lvalue + step) % 256)
                if bucket:
                    nearest = min(nearest, *map(probe.diff, bucket.values()))
        if nearest == math.inf:
            nearest = 999  # no signature of a length within reach
        return int(nearest) if nearest <= self.signature_distance else None

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
        """Reload memory when another connection committed since (the CLI training, say)."""
        now = time.monotonic()
        if not force and now - self._checked_at < RELOAD_CHECK_SECONDS:
            return
        self._checked_at = now
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return
        self._data_version = version
        self._clues = {}
        db = self._db
        meta = dict(db.execute("SELECT key, value FROM learn_meta").fetchall())
        self._nspam, self._nham = meta.get("nspam", 0), meta.get("nham", 0)
        self._tokens = {
            token: (s, h) for token, s, h in db.execute("SELECT token, spam, ham FROM learn_tokens")
        }
        self._signatures = {}
        for digest, text in db.execute("SELECT digest, tlsh FROM learn_signatures"):
            parsed = _tlsh(text)
            self._signatures.setdefault(parsed.lvalue, {})[digest] = parsed


def _count(
    deltas: dict[str, list[int]], totals: list[int], tokens: Iterable[str], label: str, sign: int
) -> None:
    column = 0 if label == SPAM else 1
    totals[column] += sign
    for token in tokens:
        deltas.setdefault(token, [0, 0])[column] += sign


def learn_from_dirs(
    store: LearningStore, spam_dirs: Sequence[Path], ham_dirs: Sequence[Path]
) -> dict[str, int]:
    """Train on every file (one RFC 5322 message each, e.g. `*.eml`) in the given directories.

    `skipped` counts files that were empty, unreadable, or already trained under that label.
    """
    result = {SPAM: 0, HAM: 0, "skipped": 0}
    uid = 0
    for label, dirs in ((SPAM, spam_dirs), (HAM, ham_dirs)):
        for directory in dirs:
            for path in sorted(Path(directory).iterdir()):
                if not path.is_file() or path.name.startswith("."):
                    continue
                try:
                    raw = path.read_bytes()
                except OSError as exc:
                    log.warning("cannot read %s: %s", path, exc)
                    result["skipped"] += 1
                    continue
                uid += 1
                fetched = FetchedMessage(
                    folder="INBOX",
                    uid=uid,
                    uidvalidity=1,
                    raw=raw,
                    size=len(raw),
                    flags=(),
                    internaldate=None,
                )
                if raw.strip() and store.train(parse(fetched), label):
                    result[label] += 1
                else:
                    result["skipped"] += 1
    return result


# ---------------------------------------------------------------------------------------------
# Combining


def _robinson(spam: int, ham: int, nspam: int, nham: int) -> float:
    """Robinson's f(w): the token's spam probability, pulled towards the prior when it is rare."""
    spam_ratio, ham_ratio = spam / nspam, ham / nham
    p = spam_ratio / (spam_ratio + ham_ratio)
    return (PRIOR_STRENGTH * PRIOR_PROBABILITY + (spam + ham) * p) / (PRIOR_STRENGTH + spam + ham)


# A token as a clue: (strength, log(1 - f), log(f)) of its probability f; () when it is no clue.
_Clue = tuple[float, ...]


def _clue(f: float) -> _Clue:
    if _CLUE_BELOW < f < _CLUE_ABOVE:
        return ()
    # The logs chi2_combine takes, computed once per token rather than per message.
    return (abs(f - 0.5), math.log(1.0 - f), math.log(f))


def chi2_combine(probabilities: Sequence[float]) -> float:
    """Fisher's combination as in SpamBayes: how unlike ham minus how unlike spam, mapped to [0, 1].

    Near 0 or 1 when the clues agree; near 0.5 both when there are none and when they conflict.
    """
    return _fisher([math.log(1.0 - f) for f in probabilities], [math.log(f) for f in probabilities])


def _fisher(not_spam_logs: Sequence[float], spam_logs: Sequence[float]) -> float:
    """chi2_combine from log(1 - f) and log(f) of each clue."""
    n = len(spam_logs)
    if not n:
        return 0.5
    spamminess = 1.0 - _chi2q(-2.0 * sum(not_spam_logs), 2 * n)
    hamminess = 1.0 - _chi2q(-2.0 * sum(spam_logs), 2 * n)
    return (spamminess - hamminess + 1.0) / 2.0


def _chi2q(x2: float, freedom: int) -> float:
    """P(chi-square with `freedom` (even) degrees of freedom >= x2)."""
    m = x2 / 2.0
    total = term = math.exp(-m)
    for i in range(1, freedom // 2):
        term *= m / i
        total += term
    return min(total, 1.0)


# ---------------------------------------------------------------------------------------------
# Tokens

_URL = re.compile(r"(?:https?://|ftp://|www\.)([a-z0-9.-]+)[^\s<>\"']*")
_EMAIL = re.compile(r"@([a-z0-9-]+(?:\.[a-z0-9-]+)+)")  # the domain is all we use
_STRIP = ".,;:!?()[]{}<>\"'*`|=_-~/\\#^"  # punctuation around a word, not part of it
_NUMBER = re.compile(r"[$€£]?\d[\d.,]*%?")
_DIGITS = re.compile(r"\d+")
_DIGIT = re.compile(r"\d")
_CENTS = re.compile(r"[.,]\d\d?%?$")
# Matched on the lower-cased header block, after a newline: much faster than re.I with re.M.
_RAW_HEADER = re.compile(rb"\n(content-type|x-mailer|user-agent):[ \t]*([^\r\n]*)")
_CHARSET = re.compile(rb"charset=\"?([a-z0-9_.:-]+)")


def tokenize(message: ParsedMessage) -> list[str]:
    """The distinct tokens of a message: header features, subject words, URL domains, body words."""
    tokens = _header_tokens(message)
    subject = (message.data.get("subject") or "").lower()
    tokens += ["subject:" + word for word in _words(subject)]
    text = message.text[:MAX_TOKEN_TEXT].lower()
    html = (message.html or "")[:MAX_TOKEN_TEXT].lower()
    # Links count by their domain only: paths and tracking parameters are unique per message.
    # Every link has "://" or "www.": most texts need no regex pass. One split() both finds the
    # hosts (its group) and cuts the links out (joining the rest with spaces, as sub(" ") would).
    hosts: list[str] = []
    if "://" in text or "www." in text:
        parts = _URL.split(text)
        hosts, text = parts[1::2], " ".join(parts[::2])
    if "://" in html or "www." in html:
        hosts += _URL.findall(html)
    tokens += ["url:" + _domain(host) for host in dict.fromkeys(hosts)]
    tokens += ["email:" + _domain(host) for host in dict.fromkeys(_EMAIL.findall(text))]
    tokens += _words(text)
    # Hardly a message has an artefact: one search of all tokens at once, filtered only when found.
    a, b = ARTEFACTS
    joined = "\n".join(tokens)
    if a in joined or b in joined:
        tokens = [t for t in tokens if a not in t and b not in t]
    return list(dict.fromkeys(tokens))[:MAX_TOKENS]


def _words(text: str) -> list[str]:
    """Distinct words of 3 characters or more; numbers by their size, long runs by their shape.

    Comprehensions rather than one loop: this is most of the cost of scoring a message.
    """
    # Stripping every word in C costs less than removing repeats first (a pass over a dict).
    found = dict.fromkeys(map(str.strip, text.split(), repeat(_STRIP)))
    words = [w for w in found if 2 < len(w) <= 20 and w.isalpha()]
    for word in [w for w in found if len(w) > 2 and not (len(w) <= 20 and w.isalpha())]:
        if _NUMBER.fullmatch(word):  # amounts and counts by their size, not their value
            currency = word[0] if word[0] in "$€£" else ""
            words.append(f"num:{currency}{len(_DIGIT.findall(_CENTS.sub('', word)))}")
        elif len(word) > 20:  # encoded junk, unspaced scripts: shape only, as SpamBayes does
            words.append(f"skip:{word[0]}:{len(word) // 10 * 10}")
        else:
            words.append(_DIGITS.sub("#", word))
    return words


def _domain(host: str) -> str:
    labels = host.strip(".").split(".")
    if all(label.isdigit() for label in labels):
        return "ip"
    return ".".join(labels[-2:])


def _header_tokens(message: ParsedMessage) -> list[str]:
    data, headers = message.data, message.headers
    tokens = []
    sender = from_address(data)
    sender_domain = sender.rpartition("@")[2] if sender else None
    tokens.append("from:" + (_domain(sender_domain) if sender_domain else "none"))
    if sender and data["from"].get("name"):
        tokens.append("from-name:yes")
    replies = [entry["address"].lower() for entry in data.get("reply_to") or [] if entry.get("address")]
    if replies and sender_domain and not any(r.endswith("@" + sender_domain) for r in replies):
        tokens.append("reply-to:elsewhere")
    recipients = len(data.get("to") or []) + len(data.get("cc") or [])
    tokens.append(f"recipients:{recipients if recipients < 10 else 'many'}")
    subject = data.get("subject") or ""
    if subject[:3].lower() in ("re:", "aw:", "sv:"):
        tokens.append("subject:is-reply")
    letters = list(filter(str.isalpha, subject))  # in C, not a loop per character
    if len(letters) >= 8 and all(map(str.isupper, letters)):
        tokens.append("subject:all-caps")
    # Absence is the signal for some headers, presence for others; not both, they would count twice.
    tokens += [f"header:{name}:missing" for name in ("message-id", "date") if not headers.get(name)]
    tokens += [f"header:{name}" for name in ("in-reply-to", "references", "list-id") if headers.get(name)]
    for name in ("precedence", "auto-submitted"):
        if headers.get(name):
            tokens.append(f"header:{name}:{headers[name][0].strip().lower()[:20]}")
    tokens += ["attachment:" + str(a.get("content_type", "?")).lower() for a in data.get("attachments") or []]
    # A few headers message.parse does not keep: the message's structure and the mailer.
    head = b"\n" + message.raw[: min(_header_end(message.raw), 65536)].lower()
    for name, value in _RAW_HEADER.findall(head):
        if name == b"content-type":
            kind, _, parameters = value.partition(b";")
            tokens.append("content-type:" + kind.strip().decode("latin-1")[:40])
            tokens += ["charset:" + c.decode("latin-1") for c in _CHARSET.findall(parameters)]
        else:
            tokens.append("mailer:" + _DIGITS.sub("#", value.strip().decode("latin-1").split(" ")[0][:30]))
    return tokens


# ---------------------------------------------------------------------------------------------
# Signatures and digests

# A link's query and fragment: "(https?|ftp)://path" then "?" or "#" and the rest. Searched from its
# "://", the scheme checked by lookbehinds: a literal first character lets the regex engine skip
# to it instead of trying every position.
_URL_QUERY = re.compile(rb"://(?:(?<=https://)|(?<=http://)|(?<=ftp://))([^\s?#]*)[?#]\S*")


def normalise_body(text: str) -> bytes:
    """The body as compared for near duplicates: per-recipient details (numbers, link
    parameters, spacing, case) taken out. On bytes, where each step runs in C."""
    data = text[: MAX_SIGNATURE_TEXT * 2].encode("utf-8", "replace").lower()  # ASCII case only
    if b"://" in data:
        data = _URL_QUERY.sub(rb"://\1", data)
    return b" ".join(data.translate(None, b"0123456789").split())[:MAX_SIGNATURE_TEXT]


def signature(message: ParsedMessage) -> str | None:
    """TLSH of the normalised body, or None when the body is too short or too uniform to hash."""
    body = normalise_body(message.text)
    if len(body) < MIN_SIGNATURE_TEXT:
        return None
    digest = tlsh.hash(body)
    return digest if digest and digest != "TNULL" else None


def _length_distance(steps: int) -> int:
    """The part of a TLSH distance that comes from length values `steps` apart (as in TLSH)."""
    return steps if steps <= 1 else 12 * steps


def _reputation_address(message: ParsedMessage) -> str | None:
    address = from_address(message.data)
    return None if address is None or any(a in address for a in ARTEFACTS) else address


def _tlsh(text: str) -> tlsh.Tlsh:
    parsed = tlsh.Tlsh()
    parsed.fromTlshStr(text)
    return parsed


def message_digest(message: ParsedMessage) -> str:
    """Identity of a message for training: Message-ID plus a hash of the raw body, so copies of
    it in two folders (with other Received lines) are one message, and a re-sent text is not."""
    body = message.raw[_header_end(message.raw) :]
    mid = (message.data.get("message_id") or "").encode("utf-8", "replace")
    return hashlib.sha256(mid + b"\x00" + hashlib.sha256(body).digest()).hexdigest()


_BLANK_LINE = re.compile(rb"\n\r?\n")


def _header_end(raw: bytes) -> int:
    """Where the header block of `raw` ends (the whole of it when there is no body)."""
    # One regex search stops at the first blank line; find() of the form that is absent (CRLF in
    # LF mail, say) would scan the whole body.
    blank = _BLANK_LINE.search(raw)
    return blank.start() if blank else len(raw)
