"""Pick a model for each backend by complexity, cost priority and context window."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from backends.catalog import Catalog, ModelSpec
from state.context import Context, resolve_services
from state.errors import BadRequestError, PromptTooLargeError
from state.schemas import BACKENDS, Backend, ComplexityLevel, CostPriority, RouterState

LEVEL_TIER: dict[ComplexityLevel, int] = {"low": 1, "medium": 2, "high": 3}


def required_tier(level: ComplexityLevel, priority: CostPriority) -> int:
    """Return the quality tier a request needs, given its level and cost priority."""
    tier = LEVEL_TIER[level]
    if priority == "low_cost":
        tier -= 1
    elif priority == "performance":
        tier += 1
    elif priority == "latency_critical":
        # the smallest model answers fastest; only hard requests get a medium one
        tier = 2 if level == "high" else 1
    return max(1, min(3, tier))


def fits(model: ModelSpec, prompt_tokens: int, output_tokens: int) -> bool:
    """Say whether the prompt plus the requested output fits the model's context window."""
    return prompt_tokens + output_tokens <= model.context_window


def pick_model(
    catalog: Catalog, backend: Backend, tier: int, prompt_tokens: int, output_tokens: int
) -> ModelSpec | None:
    """Return the cheapest model on ``backend`` of at least ``tier`` that fits.

    With none of that tier, the best-tier model that fits; with none that fits, None.
    """
    fitting = [
        m
        for m in catalog.by_price
        if m.offered_on(backend) and fits(m, prompt_tokens, output_tokens)
    ]
    good_enough = [m for m in fitting if m.tier >= tier]
    if good_enough:
        return good_enough[0]
    return max(fitting, key=lambda m: m.tier, default=None)


def _too_large(catalog: Catalog, prompt_tokens: int, output_tokens: int) -> PromptTooLargeError:
    largest = max(catalog.models, key=lambda m: m.context_window)
    return PromptTooLargeError(
        f"the prompt ({prompt_tokens} tokens) plus max_tokens ({output_tokens}) needs "
        f"{prompt_tokens + output_tokens} tokens, more than any model's context window "
        f"(largest: {largest.id}, {largest.context_window}); shorten the conversation "
        "or lower max_tokens"
    )


async def select_model(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Choose the model each backend would run, checking context windows."""
    services = await resolve_services(runtime.context)
    catalog = services.catalog
    prompt_tokens = state["prompt_tokens_estimate"]
    output_tokens = state["output_tokens_cap"]
    requested = state.get("model")

    if requested and requested != "auto":
        spec = catalog.by_id.get(requested)
        if spec is None:
            raise BadRequestError(
                f"model {requested!r} is not in the catalog; use 'auto' or one of "
                f"{', '.join(catalog.ids())}"
            )
        if not fits(spec, prompt_tokens, output_tokens):
            raise PromptTooLargeError(
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({output_tokens}) exceeds "
                f"{spec.id}'s context window ({spec.context_window}); shorten the conversation, "
                "lower max_tokens, or use model 'auto'"
            )
        candidates = {b: spec.id for b in BACKENDS if spec.offered_on(b)}
        return {
            "candidates": candidates,
            "selection_reason": f"{spec.id} as requested",
        }

    level = state["complexity"]["level"]
    priority: CostPriority = state.get("cost_priority") or "balanced"
    tier = required_tier(level, priority)
    candidates = {}
    for backend in BACKENDS:
        model = pick_model(catalog, backend, tier, prompt_tokens, output_tokens)
        if model is not None:
            candidates[backend] = model.id
    if not candidates:
        raise _too_large(catalog, prompt_tokens, output_tokens)
    chosen = sorted(set(candidates.values()))
    reason = f"{level} complexity, {priority} priority: tier {tier} ({', '.join(chosen)})"
    if any(catalog.by_id[m].tier < tier for m in chosen):
        reason += "; no model of that tier fits on every backend"
    return {"candidates": candidates, "selection_reason": reason}
