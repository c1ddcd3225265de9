"""What bench/fuzz_mail.py adds for the rules, RTF objects and lookalike domains: rules whose tests
a cut may decide wrongly, mutations that build mail for them, and the cut oracle.

The cut oracle: a rule test decided on a message cut short (the fetch's prefix cut inside the
header block or the body, the 256 KiB text cut) must be decided the same on the whole message.
Each `RULES` rule has one test, so its outcome is the test's: applied, not applied, or undecided
(`rules_errors` names it). The whole message is the same bytes uncut, or for the text cut the same
message read with the text caps lifted.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gatewayd.config import MailboxConfig
from gatewayd.message import FetchedMessage, body
from gatewayd.pipeline import Pipeline
from gatewayd.rules import match

# The From domains the auth stage protects (`pipeline.auth.protected_domains`).
PROTECTED = ["paypal.com", "apple.com", "example.com", "bücher.de", "amazon.com", "ing.net"]

_BODY_REGEXES = [
    r"foo$",
    r"(?m)^bar$",
    r"\bword\b",
    r"alpha(?=beta)",
    r"gamma(?!delta)",
    r"(?<=x)yz\b",
    r"click\s+here\b",
    r"a{3,}$",
    r"\d+\b",
    r"(?i)free.*now",
    r"zz\Z",
    r"word\B",
    r"&\w",
    r"&\b",
    r"<\w+",
    r"=\w\b",
    r"\ufffd",
    r"[^\x00-\x7f]\b",
    r"(?x) foo \s* $",
    r"(foo)\1\b",
    r"[(?=]x",
    r"o\W\b",
]
_ADDRESS_TESTS: list[tuple[str, Any]] = [
    ("from", "*.bücher.example"),
    ("from", "*bücher*"),
    ("from", "*@bücher.de"),
    ("from", "@example.com"),
    ("from", {"domain": "пример.рф"}),
    ("from", "*.xn--e1afmkfd.xn--p1ai"),
    ("from", "*ex*le.com"),
    ("from", "*paypal.com"),
    ("from", "a@b.example"),
    ("to", "*.bücher.example"),
    ("to", "bob@example.com"),
    ("reply_to", "*@*.example"),
]
_TESTS: list[dict[str, Any]] = [
    *({"body": {"regex": pattern}} for pattern in _BODY_REGEXES),
    {"body": {"equals": "foo"}},
    {"body": "urgent"},
    {"subject": {"regex": r"invoice\b"}},
    {"subject": {"regex": r"(?i)urgent$"}},
    {"subject": {"equals": "hello"}},
    {"subject": "urgent"},
    {"header": {"name": "X-Tag", "equals": "yes"}},
    {"header": {"name": "X-Tag", "contains": "spam"}},
    {"header": {"name": "X-Tag", "regex": "^yes$"}},
    {"header": {"name": "X-Tag", "exists": False}},
    *({field: value} for field, value in _ADDRESS_TESTS),
    {"bulk": True},
    {"bulk": False},
    {"auto_submitted": True},
    {"list_id": True},
]
RULES: list[dict[str, Any]] = [
    {"name": f"cut{i}", "if": test, "then": [{"add_keywords": [f"cut{i}"]}]} for i, test in enumerate(_TESTS)
]

_FROM_DOMAINS = [
    "paypal.com",
    "secure-paypal.com",
    "paypal-secure.com",
    "securepaypal.com",
    "paypalsecure.com",
    "apple-support.com",
    "support-apple.net",
    "applesupport.com",
    "apple-pie.com",
    "paypal.com.evil.test",
    "paypal-com.evil.test",
    "example.com-secure.test",
    "xn--pypal-4ve.com",
    "xn--bcher-kva.de",
    "bücher.de",
    "sub.bücher.example",
    "пример.рф",
    "xn--e1afmkfd.xn--p1ai",
    "ing-login.net",
    "login-ing.net",
    "-.-",
    "a--b.com",
    "xn--.com",
    "xn--zz-zzz.com",
    "example.com",
    "b.example",
]


def _long_domain(rng: random.Random) -> str:
    unit = rng.choice(["a-", "paypal-", "secure-", "a.", "paypal.", "-", "xn--a.", "login", "ü-"])
    return "paypal" + unit * rng.randint(500, 20000) + "com"


def rule_bait(rng: random.Random, raw: bytes) -> bytes:
    """A message for `RULES`: odd From domains, the words and ends their patterns look for."""
    domain = _long_domain(rng) if rng.random() < 0.1 else rng.choice(_FROM_DOMAINS)
    name = rng.choice(["", "PayPal ", '"service@paypal.com" ', "=?utf-8?b?0L/RgNC40LzQtdGA?= "])
    words = ["foo", "bar", "word", "alphabeta", "gamma", "gammadelta", "xyz", "click here", "aaa", "123"]
    words += ["free now", "zz", "wordy", "&amp;", "&", "<b>", "=4", "é", "foofoo", "(x", "o. ", "urgent"]
    text = rng.choice(["", " ", "\n", "\r\n"]).join(rng.choice(words) for _ in range(rng.randint(1, 12)))
    text += rng.choice(["", "\n", "\r\n", " ", "x", "é"])
    headers = [
        f"From: {name}<user@{domain}>",
        f"To: bob@{rng.choice(_FROM_DOMAINS)}",
        f"Subject: {rng.choice(['hello', 'urgent', 'invoice', 'invoices', 'Invoice 3', 'URGENT', ''])}",
    ]
    for header in ["X-Tag: yes", "X-Tag: spam", "Precedence: bulk", "Auto-Submitted: auto-replied"]:
        if rng.random() < 0.3:
            headers.append(header)
    if rng.random() < 0.2:
        headers.append("List-Id: <list.example>")
    rng.shuffle(headers)
    encoding = rng.choice(["7bit", "8bit", "quoted-printable", "html"])
    if encoding == "html":
        headers.append("Content-Type: text/html; charset=utf-8")
        content = text.replace("\n", "<br>").encode()
    elif encoding == "quoted-printable":
        headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: quoted-printable"]
        content = _quoted_printable(text.encode())
    else:
        headers.append("Content-Type: text/plain; charset=utf-8")
        content = text.encode()
    newline = rng.choice(["\n", "\r\n"])
    return newline.join(headers).encode() + newline.encode() * 2 + content


def _quoted_printable(data: bytes) -> bytes:
    import quopri

    return quopri.encodestring(data)


def big_text(rng: random.Random, raw: bytes) -> bytes:
    """A text body past the 256 KiB text cut, the words the rules look for about the cut."""
    bait = rule_bait(rng, raw)
    end = _header_end(bait)
    head, content = bait[:end], bait[end:].lstrip(b"\r\n")
    filler_unit = rng.choice([b"x", b" ", b"\n", b"word ", b"\xc3\xa9", b"\xe2\x82\xac"])
    near = body.MAX_TEXT_BYTES - rng.randint(0, 12)
    filler = (filler_unit * (near // len(filler_unit) + 1))[:near]
    tail = content * rng.randint(1, 3) + rng.choice([b"", b"\n", b"more text after the cut\n" * 50])
    return head + b"\n\n" + filler + tail


def rtf(rng: random.Random, raw: bytes) -> bytes:
    """An RTF attachment: nested objects and results, unbalanced braces, huge object data."""
    pieces = [
        rb"{\object\objemb{\*\objclass Word.Document}{\*\objdata 0102}{\result shown}}",
        rb"{\object{\result{\object{\result nested}}}}",
        rb"{\object" * rng.randint(1, 5000),
        rb"{\result " * rng.randint(1, 5000),
        rb"}" * rng.randint(1, 5000),
        rb"{\object{\result{" * rng.randint(1, 3000),
        rb"{\object{\*\objdata " + b"0f" * rng.randint(1000, 200000) + b"}",
        rb"{\object\result text}",
        rb"{\result outside}",
        rb"{\*\object{\result hidden}}",
        rb"\object\result{\result x}",
        rb"{\pict{\object{\result in a picture}}}",
        rb"{\object{\result a}{\result b}text}",
        rb"\u1234?\'e9\par ",
        rb"{\fldinst HYPERLINK x}{\fldrslt link}",
    ]
    document = b"{\\rtf1\\ansi " + b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
    document += rng.choice([b"}", b"", b"}}}}"])
    name = rng.choice(["a.rtf", "doc.doc", "x"])
    kind = rng.choice(["application/rtf", "text/rtf", "application/msword"])
    return (
        b"From: a@b.example\nSubject: rtf\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
        b"Content-Type: text/plain\n\nsee attached\n--b\n"
        + f'Content-Type: {kind}; name="{name}"\nContent-Disposition: attachment\n\n'.encode()
        + document
        + b"\n--b--\n"
    )


def lookalike_from(rng: random.Random, raw: bytes) -> bytes:
    """A From domain a protected one may be found in: hyphens, punycode, long label runs, lure words."""
    lures = ["secure", "login", "support", "account", "verify", "mail", "pie", "ing", "apple", "paypal"]
    if rng.random() < 0.3:
        domain = _long_domain(rng)
    else:
        parts = [rng.choice(lures) for _ in range(rng.randint(1, 6))]
        glue = rng.choice(["-", "", ".", "--"])
        domain = glue.join(parts) + rng.choice([".com", ".net", ".com.au", ".evil.test", ".xn--p1ai"])
    headers, _, rest = raw.partition(b"\n\n")
    lines = [line for line in headers.split(b"\n") if not line.lower().startswith(b"from:")]
    return b"\n".join([f"From: x@{domain}".encode(), *lines]) + b"\n\n" + rest


@contextmanager
def _text_caps_lifted() -> Iterator[None]:
    """The body read whole: the 256 KiB caps of the text read and searched lifted (a fuzzer's hack)."""
    saved = body.MAX_TEXT_BYTES, body.MAX_HTML_CHARS, match.MAX_TEXT
    body.MAX_TEXT_BYTES = body.MAX_HTML_CHARS = match.MAX_TEXT = 1 << 30
    try:
        yield
    finally:
        body.MAX_TEXT_BYTES, body.MAX_HTML_CHARS, match.MAX_TEXT = saved


async def _outcomes(
    pipeline: Pipeline, mailbox: MailboxConfig, fetched: FetchedMessage
) -> dict[str, bool | None]:
    """Each rule's outcome: applied, not applied, or None when undecided."""
    event = await pipeline.process(mailbox, fetched)
    assert event is not None
    applied = {entry["rule"] for entry in event.data.get("rules_applied") or []}
    errors = event.data.get("rules_errors") or []
    outcomes: dict[str, bool | None] = {}
    for rule in RULES:
        name = rule["name"]
        undecided = any(error.startswith(f'rule "{name}" ') for error in errors)
        outcomes[name] = None if undecided else name in applied
    return outcomes


def _header_end(raw: bytes) -> int:
    ends = [at for at in (raw.find(b"\n\n"), raw.find(b"\r\n\r\n")) if at >= 0]
    return min(ends, default=len(raw))


def _cut_at(rng: random.Random, raw: bytes) -> int:
    end = _header_end(raw)
    if rng.random() < 0.5:
        return rng.randrange(end + 1)
    return rng.randint(end, len(raw))


async def cut_disagreement(
    rng: random.Random, pipeline: Pipeline, mailbox: MailboxConfig, fetched: FetchedMessage, raw: bytes
) -> str | None:
    """The rules `pipeline` decides differently on message `raw` cut short than on it whole, or
    None; `fetched`: the rest of what the fetch hands over."""
    whole = dataclasses.replace(fetched, raw=raw, size=len(raw))
    if len(raw) > body.MAX_TEXT_BYTES and rng.random() < 0.5:
        cut, where = whole, "the text cut"
        with _text_caps_lifted():
            expected = await _outcomes(pipeline, mailbox, whole)
    else:
        at = _cut_at(rng, raw)
        cut, where = dataclasses.replace(whole, raw=raw[:at]), f"a fetch cut at byte {at}"
        expected = await _outcomes(pipeline, mailbox, whole)
    found = await _outcomes(pipeline, mailbox, cut)
    for rule in RULES:
        name = rule["name"]
        if found[name] is not None and expected[name] is not None and found[name] != expected[name]:
            return f"{name} {rule['if']} is {found[name]} on {where}, {expected[name]} on the whole"
    return None
