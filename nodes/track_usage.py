"""Price the request, write its ledger row, and fail loudly when no backend answered."""

from __future__ import annotations

import time
from typing import Any

from langgraph.runtime import Runtime

from state.context import Context, resolve_services
from state.errors import AllBackendsFailedError
from state.ledger import UsageRecord
from state.schemas import RouterState, Routing


def routing_reason(state: RouterState) -> str:
    """Explain the decision in one sentence, fallbacks included."""
    reason = state.get("backend_reason", "")
    attempts = state.get("attempts", [])
    failed = [a for a in attempts if a["status"] == "failed"]
    answered = [a for a in attempts if a["status"] == "ok"]
    if failed and answered:
        names = ", ".join(a["backend"] for a in failed)
        reason += f"; {names} failed, fell back to {answered[-1]['backend']}"
    budget = state.get("budget")
    if budget and not budget["serverless_allowed"] and "budget" in budget["reason"]:
        reason += f"; {budget['reason']}"
    return reason


async def track_usage(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Record the request in the ledger; raise the typed error if every backend failed."""
    services = await resolve_services(runtime.context)
    attempts = state.get("attempts", [])
    answered = next((a for a in reversed(attempts) if a["status"] == "ok"), None)
    usage = state.get("usage")
    cost = 0.0
    if answered is not None and usage is not None and answered["backend"] == "serverless":
        # GPU requests cost nothing more per request: the pool is paid by the hour.
        model = services.catalog.by_id[answered["model"]]
        cost = model.cost_usd(usage["prompt_tokens"], usage["completion_tokens"])
    reason = routing_reason(state)
    complexity = state["complexity"]
    failures = [a for a in attempts if a["status"] == "failed"]
    await services.ledger.record(
        UsageRecord(
            created_at=services.clock(),
            request_id=state["request_id"],
            user=state.get("user"),
            backend=answered["backend"] if answered else None,
            model=answered["model"] if answered else (attempts[-1]["model"] if attempts else None),
            prompt_tokens=usage["prompt_tokens"] if usage and answered else 0,
            completion_tokens=usage["completion_tokens"] if usage and answered else 0,
            cost_usd=cost,
            latency_ms=round((time.time() - state["started_at"]) * 1000, 3),
            status="ok" if answered else "failed",
            routing_reason=reason,
            complexity_score=complexity["score"],
            complexity_level=complexity["level"],
            fallbacks=len(failures) if answered else max(len(failures) - 1, 0),
            error="; ".join(f"{a['backend']}: {a['error']}" for a in failures) or None,
        )
    )
    if answered is None:
        raise AllBackendsFailedError([dict(a) for a in attempts])
    routing: Routing = {
        "backend": answered["backend"],
        "model": answered["model"],
        "reason": reason,
        "complexity": complexity,
        "attempts": attempts,
    }
    return {"routing": routing, "cost_usd": cost}
