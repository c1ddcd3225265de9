"""The tokens of a message as the Bayes counts them: header features, subject words, link and
address domains, body words."""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import repeat

from gatewayd.message import ParsedMessage, from_address
from gatewayd.message.lowercase import lower

# Text tokenised per message at most, and tokens kept: bounds the cost of hostile mail.
MAX_TOKEN_TEXT = 64 * 1024
MAX_TOKENS = 3000
# Tokens and sender addresses containing these are never learned (see the package docstring).
ARTEFACTS = ("spamassassin", "taint")

_URL = re.compile(r"(?:https?://|ftp://|www\.)([a-z0-9.-]+)[^\s<>\"']*")
_EMAIL = re.compile(r"@([a-z0-9-]+(?:\.[a-z0-9-]+)+)")  # the domain is all we use
_STRIP = ".,;:!?()[]{}<>\"'*`|=_-~/\\#^"  # punctuation around a word, not part of it
_NUMBER = re.compile(r"[$€£]?\d[\d.,]*%?")
_DIGITS = re.compile(r"\d+")
_DIGIT = re.compile(r"\d")
_CENTS = re.compile(r"[.,]\d\d?%?$")
# A field wanted, or the blank line that ends the header block: both after a newline, a literal
# start the engine looks for itself (much faster than ^ with re.M), so that one pass finds the
# fields and where the block ends. Case-insensitive (ASCII only, as bytes.lower()) rather than on
# a lower-cased copy of the block. The first line has no newline before it: matched on its own.
_RAW_HEADER_OR_END = re.compile(
    rb"\n(?:(content-type|x-mailer|user-agent):[ \t]*([^\r\n]*)|\r?\n)", re.IGNORECASE
)
_FIRST_RAW_HEADER = re.compile(rb"(content-type|x-mailer|user-agent):[ \t]*([^\r\n]*)", re.IGNORECASE)
_CHARSET = re.compile(rb"charset=\"?([a-z0-9_.:-]+)")
_LATIN1_LOWER = bytes(ord(lower(chr(code))) for code in range(256))  # see _lower


def tokenize(message: ParsedMessage) -> list[str]:
    """The distinct tokens of a message: header features, subject words, URL domains, body words."""
    tokens = _header_tokens(message)
    subject = lower(message.data.get("subject") or "")
    tokens += ["subject:" + word for word in _words(subject)]
    text = _lower(message.text[:MAX_TOKEN_TEXT])
    html = _lower((message.html or "")[:MAX_TOKEN_TEXT])
    # Links count by their domain only: paths and tracking parameters are unique per message.
    # Every link has "://" or "www.": most texts need no regex pass.
    hosts: list[str] = []
    if "://" in text or "www." in text:
        hosts, text = _cut_links(text)
    if "://" in html or "www." in html:
        hosts += _link_hosts(html)
    tokens += ["url:" + _domain(host) for host in dict.fromkeys(hosts)]
    tokens += ["email:" + _domain(host) for host in dict.fromkeys(_EMAIL.findall(text))]
    tokens += _words(text)
    # Hardly a message has an artefact: one search of all tokens at once, filtered only when found.
    a, b = ARTEFACTS
    joined = "\n".join(tokens)
    if a in joined or b in joined:
        tokens = [t for t in tokens if a not in t and b not in t]
    return list(dict.fromkeys(tokens))[:MAX_TOKENS]


def _lower(text: str) -> str:
    """text.lower(), with a byte table when the text is Latin-1 beyond ASCII: each of its
    characters lower-cases to one Latin-1 character, where str.lower() looks every character of
    a text beyond ASCII up in the Unicode database (about ten times the cost of the table)."""
    if text.isascii():
        return lower(text)
    try:
        latin1 = text.encode("latin-1")  # a copy of its bytes when the text is Latin-1
    except UnicodeEncodeError:
        return lower(text)
    return latin1.translate(_LATIN1_LOWER).decode("latin-1")


def _cut_links(text: str) -> tuple[list[str], str]:
    """The hosts of the links in `text`, and the text with each link made a space: what
    parts = _URL.split(text) gives as parts[1::2] and " ".join(parts[::2])."""
    hosts: list[str] = []
    kept: list[str] = []
    end = 0
    for link in _links(text):
        hosts.append(link.group(1))
        kept.append(text[end : link.start()])
        end = link.end()
    kept.append(text[end:])
    return hosts, " ".join(kept)


def _link_hosts(text: str) -> list[str]:
    """The hosts of the links in `text`: what _URL.findall(text) gives."""
    return [link.group(1) for link in _links(text)]


def _links(text: str) -> Iterator[re.Match[str]]:
    """_URL.finditer(text), with _URL tried only where a link can start (see _link_starts)."""
    end = 0
    for start in _link_starts(text):
        if start >= end and (link := _URL.match(text, start)):
            yield link
            end = link.end()


def _link_starts(text: str) -> list[int]:
    """Where a link of `text` may start, in order: a link starts at "www." or at its scheme, 3 to
    5 characters before a "://". str.find jumps between those, where a search for _URL stops at
    every "h", "f" and "w" to try it there. Some may be before the text's start (negative)."""
    starts: set[int] = set()
    for literal, offsets in (("://", (5, 4, 3)), ("www.", (0,))):  # https, http, ftp; www.
        position = text.find(literal)
        while position >= 0:
            starts.update(position - offset for offset in offsets)
            position = text.find(literal, position + 1)
    return sorted(starts)


def _words(text: str) -> list[str]:
    """Distinct words of 3 characters or more; numbers by their size, long runs by their shape.

    Plain words first, then the others in their order; this is most of the cost of scoring a message.
    """
    # Stripping every word in C costs less than removing repeats first (a pass over a dict).
    found = dict.fromkeys(map(str.strip, text.split(), repeat(_STRIP)))
    # One pass with bound appends: a third cheaper than a comprehension per kind, each a pass.
    words: list[str] = []
    others: list[str] = []
    add_word, add_other = words.append, others.append
    for w in found:
        if 2 < len(w) <= 20 and w.isalpha():
            add_word(w)
        elif len(w) > 2:
            add_other(w)
    for w in others:
        if _NUMBER.fullmatch(w):  # amounts and counts by their size, not their value
            currency = w[0] if w[0] in "$€£" else ""
            add_word(f"num:{currency}{len(_DIGIT.findall(_CENTS.sub('', w)))}")
        elif len(w) > 20:  # encoded junk, unspaced scripts: shape only, as SpamBayes does
            add_word(f"skip:{w[0]}:{len(w) // 10 * 10}")
        else:
            add_word(_DIGITS.sub("#", w))
    return words


def _domain(host: str) -> str:
    labels = host.strip(".").split(".")
    if all(map(str.isdigit, labels)):  # no generator: stopped early, it is closed by an exception
        return "ip"
    return ".".join(labels[-2:])


def _header_tokens(message: ParsedMessage) -> list[str]:
    data, headers = message.data, message.headers
    tokens = []
    sender = from_address(data)
    sender_domain = sender.rpartition("@")[2] if sender else None
    tokens.append("from:" + (_domain(sender_domain) if sender_domain else "none"))
    if sender and data["from"].get("name"):
        tokens.append("from-name:yes")
    replies = [lower(entry["address"]) for entry in data.get("reply_to") or [] if entry.get("address")]
    if replies and sender_domain and not any(r.endswith("@" + sender_domain) for r in replies):
        tokens.append("reply-to:elsewhere")
    recipients = len(data.get("to") or []) + len(data.get("cc") or [])
    tokens.append(f"recipients:{recipients if recipients < 10 else 'many'}")
    subject = data.get("subject") or ""
    if lower(subject[:3]) in ("re:", "aw:", "sv:"):
        tokens.append("subject:is-reply")
    letters = list(filter(str.isalpha, subject))  # in C, not a loop per character
    if len(letters) >= 8 and all(map(str.isupper, letters)):
        tokens.append("subject:all-caps")
    # Absence is the signal for some headers, presence for others; not both, they would count twice.
    tokens += [f"header:{name}:missing" for name in ("message-id", "date") if not headers.get(name)]
    tokens += [f"header:{name}" for name in ("in-reply-to", "references", "list-id") if headers.get(name)]
    for name in ("precedence", "auto-submitted"):
        if headers.get(name):
            tokens.append(f"header:{name}:{lower(headers[name][0].strip())[:20]}")
    tokens += ["attachment:" + lower(str(a.get("content_type", "?"))) for a in data.get("attachments") or []]
    # A few headers message.parse does not keep: the message's structure and the mailer.
    for field, value in _raw_headers(message.raw):
        if field == b"content-type":
            kind, _, parameters = value.partition(b";")
            tokens.append("content-type:" + kind.strip().decode("latin-1")[:40])
            tokens += ["charset:" + c.decode("latin-1") for c in _CHARSET.findall(parameters)]
        else:
            tokens.append("mailer:" + _DIGITS.sub("#", value.strip().decode("latin-1").split(" ")[0][:30]))
    return tokens


def _raw_headers(raw: bytes) -> list[tuple[bytes, bytes]]:
    """The Content-Type, X-Mailer and User-Agent fields in the header block's first 64 KiB, with
    their values, lower-cased: what a search after each newline of b"\n" + the block lower-cased
    finds."""
    found: list[tuple[bytes, bytes]] = []
    end = min(len(raw), 65536)
    for match in _RAW_HEADER_OR_END.finditer(raw, 0, end):
        field, value = match.groups()
        if field is None:  # the blank line
            end = match.start()
            break
        found.append((field.lower(), value.lower()))
    if first := _FIRST_RAW_HEADER.match(raw, 0, end):
        found.insert(0, (first[1].lower(), first[2].lower()))
    return found
