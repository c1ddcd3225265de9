"""Client TLS for IMAP and SMTP alike: verified by default, with an optional extra CA bundle."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_context(ca_file: Path | None, verify_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if not verify_cert:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
