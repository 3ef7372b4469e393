"""Unit tests of the Stripe connector against canned Stripe answers (`responses`, no network)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from connectors.base import Batch, Category, Key, Skip
from connectors.http import FatalAPIError, RetriableAPIError
from connectors.limiter import TokenBucket
from connectors.stripe import (
    EVENT_TYPES,
    STRIPE_VERSION,
    Settings,
    classify_charge,
    classify_customer,
    connect,
    describe_error,
    redact_keys,
)
from sandbox.stripe import fixture

BASE = "https://api.stripe.test"
KEY = "rk_live_51HqLyjWDarjtT1zdp7dcXyzSECRET"
CARD = "4111 1111 1111 1111"


def make_connector(**overrides: Any):
    options: dict[str, Any] = {"api_key": KEY, "base_url": BASE, "sleep": lambda s: None}
    options.update(overrides)
    return connect(Settings(**options))


def customer(ident: str, created: int = 1_700_000_000, **values: Any) -> dict[str, Any]:
    obj = fixture("customer")
    obj.update(id=ident, created=created, discount=None, **values)
    return obj


def charge(ident: str, created: int = 1_700_000_000, **values: Any) -> dict[str, Any]:
    obj = fixture("charge")
    obj.update(id=ident, created=created, source=None, **values)
    return obj


def event(ident: str, kind: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
    ev = fixture("event")
    ev.update(id=ident, type=kind, created=created, data={"object": obj})
    return ev


def listing(path: str, data: list[dict[str, Any]], has_more: bool = False) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more, "url": path}


def query_of(call: Any) -> dict[str, list[str]]:
    return parse_qs(urlsplit(call.request.url).query)


class FakeStripe:
    """A tiny paging Stripe for `responses`: objects newest first, honouring limit and
    starting_after, recording every query."""

    def __init__(self, objects: dict[str, list[dict[str, Any]]]) -> None:
        self.objects = objects
        self.queries: list[tuple[str, dict[str, list[str]]]] = []

    def install(self, rsps: responses.RequestsMock) -> None:
        for path in self.objects:
            rsps.add_callback(responses.GET, f"{BASE}{path}", callback=self._answer(path))

    def _answer(self, path: str):
        def answer(request):
            query = parse_qs(urlsplit(request.url).query)
            self.queries.append((path, query))
            items = self.objects[path]
            if "starting_after" in query:
                ids = [o["id"] for o in items]
                items = items[ids.index(query["starting_after"][0]) + 1:]
            if "created[gte]" in query:
                items = [o for o in items if o["created"] >= int(query["created[gte]"][0])]
            limit = int(query.get("limit", ["10"])[0])
            body = listing(path, items[:limit], has_more=len(items) > limit)
            return 200, {"Request-Id": "req_fake"}, json.dumps(body)
        return answer


def drain(batches) -> tuple[list[Batch], list]:
    collected = list(batches)
    return collected, [r for b in collected for r in b.records]


# -- classification -----------------------------------------------------------------------------
def test_customer_categories_when_every_personal_field_is_filled() -> None:
    record = classify_customer(customer(
        "cus_1", email=" Ada@Example.COM ", name="Ada Lovelace", phone="+44 7700 900001",
        address={"city": "London", "country": "GB", "line1": "1 High St", "line2": None,
                 "postal_code": "E1 6AN", "state": None},
        shipping={"name": "Ada", "phone": None,
                  "address": {"line1": "2 Mill Rd", "city": "Leeds"}},
        description="prefers mornings", metadata={"note": f"card {CARD}"},
    ))
    assert record.email == "ada@example.com"
    assert record.categories == {
        Category.EMAIL, Category.NAME, Category.PHONE, Category.BILLING_ADDRESS,
        Category.DELIVERY_ADDRESS, Category.FREE_TEXT, Category.CARD_NUMBER}
    assert record.evidence == ("card number pattern in metadata.note",)
    assert record.created_at == datetime.fromtimestamp(1_700_000_000, UTC)
    assert Category.ACCOUNT not in record.categories
    for value in ("Lovelace", "High St", "7700", "1111", "mornings"):
        assert value not in repr(record)


def test_customer_holds_nothing_when_the_official_fixture_is_empty() -> None:
    record = classify_customer(customer("cus_QXg1o8vcGmoR32"))
    assert record.email is None
    assert record.categories == frozenset()
    assert record.parent_id is None


def test_customer_address_counts_when_only_the_country_is_set() -> None:
    record = classify_customer(customer("cus_2", address={"country": "GB", "city": None}))
    assert record.categories == {Category.BILLING_ADDRESS}


def test_charge_categories_from_the_official_fixture() -> None:
    record = classify_charge(fixture("charge"))
    assert record.record_type == "charge"
    assert record.external_id == "ch_1PgafuB7WZ01zgkWXYmPNZs8"
    assert record.email is None
    assert record.categories == {Category.NAME, Category.PAYMENT_METHOD_TYPE,
                                 Category.CARD_LAST4, Category.FREE_TEXT}
    assert record.status == "succeeded"
    assert record.created_at == record.last_activity_at == \
        datetime.fromtimestamp(1234567890, UTC)


def test_charge_email_falls_back_to_receipt_email_when_billing_has_none() -> None:
    record = classify_charge(charge("ch_1", receipt_email="Guest@Example.com",
                                    customer="cus_9"))
    assert record.email == "guest@example.com"
    assert Category.EMAIL in record.categories
    assert record.parent_id == "cus_9"


def test_charge_prefers_billing_email_when_both_are_set() -> None:
    obj = charge("ch_1", receipt_email="receipt@example.com")
    obj["billing_details"]["email"] = "Billing@Example.com"
    assert classify_charge(obj).email == "billing@example.com"


def test_charge_is_kept_without_email_when_it_has_neither_customer_nor_email() -> None:
    obj = charge("ch_anon", customer=None, receipt_email=None, description=None)
    obj["billing_details"].update(email=None, name=None)
    record = classify_charge(obj)
    assert record.email is None
    assert record.parent_id is None
    assert record.categories == {Category.PAYMENT_METHOD_TYPE, Category.CARD_LAST4}


def test_charge_shipping_and_card_number_in_description_are_found() -> None:
    obj = charge("ch_2", description=f"customer said {CARD}",
                 shipping={"name": "X", "phone": "+1 555", "carrier": None,
                           "tracking_number": None, "address": {"line1": "1 Road"}})
    record = classify_charge(obj)
    assert {Category.DELIVERY_ADDRESS, Category.PHONE, Category.CARD_NUMBER} <= record.categories
    assert record.evidence == ("card number pattern in description",)
    assert CARD.replace(" ", "") not in repr(record) and CARD not in repr(record)


def test_charge_from_a_legacy_card_source_counts_card_and_owner() -> None:
    obj = charge("ch_3", payment_method_details=None)
    obj["billing_details"]["name"] = None
    obj["description"] = None
    obj["source"] = {"object": "card", "brand": "Visa", "last4": "4242", "name": "Jenny",
                     "address_zip": "94103", "address_zip_check": "pass"}
    assert classify_charge(obj).categories == {
        Category.PAYMENT_METHOD_TYPE, Category.CARD_LAST4, Category.NAME,
        Category.BILLING_ADDRESS}


def test_unknown_new_fields_and_odd_types_are_ignored_when_classifying() -> None:
    obj = charge("ch_4", billing_details="redacted", shipping=[], payment_method_details={
        "type": "new_wallet", "new_wallet": {"last4": "1234"}}, metadata=None,
        brand_new_field={"nested": [1, 2, {"deep": True}]}, customer={"id": "cus_exp"})
    record = classify_charge(obj)
    assert record.categories == {Category.PAYMENT_METHOD_TYPE, Category.FREE_TEXT}
    assert record.parent_id == "cus_exp"
    cust = classify_customer(customer("cus_5", shipping="?", metadata=["x"],
                                      invoice_settings=None, tomorrow_field=1))
    assert cust.categories == {Category.FREE_TEXT}


# -- errors -------------------------------------------------------------------------------------
def test_describe_error_gives_stripes_words_and_request_id_without_the_key() -> None:
    with responses.RequestsMock() as rsps:
        rsps.get(f"{BASE}/x", status=401, headers={"Request-Id": "req_abc"}, json={"error": {
            "message": "Invalid API Key provided: sk_live_**********************WXYZ",
            "type": "invalid_request_error"}})
        import requests
        text = describe_error(requests.get(f"{BASE}/x", timeout=5))
    assert text == "Invalid API Key provided: [key] (invalid_request_error); request req_abc"


def test_redact_keys_hides_whole_and_masked_keys() -> None:
    text = redact_keys("a sk_test_abc123 b rk_live_****9f c pk_live_x")
    assert "abc123" not in text and "9f" not in text
    assert text == "a [key] b [key] c [key]"


@responses.activate
def test_wrong_key_is_fatal_with_an_owner_message_and_no_key() -> None:
    responses.get(f"{BASE}/v1/events", status=401, headers={"Request-Id": "req_401"}, json={
        "error": {"message": f"Invalid API Key provided: {KEY[:8]}****{KEY[-4:]}",
                  "type": "invalid_request_error"}})
    with pytest.raises(FatalAPIError) as caught:
        list(make_connector().pull(None))
    message = str(caught.value)
    assert caught.value.status == 401
    assert "refused the API key" in message and "req_401" in message
    assert KEY not in message and KEY[-4:] not in message and "rk_live_" not in message
    assert len(responses.calls) == 1


@responses.activate
def test_restricted_key_names_the_missing_permission_when_events_are_forbidden() -> None:
    responses.get(f"{BASE}/v1/events", status=403, headers={"Request-Id": "req_403"}, json={
        "error": {"message": f"The provided key '{KEY[:8]}******{KEY[-4:]}' does not have the "
                  "required permissions for this endpoint on account 'acct_1'. Having the "
                  "'rak_event_read' permission would allow this request to continue.",
                  "type": "invalid_request_error"}})
    with pytest.raises(FatalAPIError) as caught:
        list(make_connector().pull(None))
    message = str(caught.value)
    assert "Read permission on Events" in message
    assert "Customers, Charges and Events" in message
    assert KEY not in message and KEY[-4:] not in message


@responses.activate
def test_restricted_key_names_customers_when_customers_are_forbidden() -> None:
    responses.get(f"{BASE}/v1/customers", status=403, json={"error": {
        "message": "no", "type": "invalid_request_error"}})
    with pytest.raises(FatalAPIError, match="Read permission on Customers"):
        list(make_connector().list_keys())


@responses.activate
def test_rate_limit_is_retried_honouring_retry_after() -> None:
    waits: list[float] = []
    responses.get(f"{BASE}/v1/customers", status=429, headers={"Retry-After": "3"},
                  json={"error": {"type": "invalid_request_error", "code": "rate_limit",
                                  "message": "Request rate limit exceeded."}})
    responses.get(f"{BASE}/v1/customers", json=listing("/v1/customers", []))
    responses.get(f"{BASE}/v1/charges", json=listing("/v1/charges", []))
    batches = list(make_connector(sleep=waits.append).list_keys())
    assert 3.0 in waits
    assert batches[-1].complete


@responses.activate
def test_server_errors_end_as_retriable_after_the_configured_attempts() -> None:
    responses.get(f"{BASE}/v1/customers", status=500,
                  json={"error": {"type": "api_error", "message": "boom"}})
    responses.get(f"{BASE}/v1/charges", json=listing("/v1/charges", []))
    with pytest.raises(RetriableAPIError, match="gave up after 3 attempts"):
        list(make_connector(retry_attempts=3).list_keys())
    assert sum("/v1/customers" in call.request.url for call in responses.calls) == 3


@responses.activate
def test_html_answer_with_200_is_fatal_not_an_empty_list() -> None:
    responses.get(f"{BASE}/v1/customers", body="<!DOCTYPE html><html>maintenance</html>",
                  content_type="text/html")
    with pytest.raises(FatalAPIError, match="HTML page"):
        list(make_connector().list_keys())


@responses.activate
def test_a_body_that_is_not_a_stripe_list_is_fatal() -> None:
    responses.get(f"{BASE}/v1/customers", json={"hello": "world"})
    with pytest.raises(FatalAPIError, match="did not answer with a Stripe list"):
        list(make_connector().list_keys())


@responses.activate
def test_has_more_without_any_id_is_fatal_instead_of_looping() -> None:
    responses.get(f"{BASE}/v1/customers", json=listing("/v1/customers", [{"x": 1}], True))
    with pytest.raises(FatalAPIError, match="no id to continue from"):
        list(make_connector().list_keys())


# -- pulls --------------------------------------------------------------------------------------
@responses.activate
def test_every_request_sends_bearer_auth_and_the_pinned_version() -> None:
    responses.get(f"{BASE}/v1/customers", json=listing("/v1/customers", []))
    responses.get(f"{BASE}/v1/charges", json=listing("/v1/charges", []))
    list(make_connector().list_keys())
    for call in responses.calls:
        assert call.request.headers["Authorization"] == f"Bearer {KEY}"
        assert call.request.headers["Stripe-Version"] == STRIPE_VERSION


@pytest.mark.parametrize("count", [0, 1, 100, 101, 250])
def test_full_pull_pages_every_object_when_there_are_count_customers(count: int) -> None:
    customers = [customer(f"cus_{i:04d}", created=2_000_000 - i, email=f"p{i}@example.com")
                 for i in range(count)]
    fake = FakeStripe({"/v1/events": [], "/v1/customers": customers,
                       "/v1/charges": [charge("ch_1", customer="cus_0000")]})
    with responses.RequestsMock() as rsps:
        fake.install(rsps)
        batches, records = drain(make_connector().pull(None))
    assert [r.external_id for r in records if r.record_type == "customer"] == \
        [c["id"] for c in customers]
    pages = [q for path, q in fake.queries if path == "/v1/customers"]
    assert len(pages) == max(1, -(-count // 100))
    assert all(q["limit"] == ["100"] for q in pages)
    if count > 100:
        assert pages[1]["starting_after"] == ["cus_0099"]
    assert [b.complete for b in batches] == [False] * (len(batches) - 1) + [True]
    assert [b.cursor is not None for b in batches] == [False] * (len(batches) - 1) + [True]
    assert batches[-1].listed_types == {"customer", "charge"}


def test_full_pull_cursor_holds_the_newest_created_of_each_list() -> None:
    fake = FakeStripe({
        "/v1/events": [event("evt_1", "customer.created", customer("cus_a"), 5000)],
        "/v1/customers": [customer("cus_b", created=4000), customer("cus_a", created=3000)],
        "/v1/charges": [charge("ch_a", created=4500)],
    })
    with responses.RequestsMock() as rsps:
        fake.install(rsps)
        batches, _ = drain(make_connector().pull(None))
    cursor = json.loads(batches[-1].cursor)
    assert (cursor["customer"], cursor["charge"], cursor["event"]) == (4000, 4500, 5000)
    assert abs(cursor["at"] - datetime.now(UTC).timestamp()) < 60
    assert fake.queries[0] == ("/v1/events", {"limit": ["1"]})


def test_full_pull_skips_unreadable_items_naming_only_the_type() -> None:
    fake = FakeStripe({"/v1/events": [], "/v1/customers": [
        customer("cus_ok", email="ok@example.com"), {"object": "customer", "email": "x@y.z"}],
        "/v1/charges": []})
    fake.objects["/v1/customers"].append("not an object")  # type: ignore[arg-type]
    with responses.RequestsMock() as rsps:
        fake.install(rsps)
        batches, records = drain(make_connector().pull(None))
    skipped = [s for b in batches for s in b.skipped]
    assert [r.external_id for r in records] == ["cus_ok"]
    assert skipped == [Skip("customer", None, "customer in Stripe's list without an id"),
                       Skip("customer", None, "customer in Stripe's list not an object")]
    assert "x@y.z" not in repr(skipped)


def recent_cursor(mark: int, at: datetime | None = None) -> str:
    moment = int((at or datetime.now(UTC)).timestamp())
    return json.dumps({"v": 1, "customer": mark, "charge": mark, "event": mark, "at": moment})


def test_incremental_pull_reads_new_objects_from_events_since_the_cursor_minus_overlap(
) -> None:
    mark = 1_800_000_000
    new_customer = customer("cus_new", created=mark + 50, email="new@example.com")
    new_charge = charge("ch_new", created=mark + 60)
    fake = FakeStripe({
        "/v1/events": [event("evt_2", "charge.succeeded", new_charge, mark + 60),
                       event("evt_1", "customer.created", new_customer, mark + 50)],
    })
    with responses.RequestsMock() as rsps:
        fake.install(rsps)
        batches, records = drain(make_connector(overlap=timedelta(minutes=10)).pull(
            recent_cursor(mark)))
    # One request: the event feed holds the creations too, so no list is read twice.
    assert [path for path, _ in fake.queries] == ["/v1/events"]
    queries = dict((path, q) for path, q in fake.queries)
    assert queries["/v1/events"]["created[gte]"] == [str(mark - 600)]
    assert queries["/v1/events"]["types[]"] == list(EVENT_TYPES)
    assert {r.external_id for r in records} == {"cus_new", "ch_new"}
    last = batches[-1]
    assert last.complete and not last.listed_types
    cursor = json.loads(last.cursor)
    assert (cursor["customer"], cursor["charge"], cursor["event"]) == \
        (mark + 50, mark + 60, mark + 60)


def test_incremental_pull_turns_events_into_changes_and_gone_keys() -> None:
    mark = 1_800_000_000
    old = customer("cus_old", created=1_000, email="old@example.com", phone="+44 1")
    fake = FakeStripe({
        "/v1/events": [
            event("evt_5", "customer.deleted", customer("cus_gone", created=900), mark + 40),
            event("evt_4", "customer.updated", old, mark + 30),
            event("evt_3", "charge.refunded", charge("ch_old", created=800,
                                                      status="succeeded"), mark + 20),
            event("evt_2", "customer.updated", customer("cus_old", created=1_000), mark + 10),
            event("evt_1", "customer.created",
                  customer("cus_new", created=mark + 5, email="n@example.com"), mark + 5),
            event("evt_0", "invoice.paid", {"object": "invoice", "id": "in_1"}, mark + 1),
        ],
    })
    with responses.RequestsMock() as rsps:
        fake.install(rsps)
        batches, records = drain(make_connector().pull(recent_cursor(mark)))
    by_id = {r.external_id: r for r in records}
    # The newest event of each object, once.
    assert sorted(by_id) == ["ch_old", "cus_new", "cus_old"]
    assert len(records) == 3
    assert by_id["cus_old"].categories == {Category.EMAIL, Category.PHONE}
    assert [k for b in batches for k in b.gone] == [Key("customer", "cus_gone")]
    assert json.loads(batches[-1].cursor)["event"] == mark + 40


def test_incremental_pull_marks_gone_a_customer_created_then_deleted() -> None:
    mark = 1_800_000_000
    fake = FakeStripe({
        "/v1/events": [
            event("evt_9", "customer.deleted", customer("cus_new"), mark + 9),
            event("evt_5", "customer.created",
                  customer("cus_new", created=mark + 5, email="n@example.com"), mark + 5),
        ],
    })
    with responses.RequestsMock() as rsps:
        fake.install(rsps)
        batches, records = drain(make_connector().pull(recent_cursor(mark)))
    # Its deletion is its latest state: never held, only marked gone.
    assert records == []
    assert batches[-1].gone == [Key("customer", "cus_new")]


def test_cursor_older_than_the_event_retention_makes_a_full_listing() -> None:
    fake = FakeStripe({"/v1/events": [], "/v1/customers": [customer("cus_1", created=10)],
                       "/v1/charges": [charge("ch_1", created=10)]})
    stale = recent_cursor(1_700_000_000, at=datetime.now(UTC) - timedelta(days=30))
    with responses.RequestsMock() as rsps:
        fake.install(rsps)
        batches, records = drain(make_connector().pull(stale))
    assert all("created[gte]" not in q for _, q in fake.queries)
    assert batches[-1].listed_types == {"customer", "charge"}
    assert {r.external_id for r in records} == {"cus_1", "ch_1"}
    # The marks never go back.
    assert json.loads(batches[-1].cursor)["customer"] == 1_700_000_000


@pytest.mark.parametrize("cursor", ["not json", '{"v": 2}', '{"v": 1, "at": "x"}', "[]"])
def test_unreadable_cursor_makes_a_full_pull(cursor: str) -> None:
    fake = FakeStripe({"/v1/events": [], "/v1/customers": [], "/v1/charges": []})
    with responses.RequestsMock() as rsps:
        fake.install(rsps)
        batches, _ = drain(make_connector().pull(cursor))
    assert batches[-1].listed_types == {"customer", "charge"}


def test_list_keys_is_complete_only_on_the_last_batch_of_charges() -> None:
    fake = FakeStripe({
        "/v1/customers": [customer(f"cus_{i}", created=100 - i) for i in range(3)],
        "/v1/charges": [charge(f"ch_{i}", created=100 - i) for i in range(3)],
    })
    with responses.RequestsMock() as rsps:
        fake.install(rsps)
        batches = list(make_connector(page_size=2).list_keys())
    assert [b.complete for b in batches] == [False, False, False, True]
    assert batches[-1].listed_types == {"customer", "charge"}
    # The two listings page side by side: each in its own order, interleaved as they answer.
    keys = [k for b in batches for k in b.keys]
    assert [k for k in keys if k.record_type == "customer"] == \
        [Key("customer", f"cus_{i}") for i in range(3)]
    assert [k for k in keys if k.record_type == "charge"] == \
        [Key("charge", f"ch_{i}") for i in range(3)]
    assert all("expand[]" not in q for _, q in fake.queries)


def test_lookup_finds_customers_their_charges_and_guest_charges_by_email() -> None:
    mine = customer("cus_me", email="Ada@Example.com")
    guest = charge("ch_guest", customer=None, receipt_email="ada@example.com")
    other = charge("ch_other", customer=None, receipt_email="bob@example.com")
    owned = charge("ch_owned", customer="cus_me")

    def customers(request):
        email = parse_qs(urlsplit(request.url).query)["email"][0]
        found = [mine] if email == "Ada@Example.com" else []
        return 200, {}, json.dumps(listing("/v1/customers", found))

    def charges(request):
        query = parse_qs(urlsplit(request.url).query)
        data = [owned] if query.get("customer") == ["cus_me"] else [guest, other, owned]
        return 200, {}, json.dumps(listing("/v1/charges", data))

    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.GET, f"{BASE}/v1/customers", callback=customers)
        rsps.add_callback(responses.GET, f"{BASE}/v1/charges", callback=charges)
        found = make_connector().lookup("Ada@Example.com")
        emails_tried = [parse_qs(urlsplit(c.request.url).query)["email"][0]
                        for c in rsps.calls if "/v1/customers" in c.request.url]
    assert emails_tried == ["Ada@Example.com", "ada@example.com"]
    assert [(f["record_type"], f["external_id"]) for f in found] == [
        ("customer", "cus_me"), ("charge", "ch_owned"), ("charge", "ch_guest")]
    assert found[0]["data"]["email"] == "Ada@Example.com"


# -- pacing and settings --------------------------------------------------------------------------
def test_token_bucket_paces_requests_beyond_the_burst() -> None:
    waits: list[float] = []
    bucket = TokenBucket(10.0, waits.append, clock=lambda: 100.0)
    for _ in range(12):
        bucket.take()
    assert waits == pytest.approx([0.1, 0.2])


def test_token_bucket_refills_with_time() -> None:
    now = [0.0]
    waits: list[float] = []
    bucket = TokenBucket(2.0, waits.append, clock=lambda: now[0])
    bucket.take()
    bucket.take()
    now[0] = 1.0
    bucket.take()
    bucket.take()
    assert waits == []


@responses.activate
def test_every_attempt_takes_a_token_from_the_connectors_bucket() -> None:
    responses.get(f"{BASE}/v1/customers", status=503, json={})
    responses.get(f"{BASE}/v1/customers", json=listing("/v1/customers", []))
    responses.get(f"{BASE}/v1/charges", json=listing("/v1/charges", []))
    waits: list[float] = []
    connector = make_connector()
    connector.limiter.bucket = TokenBucket(1.0, waits.append, clock=lambda: 0.0)
    list(connector.list_keys())
    # A burst of one, then each of the two further attempts waits its turn.
    assert len(responses.calls) == 3
    assert waits == pytest.approx([1.0, 2.0])


def test_settings_repr_never_shows_the_key() -> None:
    settings = Settings(api_key=KEY)
    assert KEY not in repr(settings)
    assert settings.page_size == 100 and settings.requests_per_second == 20.0
    assert settings.overlap == timedelta(minutes=10) and settings.retry_attempts == 5
    connector = connect(settings)
    assert (connector.source, connector.kind) == ("stripe", "stripe")
    connector.close()


# -- check's probe -------------------------------------------------------------------------------
@responses.activate
def test_probe_fails_when_a_list_is_not_a_stripe_list() -> None:
    responses.get(f"{BASE}/v1/customers", json=listing("/v1/customers", []))
    responses.get(f"{BASE}/v1/charges", json={"hello": "world"},
                  headers={"Request-Id": "req_odd"})
    with pytest.raises(FatalAPIError, match=r"/v1/charges answered, but not with a Stripe list "
                                            r"\(request req_odd\): is base_url the Stripe API"):
        make_connector().probe()


# -- base_url: https, or plain http to this machine only ----------------------------------------
def stripe_settings(base_url: str):
    from daemon.config import SecretSources, parse_settings

    return parse_settings({"stripe": {"api_key": "env:KEY", "base_url": base_url}},
                          secrets=SecretSources(environ={"KEY": KEY}, credentials_dir=None))


@pytest.mark.parametrize("url", ["http://api.stripe.com", "http://10.0.0.7:8080",
                                 "http://127.0.0.1.attacker.example", "http://[::2]:80",
                                 "http://stripe-twin.internal"])
def test_plain_http_base_url_to_another_machine_is_a_config_error_naming_the_key(
        url: str) -> None:
    from daemon.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        stripe_settings(url)
    [problem] = caught.value.problems
    assert problem.startswith("config: stripe.base_url: ")
    assert "plain HTTP" in problem and "use https://" in problem and KEY not in problem


@pytest.mark.parametrize("url", ["ftp://api.stripe.com", "api.stripe.com", "https://"])
def test_base_url_that_is_not_an_http_address_is_a_config_error(url: str) -> None:
    from daemon.config import ConfigError

    with pytest.raises(ConfigError, match="stripe.base_url: .* is not an http"):
        stripe_settings(url)


def test_plain_http_is_accepted_only_to_loopback_and_https_anywhere() -> None:
    from daemon.config import ConfigError

    accepted = ["http://127.0.0.1:8765", "http://127.8.9.10", "http://[::1]:8765",
                "http://localhost:8765", "https://api.stripe.com", "https://10.0.0.7"]
    for url in accepted:
        assert stripe_settings(url).stripe.base_url == url
    with pytest.raises(ConfigError):
        stripe_settings("http://192.168.1.20:8765")
