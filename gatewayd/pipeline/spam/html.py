"""One linear walk over a message's HTML for the facts the content signals need (links with their
text, images, hidden text, forms, loud fonts), and rough scans of its MIME structure."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gatewayd.message import ParsedMessage
from gatewayd.message.lowercase import lower

_MAX_HTML_TAGS = 5000


@dataclass(slots=True)
class HtmlFacts:
    links: list[tuple[str, str]] = field(default_factory=list)  # (href, link text)
    images: int = 0
    form: bool = False
    hidden_chars: int = 0
    password_field: bool = False
    loud_fonts: int = 0  # <font size=+2..7 or color=red>


_TAG_START = re.compile(r"</?([a-zA-Z][a-zA-Z0-9]{0,15})")
_ATTR = re.compile(r"""([a-zA-Z-]{1,30})\s*=\s*("[^"]{0,2000}"|'[^']{0,2000}'|[^\s>]{1,2000})""")
_HIDING_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*[01](?:\.\d+)?(?:px|pt)?\s*(?:;|$)"
    r"|opacity\s*:\s*0(?:\.0+)?\s*(?:;|$)",
    re.I,
)
_COLOR_IN_STYLE = re.compile(r"(?<![-\w])color\s*:\s*([#\w]{1,20})", re.I)
_BG_IN_STYLE = re.compile(r"background(?:-color)?\s*:\s*([#\w]{1,20})", re.I)
_STRIP_TAGS = re.compile(r"<[^<>]{0,2000}>")  # bounded: linear even on "<<<<"
_NAMED_COLORS = {"white": "#ffffff", "black": "#000000"}
_NOT_ALNUM = re.compile(r"\W+")
_SKIPPED_ELEMENTS = frozenset({"style", "script", "title", "head", "noscript", "template"})
# The tags whose own attributes the walk reads (href, width, size, type, ...), and the words in the
# names of those it reads on any tag (style, color, bgcolor, background): another tag whose
# attributes name none of them (in any case) ends hiding as a tag without attributes does, with
# no need to read them (most <td>, <table>, <option>).
_READ_TAGS = frozenset({"a", "img", "form", "font", "input"})
_PREHEADER_CHARS = 200
_SHORT_HEX = re.compile(r"#?[0-9a-f]{3}")
_BARE_HEX = re.compile(r"[0-9a-f]{6}")


def _color(value: str | None) -> str | None:
    if not value:
        return None
    value = lower(value.strip())
    value = _NAMED_COLORS.get(value, value)
    if _SHORT_HEX.fullmatch(value):
        value = "#" + "".join(c * 2 for c in value.lstrip("#"))
    elif _BARE_HEX.fullmatch(value):
        value = "#" + value
    return value


def _style_color(pattern: re.Pattern[str], style: str) -> str | None:
    """The colour `pattern` finds in an inline style, normalised."""
    match = pattern.search(style) if style else None  # most tags have no style
    return _color(match.group(1)) if match else None


def walk_html(html: str) -> HtmlFacts:
    """One linear pass over the tags: links with their text, images, hidden text, forms.

    A tag's end is found with str.find from where the last one ended, so the walk is linear even
    on unterminated tags. Hidden text is the text right after a hiding tag, up to the next tag;
    hidden text before any visible text is a newsletter's preheader (the inbox preview line) and
    counts only past _PREHEADER_CHARS. Colour-on-background hiding is judged only in documents
    without a <style> sheet, whose classes may set backgrounds this walk does not see.
    """
    facts = HtmlFacts()
    lowered = lower(html)
    judge_colours = "<style" not in lowered
    background = "#ffffff"
    position = 0
    hiding = False  # the last tag hides the text after it
    seen_text = False
    preheader = 0

    def text_until(stop: int) -> None:
        nonlocal seen_text, preheader
        gap = html[position:stop].replace("&nbsp;", " ")
        if "<" in gap:
            gap = _STRIP_TAGS.sub(" ", gap)  # a doctype, a comment
        if hiding and not gap.isspace():
            chars = len(_NOT_ALNUM.sub("", gap))
            if not seen_text and preheader + chars <= _PREHEADER_CHARS:
                preheader += chars
            else:
                facts.hidden_chars += chars
        elif not seen_text and gap.strip():
            seen_text = True

    for count, tag in enumerate(_TAG_START.finditer(html)):
        if count >= _MAX_HTML_TAGS:
            break
        start, name_end = tag.span()
        if start < position:
            continue  # inside the previous tag or a skipped element
        if hiding or not seen_text:  # otherwise the text tells nothing
            text_until(start)
        end = html.find(">", name_end)
        if end < 0:
            break  # no tag after this one can end either
        position = end + 1
        hiding = False
        if html[start + 1] == "/":  # a closing tag: no groups made for it
            continue
        name = lower(tag[1])
        if name in _SKIPPED_ELEMENTS:
            close = lowered.find("</" + name, position)
            position = close if close >= 0 else len(html)
            continue
        # Tested with `in` on a copy (the tags' copies do not overlap): str.find with a start and
        # an end parses its arguments at twice the cost, and a regex enters its matcher at every
        # character.
        written = html[name_end:end]
        if "=" not in written:  # most tags have no attributes: <td>, <br>, <b>
            if name == "img":
                facts.images += 1
            elif name == "form":
                facts.form = True
            continue
        if name not in _READ_TAGS:
            written = lower(written)
            if "style" not in written and "color" not in written and "background" not in written:
                continue
        attrs = {lower(k): v.strip("\"'") for k, v in _ATTR.findall(html, name_end, end)}
        style = attrs.get("style", "")
        bg = _color(attrs.get("bgcolor")) or _style_color(_BG_IN_STYLE, style)
        color_attr = _color(attrs.get("color"))
        if bg:
            background = bg  # the most recent one: crude, but errs towards "visible"
        elif "background" in attrs:
            background = ""  # an image: any text colour may show on it
        if name == "a" and "href" in attrs:
            close = html.find("</a", position, position + 2000)
            label = html[position:close] if close >= 0 else ""
            facts.links.append((attrs["href"], _STRIP_TAGS.sub(" ", label)))
        elif name == "img":
            if not _tiny(attrs.get("width")) and not _tiny(attrs.get("height")):
                facts.images += 1
        elif name == "form":
            facts.form = True
        elif name == "font" and (_loud_size(attrs.get("size")) or color_attr in _REDS):
            facts.loud_fonts += 1
        elif name == "input" and lower(attrs.get("type", "")) == "password":
            facts.password_field = True
        color = color_attr or _style_color(_COLOR_IN_STYLE, style)
        hiding = bool(style and _HIDING_STYLE.search(style)) or bool(
            judge_colours and color and color == background and not bg
        )
    else:
        text_until(min(len(html), position + 5000))  # the text after the last tag
    return facts


_REDS = frozenset({"#ff0000", "red"})


def _loud_size(size: str | None) -> bool:
    """A <font size> of +2 or more, or 5 to 7 (the scale's 3 is normal text)."""
    value = (size or "").strip()
    digits = value.lstrip("+")
    # ASCII digits only: "³".isdigit(), but int("³") raises.
    return (
        digits.isascii()
        and digits.isdigit()
        and len(digits) <= 2
        and int(digits) >= (2 if value.startswith("+") else 5)
    )


def _tiny(size: str | None) -> bool:
    """A width/height of at most 3 px: tracking pixels and spacers."""
    if not size:
        return False
    digits = size.strip().removesuffix("px")
    return digits.isascii() and digits.isdigit() and int(digits) <= 3


# Searched in the lower-cased raw message (the first _MIME_SCAN_BYTES): a case-sensitive pattern
# starts with a literal the regex engine skips to, where re.I would have it try every position.
_MIME_SCAN_BYTES = 256 * 1024
_CONTENT_TYPE_TEXT_PLAIN = re.compile(rb"content-type:\s*text/plain")
_BASE64_TEXT_PART = re.compile(
    rb"content-type:\s*text/(?:plain|html)[^\n]{0,200}\n(?:[ \t][^\n]{0,200}\n){0,3}"
    rb"(?:[^\n]{0,200}\n){0,3}?content-transfer-encoding:\s*base64"
)


def has_plain_part(message: ParsedMessage, heads: dict[str, list[bytes]]) -> bool:
    """Whether the message has a text/plain part (a rough scan of the raw MIME headers)."""
    top = b" ".join(heads.get("content-type", [b""])).lower()
    if not top.strip() or top.lstrip().startswith(b"text/plain"):
        return True
    if top.lstrip().startswith(b"text/"):
        return False
    return bool(_CONTENT_TYPE_TEXT_PLAIN.search(message.raw[:_MIME_SCAN_BYTES].lower()))


def base64_text(raw: bytes, heads: dict[str, list[bytes]]) -> bool:
    """Whether a text body is base64-encoded: pointless for text, a filter-evasion habit."""
    top = b" ".join(heads.get("content-type", [b"text/plain"])).lower().lstrip()
    if top.startswith(b"text/") or not top:
        return b"base64" in b" ".join(heads.get("content-transfer-encoding", [])).lower()
    return bool(_BASE64_TEXT_PART.search(raw[:_MIME_SCAN_BYTES].lower()))
