"""Clearest-date selection: candidate dates from TIME values, thinning, windows, choosing."""

from __future__ import annotations

import pytest

from satapi.errors import InvalidRequest, TooManyDates
from satapi.selection import Candidate, choose, period_windows, preview_size
from satapi.timedim import parse_window, thin, times_in_window


def ok(time: str, score: float) -> Candidate:
    return Candidate(time=time, status="ok", cloud_fraction=score, nodata_fraction=0.0, score=score)


def test_list_values_inside_the_window_sorted_with_the_nearest_outside() -> None:
    values = ["2024-06-20,2024-04-30", "2024-05-01", "2024-09-30T23:00:00Z", "2024-10-01"]
    found = times_in_window(values, "2024-05-01/2024-09-30")
    # A date-only end includes its whole day; the original spellings are kept.
    assert found.inside == ["2024-05-01", "2024-06-20", "2024-09-30T23:00:00Z"]
    assert (found.before, found.after) == ("2024-04-30", "2024-10-01")


def test_intervals_are_expanded_only_inside_the_window() -> None:
    found = times_in_window(["2000-01-01/2024-12-31/P1D"], "2024-03-01/2024-03-03")
    assert found.inside == ["2024-03-01", "2024-03-02", "2024-03-03"]
    assert (found.before, found.after) == ("2024-02-29", "2024-03-04")
    monthly = times_in_window(["2020-01-15/2024-12-15/P1M"], "2024-03-01/2024-05-31")
    assert monthly.inside == ["2024-03-15", "2024-04-15", "2024-05-15"]
    assert (monthly.before, monthly.after) == ("2024-02-15", "2024-06-15")
    hourly = times_in_window(
        ["2024-01-01T10:00:00Z/2024-01-03T10:00:00Z/PT12H"], "2024-01-02/2024-01-02"
    )
    assert hourly.inside == ["2024-01-02T10:00:00Z", "2024-01-02T22:00:00Z"]


def test_a_window_between_or_beyond_intervals_has_only_nearest_dates() -> None:
    before_only = times_in_window(["2024-01-01/2024-02-01/P10D"], "2024-03-01/2024-03-31")
    assert before_only.inside == [] and before_only.before == "2024-01-31"
    assert before_only.after is None
    after_only = times_in_window(["2024-05-01/2024-12-31/P10D"], "2024-03-01/2024-03-31")
    assert after_only.inside == [] and (after_only.before, after_only.after) == (None, "2024-05-01")


def test_an_interval_without_a_period_is_sampled_daily_and_huge_ones_are_refused() -> None:
    assert times_in_window(["2024-01-01/2024-12-31"], "2024-02-28/2024-03-01").inside == [
        "2024-02-28",
        "2024-02-29",
        "2024-03-01",
    ]
    with pytest.raises(TooManyDates):
        times_in_window(["2000-01-01T00:00:00Z/2024-01-01T00:00:00Z/PT1M"], "2000-01-01/2023-12-31")


@pytest.mark.parametrize("window", ["2024-05-01", "2024-09-30/2024-05-01", "a/b", "1/2/3"])
def test_bad_windows_are_refused(window: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_window(window)


def test_thinning_keeps_first_and_last_evenly() -> None:
    thirteen = [f"d{i:02d}" for i in range(13)]
    assert thin(thirteen, 4) == ["d00", "d04", "d08", "d12"]
    twelve = thin(thirteen, 12)
    assert len(set(twelve)) == 12 and twelve[0] == "d00" and twelve[-1] == "d12"
    assert thin(thirteen, 13) == thirteen
    assert thin(thirteen, 1) == ["d12"]  # one candidate: the most recent


def test_period_windows_cover_start_to_end() -> None:
    assert period_windows("2024-04-01", "2024-06-15", "P1M", limit=24) == [
        "2024-04-01/2024-04-30",
        "2024-05-01/2024-05-31",
        "2024-06-01/2024-06-15",
    ]
    assert period_windows("2024-01-01", "2024-01-20", "P7D", limit=24) == [
        "2024-01-01/2024-01-07",
        "2024-01-08/2024-01-14",
        "2024-01-15/2024-01-20",
    ]
    with pytest.raises(TooManyDates):
        period_windows("2024-01-01", "2024-12-31", "P1D", limit=24)


def test_lowest_score_wins_and_ties_go_to_the_latest_date() -> None:
    failed = Candidate(time="2024-07-01", status="failed", code="wms_exception")
    assert choose([ok("2024-05-01", 0.3), ok("2024-06-01", 0.1), failed]) == ok("2024-06-01", 0.1)
    tie = [ok("2024-05-01", 0.2), ok("2024-06-01T10:00:00Z", 0.2), ok("2024-06-01", 0.2)]
    assert choose(tie) == ok("2024-06-01T10:00:00Z", 0.2)
    assert choose([failed]) is None


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((400, 200), (256, 128)),
        ((200, 400), (128, 256)),
        ((100, 50), (100, 50)),
        ((4096, 3), (256, 1)),
    ],
)
def test_previews_have_the_long_edge_given(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert preview_size(*size, 256) == expected
