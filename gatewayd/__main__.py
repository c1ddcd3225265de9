"""`python -m gatewayd` and the `gatewayd` console script."""

import sys

from gatewayd import startup_signals


def main() -> int:
    startup_signals.hold()  # before the imports below, which take a fraction of a second
    from gatewayd.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
