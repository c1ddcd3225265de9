"""What a stream's client has not taken yet: bytes in the transport's buffer and the kernel's.

A client that stops reading is invisible to the transport's own buffer for a long time: the
kernel's send queue (megabytes) takes every ping first. Its length (Linux's SIOCOUTQ: bytes not
yet acknowledged by the client) says whether what was written has reached the client; where it
cannot be read, the transport's buffer alone counts.
"""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios

_OUTQ = getattr(termios, "TIOCOUTQ", None)  # SIOCOUTQ on a socket


def undelivered_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes written to this connection that its peer has not acknowledged yet."""
    waiting = transport.get_write_buffer_size() if isinstance(transport, asyncio.WriteTransport) else 0
    sock = transport.get_extra_info("socket")
    if _OUTQ is None or sock is None:
        return waiting
    try:
        queued: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return waiting
    return waiting + queued
