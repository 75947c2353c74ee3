"""Generate the answer on a serverless provider, under a budget hold at its price.

Providers are tried in order of priority, each only if it serves the model
(and the request fits its context window). A provider that fails (timeout,
connection error, 401, 403, 408, 425, 429, 5xx) hands the request to the next
one, along this node's edge to itself; after the last, the GPU pool takes it.
A client error (another 4xx) goes back to the caller at once.

The first attempt's hold is taken by ``check_budget``, at the price of the
provider tried first; when another provider with another price takes the
request, the hold is moved to that price (``state.reservations`` owns it). A
fallback from the GPU pool holds here. A refused hold is a failed attempt like
any other.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import Command

from backends.errors import BackendError
from nodes.check_budget import request_tokens, spend_request
from nodes.generation import call_backend, fail_over, failed_attempt, retry_here, success_update
from state.budgets import Refused
from state.context import Context, resolve_services
from state.schemas import RouterState


def tried_providers(state: RouterState) -> set[str]:
    """Return the serverless providers this request already failed on."""
    return {
        name
        for a in state.get("attempts") or []
        if a["backend"] == "serverless" and a["status"] == "failed" and (name := a.get("provider"))
    }


async def generate_serverless(
    state: RouterState, runtime: Runtime[Context]
) -> Command[Literal["generate_serverless", "generate_gpu", "track_usage"]]:
    """Send the request to the next serverless provider; on failure, the next one or the GPU."""
    services = await resolve_services(runtime.context)
    model = services.catalog.by_id[state["candidates"]["serverless"]]
    providers = services.providers
    tokens = request_tokens(state)
    tried = tried_providers(state)
    choice = providers.first(model.id, tokens, skip=tried)
    name = choice[0].name if choice is not None else None
    update: dict[str, Any] = {}
    held = state.get("reservation")
    moved = False
    try:
        if choice is None:
            raise BackendError("serverless", model.id, providers.why_none(model.id, tokens))
        provider, offer = choice
        if held is None or held.get("provider") != provider.name:
            spend = spend_request(state)
            reservations = services.reservations
            if held is None:
                hold = await reservations.hold(model, spend, offer, provider.name)
            else:
                hold = await reservations.move(held, model, spend, offer, provider.name)
                moved = not isinstance(hold, Refused)
            if isinstance(hold, Refused):
                update["budget_refused"] = True  # counted in the reports
                raise BackendError(provider.name, model.id, f"{hold.reason()} at its price")
            held = update["reservation"] = hold
        result, message = await call_backend(
            provider.client, "serverless", state, model.id, offer.name
        )
    except BackendError as error:
        attempt = failed_attempt("serverless", model.id, error, provider=name)
        if not error.client_error and not error.partial and name is not None:
            if providers.first(model.id, tokens, skip=tried | {name}) is not None:
                # the next provider takes it (this edge before the GPU pool's)
                return Command(goto="generate_serverless", update={**update, "attempts": [attempt]})
        # a hop to another provider was this request's second try: no retry after one
        if not tried and not moved and await retry_here(error, runtime):
            if "reservation" in update:
                # this try's update is lost when it raises: give its hold back first
                await services.reservations.release(update["reservation"])
            raise
        return fail_over(state, "serverless", attempt, error, **update)
    except asyncio.CancelledError:
        # the run ends here without track_usage: nothing will settle the hold
        if held is not None:
            await services.reservations.release_shielded(held)
        raise
    return Command(
        goto="track_usage",
        update={
            **update,
            **success_update("serverless", model.id, result, message, provider=provider.name),
        },
    )
