"""The GPU pool is charged for the hours the ledger recorded it, on every report surface.

Each test runs the services on a fixed clock, so the pool heartbeat's own
interval (opened at build time) has no length and the recorded intervals are
the ones written here. The reports are read on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from langchain_core.messages import HumanMessage
from mcp.client import Client
from sqlalchemy import select

from graphs.chat import builder as chat_builder
from mcp_server.server import build_server
from state.context import Context, Services
from state.ledger import PoolInterval, UsageRecord
from state.pool_membership import PoolHeartbeat, members_of
from state.reporting.money import usd
from state.reporting.usage import usage_report
from state.reporting.windows import as_utc
from tests.conftest import Harness, StartGateway, ledger_row, record_pool

NOW = datetime(2026, 11, 20, 20, 0, tzinfo=UTC)
DAY = datetime(2026, 11, 20, tzinfo=UTC)
ENDPOINT = "http://127.0.0.1:9/v1"  # configured, never called: the reports read the ledger
OTHER = "http://127.0.0.1:9/v2"


def at(hour: float) -> datetime:
    return DAY + timedelta(hours=hour)


async def fixed_services(harness: Harness, **settings: Any) -> Services:
    values: dict[str, Any] = {"gpu_endpoints": [ENDPOINT]}
    values.update(settings)
    return await harness.services(clock=lambda: NOW, **values)


def gpu_row(i: int, created_at: datetime, gpu_seconds: float, **values: Any) -> UsageRecord:
    return ledger_row(
        f"pool-{i}",
        created_at,
        **{
            "prompt_tokens": 200,
            "completion_tokens": 100,
            "gpu_seconds": gpu_seconds,
            "latency_ms": gpu_seconds * 1000,
            **values,
        },
    )


async def report_of(services: Services, start: datetime, end: datetime) -> dict[str, Any]:
    ledger, settings, catalog = services.ledger, services.settings, services.catalog
    report = await usage_report(ledger, settings, catalog, start, end, "backend")
    return report["savings"]


async def test_two_hours_of_pool_in_a_day_are_charged_two_hours(
    harness: Harness, database: dict[str, Any]
):
    services = await fixed_services(
        harness,
        gpu_endpoints=[ENDPOINT, OTHER],
        gpu_endpoint_prices={OTHER: {"instance_type": "h100", "hourly_usd": 3.5}},
        **database,
    )
    hourly = services.settings.gpu_hourly_cost_usd
    assert hourly == 2.29  # the default: public GH200 rental records, Aug-Oct 2026
    await record_pool(services, at(10), at(12), endpoint=ENDPOINT)
    # the heartbeat records each endpoint with its configured type and price
    assert [(m.endpoint, m.instance_type, m.hourly_usd) for m in members_of(services.settings)] == [
        (ENDPOINT.removesuffix("/"), "gh200", hourly),
        (OTHER, "h100", 3.5),
    ]
    await record_pool(services, at(13), at(14), endpoint=OTHER)
    await services.ledger.record(gpu_row(1, at(10.5), gpu_seconds=36.0))

    s = await report_of(services, DAY, DAY + timedelta(days=1))
    assert s["hours"] == 24
    assert s["gpu_bill_usd"] == pytest.approx(2 * hourly + 1 * 3.5)  # not 24 h of two GPUs
    pool = s["pool"]
    assert pool["paid_instance_hours"] == pytest.approx(3)
    bills = {b["endpoint"]: b for b in pool["endpoints"]}
    assert bills[ENDPOINT]["hours"] == pytest.approx(2)
    assert bills[OTHER] == {
        "endpoint": OTHER,
        "instance_type": "h100",
        "hourly_usd": 3.5,
        "hours": pytest.approx(1),
        "usd": pytest.approx(3.5),
    }
    # 36 s on one of 16 slots is 2.25 instance-seconds busy of 3 paid hours
    busy_hours = 36 / 16 / 3600
    assert pool["busy_instance_hours"] == pytest.approx(busy_hours)
    assert pool["idle_share"] == pytest.approx(1 - busy_hours / 3)
    assert s["actual_usd"] == pytest.approx(s["gpu_bill_usd"])
    assert "3.00 instance-hours" in s["how"]["gpu_bill"]

    # a window that holds only part of an interval is charged that part
    s = await report_of(services, at(11), at(11.5))
    assert s["gpu_bill_usd"] == pytest.approx(0.5 * hourly)


async def test_overlapping_intervals_of_two_workers_are_charged_once(
    harness: Harness, database: dict[str, Any]
):
    services = await fixed_services(harness, **database)
    hourly = services.settings.gpu_hourly_cost_usd
    # two workers serving the same endpoint: 10-12 and 11-13 is three hours of one GPU
    await record_pool(services, at(10), at(12), endpoint=ENDPOINT, process="worker-a")
    await record_pool(services, at(11), at(13), endpoint=ENDPOINT, process="worker-b")
    # a third worker's interval inside them adds nothing
    await record_pool(services, at(11.25), at(11.75), endpoint=ENDPOINT, process="worker-c")
    # another endpoint at the same time is another GPU: charged on its own
    await record_pool(services, at(10), at(11), endpoint=OTHER, process="worker-a")

    s = await report_of(services, DAY, DAY + timedelta(days=1))
    bills = {b["endpoint"]: b["hours"] for b in s["pool"]["endpoints"]}
    assert bills == {ENDPOINT: pytest.approx(3), OTHER: pytest.approx(1)}
    assert s["gpu_bill_usd"] == pytest.approx(4 * hourly)


async def test_a_range_before_the_router_existed_charges_nothing(harness: Harness):
    services = await fixed_services(harness)
    await record_pool(services, at(10), at(12), endpoint=ENDPOINT)
    await services.ledger.record(gpu_row(1, at(10.5), gpu_seconds=3.0))

    # the week before the first interval: no pool hours, no requests, no money
    s = await report_of(services, DAY - timedelta(days=7), DAY)
    assert s["gpu_bill_usd"] == 0
    assert s["actual_usd"] == 0
    assert s["pool"]["paid_instance_hours"] == 0
    assert s["pool"]["idle_share"] is None
    assert s["all_gpu"]["usd"] == 0
    # a range that starts long before the router but holds its two hours: two hours
    s = await report_of(services, DAY - timedelta(days=30), NOW)
    assert s["gpu_bill_usd"] == pytest.approx(2 * services.settings.gpu_hourly_cost_usd)
    # all-GPU pays for the hours the router was in service, not the 30 days
    assert s["all_gpu"]["hours"] == pytest.approx(2)


async def test_the_heartbeat_extends_splits_after_a_gap_and_closes(
    harness: Harness, database: dict[str, Any]
):
    services = await fixed_services(harness, gpu_endpoints=[], **database)
    members = members_of(services.settings.model_copy(update={"gpu_endpoints": [ENDPOINT]}))
    moments = iter(
        [
            at(10),  # the first beat opens an interval
            at(10) + timedelta(seconds=60),  # on time: the same interval grows
            at(10) + timedelta(seconds=120),
            at(11),  # an hour late (the process was suspended): a new interval
            at(11) + timedelta(seconds=60),
            at(11) + timedelta(seconds=90),  # stopping closes it
            at(12),  # another process, which dies after one more beat
            at(12) + timedelta(seconds=60),
        ]
    )
    heartbeat = PoolHeartbeat(services.ledger, members, lambda: next(moments), 60)
    await heartbeat.start()
    for _ in range(4):
        await heartbeat.beat_now()
    s = await report_of(services, DAY, at(11) + timedelta(seconds=60))
    # the open interval of a live process counts up to the report's end
    assert s["pool"]["paid_instance_hours"] == pytest.approx((120 + 60) / 3600)
    await heartbeat.aclose()
    crashed = PoolHeartbeat(services.ledger, members, lambda: next(moments), 60)
    await crashed.beat_now()
    await crashed.beat_now()

    async with services.ledger.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(PoolInterval.started_at, PoolInterval.ended_at).order_by(
                    PoolInterval.started_at
                )
            )
        ).all()
    spans = [(as_utc(r.started_at), r.ended_at and as_utc(r.ended_at)) for r in rows]
    assert spans == [
        (at(10), at(10) + timedelta(seconds=120)),
        (at(11), at(11) + timedelta(seconds=90)),
        (at(12), None),
    ]
    # the process that died without closing: its interval ends at its last beat
    s = await report_of(services, DAY, DAY + timedelta(days=1))
    assert s["pool"]["paid_instance_hours"] == pytest.approx((120 + 90 + 60) / 3600)


async def test_every_surface_shows_the_same_pool_bill(
    harness: Harness, start_gateway: StartGateway
):
    admin, tenant = "sk-test-admin-0a0a0a0a0a0a", "sk-test-tenant-0b0b0b0b0b0b"
    services = await fixed_services(
        harness, router_api_keys=f"{admin}:root,{tenant}:bob", router_admin_users="root"
    )
    hourly = services.settings.gpu_hourly_cost_usd
    await record_pool(services, at(10), at(12), endpoint=ENDPOINT)
    await services.ledger.record(gpu_row(1, at(10.5), gpu_seconds=20.0))
    await services.ledger.record(
        gpu_row(2, at(11), gpu_seconds=0.0, backend="serverless", cost_usd=0.0004)
    )
    bill = 2 * hourly

    gateway = await start_gateway(services)
    base = gateway.url.removesuffix("/v1")
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {admin}"}) as http:
        stats = (await http.get(f"{base}/stats")).json()
        usage = (await http.get(f"{base}/usage?days=1&group_by=backend")).json()
        dashboard = (await http.get(f"{base}/dashboard/data?days=1")).json()
        # a tenant sees its own requests' share of the shared pool, not the operator's bill
        mine = (
            await http.get(
                f"{base}/usage?days=1&group_by=backend",
                headers={"authorization": f"Bearer {tenant}"},
            )
        ).json()
    assert mine["savings"]["gpu_bill_usd"] == 0
    assert "operator" in mine["savings"]["how"]["gpu_bill"]

    async def provider() -> Services:
        return services

    async with Client(build_server(provider)) as client:
        tool = await client.call_tool("get_usage_stats", {"days": 1, "group_by": "backend"})
        advice = await client.call_tool("optimize_costs", {"days": 1})
    assert tool.structured_content is not None
    assert advice.structured_content is not None

    chat = chat_builder.compile()
    answer = await chat.ainvoke(
        {"messages": [HumanMessage("Show cost savings compared to GPU baseline today")]},
        context=Context(services=services),
    )
    text = str(answer["messages"][-1].content)
    assert answer["intent"] == "cost_comparison"

    figures = [
        stats["today"]["savings"],
        stats["month"]["savings"],
        usage["savings"],
        dashboard["savings"],
        tool.structured_content["savings"],
    ]
    for s in figures:
        assert s["gpu_bill_usd"] == pytest.approx(bill)
        assert s["serverless_usd"] == pytest.approx(0.0004)
        assert s["actual_usd"] == pytest.approx(bill + 0.0004)
        assert s["pool"]["idle_share"] == pytest.approx(figures[0]["pool"]["idle_share"])
        assert set(s["how"]) == {"actual", "gpu_bill", "idle_share", "all_gpu", "all_serverless"}
    assert advice.structured_content["figures"]["gpu_bill_usd"] == pytest.approx(bill)
    tool_text = "\n".join(block.text for block in tool.content)
    for shown in (text, tool_text):
        assert f"GPU pool bill: {usd(bill)} for 2.00 instance-hours" in shown
        assert "Pool idle share:" in shown
