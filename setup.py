"""gatewayd's build: the package as pyproject.toml declares it, with the modules every message runs
through compiled to C by mypyc (docs/benchmarks-history.md, "Nineteenth pass"). GATEWAYD_PURE_PYTHON=1
builds it without them; the package is the same Python either way (gatewayd.native)."""

import os
from pathlib import Path

from setuptools import setup

# What every message runs through: parsing, the stages, the rules' conditions. Not the rest of
# the daemon (IMAP, the store, the API), whose time is in I/O, nor the external scorers' clients.
COMPILED = (
    "gatewayd/message/*.py",
    "gatewayd/pipeline/__init__.py",
    "gatewayd/pipeline/auth/*.py",
    "gatewayd/pipeline/injection/*.py",
    "gatewayd/pipeline/learning/*.py",
    "gatewayd/pipeline/spam/*.py",
    "gatewayd/rules/conditions.py",
    "gatewayd/rules/facts.py",
    "gatewayd/rules/match.py",
)
# Left interpreted: the tests reach into them (failure injection and spies on module functions,
# which compiled callers would bind past), and they are not where a message's time goes.
INTERPRETED = (
    "gatewayd/pipeline/auth/lookalike.py",
    "gatewayd/pipeline/injection/stage.py",
    "gatewayd/pipeline/learning/persistence.py",
    "gatewayd/pipeline/learning/store.py",
)


def compiled_sources() -> list[str]:
    here = Path(__file__).parent
    found = {str(path.relative_to(here)) for pattern in COMPILED for path in here.glob(pattern)}
    return sorted(found - set(INTERPRETED))


if __name__ == "__main__":  # as setuptools runs it; tests/test_native.py imports the list
    if os.environ.get("GATEWAYD_PURE_PYTHON") == "1":
        setup()
    else:
        from mypyc.build import mypycify

        setup(ext_modules=mypycify(compiled_sources(), opt_level="3"))
