"""The bench a scenario runs on: one sandbox Dovecot per run, a scratch directory, fresh names;
and the polling and pacing helpers the scenarios share.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gatewayd.bench import profiling
from gatewayd.sandbox.dovecot import Dovecot

# Dovecot's own default (the sandbox's 1 s is for tests). With inotify, new mail is noticed at
# once and this interval never matters; without inotify, IDLE would poll this slowly.
PRODUCTION_LIKE = """protocol imap {
  mailbox_idle_check_interval = 30 secs
}
"""


@dataclass
class Bench:
    """Everything a scenario needs: the Dovecot, a scratch directory, fresh user names."""

    root: Path
    dovecot: Dovecot
    quick: bool
    # --profile DIR: py-spy samples the measured phase of each scenario into this directory.
    profile_dir: Path | None = None
    cpu_policy: str = "batch"  # a key of gateway.CPU_POLICIES
    _users: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _owns_root: bool = False

    @classmethod
    def open(
        cls,
        quick: bool,
        root: Path | None = None,
        profile_dir: Path | None = None,
        cpu_policy: str = "batch",
    ) -> Bench:
        owns = root is None
        root = Path(tempfile.mkdtemp(prefix="gatewayd-bench-")) if root is None else root
        try:
            dovecot = Dovecot.create(root / "dovecot", extra_config=PRODUCTION_LIKE)
            dovecot.start()
        except BaseException:
            if owns:  # a Dovecot that did not start leaves no scratch directory behind
                shutil.rmtree(root, ignore_errors=True)
            raise
        return cls(
            root=root,
            dovecot=dovecot,
            quick=quick,
            profile_dir=profile_dir,
            cpu_policy=cpu_policy,
            _owns_root=owns,
        )

    def profile(self, name: str, pid: int) -> contextlib.AbstractAsyncContextManager[None]:
        """Sample process `pid` with py-spy while the block runs (only with --profile DIR)."""
        return profiling.record(self.profile_dir, name, pid)

    def close(self) -> None:
        self.dovecot.destroy()
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def users(self, prefix: str, count: int) -> list[str]:
        run = next(self._users)
        return [f"{prefix}{run}-{i:04d}" for i in range(count)]

    def workdir(self, name: str) -> Path:
        path = self.root / f"{name}-{next(self._users)}"
        path.mkdir(parents=True)
        return path

    def dovecot_warnings(self, needle: str = "notify") -> list[str]:
        log = self.dovecot.root / "dovecot.log"
        if not log.exists():
            return []
        return [
            line for line in log.read_text(errors="replace").splitlines() if needle.lower() in line.lower()
        ]


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll until `predicate()`; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.005)


async def sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
