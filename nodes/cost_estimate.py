"""A prompt's cost estimate, with the router's own view of the prompt; no step of a graph.

The MCP tool ``estimate_cost`` and the chat graph's cost answers price a prompt
as the router would route it: its validation, token count, complexity score
and model selection (the ``analyze_complexity`` and ``select_model`` rules)
give a :class:`state.reporting.estimates.RoutedPrompt`, which
:func:`state.reporting.estimates.price_prompt` prices on every catalog model.
The rules live here, beside the steps, because ``state`` never imports
``nodes``.
"""

from __future__ import annotations

from typing import Any, cast

from backends.catalog import Catalog
from backends.tokens import count_message_tokens
from nodes.analyze_complexity import (
    complexity_level,
    complexity_score,
    score_features,
    validate_request,
)
from nodes.select_model import fits, pick_model, required_tier
from state.reporting.estimates import Estimate, RoutedPrompt, price_prompt
from state.schemas import BACKENDS, Backend, ChatMessage, Complexity, CostPriority, RouterState
from state.settings import Settings


def route_prompt(
    catalog: Catalog,
    messages: list[ChatMessage],
    max_tokens: int,
    cost_priority: CostPriority | None = None,
) -> RoutedPrompt:
    """Return what the router's analysis and selection would make of a request.

    Args:
        catalog: The model catalog.
        messages: The chat messages of the request.
        max_tokens: The most output tokens the request may produce.
        cost_priority: The router's cost priority; None means ``balanced``.

    Returns:
        The prompt's token count and complexity, the tier it needs, the model
        each backend would pick and the models whose context window it fits.

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
    picks: dict[Backend, str | None] = {}
    for backend in BACKENDS:
        model = pick_model(catalog, backend, tier, prompt_tokens, max_tokens)
        picks[backend] = model.id if model else None
    return RoutedPrompt(
        prompt_tokens=prompt_tokens,
        complexity=complexity,
        cost_priority=priority,
        required_tier=tier,
        picks=picks,
        fitting=frozenset(m.id for m in catalog.models if fits(m, prompt_tokens, max_tokens)),
    )


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
    routed = route_prompt(catalog, messages, max_tokens, cost_priority)
    return price_prompt(catalog, settings, routed, max_tokens)
