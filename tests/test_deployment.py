"""The ways gatewayd is deployed (systemd unit, container image) run it under the CPU policy the
benchmarks measure: SCHED_BATCH; the unit's system call filter leaves what gatewayd needs; the
image's health check reaches gatewayd; the package builds with the backend it asks for."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from gatewayd.app import Daemon
from gatewayd.sandbox.dovecot import free_port
from tests.conftest import mailless_config

ROOT = Path(__file__).resolve().parent.parent


def test_the_systemd_unit_sets_the_batch_policy() -> None:
    unit = (ROOT / "systemd" / "gatewayd.service").read_text()
    assert re.search(r"^CPUSchedulingPolicy=batch$", unit, re.M)


def test_the_systemd_unit_lets_the_template_renderer_set_its_limits() -> None:
    """`~@resources` takes setrlimit away (a filtered call kills the process), which the template
    renderer (gatewayd/rules/template_worker.py) needs: it is allowed again after the deny, with
    prlimit64 (what glibc calls) named too."""
    filters = re.findall(
        r"^SystemCallFilter=(.*)$", (ROOT / "systemd" / "gatewayd.service").read_text(), re.M
    )
    denied = next(i for i, f in enumerate(filters) if f.startswith("~") and "@resources" in f)
    allowed = [set(f.split()) for f in filters[denied + 1 :] if not f.startswith("~")]
    assert any({"setrlimit", "prlimit64"} <= names for names in allowed), filters


def test_the_container_entrypoint_runs_gatewayd_under_the_batch_policy() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M)
    assert match, "no exec-form ENTRYPOINT in the Dockerfile"
    entrypoint = json.loads(match.group(1))
    assert entrypoint[-1] == "gatewayd"
    # The image's command line, with this interpreter importing gatewayd where the image runs
    # its console script: the process that ends up running has the policy.
    probe = "import os, gatewayd.cli; print(os.sched_getscheduler(0))"
    result = subprocess.run(
        [*entrypoint[:-1], sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == os.SCHED_BATCH


async def test_the_container_healthcheck_asks_gatewayd_itself_whatever_proxy_is_set(tmp_path: Path) -> None:
    """The image's HEALTHCHECK command against a real gatewayd: healthy with no token, and not
    sent to an HTTP proxy of the environment (which would make a working container unhealthy)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^\s+CMD (\[.*\])$", dockerfile, re.M)
    assert match, "no exec-form HEALTHCHECK CMD in the Dockerfile"
    command = json.loads(match.group(1))
    assert command[0] == "python" and ":8025/" in command[-1]
    daemon = Daemon(mailless_config(tmp_path))
    await daemon.start()
    try:
        dead_proxy = f"http://127.0.0.1:{free_port()}"
        check = await asyncio.create_subprocess_exec(
            sys.executable,
            *command[1:-1],
            command[-1].replace(":8025/", f":{daemon.port}/"),
            env={**os.environ, "http_proxy": dead_proxy, "HTTP_PROXY": dead_proxy},
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await check.communicate()
        assert check.returncode == 0, stderr.decode()
    finally:
        await daemon.stop()


def test_the_build_backend_floor_reads_the_licence_expression() -> None:
    """`license = "GPL-3.0-or-later"` (PEP 639) is refused by setuptools before 77 ("must be valid
    exactly by one definition"): a build without isolation, on an older setuptools that the floor
    allowed, failed."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(pyproject["project"]["license"], str)
    (requirement,) = [r for r in pyproject["build-system"]["requires"] if r.startswith("setuptools")]
    match = re.fullmatch(r"setuptools>=(\d+)(?:\.\d+)*", requirement)
    assert match and int(match.group(1)) >= 77, requirement


def test_the_container_user_is_numeric_and_the_one_the_image_creates() -> None:
    """A runtime checks that the image does not run as root from USER alone: Kubernetes'
    runAsNonRoot refuses a user given by name ("cannot verify user is non-root")."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), user
    uid, gid = user.split(":")
    assert re.search(rf"useradd [^\n]*--uid {uid} --gid {gid} ", dockerfile)
    assert re.search(rf"groupadd [^\n]*--gid {gid} gatewayd", dockerfile)


def _unit_values(key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", (ROOT / "systemd" / "gatewayd.service").read_text(), re.M)


def test_the_systemd_unit_does_not_restart_on_a_bad_configuration(tmp_path: Path) -> None:
    """A bad file stays bad: the status `gatewayd run` exits with on one is a status the unit does
    not restart on, and no ExecStartPre= checks the file (RestartPreventExitStatus= does not apply
    to it, so its failure would be restarted every RestartSec for ever)."""
    config = tmp_path / "gatewayd.yaml"
    config.write_text("server:\n  listen: 127.0.0.1:abc\nagents: []\n")
    result = subprocess.run(
        [sys.executable, "-m", "gatewayd", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2, result.stderr
    prevented = {status for line in _unit_values("RestartPreventExitStatus") for status in line.split()}
    assert str(result.returncode) in prevented
    assert "3" not in prevented, "a locked store or a held address clears by itself"
    assert _unit_values("ExecStartPre") == []
