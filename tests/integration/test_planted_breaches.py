"""On the seeded estate, the audit finds exactly the breaches planted in the twins: every
planted one, and nothing on the records planted clean or anywhere else."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.audit import current_findings, run_audit
from daemon.config import load_settings
from daemon.ledger import Ledger
from daemon.sources import sync_configured
from sandbox.demo import RunningEstate
from sandbox.estate import Estate, EstateSpec
from sandbox.seed import build_estate

NOW = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)


@pytest.fixture(params=[(7, ()), (8, ()), (9, ("journal",))],
                ids=["7", "8", "9-with-a-wordpress-site"])
def synced(request: pytest.FixtureRequest, ledger: Ledger, ledger_url: str,
           tmp_path: Path) -> Iterator[tuple[Estate, Ledger]]:
    seed, sites = request.param
    estate = build_estate(EstateSpec(seed=seed, people=150, now=NOW, sites=sites))
    with RunningEstate(estate) as running:
        settings = load_settings(running.write_config(tmp_path, ledger_url=ledger_url))
        results = sync_configured(ledger, settings, full=True)
        assert all(r.ok for r in results), [r.error for r in results]
        # The audit runs at the estate's own "now", with the default policy.
        run_audit(ledger, settings.retention, now=NOW)
        yield estate, ledger


def test_every_planted_breach_is_found_and_nothing_else(
        synced: tuple[Estate, Ledger]) -> None:
    estate, ledger = synced
    expected = {(p.rule, p.source, p.record_type, p.external_id)
                for p in estate.planted if p.rule is not None}
    found = {(f.rule, f.source, f.record_type, f.external_id)
             for f in current_findings(ledger, now=NOW) if f.rule != "sync-stale"}
    assert expected, "the estate planted nothing"
    assert found - expected == set(), "findings on records not planted as breaches"
    assert expected - found == set(), "planted breaches the audit missed"


def test_records_planted_clean_have_no_findings(synced: tuple[Estate, Ledger]) -> None:
    estate, ledger = synced
    clean = {(p.source, p.record_type, p.external_id) for p in estate.planted if p.rule is None}
    assert clean
    flagged = {(f.source, f.record_type, f.external_id) for f in current_findings(ledger, now=NOW)}
    assert clean & flagged == set()
