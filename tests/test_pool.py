"""The watcher pool's shutdown steps, with failures injected that a real server cannot produce."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import parse_config
from gatewayd.imap.pool import WatcherPool
from gatewayd.imap.sent import SentLearner
from gatewayd.imap.watch import FolderWatcher


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


async def test_a_mailbox_restarted_while_it_stops_keeps_its_new_sent_learner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Failure injection: a watcher whose LOGOUT takes a while, and a subscriber back meanwhile.
    async def slow_to_stop(self: FolderWatcher, session: Any = None) -> None:
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            await asyncio.shield(asyncio.sleep(0.2))

    closed: list[SentLearner] = []

    async def close(self: SentLearner) -> None:
        closed.append(self)

    monkeypatch.setattr(FolderWatcher, "run", slow_to_stop)
    monkeypatch.setattr(SentLearner, "close", close)
    imap = {"host": "127.0.0.1", "port": 1, "tls": "none", "username": "u", "password": "p"}
    mailbox = {"id": "m1", "watch": "on_demand", "on_demand_linger_seconds": 0.01, "imap": imap}
    data = {"store": {"path": str(tmp_path / "events.db")}, "agents": [{"id": "a", "mailboxes": [mailbox]}]}
    pool = WatcherPool(parse_config(data, env={}), None, None, lambda events: None, sent_log=object())  # type: ignore[arg-type]
    pool.acquire(["m1"])
    first = pool._learners["m1"]
    pool.release(["m1"])
    await asyncio.sleep(0.1)  # the linger is over: the stop waits for the watcher's LOGOUT
    pool.acquire(["m1"])  # back meanwhile: a new watcher and learner
    second = pool._learners["m1"]
    assert second is not first
    await asyncio.sleep(0.3)  # the old stop is done
    assert closed == [first] and pool._learners["m1"] is second
    await pool.close()
    assert closed == [first, second]
