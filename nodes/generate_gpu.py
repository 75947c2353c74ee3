"""Generate the answer on the least-loaded healthy endpoint of the GPU pool."""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import Command

from backends.errors import BackendError
from nodes.generation import call_backend, fail_over, failed_attempt, retry_here, success_update
from state.context import Context, resolve_services
from state.schemas import RouterState


async def generate_gpu(
    state: RouterState, runtime: Runtime[Context]
) -> Command[Literal["generate_serverless", "track_usage"]]:
    """Send the request to a GPU endpoint; on failure, fall back to serverless."""
    services = await resolve_services(runtime.context)
    model = services.catalog.by_id[state["candidates"]["gpu"]]
    served = model.served_name("gpu")
    pool = services.gpu_pool
    endpoint = pool.pick(served)
    try:
        if endpoint is None:
            raise BackendError("gpu", model.id, pool.unavailable_reason())
        async with pool.lease(endpoint):
            result, message = await call_backend(endpoint.client, "gpu", state, model.id, served)
    except BackendError as error:
        if await retry_here(error, runtime):
            raise
        url = endpoint.url if endpoint is not None else None
        return fail_over(state, "gpu", failed_attempt("gpu", model.id, error, url), error)
    update: dict[str, Any] = success_update("gpu", model.id, result, message, endpoint=endpoint.url)
    return Command(goto="track_usage", update=update)
