"""The ledger's requests as a workload trace the capacity planner reads, and its saved plans.

:func:`ledger_trace` turns the ledger's answered requests of a range into
trace rows in the format :func:`planner.workloads.load_trace` reads
(``timestamp``, ``prompt_tokens``, ``completion_tokens``, ``complexity_level``),
plus two columns the planner ignores and people find useful: the backend and
model that answered (``served_backend``, ``served_model``). The model the
router chose is not written as ``model``: the planner would pin the request to
it, and the point of a what-if is to let each policy choose. Left out:
message content, users, teams, keys and errors; failed requests (they used no
tokens, so replaying them would replay nothing) and answers served from the
response cache (they reached no backend). The ledger keeps no per-request
latency target, so there is no such column; the planner's
``--latency-target-ms`` applies to every request.

:func:`save_plan` and :func:`latest_plan` keep the last capacity plans of the
ledger's own trace (``hybrid-router simulate --from-ledger``) in
``capacity_plans``, for the dashboard's chart.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any, Literal

from sqlalchemy import false, insert, select

from state.ledger import CapacityPlan, Ledger, UsageRecord
from state.reporting.windows import as_utc

TraceFormat = Literal["jsonl", "csv"]
TRACE_COLUMNS = (
    "timestamp",
    "prompt_tokens",
    "completion_tokens",
    "complexity_level",
    "served_backend",
    "served_model",
)


async def ledger_trace(
    ledger: Ledger, start: datetime | None = None, end: datetime | None = None
) -> list[dict[str, Any]]:
    """Return the answered requests of ``[start, end)`` as trace rows, oldest first.

    Args:
        ledger: The ledger.
        start: The first moment to export (None: from the first request).
        end: The moment to stop before (None: to the last request).

    Returns:
        One dict per request with the keys of :data:`TRACE_COLUMNS`;
        ``timestamp`` is ISO 8601 in UTC.
    """
    query = (
        select(
            UsageRecord.created_at,
            UsageRecord.prompt_tokens,
            UsageRecord.completion_tokens,
            UsageRecord.complexity_level,
            UsageRecord.backend,
            UsageRecord.model,
        )
        .where(UsageRecord.status == "ok", UsageRecord.cache_hit == false())
        .order_by(UsageRecord.created_at, UsageRecord.id)
    )
    if start is not None:
        query = query.where(UsageRecord.created_at >= start.astimezone(UTC))
    if end is not None:
        query = query.where(UsageRecord.created_at < end.astimezone(UTC))
    await ledger.ensure_schema()
    async with ledger.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        {
            "timestamp": as_utc(r.created_at).isoformat(),
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "complexity_level": r.complexity_level or "",
            "served_backend": r.backend or "",
            "served_model": r.model or "",
        }
        for r in rows
    ]


def write_trace(rows: Iterable[dict[str, Any]], handle: IO[str], fmt: TraceFormat) -> int:
    """Write trace rows as JSONL or CSV (with a header line); return how many."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(handle, fieldnames=TRACE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            count += 1
        return count
    if fmt != "jsonl":
        raise ValueError(f"trace format {fmt!r}: use jsonl or csv")
    for row in rows:
        handle.write(json.dumps(row, separators=(",", ":")) + "\n")
        count += 1
    return count


async def save_plan(ledger: Ledger, source: str, plan: dict[str, Any], now: datetime) -> None:
    """Keep a capacity plan of the ledger's trace (the chart data of ``planner.report``)."""
    values = {"created_at": now, "source": source, "plan": plan}
    await ledger.write(lambda conn: conn.execute(insert(CapacityPlan), values))


async def latest_plan(ledger: Ledger) -> dict[str, Any] | None:
    """Return the newest saved capacity plan, ``{created_at, source, plan}``, or None."""
    await ledger.ensure_schema()
    query = (
        select(CapacityPlan.created_at, CapacityPlan.source, CapacityPlan.plan)
        .order_by(CapacityPlan.created_at.desc(), CapacityPlan.id.desc())
        .limit(1)
    )
    async with ledger.engine.connect() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return None
    return {"created_at": as_utc(row.created_at).isoformat(), "source": row.source, **row.plan}
