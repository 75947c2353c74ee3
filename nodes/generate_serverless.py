"""Generate the answer on the serverless API, under a budget reservation."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from nodes.check_budget import reserve_serverless
from nodes.generation import call_backend, success_update
from state.context import Context, resolve_services
from state.errors import BackendError
from state.schemas import RouterState


async def generate_serverless(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Send the request to the serverless API; reserve first if no reservation is held."""
    services = await resolve_services(runtime.context)
    model = services.catalog.by_id[state["candidates"]["serverless"]]
    client = services.serverless
    if client is None:
        raise BackendError("serverless", model.id, "no serverless API is configured")
    held = state.get("reservation")
    reserved_here = held is None
    if held is None:
        # a fallback from the GPU pool: serverless spends only under a reservation
        held, refused = await reserve_serverless(state, services, model)
        if refused is not None:
            raise BackendError("serverless", model.id, refused.reason())
    assert held is not None
    try:
        result = await call_backend(
            client, "serverless", state, model.id, model.served_name("serverless")
        )
    except BaseException:
        if reserved_here:
            # this node's update is lost when it raises: give the hold back now
            await services.budgets.release(held["id"])
        raise
    return {**success_update("serverless", model.id, result), "reservation": held}
