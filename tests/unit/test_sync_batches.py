"""The sync engine's fast path, on SQLite and PostgreSQL: consecutive batches committed
together, rows written through the driver read back through the ORM unchanged, and records
written before their parent customer linked to it at the end of the pull."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import select

from connectors.base import Batch, Category, Key, KeyBatch, Record
from connectors.http import FatalAPIError
from daemon.ledger import Holding, Ledger, Subject
from daemon.sync import sync_source

T0 = datetime(2026, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)


def rec(external_id: str, email: str | None = None, *, record_type: str = "order",
        parent_id: str | None = None, status: str = "completed") -> Record:
    return Record(record_type=record_type, external_id=external_id,
                  email=email if email is not None else f"p{external_id}@example.com",
                  categories=frozenset({Category.EMAIL, Category.NAME}), status=status,
                  created_at=T0, modified_at=T0, parent_id=parent_id)


class Scripted:
    """Yields the given batches; raises after them when `fail` is set."""

    kind = "fake"
    source = "woo:scripted"

    def __init__(self, batches: Sequence[Batch], *, fail: bool = False) -> None:
        self.batches = list(batches)
        self.fail = fail

    def pull(self, cursor: str | None) -> Iterator[Batch]:
        yield from self.batches
        if self.fail:
            raise FatalAPIError(self.source, "the credentials were refused (401)")

    def list_keys(self) -> Iterator[KeyBatch]:
        yield KeyBatch((), complete=True)

    def lookup(self, email: str) -> list[dict[str, object]]:
        return []

    def close(self) -> None:
        pass


def pages(count: int, size: int = 2) -> list[Batch]:
    """`count` pages of `size` orders; only the last carries a cursor and ends the pull."""
    batches = [Batch([rec(str(page * size + n)) for n in range(size)])
               for page in range(count)]
    batches[-1] = Batch(batches[-1].records, cursor=json.dumps({"pages": count}),
                        complete=True)
    return batches


def live(ledger: Ledger) -> dict[str, Holding]:
    with ledger.sessions() as session:
        return {h.external_id: h for h in session.scalars(
            select(Holding).where(Holding.gone_at.is_(None)))}


def test_consecutive_batches_are_committed_together_up_to_the_batch_size(
        ledger: Ledger) -> None:
    committed: list[int] = []
    result = sync_source(ledger, Scripted(pages(5)), batch_size=4,
                         progress=lambda _, seen: committed.append(seen.done))
    assert result.ok and result.seen == 10
    # The first page at once, then two pages a transaction; the last closes its group.
    assert committed == [2, 6, 10]


def test_every_batch_is_its_own_transaction_when_the_batch_size_is_one(
        ledger: Ledger) -> None:
    committed: list[int] = []
    sync_source(ledger, Scripted(pages(4)), batch_size=1,
                progress=lambda _, seen: committed.append(seen.done))
    assert committed == [2, 4, 6, 8]


def test_a_stop_asked_for_commits_the_group_read_so_far_and_ends_the_run(
        ledger: Ledger) -> None:
    asked: list[int] = []

    def stop_after_three_pages() -> bool:
        asked.append(1)
        return len(asked) >= 3

    result = sync_source(ledger, Scripted(pages(10)), batch_size=500,
                         should_stop=stop_after_three_pages)
    assert (result.status, result.error) == ("stopped", "stopped")
    assert result.seen == len(live(ledger)) == 6


def test_records_read_before_a_failure_are_committed_when_batches_are_grouped(
        ledger: Ledger) -> None:
    result = sync_source(ledger, Scripted(pages(3)[:2], fail=True), batch_size=500)
    assert result.status == "failed" and "credentials were refused" in (result.error or "")
    assert sorted(live(ledger)) == ["0", "1", "2", "3"]


def test_a_batch_with_gone_keys_applies_them_after_the_records_before_it(
        ledger: Ledger) -> None:
    batches = [Batch([rec("1"), rec("2")]),
               Batch([rec("3")], gone=[Key("order", "1")]),
               Batch([rec("1", status="refunded")], cursor="{}", complete=True)]
    sync_source(ledger, Scripted(batches[:2] + [Batch((), cursor="{}", complete=True)]))
    assert sorted(live(ledger)) == ["2", "3"]
    result = sync_source(ledger, Scripted(batches))
    assert result.ok
    held = live(ledger)
    # Gone in the second batch, seen again in the third: held again, as it is now.
    assert sorted(held) == ["1", "2", "3"] and held["1"].status == "refunded"


def test_rows_written_by_the_fast_path_read_back_as_given(ledger: Ledger) -> None:
    paris = timezone(timedelta(hours=2))
    record = Record(record_type="customer", external_id="c1", email="ada@example.com",
                    categories=frozenset({Category.EMAIL, Category.CARD_NUMBER}),
                    status="customer", created_at=T0.astimezone(paris),
                    last_activity_at=T0 + timedelta(days=1), modified_at=None,
                    parent_id="p9", anonymised=True,
                    evidence=("card number pattern in customer_note",))
    sync_source(ledger, Scripted([Batch([record], cursor="{}", complete=True)]))
    with ledger.sessions() as session:
        held = session.scalars(select(Holding)).one()
        email = session.scalar(select(Subject.email).where(Subject.id == held.subject_id))
    assert (held.record_type, held.external_id, held.status, held.parent_id) == \
        ("customer", "c1", "customer", "p9")
    assert held.categories == ",card_number,email,"
    assert held.anonymised is True
    assert held.created_at == T0 and held.created_at.tzinfo == UTC
    assert held.last_activity_at == T0 + timedelta(days=1)
    assert held.modified_at is None and held.gone_at is None
    assert json.loads(held.evidence or "[]") == ["card number pattern in customer_note"]
    assert email == "ada@example.com"
    again = sync_source(ledger, Scripted([Batch([record], cursor="{}", complete=True)]))
    assert again.changed == 0


def test_a_changed_time_alone_updates_the_holding(ledger: Ledger) -> None:
    sync_source(ledger, Scripted([Batch([rec("1")], cursor="{}", complete=True)]))
    later = replace(rec("1"), modified_at=T0 + timedelta(microseconds=1))
    result = sync_source(ledger, Scripted([Batch([later], cursor="{}", complete=True)]))
    assert result.changed == 1
    assert live(ledger)["1"].modified_at == T0 + timedelta(microseconds=1)


def test_record_written_before_its_parent_customer_gets_the_customers_subject(
        ledger: Ledger) -> None:
    # A charge without an email arrives before its customer (lists read side by side).
    charge = Record(record_type="charge", external_id="ch_1", email=None,
                    categories=frozenset({Category.CARD_LAST4}), parent_id="cus_1")
    customer = rec("cus_1", "ada@example.com", record_type="customer")
    sync_source(ledger, Scripted([Batch([charge]),
                                  Batch([customer], cursor="{}", complete=True)]),
                batch_size=1)
    held = live(ledger)
    assert held["ch_1"].subject_id is not None
    assert held["ch_1"].subject_id == held["cus_1"].subject_id
