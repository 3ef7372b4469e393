"""Several daemons on one ledger share its sources: each source is claimed for a cycle by
one daemon (a row of `source_claims`, taken with FOR UPDATE SKIP LOCKED on PostgreSQL), held
by a lease its holder renews while it syncs; a claim whose lease ran out (the daemon died or
hung) is taken over by another daemon in the same cycle. A finished claim is not taken again
in that cycle."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta

import structlog
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from daemon.ledger import Ledger, SourceClaim
from vocabulary import utcnow

log = structlog.get_logger("daemon.claims")


def this_holder() -> str:
    """Who holds a claim: this host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def cycle_of(now: datetime, every: timedelta, kind: str = "round") -> str:
    """The cycle a moment falls in: daemons started in the same interval share it."""
    return f"{kind}:{int(now.timestamp() // max(1.0, every.total_seconds()))}"


class Claims:
    """Claims of one daemon (`holder`) on one ledger."""

    def __init__(self, ledger: Ledger, *, lease: timedelta, holder: str | None = None) -> None:
        self.ledger = ledger
        self.lease = lease
        self.holder = holder or this_holder()

    def _ensure(self, names: Sequence[str]) -> None:
        insert = (postgresql.insert if self.ledger.dialect == "postgresql" else sqlite.insert)
        with self.ledger.sessions() as session, session.begin():
            session.execute(insert(SourceClaim).values([{"source": n} for n in names])
                            .on_conflict_do_nothing(index_elements=["source"]))

    def _open(self, cycle: str, now: datetime) -> object:
        # Not yet claimed in this cycle, or claimed by a daemon whose lease ran out.
        return or_(SourceClaim.cycle.is_(None), SourceClaim.cycle != cycle,
                   and_(SourceClaim.done_at.is_(None), SourceClaim.lease_until < now))

    def claim_next(self, names: Sequence[str], cycle: str) -> str | None:
        """Claim the first source of `names` nobody holds in `cycle`; None when none is left
        open (all done, or held by live daemons)."""
        if not names:
            return None
        self._ensure(names)
        now = utcnow()
        with self.ledger.sessions() as session, session.begin():
            row = session.scalar(
                select(SourceClaim).where(SourceClaim.source.in_(names), self._open(cycle, now))
                .order_by(SourceClaim.source).limit(1).with_for_update(skip_locked=True))
            if row is None:
                return None
            took_over = row.cycle == cycle and row.holder not in (None, self.holder)
            if took_over:
                log.warning("claim.taken_over", source=row.source, cycle=cycle,
                            previous_holder=row.holder)
            row.cycle, row.holder, row.claimed_at = cycle, self.holder, now
            row.lease_until, row.done_at = now + self.lease, None
            return row.source

    def unfinished(self, names: Sequence[str], cycle: str) -> int:
        """Sources of `names` not finished in `cycle` (open, or held by someone)."""
        with self.ledger.sessions() as session:
            done = session.scalar(select(func.count()).select_from(SourceClaim).where(
                SourceClaim.source.in_(names), SourceClaim.cycle == cycle,
                SourceClaim.done_at.is_not(None))) or 0
        return len(set(names)) - done

    def renew(self, source: str, cycle: str) -> bool:
        """Extend our lease; False when the claim is no longer ours."""
        with self.ledger.sessions() as session, session.begin():
            result = session.execute(
                update(SourceClaim).where(SourceClaim.source == source,
                                          SourceClaim.cycle == cycle,
                                          SourceClaim.holder == self.holder)
                .values(lease_until=utcnow() + self.lease))
            return bool(result.rowcount)

    def finish(self, source: str, cycle: str) -> None:
        with self.ledger.sessions() as session, session.begin():
            session.execute(
                update(SourceClaim).where(SourceClaim.source == source,
                                          SourceClaim.cycle == cycle,
                                          SourceClaim.holder == self.holder)
                .values(done_at=utcnow(), lease_until=None))

    @contextmanager
    def holding(self, source: str, cycle: str) -> Iterator[None]:
        """Renew the lease every third of it while the body runs; finish the claim after
        (also when the body failed: a failed sync is recorded, and the cycle moves on)."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(max(0.2, self.lease.total_seconds() / 3)):
                try:
                    if not self.renew(source, cycle):
                        log.warning("claim.lost", source=source, cycle=cycle)
                        return
                except Exception as exc:  # noqa: BLE001 - the next renewal tries again
                    log.warning("claim.renew_failed", source=source, error=type(exc).__name__)

        thread = threading.Thread(target=renew, name=f"lease {source}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
        self.finish(source, cycle)
