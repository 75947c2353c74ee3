"""Alembic environment: migrations run on a connection handed over by ``state.migrate``."""

from __future__ import annotations

from alembic import context

from state.ledger import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the ledger's migrations with `hybrid-router migrate`")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
