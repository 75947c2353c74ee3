"""What the budget book answers: a budget window, a hold, a refusal, a crossed threshold."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


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
        return f"{what} budget{owner} (${self.limit_usd:.2f})"


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
            f"the {self.window.label()} would be exceeded (spent ${self.committed_usd:.4f}, "
            f"held by requests in flight ${self.reserved_usd:.4f}, this request up to "
            f"${self.amount_usd:.6f})"
        )


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
