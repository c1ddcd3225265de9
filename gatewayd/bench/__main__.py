"""`python -m gatewayd.bench`: the same as `gatewayd bench`."""

import sys

from gatewayd import startup_signals

startup_signals.hold()  # before the imports below, which take a fraction of a second

from gatewayd.bench import main  # noqa: E402

sys.exit(main())
