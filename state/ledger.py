"""The ledger: one row per request, the record of tokens, cost and latency.

SQLAlchemy 2 with async drivers (aiosqlite by default, asyncpg for
PostgreSQL). The engine is built once per process and event loop; the schema
is created on first use of the embedded default.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    DateTime,
    Float,
    Integer,
    String,
    Text,
    bindparam,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry

from state.settings import Settings


class Base(DeclarativeBase):
    """Declarative base of the ledger's tables."""


class UsageRecord(Base):
    """One request: who asked, where it went, what it cost, how it ended."""

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    user: Mapped[str | None] = mapped_column(String(128), index=True)
    backend: Mapped[str | None] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(128))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str] = mapped_column(String(16))
    routing_reason: Mapped[str] = mapped_column(Text, default="")
    complexity_score: Mapped[float | None] = mapped_column(Float)
    complexity_level: Mapped[str | None] = mapped_column(String(8))
    fallbacks: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)


_COLUMNS = [c for c in UsageRecord.__table__.columns if c.key != "id"]

# Statements are built once per process; SQLAlchemy caches their compiled form.
_INSERT_USAGE = insert(UsageRecord)
_SERVERLESS_SPEND = select(
    func.coalesce(
        func.sum(UsageRecord.cost_usd).filter(UsageRecord.created_at >= bindparam("day_start")),
        0.0,
    ),
    func.coalesce(func.sum(UsageRecord.cost_usd), 0.0),
).where(
    UsageRecord.backend == "serverless",
    UsageRecord.created_at >= bindparam("month_start"),
)


@dataclass(slots=True)
class Spend:
    """Serverless spend so far in the current day and month, USD."""

    today_usd: float
    month_usd: float


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def build_engine(settings: Settings) -> AsyncEngine:
    """Build the async engine of the ledger (create the SQLite folder if needed)."""
    url = settings.async_database_url
    sqlite_file = settings.sqlite_path()
    if sqlite_file is not None:
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


class Ledger:
    """Reads and writes of the usage ledger."""

    def __init__(self, engine: AsyncEngine) -> None:
        """Wrap an engine; the schema is ensured on first use."""
        self.engine = engine
        self._ready = False
        self._lock = asyncio.Lock()

    async def ensure_schema(self) -> None:
        """Create the tables if they do not exist (once per process)."""
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                async with self.engine.begin() as conn:
                    await conn.run_sync(Base.metadata.create_all)
                self._ready = True

    async def record(self, row: UsageRecord) -> None:
        """Write one request's row."""
        await self.ensure_schema()
        values = {c.key: getattr(row, c.key) for c in _COLUMNS}
        async with self.engine.begin() as conn:
            await conn.execute(_INSERT_USAGE, values)

    async def serverless_spend(self, now: datetime) -> Spend:
        """Return the serverless spend of the calendar day and month (UTC) of ``now``."""
        await self.ensure_schema()
        now = now.astimezone(UTC)
        day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        month_start = day_start.replace(day=1)
        params = {"day_start": day_start, "month_start": month_start}
        async with self.engine.connect() as conn:
            today, month = (await conn.execute(_SERVERLESS_SPEND, params)).one()
        return Spend(today_usd=float(today), month_usd=float(month))

    async def rows(self, limit: int = 100) -> list[UsageRecord]:
        """Return the latest rows, newest first."""
        await self.ensure_schema()
        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(UsageRecord).order_by(UsageRecord.id.desc()).limit(limit)
            )
            return [UsageRecord(**dict(r._mapping)) for r in result]

    async def aclose(self) -> None:
        """Dispose of the engine's connections."""
        await self.engine.dispose()
