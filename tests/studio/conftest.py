"""Fixtures of the studio tier: one real PostgreSQL per session (a fresh, migrated database per
test, copied from a template), the studio served by uvicorn, and a headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from kubetune_studio.config import Settings
from kubetune_studio.store.database import make_engine, session_factory, transaction, upgrade
from tests.studio.studio_support import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.support.asgi import serving
from tests.support.browser import BrowserPaths, browser_paths, headless_chromium
from tests.support.postgres import PostgresServer

TEMPLATE = "studio_template"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/studio/" in str(item.fspath):
            item.add_marker(pytest.mark.studio)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def migrated_template(postgres: PostgresServer) -> str:
    """A database at the newest revision, copied for each test (faster than migrating)."""
    postgres.execute(f'CREATE DATABASE "{TEMPLATE}"')
    engine = make_engine(postgres.url(TEMPLATE))
    upgrade(engine)
    engine.dispose()
    return TEMPLATE


@dataclass
class StudioDatabase:
    url: str
    engine: Engine
    sessions: sessionmaker[Session]


@pytest.fixture
def studio_db(postgres: PostgresServer, migrated_template: str) -> Iterator[StudioDatabase]:
    name = postgres.create_database(template=migrated_template)
    engine = make_engine(postgres.url(name))
    try:
        yield StudioDatabase(postgres.url(name), engine, session_factory(engine))
    finally:
        engine.dispose()
        postgres.drop_database(name)


@pytest.fixture
def studio_settings(studio_db: StudioDatabase, tmp_path) -> Settings:
    return Settings(
        database_url=studio_db.url,
        snapshot_root=str(tmp_path / "snapshots"),
        rate_limit="100000/minute",
        login_rate_limit="1000/minute",
    )


@dataclass
class RunningStudio:
    url: str
    db: StudioDatabase
    settings: Settings


def start_studio(settings: Settings, db: StudioDatabase):
    from kubetune_studio import campaigns
    from kubetune_studio.web.app import create_app

    with transaction(db.sessions) as session:
        campaigns.ensure_admin(session, ADMIN_EMAIL, ADMIN_PASSWORD)
    return serving(create_app(settings, db.sessions))


@pytest.fixture
def studio(studio_settings: Settings, studio_db: StudioDatabase) -> Iterator[RunningStudio]:
    with start_studio(studio_settings, studio_db) as url:
        yield RunningStudio(url, studio_db, studio_settings)


@pytest.fixture(scope="session")
def chromium_paths() -> BrowserPaths:
    return browser_paths()


@pytest.fixture
def browser(chromium_paths: BrowserPaths):
    with headless_chromium(chromium_paths) as driver:
        yield driver


@pytest.fixture
def tier_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Builtin models are built here, not under $HOME; nothing is fetched from the Hub."""
    cache = tmp_path_factory.mktemp("kubetune-cache")
    monkeypatch.setenv("KUBETUNE_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache
