"""The open-file limit: raised at start to what the process may have, and checked against the config.

Every IMAP connection of a watched folder and every HTTP connection (each SSE client) holds a file
descriptor. The usual soft limit, 1024, is far below the hard one (systemd gives services
1024:524288), so `gatewayd run` raises the soft limit to the hard one, as most servers do, before
`server.max_connections` defaults to half of it. A limit that still cannot hold the configured
folders' connections, `server.max_connections` and a reserve for the store, the logs, SMTP and the
template child is logged as a warning: past it, watchers could not reconnect and the store could
not open a file.
"""

from __future__ import annotations

import logging
import resource

from gatewayd.api.connections import default_max_connections
from gatewayd.config import Config

log = logging.getLogger(__name__)

# Descriptors besides IMAP and HTTP: SQLite files and their journals, the lock, the listener, the
# logs, SMTP connections, the template child's pipes.
RESERVED_FDS = 64


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
    imap = sum(len(mailbox.imap.folders) for mailbox in mailboxes)
    max_connections = config.server.max_connections or default_max_connections()
    needed = imap + max_connections + RESERVED_FDS
    if needed > soft:
        log.warning(
            "the open-file limit (%d) is too low for %d IMAP connections (%d mailboxes),"
            " server.max_connections (%d) and %d for the store, logs and SMTP: %d needed;"
            " raise it (LimitNOFILE= in the unit, ulimit -n) or lower server.max_connections",
            soft,
            imap,
            len(mailboxes),
            max_connections,
            RESERVED_FDS,
            needed,
        )
