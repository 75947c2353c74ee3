"""The request-body limit (``MAX_REQUEST_BYTES``), a pure ASGI middleware.

:class:`BodyLimitMiddleware` wraps the gateway app, so it guards every route
(and, under ``langgraph dev``, the LangGraph server's routes too, since the
gateway app's middleware becomes the server's):

- a ``Content-Length`` over the limit is answered 413 at once, before a byte
  of the body is read (a client that sent ``Expect: 100-continue`` is never
  asked for it);
- a body without one (chunked, streamed) is counted as the app reads it; the
  read that passes the limit sends the 413 and raises
  :class:`RequestTooLargeError` into the app, which then reads no more. Any
  answer the app makes after that is dropped: the caller sees the 413.

The 413 is an OpenAI error object (``code: request_too_large``) and carries
``Connection: close``, so the server stops taking in the rest of the upload.
Streaming responses pass through untouched (no ``BaseHTTPMiddleware``).

The limit comes from an async provider (the gateway reads its settings off the
event loop, once); if the settings cannot be read the default of 4 MiB holds
for that request, and the route itself reports what is wrong.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http_errors import send_error
from state.errors import BadRequestError
from state.settings import Settings

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "BodyLimitMiddleware",
    "LimitProvider",
    "RequestTooLargeError",
]

LimitProvider = Callable[[], Awaitable[int]]
"""Returns the largest request body to accept, in bytes."""

DEFAULT_MAX_REQUEST_BYTES: int = Settings.model_fields["max_request_bytes"].default

_CLOSE = [(b"connection", b"close")]


class RequestTooLargeError(BadRequestError):
    """The request body is longer than ``MAX_REQUEST_BYTES``."""

    status_code = 413
    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        """Name the limit and the setting behind it."""
        super().__init__(
            f"the request body is over the {limit}-byte limit (MAX_REQUEST_BYTES); send a "
            "smaller request (fewer or shorter messages), or ask the operator to raise "
            "MAX_REQUEST_BYTES"
        )
        self.limit = limit


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class _CountedBody:
    """The receive and send channels of one request, counting its body."""

    __slots__ = ("_answered", "_limit", "_receive", "_request_id", "_send", "received", "refused")

    def __init__(self, receive: Receive, send: Send, limit: int, request_id: str) -> None:
        self._receive = receive
        self._send = send
        self._limit = limit
        self._request_id = request_id
        self.received = 0
        self.refused = False
        self._answered: bool | None = None  # None: nothing sent yet; True: the 413 was

    async def receive(self) -> Message:
        if self.refused:
            raise RequestTooLargeError(self._limit)
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self._limit:
                self.refused = True
                exc = RequestTooLargeError(self._limit)
                if self._answered is None:
                    self._answered = True
                    await send_error(self._send, exc, self._request_id, _CLOSE)
                raise exc
        return message

    async def send(self, message: Message) -> None:
        if self._answered:
            return  # the 413 went out: the app's own answer is dropped
        self._answered = False
        await self._send(message)


class BodyLimitMiddleware:
    """Pure ASGI middleware: refuse request bodies over the limit with a 413."""

    def __init__(self, app: ASGIApp, limit: LimitProvider) -> None:
        """Wrap ``app``.

        Args:
            app: The application to guard.
            limit: Returns the largest body to accept, in bytes.
        """
        self.app = app
        self.limit = limit

    async def _current_limit(self) -> int:
        try:
            return await self.limit()
        except Exception as exc:
            # the type only: the message may hold what the settings hold
            logger.warning(
                "could not read MAX_REQUEST_BYTES (%s); the default %d bytes hold",
                type(exc).__name__,
                DEFAULT_MAX_REQUEST_BYTES,
            )
            return DEFAULT_MAX_REQUEST_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with its body counted, or answer 413."""
        root_path = scope.get("root_path") or ""
        if scope["type"] != "http" or root_path == "/noauth" or root_path.startswith("/noauth/"):
            # not HTTP, or the LangGraph server's in-process loopback: no client's body
            await self.app(scope, receive, send)
            return
        limit = await self._current_limit()
        request_id = uuid.uuid4().hex
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await send_error(send, RequestTooLargeError(limit), request_id, _CLOSE)
            return
        body = _CountedBody(receive, send, limit, request_id)
        try:
            await self.app(scope, body.receive, body.send)
        except RequestTooLargeError:
            if not body.refused:
                raise
