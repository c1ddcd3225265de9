"""The rules as the pipeline's last stage, and the recovery of what a crash interrupted.

For each message: evaluate the rules on the event data (the earlier stages' verdicts included),
plan the actions, and, when the plan changes anything outside the event, journal it before acting
(see gatewayd.store.journal), carry it out over the watcher's own connection, and hand the event
the state after the actions. Offline (`gatewayd check-message`, no `actions`) nothing is done: every
action is reported as `dry_run`, after the same safety checks.

`recover(mailbox, actions)` runs when a watcher has selected its folder, before it looks for new
mail: it finishes the journaled messages of that folder that have no stored event yet (the crash
came between acting and publishing), including messages already moved away, which the folder's UID
sync would never see again.

A message a rule moves or copies into another watched folder of the mailbox is announced once, from
where it was: the destination's watcher drops it when the journal has it `placed` there, waits for
a move still in flight into its folder (`gatewayd.rules.arrivals`), and claims what an interrupted
move put there before it syncs (`recover`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gatewayd.config import MailboxConfig
from gatewayd.events import Event, NewEvent
from gatewayd.imap.act import MailActions
from gatewayd.imap.session import ImapConnectionLost
from gatewayd.message import ParsedMessage, from_address
from gatewayd.message.identity import Identity, header_digest
from gatewayd.pipeline import StageContext, StageResult
from gatewayd.rules import compose
from gatewayd.rules.arrivals import Arrivals
from gatewayd.rules.execute import (
    ActionInterrupted,
    Executor,
    Trainer,
    describe,
    identity_of,
    message_key,
    unexpected_outcome,
)
from gatewayd.rules.facts import Facts
from gatewayd.rules.load import RuleBook
from gatewayd.rules.match import InlineBudget, NeedsMoreTime
from gatewayd.rules.model import Rule
from gatewayd.rules.plan import DRY_RUN, ERROR, OK, SKIPPED, build, evaluate, has_effects, result
from gatewayd.rules.renderer import TemplateRenderer
from gatewayd.rules.safety import refuse_automatic, refuse_reply, reply_limited, reply_target
from gatewayd.rules.template import context_for
from gatewayd.send.outbox import Outbox
from gatewayd.store import EventStore
from gatewayd.store.journal import OPEN, PLACED, JournalEntry, OutgoingMail, Reservation, RuleJournal

log = logging.getLogger(__name__)

# The stage bounds each action itself (IMAP read timeout, SMTP timeout); the pipeline must never
# cancel it in the middle of one.
RULES_TIMEOUT_SECONDS = 3600.0
# How long a watcher waits for a move in flight into its folder, in IMAP read timeouts: the MOVE's
# answer, and the search for the message when it came without COPYUID (a login, a SELECT, ...).
IN_FLIGHT_READ_TIMEOUTS = 4
_NO_PLAN = build(())


class RulesStage:
    name = "rules"
    provides: tuple[str, ...] = ("rules_applied", "labels", "auto_reply", "rules_errors", "moved_from")

    def __init__(
        self,
        book: RuleBook,
        journal: RuleJournal | None = None,
        outbox: Outbox | None = None,
        learning: Trainer | None = None,
        store: EventStore | None = None,
        publish: Callable[[list[Event]], None] | None = None,
    ) -> None:
        self.book = book
        self._journal = journal
        self._outbox = outbox
        self._learning = learning
        self._store = store
        self._publish = publish
        self.renderer = TemplateRenderer()
        self.arrivals = Arrivals()

    async def check(self, message: ParsedMessage, context: StageContext) -> StageResult:
        mailbox, data, actions = context.mailbox, context.data, context.actions
        live = actions is not None and self._journal is not None and mailbox is not None
        key = ""
        if live:
            assert mailbox is not None and actions is not None and self._journal is not None
            key = message_key(mailbox.id, str(data["folder"]), int(data["uidvalidity"]), int(data["uid"]))
            entry = await self._journal.get(key)
            if entry is not None:
                # Seen before: placed here by a rule (announced already), or re-fetched after a
                # crash or reconnect (its actions are never repeated).
                return await self._finish(entry, mailbox, actions, message)
            if await self._moved_here(key, data, message, mailbox):
                return StageResult(drop=True)
        book = self.book  # one version for the whole message, whatever a reload does meanwhile
        mailbox_id = mailbox.id if mailbox is not None else ""
        rules = book.for_mailbox(mailbox_id)
        facts = Facts.of(message, data)
        if rules and book.uses_regex(mailbox_id):
            matched = await evaluate_bounded(rules, facts)
        else:
            matched = evaluate(rules, facts)
        if not matched:  # the usual case: nothing to plan, compose, journal or do
            return _stage_result(result(data, _NO_PLAN, {}, facts.errors), False)
        plan = build(matched, gmail=bool(actions is not None and actions.gmail))
        try:
            mails = await self._compose(plan, matched, facts, mailbox, actions if live else None, message)
        except ImapConnectionLost as exc:  # fetching a message to forward: nothing was done yet
            raise ActionInterrupted(str(exc)) from None
        if not live:
            dry = {
                step["index"]: {"outcome": DRY_RUN, **step.get("dry", {})}
                for step in plan["steps"]
                if "preset" not in step
            }
            return _stage_result(result(data, plan, dry, facts.errors), plan["drop"])
        if not has_effects(plan):
            return _stage_result(result(data, plan, {}, facts.errors), plan["drop"])
        assert mailbox is not None and actions is not None and self._journal is not None
        record = {
            "event": {"type": context.event_type, "agent_id": mailbox.agent_id, "data": dict(data)},
            "plan": plan,
            "errors": facts.errors,
            "header_sha256": header_digest(message.raw),
        }
        try:
            entry = await self._journal.begin(
                key,
                agent_id=mailbox.agent_id,
                mailbox_id=mailbox.id,
                folder=str(data["folder"]),
                uidvalidity=int(data["uidvalidity"]),
                uid=int(data["uid"]),
                record=record,
                mails=mails,
            )
        except Exception as exc:  # nothing was done: the event says so, rather than losing the rules' part
            log.error("%s: the rules' plan could not be journaled; nothing done", mailbox.id, exc_info=exc)
            undone = "not done: the plan could not be journaled"
            outcomes = {
                step["index"]: {"outcome": ERROR, "error": undone}
                for step in plan["steps"]
                if "preset" not in step
            }
            errors = [*facts.errors, f"the rules' actions were not done: {describe(exc)}"]
            return _stage_result(result(data, plan, outcomes, errors), plan["drop"])
        return await self._finish(entry, mailbox, actions, message)

    async def _moved_here(
        self, key: str, data: Mapping[str, Any], message: ParsedMessage, mailbox: MailboxConfig
    ) -> bool:
        """Whether this new message is one a move or copy in flight is putting here (see
        gatewayd.rules.arrivals): then it is noted as placed here, and not announced."""
        folder, uid = str(data["folder"]), int(data["uid"])
        flights = self.arrivals.into(mailbox.id, folder, Identity.of(data, header_digest(message.raw)))
        if not flights:
            return False  # the usual case, without I/O
        assert self._journal is not None
        timeout = IN_FLIGHT_READ_TIMEOUTS * mailbox.imap.read_timeout_seconds
        for flight in flights:
            try:
                outcome = await asyncio.wait_for(asyncio.shield(flight.outcome), timeout)
            except TimeoutError:
                outcome = None  # still open: its recovery will find the message here
            entry = await self._journal.get(key)
            if entry is not None and entry.state == PLACED:
                return True
            if outcome is None or (outcome.get("outcome") == OK and outcome.get("uid") in (None, uid)):
                await self._journal.place(key, mailbox.id, folder, int(data["uidvalidity"]), uid)
                return True
        return False

    async def _finish(
        self, entry: JournalEntry, mailbox: MailboxConfig, actions: MailActions, message: ParsedMessage | None
    ) -> StageResult:
        if entry.state == PLACED:
            return StageResult(drop=True)
        done = await self._complete(entry, mailbox, actions, message)
        if entry.state == OPEN:
            assert self._journal is not None
            actions.after_store(functools.partial(self._finished, entry))
        return _stage_result(done["data"], done["drop"])

    async def _finished(self, entry: JournalEntry) -> None:
        """Finish the entry: its mail left to retry is the outbox's from now on."""
        assert self._journal is not None
        await self._journal.finish([entry.key])
        if self._outbox is not None and any(step["kind"] == "send" for step in entry.record["plan"]["steps"]):
            self._outbox.wake()

    async def _complete(
        self, entry: JournalEntry, mailbox: MailboxConfig, actions: MailActions, message: ParsedMessage | None
    ) -> dict[str, Any]:
        """Run what is left of the plan; the rules' part of the event, kept in the journal."""
        if entry.result is not None:
            return entry.result
        assert self._journal is not None
        executor = Executor(
            self._journal, entry, mailbox, actions, self._outbox, self._learning, message, self.arrivals
        )
        outcomes = await executor.run()
        record = entry.record
        done = {
            "data": result(record["event"]["data"], record["plan"], outcomes, list(record.get("errors", []))),
            "drop": bool(record["plan"]["drop"]),
        }
        await self._journal.complete(entry.key, done, executor.deferred)
        return done

    async def _compose(
        self,
        plan: dict[str, Any],
        matched: list[Rule],
        facts: Facts,
        mailbox: MailboxConfig | None,
        actions: MailActions | None,
        message: ParsedMessage,
    ) -> list[OutgoingMail]:
        """Write every mail of the plan now, before any action; a refusal becomes the step's outcome."""
        mails: list[OutgoingMail] = []
        own = mailbox.address if mailbox is not None else None
        data = facts.data
        for step in plan["steps"]:
            if step["kind"] != "send":
                continue
            rule = matched[step["rule"]]
            action = rule.actions[step["action"]]
            info = {"rule": rule.name, "action": action.kind, "in_reply_to": data.get("message_id")}
            context = context_for(data, mailbox.id if mailbox else "", own, rule.name)
            try:
                if action.kind == "auto_reply":
                    target = reply_target(facts)
                    if reason := refuse_reply(facts, own, target):
                        step["preset"] = {"outcome": SKIPPED, "reason": reason}
                        continue
                    assert target is not None and action.template is not None
                    step["dry"] = {"to": [compose.text_address(target)]}
                    body = await self.renderer.render(action.template, context)
                    if actions is None or own is None:
                        continue
                    composed = compose.reply(data, own, target, body, action.get("from_name"))
                    period = action.get("period_days") * 86400
                    mails.append(
                        OutgoingMail(
                            step["index"],
                            "auto_reply",
                            own,
                            (target,),
                            composed.message,
                            composed.message_id,
                            Reservation(reply_limited(facts, target), period),
                            info,
                        )
                    )
                else:
                    if reason := refuse_automatic(facts, own):
                        step["preset"] = {"outcome": SKIPPED, "reason": reason}
                        continue
                    note = (
                        await self.renderer.render(action.template, context)
                        if action.template
                        else _default_note(rule.name)
                    )
                    recipients = tuple(action.get("to"))
                    step["dry"] = {"to": list(recipients)}
                    if actions is None or own is None:
                        continue
                    raw = await _full_message(actions, data, message, action.get("max_bytes"))
                    composed = compose.forward(data, own, recipients, note, raw)
                    mails.append(
                        OutgoingMail(
                            step["index"],
                            "forward",
                            own,
                            recipients,
                            composed.message,
                            composed.message_id,
                            None,
                            info,
                        )
                    )
            except ValueError as exc:
                step["preset"] = {"outcome": ERROR, "error": str(exc)[:300]}
            except ImapConnectionLost:
                raise
            except Exception as exc:  # a bug or a surprise in one mail must not cost the others
                step["preset"] = unexpected_outcome(plan, step, exc)
        return mails

    async def recover(self, mailbox: MailboxConfig, actions: MailActions) -> None:
        """Finish the journaled messages of this folder whose event is not stored yet."""
        if self._journal is None or self._store is None:
            return
        await self._claim_arrivals(mailbox, actions)
        for entry in await self._journal.open_entries(mailbox.id, actions.folder):
            log.warning(
                "%s/%s: finishing UID %s after an interruption", mailbox.id, actions.folder, entry.uid
            )
            done = await self._complete(entry, mailbox, actions, None)
            if not done["drop"]:
                event = entry.record["event"]
                data = {
                    "pipeline_ms": {},
                    "pipeline_errors": [],
                    **event["data"],
                    **done["data"],
                    "recovered": True,
                }
                new = NewEvent(
                    event["type"],
                    event["agent_id"],
                    mailbox.id,
                    data,
                    entry.key,
                    from_address=from_address(data),
                )
                stored = await self._store.append([new])
                if self._publish is not None:
                    self._publish(stored)
            await self._finished(entry)

    async def _claim_arrivals(self, mailbox: MailboxConfig, actions: MailActions) -> None:
        """Mark as placed here what another folder's interrupted move or copy (an intent without
        an outcome) already put in this folder: else this folder's sync, when it runs before that
        folder's recovery, would announce it as new mail, and the recovery announce it again.

        A move still in flight (its intent is open while its MOVE awaits the answer) needs no
        search: the sync that fetches the message here waits for its outcome (`_moved_here`).
        Only an intent a crash or a lost connection left open is looked for, over a second
        connection."""
        assert self._journal is not None
        for entry in await self._journal.open_entries(mailbox.id):
            identity = identity_of(entry)
            if entry.folder == actions.folder or not identity.findable:
                continue  # without an identity it cannot be found (nor is it by the recovery)
            if self.arrivals.into(mailbox.id, actions.folder, identity):
                continue
            for step in entry.record["plan"]["steps"]:
                interrupted = entry.steps.get(step["index"], {}).get("state") == "started"
                if interrupted and step["kind"] in ("move", "copy") and step["folder"] == actions.folder:
                    found = await actions.locate(actions.folder, identity)
                    if found is not None and found.uid is not None and found.uidvalidity is not None:
                        key = message_key(mailbox.id, found.folder, found.uidvalidity, found.uid)
                        await self._journal.place(key, mailbox.id, found.folder, found.uidvalidity, found.uid)


async def evaluate_bounded(rules: Sequence[Rule], facts: Facts) -> list[Rule]:
    """`evaluate` for rules with regular expressions: on the loop while they keep within the
    short inline budget, else again from the start in a worker thread with the full one."""
    budget, reported = facts.budget, len(facts.errors)
    facts.budget = InlineBudget()  # its timeouts raise NeedsMoreTime instead of being undecided
    try:
        return evaluate(rules, facts)
    except NeedsMoreTime:
        del facts.errors[reported:]  # the full evaluation reports them again
    finally:
        facts.budget = budget
    return await asyncio.to_thread(evaluate, rules, facts)


async def _full_message(
    actions: MailActions, data: Mapping[str, Any], message: ParsedMessage, limit: int
) -> bytes:
    """The whole message for a forward: the fetched prefix, or the rest fetched now."""
    size = data.get("size")
    if isinstance(size, int) and size > limit:
        raise ValueError(f"the message is too large to forward ({size} bytes; max_bytes {limit})")
    if not data.get("truncated"):
        return message.raw
    fetched = await actions.fetch(int(data["uid"]), limit)
    if fetched is None:
        raise ValueError("the message is no longer in the folder")
    return fetched.raw


def _default_note(rule: str) -> str:
    return f'Forwarded by gatewayd (rule "{rule}"); the original message is attached.\n'


def _stage_result(data: dict[str, Any], drop: bool) -> StageResult:
    return StageResult(data=data, drop=drop)
