"""The daemon as a service: systemd readiness, background retention, and the newcomer's demo."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from gatewayd.events import NewEvent
from gatewayd.sandbox.dovecot import Dovecot, free_port
from tests.conftest import gateway_config
from tests.daemon import (
    AUTH,
    REPO_ROOT,
    GatewayProcess,
    child_env,
    config_data,
    gatewayd_command,
    write_config,
)
from tests.waiting import wait_for


@contextlib.contextmanager
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    """Where a child sends its sd_notify states, as systemd's NOTIFY_SOCKET (and its path)."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(path))
        notify.settimeout(20)
        yield notify, path


async def test_ready_is_notified_to_systemd_once_listening(
    dovecot: Dovecot, user: str, tmp_path: Path
) -> None:
    with notify_socket(tmp_path) as (notify, notify_path):
        port = free_port()
        config = write_config(tmp_path / "gatewayd.yaml", config_data(tmp_path, dovecot, [user], port))
        env = {**child_env(), "NOTIFY_SOCKET": str(notify_path)}
        process = subprocess.Popen(  # noqa: ASYNC220 - started once; every wait is off the loop
            gatewayd_command("run", "-c", str(config)), env=env, cwd=REPO_ROOT
        )
        try:
            ready = await asyncio.to_thread(notify.recv, 1024)
            assert ready.startswith(b"READY=1")
            # READY means the listener is bound: the very next request is answered.
            async with aiohttp.ClientSession() as session:
                response = await session.get(f"http://127.0.0.1:{port}/healthz")
                assert response.status == 200
            process.terminate()
            assert (await asyncio.to_thread(notify.recv, 1024)).startswith(b"STOPPING=1\n")
            assert await asyncio.to_thread(process.wait, 20) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


async def test_the_shutdown_tells_systemd_what_it_waits_for(
    dovecot: Dovecot, user: str, tmp_path: Path
) -> None:
    """STOPPING=1, then a STATUS= for each step, and EXTEND_TIMEOUT_USEC= while the grace period
    runs, so a shutdown_grace_seconds above the unit's TimeoutStopSec is not cut short."""
    with notify_socket(tmp_path) as (notify, notify_path):
        port = free_port()
        data = config_data(tmp_path, dovecot, [user], port)
        data["server"]["shutdown_grace_seconds"] = 2
        gw = GatewayProcess(write_config(tmp_path / "gatewayd.yaml", data), port)
        gw.start(env={"NOTIFY_SOCKET": str(notify_path)})
        try:
            assert (await asyncio.to_thread(notify.recv, 1024)).startswith(b"READY=1")
            await gw.wait_idle()
            async with aiohttp.ClientSession() as session:
                # A subscriber that stays: gatewayd waits the whole grace period for it.
                stream = await session.get(f"{gw.url}/events", headers=AUTH)
                assert stream.status == 200
                await stream.content.readuntil(b": connected\n")
                gw.terminate()
                states = [(await asyncio.to_thread(notify.recv, 1024)).decode()]
                while "closing IMAP" not in states[-1]:
                    states.append((await asyncio.to_thread(notify.recv, 1024)).decode())
            assert await gw.wait_exit(20) == 0
        finally:
            gw.stop_now()
    assert states[0] == "STOPPING=1\nSTATUS=stopping: finishing the pipeline", states
    waiting = states[1:-1]
    assert waiting, states
    for state in waiting:
        status, extend = state.split("\n")
        assert status == "STATUS=stopping: closing 1 stream"
        assert extend.startswith("EXTEND_TIMEOUT_USEC=") and int(extend.partition("=")[2]) > 0
    assert states[-1].startswith("STATUS=stopping: closing IMAP\nEXTEND_TIMEOUT_USEC="), states


async def test_the_watchdog_is_fed_from_the_event_loop_once_ready(
    dovecot: Dovecot, user: str, tmp_path: Path
) -> None:
    """Under WatchdogSec= (WATCHDOG_USEC), WATCHDOG=1 keeps coming after READY=1: without it
    systemd would kill a healthy gatewayd after WatchdogSec."""
    with notify_socket(tmp_path) as (notify, notify_path):
        port = free_port()
        config = write_config(tmp_path / "gatewayd.yaml", config_data(tmp_path, dovecot, [user], port))
        gw = GatewayProcess(config, port)
        gw.start(env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"})  # every 0.2 s
        try:
            states = [await asyncio.to_thread(notify.recv, 1024) for _ in range(4)]
            assert states[0].startswith(b"READY=1"), states
            assert states[1:] == [b"WATCHDOG=1"] * 3, states
            gw.terminate()
            assert await gw.wait_exit(20) == 0
        finally:
            gw.stop_now()


async def test_a_notify_socket_that_is_gone_neither_stops_start_up_nor_shutdown(
    dovecot: Dovecot, user: str, tmp_path: Path
) -> None:
    """A NOTIFY_SOCKET inherited from elsewhere (no systemd listening there): READY=1 and
    STOPPING=1 cannot be sent, and gatewayd serves and shuts down cleanly all the same."""
    port = free_port()
    config = write_config(tmp_path / "gatewayd.yaml", config_data(tmp_path, dovecot, [user], port))
    gw = GatewayProcess(config, port)
    gw.start(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    try:
        await gw.wait_idle()
        gw.terminate()
        assert await gw.wait_exit(20) == 0
    finally:
        gw.stop_now()
    assert "cannot notify systemd" in gw.stderr() and "Traceback" not in gw.stderr(), gw.stderr()


async def test_retention_prunes_in_the_background(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    config = gateway_config(tmp_path, dovecot, [user], watch="on_demand")
    config = dataclasses.replace(
        config, store=dataclasses.replace(config.store, retention_max_events=3, prune_interval_seconds=0.1)
    )
    gw = await start_gateway(config)
    store = gw.daemon.store
    for i in range(10):
        await store.append([NewEvent("note.test", "support", f"{user}-inbox", {"n": i})])
    await wait_for(lambda: store_size(store) == 3, what="pruning")
    assert await store.first_seq() == await store.last_seq() - 2


def store_size(store: Any) -> int:
    with sqlite3.connect(store.path) as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


def demo(*options: str) -> subprocess.CompletedProcess[str]:
    """`gatewayd demo OPTIONS` run to its end, from the repository's root."""
    command = gatewayd_command("demo", *options)
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=child_env())


def test_demo_runs_end_to_end() -> None:
    result = demo("--messages", "2", "--interval", "0.2", "--port", "0")
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"curl -N -H 'Authorization: Bearer gwd_[\w-]+' 'http://127\.0\.0\.1:\d+/events", result.stdout
    )
    assert len(re.findall(r"^event \d+: message\.received from ", result.stdout, re.M)) == 2


def test_demo_on_a_busy_port_says_so_and_leaves_no_dovecot() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = demo("--messages", "1", "--port", str(port))
    assert result.returncode == 3, result.stderr
    assert result.stderr == f"gatewayd: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    sandbox = re.search(r"^Dovecot sandbox: .* in (\S+)$", result.stdout, re.M)
    assert sandbox is not None, result.stdout
    assert not Path(sandbox[1]).exists()  # destroyed, its Dovecot stopped


def test_demo_refuses_out_of_range_options_before_starting_anything() -> None:
    for option, value in [("--port", "99999"), ("--interval", "-1"), ("--messages", "-3")]:
        result = demo(option, value)
        assert result.returncode == 2, result.stderr
        assert f"gatewayd demo: error: argument {option}: expected " in result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
