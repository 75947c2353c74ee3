"""Dollars for people: the one formatting of amounts in the reports' texts."""

from __future__ import annotations


def usd(amount: float) -> str:
    """Format dollars for people: cents from a dollar up, more decimals below."""
    if abs(amount) >= 1:
        return f"${amount:,.2f}"
    return f"${amount:.6f}" if amount == 0 or abs(amount) >= 1e-4 else f"${amount:.8f}"
