"""Two shops' syncs that share people, on one PostgreSQL ledger at once: each batch marks
the people it saw (subjects.last_seen), and two batches that lock the same people in two
orders deadlock. They lock them in id order, so one waits for the other instead."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from connectors.base import Category, Record
from daemon.ledger import Ledger, Source, Subject
from daemon.sync import upsert_records

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def order(number: str, email: str) -> Record:
    return Record(record_type="order", external_id=number, email=email,
                  categories=frozenset({Category.EMAIL, Category.NAME}), status="completed",
                  created_at=T0, modified_at=T0)


def test_two_shops_marking_the_people_they_share_wait_for_each_other_not_deadlock(
        pg_url: str) -> None:
    ledger = Ledger.open(pg_url)
    try:
        with ledger.session() as session:
            alpha, beta = (Source(name=f"woo:{name}", kind="woocommerce", created_at=T0)
                           for name in ("alpha", "beta"))
            ada, bo = (Subject(email=f"{name}@example.com", first_seen=T0, last_seen=T0)
                       for name in ("ada", "bo"))
            session.add_all([alpha, beta, ada, bo])
            session.flush()
            ids = (alpha.id, beta.id, ada.id, bo.id)
        alpha_id, beta_id, ada_id, bo_id = ids
        assert ada_id < bo_id
        with ledger.session() as session:
            # Ada's row now lies after Bo's in the table: a plain UPDATE meets Bo first.
            session.execute(text("UPDATE subjects SET last_seen = now() WHERE id = :id"),
                            {"id": ada_id})
        later = T0 + timedelta(days=1)
        errors: list[BaseException] = []
        beta_session = ledger.sessions()
        alpha_thread = threading.Thread(target=_alpha_batch,
                                        args=(ledger, alpha_id, later, errors))
        try:
            beta_session.begin()
            # Beta's batch marks Ada seen: her row is beta's until it commits.
            upsert_records(beta_session, beta_id, [order("b1", "ada@example.com")], later,
                           touch_unchanged=False)
            alpha_thread.start()
            assert _someone_waits_for_a_lock(ledger), "alpha's batch never waited for Ada"
            # Then Bo: alpha, waiting for Ada, must not be holding him already.
            upsert_records(beta_session, beta_id, [order("b2", "bo@example.com")], later,
                           touch_unchanged=False)
            beta_session.commit()
        finally:
            # A transaction left open would hold the schema the fixture drops.
            beta_session.close()
            if alpha_thread.ident is not None:
                alpha_thread.join(timeout=30)
        assert not alpha_thread.is_alive()
        assert errors == []
        with ledger.session() as session:
            seen = session.execute(text("SELECT count(*) FROM holdings")).scalar()
        assert seen == 4
    finally:
        ledger.close()


def _alpha_batch(ledger: Ledger, source_id: int, now: datetime,
                 errors: list[BaseException]) -> None:
    """Alpha's batch: orders of Ada and Bo, who are marked seen in one statement."""
    try:
        with ledger.session() as session:
            upsert_records(session, source_id, [order("a1", "ada@example.com"),
                                                order("a2", "bo@example.com")],
                           now, touch_unchanged=False)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def _someone_waits_for_a_lock(ledger: Ledger) -> bool:
    for _ in range(100):
        with ledger.engine.connect() as connection:
            if connection.scalar(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()")):
                return True
        time.sleep(0.05)
    return False
