"""Prometheus metrics of one gateway app, in a registry the app owns.

Each :func:`gateway.app.create_app` gets its own :class:`RouterMetrics` (and
``CollectorRegistry``), so several apps in one process (tests, a dashboard
beside the gateway) never clash over metric names. ``GET /metrics`` serves it
in Prometheus' text format. The chat-completions route records every request,
streaming or not, answered or failed:

- ``router_requests_total{backend, model, status}``: ``status`` is ``ok`` or the
  OpenAI error code answered (``budget_exceeded``, ``all_backends_failed``,
  ``invalid_value``, ``internal_error``, ``stream_interrupted``, ...; a stream the
  client closed early is ``cancelled``). Requests refused before routing have
  ``backend="none"`` and ``model="none"``.
- ``router_cost_usd_total``, ``router_prompt_tokens_total`` and
  ``router_completion_tokens_total`` by ``backend`` and ``model``.
- ``router_fallbacks_total{from_backend, to_backend}``: one per switch from one
  backend to the other within a request.
- ``router_request_latency_seconds{backend}`` (whole request, to the last byte of
  a stream) and ``router_time_to_first_token_seconds{backend}`` (streams)
  histograms.
- ``router_budget_used_usd``, ``router_budget_used_fraction`` and
  ``router_budget_limit_usd`` by ``scope``, ``key`` and ``period``: set at every
  scrape from :func:`state.reporting.budget_status.every_budget_status` (the
  ledger is shared, so these are the same in every process).

With several uvicorn workers each worker has its own registry and a scrape
reaches one of them: the request counters and histograms are that worker's
share only (sum them per instance in Prometheus, or scrape each worker), while
the budget gauges, read from the ledger, are the whole router's. The ledger
(``GET /stats``, ``GET /usage``) stays the source of truth for money.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from state.errors import AllBackendsFailedError, RouterError

logger = logging.getLogger(__name__)

NONE = "none"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def error_status(exc: BaseException) -> str:
    """Return the ``status`` label of a failed request: the error code it was answered with."""
    return str(exc.code) if isinstance(exc, RouterError) else "internal_error"


class RouterMetrics:
    """The gateway's counters, histograms and budget gauges, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Create the metrics in ``registry`` (a new one when None).

        Args:
            registry: Where the metrics live; pass one only to share it on purpose.
        """
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["backend", "model"]
        self.requests = Counter(
            "router_requests",
            "Chat requests by the backend and model that served them and how they ended.",
            [*labels, "status"],
            registry=self.registry,
        )
        self.cost = Counter(
            "router_cost_usd",
            "Cost of answered requests in USD (serverless tokens, GPU share).",
            labels,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "router_prompt_tokens",
            "Prompt tokens of answered requests.",
            labels,
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "router_completion_tokens",
            "Completion tokens of answered requests.",
            labels,
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "router_fallbacks",
            "Switches from a failed backend to the other one within a request.",
            ["from_backend", "to_backend"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "router_request_latency_seconds",
            "Time from the request's arrival to its last byte, by backend.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "router_time_to_first_token_seconds",
            "Time from a streaming request's arrival to its first token, by backend.",
            ["backend"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        window = ["scope", "key", "period"]
        self.budget_used_usd = Gauge(
            "router_budget_used_usd",
            "Committed serverless spend of the current budget window.",
            window,
            registry=self.registry,
        )
        self.budget_used_fraction = Gauge(
            "router_budget_used_fraction",
            "Committed spend over the limit of the current budget window.",
            window,
            registry=self.registry,
        )
        self.budget_limit_usd = Gauge(
            "router_budget_limit_usd",
            "Limit of the current budget window.",
            window,
            registry=self.registry,
        )

    # -- requests -------------------------------------------------------------------------

    def observe(
        self,
        *,
        backend: str | None,
        model: str | None,
        status: str,
        latency_s: float,
        usage: Mapping[str, Any] | None = None,
        cost_usd: float = 0.0,
        attempts: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Record one finished request.

        Args:
            backend: The backend that served it (None: none did).
            model: The model that served it.
            status: ``ok`` or the error code it was answered with.
            latency_s: Seconds from its arrival to its last byte.
            usage: Its token counts, when answered.
            cost_usd: Its cost.
            attempts: Its backend calls, in order (for the fallback counter).
        """
        backend_label, model_label = backend or NONE, model or NONE
        self.requests.labels(backend_label, model_label, status).inc()
        self.latency.labels(backend_label).observe(max(latency_s, 0.0))
        if cost_usd:
            self.cost.labels(backend_label, model_label).inc(max(float(cost_usd), 0.0))
        if usage:
            prompt = int(usage.get("prompt_tokens") or 0)
            completion = int(usage.get("completion_tokens") or 0)
            self.prompt_tokens.labels(backend_label, model_label).inc(prompt)
            self.completion_tokens.labels(backend_label, model_label).inc(completion)
        for before, after in itertools.pairwise(attempts):
            if before.get("backend") != after.get("backend"):
                self.fallbacks.labels(str(before.get("backend")), str(after.get("backend"))).inc()

    def observe_result(self, result: Mapping[str, Any], latency_s: float) -> None:
        """Record an answered request from the graph's final values.

        Args:
            result: ``routing``, ``usage`` and ``cost_usd`` of the run.
            latency_s: Seconds from its arrival to its last byte.
        """
        routing = result.get("routing") or {}
        self.observe(
            backend=routing.get("backend"),
            model=routing.get("model"),
            status="ok",
            latency_s=latency_s,
            usage=result.get("usage"),
            cost_usd=float(result.get("cost_usd") or 0.0),
            attempts=routing.get("attempts") or (),
        )

    def observe_error(
        self,
        exc: BaseException,
        latency_s: float,
        *,
        backend: str | None = None,
        model: str | None = None,
        status: str | None = None,
    ) -> None:
        """Record a failed request.

        Args:
            exc: What it failed with.
            latency_s: Seconds from its arrival to its answer.
            backend: The backend that was serving it, if any.
            model: Its model, if known.
            status: The label to record instead of the error's code.
        """
        attempts: Sequence[Mapping[str, Any]] = ()
        if isinstance(exc, AllBackendsFailedError) and exc.attempts:
            attempts = exc.attempts
            backend = backend or attempts[-1].get("backend")
            model = model or attempts[-1].get("model")
        self.observe(
            backend=backend,
            model=model,
            status=status or error_status(exc),
            latency_s=latency_s,
            attempts=attempts,
        )

    def observe_first_token(self, backend: str, seconds: float) -> None:
        """Record a stream's time to first token.

        Args:
            backend: The backend that streams.
            seconds: Seconds from the request's arrival to its first token.
        """
        self.ttft.labels(backend).observe(max(seconds, 0.0))

    # -- budgets and the exposition -------------------------------------------------------

    def set_budgets(self, windows: Iterable[Mapping[str, Any]]) -> None:
        """Set the budget gauges to ``windows``, dropping every other budget's.

        Args:
            windows: Budget windows as :meth:`state.budgets.BudgetBook.status` gives
                them, one per scope, key and period (e.g.
                :func:`state.reporting.budget_status.every_budget_status`).
        """
        # No await here: a scrape never sees the gauges half refreshed.
        for gauge in (self.budget_used_usd, self.budget_used_fraction, self.budget_limit_usd):
            gauge.clear()
        for window in windows:
            labels = (window["scope"], window["key"], window["period"])
            self.budget_used_usd.labels(*labels).set(window["spent_usd"])
            self.budget_used_fraction.labels(*labels).set(window["used_fraction"])
            self.budget_limit_usd.labels(*labels).set(window["limit_usd"])

    def exposition(self) -> tuple[bytes, str]:
        """Return the registry in Prometheus' text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
