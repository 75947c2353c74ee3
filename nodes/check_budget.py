"""Hold the serverless budget when serverless takes the attempt; apply the over-budget policy.

Runs after ``choose_backend``: a request that goes to the GPU pool first holds
nothing (a fallback to serverless holds then, in ``generate_serverless``).
The hold is one atomic step in the ledger (``state.reservations``), so
concurrent requests can never spend past a budget. Over budget, the policy
decides: ``gpu`` (default: the GPU pool costs nothing more per request),
``downgrade`` (the cheapest serverless model that fits the budget) or
``reject`` (a typed budget error with the remainder and the reset time,
raised by ``track_usage`` once the refused request has its ledger row). Every
refused hold marks the request ``budget_refused``, so the reports count it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import Command

from backends.catalog import ModelSpec
from backends.providers import ProviderOffer
from nodes.select_model import fits
from state.budgets import Refused
from state.context import Context, Services, resolve_services
from state.errors import BudgetExceededError
from state.reporting.money import usd
from state.reservations import SpendRequest
from state.schemas import Backend, BudgetCheck, BudgetRefusal, RouterState


def spend_request(state: RouterState) -> SpendRequest:
    """Describe what this request may spend and who pays for it."""
    return SpendRequest(
        prompt_tokens=state["prompt_tokens_estimate"],
        output_tokens=state["output_tokens_cap"],
        user=state.get("user"),
        team=state.get("team"),
    )


def request_tokens(state: RouterState) -> int:
    """Return what the request needs of a model's context: its prompt plus its output cap."""
    return state["prompt_tokens_estimate"] + state["output_tokens_cap"]


def first_provider(
    state: RouterState, services: Services, model: ModelSpec
) -> tuple[ProviderOffer | None, str | None]:
    """Return the price and name of the provider that takes ``model`` first (None, None: none)."""
    first = services.providers.first(model.id, request_tokens(state))
    return (first[1], first[0].name) if first is not None else (None, None)


def cheaper_models(
    state: RouterState, services: Services, model: ModelSpec
) -> list[tuple[ModelSpec, ProviderOffer | None, str | None]]:
    """Return the serverless models cheaper than ``model`` that a provider can serve this request.

    Each comes with the price and name of the provider that would take it first.
    """
    needs = state.get("requires") or {}
    cheaper: list[tuple[ModelSpec, ProviderOffer | None, str | None]] = []
    for candidate in services.catalog.by_price:
        if candidate.id == model.id:
            break
        if (
            candidate.serverless
            and candidate.supports(needs)
            and fits(candidate, state["prompt_tokens_estimate"], state["output_tokens_cap"])
        ):
            price, provider = first_provider(state, services, candidate)
            if provider is not None:
                cheaper.append((candidate, price, provider))
    return cheaper


def budget_error(refused: Refused, now: datetime) -> BudgetExceededError:
    """Return the caller's error for a refused hold: which budget, what remains, when it resets.

    Args:
        refused: The refusal (the budget that resets last among those that refused).
        now: The current time (``Retry-After`` counts from it).

    Returns:
        The 402 error, with the budget's figures and the seconds until its reset.
    """
    window = refused.window
    wait_s = window.seconds_to_reset(now)
    if window.scope == "global":
        setting = "LAMBDA_DAILY_BUDGET" if window.period == "day" else "LAMBDA_MONTHLY_BUDGET"
        raise_it = f"ask the operator to raise {setting}"
    else:
        raise_it = f"ask an admin to raise it (PUT /budget/{window.scope}/{window.scope_key})"
    return BudgetExceededError(
        f"{refused.reason()}; {usd(refused.remaining_usd)} remains until "
        f"{window.resets_at.isoformat()} (in {wait_s} s). Lower max_tokens, retry after the "
        f"reset, or {raise_it}",
        remaining_usd=refused.remaining_usd,
        resets_at=window.resets_at.isoformat(),
        retry_after_s=wait_s,
        budget=refused.details(),
    )


def route_to_backend(backend: Backend) -> Literal["generate_serverless", "generate_gpu"]:
    """Which generate node takes the first attempt after the budget check?"""
    if backend == "serverless":
        return "generate_serverless"
    if backend == "gpu":
        return "generate_gpu"
    raise ValueError(f"no backend was chosen (got {backend!r})")


NextStep = Command[Literal["generate_serverless", "generate_gpu", "track_usage"]]


def _update(state: RouterState, budget: BudgetCheck, **changes: Any) -> NextStep:
    decision = {"budget": budget, **{k: v for k, v in changes.items() if k != "reservation"}}
    update = {"budget": budget, **changes, "decisions": {"check_budget": decision}}
    return Command(goto=route_to_backend(changes.get("backend", state["backend"])), update=update)


def _refuse(budget: BudgetCheck, error: BudgetExceededError) -> NextStep:
    """Go to ``track_usage`` with the refusal: it records the request, then raises the 402."""
    refusal: BudgetRefusal = {
        "message": error.message,
        "remaining_usd": error.remaining_usd or 0.0,
        "resets_at": error.resets_at or "",
        "retry_after_s": error.retry_after_s or 1,
        "budget": error.budget or {},
    }
    decision = {"budget": budget, "refused": True}
    update = {
        "budget": budget,
        "budget_refused": True,
        "refusal": refusal,
        "reservation": None,
        "decisions": {"check_budget": decision},
    }
    return Command(goto="track_usage", update=update)


def refusal_error(refusal: BudgetRefusal) -> BudgetExceededError:
    """Return the 402 error of a refusal ``check_budget`` left in the state."""
    return BudgetExceededError(
        refusal["message"],
        remaining_usd=refusal["remaining_usd"],
        resets_at=refusal["resets_at"],
        retry_after_s=refusal["retry_after_s"],
        budget=refusal["budget"],
    )


async def check_budget(state: RouterState, runtime: Runtime[Context]) -> NextStep:
    """Hold the worst-case serverless cost, or move the request as the policy says."""
    services = await resolve_services(runtime.context)
    catalog = services.catalog
    serverless_id = state["candidates"].get("serverless")
    model = catalog.by_id[serverless_id] if serverless_id else None
    if state["backend"] != "serverless" or model is None:
        estimate = (
            services.reservations.worst_case_usd(
                model, spend_request(state), first_provider(state, services, model)[0]
            )
            if model
            else 0.0
        )
        deferred: BudgetCheck = {
            "estimate_usd": estimate,
            "serverless_allowed": "serverless" in state.get("allowed_backends", []),
            "reason": "GPU pool first; serverless holds budget only on a fallback",
        }
        return _update(state, deferred, reservation=None)

    spend = spend_request(state)
    # held at the price of the provider tried first; a later provider re-prices it
    price, provider = first_provider(state, services, model)
    held = await services.reservations.hold(model, spend, price, provider)
    if not isinstance(held, Refused):
        ok: BudgetCheck = {
            "estimate_usd": held["amount_usd"],
            "serverless_allowed": True,
            "reason": "within budget (held)",
        }
        return _update(state, ok, reservation=held)
    refused = held

    policy = services.settings.over_budget_policy
    if policy == "downgrade":
        cheaper = await services.reservations.hold_first(
            cheaper_models(state, services, model), spend
        )
        if cheaper is not None:
            downgraded: BudgetCheck = {
                "estimate_usd": cheaper["amount_usd"],
                "serverless_allowed": True,
                "reason": f"{refused.reason()}; downgraded to {cheaper['model']}",
            }
            candidates = {**state["candidates"], "serverless": cheaper["model"]}
            return _update(
                state,
                downgraded,
                reservation=cheaper,
                candidates=candidates,
                budget_refused=True,
            )
    allowed = [b for b in state.get("allowed_backends", []) if b != "serverless"]
    forced = state.get("force_backend") == "serverless"
    if policy == "reject" or "gpu" not in allowed or forced:
        refusing: BudgetCheck = {
            "estimate_usd": refused.amount_usd,
            "serverless_allowed": False,
            "reason": f"{refused.reason()}; refused",
        }
        return _refuse(refusing, budget_error(refused, services.clock()))
    over: BudgetCheck = {
        "estimate_usd": refused.amount_usd,
        "serverless_allowed": False,
        "reason": f"{refused.reason()}; sending to the GPU pool",
    }
    return _update(
        state,
        over,
        reservation=None,
        backend="gpu",
        backend_reason=f"over the serverless budget: {refused.reason()}",
        allowed_backends=allowed,
        budget_refused=True,
    )
