"""The `gatewayd` command: run, check-config, token new, demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from gatewayd.config import Config, ConfigError, hash_token, load_config, new_token

EXIT_CONFIG = 2


class _RedactSecrets(logging.Filter):
    """Defence in depth: no configured password can reach a log line, whatever logged it."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if len(s) >= 4]

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self._redact(record.getMessage()), None
        if record.exc_info:
            # Tracebacks are rendered here, once, so they pass through the redaction too.
            record.exc_text = self._redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def setup_logging(level: str, secrets: Sequence[str] = ()) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: invalid configuration:", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    secrets = [m.imap.password.reveal() for m in config.mailboxes()]
    setup_logging(config.log_level, secrets)
    from gatewayd.app import serve

    return asyncio.run(serve(config))


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


def cmd_demo(args: argparse.Namespace) -> int:
    from gatewayd.demo import run_demo

    setup_logging("warning")
    return asyncio.run(run_demo(port=args.port, messages=args.messages, interval=args.interval))


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

    demo = commands.add_parser("demo", help="try gatewayd against a throwaway Dovecot")
    demo.add_argument("--port", type=int, default=8025, help="HTTP port (default 8025)")
    demo.add_argument(
        "--messages", type=int, default=0, help="stop after N messages (default: run until Ctrl-C)"
    )
    demo.add_argument("--interval", type=float, default=2.0, help="seconds between sample messages")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
