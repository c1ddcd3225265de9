"""The real `gatewayd` command as a subprocess: shutdown, restart, kill -9, CLI, secrets in logs
(and, in process, the shutdown's flush of what the watchers hold)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gatewayd.config import MailboxConfig, parse_config
from gatewayd.events import NewEvent
from gatewayd.imap import sync
from gatewayd.imap.act import MailActions
from gatewayd.message import FetchedMessage
from gatewayd.pipeline import Pipeline
from gatewayd.sandbox.dovecot import Dovecot, free_port
from tests.conftest import TOKEN, gateway_config
from tests.daemon import (
    AUTH,
    REPO_ROOT,
    GatewayProcess,
    child_env,
    config_data,
    gatewayd_command,
    run_cli,
    write_config,
)
from tests.sse import Frame, SseReader, mail
from tests.waiting import wait_for

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


@pytest.fixture
def gatewayd(tmp_path: Path, dovecot: Dovecot) -> Iterator[Any]:
    """Make GatewayProcess objects (not started); whatever still runs is killed at teardown."""
    made: list[GatewayProcess] = []

    def make(users: list[str], **options: Any) -> GatewayProcess:
        port = free_port()
        path = write_config(
            tmp_path / "gatewayd.yaml", config_data(tmp_path, dovecot, users, port, **options)
        )
        process = GatewayProcess(path, port)
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop_now()


async def read_block(response: aiohttp.ClientResponse, timeout: float = 15.0) -> list[str]:
    """The raw lines of the next SSE block (up to its blank line); EOFError at the end of the stream."""

    async def read() -> list[str]:
        lines: list[str] = []
        while True:
            raw = await response.content.readline()
            if not raw:
                raise EOFError(f"stream ended (partial block: {lines})")
            line = raw.decode().rstrip("\n")
            if line == "":
                if lines:
                    return lines
                continue
            lines.append(line)

    return await asyncio.wait_for(read(), timeout)


def fields(block: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block:
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        out[name] = value.removeprefix(" ")
    return out


async def list_events(session: aiohttp.ClientSession, url: str, types: str) -> list[dict[str, Any]]:
    async with session.get(
        f"{url}/v1/events", headers=AUTH, params={"types": types, "limit": "500"}
    ) as response:
        assert response.status == 200, await response.text()
        return list((await response.json())["events"])


async def poll_events(
    session: aiohttp.ClientSession, url: str, types: str, count: int, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """The JSON list (newest first) once it holds at least `count` events of `types`."""
    deadline = time.monotonic() + timeout
    while True:
        events = await list_events(session, url, types)
        if len(events) >= count:
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(events)} of {count} {types} events after {timeout}s")
        await asyncio.sleep(0.05)


async def read_to_end(response: aiohttp.ClientResponse, timeout: float = 15.0) -> list[Frame]:
    """Every event frame of a stream that ends by itself (max_seconds)."""
    reader = SseReader(response)
    frames: list[Frame] = []
    while True:
        try:
            frames.append(await reader.next(timeout))
        except EOFError:
            return frames


# --- 1. SIGTERM: subscribers get a closing event, the process exits 0 ---------------------------


async def test_sigterm_sends_closing_event_and_exits_zero(gatewayd: Any, dovecot: Dovecot, user: str) -> None:
    gw = gatewayd([user])
    gw.start()
    await gw.wait_idle()
    async with aiohttp.ClientSession() as session:
        response = await session.get(f"{gw.url}/events", headers=AUTH)
        assert response.status == 200, await response.text()
        assert await read_block(response) == ["retry: 500", ": connected"]

        await dovecot.deliver_async(user, mail("before shutdown"))
        last_id = None
        while True:
            block = fields(await read_block(response))
            last_id = block.get("id", last_id)
            if block.get("event") == "message.received":
                received = json.loads(block["data"])
                break
        assert received["data"]["subject"] == "before shutdown"
        assert block["id"] == received["id"] == last_id

        gw.terminate()
        while True:
            raw = await read_block(response, timeout=10)
            block = fields(raw)
            if block.get("event") == "closing":
                break
            assert "event" not in block, f"unexpected event before closing: {raw}"
        # No id: line, so a client's Last-Event-ID stays on the last real event.
        assert not any(line.startswith("id") for line in raw), raw
        closing = json.loads(block["data"])
        assert closing["reason"] == "shutdown"
        assert closing["last_event_id"] == received["id"]
        assert isinstance(closing["reconnect_after_ms"], int)
        assert not isinstance(closing["reconnect_after_ms"], bool)
        assert closing["reconnect_after_ms"] == 500  # server.retry_ms
        assert RFC3339.fullmatch(closing["at"]), closing["at"]
        at = datetime.fromisoformat(closing["at"].replace("Z", "+00:00"))
        assert abs((datetime.now(UTC) - at).total_seconds()) < 60

        # Then the server ends the stream (after the grace period) without another event.
        try:
            rest = await asyncio.wait_for(response.content.read(), 15)
        except aiohttp.ClientPayloadError:
            rest = b""
        assert b"event:" not in rest and b"id:" not in rest, rest
        response.close()

        assert await gw.wait_exit(20) == 0
        assert await gw.health(session) is None, "healthz still answers after exit"
    assert "Traceback" not in gw.stderr(), gw.stderr()


@pytest.mark.parametrize("again", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
async def test_a_signal_during_the_shutdown_changes_nothing(
    gatewayd: Any, user: str, tmp_path: Path, again: signal.Signals
) -> None:
    """A second SIGTERM, a Ctrl-C or a SIGHUP (a log rotation) while gatewayd shuts down: the
    shutdown goes on as if it had not come (their default actions would kill it, or raise
    KeyboardInterrupt inside it), and ends with exit 0 and the LOGOUT stored."""
    gw = gatewayd([user])
    gw.start()
    await gw.wait_idle()
    async with aiohttp.ClientSession() as session:
        response = await session.get(f"{gw.url}/events", headers=AUTH)
        reader = SseReader(response)
        gw.terminate()
        while (await reader.next(15)).event != "closing":
            pass
        gw.signal(again)  # within the grace period: the shutdown is under way
        assert await gw.wait_exit(20) == 0
        response.close()
    assert "stopped" in gw.stderr() and "Traceback" not in gw.stderr(), gw.stderr()
    with sqlite3.connect(tmp_path / "events.db") as db:
        reasons = [
            json.loads(data)["reason"]
            for (data,) in db.execute("SELECT data FROM events WHERE type = 'mailbox.disconnected'")
        ]
    assert reasons == ["shutdown"]


class PasswordPipe:
    """A FIFO as the mailbox's password_file: `gatewayd run` blocks reading it while it loads its
    configuration, so a test knows it is there (and not yet in its event loop) until it answers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)

    async def wait_reader(self, gw: GatewayProcess, timeout: float = 20.0) -> int:
        """Once gatewayd has opened the FIFO (and waits for the password): the writing end."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
            assert gw.running, f"gatewayd exited before reading its password file\n{gw.output()}"
            assert time.monotonic() < deadline, "gatewayd never opened its password file"
            await asyncio.sleep(0.01)

    def answer(self, fd: int) -> None:
        """The password, and a plain file with it in the FIFO's place for any later read (a reload)."""
        os.write(fd, b"secret\n")
        os.close(fd)
        plain = self.path.with_name("password.plain")
        plain.write_text("secret\n")
        plain.replace(self.path)


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=lambda s: s.name)
async def test_a_signal_while_gatewayd_run_loads_its_configuration(
    gatewayd: Any, user: str, tmp_path: Path, signum: signal.Signals
) -> None:
    """Before gatewayd's event loop runs, a signal is not its default action either: SIGHUP is
    a reload once gatewayd is up, SIGTERM a clean exit 0 without starting anything."""
    gw = gatewayd([user])
    data = yaml.safe_load(gw.config_path.read_text())
    imap = data["agents"][0]["mailboxes"][0]["imap"]
    del imap["password"]
    imap["password_file"] = str(tmp_path / "password")
    gw.config_path.write_text(yaml.safe_dump(data))
    pipe = PasswordPipe(tmp_path / "password")
    gw.start()
    fd = await pipe.wait_reader(gw)
    gw.signal(signum)
    pipe.answer(fd)
    if signum == signal.SIGTERM:
        assert await gw.wait_exit(20) == 0
        assert "listening" not in gw.stderr(), gw.stderr()
    else:
        await gw.wait_idle()
        await wait_for(lambda: "rules reloaded" in gw.stderr(), what="the reload after start-up")
        gw.terminate()
        assert await gw.wait_exit(20) == 0
    assert "Traceback" not in gw.stderr(), gw.stderr()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_while_gatewayd_is_being_imported_exits_cleanly(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """A SIGTERM or SIGINT right after the start, while the command's modules are still being
    imported: the clean exit 0 of a stop before gatewayd is up, not the signal's default action
    (killed, or a KeyboardInterrupt traceback)."""
    data = {"server": {"listen": "127.0.0.1:0"}, "store": {"path": str(tmp_path / "events.db")}}
    config = write_config(tmp_path / "gatewayd.yaml", data | {"agents": [{"id": "support"}]})
    # -X importtime reports each module once imported: asyncio comes first among gatewayd's own
    # imports, so the signal lands in them, long before `run` can install its handlers.
    command = [sys.executable, "-X", "importtime", *gatewayd_command("run", "-c", str(config))[1:]]
    for _ in range(3):
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        deadline = threading.Timer(60, process.kill)  # a daemon that missed the signal runs on
        deadline.start()
        try:
            assert process.stderr is not None
            for line in iter(process.stderr.readline, ""):
                if re.search(r"\|\s+asyncio$", line):
                    process.send_signal(signum)
                    break
            else:
                raise AssertionError(f"asyncio was never imported (exit {process.wait()})")
            _, err = process.communicate(timeout=30)
            assert process.returncode == 0, err
            assert "Traceback" not in err, err
        finally:
            deadline.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()


async def test_shutdown_publishes_what_the_watchers_hold_before_closing(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catch-up's group commit still held at shutdown reaches subscribers before `closing`.

    In process, with one injected delay: checking the third message of the backlog never ends,
    so the first two stay held (no real server makes a message take forever to check)."""
    monkeypatch.setattr(sync, "GROUP_COMMIT_SECONDS", 3600.0)
    stalled = asyncio.Event()
    process = Pipeline.process

    async def stall_on_third(
        self: Pipeline, mailbox: MailboxConfig, message: FetchedMessage, actions: MailActions | None = None
    ) -> NewEvent | None:
        if b"Subject: third" in message.raw:
            stalled.set()
            await asyncio.Event().wait()  # until the watcher is cancelled, after the SSE connections
        return await process(self, mailbox, message, actions)

    monkeypatch.setattr(Pipeline, "process", stall_on_third)
    for subject in ("first", "second", "third"):
        await dovecot.deliver_async(user, mail(subject))
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], backfill=3))
    await asyncio.wait_for(stalled.wait(), 20)
    async with aiohttp.ClientSession() as session:
        response = await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.*"})
        reader = SseReader(response)
        stopping = asyncio.create_task(gw.daemon.stop())
        frames: list[Frame] = []
        while (frame := await reader.next(15)).event != "closing":
            frames.append(frame)
        response.close()
        await stopping
    assert [frame.json["data"]["subject"] for frame in frames] == ["first", "second"]
    assert frame.json["last_event_id"] == frames[-1].id


# --- 2. restart: a subscriber resuming by Last-Event-ID gets what arrived while it was down ------


async def test_restart_catches_up_with_mail_delivered_while_down(
    gatewayd: Any, dovecot: Dovecot, user: str
) -> None:
    gw = gatewayd([user])
    gw.start()
    await gw.wait_idle()
    async with aiohttp.ClientSession() as session:
        response = await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.received"})
        assert response.status == 200
        await dovecot.deliver_async(user, mail("A"))
        (first,) = await SseReader(response).messages(1)
        assert first.json["data"]["subject"] == "A"
        seen_id = first.id
        assert seen_id
        response.close()
        gw.terminate()
        assert await gw.wait_exit(20) == 0

        missed = ["down 1", "down 2", "down 3"]
        for subject in missed:
            await dovecot.deliver_async(user, mail(subject))

        gw.start()
        await gw.wait_idle()
        # The store survived the restart: A keeps its id, the three missed ones follow it.
        stored = await poll_events(session, gw.url, "message.received", 4)
        assert [e["data"]["subject"] for e in reversed(stored)] == ["A", *missed]
        assert stored[-1]["id"] == seen_id

        resume = {"Last-Event-ID": seen_id, **AUTH}
        response = await session.get(
            f"{gw.url}/events", headers=resume, params={"types": "message.received", "max_seconds": "1"}
        )
        assert response.status == 200
        frames = await read_to_end(response)
        assert [f.event for f in frames] == ["message.received"] * 3
        assert [f.json["data"]["subject"] for f in frames] == missed
        ids = [int(f.id or 0) for f in frames]
        assert ids == sorted(set(ids)) and ids[0] > int(seen_id)

        # Nothing else of type message.* follows A either.
        response = await session.get(
            f"{gw.url}/events", headers=resume, params={"types": "message.*", "max_seconds": "1"}
        )
        frames_any = await read_to_end(response)
        assert [(f.event, f.id) for f in frames_any] == [(f.event, f.id) for f in frames]


async def test_a_second_daemon_on_the_same_store_is_refused_until_the_first_is_gone(
    gatewayd: Any, user: str
) -> None:
    first = gatewayd([user])
    first.start()
    await first.wait_idle()
    assert first.process is not None
    # The same configuration again: same store (and port, but the store is checked first).
    second = await asyncio.to_thread(run_cli, "run", "-c", str(first.config_path))
    assert second.returncode == 3, second.stderr
    store = first.config_path.parent / "events.db"
    assert f"another gatewayd (pid {first.process.pid}) is running with the event store {store}" in (
        second.stderr
    )
    assert "Traceback" not in second.stderr
    after = await first.wait_idle(token=TOKEN)  # untouched, still watching
    assert after["status"] == "ok" and [w["reconnects"] for w in after["watchers"]] == [0]
    # The kernel drops the lock with the process, however it ends.
    first.kill()
    assert await first.wait_exit() == -signal.SIGKILL
    first.start()
    await first.wait_idle()


def test_a_listen_address_in_use_exits_3_at_once(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        data = {
            "server": {"listen": f"127.0.0.1:{port}"},
            "store": {"path": str(tmp_path / "events.db")},
            "agents": [{"id": "support", "token_sha256": ["0" * 64]}],
        }
        # Before the fix the process printed a traceback and hung: run_cli's timeout would fire.
        result = run_cli("run", "-c", str(write_config(tmp_path / "gatewayd.yaml", data)))
    assert result.returncode == 3, result.stderr
    assert f"gatewayd: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("store", "learning", "says"),
    [
        ("file/events.db", "learning.db", "cannot open the event store {tmp}/file/events.db: "),
        ("junk.db", "learning.db", "cannot open the event store {tmp}/junk.db: file is not a database"),
        ("events.db", "file/learning.db", "cannot open the learning store {tmp}/file/learning.db: "),
        ("newer.db", "learning.db", "cannot open the event store {tmp}/newer.db: schema version 99 is newer"),
        ("foreign.db", "learning.db", "cannot open the event store {tmp}/foreign.db: not a gatewayd store"),
    ],
)
def test_a_store_that_cannot_be_opened_exits_3_with_its_path(
    tmp_path: Path, store: str, learning: str, says: str
) -> None:
    (tmp_path / "file").write_text("a file where a directory should be\n")
    (tmp_path / "junk.db").write_bytes(b"not SQLite at all\n" * 20)
    newer = sqlite3.connect(tmp_path / "newer.db")  # a store a later gatewayd wrote
    newer.execute("PRAGMA user_version=99")
    newer.close()
    foreign = sqlite3.connect(tmp_path / "foreign.db")  # another program's database
    foreign.execute("CREATE TABLE photos (path TEXT)")
    foreign.close()
    data = {
        "server": {"listen": f"127.0.0.1:{free_port()}"},
        "store": {"path": str(tmp_path / store)},
        "pipeline": {"learning": {"path": str(tmp_path / learning)}},
        "agents": [{"id": "support", "token_sha256": ["0" * 64]}],
    }
    result = run_cli("run", "-c", str(write_config(tmp_path / "gatewayd.yaml", data)))
    assert result.returncode == 3, result.stderr
    assert "gatewayd: " + says.format(tmp=tmp_path) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("command", "store"),
    [
        (["token", "list"], "event store"),
        (["learn", "--spam", "{tmp}/mail"], "learning store"),
        (["check-message", "{tmp}/mail/one.eml"], "learning store"),
    ],
)
def test_other_commands_exit_3_on_a_store_that_cannot_be_opened(
    tmp_path: Path, command: list[str], store: str
) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not SQLite at all\n" * 20)
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "one.eml").write_bytes(mail("one"))
    data = {
        "store": {"path": str(junk)},
        "pipeline": {"learning": {"path": str(junk)}},
        "agents": [{"id": "support", "token_sha256": ["0" * 64]}],
    }
    path = write_config(tmp_path / "gatewayd.yaml", data)
    result = run_cli(*(part.format(tmp=tmp_path) for part in command), "-c", str(path))
    assert result.returncode == 3, result.stderr
    assert f"gatewayd: cannot open the {store} {junk}: file is not a database" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["token", "list"], ["token", "create", "--agent", "support"]])
def test_token_commands_on_a_store_sqlite_cannot_open_say_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    # SQLite fails in connect here (not at the first statement, as for a junk file): aiosqlite's
    # worker thread then printed a traceback after the one-line error.
    (tmp_path / "events.db").mkdir()
    data = {"store": {"path": str(tmp_path / "events.db")}, "agents": [{"id": "support"}]}
    result = run_cli(*command, "-c", str(write_config(tmp_path / "gatewayd.yaml", data)))
    assert result.returncode == 3, result.stderr
    assert (
        result.stderr
        == f"gatewayd: cannot open the event store {tmp_path / 'events.db'}: unable to open database file\n"
    )


def test_token_commands_leave_another_programs_database_untouched(tmp_path: Path) -> None:
    foreign = tmp_path / "photos.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE photos (path TEXT)")
    conn.execute("CREATE TABLE tokens (id TEXT, owner TEXT)")  # a table that merely shares a name
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    data = {"store": {"path": str(foreign)}, "agents": [{"id": "support", "token_sha256": ["0" * 64]}]}
    path = write_config(tmp_path / "gatewayd.yaml", data)
    result = run_cli("token", "create", "--agent", "support", "-c", str(path))
    assert result.returncode == 3, result.stderr
    assert f"gatewayd: cannot open the event store {foreign}: not a gatewayd store" in result.stderr
    assert "Traceback" not in result.stderr and "token:" not in result.stdout
    assert foreign.read_bytes() == before  # no table added or altered, no switch to WAL


# --- 3. kill -9 in the middle of a burst: nothing lost, nothing twice ---------------------------

BURST = 40


@pytest.mark.parametrize("kill_after", [8, 16])
async def test_kill_9_mid_burst_loses_and_duplicates_nothing(
    gatewayd: Any, dovecot: Dovecot, user: str, kill_after: int
) -> None:
    gw = gatewayd([user])
    gw.start()
    await gw.wait_idle()
    subjects = [f"burst {i:02d}" for i in range(BURST)]
    delivered: list[str] = []
    failures: list[BaseException] = []

    def deliver_burst() -> None:
        try:
            for subject in subjects:
                dovecot.deliver(user, mail(subject))
                delivered.append(subject)
                time.sleep(0.03)  # the pace of the burst, not a wait for anything
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=deliver_burst, daemon=True)
    async with aiohttp.ClientSession() as session:
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while len(await list_events(session, gw.url, "message.received")) < kill_after:
                assert time.monotonic() < deadline, "the burst never reached the gateway"
                await asyncio.sleep(0.01)
            gw.kill()
            delivered_at_kill = len(delivered)
            assert await gw.wait_exit(10) == -signal.SIGKILL
            assert delivered_at_kill < BURST, "the burst was over before the kill: not a mid-burst test"

            gw.start()
            await gw.wait_idle()
        finally:
            thread.join(30)
        assert not thread.is_alive() and not failures, failures
        assert delivered == subjects

        # Caught up: every subject stored and the watcher's checkpoint at the newest UID.
        deadline = time.monotonic() + 20
        while True:
            events = await list_events(session, gw.url, "message.received")
            newest_uid = max((e["data"]["uid"] for e in events), default=None)
            health = await gw.health(session, TOKEN)
            watcher = (health or {}).get("watchers", [{}])[0]
            caught_up = (
                {e["data"]["subject"] for e in events} == set(subjects)
                and watcher.get("state") == "idle"
                and watcher.get("last_uid") == newest_uid
            )
            if caught_up:
                break
            assert time.monotonic() < deadline, f"not caught up: {len(events)} events, watcher {watcher}"
            await asyncio.sleep(0.05)

    assert len(events) == BURST, sorted(e["data"]["subject"] for e in events)
    assert len({e["data"]["subject"] for e in events}) == BURST
    assert len({(e["data"]["uidvalidity"], e["data"]["uid"]) for e in events}) == BURST
    assert len({e["id"] for e in events}) == BURST
    # Announced in UID order: ids and UIDs rise together. (Not necessarily delivery order: a
    # maildir delivery that finds the uidlist locked leaves its UID to be assigned later.)
    stored = [(int(e["id"]), e["data"]["uid"], e["data"]["subject"]) for e in reversed(events)]
    assert [seq for seq, _, _ in stored] == sorted(seq for seq, _, _ in stored), stored
    assert [uid for _, uid, _ in stored] == sorted(uid for _, uid, _ in stored), stored


async def test_a_power_loss_never_gives_an_id_a_client_saw_to_another_event(
    gatewayd: Any, dovecot: Dovecot, user: str, tmp_path: Path
) -> None:
    """A power loss takes the store's last commits (NORMAL syncs only at checkpoints), events a
    client already got included; their messages are processed again after the restart. They
    must come to that client again, under ids above the ones it saw."""
    store_files = [tmp_path / f"events.db{suffix}" for suffix in ("", "-wal", "-shm")]
    saved = tmp_path / "saved"
    saved.mkdir()
    gw = gatewayd([user])
    gw.start()
    await gw.wait_idle()
    async with aiohttp.ClientSession() as session:
        await dovecot.deliver_async(user, mail("A"))
        await poll_events(session, gw.url, "message.received", 1)
        gw.terminate()
        assert await gw.wait_exit(20) == 0
        # The store as the disk will have it after the power loss: without B and C.
        for path in store_files:
            if path.exists():
                shutil.copy2(path, saved / path.name)

        gw.start()
        await gw.wait_idle()
        response = await session.get(f"{gw.url}/events", headers=AUTH, params={"types": "message.received"})
        assert response.status == 200
        for subject in ("B", "C"):
            await dovecot.deliver_async(user, mail(subject))
        seen = await SseReader(response).messages(2)
        assert [f.json["data"]["subject"] for f in seen] == ["B", "C"]
        response.close()
        gw.kill()
        assert await gw.wait_exit(10) == -signal.SIGKILL
        # The power loss: the store's unsynced tail is gone, and the machine boots again (the lock
        # file, synced when the killed run started, names that run's boot).
        for path in store_files:
            path.unlink(missing_ok=True)
            if (saved / path.name).exists():
                shutil.copy2(saved / path.name, path)
        lock = tmp_path / "events.db.lock"
        pid = lock.read_text().split()[0]
        lock.write_text(f"{pid}\nan-earlier-boot\n")

        gw.start()
        await gw.wait_idle()
        # B and C again: their checkpoint was lost with them.
        await poll_events(session, gw.url, "message.received", 3)
        resume = {"Last-Event-ID": seen[-1].event_id, **AUTH}
        response = await session.get(
            f"{gw.url}/events", headers=resume, params={"types": "message.received", "max_seconds": "1"}
        )
        assert response.status == 200
        frames = await read_to_end(response)
    assert [(f.event, f.json["data"]["subject"]) for f in frames] == [("message.received", s) for s in "BC"]
    assert all(int(f.event_id) > int(seen[-1].event_id) for f in frames)
    assert "event ids skip 1000000" in gw.stderr()


# --- 4. bad configuration files through the CLI ------------------------------------------------

PASSWORD = "hunter2-very-secret"


def good_config(tmp_path: Path) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:8025"},
        "store": {"path": str(tmp_path / "events.db")},
        "agents": [
            {
                "id": "support",
                "token_sha256": [hashlib.sha256(b"t").hexdigest()],
                "mailboxes": [
                    {
                        "id": "box",
                        "watch": "always",
                        "imap": {
                            "host": "127.0.0.1",
                            "port": 143,
                            "tls": "none",
                            "username": "agent",
                            "password": PASSWORD,
                        },
                    }
                ],
            }
        ],
    }


def _imap(data: dict[str, Any]) -> dict[str, Any]:
    return dict(data["agents"][0]["mailboxes"][0]["imap"])


def _with_imap(data: dict[str, Any], **changes: Any) -> dict[str, Any]:
    imap = {**_imap(data), **changes}
    imap = {key: value for key, value in imap.items() if value is not None}
    data["agents"][0]["mailboxes"][0]["imap"] = imap
    return data


# A comma missing right after the password: PyYAML's own message would quote that line.
YAML_BROKEN = f"""\
agents:
  - id: support
    mailboxes:
      - id: box
        imap: {{host: 127.0.0.1, username: agent, password: "{PASSWORD}" port: 143}}
"""


def _bad_config(case: str, tmp_path: Path) -> tuple[Path, str]:
    """A bad config file for `case` and the (regular expression for the) error line expected."""
    path = tmp_path / f"{case}.yaml"
    data = good_config(tmp_path)
    if case == "port_abc":
        data = _with_imap(data, port="abc")
        expected = re.escape('agents[0].mailboxes[0].imap.port: expected an integer 1-65535, got "abc"')
    elif case == "unknown_key":
        data = _with_imap(data, port=70000, foldrs=["INBOX"])
        expected = re.escape('agents[0].mailboxes[0].imap.foldrs: unknown key (did you mean "folders"?)')
    elif case == "missing_key":
        data = _with_imap(data, port="abc", host=None)
        expected = re.escape("agents[0].mailboxes[0].imap.host: missing required key")
    elif case == "yaml_syntax":
        path.write_text(YAML_BROKEN)
        return path, r"line 5, column \d+: invalid YAML: \S.*"
    elif case == "missing_file":
        path = tmp_path / "nowhere" / "gatewayd.yaml"
        return path, re.escape(str(path)) + r": cannot read the configuration file: No such file.*"
    else:
        raise AssertionError(case)
    write_config(path, data)
    return path, expected


@pytest.mark.parametrize("case", ["port_abc", "unknown_key", "missing_key", "yaml_syntax", "missing_file"])
def test_bad_config_exits_2_with_key_path_and_no_secret(tmp_path: Path, case: str) -> None:
    path, expected = _bad_config(case, tmp_path)
    if case != "missing_file":
        assert PASSWORD in path.read_text()  # the secret is in the file, and must stay there
    for command in ("check-config", "run"):
        result = run_cli(command, "-c", str(path))
        assert result.returncode == 2, (command, result.returncode, result.stdout, result.stderr)
        lines = [line.strip() for line in result.stderr.splitlines()]
        assert any(re.fullmatch(expected, line) for line in lines), (command, result.stderr)
        assert "OK" not in result.stdout and "listening" not in result.stderr
        assert PASSWORD not in result.stdout + result.stderr, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr


def test_good_config_passes_check(tmp_path: Path) -> None:
    path = write_config(tmp_path / "good.yaml", good_config(tmp_path))
    result = run_cli("check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: OK (1 agents, 1 mailboxes)"
    assert PASSWORD not in result.stdout + result.stderr


def test_check_config_lists_weight_and_rule_problems_together(tmp_path: Path) -> None:
    data = good_config(tmp_path) | {
        "pipeline": {"spam": {"weights": {"MISING_DATE": 1}}},
        "rules": [{"name": "a", "then": ["explode"]}],
    }
    result = run_cli("check-config", "-c", str(write_config(tmp_path / "both.yaml", data)))
    assert result.returncode == 2
    assert [line.strip() for line in result.stderr.splitlines()[1:]] == [
        'pipeline.spam.weights.MISING_DATE: unknown symbol (did you mean "MISSING_DATE"?)',
        'rules[0] "a".then[0]: unknown action "explode"',
    ]


def test_check_config_lists_every_problem_of_a_mailbox_an_agent_and_a_stage_at_once(tmp_path: Path) -> None:
    # Each problem below used to hide the next: smtp behind imap, the tenant behind the mailbox,
    # the swapped thresholds behind the weights.
    data = _with_imap(good_config(tmp_path), port="abc")
    data["agents"][0]["mailboxes"][0]["smtp"] = {"host": "127.0.0.1", "port": 0, "tls": "none"}
    data["agents"].append({"id": "bot", "parent": "support", "tenant": "acme", "mailboxes": [{"id": "m"}]})
    data["pipeline"] = {"spam": {"weights": [], "suspect_threshold": 9, "spam_threshold": 3}}
    result = run_cli("check-config", "-c", str(write_config(tmp_path / "all.yaml", data)))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.splitlines()[0] == f"{tmp_path / 'all.yaml'}: invalid configuration:"
    assert [line.strip() for line in result.stderr.splitlines()[1:]] == [
        'agents[0].mailboxes[0].imap.port: expected an integer 1-65535, got "abc"',
        "agents[0].mailboxes[0].smtp.port: expected an integer 1-65535, got 0",
        "agents[1].mailboxes[0].imap: missing required key",
        'agents[1].tenant: "acme" differs from the tenant "default" of its parent "support";'
        " a parent and its sub-agents share one tenant",
        "pipeline.spam.weights: expected a mapping of SYMBOL: score, got an empty list",
        "pipeline.spam.suspect_threshold: must not exceed spam_threshold (3), got 9",
    ]
    assert result.stdout == "" and PASSWORD not in result.stderr


# --- 5. token new ------------------------------------------------------------------------------


def test_token_new_prints_token_and_its_sha256(tmp_path: Path) -> None:
    tokens = []
    for _ in range(2):
        result = run_cli("token", "new")
        assert result.returncode == 0, result.stderr
        token_lines = [line for line in result.stdout.splitlines() if line.startswith("token: ")]
        assert len(token_lines) == 1, result.stdout
        token = token_lines[0].removeprefix("token: ").strip()
        assert len(token) >= 32 and token.isprintable() and " " not in token
        hash_lines = [
            m
            for line in result.stdout.splitlines()
            if (m := re.fullmatch(r'token_sha256: \["([0-9a-f]{64})"\]', line))
        ]
        assert len(hash_lines) == 1, result.stdout
        digest = hash_lines[0].group(1)
        assert digest == hashlib.sha256(token.encode()).hexdigest()
        # The line pastes into a config, and the token then authenticates as that agent.
        pasted = yaml.safe_load(hash_lines[0].group(0))
        config = parse_config(
            {"agents": [{"id": "pasted", **pasted}], "store": {"path": str(tmp_path / "e.db")}}, env={}
        )
        found = config.agent_for_token_hash(hashlib.sha256(token.encode()).hexdigest())
        assert found is not None and found.id == "pasted"
        tokens.append((token, digest))
    assert tokens[0][0] != tokens[1][0]
    assert tokens[0][1] != tokens[1][1]


# --- 6. a wrong password is never logged, even at debug ----------------------------------------

WRONG_PASSWORD = "wrong-pass-zz81"


async def test_wrong_password_never_reaches_logs_or_healthz(gatewayd: Any, user: str) -> None:
    gw = gatewayd([user], password=WRONG_PASSWORD, log_level="debug")
    gw.start()
    body = await gw.wait_health(
        lambda b: any(w.get("state") == "backoff" for w in b.get("watchers", [])),
        what="the watcher backing off after the refused login",
        token=TOKEN,
    )
    async with aiohttp.ClientSession() as session:
        (error,) = await poll_events(session, gw.url, "mailbox.error", 1)
        assert error["mailbox_id"] == f"{user}-inbox"
        assert error["data"]["kind"] == "auth"
        assert "login refused" in error["data"]["reason"]
        assert WRONG_PASSWORD not in json.dumps(error)

        async with session.get(f"{gw.url}/healthz") as response:
            health_text = await response.text()
    assert "login refused" in (body["watchers"][0]["last_error"] or "")
    assert WRONG_PASSWORD not in health_text

    gw.terminate()
    assert await gw.wait_exit(20) == 0
    output = gw.output()
    # The logs were captured, at debug level, and include the refusal: a leak would show here.
    assert "DEBUG" in output and "login refused" in output, output
    assert WRONG_PASSWORD not in output


# --- 7. a password from a systemd credential -----------------------------------------------------


async def test_gatewayd_run_logs_in_with_the_password_of_a_systemd_credential(
    gatewayd: Any, user: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`LoadCredential=NAME:FILE` copies a root-only file to $CREDENTIALS_DIRECTORY/NAME for the
    service alone; `password_credential: NAME` logs in with it (a directory of the test's stands
    in for /run/credentials/gatewayd.service). Without the variable, a clear exit 2."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    gw = gatewayd([user])
    data = yaml.safe_load(gw.config_path.read_text())
    imap = data["agents"][0]["mailboxes"][0]["imap"]
    del imap["password"]
    imap["password_credential"] = "imap-password"
    gw.config_path.write_text(yaml.safe_dump(data))
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "imap-password").write_text("secret\n")
    (credentials / "imap-password").chmod(0o400)

    gw.start()
    assert await gw.wait_exit(20) == 2
    assert (
        "agents[0].mailboxes[0].imap.password_credential: environment variable CREDENTIALS_DIRECTORY"
        " is not set" in gw.stderr()
    ), gw.stderr()

    gw.start(env={"CREDENTIALS_DIRECTORY": str(credentials)})
    await gw.wait_idle()  # logged in, folder selected, first sync done
    async with aiohttp.ClientSession() as session:
        (connected,) = await poll_events(session, gw.url, "mailbox.connected", 1)
    assert connected["mailbox_id"] == f"{user}-inbox"
    gw.terminate()
    assert await gw.wait_exit(20) == 0
    assert "Traceback" not in gw.stderr(), gw.stderr()
