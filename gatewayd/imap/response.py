"""FETCH responses read item by item, for answers with several literals and nested lists
(BODYSTRUCTURE, parts fetched by section).

aioimaplib hands an answer over as text lines and literals: `1 FETCH (UID 7 BODY[2]<0> {67}`, the
67 bytes as a bytearray, ` BODY[1.MIME] {43}`, the next literal, `)`. Here that becomes, per UID,
the item names (upper-cased, a partial fetch's `<origin>` dropped) mapped to their values: an
atom, a string or a literal as bytes, NIL as None, a parenthesised list as a list.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import TypeAlias

Value: TypeAlias = bytes | list["Value"] | None

# One token of a text line: a parenthesis, a quoted string, a literal's announcement (at the end
# of the line), or an atom (a section in brackets kept with its item name: `BODY[1.MIME]<0>`).
_TOKEN = re.compile(
    rb'\s*(?:(?P<open>\()|(?P<close>\))|"(?P<quoted>(?:[^"\\]|\\.)*)"|\{(?P<literal>\d+)\+?\}\s*\Z'
    rb'|(?P<atom>[^\s()"\[\]{]+(?:\[[^\]]*\][^\s()"{]*)?))'
)
_ESCAPED = re.compile(rb"\\(.)")
_ORIGIN = re.compile(rb"<\d+>\Z")
_OPEN, _CLOSE = object(), object()


def fetch_items(lines: Sequence[bytes | bytearray]) -> dict[int, dict[bytes, Value]]:
    """UID -> item name -> value, for each `N FETCH (...)` response in `lines` that has a UID."""
    found: dict[int, dict[bytes, Value]] = {}
    top = _nest(_tokens(lines))
    for position in range(len(top) - 2):
        number, word, items = top[position : position + 3]
        if not (
            isinstance(number, bytes) and number.isdigit() and word == b"FETCH" and isinstance(items, list)
        ):
            continue
        named = {
            _ORIGIN.sub(b"", name.upper()): value
            for name, value in zip(items[::2], items[1::2], strict=False)
            if isinstance(name, bytes)
        }
        uid = named.get(b"UID")
        if isinstance(uid, bytes) and uid.isdigit():
            found.setdefault(int(uid), {}).update(named)
    return found


def _tokens(lines: Sequence[bytes | bytearray]) -> Iterator[object]:
    """Parentheses as _OPEN and _CLOSE, every other token as its value; text that is no token
    (a stray quote or brace) is skipped."""
    expect_literal = False
    for line in lines:
        if isinstance(line, bytearray):
            if expect_literal:
                yield bytes(line)
            expect_literal = False
            continue
        expect_literal = False
        position = 0
        while position < len(line):
            match = _TOKEN.match(line, position)
            if match is None or match.end() == position:
                position += 1
                continue
            position = match.end()
            if match["open"]:
                yield _OPEN
            elif match["close"]:
                yield _CLOSE
            elif match["quoted"] is not None:
                yield _ESCAPED.sub(rb"\1", match["quoted"])
            elif match["literal"] is not None:
                expect_literal = True
            elif match["atom"] is not None:
                yield None if match["atom"].upper() == b"NIL" else match["atom"]


def _nest(tokens: Iterator[object]) -> list[Value]:
    """The tokens as nested lists; an unbalanced parenthesis ends or is ignored, never raises."""
    stack: list[list[Value]] = [[]]
    for token in tokens:
        if token is _OPEN:
            inner: list[Value] = []
            stack[-1].append(inner)
            stack.append(inner)
        elif token is _CLOSE:
            if len(stack) > 1:
                stack.pop()
        elif token is None or isinstance(token, bytes):
            stack[-1].append(token)
    return stack[0]
