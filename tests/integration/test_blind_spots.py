"""Blind spots said where the owner looks: `where`, `audit`, `export` and the email name,
above their results, every configured source that was never read, whose last sync failed
(with the reason) or that is stale; a source in good health is not named. The first email
does not speak of a previous one. Against the twins over real HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, update

from daemon import mail
from daemon.cli import main
from daemon.config import load_settings
from daemon.ledger import Holding, Ledger, Source, Subject, SyncRun
from daemon.report import digest_for, render
from daemon.sources import sync_configured
from sandbox.demo import RunningEstate
from sandbox.estate import EstateSpec
from sandbox.seed import build_estate
from vocabulary import utcnow

FAILED = "These results leave out Stripe: its last sync failed at "
NEVER = "These results leave out Mailchimp: it has never been read"
STALE = "These results leave out papercraft (woo:papercraft): it has not been read since "


@pytest.fixture
def running() -> Iterator[RunningEstate]:
    estate = build_estate(EstateSpec(seed=3, people=30, now=utcnow().replace(microsecond=0)))
    with RunningEstate(estate) as live:
        yield live


@pytest.fixture
def blind(running: RunningEstate, ledger_url: str, tmp_path: Path) -> tuple[Path, str]:
    """allmyink synced now, papercraft synced five days ago, Stripe's last sync refused
    (401), Mailchimp never read. Returns the config and an email held in allmyink."""
    config = running.write_config(tmp_path / "etc", ledger_url=ledger_url)
    settings = load_settings(config)
    ledger = Ledger.open(ledger_url)
    try:
        assert all(r.ok for r in sync_configured(ledger, settings, only="woocommerce"))
        stripe = running.servers["stripe"].twin
        stripe.faults.inject("status", times=50, status=401)
        [failed] = sync_configured(ledger, settings, only="stripe")
        stripe.faults.clear()
        assert failed.status == "failed" and failed.error
        with ledger.session() as session:
            paper = session.scalar(select(Source.id).where(Source.name == "woo:papercraft"))
            session.execute(update(SyncRun).where(SyncRun.source_id == paper).values(
                started_at=utcnow() - timedelta(days=5),
                finished_at=utcnow() - timedelta(days=5)))
        with ledger.sessions() as session:
            email = session.scalar(
                select(Subject.email).join(Holding, Holding.subject_id == Subject.id)
                .join(Source, Source.id == Holding.source_id)
                .where(Source.name == "woo:allmyink").order_by(Subject.email).limit(1))
    finally:
        ledger.close()
    assert email
    return config, email


def invoke(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args])


def assert_blind_spots_named_first(lines: list[str], first_result: str) -> None:
    failed = [line for line in lines if line.startswith(FAILED)]
    assert len(failed) == 1 and "401" in failed[0], lines
    assert sum(line.startswith(NEVER) for line in lines) == 1, lines
    assert sum(line.startswith(STALE) for line in lines) == 1, lines
    assert not any("allmyink" in line for line in lines if "leave out" in line)
    result_at = next(i for i, line in enumerate(lines) if line.startswith(first_result))
    assert all(i < result_at for i, line in enumerate(lines) if "leave out" in line)


def test_where_audit_and_export_name_the_blind_spots_above_their_results(
        blind: tuple[Path, str], tmp_path: Path) -> None:
    config, email = blind
    where = invoke(config, "where", email)
    assert where.exit_code == 0, where.output
    assert_blind_spots_named_first(where.stdout.splitlines(), email)

    audit = invoke(config, "audit")
    assert audit.exit_code == 0, audit.output
    lines = audit.stdout.splitlines()
    assert_blind_spots_named_first(lines, next(line for line in lines
                                               if "leave out" not in line))

    export = invoke(config, "export", email, "--out", str(tmp_path / "copy"))
    assert export.exit_code == 0, export.output
    assert_blind_spots_named_first(export.stdout.splitlines(), "wrote ")

    # JSON stays JSON: the blind spots go beside it, to stderr.
    as_json = invoke(config, "where", email, "--json")
    assert as_json.stdout.lstrip().startswith("[")
    assert sum("leave out" in line for line in as_json.stderr.splitlines()) == 3


def test_the_email_names_the_same_blind_spots_and_the_first_one_no_previous_email(
        blind: tuple[Path, str], ledger_url: str) -> None:
    from daemon.report import blind_spots_for

    config, _ = blind
    settings = load_settings(config)
    ledger = Ledger.open(ledger_url)
    try:
        spots = blind_spots_for(ledger, settings)
        digest = digest_for(ledger, settings)
        first = render(digest)
        assert digest.sync_problems == spots
        assert {s.source for s in spots} == {"stripe", "mailchimp", "woo:papercraft"}
        # The text part wraps at 78 columns wherever words fall: read it unwrapped.
        for part in (" ".join(first.text.split()), first.html):
            assert "Stripe: its last sync failed at " in part
            assert "Mailchimp: it has never been read" in part
            assert "papercraft (woo:papercraft): it has not been read since " in part
            assert "previous email" not in part and "last email" not in part
        assert settings.report is None
        mail.enqueue(ledger, first, _report())
        later = render(digest_for(ledger, settings, now=utcnow() + timedelta(hours=1)))
        assert "since the previous email" in " ".join(later.text.split())
    finally:
        ledger.close()


def _report() -> object:
    from daemon.config import ReportSettings

    return ReportSettings(recipients=["owner@example.com"], sender="pl@example.com")
