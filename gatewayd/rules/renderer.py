"""Filling in the rules' templates: a plain one in the daemon, one that computes in a child process.

The child (`gatewayd.rules.template_worker`) is started at the first template that computes and
kept for the next ones: a start costs a new interpreter and Jinja's import (~0.1 s of CPU), a
render through it a pipe round trip. It renders under an address space of RENDER_MEMORY and
RENDER_CPU_SECONDS of CPU per template (the kernel ends it past them); one that is not back
within RENDER_TIMEOUT, or whose caller gave up, is killed. Either way its action fails
(`template failed: ...`) and the next template gets a new child. Renders take turns: the
child holds one template at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gatewayd.rules.template import RENDER_CPU_SECONDS, RENDER_TIMEOUT, Template

# Run with -I (no environment variables, no user site): gatewayd from where this module was imported.
_WORKER = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r}); "
    "from gatewayd.rules.template_worker import main; main()"
)


class TemplateRenderer:
    def __init__(self) -> None:
        self._worker: asyncio.subprocess.Process | None = None
        self._turn = asyncio.Lock()

    async def render(self, template: Template, context: Mapping[str, Any]) -> str:
        """The text, or ValueError("template failed: ...")."""
        if template.plain:
            return template.render_here(context)
        request = json.dumps({"source": template.source, "context": context}, default=str) + "\n"
        async with self._turn:
            reply = await self._ask(request.encode())
        if "error" in reply:
            raise ValueError(str(reply["error"]))
        return str(reply["text"])

    async def _ask(self, request: bytes) -> dict[str, Any]:
        worker = self._worker
        if worker is None or worker.returncode is not None:
            worker = self._worker = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-c",
                _WORKER,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env={},
            )
        assert worker.stdin is not None and worker.stdout is not None
        try:
            worker.stdin.write(request)
            await worker.stdin.drain()
            line = await asyncio.wait_for(worker.stdout.readline(), RENDER_TIMEOUT)
        except TimeoutError:
            await self.close()
            raise ValueError(f"template failed: not done within {RENDER_TIMEOUT:g} s") from None
        except ConnectionError:
            line = b""  # it had died: its status says why
        except BaseException:
            # Cancelled mid-render: its reply would answer the next template.
            self._kill()
            raise
        if not line:
            self._worker = None
            raise ValueError(_ended(await worker.wait()))
        return dict(json.loads(line))

    def _kill(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None and worker.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.kill()

    async def close(self) -> None:
        """Stop the child, if one runs."""
        worker = self._worker
        self._kill()
        if worker is not None:
            await worker.wait()


def _ended(status: int) -> str:
    if status in (-signal.SIGXCPU, -signal.SIGKILL):
        return f"template failed: over {RENDER_CPU_SECONDS} s of CPU"
    if status == -signal.SIGSYS:  # a seccomp filter (systemd's SystemCallFilter)
        return "template failed: the renderer may not set its limits (setrlimit is filtered)"
    return f"template failed: the renderer ended with status {status}"
