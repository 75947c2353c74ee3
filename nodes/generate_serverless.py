"""Generate the answer on the serverless API."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from nodes.generation import call_backend, success_update
from state.context import Context, resolve_services
from state.errors import BackendError
from state.schemas import RouterState


async def generate_serverless(state: RouterState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Send the request to the serverless API."""
    services = await resolve_services(runtime.context)
    model = services.catalog.by_id[state["candidates"]["serverless"]]
    client = services.serverless
    if client is None:
        raise BackendError("serverless", model.id, "no serverless API is configured")
    result = await call_backend(
        client, "serverless", state, model.id, model.served_name("serverless")
    )
    return success_update("serverless", model.id, result)
