"""The pool bill's arithmetic: merged intervals per endpoint, the price of a merged stretch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from state.reporting.accounting import IntervalRow, effective_end, endpoint_bills, merge_spans

T0 = datetime(2026, 11, 20, tzinfo=UTC)


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def row(endpoint: str, start: float, end: float, hourly: float = 2.0) -> IntervalRow:
    return IntervalRow(endpoint, "gh200", hourly, h(start), h(end))


def test_merge_spans_joins_overlapping_and_touching_spans() -> None:
    spans = [(h(3), h(4)), (h(0), h(2)), (h(1), h(2.5)), (h(2.5), h(2.75))]
    assert merge_spans(spans) == [(h(0), h(2.75)), (h(3), h(4))]


def test_one_endpoint_is_charged_once_for_overlapping_workers() -> None:
    bills = endpoint_bills([row("a", 0, 2), row("a", 1, 3), row("a", 5, 6), row("b", 0, 1)])
    assert [(b["endpoint"], b["hours"], b["usd"]) for b in bills] == [
        ("a", pytest.approx(4), pytest.approx(8)),
        ("b", pytest.approx(1), pytest.approx(2)),
    ]


def test_a_merged_stretch_costs_its_highest_price() -> None:
    (bill,) = endpoint_bills([row("a", 0, 2, hourly=2.0), row("a", 1, 2, hourly=3.0)])
    assert bill["hours"] == pytest.approx(2)
    assert bill["usd"] == pytest.approx(6)
    assert bill["hourly_usd"] == 3.0


def test_an_open_interval_lasts_to_now_only_while_its_heartbeat_is_fresh() -> None:
    tolerance = timedelta(minutes=3)
    now = h(10)
    assert effective_end(h(5), h(5), now, tolerance) == h(5)  # closed
    assert effective_end(None, now - timedelta(minutes=1), now, tolerance) == now  # alive
    stale = now - timedelta(minutes=10)
    assert effective_end(None, stale, now, tolerance) == stale  # died without closing
