"""The `imap:` and `smtp:` sections of a mailbox, with their passwords (given inline, in a file,
in the environment or as a systemd credential; never put in a message)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gatewayd.config.checks import _LINE_BREAK
from gatewayd.config.context import _Context
from gatewayd.config.model import (
    TLS_IMPLICIT,
    TLS_NONE,
    TLS_STARTTLS,
    ImapConfig,
    Secret,
    SmtpConfig,
    UnreadSecret,
)
from gatewayd.config.schema import _IMAP, _PASSWORD_KEYS, _SMTP, _build, _section
from gatewayd.imap.names import folder_key


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").rstrip(".").lower()
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _password(data: dict[str, Any], v: dict[str, Any], path: str, ctx: _Context) -> Secret | None:
    """Exactly one of the _PASSWORD_KEYS; the secret is never put in a message."""
    given = [key for key in _PASSWORD_KEYS if key in data]
    if len(given) != 1:
        required = f"one of {', '.join(_PASSWORD_KEYS)} is required"
        exclusive = f"{' and '.join(given)} are mutually exclusive; set exactly one"
        ctx.errors.append(f"{path}: {exclusive if given else required}")
        return None
    key = given[0]
    if key not in v:  # its check failed, already reported
        return None
    if key == "password":
        return Secret(v[key])
    if not ctx.read_secrets:
        return UnreadSecret(f"{path}.{key}")
    if key == "password_env":
        value = ctx.env.get(v[key])
        where = f"environment variable {v[key]}"
        problem = "is not set" if value is None else "is empty" if not value else None
    elif key == "password_credential":
        value, where, problem = _read_credential(v[key], ctx.env)
    else:
        value, where, problem = _read_password_file(ctx.path(v[key]))
    if problem is None and value is not None and _LINE_BREAK.search(value):
        problem = (
            "contains a line break or NUL"
            if key == "password_env"
            else "has more than one line; it must hold the password alone"
        )
    if problem is not None or value is None:
        ctx.errors.append(f"{path}.{key}: {where} {problem}")
        return None
    return Secret(value)


# Far more than any password: a larger file is the wrong one (or /dev/urandom, which never ends).
_MAX_PASSWORD_FILE_BYTES = 64 * 1024


def _read_password_file(file: Path) -> tuple[str | None, str, str | None]:
    """(the password without its final newline, what to call the file, the problem or None)."""
    try:
        with file.open("rb") as handle:
            raw = handle.read(_MAX_PASSWORD_FILE_BYTES + 1)
    except OSError as exc:
        return None, f"cannot read {file}:", exc.strerror or type(exc).__name__
    if len(raw) > _MAX_PASSWORD_FILE_BYTES:
        return None, str(file), "is larger than 64 KiB: not a password file"
    try:
        value = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return None, str(file), "is not valid UTF-8"
    return value, str(file), None if value else "is empty"


def _read_credential(name: str, env: Mapping[str, str]) -> tuple[str | None, str, str | None]:
    """A systemd credential (`LoadCredential=NAME:FILE` in the unit): the file NAME in the directory
    systemd names in CREDENTIALS_DIRECTORY, readable by the service alone; as _read_password_file."""
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        problem = (
            f"is not set: systemd sets it for a unit with LoadCredential={name}:FILE;"
            f" elsewhere set it to the directory that holds the file {name}"
        )
        return None, "environment variable CREDENTIALS_DIRECTORY", problem
    return _read_password_file(Path(directory) / name)


def _transport(v: dict[str, Any], path: str, ctx: _Context, in_clear: str) -> Path | None:
    """The checks `imap:` and `smtp:` share: `tls: none` only to loopback (else `in_clear` would
    cross the network unencrypted) unless allow_insecure, and the ca_file, which must exist."""
    insecure = v.get("tls") == TLS_NONE and v.get("allow_insecure") is False
    if insecure and "host" in v and not _is_loopback(v["host"]):
        ctx.errors.append(
            f'{path}.tls: "none" sends {in_clear} in clear to a non-loopback host;'
            " set allow_insecure: true to allow it"
        )
    ca_file = ctx.path(v["ca_file"]) if v.get("ca_file") else None
    try:
        if ca_file is not None and not ca_file.is_file():
            ctx.errors.append(f"{path}.ca_file: no such file: {ca_file}")
    except OSError as exc:  # is_file() passes on a name too long, a directory it may not search
        ctx.errors.append(f"{path}.ca_file: cannot read {ca_file}: {exc.strerror or type(exc).__name__}")
    return ca_file


def _imap(data: Any, path: str, ctx: _Context) -> ImapConfig | None:
    before = len(ctx.errors)
    v = _section(data, path, _IMAP, ctx.errors)
    if v is None:
        return None
    ca_file = _transport(v, path, ctx, "the password")
    password = _password(data, v, path, ctx)
    if len(ctx.errors) > before or password is None:
        return None
    port = v["port"] if v["port"] is not None else 993 if v["tls"] == TLS_IMPLICIT else 143
    # `inbox` is INBOX: one spelling everywhere (events, checkpoints, a rule's move into INBOX).
    folders = tuple(map(folder_key, v["folders"]))
    return _build(ImapConfig, v, port=port, password=password, ca_file=ca_file, folders=folders)


def _smtp(data: Any, path: str, ctx: _Context) -> SmtpConfig | None:
    """Like `imap:`, except that without a username the server is used without AUTH."""
    before = len(ctx.errors)
    v = _section(data, path, _SMTP, ctx.errors)
    if v is None:
        return None
    ca_file = _transport(v, path, ctx, "mail")
    password = None
    if data.get("username") is not None:  # given, even if it failed its own check (reported)
        password = _password(data, v, path, ctx)
    elif any(key in data for key in _PASSWORD_KEYS):
        ctx.errors.append(f"{path}: a password needs a username")
    if len(ctx.errors) > before:
        return None
    default_port = {TLS_IMPLICIT: 465, TLS_STARTTLS: 587}.get(v["tls"], 25)
    port = v["port"] if v["port"] is not None else default_port
    return _build(SmtpConfig, v, port=port, password=password, ca_file=ca_file)
