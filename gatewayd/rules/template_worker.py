"""The child process that renders a template that computes (see gatewayd.rules.template).

It reads `{"source", "context"}` as JSON on stdin and writes `{"text"}` or `{"error"}` on stdout,
under limits set before it reads: an address space of `RENDER_MEMORY` (a template that builds a
huge string gets a MemoryError) and `RENDER_CPU_SECONDS` of CPU (past them the kernel ends it).
"""

from __future__ import annotations

import json
import resource
import sys

from gatewayd.rules.template import RENDER_CPU_SECONDS, RENDER_MEMORY, Template


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (RENDER_MEMORY, RENDER_MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (RENDER_CPU_SECONDS, RENDER_CPU_SECONDS + 1))
    request = json.loads(sys.stdin.buffer.read())
    try:
        reply = {"text": Template(request["source"]).render_here(request["context"])}
    except ValueError as exc:
        reply = {"error": str(exc)}
    sys.stdout.write(json.dumps(reply))
