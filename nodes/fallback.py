"""Fallback edges: after a backend has failed (retries spent), try the other one.

These are the generate nodes' error handlers. Each records the failed attempt
and sends the request to the other backend when that one is allowed and not
yet tried, else on to ``track_usage``, which records the failure.
"""

from __future__ import annotations

import logging
from typing import Literal

from langgraph.errors import NodeError
from langgraph.types import Command

from state.errors import BackendError
from state.schemas import Attempt, Backend, RouterState

logger = logging.getLogger(__name__)


def failed_attempt(backend: Backend, state: RouterState, error: BaseException) -> Attempt:
    """Describe a failed call for the state, without secrets or prompt text."""
    if isinstance(error, BackendError):
        message = error.detail
        model = error.model
        latency_ms = float(getattr(error, "latency_ms", 0.0))
    else:
        # A bug of ours, not the backend's: keep the trace in the log.
        logger.error("generate_%s crashed", backend, exc_info=error)
        message = f"internal error ({type(error).__name__})"
        model = state.get("candidates", {}).get(backend, "")
        latency_ms = 0.0
    return {
        "backend": backend,
        "model": model,
        "status": "failed",
        "error": message,
        "latency_ms": round(latency_ms, 3),
    }


def next_backend(state: RouterState, failed: Backend) -> Backend | None:
    """Return the backend to fall back to after ``failed``, or None."""
    other: Backend = "gpu" if failed == "serverless" else "serverless"
    tried = {a["backend"] for a in state.get("attempts", [])} | {failed}
    if other in state.get("allowed_backends", []) and other not in tried:
        return other
    return None


def fall_back_from_serverless(
    state: RouterState, error: NodeError
) -> Command[Literal["generate_gpu", "track_usage"]]:
    """Record the serverless failure and try the GPU pool if it may serve."""
    update = {"attempts": [failed_attempt("serverless", state, error.error)]}
    if next_backend(state, "serverless"):
        return Command(goto="generate_gpu", update=update)
    return Command(goto="track_usage", update=update)


def fall_back_from_gpu(
    state: RouterState, error: NodeError
) -> Command[Literal["generate_serverless", "track_usage"]]:
    """Record the GPU failure and try serverless if it may serve."""
    update = {"attempts": [failed_attempt("gpu", state, error.error)]}
    if next_backend(state, "gpu"):
        return Command(goto="generate_serverless", update=update)
    return Command(goto="track_usage", update=update)
