"""What /healthz reports about one watcher (`WatcherPool.health`)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

PUSH_SAMPLES = 200


@dataclass(slots=True)
class WatcherState:
    """Kept by the watcher (connection, state) and its folder's sync (`last_uid`, timings)."""

    state: str = "starting"  # starting | connected | idle | polling | backoff | stopped
    since: str = ""
    last_error: str | None = None
    uidvalidity: int | None = None
    last_uid: int | None = None
    reconnects: int = 0
    # True while the folder is watched over its account's shared NOTIFY connection.
    notify: bool = False
    # ms from a push reaching the watcher to each event it brought being published (the last
    # PUSH_SAMPLES): gatewayd's own share of a message's latency, whatever the server's delay.
    push_to_event_ms: deque[float] = field(default_factory=lambda: deque(maxlen=PUSH_SAMPLES))
