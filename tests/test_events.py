"""events.rfc3339 writes what isoformat writes, field by field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.events import parse_rfc3339, rfc3339


def _by_isoformat(moment: datetime) -> str:
    """rfc3339 as it was written before, by isoformat."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _outcome(moment: datetime, write: object) -> object:
    try:
        return write(moment)  # type: ignore[operator]
    except Exception as exc:  # the same exception (a zone that leaves the calendar), if one raises
        return type(exc)


_ZONES = st.one_of(
    st.none(),  # naive: local time, as astimezone reads it
    st.just(UTC),
    st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda minutes: timezone(timedelta(minutes=minutes))),
    st.timedeltas(-timedelta(hours=23, minutes=59), timedelta(hours=23, minutes=59)).map(timezone),
)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2002, 8, 22, 9, 15, 25, 123999, tzinfo=UTC),  # milliseconds cut, not rounded
        datetime(2002, 8, 22, 9, 15, 25, 999999, tzinfo=UTC),
        datetime(2002, 8, 22, 9, 15, 25, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 11, 22, 0, 30, tzinfo=timezone(timedelta(hours=1))),  # the day before in UTC
        datetime(2026, 11, 22, 23, 30, 0, 500, tzinfo=timezone(timedelta(hours=-5, seconds=1))),
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),  # leaves the calendar
        datetime(2026, 11, 22, 12, 0),  # naive
    ],
)
def test_rfc3339_writes_what_isoformat_writes(moment: datetime) -> None:
    assert _outcome(moment, rfc3339) == _outcome(moment, _by_isoformat)


@settings(max_examples=2000, deadline=None)
@given(st.datetimes(timezones=_ZONES))
def test_rfc3339_writes_what_isoformat_writes_for_any_moment(moment: datetime) -> None:
    assert _outcome(moment, rfc3339) == _outcome(moment, _by_isoformat)


def test_rfc3339_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    written = rfc3339()
    assert written.endswith("Z") and len(written) == 24
    assert before <= parse_rfc3339(written) <= datetime.now(UTC)
