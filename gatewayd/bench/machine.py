"""The machine a run measures: the facts docs/benchmarks.md states, and the inotify limit."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from gatewayd import native

INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")


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


def machine() -> dict[str, Any]:
    """The facts docs/benchmarks.md states about the machine."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        # Which build: distributions' interpreters (Debian's is profile-guided and linked
        # statically) run this code ~10 % faster than a plain source build such as pyenv's.
        "interpreter": os.path.realpath(sys.executable),
        # The modules every message runs through, compiled or not: ~10 % either way (setup.py).
        "gatewayd_build": native.describe(),
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
