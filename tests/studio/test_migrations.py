"""Migrations on a real PostgreSQL: an empty database upgrades to the newest revision, and a
database at the previous revision, holding data, upgrades without losing it; either way the
tables are exactly what the ORM declares."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from kubetune_studio.store.database import current_revision, make_engine, revisions, upgrade
from kubetune_studio.store.schema import Base
from tests.support.postgres import PostgresServer


def schema_differences(engine) -> list:
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)


def test_an_empty_database_upgrades_to_the_newest_revision(postgres: PostgresServer) -> None:
    name = postgres.create_database()
    engine = make_engine(postgres.url(name))
    try:
        assert current_revision(engine) is None
        upgrade(engine)
        assert current_revision(engine) == revisions()[-1]
        assert schema_differences(engine) == []
    finally:
        engine.dispose()
        postgres.drop_database(name)


def test_the_previous_revision_upgrades_and_keeps_its_data(postgres: PostgresServer) -> None:
    previous, newest = revisions()[-2], revisions()[-1]
    name = postgres.create_database()
    engine = make_engine(postgres.url(name))
    try:
        upgrade(engine, previous)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO labelers (email, name, password_hash, is_admin, kind, active, "
                    "label_count, created_at) VALUES ('kept@example.com', 'Kept', 'x', false, "
                    "'human', true, 7, now())"
                )
            )
        upgrade(engine)
        assert current_revision(engine) == newest
        assert schema_differences(engine) == []
        with engine.connect() as connection:
            kept = connection.execute(text("SELECT email, label_count FROM labelers")).all()
        assert [tuple(row) for row in kept] == [("kept@example.com", 7)]
    finally:
        engine.dispose()
        postgres.drop_database(name)
