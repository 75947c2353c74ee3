"""Unit tests of how money is printed: small amounts keep their digits."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from state.alerts import alert_text
from state.budget_types import BudgetWindow, Crossing, Refused
from state.reporting.money import usd


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (0.0, "$0.00"),
        (0.001, "$0.001"),
        (0.0012345, "$0.00123"),
        (0.000065, "$0.000065"),
        (1e-9, "$0.000000001"),
        (0.1, "$0.10"),
        (0.5, "$0.50"),
        (0.123456, "$0.123"),
        (0.015, "$0.015"),
        (0.9996, "$1.00"),
        (1.0, "$1.00"),
        (12.345, "$12.35"),
        (1234.5, "$1,234.50"),
        (-0.001, "-$0.001"),
        (-12.3, "-$12.30"),
    ],
)
def test_usd_keeps_significant_digits_below_a_dollar_and_cents_above(amount, text):
    assert usd(amount) == text


def test_a_tenth_of_a_cent_budget_prints_as_such_in_refusals_and_alerts():
    resets = datetime(2026, 12, 1, tzinfo=UTC)
    window = BudgetWindow("user", "alice", "day", "2026-11-30", 0.001, resets)
    assert window.label() == "daily budget of user alice ($0.001)"
    refused = Refused(window, committed_usd=0.0009, reserved_usd=0.0, amount_usd=0.0002)
    assert "spent $0.0009" in refused.reason()
    assert "up to $0.0002" in refused.reason()
    assert window.seconds_to_reset(datetime(2026, 11, 30, 23, 59, 30, tzinfo=UTC)) == 30
    assert window.seconds_to_reset(resets) == 1  # never 0: a client would retry at once
    crossing = Crossing(1, "user", "alice", "day", "2026-11-30", 0.8, 0.0008, 0.001)
    assert "($0.0008 of $0.001," in alert_text(crossing)
