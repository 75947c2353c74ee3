"""The router graph end to end, against emulators over real HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from graphs.router import graph
from state.errors import (
    AllBackendsFailedError,
    BadRequestError,
    BudgetExceededError,
    NoBackendAvailableError,
    PromptTooLargeError,
)
from tests.conftest import Harness

GREETING = {"messages": [{"role": "user", "content": "Hello!"}]}
ANALYSIS = {
    "messages": [
        {"role": "system", "content": "You are a senior staff engineer."},
        {
            "role": "user",
            "content": (
                "Analyze the trade-offs between event sourcing and a relational schema "
                "for our billing system, step by step:\n"
                "1. First compare write throughput and storage cost, with a table.\n"
                "2. Then evaluate the consistency model and explain why it matters.\n"
                "3. Next design a migration strategy and justify each phase.\n"
                "4. Finally recommend an architecture and give the root cause of the "
                "incidents we had, in depth, as JSON.\n"
            )
            + "Context: the current system processes invoices nightly. " * 40,
        },
    ]
}


async def ledger_rows(context):
    return await context.services.ledger.rows()


async def metric(url: str, name: str) -> float:
    root = url.removesuffix("/v1")
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{root}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[-1]) for line in text.splitlines() if line.startswith(name)
    )


async def test_greeting_goes_to_a_small_model(both_up: Harness):
    context = await both_up.context()
    result = await graph.ainvoke(GREETING, context=context)

    routing = result["routing"]
    assert routing["complexity"]["level"] == "low"
    assert routing["model"] == "llama3.1-8b-instruct"
    assert "emulator" in result["response"]["content"]
    assert result["response"]["role"] == "assistant"
    usage = result["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert [a["status"] for a in routing["attempts"]] == ["ok"]
    rows = await ledger_rows(context)
    assert len(rows) == 1
    row = rows[0]
    assert row.request_id == result["request_id"]
    assert row.status == "ok"
    assert row.backend == routing["backend"]
    assert row.prompt_tokens == usage["prompt_tokens"]
    assert row.cost_usd == pytest.approx(result["cost_usd"])


async def test_long_analysis_gets_higher_complexity_and_larger_model(both_up: Harness):
    # ratio 1: no request falls outside the serverless share
    context = await both_up.context(serverless_ratio=1.0)
    greeting = await graph.ainvoke(GREETING, context=context)
    analysis = await graph.ainvoke(ANALYSIS, context=context)

    catalog = context.services.catalog
    hard, easy = analysis["routing"], greeting["routing"]
    assert hard["complexity"]["score"] > easy["complexity"]["score"]
    assert hard["complexity"]["level"] == "high"
    assert catalog.by_id[hard["model"]].tier > catalog.by_id[easy["model"]].tier
    # the largest model is serverless-only here, and it is the cheaper of the two
    assert hard["backend"] == "serverless"
    expected = catalog.by_id[hard["model"]].cost_usd(
        analysis["usage"]["prompt_tokens"], analysis["usage"]["completion_tokens"]
    )
    assert analysis["cost_usd"] == pytest.approx(expected)
    assert expected > 0


async def test_serverless_answering_500_falls_back_to_gpu(harness: Harness):
    await harness.start("serverless", fail_rate=1.0, fail_status=500)
    await harness.start("gpu")
    context = await harness.context(serverless_ratio=1.0)
    result = await graph.ainvoke(ANALYSIS, context=context)

    attempts = result["routing"]["attempts"]
    assert [(a["backend"], a["status"]) for a in attempts] == [
        ("serverless", "failed"),
        ("gpu", "ok"),
    ]
    assert "500" in attempts[0]["error"]
    assert result["routing"]["backend"] == "gpu"
    assert "fell back to gpu" in result["routing"]["reason"]
    (row,) = await ledger_rows(context)
    assert row.status == "ok"
    assert row.fallbacks == 1
    assert row.backend == "gpu"
    # a GPU request pays its share of the instance: GPU-seconds at the hourly price
    settings = context.services.settings
    share = row.gpu_seconds * settings.gpu_hourly_cost_usd / 3600
    assert row.gpu_seconds > 0
    assert result["cost_usd"] == pytest.approx(share / settings.gpu_concurrency_per_endpoint)
    assert row.cost_usd == pytest.approx(result["cost_usd"])


async def test_serverless_stopped_falls_back_to_gpu(both_up: Harness):
    await both_up.stop("serverless")
    context = await both_up.context()
    result = await graph.ainvoke({**GREETING, "force_backend": "serverless"}, context=context)

    attempts = result["routing"]["attempts"]
    assert [(a["backend"], a["status"]) for a in attempts] == [
        ("serverless", "failed"),
        ("gpu", "ok"),
    ]
    assert "cannot reach" in attempts[0]["error"]


async def test_gpu_down_falls_back_to_serverless(harness: Harness):
    await harness.start("serverless", api_key="sk-test-serverless-key-0123456789")
    await harness.start("gpu", fail_rate=1.0, fail_status=503)
    context = await harness.context()
    result = await graph.ainvoke(GREETING, context=context)

    attempts = result["routing"]["attempts"]
    assert [(a["backend"], a["status"]) for a in attempts] == [
        ("gpu", "failed"),
        ("serverless", "ok"),
    ]
    assert "503" in attempts[0]["error"]
    assert result["routing"]["backend"] == "serverless"
    assert result["cost_usd"] > 0
    # the failed endpoint cools off: the next request goes straight to serverless
    again = await graph.ainvoke(GREETING, context=context)
    assert [a["backend"] for a in again["routing"]["attempts"]] == ["serverless"]
    assert "down or cooling" in again["routing"]["reason"]


async def test_both_down_raises_typed_error_and_records_failure(harness: Harness):
    await harness.start("serverless", fail_rate=1.0, fail_status=502)
    await harness.start("gpu", fail_rate=1.0, fail_status=503)
    context = await harness.context()
    with pytest.raises(AllBackendsFailedError) as caught:
        await graph.ainvoke({**GREETING, "user": "alice"}, context=context)

    error = caught.value
    assert {a["backend"] for a in error.attempts} == {"serverless", "gpu"}
    assert "502" in error.message
    assert "503" in error.message
    assert error.status_code == 502
    (row,) = await ledger_rows(context)
    assert row.status == "failed"
    assert row.user == "alice"
    assert row.cost_usd == 0
    assert row.backend is None
    assert "serverless" in row.error
    assert "gpu" in row.error


async def test_force_backend_is_obeyed(both_up: Harness):
    context = await both_up.context()
    on_gpu = await graph.ainvoke({**ANALYSIS, "force_backend": "gpu"}, context=context)
    assert on_gpu["routing"]["backend"] == "gpu"
    assert on_gpu["routing"]["model"] in context.services.catalog.ids()
    assert context.services.catalog.by_id[on_gpu["routing"]["model"]].gpu
    on_serverless = await graph.ainvoke(
        {**GREETING, "force_backend": "serverless"}, context=context
    )
    assert on_serverless["routing"]["backend"] == "serverless"
    assert "forced" in on_serverless["routing"]["reason"]


@pytest.mark.parametrize(
    "overrides",
    [{"serverless_ratio": 0.0}, {"disable_lambda_labs": True}],
    ids=["ratio0", "disabled"],
)
async def test_gpu_only_settings_keep_everything_on_gpu(both_up: Harness, overrides):
    context = await both_up.context(**overrides)
    for request in (GREETING, ANALYSIS, {**GREETING, "cost_priority": "latency_critical"}):
        result = await graph.ainvoke(request, context=context)
        assert [a["backend"] for a in result["routing"]["attempts"]] == ["gpu"]
    assert await metric(both_up.serverless_url, "vllm:request_success_total") == 0
    with pytest.raises(NoBackendAvailableError, match="force_backend=serverless"):
        await graph.ainvoke({**GREETING, "force_backend": "serverless"}, context=context)


async def test_gpu_only_settings_do_not_fall_back_to_serverless(harness: Harness):
    await harness.start("serverless", api_key="sk-test-serverless-key-0123456789")
    await harness.start("gpu", fail_rate=1.0, fail_status=500)
    context = await harness.context(disable_lambda_labs=True)
    with pytest.raises(AllBackendsFailedError):
        await graph.ainvoke(GREETING, context=context)
    assert await metric(harness.serverless_url, "vllm:request_success_total") == 0


async def test_prompt_too_large_is_refused_before_any_backend_call(both_up: Harness):
    context = await both_up.context()
    huge = {"messages": [{"role": "user", "content": "lorem ipsum dolor " * 50_000}]}
    with pytest.raises(PromptTooLargeError, match="context window"):
        await graph.ainvoke(huge, context=context)
    for url in (both_up.serverless_url, both_up.gpu_url):
        assert await metric(url, "vllm:prompt_tokens_total") == 0
    assert await ledger_rows(context) == []


async def test_prompt_too_large_for_small_context_moves_to_larger_model(both_up: Harness):
    context = await both_up.context()
    catalog = context.services.catalog
    # ~20k tokens: more than Scout's 16k window, a medium request otherwise
    long = {
        "messages": [
            {"role": "user", "content": "Summarize and compare: " + "data point " * 10_000}
        ],
        "force_backend": "serverless",
    }
    result = await graph.ainvoke(long, context=context)
    model = catalog.by_id[result["routing"]["model"]]
    assert model.context_window >= result["usage"]["prompt_tokens"]
    assert model.id != "llama-4-scout-17b-16e-instruct"


async def test_explicit_model_is_used_and_checked(both_up: Harness):
    context = await both_up.context()
    result = await graph.ainvoke(
        {**GREETING, "model": "llama3.1-70b-instruct-fp8"}, context=context
    )
    assert result["routing"]["model"] == "llama3.1-70b-instruct-fp8"
    with pytest.raises(BadRequestError, match="not in the catalog"):
        await graph.ainvoke({**GREETING, "model": "gpt-99"}, context=context)


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
        ({**GREETING, "max_tokens": 0}, "max_tokens"),
        ({**GREETING, "temperature": 3}, "temperature"),
        ({**GREETING, "cost_priority": "cheap"}, "cost_priority"),
        ({**GREETING, "force_backend": "tpu"}, "force_backend"),
    ],
)
async def test_bad_input_gets_a_clear_error(both_up: Harness, request_body, message):
    context = await both_up.context()
    with pytest.raises(BadRequestError, match=message):
        await graph.ainvoke(request_body, context=context)
    assert await ledger_rows(context) == []


async def test_over_budget_goes_to_gpu_by_default(both_up: Harness):
    context = await both_up.context(lambda_daily_budget=0.0, serverless_ratio=1.0)
    result = await graph.ainvoke({**ANALYSIS, "force_backend": None}, context=context)
    assert result["routing"]["backend"] == "gpu"
    assert "daily budget" in result["routing"]["reason"]


async def test_over_budget_reject_policy_raises_budget_error(both_up: Harness):
    context = await both_up.context(
        lambda_monthly_budget=0.0, over_budget_policy="reject", serverless_ratio=1.0
    )
    with pytest.raises(BudgetExceededError, match="monthly budget") as caught:
        await graph.ainvoke(ANALYSIS, context=context)
    assert caught.value.remaining_usd == 0.0
    assert caught.value.resets_at is not None
    assert caught.value.resets_at.endswith("+00:00")


async def test_spend_in_ledger_counts_against_the_budget(both_up: Harness):
    context = await both_up.context()
    first = await graph.ainvoke({**ANALYSIS, "force_backend": "serverless"}, context=context)
    spent = first["cost_usd"]
    assert spent > 0
    # a budget that the first request's spend already used up
    tight = await both_up.context(lambda_daily_budget=spent * 1.01, serverless_ratio=1.0)
    second = await graph.ainvoke(ANALYSIS, context=tight)
    assert second["routing"]["backend"] == "gpu"
    assert "daily budget" in second["routing"]["reason"]


async def test_serverless_key_is_sent_and_never_leaks(both_up: Harness):
    from tests.conftest import TEST_KEY

    context = await both_up.context()
    result = await graph.ainvoke({**GREETING, "force_backend": "serverless"}, context=context)
    # the serverless emulator requires the key: an answer proves it was sent
    assert result["routing"]["backend"] == "serverless"
    assert TEST_KEY not in repr(result)
    assert TEST_KEY not in repr(context.services.settings)
    rows = await ledger_rows(context)
    assert all(TEST_KEY not in repr(vars(r)) for r in rows)
    wrong = await both_up.context(lambda_api_key="sk-wrong")
    failed = await graph.ainvoke({**GREETING, "force_backend": "serverless"}, context=wrong)
    assert failed["routing"]["attempts"][0]["error"].startswith("HTTP 401")
    assert "sk-wrong" not in repr(failed)


async def test_streaming_writes_tokens_to_the_custom_stream(both_up: Harness):
    context = await both_up.context()
    tokens: list[str] = []
    final = None
    async for mode, chunk in graph.astream(
        {**GREETING, "stream": True}, context=context, stream_mode=["custom", "values"]
    ):
        if mode == "custom":
            tokens.append(chunk["delta"]["content"])
        else:
            final = chunk
    assert len(tokens) > 3
    assert "".join(tokens) == final["response"]["content"]
    assert final["usage"]["completion_tokens"] > 0


async def test_serverless_share_is_capped_by_the_ratio(both_up: Harness):
    from nodes.choose_backend import serverless_bucket

    context = await both_up.context(serverless_ratio=0.5)
    outcomes = []
    for i in range(40):
        request_id = f"cap-{i}"
        result = await graph.ainvoke({**ANALYSIS, "request_id": request_id}, context=context)
        expected = "serverless" if serverless_bucket(request_id) < 0.5 else "gpu"
        outcomes.append((result["routing"]["backend"], expected))
    assert all(got == want for got, want in outcomes)
    share = sum(got == "serverless" for got, _ in outcomes) / len(outcomes)
    assert 0.2 < share < 0.8


async def test_each_decision_is_a_step_with_its_decision_in_its_update(both_up: Harness):
    context = await both_up.context()
    updates: dict[str, dict[str, Any]] = {}
    steps = []
    async for update in graph.astream(GREETING, context=context, stream_mode="updates"):
        steps.extend(update)
        updates.update(update)
    # the GPU pool takes it first: no serverless money to hold, no budget step
    assert steps == [
        "analyze_complexity",
        "select_model",
        "choose_backend",
        "generate_gpu",
        "track_usage",
    ]
    # each step's update carries its own decision, as Studio shows it
    assert updates["analyze_complexity"]["complexity"]["level"] == "low"
    assert updates["select_model"]["candidates"]["gpu"] == "llama3.1-8b-instruct"
    assert updates["choose_backend"]["backend"] == "gpu"
    assert "spare capacity" in updates["choose_backend"]["backend_reason"]
    decided = {name: update["decisions"] for name, update in updates.items() if name in steps[:3]}
    assert decided["select_model"]["select_model"]["candidates"]["gpu"] == "llama3.1-8b-instruct"
    assert decided["choose_backend"]["choose_backend"]["backend"] == "gpu"

    steps.clear()
    async for update in graph.astream(
        {**GREETING, "force_backend": "serverless"}, context=context, stream_mode="updates"
    ):
        steps.extend(update)
        updates.update(update)
    assert steps[2:] == ["choose_backend", "check_budget", "generate_serverless", "track_usage"]
    held = updates["check_budget"]["reservation"]
    assert held["amount_usd"] > 0
    assert updates["check_budget"]["budget"]["serverless_allowed"]
    assert updates["check_budget"]["decisions"]["check_budget"]["budget"]["reason"].startswith(
        "within budget"
    )


async def test_a_budget_refusal_ends_the_run_before_any_backend_step(both_up: Harness):
    context = await both_up.context(over_budget_policy="reject", lambda_daily_budget=0.0)
    steps = []
    with pytest.raises(BudgetExceededError):  # noqa: PT012 - the error ends the loop
        async for update in graph.astream(
            {**ANALYSIS, "force_backend": "serverless"}, context=context, stream_mode="updates"
        ):
            steps.extend(update)
    # track_usage records the refused request, then raises the 402
    assert steps == ["analyze_complexity", "select_model", "choose_backend", "check_budget"]
    (row,) = await ledger_rows(context)
    assert (row.status, row.budget_refused, row.backend, row.cost_usd) == (
        "refused",
        True,
        None,
        0.0,
    )
    assert "daily budget" in row.routing_reason
