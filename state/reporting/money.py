"""Dollars for people: the one formatting of amounts in texts, errors and alerts."""

from __future__ import annotations

import math

SIGNIFICANT_DIGITS = 3
"""Digits kept below a dollar, so $0.001 never prints as $0.00."""


def usd(amount: float) -> str:
    """Format dollars for people: cents from a dollar up, significant digits below.

    ``usd(1234.5)`` is ``$1,234.50``, ``usd(0.5)`` ``$0.50``, ``usd(0.001)``
    ``$0.001`` and ``usd(0.000123456)`` ``$0.000123``: never fewer than two
    decimals, and below a dollar three significant digits, trailing zeros past
    the cents dropped.

    Args:
        amount: The amount in USD.

    Returns:
        The amount with a dollar sign (and a minus sign when negative).
    """
    magnitude = abs(amount)
    if magnitude >= 1 or magnitude == 0 or not math.isfinite(magnitude):
        return f"-${magnitude:,.2f}" if amount < 0 else f"${magnitude:,.2f}"
    decimals = max(2, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(magnitude)))
    whole, _, cents = f"{magnitude:.{decimals}f}".partition(".")
    cents = cents.rstrip("0").ljust(2, "0")
    return f"{'-' if amount < 0 else ''}${whole}.{cents}"
