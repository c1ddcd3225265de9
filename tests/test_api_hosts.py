"""How a Host header, or a server.allowed_hosts entry, is read: name and port."""

from __future__ import annotations

import pytest

from gatewayd.api.hosts import host_and_port


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Example.org.:8025", ("example.org", "8025")),
        ("example.org", ("example.org", None)),
        ("127.0.0.1:8025", ("127.0.0.1", "8025")),
        ("[::1]", ("[::1]", None)),
        ("[::1]:8025", ("[::1]", "8025")),
        ("", ("", None)),
    ],
)
def test_host_and_port(value: str, expected: tuple[str, str | None]) -> None:
    assert host_and_port(value) == expected
