"""The suggestions of the cost advice: each a rule on the report's figures, with its numbers.

Every function takes the flat figures of :func:`state.reporting.advice.figures_of`
and returns a suggestion (or None when its rule does not apply) carrying the
numbers it was derived from and its estimated monthly saving.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from typing_extensions import TypedDict

from state.reporting.money import usd
from state.settings import Settings

MONTH_HOURS = 730.0
"""Hours in an average month (365 x 24 / 12): range figures are scaled by this."""

BUDGET_NEAR_FRACTION = 0.8
"""A budget counts as near its limit from this fraction of it (the first alert threshold)."""

ERROR_RATE_ATTENTION = 0.02
"""An error rate above this is worth a look."""

FALLBACK_RATE_ATTENTION = 0.05
"""A fallback rate above this is worth a look."""


class Suggestion(TypedDict):
    """One piece of advice with the numbers it was derived from."""

    id: str
    title: str
    detail: str
    estimated_monthly_saving_usd: float
    numbers: dict[str, Any]


def per_month(amount_usd: float, hours: float) -> float:
    """Scale a range's dollars to an average month."""
    return amount_usd * MONTH_HOURS / hours if hours > 0 else 0.0


def shrink_pool(f: dict[str, Any], settings: Settings) -> Suggestion | None:
    """Suggest fewer GPU instances when the busiest hour needed fewer than the pool has."""
    endpoints, needed = f["gpu_endpoints"], f["all_gpu_instances"]
    if endpoints == 0 or needed >= endpoints:
        return None
    hourly = f["gpu_hourly_cost_usd"]
    saving = (endpoints - needed) * hourly * MONTH_HOURS
    capacity = 3600 * settings.gpu_concurrency_per_endpoint
    utilization = f["gpu_utilization"]
    used = "no use" if utilization is None else f"{utilization:.2%} use"
    if needed == 0:
        action = (
            "No answered request needed the pool in this range: remove GPU_ENDPOINTS "
            "and let serverless carry the traffic (SERVERLESS_RATIO=1)."
        )
    else:
        action = (
            f"Run {needed} instance(s) instead of {endpoints}, and raise SERVERLESS_RATIO "
            f"(now {f['serverless_ratio']:.0%}) so serverless takes what overflows."
        )
    detail = (
        f"The pool has {endpoints} endpoint(s) ({usd(endpoints * hourly)}/h) but its busiest hour "
        f"needed {needed} ({f['all_gpu_peak_hour_gpu_seconds']:.1f} GPU-seconds of all answered "
        f"traffic; one instance gives {capacity} per hour). Requests were allocated "
        f"{usd(f['gpu_allocated_usd'])} of a {usd(f['gpu_bill_usd'])} bill ({used}; "
        f"{usd(f['gpu_idle_usd'])} idle). {action}"
    )
    return {
        "id": "shrink_gpu_pool",
        "title": f"GPU pool under-used: {endpoints} -> {needed} instance(s)",
        "detail": detail,
        "estimated_monthly_saving_usd": saving,
        "numbers": {
            "gpu_endpoints": endpoints,
            "instances_needed": needed,
            "peak_hour_gpu_seconds": f["all_gpu_peak_hour_gpu_seconds"],
            "gpu_bill_usd": f["gpu_bill_usd"],
            "gpu_allocated_usd": f["gpu_allocated_usd"],
            "gpu_idle_usd": f["gpu_idle_usd"],
            "gpu_utilization": utilization,
            "gpu_hourly_cost_usd": hourly,
            "month_hours": MONTH_HOURS,
        },
    }


def drop_pool(f: dict[str, Any]) -> Suggestion | None:
    """Suggest dropping the GPU pool when all-serverless would have cost less."""
    # saved_usd is the baseline minus the actual spend: below zero, the baseline is cheaper
    if f["gpu_endpoints"] == 0 or f["all_serverless_saved_usd"] >= 0:
        return None
    saving = per_month(-f["all_serverless_saved_usd"], f["hours"])
    detail = (
        f"Everything answered in the range would have cost {usd(f['all_serverless_usd'])} on "
        f"{f['all_serverless_model']} (serverless) against {usd(f['actual_usd'])} actually spent "
        f"(serverless {usd(f['serverless_usd'])} + GPU pool bill {usd(f['gpu_bill_usd'])}): the "
        f"pool costs more than the serverless tokens it replaces. Consider removing GPU_ENDPOINTS "
        f"and setting SERVERLESS_RATIO=1. The baseline prices every request at "
        f"{f['all_serverless_model']}; requests that need a larger tier cost more there."
    )
    return {
        "id": "drop_gpu_pool",
        "title": "All-serverless would be cheaper than the GPU pool at this traffic",
        "detail": detail,
        "estimated_monthly_saving_usd": saving,
        "numbers": {
            "actual_usd": f["actual_usd"],
            "all_serverless_usd": f["all_serverless_usd"],
            "all_serverless_saved_usd": f["all_serverless_saved_usd"],
            "gpu_bill_usd": f["gpu_bill_usd"],
            "serverless_usd": f["serverless_usd"],
            "hours": f["hours"],
            "month_hours": MONTH_HOURS,
        },
    }


def gpu_first(f: dict[str, Any]) -> Suggestion | None:
    """Suggest sending serverless traffic on models the pool serves to the idle pool."""
    endpoints, needed = f["gpu_endpoints"], f["all_gpu_instances"]
    movable = f["serverless_usd_on_gpu_models"]
    if endpoints == 0 or movable <= 0 or needed > endpoints:
        return None
    saving = per_month(movable, f["hours"])
    stays = f["serverless_usd"] - movable
    detail = (
        f"{f['serverless_share']:.0%} of answered requests ({f['serverless_requests']} of "
        f"{f['answered']}) went to serverless for {usd(f['serverless_usd'])}, while the GPU pool "
        f"({endpoints} endpoint(s), enough for the busiest hour of all traffic: {needed} needed) "
        f"left {usd(f['gpu_idle_usd'])} idle. {usd(movable)} of that spend was on models the "
        f"pool serves: lower SERVERLESS_RATIO (now {f['serverless_ratio']:.0%}) or send those "
        "requests with force_backend=gpu."
    )
    if stays > 0:
        detail += (
            f" {usd(stays)} was on serverless-only models "
            f"({', '.join(f['serverless_only_models'])}) and stays."
        )
    return {
        "id": "use_idle_gpu",
        "title": "Send serverless traffic to the idle GPU pool",
        "detail": detail,
        "estimated_monthly_saving_usd": saving,
        "numbers": {
            "serverless_share": f["serverless_share"],
            "serverless_requests": f["serverless_requests"],
            "serverless_usd": f["serverless_usd"],
            "serverless_usd_on_gpu_models": movable,
            "gpu_idle_usd": f["gpu_idle_usd"],
            "gpu_endpoints": endpoints,
            "instances_needed": needed,
            "serverless_ratio": f["serverless_ratio"],
            "hours": f["hours"],
            "month_hours": MONTH_HOURS,
        },
    }


def grow_pool(f: dict[str, Any]) -> Suggestion | None:
    """Suggest a larger pool when dedicated GPUs for all traffic would have cost less."""
    endpoints, needed = f["gpu_endpoints"], f["all_gpu_instances"]
    if needed <= endpoints or f["all_gpu_saved_usd"] >= 0:
        return None
    saving = per_month(-f["all_gpu_saved_usd"], f["hours"])
    detail = (
        f"Running everything on {needed} dedicated instance(s) (sized for the busiest hour, "
        f"{f['all_gpu_peak_hour_gpu_seconds']:.1f} GPU-seconds) would have cost "
        f"{usd(f['all_gpu_usd'])} against {usd(f['actual_usd'])} actually spent "
        f"(serverless {usd(f['serverless_usd'])}, {f['serverless_share']:.0%} of answered "
        f"requests). Grow the pool to {needed} endpoint(s) (now {endpoints}) and lower "
        f"SERVERLESS_RATIO (now {f['serverless_ratio']:.0%}). Models only serverless offers "
        f"({', '.join(f['serverless_only_models']) or 'none used'}) would still need it."
    )
    return {
        "id": "grow_gpu_pool",
        "title": f"Dedicated GPUs would be cheaper: {endpoints} -> {needed} instance(s)",
        "detail": detail,
        "estimated_monthly_saving_usd": saving,
        "numbers": {
            "all_gpu_instances": needed,
            "all_gpu_usd": f["all_gpu_usd"],
            "all_gpu_saved_usd": f["all_gpu_saved_usd"],
            "actual_usd": f["actual_usd"],
            "gpu_endpoints": endpoints,
            "serverless_usd": f["serverless_usd"],
            "hours": f["hours"],
            "month_hours": MONTH_HOURS,
        },
    }


def budget_pressure(
    f: dict[str, Any], budgets: list[dict[str, Any]], now: datetime
) -> list[Suggestion]:
    """Warn about each budget near its limit, or projected past it by its reset."""
    hours = f["hours"]
    rate = f["serverless_usd"] / hours if hours > 0 else 0.0
    found: list[Suggestion] = []
    for budget in budgets:
        limit = budget["limit_usd"]
        used = budget["spent_usd"] + budget["reserved_usd"]
        hours_left = max(
            0.0, (datetime.fromisoformat(budget["resets_at"]) - now).total_seconds() / 3600
        )
        projected = used + rate * hours_left
        near = budget["used_fraction"] >= BUDGET_NEAR_FRACTION
        if not near and projected < limit:
            continue
        owner = "" if budget["scope"] == "global" else f" of {budget['scope']} {budget['key']}"
        what = "daily" if budget["period"] == "day" else "monthly"
        detail = (
            f"The {what} serverless budget{owner} has {usd(budget['spent_usd'])} spent and "
            f"{usd(budget['reserved_usd'])} held of {usd(limit)} ({budget['used_fraction']:.0%} "
            f"used). At the range's serverless rate ({usd(rate)}/h) it reaches "
            f"{usd(projected)} by its reset ({budget['resets_at']}). Past the limit, requests "
            "follow OVER_BUDGET_POLICY (GPU pool, downgrade or reject): raise the budget, or "
            "move traffic to the GPU pool."
        )
        found.append(
            {
                "id": f"budget_{budget['scope']}_{budget['period']}",
                "title": f"The {what} budget{owner} is near its limit",
                "detail": detail,
                "estimated_monthly_saving_usd": 0.0,
                "numbers": {
                    "limit_usd": limit,
                    "spent_usd": budget["spent_usd"],
                    "reserved_usd": budget["reserved_usd"],
                    "used_fraction": budget["used_fraction"],
                    "serverless_usd_per_hour": rate,
                    "hours_to_reset": hours_left,
                    "projected_at_reset_usd": projected,
                },
            }
        )
    return found


def reliability(f: dict[str, Any], by_backend: dict[str, Any]) -> Suggestion | None:
    """Point at failures and fallbacks above their attention thresholds."""
    if f["error_rate"] <= ERROR_RATE_ATTENTION and f["fallback_rate"] <= FALLBACK_RATE_ATTENTION:
        return None
    serverless = by_backend["groups"].get("serverless", {})
    # Requests that fell back to serverless paid for tokens the GPU pool would have served.
    fallback_spend = serverless.get("fallback_rate", 0.0) * serverless.get("cost_usd", 0.0)
    detail = (
        f"{f['failed']} of {f['requests']} requests failed ({f['error_rate']:.1%}) and "
        f"{f['fallback_rate']:.1%} needed a fallback. About {usd(fallback_spend)} of serverless "
        "spend came from requests that fell back to serverless. Check the backends' health "
        "(GPU_COOLDOWN_S, vLLM logs, the serverless API's status)."
    )
    return {
        "id": "reliability",
        "title": "Failures and fallbacks worth a look",
        "detail": detail,
        "estimated_monthly_saving_usd": per_month(fallback_spend, f["hours"]),
        "numbers": {
            "requests": f["requests"],
            "failed": f["failed"],
            "error_rate": f["error_rate"],
            "fallback_rate": f["fallback_rate"],
            "serverless_fallback_rate": serverless.get("fallback_rate", 0.0),
            "serverless_usd": serverless.get("cost_usd", 0.0),
            "fallback_serverless_usd": fallback_spend,
            "hours": f["hours"],
            "month_hours": MONTH_HOURS,
        },
    }
