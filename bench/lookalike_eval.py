"""FROM_LOOKALIKE_DOMAIN on a labelled corpus: which From domains it reports among ham and spam.

    .venv/bin/python bench/lookalike_eval.py [--corpus DIR] [--protect DOMAIN ...]

Each half of the ham (the even- and odd-numbered files) is checked with the other half's From
domains protected, as a mailbox that got those as ham would; the spam with every ham From domain
protected. `--protect` adds configured domains (brands) to both. A change must report no ham.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spam_eval import DEFAULT_CORPUS, Sample, load

from gatewayd.pipeline.auth.domains import from_domain_of
from gatewayd.pipeline.auth.lookalike import ProtectedDomains


def reported(samples: list[Sample], protected: dict[int, ProtectedDomains]) -> list[str]:
    """`From domain ~ protected domain` for each sample reported, the protected set by index parity."""
    found = []
    for sample in samples:
        domain = from_domain_of(sample.message.data)
        resemblance = protected[sample.index % 2].resembled(domain)
        if resemblance is not None:
            how = "embeds" if resemblance.embedded else "resembles"
            found.append(f"{sample.path.name}: {domain} {how} {resemblance.resembles}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--protect", nargs="*", default=[], help="configured protected domains")
    args = parser.parse_args(argv)
    samples = load(args.corpus)
    ham = [s for s in samples if s.label == "ham"]
    spam = [s for s in samples if s.label == "spam"]
    ham_from = [(s.index % 2, from_domain_of(s.message.data)) for s in ham]
    halves = {
        parity: ProtectedDomains([*(d for p, d in ham_from if p != parity), *args.protect])
        for parity in (0, 1)
    }
    every_ham = ProtectedDomains([*(d for _, d in ham_from), *args.protect])
    for label, group, protected in (("ham", ham, halves), ("spam", spam, {0: every_ham, 1: every_ham})):
        found = reported(group, protected)
        print(f"{label}: {len(found)} of {len(group)} reported")
        for line in found:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
