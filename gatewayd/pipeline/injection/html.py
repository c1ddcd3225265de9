"""HTML: one forward walk for the visible text, hidden text by reason, comments, attributes and URLs."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from html import unescape

from gatewayd.message.lowercase import lower
from gatewayd.pipeline.injection.css import (
    TRANSPARENT,
    UNKNOWN,
    WHITE,
    Rgb,
    background,
    colour,
    declarations,
    media_applies,
    sticky_reason,
    strip_css_comments,
    tiny,
    unescape_css,
)
from gatewayd.pipeline.injection.limits import (
    MAX_HTML_TOKENS,
    MAX_STACK,
    MAX_TAG_CHARS,
    MAX_TEXT_CHARS,
    MAX_URLS,
    SNIPPET,
)

# As _TAG in gatewayd/message/html.py: a tag ends at the first ">" outside quotes, matched within
# MAX_TAG_CHARS; beyond that the loose form ends it at its first ">" (linear either way).
_TAG = re.compile(r"""<(/?)([A-Za-z][A-Za-z0-9:_-]*+)((?>(?:[^>"']++|"[^"]*+"|'[^']*+')*))>""")
_LOOSE_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:_-]*+)([^>]*+)>")
_ATTR = re.compile(r"""([^\s"'>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?""")
STRIP_TAGS = re.compile(r"<[^<>]{0,2048}>")
_RAW_TEXT = {
    name: re.compile(rf"</{name}(?=[\s/>])", re.I)
    for name in ("script", "style", "title", "iframe", "noembed", "noframes", "xmp")
}
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
    | {"param", "keygen", "basefont", "frame", "isindex"}
)
_BLOCK = frozenset(
    {
        *("address", "article", "aside", "blockquote", "body", "br", "dd", "div", "dl", "dt", "fieldset"),
        *("figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr"),
        *("li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody", "td", "tfoot", "th", "thead"),
        *("tr", "ul", "option", "center", "details", "summary"),
    }
)
# Opening one of these closes an open <p> (the HTML parsing rule, simplified to the innermost one).
_CLOSES_P = frozenset(
    _BLOCK - {"br", "td", "th", "tr", "tbody", "thead", "tfoot", "dd", "dt", "li", "option"}
)
_IMPLIED_END = {"li": ("li",), "td": ("td", "th"), "th": ("td", "th"), "tr": ("td", "th", "tr"),
                "option": ("option",), "dt": ("dt", "dd"), "dd": ("dt", "dd")}  # fmt: skip
_FAKE_TAGS = frozenset(
    {"tool_result", "tool_results", "tool_call", "tool_use", "function_calls", "function_results", "system"}
    | {"system-reminder", "system_prompt", "assistant", "instructions", "im_start"}
)
_TEXT_ATTRS = ("alt", "title", "aria-label", "placeholder")
_URL_ATTRS = ("href", "src", "action", "background", "data", "poster", "formaction")
_NOTED_ATTRS = frozenset((*_TEXT_ATTRS, *_URL_ATTRS, "type"))


@dataclass(slots=True)
class _Box:
    """What an open element passes to its content (never changed, so elements share it; not
    frozen, which is slow to make)."""

    sticky: str | None  # display:none and the like: nothing inside can undo it
    invisible: bool  # visibility:hidden, which a child can undo
    tiny: bool
    fg: Rgb | str | None  # None: the default text colour
    bg: Rgb | str
    reason: str | None  # why text directly inside is hidden; None when visible


# What an element says of its box (see _Box), None for what it leaves to its parent.
_Own = tuple[str | None, bool | None, bool | None, Rgb | str | None, Rgb | str | None]
_SAYS_NOTHING: _Own = (None, None, None, None, None)
_CLOSED_DETAILS = "closed <details>"  # all but its <summary>, which _walk shows
_DEFAULT_BG = "default"  # white, unless the stylesheet sets backgrounds we cannot attribute
_ROOT = ("#root", _Box(None, False, False, None, _DEFAULT_BG, None))
_Open = tuple[str, _Box]  # an open element's name and box


class HtmlView:
    """One forward walk over the HTML, linear in its length."""

    def __init__(self, html: str) -> None:
        self.visible: list[str] = []
        self.hidden: dict[str, list[str]] = {}  # reason -> text
        self.comments: list[str] = []
        self.attributes: list[str] = []
        self.urls: list[str] = []
        self.fake_tags: list[str] = []
        self.rest = ""  # markup beyond the token cap, tags stripped
        self.rules: dict[str, dict[str, str]] = {}  # ".class", "#id", "tag" -> declarations
        self.important: dict[str, dict[str, str]] = {}  # the same, for those marked !important
        # A stylesheet colouring things by selectors we do not follow ("td.x a"): white text
        # on the default background may then sit on a dark one.
        self.colours_unsure = False
        self.unknown_bg: set[str] = set()  # selectors that complex rules may give a background
        self._sizes = {"visible": 0, "hidden": 0, "comments": 0, "attributes": 0}
        # Tags repeat ("<td class=x>" in every row): each distinct inside of a tag is parsed once,
        # and what it says of the box (_own) is worked out once per name and stylesheet.
        self._parsed: dict[str, tuple[dict[str, str], list[str], list[str]]] = {}
        self._owns: dict[tuple[str, str], tuple[bool, _Own | None]] = {}
        self._walk(html)
        self.visible_text = "".join(self.visible)

    def _keep(self, bucket: list[str], kind: str, text: str) -> None:
        if self._sizes[kind] < MAX_TEXT_CHARS:
            bucket.append(text)
            self._sizes[kind] += len(text)

    def _walk(self, html: str) -> None:
        stack: list[_Open] = [_ROOT]
        open_names: dict[str, int] = {}
        position, end = 0, len(html)
        # Quotes that never close in a tag make each strict match scan its whole window; after a
        # few such tags ("<a b='>' x <a b='>' ...") every tag ends at its first ">".
        strict_budget = 32
        sizes, visible = self._sizes, self.visible
        names: dict[str, tuple[str, bool, bool]] = {}  # a tag name as written -> _name_info
        for _ in range(MAX_HTML_TOKENS):
            if position >= end:
                return
            lt = html.find("<", position)
            if lt != position:
                text = html[position : lt if lt >= 0 else end]
                if stack[-1][1].reason is None and "&" not in text:  # most text: _text, inlined
                    if sizes["visible"] < MAX_TEXT_CHARS:
                        visible.append(text)
                        sizes["visible"] += len(text)
                else:
                    self._text(stack[-1][1], text)
            if lt < 0:
                return
            tag = _TAG.match(html, lt, lt + MAX_TAG_CHARS) if strict_budget > 0 else None
            if tag is None:
                tag = _LOOSE_TAG.match(html, lt)
                strict_budget -= tag is not None
            if tag is None:
                position = self._not_a_tag(html, lt, stack[-1][1])
                continue
            position = tag.end()
            closing, name, inside = tag.groups()
            known = names.get(name)
            if known is None:
                known = names[name] = _name_info(name)
            name, fake, block = known
            if fake:
                self.fake_tags.append(tag.group(0)[:SNIPPET])
            # Words either side of a block are apart, even when it is hidden (_keep, inlined).
            if block and sizes["visible"] < MAX_TEXT_CHARS:
                visible.append(" ")
                sizes["visible"] += 1
            if closing:
                if open_names.get(name):  # then an element of that name is open, above the root
                    popped = stack.pop()[0]  # each pop undoes one push: linear overall
                    open_names[popped] -= 1
                    while popped != name:
                        popped = stack.pop()[0]
                        open_names[popped] -= 1
                continue
            attrs = self._attributes(inside) if inside and not inside.isspace() else {}
            if name in _RAW_TEXT:
                close = _RAW_TEXT[name].search(html, position)
                if name == "style":
                    self._stylesheet(html[position : close.start() if close else end])
                position = (html.find(">", close.end()) + 1 or end) if close else end
                continue
            if name in _VOID:
                continue
            top = stack[-1][0]
            if (top == "p" and name in _CLOSES_P) or top in _IMPLIED_END.get(name, ()):
                self._pop(stack, open_names)
            if name == "tr" and stack[-1][0] == "tr":
                self._pop(stack, open_names)
            if len(stack) < MAX_STACK:
                parent = stack[-1][1]
                if name == "summary" and parent.sticky == _CLOSED_DETAILS and stack[-1][0] == "details":
                    parent = stack[-2][1]  # what a closed <details> shows: its summary
                stack.append((name, self._box(name, inside, attrs, parent)))
                open_names[name] = open_names.get(name, 0) + 1
        self.rest = STRIP_TAGS.sub(" ", html[position : position + MAX_TEXT_CHARS * 2])

    @staticmethod
    def _pop(stack: list[_Open], open_names: dict[str, int]) -> None:
        if len(stack) > 1:
            open_names[stack.pop()[0]] -= 1

    def _not_a_tag(self, html: str, lt: int, box: _Box) -> int:
        if html.startswith("<!--", lt):
            close = html.find("-->", lt + 4)
            self._keep(
                self.comments, "comments", html[lt + 4 : close if close >= 0 else lt + 4 + MAX_TEXT_CHARS]
            )
            return close + 3 if close >= 0 else len(html)
        if html.startswith(("<!", "<?", "</"), lt):  # declaration, processing instruction, bogus end tag
            close = html.find(">", lt)
            return close + 1 if close >= 0 else len(html)
        if html[lt + 1 : lt + 2].isalpha():  # a tag with no ">" after it: the rest is that tag,
            self._keep(self.attributes, "attributes", html[lt : lt + MAX_TEXT_CHARS])  # unseen but read
            return len(html)
        self._text(box, "<")
        return lt + 1

    def _text(self, box: _Box, text: str) -> None:
        if "&" in text:
            text = unescape(text)
        if box.reason is None:
            self._keep(self.visible, "visible", text)
        elif not text.isspace():
            self._keep(self.hidden.setdefault(box.reason, []), "hidden", text)

    def _attributes(self, inside: str) -> dict[str, str]:
        parsed = self._parsed.get(inside)
        if parsed is None:  # (the insides are disjoint parts of the HTML: the cache is no bigger)
            parse = _cached_attributes if len(inside) <= 512 else _parse_attributes
            parsed = self._parsed[inside] = parse(inside)
        attrs, texts, urls = parsed
        for text in texts:
            self._keep(self.attributes, "attributes", text)
        if urls and len(self.urls) < MAX_URLS:
            self.urls += urls
        return attrs

    def _box(self, name: str, inside: str, attrs: Mapping[str, str], parent: _Box) -> _Box:
        own = self._owns.get((name, inside))
        if own is None:
            plain = not (self.rules or self.unknown_bg) and len(inside) <= 512  # no stylesheet: _plain_own
            own = self._owns[name, inside] = _plain_own(name, inside) if plain else self._own(name, attrs)
        bare, says = own
        # Saying nothing, the element is its parent again. (The parent's reason came from the same
        # fields, maybe before a stylesheet made colours unsure: then the colour check is made again,
        # but for an element with neither attributes nor CSS, which always takes the parent's.)
        if says is None and (bare or not self.colours_unsure or not isinstance(parent.fg, tuple)):
            return parent
        sticky, invisible, is_tiny, fg, bg = says or _SAYS_NOTHING
        sticky = parent.sticky or sticky
        invisible = parent.invisible if invisible is None else invisible
        is_tiny = parent.tiny if is_tiny is None else is_tiny
        fg = parent.fg if fg is None else fg
        bg = parent.bg if bg is None else bg
        reason = sticky or ("visibility:hidden" if invisible else None) or ("tiny font" if is_tiny else None)
        if reason is None and fg == TRANSPARENT:
            reason = "transparent text"
        elif reason is None and isinstance(fg, tuple):
            under = WHITE if bg == _DEFAULT_BG and not self.colours_unsure else bg
            if (
                isinstance(under, tuple)
                and abs(fg[0] - under[0]) <= 16
                and abs(fg[1] - under[1]) <= 16
                and abs(fg[2] - under[2]) <= 16
            ):
                reason = "same colour as background"
        return _Box(sticky, invisible, is_tiny, fg, bg, reason)

    def _own(self, name: str, attrs: Mapping[str, str]) -> tuple[bool, _Own | None]:
        return _own_of(name, attrs, self.rules, self.unknown_bg, self.important)

    def _stylesheet(self, css: str) -> None:
        """Rules for plain tag, .class and #id selectors, at top level or in an @media block that
        applies on a desktop screen (css.media_applies)."""
        self._owns.clear()  # new rules change what elements say
        css = strip_css_comments(css[:MAX_TEXT_CHARS]).replace("<!--", " ").replace("-->", " ")
        css = unescape_css(css)
        depth, start, selector, in_at_rule, in_media = 0, 0, "", False, False
        for brace in re.finditer(r"[{}]", css):
            if brace.group(0) == "{":
                if depth == 0:
                    selector = lower(css[start : brace.start()].strip())
                    in_at_rule = selector.startswith("@")
                    in_media = in_at_rule and media_applies(selector)
                elif depth == 1 and in_media:
                    selector = lower(css[start : brace.start()].strip())
                depth += 1
                start = brace.end()
                continue
            depth = max(depth - 1, 0)
            if (depth == 0 and not in_at_rule) or (depth == 1 and in_media and not selector.startswith("@")):
                self._rule(selector, css[start : brace.start()])
            start = brace.end()

    def _rule(self, selector: str, body: str) -> None:
        important: dict[str, str] = {}
        css_decls = declarations(body, important)
        backgrounds = css_decls.keys() & {"background", "background-color", "background-image"}
        for part in selector.split(",")[:50]:
            key = _simple_selector(part.strip()[:200])
            if key is not None and css_decls:
                self.rules.setdefault(key, {}).update(css_decls)
                if important:
                    self.important.setdefault(key, {}).update(important)
            elif backgrounds:
                # ".wrap td.dark": whatever has class "dark" may sit on a background we do
                # not know, so no colour verdict there (over-approximating is the safe side).
                subject = re.split(r"[\s>+~]+", part.strip()[:200])[-1].split(":")[0]
                subject_key = _simple_selector(subject)
                if subject_key is None:
                    self.colours_unsure = True
                else:
                    self.unknown_bg.add(subject_key)


def _own_of(
    name: str,
    attrs: Mapping[str, str],
    rules: Mapping[str, Mapping[str, str]],
    unknown_bg: set[str],
    important: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[bool, _Own | None]:
    """Whether the element has neither attributes nor CSS, and what its name, attributes and
    the stylesheet (`important`: its !important declarations) say of its box before its parent
    counts (None: nothing)."""
    css: dict[str, str] = {}
    if rules or unknown_bg:  # a stylesheet
        keys = [name, *("." + lower(cls) for cls in attrs.get("class", "").split()[:20])]
        if attrs.get("id"):
            keys.append("#" + lower(attrs["id"]))
        for key in keys:
            css.update(rules.get(key, {}))
        if unknown_bg and not unknown_bg.isdisjoint(keys):
            css.setdefault("background-image", "url()")
    if attrs.get("style"):
        css.update(declarations(attrs["style"]))
        if important:  # a stylesheet's !important beats the inline style
            for key in keys:
                css.update(important.get(key, {}))
    sticky = (
        (sticky_reason(css) if css else None)
        or ("hidden attribute" if "hidden" in attrs else None)
        or ("<template>" if name == "template" else None)
        or (_CLOSED_DETAILS if name == "details" and "open" not in attrs else None)
    )
    visibility = css.get("visibility")
    invisible = None if visibility is None else visibility.startswith(("hidden", "collapse"))
    is_tiny = tiny(css) if css else None
    fg = colour(css.get("color") or attrs.get("color") or (attrs.get("text") if name == "body" else None))
    bg_value = css.get("background-color") or css.get("background") or attrs.get("bgcolor")
    bg = background(bg_value) if bg_value else None
    if bg is None and (attrs.get("background") or "url(" in css.get("background-image", "")):
        bg = UNKNOWN
    says = (sticky, invisible, is_tiny, fg, bg)
    return not css and not attrs, None if says == _SAYS_NOTHING else says


# Without a stylesheet what an element says depends on its name and inside alone, and the same
# ones come back from mail to mail: a short inside is worked out once (what the walk parses it to).
@functools.lru_cache(maxsize=4096)
def _plain_own(name: str, inside: str) -> tuple[bool, _Own | None]:
    attrs = _cached_attributes(inside)[0] if inside and not inside.isspace() else {}
    return _own_of(name, attrs, {}, set())


def _name_info(name: str) -> tuple[str, bool, bool]:
    """A tag name as written: lower-cased, whether it is fake tool markup, whether it is a block."""
    name = lower(name)
    return name, name in _FAKE_TAGS or name.startswith("antml:"), name in _BLOCK


def _parse_attributes(inside: str) -> tuple[dict[str, str], list[str], list[str]]:
    """A tag's attributes; the text of those that show text (alt, title...) and its URLs."""
    attrs: dict[str, str] = {}
    for key, double, single, bare in _ATTR.findall(inside, 0, MAX_TAG_CHARS):
        value = double or single or bare  # "" for a group that did not take part
        attrs.setdefault(lower(key), unescape(value) if "&" in value else value)
    if attrs.keys().isdisjoint(_NOTED_ATTRS):  # most tags: class, style, width...
        return attrs, [], []
    texts = [attrs[key] + "\n" for key in _TEXT_ATTRS if attrs.get(key, "").strip()]
    if lower(attrs.get("type", "")) == "hidden" and attrs.get("value"):
        texts.append(attrs["value"] + "\n")
    return attrs, texts, [attrs[key].strip() for key in _URL_ATTRS if attrs.get(key)]


# Tags repeat from mail to mail too ('<font face="Arial" size="2">'): a short inside is parsed once
# (a long one is not kept: the cache stays a few MB). What it returns is never changed.
_cached_attributes = functools.lru_cache(maxsize=4096)(_parse_attributes)


def _simple_selector(selector: str) -> str | None:
    match = re.fullmatch(r"[a-z0-9]*([.#][\w-]{1,64})|([a-z][a-z0-9]{0,15})", selector)
    if match is None:
        return None
    return match.group(1) or match.group(2)
