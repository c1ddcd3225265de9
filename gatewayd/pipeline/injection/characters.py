"""Characters: invisible ones, lookalikes, folding.

Invisible, zero-width, bidi and tag characters; Cyrillic and Greek lookalikes of Latin letters; the
folded and letters-only forms the rules match, whitespace collapsed, and snippets as a human sees them.
The Latin-1 fast paths are built at import from the Unicode ones.
"""

from __future__ import annotations

import re
import unicodedata

from gatewayd.message.lowercase import lower as str_lower
from gatewayd.message.text import squeeze_spaces
from gatewayd.pipeline.injection.limits import SNIPPET

# Every format (Cf) character of Unicode 15, private use (Co), invisible fillers (combining
# grapheme joiner, Hangul fillers, Khmer inherent vowels, braille blank) and lone surrogates.
_INVISIBLE_BMP = (
    r"\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e"
    r"\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\ue000-\uf8ff"
    r"\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0\u2800"
    r"\ud800-\udfff"  # lone surrogates: never valid in the UTF-8 JSON of an event
)
_INVISIBLE_CLASS = _INVISIBLE_BMP + (
    r"\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    r"\U000e0000-\U000e007f\U000f0000-\U000ffffd\U00100000-\U0010fffd"
)
INVISIBLE = re.compile(f"[{_INVISIBLE_CLASS}]+")
# The regex engine looks for one character of a class much faster than for a run ("[...]+"), and
# for BMP characters than for astral ones, which only text with astral characters can hold.
_INVISIBLE_BMP_CHAR = re.compile(f"[{_INVISIBLE_BMP}]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_ZERO_WIDTH = "\u200b\u200c\u200d\u2060-\u2064\ufeff\u180e"
ZW_ANY = re.compile(f"[{_ZERO_WIDTH}]")
ZW_IN_WORD = re.compile(f"(?<=[A-Za-z0-9])[{_ZERO_WIDTH}]+(?=[A-Za-z0-9])")
BIDI = re.compile(r"[\u202a-\u202e\u2066-\u2069]")
BIDI_OVERRIDE = re.compile(r"[\u202d\u202e]")
RTL_LETTER = re.compile(r"[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc]")
TAG_RUN = re.compile(r"[\U000e0000-\U000e007f]+")  # astral: only looked for where astral() says
MIXED_SCRIPT = re.compile(r"[A-Za-z][\u0370-\u03ff\u0400-\u04ff]|[\u0370-\u03ff\u0400-\u04ff][A-Za-z]")
# A character that ZW_IN_WORD, BIDI or MIXED_SCRIPT needs: one fast pass rules them all out.
NOTABLE = re.compile(f"[{_ZERO_WIDTH}\u202a-\u202e\u2066-\u2069\u0370-\u04ff]")
_COMBINING = re.compile(r"[\u0300-\u036f]")  # one character, not a run: see _INVISIBLE_BMP_CHAR

# Cyrillic, Greek and a few Latin lookalikes of Latin letters (a small map, not all of UTS #39).
_CONFUSABLES = str.maketrans(
    {
        **dict(zip("АВЕКМНОРСТХУІЈЅԁԌҺӀԚԜ", "ABEKMHOPCTXYIJSdGHIQW", strict=True)),
        **dict(zip("аеорсухіјѕһӏԛԝкмтпгьв", "aeopcyxijshlqwkmtnrbb", strict=True)),
        **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "ABEZHIKMNOPTYX", strict=True)),
        **dict(zip("αεικνορτυχηωγ", "aeikvoptuxnwy", strict=True)),
        **dict(zip("ıȷǀɡոսẹօ", "ijlgnueo", strict=True)),
    }
)
_LOOKALIKE = re.compile("[" + re.escape("".join(map(chr, _CONFUSABLES))) + "]")
# Letters-only form: leetspeak digits and signs read as letters, everything else dropped (one C pass).
_LEET = bytes.maketrans(b"0134578@$!|", b"oieastbasii")
_NOT_LETTER_OR_LEET = bytes(c for c in range(256) if not (97 <= c <= 122 or c in b"0134578@$!|"))


def squash(folded: str) -> str:
    return folded.encode("utf-8", "replace").translate(_LEET, _NOT_LETTER_OR_LEET).decode("ascii")


def astral(text: str) -> bool:
    """Whether `text` has a character beyond U+FFFF (two UTF-16 code units): one C pass."""
    return not text.isascii() and len(text.encode("utf-16-le", "surrogatepass")) > 2 * len(text)


def _latin1_bytes(text: str) -> bytes | None:
    """`text` in Latin-1 when it is all below U+0100, else None."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return None


def latin1(text: str) -> bool:
    """Whether `text` is all below U+0100, where no invisible character but the soft hyphen can be,
    nor accents, lookalikes, zero-width or bidi characters: a C copy, where a regex tests each."""
    return _latin1_bytes(text) is not None


def _drop_invisible(text: str) -> str:
    if latin1(text):
        return text.replace("\xad", "")
    return INVISIBLE.sub("", text) if _INVISIBLE_BMP_CHAR.search(text) or astral(text) else text


def strip_invisible(text: str) -> str:
    """Text without invisible characters and controls (whitespace kept)."""
    return _CONTROLS.sub(" ", text if text.isascii() else _drop_invisible(text))


def fold(text: str) -> str:
    """Lower case, accents and invisible characters dropped, lookalikes mapped to Latin."""
    if text.isascii():
        return str_lower(text)
    data = _latin1_bytes(text)
    if data is not None and not data.translate(None, _FOLDS_IN_LATIN1):
        return data.translate(_LATIN1_FOLD, _LATIN1_DROPPED).decode("latin-1")
    return _fold_unicode(text)


def _fold_unicode(text: str) -> str:
    text = unicodedata.normalize("NFKD", _drop_invisible(text))
    if not latin1(text):
        text = _COMBINING.sub("", text)
        # str.translate looks up every character in a dict, slowly: most text has no lookalike.
        if _LOOKALIKE.search(text):
            text = text.translate(_CONFUSABLES)
    return str_lower(text)


# Latin-1 text folds a character at a time: NFKD decomposes each alone, into Latin-1 and accents
# (U+0300-U+036F, which fold drops), but for "µ¼½¾"; lower case maps Latin-1 to itself. So one
# C pass over its bytes folds it, where NFKD, the regex dropping accents and lower() take three.
_LATIN1_FOLDS = [_fold_unicode(chr(c)) for c in range(256)]
_LATIN1_FOLD = bytes(ord(f) if len(f) == 1 and f < "\u0100" else c for c, f in enumerate(_LATIN1_FOLDS))
_LATIN1_DROPPED = bytes(c for c, f in enumerate(_LATIN1_FOLDS) if not f)  # the soft hyphen
_FOLDS_IN_LATIN1 = bytes(c for c, f in enumerate(_LATIN1_FOLDS) if len(f) <= 1 and f < "\u0100")  # not µ¼½¾
_LATIN1_LOWER = bytes(ord(chr(c).lower()) for c in range(256))


def lower(text: str) -> str:
    """text.lower(), which for text beyond ASCII looks up each character's full case mapping."""
    if text.isascii():
        return text.lower()  # ASCII: no final sigma
    data = _latin1_bytes(text)
    return str_lower(text) if data is None else data.translate(_LATIN1_LOWER).decode("latin-1")


def unaccent(text: str) -> str:
    """Accents dropped, nothing else: what the rules see when nobody disguised anything."""
    return _COMBINING.sub("", unicodedata.normalize("NFD", text))


# Latin-1 whitespace as str.split() sees it (\x1c-\x1f, \x85, \xa0 too) as spaces.
_LATIN1_SPACE_TO_SPACE = bytes(0x20 if chr(c).isspace() else c for c in range(256))


def collapse(text: str) -> str:
    """Whitespace runs as single spaces, none at the ends: " ".join(text.split())."""
    data = _latin1_bytes(text)
    if data is None:
        return " ".join(text.split())
    # Split and join make an object per word; on bytes a translate and a regex that jumps from
    # one double space to the next are C passes.
    spaced = data.translate(_LATIN1_SPACE_TO_SPACE)
    return squeeze_spaces(spaced).decode("latin-1")


# ASCII whitespace as spaces (as collapse maps it), the other controls as NUL.
_ASCII_SPACE_OR_NUL = bytes(
    0x20 if chr(c).isspace() else 0 if c < 0x20 or c == 0x7F else c for c in range(256)
)


def shown(text: str) -> str:
    """The words of `text` as a human sees them: collapse(strip_invisible(text))."""
    if text.isascii():
        # ASCII has no invisible characters, and its controls are whitespace (dropped here too) or
        # not printable: without the latter (a NUL here; a memchr, where str.isprintable looks up
        # each character) there is nothing to strip.
        spaced = text.encode("ascii").translate(_ASCII_SPACE_OR_NUL)
        if b"\0" not in spaced:
            return squeeze_spaces(spaced).decode("ascii")
    return collapse(strip_invisible(text))


# A right-to-left override (RLO) shows what follows it, up to its pop (PDF) or the end of the line,
# in reverse: "\u202esnoitcurtsni\u202c" reads "instructions" on screen.
_OVERRIDDEN_RUN = re.compile("\u202e([^\u202c\n]*)")


def visual_order(text: str) -> str:
    """`text` with the runs a right-to-left override reverses written in the order a human reads
    them. A run holding right-to-left letters is left alone: reversing it would not show it."""
    if "\u202e" not in text:
        return text
    return _OVERRIDDEN_RUN.sub(_reversed_run, text)


def _reversed_run(match: re.Match[str]) -> str:
    run = match.group(1)
    return run if RTL_LETTER.search(run) else run[::-1]


def snippet(text: str) -> str:
    text = shown(text)
    return text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"
