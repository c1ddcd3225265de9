"""The whole file: read (load_config) and validated section by section (parse_config), every
problem collected into one ConfigError."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from gatewayd.config.agents import _agent, _fleets, _rules
from gatewayd.config.checks import _kind
from gatewayd.config.context import _Context
from gatewayd.config.model import (
    Config,
    ConfigError,
    LearningConfig,
    PipelineConfig,
    ServerConfig,
    StoreConfig,
)
from gatewayd.config.safe_yaml import YamlFileError, read_yaml
from gatewayd.config.schema import _LEARNING, _LOGGING, _PIPELINE, _SERVER, _STORE, _TOP, _build, _section
from gatewayd.config.stages import _pipeline_stages


def parse_config(
    data: object,
    env: Mapping[str, str] | None = None,
    base_dir: str | Path | None = None,
    *,
    secrets: bool = True,
) -> Config:
    """Validate already-parsed YAML. Relative paths resolve against `base_dir` (default: the cwd).
    `secrets=False`, for commands that never log in: every key is checked as usual, but a password
    in a file, a variable or a credential is not read (an UnreadSecret stands in for it)."""
    ctx = _Context(
        os.environ if env is None else env, Path.cwd() if base_dir is None else Path(base_dir), secrets
    )
    if data is None:
        raise ConfigError(['(top level): the configuration is empty; at least "agents" is required'])
    top = _section(data, "", _TOP, ctx.errors)
    if top is None:
        raise ConfigError(ctx.errors)
    server = _section(top["server"], "server", _SERVER, ctx.errors)
    store = _section(top["store"], "store", _STORE, ctx.errors)
    logging = _section(top["logging"], "logging", _LOGGING, ctx.errors)
    pipeline = _section(top["pipeline"], "pipeline", _PIPELINE, ctx.errors)
    agents = top.get("agents", [])
    if "agents" in top and (not isinstance(agents, list) or not agents):
        ctx.errors.append(f"agents: expected a non-empty list, got {_kind(agents)}")
        agents = []
    parsed = [(f"agents[{i}]", _agent(item, f"agents[{i}]", ctx)) for i, item in enumerate(agents)]
    fleet = _fleets([(path, agent) for path, agent in parsed if agent is not None], ctx)
    stages = _pipeline_stages(pipeline, ctx) if pipeline is not None else ()
    learning = (
        _section(pipeline["learning"], "pipeline.learning", _LEARNING, ctx.errors) if pipeline else None
    )
    rules = _rules(top["rules"], top.get("rules_file"), "", ctx)
    if ctx.errors or server is None or store is None or logging is None or learning is None:
        raise ConfigError(ctx.errors)
    host, port = server["listen"]
    store_path = ctx.path(store["path"])
    learning_path = ctx.path(learning["path"]) if learning["path"] else store_path.with_name("learning.db")
    return Config(
        server=_build(ServerConfig, server, host=host, port=port),
        store=_build(StoreConfig, store, path=store_path),
        agents=tuple(fleet),
        log_level=logging["level"],
        source=None,
        pipeline=PipelineConfig(stages, _build(LearningConfig, learning, path=learning_path)),
        rules=rules,
    )


def load_config(path: str | Path, env: Mapping[str, str] | None = None, *, secrets: bool = True) -> Config:
    """Read, parse and validate a configuration file; ConfigError lists every problem found.
    `secrets`: as parse_config's."""
    source = Path(path).expanduser().resolve()
    try:
        data = read_yaml(source, "configuration file")
    except YamlFileError as exc:
        problem = f"invalid YAML: {exc.problem or 'syntax error'}" if exc.syntax else exc.problem
        raise ConfigError([f"{exc.where or source}: {problem}"]) from None
    return replace(parse_config(data, env, source.parent, secrets=secrets), source=source)
