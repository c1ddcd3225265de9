"""The visible text of an HTML body: one linear forward scan, with its tag tables."""

from __future__ import annotations

import enum
import re
from html import unescape

from gatewayd.message.lowercase import lower

# Elements whose content is not shown. Skipped by searching for the end tag, as browsers read them
# as raw text (a "<" inside is not markup). <head> itself holds only these and void tags.
_HIDDEN_CONTENT = {
    name: re.compile(rf"</{name}[^>]*+>", re.I)
    for name in ("script", "style", "title", "template", "noscript", "iframe", "noembed", "noframes")
}
# Tags that separate words on screen; inline ones (<b>, <a>, <span>) do not.
_BLOCK_TAGS = frozenset(
    {
        *("address", "article", "aside", "blockquote", "body", "br", "dd", "div", "dl", "dt"),
        *("fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6"),
        *("header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody", "td"),
        *("tfoot", "th", "thead", "tr", "ul"),
    }
)
# A tag ends at the first ">" outside quoted attribute values; as in browsers a "<" inside does not
# end it. Possessive quantifiers: no backtracking. The match is confined to _MAX_TAG_CHARS, since
# quotes can pair up across tags ("<a b='>' x <a b='>' ...") and make every attempt scan to the end
# of the document; beyond that, or with a quote never closed, _LOOSE_TAG ends the tag at its first
# ">" (it scans only up to that ">", so the whole walk stays linear).
_TAG = re.compile(r"""<(/?)([A-Za-z][A-Za-z0-9:-]*+)(?>(?:[^>"']++|"[^"]*+"|'[^']*+')*)>""")
_LOOSE_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*+)[^>]*+>")
_MAX_TAG_CHARS = 2048
# Markup tokens looked at per HTML part at most: text comes long before this in real mail.
MAX_HTML_TOKENS = 20000
# An entity's start at the end of a cut document: `&`, `&#`, and a name or number cut short, of
# fewer characters than the longest name (`&CounterClockwiseContourIntegral;`).
_ENTITY_START = re.compile(r"&#?[A-Za-z0-9]{0,32}")
_MAX_ENTITY_CHARS = 34


def without_cut_entity(html: str) -> str:
    """A document cut short without the entity the cut fell in: as written (`&helli` of
    `&hellip;`), or as a shorter one (`&#83` of `&#8364;`), it is text the whole document lacks."""
    amp = html.rfind("&", max(len(html) - _MAX_ENTITY_CHARS, 0))
    return html[:amp] if amp >= 0 and _ENTITY_START.fullmatch(html, amp) else html


class Scan(enum.Enum):
    """How far `html_to_text` read a document."""

    WHOLE = "whole"
    TEXT_CAP = "text cap"  # it found `enough` characters of text
    MARKUP_CAP = "markup cap"  # it looked at MAX_HTML_TOKENS tokens of markup


def html_to_text(html: str, enough: int) -> tuple[str, Scan]:
    """The visible text of an HTML document, until about `enough` characters of it; and how far
    it read (not all when `enough` or `MAX_HTML_TOKENS` stopped the scan first).

    One forward scan, linear in the input. Not html.parser.HTMLParser: in Python 3.11 that is
    quadratic or worse on unterminated constructs (CVE-2025-6069 and relatives; 256 KB of "<a b='"
    took 170 s here), and this runs inline on hostile mail. Entities go to html.unescape. As in
    browsers, an unterminated comment, declaration or script/style element hides the rest.
    """
    chunks: list[str] = []
    size = 0
    position, end = 0, len(html)
    last_close = html.rfind(">")
    for _ in range(MAX_HTML_TOKENS):
        if position >= end:
            break
        if size >= enough:
            return "".join(chunks), Scan.TEXT_CAP
        lt = html.find("<", position)
        text = html[position : lt if lt >= 0 else end]
        if text:
            chunks.append(unescape(text) if "&" in text else text)
            size += len(text.strip())
        if lt < 0:
            break
        tag = _TAG.match(html, lt, lt + _MAX_TAG_CHARS) or _LOOSE_TAG.match(html, lt)
        if tag is None:
            if html.startswith("<!--", lt):
                close = html.find("-->", lt + 4)
                position = close + 3 if close >= 0 else end
            elif html.startswith(("<!", "<?", "</"), lt):  # declaration, PI, bogus end tag
                close = html.find(">", lt)
                position = close + 1 if close >= 0 else end
            elif html[lt + 1 : lt + 2].isalpha():
                break  # a tag with no ">" anywhere after it: the rest is that tag
            else:  # a "<" that starts no markup is text
                chunks.append("<")
                size += 1
                position = lt + 1
            continue
        position = tag.end()
        closing, name = tag.group(1), lower(tag.group(2))
        if name in _HIDDEN_CONTENT and not closing and not tag.group(0).endswith("/>"):
            # Not past the last ">": each "</script" there would be tried, to the end, in vain.
            close_tag = _HIDDEN_CONTENT[name].search(html, position, last_close + 1)
            position = close_tag.end() if close_tag else end
        elif name in _BLOCK_TAGS:
            chunks.append(" ")
    else:
        return "".join(chunks), Scan.WHOLE if position >= end else Scan.MARKUP_CAP
    return "".join(chunks), Scan.WHOLE
