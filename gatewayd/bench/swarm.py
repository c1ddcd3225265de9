"""Many SSE subscribers in a process of their own, so their cost never lands on the gateway's.

Run as `python -c "from gatewayd.bench.swarm import main; main()"` (`Swarm.start` does it). The
first line on stdin is the spec, JSON: host, port, token, paths (one per connection), and
optionally close_on_closing, concurrency. It connects every path, prints one
JSON line `{"ready": n, "failed": n, "connect_s": s, "errors": [...]}`, then answers commands
read from stdin, one per line, each with one JSON line:

- `count`: how many event frames arrived so far, over all connections (parsing what arrived
  since the last command: ask only once the measured events are all sent);
- `dump`: per event id, its type, data size, created_at and subject, and every arrival time
  (`time.monotonic()`, one clock for every process); also when each `closing` event arrived
  and how many connections were lost;
- `close`: close every connection and exit.

`Swarm` is the driving side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from gatewayd.bench.sse_client import SseConnection, open_sse


@dataclass
class _Recorder:
    """The sink of every connection: arrival times per event id, parsed once per id."""

    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    closing: list[float] = field(default_factory=list)
    frames: int = 0

    def on_event(self, index: int, event_id: str, event_type: str, data: bytes, at: float) -> None:
        self.frames += 1
        entry = self.events.get(event_id)
        if entry is None:
            meta: dict[str, Any] = {"type": event_type, "size": len(data)}
            with contextlib.suppress(ValueError):
                envelope = json.loads(data)
                body = envelope.get("data") or {}
                body = body if isinstance(body, dict) else {}
                timings = body.get("pipeline_ms")
                meta.update(
                    created_at=envelope.get("created_at"),
                    mailbox_id=envelope.get("mailbox_id"),
                    subject=body.get("subject"),
                    pipeline_ms=sum(timings.values()) if isinstance(timings, dict) else 0.0,
                )
            entry = self.events[event_id] = {"meta": meta, "times": []}
        entry["times"].append(at)

    def on_closing(self, index: int, at: float) -> None:
        self.closing.append(at)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    spec = json.loads(await reader.readline())
    recorder = _Recorder()
    gate = asyncio.Semaphore(int(spec.get("concurrency", 100)))
    conns: list[SseConnection] = []
    errors: list[str] = []

    async def connect(index: int, path: str) -> None:
        async with gate:
            try:
                conns.append(
                    await open_sse(
                        spec["host"],
                        spec["port"],
                        path,
                        spec["token"],
                        index=index,
                        sink=recorder,
                        close_on_closing=bool(spec.get("close_on_closing")),
                        # Read now, parse when asked: except when `closing` must be seen at once.
                        defer=not spec.get("close_on_closing"),
                    )
                )
            except (OSError, TimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    started = time.monotonic()
    await asyncio.gather(*(connect(i, path) for i, path in enumerate(spec["paths"])))
    _say(
        {
            "ready": len(conns),
            "failed": len(errors),
            "connect_s": time.monotonic() - started,
            "errors": sorted(set(errors))[:5],
        }
    )
    while command := (await reader.readline()).decode().strip():
        for conn in conns:
            conn.flush()
        if command == "count":
            _say({"frames": recorder.frames, "lost": sum(c.lost.done() for c in conns)})
        elif command == "dump":
            lost = sum(c.lost.done() for c in conns)
            _say({"events": recorder.events, "closing": recorder.closing, "lost": lost})
        elif command == "close":
            break
    for conn in conns:
        conn.close()
    await asyncio.gather(*(conn.lost for conn in conns))
    _say({"closed": len(conns)})


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main() -> None:
    _raise_fd_limit()
    asyncio.run(_serve())


class SwarmError(RuntimeError):
    pass


class Swarm:
    """Drives a swarm process: `start`, then `count`/`dump`, then `close`."""

    def __init__(self, process: asyncio.subprocess.Process, ready: dict[str, Any]) -> None:
        self._process = process
        self.ready = ready

    @classmethod
    async def start(
        cls,
        host: str,
        port: int,
        token: str,
        paths: list[str],
        close_on_closing: bool = False,
        concurrency: int = 100,
        timeout: float = 300.0,
    ) -> Swarm:
        spec = {
            "host": host,
            "port": port,
            "token": token,
            "paths": paths,
            "close_on_closing": close_on_closing,
            "concurrency": concurrency,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from gatewayd.bench.swarm import main; main()",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 30,  # a dump is one (long) line
        )
        swarm = cls(process, {})
        try:
            assert process.stdin is not None
            process.stdin.write(json.dumps(spec).encode() + b"\n")
            await process.stdin.drain()
            swarm.ready = await swarm._read(timeout)
        except BaseException:
            await swarm.kill()
            raise
        return swarm

    def require_all_connected(self) -> None:
        """RuntimeError when any subscriber could not connect: a partial swarm measures nothing."""
        if self.ready["failed"]:
            raise RuntimeError(
                f"{self.ready['failed']} subscribers could not connect: {self.ready['errors']}"
            )

    async def _read(self, timeout: float) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), timeout)
        if not line:
            raise SwarmError(f"the subscriber swarm exited ({await self._process.wait()})")
        return dict(json.loads(line))

    async def ask(self, command: str, timeout: float = 60.0) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(command.encode() + b"\n")
        await self._process.stdin.drain()
        return await self._read(timeout)

    async def close(self, timeout: float = 60.0) -> None:
        if self._process.returncode is None:
            with contextlib.suppress(ConnectionError, TimeoutError, SwarmError):
                await self.ask("close", timeout)
        await self.kill()

    async def kill(self) -> None:
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        await self._process.wait()


if __name__ == "__main__":
    main()
