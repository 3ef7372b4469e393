"""The sync engine against an in-memory connector, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text

from connectors.base import Batch, Category, Key, KeyBatch, Record, Skip
from connectors.http import FatalAPIError
from daemon.ledger import Holding, Ledger, Source, Subject, SyncRun
from daemon.sync import INTERRUPTED, reconcile_source, retire_sources, sync_source

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def rec(external_id: str, email: str | None = "ada@example.com", *,
        categories: tuple[Category, ...] = (Category.EMAIL, Category.NAME),
        status: str = "completed", record_type: str = "order") -> Record:
    return Record(record_type=record_type, external_id=external_id, email=email,
                  categories=frozenset(categories), status=status, created_at=T0,
                  modified_at=T0, evidence=())


class FakeConnector:
    """Yields the given records in pages; can fail after a number of pages."""

    kind = "fake"

    def __init__(self, records: list[Record], *, page: int = 2, fail_after: int | None = None,
                 complete: bool = True, gone: tuple[Key, ...] = (),
                 source: str = "woo:fake") -> None:
        self.source = source
        self.records = records
        self.page = page
        self.fail_after = fail_after
        self.complete = complete
        self.gone = gone
        self.cursors_asked: list[str | None] = []

    def pull(self, cursor: str | None) -> Iterator[Batch]:
        self.cursors_asked.append(cursor)
        pages = [self.records[i:i + self.page] for i in range(0, len(self.records), self.page)]
        pages = pages or [[]]
        for index, chunk in enumerate(pages):
            if self.fail_after is not None and index >= self.fail_after:
                raise FatalAPIError(self.source, "the credentials were refused (401)")
            last = index == len(pages) - 1
            yield Batch(records=chunk,
                        cursor=json.dumps({"n": len(self.records)}) if last else None,
                        complete=last and self.complete,
                        listed_types=frozenset({"order", "customer"}) if last else frozenset(),
                        gone=self.gone if last else ())

    def list_keys(self) -> Iterator[KeyBatch]:
        yield KeyBatch(keys=[Key(r.record_type, r.external_id) for r in self.records],
                       complete=self.complete, listed_types=frozenset({"order", "customer"}))

    def lookup(self, email: str) -> list[dict]:
        return []

    def close(self) -> None:
        pass


def holdings(ledger: Ledger) -> dict[str, tuple]:
    with ledger.sessions() as session:
        return {h.external_id: (h.categories, h.status, h.gone_at is not None, h.subject_id)
                for h in session.scalars(select(Holding))}


def count(ledger: Ledger, model: type) -> int:
    with ledger.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_sync_stores_categories_and_one_subject_per_email(ledger: Ledger) -> None:
    records = [rec("1"), rec("2", "ada@example.com"), rec("3", "bo@example.com")]
    result = sync_source(ledger, FakeConnector(records))
    assert result.ok and result.seen == 3 and result.changed == 3
    assert count(ledger, Subject) == 2
    assert holdings(ledger)["1"][0] == ",email,name,"


def test_second_identical_sync_changes_nothing(ledger: Ledger) -> None:
    connector = FakeConnector([rec(str(i)) for i in range(5)])
    sync_source(ledger, connector)
    before = holdings(ledger)
    with ledger.sessions() as session:
        seen_before = sorted(session.scalars(select(Holding.last_seen)))
    again = sync_source(ledger, connector)
    assert again.changed == 0 and again.seen == 5
    assert holdings(ledger) == before
    with ledger.sessions() as session:
        assert sorted(session.scalars(select(Holding.last_seen))) == seen_before


def test_a_new_holding_marks_its_known_subject_seen_and_a_new_subject_seen_now(
        ledger: Ledger) -> None:
    sync_source(ledger, FakeConnector([rec("1", "ada@example.com")]))
    with ledger.sessions() as session:
        first_seen = session.scalar(select(Subject.last_seen))
    sync_source(ledger, FakeConnector([rec("1", "ada@example.com"), rec("2", "ada@example.com"),
                                       rec("3", "bo@example.com")]))
    with ledger.sessions() as session:
        seen = {e: t for e, t in session.execute(select(Subject.email, Subject.last_seen))}
        held = {i: t for i, t in session.execute(select(Holding.external_id, Holding.last_seen))}
    assert seen["ada@example.com"] > first_seen
    # Each batch stamps what it wrote with one time (pages of two: "1", "2" | "3").
    assert (seen["ada@example.com"], seen["bo@example.com"]) == (held["2"], held["3"])


def test_cursor_is_committed_only_with_the_last_batch(ledger: Ledger) -> None:
    connector = FakeConnector([rec(str(i)) for i in range(6)], page=2, fail_after=2)
    result = sync_source(ledger, connector)
    assert result.status == "failed" and "credentials" in (result.error or "")
    with ledger.sessions() as session:
        source = session.scalar(select(Source))
        assert source.cursor is None
        run = session.scalar(select(SyncRun))
        assert run.status == "failed" and run.records_seen == 4
    assert len(holdings(ledger)) == 4
    connector.fail_after = None
    assert sync_source(ledger, connector).ok
    assert connector.cursors_asked == [None, None]
    assert len(holdings(ledger)) == 6
    with ledger.sessions() as session:
        assert session.scalar(select(Source.cursor)) == json.dumps({"n": 6})


def test_full_sync_marks_unlisted_holdings_gone(ledger: Ledger) -> None:
    sync_source(ledger, FakeConnector([rec("1"), rec("2"), rec("3")]), full=True)
    result = sync_source(ledger, FakeConnector([rec("1"), rec("3")]), full=True)
    assert result.gone == 1
    assert holdings(ledger)["2"][2] is True
    assert holdings(ledger)["1"][2] is False


def test_sync_marks_nothing_gone_when_listing_fails(ledger: Ledger) -> None:
    sync_source(ledger, FakeConnector([rec("1"), rec("2"), rec("3")]), full=True)
    failing = FakeConnector([rec("1")], fail_after=0)
    assert sync_source(ledger, failing, full=True).status == "failed"
    incomplete = FakeConnector([rec("1")], complete=False)
    result = sync_source(ledger, incomplete, full=True)
    assert result.ok and result.gone == 0 and "incomplete" in (result.error or "")
    assert not any(gone for _, _, gone, _ in holdings(ledger).values())


def test_incremental_sync_never_marks_unlisted_gone(ledger: Ledger) -> None:
    sync_source(ledger, FakeConnector([rec("1"), rec("2")]))
    sync_source(ledger, FakeConnector([rec("1")]))
    assert not any(gone for _, _, gone, _ in holdings(ledger).values())


def test_gone_keys_from_connector_are_marked_and_revived_when_seen_again(
        ledger: Ledger) -> None:
    sync_source(ledger, FakeConnector([rec("1"), rec("2")]))
    sync_source(ledger, FakeConnector([], gone=(Key("order", "2"),)))
    assert holdings(ledger)["2"][2] is True
    sync_source(ledger, FakeConnector([rec("2")]))
    assert holdings(ledger)["2"][2] is False


def test_changed_categories_update_the_holding(ledger: Ledger) -> None:
    sync_source(ledger, FakeConnector([rec("1")]))
    result = sync_source(ledger, FakeConnector([rec("1", categories=(Category.EMAIL,))]))
    assert result.changed == 1
    assert holdings(ledger)["1"][0] == ",email,"


def test_records_without_email_are_held_without_subject(ledger: Ledger) -> None:
    sync_source(ledger, FakeConnector([rec("1", None)]))
    assert holdings(ledger)["1"][3] is None
    assert count(ledger, Subject) == 0


def test_skipped_records_are_counted(ledger: Ledger) -> None:
    class Skipping(FakeConnector):
        def pull(self, cursor: str | None) -> Iterator[Batch]:
            yield Batch(records=[rec("1")], skipped=[Skip("order", None, "no id")],
                        complete=True)

    result = sync_source(ledger, Skipping([]))
    assert result.skipped == 1 and result.seen == 1


def test_run_left_running_by_a_dead_process_is_closed_as_interrupted(ledger: Ledger) -> None:
    with ledger.session() as session:
        source = ledger.source(session, "woo:fake", "fake")
        session.add(SyncRun(source_id=source.id, mode="incremental", started_at=T0,
                            status="running", records_seen=0, records_changed=0,
                            records_skipped=0, records_gone=0))
    sync_source(ledger, FakeConnector([rec("1")]))
    with ledger.sessions() as session:
        runs = session.scalars(select(SyncRun).order_by(SyncRun.id)).all()
    assert [r.status for r in runs] == ["failed", "success"]
    assert runs[0].error == INTERRUPTED


def test_reconcile_marks_only_after_a_complete_listing(ledger: Ledger) -> None:
    sync_source(ledger, FakeConnector([rec("1"), rec("2")]))
    partial = reconcile_source(ledger, FakeConnector([rec("1")], complete=False))
    assert partial.gone == 0
    done = reconcile_source(ledger, FakeConnector([rec("1")]))
    assert done.gone == 1 and holdings(ledger)["2"][2] is True


def test_internal_errors_are_recorded_then_raised(ledger: Ledger) -> None:
    class Broken(FakeConnector):
        def pull(self, cursor: str | None) -> Iterator[Batch]:
            raise ZeroDivisionError
            yield

    with pytest.raises(ZeroDivisionError):
        sync_source(ledger, Broken([]))
    with ledger.sessions() as session:
        run = session.scalar(select(SyncRun))
    assert run.status == "failed" and "ZeroDivisionError" in run.error


def test_vanished_audience_source_is_retired_with_its_holdings(ledger: Ledger) -> None:
    sync_source(ledger, FakeConnector([rec("m1", record_type="member")], source="mailchimp:a"))
    sync_source(ledger, FakeConnector([rec("m2", record_type="member")], source="mailchimp:b"))
    assert retire_sources(ledger, "mailchimp:", ["mailchimp:a"]) == ["mailchimp:b"]
    state = holdings(ledger)
    assert state["m2"][2] is True and state["m1"][2] is False


def test_record_without_email_belongs_to_its_parent_customers_subject(ledger: Ledger) -> None:
    customer = rec("cus_1", "ada@example.com", record_type="customer")
    charge = Record(record_type="charge", external_id="ch_1", email=None,
                    categories=frozenset({Category.CARD_LAST4}), parent_id="cus_1")
    sync_source(ledger, FakeConnector([customer, charge], page=1))
    later = Record(record_type="charge", external_id="ch_2", email=None,
                   categories=frozenset({Category.CARD_LAST4}), parent_id="cus_1")
    sync_source(ledger, FakeConnector([customer, charge, later], page=3))
    state = holdings(ledger)
    assert state["ch_1"][3] == state["cus_1"][3] == state["ch_2"][3] is not None


class MovedWhileListed(FakeConnector):
    """Two listings, like WooCommerce's `any` and `trash` or Mailchimp's default and
    archived: order 2 moved from the second to the first while they were read, so the full
    pull lists it in neither; as upstream changed it, a pull from the cursor the full pull
    left (what changed since it started) has it."""

    def pull(self, cursor: str | None) -> Iterator[Batch]:
        self.cursors_asked.append(cursor)
        if cursor is None:
            yield Batch(records=[rec("1")])
            yield Batch(records=[rec("3")], cursor=json.dumps({"since": "start"}),
                        complete=True, listed_types=frozenset({"order"}))
        else:
            yield Batch(records=[rec("2", status="processing")], cursor=cursor, complete=True)


def test_full_sync_keeps_a_record_that_moved_between_listings_while_they_ran(
        ledger: Ledger) -> None:
    sync_source(ledger, FakeConnector([rec("1"), rec("2", status="trash"), rec("3")]),
                full=True)
    result = sync_source(ledger, MovedWhileListed([]), full=True)
    assert result.ok and result.gone == 0
    categories, status, gone, _ = holdings(ledger)["2"]
    assert (status, gone) == ("processing", False)


@pytest.mark.parametrize("anonymised", [True, False])
def test_flags_and_absent_values_the_sync_writes_are_stored_as_the_orm_stores_them(
        ledger: Ledger, anonymised: bool) -> None:
    """The sync binds flags and absent values through the driver (on SQLite through
    registered adapters): stored, they are what the ORM stores — a boolean (0/1 on SQLite)
    and NULL, never text or a zero."""
    record = Record(record_type="order", external_id="1", email=None,
                    categories=frozenset({Category.ORDER_HISTORY}), anonymised=anonymised)
    sync_source(ledger, FakeConnector([record]))
    with ledger.session() as session:
        source_id = session.scalar(select(Source.id))
        session.add(Holding(source_id=source_id, record_type="order", external_id="2",
                            categories=",", anonymised=anonymised, first_seen=T0,
                            last_seen=T0))
    with ledger.engine.connect() as connection:
        stored = connection.execute(text(
            "SELECT anonymised, subject_id IS NULL, status IS NULL, parent_id IS NULL, "
            "evidence IS NULL, gone_at IS NULL, created_at IS NULL FROM holdings "
            "ORDER BY external_id")).all()
    assert stored[0] == stored[1]
    assert bool(stored[0][0]) is anonymised and all(stored[0][1:])
    with ledger.sessions() as session:
        assert session.scalar(select(Holding.anonymised).where(
            Holding.external_id == "1")) is anonymised
        assert session.scalar(select(func.count()).select_from(Holding).where(
            Holding.anonymised.is_(anonymised), Holding.parent_id.is_(None))) == 2


@pytest.mark.parametrize("moment", [
    T0, datetime(2026, 2, 28, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(999, 12, 31, 0, 0, 0, 1, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
])
def test_times_the_sync_writes_are_stored_as_the_orm_stores_them(ledger: Ledger,
                                                                 moment: datetime) -> None:
    """The sync writes through the driver, audits and commands read and compare through the
    ORM: the stored form must be one, or `last_seen < since` compares text with text."""
    record = Record(record_type="order", external_id="1", email=None,
                    categories=frozenset({Category.ORDER_HISTORY}), created_at=moment,
                    modified_at=moment, last_activity_at=moment)
    sync_source(ledger, FakeConnector([record]))
    with ledger.session() as session:
        source_id = session.scalar(select(Source.id))
        session.add(Holding(source_id=source_id, record_type="order", external_id="2",
                            categories=",", anonymised=False, created_at=moment,
                            first_seen=moment, last_seen=moment))
    with ledger.engine.connect() as connection:
        stored = connection.execute(text(
            "SELECT external_id, created_at, modified_at, last_activity_at FROM holdings "
            "ORDER BY external_id")).all()
    assert stored[0][1] == stored[0][2] == stored[0][3] == stored[1][1]
    with ledger.sessions() as session:
        assert session.scalar(select(Holding.created_at).where(
            Holding.external_id == "1")) == moment


def test_inserts_fit_a_sqlite_that_binds_few_values_a_statement(tmp_path: Path) -> None:
    """SQLite before 3.32 binds at most 999 values a statement (a holdings row has 16):
    the sync's multi-row inserts split to fit whatever limit the library has."""
    ledger = Ledger.open(f"sqlite:///{tmp_path}/ledger.db")
    ledger.engine.dispose()

    @event.listens_for(ledger.engine, "connect")
    def _few_values(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)

    records = [rec(str(n), f"person{n}@example.com") for n in range(60)]
    result = sync_source(ledger, FakeConnector(records, page=60))
    assert result.ok and result.changed == 60
    with ledger.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Holding)) == 60
        assert session.scalar(select(func.count()).select_from(Subject)) == 60
