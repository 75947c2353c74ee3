"""Reserve the request's worst-case serverless cost against every budget that applies.

The reservation is one atomic step in the ledger (``state.budgets``), so
concurrent requests can never spend past a budget. It is taken only when
serverless would take the first attempt; a request that falls back to
serverless later reserves then (``generate_serverless``). Over budget, the
policy decides: ``gpu`` (default: the GPU pool costs nothing more per
request), ``downgrade`` (the cheapest serverless model that fits the budget)
or ``reject`` (a typed budget error with the remainder and the reset time).
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from langgraph.runtime import Runtime

from backends.catalog import ModelSpec
from nodes.choose_backend import allowed_backends, decide_backend
from nodes.select_model import fits
from state.budgets import Held, Refused
from state.context import Context, Services, resolve_services
from state.errors import BudgetExceededError, NoBackendAvailableError
from state.schemas import BudgetCheck, ReservationHeld, RouterState

_NOT_IN_PLAY: BudgetCheck = {
    "estimate_usd": 0.0,
    "serverless_allowed": False,
    "reason": "serverless not in play for this request",
}


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


def worst_case_usd(state: RouterState, services: Services, model: ModelSpec) -> float:
    """Return the most this request can cost on ``model``: an over-estimate, never under."""
    margin = services.settings.budget_estimate_margin
    prompt = math.ceil(state["prompt_tokens_estimate"] * margin)
    return model.cost_usd(prompt, state["output_tokens_cap"])


async def reserve_serverless(
    state: RouterState, services: Services, model: ModelSpec
) -> tuple[ReservationHeld | None, Refused | None]:
    """Reserve the worst case of ``model`` for this request."""
    amount = worst_case_usd(state, services, model)
    outcome = await services.budgets.reserve(
        uuid.uuid4().hex, amount, user=state.get("user"), team=state.get("team")
    )
    if isinstance(outcome, Held):
        held: ReservationHeld = {
            "id": outcome.reservation_id,
            "amount_usd": outcome.amount_usd,
            "model": model.id,
        }
        return held, None
    return None, outcome


def _serverless_goes_first(state: RouterState, services: Services) -> bool:
    """Preview ``choose_backend`` with the budget assumed fine."""
    preview: RouterState = {**state, "budget": {**_NOT_IN_PLAY, "serverless_allowed": True}}
    allowed, why_not = allowed_backends(preview, services)
    try:
        return decide_backend(preview, services, allowed, why_not)[0] == "serverless"
    except NoBackendAvailableError:
        return False  # choose_backend raises it, with its reasons


async def check_budget(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Reserve the serverless budget this request needs, or apply the over-budget policy."""
    services = await resolve_services(runtime.context)
    if not serverless_possible(state, services):
        return {"budget": _NOT_IN_PLAY, "reservation": None}
    catalog = services.catalog
    model = catalog.by_id[state["candidates"]["serverless"]]
    if not _serverless_goes_first(state, services):
        deferred: BudgetCheck = {
            "estimate_usd": worst_case_usd(state, services, model),
            "serverless_allowed": True,
            "reason": "GPU pool first; serverless reserves only on a fallback",
        }
        return {"budget": deferred, "reservation": None}

    held, refused = await reserve_serverless(state, services, model)
    if held is not None:
        ok: BudgetCheck = {
            "estimate_usd": held["amount_usd"],
            "serverless_allowed": True,
            "reason": "within budget (reserved)",
        }
        return {"budget": ok, "reservation": held}
    assert refused is not None

    policy = services.settings.over_budget_policy
    if policy == "downgrade":
        for cheaper in catalog.by_price:
            if cheaper.id == model.id or not cheaper.serverless:
                continue
            if not fits(cheaper, state["prompt_tokens_estimate"], state["output_tokens_cap"]):
                continue
            held, _ = await reserve_serverless(state, services, cheaper)
            if held is not None:
                downgraded: BudgetCheck = {
                    "estimate_usd": held["amount_usd"],
                    "serverless_allowed": True,
                    "reason": f"{refused.reason()}; downgraded to {cheaper.id}",
                }
                candidates = {**state["candidates"], "serverless": cheaper.id}
                return {"budget": downgraded, "reservation": held, "candidates": candidates}
    gpu_possible = "gpu" in state["candidates"] and bool(services.gpu_pool)
    if policy == "reject" or not gpu_possible or state.get("force_backend") == "serverless":
        raise BudgetExceededError(
            f"{refused.reason()}; ${refused.remaining_usd:.6f} remains until "
            f"{refused.window.resets_at.isoformat()}. Lower max_tokens, wait for the reset, "
            "or raise the budget",
            remaining_usd=refused.remaining_usd,
            resets_at=refused.window.resets_at.isoformat(),
        )
    over: BudgetCheck = {
        "estimate_usd": refused.amount_usd,
        "serverless_allowed": False,
        "reason": f"{refused.reason()}; sending to the GPU pool",
    }
    return {"budget": over, "reservation": None}
