"""Price the request, settle its reservation with its ledger row, and raise alerts.

Serverless requests cost their tokens at the price of the provider that served
them. GPU requests record their share of the pool's instance cost by
GPU-seconds: the time the request held an endpoint, at that endpoint's hourly
price (``GPU_ENDPOINT_PRICES``, else ``GPU_HOURLY_COST_USD``), divided by the
``GPU_CONCURRENCY_PER_ENDPOINT`` requests an instance serves at once. Idle
instance time is nobody's request; reports show it as the pool's idle cost.

A stream whose caller went away stops at the next token (the gateway sets the
context's ``cancelled`` signal): its row has status ``cancelled``, the tokens
produced until then, and their cost, settled against its hold like any answer.

A request a budget refused (``refusal``, left by ``check_budget``) is a row with
status ``refused``, then its 402; one a budget sent elsewhere (the GPU pool, a
cheaper model) keeps its status and is marked ``budget_refused``.
"""

from __future__ import annotations

import time
from typing import Any

from langgraph.runtime import Runtime

from backends.catalog import Priced
from backends.gpu_pool.endpoint import shown_url
from nodes.check_budget import refusal_error
from nodes.generation import CANCELLED, cache_entry
from state.context import Context, Services, resolve_services
from state.errors import AllBackendsFailedError, BackendRejectedError
from state.ledger import UsageRecord
from state.schemas import RUN_OPTIONS, Attempt, RouterState, Routing, Usage


def attempt_label(attempt: Attempt, *, endpoint: bool = False) -> str:
    """Name where an attempt went: the backend, with its provider (or GPU endpoint, if asked).

    The endpoint's URL is shown without credentials.
    """
    provider = attempt.get("provider")
    url = attempt.get("endpoint") if endpoint else None
    where = provider or (shown_url(url) if url else None)
    return f"{attempt['backend']} ({where})" if where else attempt["backend"]


def routing_reason(state: RouterState) -> str:
    """Explain the decision in one sentence, fallbacks included."""
    reason = state.get("backend_reason", "")
    attempts = state.get("attempts") or []
    failed = [a for a in attempts if a["status"] == "failed"]
    answered = [a for a in attempts if a["status"] == "ok"]
    if failed and answered:
        names = ", ".join(attempt_label(a) for a in failed)
        reason += f"; {names} failed, fell back to {attempt_label(answered[-1])}"
    budget = state.get("budget")
    if budget and not budget["serverless_allowed"] and "budget" in budget["reason"]:
        reason += f"; {budget['reason']}"
    return reason


def request_cost(
    services: Services, answered: Attempt | None, usage: Usage | None
) -> tuple[float, float]:
    """Return the request's cost in USD and the GPU-seconds it used."""
    if answered is None or usage is None or answered.get("cache_hit"):
        return 0.0, 0.0  # a cached answer costs nothing
    if answered["backend"] == "serverless":
        # the price of the provider that served it; the catalog's when it is unknown
        price: Priced = services.catalog.by_id[answered["model"]]
        provider = services.providers.by_name.get(answered.get("provider") or "")
        if provider is not None:
            price = provider.spec.offers.get(answered["model"]) or price
        return price.cost_usd(usage["prompt_tokens"], usage["completion_tokens"]), 0.0
    settings = services.settings
    gpu_seconds = answered["latency_ms"] / 1000
    _, hourly = settings.endpoint_price(answered.get("endpoint") or "")
    share = gpu_seconds * hourly / 3600
    return share / settings.gpu_concurrency_per_endpoint, gpu_seconds


def answer_status(state: RouterState, answered: Attempt | None) -> str:
    """Return the ledger status: ``ok``, ``failed``, ``refused`` (a 402) or ``cancelled``.

    ``cancelled``: the caller left mid-stream.
    """
    if state.get("refusal"):
        return "refused"
    if answered is None:
        return "failed"
    finish = (state.get("completion") or {}).get("finish_reason")
    return CANCELLED if finish == CANCELLED else "ok"


def rejected(attempts: list[Attempt]) -> BackendRejectedError | None:
    """Return the caller's error when the last backend refused the request as a client error."""
    last = attempts[-1] if attempts else None
    if last is None or last["status"] != "failed" or not last.get("client_error"):
        return None
    body = last["client_error"] or {}
    return BackendRejectedError(
        int(last.get("status_code") or 400),
        f"the {last['backend']} backend ({last['model']}) refused the request: "
        f"{body.get('message') or last['error']}",
        param=body.get("param"),
        code=body.get("code"),
    )


async def track_usage(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Record the request in the ledger; raise the typed error if no backend answered."""
    services = await resolve_services(runtime.context)
    attempts = state.get("attempts") or []
    answered = next((a for a in reversed(attempts) if a["status"] == "ok"), None)
    usage = state.get("usage") if answered else None
    cost, gpu_seconds = request_cost(services, answered, usage)
    reason = routing_reason(state)
    complexity = state["complexity"]
    failures = [a for a in attempts if a["status"] == "failed"]
    if answered:
        model = answered["model"]
    elif attempts:
        model = attempts[-1]["model"]
    else:  # refused before any call: the model the budget refused
        model = (state.get("candidates") or {}).get("serverless")
    row = UsageRecord(
        created_at=services.clock(),
        request_id=state["request_id"],
        user=state.get("user"),
        team=state.get("team"),
        backend=answered["backend"] if answered else None,
        provider=answered.get("provider") if answered else None,
        model=model,
        prompt_tokens=usage["prompt_tokens"] if usage else 0,
        completion_tokens=usage["completion_tokens"] if usage else 0,
        cost_usd=cost,
        gpu_seconds=gpu_seconds,
        latency_ms=round((time.time() - state["started_at"]) * 1000, 3),
        status=answer_status(state, answered),
        routing_reason=reason,
        complexity_score=complexity["score"],
        complexity_level=complexity["level"],
        fallbacks=len(failures) if answered else max(len(failures) - 1, 0),
        error="; ".join(f"{attempt_label(a, endpoint=True)}: {a['error']}" for a in failures)
        or None,
        cache_hit=bool(answered and answered.get("cache_hit")),
        budget_refused=bool(state.get("budget_refused")),
    )
    # only a serverless answer spends the serverless budget; anything else releases the hold
    serverless_cost = cost if answered and answered["backend"] == "serverless" else 0.0
    crossings = await services.reservations.settle(state.get("reservation"), serverless_cost, row)
    services.alerts.notify(crossings)
    key = state.get("cache_key")
    # a cancelled answer is only its start: never served again from the cache
    fresh = row.status == "ok" and answered is not None and not answered.get("cache_hit")
    if key is not None and answered is not None and fresh:
        await services.cache.put(key, cache_entry(state, answered))
    refusal = state.get("refusal")
    if refusal:
        raise refusal_error(refusal)
    if answered is None:
        raise rejected(attempts) or AllBackendsFailedError([dict(a) for a in attempts])
    routing: Routing = {
        "backend": answered["backend"],
        "model": answered["model"],
        "reason": reason,
        "complexity": complexity,
        "attempts": attempts,
    }
    update: dict[str, Any] = {
        "routing": routing,
        "cost_usd": cost,
        "reservation": None,
        "decisions": {"track_usage": {"cost_usd": cost, "status": "ok", "reason": reason}},
    }
    # a thread's next run starts from the defaults, not from this run's options
    update.update({name: None for name in RUN_OPTIONS if state.get(name) is not None})
    return update
