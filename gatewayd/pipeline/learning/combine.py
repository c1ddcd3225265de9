"""Combining token counts into a spam probability: Robinson's per-token probabilities, Fisher's
chi-square combination of the strongest of them (as in SpamBayes)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import itemgetter

# Robinson's prior: an unseen or rare token leans towards X with the weight of S messages.
PRIOR_STRENGTH = 1.0
PRIOR_PROBABILITY = 0.5
# Tokens whose probability is within this of 0.5 say nothing and are not combined.
MIN_TOKEN_STRENGTH = 0.1
_CLUE_ABOVE, _CLUE_BELOW = 0.5 + MIN_TOKEN_STRENGTH, 0.5 - MIN_TOKEN_STRENGTH
# The most interesting tokens combined per message (SpamBayes uses 150).
MAX_CLUES = 150


def robinson(spam: int, ham: int, nspam: int, nham: int) -> float:
    """Robinson's f(w): the token's spam probability, pulled towards the prior when it is rare."""
    spam_ratio, ham_ratio = spam / nspam, ham / nham
    p = spam_ratio / (spam_ratio + ham_ratio)
    return (PRIOR_STRENGTH * PRIOR_PROBABILITY + (spam + ham) * p) / (PRIOR_STRENGTH + spam + ham)


# A token as a clue: (strength, log(1 - f), log(f)) of its probability f; () when it is no clue.
Clue = tuple[float, ...]


def clue(f: float) -> Clue:
    if _CLUE_BELOW < f < _CLUE_ABOVE:
        return ()
    # The logs chi2_combine takes, computed once per token rather than per message.
    return (abs(f - 0.5), math.log(1.0 - f), math.log(f))


_NOT_SPAM_LOG, _SPAM_LOG = itemgetter(1), itemgetter(2)


def chi2_combine(probabilities: Sequence[float]) -> float:
    """Fisher's combination as in SpamBayes: how unlike ham minus how unlike spam, mapped to [0, 1].

    Near 0 or 1 when the clues agree; near 0.5 both when there are none and when they conflict.
    """
    not_spam_log_sum = sum([math.log(1.0 - f) for f in probabilities])
    return fisher(not_spam_log_sum, sum([math.log(f) for f in probabilities]), len(probabilities))


def combine_clues(clues: Sequence[Clue]) -> float:
    """chi2_combine of the clues' probabilities, from the logs they hold.

    Summed straight from the clues: no lists of the logs (zip) per message, and their strengths,
    not needed here, are not touched.
    """
    return fisher(sum(map(_NOT_SPAM_LOG, clues)), sum(map(_SPAM_LOG, clues)), len(clues))


def fisher(not_spam_log_sum: float, spam_log_sum: float, n: int) -> float:
    """chi2_combine from the sums of log(1 - f) and of log(f) over `n` clues."""
    if not n:
        return 0.5
    spamminess = 1.0 - _chi2q(-2.0 * not_spam_log_sum, 2 * n)
    hamminess = 1.0 - _chi2q(-2.0 * spam_log_sum, 2 * n)
    return (spamminess - hamminess + 1.0) / 2.0


def _chi2q(x2: float, freedom: int) -> float:
    """P(chi-square with `freedom` (even) degrees of freedom >= x2)."""
    m = x2 / 2.0
    total = term = math.exp(-m)
    for i in range(1, freedom // 2):
        term *= m / i
        total += term
    return min(total, 1.0)
