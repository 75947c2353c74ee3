"""Cost advice from the ledger: figures from two usage reports, then the suggestions.

:func:`advise` turns a :func:`state.reporting.usage.usage_report` grouped by
backend, one of the same range grouped by model, and the budgets' status into
suggestions (:mod:`state.reporting.suggestions`), each derived from (and
carrying) the numbers it used; :func:`cost_advice` does it for the last days
(the MCP tool ``optimize_costs``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from typing_extensions import TypedDict

from backends.catalog import Catalog
from state.ledger import Ledger
from state.reporting.money import usd
from state.reporting.suggestions import (
    MONTH_HOURS,
    Suggestion,
    budget_pressure,
    drop_pool,
    gpu_first,
    grow_pool,
    per_month,
    reliability,
    shrink_pool,
)
from state.reporting.usage import usage_report
from state.reporting.windows import trailing_days
from state.settings import Settings

if TYPE_CHECKING:
    from state.budgets import BudgetBook


class Advice(TypedDict):
    """What ``optimize_costs`` answers."""

    days: int
    start: str
    end: str
    figures: dict[str, Any]
    suggestions: list[Suggestion]
    best: str | None
    summary: str


def figures_of(
    by_backend: dict[str, Any], by_model: dict[str, Any], settings: Settings, catalog: Catalog
) -> dict[str, Any]:
    """Return the figures advice is computed from, out of two reports of the same range.

    Args:
        by_backend: ``usage_report`` grouped by backend.
        by_model: ``usage_report`` of the same range grouped by model.
        settings: The router's settings (GPU pool size and price, serverless ratio).
        catalog: The model catalog (which models the GPU pool serves).

    Returns:
        Flat figures: requests, shares, spend, the pool's bill, use and idle
        cost, both baselines, and the serverless spend the GPU pool could take.
    """
    totals = by_backend["totals"]
    savings = by_backend["savings"]
    groups = by_backend["groups"]
    hours = savings["hours"]
    answered = totals["requests"] - totals["failed"]
    serverless_requests = groups.get("serverless", {}).get("requests", 0)
    gpu_requests = groups.get("gpu", {}).get("requests", 0)
    bill = savings["gpu_bill_usd"]
    allocated = savings["gpu_allocated_usd"]
    # A model the pool does not serve can only have been answered by serverless;
    # failed rows cost nothing, so its group's cost is serverless spend that must stay.
    serverless_only = sorted(
        key
        for key in by_model["groups"]
        if key in catalog.by_id and not catalog.by_id[key].gpu and catalog.by_id[key].serverless
    )
    stays = sum(by_model["groups"][key]["cost_usd"] for key in serverless_only)
    return {
        "hours": hours,
        "month_factor": MONTH_HOURS / hours if hours > 0 else 0.0,
        "requests": totals["requests"],
        "answered": answered,
        "failed": totals["failed"],
        "error_rate": totals["error_rate"],
        "fallback_rate": totals["fallback_rate"],
        "serverless_requests": serverless_requests,
        "gpu_requests": gpu_requests,
        "serverless_share": serverless_requests / answered if answered else 0.0,
        "serverless_ratio": settings.serverless_ratio,
        "serverless_usd": savings["serverless_usd"],
        "serverless_usd_on_gpu_models": max(0.0, savings["serverless_usd"] - stays),
        "serverless_only_models": serverless_only,
        "serverless_fallback_rate": groups.get("serverless", {}).get("fallback_rate", 0.0),
        "gpu_endpoints": len(settings.gpu_endpoints),
        "gpu_hourly_cost_usd": settings.gpu_hourly_cost_usd,
        "gpu_bill_usd": bill,
        "gpu_allocated_usd": allocated,
        "gpu_idle_usd": max(0.0, bill - allocated),
        "gpu_utilization": allocated / bill if bill > 0 else None,
        "gpu_paid_instance_hours": savings["pool"]["paid_instance_hours"],
        "gpu_idle_share": savings["pool"]["idle_share"],
        "actual_usd": savings["actual_usd"],
        "actual_usd_per_month": per_month(savings["actual_usd"], hours),
        "all_gpu_instances": savings["all_gpu"]["instances"],
        "all_gpu_peak_hour_gpu_seconds": savings["all_gpu"]["peak_hour_gpu_seconds"],
        "all_gpu_usd": savings["all_gpu"]["usd"],
        "all_gpu_saved_usd": savings["all_gpu"]["saved_usd"],
        "all_serverless_model": savings["all_serverless"]["model"],
        "all_serverless_usd": savings["all_serverless"]["usd"],
        "all_serverless_saved_usd": savings["all_serverless"]["saved_usd"],
    }


def advise(
    by_backend: dict[str, Any],
    by_model: dict[str, Any],
    budgets: list[dict[str, Any]],
    settings: Settings,
    catalog: Catalog,
    now: datetime,
    days: int,
) -> Advice:
    """Turn two reports of one range and the budgets' status into cost advice.

    Args:
        by_backend: ``usage_report`` grouped by backend.
        by_model: ``usage_report`` of the same range grouped by model.
        budgets: ``BudgetBook.status()``.
        settings: The router's settings.
        catalog: The model catalog.
        now: The current time (for the budgets' time to reset).
        days: The range's length in days, as asked.

    Returns:
        The figures used and the suggestions, largest estimated monthly saving first.
    """
    f = figures_of(by_backend, by_model, settings, catalog)
    candidates = [
        shrink_pool(f, settings),
        drop_pool(f),
        gpu_first(f),
        grow_pool(f),
        *budget_pressure(f, budgets, now),
        reliability(f, by_backend),
    ]
    suggestions = sorted(
        (s for s in candidates if s is not None),
        key=lambda s: s["estimated_monthly_saving_usd"],
        reverse=True,
    )
    best = next((s["id"] for s in suggestions if s["estimated_monthly_saving_usd"] > 0), None)
    summary = (
        f"Last {days} day(s): {f['requests']} requests, {f['serverless_share']:.0%} of answered "
        f"ones on serverless ({usd(f['serverless_usd'])}); GPU pool bill {usd(f['gpu_bill_usd'])} "
        f"({usd(f['gpu_allocated_usd'])} used by requests); actual {usd(f['actual_usd'])} "
        f"(~{usd(f['actual_usd_per_month'])}/month) vs all-GPU {usd(f['all_gpu_usd'])} and "
        f"all-serverless {usd(f['all_serverless_usd'])}."
    )
    return {
        "days": days,
        "start": by_backend["start"],
        "end": by_backend["end"],
        "figures": f,
        "suggestions": suggestions,
        "best": best,
        "summary": summary,
    }


def advice_text(advice: Advice) -> str:
    """Render advice for people."""
    lines = [advice["summary"]]
    if not advice["suggestions"]:
        lines.append(
            "No change suggested: the numbers show no idle pool, cheaper baseline, "
            "budget pressure or failure rate worth acting on."
        )
    for number, s in enumerate(advice["suggestions"], 1):
        saving = s["estimated_monthly_saving_usd"]
        lines.append(f"{number}. {s['title']} (~{usd(saving)}/month): {s['detail']}")
    return "\n".join(lines)


async def cost_advice(
    ledger: Ledger,
    budgets: BudgetBook,
    settings: Settings,
    catalog: Catalog,
    now: datetime,
    days: int,
) -> Advice:
    """Return cost advice from the last ``days`` times 24 hours of the ledger.

    Args:
        ledger: The ledger.
        budgets: The budget book (the budgets' status).
        settings: The settings.
        catalog: The model catalog.
        now: The current time (the range's end, and the budgets' time to reset).
        days: How many days back from ``now``.

    Returns:
        The figures used and the suggestions, largest estimated monthly saving first.
    """
    start, end = trailing_days(now, days)
    by_backend = await usage_report(ledger, settings, catalog, start, end, "backend")
    by_model = await usage_report(ledger, settings, catalog, start, end, "model")
    status = await budgets.status()
    return advise(by_backend, by_model, status, settings, catalog, now, days)
