"""The gatewayd configuration every scenario shares: one agent, its token, the README's rules."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from gatewayd.bench.harness import Bench
from gatewayd.config import ServerConfig, hash_token
from gatewayd.sandbox.dovecot import PASSWORD

TOKEN = "bench-token-0123456789"

# Every scenario's gatewayd runs the README's example rules (its auto-reply as a flag: the
# benchmarks have no SMTP peer), one with a regular expression. The generated mail matches none
# of them, so the rules stage evaluates and plans for each message and acts on none; only the
# latency scenario's acting phase sends a mailing list's, which `newsletters` tags.
RULES: list[dict[str, Any]] = [
    {"name": "newsletters", "if": {"list_id": True}, "then": [{"add_keywords": ["newsletter"]}]},
    {
        "name": "invoices",
        "if": {"from": "@billing.example.com", "has_attachments": True},
        "then": [
            {"move": {"folder": "Invoices", "create": True}},
            {"add_keywords": ["invoice"]},
            "mark_read",
        ],
        "stop": True,
    },
    {
        "name": "support",
        "if": {"all": [{"subject": {"regex": r"(?i)\b(support|help)\b"}}, {"not": {"from": "@example.com"}}]},
        "then": [{"add_flags": "\\Flagged"}],
    },
    {
        "name": "phishing",
        "if": {"any": [{"spam_verdict": "spam"}, {"auth": "fail"}, {"injection_score": {"over": 0.8}}]},
        "then": [{"move": "Junk"}, {"add_keywords": ["quarantined"]}],
    },
]


def gateway_config(
    bench: Bench,
    users: list[str],
    store: Path,
    port: int,
    watch: str = "always",
    grace: float = 1.0,
    rules: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One agent `bench` with a mailbox per user (mailbox id = user name), full default pipeline."""
    dovecot = bench.dovecot
    mailboxes = [
        {
            "id": user,
            "watch": watch,
            "imap": {
                "host": dovecot.host,
                "port": dovecot.imap_port,
                "tls": "none",
                "username": user,
                "password": PASSWORD,
                "folders": ["INBOX"],
            },
        }
        for user in users
    ]
    server: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "shutdown_grace_seconds": grace,
        "retry_ms": 1000,
    }
    if "max_streams_per_token" in {f.name for f in fields(ServerConfig)}:
        server["max_streams_per_token"] = None  # the benchmarks open thousands with one token
    return {
        "server": server,
        "store": {"path": str(store)},
        "logging": {"level": "warning"},
        "agents": [{"id": "bench", "token_sha256": [hash_token(TOKEN)], "mailboxes": mailboxes}],
        "rules": RULES if rules is None else rules,
    }
