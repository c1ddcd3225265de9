"""The Accept header (RFC 9110 12.5.1): how much a client wants a media type, `q=0` meaning not at all.

The most specific range that names a type decides its quality (`text/event-stream` over `text/*`
over `*/*`); a type no range names is not acceptable. No header, or one without a single valid
range, accepts anything. Ranges that cannot be read (no `/`, a bad `q`) are skipped, not refused:
a client's odd header must not cost it the stream.
"""

from __future__ import annotations

import re

from aiohttp import hdrs, web

EVENT_STREAM = "text/event-stream"
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?", re.ASCII)


def _q(params: list[str]) -> float | None:
    """The range's weight: 1 without `q`, None when `q` is not a qvalue (0 to 1, 3 decimals)."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            value = value.strip()
            return float(value) if _QVALUE.fullmatch(value) else None
    return 1.0


def quality(accept: str | None, media_type: str) -> tuple[float, bool]:
    """How much `accept` wants `media_type` (0 to 1), and whether a range names it exactly."""
    wanted_type = media_type.partition("/")[0]
    best: tuple[int, float] | None = None  # (specificity, q) of the most specific matching range
    any_range = False
    for element in (accept or "").split(","):
        media_range, *params = element.split(";")
        main, slash, sub = media_range.strip().lower().partition("/")
        q = _q(params)
        if not slash or not main or not sub or q is None:
            continue
        any_range = True
        if f"{main}/{sub}" == media_type:
            specificity = 2
        elif sub == "*" and main == wanted_type:
            specificity = 1
        elif main == "*" and sub == "*":
            specificity = 0
        else:
            continue
        if best is None or specificity > best[0] or (specificity == best[0] and q > best[1]):
            best = (specificity, q)
    if not any_range:
        return 1.0, False
    if best is None:
        return 0.0, False
    return best[1], best[0] == 2


def accept_header(request: web.Request) -> str | None:
    """Every Accept header of the request as one (HTTP allows the list split over several)."""
    values = request.headers.getall(hdrs.ACCEPT, [])
    return ",".join(values) if values else None
