"""The dashboard's figures: daily spend against the budgets, split, latency, savings, alerts.

:func:`dashboard_data` gathers everything the page draws for the last ``days``
calendar days in ``BUDGET_TIMEZONE``: the usage report of the range (totals,
per-backend figures, savings), the daily series of spend by backend and the
month-to-date serverless spend, the budgets' status, the newest alerts, and
the last capacity plan of the ledger's own trace (``hybrid-router simulate
--from-ledger``).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from backends.catalog import Catalog
from state.ledger import Alert, Ledger, UsageRecord
from state.reporting.tenants import Tenant
from state.reporting.trace import latest_plan
from state.reporting.usage import summarize, usage_report
from state.reporting.windows import as_utc, last_days, local_date
from state.schemas import BACKENDS
from state.settings import Settings

if TYPE_CHECKING:
    from state.budgets import BudgetBook

DEFAULT_DAYS = 14
MAX_DAYS = 366
RECENT_ALERTS = 10


async def daily_series(
    ledger: Ledger,
    settings: Settings,
    end: datetime,
    days: list[date],
    tenant: Tenant | None = None,
) -> dict[str, Any]:
    """Return per-day spend by backend, requests and month-to-date serverless spend.

    Args:
        ledger: The ledger.
        settings: The settings (``BUDGET_TIMEZONE``).
        end: The end of the range (now).
        days: The local days to report, oldest first.
        tenant: Whose rows (None: everyone's).

    Returns:
        ``{days, serverless_usd, gpu_usd, requests, month_to_date_serverless_usd}``,
        one value per day.
    """
    zone = settings.zone
    # from the 1st of the first day's month, for the month-to-date line
    since = datetime.combine(days[0].replace(day=1), time.min, tzinfo=zone)
    query = select(
        UsageRecord.created_at, UsageRecord.backend, UsageRecord.cost_usd, UsageRecord.status
    ).where(
        UsageRecord.created_at >= since.astimezone(UTC),
        UsageRecord.created_at < end.astimezone(UTC),
    )
    if tenant is not None:
        query = query.where(tenant.usage_filter())
    async with ledger.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    spend: dict[tuple[date, str], float] = defaultdict(float)
    requests: dict[date, int] = defaultdict(int)
    for row in rows:
        day = local_date(row.created_at, zone)
        requests[day] += 1
        if row.backend in BACKENDS:
            spend[(day, row.backend)] += row.cost_usd
    month_to_date: dict[date, float] = {}
    running, day, month = 0.0, since.date(), None
    while day <= days[-1]:
        if (day.year, day.month) != month:
            running, month = 0.0, (day.year, day.month)
        running += spend[(day, "serverless")]
        month_to_date[day] = running
        day += timedelta(days=1)
    return {
        "days": [d.isoformat() for d in days],
        "serverless_usd": [spend[(d, "serverless")] for d in days],
        "gpu_usd": [spend[(d, "gpu")] for d in days],
        "requests": [requests[d] for d in days],
        "month_to_date_serverless_usd": [month_to_date[d] for d in days],
    }


async def recent_alerts(
    ledger: Ledger, limit: int = RECENT_ALERTS, tenant: Tenant | None = None
) -> list[dict[str, Any]]:
    """Return the newest budget alerts, newest first (a tenant's: global, its own)."""
    query = select(Alert.__table__).order_by(Alert.created_at.desc(), Alert.id.desc()).limit(limit)
    if tenant is not None:
        query = query.where(tenant.alert_filter())
    async with ledger.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        {
            "id": r.id,
            "created_at": as_utc(r.created_at).isoformat(),
            "scope": r.scope,
            "key": r.scope_key,
            "period": r.period,
            "window": r.window_key,
            "threshold": r.threshold,
            "spent_usd": r.spent_usd,
            "limit_usd": r.limit_usd,
            "delivered": r.delivered,
        }
        for r in rows
    ]


def _global_limit(status: list[dict[str, Any]], period: str, default: float) -> float:
    for window in status:
        if window["scope"] == "global" and window["period"] == period:
            return float(window["limit_usd"])
    return default


async def dashboard_data(
    ledger: Ledger,
    budgets: BudgetBook,
    settings: Settings,
    catalog: Catalog,
    now: datetime,
    days: int = DEFAULT_DAYS,
    *,
    emulated: bool = False,
    tenant: Tenant | None = None,
) -> dict[str, Any]:
    """Gather everything the dashboard draws for the last ``days`` calendar days.

    Days are calendar days in ``BUDGET_TIMEZONE``; the range runs from the first
    day's midnight to now, and the savings are the report's for that range.

    Args:
        ledger: The ledger.
        budgets: The budget book (the budgets' status).
        settings: The settings (time zone, configured budgets, GPU pool's cost).
        catalog: The model catalog.
        now: The current time.
        days: How many days, today included (1 to 366).
        emulated: Whether the backends are the local emulators (shown on the page).
        tenant: Whose figures: one user's and team's rows, alerts and budgets (None:
            everyone's rows and alerts, and the global budgets).

    Returns:
        A JSON-ready mapping with the keys ``generated_at``, ``range``,
        ``emulated``, ``spend`` (the daily series and the budget lines),
        ``split`` and ``latency`` (per backend), ``totals``, ``savings``,
        ``budgets``, ``alerts`` and ``capacity_plan`` (the last plan of the
        ledger's own trace, :func:`state.reporting.trace.latest_plan`, or None).

    Raises:
        ValueError: ``days`` is out of range.
    """
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be between 1 and {MAX_DAYS}, got {days}")
    start, end, day_list = last_days(now, settings.zone, days)
    report = await usage_report(ledger, settings, catalog, start, end, "backend", tenant)
    series = await daily_series(ledger, settings, end, day_list, tenant)
    status = await (budgets.status(tenant.user, tenant.team) if tenant else budgets.status())
    alerts = await recent_alerts(ledger, tenant=tenant)
    # the plan is of the whole ledger's traffic: the operator's, not a tenant's
    plan = None if tenant is not None else await latest_plan(ledger)
    groups = report["groups"]
    per_backend = {name: groups.get(name) or summarize([]) for name in BACKENDS}
    unanswered = groups.get("(none)") or summarize([])
    return {
        "generated_at": end.isoformat(),
        "range": {
            "days": days,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "timezone": settings.budget_timezone,
        },
        "emulated": emulated,
        "spend": {
            **series,
            "daily_budget_usd": _global_limit(status, "day", settings.lambda_daily_budget),
            "monthly_budget_usd": _global_limit(status, "month", settings.lambda_monthly_budget),
        },
        "split": {
            **{
                name: {"requests": figures["requests"], "cost_usd": figures["cost_usd"]}
                for name, figures in per_backend.items()
            },
            "unanswered": {"requests": unanswered["requests"]},
        },
        "latency": {
            name: {
                "requests": figures["requests"],
                "p50_ms": figures["latency_ms_p50"],
                "p95_ms": figures["latency_ms_p95"],
                "mean_ms": figures["latency_ms_mean"],
            }
            for name, figures in per_backend.items()
        },
        "totals": report["totals"],
        "savings": report["savings"],
        "budgets": status,
        "alerts": alerts,
        "capacity_plan": plan,
    }
