"""The WooCommerce connector against its loopback twin over real HTTP: completeness, paging,
incremental windows, reconciliation, injected faults, OAuth as WooCommerce verifies it, and
the official `woocommerce` package reading the twin unmodified."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests
from woocommerce import API
from woocommerce.oauth import OAuth

from connectors.base import Batch, Category, Record
from connectors.http import FatalAPIError, RetriableAPIError
from connectors.woocommerce import Settings, WooCommerceConnector, connect
from sandbox.estate import EstateSpec, Planted, make_people
from sandbox.seed import woocommerce as seed_woocommerce
from sandbox.seed.woocommerce import CARD_NOTE
from sandbox.server import TwinServer
from sandbox.woocommerce import WooCommerceTwin

DATA = Path(__file__).resolve().parents[2] / "sandbox" / "data"
START = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)


class Clock:
    """One clock for the twin and the connector, moved by hand."""

    def __init__(self, moment: datetime = START) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, **delta: float) -> datetime:
        self.moment += timedelta(**delta)
        return self.moment


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def shop(clock: Clock) -> WooCommerceTwin:
    return WooCommerceTwin("allmyink", now=clock)


@pytest.fixture
def server(shop: WooCommerceTwin) -> Iterator[TwinServer]:
    with TwinServer(shop) as running:
        yield running


@pytest.fixture
def connector_for(server: TwinServer, shop: WooCommerceTwin,
                  clock: Clock) -> Iterator[Callable[..., WooCommerceConnector]]:
    made: list[WooCommerceConnector] = []

    def make(**overrides: Any) -> WooCommerceConnector:
        values: dict[str, Any] = {
            "name": "allmyink", "url": server.url, "consumer_key": shop.consumer_key,
            "consumer_secret": shop.consumer_secret, "sleep": lambda _: None,
            "clock": clock, "timeout": 5.0}
        values.update(overrides)
        connector = connect(Settings(**values))
        made.append(connector)
        return connector

    yield make
    for connector in made:
        connector.close()


@contextmanager
def behind_https(twin: WooCommerceTwin) -> Iterator[WooCommerceTwin]:
    """The twin as a shop behind a TLS-terminating proxy (is_ssl() true): Basic auth served."""
    twin.https = True
    try:
        yield twin
    finally:
        twin.https = False


def records(batches: list[Batch], record_type: str | None = None) -> list[Record]:
    return [r for b in batches for r in b.records
            if record_type is None or r.record_type == record_type]


def add_orders(shop: WooCommerceTwin, count: int, **fields: Any) -> list[int]:
    return [shop.add_order(status="completed",
                           billing={"first_name": "Ada", "email": f"buyer{n}@example.com"},
                           **fields) for n in range(count)]


# -- completeness --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def estate() -> tuple[EstateSpec, list[Planted], dict[str, WooCommerceTwin]]:
    spec = EstateSpec()
    people = make_people(spec)
    planted: list[Planted] = []
    twins = {name: seed_woocommerce.seeded(spec, people, planted, name) for name in spec.shops}
    return spec, planted, twins


def pull_all(twin: WooCommerceTwin, cursor: str | None = None,
             **overrides: Any) -> list[Batch]:
    with TwinServer(twin) as running:
        values: dict[str, Any] = {"name": twin.shop, "url": running.url,
                                  "consumer_key": twin.consumer_key,
                                  "consumer_secret": twin.consumer_secret,
                                  "sleep": lambda _: None}
        values.update(overrides)
        connector = connect(Settings(**values))
        try:
            return list(connector.pull(cursor))
        finally:
            connector.close()


def test_full_pull_of_a_seeded_shop_matches_its_ground_truth(estate: Any) -> None:
    _, _, twins = estate
    for twin in twins.values():
        batches = pull_all(twin, per_page=25)
        got = {(r.record_type, r.external_id, r.email) for r in records(batches)}
        assert got == twin.ground_truth()
        assert not any(b.skipped for b in batches)
        assert batches[-1].complete
        assert batches[-1].listed_types == {"customer", "order"}


def test_seeded_shop_plants_each_woocommerce_rule_and_clean_counterparts(estate: Any) -> None:
    _, planted, twins = estate
    rules = {p.rule for p in planted}
    assert rules >= {"inactive-account", "order-past-retention", "unpaid-order-past-retention",
                     "network-data-past-retention", "card-number-exposed", None}
    assert all(p.source in ("woo:allmyink", "woo:papercraft") for p in planted)
    for case in planted:
        twin = twins[case.source.split(":")[1]]
        truth = {(t, i) for t, i, _ in twin.ground_truth()}
        assert (case.record_type, case.external_id) in truth
    card = next(p for p in planted if p.rule == "card-number-exposed")
    order = twins[card.source.split(":")[1]].orders[int(card.external_id)]
    assert order["customer_note"] == CARD_NOTE


def test_card_number_planted_in_a_note_is_found_and_never_copied(estate: Any) -> None:
    _, planted, twins = estate
    card = next(p for p in planted if p.rule == "card-number-exposed")
    batches = pull_all(twins[card.source.split(":")[1]])
    found = next(r for r in records(batches, "order") if r.external_id == card.external_id)
    assert Category.CARD_NUMBER in found.categories
    assert found.evidence == ("card number pattern in customer_note",)
    assert "4111" not in repr(batches)


def test_seeding_is_deterministic() -> None:
    def build() -> tuple[set[Any], list[Planted], str]:
        spec = EstateSpec(people=60)
        planted: list[Planted] = []
        twin = seed_woocommerce.seeded(spec, make_people(spec), planted, "allmyink")
        return twin.ground_truth(), planted, json.dumps(twin.orders, sort_keys=True)

    assert build() == build()


def test_twin_records_have_the_documented_fields_and_types(estate: Any) -> None:
    _, _, twins = estate
    twin = twins["allmyink"]
    with TwinServer(twin) as running, behind_https(twin):
        auth = (twin.consumer_key, twin.consumer_secret)
        for kind in ("customers", "orders"):
            documented = json.loads((DATA / f"woocommerce_{kind}.json").read_text())[0]
            answer = requests.get(f"{running.url}/wp-json/wc/v3/{kind}", auth=auth,
                                  params={"role": "all", "per_page": 5}, timeout=5).json()
            for item in answer:
                assert list(item) == list(documented), kind
                for name, value in documented.items():
                    if value is not None and item[name] is not None:
                        assert type(item[name]) is type(value) or (
                            name == "price" and isinstance(item[name], float)), (kind, name)
                for address in ("billing", "shipping"):
                    assert list(item[address]) == list(documented[address])


# -- paging --------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "requests_made"), [(0, 1), (1, 1), (100, 1), (101, 2)])
def test_pages_of_0_1_100_and_101_records_are_read_whole(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector],
        count: int, requests_made: int) -> None:
    ids = add_orders(shop, count)
    batches = list(connector_for().pull(None))
    assert sorted(int(r.external_id) for r in records(batches, "order")) == ids
    assert shop.requests_to("/orders") == requests_made + 1  # + the trash listing
    assert batches[-1].listed_types == {"customer", "order"}


def test_twin_pages_with_totals_and_link_headers(
        shop: WooCommerceTwin, server: TwinServer) -> None:
    add_orders(shop, 25)
    shop.https = True
    auth = (shop.consumer_key, shop.consumer_secret)
    url = f"{server.url}/wp-json/wc/v3/orders"
    middle = requests.get(url, auth=auth, params={"per_page": 10, "page": 2}, timeout=5)
    assert (middle.headers["X-WP-Total"], middle.headers["X-WP-TotalPages"]) == ("25", "3")
    assert 'page=1>; rel="prev"' in middle.headers["Link"]
    assert 'page=3>; rel="next"' in middle.headers["Link"]
    assert len(middle.json()) == 10
    beyond = requests.get(url, auth=auth, params={"per_page": 10, "page": 9}, timeout=5)
    assert beyond.status_code == 200 and beyond.json() == []
    empty = requests.get(url, auth=auth, params={"status": "failed"}, timeout=5)
    assert (empty.headers["X-WP-Total"], empty.headers["X-WP-TotalPages"]) == ("0", "0")
    assert "Link" not in empty.headers


def test_twin_refuses_101_per_page_with_the_documented_error(
        shop: WooCommerceTwin, server: TwinServer) -> None:
    answer = requests.get(f"{server.url}/wp-json/wc/v3/orders",
                          auth=(shop.consumer_key, shop.consumer_secret),
                          params={"per_page": 101}, timeout=5)
    assert answer.status_code == 400
    assert answer.json() == {
        "code": "rest_invalid_param", "message": "Invalid parameter(s): per_page",
        "data": {"status": 400, "params": {
            "per_page": "per_page must be between 1 (inclusive) and 100 (inclusive)"}}}


def test_twin_trims_to_the_fields_asked(shop: WooCommerceTwin, server: TwinServer) -> None:
    add_orders(shop, 2)
    shop.https = True
    answer = requests.get(f"{server.url}/wp-json/wc/v3/orders",
                          auth=(shop.consumer_key, shop.consumer_secret),
                          params={"_fields": "id,date_modified_gmt,billing.email"}, timeout=5)
    assert [sorted(item) for item in answer.json()] == [
        ["billing", "date_modified_gmt", "id"]] * 2
    assert answer.json()[0]["billing"] == {"email": "buyer1@example.com"}


def test_pages_are_fetched_in_parallel_and_yielded_in_order(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    ids = add_orders(shop, 300)
    shop.faults.latency = 0.02
    batches = list(connector_for(per_page=20, concurrency=4).pull(None))
    got = [int(r.external_id) for r in records(batches, "order")]
    assert got == ids
    assert 2 <= shop.max_connections <= 4


# -- what is listed ------------------------------------------------------------------------


def test_trashed_orders_are_pulled_and_listed(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    kept, trashed = add_orders(shop, 2)
    shop.trash_order(trashed)
    connector = connector_for()
    pulled = {r.external_id: r.status for r in records(list(connector.pull(None)))}
    assert pulled == {str(kept): "completed", str(trashed): "trash"}
    keys = {k.external_id for b in connector.list_keys() for k in b.keys}
    assert keys == {str(kept), str(trashed)}


def test_guest_orders_are_held_by_email_without_a_parent(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    account = shop.add_customer(email="Ada@Example.com", first_name="Ada")
    mine = shop.add_order(customer_id=account, billing={"email": "ada@example.com"})
    guest = shop.add_order(billing={"email": " Guest@Example.COM ", "phone": "+44 7700 900123"})
    pulled = {r.external_id: r for r in records(list(connector_for().pull(None)), "order")}
    assert pulled[str(mine)].parent_id == str(account)
    assert pulled[str(guest)].parent_id is None
    assert pulled[str(guest)].email == "guest@example.com"
    assert Category.PHONE in pulled[str(guest)].categories


def test_every_role_is_listed_including_shop_managers_and_subscribers(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    roles = {shop.add_customer(email=f"{role}@example.com", role=role): role
             for role in ("customer", "subscriber", "shop_manager", "administrator")}
    pulled = {int(r.external_id): r.status for r in records(list(connector_for().pull(None)))}
    assert pulled == roles
    # WooCommerce itself lists only role `customer` unless asked for all.
    with behind_https(shop):
        default = requests.get(
            f"{connector_for().settings.url}/wp-json/wc/v3/customers",
            auth=(shop.consumer_key, shop.consumer_secret), timeout=5).json()
    assert [c["role"] for c in default] == ["customer"]


def test_records_without_email_are_still_pulled(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    phoned = shop.add_order(created_via="admin", billing={"first_name": "Olu",
                                                          "phone": "+44 7700 900999"})
    pulled = records(list(connector_for().pull(None)), "order")
    assert [(r.external_id, r.email) for r in pulled] == [(str(phoned), None)]
    assert {Category.NAME, Category.PHONE} <= pulled[0].categories


def test_anonymised_order_is_pulled_as_anonymised(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    order = shop.add_order(status="completed", customer_ip_address="203.0.113.9",
                           customer_user_agent="Mozilla/5.0",
                           billing={"first_name": "Ada", "email": "ada@example.com",
                                    "phone": "+44 7700 900123", "address_1": "1 High St"})
    shop.anonymise_order(order)
    (pulled,) = records(list(connector_for().pull(None)), "order")
    assert pulled.anonymised and pulled.email is None
    assert pulled.categories == {Category.ORDER_HISTORY}
    assert ("order", str(order), None) in shop.ground_truth()


# -- incremental windows -------------------------------------------------------------------


def test_incremental_rereads_a_record_modified_within_the_overlap_before_the_cursor(
        shop: WooCommerceTwin, clock: Clock,
        connector_for: Callable[..., WooCommerceConnector]) -> None:
    late, early = add_orders(shop, 2)
    clock.advance(hours=1)
    cursor = list(connector_for().pull(None))[-1].cursor
    # Changes committed before the cursor but seen only after it (a slow transaction):
    clock.advance(minutes=-5)
    shop.update_order(late, customer_note="Please gift wrap it")
    clock.advance(minutes=-20)
    shop.update_order(early, customer_note="Please gift wrap it")
    clock.advance(hours=2)
    batches = list(connector_for(overlap=timedelta(minutes=10)).pull(cursor))
    assert [r.external_id for r in records(batches)] == [str(late)]
    assert Category.FREE_TEXT in records(batches)[0].categories


def test_record_modified_during_a_run_is_read_again_by_the_next_one(
        shop: WooCommerceTwin, clock: Clock,
        connector_for: Callable[..., WooCommerceConnector]) -> None:
    ids = add_orders(shop, 30)
    clock.advance(hours=1)
    seen: list[Batch] = []
    for batch in connector_for(per_page=10).pull(None):
        seen.append(batch)
        if len(records(seen, "order")) == 10:
            clock.advance(seconds=1)
            shop.update_order(ids[0], customer_note="Ring twice please")
    cursor = seen[-1].cursor
    again = list(connector_for().pull(cursor))
    assert [r.external_id for r in records(again)] == [str(ids[0])]
    assert Category.FREE_TEXT in records(again)[0].categories


def test_incremental_reads_new_accounts_and_the_accounts_of_changed_orders(
        shop: WooCommerceTwin, clock: Clock,
        connector_for: Callable[..., WooCommerceConnector]) -> None:
    old = shop.add_customer(email="old@example.com")
    quiet = shop.add_customer(email="quiet@example.com")
    clock.advance(hours=1)
    cursor = list(connector_for().pull(None))[-1].cursor
    clock.advance(hours=1)
    new = shop.add_customer(email="new@example.com")
    shop.add_order(customer_id=old, billing={"email": "old@example.com"})
    batches = list(connector_for().pull(cursor))
    assert {r.external_id for r in records(batches, "customer")} == {str(old), str(new)}
    assert str(quiet) not in {r.external_id for r in records(batches)}
    assert json.loads(batches[-1].cursor or "")["max_customer_id"] == new


def test_deletion_that_shifts_a_page_keeps_the_old_cursor_and_lists_nothing_complete(
        shop: WooCommerceTwin, clock: Clock,
        connector_for: Callable[..., WooCommerceConnector]) -> None:
    ids = add_orders(shop, 30)
    clock.advance(hours=1)
    cursor = list(connector_for().pull(None))[-1].cursor
    clock.advance(hours=1)
    for ident in ids:
        shop.update_order(ident, customer_note="Updated")
    clock.advance(hours=1)
    batches: list[Batch] = []
    for batch in connector_for(per_page=10).pull(cursor):
        batches.append(batch)
        if len(batches) == 1:
            for ident in ids[:3]:
                shop.delete_order(ident)
    assert batches[-1].complete
    assert json.loads(batches[-1].cursor or "")["orders_since"] == \
        json.loads(cursor or "")["orders_since"]
    full: list[Batch] = []
    for batch in connector_for(per_page=10).pull(None):
        full.append(batch)
        if len(records(full, "order")) == 10 and len(full) == 2:
            shop.delete_order(ids[5])
    assert full[-1].listed_types == {"customer"}


def test_records_added_during_a_listing_do_not_spoil_it(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    add_orders(shop, 30)
    batches: list[Batch] = []
    for batch in connector_for(per_page=10).pull(None):
        batches.append(batch)
        if len(batches) == 2:
            add_orders(shop, 5)
    assert batches[-1].listed_types == {"customer", "order"}


# -- reconciliation ------------------------------------------------------------------------


def test_list_keys_completes_and_leaves_deleted_records_out(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    customer = shop.add_customer(email="gone@example.com")
    orders = add_orders(shop, 150)
    shop.delete_customer(customer)
    shop.delete_order(orders[40])
    batches = list(connector_for().list_keys())
    keys = {(k.record_type, k.external_id) for b in batches for k in b.keys}
    assert keys == {(t, i) for t, i, _ in shop.ground_truth()}
    assert ("order", str(orders[40])) not in keys
    assert [b.complete for b in batches].count(True) == 1 and batches[-1].complete
    assert batches[-1].listed_types == {"customer", "order"}
    assert shop.requests_to("/orders") == 3


def test_interrupted_list_keys_never_reports_complete(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    add_orders(shop, 150)
    shop.faults.inject("status", times=10, status=503, path="/orders")
    seen = []
    with pytest.raises(RetriableAPIError, match="server error 503"):
        for batch in connector_for(retry_attempts=2).list_keys():
            seen.append(batch)
    assert seen and not any(b.complete for b in seen)


# -- faults ----------------------------------------------------------------------------------


def test_rate_limit_is_retried_after_the_wait_asked(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    add_orders(shop, 3)
    waits: list[float] = []
    shop.faults.inject("status", status=429, retry_after="1", path="/orders")
    pulled = records(list(connector_for(sleep=waits.append).pull(None)))
    assert len(pulled) == 3
    assert waits == [1.0]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector],
        status: int) -> None:
    add_orders(shop, 3)
    shop.faults.inject("status", times=2, status=status, path="/orders")
    assert len(records(list(connector_for().pull(None)))) == 3
    assert shop.faults.injected[f"status:{status}"] == 2


def test_html_page_with_200_ends_the_run(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    add_orders(shop, 3)
    shop.faults.inject("html", path="/orders")
    with pytest.raises(FatalAPIError, match="maintenance mode"):
        list(connector_for().pull(None))


@pytest.mark.parametrize("kind", ["drop", "truncate"])
def test_dropped_connections_and_truncated_json_are_retried(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector],
        kind: str) -> None:
    add_orders(shop, 3)
    shop.faults.inject(kind, path="/orders")
    assert len(records(list(connector_for().pull(None)))) == 3
    assert shop.faults.injected[kind] == 1


def test_a_hanging_shop_times_out_and_is_retried(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    add_orders(shop, 3)
    shop.faults.inject("hang", seconds=0.8, path="/orders")
    started = time.monotonic()
    assert len(records(list(connector_for(timeout=0.25).pull(None)))) == 3
    assert shop.faults.injected["hang"] == 1
    assert time.monotonic() - started < 0.8
    # Let the hung handler finish inside this test (it writes to a socket already closed).
    time.sleep(max(0.0, started + 0.9 - time.monotonic()))


# -- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize("wrong", ["consumer_key", "consumer_secret"])
def test_wrong_keys_end_the_run_readably_without_the_keys(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector],
        wrong: str) -> None:
    bad = "ck_wrong_but_long_enough_1234567890" if wrong == "consumer_key" \
        else "cs_wrong_but_long_enough_1234567890"
    connector = connector_for(**{wrong: bad})
    with pytest.raises(FatalAPIError) as err:
        list(connector.pull(None))
    text = str(err.value)
    assert text.startswith("woo:allmyink: the credentials were refused (401) — "
                           "woocommerce_rest_authentication_error: ")
    for secret in (bad, shop.consumer_key, shop.consumer_secret):
        assert secret not in text
    assert shop.requests_to("/customers") == 1


def signed_url(server: TwinServer, shop: WooCommerceTwin, query: str = "per_page=5",
               **oauth: Any) -> str:
    return OAuth(url=f"{server.url}/wp-json/wc/v3/customers?{query}",
                 consumer_key=shop.consumer_key, consumer_secret=shop.consumer_secret,
                 version="wc/v3", method="GET", **oauth).get_oauth_url()


def test_twin_verifies_oauth_signatures_as_woocommerce_does(
        shop: WooCommerceTwin, server: TwinServer) -> None:
    url = signed_url(server, shop)
    assert requests.get(url, timeout=5).status_code == 200
    replay = requests.get(url, timeout=5)
    assert replay.status_code == 401
    assert replay.json()["message"] == "Invalid nonce - nonce has already been used."
    tampered = signed_url(server, shop).replace("per_page=5", "per_page=6", 1)
    answer = requests.get(tampered, timeout=5)
    assert answer.status_code == 401
    assert answer.json() == {"code": "woocommerce_rest_authentication_error",
                             "message": "Invalid signature - provided signature does not "
                                        "match.", "data": {"status": 401}}
    stale = signed_url(server, shop, oauth_timestamp=int(time.time()) - 16 * 60)
    assert requests.get(stale, timeout=5).json()["message"] == "Invalid timestamp."


def test_twin_answers_unauthenticated_lists_with_cannot_view(
        shop: WooCommerceTwin, server: TwinServer) -> None:
    answer = requests.get(f"{server.url}/wp-json/wc/v3/orders", timeout=5)
    assert answer.status_code == 401
    assert answer.json()["code"] == "woocommerce_rest_cannot_view"


def test_official_woocommerce_package_lists_customers_from_the_twin(
        shop: WooCommerceTwin, server: TwinServer) -> None:
    for n in range(12):
        shop.add_customer(email=f"p{n}@example.com",
                          role="shop_manager" if n == 3 else "customer")
    api = API(url=server.url, consumer_key=shop.consumer_key,
              consumer_secret=shop.consumer_secret, version="wc/v3")
    answer = api.get("customers", params={"role": "all", "orderby": "id", "per_page": 10,
                                         "page": 2})
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-WP-Total"] == "12"
    assert [c["email"] for c in answer.json()] == ["p10@example.com", "p11@example.com"]


def test_read_only_key_cannot_write(clock: Clock) -> None:
    twin = WooCommerceTwin("ro", now=clock, permissions="read", https=True)
    order = twin.add_order(status="completed")
    with TwinServer(twin) as running:
        answer = requests.delete(f"{running.url}/wp-json/wc/v3/orders/{order}",
                                 auth=(twin.consumer_key, twin.consumer_secret), timeout=5)
    assert answer.status_code == 401
    assert answer.json()["message"] == "The API key provided does not have write permissions."


# -- twin semantics --------------------------------------------------------------------------


def test_twin_deletes_as_woocommerce_does(shop: WooCommerceTwin, server: TwinServer) -> None:
    shop.https = True
    auth = (shop.consumer_key, shop.consumer_secret)
    base = f"{server.url}/wp-json/wc/v3"
    customer = shop.add_customer(email="c@example.com")
    order = shop.add_order(customer_id=customer, billing={"email": "c@example.com"})
    assert requests.delete(f"{base}/customers/{customer}", auth=auth,
                           timeout=5).status_code == 501
    assert requests.delete(f"{base}/customers/{customer}", auth=auth, params={"force": "true"},
                           timeout=5).status_code == 200
    assert shop.orders[order]["customer_id"] == 0
    trashed = requests.delete(f"{base}/orders/{order}", auth=auth, timeout=5)
    assert trashed.json()["status"] == "trash"
    again = requests.delete(f"{base}/orders/{order}", auth=auth, timeout=5)
    assert again.status_code == 410
    assert again.json()["code"] == "woocommerce_rest_already_trashed"
    assert requests.delete(f"{base}/orders/{order}", auth=auth, params={"force": "true"},
                           timeout=5).status_code == 200
    assert shop.ground_truth() == set()
    assert requests.get(f"{base}/orders/{order}", auth=auth, timeout=5).status_code == 404


def test_control_api_mutates_the_shop(shop: WooCommerceTwin, server: TwinServer) -> None:
    control = f"{server.url}/__twin__"
    made = requests.post(f"{control}/add_customer", timeout=5,
                         json={"email": "canary@example.com", "first_name": "CANARY-7f3a",
                               "billing": {"address_1": "CANARY-street"}}).json()["result"]
    order = requests.post(f"{control}/add_order", timeout=5,
                          json={"customer_id": made, "status": "processing",
                                "date_created": "2020-01-01T00:00:00Z",
                                "billing": {"email": "canary@example.com"}}).json()["result"]
    assert shop.orders[order]["date_created_gmt"] == "2020-01-01T00:00:00"
    requests.post(f"{control}/trash_order", json={"id": order}, timeout=5)
    assert shop.orders[order]["status"] == "trash"
    truth = requests.post(f"{control}/ground_truth", timeout=5).json()["result"]
    assert truth == [["customer", str(made), "canary@example.com"],
                     ["order", str(order), "canary@example.com"]]
    missing = requests.post(f"{control}/update_order", json={"id": 999999}, timeout=5).json()
    assert "error" in missing["result"]


def test_lookup_finds_the_persons_account_and_orders_including_the_trash(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    account = shop.add_customer(email="Ada.Lovelace@Example.com")
    own = shop.add_order(customer_id=account, billing={"email": "ada.lovelace@example.com"})
    other_email = shop.add_order(customer_id=account, billing={"email": "ada@work.example"})
    guest = shop.add_order(billing={"email": "ADA.LOVELACE@example.com"})
    shop.trash_order(guest)
    shop.add_order(billing={"email": "someone.else@example.com"})
    found = connector_for().lookup(" ada.lovelace@EXAMPLE.com")
    assert [(f["record_type"], f["external_id"]) for f in found] == [
        ("customer", str(account)), ("order", str(own)), ("order", str(other_email)),
        ("order", str(guest))]
    assert found[-1]["data"]["status"] == "trash"


def test_bulk_builds_a_large_shop_fast() -> None:
    started = time.monotonic()
    twin = seed_woocommerce.bulk(2_000, 10_000)
    assert time.monotonic() - started < 10
    assert (len(twin.customers), len(twin.orders)) == (2_000, 10_000)
    assert {o["status"] for o in twin.orders.values()} == {
        "pending", "processing", "on-hold", "completed", "cancelled", "refunded", "failed",
        "trash"}
    assert len(twin.ground_truth()) == 12_000


def test_order_anonymised_through_put_is_pulled_as_anonymised(
        shop: WooCommerceTwin, server: TwinServer, clock: Clock,
        connector_for: Callable[..., WooCommerceConnector]) -> None:
    order = shop.add_order(status="completed", billing={"first_name": "Ada",
                                                        "email": "ada@example.com"})
    clock.advance(minutes=5)
    with behind_https(shop):
        answer = requests.put(
            f"{server.url}/wp-json/wc/v3/orders/{order}",
            auth=(shop.consumer_key, shop.consumer_secret), timeout=5,
            json={"billing": {"first_name": "[deleted]", "email": "deleted@site.invalid"},
                  "meta_data": [{"key": "_anonymized", "value": "yes"}], "id": 1})
    assert answer.status_code == 200
    assert answer.json()["id"] == order
    assert answer.json()["date_modified_gmt"] == "2026-11-01T06:05:00"
    (pulled,) = records(list(connector_for().pull(None)), "order")
    assert pulled.anonymised and pulled.email is None
    assert Category.NAME not in pulled.categories


def test_last_activity_moves_without_moving_date_modified(
        shop: WooCommerceTwin, clock: Clock,
        connector_for: Callable[..., WooCommerceConnector]) -> None:
    customer = shop.add_customer(email="ada@example.com")
    before = shop.customers[customer]["date_modified_gmt"]
    clock.advance(days=3)
    shop.set_last_active(customer, clock())
    assert shop.customers[customer]["date_modified_gmt"] == before
    (pulled,) = records(list(connector_for().pull(None)), "customer")
    assert pulled.last_activity_at == datetime(2026, 11, 4, tzinfo=UTC)


# -- erasure writes (connectors.woocommerce.erase) -------------------------------------------


def test_erase_anonymises_an_order_as_woocommerces_eraser_does_but_cannot_touch_network_data(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    from connectors.woocommerce import DELETED_EMAIL, DELETED_TEXT, erase, fetch

    account = shop.add_customer(email="ada@example.com")
    order = shop.add_order(
        customer_id=account, status="completed", customer_ip_address="203.0.113.9",
        customer_user_agent="Mozilla/5.0 CANARY", customer_note="CANARY note",
        transaction_id="ch_123",
        billing={"first_name": "Ada", "last_name": "Lovelace", "address_1": "1 CANARY Road",
                 "state": "LDN", "country": "GB", "phone": "+44 7700 900123",
                 "email": "ada@example.com"},
        shipping={"first_name": "Ada", "city": "London"},
        meta_data={"Payer first name": "Ada"})
    connector = connector_for()
    status, after = erase(connector, "anonymise", "order", str(order),
                          fetch(connector, "order", str(order)))
    assert status == "anonymised" and after is not None
    held = shop.orders[order]
    assert held["billing"] == {**held["billing"], "first_name": DELETED_TEXT,
                               "last_name": DELETED_TEXT, "address_1": DELETED_TEXT,
                               "state": "", "country": "", "phone": "+00 0000 000000",
                               "email": DELETED_EMAIL}
    assert held["shipping"]["first_name"] == DELETED_TEXT and held["shipping"]["city"] == \
        DELETED_TEXT
    assert (held["customer_id"], held["transaction_id"], held["customer_note"]) == (0, "0", "")
    meta = {m["key"]: m["value"] for m in held["meta_data"]}
    assert meta["_anonymized"] == "yes" and meta["Payer first name"] == DELETED_TEXT
    # Read-only in the REST schema: WooCommerce ignores them in a PUT, and so does the twin.
    assert held["customer_ip_address"] == "203.0.113.9"
    assert "CANARY" not in json.dumps({k: v for k, v in held.items()
                                       if k != "customer_user_agent"})
    # No longer the person's: their lookup finds only the account.
    assert [(f["record_type"], f["external_id"]) for f in connector.lookup("ada@example.com")] \
        == [("customer", str(account))]


def test_erase_deletes_customers_and_orders_for_good_and_repeats_harmlessly(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    from connectors.woocommerce import erase, fetch

    account = shop.add_customer(email="ada@example.com")
    order = shop.add_order(customer_id=account, status="pending",
                           billing={"email": "ada@example.com"})
    shop.trash_order(order)
    connector = connector_for()
    assert erase(connector, "delete", "order", str(order)) == ("deleted", None)
    assert erase(connector, "delete", "customer", str(account)) == ("deleted", None)
    assert shop.ground_truth() == set()
    assert erase(connector, "delete", "order", str(order)) == ("already gone", None)
    assert erase(connector, "delete", "customer", str(account)) == ("already gone", None)
    assert erase(connector, "anonymise", "order", str(order)) == ("already gone", None)
    assert fetch(connector, "order", str(order)) is None
    assert shop.requests_to("/orders/", "DELETE") == 2


def test_erase_with_a_read_only_key_names_the_shop_and_the_permission_needed(
        clock: Clock) -> None:
    from connectors.woocommerce import erase

    twin = WooCommerceTwin("readonly", now=clock, permissions="read")
    account = twin.add_customer(email="ada@example.com")
    with TwinServer(twin) as running:
        connector = connect(Settings(name="readonly", url=running.url,
                                     consumer_key=twin.consumer_key,
                                     consumer_secret=twin.consumer_secret,
                                     sleep=lambda _: None, timeout=5.0))
        with pytest.raises(FatalAPIError) as refused:
            erase(connector, "delete", "customer", str(account))
        connector.close()
    assert refused.value.source == "woo:readonly"
    assert "does not have write permissions" in refused.value.message
    assert "Read/Write" in refused.value.message
    assert twin.customers.keys() == {account}


# -- signatures, strictness and completeness (as the real shop answers) --------------------


def test_lookup_of_an_email_with_a_slash_is_signed_as_woocommerce_verifies_it(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    # "/" is legal in an email address; a quote()-encoded signature leaves it bare and the
    # shop (rawurlencode) answers 401 "invalid signature".
    customer = shop.add_customer(email="a/b@example.com")
    order = shop.add_order(status="completed", billing={"email": "a/b@example.com"})
    found = connector_for().lookup("a/b@example.com")
    assert [(f["record_type"], f["external_id"]) for f in found] == [
        ("customer", str(customer)), ("order", str(order))]


@pytest.mark.parametrize("text", ["a+b@example.com", "~tilde", "100% sure", "two words",
                                  "Zoë/Ñandú", "%2F already", "日本語"])
def test_signed_searches_with_awkward_characters_are_accepted(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector],
        text: str) -> None:
    order = shop.add_order(status="completed", billing={"first_name": text})
    body, response = connector_for().client.get_json("orders", {"search": text})
    assert response.status_code == 200
    assert [item["id"] for item in body] == [order]


def test_basic_auth_over_plain_http_is_refused_as_woocommerce_does(
        shop: WooCommerceTwin, server: TwinServer) -> None:
    url = f"{server.url}/wp-json/wc/v3/orders"
    refused = {"code": "woocommerce_rest_cannot_view",
               "message": "Sorry, you cannot list resources.", "data": {"status": 401}}
    basic = requests.get(url, auth=(shop.consumer_key, shop.consumer_secret), timeout=5)
    assert (basic.status_code, basic.json()) == (401, refused)
    in_query = requests.get(url, params={"consumer_key": shop.consumer_key,
                                         "consumer_secret": shop.consumer_secret}, timeout=5)
    assert (in_query.status_code, in_query.json()) == (401, refused)
    with behind_https(shop):
        assert requests.get(url, auth=(shop.consumer_key, shop.consumer_secret),
                            timeout=5).status_code == 200
        wrong = requests.get(url, auth=(shop.consumer_key, "cs_wrong"), timeout=5)
        assert wrong.json()["message"] == "Consumer secret is invalid."
        assert wrong.headers["WWW-Authenticate"].startswith("Basic realm=")


def test_connector_with_basic_auth_to_a_plain_http_shop_is_told_to_sign(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    with pytest.raises(FatalAPIError) as err:
        list(connector_for(auth="basic").pull(None))
    assert "only over HTTPS" in str(err.value)
    assert shop.consumer_secret not in str(err.value)
    with behind_https(shop):
        assert list(connector_for(auth="basic").pull(None))[-1].complete


def test_oauth_behind_https_signs_the_https_address(shop: WooCommerceTwin,
                                                    server: TwinServer) -> None:
    from connectors.woocommerce import signed_query

    url = f"{server.url}/wp-json/wc/v3/orders"
    with behind_https(shop):
        plain = signed_query("GET", url, {}, shop.consumer_key, shop.consumer_secret)
        assert requests.get(f"{url}?{plain}", timeout=5).status_code == 401
        https = signed_query("GET", url.replace("http://", "https://"), {},
                             shop.consumer_key, shop.consumer_secret)
        assert requests.get(f"{url}?{https}", timeout=5).status_code == 200


def test_php_style_array_parameters_filter_like_comma_lists(
        shop: WooCommerceTwin, server: TwinServer) -> None:
    done, held, gone = add_orders(shop, 3)
    shop.update_order(held, status="on-hold")
    shop.trash_order(gone)
    shop.https = True
    auth = (shop.consumer_key, shop.consumer_secret)
    url = f"{server.url}/wp-json/wc/v3/orders?orderby=id&order=asc"

    def ids(query: str) -> list[int]:
        answer = requests.get(f"{url}&{query}", auth=auth, timeout=5)
        assert answer.status_code == 200, answer.text
        return [item["id"] for item in answer.json()]

    assert ids("status=completed,trash") == [done, gone]
    assert ids("status[0]=completed&status[1]=trash") == [done, gone]
    assert ids("status[]=completed&status[]=trash") == [done, gone]
    assert ids(f"include[0]={held}&include[1]={gone}&status=any") == [held]
    bad = requests.get(f"{url}&status[0]=nope", auth=auth, timeout=5)
    assert bad.status_code == 400 and "status" in bad.json()["data"]["params"]


def test_twin_imports_nothing_of_the_product() -> None:
    import ast

    tree = ast.parse((Path(__file__).resolve().parents[2] / "sandbox" / "server.py")
                     .read_text() + "\n" + (Path(__file__).resolve().parents[2] / "sandbox"
                                            / "woocommerce.py").read_text())
    imported = {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert not {name for name in imported if name.split(".")[0] in ("connectors", "daemon")}


@pytest.mark.parametrize("any_includes_trash", [False, True])
def test_each_order_listing_is_judged_against_its_own_total(
        clock: Clock, any_includes_trash: bool) -> None:
    """WooCommerce's `status=any` leaves the trash out (its post and HPOS queries both drop
    exclude_from_search statuses); where a shop lists it under `any` too, the trashed orders
    come twice and neither listing looks short or long."""
    twin = WooCommerceTwin("allmyink", now=clock, any_includes_trash=any_includes_trash)
    kept = add_orders(twin, 250)
    trashed = kept[::5]
    for order in trashed:
        twin.trash_order(order)
    with TwinServer(twin) as running:
        connector = connect(Settings(name="allmyink", url=running.url, per_page=50,
                                     consumer_key=twin.consumer_key,
                                     consumer_secret=twin.consumer_secret,
                                     sleep=lambda _: None, clock=clock))
        batches = list(connector.pull(None))
        keys = list(connector.list_keys())
        connector.close()
    assert batches[-1].listed_types == {"customer", "order"}
    assert keys[-1].listed_types == {"customer", "order"}
    assert {int(r.external_id) for r in records(batches, "order")} == set(kept)
    twice = len(records(batches, "order")) - len(kept)
    assert twice == (len(trashed) if any_includes_trash else 0)


def test_listing_short_of_its_own_total_is_not_complete(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    # Counted in X-WP-Total but not listed (WooCommerce skips what the key's user may not
    # read): the pages' one-record overlaps must not make up for the missing records.
    ids = add_orders(shop, 240)
    accounts = [shop.add_customer(email=f"c{n}@example.com") for n in range(120)]
    shop.unlisted = {ids[30], ids[130]}  # beyond the highest customer id
    connector = connector_for(per_page=50)
    batches = list(connector.pull(None))
    assert batches[-1].listed_types == {"customer"}
    assert list(connector.list_keys())[-1].listed_types == {"customer"}
    shop.unlisted = {accounts[60]}
    assert list(connector.list_keys())[-1].listed_types == {"order"}
    shop.unlisted = set()
    assert list(connector.list_keys())[-1].listed_types == {"customer", "order"}


def gone_holdings(ledger: Any) -> int:
    from sqlalchemy import func, select

    from daemon.ledger import Holding

    with ledger.session() as session:
        return session.scalar(select(func.count()).select_from(Holding)
                              .where(Holding.gone_at.is_not(None)))


@pytest.mark.parametrize("fault", ["alternate", "repeat"])
def test_pages_that_make_no_progress_end_the_run_failed_and_mark_nothing_gone(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector],
        sqlite_url: str, fault: str) -> None:
    from daemon.ledger import Ledger
    from daemon.sync import reconcile_source, sync_source

    add_orders(shop, 450)
    ledger = Ledger.open(sqlite_url)
    try:
        assert sync_source(ledger, connector_for(), full=True).ok
        shop.paging_fault, shop.paging_fault_pages = fault, 60
        for run in (lambda: sync_source(ledger, connector_for(), full=True),
                    lambda: reconcile_source(ledger, connector_for())):
            result = run()
            assert result.status == "failed"
            assert "/orders" in (result.error or "")
            assert "cannot be read whole" in (result.error or "")
            assert result.gone == 0 and gone_holdings(ledger) == 0
        # The fault stopped well before its 60 pages: the listing gave up at once.
        assert shop.paging_fault_pages > 40
    finally:
        ledger.close()


def test_totals_that_keep_growing_do_not_page_for_ever(
        shop: WooCommerceTwin, connector_for: Callable[..., WooCommerceConnector]) -> None:
    add_orders(shop, 450)
    shop.paging_fault = "growing"
    connector = connector_for()
    before = shop.requests_to("/orders")
    keys = list(connector.list_keys())
    assert keys[-1].listed_types == {"customer"}
    assert shop.requests_to("/orders") - before < 20


# -- signatures held against PHP itself ------------------------------------------------------

# Reads a query string as PHP's $_GET does (parse_str), then signs it the way WooCommerce's
# WC_REST_Authentication::check_oauth_signature verifies a request, with PHP's own
# rawurlencode, uksort/strcmp and hash_hmac. Prints the signature given and the one expected.
PHP_VERIFY = r"""
parse_str($argv[3], $params);
$given = rawurldecode(str_replace(' ', '+', $params['oauth_signature']));
unset($params['oauth_signature']);
uksort($params, 'strcmp');
$encode = function ($value) use (&$encode) {
    return is_array($value) ? array_map($encode, $value) : rawurlencode($value);
};
$params = array_combine($encode(array_keys($params)), $encode(array_values($params)));
$pairs = function ($params, $prefix) use (&$pairs) {
    $out = array();
    foreach ($params as $key => $value) {
        $name = $prefix === '' ? $key : $prefix . '%5B' . $key . '%5D';
        $out = array_merge($out, is_array($value) ? $pairs($value, $name)
                                                  : array(rawurlencode($name . '=' . $value)));
    }
    return $out;
};
$base = strtoupper($argv[1]) . '&' . rawurlencode($argv[2]) . '&'
    . implode('%26', $pairs($params, ''));
$algorithm = strtolower(str_replace('HMAC-', '', $params['oauth_signature_method']));
echo json_encode(array('given' => $given,
    'expected' => base64_encode(hash_hmac($algorithm, $base, $argv[4] . '&', true))));
"""
PHP = shutil.which("php")
needs_php = pytest.mark.skipif(PHP is None, reason="PHP is not installed")


def php_verify(method: str, url: str, query: str, secret: str) -> dict[str, str]:
    assert PHP is not None
    done = subprocess.run([PHP, "-r", PHP_VERIFY, "--", method, url, query, secret],
                          capture_output=True, text=True, check=True, timeout=30)
    return json.loads(done.stdout)


AWKWARD = ["a/b@example.com", "a+b@example.com", "~tilde", "100% sure", "two words",
           "%2F already encoded", "Zoë/Ñandú", "日本語", "a=b&c=d", "*!'()"]


@needs_php
@pytest.mark.parametrize("text", AWKWARD)
def test_connector_signatures_verify_with_phps_own_functions(text: str) -> None:
    url = "http://shop.example/wp-json/wc/v3/orders"
    connector = connect(Settings(name="shop", url="http://shop.example",
                                 consumer_key="ck_key", consumer_secret="cs_secret"))
    assert connector.client.signer is not None
    signed, _ = connector.client.signer(
        "GET", url, {"search": text, "per_page": 100, "_fields": "id,email"})
    connector.close()
    verdict = php_verify("GET", url, urlsplit(signed).query, "cs_secret")
    assert verdict["given"] == verdict["expected"]


@needs_php
def test_twin_accepts_what_php_signs_and_refuses_the_rest(
        shop: WooCommerceTwin, server: TwinServer) -> None:
    order = shop.add_order(status="trash", billing={"email": "a/b@example.com"})
    url = f"{server.url}/wp-json/wc/v3/orders"
    for method in ("HMAC-SHA1", "HMAC-SHA256"):
        pairs = [("status[0]", "completed"), ("status[1]", "trash"),
                 ("search", "a/b@example.com"), ("oauth_consumer_key", shop.consumer_key),
                 ("oauth_nonce", f"nonce{method}"), ("oauth_signature_method", method),
                 ("oauth_timestamp", str(int(time.time()))), ("oauth_signature", "x")]
        query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)
        signature = php_verify("GET", url, query, shop.consumer_secret)["expected"]
        signed = query.replace("oauth_signature=x",
                               f"oauth_signature={quote(signature, safe='')}")
        answer = requests.get(f"{url}?{signed}", timeout=5)
        assert answer.status_code == 200, answer.text
        assert [item["id"] for item in answer.json()] == [order]
        forged = signed.replace("status%5B1%5D=trash", "status%5B1%5D=completed")
        assert requests.get(f"{url}?{forged}", timeout=5).status_code == 401


# -- check: what sync and erase will need ----------------------------------------------------


def woo_check(twin: WooCommerceTwin, url: str, tmp_path: Path,
              secret: str | None = None) -> Any:
    from daemon.check import run_checks
    from daemon.config import SecretSources, parse_settings

    raw = {"ledger": {"url": f"sqlite:///{tmp_path}/ledger.db"},
           "woocommerce": [{"name": twin.shop, "url": url, "consumer_key": "env:CK",
                            "consumer_secret": "env:CS"}]}
    environ = {"CK": twin.consumer_key, "CS": secret or twin.consumer_secret}
    settings = parse_settings(raw, origin="test", secrets=SecretSources(environ, None))
    (result,) = [r for r in run_checks(settings) if r.name == f"woo:{twin.shop}"]
    return result


@pytest.mark.parametrize(("permissions", "ok", "words"), [
    ("read_write", True, ["2 customers", "3 orders", "1 orders in the trash",
                          "the key may write"]),
    ("read", True, ["3 orders", "warning: the key is read-only, so erase will refuse",
                    "Read/Write permission", "WooCommerce → Settings → Advanced → REST API"]),
    ("write", False, ["cannot list customers", "does not have read permissions",
                      "Read permission", "WooCommerce → Settings → Advanced → REST API"]),
])
def test_check_tries_every_listing_and_write_access_with_the_configured_key(
        clock: Clock, tmp_path: Path, permissions: str, ok: bool, words: list[str]) -> None:
    twin = WooCommerceTwin("allmyink", now=clock, permissions=permissions)
    for n in range(2):
        twin.add_customer(email=f"c{n}@example.com", role="subscriber" if n else "customer")
    orders = add_orders(twin, 4)
    twin.trash_order(orders[0])
    with TwinServer(twin) as running:
        result = woo_check(twin, running.url, tmp_path)
    assert result.ok is ok, result.detail
    for word in words:
        assert word in result.detail
    # One PUT of nothing to order 0 (after the reads; a key that cannot read stops first).
    assert twin.writes == (0 if permissions == "write" else 1)
    assert twin.orders.keys() == set(orders)


def test_check_names_a_wrong_key_and_a_user_who_may_not_list_customers(
        shop: WooCommerceTwin, server: TwinServer, tmp_path: Path) -> None:
    wrong = woo_check(shop, server.url, tmp_path, secret="cs_wrong")
    assert not wrong.ok
    assert "the shop refused the key when asked to list customers (401: " in wrong.detail
    assert "check consumer_key and consumer_secret" in wrong.detail
    assert "cs_wrong" not in wrong.detail and shop.consumer_secret not in wrong.detail
    shop.forbidden = {"customers"}
    barred = woo_check(shop, server.url, tmp_path)
    assert not barred.ok
    assert "may not list customers" in barred.detail
    assert "administrator or shop manager" in barred.detail


def test_knobs_are_set_through_the_control_api(shop: WooCommerceTwin,
                                                server: TwinServer) -> None:
    control = f"{server.url}/__twin__/knobs"
    url = f"{server.url}/wp-json/wc/v3/orders"
    auth = (shop.consumer_key, shop.consumer_secret)
    assert requests.get(url, auth=auth, timeout=5).status_code == 401
    assert requests.post(control, json={"https": True, "forbidden": ["customers"]},
                         timeout=5).json()["result"]["https"] is True
    assert requests.get(url, auth=auth, timeout=5).status_code == 200
    assert requests.get(f"{server.url}/wp-json/wc/v3/customers", auth=auth,
                        timeout=5).status_code == 403
    bad = requests.post(control, json={"nonsense": 1}, timeout=5)
    assert bad.json()["result"] == {"error": "unknown knob 'nonsense'"}


def test_updating_an_order_that_is_gone_is_a_400_and_erase_counts_it_done(
        shop: WooCommerceTwin, server: TwinServer,
        connector_for: Callable[..., WooCommerceConnector]) -> None:
    from connectors.woocommerce import erase

    order = shop.add_order(status="completed", billing={"email": "ada@example.com"})
    held = shop.orders[order]
    shop.delete_order(order)
    with behind_https(shop):
        answer = requests.put(f"{server.url}/wp-json/wc/v3/orders/{order}", json={},
                              auth=(shop.consumer_key, shop.consumer_secret), timeout=5)
    assert answer.status_code == 400
    assert answer.json() == {"code": "woocommerce_rest_shop_order_invalid_id",
                             "message": "Invalid ID.", "data": {"status": 400}}
    assert erase(connector_for(), "anonymise", "order", str(order), held) == (
        "already gone", None)
