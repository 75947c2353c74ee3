"""Usage figures from the ledger: the same answers on SQLite and PostgreSQL.

Rows of a time range are read with one query and aggregated here, so both
databases give identical answers (percentiles are nearest-rank). Savings are
the range's money as :func:`state.reporting.accounting.cost_accounting`
computes it for every surface: the serverless spend plus the GPU pool's bill
for the hours the ledger recorded the pool (idle time in them included), and
the all-GPU and all-serverless baselines, each with how it was computed.

:func:`usage_report` is the report of any range; :func:`usage_of_last_days`
(``GET /usage``), :func:`usage_stats` (the MCP tool ``get_usage_stats``) and
:func:`routing_stats` (``GET /stats``) are the ranges and figures those show.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import case, func, select
from typing_extensions import TypedDict

from backends.catalog import Catalog
from state.ledger import ROW_CANCELLED, ROW_OK, ROW_REFUSED, Ledger, UsageRecord
from state.reporting.accounting import cost_accounting, pool_intervals
from state.reporting.tenants import Tenant
from state.reporting.windows import (
    calendar_windows,
    last_days,
    local_date,
    trailing_days,
)
from state.schemas import BACKENDS
from state.settings import Settings

if TYPE_CHECKING:
    from state.budgets import BudgetBook

GroupBy = Literal["day", "model", "backend", "provider", "user"]
GROUPINGS: tuple[GroupBy, ...] = ("day", "model", "backend", "provider", "user")

_COLUMNS = (
    UsageRecord.created_at,
    UsageRecord.user,
    UsageRecord.backend,
    UsageRecord.provider,
    UsageRecord.model,
    UsageRecord.prompt_tokens,
    UsageRecord.completion_tokens,
    UsageRecord.cost_usd,
    UsageRecord.gpu_seconds,
    UsageRecord.latency_ms,
    UsageRecord.status,
    UsageRecord.fallbacks,
    UsageRecord.budget_refused,
)


class UsageStats(TypedDict):
    """The usage report over a range plus the budgets (the MCP tool ``get_usage_stats``)."""

    days: int
    start: str
    end: str
    group_by: GroupBy
    totals: dict[str, Any]
    groups: dict[str, dict[str, Any]]
    savings: dict[str, Any]
    budgets: list[dict[str, Any]]


def nearest_rank(values: list[float], q: float) -> float:
    """Return the ``q`` percentile (0..1) of ``values`` by the nearest-rank method."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarize(rows: Iterable[Any]) -> dict[str, Any]:
    """Aggregate rows: counts, tokens, cost, latency percentiles, error and fallback rates.

    ``refused`` counts the requests a budget refused (402s); ``budget_refusals``
    every request whose budget hold was refused: those, and the ones the budget
    sent to the GPU pool or to a cheaper model. ``cancelled`` counts the requests
    whose caller left mid-answer (billed for the tokens so far). Neither is a
    failure: ``failed`` and ``error_rate`` count the requests that got no answer.
    """
    rows = list(rows)
    latencies = [r.latency_ms for r in rows]
    requests = len(rows)
    refused = sum(1 for r in rows if r.status == ROW_REFUSED)
    cancelled = sum(1 for r in rows if r.status == ROW_CANCELLED)
    failed = requests - refused - cancelled - sum(1 for r in rows if r.status == ROW_OK)
    return {
        "requests": requests,
        "failed": failed,
        "refused": refused,
        "cancelled": cancelled,
        "budget_refusals": sum(1 for r in rows if r.budget_refused),
        "prompt_tokens": sum(r.prompt_tokens for r in rows),
        "completion_tokens": sum(r.completion_tokens for r in rows),
        "total_tokens": sum(r.prompt_tokens + r.completion_tokens for r in rows),
        "cost_usd": sum(r.cost_usd for r in rows),
        "latency_ms_mean": statistics.fmean(latencies) if latencies else 0.0,
        "latency_ms_p50": nearest_rank(latencies, 0.50),
        "latency_ms_p95": nearest_rank(latencies, 0.95),
        "error_rate": failed / requests if requests else 0.0,
        "fallback_rate": sum(1 for r in rows if r.fallbacks) / requests if requests else 0.0,
    }


def refusals_text(figures: dict[str, Any]) -> str:
    """Say how many requests budgets refused, for people (chat and MCP answers).

    Args:
        figures: A :func:`summarize` result (or ``/stats``' period).

    Returns:
        E.g. "3 budget refusals (1 refused with a 402, 2 sent to the GPU pool or a
        cheaper model)".
    """
    total, refused = figures["budget_refusals"], figures["refused"]
    plural = "" if total == 1 else "s"
    return (
        f"{total} budget refusal{plural} ({refused} refused with a 402, "
        f"{total - refused} sent to the GPU pool or a cheaper model)"
    )


async def usage_report(
    ledger: Ledger,
    settings: Settings,
    catalog: Catalog,
    start: datetime,
    end: datetime,
    group_by: GroupBy = "day",
    tenant: Tenant | None = None,
) -> dict[str, Any]:
    """Return totals, per-group figures and savings for ``[start, end)``.

    ``tenant`` limits the rows to one user's and team's (None: every row).

    Raises:
        ValueError: ``group_by`` is unknown or the range is empty.
    """
    if group_by not in GROUPINGS:
        raise ValueError(f"group_by is {group_by!r}; use one of {', '.join(GROUPINGS)}")
    if end <= start:
        raise ValueError("the range is empty: end must come after start")
    await ledger.ensure_schema()
    query = select(*_COLUMNS).where(
        UsageRecord.created_at >= start.astimezone(UTC),
        UsageRecord.created_at < end.astimezone(UTC),
    )
    if tenant is not None:
        query = query.where(tenant.usage_filter())
    async with ledger.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    # the pool is shared: its bill is the operator's, not one tenant's
    intervals = [] if tenant is not None else await pool_intervals(ledger, settings, start, end)
    zone = settings.zone
    groups: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        if group_by == "day":
            key = local_date(r.created_at, zone).isoformat()
        elif group_by == "provider":
            # the serverless provider that served it; the pool's rows under "gpu"
            key = r.provider or (r.backend if r.backend == "gpu" else "(none)")
        else:
            key = getattr(r, group_by) or "(none)"
        groups[key].append(r)
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "group_by": group_by,
        "totals": summarize(rows),
        "groups": {key: summarize(group) for key, group in sorted(groups.items())},
        "savings": cost_accounting(
            rows, intervals, start, end, settings, catalog, tenant_view=tenant is not None
        ),
    }


async def usage_of_last_days(
    ledger: Ledger,
    settings: Settings,
    catalog: Catalog,
    now: datetime,
    days: int,
    group_by: GroupBy = "day",
    tenant: Tenant | None = None,
) -> dict[str, Any]:
    """Return the usage report of today and the ``days - 1`` calendar days before (``/usage``).

    Args:
        ledger: The ledger.
        settings: The settings (``BUDGET_TIMEZONE``, the GPU pool's cost).
        catalog: The model catalog (the all-serverless baseline's prices).
        now: The current time.
        days: Calendar days in ``BUDGET_TIMEZONE``, today included.
        group_by: How to group the figures.
        tenant: Whose rows (None: everyone's).

    Returns:
        ``{days, start, end, group_by, totals, groups, savings}``.
    """
    start, end, _ = last_days(now, settings.zone, days)
    report = await usage_report(ledger, settings, catalog, start, end, group_by, tenant)
    return {"days": days, **report}


async def usage_stats(
    ledger: Ledger,
    budgets: BudgetBook,
    settings: Settings,
    catalog: Catalog,
    now: datetime,
    days: int,
    group_by: GroupBy = "day",
) -> UsageStats:
    """Return the usage report of the last ``days`` times 24 hours, with every global budget.

    Args:
        ledger: The ledger.
        budgets: The budget book (the budgets' status).
        settings: The settings.
        catalog: The model catalog.
        now: The current time (the range's end).
        days: How many days back from ``now``.
        group_by: How to group the figures.

    Returns:
        The report's range, totals, groups and savings, and the budgets' status.
    """
    start, end = trailing_days(now, days)
    report = await usage_report(ledger, settings, catalog, start, end, group_by)
    return {
        "days": days,
        "start": report["start"],
        "end": report["end"],
        "group_by": group_by,
        "totals": report["totals"],
        "groups": report["groups"],
        "savings": report["savings"],
        "budgets": await budgets.status(),
    }


def _routing_of(rows: list[Any], start: datetime, end: datetime) -> dict[str, Any]:
    """Fold ``(backend, status, count, fallbacks, cost, refusals)`` groups: one period."""
    total = sum(int(r[2]) for r in rows)
    by_backend: dict[str, dict[str, Any]] = {
        b: {"requests": 0, "share": 0.0, "cost_usd": 0.0} for b in BACKENDS
    }
    by_status: dict[str, int] = {}
    fallbacks = 0
    refusals = 0
    cost = 0.0
    for backend, status, count, fell_back, cost_usd, refused in rows:
        entry = by_backend.setdefault(
            backend or "none", {"requests": 0, "share": 0.0, "cost_usd": 0.0}
        )
        entry["requests"] += int(count)
        entry["cost_usd"] += float(cost_usd or 0.0)
        by_status[status] = by_status.get(status, 0) + int(count)
        fallbacks += int(fell_back or 0)
        refusals += int(refused or 0)
        cost += float(cost_usd or 0.0)
    for entry in by_backend.values():
        entry["share"] = entry["requests"] / total if total else 0.0
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "requests": total,
        "by_backend": by_backend,
        "by_status": by_status,
        "fallbacks": fallbacks,
        "fallback_rate": fallbacks / total if total else 0.0,
        "refused": by_status.get(ROW_REFUSED, 0),
        "budget_refusals": refusals,
        "cost_usd": cost,
    }


async def routing_stats(
    ledger: Ledger,
    settings: Settings,
    catalog: Catalog,
    now: datetime,
    tenant: Tenant | None = None,
) -> dict[str, Any]:
    """Return today's and this month's routing split, statuses, fallbacks, cost and savings.

    The figures of ``GET /stats``; ``savings`` is each period's
    :func:`state.reporting.accounting.cost_accounting` (spend, the GPU pool's
    bill for its recorded hours, idle share, baselines), as every report shows it.

    A request counts as a fallback when it tried more than one backend call;
    ``refused`` counts the 402s (status ``refused``), ``budget_refusals`` every
    request whose budget hold was refused (those, and the ones sent elsewhere).
    Days and months are calendar windows in ``BUDGET_TIMEZONE``, the budgets'.

    Args:
        ledger: The ledger.
        settings: The settings (``BUDGET_TIMEZONE``).
        catalog: The model catalog (the all-serverless baseline's prices).
        now: The current time.
        tenant: Whose rows (None: everyone's).

    Returns:
        ``{timezone, generated_at, today: PERIOD, month: PERIOD}``, where PERIOD
        is ``{start, end, requests, by_backend, by_status, fallbacks,
        fallback_rate, refused, budget_refusals, cost_usd, savings}``.
    """
    calendar = calendar_windows(now, settings.zone)
    periods = {
        "today": (calendar.day_start, calendar.day_end),
        "month": (calendar.month_start, calendar.month_end),
    }
    await ledger.ensure_schema()
    figures: dict[str, Any] = {}
    async with ledger.engine.connect() as conn:
        for name, (start, end) in periods.items():
            query = (
                select(
                    UsageRecord.backend,
                    UsageRecord.status,
                    func.count(),
                    func.sum(case((UsageRecord.fallbacks > 0, 1), else_=0)),
                    func.sum(UsageRecord.cost_usd),
                    func.sum(case((UsageRecord.budget_refused, 1), else_=0)),
                )
                .where(
                    UsageRecord.created_at >= start.astimezone(UTC),
                    UsageRecord.created_at < end.astimezone(UTC),
                )
                .group_by(UsageRecord.backend, UsageRecord.status)
            )
            if tenant is not None:
                query = query.where(tenant.usage_filter())
            rows = list((await conn.execute(query)).all())
            figures[name] = _routing_of(rows, start, end)
    for name, (start, _end) in periods.items():
        # a period that has not ended yet is reported up to now
        until = max(now, start + timedelta(microseconds=1))
        report = await usage_report(ledger, settings, catalog, start, until, "backend", tenant)
        figures[name]["savings"] = report["savings"]
    return {"timezone": settings.budget_timezone, "generated_at": now.isoformat(), **figures}
