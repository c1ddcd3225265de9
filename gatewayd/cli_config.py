"""The configuration as the `gatewayd` commands load it: checked, or every problem on stderr under
the file's name (the command then exits with EXIT_CONFIG)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from gatewayd.config import Config, ConfigError, load_config

DEFAULT_CONFIG = "/etc/gatewayd/gatewayd.yaml"
EXIT_CONFIG = 2


def load_for_command(
    path: str, *, secrets: bool = True, checks: Sequence[Callable[[Config], object]] = ()
) -> Config | None:
    """The configuration at `path`, or None with every problem on stderr. `secrets`: as
    load_config's. `checks` raise ConfigError on what a command needs beyond the file itself (its
    rules, say); each runs, so that one run shows every problem."""
    try:
        config = load_config(path, secrets=secrets)
        errors: list[str] = []
        for check in checks:
            try:
                check(config)
            except ConfigError as exc:
                errors += exc.errors
        if errors:
            raise ConfigError(errors)
        return config
    except ConfigError as exc:
        print(f"{path}: invalid configuration:", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return None
