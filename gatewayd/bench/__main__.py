"""`python -m gatewayd.bench`: the same as `gatewayd bench`."""

import sys

from gatewayd.bench import main

sys.exit(main())
