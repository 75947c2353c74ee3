"""Schemas of the router graph's state: the caller's input, the internal state, the output.

State holds plain types and TypedDicts only, so checkpoints (msgpack) and the
LangGraph server's JSON round-trip them unchanged.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, Required

from typing_extensions import TypedDict

Backend = Literal["serverless", "gpu"]
CostPriority = Literal["low_cost", "balanced", "performance", "latency_critical"]
ComplexityLevel = Literal["low", "medium", "high"]
AttemptStatus = Literal["ok", "failed"]

BACKENDS: tuple[Backend, ...] = ("serverless", "gpu")
COST_PRIORITIES: tuple[CostPriority, ...] = (
    "low_cost",
    "balanced",
    "performance",
    "latency_critical",
)


class ChatMessage(TypedDict, total=False):
    """One OpenAI-style chat message."""

    role: Required[str]
    content: Any
    name: str


class Complexity(TypedDict):
    """How demanding a request is: a score in [0, 1], its level and what drove it."""

    score: float
    level: ComplexityLevel
    features: dict[str, float]


class Attempt(TypedDict):
    """One call to one backend."""

    backend: Backend
    model: str
    status: AttemptStatus
    error: str | None
    latency_ms: float


class Usage(TypedDict):
    """Token counts reported by the backend that answered."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Routing(TypedDict):
    """The routing decision as the caller sees it."""

    backend: Backend | None
    model: str | None
    reason: str
    complexity: Complexity
    attempts: list[Attempt]


class BudgetCheck(TypedDict):
    """What ``check_budget`` found."""

    estimate_usd: float
    serverless_allowed: bool
    reason: str


class ReservationHeld(TypedDict):
    """A budget reservation the request holds until ``track_usage`` settles it."""

    id: str
    amount_usd: float
    model: str


class RouterInput(TypedDict, total=False):
    """What a caller sends: the conversation and optional routing hints."""

    messages: Required[list[ChatMessage]]
    max_tokens: int | None
    temperature: float | None
    model: str | None
    cost_priority: CostPriority | None
    force_backend: Backend | None
    user: str | None
    team: str | None
    request_id: str | None
    stream: bool


class RouterOutput(TypedDict, total=False):
    """What a caller gets back."""

    request_id: str
    response: dict[str, Any]
    routing: Routing
    usage: Usage
    cost_usd: float


class RouterState(RouterInput, total=False):
    """The full state of one request as it moves through the graph."""

    started_at: float
    prompt_tokens_estimate: int
    output_tokens_cap: int
    complexity: Complexity
    candidates: dict[str, str]
    selection_reason: str
    budget: BudgetCheck
    reservation: ReservationHeld | None
    backend: Backend
    backend_reason: str
    allowed_backends: list[Backend]
    attempts: Annotated[list[Attempt], operator.add]
    response: dict[str, Any]
    finish_reason: str | None
    routing: Routing
    usage: Usage
    cost_usd: float
