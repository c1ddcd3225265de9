"""The HTTP server against clients that hold resources: idle or trickling connections, bodies
too large or too slow. Raw sockets against a real daemon."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from gatewayd.config import hash_token, parse_config
from tests.conftest import TOKEN

# Generous: the machine may be busy; old code held such connections for an hour.
CUT_OFF_WITHIN = 30.0


async def _daemon(tmp_path: Path, start_gateway: Any, **server: Any) -> int:
    data = {
        "server": {"listen": "127.0.0.1:0", "request_timeout_seconds": 1, **server},
        "store": {"path": str(tmp_path / "events.db")},
        "agents": [{"id": "a", "token_sha256": [hash_token(TOKEN)]}],
    }
    gateway = await start_gateway(parse_config(data, env={}))
    port: int = gateway.daemon.port
    return port


async def _trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send a byte at a time, as a slowloris client does, until the server hangs up."""
    try:
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)
    except ConnectionError:
        pass


async def test_idle_and_trickling_connections_are_cut_off(tmp_path: Path, start_gateway: Any) -> None:
    port = await _daemon(tmp_path, start_gateway)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
    headers = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    trickling = asyncio.create_task(_trickle(slow_writer, headers))
    try:
        for reader in (idle_reader, slow_reader):
            # EOF: the server closed the connection, having answered nothing.
            assert await asyncio.wait_for(reader.read(), CUT_OFF_WITHIN) == b""
    finally:
        trickling.cancel()
        for writer in (idle_writer, slow_writer):
            writer.close()
    # A client that asks in time is answered as ever.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), CUT_OFF_WITHIN)).startswith(b"HTTP/1.1 200 ")
    writer.close()


async def _post(port: int, body: bytes, declared: int | None = None) -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /v1/tokens HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared or len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    try:
        status_line = await asyncio.wait_for(reader.readline(), CUT_OFF_WITHIN)
        response_headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CUT_OFF_WITHIN)
        length = next(
            int(line.split(b":")[1])
            for line in response_headers.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        payload = json.loads(await asyncio.wait_for(reader.readexactly(length), CUT_OFF_WITHIN))
    finally:
        writer.close()
    return int(status_line.split()[1]), payload


async def test_a_body_too_large_or_too_slow_is_refused(tmp_path: Path, start_gateway: Any) -> None:
    port = await _daemon(tmp_path, start_gateway)
    large = json.dumps({"agent": "a", "padding": "x" * 100_000}).encode()
    assert await _post(port, large) == (
        413,
        {"error": {"code": "payload_too_large", "message": "Request Entity Too Large"}},
    )
    # Ten bytes of the hundred announced, then nothing: the handler does not wait for ever.
    status, payload = await _post(port, b'{"agent": ', declared=100)
    assert (status, payload["error"]["code"]) == (408, "request_timeout"), payload
    status, payload = await _post(port, b'{"scopes": ["read"]}')
    assert status == 201 and payload["token"], payload


async def _answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 answer with a Content-Length: its head and body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CUT_OFF_WITHIN)
    length = next(
        int(line[15:]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    return head, await asyncio.wait_for(reader.readexactly(length), CUT_OFF_WITHIN)


async def test_connections_over_max_connections_are_refused_and_the_rest_go_on(
    tmp_path: Path, start_gateway: Any
) -> None:
    """Nothing bounded the connections a client could open, up to the last file descriptor."""
    port = await _daemon(tmp_path, start_gateway, max_connections=3, request_timeout_seconds=30)
    stream_reader, stream_writer = await asyncio.open_connection("127.0.0.1", port)
    stream_writer.write(
        b"GET /v1/events/stream?ping=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\nAccept: text/event-stream\r\n\r\n"
    )
    assert (await asyncio.wait_for(stream_reader.readuntil(b"\r\n\r\n"), CUT_OFF_WITHIN)).startswith(
        b"HTTP/1.1 200 "
    )
    idle = []
    for _ in range(2):  # kept alive after an answer: counted, whatever the order of accepts
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head, _ = await _answer(reader)
        assert head.startswith(b"HTTP/1.1 200 ")
        idle.append((reader, writer))
    try:
        refused_reader, refused_writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await asyncio.wait_for(refused_reader.read(), CUT_OFF_WITHIN)  # then closed
        refused_writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 5" in head, answer
        assert json.loads(body)["error"] == {"code": "unavailable", "message": "too many connections"}
        # The stream goes on: its pings keep coming.
        pings = await asyncio.wait_for(stream_reader.readuntil(b": ping"), CUT_OFF_WITHIN)
        assert b": ping" in pings
        # One closed, one more is welcome again.
        idle.pop()[1].close()
        for _ in range(100):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            again = await asyncio.wait_for(reader.read(), CUT_OFF_WITHIN)
            writer.close()
            if not again.startswith(b"HTTP/1.1 503 "):  # the server may not have seen the close yet
                break
            await asyncio.sleep(0.05)
        assert again.startswith(b"HTTP/1.1 200 "), again
    finally:
        stream_writer.close()
        for _, writer in idle:
            writer.close()


async def _get(port: int, head: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + b"Connection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), CUT_OFF_WITHIN)
    writer.close()
    status, _, body = answer.partition(b"\r\n\r\n")
    return status.split(b"\r\n")[0], body


async def test_allowed_hosts_refuses_a_request_naming_another_host(
    tmp_path: Path, start_gateway: Any
) -> None:
    """A page whose name was rebound to 127.0.0.1 reached gatewayd as its own origin."""
    port = await _daemon(tmp_path, start_gateway, allowed_hosts=["localhost", "Gatewayd.Example.:8443"])
    auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    for host in (b"rebound.attacker.example", b"gatewayd.example", b"127.0.0.1:%d" % port):
        status, body = await _get(port, b"GET /v1/events HTTP/1.1\r\nHost: " + host + b"\r\n" + auth)
        assert status == b"HTTP/1.1 421 Misdirected Request", (host, status)
        error = json.loads(body)["error"]
        assert error["code"] == "misdirected_request" and "allowed_hosts" in error["message"]
        assert b"attacker" not in body
    status, _ = await _get(port, b"GET /healthz HTTP/1.0\r\n")  # no Host at all
    assert status.endswith(b" 421 Misdirected Request")
    for host in (b"localhost", b"LOCALHOST:8025", b"gatewayd.example:8443", b"gatewayd.example.:8443"):
        status, body = await _get(port, b"GET /v1/events HTTP/1.1\r\nHost: " + host + b"\r\n" + auth)
        assert status == b"HTTP/1.1 200 OK", (host, status, body)
