"""What every scenario shares: result rows, percentiles, the table, the JSON file and the plot.

A scenario returns one `Result`: rows of (metric, value, floor measured in the same run, target,
met?), free-text notes, and raw samples (latencies in ms) for the plot and the JSON file.
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    metric: str
    value: float | None
    unit: str = ""
    # The same quantity for the floor or baseline, measured in the same run (None: no floor).
    floor: float | None = None
    target: str = ""  # e.g. "<= floor + 5 ms"; empty: informational
    met: bool | None = None


@dataclass
class Result:
    scenario: str
    title: str
    size: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)
    # Plot panel subtitles, by sample key prefix ("" for `gateway_ms`/`floor_ms`).
    plot_titles: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    def add(self, metric: str, value: float | None, unit: str = "", **kwargs: Any) -> Row:
        row = Row(metric, value, unit, **kwargs)
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def value(self, metric: str) -> float | None:
        return next((row.value for row in self.rows if row.metric == metric), None)

    @property
    def targets_met(self) -> bool | None:
        verdicts = [row.met for row in self.rows if row.met is not None]
        return all(verdicts) if verdicts else None


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); p in 0..100."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": sum(values) / len(values) if values else math.nan,
    }


def latency_rows(
    result: Result,
    label: str,
    measured: Sequence[float],
    floor: Sequence[float],
    p50_slack_ms: float = 5.0,
    p99_slack_ms: float = 25.0,
    targets: bool = True,
) -> None:
    """p50/p90/p99/max of a latency against its floor, and the gaps, with the issue's two targets
    on them unless `targets` is false (a diagnostic phase)."""
    ours, base = summary(measured), summary(floor)
    for key in ("p50", "p90", "p99", "max"):
        result.add(f"{label} {key}", ours[key], "ms", floor=base[key])
    for key, slack in (("p50", p50_slack_ms), ("p99", p99_slack_ms)):
        gap = ours[key] - base[key]
        if targets:
            result.add(f"{label} {key} - floor {key}", gap, "ms", target=f"<= {slack:g} ms", met=gap <= slack)
        else:
            result.add(f"{label} {key} - floor {key}", gap, "ms")


# -- output ------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _verdict(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: ""}[met]


def _lines(results: Iterable[Result]) -> list[list[str]]:
    lines: list[list[str]] = []
    for result in results:
        if result.error:
            first = result.error.splitlines()[0] if result.error.strip() else "failed"
            lines.append([result.scenario, f"ERROR: {first[:100]}", "", "", "", "", ""])
            continue
        for row in result.rows:
            lines.append(
                [
                    result.scenario,
                    row.metric,
                    _fmt(row.value),
                    row.unit,
                    _fmt(row.floor),
                    row.target,
                    _verdict(row.met),
                ]
            )
    return lines


HEADER = ["scenario", "metric", "value", "unit", "floor", "target", "met"]


def table(results: Sequence[Result]) -> str:
    """A plain-text table for the terminal."""
    lines = [HEADER, *_lines(results)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out)


def markdown_table(results: Sequence[Result]) -> str:
    rows = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for line in _lines(results):
        cells = [cell.replace("|", "\\|") for cell in line]
        if cells[6] == "NO":
            cells[6] = "**NO**"
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_json(path: Path, results: Sequence[Result], machine: dict[str, Any]) -> None:
    def clean(value: Any) -> Any:  # JSON has no NaN
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value

    body = {"machine": machine, "results": [clean(asdict(result)) for result in results]}
    write_atomically(path, json.dumps(body, indent=1) + "\n")


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write `content` (text as UTF-8) to `path` so that an interruption (SIGTERM, Ctrl-C) leaves
    the previous file or none, never half of one: into a temporary file beside it, then renamed over
    it. A FIFO or a device is written directly: there is no file to replace, and renaming would
    replace it."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    target = path.resolve()  # through a symlink: the file it names is replaced, the link stays
    if target.exists() and not target.is_file():
        target.write_bytes(data)
        return
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def plot(path: Path, results: Sequence[Result]) -> str | None:
    """Latency distributions (gatewayd against floor) as a PNG; returns why not when it cannot.

    One panel per pair of samples `<key>gateway_ms` / `<key>floor_ms` in any result.
    """
    panels = [
        (result, key[: -len("gateway_ms")])
        for result in results
        for key in result.samples
        if key.endswith("gateway_ms") and key[: -len("gateway_ms")] + "floor_ms" in result.samples
    ]
    if not panels:
        return "no latency samples to plot"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'gatewayd[bench]'): no plot"
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    lines = (("floor_ms", "floor: bare IMAP IDLE client", "--"), ("gateway_ms", "gatewayd: SSE event", "-"))
    for axis, (result, prefix) in zip(axes[0], panels, strict=True):
        for key, label, style in lines:
            values = sorted(result.samples[prefix + key])
            fractions = [(i + 1) / len(values) for i in range(len(values))]
            axis.step(values, fractions, style, where="post", label=f"{label} (n={len(values)})")
        subtitle = result.plot_titles.get(prefix, "")
        axis.set_title(f"{result.title}\n{subtitle}".strip(), fontsize=9)
        axis.set_xlabel("ms after the end of the LMTP delivery")
        axis.set_ylabel("fraction of messages")
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    write_atomically(path, image.getvalue())
    return None
