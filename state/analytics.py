"""Usage analytics from the ledger: the same figures on SQLite and PostgreSQL.

Rows of a time range are read with one query and aggregated here, so both
databases give identical answers (percentiles are nearest-rank). Savings are
measured against two baselines:

- all on dedicated GPUs: enough instances for the busiest hour (its GPU-seconds
  over ``GPU_CONCURRENCY_PER_ENDPOINT`` concurrent requests an instance
  serves), paid for every hour of the range;
- all on the default serverless model: every answered request's tokens at that
  model's prices.

The actual cost is the serverless spend plus the GPU pool's bill (its
endpoints at the hourly price over the range), so idle GPU time is counted.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select

from backends.catalog import Catalog
from state.ledger import Ledger, UsageRecord
from state.settings import Settings

GroupBy = Literal["day", "model", "backend", "user"]
GROUPINGS: tuple[GroupBy, ...] = ("day", "model", "backend", "user")

_COLUMNS = (
    UsageRecord.created_at,
    UsageRecord.user,
    UsageRecord.backend,
    UsageRecord.model,
    UsageRecord.prompt_tokens,
    UsageRecord.completion_tokens,
    UsageRecord.cost_usd,
    UsageRecord.gpu_seconds,
    UsageRecord.latency_ms,
    UsageRecord.status,
    UsageRecord.fallbacks,
)


def nearest_rank(values: list[float], q: float) -> float:
    """Return the ``q`` percentile (0..1) of ``values`` by the nearest-rank method."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; the ledger writes UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def summarize(rows: Iterable[Any]) -> dict[str, Any]:
    """Aggregate rows: counts, tokens, cost, latency percentiles, error and fallback rates."""
    rows = list(rows)
    latencies = [r.latency_ms for r in rows]
    requests = len(rows)
    failed = sum(1 for r in rows if r.status != "ok")
    return {
        "requests": requests,
        "failed": failed,
        "prompt_tokens": sum(r.prompt_tokens for r in rows),
        "completion_tokens": sum(r.completion_tokens for r in rows),
        "total_tokens": sum(r.prompt_tokens + r.completion_tokens for r in rows),
        "cost_usd": sum(r.cost_usd for r in rows),
        "latency_ms_mean": statistics.fmean(latencies) if latencies else 0.0,
        "latency_ms_p50": nearest_rank(latencies, 0.50),
        "latency_ms_p95": nearest_rank(latencies, 0.95),
        "error_rate": failed / requests if requests else 0.0,
        "fallback_rate": sum(1 for r in rows if r.fallbacks) / requests if requests else 0.0,
    }


def savings(
    rows: list[Any], start: datetime, end: datetime, settings: Settings, catalog: Catalog
) -> dict[str, Any]:
    """Compare the actual cost with the all-GPU and all-serverless baselines."""
    hours = max((end - start).total_seconds() / 3600, 0.0)
    hourly = settings.gpu_hourly_cost_usd
    answered = [r for r in rows if r.status == "ok"]
    serverless_usd = sum(r.cost_usd for r in answered if r.backend == "serverless")
    gpu_bill = len(settings.gpu_endpoints) * hourly * hours
    busy: dict[datetime, float] = defaultdict(float)
    for r in answered:
        hour = _utc(r.created_at).replace(minute=0, second=0, microsecond=0)
        busy[hour] += r.latency_ms / 1000
    peak_gpu_seconds = max(busy.values(), default=0.0)
    per_instance_hour = 3600 * settings.gpu_concurrency_per_endpoint
    instances = max(1, math.ceil(peak_gpu_seconds / per_instance_hour)) if answered else 0
    all_gpu = instances * hourly * hours
    default = catalog.by_id[catalog.default_serverless_model]
    all_serverless = sum(default.cost_usd(r.prompt_tokens, r.completion_tokens) for r in answered)
    actual = serverless_usd + gpu_bill
    return {
        "hours": hours,
        "actual_usd": actual,
        "serverless_usd": serverless_usd,
        "gpu_bill_usd": gpu_bill,
        "gpu_allocated_usd": sum(r.cost_usd for r in answered if r.backend == "gpu"),
        "all_gpu": {
            "instances": instances,
            "peak_hour_gpu_seconds": peak_gpu_seconds,
            "usd": all_gpu,
            "saved_usd": all_gpu - actual,
        },
        "all_serverless": {
            "model": default.id,
            "usd": all_serverless,
            "saved_usd": all_serverless - actual,
        },
    }


async def usage_report(
    ledger: Ledger,
    settings: Settings,
    catalog: Catalog,
    start: datetime,
    end: datetime,
    group_by: GroupBy = "day",
) -> dict[str, Any]:
    """Return totals, per-group figures and savings for ``[start, end)``."""
    if group_by not in GROUPINGS:
        raise ValueError(f"group_by is {group_by!r}; use one of {', '.join(GROUPINGS)}")
    if end <= start:
        raise ValueError("the range is empty: end must come after start")
    await ledger.ensure_schema()
    query = select(*_COLUMNS).where(
        UsageRecord.created_at >= start.astimezone(UTC),
        UsageRecord.created_at < end.astimezone(UTC),
    )
    async with ledger.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    zone = settings.zone
    groups: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        if group_by == "day":
            key = _utc(r.created_at).astimezone(zone).date().isoformat()
        else:
            key = getattr(r, group_by) or "(none)"
        groups[key].append(r)
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "group_by": group_by,
        "totals": summarize(rows),
        "groups": {key: summarize(group) for key, group in sorted(groups.items())},
        "savings": savings(list(rows), start, end, settings, catalog),
    }
