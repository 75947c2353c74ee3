"""Request-header limits (``MAX_HEADER_BYTES``, ``MAX_HEADER_COUNT``): a 431 before the app runs.

uvicorn's httptools parser keeps every header of a request in memory and sets
no limit of its own (its h11 parser has one, answered as a bare 400). The
protocol here is uvicorn's httptools protocol with two limits added, which
``hybrid-router serve`` hands to uvicorn:

- the request line and headers together may take at most ``MAX_HEADER_BYTES``
  (32 KiB by default): counted exactly as the parser reports them, and as the
  bytes arrive while the headers are incomplete, so one endless header cannot
  grow past the limit by more than one network read;
- at most ``MAX_HEADER_COUNT`` headers (100 by default).

A request past either is answered ``431 Request Header Fields Too Large`` with
an OpenAI error object (``code: request_header_fields_too_large``) naming the
limit and its setting, and the connection is closed; the app never sees it.
(``langgraph dev`` runs its own server, which these limits do not reach.)
"""

from __future__ import annotations

import functools
import logging
import uuid
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.openai_format import error_body
from state.errors import BadRequestError
from state.settings import Settings, get_settings

logger = logging.getLogger(__name__)

__all__ = ["HeaderLimitedProtocol", "HeadersTooLargeError"]

DEFAULT_MAX_HEADER_BYTES: int = Settings.model_fields["max_header_bytes"].default
DEFAULT_MAX_HEADER_COUNT: int = Settings.model_fields["max_header_count"].default


class HeadersTooLargeError(BadRequestError):
    """The request's headers pass ``MAX_HEADER_BYTES`` or ``MAX_HEADER_COUNT``."""

    status_code = 431
    code = "request_header_fields_too_large"

    def __init__(self, what: str) -> None:
        """Name the limit that was passed."""
        super().__init__(
            f"the request's headers are too large: {what}; send fewer or smaller headers "
            "(a large value belongs in the body)"
        )


@functools.cache
def _limits() -> tuple[int, int]:
    """Return the process's header limits (bytes, count), read from the settings once."""
    try:
        settings = get_settings()
    except Exception as exc:  # the app reports bad settings; the defaults guard meanwhile
        logger.warning("could not read the header limits (%s); defaults hold", type(exc).__name__)
        return DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADER_COUNT
    return settings.max_header_bytes, settings.max_header_count


class HeaderLimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol, refusing oversized headers with a 431."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Build the protocol and read the limits (once per process)."""
        super().__init__(*args, **kwargs)
        self._max_bytes, self._max_count = _limits()
        self._in_head = True
        self._head_bytes = 0  # bytes received since the request began, while in its head
        self._parsed_bytes = 0  # request line and headers as parsed
        self._refusal: HeadersTooLargeError | None = None

    def _too_large(self) -> HeadersTooLargeError:
        return HeadersTooLargeError(
            f"more than {self._max_bytes} bytes of request line and headers (MAX_HEADER_BYTES)"
        )

    def data_received(self, data: bytes) -> None:
        """Count the bytes of an unfinished head, feed the parser, refuse past the limit."""
        if self._refusal is not None:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self._max_bytes and self._refusal is None:
            self._refuse(self._too_large())

    def on_message_begin(self) -> None:
        """Start counting a new request's head."""
        super().on_message_begin()
        self._in_head = True
        self._parsed_bytes = 0

    def on_url(self, url: bytes) -> None:
        """Count the URL."""
        super().on_url(url)
        self._parsed_bytes += len(url)
        if self._parsed_bytes > self._max_bytes:
            raise self._raise(self._too_large())

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count the header; past a limit, stop the parser (answered 431)."""
        super().on_header(name, value)
        self._parsed_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._parsed_bytes > self._max_bytes:
            raise self._raise(self._too_large())
        if len(self.headers) > self._max_count:
            raise self._raise(
                HeadersTooLargeError(f"more than {self._max_count} headers (MAX_HEADER_COUNT)")
            )

    def on_headers_complete(self) -> None:
        """End the head: the body is the body limit's business."""
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def _raise(self, error: HeadersTooLargeError) -> HeadersTooLargeError:
        # raised inside a parser callback: httptools turns it into a parser error,
        # which uvicorn answers with send_400_response, answered here as the 431
        self._refusal = error
        return error

    def send_400_response(self, msg: str) -> None:
        """Answer a parser error: the 431 when a header limit stopped the parser."""
        if self._refusal is not None:
            self._send_431(self._refusal)
            return
        super().send_400_response(msg)

    def _refuse(self, error: HeadersTooLargeError) -> None:
        self._refusal = error
        self._send_431(error)

    def _send_431(self, error: HeadersTooLargeError) -> None:
        if self.transport.is_closing():
            return
        request_id = uuid.uuid4().hex
        status, body = error_body(error, request_id)
        logger.warning("refused a request with %s", error.message.split(": ", 1)[1].split(";")[0])
        head = (
            f"HTTP/1.1 {status} Request Header Fields Too Large\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            f"x-request-id: {request_id}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()
