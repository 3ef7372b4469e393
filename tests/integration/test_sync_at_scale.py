"""What keeps syncs fast at estate scale, against the twins over real HTTP: an incremental
sync costs requests in proportion to what changed, every system is read within its own
connection limit while the sources sync side by side, and the result is the same estate."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from connectors import stripe, woocommerce
from daemon.ledger import Ledger
from daemon.sources import sync_configured
from daemon.sync import sync_source
from sandbox.demo import RunningEstate
from sandbox.estate import EstateSpec
from sandbox.seed import build_estate
from sandbox.seed import stripe as seed_stripe
from sandbox.seed import woocommerce as seed_woocommerce
from sandbox.server import TwinServer
from sandbox.woocommerce import WooCommerceTwin
from tests.integration.estate_helpers import estate_truth, ledger_truth, settings_for

NOW = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.moment = NOW

    def __call__(self) -> datetime:
        return self.moment


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def shop(clock: Clock) -> Iterator[tuple[WooCommerceTwin, TwinServer]]:
    twin = seed_woocommerce.bulk(250, 600, now=NOW)
    twin.now = clock
    with TwinServer(twin) as server:
        yield twin, server


def shop_connector(twin: WooCommerceTwin, server: TwinServer,
                   clock: Clock) -> woocommerce.WooCommerceConnector:
    return woocommerce.connect(woocommerce.Settings(
        name=twin.shop, url=server.url, consumer_key=twin.consumer_key,
        consumer_secret=twin.consumer_secret, auth="basic", sleep=lambda _: None,
        clock=clock, timeout=5.0))


def test_incremental_shop_sync_with_nothing_changed_costs_three_requests(
        shop: tuple[WooCommerceTwin, TwinServer], ledger: Ledger, clock: Clock) -> None:
    twin, server = shop
    assert sync_source(ledger, shop_connector(twin, server, clock), full=True).ok
    clock.moment += timedelta(hours=20)
    before = twin.requests_to("/wp-json/wc/v3/")
    result = sync_source(ledger, shop_connector(twin, server, clock))
    assert result.ok and result.changed == 0
    # Orders (every status but the trash), the trash, and the newest accounts.
    assert twin.requests_to("/wp-json/wc/v3/") - before == 3


def test_incremental_shop_sync_rereads_accounts_that_checked_out_not_ones_the_shop_served(
        shop: tuple[WooCommerceTwin, TwinServer], ledger: Ledger, clock: Clock) -> None:
    twin, server = shop
    assert sync_source(ledger, shop_connector(twin, server, clock), full=True).ok
    clock.moment += timedelta(hours=20)
    served = [o for o in twin.orders.values() if o["customer_id"]][:150]
    for order in served:
        twin.update_order(order["id"], status="completed")
    buyer = served[0]["customer_id"]
    twin.add_order(customer_id=buyer, status="processing",
                   billing={"email": "buyer@example.com", "first_name": "Buyer"})
    twin.update_customer(buyer, billing={"address_1": "1 New Road"})
    before = twin.requests_to("/wp-json/wc/v3/")
    result = sync_source(ledger, shop_connector(twin, server, clock))
    assert result.ok
    # 151 orders in two pages, the trash, the newest accounts, and the one buyer's account
    # (the 150 accounts whose orders the shop completed are not read again).
    assert twin.requests_to("/wp-json/wc/v3/") - before == 5
    assert result.seen == 151 + 1


def test_incremental_stripe_sync_reads_only_the_event_feed(ledger: Ledger) -> None:
    twin = seed_stripe.bulk(120, 300)
    with TwinServer(twin) as server:
        def connector() -> stripe.StripeConnector:
            return stripe.connect(stripe.Settings(api_key=twin.api_key, base_url=server.url,
                                                  sleep=lambda _: None, timeout=5.0))

        assert sync_source(ledger, connector(), full=True).ok
        quiet = twin.requests_to("/v1/")
        assert sync_source(ledger, connector()).ok
        assert twin.requests_to("/v1/") - quiet == 1
        customer = twin.add_customer(email="new@example.com")
        for n in range(150):
            twin.add_charge(customer=customer, billing_details={"email": "new@example.com"},
                            amount=100 + n)
        before = twin.requests_to("/v1/")
        result = sync_source(ledger, connector())
        assert result.ok and result.changed == 151
        # 151 creation events, 100 a page: two requests, no list read twice.
        assert twin.requests_to("/v1/") - before == 2


def test_shop_list_answers_show_a_change_to_a_record_read_before(
        shop: tuple[WooCommerceTwin, TwinServer]) -> None:
    twin, server = shop
    auth = (twin.consumer_key, twin.consumer_secret)
    url = f"{server.url}/wp-json/wc/v3/customers"
    params = {"role": "all", "orderby": "id", "order": "asc", "per_page": 5}
    first = requests.get(url, params=params, auth=auth, timeout=5).json()
    twin.update_customer(first[0]["id"], first_name="Changed")
    again = requests.get(url, params=params, auth=auth, timeout=5).json()
    assert again[0]["first_name"] == "Changed"
    assert [c["id"] for c in again] == [c["id"] for c in first]


# -- the estate, sources side by side -----------------------------------------------------------


@pytest.fixture
def running() -> Iterator[RunningEstate]:
    estate = build_estate(EstateSpec(seed=5, people=80, now=NOW))
    with RunningEstate(estate) as live:
        yield live


def test_sources_synced_side_by_side_give_the_estate_in_the_configured_order(
        running: RunningEstate, ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    settings = settings_for(running, tmp_path, ledger_url)
    results = sync_configured(ledger, settings, full=True, parallel=6)
    assert results and all(r.ok for r in results), [r.error for r in results]
    configured = settings.source_names
    assert [r.source for r in results][:len(configured) - 1] == configured[:-1]
    assert all(r.source.startswith("mailchimp:") for r in results[len(configured) - 1:])
    assert ledger_truth(ledger) == estate_truth(running.estate)
    again = sync_configured(ledger, settings, parallel=6)
    assert all(r.ok for r in again) and sum(r.changed for r in again) == 0


def test_each_system_is_read_within_its_connection_limit_when_sources_run_side_by_side(
        running: RunningEstate, tmp_path: Path) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger.open(ledger_url)
    twins = running.estate.twins
    for twin in twins.values():
        twin.faults.latency = 0.02
    settings = settings_for(running, tmp_path, ledger_url)
    # Small pages, so that every listing has pages to fetch at once; at most 4 at once a shop.
    shops = [shop.model_copy(update={"per_page": 5, "concurrency": 4})
             for shop in settings.woocommerce]
    assert settings.mailchimp is not None
    settings = settings.model_copy(update={
        "woocommerce": shops,
        "mailchimp": settings.mailchimp.model_copy(update={"page_size": 5})})
    try:
        results = sync_configured(ledger, settings, full=True, parallel=6)
    finally:
        ledger.close()
    assert all(r.ok for r in results), [r.error for r in results]
    for name in running.estate.shops:
        # Pages of one shop fetched at once, never more than its 4 connections.
        assert 2 <= twins[f"woo:{name}"].max_connections <= 4
    assert twins["mailchimp"].max_connections <= 8
    assert twins["mailchimp"].over_limit == 0
    # Customers and charges read side by side.
    assert twins["stripe"].max_connections == 2
