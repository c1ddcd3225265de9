"""Run-time tokens end to end: made and revoked by the CLI while `gatewayd run` serves them.

Revocation from another process closes a live stream, expiry too; the per-token stream limit
answers 429 with Retry-After; `?access_token=` works only when allowed and never reaches a log;
admin tokens manage their subtree's tokens over HTTP.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gatewayd.config import hash_token
from gatewayd.sandbox.dovecot import Dovecot, free_port
from tests.conftest import OTHER_TOKEN, TOKEN, gateway_config
from tests.daemon import GatewayProcess, config_data, run_cli, write_config
from tests.sse import SseReader, mail

AUTH = {"Authorization": f"Bearer {TOKEN}"}
OTHER_AUTH = {"Authorization": f"Bearer {OTHER_TOKEN}"}


def created(output: str) -> dict[str, str]:
    return dict(
        line.split(": ", 1) for line in output.splitlines() if ": " in line and not line.startswith("#")
    )


async def closing_reason(reader: SseReader, timeout: float) -> str:
    """Read to the `closing` event, then to the end of the stream; the closing reason."""
    frame = await reader.until(lambda f: f.event == "closing", timeout)
    assert frame.id is None
    with pytest.raises(EOFError):
        await reader.next(timeout)
    return str(frame.json["reason"])


async def message_stream(session: aiohttp.ClientSession, url: str, token: str) -> SseReader:
    """A stream of message events, the token in the Authorization header."""
    headers = {"Authorization": f"Bearer {token}"}
    return SseReader(await session.get(f"{url}/events", headers=headers, params={"types": "message.*"}))


@pytest.fixture
def gatewayd_process(tmp_path: Path, dovecot: Dovecot, user: str) -> Iterator[GatewayProcess]:
    port = free_port()
    data = config_data(tmp_path, dovecot, [user], port, log_level="debug")
    data["server"].update(allow_query_token=True, max_streams_per_token=2, token_check_seconds=0.3)
    process = GatewayProcess(write_config(tmp_path / "gatewayd.yaml", data), port)
    process.start()
    yield process
    process.stop_now()


async def test_cli_tokens_against_the_running_daemon(
    gatewayd_process: GatewayProcess, dovecot: Dovecot, user: str
) -> None:
    gw = gatewayd_process
    config = str(gw.config_path)
    await gw.wait_idle()
    made = run_cli("token", "create", "-c", config, "--agent", "support", "--scope", "read")
    assert made.returncode == 0, made.stderr
    runtime = created(made.stdout)
    token, token_id = runtime["token"], runtime["id"]
    bogus = "gwd_not-a-token-at-all-1234567890"
    async with aiohttp.ClientSession() as session:
        # A token that expires while its stream is open (opened at once: it lives 3 s).
        brief = created(
            run_cli("token", "create", "-c", config, "--agent", "support", "--expires", "3s").stdout
        )
        short_lived = SseReader(
            await session.get(f"{gw.url}/events", params={"access_token": brief["token"]})
        )
        assert short_lived.response.status == 200
        # The browser way (query) and the header way, for one run-time token: its limit is 2.
        by_query = SseReader(
            await session.get(f"{gw.url}/events", params={"access_token": token, "types": "message.*"})
        )
        assert by_query.response.status == 200
        by_header = await message_stream(session, gw.url, token)
        assert by_header.response.status == 200
        third = await session.get(f"{gw.url}/events", params={"access_token": token})
        assert third.status == 429
        assert int(third.headers["Retry-After"]) >= 1
        assert (await third.json())["error"]["code"] == "too_many_streams"
        # Limits are per token: the configured token still gets its streams.
        config_stream = await session.get(
            f"{gw.url}/events", params={"access_token": TOKEN, "max_seconds": "1"}
        )
        assert config_stream.status == 200
        assert (await session.get(f"{gw.url}/v1/events", params={"access_token": bogus})).status == 401

        await dovecot.deliver_async(user, mail("for the run-time token"))
        for reader in (by_query, by_header):
            frame = (await reader.messages(1, timeout=15))[0]
            assert frame.json["data"]["subject"] == "for the run-time token"

        assert await closing_reason(short_lived, 10) == "token_expired"

        # Revoked from another process: both streams get `closing` and end, promptly.
        started = time.monotonic()
        revoked = run_cli("token", "revoke", "-c", config, token_id)
        assert revoked.returncode == 0, revoked.stderr
        reasons = await asyncio.gather(closing_reason(by_query, 5), closing_reason(by_header, 5))
        assert reasons == ["token_revoked", "token_revoked"]
        assert time.monotonic() - started < 5
        refused = await session.get(f"{gw.url}/v1/events", headers={"Authorization": f"Bearer {token}"})
        assert refused.status == 401
        assert (await refused.json())["error"]["message"] == "token revoked"
        refused = await session.get(f"{gw.url}/events", params={"access_token": brief["token"]})
        assert (await refused.json())["error"]["message"] == "token expired"

        listing = run_cli("token", "list", "-c", config)
        assert token_id in listing.stdout and token not in listing.stdout
    gw.terminate()
    assert await gw.wait_exit() == 0
    output = gw.output()
    assert "listening on" in output  # the debug log is there, but never a token
    for secret in (token, brief["token"], TOKEN, bogus):
        assert secret not in output
    assert "access_token" not in output


async def test_a_token_in_a_request_too_malformed_to_parse_never_reaches_the_log(
    gatewayd_process: GatewayProcess,
) -> None:
    """aiohttp's own log of a request it cannot parse quotes the offending bytes; gatewayd's names
    the error alone: however the token was sent, and whatever is wrong, it never reaches the log."""
    gw = gatewayd_process
    await gw.wait_idle()
    token = TOKEN.encode()
    pad = b"x" * 9000  # past aiohttp's 8190-byte line limit
    requests = [
        b"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ab\n" + token + b"\r\n\r\n",
        b"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + pad + b"\r\n\r\n",
        b"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: " + token + b"\n\r\n\r\n",
        b"GET /events?access%5Ftoken=" + token + b"&pad=" + pad + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /events?%61ccess_token=" + token + b" HTTP/1.1 x\r\nHost: x\r\n\r\n",
    ]
    for request in requests:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(request)
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert status_line.split()[1] == b"400", (request[:60], status_line)
    gw.terminate()
    assert await gw.wait_exit() == 0
    output = gw.output()
    assert output.count("refused a malformed HTTP request") == len(requests)  # logged, without the bytes
    assert [line for line in output.splitlines() if TOKEN in line] == []


async def test_query_token_is_refused_unless_allowed(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start_gateway(gateway_config(tmp_path, dovecot, [user], watch="on_demand"))
    caplog.set_level("DEBUG")
    async with aiohttp.ClientSession() as session:
        for path in ("/events", "/v1/events"):
            response = await session.get(gw.url + path, params={"access_token": TOKEN})
            assert response.status == 401
            assert "disabled" in (await response.json())["error"]["message"]
        assert (await session.get(f"{gw.url}/v1/events", headers=AUTH)).status == 200
    assert TOKEN not in caplog.text


async def test_query_token_and_header_together_are_refused(
    dovecot: Dovecot, user: str, tmp_path: Path, start_gateway: Any
) -> None:
    config = gateway_config(tmp_path, dovecot, [user], watch="on_demand")
    gw = await start_gateway(replace(config, server=replace(config.server, allow_query_token=True)))
    async with aiohttp.ClientSession() as session:
        response = await session.get(f"{gw.url}/events", headers=AUTH, params={"access_token": TOKEN})
        assert response.status == 400
        response = await session.get(f"{gw.url}/events", params=[("access_token", TOKEN)] * 2)
        assert response.status == 400
        ok = await session.get(f"{gw.url}/events", params={"access_token": TOKEN, "max_seconds": "1"})
        assert ok.status == 200


async def test_admin_tokens_over_http(idle_gateway: Any) -> None:
    async with aiohttp.ClientSession() as session:
        # A configured token has every scope, so it may make tokens for its own agent.
        response = await session.post(
            f"{idle_gateway.url}/v1/tokens",
            headers=AUTH,
            json={"scopes": ["read", "admin"], "expires_in": "1h"},
        )
        assert response.status == 201
        made = await response.json()
        assert made["agent_id"] == "support" and made["scopes"] == ["read", "admin"] and made["expires_at"]
        child_auth = {"Authorization": f"Bearer {made['token']}"}
        # ...but never for another agent's subtree, and never beyond its own scopes.
        assert (
            await session.post(f"{idle_gateway.url}/v1/tokens", headers=AUTH, json={"agent": "other"})
        ).status == 403
        response = await session.post(
            f"{idle_gateway.url}/v1/tokens", headers=child_auth, json={"scopes": ["send"]}
        )
        assert response.status == 403 and (await response.json())["error"]["code"] == "insufficient_scope"
        response = await session.post(
            f"{idle_gateway.url}/v1/tokens", headers=AUTH, json={"expires_in": "tomorrow"}
        )
        assert response.status == 400
        reader_only = await (
            await session.post(f"{idle_gateway.url}/v1/tokens", headers=AUTH, json={})
        ).json()
        assert reader_only["scopes"] == ["read"]
        response = await session.get(
            f"{idle_gateway.url}/v1/tokens", headers={"Authorization": f"Bearer {reader_only['token']}"}
        )
        assert response.status == 403

        listed = (await (await session.get(f"{idle_gateway.url}/v1/tokens", headers=child_auth)).json())[
            "tokens"
        ]
        assert {t["id"] for t in listed} == {made["id"], reader_only["id"]}
        assert not any("token" in t for t in listed)
        other = {"Authorization": "Bearer test-token-other"}
        assert (await (await session.get(f"{idle_gateway.url}/v1/tokens", headers=other)).json())[
            "tokens"
        ] == []
        assert (
            await session.delete(f"{idle_gateway.url}/v1/tokens/{made['id']}", headers=other)
        ).status == 404

        # Revoked over HTTP: the stream closes at once (same process), and the token is refused.
        stream = SseReader(await session.get(f"{idle_gateway.url}/events", headers=child_auth))
        await stream.response.content.readline()
        response = await session.delete(f"{idle_gateway.url}/v1/tokens/{made['id']}", headers=AUTH)
        assert response.status == 200 and (await response.json())["revoked_at"]
        assert await closing_reason(stream, 2) == "token_revoked"
        assert (await session.get(f"{idle_gateway.url}/v1/events", headers=child_auth)).status == 401


async def test_sighup_takes_the_configured_tokens_and_ends_the_streams_of_removed_ones(
    tmp_path: Path, dovecot: Dovecot, user: str
) -> None:
    """A leaked configured token is revoked by editing the file and `systemctl reload`: requests
    with it are refused, its open stream gets `closing` (token_revoked); the new token works, and
    another agent's stream and the watcher's IMAP connection are left alone."""
    port = free_port()
    data = config_data(tmp_path, dovecot, [user], port)
    path = write_config(tmp_path / "gatewayd.yaml", data)
    gw = GatewayProcess(path, port)
    gw.start()
    try:
        await gw.wait_idle()
        replacement = "gwd_the-replacement-token-0123456789"
        async with aiohttp.ClientSession() as session:
            leaked = SseReader(await session.get(f"{gw.url}/events", headers=AUTH))
            other = SseReader(await session.get(f"{gw.url}/events", headers=OTHER_AUTH))
            assert leaked.response.status == other.response.status == 200
            support = next(agent for agent in data["agents"] if agent["id"] == "support")
            support["token_sha256"] = [hash_token(replacement)]
            write_config(path, data)
            gw.signal(signal.SIGHUP)
            assert await closing_reason(leaked, 10) == "token_revoked"
            assert "configured tokens reloaded: 2 in force, 1 streams of removed ones ended" in gw.output()
            refused = await session.get(f"{gw.url}/v1/events", headers=AUTH)
            assert refused.status == 401
            renewed = await message_stream(session, gw.url, replacement)
            assert renewed.response.status == 200
            await dovecot.deliver_async(user, mail("after the reload"))
            (frame,) = await renewed.messages(1)
            assert frame.json["data"]["subject"] == "after the reload"
            assert not other.response.content.at_eof()  # the other agent's stream stays open
            health = await gw.wait_idle(token=replacement)
        assert [w["reconnects"] for w in health["watchers"]] == [0]
        assert replacement not in gw.output() and TOKEN not in gw.output()
    finally:
        gw.stop_now()
