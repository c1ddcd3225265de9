"""Rules offline: parsing and its errors, every condition, bounded regexes, RFC 3834 safety, templates,
the plan's order, and the dry run through the pipeline."""

from __future__ import annotations

import asyncio
import email.policy
import functools
import hashlib
import os
import re
import signal
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterable
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.config import ConfigError, load_config, parse_config
from gatewayd.message import FetchedMessage, ParsedMessage, parse
from gatewayd.pipeline import Pipeline, StageSpec
from gatewayd.rules import compose, match
from gatewayd.rules import engine as rules_engine
from gatewayd.rules import facts as facts_module
from gatewayd.rules import renderer as renderer_module
from gatewayd.rules.engine import RulesStage
from gatewayd.rules.facts import MAX_HEADER_BYTES, Facts
from gatewayd.rules.load import RuleBook, load_rules
from gatewayd.rules.match import AddressPattern, InlineBudget, RegexBudget, compile_regex, stands_past_cut
from gatewayd.rules.model import parse_rules
from gatewayd.rules.plan import build, evaluate
from gatewayd.rules.renderer import TemplateRenderer
from gatewayd.rules.safety import refuse_reply, reply_target
from gatewayd.rules.template import Template, context_for
from tests.test_attached import alternative, attachment, inline
from tests.test_attached import message as attached_message
from tests.test_message import _FAST_PATH_SETTINGS, _FLAWED_MESSAGES, _LINES, _PLAIN_MESSAGES

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "gatewayd.example.yaml"


def message(headers: str = "", body: str = "Hello there.", **data: Any) -> ParsedMessage:
    raw = (
        "From: Bob Sender <bob@example.org>\r\nTo: agent@example.com, Ann <ann@corp.example>\r\n"
        "Subject: Quarterly report\r\nMessage-ID: <m1@example.org>\r\n" + headers + "\r\n" + body + "\r\n"
    ).encode()
    parsed = parse(FetchedMessage("INBOX", 7, 1, raw, len(raw), (), None))
    parsed.data.update(data)
    return parsed


def facts(parsed: ParsedMessage) -> Facts:
    return Facts(parsed.data, parsed.headers, parsed.text, raw=parsed.raw)


def matches(condition: Any, parsed: ParsedMessage | None = None) -> bool:
    (rule,), errors = parse_rules([{"name": "r", "if": condition, "then": [{"tag": "x"}]}], "rules")
    assert errors == []
    return bool(evaluate([rule], facts(parsed or message())))


def errors_of(rules: list[Any]) -> list[str]:
    return parse_rules(rules, "rules")[1]


# -- conditions -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"from": "bob@example.org"}, True),
        ({"from": "BOB@Example.org"}, True),
        ({"from": "@example.org"}, True),
        ({"from": "example.org"}, True),
        ({"from": "*@*.org"}, True),
        ({"from": {"domain": "example.org"}}, True),
        ({"from": {"glob": "b?b@*"}}, True),
        ({"from": ["x@y.z", "@other.example"]}, False),
        ({"to": "@corp.example"}, True),
        ({"cc": "@corp.example"}, False),
        ({"subject": "quarterly"}, True),
        ({"subject": {"regex": "^Quarterly"}}, True),
        ({"subject": {"regex": "^quarterly"}}, False),
        ({"subject": {"equals": "quarterly report"}}, True),
        ({"body": {"contains": ["nothing", "hello"]}}, True),
        ({"header": {"name": "X-Mailer"}}, False),
        ({"header": {"name": "Message-ID", "contains": "@example.org"}}, True),
        ({"not": {"from": "@example.org"}}, False),
        ({"any": [{"from": "x@y.z"}, {"subject": "report"}]}, True),
        ({"all": [{"from": "bob@example.org"}, {"subject": "nope"}]}, False),
        ({"list_id": True}, False),
        ({"bulk": False, "auto_submitted": False}, True),
        ({"has_attachments": False}, True),
        ({"size": {"under": "1K"}}, True),
        ({"size": {"over": 1024}}, False),
        ({"folder": "INBOX"}, True),
        ({"folder": "Arch*"}, False),
        ({"spam_verdict": "ham"}, False),  # the spam stage did not run: a verdict test is false
    ],
)
def test_conditions(condition: dict[str, Any], expected: bool) -> None:
    assert matches(condition) is expected


def test_text_tests_are_caseless_in_unicode() -> None:
    # Case folding, not lower(): "STRASSE" is "straße" caselessly, as users of a
    # case-insensitive match expect; an ASCII-only lower() would miss it.
    parsed = message(headers="X-Ort: GROSSE STRASSE 1\r\n", body="Lieferung an die Straße")
    assert matches({"body": "STRASSE"}, parsed)
    assert matches({"body": {"contains": "strasse"}}, parsed)
    assert matches({"header": {"name": "X-Ort", "contains": "große straße"}}, parsed)
    assert matches({"header": {"name": "X-Ort", "equals": "Große Straße 1"}}, parsed)
    assert matches({"body": {"equals": "LIEFERUNG AN DIE STRASSE"}}, parsed)
    assert not matches({"body": "strassen"}, parsed)


LIST_FOOTER = "To unsubscribe from this list, write to leave@lists.example.org"


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"body": "unsubscribe"}, True),
        ({"not": {"body": "unsubscribe"}}, False),
        ({"body": {"regex": "^To unsubscribe"}}, True),  # each part is a text of its own
        ({"body": "manage your subscription"}, True),  # an inline HTML part: its visible text
        ({"body": {"regex": "^Budget review$"}}, True),  # an invite: the words it shows
        ({"body": {"equals": "meeting at noon."}}, True),  # the body, as before
        ({"body": "in the attached file"}, False),  # an attached file is not shown inline
        ({"not": {"body": "in the attached file"}}, True),
    ],
)
def test_the_body_test_reads_every_inline_text_part_as_a_reader_does(
    condition: dict[str, Any], expected: bool
) -> None:
    """A list's footer in an inline text part after the body (a text and HTML alternative):
    `body` missed it, and `not: {body: ...}` held."""
    raw = attached_message(
        inline(LIST_FOOTER, disposition=None),
        inline("<p>Manage your <b>subscription</b> here.</p>", "text/html"),
        inline(
            "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nSUMMARY:Budget review\r\nEND:VEVENT\r\nEND:VCALENDAR",
            "text/calendar",
        ),
        attachment("Said in the attached file."),
        body="Meeting at noon.",
    )
    body = alternative("Meeting at noon.", "<p>Meeting at noon.</p>")
    raw = raw.replace(b"Content-Type: text/plain\r\n\r\nMeeting at noon.", body.encode())
    parsed = parse(FetchedMessage("INBOX", 7, 1, raw, len(raw), (), None))
    (rule,), _ = parse_rules([{"name": "r", "if": condition, "then": [{"tag": "x"}]}], "rules")
    found = Facts.of(parsed, parsed.data)
    assert bool(evaluate([rule], found)) is expected and found.errors == []
    # The excerpt is of the body alone.
    assert parsed.data["body_text_excerpt"] == "Meeting at noon."


@pytest.mark.parametrize(
    ("pattern", "address"),
    [
        ("straße@example.de", "STRASSE@example.de"),  # lower() leaves ß, and "SS" never equals it
        ("*strasse*@*", "Straße@example.de"),
        ("@bücher.example", "info@xn--bcher-kva.example"),  # Unicode vs ASCII form, as auth has it
        ("xn--bcher-kva.example", "info@BÜCHER.example"),
        ("*@*.bücher.example", "info@mail.xn--bcher-kva.example"),
        ("*.bücher.example", "info@mail.xn--bcher-kva.example"),  # without `@`, as with it
        ("*.Bücher.example", "info@mail.BÜCHER.example"),
        ("jürgen*", "Jürgen@xn--bcher-kva.example"),  # a label with a wildcard: as written
        ("info@Bücher.example", "INFO@xn--bcher-kva.example"),
        # A wildcard in a label beyond ASCII: compared with the domain in Unicode form.
        ("*@*bücher*.example", "info@xn--shopbcher-u9a.example"),
        ("*bücher*", "info@xn--bcher-kva.example"),  # without `@`, as with it
        ("*@*bücher.рф", "info@shop.xn--bcher-kva.xn--p1ai"),
    ],
)
def test_addresses_compare_caseless_in_unicode_with_domains_in_ascii_form(pattern: str, address: str) -> None:
    parsed = message(headers=f"Reply-To: {address}\r\n")
    assert matches({"reply_to": pattern}, parsed)
    key = "glob" if "*" in pattern else "address" if "@" in pattern[1:] else "domain"
    assert matches({"reply_to": {key: pattern}}, parsed)
    assert matches({"reply_to": {key: pattern.upper()}}, parsed)


def test_a_domain_pattern_matches_only_its_own_domain_in_either_form() -> None:
    assert not AddressPattern.parse("@bücher.example").matches("info@bucher.example")
    assert not AddressPattern.parse("@bucher.example").matches("info@xn--bcher-kva.example")
    assert not AddressPattern.parse("*@bücher.example").matches("info@bucher.example")
    assert not AddressPattern.parse("*.bücher.example").matches("info@mail.bucher.example")


def test_a_glob_in_unicode_matches_no_domain_without_a_unicode_form() -> None:
    # `xn--zz` and `xn--bcher-kva-` are no valid punycode: no crash, and no match of their letters.
    for address in ("info@xn--zz.example", "info@xn--bcher-kva-.example", "info@bcher.example"):
        assert not AddressPattern.parse("*@*bücher*.example").matches(address)
        assert not AddressPattern.parse("*bücher*").matches(address)
    assert not AddressPattern.parse("*@*bücher*.example").matches("info@xn--bcher-kva.example.evil.test")


@pytest.mark.parametrize(
    ("pattern", "text", "stands"),
    [
        (r"\bfoo\b", "a foo b", True),
        (r"(?i:foo) \w+", "FOO bar. x", True),
        (r"(?m)(?<=a )foo$", "a foo\nb", True),  # a newline read: the same in the whole
        (r"\w+\.", "FOO bar.", False),  # at the cut: undecided, though no text could undo this one
        ("foo$", "a foo", False),  # "a foo bar" makes it false
        (r"foo\Z", "a foo", False),
        ("foo$", "a foo\n", False),  # `$` before a final newline
        (r"foo\b", "a foo", False),  # "a food"
        ("fo+", "a fo", False),  # the whole would match more: "a foo" is still a match, but it is
        ("foo(?=.*bar)", "foo, bar, baz", False),  # lookahead: past its match
        ("foo(?!.*baz)", "foo, bar, ba", False),  # "... baz" undoes it
        ("(?>fo|f)o", "foo and", False),  # atomic group
        ("fo++", "foo and", False),  # possessive quantifier
        ("(*PRUNE)foo", "foo and", False),
        ("(?w)foo", "foo and", False),  # the WORD flag's boundaries
        ("[(?=]foo", "=foo and", False),  # no lookahead, but read as one: never the other way
    ],
)
def test_a_match_in_a_cut_text_stands_only_where_more_text_cannot_undo_it(
    pattern: str, text: str, stands: bool
) -> None:
    compiled = compile_regex(pattern)
    match = compiled.search(text)
    assert match is not None and stands_past_cut(compiled, match, len(text)) is stands


def test_globs_on_folders_and_list_ids_are_caseless_in_unicode() -> None:
    parsed = message(headers="List-Id: <STRASSE.lists.example>\r\n", folder="Archiv/Große Post")
    assert matches({"folder": "archiv/grosse*"}, parsed)
    assert matches({"list_id": "straße.lists.*"}, parsed)


def test_a_list_of_header_tests_needs_every_entry() -> None:
    parsed = message(headers="X-Team: ops\r\nX-Ticket: 42\r\n")
    both = [{"name": "X-Team", "equals": "ops"}, {"name": "X-Ticket"}]
    assert matches({"header": both}, parsed)
    one_missing = [{"name": "X-Team", "equals": "ops"}, {"name": "X-Urgent"}]
    assert not matches({"header": one_missing}, parsed)
    assert matches({"any": [{"header": entry} for entry in one_missing]}, parsed)


def test_bulk_condition_reads_the_first_word_of_precedence() -> None:
    assert matches({"bulk": True}, message(headers="Precedence: BULK; reason=newsletter\r\n"))
    assert matches({"bulk": False}, message(headers="Precedence: first-class\r\n"))


def test_verdict_conditions_read_the_earlier_stages() -> None:
    parsed = message(
        headers="List-Id: <users.lists.example>\r\nPrecedence: bulk\r\nAuto-Submitted: auto-generated\r\n",
        spam={"verdict": "suspect", "score": 6.5},
        auth={"verdict": "fail", "spf": {"result": "softfail"}, "dkim": [{"result": "pass"}], "dmarc": None},
        injection={"score": 0.7, "level": "high"},
        attachments=[{"filename": "scan.PDF", "content_type": "application/pdf", "size": 10}],
        has_attachments=True,
    )
    assert matches({"list_id": "*.lists.example>"}, parsed)
    assert matches({"list_id": "users.lists.example"}, parsed)
    assert matches({"list_id": "*.LISTS.example"}, parsed)
    named = message(headers="List-Id: Users of X <users.lists.example>\r\n")
    assert matches({"list_id": "users.lists.example"}, named) and matches({"list_id": "users of x *"}, named)
    assert not matches({"list_id": "lists.example"}, named)
    assert matches({"list_id": True, "bulk": True, "auto_submitted": True}, parsed)
    assert matches({"spam_verdict": ["suspect", "spam"], "spam_score": {"at_least": 6.5, "under": 7}}, parsed)
    assert matches({"auth": "fail"}, parsed) and matches(
        {"auth": {"spf": "softfail", "dkim": "pass"}}, parsed
    )
    assert not matches({"auth": {"dmarc": "fail"}}, parsed)
    lookalike = message(auth={"verdict": "pass", "findings": [{"symbol": "FROM_LOOKALIKE_DOMAIN"}]})
    assert matches({"auth": {"verdict": "pass", "findings": "FROM_LOOKALIKE_DOMAIN"}}, lookalike)
    assert matches({"auth": {"findings": ["NOT_ALIGNED", "FROM_LOOKALIKE_DOMAIN"]}}, lookalike)
    assert not matches({"auth": {"findings": "FROM_DISPLAY_NAME_ADDRESS"}}, lookalike)
    assert not matches({"auth": {"findings": "FROM_LOOKALIKE_DOMAIN"}}, parsed)
    assert matches({"injection_score": {"over": 0.5}, "injection_level": "high"}, parsed)
    assert matches({"attachment_type": ".pdf"}, parsed) and matches(
        {"attachment_type": "application/*"}, parsed
    )
    assert not matches({"attachment_type": "image/*"}, parsed)


def test_a_catastrophic_regex_is_bounded_and_reported() -> None:
    rules, errors = parse_rules(
        [
            {"name": "evil", "if": {"body": {"regex": "(x+x+)+y"}}, "then": [{"tag": "evil"}]},
            {"name": "after", "if": {"subject": {"regex": "(a|aa)+$"}}, "then": [{"tag": "after"}]},
        ],
        "rules",
    )
    assert errors == []
    parsed = message(body="x" * 5000)
    found = facts(parsed)
    started = time.perf_counter()
    matched = evaluate(rules, found)
    elapsed = time.perf_counter() - started
    assert matched == [] and elapsed < 5.0  # the regex alone would run for minutes
    assert "timed out" in found.errors[0]
    # A budget used up skips the rest of the message's regexes instead of running them.
    budget = RegexBudget(0.0)
    exhausted = Facts(parsed.data, parsed.headers, parsed.text, budget, raw=parsed.raw)
    assert evaluate(rules, exhausted) == [] and "used up" in exhausted.errors[0]


def test_a_regex_is_timed_by_its_own_cpu_not_the_other_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """`regex` times a search by the whole process's CPU: with threads hashing beside it, an
    ordinary search timed out at a fraction of its timeout, and its rule was undecided."""
    pattern, text = compile_regex(r"(?:invoice|receipt)\s+#?\d+"), "hello world " * 20000
    started = time.thread_time()
    for _ in range(5):
        RegexBudget().search(pattern, text)
    own = (time.thread_time() - started) / 5
    monkeypatch.setattr(match, "REGEX_TIMEOUT", own * 4)  # the search needs a quarter of it
    stop = threading.Event()

    def hash_beside() -> None:
        data = b"x" * (1 << 22)
        while not stop.is_set():
            hashlib.sha256(data).digest()  # in C, without the GIL: CPU of the process meanwhile

    # Four beside one search: the process spends its CPU at five times the search's rate.
    threads = [threading.Thread(target=hash_beside) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        results = [RegexBudget(60.0).search(pattern, text) is not None for _ in range(20)]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert results == [False] * 20


def count_threads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The functions sent to a worker thread from now on."""
    sent: list[object] = []
    real = asyncio.to_thread

    async def to_thread(function: Any, /, *args: Any, **kwargs: Any) -> Any:
        sent.append(function)
        return await real(function, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", to_thread)
    return sent


async def test_a_slow_regex_is_evaluated_again_off_the_event_loop_and_lands_in_rules_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rules, _ = parse_rules(
        [
            {"name": "evil", "if": {"body": {"regex": "(x+x+)+y"}}, "then": [{"tag": "e"}]},
            {"name": "after", "if": {"body": {"regex": "^x"}}, "then": [{"tag": "a"}]},
        ],
        "r",
    )
    threads = count_threads(monkeypatch)
    pipeline = Pipeline([StageSpec(RulesStage(RuleBook(tuple(rules))), 5)])
    outcome = await pipeline.run(message(body="x" * 5000))
    assert threads == [evaluate]  # the loop gave up within its short budget
    assert [r["rule"] for r in outcome.data["rules_applied"]] == ["after"]
    # Only what the full evaluation found: the inline attempt leaves no error behind.
    assert (
        len(outcome.data["rules_errors"]) == 1 and "timed out after 50 ms" in outcome.data["rules_errors"][0]
    )


SLOW = {"body": {"regex": "(x+x+)+y"}}  # catastrophic backtracking on a run of x's without a y


async def test_a_condition_that_cannot_be_decided_fails_closed_whatever_wraps_it() -> None:
    """A regex out of time once counted as no match: under `not:` the rule fired, so a message
    that makes a regex slow triggered what was meant for "everything that is not X"."""
    rules, errors = parse_rules(
        [
            {"name": "not-slow", "if": {"not": SLOW}, "then": [{"tag": "a"}]},
            {"name": "any-not", "if": {"any": [{"not": SLOW}, {"subject": "nope"}]}, "then": [{"tag": "b"}]},
            {
                "name": "all-not",
                "if": {"all": [{"not": SLOW}, {"from": "@example.org"}]},
                "then": [{"tag": "c"}],
            },
            # Decided whatever the regex would have said: true (any) or false (all).
            {"name": "any-true", "if": {"any": [SLOW, {"from": "@example.org"}]}, "then": [{"tag": "d"}]},
            {
                "name": "all-false",
                "if": {"not": {"all": [SLOW, {"subject": "nope"}]}},
                "then": [{"tag": "e"}],
            },
        ],
        "rules",
    )
    assert errors == []
    pipeline = Pipeline([StageSpec(RulesStage(RuleBook(tuple(rules))), 5)])
    outcome = await pipeline.run(message(body="x" * 5000))
    assert [r["rule"] for r in outcome.data["rules_applied"]] == ["any-true", "all-false"]
    not_applied = [e for e in outcome.data["rules_errors"] if "not applied" in e]
    assert [e.split('"')[1] for e in not_applied] == ["not-slow", "any-not", "all-not"]
    assert all("body: regex '(x+x+)+y'" in e for e in not_applied), not_applied
    assert all("timed out" in e or "used up" in e for e in not_applied), not_applied


def test_an_undecided_rule_with_stop_stops_the_rules_after_it() -> None:
    rules, _ = parse_rules(
        [
            {"name": "junk", "if": SLOW, "then": [{"move": "Junk"}], "stop": True},
            {"name": "reply", "then": [{"tag": "would-be-answered"}]},
        ],
        "rules",
    )
    found = facts(message(body="x" * 5000))
    assert evaluate(rules, found) == []
    assert found.errors[0].startswith('rule "junk" not applied: body: regex')
    assert found.errors[0].endswith("no later rule is evaluated (it has stop)")


def test_a_verdict_test_on_a_stage_that_failed_is_undecided() -> None:
    """A stage that failed on the message (its keys null) says nothing: `not: {spam_verdict: spam}`
    must not let a message that breaks the spam stage through; a stage not configured is false."""
    failed = message(spam=None, auth=None, injection=None)
    for test in (
        {"spam_verdict": "spam"},
        {"spam_score": {"over": 5}},
        {"auth": "fail"},
        {"auth": {"dkim": "fail"}},
        {"injection_level": "high"},
        {"injection_score": {"over": 0.5}},
    ):
        assert not matches({"not": test}, failed), test
        assert matches({"not": test})  # the stage is not configured
    found = facts(failed)
    (rule,), _ = parse_rules(
        [{"name": "r", "if": {"not": {"spam_verdict": "spam"}}, "then": ["mark_read"]}], "x"
    )
    assert evaluate([rule], found) == [] and found.errors == [
        'rule "r" not applied: the spam stage failed on this message'
    ]


async def test_ordinary_regex_rules_are_evaluated_on_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    rules, _ = parse_rules(
        [
            {"name": "help", "if": {"subject": {"regex": r"(?i)\b(support|help)\b"}}, "then": [{"tag": "h"}]},
            {"name": "none", "if": {"body": {"regex": "^never$"}}, "then": [{"tag": "n"}]},
        ],
        "r",
    )
    threads = count_threads(monkeypatch)
    # The inline budget is wall time: a loaded machine that descheduled the test must not send it
    # to a thread. Ordinary patterns stay on the loop whatever the budget; a slow one is tested above.
    monkeypatch.setattr(rules_engine, "InlineBudget", functools.partial(InlineBudget, 1.0))
    pipeline = Pipeline([StageSpec(RulesStage(RuleBook(tuple(rules))), 5)])
    outcome = await pipeline.run(message(subject="Need HELP now", body="lorem " * 20000))
    assert threads == []
    assert [r["rule"] for r in outcome.data["rules_applied"]] == ["help"]
    assert outcome.data["rules_errors"] == []


def all_headers_by_the_parser(raw: bytes) -> dict[str, list[str]]:
    """Every top-level header through the feed parser, unfolded: what conditions read, without
    the parser's fast path."""
    end = raw.find(b"\r\n\r\n")
    end = raw.find(b"\n\n") if end < 0 else end
    block = raw[: end if 0 <= end < MAX_HEADER_BYTES else MAX_HEADER_BYTES]
    found: dict[str, list[str]] = {}
    try:
        parsed = BytesHeaderParser(policy=compat32).parsebytes(block + b"\r\n\r\n")
        for name, value in parsed.raw_items():
            found.setdefault(str(name).lower(), []).append(" ".join(str(value).split()))
    except Exception:
        pass
    return found


@_FAST_PATH_SETTINGS
@given(
    raw=st.lists(st.sampled_from(_LINES), max_size=12).map(b"".join)
    | _PLAIN_MESSAGES
    | _FLAWED_MESSAGES
    | st.binary(max_size=80)
)
def test_every_header_is_read_as_the_parser_reads_it(raw: bytes) -> None:
    """Conditions on headers the message parser does not keep (list_id: List-Post, header: ...)
    read the whole block; a plain one without the feed parser, with the same result."""
    expected = all_headers_by_the_parser(raw)
    assert read_by_conditions(raw, expected) == expected


def read_by_conditions(raw: bytes, names: Iterable[str]) -> dict[str, list[str]]:
    """Each header as `Facts.values` reads it (from the block alone: nothing the parser kept)."""
    facts = Facts({}, {}, "", raw=raw)
    return {name: found for name in names if (found := facts.values(name))}


def test_a_plain_header_block_is_read_without_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    monkeypatch.setattr(facts_module, "_HEADERS", SimpleNamespace(parsebytes=calls.append))
    raw = b"From: a@example.org\r\nList-Post: <mailto:l@example.org>\r\n folded\r\n\r\nbody\r\n"
    assert read_by_conditions(raw, ["from", "list-post", "subject"]) == {
        "from": ["a@example.org"],
        "list-post": ["<mailto:l@example.org> folded"],
    }
    assert calls == []
    read_by_conditions(b"From x@y Sat\nSubject: envelope line first\n\nbody\n", ["subject"])
    assert len(calls) == 1  # not a plain block: the parser's


# -- parsing and its errors -------------------------------------------------------------------------


def test_errors_name_the_rule_and_the_key() -> None:
    errors = errors_of(
        [
            {"name": "a", "if": {"from": "@x.org", "subject": {"regex": "(unclosed"}}, "then": ["mark_read"]},
            {
                "name": "b",
                "if": {
                    "frm": "x",
                    "any": [
                        {"size": {"over": "big"}},
                        {"spam_verdict": "spamm"},
                        {"auth": {"findings": "FROM_LOOKALIKE"}},
                    ],
                },
                "then": [
                    {"mvoe": "x"},
                    {"add_flags": "\\Deleted"},
                    {"auto_reply": {"body": "{{ sbject }}"}},
                    {"add_keywords": "two words"},
                    {"forward": "not-an-address"},
                    {"report": "maybe"},
                    "move",
                    {"move": "A", "copy": "B"},
                ],
                "stop": "yes",
                "priority": 1,
            },
            {"name": "a", "then": ["stop"]},
            {"then": []},
            "not a rule",
        ]
    )
    assert errors == [
        'rules[0] "a".if.subject.regex: invalid regex: missing ) at position 9',
        'rules[1] "b".priority: unknown key',
        'rules[1] "b".if.frm: unknown key (did you mean "from"?)',
        'rules[1] "b".if.any[0].size.over: expected a size: bytes, or a number with K, M or G (1024-based)'
        ' like "10M"',
        'rules[1] "b".if.any[1].spam_verdict: unknown value "spamm": expected one of ham, suspect, spam',
        'rules[1] "b".if.any[2].auth.findings: unknown auth finding "FROM_LOOKALIKE"'
        ' (did you mean "FROM_LOOKALIKE_DOMAIN"?)',
        'rules[1] "b".then[0]: unknown action "mvoe" (did you mean "move"?)',
        'rules[1] "b".then[1].add_flags: \\Deleted is not allowed: use move (to Trash) instead',
        'rules[1] "b".then[2].auto_reply.body: unknown field "sbject" (did you mean "subject"?);'
        " fields: subject, sender, sender_address, sender_name, to, date, message_id, excerpt, folder,"
        " mailbox, rule",
        'rules[1] "b".then[3].add_keywords: "two words" is not a valid IMAP keyword'
        ' (ASCII, no spaces, \\ ( ) { % * " ]; at most 200)',
        'rules[1] "b".then[4].forward.to: "not-an-address" is not an address like name@example.com',
        'rules[1] "b".then[5].report: expected "spam" or "ham"',
        'rules[1] "b".then[6]: move needs an argument, e.g. `move: ...`',
        'rules[1] "b".then[7]: expected one action: a mapping with one key (move: Archive)'
        " or a name (mark_read)",
        'rules[1] "b".stop: expected true or false',
        'rules[2] "a".name: duplicate rule name (first used at rules[0])',
        "rules[3].name: missing required key",
        "rules[3].then: expected a non-empty list of actions",
        "rules[4]: expected a mapping with name, if, then",
    ]


def test_system_flags_in_any_case_take_their_canonical_spelling() -> None:
    # IMAP system flags are case-insensitive (RFC 3501).
    then = [{"add_flags": ["\\seen", "\\FLAGGED"]}, {"remove_flags": "\\answered"}]
    (rule,), errors = parse_rules([{"name": "r", "then": then}], "rules")
    assert errors == []
    assert [a.get("flags") for a in rule.actions] == [["\\Seen", "\\Flagged"], ["\\Answered"]]
    assert errors_of([{"name": "r", "then": [{"add_flags": "\\deleted"}]}]) == [
        'rules[0] "r".then[0].add_flags: \\Deleted is not allowed: use move (to Trash) instead'
    ]


def test_rules_files_global_and_per_mailbox(tmp_path: Path) -> None:
    (tmp_path / "global.yaml").write_text("rules:\n  - {name: g2, then: [{tag: g2}]}\n")
    (tmp_path / "box.yaml").write_text("- {name: m2, then: [{tag: m2}]}\n")
    data = {
        "rules": [{"name": "g1", "then": [{"tag": "g1"}]}],
        "rules_file": "global.yaml",
        "agents": [
            {
                "id": "a",
                "mailboxes": [
                    {
                        "id": "box",
                        "imap": {"host": "localhost", "tls": "none", "username": "u", "password": "p"},
                        "rules": [{"name": "m1", "then": [{"tag": "m1"}]}],
                        "rules_file": "box.yaml",
                    },
                    {
                        "id": "other",
                        "imap": {"host": "localhost", "tls": "none", "username": "v", "password": "p"},
                    },
                ],
            }
        ],
    }
    book = load_rules(parse_config(data, env={}, base_dir=tmp_path))
    assert [rule.name for rule in book.for_mailbox("box")] == ["g1", "g2", "m1", "m2"]
    assert [rule.name for rule in book.for_mailbox("other")] == ["g1", "g2"]
    (tmp_path / "box.yaml").write_text(
        "- {name: g1, then: [{tag: x}]}\n- {name: bad, then: [{move: {}}]}\n: :\n"
    )
    with pytest.raises(ConfigError) as bad:
        load_rules(parse_config(data, env={}, base_dir=tmp_path))
    assert bad.value.errors == [
        f"{tmp_path / 'box.yaml'}: line 3, column 1: expected <block end>, but found ':'"
    ]
    (tmp_path / "box.yaml").write_text("- {name: g1, then: [{tag: x}]}\n- {name: bad, then: [{move: {}}]}\n")
    with pytest.raises(ConfigError) as bad:
        load_rules(parse_config(data, env={}, base_dir=tmp_path))
    assert bad.value.errors == [
        f'{tmp_path / "box.yaml"}: rules[1] "bad".then[0].move.folder: expected a folder name',
        f"{tmp_path / 'box.yaml'}: rules[0] \"g1\".name: a global rule is already named 'g1'",
    ]


def test_the_example_configuration_has_valid_rules(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    text = re.sub(r"(?m)^(\s*password_file:).*$", r"\1 pw", EXAMPLE.read_text())
    (tmp_path / "gatewayd.yaml").write_text(text)
    book = load_rules(load_config(tmp_path / "gatewayd.yaml", env={}))
    assert [rule.name for rule in book.for_mailbox("support-inbox")] == ["newsletters"]


def test_smtp_section_is_checked_like_imap() -> None:
    base = {"id": "box", "imap": {"host": "localhost", "tls": "none", "username": "u", "password": "p"}}
    smtp = {"host": "smtp.example.com", "tls": "none", "password": "x", "retry_attempts": 0}
    with pytest.raises(ConfigError) as bad:
        parse_config({"agents": [{"id": "a", "mailboxes": [{**base, "smtp": smtp}]}]}, env={})
    assert bad.value.errors == [
        "agents[0].mailboxes[0].smtp.retry_attempts: expected an integer 1-100, got 0",
        'agents[0].mailboxes[0].smtp.tls: "none" sends mail in clear to a non-loopback host;'
        " set allow_insecure: true to allow it",
        "agents[0].mailboxes[0].smtp: a password needs a username",
    ]
    good = {"host": "smtp.example.com", "tls": "starttls", "username": "u", "password_env": "PW"}
    config = parse_config({"agents": [{"id": "a", "mailboxes": [{**base, "smtp": good}]}]}, env={"PW": "s3"})
    box = config.mailboxes()[0]
    assert box.smtp is not None and (box.smtp.port, box.smtp.password.reveal()) == (587, "s3")  # type: ignore[union-attr]
    assert box.address is None  # "u" is not an address


# -- safety (RFC 3834) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "data", "reason"),
    [
        ("", {}, None),
        ("Auto-Submitted: auto-replied\r\n", {}, "automatic"),
        ("Auto-Submitted: no\r\n", {}, None),
        ("X-Auto-Response-Suppress: OOF, AutoReply\r\n", {}, "X-Auto-Response-Suppress"),
        ("Precedence: junk\r\n", {}, "bulk or junk"),
        # A parameter or a comment after the value, any case, folded: still bulk.
        ("Precedence: bulk; x\r\n", {}, "bulk or junk"),
        ("Precedence:   BULK  \r\n", {}, "bulk or junk"),
        ("Precedence: List (newsletter)\r\n", {}, "bulk or junk"),
        ("Precedence:\r\n junk;x=1\r\n", {}, "bulk or junk"),
        ("Precedence: first-class\r\n", {}, None),
        ("Precedence: bulky\r\n", {}, None),
        ("List-Unsubscribe: <mailto:u@lists.example>\r\n", {}, "mailing list"),
        ("Return-Path: <>\r\n", {}, "bounce"),
        ("Return-Path: <MAILER-DAEMON@mx.example>\r\n", {}, "robot"),
        ("Return-Path: <noreply@shop.example>\r\n", {}, "robot"),
        ("Return-Path: <list-bounces@lists.example>\r\n", {}, "robot"),
        ("Return-Path: <me@gw.example>\r\n", {}, "own address"),
        ("Return-Path: <me+tag@gw.example>\r\n", {}, "own address"),
        # A no-reply From with a VERP bounce Return-Path: neither is a person.
        ("Return-Path: <b-1@mail.shop.example>\r\n", {"from": {"address": "NoReply@shop.example"}}, "robot"),
        ("Return-Path: <bounces+u=example.org@sendgrid.example>\r\n", {}, "robot"),
        ("Return-Path: <noreply+orders@shop.example>\r\n", {}, "robot"),
        ("Return-Path: <shop-no-reply@shop.example>\r\n", {}, "robot"),
        ("Return-Path: <MAILER-DAEMON>\r\n", {}, "not an address"),
        # One plain ASCII recipient or none: no second address, ESMTP parameter or line break.
        ("Return-Path: <a@x.example,victim@y.example>\r\n", {}, "not an address"),
        ("Return-Path: a@x.example NOTIFY=SUCCESS\r\n", {}, "not an address"),
        ("Return-Path: =?utf-8?q?a@x.example=0D=0ARCPT_TO:v@y.example?=\r\n", {}, "not an address"),
        ("Return-Path: <b\u00fccher@x.example>\r\n", {}, "not an address"),
        ("Return-Path: <bob@example.org>\r\n", {"from": {"address": "ME@gw.example"}}, "own address"),
        ("X-Loop: me@gw.example\r\n", {}, "X-Loop"),
        ("Content-Type: multipart/report; report-type=delivery-status\r\n", {}, "report"),
        ("", {"spam": {"verdict": "spam"}}, "spam verdict"),
        ("", {"spam": {"verdict": "suspect"}}, "spam verdict"),
        ("", {"auth": {"verdict": "fail"}}, "failed authentication"),
        ("", {"flags": ["$Junk"]}, "junk"),
        ("", {"folder": "Junk"}, "junk"),
    ],
)
def test_when_no_auto_reply_is_sent(headers: str, data: dict[str, Any], reason: str | None) -> None:
    found = facts(message(headers=headers, **data))
    refusal = refuse_reply(found, "me@gw.example", reply_target(found))
    assert (refusal is None) if reason is None else (reason in (refusal or "")), refusal


def test_reply_goes_to_the_return_path_then_reply_to_then_from() -> None:
    assert reply_target(facts(message("Return-Path: <env@example.org>\r\n"))) == "env@example.org"
    # The delivering server's, on top; not one the sender wrote further down.
    forged = "Return-Path: <env@example.org>\r\nX-A: b\r\nReturn-Path: <victim@example.net>\r\n"
    assert reply_target(facts(message(forged))) == "env@example.org"
    assert reply_target(facts(message("Reply-To: Desk <desk@example.org>\r\n"))) == "desk@example.org"
    assert reply_target(facts(message())) == "bob@example.org"


# -- templates and plans ----------------------------------------------------------------------------


@pytest.fixture
async def renderer() -> AsyncIterator[TemplateRenderer]:
    renderer = TemplateRenderer()
    yield renderer
    await renderer.close()


async def test_templates_are_sandboxed_and_bounded(renderer: TemplateRenderer) -> None:
    template = Template("Hi {{ sender_name }}{% for a in to %} [{{ a }}]{% endfor %}")
    assert (
        await renderer.render(template, {"sender_name": "Bob", "to": ["a@x", "b@x"]}) == "Hi Bob [a@x] [b@x]"
    )
    with pytest.raises(ValueError, match="unsafe"):
        await renderer.render(Template("{{ subject.__class__.__mro__ }}"), {"subject": "s"})
    for source in ('{{ "x" * 10**9 }}', "{{ 9 ** 9 ** 9 }}"):
        with pytest.raises(ValueError, match="template failed"):
            await renderer.render(Template(source), {})
    for name in ("range", "lipsum"):
        with pytest.raises(ValueError, match=f'unknown field "{name}"'):
            Template(f"{{% for i in {name}(10**9) %}}{{% endfor %}}")


async def test_a_template_not_done_in_time_fails_and_its_child_is_replaced(
    renderer: TemplateRenderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(renderer_module, "RENDER_TIMEOUT", 0.3)  # far below the CPU limit
    busy = Template("{% for a in excerpt %}" * 4 + "{% endfor %}" * 4 + "done")
    with pytest.raises(ValueError, match=r"not done within 0.3 s"):
        await renderer.render(busy, {"excerpt": "e" * 500})
    monkeypatch.setattr(renderer_module, "RENDER_TIMEOUT", 60.0)
    assert await renderer.render(Template("{{ subject|upper }}"), {"subject": "next"}) == "NEXT"


async def test_a_template_that_computes_is_rendered_apart_within_limits(
    renderer: TemplateRenderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loops, filters and operators run in a child process: running out of its CPU or memory
    fails the action; the daemon neither stalls nor grows."""
    # The CPU limit is what is tested: on a loaded machine 2 s of CPU can take more than the 10 s
    # wall-clock limit (tested on its own below).
    monkeypatch.setattr(renderer_module, "RENDER_TIMEOUT", 120.0)
    assert Template("Hi {{ sender_name }}{% if subject %}: {{ subject[:5] }}{% endif %}").plain
    assert not Template("{{ subject|upper }}").plain
    excerpt = {"excerpt": "e" * 500}
    nested = "{% for a in excerpt %}" * 4 + "{% endfor %}" * 4 + "done"
    with pytest.raises(ValueError, match="CPU"):
        await renderer.render(Template(nested), excerpt)
    for source in (
        "{{ excerpt|center(900000000)|length }}",
        "{{ '%900000000s' % excerpt }}",
        "{% macro double(s) %}{{ double(s ~ s) }}{% endmacro %}{{ double(excerpt) }}",
    ):
        with pytest.raises(ValueError, match="MemoryError"):
            await renderer.render(Template(source), excerpt)
    assert (
        await renderer.render(
            Template("{{ excerpt|upper|truncate(8, leeway=0) }}"), {"excerpt": "hello world"}
        )
        == "HELLO..."
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_the_render_child_leaves_the_daemons_stop_signals_to_the_daemon(
    renderer: TemplateRenderer, signum: signal.Signals
) -> None:
    """systemd's stop sends SIGTERM to every process of the unit, Ctrl-C SIGINT to the whole
    process group: the child outlives them, so a template the shutdown still renders renders."""
    shout = Template("{{ subject|upper }}")
    assert await renderer.render(shout, {"subject": "a"}) == "A"
    worker = renderer._worker  # the child itself: the test is about its life
    assert worker is not None
    os.kill(worker.pid, signum)
    # No await in between: the signal reaches the child before the next template does.
    assert await renderer.render(shout, {"subject": "b"}) == "B"
    assert renderer._worker is worker


async def test_the_render_child_is_kept_and_replaced_after_a_runaway_or_a_cancel(
    renderer: TemplateRenderer,
) -> None:
    """One child serves template after template (a start costs ~0.1 s of CPU); one that ran away,
    or whose caller gave up, is replaced, and its late answer never answers the next template."""
    shout = Template("{{ subject|upper }}")
    assert await renderer.render(shout, {"subject": "a"}) == "A"
    first = renderer._worker  # the child itself: the test is about its life
    assert first is not None
    assert await renderer.render(shout, {"subject": "b"}) == "B"
    assert renderer._worker is first
    runaway = Template("{% for a in excerpt %}" * 4 + "{% endfor %}" * 4 + "{{ subject }}")
    with pytest.raises(ValueError, match="CPU"):
        await renderer.render(runaway, {"excerpt": "e" * 500, "subject": "never"})
    assert await renderer.render(shout, {"subject": "c"}) == "C"
    assert renderer._worker not in (None, first)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(renderer.render(runaway, {"excerpt": "e" * 500, "subject": "late"}), 0.2)
    assert await renderer.render(shout, {"subject": "d"}) == "D"


async def test_a_field_the_message_lacks_is_empty_in_a_template(renderer: TemplateRenderer) -> None:
    raw = b"From: bob@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"  # no name, Date or Message-ID
    parsed = parse(FetchedMessage("INBOX", 7, 1, raw, len(raw), (), None))
    context = context_for(parsed.data, "box", None, "r")
    text = "{{ sender.name|upper }}|{{ date }}|{{ message_id }}|{{ mailbox.address }}|{{ sender_name }}"
    assert await renderer.render(Template(text), context) == "||||bob@example.org"


def test_compiling_a_template_evaluates_nothing() -> None:
    """Jinja folds constant expressions while compiling; these would take 300 MB at load."""
    tracemalloc.start()
    try:
        Template("{{ ''|center(100000000) }}{{ '%100000000s' % '' }}{{ 'x'|replace('x', 'y' * 100000) }}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024


def test_a_template_with_an_unknown_filter_is_a_configuration_error() -> None:
    (error,) = errors_of([{"name": "r", "then": [{"auto_reply": "Hi {{ sender_name|captalize }}"}]}])
    assert error == 'rules[0] "r".then[0].auto_reply.body: template syntax error on line 1: ' + (
        "No filter named 'captalize'."
    )


def test_an_unknown_filter_or_test_in_a_branch_is_a_configuration_error() -> None:
    """Jinja looks up what an `{% if %}` branch uses only when it runs: the first message taking it
    would fail its auto-reply."""
    for body, unknown in [
        ("{% if subject %}{{ subject|shout }}{% endif %}", "filter named 'shout'"),
        ("Hi{% if sender_name is shouty %}!{% endif %}", "test named 'shouty'"),
    ]:
        (error,) = errors_of([{"name": "r", "then": [{"auto_reply": body}]}])
        where = 'rules[0] "r".then[0].auto_reply.body'
        assert error == f"{where}: template syntax error on line 1: No {unknown}."
    Template("{% if sender_name is defined %}{{ sender_name|title }}{% endif %}")  # known ones load


def test_an_auto_reply_from_name_is_one_printable_line() -> None:
    """A CR passed the old check (LF only), and then every reply failed to compose."""
    for name in ("Desk\rBcc: x@y.example", "Desk\nBcc: x@y.example", "Desk\x00"):
        (error,) = errors_of([{"name": "r", "then": [{"auto_reply": {"body": "Hi", "from_name": name}}]}])
        assert error.startswith('rules[0] "r".then[0].auto_reply.from_name: expected a display name'), error
    composed = compose.reply({"subject": "Grüße"}, "me@gw.example", "bob@example.org", "Hi", "Désk")
    assert b"From: =?utf-8?q?D=C3=A9sk?= <me@gw.example>\r\n" in composed.message
    assert b"Subject: Re: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n" in composed.message


def test_an_address_that_is_not_ascii_is_written_as_utf8_never_as_an_encoded_word() -> None:
    """`To: =?utf-8?q?j=C3=B6rg?=@...` is no address (RFC 2047, section 5): RFC 6532 writes it as
    UTF-8, and the Message-ID keeps the domain's ASCII form, since replies quote it."""
    to = ["jörg@bücher.example", "b@x.org"]
    forwarded = compose.forward({"subject": "x"}, "me@gw.example", to, "", b"")
    assert "To: jörg@bücher.example, b@x.org\r\n".encode() in forwarded.message
    replied = compose.reply({"subject": "Grüße"}, "jörg@bücher.example", "bob@example.org", "Hi", "Désk")
    head = replied.message.partition(b"\r\n\r\n")[0].decode()
    assert "From: Désk <jörg@bücher.example>\r\n" in head and "X-Loop: jörg@bücher.example\r\n" in head
    assert replied.message_id.endswith("@xn--bcher-kva.example>") and "=?" not in head


def test_nothing_from_the_mail_adds_a_header_to_an_auto_reply() -> None:
    """The email package decodes encoded words in what it is given and wrote a decoded CR LF as
    is: a subject or Message-ID spelling one added a Bcc (or a whole body) to the reply."""
    inject = "=?utf-8?q?x=0D=0ABcc:_victim@y.example=0D=0A=0D=0Aspam?="
    data = {
        "subject": f"Hello {inject}\u2028X-Sep: 1",
        "message_id": f"{inject}<id@x.example>",
        "references": ["<r1@x.example>", "Bcc:victim@y.example", "<=?utf-8?q?=0D=0A?=@x>"],
    }
    composed = compose.reply(data, "me@gw.example", "bob@example.org", "Hi")
    head, _, body = composed.message.partition(b"\r\n\r\n")
    names = [line.split(b":")[0] for line in head.split(b"\r\n") if not line.startswith((b" ", b"\t"))]
    assert names == [
        *(b"From", b"To", b"Subject", b"Date", b"Message-ID", b"In-Reply-To", b"References"),
        *(b"Auto-Submitted", b"X-Auto-Response-Suppress", b"X-Loop"),
        *(b"Content-Type", b"Content-Transfer-Encoding", b"MIME-Version"),
    ], head
    assert b"victim" not in composed.message.replace(inject.encode(), b"")
    assert body == b"Hi\r\n"
    parsed = email.message_from_bytes(composed.message, policy=email.policy.default)
    assert parsed["In-Reply-To"] == "<id@x.example>"
    assert parsed["References"] == "<r1@x.example> <id@x.example>"
    assert parsed["Bcc"] is None and parsed.get_content().strip() == "Hi"


def test_keywords_are_ascii_atoms_and_inbox_is_one_folder_whatever_its_case() -> None:
    """Dovecot answers a STORE of `Ünï` with BAD (8-bit data in an atom), losing the whole STORE;
    `move: inbox` of a message in INBOX moved it onto itself, again and again (see the
    integration test)."""
    (error,) = errors_of([{"name": "r", "then": [{"add_keywords": ["$Label1", "Ünï"]}]}])
    assert error.startswith('rules[0] "r".then[0].add_keywords: "Ünï" is not a valid IMAP keyword'), error
    rules, errors = parse_rules(
        [{"name": "r", "then": [{"move": " inbox "}, {"copy": {"folder": "Inbox", "create": True}}]}], "rules"
    )
    assert errors == [] and [a.get("folder") for a in rules[0].actions] == ["INBOX", "INBOX"]


def test_plan_orders_steps_and_keeps_one_move() -> None:
    rules, _ = parse_rules(
        [
            {"name": "a", "then": [{"move": "A"}, {"forward": "x@y.example"}, {"add_keywords": "k"}]},
            {
                "name": "b",
                "then": [{"move": "B"}, {"report": "spam"}, "mark_read", "drop_event", {"tag": "t"}],
            },
        ],
        "rules",
    )
    plan = build(rules)
    assert [step["kind"] for step in plan["steps"]] == ["report", "store", "store", "move", "move", "send"]
    assert plan["steps"][4]["preset"] == {"outcome": "skipped", "reason": 'already moved by rule "a"'}
    assert plan["drop"] is True and plan["tags"] == ["t"]
    assert build(rules, gmail=True)["steps"][1]["kind"] == "store_labels"


async def test_dry_run_reports_what_would_happen() -> None:
    rules, _ = parse_rules(
        [
            {"name": "one", "if": {"subject": "report"}, "then": [{"move": "Reports"}, "mark_read", "stop"]},
            {"name": "two", "then": [{"tag": "never"}]},
        ],
        "rules",
    )
    pipeline = Pipeline([StageSpec(RulesStage(RuleBook(tuple(rules))), 5)])
    outcome = await pipeline.run(message())
    data = outcome.data
    assert [rule["rule"] for rule in data["rules_applied"]] == ["one"]
    assert [a["outcome"] for a in data["rules_applied"][0]["actions"]] == ["dry_run", "dry_run", "ok"]
    assert (
        data["folder"] == "Reports" and "\\Seen" in data["flags"] and data["moved_from"]["folder"] == "INBOX"
    )


def test_rules_file_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text("- " + "[" * 5000)
    data = {"rules_file": "rules.yaml", "agents": [{"id": "a"}]}
    with pytest.raises(ConfigError) as caught:
        load_rules(parse_config(data, env={}, base_dir=tmp_path))
    assert caught.value.errors == [f"{tmp_path / 'rules.yaml'}: invalid YAML: nested too deeply"]


def alias_bomb(levels: int) -> str:
    """A rule whose condition is `levels` nested `all:` of ten aliases each: 10**levels conditions."""
    lines = ["- name: laughs", "  if:", "    all:", "      - &c0 {subject: lol}"]
    lines += [f"      - &c{i} {{all: [{', '.join([f'*c{i - 1}'] * 10)}]}}" for i in range(1, levels + 1)]
    return "\n".join([*lines, "  then: [mark_read]", ""])


def test_rules_file_with_aliases_expanding_past_the_limit_is_a_config_error(tmp_path: Path) -> None:
    # Five levels (about 3*10**5 nodes) is past the limit but still parses on code without it, where
    # this fails rather than hangs; nine would stall a reload for hours.
    (tmp_path / "rules.yaml").write_text(alias_bomb(5))
    data = {"rules_file": "rules.yaml", "agents": [{"id": "a"}]}
    with pytest.raises(ConfigError) as caught:
        load_rules(parse_config(data, env={}, base_dir=tmp_path))
    where = f"{tmp_path / 'rules.yaml'}: line 1, column 1"
    assert caught.value.errors == [f"{where}: aliases expand the document past 100000 nodes"]
    (tmp_path / "rules.yaml").write_text(
        "- {name: a, if: &c {subject: x}, then: [mark_read]}\n- {name: b, if: *c, then: [mark_read]}\n"
    )
    assert load_rules(parse_config(data, env={}, base_dir=tmp_path)).count == 2  # aliases themselves are fine


@pytest.mark.parametrize(
    ("rules", "error"),
    [
        (  # a recursive alias
            "- name: a\n  if: &c {all: [*c]}\n  then: [mark_read]\n",
            "line 1, column 1: aliases expand the document past 100000 nodes",
        ),
        (  # a date that does not exist
            "- name: a\n  if: {subject: 2026-02-30}\n  then: [mark_read]\n",
            "line 2, column 17: not a valid timestamp (quote it to make it a string)",
        ),
    ],
    ids=["recursive-alias", "date-that-does-not-exist"],
)
def test_rules_file_yaml_cannot_build_is_a_config_error(tmp_path: Path, rules: str, error: str) -> None:
    (tmp_path / "rules.yaml").write_text(rules)
    data = {"rules_file": "rules.yaml", "agents": [{"id": "a"}]}
    with pytest.raises(ConfigError) as caught:
        load_rules(parse_config(data, env={}, base_dir=tmp_path))
    assert caught.value.errors == [f"{tmp_path / 'rules.yaml'}: {error}"]


def test_rules_file_with_a_control_character_names_its_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text("- name: a\n  then: [tag\x07]\n")
    data = {"rules_file": "rules.yaml", "agents": [{"id": "a"}]}
    with pytest.raises(ConfigError) as caught:
        load_rules(parse_config(data, env={}, base_dir=tmp_path))
    where = f"{tmp_path / 'rules.yaml'}: line 2, column 13"
    assert caught.value.errors == [f"{where}: invalid YAML: character U+0007 is not allowed (a binary file?)"]
