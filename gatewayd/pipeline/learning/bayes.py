"""Bayes from memory: the token counts trained, and the clue each token scored gives (combine.py).

Scoring looks a message's tokens up in a cache of clues that lasts until the counts change: most
tokens of a message were met in earlier ones, so scoring rarely computes one. A clue depends only
on the token's (spam, ham) counts and the message totals, so tokens with equal counts (most are
seen once or twice) share one tuple of floats, a few thousand in all rather than one per token,
which scoring then mostly finds in the CPU cache.
"""

from __future__ import annotations

from gatewayd.pipeline.learning.combine import Clue, clue, robinson

# Tokens no message was trained with are cached as such too, so that scoring them again costs no
# Python work; up to this many (about 5 MB) beyond the known tokens.
MAX_UNSEEN_CACHED = 50_000

TokenCounts = dict[str, tuple[int, int]]  # token -> (spam, ham) messages


def find_clues(
    tokens: list[str],
    found: list[Clue | None],
    cache: dict[str, Clue],
    of_counts: dict[tuple[int, int], Clue],
    counts: TokenCounts,
    nspam: int,
    nham: int,
) -> None:
    """Fill in `found` (the clues of `tokens` in `cache`) where it is None, and cache what was
    filled in, `of_counts` holding the clue of each (spam, ham) count met."""
    if len(cache) > len(counts) + MAX_UNSEEN_CACHED:
        cache.clear()  # unseen tokens are cached too: bound what a stream of new words can add
    for i, token in enumerate(tokens):
        if found[i] is None:
            counted = counts.get(token)
            if counted is None:
                token_clue: Clue = ()  # an unseen token scores exactly the prior: never a clue
            elif (shared := of_counts.get(counted)) is not None:
                token_clue = shared
            else:
                token_clue = of_counts[counted] = clue(robinson(*counted, nspam, nham))
            found[i] = cache[token] = token_clue


def count_tokens(
    deltas: dict[str, list[int]], totals: list[int], tokens: list[str], column: int, sign: int
) -> None:
    """Add `sign` to `column` (0: spam, 1: ham) of each token's deltas and of the message totals."""
    totals[column] += sign
    for token in tokens:
        deltas.setdefault(token, [0, 0])[column] += sign


def apply_deltas(counts: TokenCounts, deltas: dict[str, list[int]]) -> None:
    """Bring `counts` in line with committed deltas, clamped at zero; a token at zero is gone."""
    for token, (s, h) in deltas.items():
        old = counts.get(token, (0, 0))
        new = (max(0, old[0] + s), max(0, old[1] + h))
        if new == (0, 0):
            counts.pop(token, None)
        else:
            counts[token] = new
