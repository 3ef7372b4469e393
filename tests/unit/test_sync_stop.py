"""Stopping a sync between batches (SIGTERM in the daemon): what was committed stays, the
cursor points no further than that, and the next run resumes from it. On SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from sqlalchemy import func, select

from connectors.base import Batch, Category, Key, KeyBatch, Record, StopWaiting
from daemon.ledger import Holding, Ledger, Source, SyncRun
from daemon.sync import STOPPED, sync_source

T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def order(n: int) -> Record:
    return Record(record_type="order", external_id=str(n), email=f"p{n}@example.com",
                  categories=frozenset({Category.EMAIL, Category.NAME}), status="completed",
                  created_at=T0, modified_at=T0)


class PagedConnector:
    """Three pages of two orders; every page carries a cursor ("page-1", …) and the pull
    resumes after the page its cursor names."""

    kind = "fake"
    source = "woo:paged"

    def __init__(self) -> None:
        self.cursors_asked: list[str | None] = []
        self.pages_served = 0
        self.closed_early = False

    def pull(self, cursor: str | None) -> Iterator[Batch]:
        self.cursors_asked.append(cursor)
        start = int(cursor.split("-")[1]) if cursor else 0
        try:
            for page in range(start, 3):
                self.pages_served += 1
                yield Batch(records=[order(page * 2), order(page * 2 + 1)],
                            cursor=f"page-{page + 1}", complete=page == 2,
                            listed_types=frozenset({"order"}) if page == 2 else frozenset())
        except GeneratorExit:
            self.closed_early = True
            raise

    def list_keys(self) -> Iterator[KeyBatch]:
        yield KeyBatch(keys=[Key("order", str(n)) for n in range(6)], complete=True)

    def lookup(self, email: str) -> list[dict[str, object]]:
        return []

    def close(self) -> None:
        pass


def held(ledger: Ledger) -> int:
    with ledger.sessions() as session:
        return session.scalar(select(func.count()).select_from(Holding)) or 0


def cursor_of(ledger: Ledger) -> str | None:
    with ledger.sessions() as session:
        return session.scalar(select(Source.cursor).where(Source.name == "woo:paged"))


def test_sync_stops_between_batches_keeping_what_was_committed(ledger: Ledger) -> None:
    connector = PagedConnector()
    asked: list[int] = []

    def stop_after_first() -> bool:
        asked.append(held(ledger))
        return True

    result = sync_source(ledger, connector, should_stop=stop_after_first)
    assert (result.status, result.error, result.seen) == (STOPPED, STOPPED, 2)
    assert asked == [2]
    assert held(ledger) == 2
    assert cursor_of(ledger) == "page-1"
    assert connector.pages_served == 1 and connector.closed_early
    with ledger.sessions() as session:
        run = session.scalars(select(SyncRun)).one()
    assert (run.status, run.error, run.cursor_after) == (STOPPED, STOPPED, "page-1")
    assert run.finished_at is not None


def test_run_after_a_stop_resumes_from_the_committed_cursor(ledger: Ledger) -> None:
    first = PagedConnector()
    sync_source(ledger, first, should_stop=lambda: True)
    second = PagedConnector()
    result = sync_source(ledger, second, should_stop=lambda: False)
    assert result.ok
    assert second.cursors_asked == ["page-1"]
    assert held(ledger) == 6
    assert cursor_of(ledger) == "page-3"


def test_stop_asked_during_the_last_batch_lets_the_run_succeed(ledger: Ledger) -> None:
    connector = PagedConnector()
    calls = {"n": 0}

    def stop_on_the_last_batch() -> bool:
        calls["n"] += 1
        return calls["n"] >= 3

    # The check is skipped after a complete batch: nothing is left to stop.
    result = sync_source(ledger, connector, should_stop=stop_on_the_last_batch)
    assert calls["n"] == 2
    assert result.ok and held(ledger) == 6


def test_full_sync_stopped_early_marks_nothing_gone(ledger: Ledger) -> None:
    sync_source(ledger, PagedConnector(), full=True)
    result = sync_source(ledger, PagedConnector(), full=True, should_stop=lambda: True)
    assert result.error == STOPPED
    with ledger.sessions() as session:
        gone = session.scalar(select(func.count()).select_from(Holding)
                              .where(Holding.gone_at.is_not(None)))
    assert gone == 0


class WaitingConnector(PagedConnector):
    """A page with a cursor, a page without one, then its sleep is cut short by a stop
    (StopWaiting) while it waits out a rate limit."""

    def pull(self, cursor: str | None) -> Iterator[Batch]:
        self.cursors_asked.append(cursor)
        yield Batch(records=[order(0), order(1)], cursor="page-1")
        yield Batch(records=[order(2), order(3)])
        raise StopWaiting


def test_a_stop_while_waiting_on_the_upstream_ends_the_run_keeping_what_was_read(
        ledger: Ledger) -> None:
    # Batches of 100: the second page is still waiting to be committed when the stop comes.
    result = sync_source(ledger, WaitingConnector(), batch_size=100)
    assert (result.status, result.error, result.seen) == (STOPPED, STOPPED, 4)
    assert held(ledger) == 4
    assert cursor_of(ledger) == "page-1"
    with ledger.sessions() as session:
        run = session.scalars(select(SyncRun)).one()
    assert (run.status, run.error) == (STOPPED, STOPPED) and run.finished_at is not None


class InterruptedConnector(PagedConnector):
    """Ctrl-C arrives while the second page is being read."""

    def pull(self, cursor: str | None) -> Iterator[Batch]:
        for number, batch in enumerate(super().pull(cursor)):
            if number == 1:
                raise KeyboardInterrupt
            yield batch


def test_keyboard_interrupt_mid_pull_is_recorded_as_stopped_not_as_an_internal_error(
        ledger: Ledger) -> None:
    try:
        sync_source(ledger, InterruptedConnector(), batch_size=1)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the interrupt was swallowed")
    with ledger.sessions() as session:
        run = session.scalars(select(SyncRun)).one()
    assert (run.status, run.error, run.records_seen) == (STOPPED, STOPPED, 2)
    assert run.finished_at is not None
    assert held(ledger) == 2 and cursor_of(ledger) == "page-1"
