"""The child process that renders the templates that compute (see gatewayd.rules.renderer).

It reads one `{"source", "context"}` JSON line at a time on stdin and answers each with a
`{"text"}` or `{"error"}` line on stdout, under an address space of `RENDER_MEMORY` (a template
that builds a huge string gets a MemoryError) and, per template, `RENDER_CPU_SECONDS` of CPU
(past them the kernel ends it). It exits when stdin closes, as it does with the daemon.

SIGTERM and SIGINT are the daemon's: systemd's stop sends SIGTERM to every process of the unit,
and a terminal's Ctrl-C sends SIGINT to the whole process group. The child ignores them, so a
template rendered during the daemon's shutdown still renders; the daemon ends it (closing its
stdin, or SIGKILL) when it is done with it.
"""

from __future__ import annotations

import functools
import json
import math
import resource
import signal
import sys

from gatewayd.rules.template import RENDER_CPU_SECONDS, RENDER_MEMORY, Template

_compiled = functools.lru_cache(maxsize=64)(Template)  # the same few templates, again and again


def main() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_AS, (RENDER_MEMORY, RENDER_MEMORY))
    for line in sys.stdin.buffer:
        request = json.loads(line)
        # RLIMIT_CPU counts the whole life of the process: each template gets its seconds from now.
        usage = resource.getrusage(resource.RUSAGE_SELF)
        spent = math.ceil(usage.ru_utime + usage.ru_stime)
        resource.setrlimit(resource.RLIMIT_CPU, (spent + RENDER_CPU_SECONDS, resource.RLIM_INFINITY))
        try:
            reply = {"text": _compiled(request["source"]).render_here(request["context"])}
        except ValueError as exc:
            reply = {"error": str(exc)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
