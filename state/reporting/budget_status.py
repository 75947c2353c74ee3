"""The status of every budget there is: the global one, each configured one, each set by API.

``BudgetBook.status(user, team)`` answers for one caller; the ``/metrics``
budget gauges show every budget at once, so :func:`every_budget_status` asks
it for every user and team that has a budget, in the settings
(``USER_BUDGETS``, ``TEAM_BUDGETS``) or in the ledger (``PUT /budget/...``).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from state.ledger import BudgetLimit, Ledger
from state.settings import Settings

if TYPE_CHECKING:
    from state.budgets import BudgetBook


async def budget_owners(ledger: Ledger, settings: Settings) -> tuple[list[str], list[str]]:
    """Return the users and the teams that have a budget, configured or set through the API."""
    await ledger.ensure_schema()
    async with ledger.engine.connect() as conn:
        rows = (await conn.execute(select(BudgetLimit.scope, BudgetLimit.scope_key))).all()
    users = sorted({*settings.user_budgets, *(k for s, k in rows if s == "user")})
    teams = sorted({*settings.team_budgets, *(k for s, k in rows if s == "team")})
    return users, teams


async def every_budget_status(
    budgets: BudgetBook, ledger: Ledger, settings: Settings
) -> list[dict[str, Any]]:
    """Return the current window of every budget, each once.

    Args:
        budgets: The budget book.
        ledger: The ledger (for the budgets set through the API).
        settings: The settings (for the configured budgets).

    Returns:
        ``BudgetBook.status`` entries (``scope``, ``key``, ``period``, ``window``,
        ``limit_usd``, ``spent_usd``, ``reserved_usd``, ``remaining_usd``,
        ``used_fraction``, ``resets_at``), one per scope, key and period.
    """
    users, teams = await budget_owners(ledger, settings)
    pairs: list[tuple[str | None, str | None]] = list(itertools.zip_longest(users, teams))
    windows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for user, team in pairs or [(None, None)]:
        for found in await budgets.status(user, team):
            windows[(found["scope"], found["key"], found["period"])] = found
    return list(windows.values())
