"""The watcher pool's shutdown steps, with failures injected that a real server cannot produce."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import parse_config
from gatewayd.imap.pool import WatcherPool


class _FailingWatcher:
    key = ("m1", "INBOX")

    async def drain(self) -> None:
        raise OSError("disk full")


class _DrainedWatcher:
    key = ("m2", "INBOX")
    drained = False

    async def drain(self) -> None:
        self.drained = True


async def test_drain_goes_on_when_a_watcher_cannot_store_what_it_holds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = parse_config({"store": {"path": str(tmp_path / "events.db")}, "agents": [{"id": "a"}]}, env={})
    pool = WatcherPool(config, None, None, lambda events: None)  # type: ignore[arg-type]
    drained = _DrainedWatcher()
    watchers: Any = {"m1": [_FailingWatcher()], "m2": [drained]}
    pool._watchers = watchers
    await pool.drain()  # shutdown must go on to closing, LOGOUT and closing the stores
    assert drained.drained
    assert "m1/INBOX: could not store what it held at shutdown: disk full" in caplog.text
