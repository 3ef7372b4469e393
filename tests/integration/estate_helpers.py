"""Helpers shared by the estate-level tests: the twins' ground truth and the ledger's view of
it, in one comparable shape."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from daemon.config import Settings, load_settings
from daemon.ledger import Holding, Ledger, Source, Subject
from sandbox.demo import RunningEstate
from sandbox.estate import Estate

Row = tuple[str, str, str, str | None]


def settings_for(running: RunningEstate, directory: Path, ledger_url: str) -> Settings:
    """The settings of a config written for the running estate, into that ledger."""
    return load_settings(running.write_config(directory, ledger_url=ledger_url))


def estate_truth(estate: Estate) -> set[Row]:
    """(source, record type, id, email) of everything the twins hold now."""
    truth: set[Row] = set()
    for name, twin in estate.shops.items():
        truth |= {(f"woo:{name}", *row) for row in twin.ground_truth()}
    truth |= {("stripe", *row) for row in estate.stripe.ground_truth()}
    for source in estate.mailchimp.sources():
        truth |= {(source, *row) for row in estate.mailchimp.ground_truth(source)}
    return truth


def ledger_truth(ledger: Ledger) -> set[Row]:
    """The same shape from the ledger: live holdings only."""
    query = (select(Source.name, Holding.record_type, Holding.external_id, Subject.email)
             .join(Source, Source.id == Holding.source_id)
             .outerjoin(Subject, Subject.id == Holding.subject_id)
             .where(Holding.gone_at.is_(None)))
    with ledger.sessions() as session:
        return {tuple(row) for row in session.execute(query)}  # type: ignore[misc]


def holding_count(ledger: Ledger) -> int:
    with ledger.sessions() as session:
        return len(session.scalars(select(Holding.id).where(Holding.gone_at.is_(None))).all())
