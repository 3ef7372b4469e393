"""Runs one connector into the ledger: batches upserted one transaction each, the cursor
moved only inside the transaction of what it covers, holdings marked gone only after a
listing completed, and every run recorded in `sync_runs`.

A run killed at any point leaves the ledger consistent: committed batches stay, the cursor
still points before anything uncommitted, and the next run re-reads from there (upserts are
idempotent, so re-reading changes nothing).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from connectors.base import Batch, Connector, Key, Record, utcnow
from connectors.http import APIError
from daemon import trail
from daemon.ledger import Holding, Ledger, Source, Subject, SyncRun, categories_text

log = structlog.get_logger("daemon.sync")

INTERRUPTED = "interrupted: the process stopped before the run finished"
# A run ended between batches because the daemon was asked to stop; the next run resumes.
STOPPED = "stopped"

_COMPARED = ("subject_id", "categories", "status", "anonymised", "parent_id", "created_at",
             "last_activity_at", "modified_at", "evidence")


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


ProgressCallback = Callable[[str, int], None]
StopCheck = Callable[[], bool]


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _subject_ids(session: Session, emails: set[str], now: datetime) -> dict[str, int]:
    """Ids of the subjects with these emails, creating the missing ones (race-safe on
    PostgreSQL and SQLite alike: a concurrent insert of the same email is ignored)."""
    found: dict[str, int] = {}
    ordered = sorted(emails)
    for chunk in _chunks(ordered, 500):
        found.update(session.execute(
            select(Subject.email, Subject.id).where(Subject.email.in_(chunk))).tuples().all())
    missing = [email for email in ordered if email not in found]
    if missing:
        dialect = session.get_bind().dialect.name
        make = pg_insert if dialect == "postgresql" else sqlite_insert
        statement = make(Subject).on_conflict_do_nothing(index_elements=["email"])
        session.execute(statement, [{"email": e, "first_seen": now, "last_seen": now}
                                    for e in missing])
        for chunk in _chunks(missing, 500):
            found.update(session.execute(
                select(Subject.email, Subject.id).where(Subject.email.in_(chunk)))
                .tuples().all())
    return found


def _parent_subjects(session: Session, source_id: int, records: Iterable[Record],
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
        found.update(session.execute(
            select(Holding.external_id, Holding.subject_id)
            .where(Holding.source_id == source_id, Holding.record_type == "customer",
                   Holding.external_id.in_(chunk), Holding.subject_id.is_not(None))
        ).tuples().all())
    return found


def _row(record: Record, source_id: int, subject_id: int | None) -> dict[str, Any]:
    return {
        "source_id": source_id,
        "record_type": record.record_type,
        "external_id": record.external_id,
        "subject_id": subject_id,
        "categories": categories_text(record.categories),
        "status": record.status,
        "anonymised": record.anonymised,
        "parent_id": record.parent_id,
        "created_at": record.created_at,
        "last_activity_at": record.last_activity_at,
        "modified_at": record.modified_at,
        "evidence": json.dumps(list(record.evidence)) if record.evidence else None,
    }


@dataclass
class _Counts:
    seen: int = 0
    changed: int = 0
    skipped: int = 0
    gone: int = 0


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
    subjects = _subject_ids(session, {r.email for r in latest.values() if r.email}, now)
    existing: dict[tuple[str, str], Any] = {}
    ids = sorted({external_id for _, external_id in latest})
    for chunk in _chunks(ids, 500):
        for row in session.execute(
            select(Holding.id, Holding.record_type, Holding.external_id, Holding.gone_at,
                   *(getattr(Holding, name) for name in _COMPARED))
            .where(Holding.source_id == source_id, Holding.external_id.in_(chunk))
        ):
            existing[(row.record_type, row.external_id)] = row
    parents = _parent_subjects(session, source_id, latest.values(), subjects)
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    unchanged: list[int] = []
    for key, record in latest.items():
        subject_id = subjects.get(record.email) if record.email else \
            parents.get(record.parent_id or "")
        values = _row(record, source_id, subject_id)
        old = existing.get(key)
        if old is None:
            inserts.append({**values, "first_seen": now, "last_seen": now, "gone_at": None})
        elif old.gone_at is not None or any(getattr(old, n) != values[n] for n in _COMPARED):
            updates.append({**values, "id": old.id, "last_seen": now, "gone_at": None})
        else:
            unchanged.append(old.id)
    if inserts:
        session.execute(insert(Holding), inserts)
    if updates:
        session.execute(update(Holding), updates)
    if touch_unchanged and unchanged:
        for chunk in _chunks(unchanged, 500):
            session.execute(update(Holding).where(Holding.id.in_(chunk)).values(last_seen=now))
    touched = [subjects[r.email] for r in latest.values() if r.email in subjects]
    if inserts or updates:
        for chunk in _chunks(sorted(set(touched)), 500):
            session.execute(update(Subject).where(Subject.id.in_(chunk)).values(last_seen=now))
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
        # A run left "running" by a killed process: say so instead of leaving it open.
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
                  full: bool, started: datetime, counts: _Counts) -> None:
    now = utcnow()
    with ledger.session() as session:
        changed = upsert_records(session, source_id, batch.records, now,
                                    touch_unchanged=full)
        gone = mark_gone(session, source_id, batch.gone, now) if batch.gone else 0
        if full and batch.complete:
            gone += mark_unseen_gone(session, source_id, batch.listed_types, started, now)
        values: dict[str, Any] = {}
        if batch.cursor is not None:
            session.execute(update(Source).where(Source.id == source_id)
                            .values(cursor=batch.cursor))
            values["cursor_after"] = batch.cursor
        counts.seen += len(batch.records)
        counts.changed += changed
        counts.skipped += len(batch.skipped)
        counts.gone += gone
        session.execute(update(SyncRun).where(SyncRun.id == run_id).values(
            records_seen=counts.seen, records_changed=counts.changed,
            records_skipped=counts.skipped, records_gone=counts.gone, **values))
    for skip in batch.skipped:
        log.warning("sync.skipped", source_record_type=skip.record_type,
                    external_id=skip.external_id, reason=skip.reason)


def _finish_run(ledger: Ledger, run_id: int, status: str, error: str | None) -> None:
    with ledger.session() as session:
        session.execute(update(SyncRun).where(SyncRun.id == run_id).values(
            status=status, error=error, finished_at=utcnow()))
        run = session.get(SyncRun, run_id)
        source = session.get(Source, run.source_id) if run else None
        if run is not None and source is not None:
            trail.append(session, "daemon", "sync", {
                "source": source.name, "run_id": run_id, "mode": run.mode, "status": status,
                "seen": run.records_seen, "changed": run.records_changed,
                "skipped": run.records_skipped, "gone": run.records_gone, "error": error})


def sync_source(ledger: Ledger, connector: Connector, *, full: bool = False,
                progress: ProgressCallback | None = None,
                should_stop: StopCheck | None = None) -> SyncResult:
    """Pull one source into the ledger. Upstream failures end the run as failed (recorded,
    returned); anything else is a bug and is raised after the run is recorded.
    `should_stop`, asked after each committed batch, ends the run early as failed with
    STOPPED: what was committed stays, and the cursor points no further than that."""
    mode = "full" if full else "incremental"
    started = utcnow()
    source_id, run_id, cursor = _start_run(ledger, connector, mode, started)
    # Every line logged during the run (HTTP retries too) names the source and the run.
    context = structlog.contextvars.bind_contextvars(source=connector.source, run_id=run_id)
    try:
        return _pull_into(ledger, connector, source_id, run_id, cursor, mode=mode,
                          started=started, progress=progress, should_stop=should_stop)
    finally:
        structlog.contextvars.reset_contextvars(**context)


def _pull_into(ledger: Ledger, connector: Connector, source_id: int, run_id: int,
               cursor: str | None, *, mode: str, started: datetime,
               progress: ProgressCallback | None, should_stop: StopCheck | None) -> SyncResult:
    full = mode == "full"
    bound = log.bind(source=connector.source, run_id=run_id, mode=mode)
    bound.info("sync.start")
    counts = _Counts()
    complete = False
    try:
        batches = connector.pull(None if full else cursor)
        for batch in batches:
            _commit_batch(ledger, source_id, run_id, batch, full=full, started=started,
                          counts=counts)
            complete = complete or batch.complete
            if progress is not None:
                progress(connector.source, counts.seen)
            if should_stop is not None and not batch.complete and should_stop():
                close = getattr(batches, "close", None)
                if close is not None:
                    close()
                _finish_run(ledger, run_id, "failed", STOPPED)
                bound.info("sync.stopped", seen=counts.seen)
                return SyncResult(connector.source, run_id, mode, "failed", counts.seen,
                                  counts.changed, counts.skipped, counts.gone, STOPPED)
    except APIError as exc:
        _finish_run(ledger, run_id, "failed", exc.message)
        bound.error("sync.failed", error=exc.message, seen=counts.seen)
        return SyncResult(connector.source, run_id, mode, "failed", counts.seen,
                          counts.changed, counts.skipped, counts.gone, exc.message)
    except BaseException as exc:
        _finish_run(ledger, run_id, "failed", f"internal error: {type(exc).__name__}")
        raise
    note = None if complete else "listing incomplete: nothing was marked gone"
    _finish_run(ledger, run_id, "success", note)
    bound.info("sync.done", seen=counts.seen, changed=counts.changed, skipped=counts.skipped,
               gone=counts.gone, complete=complete)
    return SyncResult(connector.source, run_id, mode, "success", counts.seen, counts.changed,
                      counts.skipped, counts.gone, note)


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
