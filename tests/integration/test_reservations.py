"""Every path of a budget reservation's life, through the router graph.

A hold is taken when serverless takes an attempt (first or after a GPU
failure), released when serverless does not answer, settled with the real
serverless cost when it does, and never charged for a GPU answer. Each test
reads the budget counters and the reservations table after the run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from graphs.router import graph
from state.context import Context
from state.errors import AllBackendsFailedError, BackendRejectedError
from tests.conftest import TEST_KEY, Harness, budget_books

ASK = {"messages": [{"role": "user", "content": "Compare two sorting algorithms"}]}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
    }
]


async def only_row(context: Context) -> Any:
    assert context.services is not None
    (row,) = await context.services.ledger.rows()
    return row


async def test_serverless_answers_and_its_hold_is_settled_at_the_real_cost(both_up: Harness):
    context = await both_up.context()
    result = await graph.ainvoke({**ASK, "force_backend": "serverless"}, context=context)
    assert result["routing"]["backend"] == "serverless"
    after = await budget_books(context.services)  # type: ignore[arg-type]
    row = await only_row(context)
    assert after["holds"] == ["settled"]
    assert after["committed"] == pytest.approx(row.cost_usd)
    assert row.cost_usd > 0
    assert after["reserved"] == pytest.approx(0.0)


async def test_serverless_fails_then_gpu_answers_and_the_hold_is_released(harness: Harness):
    await harness.start("serverless", api_key=TEST_KEY, fail_rate=1.0, fail_status=500)
    await harness.start("gpu")
    context = await harness.context()
    result = await graph.ainvoke({**ASK, "force_backend": "serverless"}, context=context)
    assert [a["backend"] for a in result["routing"]["attempts"]] == ["serverless", "gpu"]
    assert result["cost_usd"] > 0  # the GPU share of the pool, on the ledger row
    after = await budget_books(context.services)  # type: ignore[arg-type]
    assert after["holds"] == ["released"]
    # the GPU answer's cost never reaches the serverless budget
    assert after["committed"] == pytest.approx(0.0)
    assert after["reserved"] == pytest.approx(0.0)


async def test_gpu_fails_then_serverless_holds_at_the_fallback_and_settles(harness: Harness):
    await harness.start("serverless", api_key=TEST_KEY)
    await harness.start("gpu", fail_rate=1.0, fail_status=503)
    context = await harness.context()
    result = await graph.ainvoke(ASK, context=context)
    assert [a["backend"] for a in result["routing"]["attempts"]] == ["gpu", "serverless"]
    after = await budget_books(context.services)  # type: ignore[arg-type]
    row = await only_row(context)
    assert after["holds"] == ["settled"]
    assert after["committed"] == pytest.approx(row.cost_usd)
    assert row.cost_usd > 0
    assert after["reserved"] == pytest.approx(0.0)


async def test_a_refused_hold_at_the_fallback_ends_the_request_as_failed(harness: Harness):
    await harness.start("serverless", api_key=TEST_KEY)
    await harness.start("gpu", fail_rate=1.0, fail_status=503)
    context = await harness.context(lambda_daily_budget=0.0)
    with pytest.raises(AllBackendsFailedError, match="daily budget"):
        await graph.ainvoke(ASK, context=context)
    after = await budget_books(context.services)  # type: ignore[arg-type]
    assert after["holds"] == []
    assert after["committed"] == 0.0
    assert (await only_row(context)).status == "failed"


async def test_both_fail_and_the_hold_is_released(harness: Harness):
    await harness.start("serverless", api_key=TEST_KEY, fail_rate=1.0, fail_status=502)
    await harness.start("gpu", fail_rate=1.0, fail_status=503)
    context = await harness.context()
    with pytest.raises(AllBackendsFailedError):
        await graph.ainvoke({**ASK, "force_backend": "serverless"}, context=context)
    after = await budget_books(context.services)  # type: ignore[arg-type]
    assert after["holds"] == ["released"]
    assert after["committed"] == pytest.approx(0.0)
    assert after["reserved"] == pytest.approx(0.0)
    assert (await only_row(context)).status == "failed"


async def test_a_client_error_releases_the_hold_without_fallback(both_up: Harness):
    context = await both_up.context()
    bad = {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}
    with pytest.raises(BackendRejectedError) as caught:
        await graph.ainvoke({**ASK, "force_backend": "serverless", "params": bad}, context=context)
    assert caught.value.status_code == 400
    after = await budget_books(context.services)  # type: ignore[arg-type]
    assert after["holds"] == ["released"]
    assert after["committed"] == pytest.approx(0.0)
    assert after["reserved"] == pytest.approx(0.0)
    row = await only_row(context)
    assert row.status == "failed"
    assert row.fallbacks == 0


async def test_a_cancelled_stream_gives_its_hold_back(harness: Harness):
    await harness.start("serverless", api_key=TEST_KEY, ttft_ms=0, tpot_ms=50)
    await harness.start("gpu")
    context = await harness.context()
    stream = graph.astream(
        {**ASK, "force_backend": "serverless", "stream": True, "max_tokens": 200},
        context=context,
        stream_mode="custom",
    )
    async for _event in stream:
        break  # the caller goes away after the first token
    await stream.aclose()
    await asyncio.sleep(0.05)
    after = await budget_books(context.services)  # type: ignore[arg-type]
    assert after["holds"] == ["released"]
    assert after["reserved"] == pytest.approx(0.0)
    assert after["committed"] == pytest.approx(0.0)
