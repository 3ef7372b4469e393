"""The Stripe connector against the Stripe twin over real HTTP, and the twin against the
official `stripe` library."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import stripe

from connectors.base import Category, Key
from connectors.http import FatalAPIError
from connectors.stripe import Settings, StripeConnector, connect
from sandbox.estate import ERASED_FROM_SHOPS, STRIPE_NO_CHARGE, EstateSpec, make_people
from sandbox.seed import stripe as seed_stripe
from sandbox.server import TwinServer
from sandbox.stripe import StripeTwin, fixture

KEY = "sk_test_sandbox"
YEAR = 365 * 86400


@pytest.fixture
def twin() -> StripeTwin:
    return StripeTwin(KEY)


@pytest.fixture
def server(twin: StripeTwin) -> Iterator[TwinServer]:
    with TwinServer(twin) as running:
        yield running


def make(server: TwinServer, **overrides: Any) -> StripeConnector:
    options: dict[str, Any] = {"api_key": KEY, "base_url": server.url,
                               "sleep": lambda s: None, "timeout": 5.0}
    options.update(overrides)
    return connect(Settings(**options))


def pull_all(connector: StripeConnector, cursor: str | None = None):
    batches = list(connector.pull(cursor))
    records = [r for b in batches for r in b.records]
    return batches, records


def seeded(spec: EstateSpec | None = None) -> tuple[StripeTwin, list, list]:
    spec = spec or EstateSpec()
    people = make_people(spec)
    planted: list = []
    return seed_stripe.seeded(spec, people, planted), people, planted


def get(server: TwinServer, path: str, key: str | None = KEY, **params: Any
        ) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.get(f"{server.url}{path}", params=params, headers=headers, timeout=5)


# -- the connector over the twin ------------------------------------------------------------------
def test_full_pull_matches_the_ground_truth_when_the_estate_is_seeded() -> None:
    twin, _, planted = seeded()
    with TwinServer(twin) as server:
        batches, records = pull_all(make(server))
    assert {(r.record_type, r.external_id, r.email) for r in records} == twin.ground_truth()
    assert len(records) == len(twin.ground_truth())
    assert batches[-1].complete and batches[-1].listed_types == {"customer", "charge"}
    assert {p.external_id for p in planted} <= {r.external_id for r in records}


@pytest.mark.parametrize("count", [0, 1, 100, 101])
def test_pull_pages_at_the_boundary_when_there_are_count_customers(
        twin: StripeTwin, server: TwinServer, count: int) -> None:
    for index in range(count):
        twin.add_customer(email=f"p{index}@example.com", created=1_600_000_000 + index)
    batches, records = pull_all(make(server))
    assert [r.external_id for r in records] == twin.customer_ids()
    assert twin.requests_to("/v1/customers", "GET") == (2 if count > 100 else 1)
    assert batches[-1].complete
    keys = [k for b in make(server).list_keys() for k in b.keys]
    assert keys == [Key("customer", ident) for ident in twin.customer_ids()]


def test_incremental_pull_catches_new_changed_and_deleted_objects(
        twin: StripeTwin, server: TwinServer) -> None:
    old = twin.add_customer(email="old@example.com", created=1_500_000_000)
    leaving = twin.add_customer(email="leaving@example.com", created=1_500_000_100)
    old_charge = twin.add_charge(customer=old, created=1_500_000_200,
                                 billing_details={"email": "old@example.com"})
    connector = make(server)
    first, _ = pull_all(connector)
    cursor = first[-1].cursor

    new = twin.add_customer(email="new@example.com", name="Canary Newname")
    twin.update_customer(old, phone="+44 7700 900123")
    twin.delete_customer(leaving)
    anonymous = twin.add_charge(billing_details={"name": "No Email"}, receipt_email=None)
    twin.update_charge(old_charge, refunded=True, amount_refunded=1000)

    batches, records = pull_all(connector, cursor)
    by_id = {r.external_id: r for r in records}
    assert set(by_id) == {new, old, anonymous, old_charge}
    assert Category.PHONE in by_id[old].categories
    assert by_id[anonymous].email is None
    assert {Category.CARD_LAST4, Category.PAYMENT_METHOD_TYPE, Category.NAME} <= \
        by_id[anonymous].categories
    assert [k for b in batches for k in b.gone] == [Key("customer", leaving)]
    assert batches[-1].complete and not batches[-1].listed_types
    assert twin.requests_to("/v1/events") == 2
    marks = json.loads(batches[-1].cursor)
    assert marks["event"] == max(e["created"] for e in twin.events())
    assert marks["customer"] == twin.customer(new)["created"]
    assert marks["charge"] == twin.charge(anonymous)["created"]


def test_deleted_customer_stays_gone_on_the_next_full_pull(
        twin: StripeTwin, server: TwinServer) -> None:
    gone = twin.add_customer(email="gone@example.com")
    twin.add_charge(customer=gone, billing_details={"email": "gone@example.com"})
    twin.delete_customer(gone)
    _, records = pull_all(make(server))
    assert [r.record_type for r in records] == ["charge"]
    assert records[0].parent_id == gone


def test_stale_cursor_lists_everything_again_when_events_may_have_expired(
        twin: StripeTwin, server: TwinServer) -> None:
    for index in range(3):
        twin.add_customer(email=f"p{index}@example.com", created=1_500_000_000 + index)
    twin.add_charge(created=1_500_000_000)
    connector = make(server)
    first, _ = pull_all(connector)
    cursor = json.loads(first[-1].cursor)
    cursor["at"] -= 30 * 86400
    batches, records = pull_all(connector, json.dumps(cursor))
    assert len(records) == 4
    assert batches[-1].listed_types == {"customer", "charge"}


def test_lookup_returns_customers_their_charges_and_guest_charges(
        twin: StripeTwin, server: TwinServer) -> None:
    mine = twin.add_customer(email="ada@example.com", name="Ada")
    owned = twin.add_charge(customer=mine, billing_details={"name": "Ada"})
    guest = twin.add_charge(billing_details={"email": "ADA@example.com"})
    twin.add_charge(billing_details={"email": "bob@example.com"})
    found = make(server).lookup("Ada@Example.com ")
    assert sorted((f["record_type"], f["external_id"]) for f in found) == sorted(
        [("customer", mine), ("charge", owned), ("charge", guest)])
    assert next(f for f in found if f["external_id"] == mine)["data"] == twin.customer(mine)


def test_records_carry_no_canary_values(twin: StripeTwin, server: TwinServer) -> None:
    canary = "CANARY-7f3a"
    address = {"line1": f"{canary} street", "city": canary, "postal_code": canary}
    cus = twin.add_customer(email="c@example.com", name=canary, phone=f"+44 {canary}",
                            address=address, shipping={"name": canary, "address": address},
                            description=canary, metadata={"note": canary})
    twin.add_charge(customer=cus, billing_details={"name": canary, "phone": canary,
                                                   "email": "c@example.com",
                                                   "address": address},
                    shipping={"name": canary, "address": address}, description=canary,
                    metadata={"x": canary})
    batches, records = pull_all(make(server))
    assert len(records) == 2
    assert canary not in repr(batches)


def test_unknown_new_fields_from_stripe_are_ignored(twin: StripeTwin,
                                                    server: TwinServer) -> None:
    twin.add_customer(email="new@example.com", extra={"loyalty": {"tier": [1, {"x": None}]}})
    twin.add_charge(billing_details={"email": "new@example.com"},
                    extra={"payment_method_details": {"type": "future_pay",
                                                      "future_pay": {"token": "t"}},
                           "risk_insights": [{"score": 3}]})
    _, records = pull_all(make(server))
    charge = next(r for r in records if r.record_type == "charge")
    assert Category.PAYMENT_METHOD_TYPE in charge.categories
    assert Category.CARD_LAST4 not in charge.categories
    assert {r.email for r in records} == {"new@example.com"}


# -- faults ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, options", [
    ("status", {"status": 429, "retry_after": "0"}),
    ("status", {"status": 500}),
    ("status", {"status": 503}),
    ("drop", {}),
    ("truncate", {}),
    ("hang", {"seconds": 1.0}),
])
def test_pull_recovers_when_the_twin_injects(twin: StripeTwin, server: TwinServer,
                                             kind: str, options: dict[str, Any]) -> None:
    for index in range(3):
        twin.add_customer(email=f"p{index}@example.com")
    twin.faults.inject(kind, path="/v1/customers", **options)
    batches, records = pull_all(make(server, timeout=0.3))
    assert len(records) == 3 and batches[-1].complete
    assert sum(twin.faults.injected.values()) == 1
    assert twin.requests_to("/v1/customers") == 2


def test_html_page_with_200_is_fatal(twin: StripeTwin, server: TwinServer) -> None:
    twin.faults.inject("html", path="/v1/customers")
    with pytest.raises(FatalAPIError, match="HTML page"):
        pull_all(make(server))


def test_wrong_key_is_refused_with_401_and_the_message_has_no_key(
        twin: StripeTwin, server: TwinServer) -> None:
    wrong = "sk_live_51WrongKeyWrongKeyWrongKey9876"
    with pytest.raises(FatalAPIError) as caught:
        pull_all(make(server, api_key=wrong))
    message = str(caught.value)
    assert caught.value.status == 401 and "refused the API key" in message
    assert "Invalid API Key provided" in message and "request req_" in message
    assert wrong not in message and "9876" not in message and "sk_live" not in message


def test_restricted_key_without_events_is_refused_naming_events(
        twin: StripeTwin, server: TwinServer) -> None:
    restricted = "rk_live_51RestrictedKeyAbcdefgh4321"
    twin.add_restricted_key(restricted, {"customers:read", "charges:read"})
    with pytest.raises(FatalAPIError) as caught:
        pull_all(make(server, api_key=restricted))
    message = str(caught.value)
    assert caught.value.status == 403
    assert "lacks Read permission on Events" in message
    assert "rak_event_read" in message
    assert restricted not in message and "4321" not in message and "rk_live" not in message


def test_read_only_restricted_key_is_enough(twin: StripeTwin, server: TwinServer) -> None:
    restricted = "rk_live_51ReadOnly"
    twin.add_restricted_key(restricted, {"customers:read", "charges:read", "events:read"})
    twin.add_customer(email="a@example.com")
    _, records = pull_all(make(server, api_key=restricted))
    assert len(records) == 1
    refused = requests.delete(f"{server.url}/v1/customers/{records[0].external_id}",
                              headers={"Authorization": f"Bearer {restricted}"}, timeout=5)
    assert refused.status_code == 403


# -- the twin speaks Stripe -----------------------------------------------------------------------
def test_every_answer_carries_a_request_id(twin: StripeTwin, server: TwinServer) -> None:
    twin.faults.inject("status", status=500, path="/v1/charges")
    answers = [get(server, "/v1/customers"), get(server, "/v1/customers", key=None),
               get(server, "/v1/charges"), get(server, "/v1/nothing")]
    assert [a.status_code for a in answers] == [200, 401, 500, 404]
    assert all(a.headers["Request-Id"].startswith("req_") for a in answers)
    assert answers[2].json()["error"]["type"] == "api_error"


def test_missing_and_wrong_keys_get_stripes_error_body(twin: StripeTwin,
                                                       server: TwinServer) -> None:
    missing = get(server, "/v1/customers", key=None).json()["error"]
    assert missing["type"] == "invalid_request_error"
    assert missing["message"].startswith("You did not provide an API key.")
    wrong = get(server, "/v1/customers", key="sk_test_wrongwrong1234").json()["error"]
    assert wrong["message"] == "Invalid API Key provided: sk_test_**********1234"


def test_basic_auth_with_the_key_as_user_is_accepted(twin: StripeTwin,
                                                     server: TwinServer) -> None:
    token = base64.b64encode(f"{KEY}:".encode()).decode()
    answer = requests.get(f"{server.url}/v1/customers", timeout=5,
                          headers={"Authorization": f"Basic {token}"})
    assert answer.status_code == 200 and answer.json()["object"] == "list"


@pytest.mark.parametrize("limit, message", [
    ("0", "greater than or equal to 1"), ("101", "less than or equal to 100"),
    ("ten", "Invalid integer: ten")])
def test_limit_outside_1_to_100_is_a_400(twin: StripeTwin, server: TwinServer,
                                         limit: str, message: str) -> None:
    answer = get(server, "/v1/charges", limit=limit)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "limit"
    assert message in error["message"]


def test_unknown_parameter_is_a_400(twin: StripeTwin, server: TwinServer) -> None:
    answer = get(server, "/v1/customers", updated_since="1")
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "Received unknown parameter: updated_since"


def test_lists_page_newest_first_both_ways_and_filter_on_created(
        twin: StripeTwin, server: TwinServer) -> None:
    ids = [twin.add_customer(email=f"p{i}@example.com", created=1000 + i) for i in range(7)]
    newest_first = ids[::-1]
    first = get(server, "/v1/customers", limit=3).json()
    assert first["url"] == "/v1/customers" and first["has_more"] is True
    assert [c["id"] for c in first["data"]] == newest_first[:3]
    second = get(server, "/v1/customers", limit=3, starting_after=newest_first[2]).json()
    assert [c["id"] for c in second["data"]] == newest_first[3:6] and second["has_more"]
    back = get(server, "/v1/customers", limit=2, ending_before=newest_first[5]).json()
    assert [c["id"] for c in back["data"]] == newest_first[3:5] and back["has_more"]
    window = get(server, "/v1/customers", **{"created[gte]": 1002, "created[lt]": 1005}).json()
    assert [c["id"] for c in window["data"]] == [ids[4], ids[3], ids[2]]
    assert window["has_more"] is False
    exact = get(server, "/v1/customers", email="p3@example.com").json()
    assert [c["id"] for c in exact["data"]] == [ids[3]]
    assert get(server, "/v1/customers", email="P3@example.com").json()["data"] == []


def test_charges_filter_on_customer_and_expand_it(twin: StripeTwin,
                                                  server: TwinServer) -> None:
    cus = twin.add_customer(email="a@example.com")
    mine = twin.add_charge(customer=cus)
    twin.add_charge()
    listed = get(server, "/v1/charges", customer=cus, **{"expand[]": "data.customer"}).json()
    assert [c["id"] for c in listed["data"]] == [mine]
    assert listed["data"][0]["customer"]["email"] == "a@example.com"


def test_deleting_a_customer_answers_the_deleted_shape_and_emits_an_event(
        twin: StripeTwin, server: TwinServer) -> None:
    cus = twin.add_customer(email="a@example.com")
    answer = requests.delete(f"{server.url}/v1/customers/{cus}", timeout=5,
                             headers={"Authorization": f"Bearer {KEY}"})
    deleted = {"id": cus, "object": "customer", "deleted": True}
    assert answer.status_code == 200 and answer.json() == deleted
    assert set(answer.json()) == set(fixture("deleted_customer"))
    assert get(server, f"/v1/customers/{cus}").json() == deleted
    assert get(server, "/v1/customers").json()["data"] == []
    assert [e["type"] for e in twin.events()] == ["customer.deleted", "customer.created"]
    again = requests.delete(f"{server.url}/v1/customers/{cus}", timeout=5,
                            headers={"Authorization": f"Bearer {KEY}"})
    assert again.status_code == 404 and again.json()["error"]["code"] == "resource_missing"


def test_objects_have_exactly_the_fields_of_the_official_fixtures(
        twin: StripeTwin, server: TwinServer) -> None:
    cus = twin.add_customer(email="a@example.com", shipping={"name": "A"})
    twin.update_customer(cus, name="A B")
    twin.add_charge(customer=cus, billing_details={"email": "a@example.com"})
    customer = get(server, f"/v1/customers/{cus}").json()
    charge = get(server, "/v1/charges").json()["data"][0]
    events = get(server, "/v1/events", **{"types[]": ["customer.updated"]}).json()["data"]
    assert set(customer) == set(fixture("customer"))
    assert set(charge) == set(fixture("charge"))
    assert set(charge["payment_method_details"]["card"]) == \
        set(fixture("charge")["payment_method_details"]["card"])
    assert [set(e) for e in events] == [set(fixture("event"))]
    assert events[0]["data"]["previous_attributes"] == {"name": None}
    assert events[0]["data"]["object"]["name"] == "A B"


def test_events_are_kept_30_days(twin: StripeTwin, server: TwinServer) -> None:
    twin.add_customer(email="a@example.com")
    assert len(get(server, "/v1/events").json()["data"]) == 1
    twin.advance(31 * 86400)
    assert get(server, "/v1/events").json()["data"] == []


def test_control_actions_mutate_the_twin_over_http(twin: StripeTwin,
                                                   server: TwinServer) -> None:
    made = requests.post(f"{server.url}/__twin__/add_customer", timeout=5,
                         json={"email": "ctl@example.com"}).json()["result"]
    requests.post(f"{server.url}/__twin__/add_charge", timeout=5,
                  json={"customer": made, "billing_details": {"email": "ctl@example.com"}})
    requests.post(f"{server.url}/__twin__/delete_customer", timeout=5, json={"id": made})
    truth = requests.post(f"{server.url}/__twin__/ground_truth", timeout=5).json()["result"]
    assert [tuple(t)[0::2] for t in truth] == [("charge", "ctl@example.com")]
    again = requests.post(f"{server.url}/__twin__/delete_customer", timeout=5,
                          json={"id": made}).json()["result"]
    assert "no such customer" in again["error"]
    unknown = requests.post(f"{server.url}/__twin__/frobnicate", timeout=5, json={})
    assert unknown.status_code == 404


# -- the official library against the twin -------------------------------------------------------
def test_official_stripe_library_lists_every_object_unmodified() -> None:
    twin, _, _ = seeded()
    with TwinServer(twin) as server:
        client = stripe.StripeClient(KEY, base_addresses={"api": server.url},
                                     max_network_retries=2)
        customers = list(client.v1.customers.list({"limit": 100}).auto_paging_iter())
        charges = list(client.v1.charges.list({"limit": 100}).auto_paging_iter())
    assert len(customers) > 50 and len(charges) > 100
    assert [c.id for c in customers] == twin.customer_ids()
    assert [c.id for c in charges] == twin.charge_ids()
    assert all(c.to_dict() == twin.customer(c.id) for c in customers)
    assert all(c.to_dict() == twin.charge(c.id) for c in charges)
    assert twin.requests_to("/v1/customers") == -(-len(customers) // 100)


def test_official_stripe_library_reads_a_deleted_customer(twin: StripeTwin,
                                                          server: TwinServer) -> None:
    cus = twin.add_customer(email="a@example.com")
    client = stripe.StripeClient(KEY, base_addresses={"api": server.url})
    client.v1.customers.delete(cus)
    assert client.v1.customers.retrieve(cus).to_dict() == {
        "id": cus, "object": "customer", "deleted": True}


# -- seeding ------------------------------------------------------------------------------------
def test_seeded_estate_is_the_same_when_the_spec_is_the_same() -> None:
    one, _, planted_one = seeded()
    two, _, planted_two = seeded()
    assert one.ground_truth() == two.ground_truth()
    assert planted_one == planted_two
    assert one.customer(one.customer_ids()[0]) == two.customer(two.customer_ids()[0])
    other, _, _ = seeded(EstateSpec(seed=8))
    assert other.ground_truth() != one.ground_truth()


def test_seeded_estate_plants_inactive_orphaned_and_clean_customers() -> None:
    spec = EstateSpec()
    twin, people, planted = seeded(spec)
    now = int(spec.now.timestamp())
    by_email = {p.email: p for p in people}
    last_charge: dict[str, int] = {}
    for ident in twin.charge_ids():
        charge = twin.charge(ident)
        assert charge is not None
        if charge["customer"]:
            last_charge[charge["customer"]] = max(last_charge.get(charge["customer"], 0),
                                                  charge["created"])
    rules = sorted((p.rule or "") for p in planted)
    assert rules == ["", "", "processor-copy-orphaned", "processor-copy-orphaned",
                     "stripe-customer-inactive", "stripe-customer-inactive"]
    for plant in planted:
        assert (plant.source, plant.record_type) == ("stripe", "customer")
        age = now - last_charge[plant.external_id]
        tags = by_email[plant.email].tags
        if plant.rule == "stripe-customer-inactive":
            assert STRIPE_NO_CHARGE in tags and 3.9 * YEAR < age < 4.2 * YEAR
        elif plant.rule == "processor-copy-orphaned":
            assert ERASED_FROM_SHOPS in tags and age < 1.5 * YEAR
        else:
            assert not tags and 0.9 * YEAR < age < 1.1 * YEAR
    unplanted = set(last_charge) - {p.external_id for p in planted}
    assert all(now - last_charge[c] < 1.5 * YEAR for c in unplanted)


def test_seeded_estate_has_guest_charges_and_charges_without_email() -> None:
    twin, _, _ = seeded(EstateSpec(people=400))
    charges = [twin.charge(i) for i in twin.charge_ids()]
    guests = [c for c in charges if c and c["customer"] is None]
    assert guests and any(c["billing_details"]["email"] for c in guests)
    assert any(c["billing_details"]["email"] is None and c["receipt_email"] is None
               for c in guests)
    assert any(t[2] is None for t in twin.ground_truth() if t[0] == "charge")


def test_bulk_twin_is_deterministic_and_sized(tmp_path: Any) -> None:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    one = seed_stripe.bulk(200, 2000, seed=3, now=now)
    two = seed_stripe.bulk(200, 2000, seed=3, now=now)
    truth = one.ground_truth()
    assert truth == two.ground_truth()
    assert sum(1 for t in truth if t[0] == "customer") == 200
    assert sum(1 for t in truth if t[0] == "charge") == 2000
    cutoff = int((now - timedelta(days=30)).timestamp())
    assert all(e["created"] >= cutoff for e in one.events())


# -- erasure writes (connectors.stripe.erase) --------------------------------------------------
def test_erase_deletes_the_customer_keeps_its_charges_and_repeats_harmlessly(
        twin: StripeTwin, server: TwinServer) -> None:
    from connectors.stripe import erase, fetch

    customer = twin.add_customer(email="ada@example.com", name="Ada Lovelace")
    charge = twin.add_charge(customer=customer,
                             billing_details={"email": "ada@example.com", "name": "Ada"})
    connector = make(server)
    assert erase(connector, "delete", "customer", customer) == ("deleted", None)
    assert fetch(connector, "customer", customer) is None
    assert [f["record_type"] for f in connector.lookup("ada@example.com")] == ["charge"]
    assert ("customer", customer, "ada@example.com") not in twin.ground_truth()
    assert fetch(connector, "charge", charge)["billing_details"]["email"] == "ada@example.com"
    assert erase(connector, "delete", "customer", customer) == ("already gone", None)
    with pytest.raises(ValueError, match="charges are payment records"):
        erase(connector, "delete", "charge", charge)


def test_erase_with_a_read_only_restricted_key_says_which_permission_is_missing(
        twin: StripeTwin, server: TwinServer) -> None:
    from connectors.stripe import erase

    twin.add_restricted_key("rk_test_readonly", {"customers:read", "charges:read"})
    customer = twin.add_customer(email="ada@example.com")
    with pytest.raises(FatalAPIError) as refused:
        erase(make(server, api_key="rk_test_readonly"), "delete", "customer", customer)
    assert refused.value.status == 403
    assert "Customers: Write" in refused.value.message
    assert "rk_test_readonly" not in refused.value.message
    assert ("customer", customer, "ada@example.com") in twin.ground_truth()


# -- check: everything sync and erase will need, tried with the configured key ----------------
def stripe_check(server: TwinServer, key: str):
    from daemon.check import run_checks
    from daemon.config import SecretSources, parse_settings

    settings = parse_settings(
        {"ledger": {"url": "sqlite://"}, "stripe": {"api_key": "env:STRIPE_KEY",
                                                   "base_url": server.url}},
        secrets=SecretSources(environ={"STRIPE_KEY": key}, credentials_dir=None))
    return next(r for r in run_checks(settings) if r.name == "stripe")


def test_check_fails_naming_events_when_the_restricted_key_cannot_read_them(
        twin: StripeTwin, server: TwinServer) -> None:
    restricted = "rk_test_51NoEventsAbcdefgh654321"
    twin.add_restricted_key(restricted, {"customers:read", "charges:read"})
    result = stripe_check(server, restricted)
    assert not result.ok
    assert result.detail.startswith("the restricted key may not read Events (403 Forbidden; "
                                    "Stripe asks for rak_event_read)")
    assert result.detail.endswith('In the Stripe Dashboard → Developers → API keys → edit the '
                                  'restricted key → give "Read" on Events.')
    assert restricted not in result.detail and "654321" not in result.detail


def test_check_names_every_read_the_key_lacks_at_once(twin: StripeTwin,
                                                      server: TwinServer) -> None:
    twin.add_restricted_key("rk_test_customersonly", {"customers:read"})
    result = stripe_check(server, "rk_test_customersonly")
    assert not result.ok
    assert 'give "Read" on Charges and Events' in result.detail
    assert "Stripe asks for rak_charge_read, rak_event_read" in result.detail
    # Every read was tried: one request to each list.
    assert [twin.requests_to(f"/v1/{name}", "GET") for name in
            ("customers", "charges", "events")] == [1, 1, 1]


def test_check_passes_a_read_only_key_and_says_erase_needs_write_on_customers(
        twin: StripeTwin, server: TwinServer) -> None:
    twin.add_restricted_key("rk_test_readonly", {"customers:read", "charges:read",
                                                 "events:read"})
    customer = twin.add_customer(email="ada@example.com")
    result = stripe_check(server, "rk_test_readonly")
    assert result.ok, result.detail
    assert result.detail.startswith("customers, charges and events readable")
    assert "erase cannot delete customers" in result.detail
    assert "rak_customer_write" in result.detail and 'give "Write" on Customers' in result.detail
    assert twin.requests_to("/v1/customers/", "DELETE") == 1
    assert twin.customer_ids() == [customer]


def test_check_says_erase_can_delete_when_the_key_may_write_customers(
        twin: StripeTwin, server: TwinServer) -> None:
    # Write implies read, as in Stripe's Dashboard.
    twin.add_restricted_key("rk_test_eraser", {"customers:write", "charges:read",
                                               "events:read"})
    customer = twin.add_customer(email="ada@example.com")
    result = stripe_check(server, "rk_test_eraser")
    assert result.ok, result.detail
    assert result.detail == "customers, charges and events readable; erase can delete customers"
    assert twin.customer_ids() == [customer] and len(twin.events()) == 1


# -- the twin answers as Stripe does --------------------------------------------------------------
def test_restricted_key_lacking_a_permission_gets_stripes_403_body(
        twin: StripeTwin, server: TwinServer) -> None:
    restricted = "rk_test_51Restricted0000abcdef"
    twin.add_restricted_key(restricted, {"customers:read"})
    answer = get(server, "/v1/charges", key=restricted)
    assert answer.status_code == 403
    assert answer.json() == {"error": {
        "message": f"The provided key 'rk_test_{'*' * (len(restricted) - 14)}abcdef' does not "
                   f"have the required permissions for this endpoint on account "
                   f"'{twin.account}'. Having the 'rak_charge_read' permission would allow "
                   "this request to continue.",
        "type": "invalid_request_error"}}
    client = stripe.StripeClient(restricted, base_addresses={"api": server.url})
    with pytest.raises(stripe.PermissionError, match="rak_charge_read"):
        client.v1.charges.list({"limit": 1})


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/customers"), ("GET", "/v1/charges"), ("GET", "/v1/events"),
    ("GET", "/v1/customers/{customer}"), ("GET", "/v1/charges/{charge}"),
    ("GET", "/v1/events/{event}"), ("DELETE", "/v1/customers/{customer}")])
@pytest.mark.parametrize("param", ["updated_since", "created[after]"])
def test_unknown_parameter_is_stripes_parameter_unknown_on_every_endpoint(
        twin: StripeTwin, server: TwinServer, method: str, path: str, param: str) -> None:
    customer = twin.add_customer(email="ada@example.com")
    charge = twin.add_charge(customer=customer)
    ids = {"customer": customer, "charge": charge, "event": twin.events()[0]["id"]}
    answer = requests.request(method, f"{server.url}{path.format(**ids)}", timeout=5,
                              params={param: "1"}, headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 400
    assert answer.json()["error"] == {
        "code": "parameter_unknown",
        "doc_url": "https://stripe.com/docs/error-codes/parameter-unknown",
        "message": f"Received unknown parameter: {param}", "param": param,
        "type": "invalid_request_error"}
    assert twin.customer_ids() == [customer]


def test_official_library_reads_parameter_unknown_as_stripe_raises_it(
        twin: StripeTwin, server: TwinServer) -> None:
    client = stripe.StripeClient(KEY, base_addresses={"api": server.url})
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.customers.list({"limit": 1, "updated_since": 1})
    assert caught.value.code == "parameter_unknown" and caught.value.param == "updated_since"
    assert caught.value.http_status == 400


def test_twin_imports_nothing_of_the_product() -> None:
    import ast
    from pathlib import Path

    import sandbox.stripe as module

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert not {name for name in imported
                if name.split(".")[0] in ("connectors", "daemon")}, imported


@pytest.mark.parametrize("text, email", [
    ("  Ada@Example.COM ", "ada@example.com"), ("ada@example", None), ("a@b@c.d", None),
    ("ada @example.com", None), ("@example.com", None), ("ada@.com", None),
    ("ada@example.", None), ("ada@ex.ample.", "ada@ex.ample."), (None, None)])
def test_twin_reads_emails_as_the_ledger_should_hold_them(text: str | None,
                                                         email: str | None) -> None:
    from connectors.base import normalise_email
    from sandbox.stripe import _ledger_email

    assert _ledger_email(text) == email == normalise_email(text)


# -- nothing pages for ever ----------------------------------------------------------------------
def listing_of(connector: StripeConnector, kind: str, cursor: str | None):
    if kind == "list_keys":
        return connector.list_keys()
    return connector.pull(cursor if kind == "incremental" else None)


@pytest.mark.parametrize("mode", ["ignore_cursor", "more_forever"])
@pytest.mark.parametrize("kind, resource", [("full", "charges"), ("full", "customers"),
                                            ("list_keys", "charges"),
                                            ("incremental", "events")])
def test_a_list_that_never_ends_is_fatal_instead_of_paging_for_ever(
        twin: StripeTwin, server: TwinServer, mode: str, kind: str, resource: str) -> None:
    cursor = pull_all(make(server))[0][-1].cursor
    for index in range(5):
        customer = twin.add_customer(email=f"p{index}@example.com")
        twin.add_charge(customer=customer, billing_details={"email": f"p{index}@example.com"})
    twin.stick_paging(resource, mode)
    before = twin.requests_to(f"/v1/{resource}")
    seen: list[Any] = []
    with pytest.raises(FatalAPIError, match="stopped making progress") as caught:
        for batch in listing_of(make(server, page_size=2), kind, cursor):
            seen.append(batch)
            assert len(seen) < 50, f"still paging {resource} after 50 pages"
    assert not any(b.complete for b in seen)
    assert f"/v1/{resource}" in caught.value.message and "request req_" in caught.value.message
    # Pages of two of five objects (ten events): at most one page more before it gave up.
    objects = 10 if resource == "events" else 5
    assert twin.requests_to(f"/v1/{resource}") - before <= -(-objects // 2) + 1


def test_a_sync_whose_list_never_ends_fails_with_the_reason_and_marks_nothing_gone(
        ledger: Any, twin: StripeTwin, server: TwinServer) -> None:
    from sqlalchemy import select

    from daemon.ledger import Holding, SyncRun
    from daemon.sync import sync_source

    customers = [twin.add_customer(email=f"p{i}@example.com") for i in range(5)]
    assert sync_source(ledger, make(server, page_size=2), full=True).ok
    twin.delete_customer(customers[0])
    stuck = requests.post(f"{server.url}/__twin__/stick_paging", timeout=5,
                          json={"resource": "customers", "mode": "more_forever"})
    assert stuck.json() == {"result": None}
    asked: list[bool] = []

    def should_stop() -> bool:
        # Only a guard for code that pages for ever: the run must end long before.
        asked.append(True)
        return len(asked) > 100

    result = sync_source(ledger, make(server, page_size=2), full=True, batch_size=1,
                         should_stop=should_stop)
    assert result.status == "failed"
    assert "/v1/customers stopped making progress" in (result.error or "")
    with ledger.sessions() as session:
        run = session.get(SyncRun, result.run_id)
        assert run is not None and run.status == "failed" and run.error == result.error
        gone = session.scalars(select(Holding.external_id)
                               .where(Holding.gone_at.is_not(None))).all()
    assert gone == [] and len(asked) < 10
