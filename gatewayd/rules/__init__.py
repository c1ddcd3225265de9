"""User rules: conditions on a message and actions carried out before its event is published.

model.py       a rule (name, if, then, stop); parse_rules with errors naming rule and key
conditions.py  the tests (from, subject, header, spam_verdict, ...) and all / any / not
facts.py       what the tests read of a message, and why it may be only part of it
actions.py     the actions (move, copy, flags, keywords, mark_read, auto_reply, forward, ...)
match.py       address patterns, globs, time-bounded regular expressions
template.py    sandboxed Jinja templates for auto-replies and forwards
renderer.py    TemplateRenderer: a plain template here, one that computes in a child process
template_worker.py  that child process: renders one template at a time, under limits
safety.py      RFC 3834: when no automatic reply may be sent, and to whom one goes
compose.py     the auto-reply and forward messages
plan.py        matching rules -> ordered steps -> the event's rules_applied, labels, ...
execute.py     steps through the journal: intent, action, outcome; crash resolution
arrivals.py    moves and copies in flight, so the destination's watcher announces none twice
engine.py      RulesStage (the pipeline's last stage) and recover()
removed.py     what a mailbox or folder removed from the configuration left open: closed, announced
load.py        RuleBook: every rule of the configuration, checked; reload
syntax.py      rules as written in YAML, checked: each problem with its key path
service.py     the rules in the daemon: journal, outbox task, the stage, SIGHUP reload
dry_run.py     `gatewayd check-message`'s view: which rules would match, and what they would do
"""
