"""The GPU pool's membership in the ledger: the hours each endpoint was part of the pool.

Dedicated GPUs are paid by the hour whether they serve or not, but only for
the hours they are rented. The router cannot see the provider's invoice, so
it records what it does know: while a process has an endpoint configured in
its pool, :class:`PoolHeartbeat` keeps an interval of ``gpu_pool_intervals``
open for it (endpoint URL without credentials, instance type, hourly price,
``started_at``, ``last_seen_at``), moving ``last_seen_at`` every
``GPU_HEARTBEAT_S`` seconds in a background task, off the request path. A beat
that comes more than :data:`GAP_BEATS` heartbeats after the last one (the
process was suspended, the database unreachable) closes the old interval at
its last beat and opens a new one, so the gap is not charged. Stopping the
process closes its intervals.

This module owns an interval's life; nothing else writes the table. Each
process writes its own rows: several workers or replicas serving the same pool
each record the same endpoint, and the reports
(:mod:`state.reporting.accounting`) merge overlapping intervals per endpoint,
so an hour is charged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import Connection, Update, and_, insert, select, update

from state.ledger import Ledger, PoolInterval
from state.reporting.windows import as_utc
from state.settings import Settings

logger = logging.getLogger(__name__)

GAP_BEATS = 3.0
"""A beat later than this many heartbeats after the last one starts a new interval."""


@dataclass(frozen=True, slots=True)
class Member:
    """One GPU endpoint of the pool, as the ledger records it."""

    endpoint: str
    """The endpoint's URL without credentials, query or fragment."""
    instance_type: str
    hourly_usd: float


def shown_endpoint(url: str) -> str:
    """Return ``url`` without credentials, query or fragment (what the ledger stores)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}".rstrip("/")


def members_of(settings: Settings) -> list[Member]:
    """Return the pool's endpoints with their instance type and price from the settings."""
    found: list[Member] = []
    for url in settings.gpu_endpoints:
        instance_type, hourly = settings.endpoint_price(url)
        found.append(Member(shown_endpoint(url), instance_type, hourly))
    return found


def gap_tolerance(settings: Settings) -> timedelta:
    """Return the longest time between two beats of one interval."""
    return timedelta(seconds=settings.gpu_heartbeat_s * GAP_BEATS)


def _of(interval_id: int) -> Update:
    return update(PoolInterval).where(PoolInterval.id == interval_id)


def beat(
    conn: Connection,
    process: str,
    members: Sequence[Member],
    now: datetime,
    tolerance: timedelta,
) -> None:
    """Extend this process's open interval of each member to ``now``, or open a new one.

    An open interval whose last beat is older than ``tolerance`` is closed at
    that beat and a new one starts at ``now``: the gap is not charged.
    """
    rows = conn.execute(
        select(PoolInterval.id, PoolInterval.endpoint, PoolInterval.last_seen_at).where(
            and_(PoolInterval.process == process, PoolInterval.ended_at.is_(None))
        )
    ).all()
    open_rows = {r.endpoint: r for r in rows}
    for member in members:
        row = open_rows.pop(member.endpoint, None)
        if row is not None and as_utc(now) - as_utc(row.last_seen_at) <= tolerance:
            conn.execute(_of(row.id).values(last_seen_at=now))
            continue
        if row is not None:
            conn.execute(_of(row.id).values(ended_at=row.last_seen_at))
        record_interval(conn, member, now, None, process)
    for row in open_rows.values():  # an endpoint no longer configured: it left at its last beat
        conn.execute(_of(row.id).values(ended_at=row.last_seen_at))


def close(conn: Connection, process: str, now: datetime) -> None:
    """Close this process's open intervals at ``now`` (the process is stopping)."""
    conn.execute(
        update(PoolInterval)
        .where(and_(PoolInterval.process == process, PoolInterval.ended_at.is_(None)))
        .values(last_seen_at=now, ended_at=now)
    )


def record_interval(
    conn: Connection,
    member: Member,
    started_at: datetime,
    ended_at: datetime | None,
    process: str,
) -> None:
    """Write one interval: open (``ended_at`` None: last seen at its start) or closed."""
    conn.execute(
        insert(PoolInterval).values(
            endpoint=member.endpoint,
            instance_type=member.instance_type,
            hourly_usd=member.hourly_usd,
            process=process,
            started_at=started_at,
            last_seen_at=ended_at or started_at,
            ended_at=ended_at,
        )
    )


class PoolHeartbeat:
    """The background task that records this process's pool membership in the ledger."""

    def __init__(
        self,
        ledger: Ledger,
        members: Sequence[Member],
        clock: Callable[[], datetime],
        interval_s: float,
    ) -> None:
        """Bind the ledger, the pool's members, the clock and the beat interval."""
        self.ledger = ledger
        self.members = list(members)
        self.clock = clock
        self.interval_s = interval_s
        self.tolerance = timedelta(seconds=interval_s * GAP_BEATS)
        self.process = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Write the first beat now, then keep beating in the background (empty pool: nothing).

        The first beat is awaited so the schema is migrated before anything else
        opens the database (a migration racing another connection's setup on a
        SQLite file fails it with "database is locked"), and so the pool's
        interval exists before the first request.
        """
        if not self.members or self._task is not None:
            return
        await self._beat_logged()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(self._stop), name="gpu-pool-heartbeat")

    async def beat_now(self) -> None:
        """Write one beat."""
        members, process, now, tolerance = self.members, self.process, self.clock(), self.tolerance
        await self.ledger.write(lambda conn: beat(conn, process, members, now, tolerance))

    async def _beat_logged(self) -> None:
        try:
            await self.beat_now()
        except Exception as exc:  # the next beat tries again; a gap is not charged
            logger.warning("gpu pool heartbeat failed (%s)", type(exc).__name__)

    async def _run(self, stop: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
            if stop.is_set():
                return
            await self._beat_logged()

    async def aclose(self) -> None:
        """Stop beating and close this process's intervals."""
        task, self._task = self._task, None
        if task is None:
            return
        # A beat in flight (the first one may be migrating the schema) finishes first:
        # cancelling it would leave its thread writing after the ledger is closed.
        self._stop.set()
        await task
        process, now = self.process, self.clock()
        try:
            await self.ledger.write(lambda conn: close(conn, process, now))
        except Exception as exc:
            logger.warning("gpu pool heartbeat: could not close (%s)", type(exc).__name__)
