"""Apply the ledger's Alembic migrations (``hybrid-router migrate``, or on first use).

Alembic is synchronous and reads its scripts from disk, so an upgrade runs
with a synchronous engine of its own (the standard library's sqlite3, or
psycopg for PostgreSQL), in a worker thread when called from async code. On
PostgreSQL an advisory lock keeps processes starting at once from migrating
together.
"""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, text

from state.settings import Settings

_LOCK_ID = 7_311_204_551  # arbitrary and constant: the ledger's migration lock


def alembic_config(connection: Connection | None = None) -> Config:
    """Return an Alembic config for the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", "state:migrations")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def sync_database_url(settings: Settings) -> str:
    """Return the ledger URL with a synchronous driver."""
    url = settings.async_database_url
    return url.replace("sqlite+aiosqlite://", "sqlite://", 1).replace(
        "postgresql+asyncpg://", "postgresql+psycopg://", 1
    )


def upgrade_blocking(settings: Settings) -> None:
    """Upgrade the ledger database of ``settings`` to the newest migration (blocking)."""
    sqlite_file = settings.sqlite_path()
    if sqlite_file is not None:
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    connect_args: dict[str, Any] = {}
    if settings.database_schema and settings.async_database_url.startswith("postgresql"):
        connect_args["options"] = f"-csearch_path={settings.database_schema}"
    engine = create_engine(sync_database_url(settings), connect_args=connect_args)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
            command.upgrade(alembic_config(connection), "head")
    finally:
        engine.dispose()
