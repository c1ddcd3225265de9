"""The open-file limit: raised at start to what the process may have, and checked against the config.

Every IMAP connection and every HTTP connection (each SSE client) holds a file descriptor. The
usual soft limit, 1024, is far below the hard one (systemd gives services 1024:524288), so
`gatewayd run` and `gatewayd demo` raise the soft limit to the hard one, as most servers do, before
`server.max_connections` defaults to half of it. A limit that still cannot hold the IMAP
connections the config may open at once, `server.max_connections` and a reserve for the store, the
logs, SMTP and the template child is logged as a warning: past it, watchers could not reconnect and
the store could not open a file.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Sequence

from gatewayd.api.connections import default_max_connections
from gatewayd.config import Config, MailboxConfig

log = logging.getLogger(__name__)

# Descriptors besides IMAP and HTTP: SQLite files and their journals, the lock, the listener, the
# logs, SMTP connections, the template child's pipes.
RESERVED_FDS = 64


def imap_connections_at_most(mailboxes: Sequence[MailboxConfig], learning: bool) -> int:
    """How many IMAP connections gatewayd may hold at once for these mailboxes: an upper bound.

    `learning`: the pipeline's learning store is on (it reads Sent folders and takes reports)."""
    # Imported here: the CLI imports this module before aioimaplib and aiohttp, which are slow to load.
    from gatewayd.api.context import REPORT_SESSIONS_AT_ONCE
    from gatewayd.imap.pool import SENT_READS_AT_ONCE

    # One per watched folder. NOTIFY shares one per mailbox, but falls back to one per folder
    # (no NOTIFY, a folder it cannot select), so a mailbox may need them all.
    watching = sum(len(mailbox.imap.folders) for mailbox in mailboxes)
    # Per watching connection, a second one while a rule (or the recovery of an interrupted move)
    # locates moved mail: a connection's messages go through the rules one at a time.
    # Whatever the rules in force, even none that moves or copies: a reload (SIGHUP) may add one
    # without a restart (this check runs at start only), and each folder's first sync finishes a
    # move or copy a crash interrupted under earlier rules, locating its message (`RulesStage.recover`).
    locating = watching
    if not learning or not mailboxes:
        return watching + locating
    # Sent folder reads and reports (learning only) open a connection each, a few at a time for
    # the whole gateway, however many mailboxes or HTTP clients there are.
    sent_reads = SENT_READS_AT_ONCE if any(m.imap.sent_folder is not None for m in mailboxes) else 0
    return watching + locating + sent_reads + REPORT_SESSIONS_AT_ONCE


def raise_open_file_limit(config: Config) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard one, and warn when that cannot hold `config`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("open-file limit raised from %d to %d", soft, hard)
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    if soft == resource.RLIM_INFINITY:
        return
    mailboxes = config.mailboxes()
    imap = imap_connections_at_most(mailboxes, learning=config.pipeline is not None)
    max_connections = config.server.max_connections or default_max_connections()
    needed = imap + max_connections + RESERVED_FDS
    if needed > soft:
        log.warning(
            "the open-file limit (%d) is too low for up to %d IMAP connections (%d mailboxes),"
            " server.max_connections (%d) and %d for the store, logs and SMTP: %d needed;"
            " raise it (LimitNOFILE= in the unit, ulimit -n) or lower server.max_connections",
            soft,
            imap,
            len(mailboxes),
            max_connections,
            RESERVED_FDS,
            needed,
        )
