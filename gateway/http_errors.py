"""OpenAI error answers for what the gateway's routes do not serve.

The gateway answers every error with an OpenAI error object
``{"error": {"message", "type", "code", "param"}}``, including the ones
Starlette would otherwise answer in plain text:

- a path under ``/v1/`` that no route serves (``/v1/completions``,
  ``/v1/embeddings``, ``/v1/models/a/b``, ...): 404 ``not_found``, naming the
  routes the router does serve;
- a served path with the wrong method (``GET /v1/chat/completions``): 405
  ``method_not_allowed`` with an ``Allow`` header;
- ``GET /v1/models/{id}`` of a model the router does not have: 404
  ``model_not_found``.

The first two come from :func:`v1_fallback_routes`, a catch-all the app lists
after its real routes. It covers ``/v1`` only: under ``langgraph dev`` the
gateway app is the base of the LangGraph server, whose own routes and error
answers must stay as they are, so there is no catch-all elsewhere and no
exception handler for 404 or 405.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from gateway.openai_format import error_body
from state.errors import RouterError

__all__ = [
    "MethodNotAllowedError",
    "ModelNotFoundError",
    "RouteNotFoundError",
    "send_error",
    "v1_fallback_routes",
]

SERVED = "POST /v1/chat/completions, GET /v1/models and GET /v1/models/{id}"
"""The OpenAI-compatible routes, as the error messages name them."""

_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _shown(text: str) -> str:
    """Quote a caller's path or id for a message, cut to a readable length."""
    return repr(text if len(text) <= 200 else text[:200] + "...")


class RouteNotFoundError(RouterError):
    """No gateway route serves this path."""

    status_code = 404
    code = "not_found"
    error_type = "invalid_request_error"

    def __init__(self, method: str, path: str) -> None:
        """Name what was asked for and what the router serves."""
        super().__init__(
            f"no route serves {method} {_shown(path)}: the router serves {SERVED} "
            "(OpenAI-compatible); check that the client's base URL ends in /v1 and that "
            "it calls one of these"
        )


class MethodNotAllowedError(RouterError):
    """The path is served, but not with this method."""

    status_code = 405
    code = "method_not_allowed"
    error_type = "invalid_request_error"

    def __init__(self, method: str, path: str, allowed: Sequence[str]) -> None:
        """Name the method, the path and the methods it answers."""
        self.allowed = tuple(allowed)
        super().__init__(
            f"{_shown(path)} does not answer {method}; it answers {', '.join(self.allowed)} "
            f"(the router serves {SERVED})"
        )


class ModelNotFoundError(RouterError):
    """``GET /v1/models/{id}`` of an id that is neither ``auto`` nor in the catalog."""

    status_code = 404
    code = "model_not_found"
    error_type = "invalid_request_error"

    def __init__(self, model_id: str) -> None:
        """Name the id and where the router's models are listed."""
        super().__init__(
            f"the model {_shown(model_id)} is not one of this router's models; list them with "
            "GET /v1/models, or use 'auto' to let the router choose"
        )
        self.param = "model"


async def send_error(
    send: Send,
    exc: RouterError,
    request_id: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Answer an HTTP request with ``exc`` as an OpenAI error object.

    Args:
        send: The ASGI send channel (the response must not have started).
        exc: The error; its status, code and message make the answer.
        request_id: Sent as ``x-request-id``.
        headers: More response headers.
    """
    status, body = error_body(exc, request_id)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _V1Fallback:
    """ASGI app behind the catch-all: 405 for a served path, 404 otherwise."""

    def __init__(self, served: Sequence[Route]) -> None:
        self.served = tuple(served)

    def _allowed(self, scope: Scope) -> list[str]:
        methods: set[str] = set()
        for route in self.served:
            match, _ = route.matches(scope)
            if match is Match.PARTIAL and route.methods:
                methods |= route.methods
        known = [m for m in _METHOD_ORDER if m in methods]
        return known + sorted(methods - set(known))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = uuid.uuid4().hex
        method, path = scope["method"], scope["path"]
        allowed = self._allowed(scope)
        if allowed:
            error: RouterError = MethodNotAllowedError(method, path, allowed)
            headers = [(b"allow", ", ".join(allowed).encode())]
        else:
            error, headers = RouteNotFoundError(method, path), []
        await send_error(send, error, request_id, headers)


def v1_fallback_routes(served: Sequence[Route]) -> list[Route]:
    """Return the catch-all routes of ``/v1``, to list after every real route.

    Args:
        served: The app's routes under ``/v1``: a request whose path one of them
            serves with another method is answered 405 with their methods.

    Returns:
        Routes for ``/v1`` and ``/v1/{anything}``, for every method, out of the
        OpenAPI schema.
    """
    fallback = _V1Fallback(served)
    return [
        Route("/v1", fallback, include_in_schema=False),
        Route("/v1/{path:path}", fallback, include_in_schema=False),
    ]
