"""learn_from_dirs: training the store from folders of labelled messages (`gatewayd learn`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from gatewayd.message import FetchedMessage, parse
from gatewayd.pipeline.learning.store import HAM, SPAM, LearningStore

log = logging.getLogger(__name__)


def learn_from_dirs(
    store: LearningStore, spam_dirs: Sequence[Path], ham_dirs: Sequence[Path]
) -> dict[str, int]:
    """Train on every message file (one RFC 5322 message each, e.g. `*.eml`) under the given
    directories, at any depth (see `message_files`).

    An mbox file (its first line `From `) counts as each of its messages. `skipped` counts files
    that were empty, unreadable or no mail, and messages already trained under that label.
    """
    result = {SPAM: 0, HAM: 0, "skipped": 0}
    uid = 0
    for label, dirs in ((SPAM, spam_dirs), (HAM, ham_dirs)):
        for directory in dirs:
            for path in message_files(Path(directory)):
                try:
                    raws = file_messages(path)
                except OSError as exc:
                    log.warning("cannot read %s: %s", path, exc)
                    result["skipped"] += 1
                    continue
                if not raws:  # empty, or not mail (a picture, an index file): trained, it would count
                    result["skipped"] += 1
                for raw in raws:
                    uid += 1
                    fetched = FetchedMessage(
                        folder="INBOX",
                        uid=uid,
                        uidvalidity=1,
                        raw=raw,
                        size=len(raw),
                        flags=(),
                        internaldate=None,
                    )
                    if store.train(parse(fetched), label):
                        result[label] += 1
                    else:
                        result["skipped"] += 1
    return result


# A message's first line is a header field: a name of printable ASCII but ":", then ":".
_HEADER_FIELD = re.compile(rb"[!-9;-~]{1,998}:")
# An mbox: each message after a line "From sender date" (`From a@b  Thu Aug 22 13:17:22 2002`);
# the date tells it from a body line a single-message file left unquoted. A body line "From " is
# written ">From " in an mbox (mboxrd: ">>From " for ">From "): the quoting is undone one level.
_MBOX_SEPARATOR = re.compile(rb"^From \S+ +[A-Z][a-z]{2} [A-Z][a-z]{2} +\d{1,2} \d{1,2}:\d\d\b.*\n", re.M)
_MBOX_QUOTED = re.compile(rb"^>(>*From )", re.M)


def file_messages(path: Path) -> list[bytes]:
    """The messages in a file: one (RFC 5322), each of an mbox's, or none when the file is not mail."""
    raw = path.read_bytes()
    if _MBOX_SEPARATOR.match(raw):
        parts = [_MBOX_QUOTED.sub(rb"\1", part) for part in _MBOX_SEPARATOR.split(raw)[1:]]
    else:
        parts = [raw]
    return [part for part in parts if _HEADER_FIELD.match(part)]


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
