"""The learning store: Bayes, spam signatures, sender reputation, and their persistence."""

from __future__ import annotations

import heapq
import itertools
import random
import sqlite3
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tlsh

from gatewayd.message import FetchedMessage, ParsedMessage, parse
from gatewayd.pipeline import learning
from gatewayd.pipeline.learning import (
    LearningStore,
    SentMark,
    chi2_combine,
    learn_from_dirs,
    persistence,
    tokenize,
)
from gatewayd.pipeline.learning import bayes as learning_bayes
from gatewayd.pipeline.learning import store as learning_store
from gatewayd.pipeline.learning.combine import robinson
from gatewayd.pipeline.learning.signatures import header_end

COMMON = ["the", "and", "for", "with", "this", "that", "you", "your", "please", "will", "have", "about"]
HAM_WORDS = [
    *("meeting", "agenda", "project", "review", "schedule", "notes", "tomorrow", "team", "quarterly"),
    *("slides", "budget", "deadline", "draft", "minutes", "roadmap", "sprint", "retrospective"),
    *("calendar", "conference", "discussion", "proposal", "feedback", "milestone", "release"),
    *("planning", "thursday", "colleagues", "summary", "document"),
]
SPAM_WORDS = [
    *("pills", "pharmacy", "viagra", "discount", "cheap", "offer", "prescription", "order", "shipping"),
    *("click", "limited", "guaranteed", "enlargement", "refill", "medication", "generic", "wholesale"),
    *("bargain", "savings", "miracle", "tablets", "overnight", "lowest", "prices", "satisfaction"),
    *("exclusive", "bonus"),
]
SPAM_LETTER = (
    "Dear friend, our online pharmacy has the lowest prices on generic medication anywhere. "
    "Order {n} tablets today and receive free overnight shipping to your door, guaranteed. "
    "No prescription is required and every order ships in discreet packaging. Visit "
    "http://pills.example/buy?id={n}&ref=mail to claim your exclusive bonus of {n} extra pills. "
    "This offer is limited to the first hundred customers so act now before it expires. "
    "Satisfaction guaranteed or your money back, no questions asked. Our licensed doctors review "
    "every request within hours, and our support staff answer questions around the clock by phone "
    "or chat. Thousands of happy customers in {n} countries trust us with their health and privacy. "
    "We accept all major credit cards, bank transfers and even cryptocurrency for your convenience. "
    "Compare our prices: brand names cost up to ten times as much at your local drugstore, while our "
    "generics contain the very same active ingredients. Stock up now and save even more on bulk "
    "orders of three months or longer. To stop receiving these offers reply with remove in the "
    "subject line and you will never hear from us again."
)
_ids = itertools.count(1)


def message(
    subject: str, body: str, sender: str = "someone@example.com", message_id: str | None = None
) -> ParsedMessage:
    message_id = message_id or f"<{next(_ids)}@test.example>"
    raw = (
        f"From: Some One <{sender}>\r\nTo: agent@example.org\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\nDate: Thu, 01 Jan 2026 10:00:00 +0000\r\n"
        "Received: from relay.uniquerelayword.example by mx\r\n\r\n"
        f"{body}\r\n"
    ).encode()
    return parse(FetchedMessage("INBOX", 1, 1, raw, len(raw), (), None))


def synthetic(rng: random.Random, words: list[str], sender: str) -> ParsedMessage:
    body = " ".join(rng.choice(words if rng.random() < 0.6 else COMMON) for _ in range(60))
    return message(" ".join(rng.sample(words, 3)), body, sender)


def corpus(count: int, seed: int) -> tuple[list[ParsedMessage], list[ParsedMessage]]:
    rng = random.Random(seed)
    ham = [synthetic(rng, HAM_WORDS, f"colleague{i % 7}@corp.example") for i in range(count)]
    spam = [synthetic(rng, SPAM_WORDS, f"sales{i}@pharma{i}.example") for i in range(count)]
    return ham, spam


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LearningStore]:
    with LearningStore(tmp_path / "learning.sqlite", min_training=20) as opened:
        yield opened


def test_bayes_scores_only_once_trained_enough(store: LearningStore) -> None:
    ham, spam = corpus(40, seed=1)
    for item in ham[:30]:
        store.train(item, "ham")
    for item in spam[:19]:
        store.train(item, "spam")
    assert store.bayes(spam[30]) is None  # 19 spam: not enough yet
    store.train(spam[19], "spam")
    assert store.counts()["spam"] == 20
    # Messages it never saw, from senders it never saw.
    rng = random.Random(99)
    for _ in range(5):
        p_spam = store.bayes(synthetic(rng, SPAM_WORDS, "new@elsewhere.example"))
        p_ham = store.bayes(synthetic(rng, HAM_WORDS, "new@elsewhere.example"))
        assert p_spam is not None and p_spam > 0.99
        assert p_ham is not None and p_ham < 0.01


def test_training_the_same_message_twice_changes_nothing(store: LearningStore) -> None:
    item = message("Quarterly review", "Agenda for the quarterly review meeting on thursday.")
    assert store.train(item, "ham") is True
    before = (store.counts(), store.token_counts("quarterly"))
    assert store.train(item, "ham") is False
    # Another copy (parsed again, as from another folder) is the same message.
    copy = parse(FetchedMessage("Archive", 9, 1, item.raw, len(item.raw), (), None))
    assert store.train(copy, "ham") is False
    assert (store.counts(), store.token_counts("quarterly")) == before
    assert before[1] == (0, 1)


def test_relabelling_moves_the_counts(store: LearningStore) -> None:
    item = message("Cheap pills", "Cheap pills and discount medication here.", sender="Bob@Pharma.example")
    store.train(item, "ham", mailbox_id="mb1")
    assert store.token_counts("pills") == (0, 1)
    assert store.reputation("bob@pharma.example", "mb1")["ham"] == 1
    assert store.train(item, "spam", mailbox_id="mb1") is True
    assert store.counts()["spam"] == 1 and store.counts()["ham"] == 0
    assert store.token_counts("pills") == (1, 0)
    assert store.token_counts("subject:cheap") == (1, 0)
    reputation = store.reputation("bob@pharma.example", "mb1")
    assert (reputation["ham"], reputation["spam"], reputation["mailbox_spam"]) == (0, 1, 1)
    with pytest.raises(ValueError):
        store.train(item, "junk")


def test_everything_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "learning.sqlite"
    ham, spam = corpus(25, seed=2)
    letter = message("Pharmacy", SPAM_LETTER.format(n=1))
    with LearningStore(path, min_training=20) as first:
        for h, s in zip(ham, spam, strict=True):
            first.train(h, "ham", "mb1")
            first.train(s, "spam", "mb1")
        first.train(letter, "spam")
        first.record_sent("mb1", "partner@corp.example")
        expected = (first.counts(), first.bayes(spam[0]), first.reputation("colleague0@corp.example", "mb1"))
    with LearningStore(path, min_training=20) as second:
        found = (second.counts(), second.bayes(spam[0]), second.reputation("colleague0@corp.example", "mb1"))
        assert found == expected
        assert expected[0] == {"spam": 26, "ham": 25, "tokens": expected[0]["tokens"], "signatures": 26}
        assert second.signature_match(message("Pharmacy", SPAM_LETTER.format(n=2))) is not None
        assert second.reputation("partner@corp.example", "mb1")["sent_to"] is True
        assert second.train(letter, "spam") is False  # what was trained is remembered too


def test_signature_matches_a_near_duplicate_only(store: LearningStore) -> None:
    store.train(message("Pharmacy", SPAM_LETTER.format(n=100)), "spam")
    variant = SPAM_LETTER.format(n=7).replace("Dear friend", "Hello John").replace("door", "home")
    match = store.signature_match(message("Other subject", variant, sender="x@other.example"))
    assert match is not None and match.startswith("tlsh distance ")
    assert int(match.split()[2]) <= store.signature_distance
    rng = random.Random(3)
    unrelated = " ".join(rng.choice(HAM_WORDS + COMMON) for _ in range(120))
    assert store.signature_match(message("Notes", unrelated)) is None
    short = message("Hi", "Click here for pills: http://pills.example")
    assert store.signature_match(short) is None  # too short to compare


def test_a_ham_report_neutralises_matching_signatures(store: LearningStore) -> None:
    store.train(message("Pharmacy", SPAM_LETTER.format(n=1)), "spam")
    probe = message("Pharmacy", SPAM_LETTER.format(n=2))
    assert store.signature_match(probe) is not None
    # Someone reports a copy of the text as wanted mail (it is their pharmacy's newsletter).
    store.train(message("Newsletter", SPAM_LETTER.format(n=3)), "ham")
    assert store.signature_match(probe) is None
    assert store.counts()["signatures"] == 0


def test_reputation_and_sent_to(store: LearningStore) -> None:
    store.train(message("Lunch", "Lunch on friday?", sender="Alice@Example.com"), "ham", mailbox_id="mb1")
    store.train(message("Notes", "Meeting notes attached.", sender="alice@example.com"), "ham")
    store.train(message("Deal", "Cheap pills today.", sender="bob@spam.example"), "spam", mailbox_id="mb2")
    alice = store.reputation("ALICE@example.com", "mb1")
    assert alice == {"ham": 2, "spam": 0, "sent_to": False, "mailbox_ham": 1, "mailbox_spam": 0}
    assert store.reputation("alice@example.com", "mb2")["mailbox_ham"] == 0
    assert store.reputation("bob@spam.example", None)["spam"] == 1
    assert store.reputation(None, "mb1") == dict(alice, ham=0, mailbox_ham=0)

    # The corpus's munged owner address is an artefact, not a sender.
    store.train(message("Feed", "Today's headlines.", sender="rssfeeds@spamassassin.taint.org"), "ham")
    assert store.reputation("rssfeeds@spamassassin.taint.org", None)["ham"] == 0

    store.record_sent("mb1", "Carol@Example.com")
    assert store.reputation("carol@example.com", "mb1")["sent_to"] is True
    assert store.reputation("carol@example.com", "mb2")["sent_to"] is False
    assert store.reputation("carol@example.com", None)["sent_to"] is True  # some mailbox wrote to her


def test_sent_recipients_and_how_far_the_folder_was_read_are_kept_together(tmp_path: Path) -> None:
    path = tmp_path / "learning.db"
    with LearningStore(path) as store:
        assert store.sent_mark("mb1") is None
        store.learn_sent("mb1", ["Erin@Example.com", "erin@example.com"], SentMark("Sent", 7, 42))
        store.learn_sent("mb1", [], SentMark("Sent", 7, 43))  # read on, no one new
        assert store.reputation("erin@example.com", "mb1")["sent_to"] is True
    with LearningStore(path) as store:  # after a restart
        assert store.sent_mark("mb1") == SentMark("Sent", 7, 43)
        assert store.sent_mark("mb2") is None
        assert store.reputation("erin@example.com", "mb1")["sent_to"] is True
        assert store.reputation("erin@example.com", "mb2")["sent_to"] is False


def test_reputation_shows_own_writes_at_once(store: LearningStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learning_store, "RELOAD_CHECK_SECONDS", 1e9)  # no reload can help
    zero = {"ham": 0, "spam": 0, "sent_to": False, "mailbox_ham": 0, "mailbox_spam": 0}
    assert store.reputation("dave@example.com", "mb1") == zero
    store.record_sent("mb1", "Dave@Example.com")
    assert store.reputation("DAVE@example.com", "mb1") == dict(zero, sent_to=True)
    assert store.reputation("dave@example.com", None) == dict(zero, sent_to=True)
    assert store.reputation("dave@example.com", "") == zero  # the overall row, and no mailbox's sent_to
    item = message("Hello", "Long time no see.", sender="Dave@Example.com")
    store.train(item, "ham", mailbox_id="mb2")
    assert store.reputation("dave@example.com", "mb2") == dict(zero, ham=1, mailbox_ham=1)
    assert store.reputation("dave@example.com", "mb1") == dict(zero, ham=1, sent_to=True)
    store.train(item, "spam", mailbox_id="mb1")  # re-labelled: taken back in mb2, counted in mb1
    assert store.reputation("dave@example.com", "mb2") == dict(zero, spam=1)
    assert store.reputation("dave@example.com", "mb1") == dict(zero, spam=1, mailbox_spam=1, sent_to=True)
    assert store.reputation("dave@example.com", None) == dict(zero, spam=1, sent_to=True)


def test_reputation_unchanged_by_a_failed_training(
    store: LearningStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.train(message("Hi", "First message.", sender="erin@example.com"), "ham", mailbox_id="mb1")
    before = store.reputation("erin@example.com", "mb1")

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store, "_change_signatures", fail)  # after the sender was counted
    with pytest.raises(OSError):
        store.train(message("Hi", "Second message.", sender="erin@example.com"), "ham", mailbox_id="mb1")
    after = store.reputation("erin@example.com", "mb1")
    assert after == before == _sql_reputation(store, "erin@example.com", "mb1")


def test_reputation_sees_another_store_once_reloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learning_store, "RELOAD_CHECK_SECONDS", 0.0)
    path = tmp_path / "learning.sqlite"
    item = message("Deal", "Cheap pills today.", sender="frank@spam.example")
    with LearningStore(path) as daemon, LearningStore(path) as cli:
        assert daemon.reputation("frank@spam.example", "mb1")["spam"] == 0
        cli.train(item, "spam", mailbox_id="mb1")
        cli.record_sent("mb2", "frank@spam.example")
        zero = {"ham": 0, "spam": 0, "sent_to": False, "mailbox_ham": 0, "mailbox_spam": 0}
        assert daemon.reputation("frank@spam.example", "mb1") == dict(zero, spam=1, mailbox_spam=1)
        assert daemon.reputation("frank@spam.example", "mb2")["sent_to"] is True
        # The daemon's own training counts on top of what the CLI trained, and the other way round.
        daemon.train(message("Deal", "Cheaper pills.", sender="frank@spam.example"), "spam", "mb1")
        cli.train(item, "ham", mailbox_id="mb1")
        for store in (daemon, cli):
            expected = dict(zero, ham=1, spam=1, mailbox_ham=1, mailbox_spam=1)
            assert store.reputation("frank@spam.example", "mb1") == expected


def test_reputation_answers_what_the_table_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learning_store, "RELOAD_CHECK_SECONDS", 0.0)
    rng = random.Random(11)
    ham, spam = corpus(30, seed=11)
    items = [(item, "ham") for item in ham] + [(item, "spam") for item in spam]
    rng.shuffle(items)
    colleagues = [f"colleague{i}@corp.example" for i in range(7)]
    senders = colleagues + [f"sales{i}@pharma{i}.example" for i in range(30)]
    addresses = [None, "", "nobody@nowhere.example", *senders, *(a.upper() for a in senders)]
    path = tmp_path / "learning.sqlite"
    with LearningStore(path) as daemon, LearningStore(path) as cli:
        for n, (item, label) in enumerate(items, 1):
            store = (daemon, cli)[n % 2]
            store.train(item, label, rng.choice([None, "", "mb1", "mb2"]))
            if n % 4 == 0:  # re-labelled, maybe from another mailbox
                earlier, was = rng.choice(items[:n])
                store.train(earlier, "ham" if was == "spam" else "spam", rng.choice([None, "mb1", "mb2"]))
            if n % 3 == 0:
                store.record_sent(rng.choice(["", "mb1", "mb2"]), rng.choice(senders).title())
            if n % 15 == 0:
                mailboxes = (None, "", "mb1", "mb2", "mb3")
                for asked, address, mailbox in itertools.product((daemon, cli), addresses, mailboxes):
                    assert asked.reputation(address, mailbox) == _sql_reputation(asked, address, mailbox)


def _sql_reputation(store: LearningStore, address: str | None, mailbox_id: str | None) -> dict[str, object]:
    """reputation() as it was written first: a query per call."""
    result: dict[str, object] = {"ham": 0, "spam": 0, "sent_to": False, "mailbox_ham": 0, "mailbox_spam": 0}
    if not address:
        return result
    rows = store._db.execute(
        "SELECT mailbox, ham, spam, sent_to FROM learn_senders WHERE address = ? AND mailbox IN (?, ?)",
        (address.lower(), "", mailbox_id or ""),
    ).fetchall()
    for mailbox, ham, spam, sent_to in rows:
        if mailbox == "":
            result.update(ham=ham, spam=spam)
            if mailbox_id is None:
                result["sent_to"] = bool(sent_to)
        else:
            result.update(mailbox_ham=ham, mailbox_spam=spam, sent_to=bool(sent_to))
    return result


def test_learn_from_dirs(store: LearningStore, tmp_path: Path) -> None:
    spam_dir, ham_dir = tmp_path / "spam", tmp_path / "ham"
    spam_dir.mkdir()
    ham_dir.mkdir()
    ham, spam = corpus(3, seed=4)
    for i, item in enumerate(spam):
        (spam_dir / f"{i}.eml").write_bytes(item.raw)
    (ham_dir / "0.eml").write_bytes(ham[0].raw)
    (ham_dir / "no-extension").write_bytes(ham[1].raw)
    (ham_dir / "empty.eml").write_bytes(b"")
    (ham_dir / ".hidden").write_bytes(ham[2].raw)
    (ham_dir / "subdir").mkdir()
    assert learn_from_dirs(store, [spam_dir], [ham_dir]) == {"spam": 3, "ham": 2, "skipped": 1, "messages": 5}
    assert store.counts()["spam"] == 3 and store.counts()["ham"] == 2
    assert learn_from_dirs(store, [spam_dir], [ham_dir]) == {"spam": 0, "ham": 0, "skipped": 6, "messages": 5}
    # The spam folder moved to ham: every message moves.
    assert learn_from_dirs(store, [], [spam_dir]) == {"spam": 0, "ham": 3, "skipped": 0, "messages": 3}
    assert store.counts()["spam"] == 0 and store.counts()["ham"] == 5


def test_learn_from_dirs_reads_nested_folders_and_only_cur_and_new_of_a_maildir(
    store: LearningStore, tmp_path: Path
) -> None:
    ham, spam = corpus(3, seed=5)
    maildir = tmp_path / "Junk"
    for folder in ("cur", "new", "tmp", ".Archive/cur"):
        (maildir / folder).mkdir(parents=True)
    (maildir / "cur" / "1.M1P1.host:2,S").write_bytes(spam[0].raw)
    (maildir / "new" / "2.M2P2.host").write_bytes(spam[1].raw)
    (maildir / "tmp" / "3.M3P3.host").write_bytes(spam[2].raw)  # a delivery in progress
    (maildir / ".Archive" / "cur" / "4.M4P4.host:2,S").write_bytes(ham[2].raw)  # another folder
    (maildir / "dovecot-uidlist").write_bytes(b"3 V1 N3\n")  # the server's index, no message
    nested = tmp_path / "ham" / "2026" / "01"
    nested.mkdir(parents=True)
    (nested / "a.eml").write_bytes(ham[0].raw)
    (tmp_path / "ham" / "b.eml").write_bytes(ham[1].raw)
    (tmp_path / "ham" / "loop").symlink_to(tmp_path / "ham")
    assert learn_from_dirs(store, [maildir], [tmp_path / "ham"]) == {
        "spam": 2,
        "ham": 2,
        "skipped": 0,
        "messages": 4,
    }


def test_concurrent_training_keeps_counts_consistent(tmp_path: Path) -> None:
    path = tmp_path / "learning.sqlite"
    ham, spam = corpus(40, seed=5)
    shared = ham[:10]  # every thread trains these: each must count once
    store = LearningStore(path, min_training=20)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for item in shared + spam[worker * 10 : worker * 10 + 10]:
                store.train(item, "ham" if item in shared else "spam")
                store.bayes(item)
                store.signature_match(item)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert store.counts()["ham"] == 10 and store.counts()["spam"] == 40
    expected = sum("agenda" in tokenize(item) for item in shared)
    assert store.token_counts("agenda")[1] == expected > 0
    store.close()
    with LearningStore(path) as reopened:
        assert reopened.token_counts("agenda")[1] == expected
        assert reopened.counts()["spam"] == 40


def test_training_by_another_process_is_noticed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learning_store, "RELOAD_CHECK_SECONDS", 0.0)
    path = tmp_path / "learning.sqlite"
    with LearningStore(path, min_training=20) as daemon, LearningStore(path, min_training=20) as cli:
        assert daemon.signature_match(message("Pharmacy", SPAM_LETTER.format(n=2))) is None
        cli.train(message("Pharmacy", SPAM_LETTER.format(n=1)), "spam")
        assert daemon.signature_match(message("Pharmacy", SPAM_LETTER.format(n=2))) is not None
        assert daemon.counts()["spam"] == 1


class _HeldLoad:
    """Lets a background load read the file, then holds it until released (on the loader thread
    only: a load at once, in training, goes through)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.read, self.release = threading.Event(), threading.Event()
        real = persistence.load

        def held(db: object) -> object:
            snapshot = real(db)  # type: ignore[arg-type]
            if threading.current_thread().name == "gatewayd-learning-load":
                self.read.set()
                assert self.release.wait(10)
            return snapshot

        monkeypatch.setattr(persistence, "load", held)
        monkeypatch.setattr(learning_store, "RELOAD_CHECK_SECONDS", 0.0)


_HeldDaemon = tuple[_HeldLoad, LearningStore, LearningStore]  # the load, the daemon's store, the CLI's


@pytest.fixture
def held_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_HeldDaemon]:
    """The daemon's store and the CLI's on one file: the CLI has trained a spam, and the daemon,
    having noticed, is loading it in the background, held once the file is read."""
    held = _HeldLoad(monkeypatch)
    path = tmp_path / "learning.sqlite"
    with LearningStore(path, reload_in_background=True) as daemon, LearningStore(path) as cli:
        _start_held_load(held, daemon, cli)
        yield held, daemon, cli


def _start_held_load(held: _HeldLoad, daemon: LearningStore, cli: LearningStore) -> None:
    """Another connection trains a spam; the daemon notices and starts loading, held once read."""
    cli.train(message("Deal", "Cheap pills today.", sender="frank@spam.example"), "spam")
    assert daemon.counts()["spam"] == 0  # noticed, and loading, but not in this call
    assert held.read.wait(10)


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "not within 5 s"
        time.sleep(0.01)


def test_the_daemon_loads_another_process_training_in_the_background(
    held_daemon: _HeldDaemon,
) -> None:
    held, daemon, cli = held_daemon
    assert daemon.counts()["spam"] == 0  # scoring goes on with what memory holds
    held.release.set()
    _until(lambda: daemon.counts()["spam"] == 1)
    assert daemon.reputation("frank@spam.example", None)["spam"] == 1
    # Without the daemon's choice, the same change is loaded at once.
    with LearningStore(cli.path) as at_once:
        cli.train(message("Deal", "Cheaper pills today.", sender="frank@spam.example"), "spam")
        assert at_once.counts()["spam"] == 2


def test_a_background_load_that_missed_training_here_is_dropped(
    held_daemon: _HeldDaemon,
) -> None:
    held, daemon, _ = held_daemon  # the load read the file before this store trains:
    daemon.train(message("Hello", "Lunch tomorrow?", sender="grace@example.com"), "ham", "mb1")
    held.release.set()
    _until(lambda: daemon._loading is None)
    # Had the older snapshot been installed, the ham trained here would be gone.
    with LearningStore(daemon.path) as fresh:
        assert daemon.counts() == fresh.counts() == dict(fresh.counts(), spam=1, ham=1)
        for address in ("grace@example.com", "frank@spam.example"):
            assert daemon.reputation(address, "mb1") == fresh.reputation(address, "mb1")
    assert daemon.reputation("grace@example.com", "mb1")["mailbox_ham"] == 1


class _WatchedLoads:
    """Records, for each load of the file, whether the store's lock was held meanwhile; `during`
    runs inside the first load (to commit elsewhere while it reads)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: LearningStore) -> None:
        self.locked: list[bool] = []
        self.during: Callable[[], object] | None = None
        real = persistence.load

        def watched(db: sqlite3.Connection) -> object:
            self.locked.append(store._lock.locked())
            snapshot = real(db)
            if self.during is not None and len(self.locked) == 1:
                self.during()
            return snapshot

        monkeypatch.setattr(persistence, "load", watched)


def test_training_reads_another_process_training_without_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training that finds the CLI's commits not loaded yet reads them with the lock free, so the
    daemon's scoring on the event loop is not held up for a whole load; the counts come out the
    same as a fresh store's."""
    monkeypatch.setattr(learning_store, "RELOAD_CHECK_SECONDS", 1e9)  # scoring never reloads
    path = tmp_path / "learning.sqlite"
    with LearningStore(path, reload_in_background=True) as daemon, LearningStore(path) as cli:
        cli.train(message("Deal", "Cheap pills today.", sender="frank@spam.example"), "spam")
        loads = _WatchedLoads(monkeypatch, daemon)
        daemon.train(message("Hello", "Lunch tomorrow?", sender="grace@example.com"), "ham", "mb1")
        assert loads.locked == [False]
        monkeypatch.undo()
        with LearningStore(path) as fresh:
            assert daemon.counts() == fresh.counts() == dict(fresh.counts(), spam=1, ham=1)
            assert daemon.reputation("frank@spam.example", None) == fresh.reputation(
                "frank@spam.example", None
            )


def test_training_loads_under_the_lock_when_the_file_changed_while_it_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(learning_store, "RELOAD_CHECK_SECONDS", 1e9)
    path = tmp_path / "learning.sqlite"
    with LearningStore(path, reload_in_background=True) as daemon, LearningStore(path) as cli:
        cli.train(message("Deal", "Cheap pills today.", sender="frank@spam.example"), "spam")
        loads = _WatchedLoads(monkeypatch, daemon)
        # The CLI commits again while the daemon's lock-free read is under way: that snapshot is
        # already stale, so it must not be installed; training loads the file under the lock.
        loads.during = lambda: cli.train(
            message("Deal", "Cheaper pills.", sender="frank@spam.example"), "spam"
        )
        daemon.train(message("Hello", "Lunch tomorrow?", sender="grace@example.com"), "ham", "mb1")
        assert loads.locked == [False, True]
        monkeypatch.undo()
        with LearningStore(path) as fresh:
            assert daemon.counts() == fresh.counts() == dict(fresh.counts(), spam=2, ham=1)


def test_closing_waits_for_a_background_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    held = _HeldLoad(monkeypatch)
    path = tmp_path / "learning.sqlite"
    with LearningStore(path) as cli:
        daemon = LearningStore(path, reload_in_background=True)
        _start_held_load(held, daemon, cli)
        loader = daemon._loading
        assert loader is not None
        threading.Timer(0.1, held.release.set).start()
        daemon.close()
        assert not loader.is_alive()


def test_tokens_skip_relays_and_corpus_artefacts() -> None:
    body = (
        "Write to jm@spamassassin.taint.org or see http://www.shop.example.com/a/b?c=1 for 1,299 "
        "dollars, $45.00 or $1,500 now. Antidisestablishmentarianismically yours, agent007"
    )
    tokens = tokenize(message("Price list", body))
    assert not [t for t in tokens if "taint" in t or "spamassassin" in t or "uniquerelayword" in t]
    assert "url:example.com" in tokens and not [t for t in tokens if "/a/b" in t]
    assert {"num:4", "num:$2", "num:$4", "agent#", "skip:a:30"} <= set(tokens)  # numbers by size
    assert {"subject:price", "from:example.com"} <= set(tokens)
    assert len(tokens) == len(set(tokens))


def test_tokens_of_links_addresses_and_numbers() -> None:
    raw = (
        "From: Shop <deals@mail.shop.example>\r\nTo: a@example.org\r\n"
        "Subject: Re: Your ORDER 1234 shipped\r\n"
        'Message-ID: <x@y>\r\nContent-Type: multipart/alternative; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "See https://track.shop.example/p/abc?id=9 or www.mirror.example/x, ftp://10.0.0.1/f and "
        "mail help@support.shop.example. Total: $1,299.95 (20% off) naïve café\r\n"
        "--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        '<p>See <a href="http://cdn.other.example/img">here</a></p>\r\n--b--\r\n'
    ).encode()
    item = parse(FetchedMessage("INBOX", 1, 1, raw, len(raw), (), None))
    # Order matters too: it decides which tokens MAX_TOKENS keeps.
    assert tokenize(item) == [
        *("from:shop.example", "from-name:yes", "recipients:1", "subject:is-reply", "header:date:missing"),
        *("content-type:multipart/alternative", "subject:your", "subject:order", "subject:shipped"),
        *("subject:num:4", "url:shop.example", "url:mirror.example", "url:ip", "url:other.example"),
        *("email:shop.example", "see", "and", "mail", "total", "off", "naïve", "café", "skip:h:20"),
        *("num:$4", "num:2"),
    ]


def test_header_end_is_the_first_blank_line() -> None:
    assert header_end(b"A: 1\r\n\r\nbody\n\nmore") == 5
    assert header_end(b"A: 1\n\nbody\r\n\r\nmore") == 4
    assert header_end(b"A: 1\r\nB: 2") == len(b"A: 1\r\nB: 2")


def test_bayes_combines_the_strongest_clues_first_come_first(tmp_path: Path) -> None:
    # Words seen once, in one spam or one ham, are clues of the same strength (0.75 and 0.25 when
    # as many spam as ham were trained); "strongword", in five spam, is stronger. With more than
    # MAX_CLUES clues the strongest must be combined, and of equally strong ones the first.
    with LearningStore(tmp_path / "learning.sqlite", min_training=20) as store:
        for n in range(learning.MAX_CLUES):
            store.train(message("s", f"spam{_letters(n)} " + ("strongword" if n < 5 else "")), "spam")
            store.train(message("h", f"ham{_letters(n)}"), "ham")
        few = message("x", " ".join(["strongword", *(f"ham{_letters(n)}" for n in range(20))]))
        many = message(
            "x",
            " ".join(
                [*(f"ham{_letters(n)}" for n in range(100)), *(f"spam{_letters(n)}" for n in range(100))]
            )
            + " strongword",
        )
        clues = [
            t for t in tokenize(many) if abs(_probability(store, t) - 0.5) >= learning.MIN_TOKEN_STRENGTH
        ]
        assert len(clues) > learning.MAX_CLUES
        for item in (few, many, few, many):  # the second time from the cache
            assert store.bayes(item) == _reference_bayes(store, tokenize(item))
        # Not merely the first MAX_CLUES in the message, nor the 0.25s and 0.75s in another order.
        first = tokenize(many)[: learning.MAX_CLUES]
        assert store.bayes(many) != chi2_combine([_probability(store, t) for t in first])


def _letters(n: int) -> str:
    """A word for `n` (tokens do not keep digits)."""
    return "".join(chr(97 + n // 26**i % 26) for i in range(3))


def _probability(store: LearningStore, token: str) -> float:
    spam, ham = store.token_counts(token)
    if not spam and not ham:
        return 0.5
    counts = store.counts()
    return robinson(spam, ham, counts["spam"], counts["ham"])


def _reference_bayes(store: LearningStore, tokens: list[str]) -> float:
    """Scoring as first written: a loop over the tokens, heapq.nlargest, chi2_combine."""
    above, below = 0.5 + learning.MIN_TOKEN_STRENGTH, 0.5 - learning.MIN_TOKEN_STRENGTH
    clues = [f for f in (_probability(store, t) for t in tokens) if f >= above or f <= below]
    if len(clues) > learning.MAX_CLUES:
        clues = heapq.nlargest(learning.MAX_CLUES, clues, key=lambda f: abs(f - 0.5))
    return chi2_combine(clues)


def test_unseen_tokens_are_cached_within_bounds(
    store: LearningStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ham, spam = corpus(25, seed=7)
    for h, s in zip(ham, spam, strict=True):
        store.train(h, "ham")
        store.train(s, "spam")
    known = store.counts()["tokens"]
    # Each probe has 400 words never trained, far more than the 10 unseen tokens allowed below.
    probes = [
        message(
            "Offer", " ".join([*SPAM_WORDS, *(f"novel{_letters(n)}" for n in range(k * 400, k * 400 + 400))])
        )
        for k in range(5)
    ]
    expected = [store.bayes(probe) for probe in probes]
    assert expected == [store.bayes(probe) for probe in probes]  # from the cache
    # Only a token not yet cached grows the cache, and that is when it is cleared if too large.
    monkeypatch.setattr(learning_bayes, "MAX_UNSEEN_CACHED", 10)
    store.bayes(message("Other", "unheardof"))
    assert len(store._clues) <= len(tokenize(message("Other", "unheardof")))
    for _ in range(2):
        for probe, score in zip(probes, expected, strict=True):
            assert store.bayes(probe) == score
            assert len(store._clues) <= known + 10 + len(tokenize(probe))


def test_signature_match_reports_the_nearest_signature(tmp_path: Path) -> None:
    # Variants of different lengths fall into different TLSH length buckets; with a wide distance
    # many buckets are searched, and the nearest signature must be found whichever bucket has it.
    rng = random.Random(9)

    def variant() -> str:
        extra = " ".join(rng.choice(SPAM_WORDS + COMMON) for _ in range(rng.randrange(0, 400)))
        return SPAM_LETTER.format(n=rng.randrange(1000)) + " " + extra

    trained = [variant() for _ in range(40)]
    with LearningStore(tmp_path / "learning.sqlite", signature_distance=300) as store:
        for text in trained:
            store.train(message("Pharmacy", text), "spam")
        signatures = [learning.signature(message("P", text)) for text in trained]
        for _ in range(20):
            probe = message("Pharmacy", variant())
            probe_signature = learning.signature(probe)
            assert probe_signature is not None
            nearest = min(tlsh.diff(probe_signature, known) for known in signatures if known)
            expected = f"tlsh distance {nearest} to a message reported as spam" if nearest <= 300 else None
            assert store.signature_match(probe) == expected


def test_chi2_combine() -> None:
    assert chi2_combine([]) == 0.5
    assert chi2_combine([0.99] * 20) > 0.99
    assert chi2_combine([0.01] * 20) < 0.01
    assert 0.4 < chi2_combine([0.99] * 10 + [0.01] * 10) < 0.6  # conflicting evidence: unsure


def test_empty_and_huge_messages(store: LearningStore) -> None:
    empty = parse(FetchedMessage("INBOX", 1, 1, b"", 0, (), None))
    assert store.train(empty, "ham") is True
    assert store.signature_match(empty) is None
    assert store.reputation(None, None)["ham"] == 0
    rng = random.Random(6)
    junk = " ".join("".join(rng.choices("abcdefghijklmnop", k=8)) for _ in range(100_000))
    huge = message("Huge", junk)
    assert len(tokenize(huge)) == learning.MAX_TOKENS
    assert store.train(huge, "spam") is True
    assert store.signature_match(huge) is not None  # hashed from its first 16 KB


def test_learn_from_dirs_splits_an_mbox_and_skips_files_that_are_not_mail(
    store: LearningStore, tmp_path: Path
) -> None:
    ham, spam = corpus(3, seed=6)
    (tmp_path / "spam").mkdir()
    (tmp_path / "ham").mkdir()
    envelope = b"From sender@example.com  Thu Aug 22 13:17:22 2002\n"
    mbox = b"".join(envelope + item.raw + b"\n" for item in spam)
    (tmp_path / "spam" / "junk.mbox").write_bytes(mbox)
    (tmp_path / "spam" / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(range(256)) * 40)
    (tmp_path / "spam" / "notes.txt").write_bytes(b"remember to buy milk\n")
    # A single message with its envelope line and an unquoted body line "From ": one message.
    single = b"From someone@example.org  Mon Jan  1 00:00:00 2024\n" + ham[0].raw + b"\nFrom the team\n"
    (tmp_path / "ham" / "1.eml").write_bytes(single)
    assert learn_from_dirs(store, [tmp_path / "spam"], [tmp_path / "ham"]) == {
        "spam": 3,
        "ham": 1,
        "skipped": 2,
        "messages": 4,
    }
    assert store.counts()["spam"] == 3 and store.counts()["ham"] == 1


def test_learn_from_dirs_streams_a_large_mbox_one_message_at_a_time(
    store: LearningStore, tmp_path: Path
) -> None:
    # 300 messages of about 20 KB each: a 6 MB mbox. Read whole, it would be in memory at once.
    (tmp_path / "spam").mkdir()
    mbox = tmp_path / "spam" / "junk.mbox"
    envelope = b"From sender@example.com  Thu Aug 22 13:17:22 2002\n"
    with mbox.open("wb") as out:
        for n in range(300):
            body = "\r\n".join([SPAM_LETTER.format(n=n)] * 14)
            out.write(envelope + message(f"offer {n}", body).raw + b"\n")
    size = mbox.stat().st_size
    lines: list[str] = []
    tracemalloc.start()
    try:
        counts = learn_from_dirs(store, [tmp_path / "spam"], [], progress=lines.append, every=100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts == {"spam": 300, "ham": 0, "skipped": 0, "messages": 300}
    assert peak < size / 3, f"peak {peak} bytes for a {size}-byte mbox"
    assert lines == [
        "100 messages: spam: 100, ham: 0, skipped: 0",
        "200 messages: spam: 200, ham: 0, skipped: 0",
        "300 messages: spam: 300, ham: 0, skipped: 0",
        f"{mbox}: 300 messages (spam)",
    ]
