"""Typed errors: a caller can tell its own mistake, a budget refusal and an outage apart.

Every error says what went wrong and what to do next, and carries the HTTP
status and OpenAI-style error code the gateway answers with.
"""

from __future__ import annotations

from typing import Any

from backends.errors import BackendError

__all__ = [
    "AllBackendsFailedError",
    "BackendError",
    "BackendRejectedError",
    "BadRequestError",
    "BudgetExceededError",
    "LedgerUnavailableError",
    "NoBackendAvailableError",
    "PromptTooLargeError",
    "RouterError",
]


class RouterError(RuntimeError):
    """Base class of the errors the router raises to its callers.

    A ``RuntimeError`` (and a bad request a ``ValueError``) so the LangGraph
    server shows the message to API callers instead of masking it; messages
    never hold secrets.
    """

    status_code = 500
    code = "router_error"
    error_type = "server_error"

    def __init__(self, message: str) -> None:
        """Keep the human message."""
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        """Return the OpenAI-style error body."""
        return {"message": self.message, "type": self.error_type, "code": self.code}


class BadRequestError(RouterError, ValueError):
    """The request itself is wrong: fix it and send it again."""

    status_code = 400
    code = "invalid_request"
    error_type = "invalid_request_error"


class PromptTooLargeError(BadRequestError):
    """The prompt plus the requested output fits no model's context window."""

    code = "context_length_exceeded"


class BudgetExceededError(RouterError):
    """Serving the request would spend past a budget, and policy says refuse."""

    status_code = 402
    code = "budget_exceeded"
    error_type = "budget_error"

    def __init__(
        self,
        message: str,
        *,
        remaining_usd: float | None = None,
        resets_at: str | None = None,
        retry_after_s: int | None = None,
        budget: dict[str, Any] | None = None,
    ) -> None:
        """Keep what remains of the budget, when it resets and which budget refused.

        Args:
            message: What was refused and what to do.
            remaining_usd: What the budget still allows.
            resets_at: When its window resets (ISO 8601).
            retry_after_s: Seconds until then (the HTTP ``Retry-After``).
            budget: The refusing budget: scope, key, period, window, limit, spent,
                held, remaining and the request's amount.
        """
        super().__init__(message)
        self.remaining_usd = remaining_usd
        self.resets_at = resets_at
        self.retry_after_s = retry_after_s
        self.budget = budget


class NoBackendAvailableError(RouterError):
    """No backend may serve the request under the current configuration."""

    status_code = 503
    code = "no_backend_available"


class BackendRejectedError(RouterError, ValueError):
    """The backend refused the request as malformed or unsupported (its 4xx, passed on).

    Sent back with the backend's status and message; not retried elsewhere,
    since another backend would refuse it too.
    """

    error_type = "invalid_request_error"

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        """Keep the backend's status, message, ``param`` and ``code``."""
        super().__init__(message)
        self.status_code = status
        self.param = param
        self.code = code or "backend_rejected_request"


class AllBackendsFailedError(RouterError):
    """Every backend the request was allowed to use failed."""

    status_code = 502
    code = "all_backends_failed"

    def __init__(self, attempts: list[dict[str, Any]]) -> None:
        """Name each backend's failure."""
        failures = "; ".join(
            f"{a['backend']} ({a['model']}): {a.get('error') or 'failed'}" for a in attempts
        )
        super().__init__(
            f"every backend failed: {failures or 'no backend was tried'}. "
            "Retry later, or check the backends' health (GET /health)."
        )
        self.attempts = attempts


class LedgerUnavailableError(RouterError):
    """The ledger's database could not be reached (connection lost or refused).

    The request was not recorded, so it is not answered: a request the router
    cannot account for is not served. Retrying is safe.
    """

    status_code = 503
    code = "ledger_unavailable"

    def __init__(self) -> None:
        """Say what failed and what to do; the database's own message stays in the log."""
        super().__init__(
            "the router lost its connection to the ledger database and could not record "
            "this request; retry in a moment, and if it persists check that the database "
            "at DATABASE_URL is up (GET /health)"
        )
