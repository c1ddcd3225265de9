"""The learning store's fast paths against the straightforward computations they replace."""

from __future__ import annotations

import heapq
import inspect
import random
import re
from pathlib import Path

import pytest
import tlsh

from gatewayd.message import FetchedMessage, ParsedMessage, parse
from gatewayd.pipeline.learning import LearningStore, chi2_combine, tokenize
from gatewayd.pipeline.learning import store as learning_store
from gatewayd.pipeline.learning.combine import MAX_CLUES, MIN_TOKEN_STRENGTH, clue, combine_clues, robinson
from gatewayd.pipeline.learning.nearest import (
    Buckets,
    Scans,
    _length_distance,
    _ratios_within,
    _reach,
    add_signature,
    nearest_distance,
    parse_tlsh,
)
from gatewayd.pipeline.learning.signatures import MAX_SIGNATURE_TEXT, header_end, normalise_body, signature
from gatewayd.pipeline.learning.tokens import _URL, _cut_links, _link_hosts, _lower, _raw_headers, _words

_STRIP = ".,;:!?()[]{}<>\"'*`|=_-~/\\#^"


def _reference_words(text: str) -> list[str]:
    """_words as its docstring says: one distinct word at a time, plain words first."""
    distinct: list[str] = []
    for piece in text.split():
        word = piece.strip(_STRIP)
        if word not in distinct:
            distinct.append(word)
    plain = [w for w in distinct if 3 <= len(w) <= 20 and w.isalpha()]
    shaped = []
    for w in distinct:
        if len(w) < 3 or w in plain:
            continue
        if re.fullmatch(r"[$€£]?\d[\d.,]*%?", w):
            currency = w[0] if w[0] in "$€£" else ""
            digits = re.findall(r"\d", re.sub(r"[.,]\d\d?%?$", "", w))
            shaped.append(f"num:{currency}{len(digits)}")
        elif len(w) > 20:
            shaped.append(f"skip:{w[0]}:{len(w) // 10 * 10}")
        else:
            shaped.append(re.sub(r"\d+", "#", w))
    return plain + shaped


TRICKY_TEXTS = [
    "",
    "   \t\n ",
    "ab abc abcd " + "x" * 20 + " " + "y" * 21 + " " + "z" * 45,
    "(word), word word. 'word' --- ... ab, (ab) ((abc))",
    "naïve café straße İstanbul ΣΊΣΥΦΟΣ 漢字漢字 ﾃｽﾄ",
    "٣٤٥ ٣x٤ x²y ½½½ Ⅻcount 12x3 a1b2c3 e-mail don't it's rpm-list@freshrpms.net",
    "$1,000.00 €5 £12.5% 99% 3.14 1,2,3 $ $$ 12. .12 1.2.3.4",
    "a\x1cb\x1dc\x1ed\x1fe\x85f\xa0g\u2003h\u2028i\u3000j",
    "one\u00a0two three\u2003four five​six",  # a zero-width space is no whitespace
    "x" * 5000 + " " + "héllo" * 10,
]


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_words_match_the_straightforward_computation(text: str) -> None:
    assert _words(text) == _reference_words(text)
    assert _words(text.lower()) == _reference_words(text.lower())


def test_words_match_on_random_text() -> None:
    rng = random.Random(5)
    alphabet = "abcé漢XY01٣²$€%.,'-_#()@: \t\n\xa0\u2003"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        assert _words(text) == _reference_words(text), repr(text)


@pytest.mark.parametrize("text", [*TRICKY_TEXTS, "".join(map(chr, range(256))), "ÀÉÎÕÜ×ÞßÿµªºİΣ€", "Ÿ ÿ"])
def test_lower_is_str_lower(text: str) -> None:
    for variant in (text, text.upper(), text.encode("latin-1", "ignore").decode("latin-1")):
        assert _lower(variant) == variant.lower()


def _reference_raw_headers(raw: bytes) -> list[tuple[bytes, bytes]]:
    """_raw_headers as first written: the header block lower-cased, searched after newlines."""
    head = b"\n" + raw[: min(header_end(raw), 65536)].lower()
    return re.findall(rb"\n(content-type|x-mailer|user-agent):[ \t]*([^\r\n]*)", head)


def test_raw_headers_match_the_lower_cased_search() -> None:
    rng = random.Random(4)
    pieces = [b"Content-Type:", b"content-TYPE: ", b"X-Mailer:", b"USER-AGENT:\t", b"x-mailer", b":", b" "]
    pieces += [b"\n", b"\r\n", b"\r", b"a", b"K", b"\xc4", b"\xe4", b"text/HTML; Charset=UTF-8", b"\n\n"]
    for _ in range(5000):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert _raw_headers(raw) == _reference_raw_headers(raw), raw
    long_block = b"X-Mailer: a\n" + b"Received: by x\n" * 5000 + b"User-Agent: B\n\nbody"  # past 64 KiB
    assert _raw_headers(long_block) == _reference_raw_headers(long_block) == [(b"x-mailer", b"a")]
    for cut in range(65530, 65540):  # a blank line, a field or a value at the 64 KiB limit
        for tail in (b"\n\nX-Mailer: b", b"\nX-Mailer: b\n\n", b"\r\n\r\nUser-Agent: c"):
            raw = b"User-Agent: a\n" + b"x" * (cut - 14) + tail
            assert _raw_headers(raw) == _reference_raw_headers(raw), (cut, tail)


def _reference_normalised(text: str) -> bytes:
    """normalise_body as it was first written: lower-cased, link queries cut, digits dropped, then
    split and joined by spaces."""
    data = text[: MAX_SIGNATURE_TEXT * 2].encode("utf-8", "replace").lower()
    if b"://" in data:
        data = re.sub(rb"://(?:(?<=https://)|(?<=http://)|(?<=ftp://))([^\s?#]*)[?#]\S*", rb"://\1", data)
    return b" ".join(data.translate(None, b"0123456789").split())[:MAX_SIGNATURE_TEXT]


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_normalised_body_matches_split_and_join(text: str) -> None:
    # A TLSH signature is stored at training and compared later: its input must not move.
    for variant in (text, f"\r\n  {text}\t\x0b\x0c 12 \n\n\x1c"):  # every whitespace bytes.split() knows
        assert normalise_body(variant) == _reference_normalised(variant)


def test_normalised_body_matches_split_and_join_on_random_text() -> None:
    rng = random.Random(8)
    alphabet = "aBZ1 9\t\n\r\x0b\x0c\x1c\x85\xa0\u2003éİK http://x.y/p?q=1#f "
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        assert normalise_body(text) == _reference_normalised(text), repr(text)
    # Links in any case: the query is cut before the text is lower-cased.
    pieces = ["http://", "HTTPS://", "Ftp://", "hTtP://", "://", "htp://", "x.Y", "/P", "?", "#", "=1"]
    pieces += [" ", "\n", "\t", "é", "İ", "K", "S", "s", "h", "4"]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 16)))
        assert normalise_body(text) == _reference_normalised(text), repr(text)
    long_text = ("word  \r\n" * 5000) + " " * 40000 + "end"  # beyond the caps
    assert normalise_body(long_text) == _reference_normalised(long_text)


def test_ratio_bounds_stay_cached_at_the_default_distance() -> None:
    # nearest_distance asks for every ratio pair at each distance left at the default
    # signature_distance: a cache too small for them all cycles on a stream of mail and misses.
    distance = inspect.signature(LearningStore).parameters["signature_distance"].default
    lefts = [distance - _length_distance(steps) for steps in range(_reach(distance) + 1)]
    keys = [(q1, q2, left) for q1 in range(16) for q2 in range(16) for left in lefts]
    for key in keys:
        _ratios_within(*key)
    misses = _ratios_within.cache_info().misses
    for key in keys:
        _ratios_within(*key)
    assert _ratios_within.cache_info().misses == misses


def test_nearest_distance_is_the_least_diff_within_the_distance() -> None:
    # The length and quartile-ratio bounds only skip diffs: at every distance the nearest found
    # must be the least diff over all signatures, whatever their length values and ratios.
    rng = random.Random(3)
    vocabulary = [f"{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}{'xyz'[i % 3]}" for i in range(400)]

    def digest() -> str:
        words = rng.choices(vocabulary[: rng.randrange(20, 400)], k=rng.randrange(30, 1200))
        return tlsh.hash(" ".join(words).encode())

    signatures = [digest() for _ in range(300)]
    buckets: Buckets = {}
    for i, text in enumerate(signatures[:200]):
        add_signature(buckets, str(i), text)
    known = [parse_tlsh(text) for text in signatures[:200]]
    scans: Scans = {}
    for probe in signatures:
        least = min(parse_tlsh(probe).diff(other) for other in known)
        for distance in (0, 1, 10, 13, 50, 100, 300):
            expected = least if least <= distance else None
            assert nearest_distance(probe, buckets, scans, distance) == expected, (probe, distance)
    assert nearest_distance(signatures[0], {}, {}, 50) is None


def _reference_cut_links(text: str) -> tuple[list[str], str]:
    parts = _URL.split(text)
    return parts[1::2], " ".join(parts[::2])


LINK_TEXTS = [
    "see http://a.example/x?y=1 and https://b.example, ftp://c.example/f www.d.example/p",
    "hhttp://x.example wwww.y.example https://www.z.example http://www.",
    "http://x.example:// www.www.example ://no.scheme http:// https:/x.example",
    "www.a.example/path'quoted' <http://b.example/>, (www.c.example)",
    "xhttps://a.example yftp://b.example http://http://c.example",
    "https://ünï.example http://a.example\nwww.b.example\twww.",
]


@pytest.mark.parametrize("text", LINK_TEXTS)
def test_cut_links_is_url_split(text: str) -> None:
    assert _cut_links(text) == _reference_cut_links(text)
    assert _link_hosts(text) == _URL.findall(text)


def test_cut_links_is_url_split_on_random_text() -> None:
    rng = random.Random(9)
    pieces = ["http://", "https://", "ftp://", "www.", "://", "wwww.", "a.b", "x-y", " ", "\n", "/p?q"]
    pieces += ["'", "é", "h", "w", "s", "p", "t", "f"]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 16)))
        assert _cut_links(text) == _reference_cut_links(text), repr(text)
        assert _link_hosts(text) == _URL.findall(text), repr(text)


def test_combine_clues_is_chi2_combine_bit_for_bit() -> None:
    rng = random.Random(11)
    for n in (0, 1, 2, 7, 150, 151, 400):
        probabilities = [
            rng.choice([rng.uniform(1e-9, 0.4), rng.uniform(0.6, 1 - 1e-9), 0.25, 0.75]) for _ in range(n)
        ]
        clues = [clue(f) for f in probabilities]
        assert combine_clues(clues) == chi2_combine(probabilities)


def _message(subject: str, body: str) -> ParsedMessage:
    raw = f"From: a@example.com\r\nSubject: {subject}\r\n\r\n{body}\r\n".encode()
    return parse(FetchedMessage("INBOX", 1, 1, raw, len(raw), (), None))


def _reference_bayes(store: LearningStore, message: ParsedMessage) -> float:
    """Scoring as first written: each token's probability from its counts, heapq.nlargest, chi2_combine."""
    counts = store.counts()
    probabilities = []
    for token in tokenize(message):
        spam, ham = store.token_counts(token)
        if spam or ham:
            f = robinson(spam, ham, counts["spam"], counts["ham"])
            if abs(f - 0.5) >= MIN_TOKEN_STRENGTH:
                probabilities.append(f)
    if len(probabilities) > MAX_CLUES:
        probabilities = heapq.nlargest(MAX_CLUES, probabilities, key=lambda f: abs(f - 0.5))
    return chi2_combine(probabilities)


def test_shared_clues_follow_every_change_of_the_totals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tokens with equal counts share one clue; the totals change with every training, in this store
    # and in another process's, and then every shared clue must be computed anew.
    rng = random.Random(3)
    vocabulary = [f"w{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}x" for i in range(400)]

    def text() -> str:
        return " ".join(rng.choice(vocabulary) for _ in range(300))

    monkeypatch.setattr(learning_store, "RELOAD_CHECK_SECONDS", 0.0)
    path = tmp_path / "learning.sqlite"
    with LearningStore(path, min_training=5) as store, LearningStore(path, min_training=5) as other:
        for _ in range(6):
            store.train(_message("s", text()), "spam")
            store.train(_message("h", text()), "ham")
        probes = [_message("p", text()) for _ in range(4)]
        for label in ("spam", "ham", "spam"):
            for probe in probes:
                assert store.bayes(probe) == _reference_bayes(store, probe)
            shared = {id(c) for c in store._clues.values() if c}
            assert len(shared) < len([c for c in store._clues.values() if c])  # clues are shared
            store.train(_message("t", text()), label)  # this store's own training
            for probe in probes:
                assert store.bayes(probe) == _reference_bayes(store, probe)
            other.train(_message("o", text()), label)  # another connection's, found on reload
        for probe in probes:
            assert store.bayes(probe) == _reference_bayes(store, probe)


def test_nearest_signature_follows_every_change_of_the_signatures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nearest_distance skips signatures by their length and quartile ratios, from lists made per bucket
    # when first scanned: they must follow spam reports, ham reports and another process's training.
    rng = random.Random(5)
    vocabulary = [f"w{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}x" for i in range(300)]
    letters = [" ".join(rng.choice(vocabulary) for _ in range(rng.randrange(40, 400))) for _ in range(6)]

    def text() -> str:
        words = rng.choice(letters).split()
        for _ in range(rng.randrange(12)):
            words[rng.randrange(len(words))] = rng.choice(vocabulary)
        return " ".join(words)

    def expected(probe: ParsedMessage) -> str | None:
        known = [s for bucket in store._signatures.values() for s in bucket.values()]
        probe_signature = signature(probe)
        if probe_signature is None or not known:
            return None
        nearest = min(parse_tlsh(probe_signature).diff(s) for s in known)
        if nearest > store.signature_distance:
            return None
        return f"tlsh distance {nearest} to a message reported as spam"

    monkeypatch.setattr(learning_store, "RELOAD_CHECK_SECONDS", 0.0)
    path = tmp_path / "learning.sqlite"
    with LearningStore(path) as store, LearningStore(path) as other:
        probes = [_message("p", text()) for _ in range(30)]
        for step in range(16):
            trainer = other if step % 2 else store
            trained = text()
            trainer.train(_message("t", trained), "ham" if step % 5 == 4 else "spam")
            probes.append(_message("p", trained))  # at distance 0 from a spam just reported
            results = [store.signature_match(probe) for probe in probes]
            assert results == [expected(probe) for probe in probes]
        assert any(results)
