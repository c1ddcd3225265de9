"""The rules in the daemon: their journal, the outbox task, the pipeline stage, and reload on SIGHUP.

Reload (`kill -HUP`, systemd's `ExecReload`) reads the configuration file again and takes only
its rules (`rules:`, `rules_file:`, global and per mailbox); everything else needs a restart.
The new rules are checked against the running mailboxes (a send rule needs the running mailbox's
`smtp:`). On any problem the rules in force stay and every problem is logged. No connection is
touched: the stage swaps its rule book, and the next message uses the new one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from gatewayd.config import Config, ConfigError, load_config
from gatewayd.events import Event, rfc3339
from gatewayd.imap.cancel import cancel_until_done
from gatewayd.pipeline import Pipeline, StageSpec
from gatewayd.rules.engine import RULES_TIMEOUT_SECONDS, RulesStage
from gatewayd.rules.execute import Trainer
from gatewayd.rules.load import RuleBook, load_rules
from gatewayd.rules.removed import close_removed
from gatewayd.send.outbox import Outbox
from gatewayd.store import EventStore
from gatewayd.store.sqlite_journal import SqliteRuleJournal

log = logging.getLogger(__name__)

# Finished journal entries are kept this long when the store keeps events forever.
DEFAULT_JOURNAL_DAYS = 30.0


class RulesService:
    def __init__(
        self,
        config: Config,
        store: EventStore,
        publish: Callable[[list[Event]], None],
        learning: Trainer | None,
    ) -> None:
        """Loads the rules: ConfigError when they are bad."""
        self.config = config
        self._store = store
        self._publish = publish
        self.journal = SqliteRuleJournal(config.store.path)
        mailboxes = {mailbox.id: mailbox for mailbox in config.mailboxes()}
        self.outbox = Outbox(self.journal, mailboxes, store, publish, learning)  # type: ignore[arg-type]
        self.stage = RulesStage(load_rules(config), self.journal, self.outbox, learning, store, publish)
        self._tasks: list[asyncio.Task[None]] = []
        self._loaded_at = rfc3339()
        self._last_reload: dict[str, object] | None = None

    @property
    def book(self) -> RuleBook:
        return self.stage.book

    def extend(self, pipeline: Pipeline) -> Pipeline:
        """The pipeline with the rules as its last stage (they see every verdict)."""
        return Pipeline([*pipeline.stages, StageSpec(self.stage, RULES_TIMEOUT_SECONDS)])

    async def open(self) -> None:
        """The journal; then what removed mailboxes and folders left open is closed, before the
        outbox runs (their mail given up for that reason, not retried) and before any watcher starts
        (none claims what an interrupted move from a removed folder put in its own: new mail there)."""
        await self.journal.open()
        configured = {mailbox.id: mailbox.imap.folders for mailbox in self.config.mailboxes()}
        try:
            await close_removed(self.journal, self.outbox, self._store, self._publish, configured)
        except Exception:  # tried again at the next start; the outbox meanwhile may retry their mail
            log.exception("rules journal: closing what removed mailboxes and folders left open failed")

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.outbox.run(), name="outbox"),
            asyncio.create_task(self._prune_forever(), name="rules-journal-prune"),
        ]

    async def close(self) -> None:
        # Cancelled until they end: a single cancellation can be lost in a wait_for, and the
        # outbox settles an attempt it cuts off before it ends.
        await cancel_until_done(self._tasks)
        await self.stage.renderer.close()
        await self.journal.close()

    def reload(self) -> Config | None:
        """Load the rules again (SIGHUP). Returns the configuration as the file has it now, for the
        daemon's other parts that reload; None, with the reasons logged, when the old rules stay
        (and nothing else may change either)."""
        try:
            fresh = self._read_config()
            config = self._with_new_rules(fresh)
            book = load_rules(config)
        except ConfigError as exc:
            log.error("rules reload failed; the %d rules in force stay", self.book.count)
            for error in exc.errors:  # a record each: the log keeps one line per record
                log.error("rules reload failed: %s", error)
            self._last_reload = {"at": rfc3339(), "outcome": "failed", "problems": len(exc.errors)}
            return None
        self.stage.book = book
        self._loaded_at = rfc3339()
        self._last_reload = {"at": self._loaded_at, "outcome": "ok"}
        files = ", ".join(map(str, book.files)) or "no rules file"
        log.info("rules reloaded: %d rules (%s)", book.count, files)
        return fresh

    def health(self) -> dict[str, object]:
        """For /healthz: the rules in force and how the last reload went. A failed reload's
        problems are only logged: they quote the configuration, and /healthz needs no token."""
        return {"count": self.book.count, "loaded_at": self._loaded_at, "last_reload": self._last_reload}

    def _read_config(self) -> Config:
        """The configuration file as it is now (the running configuration when it was built in
        memory: then only the rules files can have changed)."""
        source = self.config.source
        return self.config if source is None else load_config(source)

    def _with_new_rules(self, fresh: Config) -> Config:
        """The running configuration with `fresh`'s rules."""
        running = self.config
        if fresh is running:
            return running
        rules = {mailbox.id: mailbox.rules for mailbox in fresh.mailboxes()}
        agents = tuple(
            dataclasses.replace(
                agent,
                mailboxes=tuple(
                    dataclasses.replace(mailbox, rules=rules.get(mailbox.id, type(mailbox.rules)()))
                    for mailbox in agent.mailboxes
                ),
            )
            for agent in running.agents
        )
        return dataclasses.replace(running, rules=fresh.rules, agents=agents)

    async def _prune_forever(self) -> None:
        store = self.config.store
        days = store.retention_days or DEFAULT_JOURNAL_DAYS
        while True:
            try:
                await self.journal.prune(days * 86400)
            except Exception:
                log.exception("rules journal: pruning failed")
            await asyncio.sleep(store.prune_interval_seconds)
