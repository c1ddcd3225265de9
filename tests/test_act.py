"""IMAP actions' commands (gatewayd.imap.act), on a recording stand-in for the session."""

from __future__ import annotations

from typing import Any

from gatewayd.imap.act import SessionActions
from gatewayd.imap.names import decode_mailbox, encode_mailbox
from gatewayd.imap.session import Selected


class Response:
    def __init__(self, *lines: bytes) -> None:
        self.result, self.lines = "OK", list(lines)


class Client:
    def __init__(self) -> None:
        self.sent: list[tuple[str, ...]] = []

    async def uid(self, *args: str) -> Response:
        self.sent.append(args)
        if args[0] in ("copy", "move"):
            return Response(b"OK [COPYUID 99 7 41] Done")
        return Response(b"done")


class Session:
    def __init__(self, capabilities: set[str]) -> None:
        self._client = Client()
        self.selected = Selected("INBOX", 1, None)
        self.capabilities = frozenset(capabilities)

    async def _call(self, what: str, awaitable: Any) -> Response:
        return await awaitable


async def test_gmail_labels_and_flags() -> None:
    session = Session({"IMAP4rev1", "MOVE", "X-GM-EXT-1"})
    actions = SessionActions(session)  # type: ignore[arg-type]
    assert actions.gmail
    await actions.store_labels(7, True, ["invoice", "Büro"])
    await actions.store(7, False, ["\\Seen"])
    assert session._client.sent == [
        ("store", "7", "+X-GM-LABELS", '("invoice" "B&APw-ro")'),
        ("store", "7", "-FLAGS.SILENT", "(\\Seen)"),
    ]


async def test_move_falls_back_to_copy_delete_expunge() -> None:
    session = Session({"IMAP4rev1", "UIDPLUS"})
    placement = await SessionActions(session).move(7, "Archive", create=False)  # type: ignore[arg-type]
    assert (placement.folder, placement.uidvalidity, placement.uid) == ("Archive", 99, 41)
    assert session._client.sent == [
        ("copy", "7", '"Archive"'),
        ("store", "7", "+FLAGS.SILENT", "(\\Deleted)"),
        ("expunge", "7"),
    ]
    without_uidplus = Session({"IMAP4rev1"})
    await SessionActions(without_uidplus).move(7, "Archive", create=False)  # type: ignore[arg-type]
    assert [sent[0] for sent in without_uidplus._client.sent] == ["copy", "store"]  # no plain EXPUNGE


def test_modified_utf7_folder_names() -> None:
    assert encode_mailbox("Entwürfe") == "Entw&APw-rfe"
    assert encode_mailbox("A&B") == "A&-B"
    assert encode_mailbox("日本語") == "&ZeVnLIqe-"
    for name in ("Entwürfe", "A&B", "日本語", "R&D/Ünter Ordner", "plain"):
        assert decode_mailbox(encode_mailbox(name)) == name
    assert decode_mailbox("&bad") == "&bad" and decode_mailbox("&A-") == "&A-"  # kept as sent
