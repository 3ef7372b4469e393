"""A record the ledger cannot store, served by the twins over real HTTP: a NUL byte in a
WooCommerce role, a role wider than its column, an email over 320 characters in Stripe. It
is skipped with its reason; the rest of its source and every later source sync, on SQLite
and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from daemon.ledger import Ledger
from daemon.sources import sync_configured
from sandbox.demo import RunningEstate
from sandbox.estate import EstateSpec
from sandbox.seed import build_estate
from tests.integration.estate_helpers import estate_truth, ledger_truth, settings_for

NOW = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
LONG_EMAIL = "x" * 330 + "@example.com"
NUL_ROLE = "subscr\x00iber"
WIDE_ROLE = "a-role-from-a-membership-plugin-that-is-long"


@pytest.fixture
def running() -> Iterator[RunningEstate]:
    estate = build_estate(EstateSpec(seed=5, people=40, now=NOW))
    with RunningEstate(estate) as live:
        yield live


def test_records_the_ledger_cannot_store_are_skipped_and_every_source_syncs(
        running: RunningEstate, ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    first_shop = running.estate.shops[sorted(running.estate.shops)[0]]
    nul = first_shop.add_customer(email="nul.role@example.com", role=NUL_ROLE)
    wide = first_shop.add_customer(email="wide.role@example.com", role=WIDE_ROLE)
    fine = first_shop.add_customer(email="fine@example.com")
    stripe = running.estate.stripe
    long_one = stripe.add_customer(email=LONG_EMAIL, name="Long Email")
    settings = settings_for(running, tmp_path, ledger_url)

    # With the bindings every line carries in production (the source, the run).
    with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]) as logs:
        results = sync_configured(ledger, settings, full=True)
    assert results and all(r.ok for r in results), [(r.source, r.error) for r in results]
    by_source = {r.source: r for r in results}
    assert by_source[f"woo:{sorted(running.estate.shops)[0]}"].skipped == 2
    assert by_source["stripe"].skipped >= 1
    assert any(r.source.startswith("mailchimp:") for r in results)

    unstorable = {(first_shop.source, "customer", str(nul)),
                  (first_shop.source, "customer", str(wide)),
                  ("stripe", "customer", long_one)}
    held = ledger_truth(ledger)
    assert not {row[:3] for row in held} & unstorable
    assert (first_shop.source, "customer", str(fine), "fine@example.com") in held
    # Everything else is exactly what the twins hold.
    assert held == {row for row in estate_truth(running.estate) if row[:3] not in unstorable}

    skipped = [e for e in logs if e["event"] == "sync.skipped"]
    reasons = {(e.get("source"), e["external_id"]): e["reason"] for e in skipped}
    assert "status holds a NUL byte" in reasons[(first_shop.source, str(nul))]
    assert "status is 44 characters" in reasons[(first_shop.source, str(wide))]
    assert "email is 342 characters" in reasons[("stripe", long_one)]
    text = repr(logs)
    assert LONG_EMAIL not in text and WIDE_ROLE not in text and "subscr" not in text
