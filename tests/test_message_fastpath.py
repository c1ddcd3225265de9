"""The message parser's shortcuts give what the stdlib computation gives, on inputs that would show
a wrong shortcut."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.policy import compat32
from email.utils import parsedate_tz
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.message import fields
from gatewayd.message import text as text_module
from gatewayd.message.structure import _MAX_CACHED_PARAMS_CHARS, _GuardedMessage

_HEADER_SETS: list[list[tuple[str, str]]] = [
    [],
    [("Content-Type", 'text/plain; charset="us-ascii"')],
    [("CONTENT-TYPE", "text/html; CHARSET=UTF-8; format=flowed")],
    # The first field counts; a later one must not leak into the cached result.
    [("Content-Type", "text/plain; charset=koi8-r"), ("content-type", "text/plain; charset=utf-8")],
    [("Content-Type", "text/plain"), ("Content-Type", "text/plain; charset=utf-8")],
    # Quoted semicolons and equals signs, bare attributes, empty values, stray separators.
    [("Content-Type", 'text/plain;; name="a;b=c.txt"; flag; charset=; ;x="y"')],
    [("Content-Type", "multipart/mixed; boundary=\"==_b;1\"; Boundary='other'")],
    # RFC 2231: continuations, charset and language, percent escapes, an unknown charset.
    [
        ("Content-Type", "application/pdf; name*0*=utf-8''Gr%C3%B6%C3%9Fe; name*1=.pdf"),
        ("Content-Disposition", "attachment; filename*=iso-8859-1'de'%E4rger.txt"),
    ],
    [("Content-Type", "text/plain; charset*=x-unknown''utf%2D8")],
    [("Content-Disposition", 'inline; filename="a\\"b.txt"'), ("Content-Type", "image/png; name=x.png")],
    # Raw 8-bit bytes: compat32 hands the value out as a Header object, which is not cached.
    [("Content-Type", 'text/plain; name="Gr\udcc3\udcb6\udcc3\udc9fe.txt"; charset=utf-8')],
    # Content types the stdlib reads as text/plain, and one with parameters only.
    [("Content-Type", "text")],
    [("Content-Type", "text/plain/extra; charset=utf-8")],
    [("Content-Type", " ; charset=utf-8")],
    # Longer than the cache takes.
    [("Content-Type", "text/plain; charset=utf-8; " + "x=" + "y" * _MAX_CACHED_PARAMS_CHARS)],
]


def _messages(fields: list[tuple[str, str]]) -> tuple[Message, Message]:
    plain, guarded = Message(policy=compat32), _GuardedMessage(policy=compat32)
    for name, value in fields:
        plain.set_raw(name, value)
        guarded.set_raw(name, value)
    return plain, guarded


def _outcome(call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except Exception as exc:  # the same exception, if the stdlib raises
        return type(exc), str(exc)


def _queries(msg: Message) -> list[Any]:
    results = []
    for header in ("content-type", "Content-Disposition", "x-missing"):
        results.append(_outcome(msg.__contains__, header))
        results.append(_outcome(msg.get_params, None, header))
        results.append(_outcome(msg.get_params, "fail", header, unquote=False))
        for param in ("charset", "NAME", "filename", "boundary", "flag", "x", "absent"):
            results.append(_outcome(msg.get_param, param, "fail", header))
            results.append(_outcome(msg.get_param, param, None, header, unquote=False))
    results.append(_outcome(msg.get, "content-type"))
    calls = (msg.get_content_charset, msg.get_filename, msg.get_boundary, msg.get_content_type)
    for call in (*calls, msg.get_content_maintype, msg.get_content_subtype, msg.get_default_type):
        results.append(_outcome(call))
    return results


@pytest.mark.parametrize("fields", _HEADER_SETS)
def test_cached_parameters_match_the_stdlib(fields: list[tuple[str, str]]) -> None:
    plain, guarded = _messages(fields)
    expected = _queries(plain)
    assert _queries(guarded) == expected
    assert _queries(guarded) == expected  # from the cache this time


def test_cached_parameters_are_not_shared() -> None:
    value = "text/plain; charset=utf-8; name=a.txt"
    expected = _messages([("Content-Type", value)])[0].get_params(unquote=False)
    first = _GuardedMessage(policy=compat32)
    first.set_raw("Content-Type", value)
    params = first.get_params(unquote=False)
    assert params is not None
    params.append(("evil", "1"))
    params[0] = ("changed", "")
    second = _GuardedMessage(policy=compat32)
    second.set_raw("Content-Type", value)
    assert second.get_params(unquote=False) == expected


def test_cached_parameters_follow_header_changes() -> None:
    plain, guarded = _messages([("Content-Type", "text/plain; charset=us-ascii")])
    for msg in (plain, guarded):
        assert msg.get_content_charset() == "us-ascii"
        msg.set_param("charset", "utf-8")
        msg.replace_header("content-type", msg["content-type"] + "; name=b.txt")
        msg.add_header("Content-Disposition", "attachment", filename="c.txt")
    assert _queries(guarded) == _queries(plain)
    for msg in (plain, guarded):
        del msg["content-type"]
        msg.del_param("filename", "content-disposition")
    assert _queries(guarded) == _queries(plain)


def test_cached_content_type_keeps_the_default_type() -> None:
    # A part of a multipart/digest without its own Content-Type is message/rfc822 (RFC 2046).
    plain, guarded = _messages([("Subject", "no type")])
    for msg in (plain, guarded):
        msg.set_default_type("message/rfc822")
    assert _queries(guarded) == _queries(plain)
    assert guarded.get_content_type() == "message/rfc822"


_LONG_NUMBER = re.compile(r"(?<![\d:+-])\d{3,}(?![\d:])")


def _date_by_parsedate(value: str | None) -> str | None:
    """fields.date as it was before its fast path: parsedate_tz for every value."""
    if not value:
        return None
    parts = parsedate_tz(value)
    if parts is None:
        return fields._to_rfc3339(datetime.fromisoformat(value.strip()))
    if any(int(written) < 100 for written in _LONG_NUMBER.findall(value)):
        return None
    year, month, day, hour, minute, second = parts[:6]
    if 100 <= year < 200:
        year += 1900
    offset = parts[9] or 0
    if abs(offset) >= 24 * 3600:
        offset = 0
    moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC) - timedelta(seconds=offset)
    return fields._to_rfc3339(moment)


def _check_date(value: str) -> None:
    common = fields._common_date(value)
    if common is not None:
        assert common == parsedate_tz(value)
    assert _outcome(fields.date, value) == _outcome(_date_by_parsedate, value)


_DATES = [
    "Thu, 22 Aug 2002 09:15:25 -0400",
    "Thu, 22 Aug 2002 09:15:25 -0400 (EDT)",
    "Tue,  3 Sep 2002 18:17:30 +0200 (CEST)",
    "29 Aug 2002 11:19:27 -0400",
    "thu, 22 aug 2002 09:15:25 +0000",
    "Xyz, 22 AUG 2002 09:15:25 +0000",
    "Thu, 22 May 2002 09:15:25 -0000",  # "may" is a month twice in parsedate's table
    "Thu, 22 Aug 2002 09:15:25 +0000 ()",
    "Thu, 22 Aug 2002 09:15:25 +9999",  # a nonsense zone
    "Thu, 22 Aug 2002 09:15:25 +0099",
    "Thu, 22 Aug 2002 09:15:25 -2359",
    "Thu, 22 Aug 2002 09:15:25 +2400",
    "Thu, 31 Feb 2002 09:15:25 +0000",  # no such day
    "Thu, 00 Aug 2002 09:15:25 +0000",
    "Thu, 32 Aug 2002 09:15:25 +0000",
    "Sat, 31 Dec 2016 23:59:60 +0000",  # a leap second
    "Thu, 22 Aug 2002 24:00:00 +0000",
    "Thu, 22 Aug 2002 09:60:25 +0000",
    "Thu, 22 Aug 0001 09:15:25 +0000",  # years as written: refused, or since 1900
    "Thu, 22 Aug 0099 09:15:25 +0000",
    "Thu, 22 Aug 0100 09:15:25 +0000",
    "Thu, 22 Aug 0102 09:15:25 +0000",
    "Thu, 22 Aug 0999 09:15:25 +0000",
    "Thu, 22 Aug 1000 00:00:00 +0001",  # leaves the four-digit years by its zone
    "Fri, 31 Dec 9999 23:59:59 -0001",
    "Fri, 31 Dec 9999 23:59:59 -2359",
    "Thu, 22 Aug 02 09:15:25 -0400",  # obsolete forms
    "Thu, 22 Aug 2002 09:15 -0400",
    "Thu, 22 Aug 2002 09.15.25 -0400",
    "Thu, 22 Aug 2002 09:15:25 EDT",
    "Thu, 22 Aug 2002 09:15:25 GMT+1",
    "Thu, 22 Aug 2002 09:15:25 +-0500",
    "Thu, 22 Aug 2002 09:15:25 01800",
    "Thu, 22 Aug 2002 09:15:25",
    "Thu 22 Aug 2002 09:15:25 +0000",
    "Thu,22 Aug 2002 09:15:25 +0000",
    "22-Aug-2002 09:15:25 +0000",
    "Aug 22 2002 09:15:25 +0000",
    "Thu, Aug 22 2002 09:15:25 +0000",
    "Thu, 22 Foo 2002 09:15:25 +0000",
    "Thu, 22 August 2002 09:15:25 +0000",
    "Thu, 22 Aug 2002 09:15:25 +0000 (added by postmaster@example.com 12345)",
    "Thu, 22 Aug 2002 09:15:25 +0000 (0012)",
    "Thu, 22 Aug 2002 09:15:25 +0000 x 0012",
    "Thu, 22 Aug 2002 09:15:25 +0000 ",
    " Thu, 22 Aug 2002 09:15:25 +0000",
    "Thu,\t22 Aug 2002 09:15:25 +0000",
    "Thu, 22\u00a0Aug 2002 09:15:25 +0000",
    "Thu, \u0662\u0662 Aug 2002 09:15:25 +0000",  # digits beyond ASCII
    "Thu, 22 Aug \uff12\uff10\uff10\uff12 09:15:25 +0000",
    "Thu, 22 Aug 2002 09:15:25 +\u0660\u0661\u0660\u0660",
    "2002-08-22T10:00:00+02:00",
    "Sat Sep 21 08:18:08 2002",
    "2002/09/14 Sat 13:06:03 GMT",
    "yesterday",
    "",
    " ",
]


@pytest.mark.parametrize("value", _DATES)
def test_common_dates_read_as_parsedate_reads_them(value: str) -> None:
    _check_date(value)


def test_common_dates_take_the_fast_path() -> None:
    assert fields._common_date("Thu, 22 Aug 2002 09:15:25 -0400 (EDT)") == parsedate_tz(
        "Thu, 22 Aug 2002 09:15:25 -0400"
    )
    assert fields._common_date("29 Aug 2002 11:19:27 +0130") is not None


def _number(digits: int, usual: int | None = None) -> st.SearchStrategy[str]:
    """Numbers written with `digits` digits, half of them below `usual` (a valid hour, say)."""
    numbers = st.integers(0, 10**digits - 1)
    if usual is not None:
        numbers = st.one_of(st.integers(0, usual - 1), numbers)
    return numbers.map(lambda n: f"{n:0{digits}}")


# A date of the common form, piece by piece: each piece as that form has it, and another way
# ("" and other digits, spaces, signs and words) to show where the forms part.
_DIGITS = st.text("0123456789", max_size=5)
_SPACES = st.sampled_from(["", "  ", "\t", "\u00a0", " \t"])
_DATE_PIECES: list[tuple[st.SearchStrategy[str], st.SearchStrategy[str]]] = [
    (st.sampled_from(["", "Thu, ", "Thu,  ", "sun, "]), st.sampled_from(["thu ", "Thu,", "2, ", ", "])),
    (st.one_of(_number(1), _number(2, 32)), _DIGITS),
    (st.just(" "), _SPACES),
    (st.sampled_from(["Aug", "aug", "MAY", "Dec", "jAn"]), st.sampled_from(["Foo", "August", "", "A g"])),
    (st.just(" "), _SPACES),
    (st.one_of(st.integers(1000, 9999).map(str), _number(4)), _DIGITS),
    (st.just(" "), _SPACES),
    (_number(2, 24), _DIGITS),
    (st.just(":"), st.sampled_from([".", "", "::"])),
    (_number(2, 60), _DIGITS),
    (st.just(":"), st.sampled_from([".", "", ":00:"])),
    (_number(2, 61), _DIGITS),
    (st.just(" "), _SPACES),
    (st.sampled_from(["+", "-"]), st.sampled_from(["", "+-", "GMT", "EDT", "z", "GMT+"])),
    (st.one_of(_number(2, 24).map(lambda h: h + "00"), _number(4)), _DIGITS),
    (st.sampled_from(["", " (EDT)", " ()"]), st.sampled_from([" (0100)", " (a b)", " x", " ", "(EDT)"])),
]


@st.composite
def _dates(draw: st.DrawFn) -> str:
    """A date of the common form, or one with a piece or two written another way."""
    other = set(draw(st.lists(st.integers(0, len(_DATE_PIECES) - 1), max_size=2)))
    return "".join(draw(odd if i in other else usual) for i, (usual, odd) in enumerate(_DATE_PIECES))


@settings(max_examples=3000, deadline=None)
@given(_dates())
def test_generated_dates_read_as_parsedate_reads_them(value: str) -> None:
    _check_date(value)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60))
def test_any_text_dates_read_as_parsedate_reads_them(value: str) -> None:
    _check_date(value)


def _references_by_regex(value: str) -> list[str]:
    """fields.references as it was: each word split by a regular expression."""
    return [token for word in value.split() for token in re.split(r"(?<=>)(?=<)", word) if token]


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "<a@x>",
        "<a@x><b@y>",
        "<a@x>><b@y>",
        "x><><y",
        "><",
        ">><<",
        "<a@x> \t<b@y>\u00a0<c@z>",
        "a>\n<b",
    ],
)
def test_references_split_as_the_regex_splits(value: str) -> None:
    assert fields.references(value) == _references_by_regex(value)


@settings(max_examples=1000, deadline=None)
@given(
    st.text(st.sampled_from(["<", ">", "a", "@", " ", "\t", "\u00a0", "\u2028", "\x1c", "\n"]), max_size=40)
)
def test_any_references_split_as_the_regex_splits(value: str) -> None:
    assert fields.references(value) == _references_by_regex(value)


_OLD_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x9f]")


def _collapse_by_split(text: str) -> str:
    """text.collapse as it was: controls made spaces, then a split and a join."""
    return " ".join(_OLD_CONTROLS.sub(" ", text).split())


@pytest.mark.parametrize(
    "text",
    ["", " ", "a", "  a  b  ", "\x00a\x1fb\x7f", "a\t\n\x0b\x0c\r\x1c\x1d\x1e\x1fb", "a \x85b\u00a0c\u2028"],
)
def test_collapse_gives_what_split_and_join_give(text: str) -> None:
    assert text_module.collapse(text) == _collapse_by_split(text)


@settings(max_examples=2000, deadline=None)
@given(st.text(st.characters(max_codepoint=0x7F), max_size=60) | st.text(max_size=30))
def test_collapse_gives_what_split_and_join_give_for_any_text(text: str) -> None:
    assert text_module.collapse(text) == _collapse_by_split(text)
