"""``GET /health``: each backend's and each GPU endpoint's state, checked now.

Each GPU endpoint says whether it is taking traffic and why in one sentence
(``reason``): up; up but its KV cache is busy or it is full; cooling off after
failures until a given time; on trial after a cool-down; down and why; not
probed yet; and which of the catalog's GPU models it does not serve. Beside it:
its served models and their ``max_model_len``, its load, and its counters.

200 when at least one backend is up, else 503. Open without an API key;
endpoint URLs (credentials and query stripped) are shown only to callers with
a valid key, or to everyone when authentication is off. Each serverless
provider is listed (name, host, models, up/down/disabled, never its key) and
asked for its ``/models`` (the key is sent there and nowhere else); the GPU
pool is probed again when its figures are older than its probe interval.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import Response

from backends.gpu_pool import GpuEndpoint, GpuPool
from backends.providers import ServerlessProvider
from gateway.auth import caller
from state.context import Services

logger = logging.getLogger(__name__)

SERVERLESS_TIMEOUT_S = 2.0
"""Timeout of the health check's ``GET {base_url}/models`` of each serverless provider."""
PROBE_TIMEOUT_S = 2.5
"""How long ``/health`` waits for a fresh probe of the GPU pool."""


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def public_url(url: str) -> str:
    """Return ``url`` without credentials, query or fragment (safe to show).

    Args:
        url: A backend's base URL.

    Returns:
        ``scheme://host[:port]/path``.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class HealthCheck:
    """Checks the backends for ``GET /health``; one pool probe at a time."""

    def __init__(self, services: Callable[[], Awaitable[Services]]) -> None:
        """Bind the provider of the router's services."""
        self._services = services
        self._probes: weakref.WeakKeyDictionary[GpuPool, asyncio.Task[None]] = (
            weakref.WeakKeyDictionary()
        )

    async def answer(self, request: Request) -> Response:
        """Answer ``GET /health``: every backend's and GPU endpoint's state.

        Responses:
          '200':
            description: >-
              at least one backend is up. {status: ok|degraded, checked_at, backends:
              {serverless: {status: up|down|disabled, providers: [{name, host, url, models,
              ends_on, status: up|down|disabled, latency_ms, error}]},
              gpu: {status, endpoints_up, latency_ms, load, capacity, endpoints: [{endpoint,
              url, status: up|down|cooling|half_open|unknown, taking_traffic, reason,
              models, max_model_len, latency_ms, running, waiting, in_flight, load,
              capacity, kv_cache_usage, cooling_until, requests, failed_requests,
              cooldowns, affinity_requests, last_probe_age_s, error}]}}}
          '503': {description: no backend is up (same body, status down)}
        """
        try:
            services = await self._services()
        except Exception:
            logger.exception("health check: the router's services could not be built")
            return _json(
                {
                    "status": "down",
                    "error": "the router's services could not be built; see the server log",
                },
                503,
            )
        show_urls = not services.settings.router_api_keys or caller(request) is not None
        serverless, gpu = await asyncio.gather(
            self._serverless_health(services, show_urls),
            self._gpu_health(services, show_urls),
        )
        states = [serverless["status"], gpu["status"]]
        enabled = [s for s in states if s != "disabled"]
        up = [s for s in states if s == "up"]
        status = "ok" if up and len(up) == len(enabled) else "degraded" if up else "down"
        body = {
            "status": status,
            "checked_at": services.clock().isoformat(),
            "backends": {"serverless": serverless, "gpu": gpu},
        }
        return _json(body, 200 if up else 503)

    async def _serverless_health(self, services: Services, show_urls: bool) -> dict[str, Any]:
        """Check every serverless provider at once; up when at least one is up."""
        settings = services.settings
        providers = services.providers
        if settings.disable_lambda_labs:
            return {"status": "disabled", "reason": "DISABLE_LAMBDA_LABS is set", "providers": []}
        if not providers and not providers.disabled:
            return {
                "status": "disabled",
                "reason": "no serverless provider is configured (SERVERLESS_PROVIDERS or "
                "LAMBDA_API_KEY)",
                "providers": [],
            }
        entries = list(
            await asyncio.gather(*(self._provider_health(p, show_urls) for p in providers))
        )
        for spec in providers.disabled:
            entries.append(
                {
                    "name": spec.name,
                    "host": urlsplit(spec.base_url).hostname,
                    "models": sorted(spec.offers),
                    "status": "disabled",
                }
            )
        up = [e for e in entries if e["status"] == "up"]
        status = "up" if up else "disabled" if not providers else "down"
        return {"status": status, "providers": entries}

    async def _provider_health(
        self, provider: ServerlessProvider, show_urls: bool
    ) -> dict[str, Any]:
        """Ask one provider for its ``/models`` (the key is sent there and nowhere else)."""
        spec = provider.spec
        entry: dict[str, Any] = {"name": spec.name, "host": urlsplit(spec.base_url).hostname}
        if show_urls:
            entry["url"] = public_url(spec.base_url)
        entry["models"] = sorted(spec.offers)
        if spec.ends_on is not None:
            entry["ends_on"] = spec.ends_on
        key = spec.api_key
        headers = {"authorization": f"Bearer {key.get_secret_value()}"} if key else {}
        started = time.perf_counter()
        try:
            response = await provider.client.http.get(
                f"{spec.base_url}/models",
                headers=headers,
                timeout=httpx.Timeout(SERVERLESS_TIMEOUT_S),
            )
        except httpx.HTTPError as exc:
            latency = (time.perf_counter() - started) * 1000
            return {
                **entry,
                "status": "down",
                "latency_ms": round(latency, 3),
                "error": f"GET /models failed: {type(exc).__name__}",
            }
        entry["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        if response.status_code != 200:
            return {
                **entry,
                "status": "down",
                "error": f"GET /models answered HTTP {response.status_code}",
            }
        return {**entry, "status": "up", "error": None}

    async def _fresh_probe(self, pool: GpuPool) -> float:
        """Probe the pool when its data is older than the probe interval.

        Returns:
            The ``time.monotonic()`` before which a probe result counts as stale
            (its endpoints' probes did not finish in time).
        """
        now = time.monotonic()
        if all(now - e.last_probe <= pool.probe_interval_s for e in pool.endpoints):
            return 0.0
        task = self._probes.get(pool)
        if task is None or task.done():
            # One probe at a time, shared by concurrent health checks; a timeout
            # leaves it running (shielded) to update the pool when it finishes.
            task = asyncio.ensure_future(pool.probe())
            self._probes[pool] = task
        try:
            await asyncio.wait_for(asyncio.shield(task), PROBE_TIMEOUT_S)
        except TimeoutError:
            return now
        return 0.0

    async def _gpu_health(self, services: Services, show_urls: bool) -> dict[str, Any]:
        pool = services.gpu_pool
        if not pool:
            return {"status": "disabled", "reason": "no GPU_ENDPOINTS are configured"}
        stale_before = await self._fresh_probe(pool)
        now = time.monotonic()
        wall_now = services.clock()
        gpu_models = [m.served_name("gpu") for m in services.catalog.offered("gpu")]
        endpoints = [
            self._endpoint(i, e, pool, now, stale_before, show_urls, wall_now, gpu_models)
            for i, e in enumerate(pool.endpoints)
        ]
        up = [e for e in endpoints if e["status"] in ("up", "half_open")]
        latencies = [e["latency_ms"] for e in up if e["latency_ms"] is not None]
        return {
            "status": "up" if up else "down",
            "endpoints_up": len(up),
            "latency_ms": min(latencies) if latencies else None,
            "load": sum(e["load"] for e in endpoints),
            "capacity": pool.concurrency_per_endpoint * len(endpoints),
            "endpoints": endpoints,
        }

    @staticmethod
    def _endpoint(
        index: int,
        endpoint: GpuEndpoint,
        pool: GpuPool,
        now: float,
        stale_before: float,
        show_urls: bool,
        wall_now: datetime,
        gpu_models: Sequence[str],
    ) -> dict[str, Any]:
        view = endpoint_view(endpoint, pool, now, wall_now, gpu_models, stale_before)
        entry: dict[str, Any] = {"endpoint": index}
        if show_urls:
            entry["url"] = public_url(endpoint.url)
        else:
            # a reason may quote the endpoint's URL: only its position is shown
            for shown in (public_url(endpoint.url), public_url(endpoint.root_url)):
                for key in ("error", "reason"):
                    if view[key]:
                        view[key] = view[key].replace(shown, f"endpoint {index}")
        entry.update(view)
        return entry


_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]*@")


def scrub(text: str | None) -> str | None:
    """Return ``text`` with the credentials of any URL in it removed."""
    return None if text is None else _USERINFO.sub(r"\g<scheme>", text)


def endpoint_view(
    endpoint: GpuEndpoint,
    pool: GpuPool,
    now: float,
    wall_now: datetime,
    gpu_models: Sequence[str] = (),
    stale_before: float = 0.0,
) -> dict[str, Any]:
    """Describe one GPU endpoint for ``/health``: its state, figures and why it takes traffic.

    Args:
        endpoint: The endpoint.
        pool: Its pool (capacity, KV-cache threshold).
        now: ``time.monotonic()`` of the check.
        wall_now: The same instant on the wall clock (for ``cooling_until``).
        gpu_models: The catalog's GPU models (served names), to say which it lacks.
        stale_before: A probe older than this timed out (0: none did).

    Returns:
        ``status`` (up, down, cooling, half_open, unknown), ``taking_traffic``,
        ``reason`` (one sentence, no secrets), the served ``models`` and their
        ``max_model_len``, the load figures, the counters and ``error``.
    """
    status = endpoint.status(now)
    error = scrub(endpoint.last_error)
    cooling_until: str | None = None
    busy = pool.busy(endpoint)
    load, capacity = endpoint.load(), pool.concurrency_per_endpoint
    kv = endpoint.kv_cache_usage
    missing = [m for m in gpu_models if endpoint.models is not None and m not in endpoint.models]
    if stale_before and endpoint.last_probe < stale_before:
        status = "down"
        error = f"health probe timed out after {PROBE_TIMEOUT_S:g} s"
        reason = f"down: its {error}"
    elif status == "unknown":
        reason = "not probed yet: its first health probe has not answered"
    elif status == "down":
        reason = f"down: {error or 'its last probe failed'}"
    elif status == "cooling":
        until = wall_now + timedelta(seconds=endpoint.cooling_until - now)
        cooling_until = until.isoformat()
        reason = (
            f"cooling off after {endpoint.failures} failure"
            f"{'s' if endpoint.failures != 1 else ''} in a row until {cooling_until} "
            f"({endpoint.cooling_until - now:.0f} s more)"
            + (f"; last error: {error}" if error else "")
        )
    elif status == "half_open":
        trial = "in flight" if endpoint.on_trial else "the next request"
        reason = (
            "on trial after a cool-down: one request at a time until one succeeds "
            f"(the trial request: {trial})"
        )
    elif kv is not None and kv > pool.kv_cache_busy:
        reason = (
            f"up, but its KV cache is busy ({kv:.0%} used, over GPU_KV_CACHE_BUSY "
            f"{pool.kv_cache_busy:.0%}): new requests go to other endpoints meanwhile"
        )
    elif busy:
        reason = (
            f"up, but full: {load} requests on it, its capacity is {capacity} "
            "(GPU_CONCURRENCY_PER_ENDPOINT)"
        )
    else:
        reason = "up"
    if status in ("up", "half_open") and missing:
        served = ", ".join(sorted(endpoint.models or ())) or "no model"
        reason += f"; serves {served}, not {', '.join(missing)}"
    if status == "up":
        error = None
    taking = status in ("up", "half_open", "unknown") and endpoint.available(now) and not busy
    if stale_before and endpoint.last_probe < stale_before:
        taking = False
    return {
        "status": status,
        "taking_traffic": taking,
        "reason": reason,
        "models": sorted(endpoint.models) if endpoint.models is not None else None,
        "max_model_len": dict(endpoint.max_model_len),
        "latency_ms": round(endpoint.latency_ms, 3) if endpoint.latency_ms is not None else None,
        "running": endpoint.running,
        "waiting": endpoint.waiting,
        "in_flight": endpoint.in_flight,
        "load": load,
        "capacity": capacity,
        "kv_cache_usage": kv,
        "cooling_until": cooling_until,
        "requests": endpoint.requests,
        "failed_requests": endpoint.failed_requests,
        "cooldowns": endpoint.cooldowns,
        "affinity_requests": endpoint.affinity_requests,
        "last_probe_age_s": round(now - endpoint.last_probe, 3) if endpoint.last_probe else None,
        "error": error,
    }
