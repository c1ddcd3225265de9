"""What an RTF document (text/rtf, application/rtf, .rtf) or a text/enriched part says, as the words
a word processor or mail app shows.

Raw RTF hides words from a text scan: control words split them (`\\b Ignore\\b0  previous`), and
characters may be written as hex escapes (`ig\\'6eore`) or Unicode ones (`\\u105?`). `rtf_shown`
reads the document in one linear pass over its tokens: control words are dropped (those that stand
for a character, a paragraph or a tab give it), `\\'hh` is decoded in the document's code page
(`\\ansicpg`, else Windows-1252) and `\\uN` as its character, its fallback skipped (`\\uc`). The
groups that hold tables, codes or binary data are skipped: the font, colour, style, list and revision
tables, pictures, objects (all but their `\\result`, the object as last rendered, which Word shows),
themes and data stores. Hidden text (`\\v`) is kept: an agent
reading the file sees it, and it is where an instruction would be hidden. So is the text of the
groups no app shows in the document but an agent reads in the file, after the text shown, one group
a line: any other `{\\*\\...}` destination, field instructions (`\\fldinst`) and the document
information. `enriched_shown` drops a text/enriched (RFC 1896) part's formatting commands and their
parameters; `richtext_shown` a text/richtext (RFC 1341) part's, its `<lt>` a "<" and `<nl>` a line
break.
"""

from __future__ import annotations

import codecs
import contextlib
import re

from gatewayd.message.lowercase import lower

# One token at a time; each alternative starts with a different character, so a match never
# backtracks past the token it reads.
_TOKEN = re.compile(
    r"\\([a-zA-Z]{1,32})(-?[0-9]{1,10})? ?"  # control word, its parameter, its delimiting space
    r"|\\'([0-9a-fA-F]{2})"  # a byte in the code page
    r"|\\(.)"  # control symbol
    r"|([{}])"
    r"|[\r\n]+"  # line breaks in the source are not text
    r"|([^\\{}\r\n]+)",
    re.S,
)
# Destinations of tables, codes and binary data (RTF 1.9.1): no words for a reader, and hex runs that
# would read as encoded payloads.
_SKIPPED = frozenset(
    {
        "fonttbl", "colortbl", "stylesheet", "listtable", "listoverridetable", "revtbl", "rsidtbl",
        "pict", "objdata", "themedata", "colorschememapping", "latentstyles", "datastore",
        "xmlnstbl", "filetbl", "pgdsctbl", "nonshppict", "shppict", "panose", "blipuid", "datafield",
        "password", "passwordhash", "oleclsid", "mmathPr",
    }
)  # fmt: skip
# Destinations not shown in the document whose text an agent reading the file reads: kept apart,
# the document information's fields each a line.
_APART = frozenset(
    {
        "fldinst", "info", "title", "subject", "author", "manager", "company", "operator", "category",
        "keywords", "comment", "doccomm",
    }
)  # fmt: skip
_CHARACTERS = {
    "par": "\n", "line": "\n", "sect": "\n", "page": "\n", "row": "\n", "tab": "\t", "cell": "\t",
    "emdash": "\u2014", "endash": "\u2013", "emspace": " ", "enspace": " ", "qmspace": " ",
    "bullet": "\u2022", "lquote": "\u2018", "rquote": "\u2019", "ldblquote": "\u201c",
    "rdblquote": "\u201d",
}  # fmt: skip
_SYMBOLS = {"\\": "\\", "{": "{", "}": "}", "~": "\u00a0", "_": "-", "-": "", "\n": "\n", "\r": "\n"}
_DEFAULT_CODEPAGE = "cp1252"
_MAX_FALLBACK = 8  # a \ucN larger than any real fallback would swallow the text after each \u

_ENRICHED = re.compile(r"<<|<param>[^<]*</param>|</?[A-Za-z0-9-]{1,60}>|\r?\n(?:\r?\n)*", re.I)
# RFC 1341 7.1.3: commands of at most 40 characters; "<" is written <lt>, a line break <nl> (or a
# page's <np>); line breaks in the source are spaces.
_RICHTEXT = re.compile(r"</?[A-Za-z0-9-]{1,40}>|[\r\n]+")
_RICHTEXT_CHARACTERS = {"<lt>": "<", "<nl>": "\n", "<np>": "\n"}


def rtf_shown(source: str) -> str:
    """The visible text of the RTF document `source` (hidden text included), then the text of its
    groups not shown, one group a line."""
    return _RtfReader().read(source)


def enriched_shown(source: str) -> str:
    """The text of a text/enriched part: "<<" is "<", a lone line break a space (RFC 1896)."""
    return _ENRICHED.sub(_enriched_token, source)


def richtext_shown(source: str) -> str:
    """The text of a text/richtext part."""
    return _RICHTEXT.sub(_richtext_token, source)


def _richtext_token(match: re.Match[str]) -> str:
    token = match.group()
    if token.startswith("<"):
        return _RICHTEXT_CHARACTERS.get(lower(token), "")
    return " "


def _enriched_token(match: re.Match[str]) -> str:
    token = match.group()
    if token == "<<":
        return "<"
    if token.startswith("<"):
        return ""
    return "\n" * (token.count("\n") - 1) or " "


class _RtfReader:
    def __init__(self) -> None:
        self.shown: list[str] = []
        self.apart: list[list[str]] = []  # the text of each group not shown, after the text shown
        self.out = self.shown  # where the text read goes
        self.pending = bytearray()  # \'hh bytes, decoded together: a multibyte code page's characters
        self.codepage = _DEFAULT_CODEPAGE
        self.depth = 0
        self.skip_from: int | None = None  # the depth of the group being skipped
        self.objects: list[int] = []  # the depths of the open \\object groups, innermost last
        self.apart_from: int | None = None  # the depth of the group whose text is kept apart
        self.fallbacks = [1]  # \uc of each open group: the characters after \uN that stand for it
        self.to_drop = 0  # fallback characters still to drop after a \uN
        self.high_surrogate: int | None = None

    def read(self, source: str) -> str:
        position, end = 0, len(source)
        while position < end:
            token = _TOKEN.match(source, position)
            if token is None:  # a lone backslash at the end
                break
            position = token.end()
            word, parameter, byte, symbol, brace, text = token.groups()
            if word == "bin" and parameter is not None:  # binary data, skipped, braces and all
                position = min(position + max(int(parameter), 0), end)
            elif brace is not None:
                self._brace(brace)
            elif self.skip_from is not None:
                if word == "result" and self.objects and self.skip_from == self.objects[-1] == self.depth - 1:
                    self.skip_from = None  # an object's {\\result ...}: its text is shown
                continue
            elif byte is not None:
                self._byte(int(byte, 16))
            elif text is not None:
                self._text(text)
            elif word is not None:
                self._word(word, parameter)
            elif symbol is not None:
                self._symbol(symbol)
        self._flush()
        apart = "\n".join(text for text in map("".join, self.apart) if text)
        return "".join(self.shown) + (f"\n{apart}" if apart else "")

    def _brace(self, brace: str) -> None:
        self._flush()
        if brace == "{":
            self.depth += 1
            self.fallbacks.append(self.fallbacks[-1])
            return
        if self.depth == 0:  # an unmatched "}"
            return
        if self.skip_from == self.depth:
            self.skip_from = None
        if self.objects and self.objects[-1] == self.depth:
            self.objects.pop()
        # Not `elif`: a result that opened an object of its own (`{\\result x\\object ...}`) closes
        # both, and the rest of the outer object stays skipped all the same.
        if self.objects and self.objects[-1] == self.depth - 1:  # the rest of the object stays skipped
            self.skip_from = self.objects[-1]
        if self.apart_from == self.depth:
            self.apart_from = None
            self.out = self.shown
        self.depth -= 1
        self.fallbacks.pop()

    def _skip_group(self) -> None:
        if self.depth > 0:  # never the text after the document's closing brace
            self.pending.clear()
            self.skip_from = self.depth

    def _skip_object(self) -> None:
        """Skip the object's group but for its result (`read` stops skipping at `\\result`)."""
        if self.depth > 0:
            self._skip_group()
            self.objects.append(self.depth)

    def _keep_apart(self) -> None:
        if self.depth == 0:  # never the text after the document's closing brace
            return
        self._flush()
        self.to_drop = 0
        self.out = []
        self.apart.append(self.out)
        if self.apart_from is None:
            self.apart_from = self.depth

    def _byte(self, value: int) -> None:
        if self.to_drop:
            self.to_drop -= 1
            return
        self.pending.append(value)

    def _text(self, text: str) -> None:
        if self.to_drop:
            dropped = min(self.to_drop, len(text))
            self.to_drop -= dropped
            text = text[dropped:]
        if text:
            self._flush()
            self.out.append(text)

    def _word(self, word: str, parameter: str | None) -> None:
        if word in _SKIPPED:
            self._skip_group()
        elif word in _APART:
            self._keep_apart()
        elif word == "object":
            self._skip_object()
        elif word == "u" and parameter is not None:
            self._unicode(int(parameter))
        elif word == "uc" and parameter is not None:
            self.fallbacks[-1] = min(max(int(parameter), 0), _MAX_FALLBACK)
        elif word == "ansicpg" and parameter is not None:
            self._codepage(f"cp{int(parameter)}")
        elif word in _CHARACTERS:
            self._flush()
            self.to_drop = 0
            self.out.append(_CHARACTERS[word])

    def _symbol(self, symbol: str) -> None:
        if symbol == "*":  # an optional destination, which an app that does not know it does not show
            self._keep_apart()
        elif symbol in _SYMBOLS:
            self._text(_SYMBOLS[symbol])

    def _unicode(self, value: int) -> None:
        """\\uN: N is a signed 16-bit number; a character past U+FFFF comes as two, its UTF-16 halves."""
        self._flush_bytes()
        code = value + 65536 if value < 0 else value
        self.to_drop = self.fallbacks[-1]
        high, self.high_surrogate = self.high_surrogate, None
        if 0xDC00 <= code < 0xE000 and high is not None:
            self.out.append(chr(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00)))
            return
        if high is not None:
            self.out.append("\ufffd")
        if 0xD800 <= code < 0xDC00:
            self.high_surrogate = code
        elif 0 <= code <= 0x10FFFF and not 0xDC00 <= code < 0xE000:
            self.out.append(chr(code))
        else:
            self.out.append("\ufffd")  # strings handed out never hold a lone surrogate

    def _codepage(self, name: str) -> None:
        with contextlib.suppress(LookupError):  # an unknown code page: its bytes are read as Windows-1252
            self.codepage = codecs.lookup(name).name

    def _flush(self) -> None:
        if self.high_surrogate is not None:
            self.out.append("\ufffd")
            self.high_surrogate = None
        self._flush_bytes()

    def _flush_bytes(self) -> None:
        if self.pending:
            self.out.append(self.pending.decode(self.codepage, errors="replace"))
            self.pending.clear()
