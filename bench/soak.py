"""A soak run under chaos: the real `gatewayd run` for N minutes, then checks for losses and leaks.

    .venv/bin/python bench/soak.py [--minutes N] [--mailboxes M] [--seed S] [--keep]

It starts the sandbox Dovecot, an SMTP sink (aiosmtpd on loopback, recording every auto-reply)
and `python -m gatewayd run` with M mailboxes (20), each watching INBOX, Work and Later, and rules
that move `[move]` mail to Work, flag `[flag]` mail and auto-reply to `[reply]` mail. Three SSE
clients follow the stream: one steady, one reconnecting with `Last-Event-ID` every few seconds,
one reconnecting with `since=`. For N minutes (10) it delivers mail over LMTP at a varying rate
(and appends some to Later), and at random intervals injects chaos: `doveadm kick` of a user, a
killed `imap` process, a Dovecot restart, SIGHUP (reload), Later deleted and created again, and
`kill -9` of gatewayd followed by a restart. Then it lets everything settle and checks:

- every delivered message has exactly one `message.received*` event (by Message-ID; a moved one
  counts once); mail in Later when it was deleted may be missing, never doubled;
- every SSE client saw every stored event exactly once, in the store's order;
- every auto-reply went out at most once (counted at the SMTP sink by In-Reply-To);
- gatewayd's RSS, open fds, threads (/proc) and asyncio tasks (/healthz) did not rise steadily
  within a run of the process (the series is printed; a steady rise is flagged).

Exit status 0 when every check holds, 1 otherwise. A manual tool, not part of the test suite;
its work directory (logs, store, Dovecot) is kept with `--keep`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import imaplib
import math
import os
import random
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiosmtpd.controller import Controller

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatewayd.config import hash_token
from gatewayd.sandbox.dovecot import PASSWORD, Dovecot, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent

TOKEN = "soak-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FOLDERS = ["INBOX", "Work", "Later"]
DELETED_FOLDER = "Later"
DOMAIN = "soak.test"
RULES = [
    {
        "name": "move-work",
        "if": {"folder": "INBOX", "subject": "[move]"},
        "then": [{"move": {"folder": "Work", "create": True}}],
    },
    {
        "name": "flag",
        "if": {"folder": "INBOX", "subject": "[flag]"},
        "then": [{"add_flags": "\\Flagged"}, {"add_keywords": ["soak"]}],
    },
    {
        "name": "reply",
        "if": {"folder": "INBOX", "subject": "[reply]"},
        "then": [{"auto_reply": {"body": "Got {{ subject }}", "period_days": 0}}],
    },
]


def log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


# -- the SMTP sink ------------------------------------------------------------------------------


@dataclass
class SinkHandler:
    replies: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.replies.append(bytes(envelope.original_content or envelope.content))
        return "250 OK"


# -- mail ---------------------------------------------------------------------------------------


@dataclass
class Mail:
    message_id: str
    user: str
    folder: str
    sent_at: float
    delivered: bool | None  # None: the server's answer was lost (a restart mid-delivery)


def compose(number: int, user: str, tag: str) -> tuple[str, bytes]:
    message_id = f"soak-{number}@sender.example.org"
    subject = f"{tag} soak message {number}".strip()
    raw = (
        f"From: Sender {number % 37} <sender{number}@sender.example.org>\r\n"
        f"To: {user}@{DOMAIN}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
        f"Message-ID: <{message_id}>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Hello, this is message {number} of the soak run.\r\n"
    )
    return message_id, raw.encode()


def imap_client(dovecot: Dovecot, user: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    client.login(user, PASSWORD)
    return client


def create_folders(dovecot: Dovecot, user: str) -> None:
    client = imap_client(dovecot, user)
    try:
        for folder in FOLDERS[1:]:
            client.create(folder)
    finally:
        client.logout()


def maildir_message_ids(dovecot: Dovecot, users: list[str]) -> set[str]:
    """Every Message-ID now in the users' mail (INBOX and every folder), as the server holds it."""
    found: set[str] = set()
    pattern = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)
    for user in users:
        for path in dovecot.maildir(user).rglob("*"):
            if path.is_file() and path.parent.name in ("cur", "new"):
                with contextlib.suppress(OSError):
                    match = pattern.search(path.read_bytes()[:4096])
                    if match:
                        found.add(match.group(1).decode())
    return found


def imap_processes(group: int) -> list[int]:
    """Dovecot's `imap` processes (one per connection) in the sandbox's process group."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "imap" and os.getpgid(int(entry.name)) == group:
                    pids.append(int(entry.name))
    return pids


# -- gatewayd -----------------------------------------------------------------------------------


class Gatewayd:
    def __init__(self, work: Path, port: int) -> None:
        self.work = work
        self.port = port
        self.config = work / "gatewayd.yaml"
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.runs += 1
        env = {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}
        env["PYTHONPATH"] = str(REPO_ROOT)
        with (self.work / f"gatewayd-run{self.runs}.log").open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gatewayd", "run", "-c", str(self.config)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    async def health(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with session.get(f"{self.url}/healthz", headers=AUTH, timeout=timeout) as response:
                return dict(await response.json())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def wait_up(
        self, session: aiohttp.ClientSession, timeout: float = 60, every_watcher_idle: bool = False
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"gatewayd exited with {self.process.returncode}; see {self.work}")
            body = await self.health(session)
            if body is not None and body.get("status") == "ok":
                states = {watcher["state"] for watcher in body["watchers"]}
                if not every_watcher_idle or states == {"idle"}:
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError("gatewayd did not come up")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


def write_config(gateway: Gatewayd, dovecot: Dovecot, users: list[str], smtp_port: int) -> None:
    mailboxes = [
        {
            "id": f"{user}-box",
            "watch": "always",
            "address": f"{user}@{DOMAIN}",
            "imap": {
                "host": dovecot.host,
                "port": dovecot.imap_port,
                "tls": "none",
                "username": user,
                "password": PASSWORD,
                "folders": FOLDERS,
                "read_timeout_seconds": 10,
                "connect_timeout_seconds": 5,
            },
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "tls": "none", "timeout_seconds": 5},
        }
        for user in users
    ]
    data = {
        "server": {"listen": f"127.0.0.1:{gateway.port}", "shutdown_grace_seconds": 1, "retry_ms": 500},
        "store": {"path": str(gateway.work / "events.db")},
        "logging": {"level": "info"},
        "rules": RULES,
        "agents": [{"id": "soak", "token_sha256": [hash_token(TOKEN)], "mailboxes": mailboxes}],
    }
    gateway.config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


# -- SSE clients --------------------------------------------------------------------------------


@dataclass
class SseClient:
    """One subscriber: `steady` stays connected, `last_event_id` and `since` reconnect every few
    seconds, resuming with that header or query parameter. Every connection starts where the last
    event seen left off (since=0 at first)."""

    name: str
    mode: str
    url: str
    ids: list[str] = field(default_factory=list)
    connections: int = 0
    closings: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event, rng: random.Random) -> None:
        while not stop.is_set():
            headers = dict(AUTH)
            params = {"ping": "2"}
            last = self.ids[-1] if self.ids else None
            if last is None:
                params["since"] = "0"
            elif self.mode == "since":
                params["since"] = last
            else:
                headers["Last-Event-ID"] = last
            lifetime = None if self.mode == "steady" else rng.uniform(2, 6)
            try:
                async with asyncio.timeout(lifetime):
                    await self._follow(session, headers, params, stop)
            except TimeoutError:
                pass
            except (aiohttp.ClientError, ConnectionError) as exc:
                self.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.5)

    async def _follow(
        self,
        session: aiohttp.ClientSession,
        headers: dict[str, str],
        params: dict[str, str],
        stop: asyncio.Event,
    ) -> None:
        async with session.get(f"{self.url}/events", headers=headers, params=params) as response:
            if response.status != 200:
                self.errors[f"http {response.status}"] += 1
                await asyncio.sleep(0.5)
                return
            self.connections += 1
            event_id: str | None = None
            event_type = ""
            async for raw in response.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("event: "):
                    event_type = line[7:]
                elif line == "":
                    if event_type == "closing":
                        self.closings += 1
                    elif event_id is not None:
                        self.ids.append(event_id)
                    event_id, event_type = None, ""
                    if stop.is_set():
                        return


# -- resources ----------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float
    run: int
    rss_kb: int
    fds: int
    threads: int
    tasks: int | None


def proc_sample(pid: int) -> tuple[int, int, int] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(values["VmRSS"].split()[0]), fds, int(values["Threads"])


def steady_rise(values: list[float], slack: float) -> bool:
    """True when each third of the series (after the first fifth, the warm-up) has a higher median
    than the one before, and the last exceeds the first by more than `slack`."""
    values = values[len(values) // 5 :]
    if len(values) < 9:
        return False
    third = len(values) // 3
    medians = [
        sorted(part)[len(part) // 2] for part in (values[:third], values[third:-third], values[-third:])
    ]
    return medians[0] < medians[1] < medians[2] and medians[2] - medians[0] > slack


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Soak:
    minutes: float
    rng: random.Random
    dovecot: Dovecot
    gateway: Gatewayd
    users: list[str]
    sink: SinkHandler
    mails: list[Mail] = field(default_factory=list)
    later_deleted_at: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    chaos: Counter[str] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)
    daemon_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    dovecot_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def deliver(self, number: int) -> None:
        user = self.rng.choice(self.users)
        roll = self.rng.random()
        tag = "[move]" if roll < 0.2 else "[flag]" if roll < 0.4 else "[reply]" if roll < 0.55 else ""
        to_later = self.rng.random() < 0.1
        message_id, raw = compose(number, user, "" if to_later else tag)
        mail = Mail(message_id, user, DELETED_FOLDER if to_later else "INBOX", time.time(), None)
        self.mails.append(mail)
        try:
            if to_later:
                client = imap_client(self.dovecot, user)
                try:
                    typ, _ = client.append(DELETED_FOLDER, None, None, raw)
                    mail.delivered = typ == "OK" or False
                finally:
                    client.logout()
            else:
                with smtplib.LMTP(self.dovecot.host, self.dovecot.lmtp_port, timeout=10) as lmtp:
                    lmtp.sendmail(f"sender{number}@sender.example.org", [user], raw)
                mail.delivered = True
        except (OSError, smtplib.SMTPException, imaplib.IMAP4.error):
            mail.delivered = None  # settled against the server's mail at the end

    async def deliveries(self, end: float) -> None:
        number = 0
        started = time.monotonic()
        while time.monotonic() < end:
            # 0.5 to 6.5 messages a second, in a four-minute wave, with random gaps.
            rate = 3.5 + 3 * math.sin((time.monotonic() - started) / 240 * 2 * math.pi)
            number += 1
            async with self.dovecot_lock:
                await asyncio.to_thread(self.deliver, number)
            await asyncio.sleep(self.rng.expovariate(rate))

    async def chaos_loop(self, end: float, session: aiohttp.ClientSession) -> None:
        actions = {
            "kick": (self.kick, 3),
            "kill_imap": (self.kill_imap, 3),
            "restart_dovecot": (self.restart_dovecot, 2),
            "sighup": (self.sighup, 3),
            "recreate_folder": (self.recreate_folder, 2),
            "kill9_gatewayd": (lambda: self.kill9(session), 1),
        }
        names = list(actions)
        weights = [actions[name][1] for name in names]
        while True:
            await asyncio.sleep(self.rng.uniform(8, 30))
            if time.monotonic() >= end:
                return
            name = self.rng.choices(names, weights)[0]
            log(f"chaos: {name}")
            self.chaos[name] += 1
            try:
                await actions[name][0]()
            except Exception as exc:  # a chaos step that fails is reported, the run goes on
                log(f"chaos {name} failed: {exc!r}")
                self.chaos[f"{name} failed"] += 1

    async def kick(self) -> None:
        user = self.rng.choice(self.users)
        await asyncio.to_thread(
            subprocess.run,
            ["doveadm", "-c", str(self.dovecot.config_path), "kick", user],
            capture_output=True,
            check=False,
        )

    async def kill_imap(self) -> None:
        assert self.dovecot.process is not None
        pids = imap_processes(self.dovecot.process.pid)
        if pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.rng.choice(pids), signal.SIGKILL)

    async def restart_dovecot(self) -> None:
        async with self.dovecot_lock:
            await asyncio.to_thread(self.dovecot.restart)

    async def sighup(self) -> None:
        async with self.daemon_lock:
            if self.gateway.process is not None:
                self.gateway.process.send_signal(signal.SIGHUP)

    async def recreate_folder(self) -> None:
        user = self.rng.choice(self.users)

        def recreate() -> None:
            client = imap_client(self.dovecot, user)
            try:
                self.later_deleted_at[user].append(time.time())
                client.delete(DELETED_FOLDER)
                time.sleep(self.rng.uniform(0.2, 3))
                client.create(DELETED_FOLDER)
            finally:
                client.logout()

        async with self.dovecot_lock:
            await asyncio.to_thread(recreate)

    async def kill9(self, session: aiohttp.ClientSession) -> None:
        async with self.daemon_lock:
            self.gateway.kill()
            await asyncio.sleep(self.rng.uniform(0.5, 3))
            self.gateway.start()
            await self.gateway.wait_up(session)

    async def sampler(self, stop: asyncio.Event, session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with self.daemon_lock:
                pid = self.gateway.pid
                if pid is None and self.gateway.process is not None:
                    exited = f"run {self.gateway.runs}: status {self.gateway.process.returncode}"
                    self.unexpected_exits.append(exited)
                    log(f"gatewayd exited unexpectedly ({exited}); restarting")
                    self.gateway.start()
                    await self.gateway.wait_up(session)
                    pid = self.gateway.pid
                proc = proc_sample(pid) if pid is not None else None
                body = await self.gateway.health(session)
            if proc is not None:
                tasks = body.get("tasks") if body is not None else None
                self.samples.append(Sample(time.monotonic(), self.gateway.runs, *proc, tasks))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5)


async def stored_events(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    """Every stored event, oldest first, from the JSON listing."""
    events: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "500"} | ({"cursor": cursor} if cursor else {})
        async with session.get(f"{url}/v1/events", headers=AUTH, params=params) as response:
            body = await response.json()
        events.extend(body["events"])
        cursor = body["next_cursor"]
        if cursor is None:
            return events[::-1]


def message_key(event: dict[str, Any]) -> str | None:
    value = event["data"].get("message_id")
    return value.strip("<>") if isinstance(value, str) else None


async def settle(
    soak: Soak, session: aiohttp.ClientSession, clients: list[SseClient]
) -> list[dict[str, Any]]:
    """Wait (up to 3 minutes) until every delivered message is announced and every client caught up."""
    deadline = time.monotonic() + 180
    expected = {mail.message_id for mail in soak.mails if mail.delivered and mail.folder == "INBOX"}
    while True:
        events = await stored_events(session, soak.gateway.url)
        seen = {message_key(e) for e in events if e["type"].startswith("message.received")}
        last = events[-1]["id"] if events else None
        caught_up = all(client.ids and client.ids[-1] == last for client in clients)
        if (expected <= seen and caught_up) or time.monotonic() > deadline:
            return events
        await asyncio.sleep(2)


def report(soak: Soak, events: list[dict[str, Any]], clients: list[SseClient], server_ids: set[str]) -> bool:
    ok = True
    received = Counter(message_key(e) for e in events if e["type"].startswith("message.received"))
    by_type = Counter(e["type"] for e in events)
    print("\n== what ran")
    print(f"mailboxes {len(soak.users)} x folders {FOLDERS}; gatewayd runs: {soak.gateway.runs}")
    print(f"chaos: {dict(soak.chaos)}")
    print(f"events stored: {len(events)} {dict(by_type)}")
    uncertain = [m for m in soak.mails if m.delivered is None]
    print(
        f"mail sent: {len(soak.mails)} (to Later: {sum(m.folder == DELETED_FOLDER for m in soak.mails)}; "
        f"answer lost: {len(uncertain)})"
    )

    print("\n== exactly one message.received* per delivered message")
    missing, doubled, lost_with_folder = [], [], []
    for mail in soak.mails:
        count = received[mail.message_id]
        delivered = mail.delivered or (mail.delivered is None and mail.message_id in server_ids)
        if count > 1:
            doubled.append(mail.message_id)
        elif count == 0 and delivered:
            deleted_after = any(at > mail.sent_at for at in soak.later_deleted_at[mail.user])
            if mail.folder == DELETED_FOLDER and deleted_after:
                lost_with_folder.append(mail.message_id)
            else:
                missing.append(mail.message_id)
    strangers = [key for key in received if key not in {m.message_id for m in soak.mails}]
    print(f"missing: {len(missing)} {missing[:10]}")
    print(f"announced more than once: {len(doubled)} {doubled[:10]}")
    print(f"in Later when it was deleted, never announced (allowed): {len(lost_with_folder)}")
    print(f"events of mail never sent: {len(strangers)} {strangers[:10]}")
    ok &= not missing and not doubled and not strangers

    print("\n== every SSE client saw every event once, in order")
    store_ids = [e["id"] for e in events]
    for client in clients:
        dupes = [i for i, n in Counter(client.ids).items() if n > 1]
        same = client.ids == store_ids
        print(
            f"{client.name:>14}: {len(client.ids)} events, {client.connections} connections, "
            f"{client.closings} closing events, duplicates {len(dupes)}, "
            f"identical to the store: {same}, errors {dict(client.errors)}"
        )
        if not same:
            ok = False
            gone = sorted(set(store_ids) - set(client.ids), key=int)
            print(f"{'':>16}missing ids {gone[:10]}; duplicates {dupes[:10]}")

    print("\n== auto-replies at most once")
    in_reply_to = Counter(
        m.group(1).decode()
        for raw in soak.sink.replies
        if (m := re.search(rb"^In-Reply-To: <([^>]+)>", raw, re.MULTILINE | re.IGNORECASE))
    )
    outcomes = Counter(
        (e["data"].get("auto_reply") or {}).get("outcome") for e in events if e["data"].get("auto_reply")
    )
    twice = [key for key, n in in_reply_to.items() if n > 1]
    print(
        f"replies at the sink: {len(soak.sink.replies)}, to {len(in_reply_to)} messages; "
        f"event outcomes {dict(outcomes)}; sent twice: {len(twice)} {twice[:10]}"
    )
    ok &= not twice

    print("\n== resources (per gatewayd run; minute by minute)")
    if soak.unexpected_exits:
        print(f"gatewayd exited unexpectedly: {soak.unexpected_exits}")
        ok = False
    for run in sorted({s.run for s in soak.samples}):
        series = [s for s in soak.samples if s.run == run]
        start = series[0].at
        print(f"run {run}: {len(series)} samples over {series[-1].at - start:.0f} s")
        print("   min   rss_kb  fds  threads  tasks")
        shown = -1
        for s in series:
            minute = int((s.at - start) // 60)
            if minute != shown:
                shown = minute
                print(f"  {minute:>4} {s.rss_kb:>8} {s.fds:>4} {s.threads:>8} {s.tasks!s:>6}")
        checks = {
            "rss_kb": ([s.rss_kb for s in series], 8192.0),
            "fds": ([s.fds for s in series], 5.0),
            "threads": ([s.threads for s in series], 2.0),
            "tasks": ([s.tasks for s in series if s.tasks is not None], 20.0),
        }
        for name, (values, slack) in checks.items():
            if steady_rise([float(v) for v in values], slack):
                print(f"  STEADY RISE in {name}: {values[len(values) // 5]} -> {values[-1]}")
                ok = False
    print(f"\n{'OK' if ok else 'ANOMALIES FOUND'}")
    return ok


async def soak_run(args: argparse.Namespace, work: Path) -> bool:
    rng = random.Random(args.seed)
    dovecot = Dovecot.create(work / "dovecot")
    dovecot.start()
    sink = SinkHandler()
    smtp_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    gateway = Gatewayd(work, free_port())
    users = [f"soak{n}" for n in range(1, args.mailboxes + 1)]
    for user in users:
        create_folders(dovecot, user)
    write_config(gateway, dovecot, users, smtp_port)
    soak = Soak(args.minutes, rng, dovecot, gateway, users, sink)
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as session:
            gateway.start()
            # Idle first: mail delivered before a watcher's first connection is never announced.
            await gateway.wait_up(session, every_watcher_idle=True)
            log(f"gatewayd up on {gateway.url}; work directory {work}")
            clients = [
                SseClient("steady", "steady", gateway.url),
                SseClient("last-event-id", "last_event_id", gateway.url),
                SseClient("since", "since", gateway.url),
            ]
            end = time.monotonic() + args.minutes * 60
            async with asyncio.TaskGroup() as group:
                followers = [group.create_task(c.run(session, stop, rng)) for c in clients]
                sampler = group.create_task(soak.sampler(stop, session))
                await asyncio.gather(soak.deliveries(end), soak.chaos_loop(end, session))
                log(f"{len(soak.mails)} messages sent; settling")
                events = await settle(soak, session, clients)
                stop.set()
                for task in followers:
                    task.cancel()
                await sampler
            server_ids = await asyncio.to_thread(maildir_message_ids, dovecot, users)
            health = await gateway.health(session) or {}
            per_folder = sorted({w["mailbox_id"] for w in health.get("watchers", []) if not w.get("notify")})
            ok = report(soak, events, clients, server_ids)
            # Not a failure, but a cost the chaos can leave behind: the account's folders on a
            # connection each instead of its one NOTIFY connection.
            print(f"mailboxes on one connection per folder at the end: {len(per_folder)} {per_folder}")
            return ok
    finally:
        status = gateway.stop()
        log(f"gatewayd stopped: exit status {status}")
        controller.stop()
        dovecot.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--mailboxes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gatewayd-soak-"))
    try:
        return 0 if asyncio.run(soak_run(args, work)) else 1
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
