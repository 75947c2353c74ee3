"""Where chat threads are kept for Python callers: SQLite by default, PostgreSQL at scale.

The LangGraph server keeps threads with its own checkpointer; a Python caller
compiles the chat graph with the saver this opens, on the same database as
the ledger (``DATABASE_URL``): the SQLite file itself, or the PostgreSQL
database (tables created on first use).

    async with open_checkpointer(get_settings()) as saver:
        chat = graphs.chat.builder.compile(checkpointer=saver)
        await chat.ainvoke({"messages": [...]}, {"configurable": {"thread_id": "t1"}})
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from langgraph.checkpoint.base import BaseCheckpointSaver

from state.settings import Settings


@contextlib.asynccontextmanager
async def open_checkpointer(settings: Settings) -> AsyncIterator[BaseCheckpointSaver[str]]:
    """Open the thread store for ``settings.database_url`` and close it after."""
    url = settings.database_url
    if url.startswith(("postgresql", "postgres:")):
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        conninfo = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        if settings.database_schema:
            conninfo += ("&" if "?" in conninfo else "?") + (
                f"options=-csearch_path%3D{settings.database_schema}"
            )
        async with AsyncPostgresSaver.from_conn_string(conninfo) as saver:
            await saver.setup()
            yield saver
        return
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = settings.sqlite_path()
    target = ":memory:" if path is None else str(path)
    if path is not None:
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    async with AsyncSqliteSaver.from_conn_string(target) as saver:
        yield saver
