"""The `gatewayd` command: run, check-config, check-message, learn, token new|create|list|revoke, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatewayd import startup_signals
from gatewayd.cli_config import DEFAULT_CONFIG, EXIT_CONFIG, load_for_command
from gatewayd.cli_tokens import add_token_commands
from gatewayd.config import (
    DEFAULT_TENANT,
    Config,
    ConfigError,
    MailboxConfig,
    hash_token,
    new_token,
    parse_config,
)
from gatewayd.fdlimit import raise_open_file_limit
from gatewayd.logs import setup_logging
from gatewayd.message import FetchedMessage, parse
from gatewayd.pipeline import Pipeline
from gatewayd.store import StoreUnavailable
from gatewayd.store.ownership import OwnerMismatch, refuse_root_run

if TYPE_CHECKING:  # imported when used: the commands that do not score start faster without it
    from gatewayd.pipeline.learning import TenantLearning

EXIT_FAILED = 1  # what was asked failed: e.g. `learn` found no mail
EXIT_CANNOT_START = 3  # a store cannot be opened or is another daemon's; the listen address


def _load(path: str, *, secrets: bool = True) -> Config | None:
    """The configuration, its weights and its rules checked; None, with every problem on stderr.
    `secrets=False` for a command that never logs in: it checks the password keys without reading
    the passwords, which outside the service may be unreadable (a credential, the service's file)."""
    from gatewayd.pipeline.build import check_weights
    from gatewayd.rules.load import load_rules  # errors naming the rule and the key

    return load_for_command(path, secrets=secrets, checks=(check_weights, load_rules))


def cmd_run(args: argparse.Namespace) -> int:
    from gatewayd.signals import RunSignals

    signals = RunSignals()
    signals.catch()  # before anything slow: loading the rules, importing aiohttp
    if (held := startup_signals.take()) is not None:
        signals.received(held)  # it came while gatewayd was being imported
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    refuse_root_run(config.store.path)
    if config.pipeline is not None:  # every tenant's learning file lies beside the default one's
        refuse_root_run(config.pipeline.learning.path, "learning store")
    setup_logging(config.log_level, config.secrets())
    raise_open_file_limit(config)  # before server.max_connections defaults to half of it
    from gatewayd.app import ListenError, serve

    try:
        return asyncio.run(serve(config, signals))
    except ListenError as exc:
        print(f"gatewayd: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    mailboxes = config.mailboxes()
    print(f"{args.config}: OK ({len(config.agents)} agents, {len(mailboxes)} mailboxes)")
    return 0


def cmd_token_new(_args: argparse.Namespace) -> int:
    token = new_token()
    print(f"token: {token}")
    print("# paste into the agent's token_sha256 list; the token itself is not stored anywhere:")
    print(f'token_sha256: ["{hash_token(token)}"]')
    return 0


def _pipeline_config(path: str | None) -> Config | None:
    """The named config, or the defaults (no learning store) when there is none."""
    if path is not None:
        return _load(path, secrets=False)
    return parse_config({"agents": [{"id": "check-message"}]}, env={})


def _message_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return files


def cmd_check_message(args: argparse.Namespace) -> int:
    if args.mailbox is not None and args.config is None:
        print("check-message: --mailbox needs the configuration that has it: -c CONFIG", file=sys.stderr)
        return EXIT_CONFIG
    config = _pipeline_config(args.config)
    if config is None:
        return EXIT_CONFIG
    setup_logging("warning")
    from gatewayd.pipeline.build import build_pipeline
    from gatewayd.rules.dry_run import dry_run_mailbox, with_rules

    try:
        mailbox = dry_run_mailbox(config, args.mailbox)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return EXIT_CONFIG
    learning = _learning_of(config, mailbox) if args.config and config.pipeline else None
    if args.config and args.mailbox is None and config.mailboxes():
        # Not an error (the global verdicts are still worth seeing), but not what a mailbox gets.
        print(
            "check-message: without --mailbox, the global rules only and no per-mailbox checks"
            " (its trusted_authserv_ids, its own address, whom it has written to, its tenant's"
            " learning); pass --mailbox ID to see what that mailbox would get",
            file=sys.stderr,
        )
    try:
        pipeline = with_rules(config, build_pipeline(config, learning))
        return asyncio.run(_check_messages(pipeline, args.paths, args.json, mailbox))
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return EXIT_CONFIG
    finally:
        if learning is not None:
            learning.close()


def _learning_of(config: Config, mailbox: MailboxConfig | None) -> TenantLearning | None:
    """The learning store check-message scores with: the mailbox's tenant's, else the default
    tenant's; None, said on stderr, when that tenant has none yet (nothing is made)."""
    from gatewayd.pipeline.build import open_existing_learning
    from gatewayd.pipeline.learning import tenant_path

    assert config.pipeline is not None
    tenant = mailbox.tenant if mailbox is not None else DEFAULT_TENANT
    learning = open_existing_learning(config, tenant, command="check-message")
    if learning is None:
        path = tenant_path(config.pipeline.learning.path, tenant)
        print(
            f'check-message: tenant "{tenant}" has no learning store yet ({path}): scored without'
            " learning (no Bayes, spam signatures, sender reputation or correspondents)",
            file=sys.stderr,
        )
    return learning


async def _check_messages(
    pipeline: Pipeline, paths: Sequence[str], as_json: bool, mailbox: MailboxConfig | None = None
) -> int:
    status = 0
    for path in _message_files(paths):
        try:
            raw = path.read_bytes()
        except OSError as exc:
            print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
            status = 1
            continue
        outcome = await pipeline.run(parse(_as_fetched(raw)), mailbox)
        if as_json:
            line: dict[str, object] = {"file": str(path), "type": outcome.type, "data": outcome.data}
            if outcome.drop:
                line["dropped"] = True  # a rule's drop_event: no event would be published
            print(json.dumps(line, ensure_ascii=False))
        else:
            shown = outcome.type + (" (dropped by drop_event)" if outcome.drop else "")
            print(_explain(path, shown, outcome.data))
    return status


def _as_fetched(raw: bytes) -> FetchedMessage:
    return FetchedMessage(
        folder="INBOX", uid=0, uidvalidity=0, raw=raw, size=len(raw), flags=(), internaldate=None
    )


def _explain(path: Path, event_type: str, data: dict[str, Any]) -> str:
    lines = [f"{path}: {event_type}"]
    spam, auth, injection = data.get("spam"), data.get("auth"), data.get("injection")
    if isinstance(spam, dict):
        lines.append(f"  spam: {spam.get('verdict')} (score {spam.get('score')})")
        lines += [_finding(f) for f in spam.get("findings", [])]
    if isinstance(auth, dict):
        lines.append(f"  auth: {auth.get('verdict')}")
        lines += [_finding(f) for f in auth.get("findings", [])]
    if isinstance(injection, dict):
        lines.append(f"  injection: {injection.get('level')} (score {injection.get('score')})")
        lines += [_finding(f) for f in injection.get("findings", [])]
        unread = injection.get("not_scanned", [])
        lines += [f"    not scanned: {part['location']} ({part['reason']})" for part in unread]
    for error in data.get("pipeline_errors", []):
        lines.append(f"  error in {error['stage']}: {error['error']} {error['detail']}")
    from gatewayd.rules.dry_run import explain

    lines += explain(data)
    timings = ", ".join(f"{name} {ms:.2f} ms" for name, ms in data.get("pipeline_ms", {}).items())
    lines.append(f"  time: {timings}")
    return "\n".join(lines)


def _finding(finding: dict[str, Any]) -> str:
    where = f" (in {finding['location']})" if finding.get("location") else ""
    return f"    {finding['score']:+7.2f} {finding['symbol']}: {finding.get('detail', '')}{where}"


def cmd_learn(args: argparse.Namespace) -> int:
    if not args.spam and not args.ham:
        print("learn: nothing to learn: give --spam DIR and/or --ham DIR", file=sys.stderr)
        return EXIT_CONFIG
    config = _load(args.config, secrets=False)
    if config is None or config.pipeline is None:
        return EXIT_CONFIG
    from gatewayd.pipeline.build import learning_tenants, open_tenant_store
    from gatewayd.pipeline.learning import HAM, SPAM, learn_from_dirs

    tenants = learning_tenants(config)
    if args.tenant not in tenants:
        print(f'unknown tenant "{args.tenant}"; the configuration has: {", ".join(tenants)}', file=sys.stderr)
        return EXIT_CONFIG
    missing = [d for d in [*args.spam, *args.ham] if not Path(d).is_dir()]
    if missing:
        print(f"not a directory: {', '.join(missing)}", file=sys.stderr)
        return EXIT_CONFIG
    learning = open_tenant_store(config.pipeline, args.tenant, command="learn")
    try:
        counts = learn_from_dirs(
            learning, [Path(d) for d in args.spam], [Path(d) for d in args.ham], _learn_progress
        )
    finally:
        learning.close()
    print(f"spam: {counts[SPAM]}, ham: {counts[HAM]}, skipped: {counts['skipped']}")
    if counts["messages"] == 0:  # no mail at all; mail already trained is a success, as a re-run
        print(
            f"learn: no mail found: {counts['skipped']} files skipped (not mail, or unreadable)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def _learn_progress(line: str) -> None:
    print(f"learn: {line}", file=sys.stderr, flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from gatewayd.app import ListenError
    from gatewayd.demo import run_demo

    setup_logging("warning")
    try:
        return asyncio.run(run_demo(port=args.port, messages=args.messages, interval=args.interval))
    except ListenError as exc:
        print(f"gatewayd: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START


def _bounded(convert: Callable[[str], float], ok: Callable[[float], bool], want: str) -> Callable[[str], Any]:
    """An argparse type: a number that `ok` accepts, else a usage error saying what is expected."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            value = math.nan
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatewayd", description="Mail gateway for AI agents: IMAP IDLE → events over SSE."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the gateway")
    run.add_argument("-c", "--config", required=True, help="YAML configuration file")
    run.set_defaults(func=cmd_run)

    check = commands.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("-c", "--config", required=True, help="YAML configuration file")
    check.set_defaults(func=cmd_check_config)

    token = commands.add_parser("token", help="bearer tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    token_new = token_commands.add_parser("new", help="print a fresh token and its sha256 config line")
    token_new.set_defaults(func=cmd_token_new)
    add_token_commands(token_commands)

    check_message = commands.add_parser(
        "check-message", help="run the pipeline offline on .eml files and show verdicts and findings"
    )
    check_message.add_argument(
        "paths", nargs="+", metavar="FILE.eml", help="message files or folders of them"
    )
    check_message.add_argument("-c", "--config", help="configuration (pipeline settings and learning store)")
    check_message.add_argument("--json", action="store_true", help="one JSON line per message")
    check_message.add_argument(
        "--mailbox", help="apply this mailbox's rules too (default: the global rules only); nothing is done"
    )
    check_message.set_defaults(func=cmd_check_message)

    learn = commands.add_parser("learn", help="train the spam stage on folders of labelled messages")
    learn.add_argument(
        "-c",
        "--config",
        default=DEFAULT_CONFIG,
        help=f"YAML configuration file, for its learning store (default: {DEFAULT_CONFIG})",
    )
    learn.add_argument(
        "--tenant",
        default=DEFAULT_TENANT,
        metavar="ID",
        help=f"the tenant whose mailboxes learn from these messages (default: {DEFAULT_TENANT})",
    )
    learn.add_argument(
        "--spam",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder (or Maildir) of spam, any depth (repeatable)",
    )
    learn.add_argument(
        "--ham",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder (or Maildir) of ham, any depth (repeatable)",
    )
    learn.set_defaults(func=cmd_learn)

    commands.add_parser(
        "bench", help="run the benchmarks against a sandbox Dovecot (gatewayd bench --help)", add_help=False
    )

    demo = commands.add_parser("demo", help="try gatewayd against a throwaway Dovecot")
    demo.add_argument(
        "--port",
        type=_bounded(int, lambda port: 0 <= port <= 65535, "a port 0-65535"),
        default=8025,
        help="HTTP port (default 8025; 0: any free port)",
    )
    demo.add_argument(
        "--messages",
        type=_bounded(int, lambda n: n >= 0, "a number of messages >= 0"),
        default=0,
        help="stop after N messages (default: run until Ctrl-C)",
    )
    demo.add_argument(
        "--interval",
        type=_bounded(float, lambda seconds: 0 < seconds < 86400, "seconds above 0 and below a day"),
        default=2.0,
        help="seconds between sample messages",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # The benchmarks parse their own options (scenarios, --quick, --json, ...) and take over
        # the stop signals held since start-up.
        from gatewayd.bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.func is not cmd_run:
            startup_signals.release()  # `run` takes them over; the other commands keep the defaults
        return int(args.func(args))
    except StoreUnavailable as exc:  # any command: a store's file cannot be opened, or is in use
        print(f"gatewayd: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    except OwnerMismatch as exc:  # run as root on another user's store: stays so until run otherwise
        print(f"gatewayd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
