"""Cost estimates: a prompt priced on every catalog model, and the GPU pool's cost note.

The router's own view of the prompt (its token count, complexity, the tier
it needs, the model each backend would pick, the models it fits) comes from
the routing steps in ``nodes/`` and is passed in as a :class:`RoutedPrompt`;
:func:`price_prompt` adds the prices, the worst-case serverless cost and the
budget hold. Nothing here calls a backend or reserves anything.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from typing_extensions import TypedDict

from backends.catalog import Catalog
from state.reporting.money import usd
from state.schemas import Backend, Complexity, CostPriority
from state.settings import Settings


@dataclass(frozen=True, slots=True)
class RoutedPrompt:
    """What the router's analysis and selection steps say about a prompt."""

    prompt_tokens: int
    complexity: Complexity
    cost_priority: CostPriority
    required_tier: int
    picks: Mapping[Backend, str | None]
    """The model each backend would run (None: none fits)."""
    fitting: Collection[str]
    """The ids of the models whose context window holds the prompt plus ``max_tokens``."""


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


def gpu_pool_cost(settings: Settings) -> GpuPoolCost:
    """Describe the GPU pool's bill and the share of it a GPU request is charged."""
    endpoints = len(settings.gpu_endpoints)
    hourly = settings.gpu_hourly_cost_usd
    pool_hourly = sum(settings.endpoint_price(url)[1] for url in settings.gpu_endpoints)
    concurrency = settings.gpu_concurrency_per_endpoint
    per_second = hourly / 3600 / concurrency
    priced = (
        f"{endpoints} endpoint(s) x {usd(hourly)}/h {settings.gpu_instance_type}"
        if not settings.gpu_endpoint_prices
        else f"{endpoints} endpoint(s) at their GPU_ENDPOINT_PRICES or {usd(hourly)}/h"
    )
    note = (
        f"The GPU pool is billed by the instance-hour while it is up ({priced} = "
        f"{usd(pool_hourly)}/h, used or not), so a GPU "
        "request adds nothing to the bill while the pool has spare capacity. The ledger charges "
        f"each GPU request its share: GPU-seconds x {usd(hourly)} / 3600 / {concurrency} "
        f"concurrent requests = {usd(per_second)} per second it holds an endpoint; "
        "the unused rest is the pool's idle cost."
    )
    return {
        "endpoints": endpoints,
        "instance_type": settings.gpu_instance_type,
        "hourly_cost_usd": hourly,
        "concurrency_per_endpoint": concurrency,
        "pool_bill_usd_per_hour": pool_hourly,
        "allocated_usd_per_gpu_second": per_second,
        "marginal_bill_usd": 0.0,
        "note": note,
    }


def _pick(routed: RoutedPrompt, max_tokens: int) -> RouterPick:
    level, priority, tier = routed.complexity["level"], routed.cost_priority, routed.required_tier
    if any(routed.picks.values()):
        chosen = sorted({m for m in routed.picks.values() if m})
        reason = f"{level} complexity, {priority} priority: tier {tier} ({', '.join(chosen)})"
    else:
        reason = (
            f"the prompt ({routed.prompt_tokens} tokens) plus max_tokens ({max_tokens}) fits no "
            "model's context window: the router would refuse it"
        )
    return {
        "cost_priority": priority,
        "required_tier": tier,
        "serverless": routed.picks.get("serverless"),
        "gpu": routed.picks.get("gpu"),
        "reason": reason,
    }


def price_prompt(
    catalog: Catalog, settings: Settings, routed: RoutedPrompt, max_tokens: int
) -> Estimate:
    """Price a prompt plus ``max_tokens`` of output on every catalog model.

    Args:
        catalog: The model catalog (prices, context windows, tiers).
        settings: Settings (the budget margin and the GPU pool's cost).
        routed: The router's view of the prompt (tokens, complexity, picks, fits).
        max_tokens: The most output tokens the request may produce.

    Returns:
        The prompt's token count and complexity, each model's worst-case
        serverless cost and budget hold, the router's pick and the GPU pool's
        cost note.
    """
    prompt_tokens = routed.prompt_tokens
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
                "fits": spec.id in routed.fitting,
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
        "complexity": routed.complexity,
        "router_pick": _pick(routed, max_tokens),
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
