"""Calendar invites and contact cards: read as the words a calendar or address-book app shows (lines
unfolded, text escapes decoded), scanned for injection inline and attached, located like any other
text part."""

from __future__ import annotations

import quopri
import re

from gatewayd.message.contentlines import calendar_shown as shown
from gatewayd.message.contentlines import vcard_shown
from tests.test_attached import ATTACK, BENIGN, attachment, injection, inline, locations, message

# The attack in DESCRIPTION, folded inside words (RFC 5545 3.1) and escaped (3.3.11), as Outlook and
# Google write long values; an Outlook UID, a long hex run, is no payload.
INVITE = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN\r\n"
    "METHOD:REQUEST\r\nBEGIN:VEVENT\r\n"
    "UID:040000008200E00074C5B7101A82E00800000000D0F1A2B3C4D5E6F708090A0B0C0D0E0F101112131415161718\r\n"
    "DTSTART:20261124T100000Z\r\nDTEND:20261124T110000Z\r\nSUMMARY:Quarterly review\r\n"
    'ORGANIZER;CN="Sender, Bob":mailto:bob@example.org\r\n'
    "DESCRIPTION:Agenda\\n{description}\r\n"
    "LOCATION:Room 4\\; second floor\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)


def folded(text: str, width: int = 23) -> str:
    """`text` escaped as an iCalendar value and cut into folded lines of `width` characters."""
    escaped = text.replace("\\", "\\\\").replace(",", "\\,").replace(";", "\\;")
    return "\r\n ".join(escaped[i : i + width] for i in range(0, len(escaped), width))


def invite(description: str) -> str:
    return INVITE.format(description=folded(description))


def test_shown_unfolds_lines_and_decodes_text_escapes() -> None:
    source = invite("Bring the slides; the budget, and C:\\plans.\nThanks")
    text, html = shown(source)
    assert text.splitlines() == [
        "Quarterly review",
        "Sender, Bob",
        "Agenda",
        "Bring the slides; the budget, and C:\\plans.",
        "Thanks",
        "Room 4; second floor",
    ]
    assert html is None
    alt = "X-ALT-DESC;FMTTYPE=text/html:<p>Agenda</p>\r\n <div style='display:none'>x</div>\r\n"
    assert shown(source.replace("END:VEVENT", alt + "END:VEVENT"))[1] == (
        "<p>Agenda</p><div style='display:none'>x</div>"
    )


def test_instructions_in_an_inline_invite_folded_and_escaped_are_high_and_located() -> None:
    """The invite as mailers send it, a third alternative to the text and HTML (inline:3), or alone
    after the body (inline:2)."""
    calendar = inline(invite(ATTACK), "text/calendar; method=REQUEST", None)
    beside = message(calendar, body=BENIGN).replace(b"multipart/mixed", b"multipart/alternative")
    html = inline(f"<p>{BENIGN}</p>", "text/html", None)
    for raw, location in ((beside, "inline:2"), (message(html, calendar, body=BENIGN), "inline:3")):
        data = injection(raw)
        assert data["level"] == "high", location
        assert locations(data) == {location}
        assert data["not_scanned"] == []


def test_instructions_in_an_attached_invite_or_its_html_description_are_found() -> None:
    attached = (
        ("invite.ics", "text/calendar"),
        ("invite.ics", "application/ics"),
        ("meeting.ics", "application/octet-stream"),
    )
    for filename, ctype in attached:
        data = injection(message(attachment(invite(ATTACK), filename, ctype), body=BENIGN))
        assert data["level"] == "high", ctype
        assert locations(data) == {f"attachment:{filename}"}
    hidden = f"X-ALT-DESC;FMTTYPE=text/html:<p>Agenda</p><div style='display:none'>{folded(ATTACK)}</div>\r\n"
    source = invite(BENIGN).replace("END:VEVENT", hidden + "END:VEVENT")
    data = injection(message(attachment(source, "invite.ics", "text/calendar"), body=BENIGN))
    assert data["level"] == "high"
    assert "INJ_HIDDEN_INSTRUCTIONS" in {finding["symbol"] for finding in data["findings"]}


def test_a_benign_invite_stays_none() -> None:
    calendar = inline(invite(BENIGN), "text/calendar; method=REQUEST", None)
    raw = message(calendar, attachment(invite(BENIGN), "invite.ics", "application/ics"), body=BENIGN)
    data = injection(raw)
    assert data == {"score": 0.0, "findings": [], "level": "none", "not_scanned": []}


# A card as Apple Contacts writes it: a grouped property, a structured name, a folded base64 photo;
# the attack in NOTE, folded inside words (RFC 6350 3.2) and escaped (3.4).
CARD = (
    "BEGIN:VCARD\r\nVERSION:3.0\r\nPRODID:-//Apple Inc.//iOS 17.0//EN\r\nN:Doe;Jane;;Dr.;\r\n"
    "FN:Jane Doe\r\nORG:Example\\, Inc.;Sales\r\nitem1.EMAIL;type=INTERNET;type=pref:jane@example.org\r\n"
    "PHOTO;ENCODING=b;TYPE=JPEG:/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8U\r\n"
    " HRofHh0aHBwgJC4nICIsIxwcKDcpLDAxNDQ0Hyc5PTgyPC4zNDL/2wBDAQkJCQwLDBgNDRgyIRwh\r\n"
    "UID:urn:uuid:4fbe8971-0bc3-424c-9c26-36c3e1eff6b1\r\nNOTE:Met at the fair\\n{note}\r\nEND:VCARD\r\n"
)


def card(note: str) -> str:
    return CARD.format(note=folded(note))


def test_vcard_shown_unfolds_lines_decodes_escapes_and_leaves_out_codes() -> None:
    assert vcard_shown(card("Call back; bring C:\\plans, please")).splitlines() == [
        "Doe Jane  Dr.",
        "Jane Doe",
        "Example, Inc. Sales",
        "jane@example.org",
        "Met at the fair",
        "Call back; bring C:\\plans, please",
    ]


def test_instructions_in_a_contact_card_folded_and_escaped_are_high_and_located() -> None:
    """Attached, or inline after the body (inline:2), where any text/* part was read before, but
    folded."""
    data = injection(message(inline(card(ATTACK), "text/vcard", None), body=BENIGN))
    assert data["level"] == "high"
    assert locations(data) == {"inline:2"}
    for filename, ctype in (
        ("jane.vcf", "text/vcard"),
        ("jane.vcf", "text/x-vcard"),
        ("contact.vcf", "application/octet-stream"),
    ):
        data = injection(message(attachment(card(ATTACK), filename, ctype), body=BENIGN))
        assert data["level"] == "high", ctype
        assert locations(data) == {f"attachment:{filename}"}, ctype


def test_a_benign_contact_card_stays_none() -> None:
    data = injection(message(attachment(card(BENIGN), "jane.vcf", "text/vcard"), body=BENIGN))
    assert data == {"score": 0.0, "findings": [], "level": "none", "not_scanned": []}


def quoted_printable(text: str, charset: str = "utf-8") -> str:
    """`text` as Outlook writes a vCard 2.1 value: quoted-printable, a soft line break after every
    20 characters or escapes of the encoded value, often inside a word."""
    encoded = quopri.encodestring(text.encode(charset), quotetabs=True).decode().replace("=\n", "")
    tokens = re.findall(r"=[0-9A-F]{2}|.", encoded.replace("\n", "=0D=0A"))
    return "=\r\n".join("".join(tokens[i : i + 20]) for i in range(0, len(tokens), 20))


# As Outlook exports a contact: vCard 2.1, the note in quoted-printable in Windows-1252.
CARD_21 = (
    "BEGIN:VCARD\r\nVERSION:2.1\r\nN;LANGUAGE=en-us:Doe;Jane\r\nFN:Jane Doe\r\n"
    "NOTE;ENCODING=QUOTED-PRINTABLE;CHARSET=Windows-1252:{note}\r\n"
    "EMAIL;PREF;INTERNET:jane@example.org\r\nEND:VCARD\r\n"
)


def test_vcard_shown_decodes_quoted_printable_values_across_soft_line_breaks() -> None:
    note = "Café on Friday;\nbring the slides"
    assert vcard_shown(CARD_21.format(note=quoted_printable(note, "cp1252"))).splitlines() == [
        "Doe Jane",
        "Jane Doe",
        "Café on Friday;",
        "bring the slides",
        "jane@example.org",
    ]
    bare = "BEGIN:VCARD\r\nNOTE;QUOTED-PRINTABLE;CHARSET=UTF-8:Caf=C3=\r\n=A9\r\nEND:VCARD\r\n"
    assert vcard_shown(bare) == "Café"
    unknown = "NOTE;ENCODING=QUOTED-PRINTABLE;CHARSET=x-nonesuch:a=3Db=\r\n"  # a break at the end
    assert vcard_shown(unknown) == "a=b"


def test_instructions_in_a_quoted_printable_vcard_note_are_high() -> None:
    source = CARD_21.format(note=quoted_printable(ATTACK, "cp1252"))
    data = injection(message(attachment(source, "jane.vcf", "text/x-vcard"), body=BENIGN))
    assert data["level"] == "high"
    assert locations(data) == {"attachment:jane.vcf"}
    benign = CARD_21.format(note=quoted_printable(BENIGN, "cp1252"))
    data = injection(message(attachment(benign, "jane.vcf", "text/x-vcard"), body=BENIGN))
    assert data == {"score": 0.0, "findings": [], "level": "none", "not_scanned": []}
