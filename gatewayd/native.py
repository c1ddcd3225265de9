"""Which of gatewayd's modules run compiled by mypyc (setup.py lists them), and whether one is stale.

The build compiles each of them into an extension module beside its source, and Python imports
the extension first: in an editable install (`scripts/setup`'s), a source edited after the build
has no effect until the next build. `scripts/setup` rebuilds when this says so, the test suite
refuses to run against a stale build, `gatewayd run` warns, and the bench names what ran.

`python -m gatewayd.native [PACKAGE_DIR]` prints the stale modules' sources, exit status 1 when there
are any.
"""

from __future__ import annotations

import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def extensions(package: Path = PACKAGE) -> list[Path]:
    """The compiled modules' extension files under `package`."""
    return sorted({path for suffix in EXTENSION_SUFFIXES for path in package.rglob(f"*{suffix}")})


def stale(package: Path = PACKAGE) -> list[Path]:
    """Sources changed (or removed) since their extension was built: the extension runs, not them.

    Only a source tree (setup.py beside the package: an editable install) can go stale; an
    installed wheel's sources and extensions come together, with the times of the install."""
    if not (package.parent / "setup.py").exists():
        return []
    found = []
    for extension in extensions(package):
        source = extension.with_name(extension.name.split(".", 1)[0] + ".py")
        if not source.exists() or source.stat().st_mtime > extension.stat().st_mtime:
            found.append(source)
    return found


def describe(package: Path = PACKAGE) -> str:
    """One line for logs and the bench: how many modules run compiled."""
    count = len(extensions(package))
    return f"{count} modules compiled by mypyc" if count else "pure Python (no module compiled)"


def main(argv: list[str]) -> int:
    sources = stale(Path(argv[0]) if argv else PACKAGE)
    for source in sources:
        print(f"stale: {source} changed after its compiled module was built", file=sys.stderr)
    if sources:
        print("rebuild with ./scripts/setup", file=sys.stderr)
    return 1 if sources else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
