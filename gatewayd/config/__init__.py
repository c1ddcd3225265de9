"""Configuration: a YAML file in, validated frozen dataclasses out.

One small schema per section (a `_Key` per key: a check and a default) drives both validation and
defaults. Every problem is collected, so one run lists everything wrong with the file, each message
starting with its key path: `agents[0].mailboxes[1].imap.port: expected an integer 1-65535, got "abc"`.
Secrets (passwords, password file contents, environment values) are never echoed, in messages or reprs.

model.py      the dataclasses, their constants, ConfigError, tokens' hashes
safe_yaml.py  reading YAML safely (duplicate keys, alias bombs, unprintable characters); rules files too
checks.py     value checks: a raw value in, the clean value or the reason out
schema.py     every section's keys with their checks and defaults; checking one section
context.py    the state of one parse
accounts.py   `imap:` and `smtp:`, with their passwords
agents.py     agents, mailboxes, fleets and tenants
stages.py     the pipeline's stages and external scorers
load.py       load_config and parse_config: the whole file

Names with a leading underscore are the package's own: the modules share them, nothing else should.
"""

from gatewayd.config.checks import INJECTION_LEVELS
from gatewayd.config.load import load_config, parse_config
from gatewayd.config.model import (
    DEFAULT_STORE_PATH,
    DEFAULT_TENANT,
    LOG_LEVELS,
    MAX_IDLE_RENEW_SECONDS,
    SENT_AUTO,
    TLS_IMPLICIT,
    TLS_NONE,
    TLS_STARTTLS,
    WATCH_ALWAYS,
    WATCH_ON_DEMAND,
    AgentConfig,
    Config,
    ConfigError,
    ImapConfig,
    LearningConfig,
    MailboxConfig,
    PipelineConfig,
    RulesConfig,
    Secret,
    ServerConfig,
    SmtpConfig,
    StageConfig,
    StoreConfig,
    hash_token,
    new_token,
)
from gatewayd.config.safe_yaml import MAX_EXPANDED_NODES
from gatewayd.config.schema import ON_ERROR, STAGE_NAMES

__all__ = [
    "DEFAULT_STORE_PATH",
    "DEFAULT_TENANT",
    "INJECTION_LEVELS",
    "LOG_LEVELS",
    "MAX_EXPANDED_NODES",
    "MAX_IDLE_RENEW_SECONDS",
    "ON_ERROR",
    "SENT_AUTO",
    "STAGE_NAMES",
    "TLS_IMPLICIT",
    "TLS_NONE",
    "TLS_STARTTLS",
    "WATCH_ALWAYS",
    "WATCH_ON_DEMAND",
    "AgentConfig",
    "Config",
    "ConfigError",
    "ImapConfig",
    "LearningConfig",
    "MailboxConfig",
    "PipelineConfig",
    "RulesConfig",
    "Secret",
    "ServerConfig",
    "SmtpConfig",
    "StageConfig",
    "StoreConfig",
    "hash_token",
    "load_config",
    "new_token",
    "parse_config",
]
