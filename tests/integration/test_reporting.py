"""The reporting functions called directly: figures equal sums computed here from the rows."""

from __future__ import annotations

import math
import random
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert

from backends.catalog import get_catalog
from nodes.cost_estimate import estimate, route_prompt
from state.budgets import BudgetBook
from state.context import Services
from state.ledger import Alert, UsageRecord
from state.reporting.advice import cost_advice
from state.reporting.budget_status import every_budget_status
from state.reporting.dashboard import dashboard_data
from state.reporting.estimates import RoutedPrompt, price_prompt
from state.reporting.usage import routing_stats, usage_of_last_days, usage_stats
from state.reporting.windows import calendar_windows, last_days, trailing_days
from tests.conftest import Harness, record_pool

NEW_YORK = ZoneInfo("America/New_York")
# 23:30 on 8 March 2026 in New York, the day clocks go forward (a 23-hour day);
# already 9 March in UTC.
NOW = datetime(2026, 3, 9, 3, 30, tzinfo=UTC)
TODAY = date(2026, 3, 8)


# -- windows ---------------------------------------------------------------------------


def test_the_day_clocks_go_forward_is_23_hours_and_keyed_by_the_local_date():
    w = calendar_windows(NOW, NEW_YORK)
    assert w.day_key == "2026-03-08"
    assert w.month_key == "2026-03"
    assert w.day_start.isoformat() == "2026-03-08T00:00:00-05:00"
    assert w.day_end.isoformat() == "2026-03-09T00:00:00-04:00"
    assert w.day_end.astimezone(UTC) - w.day_start.astimezone(UTC) == timedelta(hours=23)
    assert w.month_start.isoformat() == "2026-03-01T00:00:00-05:00"
    assert w.month_end.isoformat() == "2026-04-01T00:00:00-04:00"


def test_the_day_clocks_go_back_is_25_hours():
    w = calendar_windows(datetime(2026, 11, 1, 12, tzinfo=UTC), NEW_YORK)
    assert w.day_end.astimezone(UTC) - w.day_start.astimezone(UTC) == timedelta(hours=25)
    assert w.day_end.isoformat() == "2026-11-02T00:00:00-05:00"


@pytest.mark.parametrize(
    ("moment", "zone", "day", "month", "month_end"),
    [
        # past midnight in UTC, still the last evening of October in New York
        ("2026-11-01T02:00:00+00:00", "America/New_York", "2026-10-31", "2026-10", "2026-11-01"),
        # New Year in Kolkata (+05:30) while UTC is still in December
        ("2026-12-31T18:45:00+00:00", "Asia/Kolkata", "2027-01-01", "2027-01", "2027-02-01"),
        # one second before local midnight stays in the old day
        ("2027-01-01T05:29:59+00:00", "Asia/Kolkata", "2027-01-01", "2027-01", "2027-02-01"),
        ("2026-02-28T23:59:59+00:00", "UTC", "2026-02-28", "2026-02", "2026-03-01"),
    ],
)
def test_windows_follow_the_local_calendar(moment, zone, day, month, month_end):
    w = calendar_windows(datetime.fromisoformat(moment), ZoneInfo(zone))
    assert (w.day_key, w.month_key) == (day, month)
    assert w.month_end.date().isoformat() == month_end
    assert w.day_start <= datetime.fromisoformat(moment) < w.day_end
    assert w.month_start <= w.day_start
    assert w.day_end <= w.month_end


def test_last_days_and_trailing_days():
    start, end, days = last_days(NOW, NEW_YORK, 3)
    assert start.isoformat() == "2026-03-06T00:00:00-05:00"
    assert end == NOW
    assert days == [date(2026, 3, 6), date(2026, 3, 7), date(2026, 3, 8)]
    start, end, days = last_days(NOW, ZoneInfo("UTC"), 1)
    assert start.isoformat() == "2026-03-09T00:00:00+00:00"
    assert days == [date(2026, 3, 9)]
    # at local midnight exactly the range still has an end after its start
    midnight = datetime(2026, 3, 9, tzinfo=UTC)
    start, end, _ = last_days(midnight, ZoneInfo("UTC"), 1)
    assert end > start == midnight
    assert trailing_days(NOW, 2) == (NOW - timedelta(days=2), NOW)


async def test_budget_windows_are_the_same_calendar(harness: Harness):
    services = await harness.services(budget_timezone="America/New_York")
    book = BudgetBook(services.ledger, services.settings, lambda: NOW)
    status = {b["period"]: b for b in await book.status()}
    assert status["day"]["window"] == "2026-03-08"
    assert status["day"]["resets_at"] == "2026-03-09T00:00:00-04:00"
    assert status["month"]["window"] == "2026-03"
    assert status["month"]["resets_at"] == "2026-04-01T00:00:00-04:00"


# -- figures from rows -----------------------------------------------------------------


def row(i: int, at: datetime, rng: random.Random, **values: Any) -> UsageRecord:
    ok = rng.random() > 0.15
    fields: dict[str, Any] = {
        "created_at": at,
        "request_id": f"r-{i}",
        "user": rng.choice(["alice", "bob", None]),
        "team": None,
        "backend": rng.choice(["serverless", "gpu"]) if ok else None,
        "model": rng.choice(["llama3.1-8b-instruct", "llama3.1-70b-instruct-fp8"]),
        "prompt_tokens": rng.randrange(5, 500) if ok else 0,
        "completion_tokens": rng.randrange(5, 300) if ok else 0,
        "cost_usd": rng.random() / 1000 if ok else 0.0,
        "gpu_seconds": 0.0,
        "latency_ms": rng.uniform(50, 900),
        "status": "ok" if ok else "failed",
        "routing_reason": "test",
        "complexity_score": 0.1,
        "complexity_level": "low",
        "fallbacks": rng.choice([0, 0, 0, 1]),
        "error": None if ok else "boom",
    }
    fields.update(values)
    return UsageRecord(**fields)


def make_rows() -> list[UsageRecord]:
    rng = random.Random(11)
    first = datetime(2026, 2, 20, tzinfo=UTC)
    moments = [
        first + timedelta(minutes=rng.randrange(int((NOW - first).total_seconds() // 60)))
        for _ in range(150)
    ]
    moments += [
        datetime(2026, 3, 9, 3, 0, tzinfo=UTC),  # 23:00 on the 8th in New York
        datetime(2026, 3, 8, 5, 30, tzinfo=UTC),  # 00:30 on the 8th (EST)
        datetime(2026, 3, 8, 4, 30, tzinfo=UTC),  # 23:30 on the 7th
        datetime(2026, 3, 1, 5, 10, tzinfo=UTC),  # 00:10 on 1 March
        datetime(2026, 3, 1, 4, 50, tzinfo=UTC),  # 23:50 on 28 February
        datetime(2026, 3, 9, 3, 40, tzinfo=UTC),  # later today, after the clock's now
    ]
    return [row(i, at, rng) for i, at in enumerate(moments)]


def local_day(r: UsageRecord) -> date:
    return r.created_at.astimezone(NEW_YORK).date()


async def services_with_rows(harness: Harness, **settings: Any) -> tuple[Services, list[Any]]:
    services = await harness.services(
        budget_timezone="America/New_York", gpu_endpoints=["http://127.0.0.1:9/v1"], **settings
    )
    rows = make_rows()
    for r in rows:
        await services.ledger.record(r)
    # the pool was up for the last 30 hours before NOW
    await record_pool(services, NOW - timedelta(hours=30), NOW)
    return services, rows


def expected_period(rows: list[UsageRecord]) -> dict[str, Any]:
    by_backend: dict[str, dict[str, Any]] = {}
    for name in ("serverless", "gpu", "none"):
        mine = [r for r in rows if (r.backend or "none") == name]
        if mine or name != "none":
            by_backend[name] = {"requests": len(mine), "cost": sum(r.cost_usd for r in mine)}
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    return {
        "requests": len(rows),
        "by_backend": by_backend,
        "by_status": by_status,
        "fallbacks": sum(1 for r in rows if r.fallbacks > 0),
        "cost": sum(r.cost_usd for r in rows),
    }


async def test_routing_stats_match_the_rows_of_the_local_day_and_month(
    harness: Harness, database: dict[str, Any]
):
    services, rows = await services_with_rows(harness, **database)
    stats = await routing_stats(services.ledger, services.settings, services.catalog, NOW)
    assert stats["timezone"] == "America/New_York"
    assert stats["generated_at"] == NOW.isoformat()
    today = [r for r in rows if local_day(r) == TODAY]
    month = [r for r in rows if local_day(r) >= date(2026, 3, 1)]
    assert len(today) >= 3  # the boundary rows of the 8th, the later one included
    for name, mine in (("today", today), ("month", month)):
        got, want = stats[name], expected_period(mine)
        assert got["requests"] == want["requests"]
        assert got["by_status"] == want["by_status"]
        assert got["fallbacks"] == want["fallbacks"]
        assert got["fallback_rate"] == pytest.approx(want["fallbacks"] / want["requests"])
        assert got["cost_usd"] == pytest.approx(want["cost"])
        assert set(got["by_backend"]) == set(want["by_backend"])
        for backend, figures in want["by_backend"].items():
            assert got["by_backend"][backend]["requests"] == figures["requests"]
            assert got["by_backend"][backend]["cost_usd"] == pytest.approx(figures["cost"])
            assert got["by_backend"][backend]["share"] == pytest.approx(
                figures["requests"] / want["requests"]
            )
    assert stats["today"]["start"] == "2026-03-08T00:00:00-05:00"
    assert stats["month"]["end"] == "2026-04-01T00:00:00-04:00"


async def test_usage_of_last_days_covers_whole_local_days_up_to_now(harness: Harness):
    services, rows = await services_with_rows(harness)
    report = await usage_of_last_days(
        services.ledger, services.settings, services.catalog, NOW, 3, "day"
    )
    mine = [r for r in rows if date(2026, 3, 6) <= local_day(r) and r.created_at < NOW]
    assert report["days"] == 3
    assert report["group_by"] == "day"
    assert report["start"] == "2026-03-06T00:00:00-05:00"
    assert report["end"] == NOW.isoformat()
    assert report["totals"]["requests"] == len(mine)
    assert report["totals"]["cost_usd"] == pytest.approx(sum(r.cost_usd for r in mine))
    days = sorted({local_day(r).isoformat() for r in mine})
    assert list(report["groups"]) == days
    for day in days:
        in_day = [r for r in mine if local_day(r).isoformat() == day]
        assert report["groups"][day]["requests"] == len(in_day)
        assert report["groups"][day]["total_tokens"] == sum(
            r.prompt_tokens + r.completion_tokens for r in in_day
        )


async def test_usage_stats_and_advice_cover_the_trailing_days(harness: Harness):
    services, rows = await services_with_rows(harness)
    stats = await usage_stats(
        services.ledger, services.budgets, services.settings, services.catalog, NOW, 2, "backend"
    )
    mine = [r for r in rows if NOW - timedelta(days=2) <= r.created_at < NOW]
    assert stats["start"] == (NOW - timedelta(days=2)).isoformat()
    assert stats["totals"]["requests"] == len(mine)
    assert stats["totals"]["cost_usd"] == pytest.approx(sum(r.cost_usd for r in mine))
    serverless = [r for r in mine if r.backend == "serverless"]
    assert stats["groups"]["serverless"]["requests"] == len(serverless)
    assert stats["budgets"] == await services.budgets.status()
    # charged for the 30 recorded hours of the 48-hour range, not for all 48
    assert stats["savings"]["gpu_bill_usd"] == pytest.approx(
        services.settings.gpu_hourly_cost_usd * 30
    )

    advice = await cost_advice(
        services.ledger, services.budgets, services.settings, services.catalog, NOW, 2
    )
    figures = advice["figures"]
    assert figures["requests"] == len(mine)
    assert figures["failed"] == sum(1 for r in mine if r.status != "ok")
    ok_serverless = [r for r in serverless if r.status == "ok"]
    assert figures["serverless_usd"] == pytest.approx(sum(r.cost_usd for r in ok_serverless))
    assert advice["start"] == stats["start"]
    assert advice["days"] == 2


async def test_dashboard_series_split_and_alerts(harness: Harness):
    services, rows = await services_with_rows(harness)
    alerts = [
        {
            "created_at": NOW - timedelta(minutes=i),
            "scope": "global",
            "scope_key": "",
            "period": "day",
            "window_key": f"2026-02-{i + 1:02d}",
            "threshold": 0.8,
            "spent_usd": 40.0 + i,
            "limit_usd": 50.0,
            "delivered": "pending",
        }
        for i in range(12)
    ]
    await services.ledger.write(lambda conn: conn.execute(insert(Alert), alerts))

    data = await dashboard_data(
        services.ledger,
        services.budgets,
        services.settings,
        services.catalog,
        NOW,
        3,
        emulated=True,
    )
    assert data["emulated"] is True
    assert data["range"]["start"] == "2026-03-06T00:00:00-05:00"
    spend = data["spend"]
    days = [date(2026, 3, 6), date(2026, 3, 7), date(2026, 3, 8)]
    assert spend["days"] == [d.isoformat() for d in days]
    before_now = [r for r in rows if r.created_at < NOW]
    for i, day in enumerate(days):
        in_day = [r for r in before_now if local_day(r) == day]
        for backend in ("serverless", "gpu"):
            assert spend[f"{backend}_usd"][i] == pytest.approx(
                sum(r.cost_usd for r in in_day if r.backend == backend)
            )
        assert spend["requests"][i] == len(in_day)
        month_to_day = [
            r
            for r in before_now
            if date(2026, 3, 1) <= local_day(r) <= day and r.backend == "serverless"
        ]
        assert spend["month_to_date_serverless_usd"][i] == pytest.approx(
            sum(r.cost_usd for r in month_to_day)
        )
    in_range = [r for r in before_now if local_day(r) >= days[0]]
    for backend in ("serverless", "gpu"):
        assert data["split"][backend]["requests"] == sum(
            1 for r in in_range if r.backend == backend
        )
        assert data["latency"][backend]["requests"] == data["split"][backend]["requests"]
    assert data["split"]["unanswered"]["requests"] == sum(1 for r in in_range if not r.backend)
    assert data["totals"]["requests"] == len(in_range)
    assert [a["window"] for a in data["alerts"]] == [f"2026-02-{i + 1:02d}" for i in range(10)]
    assert data["alerts"][0]["created_at"] == NOW.isoformat()
    assert spend["daily_budget_usd"] == services.settings.lambda_daily_budget

    with pytest.raises(ValueError, match="days must be between 1 and 366"):
        await dashboard_data(
            services.ledger, services.budgets, services.settings, services.catalog, NOW, 0
        )


async def test_every_budget_is_reported_once(harness: Harness):
    services = await harness.services(
        user_budgets={"alice": {"daily": 5, "monthly": 100}},
        team_budgets={"search": {"daily": 20}},
    )
    await services.budgets.set_budget("user", "bob", 1.0, None)
    await services.budgets.set_budget("team", "ops", None, 50.0)
    await services.budgets.set_budget("user", "alice", 7.0, None)  # the API's limit wins
    windows = await every_budget_status(services.budgets, services.ledger, services.settings)
    keys = [(w["scope"], w["key"], w["period"]) for w in windows]
    assert len(keys) == len(set(keys))
    assert set(keys) == {
        ("global", "", "day"),
        ("global", "", "month"),
        ("user", "alice", "day"),
        ("user", "bob", "day"),
        ("team", "search", "day"),
        ("team", "ops", "month"),
    }
    limits = {(w["scope"], w["key"], w["period"]): w["limit_usd"] for w in windows}
    assert limits[("user", "alice", "day")] == 7.0

    alone = await harness.services(database_url=f"sqlite:///{harness.tmp_path}/alone.db")
    only_global = await every_budget_status(alone.budgets, alone.ledger, alone.settings)
    assert [(w["scope"], w["period"]) for w in only_global] == [
        ("global", "day"),
        ("global", "month"),
    ]


# -- estimates -------------------------------------------------------------------------


async def test_price_prompt_prices_every_model_from_the_routed_view(harness: Harness):
    services = await harness.services()
    catalog, settings = get_catalog(), services.settings
    small = min(catalog.models, key=lambda m: m.context_window)
    routed = RoutedPrompt(
        prompt_tokens=1000,
        complexity={"score": 0.3, "level": "medium", "features": {"code": 1.0}},
        cost_priority="balanced",
        required_tier=2,
        picks={"serverless": None, "gpu": None},
        fitting=frozenset({small.id}),
    )
    result = price_prompt(catalog, settings, routed, 200)
    assert result["prompt_tokens"] == 1000
    assert result["max_tokens"] == 200
    assert "would refuse it" in result["router_pick"]["reason"]
    by_model = {m["model"]: m for m in result["models"]}
    assert set(by_model) == set(catalog.ids())
    for spec in catalog.models:
        got = by_model[spec.id]
        assert got["fits"] is (spec.id == small.id)
        if spec.serverless:
            want = (1000 * spec.input_usd_per_mtok + 200 * spec.output_usd_per_mtok) / 1e6
            assert got["worst_case_usd"] == pytest.approx(want, rel=1e-12)
            held = math.ceil(1000 * settings.budget_estimate_margin)
            assert got["budget_reservation_usd"] == pytest.approx(spec.cost_usd(held, 200))
        else:
            assert got["worst_case_usd"] is None
            assert got["budget_reservation_usd"] is None
    assert result["gpu_pool"]["allocated_usd_per_gpu_second"] == pytest.approx(
        settings.gpu_hourly_cost_usd / 3600 / settings.gpu_concurrency_per_endpoint
    )

    messages = [{"role": "user", "content": "Write a Python function that sorts a list."}]
    routed = route_prompt(catalog, messages, 300)
    assert estimate(catalog, settings, messages, 300) == price_prompt(
        catalog, settings, routed, 300
    )
    assert routed.picks["serverless"] in catalog.ids()
