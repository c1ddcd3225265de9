"""The real `gatewayd run -c FILE` as a subprocess, for tests of start-up, shutdown and crashes.

`write_config` writes a YAML file like `tests.conftest.gateway_config` builds; `GatewayProcess`
starts gatewayd on it (again and again, on the same file and store), waits for /healthz, sends
signals, and keeps every run's stdout and stderr in files next to the config.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gatewayd.config import hash_token
from gatewayd.sandbox.dovecot import Dovecot
from tests.conftest import OTHER_TOKEN, TOKEN

REPO_ROOT = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def config_data(
    tmp_path: Path,
    dovecot: Dovecot,
    users: list[str],
    port: int,
    password: str = "secret",
    log_level: str = "info",
) -> dict[str, Any]:
    """One agent `support` with an `always` mailbox per user, and an agent `other` with none."""
    mailboxes = [
        {
            "id": f"{name}-inbox",
            "watch": "always",
            "imap": {
                "host": dovecot.host,
                "port": dovecot.imap_port,
                "tls": "none",
                "username": name,
                "password": password,
                "folders": ["INBOX"],
                "read_timeout_seconds": 5,
                "connect_timeout_seconds": 5,
            },
        }
        for name in users
    ]
    return {
        "server": {"listen": f"127.0.0.1:{port}", "shutdown_grace_seconds": 1, "retry_ms": 500},
        "store": {"path": str(tmp_path / "events.db")},
        "logging": {"level": log_level},
        "agents": [
            {"id": "support", "token_sha256": [hash_token(TOKEN)], "mailboxes": mailboxes},
            {"id": "other", "token_sha256": [hash_token(OTHER_TOKEN)], "mailboxes": []},
        ],
    }


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def gatewayd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gatewayd", *args]


def child_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a short-lived gatewayd command to completion."""
    return subprocess.run(
        gatewayd_command(*args),
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class GatewayProcess:
    """`gatewayd run -c config` on a fixed port; start() may be called again after it exits."""

    def __init__(self, config_path: Path, port: int) -> None:
        self.config_path = config_path
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self._logs: list[tuple[Path, Path]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, env: dict[str, str] | None = None) -> None:
        """`env`: extra environment variables for this run only (e.g. failure injection)."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.runs += 1
        out = self.config_path.with_name(f"gatewayd-run{self.runs}.stdout")
        err = self.config_path.with_name(f"gatewayd-run{self.runs}.stderr")
        self._logs.append((out, err))
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self.process = subprocess.Popen(
                gatewayd_command("run", "-c", str(self.config_path)),
                cwd=REPO_ROOT,
                env={**child_env(), **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # a ^C in the terminal reaches pytest only
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    async def wait_exit(self, timeout: float = 20.0) -> int:
        """The exit status (negative: killed by that signal); AssertionError when still running."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while (code := self.process.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"gatewayd still running {timeout}s after the signal\n{self.output()}")
            await asyncio.sleep(0.02)
        return code

    def stdout(self) -> str:
        return "".join(out.read_text(errors="replace") for out, _ in self._logs if out.exists())

    def stderr(self) -> str:
        return "".join(err.read_text(errors="replace") for _, err in self._logs if err.exists())

    def output(self) -> str:
        """stdout and stderr of every run so far."""
        return self.stdout() + self.stderr()

    async def health(self, session: aiohttp.ClientSession, token: str | None = None) -> dict[str, Any] | None:
        """The /healthz body, or None while nothing answers on the port. With `token`, the details
        of that token's watchers too (`last_uid`, `reconnects`, `last_error`, ...)."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        timeout = aiohttp.ClientTimeout(total=5)
        try:
            async with session.get(f"{self.url}/healthz", headers=headers, timeout=timeout) as response:
                return dict(await response.json())
        except (aiohttp.ClientConnectionError, TimeoutError):
            return None

    async def wait_health(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 20.0,
        what: str = "healthz condition",
        token: str | None = None,
    ) -> dict[str, Any]:
        """Poll /healthz (with `token`, as health() does) until `predicate(body)`; fail at once if
        gatewayd exits."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if not self.running:
                    code = self.process.poll() if self.process else None
                    raise AssertionError(f"gatewayd exited ({code}) before {what}\n{self.output()}")
                body = await self.health(session, token)
                if body is not None and predicate(body):
                    return body
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out waiting for {what}; last healthz: {body}")
                await asyncio.sleep(0.05)

    async def wait_idle(self, timeout: float = 20.0, token: str | None = None) -> dict[str, Any]:
        """Until every watcher reports state "idle" (its first sync is done); `token` as for health()."""

        def idle(body: dict[str, Any]) -> bool:
            watchers = body.get("watchers") or []
            return bool(watchers) and all(w.get("state") == "idle" for w in watchers)

        return await self.wait_health(idle, timeout, "every watcher idle", token)

    def stop_now(self) -> None:
        """Teardown: SIGKILL whatever still runs and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
