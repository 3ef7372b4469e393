"""`privacy-ledger where` through click on a real ledger: one person's holdings, found by
the normalised email; an argument that is not an email is a usage error naming it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from connectors.base import Category, Record
from daemon.cli import main
from daemon.ledger import Ledger
from daemon.sync import upsert_records

T0 = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)


def config_with_ada(tmp_path: Path, sqlite_url: str) -> Path:
    ledger = Ledger.open(sqlite_url)
    try:
        with ledger.session() as session:
            source = ledger.source(session, "stripe", "stripe")
            upsert_records(session, source.id, [Record(
                record_type="customer", external_id="cus_1", email="ada@example.com",
                categories=frozenset({Category.EMAIL, Category.NAME}), created_at=T0)],
                T0, touch_unchanged=False)
    finally:
        ledger.close()
    path = tmp_path / "config.toml"
    path.write_text(f'[ledger]\nurl = "{sqlite_url}"\n', encoding="utf-8")
    return path


def test_where_finds_a_person_by_the_email_written_any_way(tmp_path: Path,
                                                          sqlite_url: str) -> None:
    config = config_with_ada(tmp_path, sqlite_url)
    result = CliRunner().invoke(main, ["--config", str(config), "where", " Ada@Example.COM "])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "ada@example.com — 1 holding(s)"
    assert "stripe" in result.output and "cus_1" in result.output


def test_where_refuses_an_argument_that_is_not_an_email(tmp_path: Path,
                                                        sqlite_url: str) -> None:
    config = config_with_ada(tmp_path, sqlite_url)
    result = CliRunner().invoke(main, ["--config", str(config), "where", "ada"])
    assert result.exit_code == 2
    assert "Invalid value for 'EMAIL': 'ada' is not an email address" in result.output
