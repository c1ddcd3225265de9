"""gatewayd under test: a real `gatewayd run` subprocess, timed from spawn to READY=1 and exit.

gatewayd runs as `python -m gatewayd run -c FILE`, exactly as deployed, so its memory is read
from /proc/PID/status alone and the clients' CPU (in this process or a swarm process) is never
billed to it. It is told a NOTIFY_SOCKET, so READY=1 is observed as systemd would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gatewayd.bench.gateway_config import TOKEN, gateway_config
from gatewayd.bench.harness import Bench
from gatewayd.sandbox.dovecot import free_port

# gatewayd's CPU scheduling policy under test: `batch` is what systemd/gatewayd.service sets
# (CPUSchedulingPolicy=batch: no wake-up preemption of a co-located Dovecot), `other` the kernel's
# default, for a comparison.
CPU_POLICIES = {"batch": os.SCHED_BATCH, "other": os.SCHED_OTHER}


class GatewayError(RuntimeError):
    pass


class GatewayProcess:
    """`gatewayd run -c FILE` with a NOTIFY_SOCKET; times start-up and shutdown."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.config_path = workdir / "gatewayd.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        self.port = int(config["server"]["listen"].rsplit(":", 1)[1])
        self.process: subprocess.Popen[bytes] | None = None
        self.t_spawn = 0.0
        self.t_sigterm = 0.0
        self.ready_s = 0.0  # spawn -> READY=1
        self._notify: socket.socket | None = None

    @classmethod
    async def start(
        cls,
        bench: Bench,
        users: list[str],
        watch: str = "always",
        store: Path | None = None,
        grace: float = 1.0,
        ready_timeout: float = 60.0,
        rules: list[dict[str, Any]] | None = None,
    ) -> GatewayProcess:
        """`rules`: the configuration's (None: gateway_config.RULES)."""
        workdir = bench.workdir("gateway")
        config = gateway_config(
            bench, users, store or workdir / "events.db", free_port(), watch, grace, rules
        )
        gateway = cls(workdir, config)
        gateway.spawn(CPU_POLICIES[bench.cpu_policy])
        try:
            gateway.ready_s = await gateway.wait_ready(ready_timeout)
        except BaseException:
            gateway.kill()
            raise
        return gateway

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def spawn(self, cpu_policy: int = os.SCHED_OTHER) -> None:
        """Start gatewayd under `cpu_policy`: the child inherits the spawning thread's policy, set
        around the fork (no window in which gatewayd runs, or starts a thread, under another)."""
        notify_path = self.workdir / "notify.sock"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        self._notify.setblocking(False)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "PYTHONUNBUFFERED": "1"}
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
        with (self.workdir / "stdout").open("ab") as out, (self.workdir / "stderr").open("ab") as err:
            self.t_spawn = time.monotonic()
            os.sched_setscheduler(0, cpu_policy, os.sched_param(0))
            try:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "gatewayd", "run", "-c", str(self.config_path)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            finally:
                os.sched_setscheduler(0, policy, param)

    def log_tail(self, lines: int = 15) -> str:
        text = (self.workdir / "stderr").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = self.process.returncode if self.process else None
            tail = self.log_tail()
            last = tail.splitlines()[-1] if tail else "no output"
            raise GatewayError(f"gatewayd exited ({code}): {last}\n{tail}")

    async def wait_ready(self, timeout: float) -> float:
        """Seconds from spawn to READY=1 on the notify socket."""
        assert self._notify is not None
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if time.monotonic() > deadline:
                raise GatewayError(f"no READY=1 within {timeout}s:\n{self.log_tail()}")
            try:
                message = await asyncio.wait_for(loop.sock_recv(self._notify, 4096), 0.05)
            except TimeoutError:
                continue
            if b"READY=1" in message:
                return time.monotonic() - self.t_spawn

    async def health(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        try:
            timeout = aiohttp.ClientTimeout(total=10)
            # With the token: the watchers' details (push_to_event_ms) are for their agent's eyes.
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with session.get(f"{self.url}/healthz", headers=headers, timeout=timeout) as response:
                return dict(await response.json())
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def wait_watchers(self, count: int, state: str = "idle", timeout: float = 120.0) -> float:
        """Poll /healthz until `count` watchers are in `state`; returns the monotonic time seen.

        Every 50 ms, or 250 ms past 50 watchers: /healthz lists them all, and polling it must
        not become the gateway's main work.
        """
        interval = 0.05 if count <= 50 else 0.25
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        async with aiohttp.ClientSession() as session:
            while True:
                self._check_alive()
                body = await self.health(session)
                if body is not None:
                    last = body
                    states = [w.get("state") for w in body.get("watchers", [])]
                    if sum(s == state for s in states) >= count:
                        return time.monotonic()
                if time.monotonic() > deadline:
                    summary = _states(last)
                    raise GatewayError(f"{count} watchers not {state} within {timeout}s: {summary}")
                await asyncio.sleep(interval)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    async def terminate(self, timeout: float = 60.0) -> float:
        """SIGTERM; seconds until the process has exited (it must exit 0)."""
        assert self.process is not None
        process = self.process
        sent = self.t_sigterm = time.monotonic()
        process.send_signal(signal.SIGTERM)

        def wait() -> float:
            process.wait(timeout)
            return time.monotonic()

        exited = await asyncio.to_thread(wait)
        if process.returncode != 0:
            raise GatewayError(f"gatewayd exited {process.returncode} after SIGTERM:\n{self.log_tail()}")
        self.close()
        return exited - sent

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.close()

    def close(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None


def _states(body: dict[str, Any] | None) -> str:
    if body is None:
        return "no /healthz answer"
    counts: dict[str, int] = {}
    errors = set()
    for watcher in body.get("watchers", []):
        counts[str(watcher.get("state"))] = counts.get(str(watcher.get("state")), 0) + 1
        if watcher.get("last_error"):
            errors.add(str(watcher["last_error"]))
    return f"{counts}; errors: {sorted(errors)[:3]}"


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise GatewayError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, all its threads, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
