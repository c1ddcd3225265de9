"""Limits on the work one message may cost, and `safe`: a field that cannot be extracted becomes its
fallback (logged at debug level) and does not spoil the others."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
F = TypeVar("F")

# Header values are cut to this many characters before decoding: a 1 MB header must not cost
# seconds (getaddresses runs at about 5 µs per address), and no useful header is this long.
MAX_HEADER_CHARS = 8192
# Parts walked per message; more than this is not mail a person wrote.
MAX_PARTS = 200
# Nesting depth the parser accepts. The stdlib feed parser resumes one generator per level for
# every line, so deep nesting costs depth x lines and ends in RecursionError near 1000 levels.
MAX_DEPTH = 20
# HTML fed to the HTML-to-text converter at most, and decoded text bytes looked at at most.
MAX_HTML_CHARS = 256 * 1024
MAX_TEXT_BYTES = 256 * 1024
# Attached text files and forwarded messages read (attached.py): parts, decoded bytes of each, in all.
MAX_ATTACHED_PARTS = 8
MAX_ATTACHED_BYTES = 64 * 1024
MAX_ATTACHED_TOTAL = 256 * 1024


def safe(fallback: F, extract: Callable[..., T], *args: Any) -> T | F:
    """Run one field extractor; a broken field must not spoil the others."""
    try:
        return extract(*args)
    except Exception:
        log.debug("could not extract %s", getattr(extract, "__name__", extract), exc_info=True)
        return fallback
