"""What the MCP tools compute: cost estimates and cost advice, from the catalog and the ledger.

Nothing here talks MCP or calls a backend. :func:`estimate` prices a prompt on
every catalog model with the router's own token counter and selection rules;
:func:`advise` turns a :func:`state.analytics.usage_report` and the budgets'
status into suggestions, each derived from (and carrying) the numbers it used.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, cast

from typing_extensions import TypedDict

from backends.catalog import Catalog
from backends.tokens import count_message_tokens
from nodes.analyze_complexity import (
    complexity_level,
    complexity_score,
    score_features,
    validate_request,
)
from nodes.select_model import fits, pick_model, required_tier
from state.schemas import (
    BACKENDS,
    ChatMessage,
    Complexity,
    CostPriority,
    RouterState,
)
from state.settings import Settings

MONTH_HOURS = 730.0
"""Hours in an average month (365 x 24 / 12): range figures are scaled by this."""

BUDGET_NEAR_FRACTION = 0.8
"""A budget counts as near its limit from this fraction of it (the first alert threshold)."""

ERROR_RATE_ATTENTION = 0.02
"""An error rate above this is worth a look."""

FALLBACK_RATE_ATTENTION = 0.05
"""A fallback rate above this is worth a look."""


# -- estimate_cost ---------------------------------------------------------------------


class ModelEstimate(TypedDict):
    """One catalog model's price for the prompt."""

    model: str
    tier: int
    context_window: int
    fits: bool
    on_serverless: bool
    on_gpu: bool
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    worst_case_usd: float | None
    budget_reservation_usd: float | None


class RouterPick(TypedDict):
    """The models the router's selection step would pick for the prompt."""

    cost_priority: CostPriority
    required_tier: int
    serverless: str | None
    gpu: str | None
    reason: str


class GpuPoolCost(TypedDict):
    """How the GPU pool is paid for and how the ledger charges a GPU request."""

    endpoints: int
    instance_type: str
    hourly_cost_usd: float
    concurrency_per_endpoint: int
    pool_bill_usd_per_hour: float
    allocated_usd_per_gpu_second: float
    marginal_bill_usd: float
    note: str


class Estimate(TypedDict):
    """What ``estimate_cost`` answers."""

    prompt_tokens: int
    max_tokens: int
    complexity: Complexity
    router_pick: RouterPick
    models: list[ModelEstimate]
    gpu_pool: GpuPoolCost
    prices_read_on: str
    prices_source: str


def usd(amount: float) -> str:
    """Format dollars for people: cents from a dollar up, more decimals below."""
    if abs(amount) >= 1:
        return f"${amount:,.2f}"
    return f"${amount:.6f}" if amount == 0 or abs(amount) >= 1e-4 else f"${amount:.8f}"


def chat_messages(prompt: str, system: str | None = None) -> list[ChatMessage]:
    """Return the chat messages of a prompt and an optional system message."""
    messages: list[ChatMessage] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    return messages


def gpu_pool_cost(settings: Settings) -> GpuPoolCost:
    """Describe the GPU pool's bill and the share of it a GPU request is charged."""
    endpoints = len(settings.gpu_endpoints)
    hourly = settings.gpu_hourly_cost_usd
    concurrency = settings.gpu_concurrency_per_endpoint
    per_second = hourly / 3600 / concurrency
    note = (
        f"The GPU pool is billed by the instance-hour ({endpoints} endpoint(s) x {usd(hourly)}/h "
        f"{settings.gpu_instance_type} = {usd(endpoints * hourly)}/h, used or not), so a GPU "
        "request adds nothing to the bill while the pool has spare capacity. The ledger charges "
        f"each GPU request its share: GPU-seconds x {usd(hourly)} / 3600 / {concurrency} "
        f"concurrent requests = ${per_second:.8f} per second it holds an endpoint; "
        "the unused rest is the pool's idle cost."
    )
    return {
        "endpoints": endpoints,
        "instance_type": settings.gpu_instance_type,
        "hourly_cost_usd": hourly,
        "concurrency_per_endpoint": concurrency,
        "pool_bill_usd_per_hour": endpoints * hourly,
        "allocated_usd_per_gpu_second": per_second,
        "marginal_bill_usd": 0.0,
        "note": note,
    }


def estimate(
    catalog: Catalog,
    settings: Settings,
    messages: list[ChatMessage],
    max_tokens: int,
    cost_priority: CostPriority | None = None,
) -> Estimate:
    """Price ``messages`` plus ``max_tokens`` of output on every catalog model.

    Runs the router's own validation, token count, complexity score and model
    selection; calls no backend and reserves nothing.

    Args:
        catalog: The model catalog (prices, context windows, tiers).
        settings: Settings (the budget margin and the GPU pool's cost).
        messages: The chat messages of the request.
        max_tokens: The most output tokens the request may produce.
        cost_priority: The router's cost priority; None means ``balanced``.

    Returns:
        The prompt's token count and complexity, each model's worst-case
        serverless cost, the router's pick and the GPU pool's cost note.

    Raises:
        state.errors.BadRequestError: The request is invalid (e.g. an empty prompt).
    """
    state: RouterState = {"messages": cast(Any, messages), "max_tokens": max_tokens}
    if cost_priority is not None:
        state["cost_priority"] = cost_priority
    checked = validate_request(state)
    prompt_tokens = count_message_tokens(checked)
    features = score_features(checked, prompt_tokens, max_tokens)
    score = complexity_score(features)
    level = complexity_level(score)
    complexity: Complexity = {
        "score": score,
        "level": level,
        "features": {k: round(v, 4) for k, v in features.items() if v},
    }
    priority: CostPriority = cost_priority or "balanced"
    tier = required_tier(level, priority)
    picks: dict[str, str | None] = {}
    for backend in BACKENDS:
        model = pick_model(catalog, backend, tier, prompt_tokens, max_tokens)
        picks[backend] = model.id if model else None
    if any(picks.values()):
        chosen = sorted({m for m in picks.values() if m})
        reason = f"{level} complexity, {priority} priority: tier {tier} ({', '.join(chosen)})"
    else:
        reason = (
            f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) fits no "
            "model's context window: the router would refuse it"
        )
    margin = settings.budget_estimate_margin
    models: list[ModelEstimate] = []
    for spec in catalog.models:
        worst = reserve = None
        if spec.serverless:
            worst = spec.cost_usd(prompt_tokens, max_tokens)
            reserve = spec.cost_usd(math.ceil(prompt_tokens * margin), max_tokens)
        models.append(
            {
                "model": spec.id,
                "tier": spec.tier,
                "context_window": spec.context_window,
                "fits": fits(spec, prompt_tokens, max_tokens),
                "on_serverless": spec.serverless,
                "on_gpu": spec.gpu,
                "input_usd_per_mtok": spec.input_usd_per_mtok,
                "output_usd_per_mtok": spec.output_usd_per_mtok,
                "worst_case_usd": worst,
                "budget_reservation_usd": reserve,
            }
        )
    return {
        "prompt_tokens": prompt_tokens,
        "max_tokens": max_tokens,
        "complexity": complexity,
        "router_pick": {
            "cost_priority": priority,
            "required_tier": tier,
            "serverless": picks["serverless"],
            "gpu": picks["gpu"],
            "reason": reason,
        },
        "models": models,
        "gpu_pool": gpu_pool_cost(settings),
        "prices_read_on": catalog.prices_read_on,
        "prices_source": catalog.prices_source,
    }


def estimate_text(result: Estimate) -> str:
    """Render an estimate for people."""
    pick = result["router_pick"]
    lines = [
        f"prompt: {result['prompt_tokens']} tokens, max_tokens {result['max_tokens']}, "
        f"complexity {result['complexity']['level']} ({result['complexity']['score']:.2f})",
        f"router pick ({pick['cost_priority']}, tier {pick['required_tier']}): "
        f"serverless {pick['serverless'] or '-'}, gpu {pick['gpu'] or '-'}",
        "worst-case serverless cost per model:",
    ]
    for m in result["models"]:
        cost = "not on serverless" if m["worst_case_usd"] is None else usd(m["worst_case_usd"])
        fit = "fits" if m["fits"] else "does NOT fit"
        lines.append(f"  {m['model']} (tier {m['tier']}, {m['context_window']} ctx, {fit}): {cost}")
    lines.append(result["gpu_pool"]["note"])
    lines.append(f"prices read on {result['prices_read_on']} ({result['prices_source']})")
    return "\n".join(lines)


# -- optimize_costs --------------------------------------------------------------------


class Suggestion(TypedDict):
    """One piece of advice with the numbers it was derived from."""

    id: str
    title: str
    detail: str
    estimated_monthly_saving_usd: float
    numbers: dict[str, Any]


class Advice(TypedDict):
    """What ``optimize_costs`` answers."""

    days: int
    start: str
    end: str
    figures: dict[str, Any]
    suggestions: list[Suggestion]
    best: str | None
    summary: str


def _per_month(amount_usd: float, hours: float) -> float:
    """Scale a range's dollars to an average month."""
    return amount_usd * MONTH_HOURS / hours if hours > 0 else 0.0


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
        "actual_usd": savings["actual_usd"],
        "actual_usd_per_month": _per_month(savings["actual_usd"], hours),
        "all_gpu_instances": savings["all_gpu"]["instances"],
        "all_gpu_peak_hour_gpu_seconds": savings["all_gpu"]["peak_hour_gpu_seconds"],
        "all_gpu_usd": savings["all_gpu"]["usd"],
        "all_gpu_saved_usd": savings["all_gpu"]["saved_usd"],
        "all_serverless_model": savings["all_serverless"]["model"],
        "all_serverless_usd": savings["all_serverless"]["usd"],
        "all_serverless_saved_usd": savings["all_serverless"]["saved_usd"],
    }


def _suggest_shrink_pool(f: dict[str, Any], settings: Settings) -> Suggestion | None:
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


def _suggest_drop_pool(f: dict[str, Any]) -> Suggestion | None:
    # saved_usd is the baseline minus the actual spend: below zero, the baseline is cheaper
    if f["gpu_endpoints"] == 0 or f["all_serverless_saved_usd"] >= 0:
        return None
    saving = _per_month(-f["all_serverless_saved_usd"], f["hours"])
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


def _suggest_gpu_first(f: dict[str, Any]) -> Suggestion | None:
    endpoints, needed = f["gpu_endpoints"], f["all_gpu_instances"]
    movable = f["serverless_usd_on_gpu_models"]
    if endpoints == 0 or movable <= 0 or needed > endpoints:
        return None
    saving = _per_month(movable, f["hours"])
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


def _suggest_grow_pool(f: dict[str, Any]) -> Suggestion | None:
    endpoints, needed = f["gpu_endpoints"], f["all_gpu_instances"]
    if needed <= endpoints or f["all_gpu_saved_usd"] >= 0:
        return None
    saving = _per_month(-f["all_gpu_saved_usd"], f["hours"])
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


def _suggest_budgets(
    f: dict[str, Any], budgets: list[dict[str, Any]], now: datetime
) -> list[Suggestion]:
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


def _suggest_reliability(f: dict[str, Any], by_backend: dict[str, Any]) -> Suggestion | None:
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
        "estimated_monthly_saving_usd": _per_month(fallback_spend, f["hours"]),
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
        _suggest_shrink_pool(f, settings),
        _suggest_drop_pool(f),
        _suggest_gpu_first(f),
        _suggest_grow_pool(f),
        *_suggest_budgets(f, budgets, now),
        _suggest_reliability(f, by_backend),
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
