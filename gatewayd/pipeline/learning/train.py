"""learn_from_dirs: training the store from folders of labelled messages (`gatewayd learn`)."""

from __future__ import annotations

import logging
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

    `skipped` counts files that were empty, unreadable, or already trained under that label.
    """
    result = {SPAM: 0, HAM: 0, "skipped": 0}
    uid = 0
    for label, dirs in ((SPAM, spam_dirs), (HAM, ham_dirs)):
        for directory in dirs:
            for path in message_files(Path(directory)):
                try:
                    raw = path.read_bytes()
                except OSError as exc:
                    log.warning("cannot read %s: %s", path, exc)
                    result["skipped"] += 1
                    continue
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
                if raw.strip() and store.train(parse(fetched), label):
                    result[label] += 1
                else:
                    result["skipped"] += 1
    return result


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
