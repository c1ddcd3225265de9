"""How far the busy mailbox's "p50 minus the floor's p50" strays from gatewayd's own time.

A model of the latency scenario's busy phase (docs/benchmarks-history.md, tenth pass): messages arrive
at random (Poisson, 20 per second, 500 of them as in `gatewayd bench`, or `--messages`); the
floor's session and gatewayd's each see them in back-to-back windows of about 500 ms (Dovecot's
notification delay, chained by each session's own sync); gatewayd's windows are slightly longer,
so they fall `drift` ms behind the floor's over the phase; and gatewayd takes a constant `own` ms
to publish. Each message's latency is the time to the end of its window in that session, plus
`own` for gatewayd.

The printed table: for each drift, the difference of the two medians over many simulated runs
(its mean, standard deviation and 5th-95th percentiles), and, given `--observed DRIFT=DIFF`
pairs from real runs, the percentile at which each falls.

    python bench/window_model.py --observed 53=-0.7 --observed 90=6.7
"""

from __future__ import annotations

import argparse
import random
import statistics

FLOOR_WINDOW_MS = 501.6  # the floor's median window period in the benchmark runs
RATE_PER_MS = 20 / 1000
MESSAGES = 500


def difference_of_medians(drift: float, own: float, seed: int, messages: int = MESSAGES) -> float:
    rng = random.Random(seed)
    phase_ms = messages / RATE_PER_MS
    gateway_window = FLOOR_WINDOW_MS * (1 + drift / phase_ms)
    floor, gateway, t = [], [], 0.0
    for _ in range(messages):
        t += rng.expovariate(RATE_PER_MS)
        floor.append(-t % FLOOR_WINDOW_MS)
        gateway.append(-t % gateway_window + own)
    return statistics.median(gateway) - statistics.median(floor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--own", type=float, default=6.0, help="gatewayd's own time in a window, ms")
    parser.add_argument("--runs", type=int, default=400, help="simulated runs per drift")
    parser.add_argument("--messages", type=int, default=MESSAGES, help="messages in the busy phase")
    parser.add_argument("--drift", type=float, action="append", help="drifts to tabulate, ms")
    parser.add_argument("--observed", action="append", default=[], metavar="DRIFT=DIFF")
    args = parser.parse_args()
    for drift in args.drift or [0, 30, 55, 90, 130, 176]:
        diffs = [difference_of_medians(drift, args.own, seed, args.messages) for seed in range(args.runs)]
        low, *_, high = statistics.quantiles(diffs, n=20)
        print(
            f"drift {drift:5.0f} ms: difference of medians mean {statistics.fmean(diffs):+5.1f} ms, "
            f"sd {statistics.pstdev(diffs):4.1f}, 5-95 % {low:+6.1f} .. {high:+5.1f}"
        )
    for item in args.observed:
        drift, _, observed = item.partition("=")
        diffs = [
            difference_of_medians(float(drift), args.own, seed, args.messages) for seed in range(args.runs)
        ]
        below = sum(diff < float(observed) for diff in diffs) / len(diffs)
        print(f"observed {float(observed):+5.1f} ms at drift {drift} ms: percentile {100 * below:.0f}")


if __name__ == "__main__":
    main()
