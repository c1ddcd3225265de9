"""The configuration loader: defaults, exact error paths, secrets never shown."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import (
    SENT_AUTO,
    TLS_STARTTLS,
    WATCH_ALWAYS,
    WATCH_ON_DEMAND,
    Config,
    ConfigError,
    Secret,
    hash_token,
    load_config,
    new_token,
    parse_config,
)
from gatewayd.config import schema as config_module
from gatewayd.config.model import UnreadSecret

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "gatewayd.example.yaml"
SECRET = "Zq9-very-distinctive-secret-7Xw"
HASH = hash_token("token-of-support")

MINIMAL_YAML = f"""\
agents:
  - id: support
    token_sha256: ["{HASH.upper()}"]
    mailboxes:
      - id: support-inbox
        imap:
          host: imap.example.com
          username: support@example.com
          password_file: secrets/support.pw
"""


def mailbox(mailbox_id: str = "support-inbox", **imap: Any) -> dict[str, Any]:
    """A valid mailbox; `imap` overrides its imap keys, a None override removes the key."""
    settings = {"host": "imap.example.com", "username": "u", "password": SECRET, **imap}
    return {"id": mailbox_id, "imap": {key: value for key, value in settings.items() if value is not None}}


def minimal(**imap: Any) -> dict[str, Any]:
    return {"agents": [{"id": "support", "token_sha256": [HASH], "mailboxes": [mailbox(**imap)]}]}


def errors_of(data: object, env: dict[str, str] | None = None, base_dir: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env=env or {}, base_dir=base_dir)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return caught.value.errors


def write(tmp_path: Path, text: str, name: str = "gatewayd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- loading and defaults -------------------------------------------------------------------------------


def test_minimal_contract_example_loads_with_defaults(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "support.pw").write_text(SECRET + "\n")
    config = load_config(write(tmp_path, MINIMAL_YAML), env={})

    assert config.source == (tmp_path / "gatewayd.yaml").resolve()
    assert config.log_level == "info"
    server = config.server
    assert (server.host, server.port) == ("127.0.0.1", 8025)
    assert (server.shutdown_grace_seconds, server.subscriber_queue_size) == (5, 1000)
    assert (server.retry_ms, server.max_ping_seconds) == (3000, 300)
    assert config.store.path == Path("/var/lib/gatewayd/events.db")
    assert (config.store.retention_days, config.store.retention_max_events) == (30, None)
    assert config.store.prune_interval_seconds == 300

    (agent,) = config.agents
    assert agent.id == "support" and agent.token_sha256 == (HASH,)  # normalized to lowercase
    (box,) = agent.mailboxes
    assert (box.id, box.agent_id, box.watch) == ("support-inbox", "support", WATCH_ON_DEMAND)
    assert (box.backfill, box.fetch_max_bytes, box.on_demand_linger_seconds) == (0, 262144, 30)
    imap = box.imap
    assert (imap.host, imap.port, imap.tls) == ("imap.example.com", 993, "implicit")
    assert imap.username == "support@example.com"
    assert imap.password.reveal() == SECRET  # trailing newline stripped
    assert imap.folders == ("INBOX",)
    assert (imap.allow_insecure, imap.verify_cert, imap.ca_file) == (False, True, None)
    assert (imap.idle_renew_seconds, imap.read_timeout_seconds) == (1500, 60)
    assert (imap.poll_interval_seconds, imap.connect_timeout_seconds) == (60, 15)
    assert config.mailboxes() == [box]
    assert config.agent("support") is agent


def test_example_file_loads_and_documents_every_key(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    (tmp_path / "pw").write_text(SECRET + "\n")
    text, count = re.subn(r"(?m)^(\s*password_file:).*$", r"\1 pw", text)
    assert count == 1
    config = load_config(write(tmp_path, text), env={})

    box = config.agent("support").mailboxes[0]
    assert box.watch == WATCH_ALWAYS and box.imap.password.reveal() == SECRET
    assert config.server.port == 8025 and config.store.retention_days == 30
    assert config.pipeline is not None
    assert [stage.name for stage in config.pipeline.stages] == ["spam", "auth", "injection"]
    # Every key of every section appears in the example, set or in a comment.
    schemas = [config_module._TOP, config_module._SERVER, config_module._STORE, config_module._LOGGING]
    schemas += [config_module._AGENT, config_module._MAILBOX, config_module._IMAP, config_module._SMTP]
    schemas += [config_module._PIPELINE, config_module._LEARNING, *config_module._STAGES.values()]
    for schema in schemas:
        for key in schema:
            assert re.search(rf"(?m)^[\s#-]*{key}:", EXAMPLE.read_text()), f"{key} is not documented"


def test_relative_store_path_resolves_against_the_config_directory(tmp_path: Path) -> None:
    store = {"path": "data/events.db", "retention_days": None, "retention_max_events": 5}
    data = minimal() | {"store": store}
    config = parse_config(data, env={}, base_dir=tmp_path)
    assert config.store.path == tmp_path / "data" / "events.db"
    assert (config.store.retention_days, config.store.retention_max_events) == (None, 5)


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [("0.0.0.0:80", "0.0.0.0", 80), ("[::1]:8025", "::1", 8025), ("localhost:0", "localhost", 0)],
)
def test_listen_forms(listen: str, host: str, port: int) -> None:
    config = parse_config(minimal() | {"server": {"listen": listen}}, env={})
    assert (config.server.host, config.server.port) == (host, port)


def test_port_defaults_by_tls_and_seconds_accept_floats() -> None:
    data = minimal(tls="starttls", read_timeout_seconds=2.5, folders=["INBOX", "Sent"])
    config = parse_config(data, env={})
    imap = config.mailboxes()[0].imap
    assert (imap.tls, imap.port, imap.read_timeout_seconds) == (TLS_STARTTLS, 143, 2.5)
    assert imap.folders == ("INBOX", "Sent")


def test_inbox_in_any_case_is_inbox() -> None:
    """RFC 3501: INBOX is case-insensitive. One spelling everywhere, so a rule moving mail into
    INBOX recognises the watched folder, and events and checkpoints name it alike."""
    imap = parse_config(minimal(folders=["inbox", "Sent", "sent"]), env={}).mailboxes()[0].imap
    assert imap.folders == ("INBOX", "Sent", "sent")


# --- errors: one per class, with its exact path ---------------------------------------------------------


def test_port_abc_message_is_exact() -> None:
    assert errors_of(minimal(port="abc")) == [
        'agents[0].mailboxes[0].imap.port: expected an integer 1-65535, got "abc"'
    ]


def test_unknown_key_suggests_the_close_match() -> None:
    data = minimal() | {"server": {"lisen": "127.0.0.1:1"}, "bogus": 1}
    assert errors_of(data) == ["bogus: unknown key", 'server.lisen: unknown key (did you mean "listen"?)']


@pytest.mark.parametrize("glued", [f"password {SECRET}", f"password:{SECRET}", f"pasword = {SECRET}"])
def test_unknown_key_with_its_value_glued_on_is_not_echoed(glued: str) -> None:
    data = minimal()
    data["agents"][0]["mailboxes"][0]["imap"][glued] = None  # what `{..., password hunter2}` parses to
    (error,) = errors_of(data)
    assert SECRET not in error
    assert error.startswith(f'{IMAP}: unknown key "pas') and 'write "password: VALUE"' in error


IMAP = "agents[0].mailboxes[0].imap"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"server": {"subscriber_queue_size": True}},
            "server.subscriber_queue_size: expected an integer >= 1, got true",
        ),
        ({"server": {"retry_ms": 1.5}}, "server.retry_ms: expected an integer >= 0, got 1.5"),
        ({"server": {"max_connections": 0}}, "server.max_connections: expected an integer >= 1, got 0"),
        (
            {"server": {"allowed_hosts": ["localhost", "http://x.example/"]}},
            'server.allowed_hosts[1]: expected a host name or "host:port", got "http://x.example/"',
        ),
        (
            {"server": {"listen": "::1:80"}},
            'server.listen: expected "host:port" or "[ipv6]:port" with a port 0-65535, got "::1:80"',
        ),
        ({"store": {"retention_days": 0}}, "store.retention_days: expected a number > 0, got 0"),
        (
            {"logging": {"level": "loud"}},
            'logging.level: expected one of "debug", "info", "warning", "error", got "loud"',
        ),
        ({"logging": []}, "logging: expected a mapping, got an empty list"),
        (minimal(verify_cert="yes"), f'{IMAP}.verify_cert: expected true or false, got "yes"'),
        (minimal(idle_renew_seconds=1741), f"{IMAP}.idle_renew_seconds: expected a number 1-1740, got 1741"),
        (minimal(folders=[]), f"{IMAP}.folders: expected a non-empty list, got an empty list"),
        (minimal(folders=["INBOX", "INBOX"]), f'{IMAP}.folders[1]: duplicate "INBOX"'),
        # INBOX is case-insensitive: two watchers on one folder would process each message twice.
        (
            minimal(folders=["INBOX", "Sent", "Archive", "inbox"]),
            f'{IMAP}.folders[3]: duplicate "inbox" (the same as "INBOX")',
        ),
        (
            minimal(sent_folder=True),
            f'{IMAP}.sent_folder: expected "auto", a folder name, or null/false for off, got true',
        ),
        (
            minimal(sent_folder=""),
            f'{IMAP}.sent_folder: expected "auto", a folder name, or null/false for off, got ""',
        ),
        (
            minimal(sent_folder=["Sent"]),
            f'{IMAP}.sent_folder: expected "auto", a folder name, or null/false for off, got a list',
        ),
        (
            {"pipeline": {"spam": {"weights": {"SPAM_URL": 2, "MISSING_DATE": "high"}}}},
            'pipeline.spam.weights.MISSING_DATE: expected a number, got "high"',
        ),
        (
            {"pipeline": {"spam": {"suspect_threshold": 12, "spam_threshold": 8}}},
            "pipeline.spam.suspect_threshold: must not exceed spam_threshold (8), got 12",
        ),
        (
            {"pipeline": {"auth": {"protected_domains": ["example.com", "billing@example.com"]}}},
            "pipeline.auth.protected_domains[1]: expected a domain like example.com,"
            ' got "billing@example.com"',
        ),
    ],
)
def test_wrong_type_or_range(data: dict[str, Any], message: str) -> None:
    assert errors_of(minimal() | data) == [message]


@pytest.mark.parametrize(
    ("value", "folder"),
    [("auto", SENT_AUTO), ("Sent Items", "Sent Items"), (None, None), (False, None)],
)
def test_sent_folder_is_found_named_or_off(value: object, folder: str | None) -> None:
    default = parse_config(minimal(), env={}).mailboxes()[0].imap
    assert default.sent_folder == SENT_AUTO
    data = minimal()
    data["agents"][0]["mailboxes"][0]["imap"]["sent_folder"] = value
    assert parse_config(data, env={}).mailboxes()[0].imap.sent_folder == folder


def test_missing_required_keys() -> None:
    data = minimal()
    data["agents"].append({"mailboxes": [{"id": "b", "imap": {"username": "u", "password": "p"}}]})
    assert errors_of(data) == [
        "agents[1].id: missing required key",
        "agents[1].mailboxes[0].imap.host: missing required key",
    ]
    assert errors_of({"server": {}}) == ["agents: missing required key"]
    assert errors_of({"agents": []}) == ["agents: expected a non-empty list, got an empty list"]


def test_duplicate_ids_and_token_hashes() -> None:
    data = minimal()
    data["agents"].append({"id": "support", "token_sha256": HASH, "mailboxes": [mailbox("support-inbox")]})
    assert errors_of(data) == [
        'agents[1].id: duplicate agent id "support" (first used at agents[0].id)',
        "agents[1].token_sha256[0]: duplicate token hash; a token must identify exactly one agent"
        " (first used at agents[0].token_sha256[0])",
        'agents[1].mailboxes[0].id: duplicate mailbox id "support-inbox"'
        " (first used at agents[0].mailboxes[0].id)",
        # A problem of its own, not a consequence of the id: renaming the copy leaves it.
        "agents[1].mailboxes[0]: watches the same folder as agents[0].mailboxes[0]"
        ' (u on imap.example.com:993, "INBOX")',
    ]


def test_one_folder_of_one_account_is_watched_by_one_mailbox_only() -> None:
    # Two watchers of one folder would both act on every message: rules and auto-replies twice.
    data = minimal(folders=["Support", "INBOX"])
    data["agents"][0]["mailboxes"].append(mailbox("same-agent", folders=["inbox"]))
    data["agents"].append(
        {"id": "other", "mailboxes": [mailbox("other-agent", host="IMAP.example.com.", folders=["Support"])]}
    )
    assert errors_of(data) == [
        "agents[0].mailboxes[1]: watches the same folder as agents[0].mailboxes[0]"
        ' (u on imap.example.com:993, "INBOX")',
        "agents[1].mailboxes[0]: watches the same folder as agents[0].mailboxes[0]"
        ' (u on IMAP.example.com.:993, "Support")',
    ]


def test_other_folders_ports_or_users_of_one_server_may_be_watched() -> None:
    data = minimal()
    data["agents"][0]["mailboxes"] += [
        mailbox("sent", folders=["Sent"]),  # the first mailbox learns from Sent, but only reads it
        mailbox("another-user", username="v"),
        mailbox("another-port", port=994),
        mailbox("inbox-lookalike", folders=["INBOX.Support"]),
    ]
    assert len(parse_config(data, env={}).mailboxes()) == 5


def test_bad_ids_and_token_pasted_instead_of_its_hash() -> None:
    data = minimal()
    data["agents"][0].update(id="has space", token_sha256=[SECRET])
    errors = errors_of(data)
    assert errors == [
        'agents[0].id: expected 1-64 characters from A-Z a-z 0-9 . _ -, got "has space"',
        f"agents[0].token_sha256[0]: expected the token's SHA-256 as 64 hex characters (never the token),"
        f" got {len(SECRET)} characters",
    ]


def test_tls_none_refused_for_remote_host_unless_allowed() -> None:
    assert errors_of(minimal(tls="none")) == [
        'agents[0].mailboxes[0].imap.tls: "none" sends the password in clear to a non-loopback host;'
        " set allow_insecure: true to allow it"
    ]
    imap = parse_config(minimal(tls="none", allow_insecure=True), env={}).mailboxes()[0].imap
    assert (imap.tls, imap.port, imap.allow_insecure) == ("none", 143, True)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.3.2.1", "::1"])
def test_tls_none_is_fine_on_loopback(host: str) -> None:
    assert parse_config(minimal(tls="none", host=host), env={}).mailboxes()[0].imap.host == host


def test_several_errors_are_reported_at_once() -> None:
    data = minimal(port=0, tls="ssl")
    data["server"] = {"retry_ms": -1}
    data["agents"].append("not a mapping")
    assert errors_of(data) == [
        "server.retry_ms: expected an integer >= 0, got -1",
        "agents[0].mailboxes[0].imap.port: expected an integer 1-65535, got 0",
        'agents[0].mailboxes[0].imap.tls: expected one of "implicit", "starttls", "none", got "ssl"',
        "agents[1]: expected a mapping, got a string",
    ]


def test_a_mailbox_reports_its_imap_smtp_and_rules_problems_in_one_run() -> None:
    data = minimal(port="abc", username=None)
    data["agents"][0]["mailboxes"][0] |= {"smtp": {"host": "smtp.example.com", "port": 0}, "rules": "all"}
    data["agents"][0]["mailboxes"].append({"id": "no-imap", "smtp": {"port": 25}})
    assert errors_of(data) == [
        'agents[0].mailboxes[0].imap.port: expected an integer 1-65535, got "abc"',
        "agents[0].mailboxes[0].imap.username: missing required key",
        "agents[0].mailboxes[0].smtp.port: expected an integer 1-65535, got 0",
        "agents[0].mailboxes[0].rules: expected a list of rules, got a string",
        "agents[0].mailboxes[1].imap: missing required key",
        "agents[0].mailboxes[1].smtp.host: missing required key",
    ]


def test_a_bad_smtp_username_is_reported_as_itself_and_its_password_still_checked() -> None:
    data = minimal()
    data["agents"][0]["mailboxes"][0]["smtp"] = {"host": "s", "username": "", "password_env": "SMTP_PW"}
    assert errors_of(data) == [
        'agents[0].mailboxes[0].smtp.username: expected a non-empty string without line breaks, got ""',
        "agents[0].mailboxes[0].smtp.password_env: environment variable SMTP_PW is not set",
    ]


def test_a_mailbox_with_another_problem_is_still_checked_for_a_folder_watched_twice() -> None:
    data = minimal()
    data["agents"][0]["mailboxes"].append(
        mailbox("again") | {"smtp": {"host": "smtp.example.com", "tls": "ssl"}}
    )
    assert errors_of(data) == [
        'agents[0].mailboxes[1].smtp.tls: expected one of "implicit", "starttls", "none", got "ssl"',
        "agents[0].mailboxes[1]: watches the same folder as agents[0].mailboxes[0]"
        ' (u on imap.example.com:993, "INBOX")',
    ]


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, f"server:\n  listen: x\n password: {SECRET}: [\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    (message,) = caught.value.errors
    assert message.startswith("line 3, column ") and "invalid YAML" in message
    assert SECRET not in message


def test_a_control_character_in_the_yaml_names_its_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, 'agents:\n  - id: "sup\x00port"\n'), env={})
    assert caught.value.errors == [
        "line 2, column 13: invalid YAML: character U+0000 is not allowed (a binary file?)"
    ]


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "server: {}\nlogging: {}\nserver: {}\n"), env={})
    assert caught.value.errors == ['line 3, column 1: duplicate key "server"']


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", '(top level): the configuration is empty; at least "agents" is required'),
        ("# only a comment\n", '(top level): the configuration is empty; at least "agents" is required'),
        ("- agents\n", "(top level): expected a mapping, got a list"),
    ],
)
def test_empty_file_and_top_level_not_a_mapping(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), env={})
    assert caught.value.errors == [message]


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file: No such file"):
        load_config(tmp_path / "absent.yaml")


# --- passwords and secrets ------------------------------------------------------------------------------


def test_password_env_reads_the_given_environment() -> None:
    data = minimal(password=None, password_env="SUPPORT_PW")
    config = parse_config(data, env={"SUPPORT_PW": SECRET})
    assert config.mailboxes()[0].imap.password == Secret(SECRET)
    assert errors_of(data, env={}) == [
        "agents[0].mailboxes[0].imap.password_env: environment variable SUPPORT_PW is not set"
    ]


def test_password_file_unusable_is_reported_without_content(tmp_path: Path) -> None:
    data = minimal(password=None, password_file="pw")
    where = f"{IMAP}.password_file: "
    assert errors_of(data, base_dir=tmp_path) == [
        where + f"cannot read {tmp_path / 'pw'}: No such file or directory"
    ]
    (tmp_path / "pw").write_text("\n")
    assert errors_of(data, base_dir=tmp_path) == [where + f"{tmp_path / 'pw'} is empty"]
    (tmp_path / "pw").write_bytes(SECRET.encode() + b"\xff\n")
    assert errors_of(data, base_dir=tmp_path) == [where + f"{tmp_path / 'pw'} is not valid UTF-8"]


def test_password_credential_reads_the_file_systemd_put_in_the_credentials_directory(tmp_path: Path) -> None:
    # LoadCredential=support-imap:/etc/gatewayd/support.pw: the service alone can read the copy.
    (tmp_path / "support-imap").write_text(SECRET + "\n")
    data = minimal(password=None, password_credential="support-imap")
    data["agents"][0]["mailboxes"][0]["smtp"] = {
        "host": "smtp.example.com",
        "username": "u",
        "password_credential": "support-imap",
    }
    config = parse_config(data, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    box = config.mailboxes()[0]
    assert box.imap.password == Secret(SECRET)
    assert box.smtp is not None and box.smtp.password == Secret(SECRET)


def test_password_credential_unusable_is_reported_without_content(tmp_path: Path) -> None:
    data = minimal(password=None, password_credential="support-imap")
    where = f"{IMAP}.password_credential: "
    # Outside systemd (`gatewayd check-config` run by hand): say what to set.
    assert errors_of(data, env={}) == [
        where + "environment variable CREDENTIALS_DIRECTORY is not set: systemd sets it for a unit"
        " with LoadCredential=support-imap:FILE; elsewhere set it to the directory that holds the"
        " file support-imap"
    ]
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    credential = tmp_path / "support-imap"
    assert errors_of(data, env=env) == [where + f"cannot read {credential}: No such file or directory"]
    credential.write_text("")
    assert errors_of(data, env=env) == [where + f"{credential} is empty"]
    credential.write_text(f"{SECRET}\nA1 LOGOUT\n")
    assert errors_of(data, env=env) == [
        where + f"{credential} has more than one line; it must hold the password alone"
    ]
    credential.write_text(SECRET)
    credential.chmod(0)
    if os.access(credential, os.R_OK):  # root reads it all the same
        return
    assert errors_of(data, env=env) == [where + f"cannot read {credential}: Permission denied"]


@pytest.mark.parametrize("name", ["../support.pw", "/etc/gatewayd/support.pw", "..", ""])
def test_a_password_credential_is_a_name_not_a_path(name: str) -> None:
    errors = errors_of(minimal(password=None, password_credential=name), env={"CREDENTIALS_DIRECTORY": "/"})
    assert errors == [
        f"{IMAP}.password_credential: expected a file name (the NAME of LoadCredential=NAME:...):"
        f' not empty, no "/", got {json.dumps(name)}'
    ]


def test_a_password_with_a_line_break_is_refused_whatever_its_source(tmp_path: Path) -> None:
    # It would end the IMAP LOGIN (or SMTP AUTH) line and send the rest as a command of its own.
    (tmp_path / "pw").write_text(f"{SECRET}\nA1 DELETE INBOX\n")
    errors = errors_of(minimal(password=None, password_file="pw"), base_dir=tmp_path)
    assert errors == [
        f"{IMAP}.password_file: {tmp_path / 'pw'} has more than one line; it must hold the password alone"
    ]
    errors = errors_of(minimal(password=None, password_env="PW"), env={"PW": f"{SECRET}\r\nA1 LOGOUT"})
    assert errors == [f"{IMAP}.password_env: environment variable PW contains a line break or NUL"]
    assert errors_of(minimal(password=f"{SECRET}\n")) == [
        f"{IMAP}.password: must not contain a line break or NUL"
    ]
    assert errors_of(minimal(username="u\r\nA1 LOGOUT")) == [
        f'{IMAP}.username: expected a non-empty string without line breaks, got "u\\r\\nA1 LOGOUT"'
    ]


def test_a_password_file_that_never_ends_is_refused() -> None:
    errors = errors_of(minimal(password=None, password_file="/dev/zero"))
    assert errors == [f"{IMAP}.password_file: /dev/zero is larger than 64 KiB: not a password file"]


def test_exactly_one_password_source() -> None:
    assert errors_of(minimal(password=None)) == [
        f"{IMAP}: one of password, password_file, password_env, password_credential is required"
    ]
    assert errors_of(minimal(password_env="X")) == [
        f"{IMAP}: password and password_env are mutually exclusive; set exactly one"
    ]
    assert errors_of(minimal(password=None, password_file="pw", password_credential="pw")) == [
        f"{IMAP}: password_file and password_credential are mutually exclusive; set exactly one"
    ]


def test_secrets_never_appear_in_repr_or_errors(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(SECRET)
    good = minimal()
    good["agents"][0]["mailboxes"] += [
        mailbox("b", password=None, password_file="pw", username="b"),
        mailbox("c", password=None, password_env="PW", username="c"),
    ]
    config = parse_config(good, env={"PW": SECRET}, base_dir=tmp_path)
    assert [m.imap.password.reveal() for m in config.mailboxes()] == [SECRET] * 3
    assert SECRET not in repr(config) and SECRET not in str(config)

    # Every source in use, next to other mistakes; the secret also in a wrong-typed password,
    # under a misspelled key, and pasted where its hash belongs.
    bad = copy.deepcopy(good)
    bad["agents"][0]["token_sha256"] = SECRET
    bad["agents"][0]["mailboxes"][0]["imap"].update(password=[SECRET], port="abc")
    bad["agents"][0]["mailboxes"][1]["imap"].update(tls="none")
    bad["agents"][0]["mailboxes"][2]["imap"].update(pasword=SECRET)
    with pytest.raises(ConfigError) as caught:
        parse_config(bad, env={"PW": SECRET}, base_dir=tmp_path)
    assert "agents[0].mailboxes[0].imap.password: expected a string" in caught.value.errors
    assert len(caught.value.errors) == 5
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)


def test_secret_wrapper() -> None:
    secret = Secret(SECRET)
    assert (repr(secret), str(secret), f"{secret}") == ("Secret('***')", "***", "***")
    assert secret == Secret(SECRET) and secret != Secret("other") and secret.reveal() == SECRET


def test_without_secrets_the_password_keys_are_checked_but_not_read(tmp_path: Path) -> None:
    # For the commands that never log in: nothing is read, so nothing out of reach makes them fail.
    data = minimal(password=None, password_file="missing.pw")
    data["agents"][0]["mailboxes"].append(mailbox("other", username="v", password=None, password_env="UNSET"))
    config = parse_config(data, env={}, base_dir=tmp_path, secrets=False)
    unread = [box.imap.password for box in config.mailboxes()]
    assert unread == [
        UnreadSecret(f"{IMAP}.password_file"),
        UnreadSecret("agents[0].mailboxes[1].imap.password_env"),
    ]
    assert repr(unread[0]) == "Secret('***')" and str(unread[0]) == "***"
    with pytest.raises(RuntimeError, match=re.escape(f"{IMAP}.password_file: not read")):
        unread[0].reveal()
    assert config.secrets() == []
    assert parse_config(minimal(), env={}, secrets=False).secrets() == [SECRET]  # in the file: in hand

    # Every check but the reading still runs.
    both = minimal(password=None, password_file="pw", password_credential="../pw")
    with pytest.raises(ConfigError) as caught:
        parse_config(both, env={}, secrets=False)
    assert caught.value.errors == [
        f"{IMAP}.password_credential: expected a file name (the NAME of LoadCredential=NAME:...):"
        ' not empty, no "/", got "../pw"',
        f"{IMAP}: password_file and password_credential are mutually exclusive; set exactly one",
    ]


# --- tokens ---------------------------------------------------------------------------------------------


def test_token_hashing_round_trip_and_lookup() -> None:
    token = new_token()
    assert token.startswith("gwd_") and len(token) > 40 and new_token() != token
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

    data = minimal()
    data["agents"].append({"id": "other", "token_sha256": [hash_token(token), hash_token("second")]})
    config: Config = parse_config(data, env={})
    assert config.agent_for_token_hash(hash_token(token)) is config.agent("other")
    assert config.agent_for_token_hash(hash_token("second").upper()) is config.agent("other")
    assert config.agent_for_token_hash(HASH) is config.agent("support")
    assert config.agent_for_token_hash(hash_token("unknown")) is None
    assert config.agent_for_token_hash("é") is None
    with pytest.raises(KeyError):
        config.agent("nobody")


# --- external spam scorers ------------------------------------------------------------------------------


def spam_options(**spam: Any) -> dict[str, Any]:
    config = parse_config(minimal() | {"pipeline": {"spam": spam}}, env={})
    assert config.pipeline is not None
    stage = config.pipeline.stage("spam")
    assert stage is not None
    return dict(stage.options)


def test_external_scorers_are_off_by_default_and_an_empty_mapping_takes_every_default() -> None:
    options = spam_options()
    assert (options["rspamd"], options["spamd"]) == (None, None)
    options = spam_options(rspamd={}, spamd={})
    assert options["rspamd"] == {
        "url": "http://127.0.0.1:11333",
        "timeout_ms": 150,
        "weight": 1.0,
        "password": None,
    }
    assert options["spamd"] == {"host": "127.0.0.1", "port": 783, "timeout_ms": 150, "weight": 1.0}

    rspamd = {"url": "https://rspamd.internal:11333/", "timeout_ms": 400, "weight": 0.5, "password": SECRET}
    options = spam_options(timeout_ms=500, rspamd=rspamd, spamd={"host": "::1", "port": 1783})
    assert options["rspamd"]["password"] == Secret(SECRET) and SECRET not in repr(options)
    assert (options["rspamd"]["timeout_ms"], options["rspamd"]["weight"]) == (400, 0.5)
    assert (options["spamd"]["host"], options["spamd"]["port"]) == ("::1", 1783)


@pytest.mark.parametrize(
    ("spam", "message"),
    [
        ({"rspamd": "yes"}, "pipeline.spam.rspamd: expected a mapping, got a string"),
        (
            {"rspamd": {"url": "ftp://rspamd"}},
            'pipeline.spam.rspamd.url: expected an http:// or https:// URL such as "http://127.0.0.1:11333",'
            ' got "ftp://rspamd"',
        ),
        ({"rspamd": {"url": "http://host:99999"}}, "pipeline.spam.rspamd.url: expected an http://"),
        ({"rspamd": {"url": "http://h/?a=1"}}, "pipeline.spam.rspamd.url: expected an http://"),
        ({"rspamd": {"url": "http://[::1:11333"}}, "pipeline.spam.rspamd.url: expected an http://"),
        ({"rspamd": {"url": "http://rspamd host:11333"}}, "pipeline.spam.rspamd.url: expected an http://"),
        (
            {"rspamd": {"url": f"http://u:{SECRET}@h"}},
            "pipeline.spam.rspamd.url: credentials in the URL are not supported; use `password`",
        ),
        (
            {"rspamd": {"timeout_ms": 250}},
            "pipeline.spam.rspamd.timeout_ms: must be below pipeline.spam.timeout_ms (250)",
        ),
        (
            {"timeout_ms": 100, "spamd": {}},
            "pipeline.spam.spamd.timeout_ms: must be below pipeline.spam.timeout_ms (100)",
        ),
        ({"rspamd": {"weight": "x"}}, 'pipeline.spam.rspamd.weight: expected a number -1000-1000, got "x"'),
        ({"rspamd": {"password": ""}}, "pipeline.spam.rspamd.password: must not be empty"),
        ({"spamd": {"port": 0}}, "pipeline.spam.spamd.port: expected an integer 1-65535, got 0"),
        ({"spamd": {"hostname": "x"}}, 'pipeline.spam.spamd.hostname: unknown key (did you mean "host"?)'),
    ],
)
def test_external_scorer_errors_name_the_key_path(spam: dict[str, Any], message: str) -> None:
    errors = errors_of(minimal() | {"pipeline": {"spam": spam}})
    assert len(errors) == 1 and errors[0].startswith(message), errors
    assert SECRET not in errors[0]


def test_example_documents_the_external_scorer_keys() -> None:
    text = EXAMPLE.read_text()
    spam = text[text.index("\n  spam:\n") : text.index("\n  auth:\n")]
    for key in [*config_module._RSPAMD, *config_module._SPAMD, "rspamd", "spamd"]:
        assert re.search(rf"(?m)^[\s#]*{key}:", spam), f"pipeline.spam: {key} is not documented"


# --- injection levels -----------------------------------------------------------------------------------


def test_injection_levels_default_to_the_stage_and_a_partial_mapping_keeps_the_rest() -> None:
    from gatewayd.pipeline.build import build_pipeline
    from gatewayd.pipeline.injection import LEVELS, InjectionStage

    def levels(config: Config) -> tuple[tuple[float, str], ...]:
        (stage,) = [
            spec.stage for spec in build_pipeline(config, None).stages if spec.stage.name == "injection"
        ]
        assert isinstance(stage, InjectionStage)
        return stage.options.levels

    assert levels(parse_config(minimal(), env={})) == LEVELS
    custom = parse_config(minimal() | {"pipeline": {"injection": {"levels": {"high": 0.95}}}}, env={})
    assert levels(custom) == ((0.95, "high"), (0.5, "medium"), (0.2, "low"))


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        (
            [0.9],
            "pipeline.injection.levels: expected a mapping of level: score such as {high: 0.9}, got a list",
        ),
        ({"hihg": 0.9}, 'pipeline.injection.levels: unknown level "hihg"; the levels are low, medium, high'),
        ({"high": 2}, "pipeline.injection.levels: high: expected a number above 0 and at most 1, got 2"),
        ({"low": 0}, "pipeline.injection.levels: low: expected a number above 0 and at most 1, got 0"),
        (
            {"low": 0.6},
            "pipeline.injection.levels: each level must start above the one before:"
            " low (0.6) < medium (0.5) < high (0.8)",
        ),
    ],
)
def test_injection_level_errors_name_the_key(levels: object, message: str) -> None:
    assert errors_of(minimal() | {"pipeline": {"injection": {"levels": levels}}}) == [message]


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ({"stages": "spam"}, 'pipeline.stages: expected a list, got "spam"'),
        ({"stages": ["spam", "bogus"]}, 'pipeline.stages[1]: expected one of "spam", "auth", "injection"'),
        ({"auth": {"on_error": "bogus"}}, 'pipeline.auth.on_error: expected one of "continue"'),
        ({"spam": {"timeout_ms": -1}}, "pipeline.spam.timeout_ms: expected an integer 1-60000, got -1"),
        (
            {"injection": {"timeout_ms": "x"}},
            'pipeline.injection.timeout_ms: expected an integer 1-60000, got "x"',
        ),
        ({"auth": {"dkim_verify": 5}}, "pipeline.auth.dkim_verify: expected true or false, got 5"),
    ],
)
def test_a_bad_stage_key_is_reported_not_a_crash(pipeline: dict[str, Any], message: str) -> None:
    errors = errors_of(minimal() | {"pipeline": pipeline})
    assert len(errors) == 1 and errors[0].startswith(message), errors


def test_a_stage_key_that_fails_hides_no_check_between_the_others() -> None:
    rspamd = {"url": "ftp://rspamd", "timeout_ms": 300}
    spam = {"weights": [], "suspect_threshold": 9, "spam_threshold": 3, "rspamd": rspamd}
    auth = {"protected_domains": ["localhost"], "dkim_verify": True, "timeout_ms": 1000}
    assert errors_of(minimal() | {"pipeline": {"spam": spam, "auth": auth}}) == [
        "pipeline.spam.weights: expected a mapping of SYMBOL: score, got an empty list",
        'pipeline.auth.protected_domains[0]: expected a domain like example.com, got "localhost"',
        'pipeline.spam.rspamd.url: expected an http:// or https:// URL such as "http://127.0.0.1:11333",'
        ' got "ftp://rspamd"',
        "pipeline.spam.rspamd.timeout_ms: must be below pipeline.spam.timeout_ms (250) so that the stage"
        " can fall back on the built-in score, got 300",
        "pipeline.spam.suspect_threshold: must not exceed spam_threshold (3), got 9",
        "pipeline.auth.timeout_ms: with dkim_verify on it must exceed dns_timeout_seconds by 500 ms,"
        " got 1000",
    ]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"store": {"retention_max_events": 10**23}},
            "store.retention_max_events: expected an integer below 2^63, got 100000000000000000000000",
        ),
        (
            {"server": {"subscriber_queue_size": 1e300}},
            "server.subscriber_queue_size: expected an integer below 2^63",
        ),
    ],
)
def test_integers_past_what_sqlite_stores_are_refused(section: dict[str, Any], message: str) -> None:
    errors = errors_of(minimal() | section)
    assert len(errors) == 1 and errors[0].startswith(message), errors


def test_yaml_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "agents: " + "[" * 5000))
    assert caught.value.errors == [f"{tmp_path / 'gatewayd.yaml'}: invalid YAML: nested too deeply"]


def test_yaml_aliases_expanding_past_the_limit_are_a_config_error(tmp_path: Path) -> None:
    # Loading shares an alias's value, but the rules parser would walk all 10**9 copies.
    levels = ["a0: &a0 [lol]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    text = "agents: [{id: a}]\nrules: [{name: r, if: {subject: {contains: *a9}}, then: [tag]}]\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "x-anchors:\n" + "".join(f"  {line}\n" for line in levels) + text))
    assert caught.value.errors == [
        "line 1, column 1: invalid YAML: aliases expand the document past 100000 nodes"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("store: {retention_days: 2026-02-30}", "line 2, column 25: invalid YAML: not a valid timestamp"),
        ("store: {retention_days: !!int 0x}", "line 2, column 25: invalid YAML: not a valid int"),
        ("store: {retention_days: !!float x}", "line 2, column 25: invalid YAML: not a valid float"),
    ],
)
def test_a_value_yaml_cannot_construct_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    # PyYAML reads "2026-02-30" as a timestamp and raises a bare ValueError: once a traceback.
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "agents: [{id: a}]\n" + text))
    assert caught.value.errors == [message + " (quote it to make it a string)"]


def test_a_ca_file_that_cannot_be_looked_at_is_a_config_error(tmp_path: Path) -> None:
    # Path.is_file() raises, rather than answers False, for a name too long (and a directory it
    # may not search): once a traceback out of check-config.
    name = "c" * 300
    assert errors_of(minimal(ca_file=name), base_dir=tmp_path) == [
        f"agents[0].mailboxes[0].imap.ca_file: cannot read {tmp_path / name}: File name too long"
    ]
    assert errors_of(minimal(ca_file="missing.pem"), base_dir=tmp_path) == [
        f"agents[0].mailboxes[0].imap.ca_file: no such file: {tmp_path / 'missing.pem'}"
    ]


def test_secrets_lists_every_password_the_logs_are_scrubbed_of() -> None:
    data = minimal()
    data["agents"][0]["mailboxes"][0]["smtp"] = {
        "host": "smtp.example.com",
        "username": "u",
        "password": "smtp-pw",
    }
    data["pipeline"] = {
        "spam": {"rspamd": {"url": "http://127.0.0.1:11333", "password": "rspamd-pw", "timeout_ms": 100}}
    }
    assert sorted(parse_config(data, env={}).secrets()) == sorted([SECRET, "smtp-pw", "rspamd-pw"])
