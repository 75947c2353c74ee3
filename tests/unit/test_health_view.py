"""How /health describes one GPU endpoint in each state (no network: the pool is not probed)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from backends.gpu_pool import GpuEndpoint, GpuPool
from gateway.health import endpoint_view, scrub

NOW = 1000.0
WALL = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MODELS = ["small-model", "big-model"]


@pytest.fixture
def pool() -> GpuPool:
    return GpuPool(
        httpx.AsyncClient(),
        ["http://gpu-1:8000/v1"],
        concurrency_per_endpoint=2,
        kv_cache_busy=0.9,
    )


def probed(pool: GpuPool, **fields: Any) -> GpuEndpoint:
    endpoint = pool.endpoints[0]
    endpoint.healthy = True
    endpoint.last_probe = NOW - 1
    endpoint.models = frozenset(MODELS)
    endpoint.max_model_len = {"small-model": 8192, "big-model": 32768}
    for name, value in fields.items():
        setattr(endpoint, name, value)
    return endpoint


def view(pool: GpuPool, endpoint: GpuEndpoint, **kwargs: Any) -> dict[str, Any]:
    return endpoint_view(endpoint, pool, NOW, WALL, MODELS, **kwargs)


def test_up_serves_its_models_and_takes_traffic(pool: GpuPool):
    found = view(pool, probed(pool))
    assert found["status"] == "up"
    assert found["taking_traffic"] is True
    assert found["reason"] == "up"
    assert found["models"] == ["big-model", "small-model"]
    assert found["max_model_len"] == {"small-model": 8192, "big-model": 32768}
    assert found["error"] is None


def test_not_probed_yet(pool: GpuPool):
    found = view(pool, pool.endpoints[0])
    assert found["status"] == "unknown"
    assert found["reason"].startswith("not probed yet")
    assert found["models"] is None


def test_a_probe_that_timed_out_is_down(pool: GpuPool):
    found = view(pool, probed(pool), stale_before=NOW)
    assert found["status"] == "down"
    assert found["taking_traffic"] is False
    assert "timed out" in found["reason"]


def test_cooling_off_says_until_when_and_why(pool: GpuPool):
    endpoint = probed(
        pool,
        cooling_until=NOW + 30,
        tripped=True,
        failures=2,
        last_error="cannot reach http://op:hunter2@gpu-1:8000/v1: refused",
    )
    found = view(pool, endpoint)
    assert found["status"] == "cooling"
    assert found["taking_traffic"] is False
    assert found["cooling_until"] == "2026-12-01T12:00:30+00:00"
    assert found["reason"].startswith(
        "cooling off after 2 failures in a row until 2026-12-01T12:00:30+00:00 (30 s more)"
    )
    assert "hunter2" not in str(found)
    assert "http://gpu-1:8000/v1" in found["reason"]


def test_on_trial_after_a_cool_down(pool: GpuPool):
    found = view(pool, probed(pool, tripped=True, cooling_until=NOW - 1))
    assert found["status"] == "half_open"
    assert found["taking_traffic"] is True
    assert "(the trial request: the next request)" in found["reason"]
    busy = view(pool, probed(pool, tripped=True, cooling_until=NOW - 1, on_trial=True))
    assert busy["taking_traffic"] is False
    assert "in flight" in busy["reason"]


def test_down_says_why(pool: GpuPool):
    found = view(pool, probed(pool, healthy=False, last_error="/health answered HTTP 500"))
    assert found["status"] == "down"
    assert found["taking_traffic"] is False
    assert found["reason"] == "down: /health answered HTTP 500"


def test_kv_cache_busy_and_full(pool: GpuPool):
    busy = view(pool, probed(pool, kv_cache_usage=0.95))
    assert busy["status"] == "up"
    assert busy["taking_traffic"] is False
    assert "KV cache is busy (95% used, over GPU_KV_CACHE_BUSY 90%)" in busy["reason"]
    full = view(pool, probed(pool, kv_cache_usage=None, in_flight=2))
    assert full["taking_traffic"] is False
    assert "full: 2 requests on it, its capacity is 2" in full["reason"]


def test_up_but_not_serving_a_catalog_model(pool: GpuPool):
    found = view(pool, probed(pool, models=frozenset({"small-model"})))
    assert found["taking_traffic"] is True
    assert found["reason"] == "up; serves small-model, not big-model"


def test_scrub_drops_credentials_from_any_url():
    assert scrub("GET https://u:p@h:1/v1/x failed") == "GET https://h:1/v1/x failed"
    assert scrub(None) is None
