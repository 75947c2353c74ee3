"""What the two generate nodes share: the request body, the call, the attempt record.

A failed call raises :class:`BackendError`; the node's retry policy retries a
transient failure once, and the node's error handler (:mod:`nodes.fallback`)
records the failed attempt and follows the fallback edge.
"""

from __future__ import annotations

import time
from typing import Any

from langgraph.config import get_stream_writer
from langgraph.types import RetryPolicy

from backends.openai_compat import ChatResult, OpenAICompatClient
from state.errors import BackendError
from state.schemas import Attempt, Backend, RouterState


def is_transient(error: Exception) -> bool:
    """Say whether a failure is worth one more try on the same backend."""
    return isinstance(error, BackendError) and error.transient


# One retry layer only: the HTTP client does not retry, this policy does.
GENERATE_RETRY = RetryPolicy(
    max_attempts=2, initial_interval=0.05, backoff_factor=2.0, jitter=True, retry_on=is_transient
)


def chat_payload(state: RouterState, model: str) -> dict[str, Any]:
    """Build the OpenAI chat-completions body for ``model``."""
    payload: dict[str, Any] = {
        "model": model,
        "messages": state["messages"],
        "max_tokens": state["output_tokens_cap"],
    }
    if state.get("temperature") is not None:
        payload["temperature"] = state["temperature"]
    if state.get("user"):
        payload["user"] = state["user"]
    return payload


async def call_backend(
    client: OpenAICompatClient, backend: Backend, state: RouterState, model: str, served: str
) -> ChatResult:
    """Call one backend, streaming token deltas to the graph's custom stream when asked."""
    payload = chat_payload(state, served)
    started = time.perf_counter()
    streamed = False
    try:
        if state.get("stream"):
            writer = get_stream_writer()

            def forward(text: str) -> None:
                nonlocal streamed
                streamed = True
                writer({"event": "token", "backend": backend, "text": text})

            return await client.stream(payload, forward)
        return await client.complete(payload)
    except BackendError as error:
        if streamed:
            # the caller already holds part of this answer: a retry would repeat its start
            error.transient = False
            error.detail += " (after the answer began streaming)"
        error.model = model
        error.latency_ms = (time.perf_counter() - started) * 1000  # type: ignore[attr-defined]
        raise


def success_update(backend: Backend, model: str, result: ChatResult) -> dict[str, Any]:
    """Return the state update of a successful call."""
    attempt: Attempt = {
        "backend": backend,
        "model": model,
        "status": "ok",
        "error": None,
        "latency_ms": round(result.latency_s * 1000, 3),
    }
    return {
        "attempts": [attempt],
        "response": {"role": "assistant", "content": result.content},
        "finish_reason": result.finish_reason,
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }
