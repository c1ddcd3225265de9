"""The message parser's shortcuts give what the stdlib computation gives, on inputs that would show
a wrong shortcut."""

from __future__ import annotations

from email.message import Message
from email.policy import compat32
from typing import Any

import pytest

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
