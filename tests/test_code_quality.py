"""The code's own checks, enforced with the suite: ruff's lint and format, mypy's type check, and
no regular expression construct that Debian 12's Python reads wrongly.

Both tools come with the test extra (`scripts/setup` installs them), so a missing one fails here
rather than letting unchecked code land.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("command", [("ruff", "check", "."), ("ruff", "format", "--check", ".")])
def test_ruff_finds_nothing(command: tuple[str, ...]) -> None:
    result = _run(*command)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_no_type_errors() -> None:
    # The files and settings are pyproject.toml's [tool.mypy]: the package, its tests and bench/, unused
    # ignores flagged.
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


# A group repeated possessively, `(...)*+`: Python before 3.11.5 (Debian 12 has 3.11.2) may leave
# the input advanced by an alternative that failed (CPython gh-106052), so `(?:(?:a|"b")x)*+`
# matched `"` of `"<a@b>`. `(?>(...)*)` is the same repeat, read correctly.
_GROUP_REPEATED_POSSESSIVELY = re.compile(r"\)(?:[*+?]|\{[0-9,]*\})\+")


def test_no_group_is_repeated_possessively() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "gatewayd").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _GROUP_REPEATED_POSSESSIVELY.search(line)
    ]
    assert not found, "write (?>(...)*) instead:\n" + "\n".join(found)
