"""`gatewayd run` and `gatewayd demo` under a low open-file limit: the soft limit raised to the hard
one, and a warning when even that cannot hold the configured mailboxes and `server.max_connections`."""

from __future__ import annotations

import re
import resource
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import REPO_ROOT, child_env, gatewayd_command, write_config


def config(tmp_path: Path, mailboxes: int, **server: Any) -> Path:
    """On-demand mailboxes: counted for the limit, but nothing connects until a client asks."""
    boxes = [
        {
            "id": f"box{n}",
            "watch": "on_demand",
            "imap": {"host": "127.0.0.1", "port": 1, "tls": "none", "username": f"u{n}", "password": "p"},
        }
        for n in range(mailboxes)
    ]
    data = {
        "server": {"listen": "127.0.0.1:0", **server},
        "store": {"path": str(tmp_path / "events.db")},
        "agents": [{"id": "support", "token_sha256": ["0" * 64], "mailboxes": boxes}],
    }
    return write_config(tmp_path / "gatewayd.yaml", data)


@pytest.fixture
def run_with_limit(tmp_path: Path) -> Iterator[Any]:
    """Start `gatewayd ARGS` with RLIMIT_NOFILE (soft, hard) set before it execs; returns the
    process and its output file (stdout and stderr) once it listens."""
    started: list[subprocess.Popen[bytes]] = []

    def run(args: list[str], soft: int, hard: int) -> tuple[subprocess.Popen[bytes], Path]:
        err = tmp_path / "gatewayd.out"
        with err.open("wb") as output:
            process = subprocess.Popen(
                gatewayd_command(*args),
                cwd=REPO_ROOT,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
                start_new_session=True,
            )
        started.append(process)
        deadline = time.monotonic() + 30
        while "listening on" not in err.read_text(errors="replace"):
            assert process.poll() is None, f"gatewayd exited\n{err.read_text(errors='replace')}"
            assert time.monotonic() < deadline, f"gatewayd never listened\n{err.read_text(errors='replace')}"
            time.sleep(0.05)
        return process, err

    yield run
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0


def open_files_limit(pid: int) -> tuple[int, int]:
    limits = Path(f"/proc/{pid}/limits").read_text()
    found = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.MULTILINE)
    assert found is not None, limits
    return int(found.group(1)), int(found.group(2))


def test_the_soft_open_file_limit_is_raised_to_the_hard_one(tmp_path: Path, run_with_limit: Any) -> None:
    """gatewayd kept the usual soft limit of 1024 under a hard one of 524288: each watched folder
    and each SSE client is a descriptor, and server.max_connections defaulted to 512."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard > 512, "this test needs a hard open-file limit above 512"
    process, err = run_with_limit(["run", "-c", str(config(tmp_path, 2))], 256, hard)
    assert open_files_limit(process.pid) == (hard, hard)
    log = err.read_text()
    assert f"open-file limit raised from 256 to {hard}" in log
    assert f"(at most {hard // 2} connections)" in log and "too low" not in log


def test_a_limit_that_cannot_hold_the_mailboxes_and_connections_is_a_warning(
    tmp_path: Path, run_with_limit: Any
) -> None:
    """Each folder's watching connection, a second one while a rule locates moved mail (80), and
    a few Sent folder reads and reports (4 each): 88 IMAP connections, where 40 were counted."""
    process, err = run_with_limit(["run", "-c", str(config(tmp_path, 40, max_connections=100))], 240, 240)
    assert open_files_limit(process.pid) == (240, 240)
    log = err.read_text()
    assert (
        "the open-file limit (240) is too low for up to 88 IMAP connections (40 mailboxes),"
        " server.max_connections (100) and 64 for the store, logs and SMTP: 252 needed" in log
    ), log
    assert "raise it (LimitNOFILE= in the unit, ulimit -n) or lower server.max_connections" in log


def test_the_demo_raises_the_soft_open_file_limit_too(run_with_limit: Any) -> None:
    """`gatewayd demo` kept the soft limit it was started with, unlike `gatewayd run`."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard > 256, "this test needs a hard open-file limit above 256"
    process, err = run_with_limit(["demo", "--port", "0", "--interval", "0.2"], 256, hard)
    assert open_files_limit(process.pid) == (hard, hard), err.read_text()
