"""Fuzz the HTTP API of a real `gatewayd run`: malformed requests on every route.

    .venv/bin/python bench/fuzz_http.py [--count N] [--seed S]

Starts the sandbox Dovecot and gatewayd (as tests/daemon.py does), delivers one message so the
report endpoint has an event, then sends --count seeded requests over raw sockets: odd methods,
bad and repeated query parameters, huge values, invalid UTF-8 and percent-encoding in the path
and query, since= and cursor= beyond the last id, out of range, in other digits, odd timestamps,
odd Last-Event-ID and Authorization headers (two of them too), bodies on GET, JSON that is not an
object or is nested deeply, bodies that are not UTF-8 or name odd charsets. A finding is a 5xx
other than 503, a JSON listing that is not JSON or has an odd `gap`, a token echoed back, no
answer within 10 s, the daemon exiting, or a traceback or the token in its (debug) log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatewayd.sandbox.dovecot import Dovecot, free_port
from tests.conftest import TOKEN
from tests.daemon import GatewayProcess, config_data, write_config

ROUTES = [
    "/events",
    "/v1/events/stream",
    "/v1/events",
    "/healthz",
    "/v1/tokens",
    "/v1/tokens/tok_0123456789ab",
    "/v1/messages/1/report",
    "/v1/messages/{eid}/report",
    "/",
    "/v1/events/",
]
METHODS = [
    "GET",
    "POST",
    "PUT",
    "DELETE",
    "HEAD",
    "OPTIONS",
    "PATCH",
    "TRACE",
    "CONNECT",
    "FOO",
    "get",
    "G\x00T",
]
PARAMS = [
    *("types", "event_types", "eventTypes", "agent", "mailbox", "from", "min_spam", "max_spam"),
    *("max_seconds", "ping", "since", "limit", "cursor", "access_token", "access_token", "x", ""),
]
VALUES = [
    *("", "0", "-1", "1e309", "nan", "inf", "-inf", "1" * 5000, "9" * 30, "%00", "%ff%fe", "%", "%zz"),
    *("a,b,,c", "*", "**", "message.*", "\u202e", "%C0%80", "2026-13-45T99:99:99Z", "2026-11-21T13:25:53Z"),
    *("1970-01-01T00:00:00+25:00", "0x10", " 1", "1 ", "+1", "1.5", "true", "null", "[", "{}", "@", "a@b"),
    *("support", "support-inbox", "x" * 70000, "%E2%80%AE", "é", "\\", "'\"", ";--", "%C2%B2", "١"),
]
# since= and cursor=: ids beyond the last issued (the listing's `gap`), at and past the store's
# bounds, negative, in other scripts' digits; timestamps past, future and malformed.
POSITIONS = [
    *("1", "2", "3", "5", "100", "999999", "9" * 18, "9223372036854775807", "9223372036854775808"),
    *("18446744073709551616", "-9223372036854775809", "-0", "00001", "0" * 40, "١٢", "２", "%D9%A1", "1_0"),
    *("2100-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"),
    *("2026-11-21T13:25:53.123456789Z", "2026-11-21", "2026-11-21T13:25:53", "2026-11-21T13:25:53%2B14:00"),
    *("2026-11-21T13:25:53-23:59", "2026-02-30T00:00:00Z", "2026-11-21t13:25:53z", "+2026-11-21T13:25:53Z"),
]
GAP_KEYS = {"requested", "first_available_id", "at", "reason"}
LAST_EVENT_IDS = [
    *("-1", "0", "1", "9" * 30, "abc", "1\x00", "", " ", "1.0", "1e5", "-0", "１", "\xff", "9" * 5000),
    *("1,2", "%31"),
]
AUTHORIZATIONS = [
    *("Bearer", "Bearer ", f"Bearer  {TOKEN}", f"bearer {TOKEN}", "Basic dXNlcjpwYXNz", "Bearer é"),
    *("Bearer \xff\xfe", "Bearer " + "x" * 9000, f"Bearer {TOKEN} extra", f"Token {TOKEN}", TOKEN),
    *("Bearer gwd_", "Bearer tok_0123456789ab", f"Bearer {TOKEN}\t", f"Bearer\t{TOKEN}"),
]
BODIES = [
    *(b"", b"{}", b"[]", b"null", b"1", b'"x"', b"[" * 5000 + b"]" * 5000, b"{" * 100000, b"NaN"),
    *(b'{"a":' * 3000 + b"1" + b"}" * 3000, b"\xff\xfe", b'{"label": "spam"}', b'{"label": 1}'),
    *(b'{"label": ["spam"]}', b'{"agent": {}}', b'{"scopes": "read"}', b'{"scopes": [1]}'),
    *(b'{"expires_in": -1}', b'{"expires_in": "99999999999d"}', b'{"expires_in": "0s"}'),
    *(b'{"agent": "other"}', b'{"scopes": ["admin", "admin"]}', b'{"label":"spam","label":"ham"}'),
    *(b'{"expires_in": "1e400d"}', b'{"\\ud800": 1}', b'{"label": "spam", "x": NaN}', b'{"label": "\xe9"}'),
]
ACCEPTS = [
    *("text/event-stream", "application/json", "text/event-stream;q=0", "*/*;q=abc"),
    *("text/event-stream;q=1e9", ",,,", "é", "text/*;q=-1"),
]
CONTENT_TYPES = [
    "application/json",
    "text/plain",
    "application/json; charset=latin1",
    "x",
    "a/b; charset=nope",
]


def listing(rng: random.Random, port: int) -> bytes:
    """A well-formed listing from a position (since=, cursor=, or both): the `gap` paths."""
    names = rng.choice([["since"], ["cursor"], ["since", "cursor"]])
    query = "&".join(f"{name}={rng.choice(POSITIONS)}" for name in names)
    query += rng.choice(["", "&limit=1", "&limit=500", "&types=message.*", "&mailbox=fuzz"])
    return (
        f"GET /v1/events?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n"
    ).encode()


def build(rng: random.Random, event_id: str, port: int) -> bytes:
    if rng.random() < 0.15:
        return listing(rng, port)
    method = rng.choice(METHODS) if rng.random() < 0.3 else rng.choice(["GET", "GET", "POST", "DELETE"])
    path = rng.choice(ROUTES).replace("{eid}", event_id)
    if rng.random() < 0.15:
        path += rng.choice(["%ff", "%", "/%00", "/\xe9", "/../..", "//", "/" + "a" * 9000, "%2F..", "/;x"])
    query = []
    for _ in range(rng.choice([0, 1, 1, 2, 3, 5])):
        name = rng.choice(PARAMS)
        # The token only where it is one: an error may quote what another parameter was given.
        value = TOKEN if name == "access_token" and rng.random() < 0.5 else rng.choice(VALUES)
        if name in ("since", "cursor") and rng.random() < 0.7:
            value = rng.choice(POSITIONS)
        query.append(f"{name}={value}")
    if rng.random() < 0.1:
        query.append(rng.choice(["&&&", "=", "a", "==", "types", "since=1&since=2", "limit=1&limit=2"]))
    target = path + ("?" + "&".join(query) if query else "")
    headers = [f"Host: 127.0.0.1:{port}", "Connection: close"]
    if rng.random() < 0.85:
        headers.append(
            "Authorization: " + (f"Bearer {TOKEN}" if rng.random() < 0.6 else rng.choice(AUTHORIZATIONS))
        )
    if rng.random() < 0.1:
        headers.append("Authorization: " + rng.choice([*AUTHORIZATIONS, f"Bearer {TOKEN}"]))
    if rng.random() < 0.3:
        headers.append("Last-Event-ID: " + rng.choice(LAST_EVENT_IDS))
        if rng.random() < 0.2:
            headers.append("Last-Event-ID: 1")
    if rng.random() < 0.3:
        headers.append("Accept: " + rng.choice(ACCEPTS))
    body = b""
    if rng.random() < 0.4:
        body = rng.choice(BODIES)
        headers += [f"Content-Type: {rng.choice(CONTENT_TYPES)}", f"Content-Length: {len(body)}"]
    head = f"{method} {target} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    return head.encode("utf-8", "surrogateescape") + body


def odd_listing(status: int, answer: bytes) -> str | None:
    """What is wrong with a JSON listing of events (GET /v1/events), or None."""
    head, _, body = answer.partition(b"\r\n\r\n")
    if status != 200 or b"application/json" not in head or not body.startswith(b'{"events"'):
        return None
    try:
        listing = json.loads(body)
    except ValueError:
        return "a listing that is not JSON"
    gap = listing.get("gap")
    if gap is None:
        return None
    if set(gap) != GAP_KEYS or gap["reason"] != "unknown_id" or not str(gap["first_available_id"]).isdigit():
        return f"a listing's odd gap {gap!r}"
    return None


async def send(port: int, request: bytes) -> tuple[int, bytes]:
    """The status and what came back (a stream's headers only)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        rest = b"" if b"text/event-stream" in head else await asyncio.wait_for(reader.read(), 10)
        return int(head.split(b" ", 2)[1]), head + rest
    finally:
        writer.close()


async def first_event_id(port: int) -> str:
    request = (
        f"GET /v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    for _ in range(100):
        _, raw = await send(port, request.encode())
        events = json.loads(raw.split(b"\r\n\r\n", 1)[1])["events"]
        if events:
            return str(events[0]["id"])
        await asyncio.sleep(0.1)
    raise RuntimeError("no event for the report endpoint")


async def fuzz(args: argparse.Namespace, work: Path) -> int:
    dovecot = Dovecot.create(work / "dovecot")
    dovecot.start()
    user = "fuzz"
    dovecot.add_user(user)
    port = free_port()
    data = config_data(work, dovecot, [user], port, log_level="debug")
    data["server"]["allow_query_token"] = True  # ?access_token= too, which must never be logged
    gateway = GatewayProcess(write_config(work / "gatewayd.yaml", data), port)
    gateway.start()
    findings: list[str] = []
    statuses: Counter[int] = Counter()
    gaps = 0  # listings with a `gap`
    try:
        await gateway.wait_idle()
        dovecot.deliver(user, b"From: a@b.example\r\nSubject: hi\r\n\r\nbody\r\n")
        event_id = await first_event_id(port)
        rng = random.Random(args.seed)
        for _ in range(args.count):
            request = build(rng, event_id, port)
            try:
                status, answer = await send(port, request)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                findings.append(f"{type(exc).__name__} for {request[:200]!r}")
                continue
            statuses[status] += 1
            if status >= 500 and status != 503:
                findings.append(f"{status} for {request[:200]!r}: {answer[-300:]!r}")
            gaps += b'"gap":' in answer
            if (odd := odd_listing(status, answer)) is not None:
                findings.append(f"{odd} for {request[:200]!r}: {answer[-300:]!r}")
            if TOKEN.encode() in answer:
                findings.append(f"token echoed for {request[:200]!r}")
            if not gateway.running:
                findings.append(f"gatewayd exited after {request[:200]!r}")
                break
    finally:
        gateway.terminate()
        await gateway.wait_exit()
        dovecot.stop()
    log = gateway.stderr()
    if "Traceback" in log:
        findings.append(f"a traceback in the log: {work / 'gatewayd.yaml'} (stderr beside it)")
    if TOKEN in log:
        findings.append(f"the token in the log: {work / 'gatewayd.yaml'} (stderr beside it)")
    print(f"{args.count} requests, seed {args.seed}: {dict(sorted(statuses.items()))}, {gaps} with a gap")
    for finding in findings[:50]:
        print("  " + finding)
    print(f"{len(findings)} findings")
    return 1 if findings else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gatewayd-fuzz-http-"))
    return asyncio.run(fuzz(args, work))


if __name__ == "__main__":
    sys.exit(main())
