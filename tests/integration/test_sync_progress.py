"""What each connector reports while a sync runs, through the sync's progress callback,
against the twins over real HTTP: a shop's listings against their own X-WP-Total, an
audience against total_items, Stripe (whose lists carry no total) as a count alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors import mailchimp, stripe, woocommerce
from connectors.base import Progress
from daemon.config import Settings, load_settings
from daemon.ledger import Ledger
from daemon.sync import sync_source
from sandbox.demo import RunningEstate
from sandbox.estate import EstateSpec
from sandbox.seed import build_estate
from vocabulary import utcnow


@pytest.fixture(scope="module")
def running() -> Iterator[RunningEstate]:
    built = build_estate(EstateSpec(seed=11, people=60, now=utcnow().replace(microsecond=0)))
    with RunningEstate(built) as estate:
        yield estate


@pytest.fixture
def settings(running: RunningEstate, tmp_path: Path) -> Settings:
    return load_settings(running.write_config(tmp_path))


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    opened = Ledger.open(settings.ledger.database_url)
    yield opened
    opened.close()


def reports(ledger: Ledger, connector: object, *, full: bool = True) -> list[Progress]:
    said: list[Progress] = []
    try:
        result = sync_source(ledger, connector, full=full, batch_size=1,  # type: ignore[arg-type]
                             progress=lambda _source, progress: said.append(progress))
    finally:
        connector.close()  # type: ignore[attr-defined]
    assert result.ok, result.error
    return said


def rising(values: list[int]) -> bool:
    return all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_a_shop_reports_customers_then_orders_against_their_x_wp_total(
        running: RunningEstate, settings: Settings, ledger: Ledger) -> None:
    twin = running.estate.shops["allmyink"]
    section = next(shop for shop in settings.woocommerce if shop.name == "allmyink")
    said = reports(ledger, woocommerce.connect(section.to_connector(per_page=5)))
    customers, orders = len(twin.customers), len(twin.orders)
    kinds = [p.record_type for p in said]
    assert kinds == sorted(kinds, key=["customer", "order"].index), kinds
    by_customer = [p for p in said if p.record_type == "customer"]
    # The first page of 5, counted against the listing's own total.
    assert by_customer[0] == Progress("customer", 5, customers)
    assert by_customer[-1] == Progress("customer", customers, customers)
    assert rising([p.done for p in by_customer]) and len(by_customer) > 2
    by_order = [p for p in said if p.record_type == "order"]
    # Orders of every status, then the trash: their totals add up to every order.
    assert by_order[-1] == Progress("order", orders, orders)
    assert rising([p.done for p in by_order]) and rising([p.total or 0 for p in by_order])


def test_a_shops_incremental_pull_counts_new_accounts_without_a_total(
        running: RunningEstate, settings: Settings, ledger: Ledger) -> None:
    section = next(shop for shop in settings.woocommerce if shop.name == "papercraft")
    reports(ledger, woocommerce.connect(section.to_connector()))
    said = reports(ledger, woocommerce.connect(section.to_connector()), full=False)
    # Newest first down to a known account: how many are new is not known beforehand.
    assert all(p.total is None for p in said if p.record_type == "customer"), said
    assert all(p.total is not None for p in said if p.record_type == "order"), said


def test_an_audience_reports_its_members_against_total_items(
        running: RunningEstate, settings: Settings, ledger: Ledger) -> None:
    assert settings.mailchimp is not None
    account = mailchimp.connect(settings.mailchimp.to_connector(page_size=10))
    try:
        audiences = account.connectors()
    finally:
        account.close()
    assert audiences
    for connector in audiences:
        members = len(running.estate.mailchimp.audiences[connector.audience_id].members)
        said = reports(ledger, connector)
        assert said[-1] == Progress("member", members, members), (connector.source, said)
        # The default listing's total_items, then the archived listing's added to it.
        totals = [p.total for p in said]
        assert None not in totals and rising(totals) and totals[0] <= members  # type: ignore[arg-type]
        assert rising([p.done for p in said])


def test_stripe_gives_no_total_so_its_progress_is_the_count_committed(
        settings: Settings, ledger: Ledger) -> None:
    assert settings.stripe is not None
    connector = stripe.connect(settings.stripe.to_connector())
    said = reports(ledger, connector)
    assert said and all(p.total is None and p.record_type == "record" for p in said)
    done = [p.done for p in said]
    assert rising(done) and done[-1] > 0
