"""Generate the answer on a GPU endpoint; on failure, another endpoint, then serverless.

An endpoint that fails (timeout, connection error, 401, 403, 408, 425, 429,
5xx, an answer the server aborted) hands the request to another healthy
endpoint that serves the model, along this node's edge to itself, before the
fallback edge to serverless; unless the caller already holds part of the
answer (streamed), which another endpoint's answer cannot continue.

The request's slot was admitted when ``choose_backend`` chose the pool (it has
counted in flight since); otherwise this node takes one on the least-loaded
endpoint. One retry layer, the node's retry policy: a transient failure raises
and the node runs again, on another endpoint when one may serve the request.
The failed attempt of the run that raised would be lost with its update, so
the pool keeps it for the next run (keyed by request id), and the attempts of
every endpoint tried reach the state together: one per endpoint, its last
outcome (a retry on the same endpoint, when no other may serve the request, is
that endpoint's attempt tried again, as a retry on the same serverless API is).

A later turn of a conversation prefers the endpoint that answered the earlier
ones (its prefix cache holds them: :mod:`backends.gpu_pool.affinity`); after a
success, the pool remembers this endpoint for the conversation's next turn.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import Command

from backends.errors import BackendError
from backends.gpu_pool import GpuPool
from backends.gpu_pool.affinity import affinity_keys
from nodes.check_budget import request_tokens
from nodes.generation import (
    answer_dict,
    call_backend,
    fail_over,
    failed_attempt,
    next_backend,
    retry_here,
    success_update,
)
from state.context import Context, resolve_services
from state.schemas import RouterState


def tried_endpoints(state: RouterState) -> set[str]:
    """Return the URLs of the GPU endpoints this request already failed on."""
    return {
        url
        for a in state.get("attempts") or []
        if a["backend"] == "gpu" and a["status"] == "failed" and (url := a.get("endpoint"))
    }


def no_endpoint(state: RouterState, pool: GpuPool, model: str, served: str) -> BackendError:
    """Say why no endpoint takes the request: an outage, or a request too long for the pool.

    Too long for every server that serves the model, with no other backend to
    try, is the caller's error (vLLM's own 400, before any call); otherwise it
    is an outage of the pool and the request falls back.
    """
    tokens = request_tokens(state)
    reason = pool.unavailable_reason(served, tokens)
    longest = pool.context_limit(served)
    if longest is None or longest >= tokens or next_backend(state, "gpu") is not None:
        return BackendError("gpu", model, reason)
    prompt = state["prompt_tokens_estimate"]
    message = (
        f"This model's maximum context length is {longest} tokens on every GPU endpoint "
        f"that serves it; this request needs about {tokens} ({prompt} prompt tokens and "
        f"max_tokens {state['output_tokens_cap']}), so it was not sent. Send a shorter "
        "conversation or a lower max_tokens."
    )
    body = {
        "message": message,
        "type": "invalid_request_error",
        "param": "input_tokens" if prompt >= longest else "max_tokens",
        "code": "context_length_exceeded",
    }
    # shaped like the backend's own refusal (the ledger's error reads "gpu: HTTP 400: ...")
    return BackendError("gpu", model, f"HTTP 400: {message}", status=400, body=body)


async def generate_gpu(
    state: RouterState, runtime: Runtime[Context]
) -> Command[Literal["generate_gpu", "generate_serverless", "track_usage"]]:
    """Send the request to a GPU endpoint; on failure, another endpoint, then serverless."""
    services = await resolve_services(runtime.context)
    model = services.catalog.by_id[state["candidates"]["gpu"]]
    served = model.served_name("gpu")
    pool = services.gpu_pool
    await pool.ensure_probed()
    tokens = request_tokens(state)
    tried = tried_endpoints(state)
    prefix, next_key = affinity_keys(served, state.get("prompt_messages") or [])
    ticket = pool.checkout(
        state.get("request_id") or "", served, tokens, avoid=tried, prefix=prefix
    )
    slot = ticket.slot
    try:
        if slot is None:
            raise no_endpoint(state, pool, model.id, served)
        async with pool.lease(slot):
            result, message = await call_backend(
                slot.endpoint.client, "gpu", state, model.id, served
            )
    except BackendError as error:
        url = slot.endpoint.shown if slot is not None else None
        attempt = failed_attempt("gpu", model.id, error, url)
        if not error.client_error and not error.partial and url is not None:
            if pool.another(served, tokens, tried | ticket.tried | {url}) is not None:
                # a timeout, a 401 or a blip on this endpoint: another healthy one takes it
                # before serverless does (this edge before the fallback edge)
                return Command(goto="generate_gpu", update={"attempts": ticket.record(attempt)})
        # a hop to another endpoint was this request's second try: no retry after one
        if not tried and await retry_here(error, runtime):
            pool.carry_over(ticket, attempt)  # the next run reports it
            raise
        command = fail_over(state, "gpu", attempt, error)
        failed = {**(command.update or {}), "attempts": ticket.record(attempt)}
        return dataclasses.replace(command, update=failed)
    finally:
        if slot is not None:
            pool.release(slot)  # the lease released it already, unless it never began
    # the next turn's prefix is this conversation and this answer: it finds this endpoint
    pool.remember(next_key(answer_dict(message)), slot.endpoint)
    extra: dict[str, Any] = {"endpoint": slot.endpoint.shown}
    if slot.affinity:
        extra["affinity"] = True
    update: dict[str, Any] = success_update("gpu", model.id, result, message, **extra)
    (answered,) = update["attempts"]
    update["attempts"] = ticket.record(answered)
    return Command(goto="track_usage", update=update)
