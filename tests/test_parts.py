"""Reading what fetching the parts beyond a message's prefix brings: FETCH answers with several
literals, BODYSTRUCTURE leaves, and which parts to ask for. Against Dovecot:
tests/integration/test_fetch_parts.py."""

from __future__ import annotations

import dataclasses

import pytest

from gatewayd.imap.bodystructure import BodyStructureError, LeafPart, leaf_parts
from gatewayd.imap.parts import _wanted
from gatewayd.imap.response import fetch_items
from gatewayd.message.limits import MAX_ATTACHED_BYTES, MAX_ATTACHED_PARTS

# Dovecot's answer for tests.sse.late_text_mail: a 300,000-byte PDF in base64, then the text.
LATE_TEXT = (
    b'1 FETCH (UID 7 BODYSTRUCTURE (("application" "pdf" ("name" "report.pdf") NIL NIL "base64" 410526'
    b' NIL ("attachment" ("filename" "report.pdf")) NIL NIL)("text" "plain" ("charset" "utf-8") NIL NIL'
    b' "7bit" 67 0 NIL NIL NIL NIL) "mixed" ("boundary" "B") NIL NIL NIL))'
)


def structure(line: bytes, uid: int = 7) -> list[LeafPart]:
    return leaf_parts(fetch_items([line, b"Fetch completed."])[uid][b"BODYSTRUCTURE"])


def test_items_of_an_answer_with_several_literals() -> None:
    lines: list[bytes | bytearray] = [
        b"1 FETCH (UID 7 BODY[2.MIME]<0> {4}",
        bytearray(b"a: b"),
        b" BODY[2]<0> {3}",
        bytearray(b"x)y"),
        b' FLAGS (\\Seen) X "q\\"uo\\\\te" Y NIL)',
        b"2 FETCH (UID 8 BODY[1]<0> NIL)",
        b"Fetch completed (0.001 + 0.000 secs).",
    ]
    assert fetch_items(lines) == {
        7: {
            b"UID": b"7",
            b"BODY[2.MIME]": b"a: b",
            b"BODY[2]": b"x)y",
            b"FLAGS": [b"\\Seen"],
            b"X": b'q"uo\\te',
            b"Y": None,
        },
        8: {b"UID": b"8", b"BODY[1]": None},
    }


def test_an_unbalanced_or_garbled_answer_gives_what_it_can() -> None:
    assert fetch_items([b"1 FETCH (UID 3 BODYSTRUCTURE ((", b'))) { " OK']) == {
        3: {b"UID": b"3", b"BODYSTRUCTURE": [[]]}
    }
    assert fetch_items([b"OK nothing"]) == {}


def test_leaves_of_a_mixed_message() -> None:
    assert structure(LATE_TEXT) == [
        LeafPart("1", "application/pdf", True, size=300_000, encoded_size=410526, filename="report.pdf"),
        LeafPart("2", "text/plain", attachment=False, size=67, encoded_size=67),
    ]


def test_nested_parts_a_forwarded_message_and_a_literal_filename() -> None:
    line = (
        b'1 FETCH (UID 7 BODYSTRUCTURE ((("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7bit" 10 1 NIL NIL'
        b' NIL NIL)("text" "html" NIL NIL NIL "quoted-printable" 20 1 NIL NIL NIL NIL) "alternative"'
        b' ("boundary" "A") NIL NIL NIL)("message" "rfc822" NIL NIL NIL "7bit" 300 ("date" "subject" NIL NIL'
        b' NIL NIL NIL NIL NIL NIL) ("text" "plain" NIL NIL NIL "7bit" 5 1 NIL NIL NIL NIL) 9 NIL NIL NIL'
        b' NIL)("text" "plain" NIL NIL NIL "7bit" 40 2 NIL ("inline" ("filename*0*" {9}'
    )
    lines: list[bytes | bytearray] = [
        line,
        bytearray(b"notes.txt"),
        b')) NIL NIL) "mixed" ("boundary" "B") NIL NIL NIL))',
        b"OK",
    ]
    leaves = leaf_parts(fetch_items(lines)[7][b"BODYSTRUCTURE"])
    assert [(leaf.section, leaf.content_type, leaf.attachment, leaf.filename) for leaf in leaves] == [
        ("1.1", "text/plain", False, None),
        ("1.2", "text/html", False, None),
        ("2", "message/rfc822", False, None),  # a leaf: its insides are not this message's body
        ("3", "text/plain", True, "notes.txt"),  # a file name (RFC 2231 continuation): an attachment
    ]


@pytest.mark.parametrize(
    ("type_parameters", "disposition", "filename"),
    [
        (b"NIL", b'("attachment" ("filename" "notes.txt"))', "notes.txt"),
        (b'("name" "=?utf-8?q?r=C3=A9sum=C3=A9.txt?=")', b"NIL", "résumé.txt"),  # RFC 2047 words
        (b"NIL", b'("attachment" ("filename*" "utf-8\'\'%E2%82%AC.log"))', "€.log"),  # RFC 2231
        (  # continuations, before the type's name
            b'("name" "other.bin")',
            b'("attachment" ("filename*0*" "utf-8\'\'caf%C3%A9-" "filename*1" "notes.txt"))',
            "café-notes.txt",
        ),
        (b"NIL", b'("inline" NIL)', None),
    ],
)
def test_a_parts_file_name_from_its_parameters(
    type_parameters: bytes, disposition: bytes, filename: str | None
) -> None:
    line = (
        b'1 FETCH (UID 7 BODYSTRUCTURE ("application" "octet-stream" ' + type_parameters
        + b' NIL NIL "base64" 1000 NIL ' + disposition + b" NIL NIL))"
    )  # fmt: skip
    assert structure(line)[0].filename == filename


@pytest.mark.parametrize(
    "line",
    [
        b"1 FETCH (UID 7 BODYSTRUCTURE NIL)",
        b"1 FETCH (UID 7 BODYSTRUCTURE ())",
        b'1 FETCH (UID 7 BODYSTRUCTURE ("text" "plain" NIL NIL NIL "7bit" many))',
        b'1 FETCH (UID 7 BODYSTRUCTURE ((NIL "plain" NIL NIL NIL "7bit" 4) "mixed"))',
        b"1 FETCH (UID 7 BODYSTRUCTURE "
        + b"(" * 30
        + b'"text" "plain" NIL NIL NIL "7bit" 4'
        + b")" * 30
        + b")",
    ],
)
def test_what_is_not_a_bodystructure_is_refused(line: bytes) -> None:
    with pytest.raises(BodyStructureError):
        structure(line)


def test_the_parts_after_the_prefix_and_a_text_budget() -> None:
    leaves = [
        LeafPart("1", "text/plain", attachment=False, size=10, encoded_size=10),
        LeafPart("2", "application/zip", attachment=True, size=300_000, encoded_size=410_000),
        LeafPart("3", "text/html", attachment=False, size=900, encoded_size=900),
        LeafPart("4", "text/plain", attachment=True, size=50, encoded_size=50),
        LeafPart("5", "text/calendar", attachment=False, size=60, encoded_size=60),
        LeafPart("6", "text/plain", attachment=False, size=900, encoded_size=900),
    ]
    # The prefix holds the first part whole: from the second on, inline text parts (an invite's
    # too) within 1,000 bytes, and the attached text file whole.
    wanted = _wanted(leaves, ["text/plain"], max_bytes=1000)
    assert [(part.index, part.leaf.section, part.length) for part in wanted] == [
        (1, "2", 0),
        (2, "3", 900),
        (3, "4", 50),
        (4, "5", 60),
        (5, "6", 40),
    ]
    # A prefix that does not match the BODYSTRUCTURE (a malformed message): every part again.
    assert [part.index for part in _wanted(leaves, ["text/html"], max_bytes=1000)] == [0, 1, 2, 3, 4, 5]


def test_attached_text_files_past_the_prefix_within_the_scanners_budget() -> None:
    """The start the injection stage reads of each text file: 64 KiB decoded (base64 fetched in
    proportion), 256 KiB in all, the prefix's own file counted; never any other attachment."""
    big = LeafPart("5", "text/plain", attachment=True, size=200_000, encoded_size=273_686)
    leaves = [
        LeafPart("1", "text/plain", attachment=True, size=10, encoded_size=14),  # whole in the prefix
        LeafPart("2", "image/png", attachment=True, size=5_000_000, encoded_size=6_842_106),
        LeafPart("3", "application/json", attachment=False, size=300, encoded_size=300),  # a file too
        LeafPart("4", "application/octet-stream", attachment=True, size=300, encoded_size=300),
        *(dataclasses.replace(big, section=str(n)) for n in range(5, 10)),
    ]
    lengths = {part.leaf.section: part.length for part in _wanted(leaves, ["text/plain"], max_bytes=1000)}
    assert lengths["2"] == lengths["4"] == 0
    assert lengths["3"] == 300
    # Cut, but with all the scanner reads of it: base64 decodes 57 bytes of each 78.
    assert lengths["5"] == lengths["6"] == lengths["7"] < 273_686
    assert lengths["5"] // 78 * 57 >= MAX_ATTACHED_BYTES
    # What is left of 256 KiB (after 10 + 300 + 3 x 64 Ki decoded bytes), then nothing.
    assert 0 < lengths["8"] < lengths["7"]
    assert lengths["9"] == 0


def test_at_most_eight_attached_text_files_in_all() -> None:
    small = LeafPart("1", "text/csv", attachment=True, size=100, encoded_size=100)
    leaves = [dataclasses.replace(small, section=str(n)) for n in range(1, 13)]
    wanted = _wanted(leaves, ["text/csv"] * 2, max_bytes=1000)  # two whole in the prefix
    assert [part.length for part in wanted] == [100] * (MAX_ATTACHED_PARTS - 2) + [0] * 4


def test_octet_stream_named_as_text_and_forwarded_messages_past_the_prefix() -> None:
    """application/octet-stream is read by its file name; a forwarded message, its own header and
    body, up to 64 KiB like a text file, within the same budget."""
    octets = LeafPart("2", "application/octet-stream", True, size=300, encoded_size=410, filename="notes.txt")
    leaves = [
        LeafPart("1", "application/pdf", True, size=300_000, encoded_size=410_526, filename="report.pdf"),
        octets,
        dataclasses.replace(octets, section="3", filename="setup.exe"),
        dataclasses.replace(octets, section="4", filename=None),
        LeafPart("5", "message/rfc822", attachment=True, size=2_000, encoded_size=2_000),
        LeafPart("6", "message/rfc822", attachment=False, size=900_000, encoded_size=900_000),
    ]
    lengths = {part.leaf.section: part.length for part in _wanted(leaves, [], max_bytes=1000)}
    assert lengths == {"1": 0, "2": 410, "3": 0, "4": 0, "5": 2_000, "6": MAX_ATTACHED_BYTES + 78}
    # Eight forwarded messages already read in the prefix leave none to fetch.
    held = [dataclasses.replace(leaves[4], section=str(n)) for n in range(1, 9)]
    wanted = _wanted([*held, *leaves], ["message/rfc822"] * 8, max_bytes=1000)
    assert [part.length for part in wanted] == [0] * len(leaves)
