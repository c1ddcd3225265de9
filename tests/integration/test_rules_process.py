"""The rules with the real `gatewayd` process: kill -9 between acting and publishing, SIGHUP reload,
`check-message` as a dry run, `check-config` errors naming the rule and the key."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gatewayd.rules.execute import CRASH_ENV
from gatewayd.sandbox.dovecot import Dovecot, free_port
from tests.conftest import TOKEN
from tests.daemon import AUTH, GatewayProcess, config_data, run_cli, write_config
from tests.integration.test_rules import Imap
from tests.sse import SseReader, mail, without_message_id


@pytest.fixture
def gatewayd(tmp_path: Path, dovecot: Dovecot) -> Iterator[Any]:
    made: list[GatewayProcess] = []

    def make(users: list[str], **top: Any) -> GatewayProcess:
        port = free_port()
        data = config_data(tmp_path, dovecot, users, port)
        data.update(top)
        process = GatewayProcess(write_config(tmp_path / "gatewayd.yaml", data), port)
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop_now()


async def message_events(url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        params = {"types": "message.received*", "limit": "500"}
        async with session.get(f"{url}/v1/events", headers=AUTH, params=params) as response:
            assert response.status == 200, await response.text()
            return list((await response.json())["events"])


async def wait_output(process: GatewayProcess, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in process.output():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never appeared in gatewayd's output:\n{process.output()}")
        await asyncio.sleep(0.05)


async def test_kill_9_between_move_and_publish_neither_moves_twice_nor_loses_the_event(
    gatewayd: Any, dovecot: Dovecot, user: str
) -> None:
    rules = [
        {"name": "archive", "if": {"subject": "archive me"}, "then": [{"move": "Archive"}, {"tag": "kept"}]}
    ]
    process = gatewayd([user], rules=rules)
    process.start(env={CRASH_ENV: "after_move"})  # dies right after the MOVE, before any record of it
    await process.wait_idle()
    await dovecot.deliver_async(user, mail("please archive me"))
    assert await process.wait_exit() == 99
    imap = await asyncio.to_thread(Imap, dovecot, user)
    try:
        (archived,) = await asyncio.to_thread(imap.uids, "Archive")
        assert await asyncio.to_thread(imap.uids, "INBOX") == []
        process.start()
        await process.wait_idle()
        events = await message_events(process.url)
        # The message is no longer in INBOX, yet its event comes, once, saying where it is.
        (event,) = events
        data = event["data"]
        assert (data["folder"], data["uid"], data["moved_from"]["folder"]) == ("Archive", archived, "INBOX")
        assert data["recovered"] is True and data["labels"] == ["kept"]
        (move,) = [a for a in data["rules_applied"][0]["actions"] if a["action"] == "move"]
        assert move["outcome"] == "ok" and move["recovered"] is True
        # Moved once: nothing more in Archive, and a restart publishes nothing new.
        assert await asyncio.to_thread(imap.uids, "Archive") == [archived]
        process.terminate()
        assert await process.wait_exit() == 0
        process.start()
        await process.wait_idle()
        assert len(await message_events(process.url)) == 1
    finally:
        await asyncio.to_thread(imap.close)


@pytest.mark.parametrize("message_id", [True, False], ids=["message-id", "no-message-id"])
async def test_kill_9_after_a_move_into_a_folder_synced_first_announces_it_once(
    gatewayd: Any, dovecot: Dovecot, user: str, message_id: bool
) -> None:
    # Archive is watched too, and synced before INBOX after the restart: it used to announce the
    # moved message as new mail, before INBOX's recovery announced it again (without a
    # Message-ID, until the message was recognised by its identity: size, date, header digest).
    rules = [{"name": "archive", "if": {"folder": "INBOX"}, "then": [{"move": "Archive"}]}]
    process = gatewayd([user], rules=rules)
    data = yaml.safe_load(process.config_path.read_text(encoding="utf-8"))
    data["agents"][0]["mailboxes"][0]["imap"]["folders"] = ["Archive", "INBOX"]
    process.config_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    imap = await asyncio.to_thread(Imap, dovecot, user)
    try:
        await asyncio.to_thread(imap.client.create, "Archive")
        process.start(env={CRASH_ENV: "after_move"})
        await process.wait_idle()
        message = mail("file me")
        await dovecot.deliver_async(user, message if message_id else without_message_id(message))
        assert await process.wait_exit() == 99
        (archived,) = await asyncio.to_thread(imap.uids, "Archive")
        process.start()
        await process.wait_idle()
        (event,) = await message_events(process.url)
        data = event["data"]
        assert (data["folder"], data["uid"], data["recovered"]) == ("Archive", archived, True)
        assert await asyncio.to_thread(imap.uids, "Archive") == [archived]
    finally:
        await asyncio.to_thread(imap.close)


async def test_sighup_reloads_rules_and_a_bad_file_keeps_the_old_ones(
    gatewayd: Any, dovecot: Dovecot, user: str, tmp_path: Path
) -> None:
    rules_file = tmp_path / "rules.yaml"

    def write_rules(label: str, action: str = "tag") -> None:
        rules_file.write_text(yaml.safe_dump({"rules": [{"name": "tagger", "then": [{action: label}]}]}))

    write_rules("v1")
    process = gatewayd([user], rules_file=str(rules_file))
    process.start()
    started = (await process.wait_idle())["rules"]
    assert started["count"] == 1 and started["last_reload"] is None
    async with aiohttp.ClientSession() as session:
        reader = SseReader(
            await session.get(f"{process.url}/events", headers=AUTH, params={"types": "message.*"})
        )
        await dovecot.deliver_async(user, mail("one"))
        (first,) = await reader.messages(1)
        write_rules("v2")
        process.signal(signal.SIGHUP)
        await wait_output(process, "rules reloaded: 1 rules")
        reloaded = (await process.wait_idle())["rules"]
        assert reloaded["last_reload"] == {"at": reloaded["loaded_at"], "outcome": "ok"}
        assert reloaded["loaded_at"] >= started["loaded_at"]
        await dovecot.deliver_async(user, mail("two"))
        (second,) = await reader.messages(1)
        write_rules("Archive", action="mvoe")
        process.signal(signal.SIGHUP)
        await wait_output(process, "rules reload failed")
        # A template's typo is a rule's problem too, not an exception out of the signal handler.
        write_rules("Hello {{ sender_name|captalize }}", action="auto_reply")
        process.signal(signal.SIGHUP)
        await wait_output(process, "auto_reply.body: template syntax error on line 1: No filter named")
        await dovecot.deliver_async(user, mail("three"))
        (third,) = await reader.messages(1)
        # The same SSE connection carried all three; the IMAP connection was never dropped.
        health = await process.wait_idle(token=TOKEN)
    assert [f.json["data"]["labels"] for f in (first, second, third)] == [["v1"], ["v2"], ["v2"]]
    assert 'rules[0] "tagger".then[0]: unknown action "mvoe" (did you mean "move"?)' in process.output()
    assert [w["reconnects"] for w in health["watchers"]] == [0]
    # /healthz tells that the last reload failed and which rules stay, not the problems (the log has them).
    failed = health["rules"]
    assert failed["count"] == 1 and failed["loaded_at"] == reloaded["loaded_at"]
    assert failed["last_reload"]["outcome"] == "failed" and failed["last_reload"]["problems"] == 1
    assert failed["last_reload"]["at"] >= reloaded["loaded_at"] and "mvoe" not in json.dumps(health)
    assert process.running


def test_check_message_is_a_dry_run_showing_matching_rules(
    dovecot: Dovecot, user: str, tmp_path: Path
) -> None:
    data = config_data(tmp_path, dovecot, [user], free_port())
    mailbox = data["agents"][0]["mailboxes"][0]
    mailbox["address"] = f"{user}@gateway.test"
    mailbox["smtp"] = {"host": "127.0.0.1", "port": 1, "tls": "none"}  # never contacted
    mailbox["rules"] = [
        {
            "name": "support",
            "if": {"any": [{"subject": {"regex": "(?i)urgent"}}, {"from": "@vip.example"}]},
            "then": [{"move": "Urgent"}, {"auto_reply": "We are on it."}, {"add_keywords": "urgent"}],
        },
        {"name": "newsletters", "if": {"list_id": True}, "then": ["drop_event"]},
    ]
    config = write_config(tmp_path / "gatewayd.yaml", data)
    eml = tmp_path / "urgent.eml"
    eml.write_bytes(mail("URGENT: server down", sender="Carol <carol@vip.example>"))
    args = ("check-message", "-c", str(config), "--mailbox", f"{user}-inbox")
    human = run_cli(*args, str(eml))
    assert human.returncode == 0, human.stderr
    assert "rules:\n    support:\n      move folder=Urgent: would do" in human.stdout
    assert "auto_reply period_days=7.0 to=['carol@vip.example']: would do" in human.stdout
    assert "newsletters" not in human.stdout
    result = run_cli(*args, "--json", str(eml))
    (line,) = [json.loads(text) for text in result.stdout.splitlines()]
    assert line["data"]["folder"] == "Urgent" and line["data"]["labels"] == ["urgent"]
    assert {a["outcome"] for a in line["data"]["rules_applied"][0]["actions"]} == {"dry_run"}
    assert "without --mailbox" not in result.stderr
    # Without --mailbox: the global rules only, and stderr says what that leaves out.
    bare = run_cli("check-message", "-c", str(config), "--json", str(eml))
    assert bare.returncode == 0 and json.loads(bare.stdout)["data"]["rules_applied"] == []
    assert "without --mailbox, the global rules only and no per-mailbox checks" in bare.stderr
    # Nothing was done: the message never reached the server, and no mail went anywhere.
    assert Imap(dovecot, user).uids("Urgent") == []


def test_check_config_names_the_rule_and_the_key(dovecot: Dovecot, user: str, tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        yaml.safe_dump(
            [
                {"name": "ok", "then": [{"tag": "x"}]},
                {"name": "typo", "if": {"subjet": "x", "size": {"over": "lots"}}, "then": [{"move": ""}]},
            ]
        )
    )
    data = config_data(tmp_path, dovecot, [user], free_port()) | {"rules_file": str(rules_file)}
    data["agents"][0]["mailboxes"][0]["rules"] = [{"name": "reply", "then": [{"auto_reply": "hi"}]}]
    result = run_cli("check-config", "-c", str(write_config(tmp_path / "gatewayd.yaml", data)))
    assert result.returncode == 2
    errors = result.stderr
    assert f'{rules_file}: rules[1] "typo".if.subjet: unknown key (did you mean "subject"?)' in errors
    assert f'{rules_file}: rules[1] "typo".if.size.over: expected a size' in errors
    assert f'{rules_file}: rules[1] "typo".then[0].move: expected a folder name' in errors
    assert (
        f'agents[0].mailboxes[0].rules[0] "reply".then[0].auto_reply: mailbox "{user}-inbox" has no smtp:'
        in errors
    )
