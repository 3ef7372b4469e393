"""One record the ledger cannot store (a NUL byte in a text value, a value wider than its
column) is skipped with its reason, naming the record and the field but never the value;
the rest of the batch is written. The same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import structlog
from sqlalchemy import select

from connectors.base import Batch, Category, KeyBatch, Record
from daemon.ledger import Holding, Ledger, SyncRun
from daemon.sync import sync_source

LONG_EMAIL = "a" * 330 + "@example.com"
LONG_STATUS = "wc-" + "status-from-a-plugin-" * 3


def rec(external_id: str, **fields: object) -> Record:
    record = Record(record_type="customer", external_id=external_id,
                    email=f"p{external_id}@example.com",
                    categories=frozenset({Category.EMAIL, Category.ACCOUNT}), status="customer")
    return replace(record, **fields)


class Scripted:
    kind = "fake"
    source = "woo:scripted"

    def __init__(self, batches: Sequence[Batch]) -> None:
        self.batches = list(batches)

    def pull(self, cursor: str | None) -> Iterator[Batch]:
        yield from self.batches

    def list_keys(self) -> Iterator[KeyBatch]:
        yield KeyBatch((), complete=True)

    def lookup(self, email: str) -> list[dict[str, object]]:
        return []

    def close(self) -> None:
        pass


BAD = {
    "10": ({"status": "custo\x00mer"}, "status holds a NUL byte"),
    "11": ({"email": LONG_EMAIL}, "email is 342 characters, more than the 320"),
    "12": ({"status": LONG_STATUS}, f"status is {len(LONG_STATUS)} characters, more than the 40"),
    "13": ({"email": "nul\x00@example.com"}, "email holds a NUL byte"),
    "14": ({"parent_id": "7\x007"}, "parent id holds a NUL byte"),
}


def test_unstorable_records_are_skipped_and_the_rest_of_the_source_is_written(
        ledger: Ledger) -> None:
    # Values exactly as wide as their columns are stored.
    good = [rec("0"), rec("1", email="b" * 308 + "@example.com", status="s" * 40,
                          parent_id="p" * 200), rec("2" * 200)]
    bad = [rec(ident, **fields) for ident, (fields, _) in BAD.items()]
    weird_id = rec("9" * 201, email="w@example.com")
    nul_id = rec("20\x0020", email="n@example.com")
    batches = [Batch([good[0], *bad[:3], good[1]]),
               Batch([*bad[3:], weird_id, nul_id, good[2]], cursor="end", complete=True)]
    with structlog.testing.capture_logs() as logs:
        result = sync_source(ledger, Scripted(batches), batch_size=1)
    assert result.status == "success", result.error
    assert (result.seen, result.skipped) == (3, len(BAD) + 2)
    with ledger.sessions() as session:
        held = set(session.scalars(select(Holding.external_id)))
        run = session.scalars(select(SyncRun)).one()
    assert held == {"0", "1", "2" * 200}
    assert (run.status, run.records_seen, run.records_skipped, run.cursor_after) == (
        "success", 3, len(BAD) + 2, "end")
    skipped = [entry for entry in logs if entry["event"] == "sync.skipped"]
    by_id = {entry["external_id"]: entry["reason"] for entry in skipped}
    for ident, (_, reason) in BAD.items():
        assert reason in by_id[ident]
    # An id that is itself the problem is not repeated; the reason says which field.
    assert sorted(e["reason"].split(" is ")[0].split(" holds ")[0] for e in skipped
                  if e["external_id"] is None) == ["external id", "external id"]
    assert {e["source_record_type"] for e in skipped} == {"customer"}
    text = repr(logs)
    for value in (LONG_EMAIL, LONG_STATUS, "custo\x00mer", "nul\x00@", "9" * 201, "20\x0020"):
        assert value not in text and repr(value)[1:-1] not in text

