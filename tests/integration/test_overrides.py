"""Routing overrides: stored in the ledger, obeyed by every router process, exactly counted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from graphs.router import graph
from tests.conftest import TEST_KEY, Harness
from tests.integration.test_budgets import HARD, run_router_processes

SIMPLE = [{"role": "user", "content": "Hello!"}]


def hard(i: int, prefix: str = "h") -> dict[str, Any]:
    return {"messages": HARD, "max_tokens": 8, "request_id": f"{prefix}-{i}"}


async def test_the_next_three_go_to_gpu_then_routing_is_normal_again(both_up: Harness):
    context = await both_up.context(serverless_ratio=1.0)
    overrides = context.services.overrides  # type: ignore[union-attr]
    before = await graph.ainvoke(hard(0), context=context)
    assert before["routing"]["backend"] == "serverless"  # what normal routing does here
    await overrides.set("gpu", count=3, user="admin", note="testing the pool")
    backends = []
    for i in range(1, 6):
        result = await graph.ainvoke(hard(i), context=context)
        backends.append(result["routing"]["backend"])
    assert backends == ["gpu", "gpu", "gpu", "serverless", "serverless"]
    assert await overrides.active(fresh=True) == []


async def test_a_condition_sends_only_that_complexity_and_clear_ends_it(both_up: Harness):
    context = await both_up.context(serverless_ratio=1.0)
    overrides = context.services.overrides  # type: ignore[union-attr]
    await overrides.set("gpu", condition="high")
    complex_one = await graph.ainvoke(hard(0), context=context)
    assert complex_one["routing"]["backend"] == "gpu"
    assert "override" in complex_one["routing"]["reason"]
    simple = await graph.ainvoke({"messages": SIMPLE, "force_backend": None}, context=context)
    assert "override" not in simple["routing"]["reason"]
    assert await overrides.clear() == 1
    after = await graph.ainvoke(hard(1), context=context)
    assert after["routing"]["backend"] == "serverless"


async def test_an_override_to_a_backend_that_cannot_serve_is_passed_over(harness: Harness):
    await harness.start("serverless", api_key=TEST_KEY)
    context = await harness.context()  # no GPU endpoints
    await context.services.overrides.set("gpu", count=2)  # type: ignore[union-attr]
    result = await graph.ainvoke(hard(0), context=context)
    assert result["routing"]["backend"] == "serverless"
    (left,) = await context.services.overrides.active(fresh=True)  # type: ignore[union-attr]
    assert left.remaining == 2  # not counted: it did not apply


def test_bad_override_values_are_refused():
    from state.overrides import RoutingOverrides

    overrides = RoutingOverrides(None, lambda: None)  # type: ignore[arg-type]
    for kwargs in ({"backend": "tpu"}, {"backend": "gpu", "count": 0}):
        with pytest.raises(ValueError, match="must"):
            asyncio.run(overrides.set(**kwargs))  # type: ignore[arg-type]


async def test_two_processes_on_postgres_send_exactly_the_next_three_to_gpu(
    harness: Harness, database: dict[str, Any]
):
    if "database_schema" not in database:
        pytest.skip("sharing overrides between processes is the PostgreSQL deployment")
    await harness.start("serverless", api_key=TEST_KEY)
    await harness.start("gpu")
    services = await harness.services(serverless_ratio=1.0, **database)
    await services.overrides.set("gpu", count=3)
    backends = await run_router_processes(harness, database, requests_each=5)
    assert sorted(backends) == ["gpu"] * 3 + ["serverless"] * 7
    assert await services.overrides.active(fresh=True) == []
