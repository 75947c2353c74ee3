"""Usage analytics equal sums computed independently from the ledger rows."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from state.ledger import UsageRecord
from state.reporting.usage import usage_report
from tests.conftest import Harness, record_pool

START = datetime(2026, 11, 1, tzinfo=UTC)


def make_rows(count: int = 120) -> list[UsageRecord]:
    rng = random.Random(7)
    rows = []
    for i in range(count):
        backend = rng.choice(["serverless", "gpu"])
        ok = rng.random() > 0.1
        rows.append(
            UsageRecord(
                created_at=START + timedelta(hours=rng.randrange(0, 72), minutes=rng.randrange(60)),
                request_id=f"a-{i}",
                user=rng.choice(["alice", "bob", None]),
                team=None,
                backend=backend if ok else None,
                model=rng.choice(["llama3.1-8b-instruct", "llama3.1-70b-instruct-fp8"]),
                prompt_tokens=rng.randrange(5, 500) if ok else 0,
                completion_tokens=rng.randrange(5, 300) if ok else 0,
                cost_usd=rng.random() / 1000 if ok else 0.0,
                gpu_seconds=0.0,
                latency_ms=rng.uniform(50, 900),
                status="ok" if ok else "failed",
                routing_reason="test",
                complexity_score=0.1,
                complexity_level="low",
                fallbacks=rng.choice([0, 0, 0, 1]),
                error=None if ok else "boom",
            )
        )
    return rows


def nearest_rank(values, q):
    ordered = sorted(values)
    index = 0
    while (index + 1) / len(ordered) < q:
        index += 1
    return ordered[index]


@pytest.mark.parametrize("group_by", ["day", "model", "backend", "user"])
async def test_report_matches_independent_sums(harness: Harness, database, group_by):
    services = await harness.services(**database, gpu_endpoints=["http://127.0.0.1:9/v1"])
    rows = make_rows()
    for row in rows:
        await services.ledger.record(row)
    # a row outside the range must not count
    outside = make_rows(1)[0]
    outside.request_id, outside.created_at = "outside", START - timedelta(days=2)
    await services.ledger.record(outside)

    end = START + timedelta(days=3)
    report = await usage_report(
        services.ledger, services.settings, services.catalog, START, end, group_by
    )

    def key(r):
        if group_by == "day":
            return r.created_at.date().isoformat()
        return getattr(r, group_by) or "(none)"

    expected_keys = sorted({key(r) for r in rows})
    assert sorted(report["groups"]) == expected_keys
    for name in expected_keys:
        mine = [r for r in rows if key(r) == name]
        got = report["groups"][name]
        assert got["requests"] == len(mine)
        assert got["prompt_tokens"] == sum(r.prompt_tokens for r in mine)
        assert got["completion_tokens"] == sum(r.completion_tokens for r in mine)
        assert got["cost_usd"] == pytest.approx(sum(r.cost_usd for r in mine))
        assert got["error_rate"] == pytest.approx(
            sum(r.status == "failed" for r in mine) / len(mine)
        )
        assert got["fallback_rate"] == pytest.approx(sum(r.fallbacks > 0 for r in mine) / len(mine))
        latencies = [r.latency_ms for r in mine]
        assert got["latency_ms_mean"] == pytest.approx(sum(latencies) / len(latencies))
        assert got["latency_ms_p50"] == pytest.approx(nearest_rank(latencies, 0.5))
        assert got["latency_ms_p95"] == pytest.approx(nearest_rank(latencies, 0.95))
    totals = report["totals"]
    assert totals["requests"] == len(rows)
    assert totals["cost_usd"] == pytest.approx(sum(r.cost_usd for r in rows))


async def test_savings_against_both_baselines(harness: Harness, database):
    services = await harness.services(**database, gpu_endpoints=["http://127.0.0.1:9/v1"])
    settings, catalog = services.settings, services.catalog
    rows = make_rows()
    for row in rows:
        await services.ledger.record(row)
    end = START + timedelta(days=3)
    await record_pool(services, START, end)  # the pool ran the whole range
    report = await usage_report(services.ledger, settings, catalog, START, end)
    s = report["savings"]
    answered = [r for r in rows if r.status == "ok"]
    hours = 72
    serverless = sum(r.cost_usd for r in answered if r.backend == "serverless")
    actual = serverless + 1 * settings.gpu_hourly_cost_usd * hours
    assert s["actual_usd"] == pytest.approx(actual)
    default = catalog.by_id[catalog.default_serverless_model]
    all_serverless = sum(default.cost_usd(r.prompt_tokens, r.completion_tokens) for r in answered)
    assert s["all_serverless"]["usd"] == pytest.approx(all_serverless)
    assert s["all_serverless"]["saved_usd"] == pytest.approx(all_serverless - actual)
    by_hour: dict = {}
    for r in answered:
        hour = r.created_at.replace(minute=0)
        by_hour[hour] = by_hour.get(hour, 0) + r.latency_ms / 1000
    assert s["all_gpu"]["peak_hour_gpu_seconds"] == pytest.approx(max(by_hour.values()))
    assert s["all_gpu"]["instances"] == 1  # a few seconds of work per hour fit one instance
    assert s["all_gpu"]["usd"] == pytest.approx(settings.gpu_hourly_cost_usd * hours)


async def test_report_rejects_a_bad_range(harness: Harness):
    services = await harness.services()
    with pytest.raises(ValueError, match="end must come after start"):
        await usage_report(services.ledger, services.settings, services.catalog, START, START)
    with pytest.raises(ValueError, match="group_by"):
        await usage_report(
            services.ledger, services.settings, services.catalog, START, START + timedelta(1), "x"
        )
