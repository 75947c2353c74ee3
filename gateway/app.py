"""The OpenAI-compatible gateway: ``/v1/chat/completions`` and ``/v1/models`` over the router.

Served on its own (:mod:`gateway.serve`) or beside the LangGraph graph API
(``langgraph.json``: ``"http": {"app": "gateway.app:app"}``). Each chat request
runs the ``router`` graph with ``context=Context(services=await services())``.
Beside it, the operational routes of :mod:`gateway.ops`: ``GET /health``,
``/stats``, ``/usage``, ``/budget``, ``PUT /budget/{scope}/{key}`` and
``GET /metrics`` (:mod:`gateway.metrics`; under ``langgraph dev`` the LangGraph
server's own ``/metrics`` takes that path), and ``POST /v1/batch/chat/completions``
(many chat requests in one call: :mod:`gateway.batch`).

With ``ROUTER_API_KEYS`` set, every route but ``/health`` needs
``Authorization: Bearer <key>`` (:mod:`gateway.auth`), including routes mounted
on the app later; the key's user and team replace the body's ``user`` and
``team`` in the graph input, so budgets and the ledger see who asked.

Non-streaming answers are OpenAI ``chat.completion`` objects plus a ``routing``
object ``{backend, model, reason, cost_usd, complexity, attempts}``, with the
headers ``x-router-backend``, ``x-router-model``, ``x-router-cost-usd`` and
``x-request-id``.

Streaming answers (``stream: true``) are ``text/event-stream`` OpenAI
``chat.completion.chunk`` events::

    data: {... "choices":[{"index":0,"delta":{"role":"assistant","content":""}, ...}]}
    data: {... "choices":[{"index":0,"delta":{"content":"<token>"}, ...}]}     (one per delta)
    data: {... "choices":[{"index":0,"delta":{},"finish_reason":"stop"}], "routing":{...}}
    data: {... "choices":[], "usage":{...}}         (only with stream_options.include_usage)
    data: [DONE]

The response starts when the first token arrives (or the graph ends), so a
failure before any token is an ordinary HTTP error, and ``x-router-backend`` /
``x-router-model`` name the backend that actually streams (after any fallback).
The cost is known only at the end: streams carry it in the final chunk's
``routing.cost_usd``, not in a header. A failure after tokens were sent ends
the stream with ``data: {"error": {...}}`` and ``data: [DONE]``.

Errors are OpenAI error objects ``{"error": {"message", "type", "code",
"param"}}`` with the router's status codes: 400 bad request, 402 budget
refusal (with ``remaining_usd``, ``resets_at``, ``retry_after_s``, the refusing
``budget`` and a ``Retry-After`` header), 502 every backend failed,
503 no backend available, 500 anything else (generic message; details only in
the log).

The same goes for what no route serves: a body over ``MAX_REQUEST_BYTES`` is
413 (:mod:`gateway.limits`, middleware on every route); another path under
``/v1`` is 404, a served one with the wrong method 405 (:mod:`gateway.http_errors`);
``GET /v1/models/{id}`` of an unknown model is 404 ``model_not_found``.

Importing this module does no I/O and builds no client: the services, the
catalog and the models list are built on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route

from backends.catalog import get_catalog
from gateway.auth import ApiKeyMiddleware, caller
from gateway.batch import Batch
from gateway.chat_request import ChatRequest, parse_chat_request
from gateway.dashboard import create_dashboard
from gateway.http_errors import ModelNotFoundError, v1_fallback_routes
from gateway.limits import BodyLimitMiddleware
from gateway.metrics import RouterMetrics, mark_worker_dead
from gateway.openai_format import (
    ChunkWriter,
    completion_body,
    cost_header,
    error_body,
    error_headers,
    models_body,
)
from gateway.ops import Operations, ServicesProvider
from gateway.streaming import StreamRun, sse_events
from graphs.router import graph
from state.api_keys import RouterApiKeys
from state.context import Context, close_default_services, default_services
from state.schemas import Backend, RouterInput
from state.settings import get_settings

logger = logging.getLogger(__name__)

__all__ = ["Gateway", "ServicesProvider", "app", "create_app"]

_JSON = "application/json"
_SSE = "text/event-stream"
# Token deltas come on "custom"; "values" carries the state (filtered to the keys
# below) after each step: the routed models before the first token, the answer at
# the end. ("updates" would add nothing: it is filtered to the same keys.)
_STREAM_MODES = ["custom", "values"]
# The graph's output without the conversation (an OpenAI answer carries only the reply).
_OUTPUT_KEYS = [k for k in graph.output_channels if k not in ("messages", "decisions")]
# Streams also need each backend's model, to name it before the answer is done.
_STREAM_KEYS = [*_OUTPUT_KEYS, "candidates"]
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class Gateway:
    """The gateway's routes, bound to a services provider; built once per app."""

    def __init__(self, services: ServicesProvider | None = None) -> None:
        """Bind the provider of the router's services (the process default if None).

        Args:
            services: Returns the services every graph call runs on.
        """
        self._services = services or default_services
        self._owns_default = services is None
        self._models: bytes | None = None
        self._model_objects: dict[str, bytes] | None = None
        self._keys: RouterApiKeys | None = None
        self._max_request_bytes: int | None = None
        self.metrics = RouterMetrics()
        self.ops = Operations(self._services, self.metrics)
        self.batch = Batch(self._services, self.invoke, self.metrics)

    async def api_keys(self) -> RouterApiKeys:
        """Return the keys that guard the app (``ROUTER_API_KEYS``; empty: no auth).

        The process default reads them from the settings, off the event loop,
        once, without building the services; a given provider's services carry
        theirs.
        """
        if not self._owns_default:
            return (await self._services()).settings.router_api_keys
        if self._keys is None:
            self._keys = (await asyncio.to_thread(get_settings)).router_api_keys
        return self._keys

    async def max_request_bytes(self) -> int:
        """Return the largest request body the app reads (``MAX_REQUEST_BYTES``).

        Read once, like :meth:`api_keys`: from the process settings off the event
        loop, or from a given provider's services.
        """
        if self._max_request_bytes is None:
            if self._owns_default:
                settings = await asyncio.to_thread(get_settings)
            else:
                settings = (await self._services()).settings
            self._max_request_bytes = settings.max_request_bytes
        return self._max_request_bytes

    async def invoke(self, graph_input: RouterInput, context: Context) -> dict[str, Any]:
        """Run the router graph on one request; return its output without the conversation."""
        return await graph.ainvoke(graph_input, context=context, output_keys=_OUTPUT_KEYS)

    def observe_pool(self, context: Context | None) -> None:
        """Copy the GPU pool's per-endpoint figures into the metrics (after a request)."""
        if context is not None and context.services is not None:
            self.metrics.observe_pool(context.services.gpu_pool)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Build the default services at start; close them on shutdown.

        Built at start, not on the first request, so that a restarted process's
        reservation sweep releases the holds a crash left behind even before
        anyone asks (building connects to nothing: the database is first used
        by the sweep or a request). With several workers, shutdown also drops
        this worker's live gauges from the shared metrics directory
        (:func:`gateway.metrics.mark_worker_dead`).
        """
        if self._owns_default:
            await self._services()
        try:
            yield
        finally:
            mark_worker_dead()
            if self._owns_default:
                await close_default_services()

    async def chat_completions(self, request: Request) -> Response:
        """Answer ``POST /v1/chat/completions`` (streaming or not).

        The part below ``---`` is the route's OpenAPI entry (the LangGraph server
        publishes it in its ``/docs``).

        ---
        summary: Create a chat completion (OpenAI-compatible), routed to a backend
        tags: [OpenAI-compatible gateway]
        requestBody:
          required: true
          content:
            application/json:
              schema:
                type: object
                required: [messages]
                properties:
                  messages: {type: array, items: {type: object}}
                  model: {type: string, description: a catalog model id, or auto}
                  max_tokens: {type: integer}
                  max_completion_tokens: {type: integer}
                  temperature: {type: number}
                  stream: {type: boolean}
                  stream_options: {type: object}
                  user: {type: string, description: the API key's user replaces it}
                  team: {type: string, description: the API key's team replaces it}
                  cost_priority:
                    type: string
                    enum: [low_cost, balanced, performance, latency_critical]
                  force_backend: {type: string, enum: [serverless, gpu]}
        responses:
          '200': {description: a chat.completion object, or chat.completion.chunk events}
          '400': {description: bad request}
          '401': {description: missing or unknown API key (when ROUTER_API_KEYS is set)}
          '402': {description: 'over budget: which budget, its limit and spend; Retry-After'}
          '500': {description: internal error}
          '502': {description: every backend failed}
          '503': {description: no backend available}
        """
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        context: Context | None = None
        try:
            parsed = parse_chat_request(await request.body(), request_id, caller(request))
            # a stream learns through ``cancelled`` that its client went away
            context = Context(
                services=await self._services(),
                cancelled=asyncio.Event() if parsed.stream else None,
            )
            if parsed.stream:
                return await self._stream(parsed, context, request_id, started)
            result = await self.invoke(parsed.graph_input, context)
        except Exception as exc:
            self.metrics.observe_error(exc, time.perf_counter() - started)
            self.observe_pool(context)
            return _error_response(exc, request_id)
        self.metrics.observe_result(result, time.perf_counter() - started)
        self.observe_pool(context)
        routing = result.get("routing") or {}
        headers = {
            "x-router-backend": str(routing.get("backend")),
            "x-router-model": str(routing.get("model")),
            "x-router-cost-usd": cost_header(result.get("cost_usd") or 0.0),
            "x-request-id": request_id,
        }
        return Response(completion_body(result, request_id), media_type=_JSON, headers=headers)

    async def _stream(
        self, parsed: ChatRequest, context: Context, request_id: str, started: float
    ) -> Response:
        """Run the graph streaming; answer an HTTP error if it fails before any token."""
        events = graph.astream(
            parsed.graph_input,
            context=context,
            stream_mode=_STREAM_MODES,  # type: ignore[arg-type]
            output_keys=_STREAM_KEYS,
        )
        run = StreamRun(cast(AsyncIterator[tuple[str, Any]], events), context.cancelled)
        try:
            first = await run.first_delta()
        except BaseException:
            await run.aclose()
            raise
        if first is None:
            # Ended without a token (an empty answer): the whole stream at once.
            routing = run.values.get("routing") or {}
            writer = ChunkWriter(request_id, routing.get("model"))
            headers = {
                **_SSE_HEADERS,
                "x-router-backend": str(routing.get("backend")),
                "x-router-model": str(routing.get("model")),
                "x-request-id": request_id,
            }
            body = writer.end(run.values, parsed.include_usage, with_role=True)
            self.metrics.observe_result(run.values, time.perf_counter() - started)
            self.observe_pool(context)
            return Response(body, media_type=_SSE, headers=headers)
        backend: Backend = first["backend"]
        self.metrics.observe_first_token(backend, time.perf_counter() - started)
        model = (run.values.get("candidates") or {}).get(backend)
        headers = {
            **_SSE_HEADERS,
            "x-router-backend": backend,
            "x-router-model": str(model),
            "x-request-id": request_id,
        }
        writer = ChunkWriter(request_id, model, first.get("system_fingerprint"))
        metrics = self.metrics

        def on_end(outcome: BaseException | None, status: str | None = None) -> None:
            latency = time.perf_counter() - started
            if outcome is None:
                metrics.observe_result(run.values, latency)
            else:
                metrics.observe_error(outcome, latency, backend=backend, model=model, status=status)
            self.observe_pool(context)

        return StreamingResponse(
            sse_events(
                run, writer, backend, first, parsed.include_usage, request_id, on_end=on_end
            ),
            media_type=_SSE,
            headers=headers,
        )

    async def models(self, request: Request) -> Response:
        """Answer ``GET /v1/models``: ``auto`` and the catalog's models.

        ---
        summary: List the models (OpenAI-compatible), with context windows and prices
        tags: [OpenAI-compatible gateway]
        responses:
          '200': {description: an OpenAI list of model objects}
        """
        models, _ = await self._catalog_models()
        return Response(models, media_type=_JSON)

    async def model(self, request: Request) -> Response:
        """Answer ``GET /v1/models/{model_id}``: one entry of ``GET /v1/models``.

        ---
        summary: Retrieve a model (OpenAI-compatible), with its context window and prices
        tags: [OpenAI-compatible gateway]
        parameters:
          - {name: model_id, in: path, required: true, schema: {type: string}}
        responses:
          '200': {description: the model object, as GET /v1/models lists it}
          '404': {description: no such model (code model_not_found)}
        """
        model_id = request.path_params["model_id"]
        _, objects = await self._catalog_models()
        body = objects.get(model_id)
        if body is None:
            return _error_response(ModelNotFoundError(model_id), uuid.uuid4().hex)
        return Response(body, media_type=_JSON)

    async def _catalog_models(self) -> tuple[bytes, dict[str, bytes]]:
        """Return the models list and each model's object by id, built once."""
        if self._models is None or self._model_objects is None:
            # The catalog file is read off the event loop, once.
            catalog = await asyncio.to_thread(get_catalog)
            models = models_body(catalog, int(time.time()))
            self._model_objects = {
                entry["id"]: orjson.dumps(entry) for entry in orjson.loads(models)["data"]
            }
            self._models = models
        return self._models, self._model_objects


def _error_response(exc: Exception, request_id: str) -> Response:
    status, body = error_body(exc, request_id)
    return Response(
        body, status_code=status, media_type=_JSON, headers=error_headers(exc, request_id)
    )


def create_app(services: ServicesProvider | None = None) -> Starlette:
    """Build the gateway's ASGI app.

    Building it does no I/O: services, clients and the models list are built on
    the first request that needs them. The app owns its metrics registry, so
    several apps in one process keep separate figures.

    Args:
        services: Returns the router's services for each request; None uses
            :func:`state.context.default_services` (built from the environment
            once per process and event loop, starting local emulators when no
            backend is configured). The API keys come from the services'
            settings (the process settings for the default).

    Returns:
        A Starlette app with ``POST /v1/chat/completions``, ``GET /v1/models``,
        the operational routes and the dashboard, behind the API-key middleware.
    """
    gateway = Gateway(services)
    ops = gateway.ops
    v1 = [
        Route("/v1/chat/completions", gateway.chat_completions, methods=["POST"]),
        Route("/v1/models", gateway.models, methods=["GET"]),
        Route("/v1/models/{model_id}", gateway.model, methods=["GET"]),
        Route("/v1/batch/chat/completions", gateway.batch.answer, methods=["POST"]),
    ]
    app = Starlette(
        routes=[
            *v1,
            Route("/health", ops.health, methods=["GET"]),
            Route("/stats", ops.stats, methods=["GET"]),
            Route("/usage", ops.usage, methods=["GET"]),
            Route("/budget", ops.budget, methods=["GET"]),
            Route("/budget/{scope}/{key}", ops.set_budget, methods=["PUT"]),
            Route("/metrics", ops.metrics, methods=["GET"]),
            # the page needs the trailing slash for its relative URLs: /dashboard redirects
            Mount("/dashboard", app=create_dashboard(gateway._services)),
            # last: any other path under /v1 is a 404 (or 405) in OpenAI error JSON
            *v1_fallback_routes(v1),
        ],
        middleware=[
            # outermost: an oversized body is refused before anything reads it
            Middleware(BodyLimitMiddleware, limit=gateway.max_request_bytes),
            Middleware(ApiKeyMiddleware, keys=gateway.api_keys),
        ],
        lifespan=gateway.lifespan,
    )
    app.state.gateway = gateway
    return app


app = create_app()
