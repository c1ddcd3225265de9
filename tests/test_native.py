"""gatewayd.native: which modules run compiled, and a build older than its sources is caught."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

from gatewayd import native

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = EXTENSION_SUFFIXES[0]


def _setup_module() -> Any:
    spec = importlib.util.spec_from_file_location("gatewayd_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _package(tmp_path: Path) -> Path:
    """A source tree: the package, and setup.py beside it."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (tmp_path / "setup.py").write_text("")
    for name in ("a", "sub/b", "plain"):
        (package / f"{name}.py").write_text("")
    for name in ("a", "sub/b"):
        (package / f"{name}{SUFFIX}").write_bytes(b"")
    return package


def _age(path: Path, seconds: float) -> None:
    stat = path.stat()
    os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))


def test_a_build_newer_than_its_sources_is_not_stale(tmp_path: Path) -> None:
    package = _package(tmp_path)
    for source in package.rglob("*.py"):
        _age(source, 60)
    assert [path.name for path in native.extensions(package)] == [f"a{SUFFIX}", f"b{SUFFIX}"]
    assert native.stale(package) == []
    assert native.describe(package) == "2 modules compiled by mypyc"


def test_a_source_changed_or_removed_after_the_build_is_stale(tmp_path: Path) -> None:
    package = _package(tmp_path)
    _age(package / f"a{SUFFIX}", 60)  # a.py is newer than its extension
    (package / "sub" / "b.py").unlink()  # the extension of a removed module would still import
    assert native.stale(package) == [package / "a.py", package / "sub" / "b.py"]


def test_an_installed_package_is_never_stale(tmp_path: Path) -> None:
    # A wheel's files get the install's times, in any order; nothing there is edited in place.
    package = _package(tmp_path)
    (tmp_path / "setup.py").unlink()
    _age(package / f"a{SUFFIX}", 60)
    assert native.stale(package) == []


def test_a_package_without_extensions_is_pure_python(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("")
    assert native.stale(package) == []
    assert native.describe(package) == "pure Python (no module compiled)"


def test_the_command_exits_1_and_names_what_to_do_when_stale(tmp_path: Path) -> None:
    package = _package(tmp_path)
    _age(package / f"a{SUFFIX}", 60)
    command = [sys.executable, "-m", "gatewayd.native", str(package)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 1, result.stderr
    assert f"stale: {package / 'a.py'} changed after its compiled module was built" in result.stderr
    assert "rebuild with ./scripts/setup" in result.stderr
    _age(package / "a.py", 120)
    fresh = subprocess.run(command, capture_output=True, text=True, check=False)
    assert (fresh.returncode, fresh.stderr) == (0, "")


def test_this_build_compiles_every_listed_module_or_none() -> None:
    # A partial build (a module dropped from the list, a failed extension) would run half the
    # pipeline interpreted without anyone noticing; pure Python is only ever all of it.
    listed = {ROOT / source for source in _setup_module().compiled_sources()}
    assert ROOT / "gatewayd" / "pipeline" / "spam" / "stage.py" in listed
    built = {
        extension.with_name(extension.name.split(".", 1)[0] + ".py") for extension in native.extensions()
    }
    assert built in (set(), listed)
    stage = importlib.import_module("gatewayd.pipeline.spam.stage")
    assert str(stage.__file__).endswith(SUFFIX) == bool(built)


# `.lower()` calls in compiled modules that are on bytes, or on text known to be Latin-1, where
# the compiled routine is right; every other one must be gatewayd.message.lowercase.lower().
_LOWER_CALLS_NOT_ON_TEXT = {
    "gatewayd/message/lowercase.py": 1,
    "gatewayd/pipeline/auth/dkim.py": 2,
    "gatewayd/pipeline/injection/characters.py": 2,
    "gatewayd/pipeline/learning/tokens.py": 4,
    "gatewayd/pipeline/spam/content.py": 1,
    "gatewayd/pipeline/spam/headers.py": 1,
    "gatewayd/pipeline/spam/html.py": 5,
    "gatewayd/rules/facts.py": 2,
}


def test_compiled_modules_lower_case_text_as_cpython_does() -> None:
    found = {}
    for source in _setup_module().compiled_sources():
        tree = ast.parse((ROOT / source).read_text())
        calls = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "lower"
        ]
        if calls:
            found[source] = len(calls)
    assert found == _LOWER_CALLS_NOT_ON_TEXT
    # What the rule is for: a word-final capital sigma.
    from gatewayd.message.lowercase import lower

    for text in ("ΣΊΣΥΦΟΣ", "ΟΔΥΣΣΕΥΣ ΚΑΙ Σ", "naïve ΣΑΣ.", "plain ascii", "Straße İstanbul"):
        assert lower(text) == text.lower()
    assert lower("ΣΊΣΥΦΟΣ") == "σίσυφος"
