"""The ledger: the product's record of money, in SQLAlchemy 2.

Tables: one ``usage_records`` row per request; ``budget_counters`` with the
committed and reserved spend of every budget window; ``reservations`` held by
requests in flight; ``budgets`` set through the API; ``alerts`` raised;
``routing_overrides``; ``gpu_pool_intervals``, the hours each GPU endpoint was
in the pool; and ``capacity_plans``, the planner's runs on the ledger's own
trace. The schema is created and upgraded by the Alembic migrations in
``state/migrations`` (``hybrid-router migrate``), applied automatically on
first use unless ``AUTO_MIGRATE=false``.

Reads go through the async engine. Writes are functions of one synchronous
connection, run as one transaction by :meth:`Ledger.write`: on PostgreSQL in
the async engine's connection (``run_sync``), on a SQLite file in one writer
thread of the process with the standard library's driver. SQLite has a single
writer anyway, and a whole transaction in one thread hop costs about a third
of the same statements sent one by one through aiosqlite (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    false,
    insert,
    select,
)
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry

from state.errors import LedgerUnavailableError

if TYPE_CHECKING:
    from state.settings import Settings

T = TypeVar("T")
logger = logging.getLogger(__name__)

NAME_MAX_CHARS = 128
"""Longest user or team name: the width of the columns that hold one."""


ROW_OK = "ok"
"""The ledger status of an answered request."""
ROW_REFUSED = "refused"
"""The ledger status of a request a budget refused (a 402)."""
ROW_CANCELLED = "cancelled"
"""The ledger status of a request whose caller left mid-answer (its tokens so far are billed)."""
ROW_SERVED = (ROW_OK, ROW_CANCELLED)
"""The statuses of requests a backend worked on and billed: spend and GPU time count them."""


class Base(DeclarativeBase):
    """Declarative base of the ledger's tables."""


class UsageRecord(Base):
    """One request: who asked, where it went, what it cost, how it ended."""

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    user: Mapped[str | None] = mapped_column(String(NAME_MAX_CHARS), index=True)
    team: Mapped[str | None] = mapped_column(String(NAME_MAX_CHARS))
    backend: Mapped[str | None] = mapped_column(String(16))
    provider: Mapped[str | None] = mapped_column(String(64))  # the serverless provider
    model: Mapped[str | None] = mapped_column(String(128))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str] = mapped_column(String(16))  # ok | failed | refused | cancelled
    routing_reason: Mapped[str] = mapped_column(Text, default="")
    complexity_score: Mapped[float | None] = mapped_column(Float)
    complexity_level: Mapped[str | None] = mapped_column(String(8))
    fallbacks: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # a budget refused this request's hold: it was refused (402), or went elsewhere
    budget_refused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class BudgetCounter(Base):
    """Committed and reserved serverless spend of one budget in one calendar window."""

    __tablename__ = "budget_counters"
    __table_args__ = (UniqueConstraint("scope", "scope_key", "period", "window_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(8))  # global | user | team
    scope_key: Mapped[str] = mapped_column(String(NAME_MAX_CHARS))  # "" for global
    period: Mapped[str] = mapped_column(String(8))  # day | month
    window_key: Mapped[str] = mapped_column(String(10))  # 2026-11-23 | 2026-11
    committed_usd: Mapped[float] = mapped_column(Float, default=0.0)
    reserved_usd: Mapped[float] = mapped_column(Float, default=0.0)


class Reservation(Base):
    """The worst-case cost a request in flight holds against its budgets."""

    __tablename__ = "reservations"
    __table_args__ = (Index("ix_reservations_status_expires", "status", "expires_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    amount_usd: Mapped[float] = mapped_column(Float)
    counter_ids: Mapped[list[Any]] = mapped_column(JSON)  # [[counter id, limit], ...]
    status: Mapped[str] = mapped_column(String(10))  # active | settled | released | expired
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    settled_usd: Mapped[float | None] = mapped_column(Float)


class BudgetLimit(Base):
    """A per-user or per-team budget set through the API."""

    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("scope", "scope_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(8))
    scope_key: Mapped[str] = mapped_column(String(NAME_MAX_CHARS))
    daily_usd: Mapped[float | None] = mapped_column(Float)
    monthly_usd: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Alert(Base):
    """A budget threshold crossed, once per scope, window and threshold."""

    __tablename__ = "alerts"
    __table_args__ = (UniqueConstraint("scope", "scope_key", "period", "window_key", "threshold"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    scope: Mapped[str] = mapped_column(String(8))
    scope_key: Mapped[str] = mapped_column(String(NAME_MAX_CHARS))
    period: Mapped[str] = mapped_column(String(8))
    window_key: Mapped[str] = mapped_column(String(10))
    threshold: Mapped[float] = mapped_column(Float)
    spent_usd: Mapped[float] = mapped_column(Float)
    limit_usd: Mapped[float] = mapped_column(Float)
    delivered: Mapped[str] = mapped_column(String(12), default="pending")


class CachedResponse(Base):
    """An answer the response cache serves again until ``expires_at`` (Unix seconds)."""

    __tablename__ = "response_cache"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    expires_at: Mapped[float] = mapped_column(Float)


class RoutingOverride(Base):
    """A standing routing instruction, e.g. "the next 10 requests go to the GPU pool".

    ``remaining`` counts down for a count-limited override (None: until
    cleared); ``condition`` limits it to requests of one complexity level
    (None: every request); ``cleared_at`` ends it.
    """

    __tablename__ = "routing_overrides"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    backend: Mapped[str] = mapped_column(String(16))
    remaining: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    user: Mapped[str | None] = mapped_column(String(NAME_MAX_CHARS))
    note: Mapped[str] = mapped_column(Text, default="")
    condition: Mapped[str | None] = mapped_column(String(8))
    cleared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PoolInterval(Base):
    """A stretch of time one router process had one GPU endpoint in its pool.

    Written by :mod:`state.pool_membership`: ``last_seen_at`` moves with each
    heartbeat, ``ended_at`` is set when the process stops. Reports charge an
    endpoint's hours from these rows (overlaps from several processes merged).
    """

    __tablename__ = "gpu_pool_intervals"
    __table_args__ = (Index("ix_gpu_pool_intervals_last_seen_at", "last_seen_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint: Mapped[str] = mapped_column(String(255))  # the URL without credentials
    instance_type: Mapped[str] = mapped_column(String(64))
    hourly_usd: Mapped[float] = mapped_column(Float)
    process: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CapacityPlan(Base):
    """A capacity plan (``hybrid-router simulate --from-ledger``) kept for the dashboard."""

    __tablename__ = "capacity_plans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(Text)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)


_USAGE_COLUMNS = [c for c in UsageRecord.__table__.columns if c.key != "id"]
# Built once per process; SQLAlchemy caches the compiled form.
INSERT_USAGE = insert(UsageRecord)


def usage_values(row: UsageRecord) -> dict[str, Any]:
    """Return a usage row's column values for an insert (a value left unset takes its default)."""
    values = {c.key: getattr(row, c.key) for c in _USAGE_COLUMNS}
    for flag in ("cache_hit", "budget_refused"):
        if values.get(flag) is None:
            values[flag] = False
    return values


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def build_engine(settings: Settings) -> AsyncEngine:
    """Build the async engine of the ledger (create the SQLite folder if needed)."""
    url = settings.async_database_url
    sqlite_file = settings.sqlite_path()
    if sqlite_file is not None:
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # On a file, reads only: writes go through the writer thread
        # (Ledger.write). One connection keeps a burst of reads from opening many.
        kwargs.update(pool_size=1, max_overflow=0, pool_timeout=60)
    if url.startswith("postgresql"):
        # no pre-ping: it costs a round trip per checkout; recycling covers idle drops
        kwargs.update(pool_size=10, max_overflow=20, pool_recycle=1800)
        if settings.database_schema:
            kwargs["connect_args"] = {"server_settings": {"search_path": settings.database_schema}}
    engine = create_async_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def build_sqlite_writer(engine: AsyncEngine) -> Engine | None:
    """Return a synchronous engine on the same SQLite file as ``engine`` (None otherwise)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    writer = create_engine(url.set(drivername="sqlite"), pool_size=1, max_overflow=0)
    event.listen(writer, "connect", _sqlite_pragmas)
    return writer


def ledger_unavailable(exc: BaseException) -> LedgerUnavailableError | None:
    """Return the typed error for a lost or refused database connection, else None.

    SQLAlchemy marks an error that broke its connection (``connection_invalidated``);
    a refused or reset connection comes as the socket's ``ConnectionError``.
    Anything else (a missing table, a constraint, a bug) is not this.
    """
    if isinstance(exc, LedgerUnavailableError):
        return exc
    lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
    if lost or isinstance(exc, ConnectionError):
        return LedgerUnavailableError()
    return None


def _migrate(settings: Settings) -> None:
    from state.migrate import upgrade_blocking

    upgrade_blocking(settings)


class Ledger:
    """The usage ledger: its engine, its schema, and the request rows."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        """Wrap an engine; the schema is migrated on first use when ``AUTO_MIGRATE``."""
        self.engine = engine
        self.settings = settings
        self._ready = False
        self._lock = asyncio.Lock()
        self._writer = build_sqlite_writer(engine)
        self._writer_thread = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
            if self._writer is not None
            else None
        )

    @property
    def dialect(self) -> str:
        """Return the database's dialect name (sqlite or postgresql)."""
        return self.engine.dialect.name

    async def ensure_schema(self) -> None:
        """Bring the schema to the newest migration, once per process."""
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                if self.settings.auto_migrate:
                    # Alembic is imported and run off the event loop: it reads files.
                    await asyncio.to_thread(_migrate, self.settings)
                self._ready = True

    async def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one write transaction (committed, or rolled back if it raises).

        ``work`` gets a synchronous connection and must not touch the event loop.
        On SQLite it runs in the writer thread and, once started, to its end even
        if the caller is cancelled (a reservation so orphaned expires after
        ``RESERVATION_TTL_S``).

        On PostgreSQL a transaction whose connection was lost (the server
        restarted, the connection was terminated) runs once more on a new
        connection: the lost one was rolled back by the server, and if it was
        lost during its commit, the unique request and reservation ids refuse a
        second copy. A second loss raises :class:`LedgerUnavailableError`.
        """
        await self.ensure_schema()
        if self._writer_thread is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._writer_thread, self._write_now, work)
        for attempt in (1, 2):
            try:
                async with self.engine.begin() as conn:
                    return await conn.run_sync(work)
            except DBAPIError as exc:
                lost = ledger_unavailable(exc)
                if lost is None:
                    raise
                if attempt == 2:
                    raise lost from exc
                # the type only: a driver's message may quote the connection string
                logger.warning(
                    "the ledger's database connection was lost (%s); running the write "
                    "again on a new connection",
                    type(exc.orig).__name__,
                )
        raise AssertionError("unreachable")

    def _write_now(self, work: Callable[[Connection], T]) -> T:
        assert self._writer is not None
        with self._writer.begin() as conn:
            return work(conn)

    async def record(self, row: UsageRecord) -> None:
        """Write one request's row."""
        values = usage_values(row)

        def insert_row(conn: Connection) -> None:
            conn.execute(INSERT_USAGE, values)

        await self.write(insert_row)

    async def rows(self, limit: int = 1000) -> list[UsageRecord]:
        """Return the latest rows, newest first."""
        await self.ensure_schema()
        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(UsageRecord.__table__).order_by(UsageRecord.id.desc()).limit(limit)
            )
            return [UsageRecord(**dict(r._mapping)) for r in result]

    async def aclose(self) -> None:
        """Finish the writes in flight and dispose of the engines' connections."""
        if self._writer_thread is not None:
            await asyncio.to_thread(self._writer_thread.shutdown, wait=True)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.dispose)
        await self.engine.dispose()
