"""The request register (`privacy-ledger request ...`) and the memory of who was erased.

A request is an access or an erasure request of one person, named only by the trail's keyed
hash (person_ref: "p-" + HMAC-SHA256 of the normalised email under the ledger's own key), never
by email. It is due one calendar month after receipt (GDPR Art. 12(3)); an extension by two
further months is allowed only while the first month runs (the person must be told within
it). `export` and `erase` attach to the person's open request of their kind, or open one.

After a verified erasure the ledger keeps, in `erasures`, the keyed hash and the date and
nothing else. The audit stamps each subject with its keyed hash (subjects.person_ref), so
that the rule erased-person-reappeared is one SQL join: a live holding, first seen after
the erasure, of a subject whose hash was erased. An open request past its due day is the
finding request-overdue.

audit_log: request.open / request.extend (the reason as a digest) / request.close /
request.attach (which export or erasure answered it), each with the register id and person.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Integer, Select, String, cast, func, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from daemon import trail
from daemon.ledger import Erasure, Holding, Ledger, LedgerKey, Request, Source, Subject
from vocabulary import utcnow

PERSON_KEY = "person-ref"
KINDS = ("access", "erasure")
OPEN, CLOSED = "open", "closed"
# The morning email lists these first.
DUE_SOON = timedelta(days=7)
_CHUNK = 5000


class RegisterError(Exception):
    """A register command that cannot be done as asked; the message says why and what to do."""


# -- the person's keyed hash -----------------------------------------------------------------


def person_key(session: Session) -> bytes:
    """The ledger's key for person references, made on first use (race-safe)."""
    value = session.scalar(select(LedgerKey.value).where(LedgerKey.name == PERSON_KEY))
    if value is None:
        make = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        session.execute(make(LedgerKey).values(
            name=PERSON_KEY, value=secrets.token_hex(32), created_at=utcnow(),
        ).on_conflict_do_nothing(index_elements=["name"]))
        value = session.scalar(select(LedgerKey.value).where(LedgerKey.name == PERSON_KEY))
    return bytes.fromhex(str(value))


def keyed_ref(key: bytes, normalised_email: str) -> str:
    """The reference of an already normalised email under the ledger's key."""
    return "p-" + hmac.new(key, normalised_email.encode(), hashlib.sha256).hexdigest()[:32]


# -- dates -----------------------------------------------------------------------------------


def add_months(day: date, months: int) -> date:
    """The same day `months` calendar months later, or that month's last day (31 Jan → 28 Feb)."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def parse_received(value: str | None, now: datetime) -> date:
    """--received as a date: not in the future, and a real date."""
    if value is None:
        return now.date()
    try:
        day = date.fromisoformat(value.strip())
    except ValueError:
        raise RegisterError(f"--received {value!r} is not a date: write YYYY-MM-DD, "
                            "e.g. 2026-11-28") from None
    if day > now.date():
        raise RegisterError(f"--received {day.isoformat()} is in the future (today is "
                            f"{now.date().isoformat()}): give the day the request arrived")
    return day


@dataclass(frozen=True)
class RequestView:
    id: str
    kind: str
    person: str
    received: date
    due: date
    extended: bool
    status: str
    closed: date | None

    def days_left(self, today: date) -> int:
        """Days until the due day (0: due today; negative: overdue)."""
        return (self.due - today).days


def _view(row: Request) -> RequestView:
    return RequestView(row.id, row.kind, row.person, row.received_at.date(), row.due_at.date(),
                       row.extended_at is not None, row.status,
                       row.closed_at.date() if row.closed_at else None)


def _get(session: Session, request_id: str) -> Request:
    row = session.get(Request, request_id.strip().lower())
    if row is None:
        raise RegisterError(f"no request {request_id!r} in the register; "
                            "`privacy-ledger request list --all` lists them")
    return row


def _new(session: Session, kind: str, person: str, received: date, now: datetime,
         actor: str) -> Request:
    if kind not in KINDS:
        raise RegisterError(f"unknown request kind {kind!r}: access or erasure")
    row = Request(id=uuid.uuid4().hex[:12], kind=kind, person=person,
                  received_at=_midnight(received), due_at=_midnight(add_months(received, 1)),
                  status=OPEN, opened_at=now)
    session.add(row)
    session.flush()
    trail.append(session, actor, "request.open", {
        "register": row.id, "kind": kind, "person": person,
        "received": received.isoformat(), "due": row.due_at.date().isoformat()}, at=now)
    return row


def open_request(ledger: Ledger, kind: str, person: str, *, received: date | None = None,
                 now: datetime | None = None, actor: str = "cli") -> RequestView:
    """Register a request of `person` (a person_ref), received on `received` (today)."""
    moment = now or utcnow()
    day = received or moment.date()
    if day > moment.date():
        raise RegisterError(f"the received date {day.isoformat()} is in the future")
    with ledger.session() as session:
        return _view(_new(session, kind, person, day, moment, actor))


def list_requests(ledger: Ledger, *, include_closed: bool = False) -> list[RequestView]:
    """Open requests (all with include_closed), the soonest due first."""
    with ledger.sessions() as session:
        return list(open_requests(session, include_closed=include_closed))


def open_requests(session: Session, *, include_closed: bool = False) -> tuple[RequestView, ...]:
    """The same inside a session (the morning email's)."""
    query = select(Request).order_by(Request.due_at, Request.id)
    if not include_closed:
        query = query.where(Request.status == OPEN)
    return tuple(_view(row) for row in session.scalars(query))


def extend_request(ledger: Ledger, request_id: str, reason: str, *,
                   now: datetime | None = None, actor: str = "cli") -> RequestView:
    """Move the due day two more months: only once, only while the first month runs."""
    moment = now or utcnow()
    why = " ".join(reason.split())
    if not why:
        raise RegisterError("--reason is empty: say why the request is complex (the person "
                            "must be told it)")
    with ledger.session() as session:
        row = _get(session, request_id)
        if row.status != OPEN:
            raise RegisterError(f"request {row.id} is closed: nothing to extend")
        if row.extended_at is not None:
            raise RegisterError(f"request {row.id} was extended already (due "
                                f"{row.due_at.date().isoformat()}): the law allows one "
                                "extension of two months")
        first_month_end = add_months(row.received_at.date(), 1)
        if moment.date() > first_month_end:
            raise RegisterError(
                f"request {row.id} was received on {row.received_at.date().isoformat()}: an "
                f"extension had to be given within the first month (by "
                f"{first_month_end.isoformat()}); it is due since then")
        row.due_at = _midnight(add_months(row.received_at.date(), 3))
        row.extended_at = moment
        row.extension_reason = why
        # The reason may name someone: the append-only trail keeps its digest.
        trail.append(session, actor, "request.extend", {
            "register": row.id, "person": row.person, "due": row.due_at.date().isoformat(),
            "reason_sha256": hashlib.sha256(why.encode()).hexdigest()}, at=moment)
        return _view(row)


def close_request(ledger: Ledger, request_id: str, *, now: datetime | None = None,
                  actor: str = "cli") -> RequestView:
    moment = now or utcnow()
    with ledger.session() as session:
        row = _get(session, request_id)
        if row.status != OPEN:
            raise RegisterError(f"request {row.id} was closed already on "
                                f"{row.closed_at.date().isoformat() if row.closed_at else '?'}")
        row.status, row.closed_at = CLOSED, moment
        trail.append(session, actor, "request.close", {
            "register": row.id, "person": row.person, "kind": row.kind,
            "late": moment.date() > row.due_at.date()}, at=moment)
        return _view(row)


def attach(ledger: Ledger, kind: str, person: str, answered_by: str, *,
           now: datetime | None = None, actor: str = "cli") -> RequestView:
    """The person's open request of this kind (opened now, received today, when none is),
    recorded as answered by the export or erasure `answered_by` (its own request id)."""
    moment = now or utcnow()
    with ledger.session() as session:
        row = session.scalars(select(Request).where(
            Request.person == person, Request.kind == kind, Request.status == OPEN)
            .order_by(Request.received_at)).first()
        if row is None:
            row = _new(session, kind, person, moment.date(), moment, actor)
        trail.append(session, actor, "request.attach", {
            "register": row.id, "person": person, "kind": kind, "answered_by": answered_by},
            at=moment)
        return _view(row)


def trail_count(ledger: Ledger, request_id: str) -> int:
    """How many audit_log entries name this request."""
    from daemon.ledger import AuditLogEntry

    with ledger.sessions() as session:
        return session.scalar(select(func.count()).select_from(AuditLogEntry).where(
            AuditLogEntry.detail.like(f'%"register":"{request_id}"%'))) or 0


# -- the memory of who was erased ------------------------------------------------------------


def remember_erasure(session: Session, person: str, at: datetime) -> None:
    """Keep the keyed hash and the date of a verified erasure (the latest date wins)."""
    row = session.get(Erasure, person)
    if row is None:
        session.add(Erasure(person=person, erased_at=at))
    elif row.erased_at < at:
        row.erased_at = at


def stamp_subjects(session: Session) -> int:
    """Give every subject without one its keyed hash (the audit runs this first, so the
    reappearance rule is a join). Returns how many were stamped."""
    if session.scalar(select(func.count()).select_from(Erasure)) == 0:
        return 0
    key = person_key(session)
    rows = session.execute(select(Subject.id, Subject.email)
                           .where(Subject.person_ref.is_(None))).all()
    # One executemany per chunk (an UPDATE by primary key), not a statement per subject.
    for start in range(0, len(rows), _CHUNK):
        session.execute(update(Subject), [
            {"id": ident, "person_ref": keyed_ref(key, email)}
            for ident, email in rows[start:start + _CHUNK]])
    return len(rows)


def _text(value: str) -> Any:
    return literal_column("'" + value.replace("'", "''") + "'", String)


def reappeared_query(policy: Any, now: datetime, dialect: str | None) -> Select[Any]:
    """Live holdings first seen after their person's erasure (rule erased-person-reappeared).
    The detail says where and how long after; the email template adds the record."""
    days = func.floor(_epoch_days(Holding.first_seen, dialect)
                      - _epoch_days(Erasure.erased_at, dialect))
    detail = (_text("re-imported into ") + func.coalesce(Source.label, Source.name) + _text(" ")
              + cast(cast(days, Integer), String) + _text(" day(s) after erasure (erased ")
              + func.substr(cast(Erasure.erased_at, String), 1, 10) + _text(")"))
    return (select((_text("holding:") + cast(Holding.id, String)).label("target"),
                   Holding.id.label("holding_id"), Holding.subject_id.label("subject_id"),
                   Holding.source_id.label("source_id"), detail.label("detail"))
            .select_from(Holding).join(Source, Source.id == Holding.source_id)
            .join(Subject, Subject.id == Holding.subject_id)
            .join(Erasure, Erasure.person == Subject.person_ref)
            .where(Holding.gone_at.is_(None), Source.gone_at.is_(None),
                   Holding.first_seen > Erasure.erased_at))


def _epoch_days(column: Any, dialect: str | None) -> Any:
    if dialect == "postgresql":
        return func.extract("epoch", column) / 86400.0
    return func.julianday(column)


def overdue_query(policy: Any, now: datetime, dialect: str | None) -> Select[Any]:
    """Open requests past their due day (rule request-overdue)."""
    end_of_due_day = now - timedelta(days=1)
    detail = (Request.kind + _text(" request received ")
              + func.substr(cast(Request.received_at, String), 1, 10)
              + _text(", due ") + func.substr(cast(Request.due_at, String), 1, 10))
    return (select((_text("request:") + Request.id).label("target"),
                   cast(None, Integer).label("holding_id"),
                   cast(None, Integer).label("subject_id"),
                   cast(None, Integer).label("source_id"), detail.label("detail"))
            .where(Request.status == OPEN, Request.due_at <= end_of_due_day))
