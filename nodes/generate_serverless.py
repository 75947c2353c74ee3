"""Generate the answer on the serverless API, under a budget hold.

The first attempt's hold is taken by ``check_budget``; a fallback from the GPU
pool holds here, through the same owner (``state.reservations``). A refused
hold is a failed attempt like any other: the request ends at ``track_usage``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import Command

from backends.errors import BackendError
from nodes.check_budget import spend_request
from nodes.generation import call_backend, fail_over, failed_attempt, retry_here, success_update
from state.budgets import Refused
from state.context import Context, resolve_services
from state.schemas import RouterState


async def generate_serverless(
    state: RouterState, runtime: Runtime[Context]
) -> Command[Literal["generate_gpu", "track_usage"]]:
    """Send the request to the serverless API; on failure, fall back to the GPU pool."""
    services = await resolve_services(runtime.context)
    model = services.catalog.by_id[state["candidates"]["serverless"]]
    client = services.serverless
    update: dict[str, Any] = {}
    held = state.get("reservation")
    try:
        if client is None:
            raise BackendError("serverless", model.id, "no serverless API is configured")
        if held is None:
            hold = await services.reservations.hold(model, spend_request(state))
            if isinstance(hold, Refused):
                raise BackendError("serverless", model.id, hold.reason())
            held = update["reservation"] = hold
        result, message = await call_backend(
            client, "serverless", state, model.id, model.served_name("serverless")
        )
    except BackendError as error:
        if await retry_here(error, runtime):
            if "reservation" in update:
                # this try's update is lost when it raises: give its hold back first
                await services.reservations.release(update["reservation"])
            raise
        attempt = failed_attempt("serverless", model.id, error)
        return fail_over(state, "serverless", attempt, error, **update)
    except asyncio.CancelledError:
        # the run ends here without track_usage: nothing will settle the hold
        if held is not None:
            await services.reservations.release_shielded(held)
        raise
    return Command(
        goto="track_usage",
        update={**update, **success_update("serverless", model.id, result, message)},
    )
