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
- Per GPU endpoint (label ``endpoint``: its URL without credentials, query or
  fragment): ``router_gpu_endpoint_requests_total``,
  ``router_gpu_endpoint_failures_total``, ``router_gpu_endpoint_cooldowns_total``,
  ``router_gpu_endpoint_in_flight``, ``router_gpu_endpoint_peak_in_flight`` and
  ``router_gpu_endpoint_up``: copied from the pool (:meth:`RouterMetrics.observe_pool`)
  after every chat request, batch and graph-API run, and at every scrape.

With several workers (``hybrid-router serve --workers N``) the server sets
``PROMETHEUS_MULTIPROC_DIR`` and prometheus-client's multiprocess mode keeps
every worker's counters and histograms in files there, so whichever worker a
scrape reaches answers the whole server's totals; a worker's live gauges
(in flight, up) leave with it (:func:`mark_worker_dead`). Another worker's
in-flight and up gauges are as of its last request or scrape. The ledger
(``GET /stats``, ``GET /usage``) stays the source of truth for money.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from backends.gpu_pool import GpuPool, shown_url
from state.errors import AllBackendsFailedError, RouterError

logger = logging.getLogger(__name__)

NONE = "none"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
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
        self._budgets = _BudgetGauges()
        self.registry.register(self._budgets)
        endpoint = ["endpoint"]
        self.endpoint_requests = Counter(
            "router_gpu_endpoint_requests",
            "Requests this router sent to each GPU endpoint (every try, retries included).",
            endpoint,
            registry=self.registry,
        )
        self.endpoint_failures = Counter(
            "router_gpu_endpoint_failures",
            "Requests to each GPU endpoint that failed as the server's fault (connection "
            "error, timeout, 401, 403, 408, 425, 429, 5xx).",
            endpoint,
            registry=self.registry,
        )
        self.endpoint_cooldowns = Counter(
            "router_gpu_endpoint_cooldowns",
            "Times each GPU endpoint was put to cool off after failures.",
            endpoint,
            registry=self.registry,
        )
        self.endpoint_in_flight = Gauge(
            "router_gpu_endpoint_in_flight",
            "This router's requests on each GPU endpoint now (summed over live workers).",
            endpoint,
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.endpoint_peak_in_flight = Gauge(
            "router_gpu_endpoint_peak_in_flight",
            "Most of this router's requests on each GPU endpoint at once (per worker: the "
            "highest).",
            endpoint,
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.endpoint_up = Gauge(
            "router_gpu_endpoint_up",
            "1 when the GPU endpoint takes traffic (up, or on trial after a cool-down); 0 "
            "when it is down, cooling off or not probed yet (with several workers: 1 only "
            "when every live worker sees it up).",
            endpoint,
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        # the pool's counts when they were last copied, by endpoint URL
        self._synced: dict[str, tuple[int, int, int]] = {}
        self._labels: dict[str, str] = {}  # endpoint URL -> label (without credentials)

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
        self._budgets.windows = list(windows)

    # -- the GPU pool ---------------------------------------------------------------------

    def observe_pool(self, pool: GpuPool) -> None:
        """Copy the GPU pool's per-endpoint figures into the endpoint series.

        Called after every request and at every scrape: the pool's counters only
        grow, so each copy adds what they grew by since the last one (with several
        workers the files of every worker then sum to the exact totals).

        Args:
            pool: The pool whose endpoints to show.
        """
        now = time.monotonic()
        for endpoint in pool.endpoints:
            label = self._labels.get(endpoint.url)
            if label is None:
                label = self._labels[endpoint.url] = shown_url(endpoint.url)
            counts = (endpoint.requests, endpoint.failed_requests, endpoint.cooldowns)
            before = self._synced.get(endpoint.url)
            if counts != before:
                series = (self.endpoint_requests, self.endpoint_failures, self.endpoint_cooldowns)
                for counter, count, then in zip(series, counts, before or (0, 0, 0), strict=True):
                    # inc(0) still creates the series: every endpoint shows from the start
                    counter.labels(label).inc(max(count - then, 0))
                self._synced[endpoint.url] = counts
            self.endpoint_in_flight.labels(label).set(endpoint.in_flight)
            self.endpoint_peak_in_flight.labels(label).set(endpoint.peak_in_flight)
            self.endpoint_up.labels(label).set(
                1 if endpoint.status(now) in ("up", "half_open") else 0
            )

    def exposition(self) -> tuple[bytes, str]:
        """Return the metrics in Prometheus' text format and its content type.

        With ``PROMETHEUS_MULTIPROC_DIR`` set (``hybrid-router serve --workers N``),
        the counters and histograms are every worker's, read from that directory;
        the budget gauges are this worker's reading of the shared ledger.
        """
        if not multiprocess_dir():
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(self._budgets)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def multiprocess_dir() -> str | None:
    """Return ``PROMETHEUS_MULTIPROC_DIR`` when set: the workers share their metrics there."""
    return os.environ.get(MULTIPROC_ENV) or None


def mark_worker_dead(pid: int | None = None) -> None:
    """Drop a finished worker's live gauges (its counters stay in the totals).

    Args:
        pid: The worker's process id (this process when None).
    """
    path = multiprocess_dir()
    if path:
        multiprocess.mark_process_dead(os.getpid() if pid is None else pid, path)


class _BudgetGauges(Collector):
    """The budget gauges, from the windows of the last scrape (the ledger is shared)."""

    def __init__(self) -> None:
        self.windows: list[Mapping[str, Any]] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        window = ["scope", "key", "period"]
        families = [
            (
                "router_budget_used_usd",
                "Committed serverless spend of the current budget window.",
                "spent_usd",
            ),
            (
                "router_budget_used_fraction",
                "Committed spend over the limit of the current budget window.",
                "used_fraction",
            ),
            ("router_budget_limit_usd", "Limit of the current budget window.", "limit_usd"),
        ]
        windows = self.windows
        for name, help_text, field in families:
            family = GaugeMetricFamily(name, help_text, labels=window)
            for w in windows:
                family.add_metric([w["scope"], w["key"], w["period"]], float(w[field]))
            yield family
