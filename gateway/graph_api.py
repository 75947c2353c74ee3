"""A stateless subset of the LangGraph server's graph API, for ``hybrid-router serve``.

Self-hosting the LangGraph server needs a license; our own server answers the
calls a chat front end or a script makes with ``langgraph-sdk`` on stateless
runs: ``POST /runs/wait``, ``POST /runs/stream`` (``values``, ``updates`` and
``custom`` modes), ``POST /assistants/search``, ``GET /assistants/{id}``,
``GET /assistants/{id}/graph`` and ``GET /assistants/{id}/schemas``. Threads,
checkpoints and Studio need the LangGraph server (``langgraph dev``), which
serves the same graphs. Not mounted in ``langgraph.json``: there it would
hide the server's own routes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from langchain_core.messages import BaseMessage
from langgraph.graph.state import CompiledStateGraph
from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.auth import caller
from state.context import Context, Services
from state.errors import RouterError

STREAM_MODES = frozenset({"values", "updates", "custom"})
_CREATED = datetime(2026, 1, 1, tzinfo=UTC).isoformat()


def _graphs() -> dict[str, CompiledStateGraph[Any, Any, Any, Any]]:
    from graphs.router import graph

    return {"router": graph}


def assistant_id(graph_id: str) -> str:
    """Return the stable assistant id of a graph (the default assistant)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"hybrid-router/{graph_id}"))


def _assistant(graph_id: str) -> dict[str, Any]:
    return {
        "assistant_id": assistant_id(graph_id),
        "graph_id": graph_id,
        "name": graph_id,
        "description": None,
        "config": {},
        "context": {},
        "metadata": {"created_by": "system"},
        "version": 1,
        "created_at": _CREATED,
        "updated_at": _CREATED,
    }


def _plain(value: Any) -> Any:
    """Turn a LangChain message into the dict the LangGraph server would send."""
    if isinstance(value, BaseMessage):
        return value.model_dump()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(body: Any) -> bytes:
    return orjson.dumps(body, default=_plain)


def _json(body: Any, status: int = 200) -> Response:
    return Response(_dumps(body), status_code=status, media_type="application/json")


def _find(key: str) -> tuple[str, CompiledStateGraph[Any, Any, Any, Any]] | None:
    for graph_id, graph in _graphs().items():
        if key in (graph_id, assistant_id(graph_id)):
            return graph_id, graph
    return None


def _graph_of(request: Request) -> tuple[str, CompiledStateGraph[Any, Any, Any, Any]] | Response:
    """Return the graph the path's assistant id names, or the 404 response."""
    key = request.path_params["assistant_id"]
    return _find(key) or _not_found(key)


def _not_found(key: str) -> Response:
    known = ", ".join(_graphs())
    return _json({"detail": f"no assistant or graph {key!r}; known graphs: {known}"}, 404)


def _error(exc: BaseException) -> dict[str, str]:
    message = exc.message if isinstance(exc, RouterError) else "the run failed"
    return {"error": type(exc).__name__, "message": message}


def graph_api_routes(
    services: Callable[[], Awaitable[Services]],
    after_run: Callable[[Context], None] | None = None,
) -> list[Route]:
    """Return the graph API routes, running graphs on ``services``.

    Args:
        services: Returns the services every run uses.
        after_run: Told each run's context when it ends (the gateway's metrics
            copy the GPU pool's figures then).
    """

    def ended(context: Context) -> None:
        if after_run is not None:
            after_run(context)

    async def ok(_: Request) -> Response:
        """Say the server is up.

        ---
        responses:
          '200':
            description: The server is up.
        """
        return _json({"ok": True})

    async def search(_: Request) -> Response:
        """List the assistants (one per graph).

        ---
        responses:
          '200':
            description: The assistants.
        """
        return _json([_assistant(graph_id) for graph_id in _graphs()])

    async def get_assistant(request: Request) -> Response:
        """Return one assistant.

        ---
        responses:
          '200':
            description: The assistant.
          '404':
            description: No such assistant.
        """
        found = _graph_of(request)
        return found if isinstance(found, Response) else _json(_assistant(found[0]))

    async def get_graph(request: Request) -> Response:
        """Return the graph's drawing (nodes and edges, fallback edges included).

        ---
        responses:
          '200':
            description: Nodes and edges.
          '404':
            description: No such assistant.
        """
        found = _graph_of(request)
        return found if isinstance(found, Response) else _json(found[1].get_graph().to_json())

    async def get_schemas(request: Request) -> Response:
        """Return the graph's input, output, state and context JSON schemas.

        ---
        responses:
          '200':
            description: The schemas.
          '404':
            description: No such assistant.
        """
        found = _graph_of(request)
        if isinstance(found, Response):
            return found
        graph_id, graph = found
        return _json(
            {
                "graph_id": graph_id,
                "input_schema": graph.get_input_jsonschema(),
                "output_schema": graph.get_output_jsonschema(),
                "state_schema": TypeAdapter(graph.builder.state_schema).json_schema(),
                "context_schema": graph.get_context_jsonschema(),
                "config_schema": None,
            }
        )

    async def _run_request(
        request: Request,
    ) -> tuple[CompiledStateGraph[Any, Any, Any, Any], dict[str, Any]] | Response:
        """Return the graph and the body of a run request, or the error response."""
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _json({"detail": "the body must be JSON"}, 422)
        if not isinstance(body, dict) or not isinstance(body.get("assistant_id"), str):
            detail = "send a JSON object with 'assistant_id' (e.g. \"router\") and 'input'"
            return _json({"detail": detail}, 422)
        found = _find(body["assistant_id"])
        if found is None:
            return _not_found(body["assistant_id"])
        if not isinstance(body.get("input"), dict):
            detail = "'input' must be an object such as {\"messages\": [...]}"
            return _json({"detail": detail}, 422)
        who = caller(request)
        if who is not None:
            # with API keys, the key says who pays: budgets and the ledger see its owner
            body["input"] = {**body["input"], "user": who.user, "team": who.team}
        return found[1], body

    async def runs_wait(request: Request) -> Response:
        """Run a graph to the end without a thread and return its output.

        ---
        responses:
          '200':
            description: The output, or ``{"__error__": {...}}`` when the run failed.
          '404':
            description: No such assistant.
          '422':
            description: A malformed body.
        """
        parsed = await _run_request(request)
        if isinstance(parsed, Response):
            return parsed
        graph, body = parsed
        context = Context(services=await services())
        try:
            output = await graph.ainvoke(body["input"], context=context)
        except Exception as exc:
            return _json({"__error__": _error(exc)})
        finally:
            ended(context)
        return _json(output)

    async def runs_stream(request: Request) -> Response:
        """Run a graph without a thread and stream its events (SSE).

        ---
        responses:
          '200':
            description: "Server-sent events: metadata, then one per chunk, then end."
          '404':
            description: No such assistant.
          '422':
            description: A malformed body or an unsupported stream mode.
        """
        parsed = await _run_request(request)
        if isinstance(parsed, Response):
            return parsed
        graph, body = parsed
        modes = body.get("stream_mode") or ["values"]
        modes = [modes] if isinstance(modes, str) else list(modes)
        unsupported = [m for m in modes if m not in STREAM_MODES]
        if unsupported:
            detail = (
                f"stream modes {unsupported} need the LangGraph server; use {sorted(STREAM_MODES)}"
            )
            return _json({"detail": detail}, 422)
        run_id = str(uuid.uuid4())
        context = Context(services=await services())

        async def events() -> AsyncIterator[bytes]:
            yield b"event: metadata\ndata: " + orjson.dumps({"run_id": run_id}) + b"\n\n"
            status = "success"
            try:
                async for mode, chunk in graph.astream(
                    body["input"], context=context, stream_mode=modes
                ):
                    yield f"event: {mode}\ndata: ".encode() + _dumps(chunk) + b"\n\n"
            except Exception as exc:
                status = "error"
                yield b"event: error\ndata: " + orjson.dumps(_error(exc)) + b"\n\n"
            finally:
                ended(context)
            if status == "success":
                end = {"run_id": run_id, "status": status}
                yield b"event: end\ndata: " + orjson.dumps(end) + b"\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return [
        Route("/ok", ok, methods=["GET"]),
        Route("/assistants/search", search, methods=["POST"]),
        Route("/assistants/{assistant_id}", get_assistant, methods=["GET"]),
        Route("/assistants/{assistant_id}/graph", get_graph, methods=["GET"]),
        Route("/assistants/{assistant_id}/schemas", get_schemas, methods=["GET"]),
        Route("/runs/wait", runs_wait, methods=["POST"]),
        Route("/runs/stream", runs_stream, methods=["POST"]),
    ]
