"""The money of a range, computed once: spend, the GPU pool's bill, its idle share, savings.

Every report surface (``/stats``, ``/usage``, ``/dashboard/data``, the MCP tools,
the chat graph's ledger answers and the cost advice) shows what
:func:`cost_accounting` returns, so they agree to the cent. Each figure comes
with a sentence saying how it was computed (``how``).

- **Pool bill.** The GPU instances are charged only for the hours the ledger
  recorded them in the pool (``gpu_pool_intervals``, written by
  :mod:`state.pool_membership`), clipped to the range, at the hourly price
  recorded with each interval. Overlapping intervals of one endpoint (several
  workers or replicas serving the same pool) are merged first, so an hour is
  charged once; a merged stretch costs the highest price among its
  intervals. Hours before the router ran, or while it was stopped, cost
  nothing here: if the instances were rented then, that money is outside the
  router's record.
- **Busy and idle.** A GPU request holds one of ``GPU_CONCURRENCY_PER_ENDPOINT``
  slots of an instance for its GPU-seconds (the time from sending it to the
  endpoint to its last token, the ledger's ``gpu_seconds``), so the pool was
  busy ``sum(gpu_seconds) / concurrency`` instance-seconds. The idle share is
  one minus busy over paid instance-seconds.
- **Spend.** Serverless tokens at the prices of the provider that served each
  request (a request its caller cut short included: its tokens so far were
  billed) plus the pool bill.
- **All on GPUs.** Enough instances for the busiest hour of answered traffic
  (its seconds of latency over the concurrency an instance serves), at
  ``GPU_HOURLY_COST_USD``, for the hours the router was in service in the
  range: the union of the pool's recorded intervals and the stretch from the
  range's first to its last request.
- **All serverless.** Every served request's tokens at the default
  serverless model's prices.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from backends.catalog import Catalog
from state.ledger import ROW_SERVED, Ledger, PoolInterval
from state.pool_membership import gap_tolerance
from state.reporting.money import usd
from state.reporting.windows import as_utc
from state.settings import Settings

Span = tuple[datetime, datetime]


@dataclass(frozen=True, slots=True)
class IntervalRow:
    """One recorded pool interval, already clipped to the report's range."""

    endpoint: str
    instance_type: str
    hourly_usd: float
    start: datetime
    end: datetime


def effective_end(
    ended_at: datetime | None, last_seen_at: datetime, now: datetime, tolerance: timedelta
) -> datetime:
    """Return where an interval ends for a report made at ``now``.

    A closed interval ends where it was closed. An open one whose last beat is
    within ``tolerance`` of ``now`` belongs to a running process and lasts to
    ``now``; an older open one (a process that died without closing it) ends at
    its last beat.
    """
    if ended_at is not None:
        return as_utc(ended_at)
    seen = as_utc(last_seen_at)
    return max(seen, now) if seen >= now - tolerance else seen


async def pool_intervals(
    ledger: Ledger, settings: Settings, start: datetime, end: datetime
) -> list[IntervalRow]:
    """Return the recorded pool intervals that overlap ``[start, end)``, clipped to it.

    ``end`` stands for the moment of the report: an open interval with a fresh
    heartbeat lasts to it.
    """
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    tolerance = gap_tolerance(settings)
    table = PoolInterval.__table__
    query = select(
        table.c.endpoint,
        table.c.instance_type,
        table.c.hourly_usd,
        table.c.started_at,
        table.c.last_seen_at,
        table.c.ended_at,
    ).where(table.c.started_at < end, table.c.last_seen_at >= start - tolerance)
    await ledger.ensure_schema()
    async with ledger.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    found: list[IntervalRow] = []
    for r in rows:
        lo = max(as_utc(r.started_at), start)
        hi = min(effective_end(r.ended_at, r.last_seen_at, end, tolerance), end)
        if hi > lo:
            found.append(IntervalRow(r.endpoint, r.instance_type, r.hourly_usd, lo, hi))
    return found


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Merge overlapping or touching ``(start, end)`` spans; return them sorted."""
    merged: list[list[datetime]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def _hours(spans: Iterable[Span]) -> float:
    return sum((hi - lo).total_seconds() for lo, hi in spans) / 3600


def endpoint_bills(intervals: Sequence[IntervalRow]) -> list[dict[str, Any]]:
    """Return each endpoint's charged hours and dollars, overlapping intervals merged.

    A merged stretch is charged at the highest hourly price among the
    intervals it joins (two processes configured with different prices for
    one endpoint are not both charged).
    """
    by_endpoint: dict[str, list[IntervalRow]] = defaultdict(list)
    for row in intervals:
        by_endpoint[row.endpoint].append(row)
    bills: list[dict[str, Any]] = []
    for endpoint, rows in sorted(by_endpoint.items()):
        rows.sort(key=lambda r: r.start)
        hours = cost = 0.0
        stretch: list[IntervalRow] = []
        stretch_end: datetime | None = None

        def settle(group: list[IntervalRow], until: datetime) -> tuple[float, float]:
            length = (until - group[0].start).total_seconds() / 3600
            return length, length * max(r.hourly_usd for r in group)

        for row in rows:
            if stretch and stretch_end is not None and row.start > stretch_end:
                h, c = settle(stretch, stretch_end)
                hours, cost = hours + h, cost + c
                stretch, stretch_end = [], None
            stretch.append(row)
            stretch_end = row.end if stretch_end is None else max(stretch_end, row.end)
        if stretch and stretch_end is not None:
            h, c = settle(stretch, stretch_end)
            hours, cost = hours + h, cost + c
        priciest = max(rows, key=lambda r: r.hourly_usd)
        bills.append(
            {
                "endpoint": endpoint,
                "instance_type": priciest.instance_type,
                "hourly_usd": priciest.hourly_usd,
                "hours": hours,
                "usd": cost,
            }
        )
    return bills


def cost_accounting(
    rows: Sequence[Any],
    intervals: Sequence[IntervalRow],
    start: datetime,
    end: datetime,
    settings: Settings,
    catalog: Catalog,
    *,
    tenant_view: bool = False,
) -> dict[str, Any]:
    """Return the range's spend, pool bill, idle share and savings, each with how it was computed.

    Args:
        rows: The ledger's usage rows of ``[start, end)`` (``created_at``,
            ``backend``, ``status``, ``cost_usd``, ``gpu_seconds``,
            ``latency_ms``, ``prompt_tokens``, ``completion_tokens``).
        intervals: :func:`pool_intervals` of the same range.
        start: The range's start.
        end: The range's end (the moment of the report).
        settings: The settings (concurrency per endpoint, default GPU price).
        catalog: The model catalog (the all-serverless baseline's prices).
        tenant_view: The rows are one tenant's (``intervals`` then empty): the
            shared pool's bill is the operator's, and the tenant's spend counts
            its GPU requests' allocated share instead.

    Returns:
        ``hours`` (the range), ``actual_usd``, ``serverless_usd``,
        ``gpu_bill_usd``, ``gpu_allocated_usd``, ``pool`` (per-endpoint bills,
        instance-hours paid and busy, idle share), ``service_hours``,
        ``all_gpu``, ``all_serverless`` and ``how`` (one sentence per figure).
    """
    hours = max((end - start).total_seconds() / 3600, 0.0)
    hourly = settings.gpu_hourly_cost_usd
    concurrency = settings.gpu_concurrency_per_endpoint
    # served: answered, or cut short by the caller (its tokens so far were billed)
    answered = [r for r in rows if r.status in ROW_SERVED]
    serverless_usd = sum(r.cost_usd for r in answered if r.backend == "serverless")
    gpu_rows = [r for r in answered if r.backend == "gpu"]
    bills = endpoint_bills(intervals)
    gpu_bill = sum(b["usd"] for b in bills)
    paid_hours = sum(b["hours"] for b in bills)
    busy_hours = sum(r.gpu_seconds for r in gpu_rows) / concurrency / 3600
    idle_share = max(0.0, 1.0 - busy_hours / paid_hours) if paid_hours > 0 else None
    busy: dict[datetime, float] = defaultdict(float)
    for r in answered:
        hour = as_utc(r.created_at).replace(minute=0, second=0, microsecond=0)
        busy[hour] += r.latency_ms / 1000
    peak_gpu_seconds = max(busy.values(), default=0.0)
    instances = max(1, math.ceil(peak_gpu_seconds / (3600 * concurrency))) if answered else 0
    stamps = [as_utc(r.created_at) for r in rows]
    spans: list[Span] = [(i.start, i.end) for i in intervals]
    if stamps:
        spans.append((min(stamps), max(stamps)))
    service_hours = _hours(merge_spans(spans))
    all_gpu = instances * hourly * service_hours
    default = catalog.by_id[catalog.default_serverless_model]
    all_serverless = sum(default.cost_usd(r.prompt_tokens, r.completion_tokens) for r in answered)
    allocated = sum(r.cost_usd for r in gpu_rows)
    actual = serverless_usd + (allocated if tenant_view else gpu_bill)
    idle_text = "no paid pool hours" if idle_share is None else f"{idle_share:.1%}"
    how = {
        "actual": f"serverless tokens at the serving providers' prices ({usd(serverless_usd)}) "
        f"plus the GPU pool's bill ({usd(gpu_bill)}) = {usd(actual)}.",
        "gpu_bill": f"{len(bills)} endpoint(s) x the hours the ledger recorded each in the pool "
        f"(heartbeats of the router, overlaps from several workers merged, clipped to the "
        f"range: {paid_hours:.2f} instance-hours) x each endpoint's hourly price = "
        f"{usd(gpu_bill)}; hours when the router was not running are not charged.",
        "idle_share": f"1 - busy / paid instance-hours = 1 - {busy_hours:.4f} / "
        f"{paid_hours:.2f} = {idle_text}; busy is the GPU requests' seconds on an endpoint "
        f"(sent to last token) divided by the {concurrency} requests an instance serves at "
        "once.",
        "all_gpu": f"{instances} instance(s) sized for the busiest hour ({peak_gpu_seconds:.1f} "
        f"request-seconds over {concurrency} at once per instance) x {usd(hourly)}/h x "
        f"{service_hours:.2f} h the router was in service in the range (its pool's recorded "
        f"hours, or from the first to the last request) = {usd(all_gpu)}.",
        "all_serverless": f"every served request's tokens at {default.id}'s prices = "
        f"{usd(all_serverless)}.",
    }
    if tenant_view:
        how["actual"] = (
            f"serverless tokens at the serving providers' prices ({usd(serverless_usd)}) plus "
            f"the share of the GPU pool allocated to these requests ({usd(allocated)}: "
            f"their GPU-seconds x the hourly price / 3600 / {concurrency}) = {usd(actual)}."
        )
        how["gpu_bill"] = (
            "not shown to a tenant: the GPU pool is shared and its bill is the operator's; "
            "this report counts the share allocated to these requests."
        )
    return {
        "hours": hours,
        "actual_usd": actual,
        "serverless_usd": serverless_usd,
        "gpu_bill_usd": gpu_bill,
        "gpu_allocated_usd": allocated,
        "pool": {
            "endpoints": bills,
            "paid_instance_hours": paid_hours,
            "busy_instance_hours": busy_hours,
            "idle_share": idle_share,
        },
        "service_hours": service_hours,
        "all_gpu": {
            "instances": instances,
            "peak_hour_gpu_seconds": peak_gpu_seconds,
            "hours": service_hours,
            "usd": all_gpu,
            "saved_usd": all_gpu - actual,
        },
        "all_serverless": {
            "model": default.id,
            "usd": all_serverless,
            "saved_usd": all_serverless - actual,
        },
        "how": how,
    }


def accounting_lines(figures: dict[str, Any]) -> list[str]:
    """Render :func:`cost_accounting` for people: each figure, then how it was computed."""
    pool, how = figures["pool"], figures["how"]
    idle = pool["idle_share"]
    gpu, serverless = figures["all_gpu"], figures["all_serverless"]
    return [
        f"- Spend: {usd(figures['actual_usd'])}. {how['actual']}",
        f"- GPU pool bill: {usd(figures['gpu_bill_usd'])} for {pool['paid_instance_hours']:.2f} "
        f"instance-hours. {how['gpu_bill']}",
        f"- Pool idle share: {'-' if idle is None else f'{idle:.1%}'}. {how['idle_share']}",
        f"- Saved against all on GPUs: {usd(gpu['saved_usd'])} (that setup: {usd(gpu['usd'])}). "
        f"{how['all_gpu']}",
        f"- Saved against all serverless: {usd(serverless['saved_usd'])} (that setup: "
        f"{usd(serverless['usd'])}). {how['all_serverless']}",
    ]
