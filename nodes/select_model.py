"""Pick a model for each backend by complexity, cost priority, capabilities and context window.

A model is a candidate only when it offers what the request uses (tools, JSON
mode or schema, image input, logprobs) and holds the prompt plus ``max_tokens``.
A conversation too long for every such model loses its oldest turns (system
messages and the latest user turn are kept) until it fits the largest; when
even the latest turn does not fit, the request is refused before any backend
is called.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langgraph.runtime import Runtime

from backends.catalog import Catalog, ModelSpec
from backends.tokens import count_message_tokens
from state.chat_fields import FieldError
from state.context import Context, resolve_services
from state.errors import BadRequestError, PromptTooLargeError
from state.schemas import BACKENDS, Backend, ComplexityLevel, CostPriority, RouterState

LEVEL_TIER: dict[ComplexityLevel, int] = {"low": 1, "medium": 2, "high": 3}
_CAPABILITY_NAMES = {
    "tools": "tool calling",
    "json_mode": "JSON mode",
    "json_schema": "JSON-schema structured output",
    "vision": "image input",
    "logprobs": "logprobs",
}


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
    catalog: Catalog,
    backend: Backend,
    tier: int,
    prompt_tokens: int,
    output_tokens: int,
    needs: Mapping[str, str] | None = None,
) -> ModelSpec | None:
    """Return the cheapest model on ``backend`` of at least ``tier`` that fits and can serve.

    With none of that tier, the best-tier model that fits; with none that fits, None.
    """
    needed = needs or {}
    fitting = [
        m
        for m in catalog.by_price
        if m.offered_on(backend) and m.supports(needed) and fits(m, prompt_tokens, output_tokens)
    ]
    good_enough = [m for m in fitting if m.tier >= tier]
    if good_enough:
        return good_enough[0]
    return max(fitting, key=lambda m: m.tier, default=None)


def unsupported(model: ModelSpec, needs: Mapping[str, str]) -> FieldError | None:
    """Return the error for the first need ``model`` lacks, naming the field that asks it."""
    for capability, field_name in needs.items():
        if capability not in model.capabilities:
            return FieldError(
                f"model {model.id} does not offer {_CAPABILITY_NAMES[capability]}, which "
                f"'{field_name}' asks for; use model 'auto' or a model that offers it "
                "(GET /v1/models lists each model's capabilities)",
                param=field_name,
                code="unsupported_parameter",
            )
    return None


def trim_to_fit(
    messages: list[dict[str, Any]], context_window: int, output_tokens: int
) -> tuple[list[dict[str, Any]], int, int]:
    """Drop the oldest turns until the conversation fits ``context_window``.

    System and developer messages stay, and so does the latest user turn and
    all that follows it; a turn starts at a user message, so no tool result
    is kept without the call that asked for it.

    Returns:
        The kept messages, their token count, and how many messages were dropped.
    """
    pinned = {i for i, m in enumerate(messages) if m.get("role") in ("system", "developer")}
    last_user = max(
        (i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages) - 1
    )
    dropped: set[int] = set()
    kept = messages
    tokens = count_message_tokens(kept)
    cursor = 0
    while tokens + output_tokens > context_window:
        # drop one whole turn: the next droppable message and its replies
        while cursor < last_user and cursor in pinned:
            cursor += 1
        if cursor >= last_user:
            break
        dropped.add(cursor)
        cursor += 1
        while cursor < last_user and messages[cursor].get("role") not in ("user", "system"):
            if cursor not in pinned:
                dropped.add(cursor)
            cursor += 1
        kept = [m for i, m in enumerate(messages) if i not in dropped]
        tokens = count_message_tokens(kept)
    return kept, tokens, len(dropped)


def _too_large(largest: ModelSpec, prompt_tokens: int, output_tokens: int) -> PromptTooLargeError:
    return PromptTooLargeError(
        f"the prompt ({prompt_tokens} tokens) plus max_tokens ({output_tokens}) needs "
        f"{prompt_tokens + output_tokens} tokens, more than any model's context window "
        f"(largest that can serve it: {largest.id}, {largest.context_window}); shorten the "
        "latest message or lower max_tokens"
    )


def _eligible(catalog: Catalog, requested: str | None, needs: Mapping[str, str]) -> list[ModelSpec]:
    """Return the models this request may run on, or raise naming what is wrong."""
    if requested and requested != "auto":
        spec = catalog.by_id.get(requested)
        if spec is None:
            raise BadRequestError(
                f"model {requested!r} is not in the catalog; use 'auto' or one of "
                f"{', '.join(catalog.ids())}"
            )
        error = unsupported(spec, needs)
        if error is not None:
            raise error
        return [spec]
    able = [m for m in catalog.models if m.supports(needs)]
    if not able:
        first = next(iter(needs))
        raise FieldError(
            f"no model of the router offers {_CAPABILITY_NAMES[first]}, which "
            f"'{needs[first]}' asks for; leave '{needs[first]}' out",
            param=needs[first],
            code="unsupported_parameter",
        )
    return able


async def select_model(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Choose the model each backend would run, checking capabilities and context windows."""
    services = await resolve_services(runtime.context)
    catalog = services.catalog
    prompt_tokens = state["prompt_tokens_estimate"]
    output_tokens = state["output_tokens_cap"]
    needs = state.get("requires") or {}
    requested = state.get("model")
    eligible = _eligible(catalog, requested, needs)
    update: dict[str, Any] = {}
    dropped = 0

    largest = max(eligible, key=lambda m: m.context_window)
    if not fits(largest, prompt_tokens, output_tokens):
        kept, prompt_tokens, dropped = trim_to_fit(
            state["prompt_messages"], largest.context_window, output_tokens
        )
        if not fits(largest, prompt_tokens, output_tokens):
            raise _too_large(largest, prompt_tokens, output_tokens)
        update.update(prompt_messages=kept, prompt_tokens_estimate=prompt_tokens)

    if requested and requested != "auto":
        spec = eligible[0]
        candidates = {b: spec.id for b in BACKENDS if spec.offered_on(b)}
        reason = f"{spec.id} as requested"
    else:
        level = state["complexity"]["level"]
        priority: CostPriority = state.get("cost_priority") or "balanced"
        tier = required_tier(level, priority)
        candidates = {}
        for backend in BACKENDS:
            model = pick_model(catalog, backend, tier, prompt_tokens, output_tokens, needs)
            if model is not None:
                candidates[backend] = model.id
        if not candidates:
            raise _too_large(largest, prompt_tokens, output_tokens)
        chosen = sorted(set(candidates.values()))
        reason = f"{level} complexity, {priority} priority: tier {tier} ({', '.join(chosen)})"
        if any(catalog.by_id[m].tier < tier for m in chosen):
            reason += "; no model of that tier fits on every backend"
        if needs:
            reason += f"; needs {', '.join(sorted(needs))}"
    if dropped:
        reason += f"; dropped the {dropped} oldest messages to fit"
    update.update(candidates=candidates, selection_reason=reason)
    update["decisions"] = {"select_model": {"candidates": candidates, "reason": reason}}
    return update
