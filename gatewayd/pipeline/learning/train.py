"""learn_from_dirs: training the store from folders of labelled messages (`gatewayd learn`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from gatewayd.message import FetchedMessage, parse
from gatewayd.pipeline.learning.store import HAM, SPAM, LearningStore

log = logging.getLogger(__name__)


def learn_from_dirs(
    store: LearningStore, spam_dirs: Sequence[Path], ham_dirs: Sequence[Path]
) -> dict[str, int]:
    """Train on every file (one RFC 5322 message each, e.g. `*.eml`) in the given directories.

    `skipped` counts files that were empty, unreadable, or already trained under that label.
    """
    result = {SPAM: 0, HAM: 0, "skipped": 0}
    uid = 0
    for label, dirs in ((SPAM, spam_dirs), (HAM, ham_dirs)):
        for directory in dirs:
            for path in sorted(Path(directory).iterdir()):
                if not path.is_file() or path.name.startswith("."):
                    continue
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
