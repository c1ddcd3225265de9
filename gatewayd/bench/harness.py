"""The benchmark bench: one sandbox Dovecot per run, and gatewayd as a real subprocess.

gatewayd runs as `python -m gatewayd run -c FILE`, exactly as deployed, so its memory is read
from /proc/PID/status alone and the clients' CPU (in this process or a swarm process) is never
billed to it. It is told a NOTIFY_SOCKET, so READY=1 is observed as systemd would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gatewayd.config import ServerConfig, hash_token
from gatewayd.sandbox.dovecot import PASSWORD, Dovecot, free_port

TOKEN = "bench-token-0123456789"
INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
# Dovecot's own default (the sandbox's 1 s is for tests). With inotify, new mail is noticed at
# once and this interval never matters; without inotify, IDLE would poll this slowly.
PRODUCTION_LIKE = """protocol imap {
  mailbox_idle_check_interval = 30 secs
}
"""
# gatewayd's CPU scheduling policy under test: `batch` is what systemd/gatewayd.service sets
# (CPUSchedulingPolicy=batch: no wake-up preemption of a co-located Dovecot), `other` the kernel's
# default, for a comparison.
CPU_POLICIES = {"batch": os.SCHED_BATCH, "other": os.SCHED_OTHER}


@dataclass
class Bench:
    """Everything a scenario needs: the Dovecot, a scratch directory, fresh user names."""

    root: Path
    dovecot: Dovecot
    quick: bool
    # --profile DIR: py-spy samples the measured phase of each scenario into this directory.
    profile_dir: Path | None = None
    cpu_policy: str = "batch"  # a key of CPU_POLICIES
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

    @contextlib.asynccontextmanager
    async def profile(self, name: str, pid: int) -> AsyncIterator[None]:
        """Sample process `pid` with py-spy while the block runs (only with --profile DIR)."""
        if self.profile_dir is None:
            yield
            return
        spy = py_spy()
        if spy is None:
            print("  note: --profile needs py-spy (pip install py-spy): not profiling", flush=True)
            yield
            return
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        out = self.profile_dir / f"{name}.folded"
        recorder = await asyncio.create_subprocess_exec(
            *(spy, "record", "-p", str(pid), "-o", str(out), "-f", "raw", "-r", "200", "--nonblocking"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(0.5)  # attached
        try:
            yield
        finally:
            if recorder.returncode is None:
                # py-spy writes its file on ^C; it has already gone if the profiled process exited.
                with contextlib.suppress(ProcessLookupError):
                    recorder.send_signal(signal.SIGINT)
            await asyncio.wait_for(recorder.wait(), 60)
            if recorder.returncode == 0 or out.exists():
                top = hot_spots(out)
                (self.profile_dir / f"{name}.top.txt").write_text(top + "\n", encoding="utf-8")
                print(f"  profile: {out}\n" + "\n".join("    " + line for line in top.splitlines()[:14]))

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


# Every scenario's gatewayd runs the README's example rules (its auto-reply as a flag: the
# benchmarks have no SMTP peer), one with a regular expression. The benchmark mail matches none
# of them, so the rules stage evaluates and plans for each message and acts on none.
RULES: list[dict[str, Any]] = [
    {"name": "newsletters", "if": {"list_id": True}, "then": [{"add_keywords": ["newsletter"]}]},
    {
        "name": "invoices",
        "if": {"from": "@billing.example.com", "has_attachments": True},
        "then": [
            {"move": {"folder": "Invoices", "create": True}},
            {"add_keywords": ["invoice"]},
            "mark_read",
        ],
        "stop": True,
    },
    {
        "name": "support",
        "if": {"all": [{"subject": {"regex": r"(?i)\b(support|help)\b"}}, {"not": {"from": "@example.com"}}]},
        "then": [{"add_flags": "\\Flagged"}],
    },
    {
        "name": "phishing",
        "if": {"any": [{"spam_verdict": "spam"}, {"auth": "fail"}, {"injection_score": {"over": 0.8}}]},
        "then": [{"move": "Junk"}, {"add_keywords": ["quarantined"]}],
    },
]


def gateway_config(
    bench: Bench,
    users: list[str],
    store: Path,
    port: int,
    watch: str = "always",
    grace: float = 1.0,
) -> dict[str, Any]:
    """One agent `bench` with a mailbox per user (mailbox id = user name), full default pipeline."""
    dovecot = bench.dovecot
    mailboxes = [
        {
            "id": user,
            "watch": watch,
            "imap": {
                "host": dovecot.host,
                "port": dovecot.imap_port,
                "tls": "none",
                "username": user,
                "password": PASSWORD,
                "folders": ["INBOX"],
            },
        }
        for user in users
    ]
    server: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "shutdown_grace_seconds": grace,
        "retry_ms": 1000,
    }
    if "max_streams_per_token" in {f.name for f in fields(ServerConfig)}:
        server["max_streams_per_token"] = None  # the benchmarks open thousands with one token
    return {
        "server": server,
        "store": {"path": str(store)},
        "logging": {"level": "warning"},
        "agents": [{"id": "bench", "token_sha256": [hash_token(TOKEN)], "mailboxes": mailboxes}],
        "rules": RULES,
    }


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
    ) -> GatewayProcess:
        workdir = bench.workdir("gateway")
        config = gateway_config(bench, users, store or workdir / "events.db", free_port(), watch, grace)
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


def ensure_inotify(sessions: int) -> str:
    """Make room for `sessions` idling Dovecot sessions: one inotify instance each, per uid.

    Past the limit Dovecot silently falls back to polling every mailbox_idle_check_interval.
    Beyond a few dozen sessions, 128 more are kept free for whatever else runs under that uid.
    Raised only when too low and only when we may (root); never fails.
    """
    needed = sessions + 128 if sessions > 64 else sessions
    try:
        current = int(INOTIFY_INSTANCES.read_text())
    except OSError as exc:
        return f"fs.inotify.max_user_instances unreadable ({exc}); pushes may fall back to polling"
    if current >= needed:
        return f"fs.inotify.max_user_instances = {current} (>= {needed} needed)"
    target = max(2048, needed)
    try:
        INOTIFY_INSTANCES.write_text(f"{target}\n")
    except OSError as exc:
        return (
            f"fs.inotify.max_user_instances = {current} < {needed} needed and could not be raised "
            f"({exc.strerror}): past {current} idling sessions Dovecot polls instead of pushing"
        )
    return f"fs.inotify.max_user_instances raised from {current} to {target} ({needed} needed)"


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


def machine() -> dict[str, Any]:
    """The facts docs/benchmarks.md states about the machine."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        # Which build: distributions' interpreters (Debian's is profile-guided and linked
        # statically) run this code ~10 % faster than a plain source build such as pyenv's.
        "interpreter": os.path.realpath(sys.executable),
        "kernel": platform.release(),
        "loadavg": os.getloadavg(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        version = subprocess.run(
            ["/usr/sbin/dovecot", "--version"], capture_output=True, text=True, timeout=10
        )
        info["dovecot"] = version.stdout.strip()
    with contextlib.suppress(OSError, ValueError):
        info["inotify_max_user_instances"] = int(INOTIFY_INSTANCES.read_text())
    return info


def py_spy() -> str | None:
    """The py-spy executable, on the PATH or beside this interpreter; None when not installed."""
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


# Leaf frames of threads waiting for work, which py-spy samples as if they ran.
IDLE_LEAVES = (
    "EpollSelector.select (",
    "_worker (concurrent/futures/thread.py:81)",
    "_connection_worker_thread (aiosqlite/core.py:59)",
)


def hot_spots(folded: Path, limit: int = 20) -> str:
    """Own-time and inclusive-time leaders of a py-spy `raw` (folded stacks) profile, idle excluded."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = idle = 0
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")  # "function (path/file.py:line)"
        if frames[-1].startswith(IDLE_LEAVES):
            idle += count
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for function in {frame.rsplit(":", 1)[0] + ")" for frame in frames}:
            inclusive[function] = inclusive.get(function, 0) + count
    if not total:
        return "no samples"

    def top(counts: dict[str, int], keep: tuple[str, ...] = ("",)) -> list[str]:
        ranked = sorted(((n, f) for f, n in counts.items() if any(k in f for k in keep)), reverse=True)
        return [f"{100 * n / total:5.1f}%  {frame}" for n, frame in ranked[:limit]]

    own_lines = top(own)
    included = top(inclusive, ("(gatewayd/", "(aiohttp/", "(aiosqlite/", "(aioimaplib/", "(json/"))
    head = f"{total} busy samples ({idle} idle ones left out); own time:"
    return "\n".join([head, *own_lines, "inclusive time:", *included])
