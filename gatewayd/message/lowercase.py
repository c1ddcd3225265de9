"""str.lower() as CPython does it, in the modules compiled by mypyc (setup.py) too.

mypyc (mypy 2.4) compiles `text.lower()` to its own routine, which maps each character alone and
so misses the one rule that looks at a character's neighbours: a capital sigma ends a word as "ς",
not "σ" (Unicode's Final_Sigma). Those modules call `lower(text)` instead (tests/test_native.py
checks that none calls `.lower()` on a str). Its argument is not known to be a str here, so
compiled code calls the method CPython gives it.
"""

from __future__ import annotations

from typing import Any, overload


@overload
def lower(text: str) -> str: ...
@overload
def lower(text: bytes) -> bytes: ...


def lower(text: Any) -> Any:
    """`text.lower()` by CPython's method (Final_Sigma included), for a str or, typed Any, bytes."""
    return text.lower()
