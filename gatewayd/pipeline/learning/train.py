"""learn_from_dirs: training the store from folders of labelled messages (`gatewayd learn`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from gatewayd.message import FetchedMessage, parse
from gatewayd.pipeline.learning.store import HAM, SPAM, LearningStore

log = logging.getLogger(__name__)

# A running total every this many messages: a sign of life on a large mbox, a few lines per minute.
PROGRESS_EVERY = 1000

Progress = Callable[[str], None]


def learn_from_dirs(
    store: LearningStore,
    spam_dirs: Sequence[Path],
    ham_dirs: Sequence[Path],
    progress: Progress | None = None,
    every: int = PROGRESS_EVERY,
) -> dict[str, int]:
    """Train on every message file (one RFC 5322 message each, e.g. `*.eml`) under the given
    directories, at any depth (see `message_files`).

    An mbox file (its first line `From `) counts as each of its messages, read one at a time.
    `skipped` counts files that were empty, unreadable or no mail, and messages already trained
    under that label; `messages` counts every message found (trained or not). `progress` is told
    of each mbox file read and, every `every` messages, the counts so far: a line each, with no
    line end.
    """
    result = {SPAM: 0, HAM: 0, "skipped": 0, "messages": 0}
    uid = 0
    for label, dirs in ((SPAM, spam_dirs), (HAM, ham_dirs)):
        for directory in dirs:
            for path in message_files(Path(directory)):
                in_file = 0
                try:
                    for raw in file_messages(path):
                        uid += 1
                        in_file += 1
                        result["messages"] += 1
                        result[label if store.train(parse(_fetched(raw, uid)), label) else "skipped"] += 1
                        if progress is not None and uid % every == 0:
                            progress(
                                f"{uid} messages: "
                                + ", ".join(f"{k}: {result[k]}" for k in (SPAM, HAM, "skipped"))
                            )
                except OSError as exc:
                    log.warning("cannot read %s: %s", path, exc)
                    result["skipped"] += 1
                    continue
                if not in_file:  # empty, or not mail (a picture, an index file): trained, it would count
                    result["skipped"] += 1
                elif progress is not None and in_file > 1:  # an mbox; one line per .eml would flood
                    progress(f"{path}: {in_file} messages ({label})")
    return result


def _fetched(raw: bytes, uid: int) -> FetchedMessage:
    return FetchedMessage(
        folder="INBOX", uid=uid, uidvalidity=1, raw=raw, size=len(raw), flags=(), internaldate=None
    )


# A message's first line is a header field: a name of printable ASCII but ":", then ":".
_HEADER_FIELD = re.compile(rb"[!-9;-~]{1,998}:")
# An mbox: each message after a line "From sender date" (`From a@b  Thu Aug 22 13:17:22 2002`);
# the date tells it from a body line a single-message file left unquoted. A body line "From " is
# written ">From " in an mbox (mboxrd: ">>From " for ">From "): the quoting is undone one level.
_MBOX_SEPARATOR = re.compile(rb"From \S+ +[A-Z][a-z]{2} [A-Z][a-z]{2} +\d{1,2} \d{1,2}:\d\d\b.*\n")
_MBOX_QUOTED = re.compile(rb"^>(>*From )", re.M)
# Enough of a file to tell mail (a header field, an mbox's "From " line) from anything else.
_FIRST_LINE_BYTES = 64 * 1024


def file_messages(path: Path) -> Iterator[bytes]:
    """The messages in a file: one (RFC 5322), each of an mbox's, or none when the file is not mail.

    An mbox is read line by line, so memory holds one message at a time, however large the file.
    """
    with path.open("rb") as handle:
        first = handle.readline(_FIRST_LINE_BYTES)
        if not _MBOX_SEPARATOR.fullmatch(first):
            if _HEADER_FIELD.match(first):  # else not mail (a video, say), left unread
                yield first + handle.read()
            return
        lines: list[bytes] = []
        for line in handle:
            if _MBOX_SEPARATOR.fullmatch(line):
                yield from _mbox_message(lines)
                lines = []
            else:
                lines.append(line)
        yield from _mbox_message(lines)


def _mbox_message(lines: list[bytes]) -> Iterator[bytes]:
    raw = _MBOX_QUOTED.sub(rb"\1", b"".join(lines))
    if _HEADER_FIELD.match(raw):
        yield raw


def message_files(directory: Path) -> Iterator[Path]:
    """The files under `directory`, any depth, in name order, hidden ones and symlinked folders left
    out. In a Maildir (a folder with `cur/` and `new/`) only those two: `tmp/` holds deliveries in
    progress, and the folder itself the server's index files."""
    if (directory / "cur").is_dir() and (directory / "new").is_dir():
        entries = [directory / "cur", directory / "new"]
    else:
        try:
            entries = sorted(directory.iterdir())
        except OSError as exc:  # an unreadable subfolder: the others still count
            log.warning("cannot read %s: %s", directory, exc)
            return
    for path in entries:
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if not path.is_symlink():  # a link to a parent folder would never end
                yield from message_files(path)
        elif path.is_file():
            yield path
