"""The error a backend client raises when one call to one backend fails."""

from __future__ import annotations

from typing import Any

_NOT_THE_CALLERS_FAULT = frozenset({401, 403, 408, 425, 429})


class BackendError(Exception):
    """One call to one backend failed (raised by the backend clients).

    ``transient`` failures (connection errors, 408, 425, 429, 5xx) are worth one
    more try and then a fallback to the other backend; a timeout, a 401 or a
    403 falls back at once. A ``client_error`` (any other 4xx) is the caller's request being
    refused: it goes back to the caller as it is, with no fallback, and never
    counts against the backend's health. ``body`` is the backend's OpenAI
    error object (message, type, param, code), kept short.
    """

    def __init__(
        self,
        backend: str,
        model: str,
        message: str,
        *,
        status: int | None = None,
        transient: bool = False,
        body: dict[str, Any] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        """Describe the failed call without any secret."""
        super().__init__(f"{backend} ({model}): {message}")
        self.backend = backend
        self.model = model
        self.status = status
        self.transient = transient
        self.detail = message
        self.body = body
        self.retry_after_s = retry_after_s  # the backend's Retry-After, when it sent one
        self.latency_ms = 0.0
        # the caller already holds part of this answer (streamed): another server's answer
        # cannot be spliced on, so neither a retry nor another endpoint or provider takes it
        self.partial = False

    @property
    def client_error(self) -> bool:
        """Say whether the backend refused the request itself.

        Any 4xx but 408, 425 and 429 (come back later) and 401 and 403: those
        say the router's own key for that backend is wrong, which is an outage
        of that backend for the caller, not the caller's mistake.
        """
        return (
            self.status is not None
            and 400 <= self.status < 500
            and self.status not in _NOT_THE_CALLERS_FAULT
        )
