"""Budgets as hard limits: atomic reservations against calendar-window counters.

Before a serverless call, :meth:`BudgetBook.reserve` adds the request's
worst-case cost to the ``reserved`` column of every budget that applies
(global, user, team; day and month), in one transaction, with a conditional
``UPDATE ... WHERE committed + reserved + amount <= limit``. The database's
row locks (PostgreSQL) or its single writer (SQLite) make the check and the
increment one step, so concurrent requests in one process or many can never
commit more than a budget allows. :meth:`settle` swaps the reservation for the
real cost in the same transaction that writes the request's ledger row; a
failed call settles at zero; a reservation left by a crashed process expires
after ``RESERVATION_TTL_S`` and gives its amount back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from state.budget_types import BudgetWindow, Crossing, Held, Refused
from state.ledger import (
    INSERT_USAGE,
    Alert,
    BudgetCounter,
    BudgetLimit,
    Ledger,
    Reservation,
    UsageRecord,
    usage_values,
)
from state.reporting.windows import calendar_windows
from state.settings import Settings

__all__ = ["ALERT_THRESHOLDS", "BudgetBook", "BudgetWindow", "Crossing", "Held", "Refused"]

ALERT_THRESHOLDS = (0.8, 1.0)
# Sums of floats drift by a few ulps; a nano-dollar of slack keeps an exact fit a fit.
EPSILON_USD = 1e-9
_LIMITS_CACHE_S = 5.0

_RESERVE = (
    update(BudgetCounter)
    .where(
        BudgetCounter.scope == bindparam("b_scope"),
        BudgetCounter.scope_key == bindparam("b_key"),
        BudgetCounter.period == bindparam("b_period"),
        BudgetCounter.window_key == bindparam("b_window"),
        BudgetCounter.committed_usd + BudgetCounter.reserved_usd + bindparam("amount")
        <= bindparam("limit") + EPSILON_USD,
    )
    .values(reserved_usd=BudgetCounter.reserved_usd + bindparam("amount"))
    .returning(BudgetCounter.id)
)
_CLAIM = (
    update(Reservation)
    .where(Reservation.id == bindparam("r_id"), Reservation.status == "active")
    .values(status=bindparam("new_status"), settled_usd=bindparam("actual"))
    .returning(Reservation.amount_usd, Reservation.counter_ids)
)
_CLAIM_EXPIRED = (
    update(Reservation)
    .where(Reservation.id == bindparam("r_id"), Reservation.status == "expired")
    .values(status="settled", settled_usd=bindparam("actual"))
    .returning(Reservation.counter_ids)
)
_SETTLE_COUNTER = (
    update(BudgetCounter)
    .where(BudgetCounter.id == bindparam("c_id"))
    .values(
        reserved_usd=BudgetCounter.reserved_usd - bindparam("amount"),
        committed_usd=BudgetCounter.committed_usd + bindparam("actual"),
    )
    .returning(
        BudgetCounter.committed_usd,
        BudgetCounter.scope,
        BudgetCounter.scope_key,
        BudgetCounter.period,
        BudgetCounter.window_key,
    )
)
_INSERT_RESERVATION = insert(Reservation)
_RELEASE_COUNTER = (
    update(BudgetCounter)
    .where(BudgetCounter.id == bindparam("c_id"))
    .values(reserved_usd=BudgetCounter.reserved_usd - bindparam("amount"))
)


async def _counter_values(conn: AsyncConnection, window: BudgetWindow) -> tuple[float, float]:
    """Return a window's committed and reserved spend (zero before its first reservation)."""
    row = (
        await conn.execute(
            select(BudgetCounter.committed_usd, BudgetCounter.reserved_usd).where(
                BudgetCounter.scope == window.scope,
                BudgetCounter.scope_key == window.scope_key,
                BudgetCounter.period == window.period,
                BudgetCounter.window_key == window.window_key,
            )
        )
    ).first()
    return (row[0], row[1]) if row else (0.0, 0.0)


class _Refusal(Exception):
    def __init__(self, window: BudgetWindow) -> None:
        super().__init__(window.label())
        self.window = window


class BudgetBook:
    """Reservations, settlements and limits of the serverless budgets."""

    def __init__(self, ledger: Ledger, settings: Settings, clock: Callable[[], datetime]) -> None:
        """Keep the ledger, the configured limits and the clock."""
        self.ledger = ledger
        self.settings = settings
        self.clock = clock
        self._limits: dict[tuple[str, str], tuple[float | None, float | None]] = {}
        self._limits_read = float("-inf")
        self._limits_lock = asyncio.Lock()
        dialect_insert = pg_insert if ledger.dialect == "postgresql" else sqlite_insert
        self._open_counter = (
            dialect_insert(BudgetCounter)
            .values(
                scope=bindparam("b_scope"),
                scope_key=bindparam("b_key"),
                period=bindparam("b_period"),
                window_key=bindparam("b_window"),
                committed_usd=0.0,
                reserved_usd=0.0,
            )
            .on_conflict_do_nothing(index_elements=["scope", "scope_key", "period", "window_key"])
        )
        self._raise_alert = (
            dialect_insert(Alert)
            .on_conflict_do_nothing(
                index_elements=["scope", "scope_key", "period", "window_key", "threshold"]
            )
            .returning(Alert.id)
        )

    # -- limits and windows ---------------------------------------------------

    async def _api_limits(self) -> dict[tuple[str, str], tuple[float | None, float | None]]:
        """Return the budgets set through the API, re-read at most every few seconds."""
        if time.monotonic() - self._limits_read < _LIMITS_CACHE_S:
            return self._limits
        async with self._limits_lock:
            if time.monotonic() - self._limits_read >= _LIMITS_CACHE_S:
                await self.ledger.ensure_schema()
                async with self.ledger.engine.connect() as conn:
                    rows = await conn.execute(select(BudgetLimit.__table__))
                    self._limits = {
                        (r.scope, r.scope_key): (r.daily_usd, r.monthly_usd) for r in rows
                    }
                self._limits_read = time.monotonic()
        return self._limits

    async def windows(
        self, now: datetime, user: str | None = None, team: str | None = None
    ) -> list[BudgetWindow]:
        """Return every budget that applies to a request, in lock order."""
        calendar = calendar_windows(now, self.settings.zone)
        day_key, day_reset = calendar.day_key, calendar.day_end
        month_key, month_reset = calendar.month_key, calendar.month_end
        api = await self._api_limits()
        limits: list[tuple[str, str, float | None, float | None]] = [
            (
                "global",
                "",
                self.settings.lambda_daily_budget,
                self.settings.lambda_monthly_budget,
            )
        ]
        for scope, key, configured in (
            ("user", user, self.settings.user_budgets),
            ("team", team, self.settings.team_budgets),
        ):
            if not key:
                continue
            if (scope, key) in api:
                daily, monthly = api[(scope, key)]
            elif key in configured:
                daily, monthly = configured[key].daily, configured[key].monthly
            else:
                continue
            limits.append((scope, key, daily, monthly))
        found = []
        for scope, key, daily, monthly in limits:
            if daily is not None:
                found.append(BudgetWindow(scope, key, "day", day_key, daily, day_reset))
            if monthly is not None:
                found.append(BudgetWindow(scope, key, "month", month_key, monthly, month_reset))
        # one global order of row locks: no two transactions wait on each other
        found.sort(key=lambda w: (w.scope, w.scope_key, w.period, w.window_key))
        return found

    async def set_budget(
        self, scope: str, key: str, daily_usd: float | None, monthly_usd: float | None
    ) -> None:
        """Set (or replace) a user's or a team's budget."""
        if scope not in ("user", "team") or not key:
            raise ValueError("a budget belongs to a 'user' or a 'team' with a non-empty name")
        for value in (daily_usd, monthly_usd):
            if value is not None and value < 0:
                raise ValueError("a budget cannot be negative")
        dialect_insert = pg_insert if self.ledger.dialect == "postgresql" else sqlite_insert
        values = {"daily_usd": daily_usd, "monthly_usd": monthly_usd, "updated_at": self.clock()}
        statement = (
            dialect_insert(BudgetLimit)
            .values(scope=scope, scope_key=key, **values)
            .on_conflict_do_update(index_elements=["scope", "scope_key"], set_=values)
        )
        await self.ledger.write(lambda conn: conn.execute(statement).rowcount)
        self._limits_read = float("-inf")

    # -- reserve, settle, expire ----------------------------------------------

    async def reserve(
        self,
        request_id: str,
        amount_usd: float,
        *,
        user: str | None = None,
        team: str | None = None,
    ) -> Held | Refused:
        """Reserve ``amount_usd`` against every applicable budget, all or nothing."""
        await self.ledger.ensure_schema()
        now = self.clock()
        windows = await self.windows(now, user, team)
        result = await self._try_reserve(request_id, amount_usd, windows, now)
        if isinstance(result, Refused) and await self.expire() > 0:
            # a crashed process's reservation just gave its amount back: try once more
            result = await self._try_reserve(request_id, amount_usd, windows, now)
        return result

    async def _try_reserve(
        self, request_id: str, amount: float, windows: list[BudgetWindow], now: datetime
    ) -> Held | Refused:
        expires_at = now + timedelta(seconds=self.settings.reservation_ttl_s)

        def hold(conn: Connection) -> None:
            counters: list[list[float]] = []
            for window in windows:
                params = {
                    "b_scope": window.scope,
                    "b_key": window.scope_key,
                    "b_period": window.period,
                    "b_window": window.window_key,
                    "amount": amount,
                    "limit": window.limit_usd,
                }
                counter_id = conn.execute(_RESERVE, params).scalar()
                if counter_id is None:
                    conn.execute(self._open_counter, params)
                    counter_id = conn.execute(_RESERVE, params).scalar()
                if counter_id is None:
                    raise _Refusal(window)  # rolls the whole transaction back
                counters.append([counter_id, window.limit_usd])
            conn.execute(
                _INSERT_RESERVATION,
                {
                    "id": request_id,
                    "amount_usd": amount,
                    "counter_ids": counters,
                    "status": "active",
                    "created_at": now,
                    "expires_at": expires_at,
                    "settled_usd": None,
                },
            )

        try:
            await self.ledger.write(hold)
        except _Refusal as refusal:
            return await self._refused(windows, refusal.window, amount)
        return Held(reservation_id=request_id, amount_usd=amount)

    async def _refused(
        self, windows: list[BudgetWindow], first: BudgetWindow, amount: float
    ) -> Refused:
        """Name the refusing budget that resets last: the request cannot pass before then.

        The hold stopped at the first budget in lock order that refused (a day
        sorts before a month); a month that refuses as well resets later, and
        that is the reset a caller must wait for.
        """
        refusals = []
        async with self.ledger.engine.connect() as conn:
            for window in windows:
                committed, reserved = await _counter_values(conn, window)
                over = committed + reserved + amount > window.limit_usd + EPSILON_USD
                if over or window == first:
                    refusals.append(Refused(window, committed, reserved, amount))
        return max(refusals, key=lambda refused: refused.window.resets_at)

    async def settle(
        self, reservation_id: str, actual_usd: float, usage: UsageRecord | None = None
    ) -> list[Crossing]:
        """Replace a reservation by the real cost (0 when the call failed).

        The request's ledger row, when given, is written in the same transaction,
        so the money and the record can never disagree. Returns the alert
        thresholds this settlement crossed (each at most once per window).
        """
        new_status = "settled" if actual_usd > 0 else "released"
        values = usage_values(usage) if usage is not None else None

        def settle_now(conn: Connection) -> list[Crossing]:
            claimed = conn.execute(
                _CLAIM, {"r_id": reservation_id, "new_status": new_status, "actual": actual_usd}
            ).first()
            crossings: list[Crossing] = []
            if claimed is not None:
                amount, counters = claimed
                crossings = self._settle_counters(conn, counters, amount, actual_usd)
            elif actual_usd > 0:
                # expired before it settled: its hold is gone, the spend still counts, once
                row = conn.execute(
                    _CLAIM_EXPIRED, {"r_id": reservation_id, "actual": actual_usd}
                ).first()
                if row is not None:
                    crossings = self._settle_counters(conn, row[0], 0.0, actual_usd)
            if values is not None:
                conn.execute(INSERT_USAGE, values)
            return crossings

        return await self.ledger.write(settle_now)

    def _settle_counters(
        self, conn: Connection, counters: list[Any], amount: float, actual: float
    ) -> list[Crossing]:
        crossings: list[Crossing] = []
        for counter_id, limit in sorted(counters):
            row = conn.execute(
                _SETTLE_COUNTER, {"c_id": counter_id, "amount": amount, "actual": actual}
            ).one()
            after = row.committed_usd
            before = after - actual
            for threshold in ALERT_THRESHOLDS:
                mark = threshold * limit
                if actual > 0 and before < mark <= after + EPSILON_USD:
                    alert_id = conn.execute(
                        self._raise_alert,
                        {
                            "created_at": self.clock(),
                            "scope": row.scope,
                            "scope_key": row.scope_key,
                            "period": row.period,
                            "window_key": row.window_key,
                            "threshold": threshold,
                            "spent_usd": after,
                            "limit_usd": limit,
                            "delivered": "pending",
                        },
                    ).scalar()
                    if alert_id is not None:
                        crossings.append(
                            Crossing(
                                alert_id,
                                row.scope,
                                row.scope_key,
                                row.period,
                                row.window_key,
                                threshold,
                                after,
                                limit,
                            )
                        )
        return crossings

    async def release(self, reservation_id: str) -> None:
        """Give a reservation back in full (the call failed or never happened)."""
        await self.settle(reservation_id, 0.0)

    async def expire(self) -> int:
        """Release every reservation past its expiry; return how many."""
        await self.ledger.ensure_schema()
        now = self.clock()
        stale = (
            select(Reservation.id)
            .where(Reservation.status == "active", Reservation.expires_at < now)
            .limit(500)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(Reservation)
            .where(Reservation.id.in_(stale.scalar_subquery()))
            .values(status="expired")
            .returning(Reservation.amount_usd, Reservation.counter_ids)
        )

        def release_stale(conn: Connection) -> int:
            expired: list[tuple[float, list[list[Any]]]] = [
                (row[0], row[1]) for row in conn.execute(claim)
            ]
            releases = sorted(
                (pair[0], amount) for amount, counters in expired for pair in counters
            )
            for counter_id, amount in releases:
                conn.execute(_RELEASE_COUNTER, {"c_id": counter_id, "amount": amount})
            return len(expired)

        return await self.ledger.write(release_stale)

    async def status(
        self, user: str | None = None, team: str | None = None
    ) -> list[dict[str, Any]]:
        """Return each applicable budget's limit, spend, holds, remainder and reset time."""
        await self.ledger.ensure_schema()
        windows = await self.windows(self.clock(), user, team)
        report = []
        async with self.ledger.engine.connect() as conn:
            for window in windows:
                committed, reserved = await _counter_values(conn, window)
                report.append(
                    {
                        "scope": window.scope,
                        "key": window.scope_key,
                        "period": window.period,
                        "window": window.window_key,
                        "limit_usd": window.limit_usd,
                        "spent_usd": committed,
                        "reserved_usd": reserved,
                        "remaining_usd": max(0.0, window.limit_usd - committed - reserved),
                        "used_fraction": committed / window.limit_usd if window.limit_usd else 1.0,
                        "resets_at": window.resets_at.isoformat(),
                    }
                )
        return report
