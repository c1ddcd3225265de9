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


class Clues(dict[str, Clue]):
    """The clue of each token scored with these counts and totals (the store makes another when
    they change): a token met for the first time is looked up in the counts by `__missing__`, so
    scoring looks all its tokens up with the dictionary's own __getitem__, in C, with no pass over
    them in Python to find the ones not met yet."""

    __slots__ = ("_counts", "_nham", "_nspam", "_of_counts")

    def __init__(self, counts: TokenCounts, nspam: int, nham: int) -> None:
        super().__init__()
        self._counts, self._nspam, self._nham = counts, nspam, nham
        self._of_counts: dict[tuple[int, int], Clue] = {}  # the clue of each (spam, ham) count met

    def __missing__(self, token: str) -> Clue:
        if len(self) > len(self._counts) + MAX_UNSEEN_CACHED:
            self.clear()  # unseen tokens are cached too: bound what a stream of new words can add
        counted = self._counts.get(token)
        if counted is None:
            token_clue: Clue = ()  # an unseen token scores exactly the prior: never a clue
        elif (shared := self._of_counts.get(counted)) is not None:
            token_clue = shared
        else:
            token_clue = self._of_counts[counted] = clue(robinson(*counted, self._nspam, self._nham))
        self[token] = token_clue
        return token_clue


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
