"""The MCP server: over stdio with the real MCP client, and in-process on emulated backends."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client import Client

import state.context
from backends.catalog import get_catalog
from backends.tokens import count_message_tokens
from mcp_server.server import build_server
from state.budgets import Held
from state.context import Services
from state.ledger import UsageRecord
from state.reporting.suggestions import MONTH_HOURS
from state.settings import DEFAULT_GPU_HOURLY_USD
from tests.conftest import ROOT, TEST_KEY, Harness, ledger_row, record_pool

TOOLS = {"invoke_serverless", "estimate_cost", "get_usage_stats", "optimize_costs"}
PROMPT = "Explain step by step how a hash map handles collisions, with a table."


def ledger_rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT backend, cost_usd, status FROM usage_records").fetchall()


def suggestion(advice: dict[str, Any], suggestion_id: str) -> dict[str, Any]:
    found = [s for s in advice["suggestions"] if s["id"] == suggestion_id]
    assert found, f"no {suggestion_id} in {[s['id'] for s in advice['suggestions']]}"
    return found[0]


def text_of(result: Any) -> str:
    return "\n".join(block.text for block in result.content)


async def test_stdio_server_answers_from_the_graph_and_the_ledger(
    both_up: Harness, tmp_path: Path
) -> None:
    began = time.monotonic()
    work = tmp_path / "mcp"
    work.mkdir()
    db = work / "ledger.db"
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_server"],
        env={
            "LAMBDA_API_KEY": TEST_KEY,
            "LAMBDA_API_BASE": both_up.serverless_url,
            "GPU_ENDPOINTS": both_up.gpu_url,
            "DATABASE_URL": f"sqlite:///{db}",
            "LANGSMITH_TRACING": "false",
            "PYTHONPATH": str(ROOT),
        },
        cwd=work,
    )
    with (work / "stderr.log").open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()

            tools = {tool.name: tool for tool in (await session.list_tools()).tools}
            assert set(tools) == TOOLS
            for tool in tools.values():
                assert tool.input_schema["type"] == "object"
                assert tool.description
                assert tool.output_schema is not None
            invoke_schema = tools["invoke_serverless"].input_schema
            assert invoke_schema["required"] == ["prompt"]
            assert invoke_schema["properties"]["force_backend"]["default"] == "serverless"
            assert invoke_schema["properties"]["prompt"]["description"]
            assert set(tools["get_usage_stats"].input_schema["properties"]) == {"days", "group_by"}

            # invoke_serverless: serverless is forced by default
            answer = await session.call_tool("invoke_serverless", {"prompt": "Hello!"})
            assert not answer.is_error, text_of(answer)
            invoked = answer.structured_content
            assert invoked is not None
            assert "emulator" in invoked["answer"]
            assert invoked["routing"]["backend"] == "serverless"
            assert invoked["routing"]["model"] == "llama3.1-8b-instruct"
            assert invoked["usage"]["completion_tokens"] > 0
            assert invoked["answer"] in text_of(answer)

            # estimate_cost: equal to the catalog's prices and the router's token count
            estimated = await session.call_tool(
                "estimate_cost", {"prompt": PROMPT, "max_tokens": 300}
            )
            assert not estimated.is_error, text_of(estimated)
            estimate = estimated.structured_content
            assert estimate is not None
            tokens = count_message_tokens([{"role": "user", "content": PROMPT}])
            assert estimate["prompt_tokens"] == tokens
            by_model = {m["model"]: m for m in estimate["models"]}
            catalog = get_catalog()
            assert set(by_model) == set(catalog.ids())
            for spec in catalog.models:
                expected = (
                    tokens * spec.input_usd_per_mtok + 300 * spec.output_usd_per_mtok
                ) / 1_000_000
                assert by_model[spec.id]["worst_case_usd"] == pytest.approx(expected, rel=1e-12)
                assert by_model[spec.id]["fits"] is True
            assert estimate["router_pick"]["serverless"] in by_model
            assert estimate["gpu_pool"]["endpoints"] == 1

            # get_usage_stats: the same requests and cost as the ledger's rows
            stats_result = await session.call_tool(
                "get_usage_stats", {"days": 1, "group_by": "backend"}
            )
            assert not stats_result.is_error, text_of(stats_result)
            stats = stats_result.structured_content
            assert stats is not None
            rows = ledger_rows(db)
            assert len(rows) == 1
            assert rows[0][0] == "serverless"
            assert rows[0][2] == "ok"
            assert stats["totals"]["requests"] == len(rows)
            assert stats["totals"]["cost_usd"] == pytest.approx(sum(r[1] for r in rows))
            assert stats["totals"]["cost_usd"] == pytest.approx(invoked["cost_usd"])
            assert stats["groups"]["serverless"]["requests"] == 1
            assert [b["period"] for b in stats["budgets"]] == ["day", "month"]
            assert stats["budgets"][0]["spent_usd"] == pytest.approx(invoked["cost_usd"])

            # optimize_costs: suggestions carry the report's numbers
            advice_result = await session.call_tool("optimize_costs", {"days": 1})
            assert not advice_result.is_error, text_of(advice_result)
            advice = advice_result.structured_content
            assert advice is not None
            savings = stats["savings"]
            # a fresh ledger: the pool is charged for the seconds the server has run, not a day
            up_hours = (time.monotonic() - began) / 3600
            hourly = DEFAULT_GPU_HOURLY_USD
            assert 0 < savings["gpu_bill_usd"] <= hourly * up_hours
            assert savings["pool"]["paid_instance_hours"] <= up_hours
            drop = suggestion(advice, "drop_gpu_pool")
            # asked a moment later: the live pool's bill has grown, by no more than the time
            up_hours = (time.monotonic() - began) / 3600
            assert savings["gpu_bill_usd"] <= drop["numbers"]["gpu_bill_usd"] <= hourly * up_hours
            assert drop["numbers"]["all_serverless_usd"] == pytest.approx(
                savings["all_serverless"]["usd"]
            )
            assert drop["estimated_monthly_saving_usd"] == pytest.approx(
                -drop["numbers"]["all_serverless_saved_usd"] * MONTH_HOURS / 24
            )
            idle = suggestion(advice, "use_idle_gpu")
            assert idle["numbers"]["serverless_usd"] == pytest.approx(sum(r[1] for r in rows))
            assert idle["numbers"]["serverless_share"] == 1.0
            assert advice["best"] == "drop_gpu_pool"
            assert "drop_gpu_pool" not in text_of(advice_result)  # text is for people
            assert "All-serverless would be cheaper" in text_of(advice_result)

            # a bad request is a tool error with the router's message, not a crash
            bad = await session.call_tool("invoke_serverless", {"prompt": ""})
            assert bad.is_error
            assert "every message is empty" in text_of(bad)
            unknown = await session.call_tool(
                "invoke_serverless", {"prompt": "Hi", "model": "gpt-17"}
            )
            assert unknown.is_error
            assert "'gpt-17' is not in the catalog" in text_of(unknown)
            # the server is still up after the errors
            again = await session.call_tool("estimate_cost", {"prompt": "Hi"})
            assert not again.is_error
    assert len(ledger_rows(db)) == 1  # refused requests never reached a backend
    assert "Traceback" not in (work / "stderr.log").read_text()


# -- in-process: build_server with our own services ---------------------------------


def factory_of(services: Services) -> tuple[Any, list[int]]:
    calls: list[int] = []

    async def factory() -> Services:
        calls.append(1)
        return services

    return factory, calls


async def test_services_are_built_on_the_first_tool_call(both_up: Harness) -> None:
    loop = asyncio.get_running_loop()
    had_default = loop in state.context._default_services
    server = build_server()  # the default factory: nothing is built here
    assert (loop in state.context._default_services) == had_default

    factory, calls = factory_of(await both_up.services())
    async with Client(build_server(factory)) as client:
        assert {t.name for t in (await client.list_tools()).tools} == TOOLS
        assert calls == []
        await client.call_tool("estimate_cost", {"prompt": "Hi"})
        await client.call_tool("estimate_cost", {"prompt": "Hi again"})
        # asked on each call: keeping what it builds is the factory's job
        # (state.context.default_services builds once per event loop)
        assert calls == [1, 1]
    assert server.name == "hybrid-router"


async def test_automatic_routing_and_a_budget_refusal(both_up: Harness) -> None:
    services = await both_up.services(lambda_daily_budget=0.0)
    factory, _ = factory_of(services)
    async with Client(build_server(factory)) as client:
        # automatic routing: the idle GPU pool takes it, no budget needed
        auto = await client.call_tool(
            "invoke_serverless", {"prompt": "Hello!", "force_backend": None}
        )
        assert not auto.is_error, text_of(auto)
        assert auto.structured_content is not None
        assert auto.structured_content["routing"]["backend"] == "gpu"
        assert "emulator" in auto.structured_content["answer"]

        refused = await client.call_tool("invoke_serverless", {"prompt": "Hello!"})
        assert refused.is_error
        assert "daily budget ($0.00) would be exceeded" in text_of(refused)
        assert "budget_exceeded" in text_of(refused)
    rows = await services.ledger.rows()  # newest first: the refusal is a row too
    assert [(r.backend, r.status) for r in rows] == [(None, "refused"), ("gpu", "ok")]


def usage_row(i: int, services: Services, **values: Any) -> UsageRecord:
    return ledger_row(f"mcp-{i}", services.clock(), **{"cost_usd": 0.0001, **values})


async def test_advice_follows_the_numbers(harness: Harness) -> None:
    # three endpoints (never called: advice reads the ledger only), little traffic
    endpoints = [f"http://127.0.0.1:9/v{i}" for i in range(3)]
    services = await harness.services(gpu_endpoints=endpoints, lambda_daily_budget=0.001)
    rows = [usage_row(i, services) for i in range(8)]
    rows.append(
        usage_row(8, services, backend="serverless", cost_usd=0.0002, fallbacks=1),
    )
    rows.append(usage_row(9, services, backend=None, cost_usd=0.0, status="failed", error="boom"))
    for row in rows:
        await services.ledger.record(row)
    now = services.clock()
    for endpoint in endpoints:  # up for the whole range (and past it: clipped to the range)
        await record_pool(
            services, now - timedelta(hours=49), now + timedelta(hours=1), endpoint=endpoint
        )
    held = await services.budgets.reserve("spend", 0.0009)
    await services.budgets.settle("spend", 0.0009)
    assert isinstance(held, Held)

    factory, _ = factory_of(services)
    async with Client(build_server(factory)) as client:
        result = await client.call_tool("optimize_costs", {"days": 2})
        stats = await client.call_tool("get_usage_stats", {"days": 2, "group_by": "model"})
        rejected = await client.call_tool("optimize_costs", {"days": 0})
    assert not result.is_error, text_of(result)
    advice, report = result.structured_content, stats.structured_content
    assert advice is not None
    assert report is not None
    figures = advice["figures"]
    hourly = services.settings.gpu_hourly_cost_usd
    assert figures["gpu_paid_instance_hours"] == pytest.approx(3 * 48)
    assert figures["requests"] == 10
    assert figures["failed"] == 1
    assert figures["serverless_share"] == pytest.approx(1 / 9)
    assert figures["gpu_bill_usd"] == pytest.approx(3 * hourly * 48)
    assert figures["gpu_bill_usd"] == pytest.approx(report["savings"]["gpu_bill_usd"])

    shrink = suggestion(advice, "shrink_gpu_pool")
    assert shrink["numbers"]["gpu_endpoints"] == 3
    assert shrink["numbers"]["instances_needed"] == 1
    assert shrink["estimated_monthly_saving_usd"] == pytest.approx(2 * hourly * MONTH_HOURS)
    allocated = sum(r.cost_usd for r in rows if r.backend == "gpu")
    assert shrink["numbers"]["gpu_allocated_usd"] == pytest.approx(allocated)
    assert shrink["numbers"]["gpu_idle_usd"] == pytest.approx(3 * hourly * 48 - allocated)

    budget = suggestion(advice, "budget_global_day")
    assert budget["numbers"]["spent_usd"] == pytest.approx(0.0009)
    assert budget["numbers"]["used_fraction"] == pytest.approx(0.9)
    assert budget["estimated_monthly_saving_usd"] == 0.0

    reliability = suggestion(advice, "reliability")
    assert reliability["numbers"]["error_rate"] == pytest.approx(0.1)
    assert reliability["numbers"]["fallback_serverless_usd"] == pytest.approx(0.0002)
    assert reliability["estimated_monthly_saving_usd"] == pytest.approx(0.0002 * MONTH_HOURS / 48)
    savings = [s["estimated_monthly_saving_usd"] for s in advice["suggestions"]]
    assert savings == sorted(savings, reverse=True)
    assert advice["best"] == "drop_gpu_pool"  # 3 idle instances cost more than the tokens

    assert rejected.is_error
    assert "days" in text_of(rejected)
