"""`gatewayd bench [SCENARIO ...]`: latency, scale and throughput, each against a floor in the same run.

One sandbox Dovecot serves the whole run; gatewayd runs as a real `gatewayd run` subprocess
(except for the in-process pipeline throughput). Each scenario prints its floor as it goes, and
a table at the end; `--json FILE` keeps every number and the raw latency samples. Absolute times
on a shared machine drift: compare each number with the floor next to it.

The scenarios: latency.py, mailboxes.py, fanout.py, throughput.py, replay.py, restart.py. What they share:
  end_to_end.py      throughput's end-to-end part: `gatewayd run`'s CPU per message, the corpus over LMTP
  harness.py         Bench: the run's sandbox Dovecot, scratch directory and fresh names; pacing
  gateway.py         GatewayProcess: `gatewayd run` as a subprocess, READY=1, /healthz, SIGTERM
  gateway_config.py  the configuration every scenario's gatewayd runs: its token, the rules
  sse_client.py      the raw-socket SSE subscriber      swarm.py   thousands of them in a process
  imap_floor.py      bare IMAP clients in IDLE: the latency floors
  sse_floor.py       a bare SSE server: the fan-out floor
  lmtp.py            delivery over LMTP, and the benchmark mail
  machine.py         the machine's facts and its inotify limit
  profiling.py       --profile: py-spy on a measured phase
  stats.py           results, percentiles, the table, JSON and plot
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import FrameType, ModuleType

from gatewayd import startup_signals
from gatewayd.bench import fanout, latency, mailboxes, replay, restart, throughput
from gatewayd.bench.gateway import CPU_POLICIES
from gatewayd.bench.harness import Bench
from gatewayd.bench.machine import machine
from gatewayd.bench.profiling import py_spy
from gatewayd.bench.stats import Result, markdown_table, plot, table, write_atomically, write_json

# In the order; each module has NAME, TITLE, QUICK, FULL and `async run(bench, size)`.
SCENARIOS: tuple[ModuleType, ...] = (latency, mailboxes, fanout, throughput, replay, restart)
BY_NAME = {module.NAME: module for module in SCENARIOS} | {
    str(n): module for n, module in enumerate(SCENARIOS, 1)
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatewayd bench",
        description="Benchmarks against the sandbox Dovecot, each with its floor measured in the same run.",
    )
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of {', '.join(m.NAME for m in SCENARIOS)} (or 1-{len(SCENARIOS)}); default: all",
    )
    parser.add_argument("--quick", action="store_true", help="smoke size: tiny N, a few seconds each")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every result and sample here")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="latency distributions (matplotlib)")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="write the results table as Markdown")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy the measured phase of each scenario into DIR"
    )
    parser.add_argument(
        "--cpu-policy",
        choices=sorted(CPU_POLICIES),
        default="batch",
        help="gatewayd's CPU scheduling policy: batch, as systemd/gatewayd.service runs it (default), "
        "or other, the kernel's default",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SCENARIO.KEY=VALUE",
        help="override a size, e.g. --set fanout.subscribers=2000 (repeatable)",
    )
    return parser


class UsageError(Exception):
    """Bad arguments, found before anything starts: one line for the user, exit status 2."""


# Sizes that may be 0: a warm-up and four switches. Every other size counts or paces what is measured.
MAY_BE_ZERO = frozenset(
    {
        "latency.warmup",
        "latency.acting_messages",
        "throughput.train",
        "throughput.end_to_end",
        "restart.passive",
    }
)
# A size that samples another cannot exceed it: (scenario, sample) -> what it samples.
SAMPLES = {("mailboxes", "probes"): "mailboxes"}


def _size(name: str, field: str, text: str, default: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--set {name}.{field}={text}: not a number") from None
    if f"{name}.{field}" in MAY_BE_ZERO:
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"--set {name}.{field}={text}: must be a finite number, 0 or more")
    elif not (math.isfinite(value) and value > 0):
        raise UsageError(f"--set {name}.{field}={text}: must be a finite number above 0")
    if isinstance(default, int) and not value.is_integer():
        raise UsageError(f"--set {name}.{field}={text}: must be a whole number")
    return value


def _sizes(
    modules: Sequence[ModuleType], quick: bool, overrides: Sequence[str]
) -> dict[str, dict[str, float]]:
    sizes = {m.NAME: dict(m.QUICK if quick else m.FULL) for m in modules}
    for item in overrides:
        key, equals, value = item.partition("=")
        name, dot, field = key.partition(".")
        if not (equals and dot and value):
            raise UsageError(f"--set {item}: expected SCENARIO.KEY=VALUE, e.g. --set fanout.subscribers=2000")
        if name not in sizes:
            known = name in {m.NAME for m in SCENARIOS}
            why = "is not among the scenarios to run" if known else "is not a scenario"
            raise UsageError(f"--set {item}: {name} {why}; choose from {', '.join(sizes)}")
        if field not in sizes[name]:
            keys = ", ".join(sizes[name])
            raise UsageError(f"--set {item}: {name} has no size {field}; choose from {keys}")
        sizes[name][field] = _size(name, field, value, sizes[name][field])
    for (name, sample), whole in SAMPLES.items():
        if name in sizes and sizes[name][sample] > sizes[name][whole]:
            raise UsageError(
                f"{name}.{sample}={sizes[name][sample]:g} is more than {name}.{whole}={sizes[name][whole]:g}:"
                f" the {sample} are a sample of the {whole}"
            )
    return sizes


def _check_writable(option: str, path: Path | None, directory: bool = False) -> None:
    """Refuse, before the run, an output the end of a run of minutes could not write."""
    if path is None:
        return
    if path.is_dir() != directory and path.exists():
        raise UsageError(f"{option} {path}: {'not a directory' if directory else 'is a directory'}")
    parent = path if directory and path.exists() else path.parent
    while directory and not parent.exists() and parent != parent.parent:
        parent = parent.parent  # --profile makes its directory and any missing parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{option} {path}: not writable")


def _check_outputs(args: argparse.Namespace) -> None:
    _check_writable("--json", args.json)
    _check_writable("--markdown", args.markdown)
    _check_writable("--plot", args.plot)
    _check_writable("--profile", args.profile, directory=True)
    if args.profile is not None and py_spy() is None:
        raise UsageError("--profile needs py-spy (pip install py-spy)")


async def run_scenario(module: ModuleType, bench: Bench, size: dict[str, float]) -> Result:
    """Run one scenario; an exception becomes the result's error, never the end of the run."""
    print(f"\n== {module.TITLE} ({', '.join(f'{k}={v:g}' for k, v in size.items())})", flush=True)
    started = time.monotonic()
    runner: Callable[[Bench, dict[str, float]], Awaitable[Result]] = module.run
    try:
        result = await runner(bench, size)
    except Exception as exc:
        traceback.print_exc()
        result = Result(module.NAME, module.TITLE, size=dict(size), error=f"{type(exc).__name__}: {exc}")
    result.seconds = time.monotonic() - started
    if result.error:
        print(f"  ERROR: {result.error}", flush=True)
    for row in result.rows:
        floor = f"  (floor {row.floor:.2f})" if row.floor is not None else ""
        verdict = {True: "  [target met]", False: "  [TARGET MISSED]", None: ""}[row.met]
        target = f"  target {row.target}" if row.target else ""
        print(f"  {row.metric}: {row.value:.2f} {row.unit}{floor}{target}{verdict}", flush=True)
    print(f"  ({result.seconds:.1f} s)", flush=True)
    return result


async def _open_bench(quick: bool, profile: Path | None, cpu_policy: str) -> Bench:
    """Bench.open in a thread; interrupted meanwhile, the thread still starts the Dovecot, so wait
    for it and stop that Dovecot before the interruption goes on."""
    opening = asyncio.ensure_future(asyncio.to_thread(Bench.open, quick, None, profile, cpu_policy))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        while not opening.done():
            with contextlib.suppress(asyncio.CancelledError):  # a second signal changes nothing
                await asyncio.shield(opening)
        if not opening.cancelled() and opening.exception() is None:
            await asyncio.to_thread(opening.result().close)
        raise


async def run(
    modules: Sequence[ModuleType],
    quick: bool,
    sizes: dict[str, dict[str, float]],
    profile: Path | None = None,
    cpu_policy: str = "batch",
) -> list[Result]:
    # SIGTERM (a CI job cancelled, `timeout`) ends the run as Ctrl-C does: through the finally
    # blocks, so no sandbox Dovecot or gatewayd outlives it.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    bench = await _open_bench(quick, profile, cpu_policy)
    try:
        return [await run_scenario(module, bench, sizes[module.NAME]) for module in modules]
    finally:
        await asyncio.to_thread(bench.close)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every scenario ran (targets missed or not), 1 when one failed, 2 on bad usage,
    130 when interrupted (Ctrl-C or SIGTERM)."""
    # SIGTERM interrupts as Ctrl-C does from the first moment to the last, not only while the
    # scenarios run (the event loop's own handler then).
    previous = (
        signal.signal(signal.SIGTERM, _interrupt),
        signal.signal(signal.SIGINT, signal.default_int_handler),
    )
    try:
        if startup_signals.take() is not None:
            raise KeyboardInterrupt  # it came while `gatewayd bench` was being imported
        return _bench(argv)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: the sandbox is stopped and removed", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def _bench(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [name for name in args.scenarios if name not in BY_NAME]
    if unknown:
        print(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    modules = list(dict.fromkeys(BY_NAME[name] for name in args.scenarios)) or list(SCENARIOS)
    try:
        sizes = _sizes(modules, args.quick, args.set)
        _check_outputs(args)
    except UsageError as exc:
        print(f"gatewayd bench: {exc}", file=sys.stderr)
        return 2
    info = machine()
    mode = "quick" if args.quick else "full"
    print(
        f"gatewayd bench ({mode}): {info.get('nproc')} cores, {info.get('cpu', '?')}, "
        f"Python {info['python']} ({info['interpreter']}; gatewayd: {info['gatewayd_build']}), "
        f"Dovecot {info.get('dovecot', '?')}, "
        f"load {os.getloadavg()[0]:.2f}; gatewayd under SCHED_{args.cpu_policy.upper()}",
        flush=True,
    )
    info["gatewayd_cpu_policy"] = args.cpu_policy
    try:
        results = asyncio.run(run(modules, args.quick, sizes, args.profile, args.cpu_policy))
    finally:
        signal.signal(signal.SIGTERM, _interrupt)  # closing, the event loop reset it to the default
    info["loadavg_after"] = os.getloadavg()
    print("\n" + table(results))
    failed = [r.scenario for r in results if r.error]
    missed = [r.scenario for r in results if r.targets_met is False]
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    print(
        f"targets missed: {', '.join(missed)}" if missed else "no target missed among the scenarios that ran"
    )
    if args.json:
        write_json(args.json, results, info)
        print(f"results: {args.json}")
    if args.markdown:
        write_atomically(args.markdown, markdown_table(results) + "\n")
    if args.plot:
        why_not = plot(args.plot, results)
        print(f"plot: {why_not}" if why_not else f"plot: {args.plot}")
    return 1 if any(r.error for r in results) else 0
