"""What the two generate nodes share: the request body, the call, the attempt, the fallback.

Fallback order: the next serverless provider (by priority, among those that
serve the model), or the next GPU endpoint, along the node's edge to itself;
then the other backend. One retry layer: when no other provider or endpoint
may take the request, the node's :data:`GENERATE_RETRY` policy tries a
transient failure (connection error, 408, 429, 5xx) once more on the same one;
when that try fails too, or the failure is a timeout, the node returns a
``Command`` that follows the fallback edge to the other backend. A client
error (another 4xx) goes to ``track_usage`` at once, which passes it back to
the caller: another backend would refuse the same request.

Token deltas reach two kinds of listener: the gateway, on the graph's
``custom`` stream (when the input asks ``stream``), and LangGraph's
``messages`` stream mode (Studio, langgraph-sdk), through LangChain's
chat-model callbacks. With neither listening, nothing is emitted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManager, BaseCallbackManager
from langchain_core.callbacks.manager import AsyncCallbackManagerForLLMRun
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    convert_to_messages,
    convert_to_openai_messages,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.tracers._streaming import _StreamingCallbackHandler
from langgraph.config import get_config, get_stream_writer
from langgraph.runtime import Runtime, get_runtime
from langgraph.types import Command, RetryPolicy

from backends.errors import BackendError
from backends.openai_compat import ChatResult, OpenAICompatClient
from backends.tokens import count_message_tokens, count_text_tokens
from state.context import Context
from state.schemas import Attempt, Backend, RouterState


def is_transient(error: Exception) -> bool:
    """Say whether a failure is worth one more try on the same backend."""
    return isinstance(error, BackendError) and error.transient


# One retry layer only: the HTTP client does not retry, this policy does.
GENERATE_RETRY = RetryPolicy(
    max_attempts=2, initial_interval=0.05, backoff_factor=2.0, jitter=True, retry_on=is_transient
)


def chat_payload(state: RouterState, model: str) -> dict[str, Any]:
    """Build the OpenAI chat-completions body for ``model``: the caller's fields, unchanged.

    The router sets ``model`` (the served name), ``messages`` (the conversation,
    trimmed to the context window if it had to be) and ``max_tokens`` (the cap);
    every other field of ``params`` goes as the caller sent it.
    """
    payload: dict[str, Any] = dict(state.get("params") or {})
    payload["model"] = model
    payload["messages"] = state["prompt_messages"]
    payload["max_tokens"] = state["output_tokens_cap"]
    if state.get("temperature") is not None:
        payload["temperature"] = state["temperature"]
    if state.get("user"):
        payload["user"] = state["user"]
    return payload


def message_id(state: RouterState) -> str:
    """Return the id of this run's answer message (the same in every stream and the state)."""
    return f"chatcmpl-{state['request_id']}"


def _handlers(config: RunnableConfig) -> Sequence[Any]:
    callbacks = config.get("callbacks")
    if isinstance(callbacks, BaseCallbackManager):
        return callbacks.handlers
    return callbacks or ()


def _chunk(delta: dict[str, Any], msg_id: str) -> AIMessageChunk:
    """Turn an OpenAI delta into LangChain's message chunk (text and tool-call pieces)."""
    pieces = [
        {
            "name": (call.get("function") or {}).get("name"),
            "args": (call.get("function") or {}).get("arguments"),
            "id": call.get("id"),
            "index": call.get("index"),
        }
        for call in delta.get("tool_calls") or ()
    ]
    return AIMessageChunk(
        content=delta.get("content") or "",
        id=msg_id,
        tool_call_chunks=pieces,  # type: ignore[arg-type]
    )


def answer_message(backend: Backend, model: str, result: ChatResult, msg_id: str) -> AIMessage:
    """Return the answer as the conversation's next message, with its usage and metadata."""
    wire = {k: v for k, v in result.message.items() if v is not None}
    wire["role"] = "assistant"
    wire.setdefault("content", "")
    message = convert_to_messages([wire])[0]
    assert isinstance(message, AIMessage)
    message.id = msg_id
    message.response_metadata = {
        "finish_reason": result.finish_reason,
        "model_name": model,
        "model_provider": backend,
        "system_fingerprint": result.system_fingerprint,
    }
    message.usage_metadata = {
        "input_tokens": result.prompt_tokens,
        "output_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }
    return message


def answer_dict(message: AIMessage) -> dict[str, Any]:
    """Return the answer as the next turn will send it back: an OpenAI-style message."""
    (wire,) = convert_to_openai_messages([message])
    return wire


class CallerGoneError(Exception):
    """The caller went away mid-stream: stop reading the backend (it is not the backend's fault)."""


def _cancel_signal() -> asyncio.Event | None:
    """Return the run's "caller went away" signal, if its context carries one."""
    try:
        context = get_runtime().context
    except RuntimeError:
        return None  # called as a plain function, outside a graph
    return getattr(context, "cancelled", None)


class _Listeners:
    """Where this call's deltas go: the custom stream and LangChain callbacks."""

    __slots__ = ("backend", "cancel", "chunks", "custom", "msg_id", "run", "sent", "text")

    def __init__(self, backend: Backend, msg_id: str) -> None:
        self.custom: Callable[[Any], None] | None = None
        self.run: AsyncCallbackManagerForLLMRun | None = None
        self.msg_id = msg_id
        self.backend = backend
        self.sent = False
        self.cancel: asyncio.Event | None = None
        self.chunks = 0  # deltas received from the backend (each is at least one token)
        self.text: list[str] = []

    async def start(self, state: RouterState, model: str, payload: dict[str, Any]) -> None:
        if state.get("stream"):
            self.custom = get_stream_writer()
            self.cancel = _cancel_signal()
        try:
            config = get_config()
        except RuntimeError:
            return  # called as a plain function, outside a graph: nobody listens
        handlers = _handlers(config)
        if not handlers:
            return
        manager = AsyncCallbackManager.configure(
            config.get("callbacks"),
            inheritable_tags=config.get("tags"),
            inheritable_metadata=config.get("metadata"),
            local_metadata={"ls_provider": self.backend, "ls_model_name": model},
        )
        runs = await manager.on_chat_model_start(
            {"name": f"{self.backend}:{model}"},
            [list(state["messages"])],
            invocation_params={k: v for k, v in payload.items() if k != "messages"},
            options={"stop": payload.get("stop")},
            name=f"generate_{self.backend}",
            run_id=uuid.uuid4(),
            batch_size=1,
        )
        # a tracer gets the whole answer at the end; a streaming handler every delta
        self.run = runs[0]

    def wants_tokens(self) -> bool:
        if self.custom is not None:
            return True
        return self.run is not None and any(
            isinstance(h, _StreamingCallbackHandler) for h in self.run.handlers
        )

    async def delta(self, delta: dict[str, Any], logprobs: Any, fingerprint: str | None) -> None:
        self.chunks += 1
        content = delta.get("content")
        if isinstance(content, str):
            self.text.append(content)
        if self.cancel is not None and self.cancel.is_set():
            raise CallerGoneError  # leaves the backend's stream, which closes its connection
        self.sent = True
        if self.custom is not None:
            self.custom(
                {
                    "event": "delta",
                    "backend": self.backend,
                    "delta": delta,
                    "logprobs": logprobs,
                    "system_fingerprint": fingerprint,
                }
            )
        if self.run is not None:
            chunk = _chunk(delta, self.msg_id)
            await self.run.on_llm_new_token(
                delta.get("content") or "", chunk=ChatGenerationChunk(message=chunk)
            )

    async def end(self, message: AIMessage) -> None:
        if self.run is not None:
            await self.run.on_llm_end(LLMResult(generations=[[ChatGeneration(message=message)]]))

    async def error(self, error: BaseException) -> None:
        if self.run is not None:
            await self.run.on_llm_error(error)


async def call_backend(
    client: OpenAICompatClient, backend: Backend, state: RouterState, model: str, served: str
) -> tuple[ChatResult, AIMessage]:
    """Call one backend, streaming its deltas to whoever listens; return the answer."""
    payload = chat_payload(state, served)
    listeners = _Listeners(backend, message_id(state))
    started = time.perf_counter()
    try:
        await listeners.start(state, model, payload)
        if listeners.wants_tokens():
            result = await client.stream(payload, listeners.delta)
        else:
            result = await client.complete(payload)
    except BackendError as error:
        await listeners.error(error)
        if listeners.sent:
            # the caller already holds part of this answer: a retry would repeat its start
            error.transient = False
            error.partial = True
            error.detail += " (after the answer began streaming)"
        error.model = model
        error.latency_ms = (time.perf_counter() - started) * 1000
        raise
    except CallerGoneError:
        result = cancelled_result(payload, model, listeners, time.perf_counter() - started)
    message = answer_message(backend, model, result, listeners.msg_id)
    await listeners.end(message)
    return result, message


CANCELLED = "cancelled"
"""The finish reason of an answer cut short because its caller went away."""


def cancelled_result(
    payload: dict[str, Any], model: str, listeners: _Listeners, latency_s: float
) -> ChatResult:
    """Return the part of an answer produced before its caller went away.

    The backend's usage chunk never came: the prompt is counted locally, and
    the completion as the deltas received (each carries at least one token; the
    text's own count when it is more), flagged as estimated.
    """
    text = "".join(listeners.text)
    return ChatResult(
        message={"role": "assistant", "content": text},
        finish_reason=CANCELLED,
        prompt_tokens=count_message_tokens(payload["messages"]),
        completion_tokens=max(listeners.chunks, count_text_tokens(text)),
        model=model,
        latency_s=latency_s,
        usage_estimated=True,
    )


def success_update(
    backend: Backend, model: str, result: ChatResult, message: AIMessage, **extra: Any
) -> dict[str, Any]:
    """Return the state update of a successful call: the answer joins the conversation."""
    attempt: Attempt = {
        "backend": backend,
        "model": model,
        "status": "ok",
        "error": None,
        "latency_ms": round(result.latency_s * 1000, 3),
        **extra,  # type: ignore[typeddict-item]
    }
    return {
        "attempts": [attempt],
        "messages": [message],
        "response": result.message,
        "completion": {
            "finish_reason": result.finish_reason,
            "logprobs": result.logprobs,
            "system_fingerprint": result.system_fingerprint,
        },
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }


def cache_entry(state: RouterState, answered: Attempt) -> dict[str, Any]:
    """Return what the response cache keeps of a successful answer."""
    completion = state.get("completion") or {}
    usage = state["usage"]
    return {
        "backend": answered["backend"],
        "model": answered["model"],
        "message": state["response"],
        "finish_reason": completion.get("finish_reason"),
        "system_fingerprint": completion.get("system_fingerprint"),
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
    }


def cached_answer(state: RouterState, entry: dict[str, Any]) -> dict[str, Any]:
    """Return the state update of an answer served from the response cache."""
    result = ChatResult(
        message=entry["message"],
        finish_reason=entry.get("finish_reason"),
        prompt_tokens=int(entry["prompt_tokens"]),
        completion_tokens=int(entry["completion_tokens"]),
        model=entry["model"],
        latency_s=0.0,
        system_fingerprint=entry.get("system_fingerprint"),
    )
    backend: Backend = "gpu" if entry["backend"] == "gpu" else "serverless"
    message = answer_message(backend, entry["model"], result, message_id(state))
    if state.get("stream"):
        # the gateway streams what it gets on the custom stream: the whole answer at once
        delta = {
            k: entry["message"][k] for k in ("content", "tool_calls") if entry["message"].get(k)
        }
        get_stream_writer()(
            {
                "event": "delta",
                "backend": backend,
                "delta": delta,
                "logprobs": None,
                "system_fingerprint": result.system_fingerprint,
            }
        )
    update = success_update(backend, entry["model"], result, message, cache_hit=True)
    reason = f"answered from the response cache ({entry['model']} on {backend})"
    update.update(backend=backend, backend_reason=reason)
    update["decisions"] = {"choose_backend": {"backend": backend, "reason": reason}}
    return update


def failed_attempt(
    backend: Backend,
    model: str,
    error: BackendError,
    endpoint: str | None = None,
    provider: str | None = None,
) -> Attempt:
    """Describe a failed call for the state, without secrets or prompt text."""
    attempt: Attempt = {
        "backend": backend,
        "model": model,
        "status": "failed",
        "error": error.detail,
        "latency_ms": round(error.latency_ms, 3),
        "status_code": error.status,
    }
    if endpoint is not None:
        attempt["endpoint"] = endpoint
    if provider is not None:
        attempt["provider"] = provider
    if error.client_error and error.body:
        attempt["client_error"] = error.body
    return attempt


def next_backend(state: RouterState, failed: Backend) -> Backend | None:
    """Return the backend to fall back to after ``failed``, or None."""
    other: Backend = "gpu" if failed == "serverless" else "serverless"
    tried = {a["backend"] for a in state.get("attempts") or []} | {failed}
    if other in state.get("allowed_backends", []) and other not in tried:
        return other
    return None


# A backend that asks to be left alone longer than this (Retry-After) is not
# retried: the request falls back to the other backend at once.
RETRY_AFTER_LIMIT_S = 1.0


async def retry_here(error: BackendError, runtime: Runtime[Context]) -> bool:
    """Say whether the node's retry policy should try this failure once more.

    A ``Retry-After`` up to :data:`RETRY_AFTER_LIMIT_S` is waited out first; a
    longer one means the backend will not serve this request soon.
    """
    info = runtime.execution_info
    attempt = info.node_attempt if info is not None else GENERATE_RETRY.max_attempts
    if not error.transient or attempt >= GENERATE_RETRY.max_attempts:
        return False
    wait = error.retry_after_s
    if wait is not None:
        if wait > RETRY_AFTER_LIMIT_S:
            return False
        await asyncio.sleep(wait)
    return True


def fail_over(
    state: RouterState,
    backend: Backend,
    attempt: Attempt,
    error: BackendError,
    **extra: Any,
) -> Command[Any]:
    """Record a failed attempt and follow the fallback edge, or end at ``track_usage``."""
    update = {**extra, "attempts": [attempt]}
    other = None if error.client_error else next_backend(state, backend)
    if other is not None:
        return Command(goto=f"generate_{other}", update=update)
    return Command(goto="track_usage", update=update)
