"""Alembic environment: the engine comes from the caller (kubetune_studio.store.database)."""

from __future__ import annotations

from alembic import context

from kubetune_studio.store.schema import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things: Alembic's batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    context.run_migrations()
