"""``POST /v1/batch/chat/completions``: many chat requests in one call, answered together.

The body is a list of lines in the shape of OpenAI's batch input file, as a
JSON array or as JSONL (one object per line)::

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "auto", "messages": [{"role": "user", "content": "Hi"}]}}

Each line runs through the router graph like a ``POST /v1/chat/completions``
of its own (its own request id, budget hold and ledger row; the API key's user
and team replace the body's), at most ``BATCH_CONCURRENCY`` at once, and at
most ``BATCH_MAX_LINES`` per call. The answer lists every line, in the order
given, in the shape of OpenAI's batch output file (a JSON array for an array,
JSONL for JSONL)::

    {"id": "batch_req_<request id>", "custom_id": "q1",
     "response": {"status_code": 200, "request_id": "<request id>", "body": {chat.completion}},
     "error": null}

A line the chat route would answer with an error (400 bad body, 402 over
budget, 502 every backend failed, ...) gets that status and OpenAI error body
in its ``response``. A line that cannot be run at all (not an object, no
``custom_id`` or a repeated one, another method or URL, ``stream: true``) gets
``response: null`` and ``error: {"code", "message"}``. One line's failure
never fails the others; the call itself is refused (400) only when its body
is not a list of lines, is empty or has too many.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import caller
from gateway.chat_request import GatewayRequestError, chat_request_from_body
from gateway.metrics import RouterMetrics
from gateway.openai_format import completion_body, error_payload
from gateway.ops import ServicesProvider
from state.api_keys import ApiKeyIdentity
from state.context import Context
from state.schemas import RouterInput

CHAT_URLS = frozenset({"/v1/chat/completions", "/chat/completions"})
_EXAMPLE = (
    '{"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", '
    '"body": {"model": "auto", "messages": [{"role": "user", "content": "Hello!"}]}}'
)
_JSON = "application/json"
_JSONL = "application/jsonl"

Invoke = Callable[[RouterInput, Context], Awaitable[Mapping[str, Any]]]
"""Runs the router graph on one request's input; returns its output values."""


class LineError(Exception):
    """A batch line that cannot be run; its ``error`` entry says why."""

    def __init__(self, code: str, message: str) -> None:
        """Keep the error code and the message shown for the line."""
        super().__init__(message)
        self.code = code
        self.message = message


def read_lines(raw: bytes) -> tuple[list[Any], bool]:
    """Split a batch body into its lines: a JSON array, or JSONL.

    Args:
        raw: The request body.

    Returns:
        The lines (a JSONL line that is not JSON is kept as a :class:`LineError`)
        and whether the body was JSONL.

    Raises:
        GatewayRequestError: A body starting with ``[`` that is not a JSON array.
    """
    text = raw.strip()
    if text.startswith(b"["):
        try:
            lines = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise GatewayRequestError(
                f"the body starts with '[' but is not a JSON array ({exc}); send a JSON "
                f"array of batch lines, or JSONL with one line per request such as {_EXAMPLE}",
                code="invalid_json",
            ) from None
        return lines, False
    found: list[Any] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            found.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            found.append(LineError("invalid_json", f"line {number} is not valid JSON ({exc})"))
    return found, True


class Batch:
    """The batch route, bound to the gateway's services, graph call and metrics."""

    def __init__(self, services: ServicesProvider, invoke: Invoke, metrics: RouterMetrics) -> None:
        """Bind what each line needs.

        Args:
            services: Returns the router's services (settings, GPU pool, ...).
            invoke: Runs the router graph on one line's input.
            metrics: The app's metrics; each line counts as a chat request.
        """
        self._services = services
        self._invoke = invoke
        self._metrics = metrics

    async def answer(self, request: Request) -> Response:
        """Answer ``POST /v1/batch/chat/completions``: every line's result, in order.

        ---
        summary: Run many chat completions in one call (OpenAI batch line format)
        tags: [OpenAI-compatible gateway]
        requestBody:
          required: true
          content:
            application/json:
              schema:
                type: array
                items:
                  type: object
                  required: [custom_id, body]
                  properties:
                    custom_id: {type: string}
                    method: {type: string, enum: [POST]}
                    url: {type: string, enum: [/v1/chat/completions]}
                    body: {type: object, description: a chat-completions request body}
            application/jsonl:
              schema: {type: string, description: the same lines, one JSON object per line}
        responses:
          '200':
            description: >-
              one output line per input line, in order: {id, custom_id, response:
              {status_code, request_id, body} | null, error: {code, message} | null}
              (a JSON array, or JSONL when the request was JSONL)
          '400': {description: the body is not a list of batch lines, is empty or too long}
        """
        batch_id = uuid.uuid4().hex
        try:
            lines, jsonl = read_lines(await request.body())
            services = await self._services()
            limit = services.settings.batch_max_lines
            if not isinstance(lines, list) or not lines:
                raise GatewayRequestError(
                    "the batch is empty or not a list: send a JSON array (or JSONL) of "
                    f"lines such as {_EXAMPLE}",
                    code="invalid_request",
                )
            if len(lines) > limit:
                raise GatewayRequestError(
                    f"the batch has {len(lines)} lines, over the limit of {limit} "
                    "(BATCH_MAX_LINES): split it into several calls",
                    code="batch_too_large",
                )
        except Exception as exc:
            status, error = error_payload(exc, batch_id)
            return Response(
                orjson.dumps({"error": error}),
                status_code=status,
                media_type=_JSON,
                headers={"x-request-id": batch_id},
            )
        who = caller(request)
        context = Context(services=services)
        gate = asyncio.Semaphore(services.settings.batch_concurrency)
        seen: set[str] = set()
        checked = [self._check(line, seen) for line in lines]
        outputs = await asyncio.gather(*(self._run(line, who, context, gate) for line in checked))
        self._metrics.observe_pool(services.gpu_pool)
        headers = {"x-request-id": batch_id}
        if jsonl:
            body = b"".join(orjson.dumps(out) + b"\n" for out in outputs)
            return Response(body, media_type=_JSONL, headers=headers)
        return Response(orjson.dumps(outputs), media_type=_JSON, headers=headers)

    @staticmethod
    def _check(line: Any, seen: set[str]) -> tuple[Any, Any]:
        """Return the line's custom_id and its body, or a :class:`LineError` for its body."""
        if isinstance(line, LineError):
            return None, line
        if not isinstance(line, dict):
            return None, LineError(
                "invalid_line", f"a batch line must be a JSON object such as {_EXAMPLE}"
            )
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return None, LineError(
                "missing_custom_id",
                "each line needs a 'custom_id' string, unique in the batch, to match its "
                "answer to it",
            )
        if custom_id in seen:
            return custom_id, LineError(
                "duplicate_custom_id",
                f"custom_id {custom_id!r:.80} appears more than once: give each line its own",
            )
        seen.add(custom_id)
        method = line.get("method", "POST")
        if method != "POST":
            return custom_id, LineError(
                "invalid_method", f"'method' must be POST, got {method!r:.20}"
            )
        url = line.get("url", "/v1/chat/completions")
        if url not in CHAT_URLS:
            return custom_id, LineError(
                "invalid_url",
                f"'url' must be /v1/chat/completions (the only endpoint a batch runs), "
                f"got {url!r:.80}",
            )
        body = line.get("body")
        if not isinstance(body, dict):
            return custom_id, LineError(
                "missing_body", "'body' must be a chat-completions request object"
            )
        if body.get("stream") is True:
            return custom_id, LineError(
                "stream_unsupported",
                "a batch line cannot stream: its answer comes back whole in the batch "
                "output; remove 'stream', or send it to POST /v1/chat/completions",
            )
        return custom_id, body

    async def _run(
        self,
        checked: tuple[Any, Any],
        who: ApiKeyIdentity | None,
        context: Context,
        gate: asyncio.Semaphore,
    ) -> dict[str, Any]:
        """Run one line through the router; return its output line."""
        custom_id, body = checked
        request_id = uuid.uuid4().hex
        line_id = f"batch_req_{request_id}"
        if isinstance(body, LineError):
            return {
                "id": line_id,
                "custom_id": custom_id,
                "response": None,
                "error": {"code": body.code, "message": body.message},
            }
        async with gate:
            started = time.perf_counter()
            try:
                parsed = chat_request_from_body(body, request_id, who)
                result = await self._invoke(parsed.graph_input, context)
            except Exception as exc:
                self._metrics.observe_error(exc, time.perf_counter() - started)
                status, error = error_payload(exc, request_id)
                answer: Any = {"error": error}
            else:
                self._metrics.observe_result(result, time.perf_counter() - started)
                status, answer = 200, orjson.Fragment(completion_body(result, request_id))
        return {
            "id": line_id,
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": answer},
            "error": None,
        }
