"""One daemon per event store: an exclusive lock on a file beside the store while `gatewayd run` runs.

Two daemons on one store would watch the same mailboxes and could both act on a message (send an
auto-reply twice, say) before either had stored its event. `flock` belongs to the open file, and
the kernel drops it when the process ends, however it ends: a crash or kill -9 never leaves a
stale lock. The other commands (`token`, `learn`, `check-message`) work beside a running daemon
and do not take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from gatewayd.store import StoreUnavailable, opening


class StoreInUse(StoreUnavailable):
    """Another process holds the store's lock."""


class InstanceLock:
    def __init__(self, store_path: Path) -> None:
        self.store_path = store_path
        self.path = store_path.with_name(store_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise StoreInUse naming the process that has it (StoreUnavailable when
        the lock file cannot be made)."""
        with opening("event store", self.store_path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise StoreInUse(
                f"another gatewayd (pid {holder}) is running with the event store {self.store_path};"
                " stop it first"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The holder's pid, for the message above and for people; the lock itself is the flock.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Let go (the file stays: removing it would race with a daemon starting meanwhile)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)
