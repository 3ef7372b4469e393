"""The ledger: SQLAlchemy 2.0 models of who is held where, which categories, since when, and
the queries other modules share. It stores the email and the *categories* held — never a
name, address, phone, IP, note or card number.

SQLite (WAL, file mode 0600) is the embedded default; PostgreSQL by URL. The schema is
owned by Alembic (daemon/migrations) and brought up to date when the ledger is opened.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class LedgerError(Exception):
    """The ledger cannot be opened or used; the message says which and what to do."""


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Subject(Base):
    __tablename__ = "subjects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    # The person's keyed hash (daemon/requests.py), stamped by the audit: matches erasures.
    person_ref: Mapped[str | None] = mapped_column(String(40), index=True)


class EmailForm(Base):
    """An email exactly as a system holds it, where that differs from the subject's
    normalised key (other case, decomposed accents): Stripe's email filter matches exactly
    and Mailchimp hashes what it holds, so an erasure looks the person up by every form."""

    __tablename__ = "email_forms"
    __table_args__ = (Index("ix_email_forms_subject", "subject_id"),)

    form: Mapped[str] = mapped_column(String(320), primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id"))


class Source(Base):
    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(40))
    # The name the owner knows the source by, when its ledger name holds an id (an audience).
    label: Mapped[str | None] = mapped_column(String(200))
    # Opaque to the ledger: the connector's own incremental position.
    cursor: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Set when the source itself vanished upstream (an audience deleted).
    gone_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class SourceClaim(Base):
    """Which daemon syncs a source in a cycle, when several share one ledger: a claim
    taken with FOR UPDATE SKIP LOCKED, held by a lease the holder renews; a lease run out
    (its daemon died) lets another daemon take the source over in the same cycle."""

    __tablename__ = "source_claims"

    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    cycle: Mapped[str | None] = mapped_column(String(64))
    holder: Mapped[str | None] = mapped_column(String(200))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Holding(Base):
    __tablename__ = "holdings"
    __table_args__ = (
        UniqueConstraint("source_id", "record_type", "external_id", name="uq_holding_key"),
        Index("ix_holdings_subject", "subject_id"),
        Index("ix_holdings_source_seen", "source_id", "record_type", "last_seen"),
        # The audit finds a customer's orders and charges by their parent id.
        Index("ix_holdings_parent", "source_id", "record_type", "parent_id"),
        # The email's matrix and the card-number rule read the live holdings from this
        # index alone (migration 0009): many times faster than the table at 10 M holdings.
        Index("ix_holdings_live", "source_id", "categories", "subject_id",
              sqlite_where=text("gone_at IS NULL"), postgresql_where=text("gone_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    record_type: Mapped[str] = mapped_column(String(40))
    external_id: Mapped[str] = mapped_column(String(200))
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("subjects.id"))
    # Sorted category names wrapped in commas (",email,name,") so that one LIKE finds one.
    categories: Mapped[str] = mapped_column(String(400))
    status: Mapped[str | None] = mapped_column(String(40))
    anonymised: Mapped[bool] = mapped_column(Boolean, default=False)
    parent_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_activity_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    modified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # JSON list of non-personal facts ("card number pattern in customer_note").
    evidence: Mapped[str | None] = mapped_column(Text)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    gone_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class SyncRun(Base):
    __tablename__ = "sync_runs"
    __table_args__ = (Index("ix_sync_runs_source_started", "source_id", "started_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    mode: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # running, success, failed (a run still "running" after its process died is abandoned).
    status: Mapped[str] = mapped_column(String(20))
    records_seen: Mapped[int] = mapped_column(Integer, default=0)
    records_changed: Mapped[int] = mapped_column(Integer, default=0)
    records_skipped: Mapped[int] = mapped_column(Integer, default=0)
    records_gone: Mapped[int] = mapped_column(Integer, default=0)
    cursor_before: Mapped[str | None] = mapped_column(Text)
    cursor_after: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


class Finding(Base):
    __tablename__ = "findings"
    __table_args__ = (UniqueConstraint("rule", "target", name="uq_finding_target"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule: Mapped[str] = mapped_column(String(60))
    # "holding:<id>", "subject:<id>" or "source:<id>": one finding per rule and target.
    target: Mapped[str] = mapped_column(String(100))
    holding_id: Mapped[int | None] = mapped_column(ForeignKey("holdings.id"))
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("subjects.id"))
    source_id: Mapped[int | None] = mapped_column(ForeignKey("sources.id"))
    severity: Mapped[str] = mapped_column(String(20))
    first_detected: Mapped[datetime] = mapped_column(UTCDateTime())
    last_detected: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    detail: Mapped[str | None] = mapped_column(Text)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ack_reason: Mapped[str | None] = mapped_column(Text)
    ack_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuditLogEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(60))
    detail: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class OutboxMessage(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status_next", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(40))
    recipients: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(String(300), unique=True)
    # pending, sending, sent.
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)


class LedgerKey(Base):
    """Secrets the ledger keeps for its own use, e.g. the key that names people in audit_log
    by a keyed hash instead of their email (daemon/access.py)."""

    __tablename__ = "ledger_keys"

    name: Mapped[str] = mapped_column(String(60), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Request(Base):
    """An access or erasure request: the person by keyed hash only (daemon/requests.py)."""

    __tablename__ = "requests"
    __table_args__ = (Index("ix_requests_person_status", "person", "status"),)

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    person: Mapped[str] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    extended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    extension_reason: Mapped[str | None] = mapped_column(Text)
    # open, closed.
    status: Mapped[str] = mapped_column(String(20))
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Erasure(Base):
    """Who was erased: the keyed hash of the normalised email and the date, nothing else."""

    __tablename__ = "erasures"

    person: Mapped[str] = mapped_column(String(40), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ShopPlugin(Base):
    """A plugin active on a shop when it was last read (system_status): the promise rules
    match it against the plugin catalogue. Only the shop's own words, no personal data."""

    __tablename__ = "shop_plugins"
    __table_args__ = (UniqueConstraint("source_id", "plugin", name="uq_shop_plugin"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    # The plugin's path (facebook-for-woocommerce/facebook-for-woocommerce.php) and slug.
    plugin: Mapped[str] = mapped_column(String(300))
    slug: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(300))
    version: Mapped[str | None] = mapped_column(String(60))
    read_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ShopOption(Base):
    """One of a shop's own privacy settings as last read: a clean-up period (seconds; NULL
    when off) or a yes/no; `readable` false when the shop's API would not give it."""

    __tablename__ = "shop_options"

    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"), primary_key=True)
    option: Mapped[str] = mapped_column(String(100), primary_key=True)
    readable: Mapped[bool] = mapped_column(Boolean)
    period_seconds: Mapped[int | None] = mapped_column(Integer)
    # The setting as the shop shows it ("24 months", "yes", "off").
    value: Mapped[str | None] = mapped_column(String(100))
    read_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ShopRead(Base):
    """Whether the last read of one part of a shop (plugins, settings, retention) worked,
    and if not why (which permission the key lacks)."""

    __tablename__ = "shop_reads"

    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"), primary_key=True)
    part: Mapped[str] = mapped_column(String(40), primary_key=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[str | None] = mapped_column(Text)
    read_at: Mapped[datetime] = mapped_column(UTCDateTime())


def categories_text(categories: Sequence[str] | frozenset[str]) -> str:
    """The stored form of a category set: sorted, comma-wrapped."""
    return "," + ",".join(sorted(str(c) for c in categories)) + "," if categories else ","


def categories_of(text: str | None) -> list[str]:
    return [c for c in (text or "").split(",") if c]


@dataclass(frozen=True)
class HoldingView:
    """One holding as commands show it."""

    source: str
    record_type: str
    external_id: str
    email: str | None
    categories: list[str]
    status: str | None
    anonymised: bool
    created_at: datetime | None
    last_activity_at: datetime | None
    first_seen: datetime
    last_seen: datetime
    gone_at: datetime | None
    evidence: list[str]


def _prepare_sqlite_file(url: str) -> None:
    database = make_url(url).database
    if not database or database == ":memory:":
        return
    path = Path(database)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Create it private before SQLite does: it holds emails. WAL files inherit the mode.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise LedgerError(f"cannot create the ledger file {path}: {exc.strerror}. Check "
                          "that the state directory exists and is writable.") from None


def _bind_quickly() -> None:
    """sqlite3 binds None and bool through its adapter lookup, which raises and clears an
    AttributeError for each value (~190 ns; a holdings row binds four, a twentieth of a
    sync's instructions). Registered, each is found in one dict lookup (~70 ns). What is
    stored does not change: NULL, and 0 or 1. (The registry is the module's, process-wide.)"""
    sqlite3.register_adapter(bool, int)
    # dict.get of an empty dict: None for any value, without a Python frame per value.
    sqlite3.register_adapter(type(None), {}.get)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        _prepare_sqlite_file(url)
        _bind_quickly()
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


# The newest migration's revision (a test checks it against daemon/migrations).
SCHEMA_REVISION = "0009_live_holdings"




def schema_revision(engine: Engine) -> str | None:
    """The revision the ledger's schema is at; None for a ledger without one."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision. A current ledger is only read: Alembic is
    loaded when there is something to do (it costs the daemon a tenth of its memory)."""
    if schema_revision(engine) == SCHEMA_REVISION:
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "daemon:migrations")
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Daemons starting together on a new ledger migrate in turn; the lock ends with
            # the transaction, and the next one finds the schema current.
            connection.execute(text(
                "SELECT pg_advisory_xact_lock(hashtext(current_database() || '.' || "
                "current_schema() || :job))"), {"job": "/migrate"})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def describe_url(url: str) -> str:
    """The URL without its password, for messages."""
    return make_url(url).render_as_string(hide_password=True)


class Ledger:
    """An open ledger: an engine and a session factory."""

    def __init__(self, engine: Engine, seal: Any = None) -> None:
        self.engine = engine
        # The audit trail's key and anchor file (daemon/trail.Seal): kept outside the database.
        self.seal = seal
        self.sessions = sessionmaker(engine, expire_on_commit=False, info={"trail_seal": seal})

    @classmethod
    def open(cls, url: str, *, migrate_schema: bool = True, seal: Any = None) -> Ledger:
        try:
            engine = make_engine(url)
            if migrate_schema:
                migrate(engine)
            else:
                with engine.connect():
                    pass
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise LedgerError(f"cannot open the ledger at {describe_url(url)}: {reason}") \
                from None
        return cls(engine, seal)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self.sessions() as session, session.begin():
            yield session

    def refresh_statistics(self) -> bool:
        """The audit's plans rest on the statistics ANALYZE keeps: without them SQLite scans
        every holding for each rule, and PostgreSQL plans nested loops over millions of rows
        it believes are a few (an agency's first audit after its first full round ran for
        minutes). SQLite keeps none by itself; PostgreSQL's autovacuum does, when it is on
        and has caught up. Analyzed when a table has none, or has changed by a tenth since
        (autovacuum's own threshold). True when it analyzed."""
        if self.dialect == "postgresql":
            return self._refresh_postgresql_statistics()
        with self.engine.connect() as connection:
            analyzed = connection.execute(text(
                "SELECT stat FROM sqlite_master m JOIN sqlite_stat1 s ON s.tbl = m.name "
                "WHERE m.name = 'holdings' LIMIT 1")).scalar() \
                if connection.execute(text("SELECT 1 FROM sqlite_master WHERE "
                                           "name = 'sqlite_stat1'")).scalar() else None
            rows = connection.execute(text("SELECT max(rowid) FROM holdings")).scalar() or 0
            then = int(str(analyzed).split()[0]) if analyzed else None
            if then is not None and rows <= then * 1.1:
                return False
            connection.execute(text("ANALYZE"))
            connection.commit()
        return True

    def _refresh_postgresql_statistics(self) -> bool:
        with self.engine.connect() as connection:
            stale = connection.execute(text(
                "SELECT relname FROM pg_stat_user_tables WHERE relid = ANY(ARRAY["
                "'holdings'::regclass, 'subjects'::regclass, 'findings'::regclass, "
                "'sources'::regclass]) AND (coalesce(last_analyze, last_autoanalyze) IS NULL "
                "OR n_mod_since_analyze > 50 + n_live_tup / 10)")).scalars().all()
            if not stale:
                return False
            # Names from the catalogue's answer to the four above, never a caller's text.
            connection.execute(text(f"ANALYZE {', '.join(sorted(stale))}"))
            connection.commit()
        return True

    def source(self, session: Session, name: str, kind: str) -> Source:
        """The source row of that name, created on first use."""
        found = session.scalar(select(Source).where(Source.name == name))
        if found is None:
            found = Source(name=name, kind=kind, created_at=datetime.now(UTC))
            session.add(found)
            session.flush()
        return found

    def holdings_for(self, email: str, *, include_gone: bool = True) -> list[HoldingView]:
        """Every holding of one person, across every source."""
        query = (
            select(Holding, Source.name, Subject.email)
            .join(Source, Source.id == Holding.source_id)
            .join(Subject, Subject.id == Holding.subject_id)
            .where(Subject.email == email)
            .order_by(Source.name, Holding.record_type, Holding.external_id)
        )
        if not include_gone:
            query = query.where(Holding.gone_at.is_(None))
        with self.sessions() as session:
            return [
                HoldingView(
                    source=source, record_type=h.record_type, external_id=h.external_id,
                    email=subject_email, categories=categories_of(h.categories),
                    status=h.status, anonymised=h.anonymised, created_at=h.created_at,
                    last_activity_at=h.last_activity_at, first_seen=h.first_seen,
                    last_seen=h.last_seen, gone_at=h.gone_at,
                    evidence=json.loads(h.evidence) if h.evidence else [],
                )
                for h, source, subject_email in session.execute(query).all()
            ]
