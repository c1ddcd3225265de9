"""Impersonation: a From domain that looks like one the mailbox knows, and display names that name
another address or domain than the From's.

SPF, DKIM and DMARC say that mail came from the domain it names, not that the domain is the one a
reader takes it for: `examp1e.com` authenticates perfectly for itself. So the From's organisational
domain is compared with the mailbox's protected domains (its own, the configured ones, and those it
wrote to or was reported as ham from): it resembles one when their confusable skeletons (UTS #39
style: Unicode lookalikes and accents folded, `1` as `l`, `0` as `o`, `rn` as `m`, `vv` as `w`) are
equal, or, for names of six characters or more, one edit apart (a letter added, dropped, replaced
or two swapped). A domain with the same organisational domain as a protected one (`mail.example.com`
for `example.com`) resembles nothing: it is that organisation.

A From domain also resembles a protected one it embeds, as phishing writes brands into a domain of
its own: the whole protected domain in its labels or hyphenated parts, followed by more
(`example.com.evil.test`, `example-com.evil.test`, `example.com-secure.test`; but not
`example.com.au`, the same name in a country), or its name of six characters or more as a hyphenated
part of the registered name (`secure-example.net`, `example-login.com`). A shorter name is a word
other names are made of too (`apple-pie`, `linux-laptop`): it counts as a hyphenated part only beside
a lure word, one phishing adds to make a domain read as the brand's service (`apple-support.com`,
`secure-apple.net`). A name of six characters or more also counts glued to a lure word
(`securepaypal.com`, `paypalsecure.com`), not to any word: `googlemail.com` and `amazonses.com` are
the brands' own, `washingtonpost.com` is no one's lookalike. A name alone as a label is not enough:
`acme.zendesk.com` is how help desks and shops host their customers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from gatewayd.pipeline.auth.domains import domain_of, organizational_domain
from gatewayd.pipeline.injection.characters import fold

# Shorter names are one edit away from too many real ones (gmail, ymail, email): skeletons only.
MIN_EDIT_LABEL = 6
# Shorter names are words that other names are made of too (apple-pie, linux-magazine): such a name
# counts as embedded with its suffix (`apple-com`), or as a hyphenated part beside a lure word.
MIN_EMBEDDED_NAME = 6
# Two letters are initials and states that everyone's names share (`it-support`, `ca-login`).
MIN_LURED_NAME = 3
# Words phishing puts beside a brand to make a domain read as its service (`apple-support.com`,
# `securepaypal.com`); not words that name ordinary services too (mail, web, online, shop, pay).
_LURE_WORD_LIST = """
    account accounts alert alerts auth billing confirm helpdesk login logon recovery refund secure
    security signin support unlock update verify verification wallet
"""
LURE_WORDS = frozenset(_LURE_WORD_LIST.split())
# Short names that are no one's in particular beside a lure word: suffix labels (`net.ph`, a
# country's second level missing from the list of such, is named `net`) and the words mail and web
# services are named by (`secure-mail.biz` is not mail.com's).
_GENERIC_NAME_LIST = "com net org edu gov mil int biz info mail email inbox post web"
_GENERIC_NAMES = frozenset(_GENERIC_NAME_LIST.split())
# From domains whose answer each ProtectedDomains keeps: most mail comes from senders met before.
MAX_REMEMBERED = 4096
# Characters or pairs read as another on screen, in the folded (lower-case, Latin) form.
_ASCII_CONFUSABLES = (("rn", "m"), ("vv", "w"), ("1", "l"), ("0", "o"))
# An address anywhere in a display name, or a display name that is a domain as a whole.
_NAMED_ADDRESS = re.compile(r"[\w.%+-]+@([\w-]+(?:\.[\w-]+)+)")
_NAMED_DOMAIN = re.compile(r"(?:[\w-]+\.)+([^\W\d_]{2,24})")
# Top-level domains a display name that is a bare domain may end in: "J.Smith" names no domain.
_NAMED_TLDS = frozenset(["com", "net", "org", "edu", "gov", "mil", "int", "info", "biz", "io", "co", "app"])
# "jane@example.com via Help Center": help desks and forms relay for the person they name.
_VIA = re.compile(r"\bvia\b", re.I)
# What separates the parts of a domain a reader takes for words.
_PARTS = re.compile(r"[.-]")


@dataclass(frozen=True, slots=True)
class Resemblance:
    """`domain` (the From's) is taken for `resembles`."""

    domain: str
    resembles: str
    # `domain` holds `resembles` (or its name) in a longer domain rather than looking like it.
    embedded: bool = False

    def as_dict(self) -> dict[str, str]:
        return {"domain": self.domain, "resembles": self.resembles}


def skeleton(domain: str) -> str:
    """What `domain` (ASCII or `xn--` form) looks like: labels decoded, lookalikes folded."""
    shown = ".".join(_decoded(label) for label in domain.split("."))
    text = fold(shown)
    for confusable, reads_as in _ASCII_CONFUSABLES:
        text = text.replace(confusable, reads_as)
    return text


def _decoded(label: str) -> str:
    if not label.startswith("xn--"):
        return label
    try:
        return label[4:].encode("ascii").decode("punycode")
    except UnicodeError:
        return label


def _one_edit(a: str, b: str) -> bool:
    """Whether `a` and `b` (different) are one insertion, deletion, substitution or swap apart."""
    if abs(len(a) - len(b)) > 1:
        return False
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    if len(a) == len(b):
        rest_a, rest_b = a[start + 1 :], b[start + 1 :]
        swapped = a[start : start + 2] == b[start : start + 2][::-1] and a[start + 2 :] == b[start + 2 :]
        return rest_a == rest_b or swapped
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    return longer[start + 1 :] == shorter[start:]


def _deletions(text: str) -> Iterable[str]:
    return (text[:i] + text[i + 1 :] for i in range(len(text)))


class ProtectedDomains:
    """The domains a mailbox's mail must not be mistaken for, prepared once so that checking a
    From domain costs a few dictionary lookups (a neighbourhood of one-character deletions stands
    in for the edit distance to every protected domain, an index by first part for the embedded
    ones), and one for a sender met before."""

    def __init__(self, domains: Iterable[str | None]) -> None:
        orgs = {organizational_domain(d) for d in map(domain_of, domains) if d and "." in d}
        self.orgs = frozenset(orgs)
        self._by_skeleton: dict[str, str] = {}
        self._near: dict[str, list[tuple[str, str]]] = {}  # deletion -> (skeleton, org)
        self._longest_near = 0  # the longest skeleton in _near: one edit from none past one more
        self._by_first_part: dict[str, list[tuple[list[str], str]]] = {}  # -> (parts, org)
        self._by_name: dict[str, str] = {}  # name (the skeleton's first label) -> org
        self._by_lured_name: dict[str, str] = {}  # the shorter names, embedded only beside a lure word
        self._remembered: dict[str, Resemblance | None] = {}
        for org in sorted(orgs):
            shape = skeleton(org)
            self._by_skeleton.setdefault(shape, org)
            name = shape.partition(".")[0]
            if len(name) >= MIN_EDIT_LABEL:
                self._longest_near = max(self._longest_near, len(shape))
                for key in (shape, *_deletions(shape)):
                    self._near.setdefault(key, []).append((shape, org))
            parts = _PARTS.split(shape)
            self._by_first_part.setdefault(parts[0], []).append((parts, org))
            if len(name) >= MIN_EMBEDDED_NAME:
                self._by_name.setdefault(name, org)
            elif len(name) >= MIN_LURED_NAME and name not in _GENERIC_NAMES:
                self._by_lured_name.setdefault(name, org)

    def resembled(self, domain: str | None) -> Resemblance | None:
        """The protected domain that `domain` (the From's, ASCII form) is a lookalike of or embeds,
        if any."""
        if not domain or not self.orgs:
            return None
        org = organizational_domain(domain)
        if org in self.orgs:
            return None
        if domain in self._remembered:
            return self._remembered[domain]
        if len(self._remembered) >= MAX_REMEMBERED:
            self._remembered.clear()
        found = self._resembled(org) or self._embedded(domain, org)
        self._remembered[domain] = found
        return found

    def _resembled(self, org: str) -> Resemblance | None:
        shape = skeleton(org)
        found = self._by_skeleton.get(shape)
        # A longer name's deletions (as many as its characters, each a copy) would find nothing.
        if (
            found is None
            and len(shape.partition(".")[0]) >= MIN_EDIT_LABEL
            and len(shape) <= self._longest_near + 1
        ):
            for key in (shape, *_deletions(shape)):
                near = [o for s, o in self._near.get(key, ()) if _one_edit(shape, s)]
                if near:
                    found = near[0]
                    break
        return Resemblance(org, found) if found else None

    def _embedded(self, domain: str, org: str) -> Resemblance | None:
        """A protected domain whose parts (`example`, `com`) run together in `domain`'s, with more
        after them, or a protected name that is a hyphenated part of `domain`'s registered name."""
        shape = skeleton(domain)
        parts = _PARTS.split(shape)
        for start, part in enumerate(parts):
            for wanted, protected in self._by_first_part.get(part, ()):
                end = start + len(wanted)
                if parts[start:end] == wanted and _longer(shape, parts, end):
                    return Resemblance(domain, protected, embedded=True)
        found = self._named(skeleton(org).partition(".")[0])
        return Resemblance(domain, found, embedded=True) if found else None

    def _named(self, name: str) -> str | None:
        """The protected domain named in `name` (the From's registered name): its name as a
        hyphenated part, a shorter one only beside a lure word (`apple-support`), or its name of six
        characters or more glued to a lure word (`securepaypal`, `paypalsecure`)."""
        parts = name.split("-")
        if len(parts) > 1:  # else the same name under another suffix: one edit at most
            lured = not LURE_WORDS.isdisjoint(parts)
            for part in parts:
                found = self._by_name.get(part) or (self._by_lured_name.get(part) if lured else None)
                if found:
                    return found
        for part in parts:
            for lure in LURE_WORDS:
                if len(part) < len(lure) + MIN_EMBEDDED_NAME:
                    continue
                if part.startswith(lure) and part[len(lure) :] in self._by_name:
                    return self._by_name[part[len(lure) :]]
                if part.endswith(lure) and part[: -len(lure)] in self._by_name:
                    return self._by_name[part[: -len(lure)]]
        return None


def _longer(shape: str, parts: list[str], end: int) -> bool:
    """Whether more than a country's top-level label follows `parts[:end]` in `shape`:
    `example.com.evil.test` is a longer domain, `example.com.au` the same name in a country."""
    rest = len(parts) - end
    return rest > 1 or (rest == 1 and not (len(parts[-1]) == 2 and shape[-3] == "."))


NO_PROTECTED = ProtectedDomains(())


def _named_tld(domain: str) -> bool:
    """Whether a display name that reads as `domain` ends like one: a common top-level domain, or
    a country's under a name of three characters or more ("Dr.No" is a name)."""
    tld = domain.rpartition(".")[2]
    return tld in _NAMED_TLDS or (len(tld) == 2 and len(organizational_domain(domain).split(".")[0]) >= 3)


def display_name_domain(name: str | None, from_domain: str | None) -> Resemblance | None:
    """The display name names an address (or is a domain) of another organisation than the From's:
    `"support@example.com" <x@evil.test>`."""
    if not name or not from_domain or _VIA.search(name):
        return None
    address = _NAMED_ADDRESS.search(name)
    named = address.group(1) if address else None
    if named is None:
        bare = _NAMED_DOMAIN.fullmatch(name.strip().strip("'\"").rstrip("."))
        if bare is None or not _named_tld(bare.group(0).lower()):
            return None
        named = bare.group(0)
    shown = domain_of(named)
    if not shown or organizational_domain(shown) == organizational_domain(from_domain):
        return None
    return Resemblance(from_domain, shown)
