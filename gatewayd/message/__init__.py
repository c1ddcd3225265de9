"""Turn the raw bytes of one fetched message into the `data` of a `message.received` event.

The input is whatever the server had, possibly cut short by the fetch cap (`BODY.PEEK[]<0.N>`, with
the parts beyond it fetched on their own: joined.py), and quite often malformed. Nothing here may
raise on bad mail: every field is extracted on its own, and a field that cannot be extracted is
logged at debug level and becomes None or [].

The structure is parsed with `email.parser.BytesParser` under `policy.compat32`, not
`policy.default`: the modern policy builds a structured header object on every header access (the
feed parser itself asks each part for its Content-Type several times), which made parsing 3-4 times
slower on the SpamAssassin corpus (median 1.4 ms against 0.3 ms for 10-50 KB messages), and its
header parser is slow on very long header values. A single-part message with a plain header block
(most mail) skips the feed parser: the same compat32 Message is built here, at a third of the cost.
The few headers we need are decoded here instead: RFC 2047 words by a small decoder that tolerates
unknown charsets and bad base64, addresses with `email.utils.getaddresses` (its common shapes by a
regular expression that gives the same result), dates with `email.utils.parsedate_tz`.

Strings handed out never contain lone surrogates (the parser's stand-in for 8-bit bytes), since the
event is stored and sent as UTF-8 JSON.

limits.py     the caps on the work done per message; safe, which turns a failing extractor into its fallback
parsed.py     FetchedMessage, ParsedMessage; parse, the event data field by field; from_address
structure.py  the MIME structure: the guarded compat32 parse, the plain single-part fast path, the
              headers we keep, the leaf parts, the part the fetch cap cut into
joined.py     a message larger than its prefix, joined from the prefix and the parts fetched after it
body.py       attachments, the body text and HTML (and the inline text parts past them), excerpt
attached.py   the text of attached text files, forwarded messages and inline text parts past the
              body, and the parts left unread
contentlines.py  a calendar invite or a contact card as the words an app shows (unfolded, unescaped)
richtext.py   an RTF document or a text/enriched part as the text an app shows (one linear pass)
html.py       the HTML-to-text converter (one linear scan)
text.py       charsets, decoding bytes, surrogate escapes, header cleaning, RFC 2047 encoded words
fields.py     Message-ID, In-Reply-To, References, addresses (with the fast address-list path), dates
identity.py   how a message a rule moved or copied is recognised in its destination
"""

from gatewayd.message.attached import AttachedText, Skipped, SkipReason
from gatewayd.message.body import excerpt
from gatewayd.message.joined import whole_leaf_types
from gatewayd.message.limits import MAX_DEPTH, MAX_HEADER_CHARS, MAX_HTML_CHARS, MAX_PARTS, MAX_TEXT_BYTES
from gatewayd.message.parsed import (
    FetchedMessage,
    FetchedPart,
    ParsedMessage,
    from_address,
    parse,
    parse_message,
)
from gatewayd.message.structure import RAW_HEADERS

__all__ = [
    "MAX_DEPTH",
    "MAX_HEADER_CHARS",
    "MAX_HTML_CHARS",
    "MAX_PARTS",
    "MAX_TEXT_BYTES",
    "RAW_HEADERS",
    "AttachedText",
    "FetchedMessage",
    "FetchedPart",
    "ParsedMessage",
    "SkipReason",
    "Skipped",
    "excerpt",
    "from_address",
    "parse",
    "parse_message",
    "whole_leaf_types",
]
