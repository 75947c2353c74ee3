"""Backends misbehaving on cue: each request falls back or fails typed, charged once, one row.

The serverless emulator misbehaves; the GPU emulator is fine. Each request is
sent to serverless first (a budget hold is taken), so each case also proves
that a failed serverless call is never charged and its hold comes back.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from graphs.router import graph
from state.errors import AllBackendsFailedError
from tests.conftest import TEST_KEY, Harness, budget_books, received

ASK = {
    "messages": [{"role": "user", "content": "Describe a sorting algorithm"}],
    "force_backend": "serverless",
    "max_tokens": 32,
}


async def run(harness: Harness, stream: bool = False, **overrides: Any) -> tuple[Any, Any]:
    context = await harness.context(request_timeout_s=1.0, connect_timeout_s=1.0, **overrides)
    result = await graph.ainvoke({**ASK, "stream": stream}, context=context)
    return context, result


async def assert_fell_back_once(context: Any, result: dict[str, Any]) -> None:
    attempts = result["routing"]["attempts"]
    assert [a["backend"] for a in attempts] == ["serverless", "gpu"]
    assert [a["status"] for a in attempts] == ["failed", "ok"]
    (row,) = await context.services.ledger.rows()  # exactly one row for the request
    assert row.status == "ok"
    assert row.backend == "gpu"
    assert row.fallbacks == 1
    books = await budget_books(context.services)
    committed, reserved, holds = books["committed"], books["reserved"], books["holds"]
    assert committed == 0.0
    assert reserved == pytest.approx(0.0)
    assert holds == ["released"]


@pytest.mark.parametrize("status", [500, 503])
async def test_a_5xx_falls_back_after_one_retry(harness: Harness, status: int):
    await harness.start("serverless", api_key=TEST_KEY, fail_rate=1.0, fail_status=status)
    await harness.start("gpu")
    context, result = await run(harness)
    await assert_fell_back_once(context, result)
    assert f"HTTP {status}" in result["routing"]["attempts"][0]["error"]


async def test_a_429_with_a_short_retry_after_is_waited_out_then_falls_back(harness: Harness):
    await harness.start(
        "serverless", api_key=TEST_KEY, fail_rate=1.0, fail_status=429, retry_after_s=0.3
    )
    await harness.start("gpu")
    started = time.perf_counter()
    context, result = await run(harness)
    assert time.perf_counter() - started >= 0.3  # the retry waited as asked
    await assert_fell_back_once(context, result)


async def test_a_429_with_a_long_retry_after_falls_back_at_once(harness: Harness):
    await harness.start(
        "serverless", api_key=TEST_KEY, fail_rate=1.0, fail_status=429, retry_after_s=60
    )
    await harness.start("gpu")
    context, result = await run(harness)
    await assert_fell_back_once(context, result)
    calls = len(await received(harness.serverless_url))
    assert calls == 1  # no retry against a backend that asked for a minute


async def test_a_refused_connection_falls_back(harness: Harness):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    await harness.start("gpu")
    context = await harness.context(lambda_api_base=closed, request_timeout_s=1.0)
    result = await graph.ainvoke(ASK, context=context)
    await assert_fell_back_once(context, result)


@pytest.mark.parametrize("fault", ["hang", "bad_json", "cut_stream"])
async def test_a_broken_answer_falls_back(harness: Harness, fault: str):
    await harness.start("serverless", api_key=TEST_KEY, fault=fault)
    await harness.start("gpu")
    context, result = await run(harness)
    await assert_fell_back_once(context, result)


async def test_a_stream_cut_off_midway_falls_back_without_a_retry(harness: Harness):
    await harness.start("serverless", api_key=TEST_KEY, fault="cut_stream")
    await harness.start("gpu")
    context, result = await run(harness, stream=True)
    await assert_fell_back_once(context, result)
    assert "after the answer began streaming" in result["routing"]["attempts"][0]["error"]
    assert len(await received(harness.serverless_url)) == 1  # the caller had tokens: no second try


async def test_a_very_slow_first_token_times_out_and_falls_back(harness: Harness):
    await harness.start("serverless", api_key=TEST_KEY, ttft_ms=3000)
    await harness.start("gpu")
    context, result = await run(harness, stream=True)
    await assert_fell_back_once(context, result)
    assert "timed out" in result["routing"]["attempts"][0]["error"]


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_without_usage_is_counted_and_charged_once(harness: Harness, stream: bool):
    await harness.start("serverless", api_key=TEST_KEY, fault="no_usage")
    await harness.start("gpu")
    context, result = await run(harness, stream=stream)
    assert result["routing"]["backend"] == "serverless"
    assert result["usage"]["prompt_tokens"] > 0
    assert result["usage"]["completion_tokens"] > 0
    (row,) = await context.services.ledger.rows()
    books = await budget_books(context.services)
    committed, reserved, holds = books["committed"], books["reserved"], books["holds"]
    assert row.cost_usd > 0
    assert committed == pytest.approx(row.cost_usd)
    assert reserved == pytest.approx(0.0)
    assert holds == ["settled"]


async def test_both_broken_is_a_typed_error_with_one_row(harness: Harness):
    await harness.start("serverless", api_key=TEST_KEY, fault="bad_json")
    await harness.start("gpu", fail_rate=1.0, fail_status=503)
    context = await harness.context(request_timeout_s=1.0)
    with pytest.raises(AllBackendsFailedError, match="every backend failed"):
        await graph.ainvoke(ASK, context=context)
    (row,) = await context.services.ledger.rows()
    assert row.status == "failed"
    books = await budget_books(context.services)
    committed, reserved, holds = books["committed"], books["reserved"], books["holds"]
    assert committed == 0.0
    assert reserved == pytest.approx(0.0)
    assert holds == ["released"]
