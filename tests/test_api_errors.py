"""JSON errors: aiohttp's own HTTP errors become JSON and keep the headers HTTP requires."""

from __future__ import annotations

import asyncio
from pathlib import Path

from multidict import MultiDict
from yarl import URL

from gatewayd.events import NewEvent
from gatewayd.store.sqlite import SqliteEventStore
from tests.api_server import ACME_ADMIN, fleet, serving


async def test_405_is_json_and_says_which_methods_are_allowed(tmp_path: Path) -> None:
    async with serving(fleet(tmp_path, bot_parent="acme")) as api:
        for method, path, allowed in [
            ("POST", "/events", {"GET"}),
            ("PUT", "/v1/tokens", {"GET", "POST"}),
            ("GET", "/v1/tokens/tok_0123456789ab", {"DELETE"}),
            ("DELETE", "/healthz", {"GET"}),
        ]:
            headers = {"Authorization": f"Bearer {ACME_ADMIN}"}
            async with api.session.request(method, api.url + path, headers=headers) as response:
                assert response.status == 405, (method, path)
                assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed, path
                body = await response.json()
                assert body["error"]["code"] == "method_not_allowed"


async def test_hostile_client_input_gets_a_json_4xx_never_a_500(tmp_path: Path) -> None:
    async with serving(fleet(tmp_path, bot_parent="acme")) as api:
        nested = "[" * 8_000 + "]" * 8_000  # within the 16 KiB a body may have
        for method, path, body, status in [
            ("GET", "/v1/events?limit=%C2%B2", None, 400),  # "²" passes str.isdigit()
            ("GET", "/v1/events/stream?since=0001-01-01T00:00:00%2B01:00", None, 400),  # before year 1 in UTC
            ("GET", "/v1/events/stream?since=9999-12-31T23:59:59-01:00", None, 400),  # after year 9999
            ("POST", "/v1/tokens", nested, 400),  # JSON nested past the recursion limit
        ]:
            status_got, answer = await api.call(method, path, ACME_ADMIN, data=body)
            assert status_got == status, (path, answer)
            assert set(answer["error"]) >= {"code", "message"}, path
        # A header value that is not ASCII (aiohttp hands it over as surrogate escapes).
        url = URL(api.url)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(b"GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n")
        status_line = await reader.readline()
        writer.close()
        assert status_line.split()[1] == b"401", status_line


async def test_a_body_is_read_as_utf8_whatever_charset_it_names(tmp_path: Path) -> None:
    """JSON is UTF-8: decoding by the Content-Type's charset raised past the handler (a 500) for
    bytes that are not UTF-8 and for a charset Python does not know."""
    async with serving(fleet(tmp_path, bot_parent="acme")) as api:
        for path, body, content_type, status in [
            ("/v1/tokens", b"\xff\xfe", "application/json", 400),
            ("/v1/messages/1/report", b'{"label": "\xe9"}', "application/json", 400),
            ("/v1/tokens", b'{"scopes": ["read"]}', "application/json; charset=no-such-charset", 201),
        ]:
            headers = {"Authorization": f"Bearer {ACME_ADMIN}", "Content-Type": content_type}
            async with api.session.post(api.url + path, data=body, headers=headers) as response:
                answer = await response.json()
                assert response.status == status, (path, body, content_type, answer)
                if status == 400:
                    assert answer["error"]["message"].startswith("body: expected"), answer


async def test_a_parameter_given_twice_is_a_400_naming_it_unless_it_is_a_list(tmp_path: Path) -> None:
    """Taking the first of two values would silently drop the rest (`mailbox=a&mailbox=b` streamed
    `a` alone, even with `b` beyond the token's reach): a list takes every value, any other
    parameter is refused naming it."""
    auth = {"Authorization": f"Bearer {ACME_ADMIN}"}
    config = fleet(tmp_path, bot_parent="acme")
    store = SqliteEventStore(config.store.path)
    await store.open()
    await store.append([NewEvent(kind, "acme", "acme-in", {}) for kind in ("a.one", "b.two", "c.three")])
    await store.close()
    async with serving(config) as api:
        status, answer = await api.call("GET", "/v1/events?mailbox=acme-in&mailbox=globex-in", ACME_ADMIN)
        assert status == 403
        assert answer["error"]["message"] == "mailbox 'globex-in' is not accessible with this token"
        for query, kinds in [
            ("types=a.*&types=b.*", ["a.one", "b.two"]),
            ("eventTypes=a.*&eventTypes=c.*", ["a.one", "c.three"]),
            ("types=", ["a.one", "b.two", "c.three"]),  # an empty list filters nothing
            ("agent=bot&agent=acme", ["a.one", "b.two", "c.three"]),
        ]:
            status, answer = await api.call("GET", f"/v1/events?mailbox=acme-in&{query}", ACME_ADMIN)
            assert status == 200, (query, answer)
            assert sorted(event["type"] for event in answer["events"]) == kinds, query
        for path, name in [
            ("/events?from=a@example.org&from=b@example.org", "from"),
            ("/events?min_spam=1&min_spam=9", "min_spam"),
            ("/events?ping=5&ping=10", "ping"),
            ("/events?max_seconds=5&max_seconds=10", "max_seconds"),
            ("/events?since=0&since=1", "since"),
            ("/v1/events?limit=2&limit=3", "limit"),
            ("/v1/events?cursor=5&cursor=6", "cursor"),
            ("/v1/messages/1/report?label=spam&label=ham", "label"),
            ("/events?mailbox=&mailbox=%20", "mailbox"),
        ]:
            method = "POST" if "report" in path else "GET"
            # Not api.call: a stream opened by mistake must fail the test, not hang it.
            async with api.session.request(method, api.url + path, headers=auth) as response:
                assert response.status == 400, path
                message = (await response.json())["error"]["message"]
            assert message.startswith(f"{name}: "), (path, message)
        headers = MultiDict([*auth.items(), *[("Last-Event-ID", "1")] * 2])
        async with api.session.get(api.url + "/events", headers=headers) as response:
            assert response.status == 400
            assert (await response.json())["error"]["message"].startswith("Last-Event-ID: ")
        two_tokens = MultiDict([("Authorization", f"Bearer {ACME_ADMIN}"), ("Authorization", "Bearer x")])
        async with api.session.get(api.url + "/v1/events", headers=two_tokens) as response:
            assert response.status == 400
            assert "Authorization" in (await response.json())["error"]["message"]


async def test_numbers_are_plain_ascii_decimals(tmp_path: Path) -> None:
    """float() reads "1_0" as 10 and a fullwidth "１" as 1: what the client meant is anyone's guess."""
    auth = {"Authorization": f"Bearer {ACME_ADMIN}"}
    async with serving(fleet(tmp_path, bot_parent="acme")) as api:
        for query, name in [
            ("min_spam=1_0", "min_spam"),
            ("max_spam=%EF%BC%91", "max_spam"),
            ("ping=%205", "ping"),
            ("max_seconds=0x10", "max_seconds"),
        ]:
            async with api.session.get(f"{api.url}/events?{query}", headers=auth) as response:
                assert response.status == 400, query
                message = (await response.json())["error"]["message"]
            assert message.startswith(f"{name}: expected a number"), (query, message)
        for query in ("min_spam=-2.5", "max_spam=1e1", "min_spam=.5", "min_spam=%2B3"):
            status, answer = await api.call("GET", f"/v1/events?{query}", ACME_ADMIN)
            assert status == 200, (query, answer)


async def test_too_many_type_patterns_is_a_400_not_a_500(tmp_path: Path) -> None:
    """Each pattern is an OR in the store's SQL: past SQLite's expression depth of 1000 the read
    failed, a 500 for the listing and a dead stream for a replay."""
    auth = {"Authorization": f"Bearer {ACME_ADMIN}"}
    many = ",".join(f"t{n}.*" for n in range(1000))
    async with serving(fleet(tmp_path, bot_parent="acme")) as api:
        for path in ("/v1/events", "/events"):
            async with api.session.get(f"{api.url}{path}?since=0&types={many}", headers=auth) as response:
                assert response.status == 400, path
                message = (await response.json())["error"]["message"]
            assert message.startswith("types: at most 100 patterns"), message
        most = ",".join(f"t{n}.*" for n in range(100))
        status, answer = await api.call("GET", f"/v1/events?agent=acme,bot&types={most}", ACME_ADMIN)
        assert status == 200, answer


async def test_an_error_quotes_at_most_40_characters_of_what_the_client_sent(tmp_path: Path) -> None:
    """A bad type pattern or an unknown mailbox was quoted back whole (8 KiB from a long URL), as no
    other parameter's error is."""
    long = "x" * 4000
    async with serving(fleet(tmp_path, bot_parent="acme")) as api:
        for path, status in [(f"/v1/events?types={long}!", 400), (f"/v1/events?mailbox={long}", 403)]:
            status_got, answer = await api.call("GET", path, ACME_ADMIN)
            assert status_got == status, answer
            assert repr("x" * 40) in answer["error"]["message"] and "x" * 41 not in answer["error"]["message"]
