"""Choose serverless or gpu for the first attempt, and which backends may take a fallback.

The budget is checked after this step (``check_budget``), and only when
serverless takes the attempt; over budget, that step moves it to the GPU pool.
"""

from __future__ import annotations

import zlib
from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import Command

from backends.gpu_pool.affinity import prefix_key
from nodes.generation import cached_answer
from state.context import Context, Services, resolve_services
from state.errors import NoBackendAvailableError
from state.response_cache import cache_key
from state.schemas import Backend, RouterState


def serverless_bucket(request_id: str) -> float:
    """Map a request id to a stable number in [0, 1) for the serverless share cap."""
    return zlib.crc32(request_id.encode()) / 2**32


def allowed_backends(state: RouterState, services: Services) -> tuple[list[Backend], list[str]]:
    """Return the backends this request may use at all, and why the others may not."""
    settings = services.settings
    candidates = state["candidates"]
    allowed: list[Backend] = []
    why_not: list[str] = []
    tokens = state["prompt_tokens_estimate"] + state["output_tokens_cap"]
    if "serverless" not in candidates:
        why_not.append("no serverless model fits")
    elif settings.disable_lambda_labs:
        why_not.append("serverless is disabled (DISABLE_LAMBDA_LABS)")
    elif not services.providers.serving(candidates["serverless"], tokens):
        why_not.append(services.providers.why_none(candidates["serverless"], tokens))
    elif settings.serverless_ratio <= 0:
        why_not.append("SERVERLESS_RATIO is 0")
    else:
        allowed.append("serverless")
    if "gpu" not in candidates:
        why_not.append("no GPU-pool model fits")
    elif not services.gpu_pool:
        why_not.append("no GPU_ENDPOINTS are set")
    else:
        allowed.append("gpu")
    return allowed, why_not


def decide_backend(
    state: RouterState, services: Services, allowed: list[Backend], why_not: list[str]
) -> tuple[Backend, str]:
    """Return the backend of the first attempt and a short human reason."""
    forced = state.get("force_backend")
    if forced:
        if forced not in allowed:
            raise NoBackendAvailableError(
                f"force_backend={forced} but that backend may not serve this request "
                f"({'; '.join(why_not)}); drop force_backend or change the configuration"
            )
        return forced, f"{forced} forced by the caller"
    if not allowed:
        raise NoBackendAvailableError(
            f"no backend may serve this request ({'; '.join(why_not)}); "
            "configure SERVERLESS_PROVIDERS or GPU_ENDPOINTS"
        )
    if len(allowed) == 1:
        only = allowed[0]
        return only, f"{only} is the only backend allowed ({'; '.join(why_not)})"

    catalog = services.catalog
    candidates = state["candidates"]
    gpu_model = catalog.by_id[candidates["gpu"]]
    serverless_model = catalog.by_id[candidates["serverless"]]
    pool = services.gpu_pool
    ratio = services.settings.serverless_ratio
    may_overflow = serverless_bucket(state.get("request_id") or "") < ratio

    served = gpu_model.served_name("gpu")
    tokens = state["prompt_tokens_estimate"] + state["output_tokens_cap"]
    if pool.pick(served, tokens) is None:
        return "serverless", pool.unavailable_reason(served, tokens)
    if serverless_model.tier > gpu_model.tier and may_overflow:
        return "serverless", (
            f"{serverless_model.id} (tier {serverless_model.tier}) beats the GPU pool's "
            f"{gpu_model.id} (tier {gpu_model.tier}) for this request"
        )
    # a slot counted in flight now, so concurrent requests cannot all take the same room
    prefix = prefix_key(served, state.get("prompt_messages") or [])
    slot = pool.admit(served, tokens, state["request_id"], prefix=prefix)
    if slot is not None:
        reason = "the GPU pool has spare capacity and is already paid for"
        if slot.affinity:
            reason += f"; {slot.endpoint.shown} holds this conversation's prefix"
        return "gpu", reason
    if may_overflow:
        return "serverless", "the GPU pool is busy; overflow to serverless"
    return "gpu", f"the GPU pool is busy but serverless is capped at {ratio:.0%} of traffic"


def needs_budget_check(backend: Backend) -> Literal["check_budget", "generate_gpu"]:
    """Does the first attempt spend serverless budget (check it) or go to the GPU pool?"""
    if backend == "serverless":
        return "check_budget"
    if backend == "gpu":
        return "generate_gpu"
    raise ValueError(f"no backend was chosen (got {backend!r})")


async def choose_backend(
    state: RouterState, runtime: Runtime[Context]
) -> Command[Literal["check_budget", "generate_gpu", "track_usage"]]:
    """Choose the first backend to try, and go to the budget check or straight to the GPU.

    An identical deterministic request answered before is served from the
    response cache instead, at no cost, straight to ``track_usage``.
    """
    services = await resolve_services(runtime.context)
    key = cache_key(state, services.settings)
    if key is not None:
        entry = await services.cache.get(key)
        if entry is not None:
            return Command(goto="track_usage", update=cached_answer(state, entry))
    await services.gpu_pool.ensure_probed()
    allowed, why_not = allowed_backends(state, services)
    claim = None
    if not state.get("force_backend"):
        # a standing instruction ("route the next 10 queries to GPU") acts as a force
        claim = await services.overrides.claim(state["complexity"]["level"], allowed)
    backend: Backend
    if claim is not None:
        backend, reason = ("gpu" if claim.backend == "gpu" else "serverless"), claim.reason
    else:
        backend, reason = decide_backend(state, services, allowed, why_not)
    update: dict[str, Any] = {
        "backend": backend,
        "backend_reason": reason,
        "allowed_backends": allowed,
        "decisions": {"choose_backend": {"backend": backend, "reason": reason, "allowed": allowed}},
    }
    if key is not None or state.get("cache_key") is not None:
        update["cache_key"] = key  # track_usage keeps the answer under it
    return Command(goto=needs_budget_check(backend), update=update)
