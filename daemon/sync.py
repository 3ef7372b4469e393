"""Runs one connector into the ledger: batches upserted one transaction each, the cursor
moved only inside the transaction of what it covers, holdings marked gone only after a
listing completed, and every run recorded in `sync_runs`.

A run killed at any point leaves the ledger consistent: committed batches stay, the cursor
still points before anything uncommitted, and the next run re-reads from there (upserts are
idempotent, so re-reading changes nothing).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session, aliased

from connectors.base import Batch, Connector, Key, Progress, Record, Skip, StopWaiting
from connectors.http import APIError
from daemon import trail
from daemon.ledger import Holding, Ledger, Source, SyncRun, categories_text
from vocabulary import utcnow

log = structlog.get_logger("daemon.sync")

INTERRUPTED = "interrupted: the process stopped before the run finished"
# A run ended between batches because it was asked to stop (SIGTERM, Ctrl-C): recorded with
# status STOPPED and this error, neither a failure nor a success; the next run resumes.
STOPPED = "stopped"
# Records committed per transaction when the caller does not say (config: ledger.batch_size).
DEFAULT_BATCH_SIZE = 2000
# A group of batches is committed after this long even when it is not full yet.
GROUP_SECONDS = 1.0

@dataclass(frozen=True)
class SyncResult:
    source: str
    run_id: int
    mode: str
    status: str
    seen: int
    changed: int
    skipped: int
    gone: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def stopped(self) -> bool:
        return self.status == STOPPED


# Called after each committed batch with the source and how far its listing has come: the
# connector's Progress when it reports one, else the records committed so far (no total).
ProgressCallback = Callable[[str, Progress], None]
StopCheck = Callable[[], bool]


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


_TWO_DIGITS = [f"{n:02d}" for n in range(60)]


@dataclass(frozen=True)
class _Insert:
    """An INSERT of many rows: the SQL up to VALUES, one row's placeholders, what follows."""

    head: str
    row: str
    tail: str = ""


class _Driver:
    """The hot path of a sync (thousands of rows a second) talks to the database driver
    directly: plain SQL in the driver's placeholder style, values in the form the driver
    takes and gives back. SQLAlchemy's per-value type processing cost more than SQLite's
    own work. The forms match what the ORM writes and reads (UTCDateTime), so both paths
    see the same rows.

    Only placeholders and fixed table and column names are ever spliced into the SQL below
    (hence the S608 exemptions); every value is bound."""

    def __init__(self, session: Session) -> None:
        connection = session.connection()
        self.sqlite = connection.dialect.name == "sqlite"
        self._days: dict[int, str] = {}
        self.mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
        # The driver's own cursor, inside the session's transaction.
        self.cursor = connection.connection.cursor()
        m = self.mark
        self.insert_subjects = _Insert(
            "INSERT INTO subjects (email, first_seen, last_seen) VALUES ", f"({self.marks(3)})",
            " ON CONFLICT (email) DO NOTHING")
        self.insert_forms = _Insert(
            "INSERT INTO email_forms (form, subject_id) VALUES ", f"({self.marks(2)})",
            " ON CONFLICT (form) DO NOTHING")
        self.insert_holdings = _Insert(
            f"INSERT INTO holdings ({', '.join(_INSERTED)}) VALUES ",  # noqa: S608
            f"({self.marks(len(_INSERTED))})")
        # Values one statement may bind: SQLite's limit was 999 before 3.32, 32,766 since.
        self.max_values = (connection.connection.dbapi_connection.getlimit(
            sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if self.sqlite else 65_535)
        assignments = ", ".join(f"{name} = {m}" for name in (*_COMPARED, "last_seen"))
        # A holding back after being gone is held anew from now: first_seen starts its
        # current stint, so that the audit tells a person put back after an erasure.
        self.update_holdings = (
            f"UPDATE holdings SET {assignments}, first_seen = CASE WHEN gone_at IS NULL "  # noqa: S608
            f"THEN first_seen ELSE {m} END, gone_at = NULL WHERE id = {m}")

    def time(self, value: datetime | None) -> Any:
        """A time as stored: SQLite keeps SQLAlchemy's naive-UTC text, PostgreSQL an aware
        timestamp."""
        if value is None:
            return None
        if value.tzinfo is not UTC:
            if value.tzinfo is None:
                raise ValueError("naive datetime given to the ledger; use aware UTC times")
            value = value.astimezone(UTC)
        if not self.sqlite:
            return value
        # "YYYY-MM-DD HH:MM:SS.ffffff" from cached pieces: datetime.isoformat (~2 µs a call)
        # was a fifth of writing a record, three times per record.
        day = self._days.get(ordinal := value.toordinal())
        if day is None:
            day = self._days[ordinal] = value.date().isoformat() + " "
        two, micro = _TWO_DIGITS, value.microsecond
        return (day + two[value.hour] + ":" + two[value.minute] + ":" + two[value.second]
                + (f".{micro:06d}" if micro else ".000000"))

    def marks(self, count: int) -> str:
        return ", ".join([self.mark] * count)

    def subjects_by_email(self, emails: Sequence[str]) -> list[Any]:
        return self._rows(f"SELECT email, id FROM subjects "  # noqa: S608
                          f"WHERE email IN ({self.marks(len(emails))})", emails)

    def held(self, source_id: int, record_type: str, external_ids: Sequence[str],
             columns: Sequence[str]) -> list[Any]:
        """Rows of these holdings, found through the unique (source, type, id) index."""
        return self._rows(
            f"SELECT {', '.join(columns)} FROM holdings WHERE source_id = {self.mark} "  # noqa: S608
            f"AND record_type = {self.mark} AND external_id IN "
            f"({self.marks(len(external_ids))})", (source_id, record_type, *external_ids))

    def touch(self, table: str, ids: Sequence[int], stamp: Any) -> None:
        """last_seen = stamp for these rows of `subjects` or `holdings` (callers pass ids in
        ascending order, chunk after chunk)."""
        assert table in ("subjects", "holdings")  # noqa: S101 - never a caller's text
        rows = f"({self.marks(len(ids))})"
        if not self.sqlite and table == "subjects":
            # Locked in id order: a plain UPDATE locks in the order it finds rows (a table's
            # physical order), and two shops' syncs touching the people they share in two
            # orders deadlock (benchmark 6 did, at 200 shops). NO KEY UPDATE is the UPDATE's
            # own lock: FOR UPDATE would also wait for every batch whose new holdings point
            # at the person (their foreign key's KEY SHARE), and deadlock again.
            rows = (f"(SELECT id FROM subjects WHERE id IN {rows} "  # noqa: S608
                    "ORDER BY id FOR NO KEY UPDATE)")
        self.cursor.execute(
            f"UPDATE {table} SET last_seen = {self.mark} WHERE id IN {rows}",  # noqa: S608
            (stamp, *ids))

    def run_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self.cursor.executemany(sql, rows)

    def insert_many(self, insert: _Insert, rows: list[tuple[Any, ...]]) -> None:
        """New rows, 100 to a statement (fewer where the driver binds fewer values), the rest
        one by one. SQLite writes a statement's rows in one step and lets go of the
        interpreter once rather than per row, and binding is cheaper than executemany's
        (−5 % of a sync's instructions, callgrind). One statement size only: the driver
        keeps each compiled statement, ~0.8 MB for 500 rows of holdings."""
        if not rows:
            return
        per = max(1, min(100, self.max_values // len(rows[0])))
        whole = len(rows) - len(rows) % per
        if whole:
            sql = insert.head + ", ".join([insert.row] * per) + insert.tail
            for start in range(0, whole, per):
                self.cursor.execute(sql, [value for row in rows[start:start + per]
                                          for value in row])
        if whole < len(rows):
            self.cursor.executemany(insert.head + insert.row + insert.tail, rows[whole:])

    def close(self) -> None:
        self.cursor.close()

    def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        self.cursor.execute(sql, tuple(params))
        return self.cursor.fetchall()


def _subject_ids(driver: _Driver, emails: set[str],
                 now: datetime) -> tuple[dict[str, int], set[str]]:
    """Ids of the subjects with these emails, creating the missing ones (race-safe on
    PostgreSQL and SQLite alike: a concurrent insert of the same email is ignored), and the
    emails that were already held."""
    found: dict[str, int] = {}
    ordered = sorted(emails)
    for chunk in _chunks(ordered, 500):
        found.update(driver.subjects_by_email(chunk))
    held = set(found)
    missing = [email for email in ordered if email not in found]
    if missing:
        stamp = driver.time(now)
        driver.insert_many(driver.insert_subjects, [(email, stamp, stamp) for email in missing])
        for chunk in _chunks(missing, 500):
            found.update(driver.subjects_by_email(chunk))
    return found, held


def _parent_subjects(driver: _Driver, source_id: int, records: Iterable[Record],
                     subjects: dict[str, int]) -> dict[str, int]:
    """Subjects of the customers that records without an email belong to: a charge or order
    that carries no email of its own is still that customer's personal data."""
    wanted = {r.parent_id for r in records if not r.email and r.parent_id}
    if not wanted:
        return {}
    found = {r.external_id: subjects[r.email] for r in records
             if r.record_type == "customer" and r.external_id in wanted and r.email in subjects}
    missing = sorted(wanted - found.keys())
    for chunk in _chunks(missing, 500):
        found.update((external_id, subject_id) for external_id, subject_id in driver.held(
            source_id, "customer", chunk, ("external_id", "subject_id"))
            if subject_id is not None)
    return found


# Compared with what is held to tell a changed record from an unchanged one, in this order.
_COMPARED = ("subject_id", "categories", "status", "anonymised", "parent_id", "created_at",
             "last_activity_at", "modified_at", "evidence")
_INSERTED = ("source_id", "record_type", "external_id", *_COMPARED, "first_seen", "last_seen",
             "gone_at")


# Few distinct category sets exist; formatting one per record showed in profiles.
_CATEGORY_TEXTS: dict[frozenset[str], str] = {}


def _categories_text(categories: frozenset[str]) -> str:
    text = _CATEGORY_TEXTS.get(categories)
    if text is None:
        if len(_CATEGORY_TEXTS) > 4096:
            _CATEGORY_TEXTS.clear()
        text = _CATEGORY_TEXTS[categories] = categories_text(categories)
    return text


def _values(driver: _Driver, record: Record, subject_id: int | None) -> tuple[Any, ...]:
    """The compared columns of a record, as the driver stores them."""
    return (
        subject_id,
        _categories_text(record.categories),
        record.status,
        record.anonymised,
        record.parent_id,
        driver.time(record.created_at),
        driver.time(record.last_activity_at),
        driver.time(record.modified_at),
        json.dumps(list(record.evidence)) if record.evidence else None,
    )


# Column widths of daemon/ledger.py: PostgreSQL refuses a longer value (and any NUL byte),
# failing the whole batch, so such a record is skipped, on SQLite too.
_WIDTHS = (("email", 320), ("status", 40), ("external_id", 200), ("parent_id", 200),
           ("record_type", 40))


def _unstorable(record: Record) -> str | None:
    """Why the ledger cannot store this record as it is (the field, never its value), or
    None. Cheap: a few length comparisons and NUL searches on the common path."""
    email, status, parent, ident = record.email, record.status, record.parent_id, \
        record.external_id
    if ((email is None or (len(email) <= 320 and "\0" not in email))
            and (status is None or (len(status) <= 40 and "\0" not in status))
            and len(ident) <= 200 and "\0" not in ident
            and (parent is None or (len(parent) <= 200 and "\0" not in parent))
            and len(record.record_type) <= 40 and "\0" not in record.record_type):
        return None
    for name, width in _WIDTHS:
        value = getattr(record, name)
        if value is not None and len(value) > width:
            return f"{name.replace('_', ' ')} is {len(value):,} characters, more than the " \
                   f"{width} the ledger stores"
        if value is not None and "\0" in value:
            return f"{name.replace('_', ' ')} holds a NUL byte, which the ledger cannot store"
    return None


def _storable(records: Sequence[Record]) -> tuple[Sequence[Record], list[Skip]]:
    """The records the ledger can store, and a Skip for each one it cannot."""
    unfit = [(record, reason) for record in records
             if (reason := _unstorable(record)) is not None]
    if not unfit:
        return records, []
    skipped = {id(record) for record, _ in unfit}
    # An unusable id or type is not named: it is what is wrong.
    skips = [Skip("?" if reason.startswith("record type") else record.record_type,
                  None if reason.startswith("external id") else record.external_id, reason)
             for record, reason in unfit]
    return [r for r in records if id(r) not in skipped], skips


@dataclass
class _Counts:
    seen: int = 0
    changed: int = 0
    skipped: int = 0
    gone: int = 0


def _held(driver: _Driver, source_id: int,
          keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(id, gone_at, *compared) of the holdings with these keys."""
    by_type: dict[str, list[str]] = {}
    for record_type, external_id in keys:
        by_type.setdefault(record_type, []).append(external_id)
    held: dict[tuple[str, str], tuple[Any, ...]] = {}
    columns = ("external_id", "id", "gone_at", *_COMPARED)
    for record_type, external_ids in by_type.items():
        for chunk in _chunks(sorted(external_ids), 500):
            for row in driver.held(source_id, record_type, chunk, columns):
                held[(record_type, row[0])] = tuple(row[1:])
    return held


def upsert_records(session: Session, source_id: int, records: Sequence[Record],
                   now: datetime, *, touch_unchanged: bool) -> int:
    """Insert new holdings, update changed ones (reviving gone ones), leave identical ones
    untouched (or only bump `last_seen` when `touch_unchanged`, for a full listing).
    Returns how many holdings were inserted or changed."""
    latest: dict[tuple[str, str], Record] = {}
    for record in records:
        latest[(record.record_type, record.external_id)] = record
    if not latest:
        return 0
    # Statements below bypass the ORM: whatever it still holds must be written first.
    session.flush()
    driver = _Driver(session)
    try:
        return _upsert(driver, source_id, latest, now, touch_unchanged=touch_unchanged)
    finally:
        driver.close()


def _upsert(driver: _Driver, source_id: int, latest: dict[tuple[str, str], Record],
            now: datetime, *, touch_unchanged: bool) -> int:
    subjects, held_before = _subject_ids(driver, {r.email for r in latest.values() if r.email},
                                         now)
    # The raw forms an erasure must look the person up by; most records have none.
    forms = {(r.email_as_held, subjects[r.email]) for r in latest.values()
             if r.email_as_held is not None and r.email in subjects}
    driver.insert_many(driver.insert_forms, sorted(forms))
    existing = _held(driver, source_id, latest)
    parents = _parent_subjects(driver, source_id, latest.values(), subjects)
    stamp = driver.time(now)
    inserts: list[tuple[Any, ...]] = []
    updates: list[tuple[Any, ...]] = []
    unchanged: list[int] = []
    for key, record in latest.items():
        subject_id = subjects.get(record.email) if record.email else \
            parents.get(record.parent_id or "")
        values = _values(driver, record, subject_id)
        old = existing.get(key)
        if old is not None and record.modified_at is None:
            # No change time upstream (WordPress comments): the ledger's own time of the last
            # status change stands in for it (spam and trash are timed by it).
            changed = stamp if old[4] != values[2] else old[9]
            values = (*values[:7], changed, values[8])
        if old is None:
            inserts.append((source_id, *key, *values, stamp, stamp, None))
        elif old[1] is not None or old[2:] != values:
            updates.append((*values, stamp, stamp, old[0]))
        else:
            unchanged.append(old[0])
    driver.insert_many(driver.insert_holdings, inserts)
    driver.run_many(driver.update_holdings, updates)
    if touch_unchanged:
        for chunk in _chunks(unchanged, 500):
            driver.touch("holdings", chunk, stamp)
    if inserts or updates:
        # Subjects created above were written with last_seen = now already.
        touched = sorted({subjects[r.email] for r in latest.values() if r.email in held_before})
        for chunk in _chunks(touched, 500):
            driver.touch("subjects", chunk, stamp)
    return len(inserts) + len(updates)


def mark_gone(session: Session, source_id: int, keys: Iterable[Key], now: datetime) -> int:
    """Mark these holdings gone (deleted upstream). Returns how many were held."""
    total = 0
    by_type: dict[str, list[str]] = {}
    for key in keys:
        by_type.setdefault(key.record_type, []).append(key.external_id)
    for record_type, external_ids in by_type.items():
        for chunk in _chunks(external_ids, 500):
            total += session.execute(
                update(Holding)
                .where(Holding.source_id == source_id, Holding.record_type == record_type,
                       Holding.external_id.in_(chunk), Holding.gone_at.is_(None))
                .values(gone_at=now)
            ).rowcount
    return total


def link_to_parents(session: Session, source_id: int) -> int:
    """Holdings without an email of their own whose customer was not yet held when they
    were written (lists read side by side, new orders before new accounts): give them their
    customer's subject. Returns how many were linked."""
    parent = aliased(Holding)
    subject = (select(parent.subject_id)
               .where(parent.source_id == Holding.source_id, parent.record_type == "customer",
                      parent.external_id == Holding.parent_id)
               .limit(1).scalar_subquery())
    return session.execute(
        update(Holding)
        .where(Holding.source_id == source_id, Holding.subject_id.is_(None),
               Holding.parent_id.is_not(None), Holding.gone_at.is_(None),
               subject.is_not(None))
        .values(subject_id=subject)
        .execution_options(synchronize_session=False)
    ).rowcount


def mark_unseen_gone(session: Session, source_id: int, record_types: Iterable[str],
                     since: datetime, now: datetime) -> int:
    """After a complete full listing: every holding of those types not seen since the run
    started no longer exists upstream."""
    types = sorted(record_types)
    if not types:
        return 0
    return session.execute(
        update(Holding)
        .where(Holding.source_id == source_id, Holding.record_type.in_(types),
               Holding.gone_at.is_(None), Holding.last_seen < since)
        .values(gone_at=now)
    ).rowcount


def _start_run(ledger: Ledger, connector: Connector, mode: str,
               now: datetime) -> tuple[int, int, str | None]:
    with ledger.session() as session:
        source = ledger.source(session, connector.source, connector.kind)
        if source.gone_at is not None:
            source.gone_at = None
        # The upstream's own name for the source (an audience renamed is renamed here too).
        label = getattr(connector, "label", None)
        if label and label != source.label:
            source.label = label[:200]
        # A run left "running" by a killed process: say so instead of leaving it open. (The
        # daemon and the sync command hold the source's RunLock: no live sync owns it.)
        session.execute(
            update(SyncRun)
            .where(SyncRun.source_id == source.id, SyncRun.status == "running")
            .values(status="failed", error=INTERRUPTED, finished_at=now)
        )
        run = SyncRun(source_id=source.id, mode=mode, started_at=now, status="running",
                      records_seen=0, records_changed=0, records_skipped=0, records_gone=0,
                      cursor_before=source.cursor)
        session.add(run)
        session.flush()
        return source.id, run.id, source.cursor


def _commit_batch(ledger: Ledger, source_id: int, run_id: int, batch: Batch, *,
                  full: bool, started: datetime, counts: _Counts, sweep: bool = True) -> None:
    now = utcnow()
    records, unfit = _storable(batch.records)
    skipped = [*batch.skipped, *unfit] if unfit else batch.skipped
    with ledger.session() as session:
        changed = upsert_records(session, source_id, records, now, touch_unchanged=full)
        # A key the ledger could not have stored is not held: PostgreSQL would refuse it.
        gone = mark_gone(session, source_id, [
            k for k in batch.gone if len(k.external_id) <= 200 and "\0" not in k.external_id
        ], now) if batch.gone else 0
        if batch.complete:
            link_to_parents(session, source_id)
        if full and batch.complete and sweep:
            gone += mark_unseen_gone(session, source_id, batch.listed_types, started, now)
        values: dict[str, Any] = {}
        if batch.cursor is not None:
            session.execute(update(Source).where(Source.id == source_id)
                            .values(cursor=batch.cursor))
            values["cursor_after"] = batch.cursor
        counts.seen += len(records)
        counts.changed += changed
        counts.skipped += len(skipped)
        counts.gone += gone
        session.execute(update(SyncRun).where(SyncRun.id == run_id).values(
            records_seen=counts.seen, records_changed=counts.changed,
            records_skipped=counts.skipped, records_gone=counts.gone, **values))
    for skip in skipped:
        log.warning("sync.skipped", source_record_type=skip.record_type,
                    external_id=skip.external_id, reason=skip.reason)


def _grouped(batches: Iterator[Batch], size: int,
             should_stop: StopCheck | None = None) -> Iterator[Batch]:
    """Consecutive batches merged into one of at least `size` records (a commit costs more
    than a page of rows). A batch that carries a cursor, gone keys or the end of the pull
    closes the group it ends, so what it says still covers everything before it. The first
    batch, a group open for a second and a group when a stop is asked for are committed at
    once (progress shows, a slow source still commits, a stop is not delayed). When the pull
    fails, what was read before the failure is still handed over, then the error."""
    pending: list[Batch] = []
    count = 0
    opened = 0.0
    first = True
    try:
        for batch in batches:
            if not pending:
                opened = time.monotonic()
            pending.append(batch)
            count += len(batch.records)
            if (first or count >= size or batch.cursor is not None or batch.complete
                    or batch.gone or time.monotonic() - opened >= GROUP_SECONDS
                    or (should_stop is not None and should_stop())):
                yield _merged(pending)
                pending, count, first = [], 0, False
    except (APIError, StopWaiting):
        if pending:
            yield _merged(pending)
        raise
    if pending:
        yield _merged(pending)


def _merged(batches: list[Batch]) -> Batch:
    if len(batches) == 1:
        return batches[0]
    last = batches[-1]
    return Batch(records=[r for b in batches for r in b.records], cursor=last.cursor,
                 skipped=[s for b in batches for s in b.skipped], complete=last.complete,
                 listed_types=last.listed_types, gone=last.gone,
                 progress=next((b.progress for b in reversed(batches) if b.progress), None))


def _catch_up(ledger: Ledger, connector: Connector, source_id: int, run_id: int,
              listing: Batch, *, started: datetime, counts: _Counts) -> None:
    """End a complete full listing: first read what changed upstream while it ran, then mark
    gone what neither saw. A record that moved from one listing to another meanwhile
    (WooCommerce's `any` and `trash`, Mailchimp's default and archived) was listed by
    neither, but it changed, so a pull from the listing's cursor has it."""
    for batch in connector.pull(listing.cursor):
        _commit_batch(ledger, source_id, run_id, batch, full=True, started=started,
                      counts=counts, sweep=False)
    with ledger.session() as session:
        counts.gone += mark_unseen_gone(session, source_id, listing.listed_types, started,
                                        utcnow())
        session.execute(update(SyncRun).where(SyncRun.id == run_id)
                        .values(records_gone=counts.gone))


def _finish_run(ledger: Ledger, run_id: int, status: str, error: str | None) -> None:
    with ledger.session() as session:
        # Only a running run: one ended for it (its time limit) keeps the reason it was given.
        ended = session.execute(update(SyncRun).where(
            SyncRun.id == run_id, SyncRun.status == "running").values(
            status=status, error=error, finished_at=utcnow())).rowcount
        run = session.get(SyncRun, run_id) if ended else None
        source = session.get(Source, run.source_id) if run else None
        if run is not None and source is not None:
            trail.append(session, "daemon", "sync", {
                "source": source.name, "run_id": run_id, "mode": run.mode, "status": status,
                "seen": run.records_seen, "changed": run.records_changed,
                "skipped": run.records_skipped, "gone": run.records_gone, "error": error})


def end_runs(ledger: Ledger, name: str, since: datetime, error: str) -> list[int]:
    """End as failed, with `error`, the runs of this configured source (`mailchimp` also
    names its audiences) started since `since` that are still running or were stopped:
    a sync cut short from outside (its time limit, a stop it could not answer). Returns
    their ids."""
    with ledger.session() as session:
        rows = session.execute(
            select(SyncRun, Source.name).join(Source, Source.id == SyncRun.source_id)
            .where((Source.name == name) | Source.name.startswith(f"{name}:", autoescape=True),
                   SyncRun.started_at >= since,
                   (SyncRun.status == "running")
                   | ((SyncRun.status == "failed") & (SyncRun.error == STOPPED)))).all()
        now = utcnow()
        for run, source_name in rows:
            if run.status == "running":
                trail.append(session, "daemon", "sync", {
                    "source": source_name, "run_id": run.id, "mode": run.mode, "status": "failed",
                    "seen": run.records_seen, "changed": run.records_changed,
                    "skipped": run.records_skipped, "gone": run.records_gone, "error": error})
            run.status, run.error = "failed", error
            run.finished_at = run.finished_at or now
        return [run.id for run, _ in rows]


def sync_source(ledger: Ledger, connector: Connector, *, full: bool = False,
                progress: ProgressCallback | None = None,
                should_stop: StopCheck | None = None,
                batch_size: int = DEFAULT_BATCH_SIZE) -> SyncResult:
    """Pull one source into the ledger. Upstream failures end the run as failed (recorded,
    returned); anything else is a bug and is raised after the run is recorded.
    `should_stop`, asked after each committed batch, ends the run early with status STOPPED
    (so does a KeyboardInterrupt, which is then raised): what was committed stays, and the
    cursor points no further than that.
    Consecutive batches are committed together up to `batch_size` records (see _grouped)."""
    mode = "full" if full else "incremental"
    started = utcnow()
    source_id, run_id, cursor = _start_run(ledger, connector, mode, started)
    # Every line logged during the run (HTTP retries too) names the source and the run.
    context = structlog.contextvars.bind_contextvars(source=connector.source, run_id=run_id)
    try:
        return _pull_into(ledger, connector, source_id, run_id, cursor, mode=mode,
                          started=started, progress=progress, should_stop=should_stop,
                          batch_size=batch_size)
    finally:
        structlog.contextvars.reset_contextvars(**context)


def _pull_into(ledger: Ledger, connector: Connector, source_id: int, run_id: int,
               cursor: str | None, *, mode: str, started: datetime,
               progress: ProgressCallback | None, should_stop: StopCheck | None,
               batch_size: int = DEFAULT_BATCH_SIZE) -> SyncResult:
    full = mode == "full"
    bound = log.bind(source=connector.source, run_id=run_id, mode=mode)
    bound.info("sync.start")
    counts = _Counts()
    complete = False
    reported: Progress | None = None
    try:
        batches = connector.pull(None if full else cursor)
        listing: Batch | None = None
        for batch in _grouped(batches, batch_size, should_stop):
            # A complete full listing with a cursor sweeps only after _catch_up.
            if full and batch.complete and batch.cursor is not None:
                listing = batch
            _commit_batch(ledger, source_id, run_id, batch, full=full, started=started,
                          counts=counts, sweep=listing is None)
            complete = complete or batch.complete
            if progress is not None:
                reported = batch.progress or reported
                progress(connector.source, reported or Progress("record", counts.seen, None))
            if should_stop is not None and not batch.complete and should_stop():
                close = getattr(batches, "close", None)
                if close is not None:
                    close()
                return _stopped(ledger, connector, run_id, mode, counts)
        if listing is not None:
            _catch_up(ledger, connector, source_id, run_id, listing, started=started,
                      counts=counts)
    except StopWaiting:
        # Asked to stop while waiting on the upstream (a Retry-After, a backoff).
        return _stopped(ledger, connector, run_id, mode, counts)
    except APIError as exc:
        _finish_run(ledger, run_id, "failed", exc.message)
        bound.error("sync.failed", error=exc.message, seen=counts.seen)
        return SyncResult(connector.source, run_id, mode, "failed", counts.seen,
                          counts.changed, counts.skipped, counts.gone, exc.message)
    except KeyboardInterrupt:
        # Ctrl-C (or a second stop signal) mid-batch: that batch rolled back, the rest stays.
        _stopped(ledger, connector, run_id, mode, counts)
        raise
    except BaseException as exc:
        _finish_run(ledger, run_id, "failed", f"internal error: {type(exc).__name__}")
        raise
    note = None if complete else "listing incomplete: nothing was marked gone"
    _finish_run(ledger, run_id, "success", note)
    bound.info("sync.done", seen=counts.seen, changed=counts.changed, skipped=counts.skipped,
               gone=counts.gone, complete=complete)
    return SyncResult(connector.source, run_id, mode, "success", counts.seen, counts.changed,
                      counts.skipped, counts.gone, note)


def _stopped(ledger: Ledger, connector: Connector, run_id: int, mode: str,
             counts: _Counts) -> SyncResult:
    """End a run that was asked to stop: what was committed stays, the cursor with it."""
    _finish_run(ledger, run_id, STOPPED, STOPPED)
    log.info("sync.stopped", source=connector.source, run_id=run_id, mode=mode,
             seen=counts.seen)
    return SyncResult(connector.source, run_id, mode, STOPPED, counts.seen, counts.changed,
                      counts.skipped, counts.gone, STOPPED)


def reconcile_source(ledger: Ledger, connector: Connector) -> SyncResult:
    """Cheap reconciliation: list every key upstream; when the listing completed, mark the
    holdings it did not list as gone. A failed or partial listing marks nothing."""
    started = utcnow()
    source_id, run_id, _ = _start_run(ledger, connector, "reconcile", started)
    with ledger.sessions() as session:
        held = {(t, e) for t, e in session.execute(
            select(Holding.record_type, Holding.external_id)
            .where(Holding.source_id == source_id, Holding.gone_at.is_(None))).tuples()}
    listed = 0
    complete_types: set[str] = set()
    try:
        for key_batch in connector.list_keys():
            listed += len(key_batch.keys)
            for key in key_batch.keys:
                held.discard((key.record_type, key.external_id))
            if key_batch.complete:
                complete_types |= set(key_batch.listed_types)
    except APIError as exc:
        _finish_run(ledger, run_id, "failed", exc.message)
        return SyncResult(connector.source, run_id, "reconcile", "failed", listed, 0, 0, 0,
                          exc.message)
    except BaseException as exc:
        _finish_run(ledger, run_id, "failed", f"internal error: {type(exc).__name__}")
        raise
    now = utcnow()
    with ledger.session() as session:
        gone = mark_gone(session, source_id,
                         [Key(t, e) for t, e in held if t in complete_types], now)
        session.execute(update(SyncRun).where(SyncRun.id == run_id).values(
            records_seen=listed, records_gone=gone))
    note = None if complete_types else "listing incomplete: nothing was marked gone"
    _finish_run(ledger, run_id, "success", note)
    return SyncResult(connector.source, run_id, "reconcile", "success", listed, 0, 0, gone, note)


@dataclass(frozen=True)
class _Unread:
    # What _start_run needs of a connector, for a source no connector could read.
    source: str
    kind: str


def record_failure(ledger: Ledger, source: str, kind: str, error: str, *,
                   full: bool = False) -> SyncResult:
    """A failed run for a source that could not be read at all (its connector could not be
    built, its key was refused, it does not exist upstream): recorded like any run, so that
    the email shows it the same morning."""
    mode = "full" if full else "incremental"
    _, run_id, _ = _start_run(ledger, _Unread(source, kind), mode, utcnow())  # type: ignore[arg-type]
    _finish_run(ledger, run_id, "failed", error)
    log.error("sync.failed", source=source, run_id=run_id, mode=mode, error=error)
    return SyncResult(source, run_id, mode, "failed", 0, 0, 0, 0, error)


def retire_sources(ledger: Ledger, prefix: str, current: Iterable[str]) -> list[str]:
    """Sources under `prefix` that a complete upstream listing no longer names (an audience
    deleted): mark the source and all its holdings gone. Returns the names retired."""
    keep = set(current)
    now = utcnow()
    retired: list[str] = []
    with ledger.session() as session:
        for source in session.scalars(select(Source).where(
                Source.name.startswith(prefix), Source.gone_at.is_(None))):
            if source.name in keep:
                continue
            source.gone_at = now
            session.execute(update(Holding).where(Holding.source_id == source.id,
                                                  Holding.gone_at.is_(None))
                            .values(gone_at=now))
            retired.append(source.name)
    for name in retired:
        log.warning("sync.source_vanished", source=name)
    return retired


def live_sources(ledger: Ledger, prefix: str) -> list[str]:
    """Names of the sources under `prefix` not marked gone, in name order."""
    with ledger.sessions() as session:
        return list(session.scalars(select(Source.name).where(
            Source.name.startswith(prefix), Source.gone_at.is_(None)).order_by(Source.name)))


def retire_placeholders(ledger: Ledger, names: Iterable[str]) -> list[str]:
    """Sources that only ever stood for something unreadable (`mailchimp` for an account
    whose audiences could not be listed, `mailchimp:<name>` for an audience named in the
    config) once the real sources are read: marked gone, so they stop showing as failed.
    Only sources that hold nothing are touched. Returns the names retired."""
    wanted = sorted(set(names))
    if not wanted:
        return []
    now = utcnow()
    with ledger.session() as session:
        held = select(Holding.id).where(Holding.source_id == Source.id).exists()
        retired = list(session.scalars(select(Source.name).where(
            Source.name.in_(wanted), Source.gone_at.is_(None), ~held)))
        if retired:
            session.execute(update(Source).where(Source.name.in_(retired))
                            .values(gone_at=now))
    return retired
