"""Commands that never log in (`token`, `learn`, `check-message -c`) check the password keys but do
not read the passwords, which outside the service may be out of reach: a systemd credential, a
file only the service's user reads, a variable only its environment sets. `check-config` and `run`
still read them and fail naming the key. The real CLI as a subprocess."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.daemon import run_cli, write_config

UNSET_VARIABLE = "GATEWAYD_TEST_PASSWORD_NEVER_SET"

# Each source of the password, and the start of the error check-config gives for it (after the
# key path); the file is missing here, as root reads any file whatever its mode.
SOURCES = {
    "credential": (
        {"password_credential": "support-imap"},
        "environment variable CREDENTIALS_DIRECTORY is not set",
    ),
    "file": ({"password_file": "/nonexistent/support.password"}, "cannot read /nonexistent/support.password"),
    "env": ({"password_env": UNSET_VARIABLE}, f"environment variable {UNSET_VARIABLE} is not set"),
}


def mail(subject: str) -> str:
    return f"From: someone@example.net\nTo: support@example.com\nSubject: {subject}\n\nabout {subject}\n"


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A folder of mail, and a writer of configurations whose mailboxes get their IMAP (and,
    for the second, SMTP) password from a source that cannot be read here."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv(UNSET_VARIABLE, raising=False)
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "1.eml").write_text(mail("one"))
    return {"tmp": tmp_path, "mail": tmp_path / "mail"}


def config(tmp_path: Path, source: dict[str, str]) -> str:
    server = {"host": "127.0.0.1", "port": 1, "tls": "none"}
    account = {**server, "username": "support@example.com", **source}
    data = {
        "server": {"listen": "127.0.0.1:0"},
        "store": {"path": str(tmp_path / "state" / "events.db")},
        "agents": [
            {"id": "support", "mailboxes": [{"id": "support-inbox", "imap": account}]},
            {
                "id": "sales",
                "tenant": "acme",
                "mailboxes": [
                    {
                        "id": "sales-inbox",
                        "imap": {**server, "username": "sales@example.com", "password": "inline"},
                        "smtp": account,
                    }
                ],
            },
        ],
    }
    return str(write_config(tmp_path / "gatewayd.yaml", data))


@pytest.mark.parametrize("source", SOURCES)
def test_commands_that_never_log_in_do_not_read_the_passwords(setup: dict[str, Any], source: str) -> None:
    c = config(setup["tmp"], SOURCES[source][0])

    created = run_cli("token", "create", "-c", c, "--agent", "support")
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("token: gwd_")
    listed = run_cli("token", "list", "-c", c, "--agent", "support")
    assert listed.returncode == 0, listed.stderr
    assert "support" in listed.stdout

    learned = run_cli("learn", "-c", c, "--tenant", "acme", "--spam", str(setup["mail"]))
    assert learned.returncode == 0, learned.stderr
    assert learned.stdout == "spam: 1, ham: 0, skipped: 0\n"

    checked = run_cli("check-message", "-c", c, "--mailbox", "sales-inbox", str(setup["mail"]))
    assert checked.returncode == 0, checked.stderr
    assert "REPUTATION_SPAM" in checked.stdout  # scored with what `learn` taught the tenant
    assert "Traceback" not in created.stderr + listed.stderr + learned.stderr + checked.stderr


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_check_config_and_run_still_read_them_and_name_the_key(
    setup: dict[str, Any], source: str, command: str
) -> None:
    keys, problem = SOURCES[source]
    (key,) = keys
    result = run_cli(command, "-c", config(setup["tmp"], keys))
    assert result.returncode == 2, result.stderr
    assert f"  agents[0].mailboxes[0].imap.{key}: {problem}" in result.stderr
    assert f"  agents[1].mailboxes[0].smtp.{key}: {problem}" in result.stderr
    assert not (setup["tmp"] / "state").exists()  # refused before opening anything


def test_commands_that_never_log_in_still_check_the_password_keys(setup: dict[str, Any]) -> None:
    # The names and the "exactly one" rule are checked all the same: only the reading is skipped.
    c = config(setup["tmp"], {"password_credential": "../support.password", "password_env": UNSET_VARIABLE})
    for command in (
        ["token", "create", "--agent", "support"],
        ["learn", "--spam", str(setup["mail"])],
        ["check-message", str(setup["mail"])],
    ):
        result = run_cli(*command, "-c", c)
        assert result.returncode == 2, result.stderr
        assert "agents[0].mailboxes[0].imap.password_credential: expected a file name" in result.stderr, (
            result.stderr
        )
        assert (
            "agents[0].mailboxes[0].imap: password_env and password_credential are mutually exclusive"
            in result.stderr
        ), result.stderr
    assert not (setup["tmp"] / "state").exists()


def test_check_message_makes_no_learning_store_and_says_it_scores_without_one(setup: dict[str, Any]) -> None:
    c = config(setup["tmp"], {"password": "inline"})
    state = setup["tmp"] / "state"
    state.mkdir()
    checked = run_cli("check-message", "-c", c, "--mailbox", "sales-inbox", str(setup["mail"]))
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr == (
        f'check-message: tenant "acme" has no learning store yet ({state / "learning.acme.db"}):'
        " scored without learning (no Bayes, spam signatures, sender reputation or correspondents)\n"
    )
    assert "spam: ham" in checked.stdout
    assert list(state.iterdir()) == []  # neither that tenant's store nor the default one's

    learned = run_cli("learn", "-c", c, "--spam", str(setup["mail"]))  # the default tenant's
    assert learned.returncode == 0, learned.stderr
    checked = run_cli("check-message", "-c", c, "--mailbox", "support-inbox", str(setup["mail"]))
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr == "" and "REPUTATION_SPAM" in checked.stdout
    assert not (state / "learning.acme.db").exists()
