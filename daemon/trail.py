"""The audit trail: an append-only, hash-chained log of what the daemon and its operators did
(syncs, audits, emails, exports, erasures, acknowledgements). Each entry holds the hash of
the one before, so an entry altered or removed breaks the chain where it happened.

Entries carry identifiers and counts, never personal values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from connectors.base import utcnow
from daemon.ledger import AuditLogEntry, Ledger

GENESIS = "0" * 64


def _digest(prev_hash: str, at: datetime, actor: str, action: str, detail: str) -> str:
    payload = json.dumps([prev_hash, at.isoformat(), actor, action, detail],
                         separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def _lock(session: Session) -> None:
    """Serialise appenders so that two never chain from the same entry."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7106252271)"))
    else:
        # Any write statement takes SQLite's write lock for the rest of the transaction.
        session.execute(text("UPDATE audit_log SET id = id WHERE 0"))


def append(session: Session, actor: str, action: str, detail: dict[str, Any],
           *, at: datetime | None = None) -> AuditLogEntry:
    """Add one entry inside the caller's transaction (it commits with the work it records)."""
    _lock(session)
    last = session.scalar(select(AuditLogEntry.hash).order_by(AuditLogEntry.id.desc()).limit(1))
    prev_hash = last or GENESIS
    moment = (at or utcnow()).replace(microsecond=0)
    body = json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    entry = AuditLogEntry(at=moment, actor=actor, action=action, detail=body,
                          prev_hash=prev_hash,
                          hash=_digest(prev_hash, moment, actor, action, body))
    session.add(entry)
    session.flush()
    return entry


def record(ledger: Ledger, actor: str, action: str, detail: dict[str, Any]) -> None:
    """Append one entry in a transaction of its own."""
    with ledger.session() as session:
        append(session, actor, action, detail)


@dataclass(frozen=True)
class Verification:
    entries: int
    ok: bool
    first_bad_id: int | None = None
    problem: str | None = None


def verify(ledger: Ledger) -> Verification:
    """Recompute the chain from the first entry; name the first entry that does not fit."""
    expected_prev = GENESIS
    count = 0
    with ledger.sessions() as session:
        rows = session.execute(select(AuditLogEntry).order_by(AuditLogEntry.id)
                               .execution_options(yield_per=1000)).scalars()
        for entry in rows:
            count += 1
            if entry.prev_hash != expected_prev:
                return Verification(count, False, entry.id,
                                    f"entry {entry.id} does not follow the entry before it: "
                                    "an entry before it was altered or removed")
            recomputed = _digest(entry.prev_hash, entry.at, entry.actor, entry.action,
                                 entry.detail)
            if recomputed != entry.hash:
                return Verification(count, False, entry.id,
                                    f"entry {entry.id} ({entry.action} at "
                                    f"{entry.at.isoformat()}) was altered")
            expected_prev = entry.hash
    return Verification(count, True)
