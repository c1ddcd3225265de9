"""CSS as the HTML view reads it: colours, lengths, declarations, and what a style hides."""

from __future__ import annotations

import colorsys
import re
from collections.abc import Mapping

from gatewayd.message.lowercase import lower

_STYLE_PROPS = frozenset(
    {"display", "visibility", "opacity", "font-size", "font", "color", "background", "background-color"}
    | {"background-image", "height", "max-height", "width", "max-width", "overflow", "position", "left"}
    | {"top", "right", "bottom", "text-indent", "clip", "clip-path", "transform", "margin-left", "margin-top"}
)

Rgb = tuple[int, int, int]
TRANSPARENT = "transparent"
UNKNOWN = "unknown"  # a background image or colour we cannot read: no colour verdict
WHITE: Rgb = (255, 255, 255)
_NAMED_COLOURS: dict[str, Rgb] = {
    "white": WHITE, "black": (0, 0, 0), "snow": (255, 250, 250), "ivory": (255, 255, 240),
    "whitesmoke": (245, 245, 245), "ghostwhite": (248, 248, 255), "azure": (240, 255, 255),
    "mintcream": (245, 255, 250), "floralwhite": (255, 250, 240), "seashell": (255, 245, 238),
    "aliceblue": (240, 248, 255), "honeydew": (240, 255, 240), "lavenderblush": (255, 240, 245),
    "linen": (250, 240, 230), "red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255),
    "gray": (128, 128, 128), "grey": (128, 128, 128), "silver": (192, 192, 192),
    "yellow": (255, 255, 0), "navy": (0, 0, 128), "orange": (255, 165, 0), "maroon": (128, 0, 0),
    "purple": (128, 0, 128), "lightgray": (211, 211, 211), "lightgrey": (211, 211, 211),
    "darkgray": (169, 169, 169), "darkgrey": (169, 169, 169),
}  # fmt: skip
_HEX_COLOUR = re.compile(r"#?([0-9a-f]{8}|[0-9a-f]{6}|[0-9a-f]{3,4})(?![0-9a-z])")
_RGB_COLOUR = re.compile(
    r"rgba?\(\s*(\d{1,3})%?\s*[, ]\s*(\d{1,3})%?\s*[, ]\s*(\d{1,3})%?\s*(?:[,/]\s*([\d.]{1,8})(%?))?"
)
_HSL_COLOUR = re.compile(
    r"hsla?\(\s*(-?\d{1,3}(?:\.\d{1,6})?)(?:deg)?\s*[, ]\s*(\d{1,3}(?:\.\d{1,6})?)%\s*[, ]\s*"
    r"(\d{1,3}(?:\.\d{1,6})?)%\s*(?:[,/]\s*([\d.]{1,8})(%?))?"
)
_LENGTH = re.compile(r"\s*(-?\d{0,6}\.?\d{1,6})\s*(px|pt|em|rem|%|ex|ch|vw|vh|cm|mm|in|pc)?")
_PX_PER = {"px": 1.0, "pt": 4 / 3, "em": 16.0, "rem": 16.0, "%": 0.16, "ex": 8.0, "ch": 8.0, "vw": 10.0,
           "vh": 10.0, "cm": 37.8, "mm": 3.78, "in": 96.0, "pc": 16.0, "": 1.0}  # fmt: skip


def colour(value: str | None) -> Rgb | str | None:
    """A CSS or HTML colour value: RGB, TRANSPARENT, or None when unreadable."""
    if not value:
        return None
    value = lower(value.strip())
    if value.startswith("transparent"):
        return TRANSPARENT
    match = _HEX_COLOUR.match(value)
    if match and (value.startswith("#") or len(match.group(1)) == 6):
        digits = match.group(1)
        if len(digits) in (3, 4):
            digits = "".join(c * 2 for c in digits)
        if len(digits) == 8 and int(digits[6:], 16) <= 16:
            return TRANSPARENT
        return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))
    match = _RGB_COLOUR.match(value)
    if match:
        red, green, blue, alpha, percent = match.groups()
        if alpha:
            try:
                if float(alpha) / (100 if percent else 1) <= 0.05:
                    return TRANSPARENT
            except ValueError:
                pass
        return (min(int(red), 255), min(int(green), 255), min(int(blue), 255))
    match = _HSL_COLOUR.match(value)
    if match:
        return _hsl(*match.groups())
    return _NAMED_COLOURS.get(value.split()[0] if value.split() else "")


def _hsl(
    hue: str, saturation: str, lightness: str, alpha: str | None, percent: str | None
) -> Rgb | str | None:
    try:
        if alpha and float(alpha) / (100 if percent else 1) <= 0.05:
            return TRANSPARENT
        rgb = colorsys.hls_to_rgb(
            float(hue) % 360 / 360, min(float(lightness), 100) / 100, min(float(saturation), 100) / 100
        )
    except ValueError:
        return None
    return (round(rgb[0] * 255), round(rgb[1] * 255), round(rgb[2] * 255))


_COLOUR_IN_VALUE = re.compile(r"#[0-9a-f]{3,8}(?![0-9a-z])|rgba?\(|hsla?\(")


def background(value: str) -> Rgb | str | None:
    """The colour of a background (shorthand) value; UNKNOWN for images; None to inherit."""
    value = lower(value.strip())[:300]
    found = _COLOUR_IN_VALUE.search(value)
    if found:
        return colour(value[found.start() :]) or UNKNOWN
    for token in re.split(r"[\s,]+", value):
        if token in _NAMED_COLOURS:
            return _NAMED_COLOURS[token]
    if "url(" in value or "gradient" in value:
        return UNKNOWN
    if not value or value.startswith(("transparent", "none", "inherit", "initial", "unset")):
        return None
    return UNKNOWN


def _px(value: str | None) -> float | None:
    if not value:
        return None
    match = _LENGTH.match(value)
    if not match:
        return None
    try:
        return float(match.group(1)) * _PX_PER[match.group(2) or ""]
    except ValueError:
        return None


def strip_css_comments(css: str) -> str:
    """CSS without /* comments */ ("display:/**/none"), in one pass."""
    if "/*" not in css:
        return css
    kept, position = [], 0
    while position >= 0:
        start = css.find("/*", position)
        kept.append(css[position : start if start >= 0 else len(css)])
        end = css.find("*/", start + 2) if start >= 0 else -1
        position = end + 2 if end >= 0 else -1
    return "".join(kept)


_ESCAPE = re.compile(r"\\(?:([0-9a-fA-F]{1,6})[ \t\r\n\f]?|(.))", re.S)


def unescape_css(css: str) -> str:
    """CSS with its escapes read: `\\64 isplay` is `display`, `\\.` is `.`."""
    if "\\" not in css:
        return css
    return _ESCAPE.sub(_unescape_one, css)


def _unescape_one(match: re.Match[str]) -> str:
    code = int(match.group(1), 16) if match.group(1) else None
    if code is None:
        return match.group(2)
    return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else "\ufffd"


def declarations(style: str, important: dict[str, str] | None = None) -> dict[str, str]:
    """The CSS declarations we look at, comments dropped and escapes read; those marked
    `!important` are also put in `important`, when given (a stylesheet's beat an inline style)."""
    style = unescape_css(strip_css_comments(style[:4000]))
    found = {}
    for declaration in style.split(";"):
        prop, colon, value = declaration.partition(":")
        prop = lower(prop.strip())
        if colon and prop in _STYLE_PROPS:
            value = lower(value)
            found[prop] = value.replace("!important", "").strip()
            if important is not None and "!important" in value:
                important[prop] = found[prop]
    return found


_CLIPPED_AWAY = re.compile(r"rect\(\s*0|inset\(\s*50%|circle\(\s*0")  # compiled: a call per element


def sticky_reason(css: Mapping[str, str]) -> str | None:
    """Why an element hides everything in it, whatever its children say; None if it does not."""
    if css.get("display", "").startswith("none"):
        return "display:none"
    opacity = css.get("opacity")
    if opacity:
        number = _px(opacity.rstrip("%"))
        if number is not None and number / (100 if opacity.endswith("%") else 1) <= 0.05:
            return "opacity:0"
    # A box of a pixel or less ("visually hidden" in CSS frameworks) shows no readable text.
    if css.get("overflow", "").startswith(("hidden", "clip")) and any(
        (size := _px(css.get(prop))) is not None and size <= 1
        for prop in ("height", "max-height", "width", "max-width")
    ):
        return "zero size"
    offsets = ("left", "top", "right", "bottom", "margin-left", "margin-top")
    if css.get("position", "").startswith(("absolute", "fixed")) and any(
        (_px(css.get(prop)) or 0) <= -500 for prop in offsets
    ):
        return "off-screen"
    if (_px(css.get("text-indent")) or 0) <= -500:
        return "off-screen"
    clip = css.get("clip", "") + css.get("clip-path", "")
    if _CLIPPED_AWAY.match(clip):
        return "clipped"
    if css.get("transform", "").startswith("scale(0"):
        return "scaled to zero"
    return None


def tiny(css: Mapping[str, str]) -> bool | None:
    """Whether a font-size makes text unreadable; None when the element sets no size."""
    size = css.get("font-size")
    if size is None and "font" in css:  # the shorthand: "bold 0/0 a" hides text too
        tokens = css["font"].replace("/", " ").split()
        size = next((t for t in tokens if t[:1].isdigit() or t[:1] == "."), None)
    if size is None:
        return None
    px = _px(size)
    return px is not None and px <= 2


# The screen a rule inside @media is judged on: a desktop mail reader's pane. Mail hides its
# desktop or mobile copy by width; hidden text that shows on no screen at all is what matters.
_VIEWPORT_PX = 800.0
_MEDIA_FEATURE = re.compile(r"\(\s*(min|max)-(?:device-)?width\s*:\s*([^)]*)\)")


def media_applies(at_rule: str) -> bool:
    """Whether an `@media` block's rules hold on that screen: any query of its list whose media
    type is screen or all and whose features are all widths the screen meets. Other features
    (dark mode, resolution), `not` and other at-rules: no, as before they were read."""
    query_list = at_rule.removeprefix("@media")
    if query_list == at_rule:
        return False
    return any(_query_applies(query) for query in query_list.split(",")[:20])


def _query_applies(query: str) -> bool:
    features = _MEDIA_FEATURE.findall(query)
    media_type = _MEDIA_FEATURE.sub(" ", query).replace(" and ", " ").split()
    if media_type[:1] == ["only"]:
        media_type = media_type[1:]
    if media_type not in ([], ["screen"], ["all"]) or "(" in _MEDIA_FEATURE.sub(" ", query):
        return False
    for bound, value in features:
        px = _px(value)
        if px is None or (bound == "min" and px > _VIEWPORT_PX) or (bound == "max" and px < _VIEWPORT_PX):
            return False
    return True
