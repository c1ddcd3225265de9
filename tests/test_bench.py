"""Smoke tests of the benchmarks: every scenario at its `--quick` size, so none can rot.

Only sanity is asserted (it ran, counts add up, numbers are finite and within generous bounds):
the targets are the benchmark's business, and wall-clock limits would flake on a shared machine.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from gatewayd.bench import SCENARIOS, main, run_scenario
from gatewayd.bench.gateway import GatewayProcess
from gatewayd.bench.harness import Bench
from gatewayd.bench.latency import median_gap, window_starts
from gatewayd.bench.sse_client import _Dechunker
from gatewayd.bench.stats import Result, latency_rows, percentile, write_atomically
from gatewayd.bench.swarm import Swarm
from gatewayd.sandbox.dovecot import SandboxUnavailable, free_port


@pytest.fixture(scope="module")
def bench() -> Iterator[Bench]:
    try:
        opened = Bench.open(quick=True)
    except SandboxUnavailable as exc:
        pytest.fail(f"the real Dovecot the benchmarks need is unavailable: {exc}", pytrace=False)
    yield opened
    opened.close()


def value(result: Result, prefix: str) -> float:
    found = [row.value for row in result.rows if row.metric.startswith(prefix)]
    assert found and found[0] is not None, f"{result.scenario}: no row {prefix!r} in {result.rows}"
    return float(found[0])


def check_latency(result: Result) -> None:
    assert value(result, "messages") == 40  # 20 spread over 4 mailboxes, 20 to one busy mailbox
    for phase in ("4 mailboxes", "one busy mailbox"):
        p50 = [r for r in result.rows if r.metric.startswith(phase) and r.metric.endswith(" p50")]
        row = next(r for r in p50 if "floor" not in r.metric)
        assert row.value is not None and 0 < row.value < 10_000
        assert row.floor is not None and -100 < row.floor < 10_000  # a floor can beat the 250
    for key in ("", "busy."):
        assert len(result.samples[f"{key}gateway_ms"]) == len(result.samples[f"{key}floor_ms"]) == 20
    # The diagnostic phase with mail a rule acts on: every message acted on, no target on it.
    assert len(result.samples["acting.gateway_ms"]) == len(result.samples["acting.floor_ms"]) == 8
    assert value(result, "  of which a rule acted on") == 8
    acting = [r for r in result.rows if r.metric.startswith("4 mailboxes, 1 msg/0.2 s each, a rule acting")]
    assert len(acting) == 6 and all(r.target in (None, "") for r in acting)
    assert 0 < value(result, "4 mailboxes, 1 msg/0.2 s each, a rule acting p50") < 10_000
    assert 0 < value(result, "  gatewayd push -> event published p50 (last 20)") < 10_000
    # The diagnostic floors: a bare client fetching on EXISTS, one given each message with its push.
    for floor in ("fetches on EXISTS", "gets each message with its push"):
        assert -100 < value(result, f"  bare client that {floor} p50") < 10_000
    # Dovecot notifies at most every 500 ms: windows come at least that far apart, events in bursts.
    for who in ("floor's", "gatewayd's"):
        assert 400 < value(result, f"  {who} windows: one every (median)") < 10_000
    assert math.isfinite(value(result, "  gatewayd's windows drifted from the floor's"))


def check_mailboxes(result: Result) -> None:
    assert value(result, "gateway VmRSS with all watched") > 10  # MiB
    assert 0 < value(result, "time to bring 6 mailboxes up") < 120
    assert 0 < value(result, "delivery->SSE at 6 mailboxes p50") < 10_000
    assert len(result.samples["gateway_ms"]) == 15
    assert 0 < value(result, "SIGTERM -> exit") < 60


def check_fanout(result: Result) -> None:
    assert value(result, "reached by every event") == 20
    assert 0 < value(result, "publish -> last subscriber p99") < 10_000
    assert len(result.samples["last_subscriber_ms"]) == 3


def check_throughput(result: Result) -> None:
    assert value(result, "messages") == 100
    for mode in ("one commit per message (", "one commit per message, 8 mailboxes at once", "group commits"):
        assert value(result, f"throughput per core, {mode}") > 0
    assert 0 < value(result, "median per typical message") < 10_000  # ms
    shares = [row.value or 0 for row in result.rows if row.metric.startswith("share:")]
    assert 0 < sum(shares) <= 101
    # The real daemon, with the rules and without: every message delivered came as an event.
    for rules in ("the benchmark rules acting", "no rules"):
        assert value(result, f"end to end, {rules}: messages per gatewayd CPU-second") > 0
        assert any(note.startswith(f"end to end, {rules}: 20 events") for note in result.notes)


def check_replay(result: Result) -> None:
    assert value(result, "events replayed") == 2000
    assert value(result, "replay rate") > 0
    assert 0 < value(result, "time to first event") < 60_000


def check_restart(result: Result) -> None:
    assert 0 < value(result, "spawn -> READY=1") < 60_000
    assert 0 < value(result, "SIGTERM -> exit") < 60_000


CHECKS: dict[str, Callable[[Result], None]] = {
    "latency": check_latency,
    "mailboxes": check_mailboxes,
    "fanout": check_fanout,
    "throughput": check_throughput,
    "replay": check_replay,
    "restart": check_restart,
}


@pytest.mark.parametrize("module", SCENARIOS, ids=lambda module: module.NAME)
async def test_scenario_runs_at_quick_size(
    bench: Bench, module: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await run_scenario(module, bench, dict(module.QUICK))
    assert result.error is None
    assert result.rows
    for row in result.rows:
        assert row.value is not None and math.isfinite(row.value), row
        assert row.floor is None or math.isfinite(row.floor), row
        assert (row.met is None) == (not row.target), row  # every target gets its verdict
    # Issue 6: each scenario prints its own floor, measured in the same run.
    floors = [row for row in result.rows if row.floor is not None]
    assert floors, f"{module.NAME}: no row with a floor"
    printed = capsys.readouterr().out
    for row in floors:
        assert f"  {row.metric}: " in printed and "(floor " in printed
    CHECKS[module.NAME](result)


def test_main_writes_json_and_markdown(tmp_path: Path) -> None:
    out, table = tmp_path / "results.json", tmp_path / "table.md"
    assert main(["throughput", "--quick", "--json", str(out), "--markdown", str(table)]) == 0
    body = json.loads(out.read_text())
    assert body["machine"]["nproc"] >= 1
    (result,) = body["results"]
    assert result["scenario"] == "throughput" and result["error"] is None
    assert "| throughput |" in table.read_text()


# A child whose write stops midway, as SIGTERM stops the bench's: past RLIMIT_FSIZE (SIGXFSZ
# ignored) the write fails with EFBIG after its first 4 KiB.
_INTERRUPTED_WRITE = """
import resource, signal, sys
from pathlib import Path
from gatewayd.bench.stats import Result, markdown_table, write_atomically, write_json
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
result = Result("latency", "latency", samples={"gateway_ms": [0.25] * 10000})
for n in range(1000):
    result.add(f"metric {n}", 1.0)
if sys.argv[2] == "json":
    write_json(Path(sys.argv[1]), [result], {})
elif sys.argv[2] == "png":  # --plot's image, as bytes
    write_atomically(Path(sys.argv[1]), bytes(range(256)) * 1000)
else:
    write_atomically(Path(sys.argv[1]), markdown_table([result]))
"""


@pytest.mark.parametrize("kind", ["json", "markdown", "png"])
def test_results_interrupted_while_written_leave_the_previous_file_whole(tmp_path: Path, kind: str) -> None:
    """`--json`, `--markdown` and `--plot` were written in place: SIGTERM (exit 130) in the middle
    of it left the first bytes of the new results in place of the old ones."""
    target = tmp_path / f"results.{kind}"
    target.write_text("the previous run\n")
    child = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_WRITE, str(target), kind],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "File too large" in child.stderr, child.stderr
    assert target.read_text() == "the previous run\n"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_results_replace_the_file_a_symlink_names_and_a_fifo_is_written_directly(tmp_path: Path) -> None:
    real, link = tmp_path / "real.md", tmp_path / "link.md"
    real.write_text("old\n")
    link.symlink_to(real)
    write_atomically(link, "new\n")
    assert link.is_symlink() and real.read_text() == "new\n"
    fifo = tmp_path / "fifo.md"
    os.mkfifo(fifo)
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    received: list[str] = []
    reader.start()
    write_atomically(fifo, "through the pipe\n")
    reader.join(timeout=30)
    assert received == ["through the pipe\n"] and fifo.is_fifo()


def test_main_refuses_unknown_scenario() -> None:
    assert main(["nonsense"]) == 2


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["--set", "nope.x=1"], "nope is not a scenario"),
        (["replay", "--set", "fanout.subscribers=3"], "fanout is not among the scenarios to run"),
        (["--set", "replay.nope=1"], "replay has no size nope; choose from events"),
        (["--set", "replay.events"], "expected SCENARIO.KEY=VALUE"),
        (["--set", "replay.events=many"], "not a number"),
        (["--set", "replay.events=-5"], "must be a finite number above 0"),
        (["--set", "replay.events=0"], "must be a finite number above 0"),
        (["--set", "replay.events=nan"], "must be a finite number above 0"),
        (["--set", "replay.events=2.5"], "must be a whole number"),
        (["--set", "restart.passive=-1"], "must be a finite number, 0 or more"),
        (
            ["mailboxes", "--set", "mailboxes.probes=50", "--set", "mailboxes.mailboxes=10"],
            "mailboxes.probes=50 is more than mailboxes.mailboxes=10",
        ),
        (
            ["mailboxes", "--set", "mailboxes.mailboxes=2"],
            "mailboxes.probes=3 is more than mailboxes.mailboxes=2",
        ),
        (["--json", "{tmp}/missing/results.json"], "missing does not exist"),
        (["--markdown", "{tmp}"], "is a directory"),
        (["--plot", "{tmp}/missing/latency.png"], "missing does not exist"),
        (["--profile", "{tmp}/file"], "not a directory"),
    ],
)
def test_main_refuses_bad_arguments_before_starting_anything(
    arguments: list[str], error: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").touch()
    assert main(["--quick", *(a.replace("{tmp}", str(tmp_path)) for a in arguments)]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # not even the machine's line: no Dovecot, no gatewayd, no scratch directory
    assert len(err.splitlines()) == 1 and error in err, err


def test_main_refuses_profile_without_py_spy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("gatewayd.bench.py_spy", lambda: None)  # py-spy not installed
    assert main(["--quick", "--profile", str(tmp_path / "profiles")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--profile needs py-spy" in err


def test_dechunker_across_split_reads() -> None:
    body = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
    dechunker = _Dechunker()
    out = b"".join(dechunker.feed(body[i : i + 3]) for i in range(0, len(body), 3))
    assert out == b"hello, world" and dechunker.finished


async def test_a_swarm_with_a_subscriber_that_could_not_connect_is_refused() -> None:
    # Nothing listens on a free port: every connection is refused.
    swarm = await Swarm.start("127.0.0.1", free_port(), "token", ["/events"] * 2)
    try:
        assert swarm.ready["failed"] == 2
        with pytest.raises(RuntimeError, match=r"2 subscribers could not connect: .*ConnectionRefusedError"):
            swarm.require_all_connected()
    finally:
        await swarm.close()


def test_latency_targets_are_the_issues_slack_over_the_floor() -> None:
    """Issue 6: p50 within 5 ms of the floor's p50, p99 within 25 ms of the floor's p99."""
    result = Result("latency", "latency")
    latency_rows(result, "at the limit", [505.0] * 10, [500.0] * 10)
    latency_rows(result, "past it", [530.1] * 10, [505.0] * 10)
    verdicts = {row.metric: row.met for row in result.rows if row.target}
    assert verdicts == {
        "at the limit p50 - floor p50": True,
        "at the limit p99 - floor p99": True,
        "past it p50 - floor p50": False,
        "past it p99 - floor p99": False,
    }


def test_percentile_interpolates() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 99) == 5
    assert math.isnan(percentile([], 50))


def test_windows_are_found_as_bursts_of_moments() -> None:
    moments = [1.003, 0.0, 0.501, 0.002, 0.5, 0.001]  # three bursts, out of order
    assert window_starts(moments) == [0.0, 0.5, 1.003]
    assert median_gap(window_starts(moments)) == pytest.approx(501.5)
    assert window_starts([]) == []


async def test_gateway_runs_under_the_policy_of_its_systemd_unit(bench: Bench) -> None:
    """Every thread of the gatewayd under test is SCHED_BATCH, as systemd/gatewayd.service sets it
    (tests/test_deployment.py); the bench's own thread keeps its policy."""
    before = os.sched_getscheduler(0)
    gateway = await GatewayProcess.start(bench, bench.users("policy", 1))
    try:
        await gateway.wait_watchers(1)
        threads = [int(tid) for tid in os.listdir(f"/proc/{gateway.pid}/task")]
        assert len(threads) > 1  # the store's writer at least: threads started later inherit it
        assert {os.sched_getscheduler(tid) for tid in threads} == {os.SCHED_BATCH}
        await gateway.terminate()
    finally:
        gateway.kill()  # when a check failed
    assert os.sched_getscheduler(0) == before


def _processes_naming(path: Path) -> dict[int, str]:
    """Processes whose command line names `path` (the bench's Dovecot and gatewayd do), by pid."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue  # gone meanwhile
            if str(path) in command:
                found[int(proc.name)] = command
    return found


def _scratch_created(scratch: Path) -> bool:
    return any(scratch.iterdir())


def _sandbox_and_gateway_up(scratch: Path) -> bool:
    commands = _processes_naming(scratch).values()
    return all(any(name in command for command in commands) for name in ("dovecot", "gatewayd run"))


@pytest.mark.parametrize(
    "moment",
    [
        # The bench's root exists and its Dovecot is starting, in a thread the signal cannot stop.
        _scratch_created,
        # Both the sandbox Dovecot and a gatewayd are up: what a cancelled CI job would orphan.
        _sandbox_and_gateway_up,
    ],
    ids=["dovecot-starting", "scenario-running"],
)
def test_a_terminated_run_leaves_no_sandbox_behind(moment: Callable[[Path], bool]) -> None:
    # A short directory of its own: Dovecot's socket paths must stay under the kernel's limit.
    scratch = Path(tempfile.mkdtemp(prefix="gwb-", dir="/tmp"))
    env = {**os.environ, "TMPDIR": str(scratch)}
    process = subprocess.Popen(
        [sys.executable, "-m", "gatewayd", "bench", "latency"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not moment(scratch):
            assert process.poll() is None and time.monotonic() < deadline, "the bench never got going"
            time.sleep(0.002)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, err.decode(errors="replace")
        assert b"interrupted" in err
        assert _processes_naming(scratch) == {}
        assert list(scratch.iterdir()) == []  # the bench's root is removed
    finally:
        for pid in [process.pid, *_processes_naming(scratch)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(scratch, ignore_errors=True)


def _bench_process(*arguments: str, scratch: Path) -> subprocess.Popen[str]:
    """`gatewayd bench ARGUMENTS` as a subprocess, its sandbox in `scratch`."""
    return subprocess.Popen(
        [sys.executable, *arguments],
        env={**os.environ, "TMPDIR": str(scratch)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_a_sigterm_while_the_bench_is_being_imported_exits_130(tmp_path: Path) -> None:
    # -X importtime reports each module once imported: asyncio comes first among gatewayd's own
    # imports, so the signal lands in them, long before the run's handler is installed.
    process = _bench_process(
        "-X", "importtime", "-m", "gatewayd", "bench", "--quick", "throughput", scratch=tmp_path
    )
    deadline = threading.Timer(60, process.kill)  # a bench that missed the signal runs on
    deadline.start()
    try:
        assert process.stderr is not None
        for line in iter(process.stderr.readline, ""):
            if re.search(r"\|\s+asyncio$", line):
                process.send_signal(signal.SIGTERM)
                break
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, err
        assert "interrupted" in err and "Traceback" not in err, err
    finally:
        deadline.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_sigterm_while_the_results_are_written_exits_130(tmp_path: Path) -> None:
    # FIFOs: opening one waits for its other end, so the bench waits in its results for the test.
    results, table = tmp_path / "results.json", tmp_path / "table.md"
    os.mkfifo(results)
    os.mkfifo(table)
    command = [
        "-m",
        "gatewayd",
        "bench",
        "throughput",
        "--quick",
        "--json",
        str(results),
        "--markdown",
        str(table),
    ]
    # A short directory of its own: Dovecot's socket paths must stay under the kernel's limit.
    scratch = Path(tempfile.mkdtemp(prefix="gwb-", dir="/tmp"))
    process = _bench_process(*command, scratch=scratch)

    def release_the_reader() -> None:  # a bench that ended before its results: no writer would come
        process.wait()
        with contextlib.suppress(OSError):
            os.close(os.open(results, os.O_WRONLY | os.O_NONBLOCK))

    threading.Thread(target=release_the_reader, daemon=True).start()
    try:
        with results.open(encoding="utf-8") as written:
            assert json.loads(written.read())["results"], "no results written"
        # The JSON is written; the bench now waits to write the Markdown table.
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, err
        assert "interrupted" in err and "Traceback" not in err, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(scratch, ignore_errors=True)
