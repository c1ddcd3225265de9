"""Starting and stopping the sandbox daemons (Dovecot, rspamd, spamd) the same way."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


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


@dataclass
class LoopbackDaemon:
    """A private daemon on a loopback port, its state in `root`: launch(), wait_ready(), then
    destroy(). Subclasses give the command (launch), the readiness probe and the log tail."""

    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    _owns_root: bool = False

    host = "127.0.0.1"
    name = "daemon"

    def start(self, timeout: float = 60.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting: callers may start other daemons meanwhile."""
        raise NotImplementedError

    def _popen(self, command: list[str], log_name: str) -> None:
        log = (self.root / log_name).open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.process is not None, "launch() first"
        wait_ready(self.process, self._pong, self.name, self.log_tail, timeout)

    def _pong(self) -> bool:
        raise NotImplementedError

    def log_tail(self, lines: int = 20) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None

    def destroy(self) -> None:
        self.stop()
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)
