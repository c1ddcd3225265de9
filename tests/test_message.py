"""parse_message: raw (possibly truncated, possibly malformed) mail to message.received data."""

from __future__ import annotations

import base64
import contextlib
import json
import quopri
import random
import re
import time
from collections.abc import Callable
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.message import (
    MAX_HEADER_CHARS,
    MAX_PARTS,
    FetchedMessage,
    FetchedPart,
    body,
    from_address,
    parse_message,
    structure,
)
from gatewayd.message import parse as parse_parsed
from gatewayd.message.fields import _getaddresses
from gatewayd.message.structure import (
    _GuardedMessage,
    _parse_structure,
    _plain_single_part,
    _TooManyPartsError,
)
from gatewayd.message.text import _CONTROLS, collapse
from tests.sse import INJECTION, late_text_mail

KEYS = {
    "folder",
    "uid",
    "uidvalidity",
    "size",
    "flags",
    "message_id",
    "from",
    "to",
    "cc",
    "reply_to",
    "subject",
    "date",
    "received_at",
    "in_reply_to",
    "references",
    "has_attachments",
    "attachments",
    "body_text_excerpt",
    "truncated",
    "headers",
}
RAW_HEADER_NAMES = {"list-id", "auto-submitted", "precedence", "return-path"}
CORPUS = Path("/work/shared/corpus/spamassassin")


def assert_well_formed(data: dict[str, Any]) -> None:
    """Every key present with the documented type, and storable as UTF-8 JSON."""
    assert set(data) == KEYS
    json.dumps(data, ensure_ascii=False).encode("utf-8")  # fails on lone surrogates
    for key in ("message_id", "subject", "date", "received_at", "in_reply_to", "body_text_excerpt"):
        assert data[key] is None or isinstance(data[key], str), key
    assert data["from"] is None or set(data["from"]) == {"address", "name"}
    for key in ("to", "cc", "reply_to"):
        assert isinstance(data[key], list)
        assert all(set(entry) == {"address", "name"} for entry in data[key])
    assert all(isinstance(ref, str) for ref in data["references"])
    assert isinstance(data["truncated"], bool)
    assert data["has_attachments"] is bool(data["attachments"])
    for attachment in data["attachments"]:
        assert set(attachment) == {"filename", "content_type", "size"}  # never any content
        assert isinstance(attachment["content_type"], str)
        assert attachment["size"] is None or attachment["size"] >= 0
    assert set(data["headers"]) == RAW_HEADER_NAMES


def parse(
    raw: bytes | str,
    *,
    size: int | None = None,
    excerpt_chars: int = 500,
    internaldate: str | None = "21-Nov-2026 13:25:53 +0000",
) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    msg = FetchedMessage(
        folder="INBOX",
        uid=42,
        uidvalidity=7,
        raw=raw,
        size=len(raw) if size is None else size,
        flags=("\\Seen", "$Important"),
        internaldate=internaldate,
    )
    data = parse_message(msg, excerpt_chars=excerpt_chars)
    assert_well_formed(data)
    return data


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii")


PLAIN = crlf(
    """Return-Path: <bounce@lists.example.org>
Received: from mx.example.org by mail.example.com; Sat, 21 Nov 2026 13:25:50 +0000
Message-ID:  <abc.123@example.org>
Date: Sat, 21 Nov 2026 14:25:53 +0100
From: "Doe, John" <John.Doe@Example.ORG>
To: Alice <alice@example.com>, bob@example.com
Cc: =?utf-8?q?J=C3=B6rg?= <joerg@example.de>
Reply-To: replies@example.org
Subject: Quarterly
  report
In-Reply-To: <parent@example.org>
References: <root@example.org>
 <parent@example.org>
List-Id: Reports <reports.example.org>
Precedence: list
Auto-Submitted: no
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Hello Alice,

the   report\tis attached.
"""
)


def test_plain_message() -> None:
    data = parse(PLAIN)
    assert data["folder"] == "INBOX"
    assert (data["uid"], data["uidvalidity"], data["size"]) == (42, 7, len(PLAIN))
    assert data["flags"] == ["\\Seen", "$Important"]
    assert data["message_id"] == "<abc.123@example.org>"
    assert data["from"] == {"address": "John.Doe@Example.ORG", "name": "Doe, John"}
    assert from_address(data) == "john.doe@example.org"
    assert data["to"] == [
        {"address": "alice@example.com", "name": "Alice"},
        {"address": "bob@example.com", "name": None},
    ]
    assert data["cc"] == [{"address": "joerg@example.de", "name": "Jörg"}]
    assert data["reply_to"] == [{"address": "replies@example.org", "name": None}]
    assert data["subject"] == "Quarterly report"  # unfolded, whitespace collapsed
    assert data["date"] == "2026-11-21T13:25:53.000Z"
    assert data["received_at"] == "2026-11-21T13:25:53.000Z"
    assert data["in_reply_to"] == "<parent@example.org>"
    assert data["references"] == ["<root@example.org>", "<parent@example.org>"]
    assert data["body_text_excerpt"] == "Hello Alice, the report is attached."
    assert data["attachments"] == []
    assert data["has_attachments"] is False
    assert data["truncated"] is False
    assert data["headers"] == {
        "list-id": "Reports <reports.example.org>",
        "auto-submitted": "no",
        "precedence": "list",
        "return-path": "<bounce@lists.example.org>",
    }


def test_lf_line_endings_parse_the_same() -> None:
    lf = parse(PLAIN.replace(b"\r\n", b"\n"))
    assert lf["subject"] == "Quarterly report"
    assert lf["body_text_excerpt"] == "Hello Alice, the report is attached."
    assert lf["references"] == ["<root@example.org>", "<parent@example.org>"]


def test_from_address_tolerates_missing_parts() -> None:
    assert from_address({}) is None
    assert from_address({"from": None}) is None
    assert from_address({"from": {"address": None, "name": "Cron Daemon"}}) is None
    assert from_address({"from": {"address": "A@B.Example", "name": None}}) == "a@b.example"


ALTERNATIVE = crlf(
    """From: a@example.org
Subject: alt
Content-Type: multipart/alternative; boundary="ALT"

--ALT
Content-Type: text/html; charset=utf-8

<p>HTML version</p>
--ALT
Content-Type: text/plain; charset=utf-8

{plain}
--ALT--
"""
)


def test_multipart_alternative_prefers_text_plain() -> None:
    # The HTML alternative comes first here: text/plain wins wherever it is.
    data = parse(ALTERNATIVE.replace(b"{plain}", b"Plain version"))
    assert data["body_text_excerpt"] == "Plain version"
    assert data["attachments"] == []


def test_empty_text_plain_falls_back_to_html() -> None:
    data = parse(ALTERNATIVE.replace(b"{plain}", b"  \r\n"))
    assert data["body_text_excerpt"] == "HTML version"


def test_the_body_leaves_only_the_further_inline_text_parts_unread() -> None:
    """body.bodies reads the first text/plain or text/html part and its alternative; the other
    inline ones (not attachments) are handed on, in order, for the stages that read what an agent
    reads: an HTML part after a plain body, no alternative of it, among them."""
    alternative = ALTERNATIVE.replace(b"{plain}", b"Plain version")
    mixed = crlf(
        """Content-Type: multipart/mixed; boundary="MIX"

--MIX
Content-Type: text/plain

first
--MIX
Content-Type: text/plain; name="notes.txt"

an attachment: it has a name
--MIX
Content-Type: text/html
Content-Disposition: inline

<p>second</p>
--MIX
Content-Type: text/plain
Content-Disposition: inline

third
--MIX--
"""
    )
    unread = {}
    for name, raw in (("plain", PLAIN), ("alternative", alternative), ("mixed", mixed)):
        root = structure.parse(raw)
        leaves, _ = structure.leaves(root)
        unread[name] = [str(part.get_payload()).strip() for part in body.bodies(leaves, root, ()).unread]
    assert unread == {"plain": [], "alternative": [], "mixed": ["<p>second</p>", "third"]}


def _mixed(*parts: tuple[str, str]) -> bytes:
    """A multipart/mixed message of these (content type, content) parts, none an alternative of another."""
    body = "".join(f"--MIX\nContent-Type: {ctype}; charset=utf-8\n\n{content}\n" for ctype, content in parts)
    return crlf(f'From: list@example.org\nContent-Type: multipart/mixed; boundary="MIX"\n\n{body}--MIX--\n')


def _parsed_body(raw: bytes) -> tuple[str, str | None, list[tuple[str, str, str | None]]]:
    msg = FetchedMessage("INBOX", 1, 1, raw, len(raw), (), None)
    parsed = parse_parsed(msg)
    return parsed.text, parsed.html, [(part.location, part.text, part.html) for part in parsed.attached]


def test_an_html_body_with_a_plain_footer_is_the_body() -> None:
    # Mailman and disclaimers append a text/plain part to an HTML body: a reader sees the HTML first.
    raw = _mixed(("text/html", "<p>Meet at <b>noon</b></p>"), ("text/plain", "-- \nlist footer"))
    text, html, attached_texts = _parsed_body(raw)
    assert (text.strip(), html) == ("Meet at noon", "<p>Meet at <b>noon</b></p>")
    assert attached_texts == [("inline:2", "-- \r\nlist footer", None)]
    assert parse(raw)["body_text_excerpt"] == "Meet at noon"


def test_an_html_part_after_a_plain_body_is_its_own_part() -> None:
    raw = _mixed(("text/plain", "Meet at noon"), ("text/html", "<p>list <b>footer</b></p>"))
    text, html, attached_texts = _parsed_body(raw)
    assert (text, html) == ("Meet at noon", None)
    assert attached_texts == [("inline:2", "", "<p>list <b>footer</b></p>")]
    assert parse(raw)["body_text_excerpt"] == "Meet at noon"


def test_an_alternative_followed_by_a_footer_keeps_its_text_and_html() -> None:
    # The plain alternative is empty: the body is the HTML, never the footer after it.
    raw = crlf(
        """Content-Type: multipart/mixed; boundary="MIX"

--MIX
Content-Type: multipart/alternative; boundary="ALT"

--ALT
Content-Type: text/plain


--ALT
Content-Type: text/html

<p>Meet at noon</p>
--ALT--
--MIX
Content-Type: text/plain

list footer
--MIX--
"""
    )
    text, html, attached_texts = _parsed_body(raw)
    assert (text.strip(), html) == ("Meet at noon", "<p>Meet at noon</p>")
    assert attached_texts == [("inline:3", "list footer", None)]


HTML_ONLY = crlf(
    """From: news@example.org
Subject: html
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

<!DOCTYPE html>
<html><head><title>Hidden title</title>
<style>p { color: red } .x:before { content: "<b>" }</style>
<script>if (a < b) { document.write("hidden script") }</script>
</head>
<body><!-- a comment -->
<h1>Caf=C3=A9 &amp; more</h1><p>5 &lt; 6 &eacute;t&eacute; &#8364;10&nbsp;off</p>
<div>second<br>line</div><noscript>enable js</noscript>
</body></html>
"""
)


def test_html_only_body_becomes_plain_text() -> None:
    excerpt = parse(HTML_ONLY)["body_text_excerpt"]
    # Entities unescaped (&nbsp; collapses like any whitespace), block tags separate words.
    assert excerpt == "Café & more 5 < 6 été €10 off second line"
    for hidden in ("Hidden title", "color", "hidden script", "comment", "enable js", "<h1>", "<p"):
        assert hidden not in excerpt


def test_html_oddities() -> None:
    html = (
        '<head><meta charset="utf-8"></head><p title="a > b">Visible</p>'
        "<a href='x?email=<someone>'>link</a> a<b>c</b>d <x-custom>y</x-custom>"
    )
    raw = f"From: a@example.org\nContent-Type: text/html\n\n{html}\n".encode()
    # A ">" inside a quoted attribute does not end the tag; inline tags do not split words.
    assert parse(raw)["body_text_excerpt"] == "Visible link acd y"


@pytest.mark.parametrize(
    ("html", "shown"),
    [
        ("<p>Hi</p><" + "x" * 60_000, "Hi"),  # a tag never closed: its name's every split was tried
        ("<p>Hi</p><script>" + "</script" * 16_000, "Hi"),  # end tags never closed: each to the end
    ],
)
def test_html_never_closed_is_read_in_linear_time(html: str, shown: str) -> None:
    """Markup with no ">" after it took 2.5 s for 60 KB (a minute for the 256 KiB read), on the
    event loop: the loose tag and the end tag patterns backtracked over all the rest."""
    raw = f"From: a@example.org\nContent-Type: text/html\n\n{html}".encode()
    started = time.process_time()
    excerpt = parse(raw)["body_text_excerpt"]
    assert time.process_time() - started < 0.5
    assert excerpt == shown


PDF = bytes(range(256)) * 3 + b"%%EOF"  # 773 bytes: base64 needs padding
PNG = b"\x89PNG\r\n\x1a\n" + bytes(100)
NOTES = "Größe: 10 €\nzweite Zeile\n".encode()

ATTACHMENTS = crlf(
    f"""From: a@example.org
Subject: files
Content-Type: multipart/mixed; boundary="MIX"

--MIX
Content-Type: multipart/related; boundary="REL"

--REL
Content-Type: text/html; charset=utf-8

<p>See <img src="cid:logo"></p>
--REL
Content-Type: image/png
Content-Transfer-Encoding: base64
Content-ID: <logo>

{b64(PNG)}--REL--

--MIX
Content-Type: application/pdf
Content-Disposition: attachment; filename*=utf-8''%E2%82%AC%20rates.pdf
Content-Transfer-Encoding: base64

{b64(PDF)}
--MIX
Content-Type: text/csv
Content-Disposition: attachment; filename*0*=utf-8''Gr%C3%B6; filename*1*=%C3%9Fe.csv

a,b
--MIX
Content-Type: text/plain; charset=utf-8; name="=?utf-8?B?{base64.b64encode(b"Notizen.txt").decode()}?="
Content-Disposition: attachment
Content-Transfer-Encoding: quoted-printable

{quopri.encodestring(NOTES).decode()}
--MIX
Content-Type: message/rfc822

From: inner@example.org
Subject: forwarded

Inner body that is not the body of this message.
--MIX--
"""
)


def test_attachment_metadata() -> None:
    data = parse(ATTACHMENTS)
    assert data["has_attachments"] is True
    by_type = {a["content_type"]: a for a in data["attachments"]}
    assert list(by_type) == ["image/png", "application/pdf", "text/csv", "text/plain", "message/rfc822"]
    assert by_type["image/png"] == {"filename": None, "content_type": "image/png", "size": len(PNG)}
    assert by_type["application/pdf"] == {
        "filename": "€ rates.pdf",  # RFC 2231
        "content_type": "application/pdf",
        "size": len(PDF),  # from the encoded length, padding taken off
    }
    assert by_type["text/csv"]["filename"] == "Größe.csv"  # RFC 2231 continuation
    assert by_type["text/csv"]["size"] == len(b"a,b")
    assert by_type["text/plain"]["filename"] == "Notizen.txt"  # RFC 2047 in a parameter
    assert abs(by_type["text/plain"]["size"] - len(NOTES)) <= 2  # line ending of the last line
    assert by_type["message/rfc822"]["filename"] is None
    assert by_type["message/rfc822"]["size"] > len("Inner body that is not the body of this message.")
    # The inline HTML is the body; the forwarded message's text is not.
    assert data["body_text_excerpt"] == "See"


def test_attachment_size_for_unpadded_and_crlf_base64() -> None:
    payload = bytes(range(200)) * 7  # 1400 bytes
    encoded = base64.b64encode(payload).decode().rstrip("=")
    lines = "\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    raw = (
        "From: a@example.org\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Transfer-Encoding: Base64 \r\n\r\n{lines}\r\n"
    )
    [attachment] = parse(raw)["attachments"]
    assert attachment["size"] == len(payload)
    assert attachment["filename"] is None


def _subject(value: str) -> str | None:
    return parse(f"From: a@example.org\nSubject: {value}\n\nbody\n")["subject"]


def _word(charset: str, text: str) -> str:
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode()}?="


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (_word("utf-8", "Grüße aus Köln"), "Grüße aus Köln"),
        ("=?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=", "Grüße aus Köln"),
        ("=?iso-8859-1?q?Caf=E9_cr=E8me?=", "Café crème"),
        (_word("koi8-r", "Привет, мир"), "Привет, мир"),
        (_word("shift_jis", "こんにちは"), "こんにちは"),
        (_word("windows-1252", "“quoted” – €5"), "“quoted” – €5"),
        ("Re: =?utf-8?q?caf=C3=A9?= time", "Re: café time"),
        # Whitespace between encoded words goes, a character split across two words survives.
        ("=?utf-8?B?5pc=?= \r\n =?utf-8?B?peacrOiqng==?=", "日本語"),
        ("=?utf-8?q?a?= =?iso-8859-1?q?=E9?=", "aé"),
        ("=?utf-8*en?q?with_language?=", "with language"),
    ],
)
def test_rfc2047_subjects(header: str, expected: str) -> None:
    assert _subject(header) == expected


def test_raw_8bit_headers() -> None:
    utf8 = parse("From: Jörg Müller <j@example.de>\nSubject: Grüße\n\nx\n".encode())
    assert utf8["subject"] == "Grüße"
    assert utf8["from"] == {"address": "j@example.de", "name": "Jörg Müller"}
    latin1 = parse("From: André <a@example.fr>\nSubject: Café\n\nx\n".encode("latin-1"))
    assert latin1["subject"] == "Café"
    assert latin1["from"] == {"address": "a@example.fr", "name": "André"}


def test_encoded_display_names_in_several_charsets() -> None:
    data = parse(
        "From: =?iso-8859-1?Q?Andr=E9?= <andre@example.fr>\n"
        f"To: {_word('utf-8', '王小明')} <wang@example.cn>, {_word('koi8-r', 'Иван')} <ivan@example.ru>\n"
        "\nx\n"
    )
    assert data["from"] == {"address": "andre@example.fr", "name": "André"}
    assert [entry["name"] for entry in data["to"]] == ["王小明", "Иван"]


@pytest.mark.parametrize(
    ("charset", "text", "cte"),
    [
        ("windows-1252", "Smart “quotes” – and €5 off", "8bit"),
        ("koi8-r", "Привет, мир! Как дела?", "8bit"),
        ("shift_jis", "こんにちは、世界。", "base64"),
        ("iso-8859-1", "Façade déjà vu", "quoted-printable"),
        ("gb2312", "你好，世界", "base64"),
    ],
)
def test_body_in_legacy_charsets(charset: str, text: str, cte: str) -> None:
    body = text.encode(charset)
    if cte == "base64":
        encoded = b64(body).encode()
    elif cte == "quoted-printable":
        encoded = quopri.encodestring(body)
    else:
        encoded = body
    raw = (
        f'From: a@example.org\r\nContent-Type: text/plain; charset="{charset}"\r\n'
        f"Content-Transfer-Encoding: {cte}\r\n\r\n"
    ).encode() + encoded
    assert parse(raw)["body_text_excerpt"] == text


def test_references_and_in_reply_to() -> None:
    data = parse(
        "From: a@example.org\n"
        "In-Reply-To: Your message of Monday <parent@example.org>\n"
        "References: <a@example.org><b@example.org>\n <parent@example.org>\n"
        "Message-ID:\n <folded@example.org>\n"
        "\nx\n"
    )
    assert data["in_reply_to"] == "<parent@example.org>"
    assert data["references"] == ["<a@example.org>", "<b@example.org>", "<parent@example.org>"]
    assert data["message_id"] == "<folded@example.org>"
    bare = parse("From: a@example.org\n\nx\n")
    assert (bare["in_reply_to"], bare["references"], bare["message_id"]) == (None, [], None)


LONG_TEXT = " ".join(f"word{i:03d}" for i in range(300))


@pytest.mark.parametrize("limit", [20, 50, 500])
def test_excerpt_is_cut_at_a_word_boundary(limit: int) -> None:
    excerpt = parse(f"From: a@example.org\n\n{LONG_TEXT}\n", excerpt_chars=limit)["body_text_excerpt"]
    assert excerpt.endswith("…")
    assert limit * 3 // 4 <= len(excerpt) <= limit
    kept = excerpt[:-1]
    assert LONG_TEXT.startswith(kept)
    assert LONG_TEXT[len(kept)] == " "  # whole words only


def test_excerpt_without_spaces_is_cut_hard() -> None:
    excerpt = parse("From: a@example.org\n\n" + "x" * 2000 + "\n")["body_text_excerpt"]
    assert excerpt == "x" * 499 + "…"


def test_short_excerpt_is_whole_and_collapsed() -> None:
    data = parse("From: a@example.org\n\n  Short\n\n\n\ttext \x00with\x1b[31m controls  \n")
    assert data["body_text_excerpt"] == "Short text with [31m controls"


@pytest.mark.parametrize(
    "tail", ["", "\u00e9", "\u2028", "\U0001f600"], ids=["ASCII", "Latin-1", "UCS-2", "UCS-4"]
)
def test_collapse_of_ascii_by_bytes_matches_the_regex(tail: str) -> None:
    """ASCII text has its controls made spaces by a byte table, other text by the regex: the same."""
    for code in range(0x100):
        for text in (chr(code), f"a{chr(code)}b", f" {chr(code)}\t{chr(code)}{chr(code)} x "):
            text += tail
            assert collapse(text) == " ".join(_CONTROLS.sub(" ", text).split()), (code, tail)


def test_excerpt_chars_zero_gives_none() -> None:
    assert parse(PLAIN, excerpt_chars=0)["body_text_excerpt"] is None


def _truncated_fixture() -> tuple[bytes, int]:
    """A message whose second attachment is large; returns it and where that attachment's data starts."""
    big = random.Random(3).randbytes(30000)
    raw = crlf(
        f"""From: a@example.org
Subject: big
Content-Type: multipart/mixed; boundary="B"

--B
Content-Type: text/plain; charset=utf-8

The body comes first.
--B
Content-Type: image/gif
Content-Disposition: attachment; filename="small.gif"
Content-Transfer-Encoding: base64

{b64(b"GIF89a" + bytes(50))}
--B
Content-Type: application/zip
Content-Disposition: attachment; filename="big.zip"
Content-Transfer-Encoding: base64

{b64(big)}
--B--
"""
    )
    return raw, raw.index(b'filename="big.zip"')


def test_truncated_inside_base64_attachment() -> None:
    full, big_at = _truncated_fixture()
    data = parse(full[: big_at + 5000], size=len(full))
    assert data["truncated"] is True
    assert data["subject"] == "big"
    assert data["body_text_excerpt"] == "The body comes first."
    small, big = data["attachments"]
    assert small == {"filename": "small.gif", "content_type": "image/gif", "size": 56}
    assert big == {"filename": "big.zip", "content_type": "application/zip", "size": None}


def test_truncated_before_the_attachment_data() -> None:
    full, big_at = _truncated_fixture()
    data = parse(full[: big_at + 10], size=len(full))  # cut inside the part's headers
    assert data["truncated"] is True
    assert [(a["content_type"], a["size"]) for a in data["attachments"]] == [
        ("image/gif", 56),
        ("application/zip", None),
    ]


def test_truncated_after_the_closing_boundary_keeps_sizes() -> None:
    full, _ = _truncated_fixture()
    padded = full + b"epilogue " * 100
    data = parse(padded[: len(full) + 20], size=len(padded))
    assert data["truncated"] is True
    assert [a["size"] for a in data["attachments"]] == [56, 30000]


def test_untruncated_message_is_not_marked() -> None:
    full, _ = _truncated_fixture()
    data = parse(full)
    assert data["truncated"] is False
    assert [a["size"] for a in data["attachments"]] == [56, 30000]


def _prefix_and_parts(full: bytes, cap: int) -> FetchedMessage:
    """`full` as the live fetch hands it over: its first `cap` bytes, and the parts the prefix holds
    not whole (the PDF's MIME header, the text's header and content), as gatewayd.imap.parts gets
    them from Dovecot (tests/integration/test_fetch_parts.py)."""
    body = full.partition(b"\r\n\r\n--B\r\n")[2]
    pdf, text = body.split(b"--B\r\n")[:2]
    pdf_header, _, _ = pdf.partition(b"\r\n\r\n")
    text_header, _, text_content = text.partition(b"\r\n\r\n")
    text_content = text_content.partition(b"\r\n--B--")[0]
    return FetchedMessage(
        folder="INBOX",
        uid=42,
        uidvalidity=7,
        raw=full[:cap],
        size=len(full),
        flags=(),
        internaldate=None,
        parts=(
            FetchedPart(0, "1", pdf_header + b"\r\n\r\n", b"", size=300_000, cut=True),
            FetchedPart(1, "2", text_header + b"\r\n\r\n", text_content, None, False),
        ),
    )


def test_parts_fetched_after_the_prefix_give_what_the_whole_message_gives() -> None:
    full = late_text_mail("late")
    prefix = parse(full[:262144], size=len(full))
    assert prefix["body_text_excerpt"] is None  # the text lies past the cap: hidden from every stage
    joined = parse_message(_prefix_and_parts(full, 262144))
    whole = parse(full)
    assert joined["body_text_excerpt"] == whole["body_text_excerpt"] == INJECTION
    assert joined["attachments"] == whole["attachments"]
    assert joined["truncated"] is True and whole["truncated"] is False


def test_the_parsed_message_says_when_its_text_or_parts_were_not_all_read() -> None:
    """Rules must not take "not found" in a cut text for "not there" (gatewayd.rules.conditions)."""
    full = late_text_mail("late")
    whole = parse_parsed(FetchedMessage("INBOX", 1, 1, full, len(full), (), None))
    joined = parse_parsed(_prefix_and_parts(full, 262144))
    # The parts past the prefix were not fetched (the server refused them): neither text nor list is all.
    prefix = parse_parsed(FetchedMessage("INBOX", 1, 1, full[:262144], len(full), (), None))
    assert (whole.text_cut, whole.parts_unseen) == (joined.text_cut, joined.parts_unseen) == (False, False)
    assert (prefix.text, prefix.text_cut, prefix.parts_unseen) == ("", True, True)
    long_text = crlf("From: a@example.org\n\n") + b"word " * 60_000
    capped = parse_parsed(FetchedMessage("INBOX", 1, 1, long_text, len(long_text), (), None))
    assert (len(capped.text), capped.text_cut, capped.parts_unseen) == (262144, True, False)
    cut = parse_parsed(FetchedMessage("INBOX", 1, 1, long_text[:1000], len(long_text), (), None))
    assert (cut.text_cut, cut.parts_unseen) == (True, False)


def test_truncated_single_part_attachment() -> None:
    raw = (
        f"From: a@example.org\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n{b64(PDF)}"
    )
    data = parse(raw[:200], size=len(raw))
    assert data["attachments"] == [{"filename": None, "content_type": "application/pdf", "size": None}]


def test_truncated_inside_a_multibyte_character() -> None:
    raw = "From: a@example.org\nContent-Type: text/plain; charset=utf-8\n\nÜberall Grüße".encode()
    data = parse(raw[: raw.index("ß".encode()) + 1], size=len(raw))  # half of the two-byte "ß"
    assert data["body_text_excerpt"] == "Überall Grü"  # no mojibake, no replacement character
    assert data["truncated"] is True


@pytest.mark.parametrize("cut", range(1, 9))
def test_a_base64_text_cut_anywhere_is_read_decoded(cut: int) -> None:
    """A fetch cut the base64 of a text 4n+1 characters in: the email package gives such a payload
    back undecoded, and the body text, its excerpt and every stage read the base64 itself."""
    text = "Dear customer, your account is locked. Reply with your password."
    encoded = base64.encodebytes(text.encode()).decode()
    raw = f"From: a@example.org\nContent-Transfer-Encoding: base64\n\n{encoded}".encode()
    at = raw.index(b"\n\n") + 2 + 60 + cut
    data = parse(raw[:at], size=len(raw))
    assert text.startswith(data["body_text_excerpt"]), (raw[at - 8 : at], data["body_text_excerpt"])
    # Read whole, a dangling character (malformed base64) is dropped so too.
    dangling = raw.partition(b"\n\n")[0] + b"\n\n" + base64.b64encode(text[:63].encode()) + b"Q"
    assert parse(dangling)["body_text_excerpt"] == text[:63]


# ---------------------------------------------------------------------------------------------
# Malformed input: parse_message returns every key, with None/[] for what is broken and the good
# fields intact.


def _nested(depth: int) -> bytes:
    head = "".join(f"Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n" for i in range(depth))
    return f"From: a@example.org\nSubject: deep\n{head}Content-Type: text/plain\n\nhello\n".encode()


def _many_parts(count: int) -> bytes:
    part = "--b\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\nQUFB\n"
    return f"Subject: many\nContent-Type: multipart/mixed; boundary=b\n\n{part * count}--b--\n".encode()


def _long_to() -> bytes:
    """A 1 MB To header whose value the header cap cuts inside an address's domain."""
    entry = "Some One <someone@example.org>, "
    inside = len("Some One <someone@exampl")
    first = "x" * (((MAX_HEADER_CHARS - inside - len("@b.org, ")) % len(entry)) or len(entry)) + "@b.org, "
    value = first + entry * 32000
    assert value[:MAX_HEADER_CHARS].endswith("<someone@exampl")
    return f"From: a@example.org\r\nTo: {value}\r\n\r\nbody".encode()


def _empty(data: dict[str, Any]) -> bool:
    """Nothing from the message, but what the IMAP layer knows survives."""
    return (
        (data["folder"], data["uid"], data["received_at"]) == ("INBOX", 42, "2026-11-21T13:25:53.000Z")
        and all(data[key] is None for key in ("message_id", "from", "subject", "date", "in_reply_to"))
        and data["body_text_excerpt"] is None
        and all(data[key] == [] for key in ("to", "cc", "reply_to", "references", "attachments"))
    )


Check = Callable[[dict[str, Any]], bool]
MALFORMED: list[tuple[str, bytes, Check]] = [
    ("empty", b"", _empty),
    (
        "binary garbage",  # no header: all of it is body, read as latin-1, controls dropped
        b"\x00\xff\xfe\x80 garbage \x81\r\n\r\n\x00\x01",
        lambda d: d["subject"] is None and d["from"] is None and d["body_text_excerpt"] == "ÿþ garbage",
    ),
    ("only a blank line", b"\r\n", _empty),
    (
        "headers without body",
        b"From: a@example.org\r\nSubject: hi",
        lambda d: (d["subject"] == "hi") and d["body_text_excerpt"] is None,
    ),
    (
        "body without headers",
        b"\r\njust a body",
        lambda d: d["subject"] is None and d["body_text_excerpt"] == "just a body",
    ),
    (
        "invalid encoded words",
        b"From: a@example.org\r\nSubject: Hello =?utf-8?B?$$$?= =?x-unknown?q?w=C3=B6rld?= "
        b"=?utf-8?Q?caf=C3?= =?utf-8?B?QQ?=\r\n\r\nbody",
        lambda d: (
            d["subject"].startswith("Hello =?utf-8?B?$$$?=")  # kept as written
            and "wörld" in d["subject"]  # unknown charset read as UTF-8
            and d["subject"].endswith("A")  # unpadded base64 is fine
            and d["from"]["address"] == "a@example.org"
        ),
    ),
    (
        "unknown and non-text charsets",
        "From: a@example.org\r\nSubject: =?rot13?q?uryyb?= =?base64?q?x?=\r\n"
        'Content-Type: text/plain; charset="x-unknown"\r\n\r\nGrüße'.encode(),
        lambda d: d["subject"] == "uryybx" and d["body_text_excerpt"] == "Grüße",
    ),
    (
        "zlib charset in body",
        b'From: a@example.org\r\nContent-Type: text/plain; charset="zlib_codec"\r\n\r\nplain',
        lambda d: d["body_text_excerpt"] == "plain",
    ),
    (
        "broken base64 body",
        b"From: a@example.org\r\nSubject: s\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"SGVsbG8gd29ybGQ*** ^^ garbage=\r\n=\r\n",
        lambda d: d["body_text_excerpt"].startswith("Hello world") and d["subject"] == "s",
    ),
    (
        "broken quoted-printable",
        b"From: a@example.org\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 =ZZ soft=\r\nbreak =",
        lambda d: d["body_text_excerpt"].startswith("café =ZZ softbreak"),
    ),
    (
        "multipart without boundary",
        b"From: a@example.org\r\nSubject: nob\r\nContent-Type: multipart/mixed\r\n\r\n"
        b"--x\r\nContent-Type: application/pdf\r\n\r\n%PDF\r\n--x--\r\n",
        lambda d: d["attachments"] == [] and d["body_text_excerpt"] is None and d["subject"] == "nob",
    ),
    (
        "missing closing boundary",
        b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n"
        b"--x\r\nContent-Type: text/plain\r\n\r\nfirst\r\n"
        b"--x\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n",
        lambda d: (
            d["body_text_excerpt"] == "first"
            and d["attachments"] == [{"filename": None, "content_type": "application/pdf", "size": 4}]
        ),
    ),
    (
        "start boundary never found",
        b"From: a@example.org\r\nSubject: pre\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n"
        b"only a preamble\r\n--y\r\n",
        lambda d: d["subject"] == "pre" and d["attachments"] == [],
    ),
    (
        "deeply nested multiparts",
        _nested(2000),
        lambda d: d["subject"] == "deep" and d["from"]["address"] == "a@example.org",
    ),
    (
        "nesting within the limit",
        _nested(5),
        lambda d: d["body_text_excerpt"] == "hello",
    ),
    (
        "thousands of parts",
        _many_parts(5000),
        lambda d: d["subject"] == "many" and 0 < len(d["attachments"]) <= MAX_PARTS,
    ),
    (
        "1 MB single-line subject",
        b"From: a@example.org\r\nSubject: " + b"x" * 1_000_000 + b"\r\nDate: Mon, 2 Jan 2006 15:04:05 -0700"
        b"\r\n\r\nbody",
        lambda d: (
            len(d["subject"]) <= MAX_HEADER_CHARS
            and d["from"]["address"] == "a@example.org"
            and d["date"] == "2006-01-02T22:04:05.000Z"
            and d["body_text_excerpt"] == "body"
        ),
    ),
    (
        "1 MB address header",
        _long_to(),
        lambda d: (
            d["to"][0]["address"].endswith("@b.org")
            and 100 < len(d["to"]) < 1000
            # Not "someone@exampl": the address the cap cut in half is dropped.
            and all(e == {"address": "someone@example.org", "name": "Some One"} for e in d["to"][1:])
        ),
    ),
    (
        "quoted comma in a name",
        b'From: "Doe, John" <j@x.org>\r\nTo: "Roe, Jane" <jane@x.org>, k@x.org\r\n\r\n',
        lambda d: (
            d["from"] == {"address": "j@x.org", "name": "Doe, John"}
            and [e["address"] for e in d["to"]] == ["jane@x.org", "k@x.org"]
        ),
    ),
    (
        "groups",
        b"From: a@example.org\r\nTo: undisclosed-recipients:;\r\n"
        b'Cc: Team: x@example.org, "Y" <y@example.org>;, z@example.org\r\n\r\n',
        lambda d: (
            d["to"] == []
            and [e["address"] for e in d["cc"]] == ["x@example.org", "y@example.org", "z@example.org"]
        ),
    ),
    (
        "address headers with only garbage",
        b"From: @@@ ,,, <<<>>>\r\nTo: <>\r\nCc: ;;;\r\nReply-To: John Doe\r\nSubject: ok\r\n\r\nbody",
        lambda d: (
            d["from"] is None
            and d["to"] == d["cc"] == d["reply_to"] == []
            and d["subject"] == "ok"
            and d["body_text_excerpt"] == "body"
        ),
    ),
    (
        "a name with no address, and an unterminated quote",
        b'From: root (Cron Daemon)\r\nTo: "Doe <john@x.org>\r\n\r\n',
        lambda d: (
            d["from"] == {"address": None, "name": "Cron Daemon"}
            and d["to"] == [{"address": "john@x.org", "name": None}]
        ),
    ),
    (
        "control characters in headers",
        b"From: a@example.org\r\nSubject: a\x00b\x1b[2Jc\r\n\r\n",
        lambda d: d["subject"] == "a b [2Jc",
    ),
    (
        "raw 8-bit filename and content type without subtype",
        "From: a@example.org\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n"
        "--x\r\nContent-Type: text\r\n\r\nbody text\r\n"
        '--x\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="Größe.pdf"'
        "\r\n\r\n%PDF\r\n--x--\r\n".encode(),
        lambda d: (
            d["body_text_excerpt"] == "body text"
            and d["attachments"] == [{"filename": "Größe.pdf", "content_type": "application/pdf", "size": 4}]
        ),
    ),
    (
        "a continuation line first and a line that is no header",
        b" continuation first\r\nFrom: a@example.org\r\nno header here\r\nSubject: lost\r\n\r\nbody",
        lambda d: d["from"]["address"] == "a@example.org" and "no header here" in d["body_text_excerpt"],
    ),
    (
        "address headers of long runs without an @",
        b"From: " + b"a" * 9000 + b"\r\n" + (b"To: " + b"b" * 8000 + b" x@y.org\r\n") * 20 + b"\r\nbody",
        lambda d: d["from"] is None and d["to"] == [{"address": "x@y.org", "name": None}] * 20,
    ),
    (
        "a Content-Type of 250 KB of parameters after an open quote",
        b'From: a@example.org\r\nContent-Type: text/plain; x="; ' + b"a=b; " * 50000 + b"\r\n\r\nbody",
        lambda d: d["from"]["address"] == "a@example.org" and d["body_text_excerpt"] == "body",
    ),
    (
        "control characters in addresses",
        b'From:\x00a@b.example\r\nTo: x@y.example\x00Subject\r\nCc: "Jo" <j\x00o@x.org>\r\n\r\nbody',
        # Neither the NUL kept nor the part beside it taken for the address.
        lambda d: d["from"] is None and d["to"] == [] and d["cc"] == [{"address": None, "name": "Jo"}],
    ),
    (
        "html that never closes its constructs",
        b"From: a@example.org\r\nContent-Type: text/html\r\n\r\nVisible<!--" + b"<a b='" * 50000,
        lambda d: d["body_text_excerpt"] == "Visible",
    ),
    (
        "html whose quotes pair up across tags",
        b"From: a@example.org\r\nContent-Type: text/html\r\n\r\n" + b"<a b='>' x " * 30000,
        lambda d: d["body_text_excerpt"].startswith("' x"),
    ),
]


@pytest.mark.parametrize(
    ("raw", "check"), [(raw, check) for _, raw, check in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_input(raw: bytes, check: Check) -> None:
    started = time.perf_counter()
    data = parse(raw)
    # Generous (each takes a few ms): catches quadratic blow-ups, which took seconds to minutes.
    assert time.perf_counter() - started < 5.0
    assert check(data), data


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Thu, 22 Aug 02 10:00:00 -0700", "2002-08-22T17:00:00.000Z"),  # obsolete 2-digit year
        ("22 Aug 2002 10:00:00", "2002-08-22T10:00:00.000Z"),  # no zone: UTC
        ("Thu, 22 Aug 2002 10:00:00 -0000", "2002-08-22T10:00:00.000Z"),
        ("Thu, 22 Aug 2002 10:00:00 EST", "2002-08-22T15:00:00.000Z"),
        ("Thu, 22 Aug 0102 10:00:00 +0000", "2002-08-22T10:00:00.000Z"),  # years-since-1900 bug
        ("2002-08-22T10:00:00+02:00", "2002-08-22T08:00:00.000Z"),  # ISO 8601
        ("Thu, 22 Aug 2002 10:00:00 +9999", "2002-08-22T10:00:00.000Z"),  # nonsense zone ignored
        ("Thu, 31 Feb 2002 10:00:00 +0000", None),
        ("Mon, 1 Jan 0001 00:00:00 +0000", None),  # four digits: year 1, not 2001
        ("Mon, 1 Jan 0099 00:00:00 +0000", None),
        ("2002/09/14 Sat 02:29:32 CDT", None),
        ("yesterday", None),
        ("", None),
    ],
)
def test_dates(value: str, expected: str | None) -> None:
    assert parse(f"From: a@example.org\nDate: {value}\nSubject: s\n\nx\n")["date"] == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("21-Nov-2026 13:25:53 +0000", "2026-11-21T13:25:53.000Z"),
        (" 1-Feb-2026 00:30:00 +0100", "2026-01-31T23:30:00.000Z"),
        ('"01-Feb-2026 00:30:00 -0130"', "2026-02-01T02:00:00.000Z"),
        ("Sun, 01 Feb 2026 00:30:00 +0000", "2026-02-01T00:30:00.000Z"),
        ("31-Foo-2026 00:00:00 +0000", None),
        ("garbage", None),
        (None, None),
    ],
)
def test_internaldate(value: str | None, expected: str | None) -> None:
    assert parse(PLAIN, internaldate=value)["received_at"] == expected


@pytest.mark.parametrize("seed", range(40))
def test_random_bytes(seed: int) -> None:
    rng = random.Random(seed)
    blob = rng.randbytes(rng.randrange(1, 4000))
    if seed % 2:  # half of them behind plausible headers, so the body code sees garbage too
        blob = b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n" + blob
    data = parse(blob, size=len(blob) + seed)  # and some of them "truncated"
    assert data["truncated"] is (seed > 0)
    if seed % 2:
        assert data["from"] == {"address": "a@example.org", "name": None}


def test_random_mutations_of_a_real_message() -> None:
    """Bytes replaced at random spots, then cut at a random length: still well-formed data."""
    rng = random.Random(1234)
    for _ in range(200):
        raw = bytearray(ATTACHMENTS)
        for _ in range(rng.randrange(1, 30)):
            position = rng.randrange(len(raw))
            raw[position : position + rng.randrange(1, 8)] = rng.randbytes(rng.randrange(0, 8))
        cut = rng.randrange(len(raw) + 1)
        assert parse(bytes(raw[:cut]), size=len(raw))["truncated"] is (cut < len(raw))


@pytest.mark.skipif(
    not CORPUS.is_dir(),
    reason=f"developer corpus {CORPUS} (ham/*.eml, spam/*.eml) is not present on this machine",
)
def test_whole_spamassassin_corpus() -> None:
    files = sorted(CORPUS.glob("ham/*.eml")) + sorted(CORPUS.glob("spam/*.eml"))
    assert len(files) >= 3000, "the corpus is 2,500 ham and 500 spam messages"
    with_sender = with_date = with_text = 0
    for path in files:
        raw = path.read_bytes()
        data = parse_message(FetchedMessage("INBOX", 1, 1, raw, len(raw), (), None))
        assert_well_formed(data)
        with_sender += from_address(data) is not None
        with_date += data["date"] is not None
        with_text += data["body_text_excerpt"] is not None
    # Real mail, however old and spammy, mostly parses: guards against silently losing fields.
    assert with_sender >= 0.99 * len(files)
    assert with_date >= 0.99 * len(files)
    assert with_text >= 0.98 * len(files)


# ---------------------------------------------------------------------------------------------
# Fast paths against the stdlib they stand in for
#
# _parse_structure builds plain single-part messages without the feed parser, and _getaddresses
# reads the common shapes of address lists by regular expression. Both must give exactly what the
# stdlib gives: the whole compat32 tree (every attribute of every Message, defects included) for the
# one, the pairs of email.utils.getaddresses for the other. Generated inputs mix the shapes the fast
# paths take with the near misses they must hand back (bare CR, envelope lines, odd names, groups,
# Unicode white space), so a divergence on either side of the line fails here.

_REFERENCE_PARSER = BytesParser(_class=_GuardedMessage, policy=compat32)
_FAST_PATH_SETTINGS = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def _tree(msg: Message) -> dict[str, Any]:
    """Every attribute of a Message, its parts' recursively: what "the same message" means here."""
    state = dict(vars(msg))
    state.pop("_gw_root", None)  # a back reference to the root, which is compared as a whole anyway
    state.pop("_gw_index", None)  # a cache of header positions, there after a lookup
    state["__class__"] = type(msg)
    state["defects"] = [(type(defect), defect.args, vars(defect)) for defect in msg.defects]
    if isinstance(state.get("_payload"), list):
        state["_payload"] = [_tree(part) for part in state["_payload"]]
    return state


def _outcome(parse_structure: Callable[[bytes], Message], raw: bytes) -> tuple[str, Any]:
    try:
        return "parsed", _tree(parse_structure(raw))
    except _TooManyPartsError as exc:
        return "too many parts", _tree(exc.root)
    except Exception as exc:  # the same failure counts as the same result
        return "failed", type(exc)


def assert_parses_like_the_stdlib(raw: bytes) -> None:
    assert _outcome(_parse_structure, raw) == _outcome(_REFERENCE_PARSER.parsebytes, raw), raw


_NAMES = [b"Subject", b"From", b"To", b"X-Spam", b"Content-Type", b"content-type", b"MIME-Version"]
# Near misses of a header name: empty, white space, a colon-less line, 8-bit, controls, edge characters.
_ODD_NAMES = [b"", b"From ", b"A b", b"X\tY", b"\xc3\xa4", b"\x7f", b"!~", b"\x0b", b"X\rY", b"no colon line"]
_VALUES = [
    b"",
    b" ",
    b"\t",
    b" hi",
    b"hi ",
    b" \t x \t",
    b" x:y",
    b" a\rb",
    b" \xff\xfe 8-bit",
    b" =?utf-8?q?J=C3=B6rg?= <j@example.de>",
    b" =?utf-8?b?w6Q=?=",
]
_CONTENT_TYPES = [
    b"text/plain",
    b"text/plain; charset=utf-8",
    b"text/html",
    b"application/octet-stream",
    b"multipart/mixed; boundary=b",
    b'Multipart/Alternative; boundary="b"',
    b"multipart/digest; boundary=b",
    b"multipart",  # no subtype: invalid, hence text/plain
    b"message/rfc822",
    b"message/delivery-status",
    b"Message/RFC822",
    b"text",
]
_CONTINUATIONS = [b" more", b"\tmore", b" ", b" \t", b"  =?utf-8?q?x?=", b" \xe2\x82\xac"]
_BODY_CHUNKS = [
    b"hello\n",
    b"hi\r\nthere\r\n",
    b"bare\rcr\n",
    b"8-bit \xc3\xa4\xff\n",
    b"\n",
    b"\r\n",
    b"From me\n",
    b"Subject: not a header\n",
    b"preamble\n--b\nContent-Type: text/plain\n\npart one\n",
    b"--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n",
    b"--b\nContent-Type: multipart/mixed; boundary=c\n\n--c\n\nnested\n--c--\n",
    b"--b--\nepilogue\n",
    b"--b--",
]
_ENVELOPE = b"From sender@example.org Sat Nov 21 13:25:53 2026"
_PLAIN_END = st.sampled_from([b"\n", b"\r\n"])
_ODD_END = st.sampled_from([b"\n", b"\r\n"] * 6 + [b"\r", b"\r\r\n", b"\n\r", b""])
_CONTENT_TYPE_FIELD = st.tuples(
    st.sampled_from([b"Content-Type", b"content-type"]),
    st.sampled_from([b":", b": ", b":\t"]),
    st.sampled_from(_CONTENT_TYPES),
).map(b"".join)
_PLAIN_FIELD = st.one_of(
    *[st.tuples(st.sampled_from(_NAMES), st.just(b":"), st.sampled_from(_VALUES)).map(b"".join)] * 3,
    _CONTENT_TYPE_FIELD,
)
_ODD_FIELD = st.tuples(
    st.sampled_from(_ODD_NAMES) | st.binary(max_size=4),
    st.sampled_from([b":", b""]),
    st.sampled_from(_VALUES),
).map(b"".join)


def _header_blocks(
    field: st.SearchStrategy[bytes], end: st.SearchStrategy[bytes]
) -> st.SearchStrategy[bytes]:
    """Header fields, each with its line end and maybe continuation lines."""
    continuation = st.tuples(st.sampled_from(_CONTINUATIONS), end).map(b"".join)
    folded = st.tuples(field, end, st.lists(continuation, max_size=2).map(b"".join)).map(b"".join)
    return st.lists(folded, max_size=5).map(b"".join)


_BODIES = st.lists(st.sampled_from(_BODY_CHUNKS) | st.binary(max_size=12), max_size=4).map(b"".join)
# Plain header blocks, which the fast path takes unless the type is multipart/* or message/* ...
_PLAIN_MESSAGES = st.tuples(_header_blocks(_PLAIN_FIELD, _PLAIN_END), _PLAIN_END, _BODIES).map(b"".join)
# ... and blocks with flaws it must leave to the feed parser: an envelope line, odd names, lines
# without a colon, bare CRs, a missing or odd separator.
_FLAWED_MESSAGES = st.tuples(
    st.sampled_from([b"", _ENVELOPE + b"\n", _ENVELOPE + b"\r\n", _ENVELOPE + b"\r"]),
    _header_blocks(_PLAIN_FIELD | _ODD_FIELD, _ODD_END),
    st.sampled_from([b"\n", b"\r\n", b"", b"\r", b" \n"]),
    _BODIES,
).map(b"".join)


# Whole lines, shuffled in any order: headers, continuations, separators and MIME lines mixed up.
_LINES = [
    b"Subject: hi\n",
    b"Subject: hi\r\n",
    b"From: a@b\n",
    b"\tcont\n",
    b" cont\r\n",
    b"From x@y Sat\n",
    b":nohdr\n",
    b"X-A:\n",
    b"X-A: \t\r\n",
    b"bad line\n",
    b"\n",
    b"\r\n",
    b"\r",
    b"a\rb: c\n",
    b"Content-Type: multipart/mixed; boundary=x\n",
    b"Content-Type: text/plain; charset=utf-8\n",
    b"Content-Type: message/rfc822\n",
    b"--x\n",
    b"--x--\n",
    b"body\n",
    b"\xc3\xa4: \xff\n",
    b"X:y",
    b"\x00: x\n",
    b"\x0b\n",
    b"From: x\r\r\n",
]


@_FAST_PATH_SETTINGS
@given(plain=_PLAIN_MESSAGES, flawed=_FLAWED_MESSAGES)
def test_parse_structure_matches_the_stdlib_on_generated_messages(plain: bytes, flawed: bytes) -> None:
    assert_parses_like_the_stdlib(plain)
    assert_parses_like_the_stdlib(flawed)


@_FAST_PATH_SETTINGS
@given(raw=st.lists(st.sampled_from(_LINES), max_size=12).map(b"".join) | st.binary(max_size=80))
def test_parse_structure_matches_the_stdlib_on_line_soup_and_bytes(raw: bytes) -> None:
    assert_parses_like_the_stdlib(raw)


# plain_header_fields as it was first written: two regular expressions, one matching the block,
# one each field, with the same grammar. The string methods that replace them must agree.
_REGEX_BLOCK = re.compile(r"(?>(?:[\041-\071\073-\176]++:.*+\n(?>(?:[ \t].*+\n)*))*)\r?\n")
_REGEX_FIELD = re.compile(r"([\041-\071\073-\176]++):[ \t]*+(.*+\n(?>(?:[ \t].*+\n)*))")


def _plain_header_fields_by_regex(text: str) -> tuple[list[tuple[str, str]], int] | None:
    block = _REGEX_BLOCK.match(text)
    if block is None or re.search(r"\r(?!\n)", text[: block.end()]):
        return None
    fields = [(name, value.rstrip("\r\n")) for name, value in _REGEX_FIELD.findall(text, 0, block.end())]
    return fields, block.end()


def assert_reads_header_fields_like_the_regex(raw: bytes) -> None:
    text = raw.decode("ascii", "surrogateescape")
    assert structure.plain_header_fields(text) == _plain_header_fields_by_regex(text), raw


@_FAST_PATH_SETTINGS
@given(
    plain=_PLAIN_MESSAGES,
    flawed=_FLAWED_MESSAGES,
    soup=st.lists(st.sampled_from(_LINES), max_size=12).map(b"".join) | st.binary(max_size=80),
)
def test_plain_header_fields_match_the_regex_reading(plain: bytes, flawed: bytes, soup: bytes) -> None:
    for raw in (plain, flawed, soup):
        assert_reads_header_fields_like_the_regex(raw)


_TRICKY_MESSAGES = {
    "plain LF": b"From: a@example.org\nSubject: hi\n\nbody\n",
    "plain CRLF": b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n",
    "CRLF headers, LF separator": b"Subject: hi\r\n\nbody\r\n",
    "LF headers, CRLF separator": b"Subject: hi\n\r\nbody\n",
    "no body": b"Subject: hi\n\n",
    "body starts with blank lines": b"Subject: hi\r\n\r\n\r\n\nbody\r\n",
    "no headers": b"\nbody\n",
    "empty": b"",
    "folded LF": b"Subject: a\n  b\n\tc\nX-A: d\n\nbody\n",
    "folded CRLF": b"Subject: a\r\n  b\r\n\tc\r\n\r\nbody\r\n",
    "value only white space, then folded": b"Subject: \t\r\n more\r\n\r\nbody",
    "empty value": b"X-A:\nX-B: \r\n\nbody",
    "no space after the colon": b"Subject:hi\n\nbody",
    "first line folded": b" Subject: hi\n\nbody",
    "bare CR ends a header": b"Subject: a\rX-A: b\n\nbody\n",
    "bare CR inside a header": b"Subject: a\rb\n\nbody\n",
    "CR CR LF": b"Subject: a\r\r\n\r\nbody\n",
    "bare CR separator": b"Subject: a\r\rbody\n",
    "bare CR in the body only": b"Subject: a\n\nbo\rdy\r",
    "envelope line": b"From sender@example.org Sat Nov 21 13:25:53 2026\nSubject: hi\n\nbody\n",
    "envelope line in the middle": b"Subject: hi\nFrom sender@example.org Sat\n\nbody\n",
    "line without a colon": b"Subject: hi\nthis is no header\nX-A: b\n\nbody\n",
    "empty header name": b":x\nSubject: hi\n\nbody\n",
    "space in the name": b"X A: b\n\nbody\n",
    "missing blank line": b"Subject: hi\nFrom: a@b",
    "missing blank line, body": b"Subject: hi\n<html>body</html>\n",
    "8-bit name": b"\xc3\xa4: x\n\nbody\n",
    "8-bit value and body": b"Subject: \xc3\xa4\xff\n\n\xe2\x82\xac \xff\n",
    "encoded words": b"Subject: =?utf-8?q?J=C3=B6rg?= =?iso-8859-1?b?5A==?=\nFrom: =?x?b?QQ==?= <a@b>\n\nx",
    "duplicate headers": b"Subject: 1\nsubject: 2\nContent-Type: text/html\ncontent-type: multipart/x\n\nb",
    "invalid content type": b"Content-Type: multipart\n\n--b\n\nx\n--b--\n",
    "multipart": (
        b"Content-Type: multipart/mixed; boundary=b\n\npre\n--b\nContent-Type: text/plain\n\none\n"
        b"--b\nContent-Type: text/html\n\n<p>two</p>\n--b--\npost\n"
    ),
    "multipart without boundary": b"Content-Type: multipart/mixed\n\n--b\n\nx\n",
    "multipart, upper case": b"Content-Type: MULTIPART/MIXED; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
    "message/rfc822": b"Content-Type: message/rfc822\n\nSubject: inner\nFrom: x@y\n\ninner body\n",
    "message/delivery-status": b"Content-Type: message/delivery-status\n\nReporting-MTA: x\n\nAction: y\n",
    "multipart/digest": b"Content-Type: multipart/digest; boundary=b\n\n--b\n\nSubject: s\n\nx\n--b--\n",
    "control characters": b"X-A: \x00\x0b\x0c\x1c\x7f\nX-B: \x0b\n\nbody\x0c\x1c\n",
}


@pytest.mark.parametrize("raw", _TRICKY_MESSAGES.values(), ids=_TRICKY_MESSAGES.keys())
def test_parse_structure_matches_the_stdlib_on_tricky_messages(raw: bytes) -> None:
    assert_parses_like_the_stdlib(raw)
    assert_reads_header_fields_like_the_regex(raw)


def test_parse_structure_matches_the_stdlib_across_read_chunks() -> None:
    """The parser reads 8192 characters at a time: a CRLF or a header split between two reads."""
    for length in range(8170, 8200):
        for end in (b"\r\n", b"\n"):
            header = b"X-Long: " + b"a" * (length - len(b"X-Long: "))
            assert_parses_like_the_stdlib(header + end + b" folded" + end + b"Subject: s" + end + end + b"b")
            assert_parses_like_the_stdlib(b"Subject: s" + end + end + header + end)


@pytest.mark.parametrize("raw", [PLAIN, PLAIN.replace(b"\r\n", b"\n")], ids=["CRLF", "LF"])
def test_plain_single_part_messages_take_the_fast_path(raw: bytes) -> None:
    """Else the comparisons above would never reach it."""
    text = raw.decode("ascii", "surrogateescape")
    fast = _plain_single_part(text)
    assert fast is not None
    assert _tree(fast) == _tree(_REFERENCE_PARSER.parsebytes(raw))


_LOOKUPS = [
    "subject",
    "SUBJECT",
    "Content-Type",
    "x-dup",
    "X-Dup",
    "missing",
    "to",
    "content-transfer-encoding",
]
_MUTATIONS = [
    lambda m: m.set_raw("X-Dup", "late"),
    lambda m: m.__setitem__("Missing", "now here"),
    lambda m: m.__delitem__("x-dup"),
    lambda m: m.replace_header("Subject", "replaced"),
    lambda m: m.replace_header("x-DUP", "replaced dup"),
    lambda m: m.set_param("charset", "latin-1"),
    lambda m: m.del_param("charset"),
    lambda m: m.set_type("text/html"),
    lambda m: m.add_header("Content-Transfer-Encoding", "base64"),
]


@given(order=st.lists(st.integers(min_value=0, max_value=len(_MUTATIONS) - 1), max_size=8))
def test_header_lookups_follow_every_change_of_the_headers(order: list[int]) -> None:
    """_GuardedMessage.get answers from an index of the fields: after any sequence of changes
    through the stdlib's own methods it must give what Message.get gives."""
    guarded, plain = _GuardedMessage(policy=compat32), Message(policy=compat32)
    fields = [("Subject", "s"), ("X-Dup", "first"), ("Content-Type", "text/plain; charset=utf-8")]
    fields += [("x-dup", "second"), ("To", "a@example.org")]
    for msg in (guarded, plain):
        for name, value in fields:
            msg.set_raw(name, value)
    for step in [None, *order]:
        if step is not None:
            for msg in (guarded, plain):
                # KeyError: replace_header of a field deleted before, the same for both.
                with contextlib.suppress(KeyError):
                    _MUTATIONS[step](msg)
        for name in _LOOKUPS:
            assert guarded.get(name, "none") == plain.get(name, "none"), (order, name)
            assert guarded[name] == plain[name]
        assert guarded.items() == plain.items()


def _real_addresses(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [pair for pair in pairs if pair != ("", "")]


def assert_reads_addresses_like_the_stdlib(value: str) -> None:
    # Either path gives getaddresses' pairs less the ("", "") of empty items: nothing else.
    assert _getaddresses(value) == _real_addresses(getaddresses([value])), value


# Pieces of address lists: atoms, specials, quoted strings, comments, encoded words, Unicode white space.
_ADDRESS_TOKENS = [
    "a",
    "b.c",
    "x@y",
    "x@y.z",
    "@",
    ".",
    ",",
    " ",
    "\t",
    "<",
    ">",
    '"',
    '"q, r"',
    "\\",
    "(",
    ")",
    ":",
    ";",
    "[",
    "]",
    "John",
    "=?utf-8?q?J=C3=B6rg?=",
    "é",
    "Name <a@b.c>",
    "<a@b>",
    "a@b.c",
    '""',
    "..",
    "a..b@c",
    "\xa0",
    "\n",
    "\r",
    "'",
    "\x1c",
    "\x0b",
    "\u2028",
    "\u3000",
    "Bob Smith",
    '"Smith, Bob" <bob@x.org>',
    "Q. Pub",
    ", ",
    "a@b@c",
    "<@r:a@b>",
    "(Robert Harley)",
    "a@b (R H)",
    "()",
    "a@b(c)",
    "undisclosed-recipients:;",
    "[1.2.3.4]",
]
_PLAIN_ATOM = st.text(alphabet="abcXYZ019!#$%&'*+-/=?^_`{|}~é", min_size=1, max_size=6)
# Atoms holding specials, CR/LF, or white space str.strip() knows but getaddresses does not (it ends
# atoms at space, tab, CR and LF only, and drops a local-part atom that strip() empties).
_ODD_ATOM = st.text(
    alphabet='ab.()<>@,:;"[]\\ \t\r\n\x00\xa0\x0b\x0c\x1c\x1f\x85\u2028\u3000', min_size=1, max_size=3
) | st.sampled_from(["\xa0", "\u3000", "\x1c", "\x85", "\u2028", "\x0b"])
_PLAIN_BLANK = st.sampled_from(["", " ", "  ", "\t"])
_ODD_BLANK = st.sampled_from([" \t ", "\xa0", "\r\n ", "\n", "\r", "\u3000", "\x1c", "\x0b"])
_PLAIN_QUOTED = st.text(alphabet="ab ,;:<>@().é\t", max_size=5).map(lambda text: f'"{text}"')
_ODD_QUOTED = st.text(alphabet='ab \\"\r\n', min_size=1, max_size=4).map(lambda text: f'"{text}"')
_PLAIN_COMMENT = st.text(alphabet='ab ,;:<>@."é\t', max_size=5).map(lambda text: f"({text})")
_ODD_COMMENT = st.text(alphabet="ab ()\\\r\n", min_size=1, max_size=4).map(lambda text: f"({text})")


def _address_items(
    atom: st.SearchStrategy[str],
    blank: st.SearchStrategy[str],
    quoted: st.SearchStrategy[str],
    comment: st.SearchStrategy[str],
) -> st.SearchStrategy[str]:
    """'Name <a@b.c>', '"Last, First" <a@b.c>', 'a@b.c', 'a@b.c (Name)', or nothing, with blanks around."""
    dot_atom = st.lists(atom, min_size=1, max_size=3).map(".".join)
    addr_spec = st.tuples(dot_atom, st.just("@"), dot_atom).map("".join)
    word = st.one_of(atom, quoted, st.sampled_from(["=?utf-8?q?J=C3=B6rg?=", "Q.", ".", '""']))
    phrase = st.lists(st.tuples(word, blank).map("".join), max_size=3).map("".join)
    item = st.one_of(
        st.tuples(phrase, st.just("<"), addr_spec, st.just(">")).map("".join),
        addr_spec,
        st.tuples(addr_spec, blank, comment).map("".join),
        st.just(""),
    )
    return st.tuples(blank, item, blank).map("".join)


_COMMON_ITEMS = _address_items(_PLAIN_ATOM, _PLAIN_BLANK, _PLAIN_QUOTED, _PLAIN_COMMENT)
# Near misses: a common shape with one odd part, groups, unbalanced brackets, odd tokens.
_ODD_ITEMS = st.one_of(
    _address_items(_PLAIN_ATOM | _ODD_ATOM, _PLAIN_BLANK, _PLAIN_QUOTED, _PLAIN_COMMENT),
    _address_items(_PLAIN_ATOM, _PLAIN_BLANK | _ODD_BLANK, _PLAIN_QUOTED, _PLAIN_COMMENT),
    st.tuples(_PLAIN_QUOTED | _ODD_QUOTED, _PLAIN_BLANK, _ODD_QUOTED, st.just(" <a@b.c>")).map("".join),
    st.tuples(st.just("a@b.c"), _PLAIN_BLANK, _ODD_COMMENT).map("".join),
    st.sampled_from(["undisclosed-recipients:;", "group: a@b, c@d;", "<>", "<", "<a@b", "(c) a@b"]),
    st.sampled_from(_ADDRESS_TOKENS),
)
# Lists of the common shapes, which the fast path reads ...
_COMMON_LISTS = st.lists(_COMMON_ITEMS, max_size=4).map(",".join)
# ... and lists with near misses among them, which it must leave to getaddresses.
_MIXED_LISTS = st.lists(_COMMON_ITEMS | _ODD_ITEMS, max_size=4).map(",".join)


@_FAST_PATH_SETTINGS
@given(common=_COMMON_LISTS, mixed=_MIXED_LISTS)
def test_getaddresses_matches_the_stdlib_on_generated_lists(common: str, mixed: str) -> None:
    assert_reads_addresses_like_the_stdlib(common)
    assert_reads_addresses_like_the_stdlib(mixed)


@_FAST_PATH_SETTINGS
@given(value=st.lists(st.sampled_from(_ADDRESS_TOKENS), max_size=12).map("".join) | st.text(max_size=30))
def test_getaddresses_matches_the_stdlib_on_token_soup_and_text(value: str) -> None:
    assert_reads_addresses_like_the_stdlib(value)


_TRICKY_ADDRESS_LISTS = [
    "",
    " ",
    ",",
    "a@b",
    "a@b.c, d@e.f",
    "Name <a@b.c>",
    "Name Two <a@b.c>,Three <d@e.f>",
    "<a@b.c>",
    '"Doe, John" <John.Doe@Example.ORG>',
    '"Doe, John" <a@b>, "Roe, Jane" <c@d>',
    '"" <a@b>',
    '"a (b)" <a@b>',
    'a"b" <a@b>',
    '"esc\\"aped" <a@b>',
    '"back\\slash" <a@b>',
    '"a\\\\" <a@b>',
    "Q. Pub <a@b>",
    ". <a@b>",
    "a@b (Robert Harley)",
    "a@b(c)",
    "a@b ()",
    "a@b (x, y)",
    "a@b ( spaced )",
    "a@b (x) (y)",
    "a@b (nested (comment))",
    "Bob (c) <a@b>",
    "Name <a@b> (c)",
    "(c) a@b",
    "=?utf-8?q?J=C3=B6rg?= <joerg@example.de>",
    "=?utf-8?b?w6Q=?= <q@r.s>, =?x?b?QQ==?= <t@u.v>",
    "undisclosed-recipients:;",
    "a@b, undisclosed-recipients:;",
    "group: a@b, c@d;, e@f",
    "a@b, , c@d",
    "a@b,,c@d",
    "a@b,,,c@d",
    "a@b;c@d",
    ", a@b",
    "a@b,",
    "a@b, , <x",
    "<",
    "<>",
    "bad <",
    '"unterminated <a@b>',
    "a..b@c",
    "a@b.",
    "a@b@c",
    "a b@c",
    "a@b c",
    "<@route:a@b>",
    "a@[1.2.3.4]",
    "< a@b >",
    "a@b\r\n , c@d",
    "a\xa0b@c",
    "\xa0@b.c",
    "a.\u3000@b.c, d@e",
    "\xa0a@b",
    "a@b\xa0",
    "x\x1cy@z",
    "Name\u3000Two <a@b>",
    "Name\u2028 <a@b>",
    "a@b\x0b, c@d",
    "é <ü@ö.de>",
    # Read as a@b on Python 3.11.2, whose possessive repeat of a group kept the unterminated quote
    # as the phrase (CPython gh-106052, fixed in 3.11.5); getaddresses gives "<a@b>".
    '"<a@b>',
]


@pytest.mark.parametrize("value", _TRICKY_ADDRESS_LISTS)
def test_getaddresses_matches_the_stdlib_on_tricky_lists(value: str) -> None:
    assert_reads_addresses_like_the_stdlib(value)


@pytest.mark.parametrize(
    "value",
    [
        "a@b.c",
        "Name <a@b.c>, other@d.e",
        '"Doe, John" <a@b.c>',
        "a@b.c (Robert Harley)",
        "=?utf-8?q?J=C3=B6rg?= <joerg@example.de>",
        "",
        " \t",
    ],
)
def test_common_address_lists_take_the_fast_path(value: str) -> None:
    """Else the comparisons above would never reach it."""
    expected = _real_addresses(getaddresses([value]))
    with mock.patch("gatewayd.message.fields.getaddresses", side_effect=AssertionError("fallback taken")):
        assert _getaddresses(value) == expected


@pytest.mark.parametrize(
    "value", ["a@b, , c@d", "a@b,,", "a@b,", ",a@b", "x@y (a, b)", "N <a@b>, ", 'x@y (a"b)', "a\\\\b <x@y>"]
)
def test_lists_the_stdlib_versions_read_differently_take_the_stdlib(value: str) -> None:
    """Empty items and commas in comments: getaddresses with the fix of CVE-2023-27043 (Debian
    12's Python) refuses some of these where an unpatched one reads them, so they are its call."""
    with mock.patch("gatewayd.message.fields.getaddresses", return_value=[("", "")]) as stdlib:
        assert _getaddresses(value) == []
    stdlib.assert_called_once_with([value])


@pytest.mark.parametrize("value", ["<", "undisclosed-recipients:;", "a@b, , <x"])
def test_getaddresses_drops_empty_pairs_on_the_fallback_too(value: str) -> None:
    """The contract as stated: getaddresses([value]) less its ("", "") pairs, whichever path is taken."""
    assert _getaddresses(value) == _real_addresses(getaddresses([value]))
