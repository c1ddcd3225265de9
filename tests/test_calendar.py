"""Calendar invites: read as the words a calendar app shows (lines unfolded, text escapes decoded),
scanned for injection inline and attached, located like any other text part."""

from __future__ import annotations

from gatewayd.message.calendar import shown
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
