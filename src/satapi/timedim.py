"""Time-series dates: expanding start/end/step, and checking them against a layer's TIME values."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import isodate

from satapi.errors import InvalidRequest, TooManyDates

MAX_INTERVAL_STEPS = 100_000


def parse_when(value: str) -> dt.date | dt.datetime:
    """An ISO date or date-time."""
    try:
        parsed: dt.date | dt.datetime = (
            isodate.parse_datetime(value) if "T" in value else isodate.parse_date(value)
        )
    except (ValueError, isodate.ISO8601Error):
        raise InvalidRequest(f"{value!r} is not an ISO 8601 date or date-time.") from None
    return parsed


def parse_step(step: str) -> dt.timedelta | isodate.Duration:
    """An ISO 8601 duration such as P1D, P7D, P1M or P1Y; it must be positive."""
    try:
        duration = isodate.parse_duration(step)
    except (ValueError, isodate.ISO8601Error):
        raise InvalidRequest(f"step {step!r} is not an ISO 8601 duration (e.g. P1M).") from None
    probe = dt.datetime(2000, 1, 1)
    if probe + duration <= probe:
        raise InvalidRequest("step must be a positive duration.")
    return duration


def _fmt(value: dt.date | dt.datetime) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value.isoformat()


def expand_range(start: str, end: str, step: str, *, limit: int) -> list[str]:
    """start, start + step, start + 2 step, ... up to end (inclusive); at most `limit` dates."""
    first, last = parse_when(start), parse_when(end)
    if type(first) is not type(last):
        raise InvalidRequest("start and end must both be dates or both be date-times.")
    if last < first:
        raise InvalidRequest("end must not be before start.")
    duration = parse_step(step)
    days_part = duration.tdelta if isinstance(duration, isodate.Duration) else duration
    if not isinstance(first, dt.datetime) and days_part % dt.timedelta(days=1):
        # A date plus hours stays on the same date: PT12H would list every date twice.
        raise InvalidRequest(
            "With dates (no time of day) the step must be whole days, weeks, months or years; "
            "give start and end as date-times for a step with hours, minutes or seconds."
        )
    dates: list[str] = []
    k = 0
    while True:
        # start + k*step (not repeated addition) so month ends don't drift (Jan 31 -> Feb 29 -> ...)
        current = first + duration * k
        if current > last:
            break
        if len(dates) == limit:
            raise TooManyDates(
                f"start/end/step give more than {limit} dates; narrow the range or widen the step."
            )
        dates.append(_fmt(current))
        k += 1
    return dates


def check_count(times: Sequence[str], limit: int) -> None:
    """Refuse more than `limit` dates."""
    if len(times) > limit:
        raise TooManyDates(f"A time series takes at most {limit} dates, not {len(times)}.")
    if not times:
        raise InvalidRequest("A time series needs at least one date.")


def _same_instant(requested: dt.date | dt.datetime, offered: dt.date | dt.datetime) -> bool:
    if isinstance(requested, dt.datetime) and isinstance(offered, dt.datetime):
        return requested == offered
    req_day = requested.date() if isinstance(requested, dt.datetime) else requested
    off_day = offered.date() if isinstance(offered, dt.datetime) else offered
    return req_day == off_day


def _in_interval(requested: dt.date | dt.datetime, spec: str) -> bool:
    parts = spec.split("/")
    try:
        start, end = parse_when(parts[0]), parse_when(parts[1])
    except InvalidRequest:
        return False
    day = requested.date() if isinstance(requested, dt.datetime) else requested
    lo = start.date() if isinstance(start, dt.datetime) else start
    hi = end.date() if isinstance(end, dt.datetime) else end
    if not lo <= day <= hi:
        return False
    if len(parts) < 3 or not parts[2]:
        return True
    try:
        duration = parse_step(parts[2])
    except InvalidRequest:
        return True
    for k in range(MAX_INTERVAL_STEPS):
        current = start + duration * k
        if _same_instant(requested, current):
            return True
        if current > end:
            return False
    return True  # too many steps to check; do not refuse what may exist


def time_available(values: Sequence[str], requested: str) -> bool:
    """True when a layer's TIME values (a list and/or start/end/period intervals) offer `requested`.

    A date-only request matches any time on that day.
    """
    want = parse_when(requested)
    for raw in values:
        for item in raw.split(","):
            item = item.strip()
            if not item:
                continue
            if "/" in item:
                if _in_interval(want, item):
                    return True
                continue
            try:
                offered = parse_when(item)
            except InvalidRequest:
                continue
            if _same_instant(want, offered):
                return True
    return False
