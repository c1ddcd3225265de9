"""The daemon: wires store → watchers → bus → HTTP, and shuts down in the promised order.

Shutdown: stop accepting connections, flush the store, send every subscriber a `closing`
event, give them the grace period, close the SSE connections, then LOGOUT from IMAP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from aiohttp import web

from gatewayd import heap, native
from gatewayd.api.app import create_app
from gatewayd.api.connections import default_max_connections
from gatewayd.api.context import Gateway
from gatewayd.api.guard import guard_tokens
from gatewayd.api.server import ApiRunner
from gatewayd.bus import Bus
from gatewayd.config import Config
from gatewayd.imap.pool import WatcherPool
from gatewayd.pipeline import Pipeline
from gatewayd.pipeline.build import build_pipeline, open_learning
from gatewayd.rules.service import RulesService
from gatewayd.signals import RunSignals
from gatewayd.store.instance_lock import InstanceLock
from gatewayd.store.sqlite import SqliteEventStore
from gatewayd.store.tokens import SqliteTokenStore
from gatewayd.systemd import keep_watchdog_fed, notify, watchdog_interval

log = logging.getLogger(__name__)

# How long each shutdown step systemd is told about may take before the next tells it more: the
# grace period reports every second; logging out of IMAP takes at most 2 s, all connections at once.
STOP_STEP_USEC = 10_000_000


class ListenError(Exception):
    """The HTTP address cannot be bound (in use, not allowed): one line for the operator."""


class Daemon:
    def __init__(self, config: Config, *, settle_heap: bool = False) -> None:
        """`settle_heap`: the process is this daemon's alone (`gatewayd run`), so its collector is
        set for a long-running daemon once it is up and after each reload (gatewayd.heap)."""
        self.config = config
        self._settle_heap = settle_heap
        self.store = SqliteEventStore(Path(config.store.path))
        self.instance = InstanceLock(Path(config.store.path))
        # Run-time tokens live in the event log's file, where `gatewayd token` finds them.
        self.tokens = SqliteTokenStore(Path(config.store.path))
        self.bus = Bus()
        self.learning = open_learning(config, reload_in_background=True) if config.pipeline else None
        pipeline = build_pipeline(config, self.learning) if config.pipeline else Pipeline()
        # The user's rules: the pipeline's last stage, acting on the server (ConfigError when bad).
        self.rules = RulesService(config, self.store, self.bus.publish, self.learning)
        pipeline = self.rules.extend(pipeline)
        self.pool = WatcherPool(config, self.store, pipeline, self.bus.publish, sent_log=self.learning)
        self.gateway = Gateway(
            config, self.store, self.bus, self.pool, self.learning, tokens=self.tokens, rules=self.rules
        )
        self._runner: ApiRunner | None = None
        self._site: web.TCPSite | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._guard: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.max_connections = config.server.max_connections or default_max_connections()

    async def start(self) -> None:
        """StoreUnavailable: a store cannot be opened, or another daemon runs on it (StoreInUse);
        ListenError: the HTTP address cannot be bound."""
        self.instance.acquire()
        try:
            await self._start()
        except BaseException:
            # Close what was opened: the store's threads would otherwise keep the process alive.
            await self._close()
            raise

    async def _start(self) -> None:
        await self.store.open()
        if self.instance.may_have_lost_commits:
            skipped = await self.store.skip_lost_seqs()
            log.warning(
                "the last run ended without a clean stop and the machine went down since: the store's"
                " newest events may be lost, their messages are processed again; event ids skip %d so"
                " that none a client saw is reused",
                skipped,
            )
        await self.tokens.open()
        await self.rules.open()
        self._runner = ApiRunner(
            create_app(self.gateway),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            # A client that disconnects cancels its stream at once, releasing its watchers.
            handler_cancellation=True,
            # aiohttp's default, an hour from connecting or from the last answer, let idle and
            # header-trickling connections pile up until no file descriptor was left.
            keepalive_timeout=self.config.server.request_timeout_seconds,
            max_connections=self.max_connections,
        )
        await self._runner.setup()
        server = self.config.server
        self._site = web.TCPSite(self._runner, server.host, server.port)
        try:
            await self._site.start()
        except OSError as exc:
            host = f"[{server.host}]" if ":" in server.host else server.host
            reason = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio's text repeats the address
            raise ListenError(f"cannot listen on {host}:{server.port}: {reason}") from None
        sockets = self._runner.addresses
        self.port = sockets[0][1] if sockets else server.port
        self.rules.start()
        self.pool.start()
        self._pruner = asyncio.create_task(self._prune_forever(), name="prune")
        self._guard = asyncio.create_task(guard_tokens(self.gateway), name="token-guard")
        if self._settle_heap:
            heap.settle()
        log.info("listening on %s:%s (at most %d connections)", server.host, self.port, self.max_connections)
        notify("READY=1\nSTATUS=listening")
        if (interval := watchdog_interval()) is not None:
            self._watchdog = asyncio.create_task(keep_watchdog_fed(interval), name="watchdog")

    def reload(self) -> None:
        """SIGHUP: the configuration file read again for its rules and the agents' configured
        tokens; a file with any problem changes neither. No IMAP or SSE connection is touched but
        the streams of a configured token the file no longer gives their agent: they end."""
        fresh = self.rules.reload()
        if fresh is None:
            return
        ended = self.gateway.take_configured_tokens(fresh)
        self.config = self.gateway.config
        in_force = sum(len(agent.token_sha256) for agent in self.config.agents)
        log.info("configured tokens reloaded: %d in force, %d streams of removed ones ended", in_force, ended)
        if self._settle_heap:
            heap.settle()  # the rules and tokens just replaced were frozen

    async def stop(self) -> None:
        notify("STOPPING=1\nSTATUS=stopping: finishing the pipeline")
        gateway = self.gateway
        gateway.stopping = True
        if self._site is not None:
            await self._site.stop()  # no new connections; existing ones stay
        for task in (self._pruner, self._guard):
            if task is not None:
                task.cancel()
        # Flush: what the watchers hold is stored and published before `closing` (IMAP stays up).
        await self.pool.drain()
        gateway.begin_closing()
        # Every open stream now writes its closing event; give clients the grace period to go.
        await self._grace(self.config.server.shutdown_grace_seconds)
        gateway.grace_over.set()
        if self._runner is not None:
            await self._runner.cleanup()  # the SSE connections before the IMAP ones
            self._runner = None
        notify(f"STATUS=stopping: closing IMAP\nEXTEND_TIMEOUT_USEC={STOP_STEP_USEC}")
        await self.pool.close()
        await self._close()
        log.info("stopped")

    async def _grace(self, grace: float) -> None:
        """Until every stream is gone or `grace` is over; systemd is told each second how many are
        left, and its stop timeout extended from this event loop, so that a grace above the unit's
        TimeoutStopSec is not cut short by SIGKILL (a stuck loop extends nothing)."""
        streams = self.gateway.streams
        loop = asyncio.get_running_loop()
        ends = loop.time() + grace
        while streams and (left := ends - loop.time()) > 0:
            waiting_for = f"{len(streams)} stream{'' if len(streams) == 1 else 's'}"
            notify(f"STATUS=stopping: closing {waiting_for}\nEXTEND_TIMEOUT_USEC={STOP_STEP_USEC}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gateway.no_streams.wait(), min(left, 1.0))

    async def _close(self) -> None:
        """What start() opened, each part safe to close when it never was."""
        if self._watchdog is not None:
            self._watchdog.cancel()  # fed through the shutdown, which TimeoutStopSec bounds
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.rules.close()
        await self.tokens.close()
        await self.store.close()
        if self.learning is not None:
            self.learning.close()
        self.instance.release()

    async def _prune_forever(self) -> None:
        store_config = self.config.store
        max_age = store_config.retention_days * 86400 if store_config.retention_days else None
        while True:
            try:
                removed = await self.store.prune(max_age, store_config.retention_max_events)
                if removed:
                    log.info("retention: pruned %d events", removed)
            except Exception:
                log.exception("retention: pruning failed")
            await asyncio.sleep(store_config.prune_interval_seconds)


async def serve(config: Config, signals: RunSignals) -> int:
    """Run until SIGTERM or SIGINT; exit status 0 after a clean shutdown."""
    signals.attach(asyncio.get_running_loop())
    if signals.stop.is_set():
        return 0  # stopped before anything was opened
    for source in native.stale():
        log.warning(
            "%s changed after its compiled module was built: the build runs, not the change"
            " (rebuild: scripts/setup)",
            source,
        )
    daemon = Daemon(config, settle_heap=True)
    await daemon.start()
    # kill -HUP (systemctl reload): the rules and the configured tokens are read again.
    signals.started(daemon.reload)
    try:
        await signals.stop.wait()
    finally:
        log.info("shutting down")
        await daemon.stop()
    return 0
