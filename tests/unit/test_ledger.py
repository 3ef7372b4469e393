"""The ledger itself: schema from migrations, private SQLite file, timestamps, the trail."""

from __future__ import annotations

import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from daemon import trail
from daemon.ledger import SCHEMA_REVISION, Base, Ledger, LedgerError, Subject, schema_revision


def test_migrations_match_the_models(ledger: Ledger) -> None:
    with ledger.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert compare_metadata(context, Base.metadata) == []


def test_schema_revision_names_the_newest_migration() -> None:
    config = Config()
    config.set_main_option("script_location", "daemon:migrations")
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_REVISION


def test_opening_a_current_ledger_leaves_alembic_unloaded(ledger_url: str) -> None:
    Ledger.open(ledger_url).close()
    probe = ("import sys; from daemon.ledger import Ledger; "
             f"Ledger.open({ledger_url!r}).close(); print('alembic' in sys.modules)")
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=60)
    assert answer.stdout.strip() == "False"


def test_a_ledger_behind_the_newest_migration_is_brought_up_to_it(ledger: Ledger) -> None:
    with ledger.engine.begin() as connection:
        connection.execute(text("DROP TABLE ledger_keys"))
        # What revisions after 0003 add goes too, so that they can run again.
        connection.execute(text("DROP TABLE email_forms"))
        connection.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    again = Ledger.open(ledger.engine.url.render_as_string(hide_password=False))
    try:
        assert schema_revision(again.engine) == SCHEMA_REVISION
        with again.engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM ledger_keys")).scalar() == 0
    finally:
        again.close()


def test_sqlite_ledger_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.db"
    ledger = Ledger.open(f"sqlite:///{path}")
    with ledger.session() as session:
        ledger.source(session, "stripe", "stripe")
    ledger.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for extra in path.parent.glob("ledger.db-*"):
        assert stat.S_IMODE(extra.stat().st_mode) & 0o077 == 0


def test_sqlite_ledger_uses_wal(tmp_path: Path) -> None:
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'l.db'}")
    with ledger.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    ledger.close()


def test_times_come_back_aware_utc(ledger: Ledger) -> None:
    moment = datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    with ledger.session() as session:
        session.add(Subject(email="a@example.com", first_seen=moment, last_seen=moment))
    with ledger.sessions() as session:
        subject = session.query(Subject).one()
    assert subject.first_seen == moment and subject.first_seen.tzinfo is UTC


def test_naive_times_are_refused(ledger: Ledger) -> None:
    with pytest.raises(Exception, match="naive"), ledger.session() as session:
        naive = datetime(2026, 1, 1)  # noqa: DTZ001 - the point of the test
        session.add(Subject(email="a@example.com", first_seen=naive, last_seen=naive))


def test_unreachable_ledger_is_a_clear_error() -> None:
    with pytest.raises(LedgerError, match="cannot open the ledger at postgresql"):
        Ledger.open("postgresql+psycopg://nobody:secretpw@127.0.0.1:1/none?connect_timeout=2")


def test_unreachable_ledger_message_hides_the_password() -> None:
    with pytest.raises(LedgerError) as caught:
        Ledger.open("postgresql+psycopg://nobody:secretpw@127.0.0.1:1/none?connect_timeout=2")
    assert "secretpw" not in str(caught.value)


def test_trail_verifies_and_names_the_altered_entry(ledger: Ledger) -> None:
    for n in range(4):
        trail.record(ledger, "daemon", "sync", {"source": "stripe", "n": n})
    assert trail.verify(ledger).ok
    with ledger.engine.begin() as connection:
        connection.execute(text("UPDATE audit_log SET detail = '{\"n\": 99}' WHERE id = 3"))
    result = trail.verify(ledger)
    assert not result.ok and result.first_bad_id == 3 and "altered" in result.problem


def test_trail_names_the_entry_after_a_removed_one(ledger: Ledger) -> None:
    for n in range(4):
        trail.record(ledger, "daemon", "sync", {"n": n})
    with ledger.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_log WHERE id = 2"))
    result = trail.verify(ledger)
    assert not result.ok and result.first_bad_id == 3


def test_daemons_opening_a_new_postgresql_ledger_together_migrate_in_turn(
        pg_url: str) -> None:
    import threading

    opened: list[Ledger] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(Ledger.open(pg_url))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == [] and len(opened) == 3
    finally:
        for ledger in opened:
            ledger.close()


def _add_people(ledger: Ledger, first: int, count: int) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with ledger.session() as session:
        session.add_all(Subject(email=f"p{n}@example.com", first_seen=now, last_seen=now)
                        for n in range(first, first + count))
        session.flush()
        source = ledger.source(session, "woo:shop", "woocommerce")
        session.execute(text(
            "INSERT INTO holdings (source_id, record_type, external_id, subject_id, categories,"
            " anonymised, first_seen, last_seen) SELECT :source, 'customer', "
            "CAST(id AS VARCHAR(20)), id, ',email,', :no, :now, :now FROM subjects "
            "WHERE id > :after"), {"source": source.id, "no": False, "now": now,
                                   "after": first - 1})


def test_statistics_are_refreshed_when_missing_or_a_tenth_out_of_date(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    try:
        _add_people(ledger, 1, 200)
    finally:
        # PostgreSQL counts a backend's changes when it goes idle or away.
        ledger.close()
    ledger = Ledger.open(ledger_url)
    try:
        assert ledger.refresh_statistics() is True
        assert ledger.refresh_statistics() is False
        _add_people(ledger, 201, 10)
        ledger.close()
        ledger = Ledger.open(ledger_url)
        # 10 more on 200: within a tenth.
        assert ledger.refresh_statistics() is False
        _add_people(ledger, 211, 100)
        ledger.close()
        ledger = Ledger.open(ledger_url)
        assert ledger.refresh_statistics() is True
    finally:
        ledger.close()
