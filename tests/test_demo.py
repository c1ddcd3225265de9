"""`gatewayd demo`'s sample mail: dated when it is sent, so the spam stage does not score it as old."""

from __future__ import annotations

import email
import time
from email.utils import parsedate_to_datetime

from gatewayd.demo import SAMPLES, _sample


def test_every_sample_is_dated_now() -> None:
    for n in range(len(SAMPLES)):
        message = email.message_from_bytes(_sample(n))
        sent = parsedate_to_datetime(message["Date"]).timestamp()
        assert abs(sent - time.time()) < 60, message["Date"]
