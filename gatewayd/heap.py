"""The cyclic garbage collector's settings for a long-running daemon.

Python's collector runs a young collection each time 700 more containers were allocated than
freed. Checking a message allocates and frees thousands (its parse, its token lists and dicts),
so collections fire in the middle of a message and traverse its young containers; and each full
collection traverses everything alive: the configuration, the compiled patterns, the learning
store's counts and caches. In the throughput benchmark that was ~20 µs per message: a young
collection every ~40 messages, ~0.3 ms each, and a full one every ~3,000, ~60 ms on the event
loop (a pause in the middle of a busy mailbox's window). With the settings below: ~3 µs, no
full collection, and settling takes those ~60 ms once, before READY.

- What is alive once the daemon is up lives until it exits: `gc.freeze()` moves it out of the
  collector's generations, so no collection traverses it again.
- A young collection only after YOUNG_THRESHOLD net allocations: a message's containers are
  mostly freed by their reference counts before one runs.

Only garbage in reference cycles waits longer (asyncio's exceptions with their tracebacks, for
instance): everything else is freed by its reference count, as before.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Freeze the long-lived heap and make young collections rarer: call once the daemon is up,
    and again after a reload replaced long-lived objects (any cycles among those freed then)."""
    gc.unfreeze()  # what was frozen before is examined once more, with what replaced it
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
