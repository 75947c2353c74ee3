"""Generate the answer on the least-loaded healthy endpoint of the GPU pool."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from nodes.generation import call_backend, success_update
from state.context import Context, resolve_services
from state.errors import BackendError
from state.schemas import RouterState


async def generate_gpu(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Send the request to a GPU endpoint; a failed endpoint cools off."""
    services = await resolve_services(runtime.context)
    model = services.catalog.by_id[state["candidates"]["gpu"]]
    served = model.served_name("gpu")
    pool = services.gpu_pool
    endpoint = pool.pick(served)
    if endpoint is None:
        raise BackendError("gpu", model.id, pool.unavailable_reason())
    endpoint.in_flight += 1
    try:
        result = await call_backend(endpoint.client, "gpu", state, model.id, served)
    except BackendError as error:
        pool.mark_failure(endpoint, error.detail)
        raise
    finally:
        endpoint.in_flight -= 1
    pool.mark_success(endpoint)
    return success_update("gpu", model.id, result)
