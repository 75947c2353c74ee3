"""Schemas of the router graph's state: the caller's input, the internal state, the output.

State holds plain types, TypedDicts and LangChain messages only, so checkpoints
(msgpack) and the LangGraph server's JSON round-trip them unchanged.

On a LangGraph thread every key persists from run to run. ``messages`` is the
conversation (LangGraph's message reducer appends each run's user message and
the assistant's answer); the per-run keys are either rewritten by the first
node (``request_id``, ``decisions``, ``attempts``) or cleared by the last
(:data:`RUN_OPTIONS`), so one run's options never leak into the next.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Required

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from backends.catalog import Backend
from state.errors import BadRequestError

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


def add_conversation(left: list[AnyMessage], right: Any) -> list[AnyMessage]:
    """Append messages to the conversation (LangGraph's ``add_messages``).

    A message that cannot be read as a chat message is the caller's mistake:
    it becomes a :class:`BadRequestError` naming the problem, not a crash.
    """
    if isinstance(right, list):
        # OpenAI lets an assistant message that calls tools leave out its content
        right = [
            {**m, "content": ""} if isinstance(m, dict) and m.get("content") is None else m
            for m in right
        ]
    try:
        return add_messages(left, right)  # type: ignore[arg-type, return-value]
    except (ValueError, TypeError, NotImplementedError, KeyError) as exc:
        raise BadRequestError(
            f"'messages' holds a message that is not a chat message ({exc}); send objects "
            'such as {"role": "user", "content": "Hello!"}'
        ) from None


def add_attempts(left: list[Attempt] | None, right: list[Attempt] | None) -> list[Attempt]:
    """Append attempts; ``None`` starts a new run's list."""
    if right is None:
        return []
    return [*(left or []), *right]


def merge_decisions(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Merge each step's decision; the first step's starts a new run's record."""
    if not right:
        return dict(left or {})
    if "analyze_complexity" in right or not left:
        return dict(right)
    return {**left, **right}


class ChatMessage(TypedDict, total=False):
    """One OpenAI-style chat message."""

    role: Required[str]
    content: Any
    name: str
    tool_calls: list[dict[str, Any]]
    tool_call_id: str


class Complexity(TypedDict):
    """How demanding a request is: a score in [0, 1], its level and what drove it."""

    score: float
    level: ComplexityLevel
    features: dict[str, float]


class Attempt(TypedDict, total=False):
    """One call to one backend (``status_code`` set when the backend answered an error).

    ``provider`` names the serverless provider called, ``endpoint`` the GPU endpoint;
    ``affinity`` is true when that endpoint was taken because it answered the
    conversation's earlier turns (its prefix cache holds them).
    """

    backend: Required[Backend]
    model: Required[str]
    status: Required[AttemptStatus]
    error: Required[str | None]
    latency_ms: Required[float]
    status_code: int | None
    endpoint: str | None
    provider: str | None
    client_error: dict[str, Any] | None
    cache_hit: bool
    affinity: bool


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


class BudgetRefusal(TypedDict):
    """A request a budget refused (a 402): what ``track_usage`` records and raises."""

    message: str
    remaining_usd: float
    resets_at: str
    retry_after_s: int
    budget: dict[str, Any]


class ReservationHeld(TypedDict):
    """A budget reservation the request holds until ``track_usage`` settles it."""

    id: str
    amount_usd: float
    model: str
    provider: str | None


class Completion(TypedDict, total=False):
    """The parts of the backend's answer beside the message, passed back as they came."""

    finish_reason: str | None
    logprobs: dict[str, Any] | None
    system_fingerprint: str | None


class ChatParams(TypedDict, total=False):
    """OpenAI chat-completions fields passed to the backend unchanged.

    Any other field given here is passed through as well (vLLM's ``top_k``,
    ``min_p``, ``repetition_penalty``, ...). A field the chosen model cannot
    honour (``tools``, ``response_format``, image parts, ``logprobs``) narrows
    model selection, or is refused with a 400 that names it.
    """

    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    parallel_tool_calls: bool
    response_format: dict[str, Any]
    stop: str | list[str]
    seed: int
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    logit_bias: dict[str, float]
    logprobs: bool
    top_logprobs: int
    metadata: dict[str, str]
    reasoning_effort: str


class RouterInput(TypedDict, total=False):
    """What a caller sends: the conversation and optional routing hints for this run."""

    messages: Required[Annotated[list[AnyMessage], add_conversation]]
    max_tokens: int | None
    temperature: float | None
    model: str | None
    cost_priority: CostPriority | None
    force_backend: Backend | None
    user: str | None
    team: str | None
    request_id: str | None
    stream: bool | None
    params: ChatParams | None


# The per-run options of RouterInput: ``track_usage`` clears them at the end of
# a run, so on a thread the next run starts from the defaults, not from these.
RUN_OPTIONS: tuple[str, ...] = (
    "max_tokens",
    "temperature",
    "model",
    "cost_priority",
    "force_backend",
    "user",
    "team",
    "stream",
    "params",
)


class RouterOutput(TypedDict, total=False):
    """What a caller gets back (``decisions``: each routing step's decision)."""

    messages: Annotated[list[AnyMessage], add_conversation]
    request_id: str
    response: dict[str, Any]
    completion: Completion
    routing: Routing
    usage: Usage
    cost_usd: float
    decisions: Annotated[dict[str, Any], merge_decisions]


class RouterState(RouterInput, total=False):
    """The full state of one request as it moves through the graph."""

    last_request_id: str
    started_at: float
    prompt_messages: list[dict[str, Any]]
    prompt_tokens_estimate: int
    output_tokens_cap: int
    requires: dict[str, str]
    complexity: Complexity
    candidates: dict[str, str]
    selection_reason: str
    budget: BudgetCheck
    budget_refused: bool | None
    refusal: BudgetRefusal | None
    reservation: ReservationHeld | None
    backend: Backend
    backend_reason: str
    allowed_backends: list[Backend]
    cache_key: str | None
    attempts: Annotated[list[Attempt], add_attempts]
    response: dict[str, Any]
    completion: Completion
    routing: Routing
    usage: Usage
    cost_usd: float
    decisions: Annotated[dict[str, Any], merge_decisions]


class ChatInput(TypedDict, total=False):
    """What a chat caller sends: the new message(s), and who asks."""

    messages: Required[Annotated[list[AnyMessage], add_conversation]]
    user: str | None
    team: str | None


class ChatState(ChatInput, total=False):
    """The unified chat: the conversation, and what the last message asked for.

    ``intent`` is one of ``nodes.detect_intent.INTENTS``; ``params`` holds what
    the message said about it (a period, a backend and a count, a model...).
    ``routing`` is the router's decision when the router answered.
    """

    intent: str
    params: dict[str, Any]
    routing: Routing | None
