"""Addresses, domains and hosts as the spam checks compare them."""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from gatewayd.message.lowercase import lower


def address_of(entry: Any) -> str | None:
    address = entry.get("address") if isinstance(entry, dict) else None
    return lower(address) if isinstance(address, str) and address else None


def domain_of(address: str | None) -> str | None:
    return lower(address.rpartition("@")[2].strip(".")) or None if address and "@" in address else None


# Second-level labels under which registrations sit one level deeper (example.co.uk).
_SECOND_LEVEL = frozenset({"co", "com", "net", "org", "gov", "ac", "edu", "ne", "or", "go", "gob", "ltd"})


@functools.lru_cache(maxsize=1024)  # called for every domain and HELO name, which repeat
def site_of(host: str | None) -> str | None:
    """The registrable domain, roughly: example.com for mail.example.com, example.co.uk."""
    if not host:
        return None
    labels = [label for label in lower(host).strip(".").split(".") if label]
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:]) or None


def public_ip(host: str) -> bool:
    """A public IPv4/IPv6 literal, including the decimal form browsers accept (http://3520061480/)."""
    host = host.strip("[]")
    # Most hosts are names: without a colon (IPv6) only digits and dots can make an address, and
    # ip_address's ValueError costs more than this check.
    if ":" not in host and not host.replace(".", "").isdigit():
        return False
    try:
        address = ipaddress.ip_address(int(host) if host.isdigit() and len(host) <= 10 else host)
    except ValueError:
        return False
    return address.is_global
