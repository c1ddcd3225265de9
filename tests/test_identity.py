"""How a moved message is recognised in its destination (gatewayd.message.identity)."""

from __future__ import annotations

from gatewayd.message.identity import Identity, header_digest

RAW = b"Received: from a by b; Sat, 21 Nov 2026 10:00:00 +0000\r\nSubject: hi\r\n\r\nHello.\r\n"
DATA = {"message_id": None, "size": len(RAW), "received_at": "2026-11-21T10:00:00Z"}


def test_the_header_digest_covers_the_header_block_only_and_needs_all_of_it() -> None:
    digest = header_digest(RAW)
    assert digest is not None and digest == header_digest(RAW.replace(b"Hello.", b"Other."))
    assert digest != header_digest(RAW.replace(b"10:00:00", b"10:00:01"))  # another delivery
    assert header_digest(RAW.replace(b"\r\n", b"\n")) is not None
    assert header_digest(RAW[:40]) is None  # the fetch cap cut the header block


def test_a_message_is_named_by_its_message_id_or_its_header_digest_and_nothing_may_differ() -> None:
    moved = Identity.of(DATA, header_digest(RAW))
    assert moved.findable and moved.matches(Identity.of(DATA, header_digest(RAW)))
    assert not moved.matches(Identity.of({**DATA, "size": 1}, header_digest(RAW)))
    assert not moved.matches(Identity.of(DATA, header_digest(RAW.replace(b"hi", b"ho"))))
    assert not moved.matches(Identity.of({**DATA, "message_id": "<m@x>"}, header_digest(RAW)))
    # Neither a Message-ID nor the whole header block: nothing to recognise it by.
    unnamed = Identity.of(DATA, None)
    assert not unnamed.findable and not unnamed.matches(unnamed)
    # An entry journaled before the digest was kept: its Message-ID, size and date still name it.
    older = Identity.of({**DATA, "message_id": "<m@x>"}, None)
    assert older.matches(Identity.of({**DATA, "message_id": "<m@x>"}, header_digest(RAW)))
