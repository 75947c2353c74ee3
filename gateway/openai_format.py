"""The OpenAI chat-completions wire format, outward: answers, chunks and errors.

Pure functions and small byte templates, no I/O: :func:`completion_body`,
:class:`ChunkWriter` and :func:`error_payload` shape what goes back
(:mod:`gateway.chat_request` reads what comes in). Everything is (de)serialized
with orjson, and the per-token stream chunk is assembled from byte templates
built once per stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

from backends.catalog import Catalog
from state.errors import BudgetExceededError, RouterError
from state.ledger import ledger_unavailable
from state.schemas import BACKENDS

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
AUTO_MODEL = "auto"


def routing_object(result: Mapping[str, Any]) -> dict[str, Any]:
    """Return the ``routing`` object of an answer: the graph's routing plus the cost.

    Args:
        result: The graph's final values (``routing``, ``cost_usd``).

    Returns:
        ``{backend, model, reason, cost_usd, complexity, attempts}``.
    """
    routing = result.get("routing") or {}
    return {
        "backend": routing.get("backend"),
        "model": routing.get("model"),
        "reason": routing.get("reason", ""),
        "cost_usd": float(result.get("cost_usd") or 0.0),
        "complexity": routing.get("complexity"),
        "attempts": routing.get("attempts", []),
    }


def cost_header(cost_usd: float) -> str:
    """Format a cost for the ``x-router-cost-usd`` header: plain decimal, exact round trip.

    Args:
        cost_usd: The request's cost.

    Returns:
        The shortest decimal that reads back as the same float, without an exponent.
    """
    return format(Decimal(repr(float(cost_usd))), "f")


def completion_body(result: Mapping[str, Any], request_id: str) -> bytes:
    """Return a non-streaming ``chat.completion`` answer: the backend's choice, whole.

    Args:
        result: The graph's final values (``response``, ``completion``, ``usage``, ...).
        request_id: The request's id.

    Returns:
        The JSON body, with our ``routing`` object beside OpenAI's fields.
    """
    routing = routing_object(result)
    completion = result.get("completion") or {}
    return orjson.dumps(
        {
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": routing["model"],
            "system_fingerprint": completion.get("system_fingerprint"),
            "choices": [
                {
                    "index": 0,
                    "message": result.get("response") or {"role": "assistant", "content": ""},
                    "logprobs": completion.get("logprobs"),
                    "finish_reason": completion.get("finish_reason") or "stop",
                }
            ],
            "usage": result.get("usage"),
            "routing": routing,
        }
    )


def error_payload(exc: BaseException, request_id: str) -> tuple[int, dict[str, Any]]:
    """Map an exception to an HTTP status and an OpenAI error object.

    The router's typed errors keep their status, code and message (written to be
    shown to callers, never holding secrets); a budget refusal adds
    ``remaining_usd`` and ``resets_at``. Anything else is logged here and
    answered 500 with a generic message naming only the request id.

    Args:
        exc: What went wrong.
        request_id: The request's id, for the log and the generic message.

    Returns:
        The HTTP status and ``{"message", "type", "code", "param", ...}``.
    """
    if not isinstance(exc, RouterError):
        lost = ledger_unavailable(exc)
        if lost is not None:
            logger.warning(
                "request %s: the ledger's database is unreachable (%s)",
                request_id,
                type(exc).__name__,
            )
            exc = lost
    if isinstance(exc, RouterError):
        error = exc.to_dict()
        error.setdefault("param", getattr(exc, "param", None))
        if isinstance(exc, BudgetExceededError):
            error.setdefault("remaining_usd", exc.remaining_usd)
            error.setdefault("resets_at", exc.resets_at)
            error.setdefault("retry_after_s", exc.retry_after_s)
            error.setdefault("budget", exc.budget)
        return exc.status_code, error
    logger.error("request %s failed", request_id, exc_info=exc)
    return 500, {
        "message": f"the router failed on this request (request id {request_id}); "
        "retry, and if it persists report the request id to the operator",
        "type": "server_error",
        "code": "internal_error",
        "param": None,
    }


def error_body(exc: BaseException, request_id: str) -> tuple[int, bytes]:
    """Return the HTTP status and JSON body of an error answer.

    Args:
        exc: What went wrong.
        request_id: The request's id.

    Returns:
        The status and ``{"error": {...}}`` as bytes.
    """
    status, error = error_payload(exc, request_id)
    return status, orjson.dumps({"error": error})


def error_headers(exc: BaseException, request_id: str) -> dict[str, str]:
    """Return the headers of an error answer: its request id, and ``Retry-After`` on a 402.

    Args:
        exc: What went wrong.
        request_id: The request's id.

    Returns:
        ``x-request-id``, and for a budget refusal ``retry-after``: the seconds
        until the refusing budget's window resets.
    """
    headers = {"x-request-id": request_id}
    if isinstance(exc, BudgetExceededError) and exc.retry_after_s is not None:
        headers["retry-after"] = str(exc.retry_after_s)
    return headers


def error_event(exc: BaseException, request_id: str) -> bytes:
    """Return the SSE events that end a stream which failed after tokens were sent.

    Args:
        exc: What went wrong.
        request_id: The request's id.

    Returns:
        ``data: {"error": {...}}`` followed by ``data: [DONE]``.
    """
    _, error = error_payload(exc, request_id)
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n" + DONE


class ChunkWriter:
    """The ``chat.completion.chunk`` events of one stream, from per-stream byte templates."""

    __slots__ = ("_created", "_fingerprint", "_head", "_id", "_model", "_token_head")

    _TOKEN_TAIL = b'},"logprobs":null,"finish_reason":null}]}\n\n'

    def __init__(self, request_id: str, model: str | None, fingerprint: str | None = None) -> None:
        """Build the templates once for this stream.

        Args:
            request_id: The request's id (the chunks' id is ``chatcmpl-<request_id>``).
            model: The routed model, shown in every chunk.
            fingerprint: The backend's ``system_fingerprint``, shown in every chunk.
        """
        self._id = f"chatcmpl-{request_id}"
        self._created = int(time.time())
        self._model = model
        self._fingerprint = fingerprint
        self._head = b'data: {"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,' % (
            orjson.dumps(self._id),
            self._created,
            orjson.dumps(model),
        )
        if fingerprint is not None:
            self._head += b'"system_fingerprint":%s,' % orjson.dumps(fingerprint)
        self._token_head = self._head + b'"choices":[{"index":0,"delta":{"content":'

    def role(self) -> bytes:
        """Return the first chunk: the assistant role with empty content."""
        return (
            self._head
            + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
            + b'"logprobs":null,"finish_reason":null}]}\n\n'
        )

    def token(self, text: str) -> bytes:
        """Return one content delta."""
        return self._token_head + orjson.dumps(text) + self._TOKEN_TAIL

    def delta(self, event: Mapping[str, Any]) -> bytes:
        """Return one delta as the backend sent it: text, tool-call pieces, refusal, logprobs."""
        delta = event["delta"]
        logprobs = event.get("logprobs")
        if logprobs is None and len(delta) == 1 and isinstance(delta.get("content"), str):
            return self.token(delta["content"])
        fields = {k: v for k, v in delta.items() if k != "role"}
        return self._event(
            {
                "choices": [
                    {"index": 0, "delta": fields, "logprobs": logprobs, "finish_reason": None}
                ]
            }
        )

    def _event(self, fields: dict[str, Any]) -> bytes:
        head = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }
        if self._fingerprint is not None:
            head["system_fingerprint"] = self._fingerprint
        return b"data: " + orjson.dumps({**head, **fields}) + b"\n\n"

    def finish(self, finish_reason: str | None, routing: dict[str, Any]) -> bytes:
        """Return the last choice chunk: the finish reason and the ``routing`` object."""
        return self._event(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {},
                        "logprobs": None,
                        "finish_reason": finish_reason or "stop",
                    }
                ],
                "routing": routing,
            }
        )

    def usage(self, usage: Mapping[str, Any] | None) -> bytes:
        """Return the usage chunk (``choices: []``), sent when ``include_usage`` is true."""
        return self._event({"choices": [], "usage": usage})

    def end(
        self, result: Mapping[str, Any], include_usage: bool, *, with_role: bool = False
    ) -> bytes:
        """Return the end of a stream: finish chunk, usage chunk if asked, ``[DONE]``.

        Args:
            result: The graph's final values.
            include_usage: Whether the caller asked for the usage chunk.
            with_role: Also start with the role chunk (a stream without any token).

        Returns:
            The SSE bytes.
        """
        parts = [self.role()] if with_role else []
        completion = result.get("completion") or {}
        parts.append(self.finish(completion.get("finish_reason"), routing_object(result)))
        if include_usage:
            parts.append(self.usage(result.get("usage")))
        parts.append(DONE)
        return b"".join(parts)


def models_body(catalog: Catalog, created: int) -> bytes:
    """Return the ``GET /v1/models`` list: ``auto`` first, then every catalog model.

    Args:
        catalog: The model catalog.
        created: The ``created`` timestamp to show.

    Returns:
        The JSON body; each model carries its context window, prices, tier and backends.
    """
    data: list[dict[str, Any]] = [
        {
            "id": AUTO_MODEL,
            "object": "model",
            "created": created,
            "owned_by": "hybrid-router",
            "description": "the router picks the model and the backend for each request",
            "backends": list(BACKENDS),
        }
    ]
    for model in catalog.models:
        data.append(
            {
                "id": model.id,
                "object": "model",
                "created": created,
                "owned_by": "hybrid-router",
                "context_window": model.context_window,
                "input_usd_per_mtok": model.input_usd_per_mtok,
                "output_usd_per_mtok": model.output_usd_per_mtok,
                "tier": model.tier,
                "backends": [b for b in BACKENDS if model.offered_on(b)],
            }
        )
    return orjson.dumps({"object": "list", "data": data})
