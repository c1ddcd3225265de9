"""Domains and alignment: identifiers against the From domain, by organisational domain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gatewayd.message.fields import addresses
from gatewayd.message.lowercase import lower

# Second-level labels under which registrants get the third level (see the package doc in __init__.py).
_TWO_LEVEL_SUFFIX_LIST = """
    co.uk org.uk ac.uk gov.uk me.uk ltd.uk plc.uk net.uk sch.uk nhs.uk police.uk
    com.au net.au org.au edu.au gov.au asn.au id.au co.nz net.nz org.nz ac.nz govt.nz school.nz
    co.jp ne.jp or.jp ac.jp go.jp ad.jp ed.jp gr.jp lg.jp com.br net.br org.br gov.br edu.br
    co.za org.za gov.za ac.za net.za com.cn net.cn org.cn gov.cn edu.cn ac.cn com.hk org.hk edu.hk
    com.tw org.tw edu.tw com.sg org.sg edu.sg gov.sg com.my org.my co.in net.in org.in gov.in ac.in
    co.kr or.kr ac.kr go.kr co.il org.il ac.il gov.il com.mx org.mx gob.mx com.ar gob.ar com.tr org.tr
    gov.tr co.id or.id ac.id go.id com.ua org.ua co.th ac.th go.th com.vn com.ph com.pk com.ng co.ke
    com.eg com.sa com.co com.pe com.ve com.ec com.uy com.py com.bo com.gt com.do com.pa com.pl com.es
    com.pt com.gr com.cy com.mt co.at or.at ac.at gv.at co.hu
"""
_TWO_LEVEL_SUFFIXES = frozenset(_TWO_LEVEL_SUFFIX_LIST.split())


def domain_of(value: str | None) -> str | None:
    """The lower-cased domain of an address, `@domain` or bare domain; an internationalised one in its
    ASCII form (`xn--...`), as DKIM and DMARC results name it, so a lookalike shows as what it is."""
    if not value:
        return None
    domain = ascii_domain(value.strip().strip("<>").rsplit("@", 1)[-1].strip().rstrip("."))
    return domain if domain and domain != "none" else None  # Microsoft writes `header.d=none`


def ascii_domain(domain: str) -> str:
    """A domain lower-cased, an internationalised one in its ASCII form (`xn--...`, IDNA 2003 as
    Python's codec does it: `Bücher.de` is `xn--bcher-kva.de`). The rules compare domains so too."""
    domain = lower(domain)
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain  # not a valid IDN: compared as written, so it aligns with nothing else


def organizational_domain(domain: str) -> str:
    labels = domain.split(".")
    if len(labels) >= 3 and f"{labels[-2]}.{labels[-1]}" in _TWO_LEVEL_SUFFIXES:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def alignment(domain: str | None, from_domain: str | None) -> str | None:
    """`strict` (identical), `relaxed` (same organisational domain), "" (not aligned), None (unknown)."""
    if not domain or not from_domain:
        return None
    if domain == from_domain:
        return "strict"
    return "relaxed" if organizational_domain(domain) == organizational_domain(from_domain) else ""


def aligned(mode: str | None) -> bool | None:
    return None if mode is None else bool(mode)


def from_domains(values: Sequence[str]) -> list[str]:
    """The distinct domains of every address in the From header values, in order."""
    found = (domain_of(entry["address"]) for entry in addresses(values) if entry["address"])
    return list(dict.fromkeys(domain for domain in found if domain))


def from_domain_of(data: Mapping[str, Any]) -> str | None:
    sender = data.get("from")
    address = sender.get("address") if isinstance(sender, dict) else None
    return domain_of(address) if isinstance(address, str) and "@" in address else None
