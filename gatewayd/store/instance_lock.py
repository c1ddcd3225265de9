"""One daemon per event store: an exclusive lock on a file beside the store while `gatewayd run` runs.

Two daemons on one store would watch the same mailboxes and could both act on a message (send an
auto-reply twice, say) before either had stored its event. `flock` belongs to the open file, and
the kernel drops it when the process ends, however it ends: a crash or kill -9 never leaves a
stale lock. The other commands (`token`, `learn`, `check-message`) work beside a running daemon
and do not take it.

The file also tells whether the store may have lost its last commits: from `acquire` until
`release` empties it, it holds the holder's pid and the kernel's boot id, synced to disk. Found
there at `acquire`, they mean the last run ended without `release`; under another boot id, the
machine went down meanwhile (an OS crash, a power loss, a reset) and SQLite's last commits may be
gone with the page cache, which a crash of gatewayd alone (kill -9) never loses. Then the event
log's tail may be lost (see `EventStore.skip_lost_seqs`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from gatewayd.store import StoreUnavailable, opening

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class StoreInUse(StoreUnavailable):
    """Another process holds the store's lock."""


class InstanceLock:
    def __init__(self, store_path: Path) -> None:
        self.store_path = store_path
        self.path = store_path.with_name(store_path.name + ".lock")
        self._fd: int | None = None
        # The previous holder ended without release() in an earlier boot (or one that cannot be
        # told), so the store's last commits may be lost: set by acquire().
        self.may_have_lost_commits = False

    def acquire(self) -> None:
        """Take the lock, or raise StoreInUse naming the process that has it (StoreUnavailable when
        the lock file cannot be made)."""
        with opening("event store", self.store_path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").partition("\n")[0].strip() or "?"
            os.close(fd)
            raise StoreInUse(
                f"another gatewayd (pid {holder}) is running with the event store {self.store_path};"
                " stop it first"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            boot = _boot_id()
            left = os.read(fd, 128).decode("ascii", "replace").split()
            self.may_have_lost_commits = bool(left) and (len(left) < 2 or not boot or left[1] != boot)
            # The holder's pid, for the message above and for people (the lock itself is the
            # flock), and the boot. Synced, with the directory entry of a new file: a power loss
            # must not lose the sign of an unclean stop while keeping events stored after it.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n{boot}\n".encode(), 0)
            os.fsync(fd)
            _sync_directory(self.path.parent)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Let go (the file stays: removing it would race with a daemon starting meanwhile), marking
        the stop clean. Call it only once the store is closed (its commits on disk)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _boot_id() -> str:
    """This boot's id ("" when it cannot be read: every unclean stop then counts as a reboot)."""
    try:
        return BOOT_ID.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
