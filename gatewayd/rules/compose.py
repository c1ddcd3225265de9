"""The mail the rules write: auto-replies (RFC 3834) and forwards (the original attached whole).

An auto-reply: From the mailbox's own address, `Re:` subject, In-Reply-To and References to the
message, `Auto-Submitted: auto-replied`, `X-Auto-Response-Suppress: All` (so Exchange-style
responders stay quiet) and `X-Loop` with the mailbox's address (so a reply that comes back is
recognised). A forward: `Fwd:` subject, the note as text, the original message attached verbatim
as `message/rfc822`, `Auto-Submitted: auto-generated` and the same `X-Loop`.

An address that is not ASCII is written as UTF-8 (RFC 6532): an encoded word is no address
(RFC 2047, section 5). Such mail needs SMTPUTF8, which `gatewayd.send.smtp` uses for the same
addresses in the envelope, or fails the mail when the server does not offer it.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime, make_msgid
from typing import Any

from gatewayd.pipeline.auth.domains import ascii_domain

_RE = ("re:", "aw:", "sv:", "antw:")
MAX_REFERENCES = 20
# A msg-id as it may go into In-Reply-To and References: printable ASCII in angle brackets.
_MSG_ID = re.compile(r"<[\x21-\x3b=\x3f-\x7e]+>")


@dataclass(frozen=True, slots=True)
class Composed:
    message: bytes
    message_id: str


def _msgid_domain(address: str) -> str:
    """The address's domain in its ASCII form: a Message-ID is quoted back in In-Reply-To and
    References by mail that may not be SMTPUTF8."""
    domain = ascii_domain(address.rpartition("@")[2])
    return domain if domain and domain.isascii() else "gatewayd.invalid"


def _headers(own: str, from_name: str | None, to: Sequence[str], subject: str) -> tuple[EmailMessage, str]:
    international = not all(address.isascii() for address in (own, *to))
    message = EmailMessage(policy=policy.SMTPUTF8 if international else policy.SMTP)
    message_id = make_msgid(domain=_msgid_domain(own))
    local, _, domain = own.rpartition("@")
    # Address's own parser refuses a local part that is not ASCII, so it is given in its parts.
    message["From"] = Address(from_name, local, domain) if from_name else own
    message["To"] = ", ".join(to)
    message["Subject"] = _text(subject)
    message["Date"] = format_datetime(_now())
    message["Message-ID"] = message_id
    return message, message_id


def text_address(address: str) -> str:
    """The address, when it is text: one from an undecodable header holds surrogate escapes of
    its raw bytes, which neither the journal, the event nor SMTP can carry."""
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{address!r} is not an address: it holds bytes that are not text") from None
    return address


def _now() -> datetime:
    return datetime.now(UTC)


def _text(value: str) -> str:
    """Text from the mail (a subject) as a header value that stays one header.

    The email package decodes any `=?charset?q?...?=` it is given, and writes what it decoded,
    line breaks included: a subject spelling an encoded CR LF would add headers (or a body) to
    the reply. So controls become spaces, and text holding an encoded word is encoded as a whole,
    which the package decodes back to that very text.
    """
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in value)
    return Header(text, "utf-8").encode(maxlinelen=0) if "=?" in text else text


def _msg_ids(values: Iterable[Any]) -> list[str]:
    """The msg-id in each value, when it holds a plain one: nothing else a sender wrote (prose,
    encoded words, line breaks) reaches our headers."""
    found = (_MSG_ID.search(v) for v in values if isinstance(v, str))
    return [m.group(0) for m in found if m is not None and "=?" not in m.group(0)]


def reply(data: Mapping[str, Any], own: str, to: str, body: str, from_name: str | None = None) -> Composed:
    subject = str(data.get("subject") or "").strip()
    if not subject.lower().startswith(_RE):
        subject = f"Re: {subject}" if subject else "Re: your message"
    message, message_id = _headers(own, from_name, [to], subject)
    if originals := _msg_ids([data.get("message_id")]):
        original = originals[0]
        references = _msg_ids(data.get("references") or [])
        if not references:
            references = _msg_ids([data.get("in_reply_to")])
        message["In-Reply-To"] = original
        message["References"] = " ".join([*references[-(MAX_REFERENCES - 1) :], original])
    message["Auto-Submitted"] = "auto-replied"
    message["X-Auto-Response-Suppress"] = "All"
    message["X-Loop"] = own
    message.set_content(body, cte="quoted-printable")
    return Composed(message.as_bytes(), message_id)


def forward(data: Mapping[str, Any], own: str, to: Sequence[str], note: str, raw: bytes) -> Composed:
    subject = str(data.get("subject") or "").strip()
    head, message_id = _headers(own, None, to, f"Fwd: {subject}" if subject else "Fwd: (no subject)")
    head["Auto-Submitted"] = "auto-generated"
    head["X-Loop"] = own
    boundary = "=_gatewayd_" + secrets.token_hex(16)
    head["MIME-Version"] = "1.0"
    head["Content-Type"] = f'multipart/mixed; boundary="{boundary}"'
    header_block = head.as_bytes().split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    text = MIMEPart(policy=policy.SMTP)
    text.set_content(note, cte="quoted-printable")
    original = raw if raw.endswith(b"\n") else raw + b"\r\n"
    eight_bit = any(byte > 127 for byte in original)
    attached = (
        b"Content-Type: message/rfc822\r\n"
        b'Content-Disposition: attachment; filename="forwarded.eml"\r\n'
        + (b"Content-Transfer-Encoding: 8bit\r\n" if eight_bit else b"")
        + b"\r\n"
        + original
    )
    marker = b"--" + boundary.encode()
    body = marker + b"\r\n" + bytes(text) + b"\r\n" + marker + b"\r\n" + attached + marker + b"--\r\n"
    return Composed(header_block + body, message_id)
