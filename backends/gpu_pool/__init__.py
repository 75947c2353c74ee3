"""The pool of dedicated GPU servers (vLLM): see :mod:`backends.gpu_pool.pool`."""

from backends.gpu_pool.endpoint import GpuEndpoint, Slot, Ticket, _parse_gauges, shown_url
from backends.gpu_pool.pool import (
    FAILURES_BEFORE_COOLDOWN,
    FIRST_PROBE_WAIT_S,
    RESERVATION_TTL_S,
    GpuPool,
)

__all__ = [
    "FAILURES_BEFORE_COOLDOWN",
    "FIRST_PROBE_WAIT_S",
    "RESERVATION_TTL_S",
    "GpuEndpoint",
    "GpuPool",
    "Slot",
    "Ticket",
    "_parse_gauges",
    "shown_url",
]
