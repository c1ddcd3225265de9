"""Starting and stopping the sandbox daemons (Dovecot, rspamd, spamd) the same way."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable


class SandboxUnavailable(RuntimeError):
    """A daemon is not installed (run scripts/setup) or would not start."""


def wait_ready(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    name: str,
    log_tail: Callable[[], str],
    timeout: float,
) -> None:
    """Poll `ready` until it holds; SandboxUnavailable (after stopping it) if the daemon dies or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SandboxUnavailable(f"{name} exited at start-up: {log_tail()}")
        if ready():
            return
        time.sleep(0.02)
    stop_group(process)
    raise SandboxUnavailable(f"{name} did not become ready in {timeout}s: {log_tail()}")


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then kill the whole process group: children (Dovecot's imap processes, rspamd's
    workers) outlive their master, and a real restart drops their connections too."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
