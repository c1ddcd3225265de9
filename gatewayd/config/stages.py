"""The pipeline's stages: each stage's section checked, the listed ones in order, and the spam
stage's external scorers."""

from __future__ import annotations

from typing import Any

from gatewayd.config.context import _Context
from gatewayd.config.model import Secret, StageConfig
from gatewayd.config.schema import _RSPAMD, _SPAMD, _STAGES, STAGE_NAMES, _section


def _pipeline_stages(pipeline: dict[str, Any], ctx: _Context) -> tuple[StageConfig, ...]:
    """Every stage's section is validated; the ones listed in `stages` run, in that order."""
    checked = {
        name: _section(pipeline[name], f"pipeline.{name}", _STAGES[name], ctx.errors) for name in STAGE_NAMES
    }
    if checked["spam"] is not None:
        _external_scorers(checked["spam"], ctx)
    stages = []
    # Absent when it failed its check (reported): which stages run is unknown, and so is whether
    # the checks between a stage's keys, made for the stages that run, apply.
    for name in pipeline.get("stages", ()):
        values = checked[name]
        if values is None:
            continue
        _check_between_keys(name, values, ctx)
        if len(values) < len(_STAGES[name]):  # a key failed its check (reported)
            continue
        timeout_ms, on_error = values.pop("timeout_ms"), values.pop("on_error")
        stages.append(StageConfig(name, timeout_ms / 1000, on_error, values))
    return tuple(stages)


def _check_between_keys(name: str, values: dict[str, Any], ctx: _Context) -> None:
    """A stage's keys that must agree with one another; each check is made when the keys it
    compares passed their own, whatever the stage's other keys."""
    if name == "spam" and {"suspect_threshold", "spam_threshold"} <= values.keys():
        suspect, spam = values["suspect_threshold"], values["spam_threshold"]
        if suspect > spam:  # swapped, most likely: no score could be "suspect"
            ctx.errors.append(
                f"pipeline.spam.suspect_threshold: must not exceed spam_threshold ({spam:g}), got {suspect:g}"
            )
    if name == "auth" and {"timeout_ms", "dkim_verify", "dns_timeout_seconds"} <= values.keys():
        timeout_ms = values["timeout_ms"]
        if values["dkim_verify"] and timeout_ms < values["dns_timeout_seconds"] * 1000 + 500:
            ctx.errors.append(
                "pipeline.auth.timeout_ms: with dkim_verify on it must exceed dns_timeout_seconds by 500 ms,"
                f" got {timeout_ms}"
            )


def _external_scorers(spam: dict[str, Any], ctx: _Context) -> None:
    """Check `rspamd` and `spamd` in place: null, or a mapping whose timeout leaves the stage time to
    fall back on the built-in score."""
    for key, schema in (("rspamd", _RSPAMD), ("spamd", _SPAMD)):
        if spam.get(key) is None:
            continue
        path = f"pipeline.spam.{key}"
        values = _section(spam[key], path, schema, ctx.errors) or {}
        # Each timeout is absent when it failed its own check (reported); another key's failure
        # does not hide this one.
        budget, timeout_ms = spam.get("timeout_ms"), values.get("timeout_ms")
        if budget is not None and timeout_ms is not None and timeout_ms >= budget:
            ctx.errors.append(
                f"{path}.timeout_ms: must be below pipeline.spam.timeout_ms ({budget}) so that the stage"
                f" can fall back on the built-in score, got {timeout_ms}"
            )
        if len(values) < len(schema):  # errors reported
            spam[key] = None
            continue
        if values.get("password") is not None:
            values["password"] = Secret(values["password"])
        spam[key] = values
