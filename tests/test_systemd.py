"""sd_notify: the datagram systemd reads, a socket that cannot take it, the watchdog's interval."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from pathlib import Path

import pytest

from gatewayd.systemd import notify, watchdog_interval


def test_the_state_reaches_the_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1\nSTATUS=listening") is True
        assert systemd.recv(1024) == b"READY=1\nSTATUS=listening"


def test_without_a_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_a_notify_socket_that_is_gone_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    with caplog.at_level(logging.WARNING, logger="gatewayd.systemd"):
        assert notify("STOPPING=1") is False
    assert "gone.sock" in caplog.text and "No such file" in caplog.text


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("30000000", None, 15.0),  # WatchdogSec=30: a keep-alive every 15 s
        ("30000000", "self", 15.0),
        ("30000000", "1", None),  # meant for another process
        ("0", None, None),
        ("", None, None),
        ("soon", None, None),
        ("\u00b2", None, None),  # "²" passes str.isdigit(), not int()
    ],
)
def test_the_watchdog_interval_is_half_of_watchdog_sec(
    monkeypatch: pytest.MonkeyPatch, usec: str, pid: str | None, interval: float | None
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert watchdog_interval() == interval


def test_a_full_notify_socket_does_not_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """systemd busy (its queue full): the event loop that notifies must not wait for it."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
            other.connect(str(path))
            other.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    other.send(b"WATCHDOG=1")
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        with caplog.at_level(logging.WARNING, logger="gatewayd.systemd"):
            sent = threading.Thread(target=notify, args=("WATCHDOG=1",), daemon=True)
            sent.start()
            sent.join(10)
            assert not sent.is_alive(), "notify() blocked on a full socket"
        assert "cannot notify systemd" in caplog.text
