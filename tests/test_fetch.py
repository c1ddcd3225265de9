"""Reading FETCH responses as aioimaplib hands them over: answers, and messages pushed during IDLE.

The line shapes are those aioimaplib produces from Dovecot's answers (the FETCH line without its
`* `, the literal as a bytearray, the closing parenthesis as a line of its own); the pushes
themselves are exercised against Dovecot in tests/integration/test_watch.py.
"""

from __future__ import annotations

from gatewayd.imap.fetch import PushedMessages, parse_fetch


def response(number: int, uid: int, body: bytes) -> list[bytes | bytearray]:
    date = "21-Nov-2026 23:17:03 +0000"
    head = f'{number} FETCH (UID {uid} FLAGS () INTERNALDATE "{date}" RFC822.SIZE {len(body)}'
    return [f"{head} BODY[]<0> {{{len(body)}}}".encode(), bytearray(body), b")"]


def test_parse_fetch_pairs_each_response_with_its_literal() -> None:
    lines = [
        *response(1, 7, b"Subject: a\r\n\r\nx"),
        *response(2, 9, b"Subject: b\r\n\r\ny"),
        b"Fetch completed.",
    ]
    messages = parse_fetch(lines, "INBOX", 42)
    assert [(m.uid, m.raw, m.size, m.folder, m.uidvalidity) for m in messages] == [
        (7, b"Subject: a\r\n\r\nx", 15, "INBOX", 42),
        (9, b"Subject: b\r\n\r\ny", 15, "INBOX", 42),
    ]
    assert messages[0].internaldate == "21-Nov-2026 23:17:03 +0000" and messages[0].flags == ()


def test_an_expunged_shell_is_left_out_of_an_answer() -> None:
    lines = [*response(1, 7, b"kept"), b"2 FETCH (UID 8 BODY[]<0> NIL)", b"[EXPUNGEISSUED] Some gone."]
    assert [m.uid for m in parse_fetch(lines, "INBOX", 1, present=True)] == [7]


def test_pushed_messages_are_taken_when_the_push_brought_all_that_is_new() -> None:
    pushed = PushedMessages(limit=50)
    pushed.add([b"4 EXISTS", *response(3, 10, b"one"), *response(4, 11, b"two")], "INBOX", 5)
    taken = pushed.take(10, 2)
    assert taken is not None and [(m.uid, m.raw, m.uidvalidity) for m in taken] == [
        (10, b"one", 5),
        (11, b"two", 5),
    ]
    assert pushed.take(10, 2) is None  # taken once: the pool is empty afterwards


def test_fewer_or_more_pushed_than_reported_means_fetching() -> None:
    pushed = PushedMessages(limit=50)
    pushed.add(response(3, 10, b"one"), "INBOX", 5)
    assert pushed.take(10, 2) is None  # a second new message was not pushed (came during a command)
    pushed.add([*response(3, 10, b"one"), *response(4, 11, b"two")], "INBOX", 5)
    assert pushed.take(10, 1) is None


def test_messages_below_the_first_new_uid_do_not_count() -> None:
    pushed = PushedMessages(limit=50)
    pushed.add([*response(2, 9, b"old"), *response(3, 10, b"new")], "INBOX", 5)
    taken = pushed.take(10, 1)
    assert taken is not None and [m.uid for m in taken] == [10]


def test_a_response_split_over_two_pushes_is_joined() -> None:
    pushed = PushedMessages(limit=50)
    head, literal, close = response(3, 10, b"body")
    pushed.add([b"3 EXISTS", head], "INBOX", 5)  # the chunk ended before the literal
    pushed.add([literal, close], "INBOX", 5)
    taken = pushed.take(10, 1)
    assert taken is not None and taken[0].raw == b"body"


def test_an_incomplete_response_is_not_a_message() -> None:
    pushed = PushedMessages(limit=50)
    head, literal, _ = response(3, 10, b"body")
    pushed.add([head, literal], "INBOX", 5)  # no closing parenthesis yet
    assert pushed.take(10, 1) is None


def test_a_flag_change_is_not_a_message() -> None:
    pushed = PushedMessages(limit=50)
    pushed.add([b"3 FETCH (UID 10 FLAGS (\\Seen))", *response(4, 11, b"new")], "INBOX", 5)
    taken = pushed.take(10, 1)
    assert taken is not None and [m.uid for m in taken] == [11]


def test_past_the_limit_the_pool_gives_up() -> None:
    pushed = PushedMessages(limit=2)
    pushed.add([*response(1, 1, b"a"), *response(2, 2, b"b"), *response(3, 3, b"c")], "INBOX", 5)
    assert pushed.take(1, 2) is None  # not "the first two": a third was dropped, so fetch
    pushed.add([*response(1, 1, b"a"), *response(2, 2, b"b")], "INBOX", 5)
    assert pushed.take(1, 2) is not None
