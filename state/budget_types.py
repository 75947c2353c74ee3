"""What the budget book answers: a budget window, a hold, a refusal, a crossed threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from state.reporting.money import usd


@dataclass(frozen=True, slots=True)
class BudgetWindow:
    """One budget in its current calendar window."""

    scope: str  # global | user | team
    scope_key: str
    period: str  # day | month
    window_key: str
    limit_usd: float
    resets_at: datetime

    def label(self) -> str:
        """Name the budget for people, e.g. "daily budget of user alice"."""
        what = "daily" if self.period == "day" else "monthly"
        owner = "" if self.scope == "global" else f" of {self.scope} {self.scope_key}"
        return f"{what} budget{owner} ({usd(self.limit_usd)})"

    def seconds_to_reset(self, now: datetime) -> int:
        """Return the whole seconds from ``now`` until the window resets (at least 1)."""
        return max(1, math.ceil((self.resets_at - now).total_seconds()))


@dataclass(frozen=True, slots=True)
class Held:
    """A reservation the request holds."""

    reservation_id: str
    amount_usd: float


@dataclass(frozen=True, slots=True)
class Refused:
    """A reservation that would break a budget."""

    window: BudgetWindow
    committed_usd: float
    reserved_usd: float
    amount_usd: float

    @property
    def remaining_usd(self) -> float:
        """Return what the budget still allows."""
        return max(0.0, self.window.limit_usd - self.committed_usd - self.reserved_usd)

    def reason(self) -> str:
        """Explain the refusal in one sentence."""
        return (
            f"the {self.window.label()} would be exceeded (spent {usd(self.committed_usd)}, "
            f"held by requests in flight {usd(self.reserved_usd)}, this request up to "
            f"{usd(self.amount_usd)})"
        )

    def details(self) -> dict[str, Any]:
        """Return the refusing budget as plain values (the 402 body's ``budget``)."""
        window = self.window
        return {
            "scope": window.scope,
            "key": window.scope_key or None,
            "period": window.period,
            "window": window.window_key,
            "limit_usd": window.limit_usd,
            "spent_usd": self.committed_usd,
            "reserved_usd": self.reserved_usd,
            "remaining_usd": self.remaining_usd,
            "request_usd": self.amount_usd,
            "resets_at": window.resets_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Crossing:
    """A budget whose committed spend just crossed an alert threshold."""

    alert_id: int
    scope: str
    scope_key: str
    period: str
    window_key: str
    threshold: float
    spent_usd: float
    limit_usd: float
