"""Fixtures every suite shares: a fresh ledger on SQLite and, when PRIVACY_LEDGER_TEST_PG
names a server, on PostgreSQL too (a schema of its own per test)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from daemon.ledger import Ledger

PG_URL = os.environ.get("PRIVACY_LEDGER_TEST_PG")
PG_SKIP_REASON = ("PostgreSQL ledger tests need PRIVACY_LEDGER_TEST_PG, e.g. "
                  "postgresql+psycopg://postgres@127.0.0.1:5432/test (.ci/run sets it)")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a new, empty schema, dropped afterwards."""
    if not PG_URL:
        pytest.skip(PG_SKIP_REASON)
    schema = f"pl_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - a missing server is a skip, not a failure
        admin.dispose()
        pytest.skip(f"PostgreSQL at PRIVACY_LEDGER_TEST_PG is not reachable: {exc}")
    separator = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    opened = Ledger.open(ledger_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(autouse=True)
def _state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config without state_dir keeps the trail's key and anchor in the test's own directory,
    never in /var/lib/privacy-ledger (subprocesses inherit it)."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
