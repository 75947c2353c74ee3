"""The pool of dedicated GPU servers (vLLM): health, load and cool-down.

A background task probes every endpoint's ``/health``, ``/metrics`` (vLLM's
``vllm:num_requests_running`` and ``vllm:num_requests_waiting``) and
``/v1/models`` every few seconds, so picking an endpoint on the request path
costs no I/O. An endpoint that fails a request is skipped for a cool-down.
These figures are a cache of the servers' live state, not a record: the
ledger holds the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import orjson
from pydantic import SecretStr

from backends.errors import BackendError
from backends.openai_compat import OpenAICompatClient

logger = logging.getLogger(__name__)

# One failure may be a blip (the node's retry takes it); two in a row cool the endpoint off.
FAILURES_BEFORE_COOLDOWN = 2


def _parse_gauges(text: str) -> tuple[int, int]:
    """Sum vLLM's running and waiting request gauges from Prometheus text."""
    running = waiting = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_running"):
            running += float(line.rsplit(" ", 1)[-1])
        elif line.startswith("vllm:num_requests_waiting"):
            waiting += float(line.rsplit(" ", 1)[-1])
    return int(running), int(waiting)


@dataclass(slots=True)
class GpuEndpoint:
    """One vLLM server and what the router knows about it."""

    url: str
    client: OpenAICompatClient
    healthy: bool | None = None
    cooling_until: float = 0.0
    failures: int = 0
    running: int = 0
    waiting: int = 0
    in_flight: int = 0
    latency_ms: float | None = None
    models: frozenset[str] | None = None
    last_error: str | None = None
    last_probe: float = 0.0
    root_url: str = field(init=False)

    def __post_init__(self) -> None:
        """Derive the server root (``/health`` and ``/metrics`` live there)."""
        parts = urlsplit(self.url)
        self.root_url = f"{parts.scheme}://{parts.netloc}"

    def load(self) -> int:
        """Return the requests on this endpoint: the larger of probed and our own."""
        return max(self.running + self.waiting, self.in_flight)

    def available(self, now: float) -> bool:
        """Say whether the endpoint may take a request now."""
        return self.healthy is not False and now >= self.cooling_until

    def serves(self, model: str) -> bool:
        """Say whether the endpoint serves ``model`` (unknown until probed: assume yes)."""
        return self.models is None or model in self.models


class GpuPool:
    """Endpoints of the GPU pool, picked by health and load."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        urls: list[str],
        *,
        api_key: SecretStr | None = None,
        concurrency_per_endpoint: int = 16,
        cooldown_s: float = 30.0,
        probe_interval_s: float = 5.0,
    ) -> None:
        """Build one client per endpoint; probing starts on first use."""
        self.http = http
        self.endpoints = [
            GpuEndpoint(
                url=url, client=OpenAICompatClient(http, url, backend="gpu", api_key=api_key)
            )
            for url in urls
        ]
        self.concurrency_per_endpoint = concurrency_per_endpoint
        self.cooldown_s = cooldown_s
        self.probe_interval_s = probe_interval_s
        self._headers = {"authorization": f"Bearer {api_key.get_secret_value()}"} if api_key else {}
        self._probe_task: asyncio.Task[None] | None = None

    def __bool__(self) -> bool:
        """A pool is truthy when it has endpoints."""
        return bool(self.endpoints)

    def candidates(self, model: str, now: float | None = None) -> list[GpuEndpoint]:
        """Return the endpoints that may serve ``model`` now, least loaded first."""
        now = time.monotonic() if now is None else now
        ready = [e for e in self.endpoints if e.available(now) and e.serves(model)]
        # an endpoint that just failed goes last, so a retry tries another one first
        ready.sort(key=lambda e: (e.failures, e.load()))
        return ready

    def has_spare_capacity(self, model: str) -> bool:
        """Say whether some endpoint serving ``model`` has room for one more request."""
        ready = self.candidates(model)
        return bool(ready) and ready[0].load() < self.concurrency_per_endpoint

    def pick(self, model: str) -> GpuEndpoint | None:
        """Return the least-loaded endpoint that may serve ``model``, if any."""
        ready = self.candidates(model)
        return ready[0] if ready else None

    @contextlib.asynccontextmanager
    async def lease(self, endpoint: GpuEndpoint) -> AsyncIterator[GpuEndpoint]:
        """Hold a slot on ``endpoint`` for one call, and learn from how the call ended.

        A success clears the endpoint's failure state; a connection error,
        timeout, 408, 429 or 5xx counts against it; a client error (another
        4xx: the request's fault) and a cancelled call do not.
        """
        endpoint.in_flight += 1
        try:
            yield endpoint
        except BackendError as error:
            if not error.client_error:
                self.mark_failure(endpoint, error.detail)
            raise
        else:
            self.mark_success(endpoint)
        finally:
            endpoint.in_flight -= 1

    def mark_failure(self, endpoint: GpuEndpoint, error: str) -> None:
        """Count a failure; a second failure in a row puts the endpoint into cool-down."""
        endpoint.failures += 1
        endpoint.last_error = error
        if endpoint.failures >= FAILURES_BEFORE_COOLDOWN:
            endpoint.cooling_until = time.monotonic() + self.cooldown_s

    def unavailable_reason(self) -> str:
        """Say why no endpoint may take a request, with the last error seen."""
        errors = [e.last_error for e in self.endpoints if e.last_error]
        reason = f"no GPU endpoint is up ({len(self.endpoints)} down or cooling off)"
        return f"{reason}; last error: {errors[-1]}" if errors else reason

    def mark_success(self, endpoint: GpuEndpoint) -> None:
        """Clear an endpoint's failure state."""
        endpoint.cooling_until = 0.0
        endpoint.failures = 0
        endpoint.healthy = True
        endpoint.last_error = None

    def ensure_probing(self) -> None:
        """Start the background probe in the running loop, once."""
        if self._probe_task is None and self.endpoints:
            self._probe_task = asyncio.get_running_loop().create_task(
                self._probe_forever(), name="gpu-pool-probe"
            )

    async def _probe_forever(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self.probe_interval_s)

    async def probe(self) -> None:
        """Probe every endpoint once, concurrently."""
        await asyncio.gather(*(self._probe(e) for e in self.endpoints))

    async def _probe(self, endpoint: GpuEndpoint) -> None:
        started = time.perf_counter()
        timeout = httpx.Timeout(min(2.0, self.probe_interval_s))
        try:
            health = await self.http.get(
                f"{endpoint.root_url}/health", headers=self._headers, timeout=timeout
            )
            endpoint.latency_ms = (time.perf_counter() - started) * 1000
            endpoint.healthy = health.status_code == 200
            if not endpoint.healthy:
                endpoint.last_error = f"/health answered HTTP {health.status_code}"
                return
            metrics = await self.http.get(
                f"{endpoint.root_url}/metrics", headers=self._headers, timeout=timeout
            )
            if metrics.status_code == 200:
                endpoint.running, endpoint.waiting = _parse_gauges(metrics.text)
            models = await self.http.get(
                f"{endpoint.url}/models", headers=self._headers, timeout=timeout
            )
            if models.status_code == 200:
                data = orjson.loads(models.content).get("data") or []
                endpoint.models = frozenset(str(m["id"]) for m in data if "id" in m)
        except (httpx.HTTPError, orjson.JSONDecodeError, ValueError, AttributeError) as exc:
            endpoint.healthy = False
            endpoint.last_error = f"probe failed: {type(exc).__name__}"
            logger.debug("probe of %s failed: %s", endpoint.url, exc)
        finally:
            endpoint.last_probe = time.monotonic()

    async def aclose(self) -> None:
        """Stop the background probe."""
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None
