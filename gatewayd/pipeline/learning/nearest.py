"""The TLSH signatures of reported spam in memory, bucketed by length value, and the search for the
one nearest a body's signature.

A length value more than distance/12 apart alone puts a pair beyond the distance, so only
neighbouring buckets are searched. Functions over the store's buckets rather than an object of
their own: `nearest_distance` runs for every message, and a call through another object would
cost an attribute lookup more each time.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import compress

import tlsh

# Length value -> digest of the reported message -> its signature.
Buckets = dict[int, dict[str, tlsh.Tlsh]]
# Length value -> the bucket's signatures as a list with their quartile-ratio pairs beside it, a
# byte each (see nearest_distance), made when first scanned; the store drops them all whenever
# signatures change.
Scans = dict[int, tuple[list[tlsh.Tlsh], bytes]]


def parse_tlsh(text: str) -> tlsh.Tlsh:
    parsed = tlsh.Tlsh()
    parsed.fromTlshStr(text)
    return parsed


def add_signature(buckets: Buckets, digest: str, text: str) -> None:
    parsed = parse_tlsh(text)
    buckets.setdefault(parsed.lvalue, {})[digest] = parsed


def remove_signatures(buckets: Buckets, digests: set[str]) -> None:
    for bucket in buckets.values():
        for digest in digests:
            bucket.pop(digest, None)


def nearest_distance(text: str, buckets: Buckets, scans: Scans, distance: int) -> int | None:
    """The distance from signature `text` to the nearest in `buckets` if within `distance`.

    A linear scan of the neighbouring length buckets (the loop runs in C): fine up to some
    tens of thousands of reported spam. A diff costs several hundred instructions; the length
    and quartile ratios alone bound the distance from below, so the signatures they put beyond
    `distance` (three in four on the corpus) are skipped: one translate of a bucket's ratio
    pairs through the probe's table of them gives the flags, no Python call per signature.
    """
    probe = parse_tlsh(text)
    lvalue, q1ratio, q2ratio, diff = probe.lvalue, probe.q1ratio, probe.q2ratio, probe.diff
    nearest: float = math.inf
    scanned = False
    # Nearest lengths first: every distance to a bucket k length values away is at least
    # _length_distance(k), so once that is no less than the nearest found, farther buckets
    # cannot hold a nearer signature (a near duplicate mostly has the same length value).
    for length_distance, steps in _length_steps(distance):
        if length_distance >= nearest:
            break
        reachable = _ratios_within(q1ratio, q2ratio, distance - length_distance)
        for step in steps:
            scan = _scan(buckets, scans, (lvalue + step) % 256)
            if scan is not None:
                scanned = True
                known, ratio_pairs = scan
                near = compress(known, ratio_pairs.translate(reachable))
                nearest = min(nearest, min(map(diff, near), default=nearest))
    if not scanned:  # not `nearest == inf`: signatures all skipped are beyond the distance too
        nearest = 999.0  # no signature of a length within reach
    return int(nearest) if nearest <= distance else None


def matching(text: str, buckets: Buckets, distance: int) -> set[str]:
    """The digests of the signatures in `buckets` within `distance` of signature `text`."""
    probe = parse_tlsh(text)
    reach = _reach(distance)
    found: set[str] = set()
    for step in range(-reach, reach + 1):
        for digest, known in buckets.get((probe.lvalue + step) % 256, {}).items():
            if probe.diff(known) <= distance:
                found.add(digest)
    return found


def _scan(buckets: Buckets, scans: Scans, lvalue: int) -> tuple[list[tlsh.Tlsh], bytes] | None:
    """The signatures of a length bucket and their quartile-ratio pairs; None: no signature."""
    scan = scans.get(lvalue)
    if scan is None:
        bucket = buckets.get(lvalue)
        if not bucket:
            return None
        known = list(bucket.values())
        scan = scans[lvalue] = (known, bytes([_ratio_pair(signature) for signature in known]))
    return scan


def _reach(distance: int) -> int:
    # Each length step beyond the first adds 12 to the distance: farther buckets cannot match.
    return max(1, distance // 12)


@lru_cache(maxsize=64)
def _length_steps(distance: int) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """Per length step within reach of `distance`, nearest first: the least distance it adds and
    the length-value offsets it takes (k and -k)."""
    return tuple((_length_distance(k), (k, -k) if k else (0,)) for k in range(_reach(distance) + 1))


def _length_distance(steps: int) -> int:
    """The part of a TLSH distance that comes from length values `steps` apart (as in TLSH)."""
    return steps if steps <= 1 else 12 * steps


def _ratio_pair(signature: tlsh.Tlsh) -> int:
    """A signature's two quartile ratios (4 bits each) as one index into `_ratio_distances`, a byte."""
    return signature.q1ratio * 16 + signature.q2ratio


# 256 ratio pairs times the distances left for them: 5 at the default signature_distance (50), so
# 1,280 keys. A cache smaller than that cycles through them on a stream of mail and misses again
# and again, each miss 512 _ratio_distance calls; 2,048 tables of 256 bytes are about 0.6 MB.
@lru_cache(maxsize=2048)
def _ratios_within(q1ratio: int, q2ratio: int, distance: int) -> bytes:
    """Whether (1, else 0) the quartile ratios of a signature with these ratios and one of each
    `_ratio_pair` alone keep the pair within `distance` (see `_ratio_distances`): a translate
    table, indexed by the ratio pair."""
    return bytes([bound <= distance for bound in _ratio_distances(q1ratio, q2ratio)])


def _ratio_distances(q1ratio: int, q2ratio: int) -> list[int]:
    """The part of a TLSH distance that comes from the quartile ratios (as in TLSH), from a
    signature with these ratios to one of each `_ratio_pair`."""
    pairs = [(q1, q2) for q1 in range(16) for q2 in range(16)]
    return [_ratio_distance(q1ratio, q1) + _ratio_distance(q2ratio, q2) for q1, q2 in pairs]


def _ratio_distance(a: int, b: int) -> int:
    steps = min((a - b) % 16, (b - a) % 16)  # ratios wrap around, as in TLSH
    return steps if steps <= 1 else 12 * (steps - 1)
