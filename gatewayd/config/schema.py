"""The schema: one `_Key` (a check and a default) per key of every section, and `_section`, which
checks a section against its schema, so validation and defaults never drift apart."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from gatewayd.config.checks import (
    INJECTION_LEVELS,
    Check,
    _address,
    _boolean,
    _choice,
    _credential_name,
    _domain,
    _hex_digest,
    _host,
    _http_url,
    _ident,
    _injection_levels,
    _integer,
    _Invalid,
    _kind,
    _list_of,
    _listen,
    _login_name,
    _nullable,
    _number,
    _positive,
    _secret,
    _sent_folder,
    _string,
    _weights,
)
from gatewayd.config.model import (
    DEFAULT_STORE_PATH,
    LOG_LEVELS,
    MAX_IDLE_RENEW_SECONDS,
    SENT_AUTO,
    TLS_IMPLICIT,
    TLS_NONE,
    TLS_STARTTLS,
    WATCH_ALWAYS,
    WATCH_ON_DEMAND,
)
from gatewayd.imap.names import folder_key

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

_REQUIRED: Any = object()


@dataclass(frozen=True, slots=True)
class _Key:
    check: Check | None = None  # None: the raw value goes to the caller (nested sections)
    default: Any = _REQUIRED


_TOP = {
    "server": _Key(None, {}),
    "store": _Key(None, {}),
    "logging": _Key(None, {}),
    "pipeline": _Key(None, {}),
    "rules": _Key(None, []),
    "rules_file": _Key(_nullable(_string), None),
    "agents": _Key(),
}
_SERVER = {
    "listen": _Key(_listen, ("127.0.0.1", 8025)),
    "shutdown_grace_seconds": _Key(_number(0), 5.0),
    "subscriber_queue_size": _Key(_integer(1), 1000),
    "retry_ms": _Key(_integer(0), 3000),
    "max_ping_seconds": _Key(_number(1), 300.0),
    "allow_query_token": _Key(_boolean, False),
    "max_streams_per_token": _Key(_nullable(_integer(1)), 100),
    "token_check_seconds": _Key(_positive, 2.0),
    "request_timeout_seconds": _Key(_positive, 60.0),
    "max_connections": _Key(_nullable(_integer(1)), None),
    "allowed_hosts": _Key(_list_of(_host, single_ok=True), ()),
}
_STORE = {
    "path": _Key(_string, DEFAULT_STORE_PATH),
    "retention_days": _Key(_nullable(_positive), 30.0),
    "retention_max_events": _Key(_nullable(_integer(1)), None),
    "prune_interval_seconds": _Key(_positive, 300.0),
}
_LOGGING = {"level": _Key(_choice(*LOG_LEVELS, fold_case=True), "info")}
_AGENT = {
    "id": _Key(_ident),
    "token_sha256": _Key(_list_of(_hex_digest, single_ok=True), ()),
    "parent": _Key(_nullable(_ident), None),
    "tenant": _Key(_nullable(_ident), None),  # None: the parent's tenant, or DEFAULT_TENANT
    "mailboxes": _Key(None, []),
}
_MAILBOX = {
    "id": _Key(_ident),
    "watch": _Key(_choice(WATCH_ALWAYS, WATCH_ON_DEMAND), WATCH_ON_DEMAND),
    "on_demand_linger_seconds": _Key(_number(0), 30.0),
    "backfill": _Key(_integer(0), 0),
    "fetch_max_bytes": _Key(_integer(1), 262144),
    "trusted_authserv_ids": _Key(_nullable(_list_of(_string, single_ok=True)), None),
    "address": _Key(_nullable(_address), None),
    "rules": _Key(None, []),
    "rules_file": _Key(_nullable(_string), None),
    "imap": _Key(),
    "smtp": _Key(None, None),
}
STAGE_NAMES = ("spam", "auth", "injection")
ON_ERROR = ("continue", "suspect", "skip_rest")
_PIPELINE = {
    "stages": _Key(_list_of(_choice(*STAGE_NAMES), unique=True), STAGE_NAMES),
    "spam": _Key(None, {}),
    "auth": _Key(None, {}),
    "injection": _Key(None, {}),
    "learning": _Key(None, {}),
}


def _stage_keys(timeout_ms: int, **keys: _Key) -> dict[str, _Key]:
    return {
        "timeout_ms": _Key(_integer(1, 60000), timeout_ms),
        "on_error": _Key(_choice(*ON_ERROR), "continue"),
        **keys,
    }


_STAGES = {
    "spam": _stage_keys(
        250,
        suspect_threshold=_Key(_number(-1000, 1000), 5.0),
        spam_threshold=_Key(_number(-1000, 1000), 10.0),
        weights=_Key(_weights, {}),
        allow=_Key(_list_of(_string), ()),
        block=_Key(_list_of(_string), ()),
        rspamd=_Key(None, None),  # null: off; a mapping: see _RSPAMD
        spamd=_Key(None, None),  # null: off; a mapping: see _SPAMD
    ),
    "auth": _stage_keys(
        250,
        trusted_authserv_ids=_Key(_list_of(_string, single_ok=True), ()),
        weights=_Key(_weights, {}),
        dkim_verify=_Key(_boolean, False),
        dns_timeout_seconds=_Key(_positive, 2.0),
        protected_domains=_Key(_list_of(_domain), ()),
    ),
    "injection": _stage_keys(
        250,
        weights=_Key(_weights, {}),
        excerpt_chars=_Key(_integer(0, 10000), 500),
        levels=_Key(_injection_levels, INJECTION_LEVELS),
    ),
}


# The spam stage's optional external scorers (gatewayd/pipeline/external.py).
_EXTERNAL_TIMEOUT_MS = 150
_RSPAMD = {
    "url": _Key(_http_url, "http://127.0.0.1:11333"),
    "timeout_ms": _Key(_integer(1, 60000), _EXTERNAL_TIMEOUT_MS),
    "weight": _Key(_number(-1000, 1000), 1.0),
    "password": _Key(_nullable(_secret), None),
}
_SPAMD = {
    "host": _Key(_string, "127.0.0.1"),
    "port": _Key(_integer(1, 65535), 783),
    "timeout_ms": _Key(_integer(1, 60000), _EXTERNAL_TIMEOUT_MS),
    "weight": _Key(_number(-1000, 1000), 1.0),
}
_LEARNING = {
    "path": _Key(_nullable(_string), None),  # None: learning.db beside the event store
    "min_training": _Key(_integer(1), 200),
    "signature_distance": _Key(_integer(0, 1000), 50),
}
_PASSWORD_KEYS = ("password", "password_file", "password_env", "password_credential")


_IMAP = {
    "host": _Key(_string),
    "port": _Key(_integer(1, 65535), None),  # None: 993 for implicit TLS, 143 otherwise
    "tls": _Key(_choice(TLS_IMPLICIT, TLS_STARTTLS, TLS_NONE), TLS_IMPLICIT),
    "allow_insecure": _Key(_boolean, False),
    "verify_cert": _Key(_boolean, True),
    "ca_file": _Key(_nullable(_string), None),
    "username": _Key(_login_name),
    "password": _Key(_secret, None),
    "password_file": _Key(_string, None),
    "password_env": _Key(_string, None),
    "password_credential": _Key(_credential_name, None),
    "folders": _Key(_list_of(_string, nonempty=True, unique=True, same=folder_key), ("INBOX",)),
    "idle_renew_seconds": _Key(_number(1, MAX_IDLE_RENEW_SECONDS), 1500.0),
    "read_timeout_seconds": _Key(_positive, 60.0),
    "poll_interval_seconds": _Key(_positive, 60.0),
    "connect_timeout_seconds": _Key(_positive, 15.0),
    "sent_folder": _Key(_sent_folder, SENT_AUTO),
}
_SMTP = {
    "host": _Key(_string),
    "port": _Key(_integer(1, 65535), None),  # None: 465 with implicit TLS, 587 with starttls, else 25
    "tls": _Key(_choice(TLS_IMPLICIT, TLS_STARTTLS, TLS_NONE), TLS_IMPLICIT),
    "allow_insecure": _Key(_boolean, False),
    "verify_cert": _Key(_boolean, True),
    "ca_file": _Key(_nullable(_string), None),
    "username": _Key(_nullable(_login_name), None),
    "password": _Key(_secret, None),
    "password_file": _Key(_string, None),
    "password_env": _Key(_string, None),
    "password_credential": _Key(_credential_name, None),
    "timeout_seconds": _Key(_positive, 15.0),
    "retry_attempts": _Key(_integer(1, 100), 6),
    "retry_initial_seconds": _Key(_positive, 60.0),
    "retry_max_seconds": _Key(_positive, 3600.0),
}


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _section(data: Any, path: str, schema: Mapping[str, _Key], errors: list[str]) -> dict[str, Any] | None:
    """Check `data` against `schema`: the clean values (defaults filled in) of the keys that passed."""
    if not isinstance(data, dict):
        errors.append(f"{path or '(top level)'}: expected a mapping, got {_kind(data)}")
        return None
    errors += [_unknown_key(path, key, schema) for key in data if key not in schema]
    values: dict[str, Any] = {}
    for key, spec in schema.items():
        if key not in data:
            if spec.default is _REQUIRED:
                errors.append(f"{_join(path, key)}: missing required key")
            else:
                values[key] = spec.default
            continue
        try:
            values[key] = data[key] if spec.check is None else spec.check(data[key])
        except _Invalid as bad:
            errors += [f"{_join(path, key)}{at}: {message}" for at, message in bad.problems]
    return values


# A key with its value glued on (`password hunter2`, `password:hunter2`, `password=hunter2` in a flow
# mapping): only the part before the value may be shown.
_GLUED_VALUE = re.compile(r"\s*([^\s:=]+)\s*[\s:=]\s*\S")


def _unknown_key(path: str, key: object, schema: Mapping[str, _Key]) -> str:
    glued = _GLUED_VALUE.match(str(key))
    name = glued[1] if glued else str(key)
    close = difflib.get_close_matches(name, schema, n=1)
    if glued:
        fix = f'write "{close[0]}: VALUE"' if close else 'a key and its value need ": " between them'
        return (
            f'{path or "(top level)"}: unknown key "{name}" followed by more, not shown as it may be a secret'
            f" ({fix})"
        )
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return f"{_join(path, key)}: unknown key{hint}"


def _build(cls: type[T], values: Mapping[str, Any], **overrides: Any) -> T:
    """A dataclass from checked values whose keys are named like its fields."""
    return cls(**{f.name: overrides[f.name] if f.name in overrides else values[f.name] for f in fields(cls)})
