"""`--profile DIR`: py-spy samples a process while a measured phase runs, then its hot spots."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path


@contextlib.asynccontextmanager
async def record(profile_dir: Path | None, name: str, pid: int) -> AsyncIterator[None]:
    """Sample process `pid` with py-spy while the block runs (only with a `profile_dir`)."""
    if profile_dir is None:
        yield
        return
    spy = py_spy()
    if spy is None:
        print("  note: --profile needs py-spy (pip install py-spy): not profiling", flush=True)
        yield
        return
    profile_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before the phase it samples
    out = profile_dir / f"{name}.folded"
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
            (profile_dir / f"{name}.top.txt").write_text(top + "\n", encoding="utf-8")
            print(f"  profile: {out}\n" + "\n".join("    " + line for line in top.splitlines()[:14]))


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
