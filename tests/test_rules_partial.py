"""Rules on messages only partly read: a test that finds nothing in a cut body text, in headers not
all read, or among parts not all read is undecided (fails closed), as is `equals`, a regex or a glob
on a header value cut short; and no auto-reply where its safety checks cannot be made (headers not
all read, a From or Reply-To cut short, a spam or auth stage that failed)."""

from __future__ import annotations

from typing import Any

import pytest

from gatewayd.message import (
    MAX_DEPTH,
    MAX_HEADER_CHARS,
    MAX_PARTS,
    FetchedMessage,
    FetchedPart,
    ParsedMessage,
    Skipped,
    SkipReason,
    parse,
)
from gatewayd.message.limits import MAX_ATTACHED_BYTES, MAX_ATTACHED_PARTS
from gatewayd.pipeline import Pipeline, StageSpec
from gatewayd.pipeline.spam.stage import SpamOptions, SpamStage
from gatewayd.rules import facts as facts_module
from gatewayd.rules.engine import RulesStage
from gatewayd.rules.facts import MAX_HEADER_BYTES, Facts
from gatewayd.rules.load import RuleBook
from gatewayd.rules.model import parse_rules
from gatewayd.rules.plan import evaluate
from gatewayd.rules.safety import refuse_reply, reply_target
from tests.sse import late_text_mail
from tests.test_attached import attachment, inline
from tests.test_attached import message as multipart

HEAD = "From: Bob Sender <bob@example.org>\r\nTo: agent@example.com\r\nSubject: Quarterly report\r\n"
# A body whose last words lie past the 256 KiB the parser keeps of a text.
LONG_BODY = "Dear customer, " + "filler text " * 25_000 + "please unsubscribe me"
# Over 256 KiB of header block before the headers that matter.
PADDING = "".join(f"X-Pad-{i}: {'p' * 990}\r\n" for i in range(MAX_HEADER_BYTES // 990 + 10))
# A folded Subject and a To list longer than the message parser keeps of a header (MAX_HEADER_CHARS).
LONG_SUBJECT = "Invoice " + "\r\n ".join(["x" * 70] * (MAX_HEADER_CHARS // 70 + 10)) + " urgent"
FOOTER = "To unsubscribe from this list, write to leave@lists.example.org"
LONG_TO = ", ".join(f"user{i}@example.net" for i in range(MAX_HEADER_CHARS // 20 + 10)) + ", last@example.net"


def fetched(raw: bytes, size: int | None = None, parts: tuple[FetchedPart, ...] = ()) -> ParsedMessage:
    return parse(FetchedMessage("INBOX", 7, 1, raw, len(raw) if size is None else size, (), None, parts))


def mail(headers: str = "", body: str = "Hello there.") -> ParsedMessage:
    return fetched((HEAD + headers + "\r\n" + body + "\r\n").encode())


def rulebook(conditions_by_name: dict[str, Any], then: list[Any] | None = None) -> RuleBook:
    rules, errors = parse_rules(
        [
            {"name": name, "if": cond, "then": then or [{"tag": name}]}
            for name, cond in conditions_by_name.items()
        ],
        "rules",
    )
    assert errors == []
    return RuleBook(tuple(rules))


def outcome_of(book: RuleBook, message: ParsedMessage) -> tuple[list[str], list[str]]:
    """Through the rules stage: the rules applied, and the rules not applied with their reason."""
    found = Facts.of(message, message.data)
    applied = [rule.name for rule in evaluate(book.for_mailbox(""), found)]
    return applied, [e for e in found.errors if "not applied" in e]


async def test_a_body_test_that_finds_nothing_in_a_cut_text_is_undecided() -> None:
    """The text is cut at 256 KiB: `not: {body: X}` fired when X lay past the cut."""
    book = rulebook(
        {
            "not-unsubscribe": {"not": {"body": "unsubscribe"}},
            "not-regex": {"not": {"body": {"regex": r"unsub\w+"}}},
            "found": {"body": "dear customer"},
            "not-found": {"not": {"body": "dear customer"}},
        }
    )
    pipeline = Pipeline([StageSpec(RulesStage(book), 5)])
    cut = (await pipeline.run(mail(body=LONG_BODY))).data
    # A match found is still a match; not finding is no proof of absence.
    assert [r["rule"] for r in cut["rules_applied"]] == ["found"]
    reason = "body: not found, but the body text was not all read (cut at 256 KiB, or by the fetch)"
    assert cut["rules_errors"] == [
        f'rule "not-unsubscribe" not applied: {reason}',
        f'rule "not-regex" not applied: {reason}',
    ]
    whole = (await pipeline.run(mail(body="Dear customer, " + LONG_BODY[-2000:]))).data
    assert [r["rule"] for r in whole["rules_applied"]] == ["found"] and whole["rules_errors"] == []


def test_tests_on_text_and_parts_the_fetch_did_not_bring_are_undecided() -> None:
    """The parts past the fetched prefix could not be fetched: the text and an .exe may be there."""
    book = rulebook(
        {
            "not-instructions": {"not": {"body": "instructions"}},
            "no-exe": {"not": {"attachment_type": ".exe"}},
            "no-attachments": {"has_attachments": False},
            "pdf": {"attachment_type": ".pdf"},
        }
    )
    full = late_text_mail("late")
    applied, not_applied = outcome_of(book, fetched(full[:262144], size=len(full)))
    assert applied == ["pdf"]
    assert [e.split('"')[1] for e in not_applied] == ["not-instructions", "no-exe"]
    assert "attachment_type: not found, but the message's parts were not all read" in not_applied[1]
    # The same message read whole: decided.
    assert outcome_of(book, fetched(full)) == (["no-exe", "pdf"], [])


def test_a_body_test_that_finds_nothing_where_an_inline_text_part_was_not_read_is_undecided() -> None:
    """The `body` test reads the inline text parts past the body: one the fetch did not bring, past
    the budget they are read within, or read only in part may hold what `not: {body: X}` looks for."""
    book = rulebook({"not-unsubscribe": {"not": {"body": "unsubscribe"}}, "body": {"body": "attached file"}})
    why = 'rule "not-unsubscribe" not applied: body: not found, but the inline text part inline:2 was'
    raw = multipart(inline(FOOTER))
    prefix = raw[: raw.index(b"--B", raw.index(b"--B") + 3)]  # the body part, not the footer's
    header = inline(FOOTER).split("\r\n\r\n")[0].encode() + b"\r\n\r\n"
    unfetched = FetchedPart(index=1, section="2", header=header, content=b"", size=len(FOOTER), cut=True)
    assert outcome_of(book, fetched(prefix, size=len(raw), parts=(unfetched,))) == (
        ["body"],
        [f"{why} not all read (not fetched)"],
    )
    files = [attachment("Notes.", f"{n}.txt") for n in range(MAX_ATTACHED_PARTS)]
    assert outcome_of(book, fetched(multipart(*files, inline(FOOTER)))) == (
        ["body"],
        [f"{why} not all read (over budget)"],
    )
    long_footer = "x " * MAX_ATTACHED_BYTES + FOOTER
    assert outcome_of(book, fetched(multipart(inline(long_footer)))) == (
        ["body"],
        [f"{why} not all read ({MAX_ATTACHED_BYTES // 1024} KiB of a part read, 256 KiB in all)"],
    )
    # Read whole, or read in part where the word is: decided.
    whole = fetched(multipart(*files[:-1], inline("Bye.")))
    assert outcome_of(book, whole) == (["not-unsubscribe", "body"], [])
    assert outcome_of(book, fetched(multipart(inline(FOOTER + " x" * MAX_ATTACHED_BYTES)))) == (["body"], [])


def test_a_header_test_that_finds_nothing_in_headers_not_all_read_is_undecided() -> None:
    """Headers are read from their first 256 KiB: `X-Spam-Flag` or `List-Unsubscribe` past that
    made `not: {header: ...}`, `list_id: false` and `exists: false` hold."""
    book = rulebook(
        {
            "no-flag": {"not": {"header": {"name": "x-spam-flag"}}},
            "no-mailer": {"header": {"name": "x-mailer", "exists": False}},
            "not-bulk": {"bulk": False},
            "not-a-list": {"list_id": False},
            "not-that-list": {"not": {"list_id": "*.lists.example"}},
            "not-auto": {"not": {"auto_submitted": True}},
            "not-from-x": {"not": {"from": "@x.example"}},
            "not-subject": {"not": {"subject": "invoice"}},
            "padded": {"header": {"name": "x-pad-0", "contains": "ppp"}},
            "from-bob": {"from": "bob@example.org"},
            "has-pad": {"not": {"header": {"name": "x-pad-1", "exists": False}}},
        }
    )
    # (List-Id, Precedence and Auto-Submitted are among the headers the message parser keeps, read
    # in full: they are found wherever they are.)
    hidden = "X-Spam-Flag: YES\r\nList-Unsubscribe: <mailto:leave@lists.example>\r\nX-Mailer: m\r\n"
    applied, not_applied = outcome_of(book, mail(PADDING + hidden))
    assert applied == ["padded", "from-bob", "has-pad"]
    assert [e.split('"')[1] for e in not_applied] == [
        "no-flag",
        "no-mailer",
        "not-bulk",
        "not-a-list",
        "not-that-list",
        "not-auto",
        "not-from-x",
        "not-subject",
    ]
    assert not_applied[0] == (
        'rule "no-flag" not applied: header x-spam-flag: not found, but the headers are longer than 256 KiB'
    )
    # The same without the padding past 256 KiB: every test is decided, and every rule holds.
    every = [rule.name for rule in book.for_mailbox("")]
    assert outcome_of(book, mail(PADDING[:5000])) == (every, [])


def test_headers_cut_by_the_fetch_or_beyond_the_parser_are_not_all_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    book = rulebook({"no-flag": {"not": {"header": {"name": "x-spam-flag"}}}})
    whole = (HEAD + PADDING[:20_000] + "X-Spam-Flag: YES\r\n\r\nHello.\r\n").encode()
    _, (error,) = outcome_of(book, fetched(whole[:4096], size=len(whole)))
    assert error.endswith("header x-spam-flag: not found, but the fetch cut the headers short"), error
    # A block the header parser fails on (an envelope From line keeps it off the fast path): it
    # falls back to the few headers the message parser kept, X-Spam-Flag not among them.
    odd = (
        "From bob@example.org Sat Nov 21 10:00:00 2026\r\n" + HEAD + "X-Spam-Flag: YES\r\n\r\nHi.\r\n"
    ).encode()
    assert outcome_of(book, fetched(odd)) == ([], [])
    monkeypatch.setattr(facts_module._HEADERS, "parsebytes", _failing_parse)
    _, (error,) = outcome_of(book, fetched(odd))
    assert error.endswith("header x-spam-flag: not found, but the header parser failed on them"), error


def _failing_parse(*_: Any, **__: Any) -> Any:
    raise ValueError("a header the parser cannot take")


@pytest.mark.parametrize(
    ("message", "data", "reason"),
    [
        (
            mail(PADDING + "List-Unsubscribe: <mailto:leave@lists.example>\r\n"),
            {},
            "headers were not all read (the headers are longer than 256 KiB)",
        ),
        (
            fetched((HEAD + "\r\nHi.\r\n").encode()[:60], size=200),
            {},
            "headers were not all read (the fetch cut the headers short)",
        ),
        (
            # Where the reply goes may be the address lost past the cut.
            mail("Reply-To: " + LONG_TO + "\r\n"),
            {},
            f"reply-to header was not all read (longer than {MAX_HEADER_CHARS} characters",
        ),
        (mail(), {"spam": None}, "the spam stage failed on this message: its verdict is unknown"),
        (mail(), {"auth": None}, "the auth stage failed on this message: its verdict is unknown"),
        (mail(), {}, None),  # no spam or auth stage configured: nothing to refuse on
    ],
)
def test_no_auto_reply_where_its_safety_checks_cannot_be_made(
    message: ParsedMessage, data: dict[str, Any], reason: str | None
) -> None:
    message.data.update(data)
    found = Facts.of(message, message.data)
    refusal = refuse_reply(found, "me@gw.example", reply_target(found))
    assert (refusal is None) if reason is None else (reason in (refusal or "")), refusal


async def test_a_spam_stage_that_failed_on_a_message_stops_its_auto_reply() -> None:
    """Backscatter: a message that broke the spam stage may be spam, and its sender forged."""
    rules, _ = parse_rules([{"name": "ack", "then": [{"auto_reply": "We got it."}]}], "rules")
    rules_stage = StageSpec(RulesStage(RuleBook(tuple(rules))), 5)
    spam = SpamStage(SpamOptions())
    # A budget no run of the stage keeps within: it overruns, its keys are null.
    failed = (await Pipeline([StageSpec(spam, 1e-9), rules_stage]).run(mail())).data
    assert failed["spam"] is None and failed["pipeline_errors"][0]["stage"] == "spam"
    (action,) = failed["rules_applied"][0]["actions"]
    assert (action["outcome"], action["reason"]) == (
        "skipped",
        "the spam stage failed on this message: its verdict is unknown",
    )
    for stages in ([StageSpec(spam, 5), rules_stage], [rules_stage]):  # ham, or no spam stage
        data = (await Pipeline(stages).run(mail())).data
        assert data["rules_applied"][0]["actions"][0]["outcome"] == "dry_run", data["rules_applied"]


def many_parts(count: int) -> bytes:
    """`count` empty inline HTML parts (neither attachments nor text), then an .exe and a text part."""
    inline = "--B\r\nContent-Type: text/html\r\n\r\n\r\n" * count
    return (
        HEAD + 'Content-Type: multipart/mixed; boundary="B"\r\n\r\n' + inline + "--B\r\n"
        'Content-Type: application/octet-stream; name="setup.exe"\r\n'
        "Content-Disposition: attachment\r\n\r\nMZ\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nPlease unsubscribe me.\r\n--B--\r\n"
    ).encode()


def nested(depth: int) -> bytes:
    """An .exe and a text part `depth` multiparts deep."""
    opening = "".join(
        f'--B{i}\r\nContent-Type: multipart/mixed; boundary="B{i + 1}"\r\n\r\n' for i in range(depth)
    )
    closing = "".join(f"--B{i}--\r\n" for i in reversed(range(depth + 1)))
    return (
        HEAD + 'Content-Type: multipart/mixed; boundary="B0"\r\n\r\n' + opening + f"--B{depth}\r\n"
        'Content-Type: application/octet-stream; name="setup.exe"\r\n'
        "Content-Disposition: attachment\r\n\r\nMZ\r\n"
        f"--B{depth}\r\nContent-Type: text/plain\r\n\r\nPlease unsubscribe me.\r\n" + closing
    ).encode()


PARTS_RULES = {
    "no-exe": {"not": {"attachment_type": ".exe"}},
    "no-attachments": {"has_attachments": False},
    "not-unsubscribe": {"not": {"body": "unsubscribe"}},
}


@pytest.mark.parametrize(
    ("over", "under"),
    [
        (many_parts(MAX_PARTS + 10), many_parts(MAX_PARTS - 10)),
        (nested(MAX_DEPTH + 5), nested(MAX_DEPTH - 5)),
    ],
    ids=["parts", "depth"],
)
def test_tests_on_parts_past_the_parsers_limits_are_undecided(over: bytes, under: bytes) -> None:
    """The MIME parse stops at MAX_PARTS parts or MAX_DEPTH levels: the .exe and the text past
    them were taken for absent, and `not: {attachment_type: .exe}` held."""
    book = rulebook(PARTS_RULES)
    message = fetched(over)
    applied, not_applied = outcome_of(book, message)
    assert (applied, [e.split('"')[1] for e in not_applied]) == ([], list(PARTS_RULES))
    assert not_applied[0].endswith("attachment_type: not found, but the message's parts were not all read"), (
        not_applied
    )
    assert "body: not found, but the body text was not all read" in not_applied[2]
    # The injection stage is told that it did not read them either.
    assert Skipped("rest of message", SkipReason.OVER_BUDGET) in message.skipped
    # Under the limits, every part is read and the tests are decided.
    whole = fetched(under)
    assert outcome_of(book, whole) == ([], []) and whole.data["attachments"][0]["filename"] == "setup.exe"
    assert whole.skipped == ()


def test_tests_on_subject_and_addresses_cut_by_the_message_parser_are_undecided() -> None:
    """The parser keeps 8192 characters of a header: a regex anchored to the end matched the start
    of the Subject, and `not:` of a word or an address past the cut held. Nor is a match in the
    start decided: the cut may fall in an encoded word (its raw text is read), and a To list cut
    at a comma inside a quoted name read that name's `ceo@example.com` for the address."""
    book = rulebook(
        {
            "not-urgent": {"not": {"subject": "urgent"}},
            "all-x": {"subject": {"regex": r"^Invoice[x ]+$"}},
            "is-invoice": {"subject": {"equals": "invoice"}},
            "invoice": {"subject": "invoice"},
            "not-to-last": {"not": {"to": "last@example.net"}},
            "to-first": {"to": "user0@example.net"},
        }
    )
    head = f"From: bob@example.org\r\nTo: {LONG_TO}\r\nSubject: {LONG_SUBJECT}\r\n"
    message = fetched((head + "\r\nHello.\r\n").encode())
    applied, not_applied = outcome_of(book, message)
    assert applied == [] and message.headers_cut == {"subject", "to"}
    why = f"its value was not all read (longer than {MAX_HEADER_CHARS} characters, or cut by the fetch)"
    assert not_applied == [
        f'rule "{name}" not applied: {what}: undecided, as {why}'
        for name, what in [
            ("not-urgent", "subject"),
            ("all-x", "subject"),
            ("is-invoice", "subject"),
            ("invoice", "subject"),
            ("not-to-last", "to"),
            ("to-first", "to"),
        ]
    ]
    quoted = fetched(
        f'From: bob@example.org\r\nTo: "ceo@example.com, {"x" * 8300}" <evil@evil.test>\r\n\r\n.'.encode()
    )
    assert quoted.data["to"] == [{"address": "ceo@example.com", "name": None}]
    assert outcome_of(rulebook({"to-ceo": {"to": "ceo@example.com"}}), quoted)[0] == []
    # Short enough to be read whole, the same values decide every test.
    short = fetched(b"From: bob@example.org\r\nTo: user0@example.net\r\nSubject: Invoice xx\r\n\r\nHi.\r\n")
    assert short.headers_cut == frozenset()
    assert outcome_of(book, short) == (["not-urgent", "all-x", "invoice", "not-to-last", "to-first"], [])


def test_tests_on_the_header_the_256_kib_cut_fell_in_are_undecided() -> None:
    """The headers are read from their first 256 KiB: the value of the header across that line
    was taken for the whole value, and a regex or glob matched its start."""
    book = rulebook(
        {
            "tag-all-a": {"header": {"name": "x-tag", "regex": "^a+$"}},
            "not-tag-b": {"not": {"header": {"name": "x-tag", "contains": "b"}}},
            "tag-a": {"header": {"name": "x-tag", "contains": "aaa"}},
            "pad": {"header": {"name": "x-pad-0", "equals": "p" * 990}},
            "list-a": {"list_id": "*aaa"},  # matches the start of the List-Id only
        }
    )
    padding = PADDING[: MAX_HEADER_BYTES - 2000]
    padding = padding[: padding.rindex("\r\n") + 2]
    applied, not_applied = outcome_of(book, mail(padding + "X-Tag: " + "a" * 5000 + "b\r\n"))
    assert applied == ["pad"]
    why = f"its value was not all read (the headers are longer than {MAX_HEADER_BYTES // 1024} KiB)"
    assert not_applied == [
        f'rule "tag-all-a" not applied: header x-tag: undecided, as {why}',
        f'rule "not-tag-b" not applied: header x-tag: undecided, as {why}',
        f'rule "tag-a" not applied: header x-tag: undecided, as {why}',
        'rule "list-a" not applied: list_id: not found, but the headers are longer than 256 KiB',
    ]
    applied, not_applied = outcome_of(book, mail(padding + "List-Id: " + "a" * 5000 + "-list\r\n"))
    assert (
        applied == ["pad"] and not_applied[-1] == f'rule "list-a" not applied: list_id: undecided, as {why}'
    )


def test_tests_on_the_header_the_fetch_cut_into_are_undecided() -> None:
    """A fetch that ends inside the headers cuts the last one read: "Quarterly" equalled the
    Subject "Quarterly report"."""
    book = rulebook(
        {
            "subject-is": {"subject": {"equals": "quarterly"}},
            "header-is": {"header": {"name": "subject", "equals": "quarterly"}},
            "from-bob": {"from": "bob@example.org"},
        }
    )
    whole = (HEAD + "\r\nHello.\r\n").encode()
    message = fetched(whole[: whole.index(b" report")], size=len(whole))
    applied, not_applied = outcome_of(book, message)
    assert applied == ["from-bob"] and message.data["subject"] == "Quarterly"
    assert not_applied == [
        'rule "subject-is" not applied: subject: undecided, as its value was not all read'
        f" (longer than {MAX_HEADER_CHARS} characters, or cut by the fetch)",
        'rule "header-is" not applied: header subject: undecided, as its value was not all'
        " read (the fetch cut the headers short)",
    ]


@pytest.mark.parametrize(
    ("last", "read", "condition"),
    [
        ("From: a@example.com.evil.test", "From: a@example.com", {"from": "@example.com"}),
        ("From: a@example.com.evil.test", "From: a@example.com", {"from": {"glob": "*@example.com"}}),
        ("Reply-To: a@example.com.evil.test", "Reply-To: a@example.com", {"reply_to": "a@example.com"}),
        ("Subject: =?utf-8?b?cmVwb3J0IGRvbmU=?=", "Subject: =?utf-8?b?cmVwb3J0", {"subject": "utf"}),
        (
            "X-Mailer: =?utf-8?b?cmVwb3J0IGRvbmU=?=",
            "X-Mailer: =?utf-8?b?cmVwb3J0",
            {"header": {"name": "x-mailer", "contains": "utf"}},
        ),
        ("Precedence: bulky-but-personal", "Precedence: bulk", {"bulk": True}),
        ("Auto-Submitted: no", "Auto-Submitted: n", {"auto_submitted": True}),
    ],
)
def test_no_test_on_the_header_the_fetch_cut_into_is_decided(
    last: str, read: str, condition: dict[str, Any]
) -> None:
    """The last header read, cut by the fetch, held a prefix: `a@example.com` of
    `a@example.com.evil.test` matched `@example.com`, an encoded word cut short was read as its raw
    text (`utf`), `Precedence: bulk` of `bulky-but-personal` was bulk, `Auto-Submitted: n` of `no`
    was auto-submitted. The header is still there: `exists` is decided."""
    head = HEAD.replace("From: Bob Sender <bob@example.org>\r\n", "")
    whole = (head + last + "\r\n\r\nHello.\r\n").encode()
    book = rulebook({"cut": condition, "exists": {"header": {"name": last.partition(":")[0]}}})
    applied, not_applied = outcome_of(book, fetched((head + read).encode(), size=len(whole)))
    assert applied == ["exists"] and len(not_applied) == 1, not_applied
    assert ": undecided, as its value was not all read" in not_applied[0], not_applied
    assert outcome_of(book, fetched(whole))[1] == []  # read whole, each is decided


def test_parts_past_a_header_block_the_fetch_cut_are_not_all_read() -> None:
    """Nothing past a cut header block was read, its Content-Type among it: `has_attachments: false`
    held of a multipart with an attachment."""
    body = (
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        + "--B\r\n\r\nHi.\r\n--B--\r\n"
    )
    whole = (HEAD + body).encode()
    message = fetched(whole[: whole.index(b"MIME-Version")], size=len(whole))
    applied, not_applied = outcome_of(rulebook({"plain": {"has_attachments": False}}), message)
    assert (applied, message.parts_unseen) == ([], True)
    assert not_applied == [
        'rule "plain" not applied: has_attachments: not found, but the message\'s parts were not all read'
    ]


def test_equals_and_a_regex_match_at_the_end_of_a_cut_body_are_undecided() -> None:
    """The fetch cut "status: okay, pending" at "status: ok": `equals` compared the start, and
    `ok$` matched at the cut; a match more text cannot undo stands."""
    whole = (HEAD + "\r\nstatus: okay, pending\r\n").encode()
    message = fetched(whole[: whole.index(b"ay, pending")], size=len(whole))
    book = rulebook(
        {
            "is-ok": {"body": {"equals": "status: ok"}},
            "ends-ok": {"body": {"regex": "ok$"}},
            "status": {"body": {"regex": r"^status\b"}},
        }
    )
    applied, not_applied = outcome_of(book, message)
    why = "the body text was not all read (cut at 256 KiB, or by the fetch)"
    assert (applied, not_applied) == (
        ["status"],
        [
            f'rule "is-ok" not applied: body: equals matched, but {why}',
            f"rule \"ends-ok\" not applied: body: regex 'ok$' matched, but {why}, and more may undo it",
        ],
    )
    read_whole = fetched((HEAD + "\r\nstatus: ok\n").encode())
    assert outcome_of(book, read_whole) == (["is-ok", "ends-ok", "status"], [])


def test_a_header_block_the_fetch_cut_holds_no_body_text() -> None:
    """The fetch cut the headers in a field's name: the parser read the name's start ("List-Unsub")
    as the body's first line, and `body: unsub` matched a message whose body never says it."""
    whole = (HEAD + "List-Unsubscribe: <mailto:leave@lists.example.org>\r\n\r\nHello.\r\n").encode()
    message = fetched(whole[: whole.index(b"scribe:")], size=len(whole))
    applied, not_applied = outcome_of(rulebook({"unsub": {"body": "unsub"}}), message)
    assert (applied, message.text, message.text_cut) == ([], "", True)
    assert not_applied == [
        'rule "unsub" not applied: body: not found, but the body text was not all read'
        " (cut at 256 KiB, or by the fetch)"
    ]
    assert message.data["body_text_excerpt"] is None
    assert outcome_of(rulebook({"unsub": {"body": "unsub"}}), fetched(whole)) == ([], [])


def test_header_tests_on_a_message_the_fetch_brought_nothing_of_are_undecided() -> None:
    """A fetch that returns no byte of a message (it was expunged meanwhile, or a server's error)
    cut its headers short too: no X-Tag and no Subject "hello" were decided."""
    whole = (HEAD + "X-Tag: yes\r\n\r\nHello.\r\n").encode()
    book = rulebook(
        {
            "untagged": {"header": {"name": "x-tag", "exists": False}},
            "not-hello": {"not": {"subject": "hello"}},
        }
    )
    applied, not_applied = outcome_of(book, fetched(b"", size=len(whole)))
    assert applied == []
    assert not_applied == [
        'rule "untagged" not applied: header x-tag: not found, but the fetch cut the headers short',
        'rule "not-hello" not applied: subject: not found, but the fetch cut the headers short',
    ]
    assert outcome_of(book, fetched(whole)) == (["not-hello"], [])


@pytest.mark.parametrize("cut_at", [b"preamble", b"-B\r\nContent-Type: text/plain"])
def test_parts_past_a_multipart_cut_before_its_first_boundary_are_not_all_read(cut_at: bytes) -> None:
    """The fetch cut a multipart in its preamble or its first boundary line: the parser saw no part
    and no multipart, and `has_attachments: false` held of a message with an .exe attached."""
    body = (
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\npreamble\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nHi.\r\n"
        '--B\r\nContent-Type: application/octet-stream; name="a.exe"\r\n\r\nMZ\r\n--B--\r\n'
    )
    whole = (HEAD + body).encode()
    book = rulebook({"plain": {"has_attachments": False}, "no-hi": {"not": {"body": "hi"}}})
    message = fetched(whole[: whole.index(cut_at)], size=len(whole))
    applied, not_applied = outcome_of(book, message)
    assert (applied, message.parts_unseen) == ([], True)
    assert [e.split('"')[1] for e in not_applied] == ["plain", "no-hi"]
    assert outcome_of(book, fetched(whole)) == ([], [])


def test_a_body_test_that_finds_nothing_past_the_html_markup_read_is_undecided() -> None:
    """The HTML converter reads 20000 tokens of markup at most: a 110 KB newsletter's last line was
    never read, the text was not marked cut, and `not: {body: unsubscribe}` held."""
    rows = "<tr><td>item</td></tr>" * 6000
    html = f"<html><body><table>{rows}</table><p>To unsubscribe click here</p></body></html>"
    message = mail("Content-Type: text/html; charset=utf-8\r\n", html)
    book = rulebook({"not-unsubscribe": {"not": {"body": "unsubscribe"}}, "item": {"body": "item"}})
    applied, not_applied = outcome_of(book, message)
    assert (applied, message.text_cut) == (["item"], True)
    # Said so: no size cap nor the fetch cut it (the reason said "cut at 256 KiB, or by the fetch").
    assert not_applied == [
        'rule "not-unsubscribe" not applied: body: not found, but the body text was not all read'
        " (its HTML past the 20000 tags read)"
    ]
    # Within the markup read: decided.
    short = mail("Content-Type: text/html; charset=utf-8\r\n", html.replace(rows, rows[:2200]))
    assert outcome_of(book, short) == (["item"], [])
    # So for an inline HTML part past the body (a list's footer): 62 KB, all of it read, but not
    # all of its markup.
    footer = "<i>item</i>" * 10 + "<b>" * 20500 + FOOTER
    applied, not_applied = outcome_of(book, fetched(multipart(inline(footer, "text/html"))))
    assert applied == ["item"]
    assert not_applied == [
        'rule "not-unsubscribe" not applied: body: not found, but the inline text part inline:2 was'
        " not all read (its HTML markup)"
    ]


def test_a_quoted_printable_escape_the_fetch_cut_is_not_read_as_text() -> None:
    """The fetch cut "Grüße" in its escape "=C3=9F" after "=C": the text read "Grü=C", and
    `\\bGrü\\b` matched two characters before the cut (where a match stands) a word the whole text
    does not hold."""
    head = HEAD + "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"
    whole = (head + "\r\nViele Gr=C3=BC=C3=9Fe\r\n").encode()
    book = rulebook({"gru": {"body": {"regex": r"\bGrü\b"}}})
    message = fetched(whole[: whole.index(b"3=9Fe")], size=len(whole))
    applied, not_applied = outcome_of(book, message)
    assert (message.text, applied) == ("Viele Grü", [])
    assert not_applied == [
        "rule \"gru\" not applied: body: regex '\\\\bGrü\\\\b' matched, but the body text was not all read"
        " (cut at 256 KiB, or by the fetch), and more may undo it"
    ]
    assert outcome_of(book, fetched(whole)) == ([], [])


def test_an_html_entity_the_cut_fell_in_is_not_read_as_text() -> None:
    """The fetch cut "&hellip;" after "&helli": the text read it as written, "Oh &helli", and `\\bhe`
    matched, three characters before the cut, a word the whole text ("Oh … what a mess.") lacks."""
    head = HEAD + "Content-Type: text/html; charset=utf-8\r\n"
    whole = (head + "\r\n<p>Oh &hellip; what a mess.</p>\r\n").encode()
    book = rulebook({"he": {"body": {"regex": r"\bhe"}}})
    message = fetched(whole[: whole.index(b"p; what")], size=len(whole))
    applied, not_applied = outcome_of(book, message)
    assert (message.text.strip(), applied) == ("Oh", [])
    assert [e.split('"')[1] for e in not_applied] == ["he"]
    assert outcome_of(book, fetched(whole)) == ([], [])


def test_an_inline_text_part_the_fetch_cut_is_read_in_part() -> None:
    """The fetch cut a list's footer part past the body ("status: okay" at "status: ok", "é" in its
    middle): it was read as if whole, so `ok$` matched at the cut and the cut "é" read as U+FFFD."""
    book = rulebook({"ends-ok": {"body": {"regex": "ok$"}}, "replacement": {"body": "\ufffd"}})
    raw = multipart(inline("café status: okay, pending"))
    for at in (raw.index(b"ay, pending"), raw.index("é".encode()) + 1):
        applied, not_applied = outcome_of(book, fetched(raw[:at], size=len(raw)))
        assert applied == [], at
        assert all("inline text part inline:2 was not all read" in e for e in not_applied), not_applied
    assert outcome_of(book, fetched(raw)) == ([], [])
