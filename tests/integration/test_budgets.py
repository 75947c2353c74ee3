"""Budgets hold under concurrency, on SQLite and PostgreSQL, in one process and in two."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from backends.catalog import get_catalog
from backends.tokens import count_message_tokens
from emulator.server import _EmbeddedServer
from graphs.router import graph
from state.budgets import Held, Refused
from state.errors import BudgetExceededError
from state.ledger import Alert, BudgetCounter, Reservation, UsageRecord
from tests.conftest import TEST_KEY, Harness

HARD = [
    {
        "role": "user",
        "content": (
            "Analyze and compare three database architectures step by step. First evaluate "
            "cost, then assess latency, finally recommend one and justify it in a table.\n"
            "1. cost\n2. latency\n3. risk"
        ),
    }
]
CAP = 8  # the emulator always has more to say: completion tokens == CAP, cost == estimate
MAVERICK = get_catalog().by_id["llama-4-maverick-17b-128e-instruct-fp8"]
AMOUNT = MAVERICK.cost_usd(count_message_tokens(HARD), CAP)


def request(i: int, prefix: str = "r", **extra: Any) -> dict[str, Any]:
    return {"messages": HARD, "max_tokens": CAP, "request_id": f"{prefix}-{i}", **extra}


async def table_sum(services, column, *where):
    async with services.ledger.engine.connect() as conn:
        return (
            await conn.execute(select(func.coalesce(func.sum(column), 0)).where(*where))
        ).scalar()


async def start_backends(harness: Harness) -> None:
    await harness.start("serverless", api_key=TEST_KEY, ttft_ms=5)
    await harness.start("gpu", ttft_ms=5)


def budget_settings(database: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        **database,
        "serverless_ratio": 1.0,
        "budget_estimate_margin": 1.0,
        "lambda_daily_budget": AMOUNT * 50.5,
        **extra,
    }


async def test_200_concurrent_requests_never_pass_the_budget(harness: Harness, database):
    await start_backends(harness)
    services = await harness.services(**budget_settings(database))
    context_kw = {"context": __import__("state.context").context.Context(services=services)}
    results = await asyncio.gather(*(graph.ainvoke(request(i), **context_kw) for i in range(200)))
    served = [r for r in results if r["routing"]["backend"] == "serverless"]
    # a hard limit with no false refusals: exactly the 50 requests the budget covers
    assert len(served) == 50
    assert all(r["routing"]["backend"] == "gpu" for r in results if r not in served)
    spent = await table_sum(services, UsageRecord.cost_usd, UsageRecord.backend == "serverless")
    assert spent <= services.settings.lambda_daily_budget
    assert spent == pytest.approx(50 * AMOUNT)
    rows = await services.ledger.rows(limit=1000)
    assert sorted(r.request_id for r in rows) == sorted(f"r-{i}" for i in range(200))
    assert all(r.status == "ok" for r in rows)
    # no leaked reservations: every hold was settled or released
    assert await table_sum(services, BudgetCounter.reserved_usd) == pytest.approx(0, abs=1e-12)
    assert await table_sum(services, BudgetCounter.committed_usd) == pytest.approx(
        2 * spent  # the daily and the monthly counter
    )
    async with services.ledger.engine.connect() as conn:
        active = await conn.execute(select(Reservation.id).where(Reservation.status == "active"))
        assert active.all() == []


ROUTER_PROCESS = """
import asyncio, json, os, sys
from graphs.router import graph
from state.context import close_default_services

HARD = json.loads(os.environ["HARD"])
prefix, count = sys.argv[1], int(sys.argv[2])

async def main():
    try:
        results = await asyncio.gather(*(
            graph.ainvoke({"messages": HARD, "max_tokens": int(os.environ["CAP"]),
                           "request_id": f"{prefix}-{i}"})
            for i in range(count)
        ))
        print(json.dumps([r["routing"]["backend"] for r in results]))
    finally:
        await close_default_services()

asyncio.run(main())
"""


async def run_router_processes(
    harness: Harness, database: dict[str, Any], requests_each: int, **env_extra: str
) -> list[str]:
    """Run ROUTER_PROCESS in two processes on ``database``; return every request's backend."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANGSMITH")}
    env.update(
        LANGSMITH_TRACING="false",
        LAMBDA_API_KEY=TEST_KEY,
        LAMBDA_API_BASE=harness.serverless_url,
        GPU_ENDPOINTS=harness.gpu_url,
        DATABASE_URL=database["database_url"],
        DATABASE_SCHEMA=database["database_schema"],
        SERVERLESS_RATIO="1",
        HARD=json.dumps(HARD),
        CAP="8",
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    env.update(env_extra)
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            ROUTER_PROCESS,
            name,
            str(requests_each),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for name in ("a", "b")
    ]
    outputs = await asyncio.wait_for(
        asyncio.gather(*(p.communicate() for p in processes)), timeout=240
    )
    backends: list[str] = []
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err.decode()[-3000:]
        backends += json.loads(out.decode().strip().splitlines()[-1])
    return backends


async def test_two_router_processes_share_a_postgres_budget(harness: Harness, database):
    if "database_schema" not in database:
        pytest.skip("sharing a budget between processes is the PostgreSQL deployment")
    await start_backends(harness)
    settings = budget_settings(database)
    backends = await run_router_processes(
        harness,
        settings,
        requests_each=100,
        BUDGET_ESTIMATE_MARGIN="1",
        LAMBDA_DAILY_BUDGET=repr(settings["lambda_daily_budget"]),
        CAP=str(CAP),
    )
    assert backends.count("serverless") == 50
    services = await harness.services(**settings)
    spent = await table_sum(services, UsageRecord.cost_usd, UsageRecord.backend == "serverless")
    assert spent <= settings["lambda_daily_budget"]
    rows = await services.ledger.rows(limit=1000)
    assert len(rows) == 200
    assert len({r.request_id for r in rows}) == 200
    assert await table_sum(services, BudgetCounter.reserved_usd) == pytest.approx(0, abs=1e-12)


async def test_a_crashed_reservation_expires_and_frees_its_amount(harness: Harness, database):
    now = [datetime(2026, 11, 23, 12, 0, tzinfo=UTC)]
    services = await harness.services(**database, lambda_daily_budget=1.0, reservation_ttl_s=60.0)
    book = services.budgets
    book.clock = lambda: now[0]
    crashed = await book.reserve("crashed", 0.9)  # its process dies and never settles
    assert isinstance(crashed, Held)
    refused = await book.reserve("next", 0.2)
    assert isinstance(refused, Refused)
    assert refused.remaining_usd == pytest.approx(0.1)
    assert "daily budget" in refused.reason()
    now[0] += timedelta(seconds=61)
    retried = await book.reserve("next-again", 0.2)
    assert isinstance(retried, Held)
    (status,) = [s for s in await book.status() if s["period"] == "day"]
    assert status["reserved_usd"] == pytest.approx(0.2)
    assert status["spent_usd"] == 0
    # the crashed request's late settlement still counts its real spend, once
    await book.settle("crashed", 0.3)
    await book.settle("crashed", 0.3)
    (status,) = [s for s in await book.status() if s["period"] == "day"]
    assert status["spent_usd"] == pytest.approx(0.3)


async def test_settle_and_release_are_exact(harness: Harness, database):
    services = await harness.services(**database, lambda_daily_budget=1.0)
    book = services.budgets
    assert isinstance(await book.reserve("a", 0.5), Held)
    assert isinstance(await book.reserve("b", 0.4), Held)
    assert isinstance(await book.reserve("c", 0.2), Refused)
    await book.settle("a", 0.1)  # the real cost was lower: 0.4 goes back
    await book.release("b")
    assert isinstance(await book.reserve("c", 0.85), Held)
    (day,) = [s for s in await book.status() if s["period"] == "day"]
    assert day["spent_usd"] == pytest.approx(0.1)
    assert day["reserved_usd"] == pytest.approx(0.85)
    assert day["remaining_usd"] == pytest.approx(0.05)


async def test_user_and_team_budgets_from_settings_and_api(harness: Harness, database):
    services = await harness.services(
        **database,
        lambda_daily_budget=100.0,
        user_budgets={"alice": {"daily": 1.0}},
    )
    book = services.budgets
    assert isinstance(await book.reserve("a1", 0.8, user="alice"), Held)
    refused = await book.reserve("a2", 0.3, user="alice")
    assert isinstance(refused, Refused)
    assert refused.window.scope == "user"
    # the refusal reserved nothing anywhere: all or nothing
    (global_day,) = [s for s in await book.status() if s["period"] == "day"]
    assert global_day["reserved_usd"] == pytest.approx(0.8)
    assert isinstance(await book.reserve("b1", 0.3, user="bob"), Held)
    await book.set_budget("team", "search", daily_usd=None, monthly_usd=0.5)
    assert isinstance(await book.reserve("t1", 0.4, user="bob", team="search"), Held)
    refused = await book.reserve("t2", 0.2, user="bob", team="search")
    assert isinstance(refused, Refused)
    assert refused.window.scope == "team"
    assert refused.window.period == "month"
    with pytest.raises(ValueError, match="user"):
        await book.set_budget("planet", "x", 1.0, 1.0)


async def test_windows_follow_the_budget_time_zone(harness: Harness):
    services = await harness.services(budget_timezone="Asia/Tokyo")
    late_utc = datetime(2026, 11, 30, 20, 0, tzinfo=UTC)  # 05:00 on Dec 1st in Tokyo
    windows = await services.budgets.windows(late_utc)
    keys = {w.period: w.window_key for w in windows}
    assert keys == {"day": "2026-12-01", "month": "2026-12"}
    day = next(w for w in windows if w.period == "day")
    assert day.resets_at.astimezone(UTC) == datetime(2026, 12, 1, 15, 0, tzinfo=UTC)


async def test_over_budget_policies(harness: Harness, database):
    await start_backends(harness)
    tight = budget_settings(database, lambda_daily_budget=AMOUNT * 0.5)
    gpu = await harness.context(**tight)
    result = await graph.ainvoke(request(1, "gpu"), context=gpu)
    assert result["routing"]["backend"] == "gpu"
    assert "daily budget" in result["routing"]["reason"]

    # without a GPU pool to take it, the request goes to a cheaper serverless model
    downgrade = await harness.context(**tight, over_budget_policy="downgrade", gpu_endpoints=[])
    result = await graph.ainvoke(request(2, "down"), context=downgrade)
    assert result["routing"]["backend"] == "serverless"
    cheaper = get_catalog().by_id[result["routing"]["model"]]
    assert cheaper.cost_usd(10**6, 10**6) < MAVERICK.cost_usd(10**6, 10**6)
    assert result["cost_usd"] <= AMOUNT * 0.5

    reject = await harness.context(**tight, over_budget_policy="reject")
    with pytest.raises(BudgetExceededError) as caught:
        await graph.ainvoke(request(3, "rej"), context=reject)
    assert caught.value.remaining_usd is not None
    assert caught.value.remaining_usd >= 0
    assert caught.value.resets_at.startswith("2")
    assert caught.value.status_code == 402


async def test_alerts_fire_once_per_threshold_and_reach_the_webhook(harness: Harness, database):
    received: list[dict[str, Any]] = []

    async def hook(request: Request) -> JSONResponse:
        received.append(await request.json())
        # the first delivery fails: the notifier retries with backoff
        return JSONResponse({}, status_code=500 if len(received) == 1 else 200)

    import uvicorn

    server = _EmbeddedServer(
        uvicorn.Config(
            Starlette(routes=[Route("/hook", hook, methods=["POST"])]), port=0, log_level="warning"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        await start_backends(harness)
        context = await harness.context(
            **budget_settings(database, lambda_daily_budget=AMOUNT * 5),
            alert_webhook_url=f"http://127.0.0.1:{port}/hook",
        )
        for i in range(7):
            await graph.ainvoke(request(i, "alert"), context=context)
        await context.services.alerts.drain()
    finally:
        server.should_exit = True
        await task
    thresholds = sorted({(r["period"], r["threshold"]) for r in received})
    assert thresholds == [("day", 0.8), ("day", 1.0)]
    assert len(received) == 3  # one retry of the first delivery, nothing more
    assert all("budget" in r["text"] for r in received)
    async with context.services.ledger.engine.connect() as conn:
        alerts = (await conn.execute(select(Alert.threshold, Alert.delivered))).all()
    assert sorted(alerts) == [(0.8, "sent"), (1.0, "sent")]
