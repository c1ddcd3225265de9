"""The rules stage's shortcuts give what the straightforward computation gives: headers read lazily
per name (against the feed parser reading the whole block), the plan's copy (against deepcopy), the
cached `uses_regex`, and the early return when no rule matches."""

from __future__ import annotations

import copy
import email.header
import re
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gatewayd.message import FetchedMessage, ParsedMessage, parse
from gatewayd.pipeline import StageContext
from gatewayd.rules import engine, plan
from gatewayd.rules.engine import RulesStage
from gatewayd.rules.facts import MAX_HEADER_BYTES, Facts, is_auto_submitted, is_bulk, is_list
from gatewayd.rules.load import RuleBook
from gatewayd.rules.model import parse_rules, uses_regex
from gatewayd.rules.plan import build, evaluate, result
from gatewayd.rules.safety import refuse_reply
from tests.test_message import _BODIES, _CONTINUATIONS, _FAST_PATH_SETTINGS, _LINES, _VALUES
from tests.test_rules import all_headers_by_the_parser

# -- headers ----------------------------------------------------------------------------------------

_FIELD_NAMES = [
    b"List-Id",
    b"list-id",
    b"LIST-POST",
    b"List-Unsubscribe",
    b"X-List-Id",
    b"Precedence",
    b"Auto-Submitted",
    b"Return-Path",
    b"Subject",
    b"X-Loop",
    b"DKIM-Signature",
    b"\xc3\xa4",
    b"From ",
    b"bad line",
]
_FIELD_VALUES = [
    *_VALUES,
    b" h=from:to:list-id:list-post",  # the names inside a value, not as fields
    b" bulk",
    b" auto-replied; x",
    b" <list.example.org>",
    b" =?iso-8859-1?q?caf=E9?=",
    b" =?utf-8?q?broken",
]
_ENDS = [b"\n", b"\r\n", b"\r", b""]
_FIELDS = st.tuples(
    st.sampled_from(_FIELD_NAMES),
    st.sampled_from([b":", b": ", b""]),
    st.sampled_from(_FIELD_VALUES),
    st.sampled_from(_ENDS),
    st.lists(st.tuples(st.sampled_from(_CONTINUATIONS), st.sampled_from(_ENDS)).map(b"".join), max_size=2),
).map(lambda parts: b"".join(parts[:4]) + b"".join(parts[4]))
_MESSAGES = (
    st.tuples(
        st.lists(_FIELDS, max_size=8).map(b"".join),
        st.sampled_from([b"\n", b"\r\n", b""]),  # the separator, or none
        _BODIES,
    ).map(b"".join)
    | st.lists(st.sampled_from(_LINES), max_size=12).map(b"".join)
    | st.binary(max_size=80)
)
# Asked for: present or not, in any case, names no ASCII field can have (é; an escaped byte).
_ASKED = st.lists(
    st.sampled_from(
        [
            *("list-id", "list-post", "list-unsubscribe", "x-list-id", "precedence", "auto-submitted"),
            *("return-path", "subject", "from", "x-loop", "dkim-signature", "List-Id", "ä", "\udcc3\udca4"),
            *("missing", "from ", ""),
        ]
    ),
    max_size=8,
)


def headers_by_the_parser(raw: bytes, known: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Every top-level header through the feed parser, unfolded, then what the message parser kept."""
    found = all_headers_by_the_parser(raw) if raw else {}
    for name, values in known.items():
        found.setdefault(name, values)
    return found


def decoded(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:
        return value


def parsed_message(raw: bytes) -> ParsedMessage:
    return parse(FetchedMessage("INBOX", 7, 1, raw, len(raw), (), None))


@_FAST_PATH_SETTINGS
@given(raw=_MESSAGES, asked=_ASKED)
@example(raw=b"List-Id:\nPrecedence: bulk\n more\n\n", asked=[])  # a folded second word
def test_headers_are_read_per_name_as_the_whole_block_reads(raw: bytes, asked: list[str]) -> None:
    message = parsed_message(raw)
    expected = headers_by_the_parser(raw, message.headers)
    facts = Facts(message.data, message.headers, message.text, raw=raw)
    for name in asked:
        fresh = Facts(message.data, message.headers, message.text, raw=raw)
        assert fresh.has(name) == bool(expected.get(name)), (raw, name)
    for name in [*asked, *asked]:  # asked again: from the cache
        assert facts.values(name) == expected.get(name, []), (raw, name)
        assert facts.header(name) == [decoded(v) for v in expected.get(name.lower(), [])], (raw, name)
    fresh = Facts(message.data, message.headers, message.text, raw=raw)
    assert is_list(fresh) == any(expected.get(n) for n in ("list-id", "list-post", "list-unsubscribe"))
    # Precedence by its first word: senders append parameters ("bulk; x") and comments.
    assert is_bulk(fresh) == any(
        re.split(r"[\s;(]", decoded(v).strip(), maxsplit=1)[0].lower() in ("bulk", "list", "junk")
        for v in expected.get("precedence", [])
    )
    assert is_auto_submitted(fresh) == any(
        decoded(v).split(";")[0].strip().lower() not in ("", "no") for v in expected.get("auto-submitted", [])
    )


@pytest.mark.parametrize("before_the_cut", [True, False])
def test_a_header_past_the_header_limit_is_not_read(before_the_cut: bool) -> None:
    filler = b"X-Filler: " + b"x" * 70 + b"\n"
    count = MAX_HEADER_BYTES // len(filler) + (-10 if before_the_cut else 10)
    raw = b"From: a@example.org\n" + filler * count + b"List-Post: <mailto:l@example.org>\n\nbody\n"
    facts = Facts({}, {}, "", raw=raw)
    assert facts.values("list-post") == headers_by_the_parser(raw, {}).get("list-post", [])
    assert is_list(facts) is before_the_cut


def test_the_message_parsers_headers_stand_in_for_a_missing_raw_block() -> None:
    known = {"list-id": ["<kept.example.org>"], "precedence": ["bulk"]}
    assert Facts({}, known, "", raw=b"").values("list-id") == ["<kept.example.org>"]
    assert Facts({}, {"list-id": []}, "", raw=b"Subject: x\n\n").has("list-id") is False
    facts = Facts({}, known, "", raw=b"Subject: x\nPrecedence: list\n\nbody\n")
    assert facts.values("precedence") == ["list"]  # the block wins over what the parser kept
    assert facts.values("list-id") == ["<kept.example.org>"]


def test_a_reply_is_refused_to_list_mail_read_lazily() -> None:
    raw = b"From: a@example.org\nList-Help: <mailto:help@example.org>\n\nbody\n"
    message = parsed_message(raw)
    facts = Facts(message.data, message.headers, message.text, raw=raw)
    assert refuse_reply(facts, "me@example.com", "a@example.org") == "the message is from a mailing list"


# -- the plan's copy --------------------------------------------------------------------------------

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
_JSON_LIKE = st.recursive(
    _SCALARS | st.lists(st.text(max_size=3), max_size=3).map(tuple),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=30,
)


def assert_shares_no_container(copied: Any, original: Any) -> None:
    if isinstance(original, dict):
        pairs = zip(copied.values(), original.values(), strict=True)
    elif isinstance(original, list):
        pairs = zip(copied, original, strict=True)
    else:
        return
    assert copied is not original and type(copied) is type(original)
    for a, b in pairs:
        assert_shares_no_container(a, b)


@_FAST_PATH_SETTINGS
@given(value=_JSON_LIKE)
def test_the_plans_copy_is_a_deep_copy(value: Any) -> None:
    copied = plan._copy(value)
    assert copied == copy.deepcopy(value)
    assert_shares_no_container(copied, value)


_ACTIONS = [
    {"move": "Archive"},
    {"move": {"folder": "Later", "create": True}},
    {"copy": "Copies"},
    {"add_flags": ["\\Flagged", "\\Seen"]},
    {"remove_flags": "\\Seen"},
    "mark_read",
    {"add_keywords": ["k1", "k2"]},
    {"remove_keywords": "k1"},
    {"tag": ["t1", "t2"]},
    {"forward": ["boss@example.org", "two@example.org"]},
    {"report": "spam"},
    "drop_event",
]
_OUTCOMES = [
    {"outcome": "ok"},
    {"outcome": "ok", "folder": "Moved", "uid": 9, "uidvalidity": 3, "state": "done"},
    {"outcome": "error", "error": "no such folder"},
    {"outcome": "dry_run", "to": ["x@example.org"]},
    {"outcome": "pending"},
]


@_FAST_PATH_SETTINGS
@given(
    actions=st.lists(st.lists(st.sampled_from(_ACTIONS), min_size=1, max_size=4), max_size=4),
    outcomes=st.lists(st.sampled_from(_OUTCOMES), max_size=12),
    gmail=st.booleans(),
)
def test_results_are_those_of_the_deep_copy(
    actions: list[list[Any]], outcomes: list[dict[str, Any]], gmail: bool
) -> None:
    rules, errors = parse_rules([{"name": f"r{i}", "then": then} for i, then in enumerate(actions)], "rules")
    assert errors == []
    the_plan = build(rules, gmail=gmail)
    before = copy.deepcopy(the_plan)
    by_step = {i: o for i, o in enumerate(outcomes) if i % 3 != 2}  # some steps without an outcome
    data = {"flags": ["\\Seen", "old"], "folder": "INBOX", "uid": 4, "uidvalidity": 1}
    fast = result(data, the_plan, by_step, [])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plan, "_copy", copy.deepcopy)
        assert fast == result(data, the_plan, by_step, [])
    assert the_plan == before
    for rule in fast["rules_applied"]:  # the event's entries are its own
        for entry in rule["actions"]:
            entry.clear()
    assert the_plan == before


# -- the rule book and the stage --------------------------------------------------------------------


def rules_of(raw: list[Any]) -> tuple[Any, ...]:
    rules, errors = parse_rules(raw, "rules")
    assert errors == []
    return tuple(rules)


def test_uses_regex_is_that_of_the_mailboxs_rules() -> None:
    plain = rules_of([{"name": "p", "if": {"subject": "x"}, "then": ["mark_read"]}])
    regex = rules_of([{"name": "r", "if": {"not": {"body": {"regex": "a+"}}}, "then": ["mark_read"]}])
    for global_rules in (plain, regex):
        book = RuleBook(global_rules, {"with": regex, "without": plain})
        for mailbox in ("with", "without", "unknown", "", "with"):
            assert book.uses_regex(mailbox) == uses_regex(book.for_mailbox(mailbox))


@pytest.mark.parametrize("subject", ["nothing matches", "invoice attached"])
async def test_the_stage_without_a_match_gives_the_empty_plans_result(
    subject: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = f"From: a@example.org\r\nSubject: {subject}\r\nList-Id: <l.example.org>\r\n\r\nbody\r\n".encode()
    message = parsed_message(raw)
    data = {**message.data, "flags": ["$label", "\\Seen"]}
    rules = rules_of(
        [
            {"name": "invoice", "if": {"subject": {"regex": "invoice"}}, "then": [{"tag": ["inv"]}]},
            {"name": "bulk", "if": {"bulk": True}, "then": ["mark_read"]},
        ]
    )
    matched = evaluate(rules, Facts(data, message.headers, message.text, raw=raw))
    expected = result(data, build(matched), {}, [])
    calls: list[Any] = []

    def counted_build(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return build(*args, **kwargs)

    monkeypatch.setattr(engine, "build", counted_build)
    stage = RulesStage(RuleBook(rules))
    got = await stage.check(message, StageContext(None, {}, data, "message.received", None))
    assert got.data == expected and got.drop is False
    assert len(calls) == len(matched)  # planned only when a rule matched
