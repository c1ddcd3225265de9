"""Evaluate the spam stage on a labelled corpus: precision, recall, the suspect band, timings.

    .venv/bin/python bench/spam_eval.py [--corpus DIR] [--trained] [--folds K] [--show-fn N]

DIR holds `ham/*.eml` and `spam/*.eml` (default: the shared SpamAssassin corpus). "Spam" means
verdict == "spam"; "suspect" counts as not spam and is reported as its own band. Results are
also given for the even- and odd-numbered files of each class (sorted by name), so a change
tuned on one half can be checked on the other.

Untrained by default (no learning store). `--trained` runs a k-fold: a LearningStore trained on
k-1 folds scores the held-out fold (see `trained_scores`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatewayd.message import FetchedMessage, ParsedMessage, parse
from gatewayd.pipeline.spam import SpamOptions, SpamStage

DEFAULT_CORPUS = Path("/work/shared/corpus/spamassassin")


@dataclass(slots=True)
class Sample:
    path: Path
    label: str  # "ham" | "spam"
    index: int  # position within its class, for the even/odd split
    message: ParsedMessage


@dataclass(slots=True)
class Scored:
    sample: Sample
    verdict: str
    score: float
    findings: list[dict[str, Any]]
    ms: float


def load(corpus: Path) -> list[Sample]:
    samples: list[Sample] = []
    for label in ("ham", "spam"):
        for index, path in enumerate(sorted((corpus / label).glob("*.eml"))):
            raw = path.read_bytes()
            fetched = FetchedMessage(
                folder="INBOX",
                uid=len(samples) + 1,
                uidvalidity=1,
                raw=raw,
                size=len(raw),
                flags=(),
                internaldate=None,
            )
            samples.append(Sample(path, label, index, parse(fetched)))
    return samples


def score_all(stage: SpamStage, samples: Sequence[Sample], mailbox_address: str | None) -> list[Scored]:
    results = []
    for sample in samples:
        started = time.perf_counter()
        result = stage.score(sample.message, mailbox_address)
        ms = (time.perf_counter() - started) * 1000
        spam = result.data["spam"]
        results.append(Scored(sample, spam["verdict"], spam["score"], spam["findings"], ms))
    return results


def trained_scores(
    samples: Sequence[Sample], options: SpamOptions, folds: int, mailbox_address: str | None
) -> list[Scored]:
    """k-fold with a LearningStore: train on k-1 folds, score the held-out one.

    HOOK for the learning package (gatewayd/pipeline/learning/), imported lazily so that the
    untrained evaluation works without it.

    Prints, besides: the learning store's own numbers (Bayes precision and recall at p > 0.99 and
    p > 0.9, signature matches, median time of its three lookups), first for a stratified split
    that trains on about a thousand messages (every third of each class: 834 ham + 167 spam,
    under the default min_training of 200 and under 150), then for the k-fold. Returns the k-fold's
    verdicts for the report below.
    """
    from gatewayd.pipeline.learning import LearningStore  # imported here: an optional module

    def run(
        tmp: Path, name: str, train: Sequence[Sample], test: Sequence[Sample], **store_options: Any
    ) -> tuple[list[Scored], list[tuple[Sample, float | None, bool, float]]]:
        with LearningStore(Path(tmp) / f"{name}.db", **store_options) as store:
            for sample in train:
                store.train(sample.message, sample.label, "eval")
            looked: list[tuple[Sample, float | None, bool, float]] = []
            for sample in test:
                started = time.perf_counter()
                p = store.bayes(sample.message)
                match = store.signature_match(sample.message)
                store.reputation(_sender(sample), "eval")
                looked.append((sample, p, match is not None, (time.perf_counter() - started) * 1000))
            return score_all(SpamStage(options, lambda _mailbox_id: store), test, mailbox_address), looked

    def _sender(sample: Sample) -> str | None:
        sender = sample.message.data.get("from") or {}
        return sender.get("address")

    def report(name: str, looked: Sequence[tuple[Sample, float | None, bool, float]]) -> None:
        spam_total = sum(1 for s, *_ in looked if s.label == "spam")
        ham_total = len(looked) - spam_total
        cells = []
        for threshold in (0.99, 0.9):
            tp = sum(1 for s, p, *_ in looked if p is not None and p > threshold and s.label == "spam")
            fp = sum(1 for s, p, *_ in looked if p is not None and p > threshold and s.label == "ham")
            precision = tp / (tp + fp) if tp + fp else 1.0
            cells.append(f"p>{threshold}: precision {precision:.4f} recall {tp / spam_total:.3f} (FP {fp})")
        unscored = sum(1 for _, p, *_ in looked if p is None)
        bayes = "  ".join(cells) if unscored < len(looked) else "Bayes off (below min_training)"
        sig_spam = sum(1 for s, _, m, _ in looked if m and s.label == "spam")
        sig_ham = sum(1 for s, _, m, _ in looked if m and s.label == "ham")
        ms = statistics.median(t for *_, t in looked)
        print(
            f"  {name:<22} {bayes}\n  {'':<22} signature matches: spam {sig_spam}/{spam_total}, "
            f"ham {sig_ham}/{ham_total}; bayes+signature+reputation median {ms:.3f} ms"
        )

    print("\nlearning store alone (Bayes, signatures):")
    results: list[Scored] = []
    with tempfile.TemporaryDirectory() as tmp:
        # About a thousand labelled messages, as a deployment might have after a while.
        train = [s for s in samples if s.index % 3 == 0]
        test = [s for s in samples if s.index % 3 != 0]
        counts = Counter(s.label for s in train)
        for min_training in (200, 150):
            split, looked = run(Path(tmp), f"split{min_training}", train, test, min_training=min_training)
            name = f"split {counts['ham']}+{counts['spam']}, min {min_training}"
            report(name, looked)
            print(f"  {'':<22} stage: {line('', split).strip()}")
        all_looked = []
        for fold in range(folds):
            held_out = [s for i, s in enumerate(samples) if i % folds == fold]
            trained = [s for i, s in enumerate(samples) if i % folds != fold]
            fold_results, looked = run(Path(tmp), f"fold{fold}", trained, held_out)
            results += fold_results
            all_looked += looked
            report(f"fold {fold + 1}/{folds}", looked)
        report(f"{folds}-fold, all", all_looked)
    return results


def metrics(results: Sequence[Scored]) -> dict[str, Any]:
    tp = sum(1 for r in results if r.sample.label == "spam" and r.verdict == "spam")
    fp = sum(1 for r in results if r.sample.label == "ham" and r.verdict == "spam")
    fn = sum(1 for r in results if r.sample.label == "spam" and r.verdict != "spam")
    tn = sum(1 for r in results if r.sample.label == "ham" and r.verdict != "spam")
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    suspect_ham = sum(1 for r in results if r.sample.label == "ham" and r.verdict == "suspect")
    suspect_spam = sum(1 for r in results if r.sample.label == "spam" and r.verdict == "suspect")
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "suspect_ham": suspect_ham,
        "suspect_spam": suspect_spam,
    }


def line(name: str, results: Sequence[Scored]) -> str:
    m = metrics(results)
    return (
        f"{name:<8} precision {m['precision']:.4f}  recall {m['recall']:.4f}  F1 {m['f1']:.4f}  "
        f"TP {m['tp']} FP {m['fp']} FN {m['fn']} TN {m['tn']}  "
        f"suspect: ham {m['suspect_ham']}, spam {m['suspect_spam']}"
    )


def top_findings(results: Sequence[Scored], label: str, count: int) -> list[tuple[str, int]]:
    counter: Counter[str] = Counter()
    for r in results:
        if r.sample.label == label:
            counter.update({f["symbol"] for f in r.findings})
    return counter.most_common(count)


def brief(r: Scored) -> str:
    findings = ", ".join(f"{f['symbol']}={f['score']:g}" for f in r.findings)
    return f"  {r.sample.path.name}  score {r.score:g}  [{findings}]"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="dir with ham/ and spam/")
    parser.add_argument("--trained", action="store_true", help="k-fold with the learning store")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--mailbox-address", default=None, help="the receiving address, if any")
    parser.add_argument("--top", type=int, default=15, help="findings listed per class")
    parser.add_argument("--show-fn", type=int, default=0, help="list this many false negatives")
    parser.add_argument("--show-suspect", action="store_true", help="list the ham in the suspect band")
    args = parser.parse_args(argv)
    if not (args.corpus / "ham").is_dir() or not (args.corpus / "spam").is_dir():
        parser.error(f"{args.corpus} needs ham/ and spam/ subdirectories")

    started = time.perf_counter()
    samples = load(args.corpus)
    print(f"loaded {len(samples)} messages in {time.perf_counter() - started:.1f} s")
    options = SpamOptions()
    if args.trained:
        results = trained_scores(samples, options, args.folds, args.mailbox_address)
        mode = f"trained ({args.folds}-fold)"
    else:
        results = score_all(SpamStage(options), samples, args.mailbox_address)
        mode = "untrained"

    print(f"\n{mode}, thresholds suspect {options.suspect_threshold} spam {options.spam_threshold}")
    print(line("even", [r for r in results if r.sample.index % 2 == 0]))
    print(line("odd", [r for r in results if r.sample.index % 2 == 1]))
    print(line("all", results))

    for label in ("ham", "spam"):
        total = sum(1 for r in results if r.sample.label == label)
        found = ", ".join(f"{s} {n}" for s, n in top_findings(results, label, args.top))
        print(f"\ntop findings in {label} ({total}): {found}")

    false_positives = sorted(
        (r for r in results if r.sample.label == "ham" and r.verdict == "spam"), key=lambda r: -r.score
    )
    print(f"\nfalse positives ({len(false_positives)}):")
    for r in false_positives:
        print(brief(r))
    if args.show_suspect:
        print("\nham in the suspect band:")
        for r in sorted(
            (r for r in results if r.sample.label == "ham" and r.verdict == "suspect"), key=lambda r: -r.score
        ):
            print(brief(r))
    if args.show_fn:
        misses = sorted(
            (r for r in results if r.sample.label == "spam" and r.verdict != "spam"), key=lambda r: -r.score
        )
        print(f"\nfalse negatives (highest {args.show_fn} of {len(misses)}):")
        for r in misses[: args.show_fn]:
            print(brief(r))

    times = sorted(r.ms for r in results)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"\nscoring time per message: median {statistics.median(times):.3f} ms, p99 {p99:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
