"""Estimate the request's serverless cost and check it against the budgets.

Over budget, the policy decides: ``gpu`` (default: the GPU pool costs nothing
more per request), ``downgrade`` (the cheapest serverless model that fits) or
``reject`` (a typed budget error).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from langgraph.runtime import Runtime

from nodes.select_model import fits
from state.context import Context, Services, resolve_services
from state.errors import BudgetExceededError
from state.ledger import Spend
from state.schemas import BudgetCheck, RouterState


def serverless_possible(state: RouterState, services: Services) -> bool:
    """Say whether this request could go to serverless at all (else no budget applies)."""
    settings = services.settings
    return (
        "serverless" in state["candidates"]
        and services.serverless is not None
        and not settings.disable_lambda_labs
        and settings.serverless_ratio > 0
        and state.get("force_backend") != "gpu"
    )


def over_budget(spend: Spend, estimate: float, daily: float, monthly: float) -> str | None:
    """Return which budget ``estimate`` would break, or None."""
    if spend.today_usd + estimate > daily:
        return (
            f"daily budget ${daily:.2f} would be exceeded "
            f"(spent ${spend.today_usd:.4f}, this request up to ${estimate:.6f})"
        )
    if spend.month_usd + estimate > monthly:
        return (
            f"monthly budget ${monthly:.2f} would be exceeded "
            f"(spent ${spend.month_usd:.4f}, this request up to ${estimate:.6f})"
        )
    return None


def next_reset(now: datetime, daily_broken: bool) -> datetime:
    """Return when the broken budget's window starts again (UTC calendar windows)."""
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if daily_broken:
        return day_start + timedelta(days=1)
    month_start = day_start.replace(day=1)
    return (month_start + timedelta(days=32)).replace(day=1)


async def check_budget(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Decide whether serverless may be used without breaking a budget."""
    services = await resolve_services(runtime.context)
    if not serverless_possible(state, services):
        budget: BudgetCheck = {
            "estimate_usd": 0.0,
            "spent_today_usd": 0.0,
            "spent_month_usd": 0.0,
            "serverless_allowed": False,
            "reason": "serverless not in play for this request",
        }
        return {"budget": budget}

    settings = services.settings
    catalog = services.catalog
    prompt_tokens = state["prompt_tokens_estimate"]
    output_tokens = state["output_tokens_cap"]
    model = catalog.by_id[state["candidates"]["serverless"]]
    estimate = model.cost_usd(prompt_tokens, output_tokens)
    now = services.clock()
    spend = await services.ledger.serverless_spend(now)
    daily, monthly = settings.lambda_daily_budget, settings.lambda_monthly_budget
    broken = over_budget(spend, estimate, daily, monthly)
    check: BudgetCheck = {
        "estimate_usd": estimate,
        "spent_today_usd": spend.today_usd,
        "spent_month_usd": spend.month_usd,
        "serverless_allowed": broken is None,
        "reason": broken or "within budget",
    }
    if broken is None:
        return {"budget": check}

    policy = settings.over_budget_policy
    if policy == "downgrade":
        for cheaper in catalog.by_price:
            if not cheaper.serverless or not fits(cheaper, prompt_tokens, output_tokens):
                continue
            cheaper_estimate = cheaper.cost_usd(prompt_tokens, output_tokens)
            if over_budget(spend, cheaper_estimate, daily, monthly) is None:
                check["estimate_usd"] = cheaper_estimate
                check["serverless_allowed"] = True
                check["reason"] = f"{broken}; downgraded to {cheaper.id}"
                candidates = {**state["candidates"], "serverless": cheaper.id}
                return {"budget": check, "candidates": candidates}
    gpu_possible = "gpu" in state["candidates"] and bool(services.gpu_pool)
    if policy == "reject" or not gpu_possible:
        remaining = max(0.0, min(daily - spend.today_usd, monthly - spend.month_usd))
        resets = next_reset(now, spend.today_usd + estimate > daily)
        raise BudgetExceededError(
            f"{broken}; ${remaining:.4f} remains, the budget resets at {resets.isoformat()}. "
            "Lower max_tokens, wait for the reset, or raise LAMBDA_DAILY_BUDGET / "
            "LAMBDA_MONTHLY_BUDGET",
            remaining_usd=remaining,
            resets_at=resets.isoformat(),
        )
    check["reason"] = f"{broken}; sending to the GPU pool"
    return {"budget": check}
