"""Build the configured pipeline: the stages in order, with their options and the learning store."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any

from gatewayd.config import DEFAULT_TENANT, Config, ConfigError, PipelineConfig, StageConfig
from gatewayd.pipeline import Pipeline, Stage, StageSpec
from gatewayd.pipeline.auth import SYMBOLS as AUTH_SYMBOLS
from gatewayd.pipeline.auth import AuthOptions, AuthStage
from gatewayd.pipeline.external import ExternalScoring, RspamdClient, SpamdClient, Weighted
from gatewayd.pipeline.injection import SYMBOLS as INJECTION_SYMBOLS
from gatewayd.pipeline.injection import InjectionOptions, InjectionStage
from gatewayd.pipeline.injection.symbols import level_bounds
from gatewayd.pipeline.learning import LearningStore, TenantLearning, tenant_path
from gatewayd.pipeline.spam import SYMBOLS as SPAM_SYMBOLS
from gatewayd.pipeline.spam import SpamOptions, SpamStage
from gatewayd.store.ownership import prepare_for_root


def learning_tenants(config: Config) -> list[str]:
    """The tenants with a learning store: every agent's, and the default one (offline tools use it)."""
    return sorted({DEFAULT_TENANT, *(agent.tenant for agent in config.agents)})


def open_tenant_store(
    pipeline: PipelineConfig, tenant: str, reload_in_background: bool = False, command: str | None = None
) -> LearningStore:
    """The learning store of `tenant`. `command`: the CLI command opening it (`learn`), which may
    run as root: in another user's directory the file is then made for that user, or OwnerMismatch
    (gatewayd.store.ownership). The daemon passes none: run as root there, it refused to start."""
    learning = pipeline.learning
    path = tenant_path(learning.path, tenant)
    owners_path = None if command is None else prepare_for_root(path, command, "learning store")
    return LearningStore(
        owners_path or path,
        min_training=learning.min_training,
        signature_distance=learning.signature_distance,
        reload_in_background=reload_in_background,
        create=owners_path is None,
    )


def open_learning(
    config: Config, reload_in_background: bool = False, command: str | None = None
) -> TenantLearning:
    """The learning store of every tenant (see learning/tenants.py; `command`: open_tenant_store's)."""
    assert config.pipeline is not None
    stores: dict[str, LearningStore] = {}
    try:
        for tenant in learning_tenants(config):
            stores[tenant] = open_tenant_store(config.pipeline, tenant, reload_in_background, command)
    except BaseException:
        for store in stores.values():
            store.close()
        raise
    tenant_of = {mailbox.id: agent.tenant for agent in config.agents for mailbox in agent.mailboxes}
    return TenantLearning(stores, tenant_of)


def open_existing_learning(config: Config, tenant: str, command: str) -> TenantLearning | None:
    """The learning store of `tenant` alone, for a command that only scores with it (`check-message`,
    which asks one tenant's store): None when the store does not exist yet, as making it would only
    leave an empty file behind (`command`: open_tenant_store's)."""
    assert config.pipeline is not None
    if not tenant_path(config.pipeline.learning.path, tenant).exists():
        return None
    store = open_tenant_store(config.pipeline, tenant, command=command)
    tenant_of = {mailbox.id: agent.tenant for agent in config.agents for mailbox in agent.mailboxes}
    return TenantLearning({tenant: store}, tenant_of)


def _stage(config: Config, stage: StageConfig, learning: TenantLearning | None) -> Stage:
    options = dict(stage.options)
    if stage.name == "spam":
        spam = SpamStage(
            SpamOptions(
                suspect_threshold=options["suspect_threshold"],
                spam_threshold=options["spam_threshold"],
                weights=options["weights"],
                allow=tuple(options["allow"]),
                block=tuple(options["block"]),
            ),
            learning.for_mailbox if learning is not None else None,
        )
        scorers = _external_scorers(options)
        return ExternalScoring(spam, scorers) if scorers else spam
    if stage.name == "auth":
        per_mailbox = {
            mailbox.id: mailbox.trusted_authserv_ids
            for mailbox in config.mailboxes()
            if mailbox.trusted_authserv_ids is not None
        }
        return AuthStage(
            AuthOptions(
                trusted_authserv_ids=tuple(options["trusted_authserv_ids"]),
                per_mailbox=per_mailbox,
                dkim_verify=options["dkim_verify"],
                dns_timeout_seconds=options["dns_timeout_seconds"],
                scores=options["weights"],
                protected_domains=tuple(options["protected_domains"]),
            ),
            learning=learning.for_mailbox if learning is not None else None,
        )
    if stage.name == "injection":
        return InjectionStage(
            InjectionOptions(
                weights=options["weights"],
                excerpt_chars=options["excerpt_chars"],
                levels=level_bounds(options["levels"]),
            )
        )
    raise ValueError(f"unknown stage {stage.name!r}")


def _external_scorers(options: Mapping[str, Any]) -> list[Weighted]:
    """The configured external scorers (config validated them: null, or every key set)."""
    scorers: list[Weighted] = []
    if (rspamd := options.get("rspamd")) is not None:
        password = rspamd["password"].reveal() if rspamd["password"] is not None else None
        rspamd_client = RspamdClient(rspamd["url"], rspamd["timeout_ms"] / 1000, password)
        scorers.append(Weighted(rspamd_client, rspamd["weight"]))
    if (spamd := options.get("spamd")) is not None:
        spamd_client = SpamdClient(spamd["host"], spamd["port"], spamd["timeout_ms"] / 1000)
        scorers.append(Weighted(spamd_client, spamd["weight"]))
    return scorers


def _known_symbols(stage: str) -> Collection[str]:
    if stage == "spam":
        return SPAM_SYMBOLS
    if stage == "injection":
        return INJECTION_SYMBOLS
    return AUTH_SYMBOLS


def check_weights(config: Config) -> None:
    """A misspelt symbol in `weights` would silently do nothing: refuse it, naming the key."""
    assert config.pipeline is not None
    errors = []
    for stage in config.pipeline.stages:
        known = _known_symbols(stage.name)
        for symbol in stage.options.get("weights", {}):
            if symbol not in known:
                close = difflib.get_close_matches(symbol, known, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                errors.append(f"pipeline.{stage.name}.weights.{symbol}: unknown symbol{hint}")
    if errors:
        raise ConfigError(errors)


def build_pipeline(config: Config, learning: TenantLearning | None) -> Pipeline:
    assert config.pipeline is not None
    check_weights(config)
    return Pipeline(
        [
            StageSpec(_stage(config, stage, learning), stage.timeout_seconds, stage.on_error)
            for stage in config.pipeline.stages
        ]
    )
