"""Unit tests of the WooCommerce connector: classification of the documented records,
authentication, error handling and paging, against `responses` (no real HTTP)."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from connectors.base import Category, Record, Skip
from connectors.http import FatalAPIError, RetriableAPIError
from connectors.woocommerce import (
    Settings,
    classify_customer,
    classify_order,
    connect,
    describe_error,
)

DATA = Path(__file__).resolve().parents[3] / "sandbox" / "data"
SHOP = "https://shop.example"
API = f"{SHOP}/wp-json/wc/v3"
KEY = "ck_0123456789abcdef0123456789abcdef01234567"
SECRET = "cs_fedcba9876543210fedcba9876543210fedcba98"
CARD = "4111 1111 1111 1111"


def docs_customer() -> dict[str, Any]:
    return copy.deepcopy(json.loads((DATA / "woocommerce_customers.json").read_text())[1])


def docs_order(index: int = 1) -> dict[str, Any]:
    """Index 1 is the documented completed order 723 of customer 26."""
    return copy.deepcopy(json.loads((DATA / "woocommerce_orders.json").read_text())[index])


def settings(url: str = SHOP, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"name": "allmyink", "url": url, "consumer_key": KEY,
                              "consumer_secret": SECRET, "sleep": lambda _: None}
    values.update(overrides)
    return Settings(**values)


def record(result: Record | Skip) -> Record:
    assert isinstance(result, Record), result
    return result


# -- classification ------------------------------------------------------------------------


def test_customer_from_docs_holds_account_email_name_addresses_and_phone() -> None:
    result = record(classify_customer(docs_customer()))
    assert result.record_type == "customer"
    assert result.external_id == "25"
    assert result.email == "john.doe@example.com"
    assert result.categories == {Category.ACCOUNT, Category.EMAIL, Category.NAME,
                                 Category.BILLING_ADDRESS, Category.DELIVERY_ADDRESS,
                                 Category.PHONE}
    assert result.status == "customer"
    assert result.created_at == datetime(2017, 3, 21, 19, 9, 28, tzinfo=UTC)
    assert result.modified_at == datetime(2017, 3, 21, 19, 9, 30, tzinfo=UTC)
    assert result.last_activity_at is None


def test_customer_last_activity_comes_from_wc_last_active_meta() -> None:
    data = docs_customer()
    data["meta_data"] = [{"id": 1, "key": "wc_last_active", "value": "1729987200"}]
    result = record(classify_customer(data))
    assert result.last_activity_at == datetime(2024, 10, 27, tzinfo=UTC)
    assert Category.FREE_TEXT not in result.categories


def test_customer_without_billing_holds_only_account_and_email_when_registered_bare() -> None:
    data = docs_customer()
    data.update(first_name="", last_name="")
    data["billing"] = dict.fromkeys(data["billing"], "")
    data["shipping"] = dict.fromkeys(data["shipping"], "")
    result = record(classify_customer(data))
    assert result.categories == {Category.ACCOUNT, Category.EMAIL}


def test_customer_meta_written_by_a_person_is_free_text_but_flags_are_not() -> None:
    data = docs_customer()
    data["meta_data"] = [{"id": 1, "key": "mailchimp_woocommerce_is_subscribed", "value": "1"},
                         {"id": 2, "key": "_internal_note", "value": "Imported from old shop"},
                         {"id": 3, "key": "vat_number", "value": "GB123456789"}]
    assert Category.FREE_TEXT not in record(classify_customer(data)).categories
    data["meta_data"].append({"id": 4, "key": "delivery_notes",
                              "value": "Ring twice, the bell is broken"})
    assert Category.FREE_TEXT in record(classify_customer(data)).categories


def test_card_number_in_customer_meta_is_flagged_without_the_digits() -> None:
    data = docs_customer()
    data["meta_data"] = [{"id": 1, "key": "_saved_card", "value": f"visa {CARD}"}]
    result = record(classify_customer(data))
    assert Category.CARD_NUMBER in result.categories
    assert result.evidence == ("card number pattern in meta_data[_saved_card]",)
    assert "4111" not in repr(result)


def test_order_from_docs_holds_every_category_it_carries() -> None:
    result = record(classify_order(docs_order()))
    assert result.record_type == "order"
    assert result.external_id == "723"
    assert result.email == "joao.silva@example.com"
    assert result.categories == {
        Category.ORDER_HISTORY, Category.EMAIL, Category.NAME, Category.BILLING_ADDRESS,
        Category.DELIVERY_ADDRESS, Category.PHONE, Category.PAYMENT_METHOD_TYPE,
        Category.IP_ADDRESS, Category.USER_AGENT}
    assert result.status == "completed"
    assert result.parent_id == "26"
    assert result.created_at == datetime(2017, 3, 21, 19, 16, tzinfo=UTC)
    assert result.last_activity_at == datetime(2017, 3, 21, 19, 54, 51, tzinfo=UTC)
    assert result.anonymised is False


def test_guest_order_has_no_parent_and_its_email_from_billing() -> None:
    data = docs_order(0)
    result = record(classify_order(data))
    assert data["customer_id"] == 0
    assert result.parent_id is None
    assert result.email == "john.doe@example.com"
    # The documented guest order has no IP or user agent recorded.
    assert Category.IP_ADDRESS not in result.categories
    assert Category.USER_AGENT not in result.categories


def test_order_last_activity_falls_back_from_completed_to_paid_to_modified() -> None:
    data = docs_order(0)
    data.update(date_completed_gmt="2017-03-25T10:00:00", date_paid_gmt="2017-03-22T19:28:08",
                date_modified_gmt="2017-03-26T09:00:00")
    assert record(classify_order(data)).last_activity_at == datetime(2017, 3, 25, 10,
                                                                     tzinfo=UTC)
    data.update(date_completed_gmt=None)
    assert record(classify_order(data)).last_activity_at == datetime(2017, 3, 22, 19, 28, 8,
                                                                     tzinfo=UTC)
    data.update(date_paid_gmt=None)
    assert record(classify_order(data)).last_activity_at == datetime(2017, 3, 26, 9,
                                                                     tzinfo=UTC)


def test_anonymised_order_holds_only_what_the_anonymiser_left() -> None:
    data = docs_order()
    for address in (data["billing"], data["shipping"]):
        for name in ("first_name", "last_name", "address_1", "city", "postcode"):
            address[name] = "[deleted]"
        address["state"] = address["country"] = ""
    data["billing"].update(email="deleted@site.invalid", phone="(00) 0000-0000")
    data.update(customer_ip_address="127.0.0.0", customer_user_agent="[deleted]",
                customer_id=0)
    data["meta_data"].append({"id": 9, "key": "_anonymized", "value": "yes"})
    result = record(classify_order(data))
    assert result.anonymised is True
    assert result.email is None
    assert result.parent_id is None
    assert result.categories == {Category.ORDER_HISTORY, Category.PAYMENT_METHOD_TYPE}


def test_order_without_email_is_still_a_record() -> None:
    data = docs_order()
    data["billing"]["email"] = ""
    result = record(classify_order(data))
    assert result.email is None
    assert Category.EMAIL not in result.categories
    assert Category.NAME in result.categories


@pytest.mark.parametrize("raw", ["  Joao.Silva@EXAMPLE.com ", "JOAO.SILVA@example.COM"])
def test_email_with_spaces_and_capitals_is_normalised(raw: str) -> None:
    data = docs_order()
    data["billing"]["email"] = raw
    assert record(classify_order(data)).email == "joao.silva@example.com"
    customer = docs_customer()
    customer["email"] = raw
    assert record(classify_customer(customer)).email == "joao.silva@example.com"


@pytest.mark.parametrize(("raw", "expected"), [
    ("", None),
    (None, None),
    ("0000-00-00 00:00:00", None),
    ("2017-03-21T19:16:00", datetime(2017, 3, 21, 19, 16, tzinfo=UTC)),
    ("2017-03-21T19:16:00Z", datetime(2017, 3, 21, 19, 16, tzinfo=UTC)),
    ("2017-03-21T21:16:00+02:00", datetime(2017, 3, 21, 19, 16, tzinfo=UTC)),
    ("not a date", None),
])
def test_odd_dates_are_parsed_or_none(raw: str | None, expected: datetime | None) -> None:
    data = docs_order()
    data.update(date_created_gmt=raw, date_modified_gmt=raw, date_completed_gmt=raw,
                date_paid_gmt=raw)
    result = record(classify_order(data))
    assert result.created_at == expected
    assert result.last_activity_at == expected


def test_card_number_in_customer_note_is_flagged_and_evidence_has_no_digits() -> None:
    data = docs_order()
    data["customer_note"] = f"Please use my card {CARD} exp 09/29"
    result = record(classify_order(data))
    assert {Category.CARD_NUMBER, Category.FREE_TEXT} <= result.categories
    assert result.evidence == ("card number pattern in customer_note",)
    assert not any(re.search(r"\d{4}", text) for text in result.evidence)
    assert "4111" not in repr(result)


def test_card_number_typed_into_an_address_line_is_flagged() -> None:
    data = docs_order()
    data["billing"]["address_2"] = "4111-1111-1111-1111"
    result = record(classify_order(data))
    assert result.evidence == ("card number pattern in billing.address_2",)
    # Beside a field that is not text at all, still found.
    data["shipping"]["city"] = 75001
    assert record(classify_order(data)).evidence == result.evidence


def test_digits_split_over_two_address_fields_are_not_a_card_number() -> None:
    data = docs_customer()
    data["billing"].update(address_1="Flat 4111 1111", address_2="1111 1111 Long Lane")
    result = record(classify_customer(data))
    assert Category.CARD_NUMBER not in result.categories


def test_note_with_short_digit_runs_is_free_text_not_a_card() -> None:
    data = docs_order()
    data["customer_note"] = "Leave with no. 12, door code 4417 2291, order 1234 5678"
    result = record(classify_order(data))
    assert Category.FREE_TEXT in result.categories
    assert Category.CARD_NUMBER not in result.categories
    assert result.evidence == ()


def test_order_bookkeeping_meta_is_not_free_text_but_a_gift_message_is() -> None:
    data = docs_order()
    data["meta_data"] = [{"id": 1, "key": "is_vat_exempt", "value": "no"},
                         {"id": 2, "key": "_download_permissions_granted", "value": "yes"}]
    assert Category.FREE_TEXT not in record(classify_order(data)).categories
    data["meta_data"].append({"id": 3, "key": "gift_message", "value": "Happy birthday Ana!"})
    assert Category.FREE_TEXT in record(classify_order(data)).categories


@pytest.mark.parametrize(("entry", "reason"), [
    ("not an object", "order entry is not a JSON object"),
    ({"status": "completed"}, "order entry without a valid id"),
    ({"id": 0}, "order entry without a valid id"),
    ({"id": True}, "order entry without a valid id"),
])
def test_unreadable_entries_become_skips_without_personal_values(entry: Any,
                                                                 reason: str) -> None:
    result = classify_order(entry)
    assert result == Skip("order", None, reason)


def test_entry_with_odd_shapes_is_read_as_far_as_it_goes() -> None:
    data = docs_order()
    data.update(billing=["not", "an", "object"], meta_data="nope", line_items=None)
    result = record(classify_order(data))
    assert result.email is None
    assert Category.ORDER_HISTORY in result.categories


# -- settings and authentication -----------------------------------------------------------


def test_settings_repr_hides_key_and_secret() -> None:
    text = repr(settings())
    assert KEY not in text and SECRET not in text


def test_basic_auth_over_plain_http_is_refused() -> None:
    with pytest.raises(ValueError, match="refusing to send the consumer key and secret") as err:
        connect(settings("http://shop.example", auth="basic"))
    assert KEY not in str(err.value) and SECRET not in str(err.value)


def test_basic_auth_over_plain_http_is_allowed_when_the_shop_is_on_loopback() -> None:
    connector = connect(settings("http://127.0.0.1:8080", auth="basic"))
    assert connector.client.session.auth == (KEY, SECRET)
    assert connector.client.signer is None


@pytest.mark.parametrize("url", ["shop.example", "ftp://shop.example", "https://"])
def test_address_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="is not an http"):
        connect(settings(url))


Reply = tuple[int, dict[str, str], str]


def page_reply(items: list[dict[str, Any]], total: int | None = None) -> Reply:
    headers = {"Content-Type": "application/json"}
    if total is not None:
        headers["X-WP-Total"] = str(total)
        headers["X-WP-TotalPages"] = "1"
    return 200, headers, json.dumps(items)


@responses.activate
def test_https_shop_is_read_with_basic_auth_and_no_oauth_parameters() -> None:
    seen: list[Any] = []

    def reply(request: Any) -> Reply:
        seen.append(request)
        return page_reply([], 0)

    responses.add_callback(responses.GET, re.compile(f"{API}/.*"), callback=reply)
    connector = connect(settings())
    list(connector.list_keys())
    assert seen, "no request was made"
    for request in seen:
        assert request.headers["Authorization"].startswith("Basic ")
        assert "oauth_" not in request.url


@responses.activate
def test_plain_http_shop_is_signed_with_oauth_afresh_on_every_retry() -> None:
    urls: list[str] = []

    def reply(request: Any) -> Reply:
        urls.append(request.url)
        if len(urls) == 1:
            return 500, {"Content-Type": "application/json"}, json.dumps(
                {"code": "internal_server_error", "message": "Boom", "data": {"status": 500}})
        return page_reply([], 0)

    base = "http://shop.example/wp-json/wc/v3"
    responses.add_callback(responses.GET, re.compile(f"{base}/customers.*"), callback=reply)
    connector = connect(settings("http://shop.example"))
    batches = connector.list_keys()
    next(batches)
    assert len(urls) == 2
    queries = [parse_qs(urlsplit(url).query) for url in urls]
    for query in queries:
        assert query["oauth_signature_method"] == ["HMAC-SHA256"]
        assert query["oauth_consumer_key"] == [KEY]
        assert "Authorization" not in responses.calls[0].request.headers
        assert query["role"] == ["all"]
    assert queries[0]["oauth_nonce"] != queries[1]["oauth_nonce"]


def test_oauth_base_string_is_the_documented_one() -> None:
    from connectors.woocommerce import oauth_base_string

    assert oauth_base_string("get", "http://www.example.com/wp-json/wc/v3/orders", {
        "oauth_signature_method": "HMAC-SHA1", "oauth_consumer_key": "abc123"}) == (
        "GET&http%3A%2F%2Fwww.example.com%2Fwp-json%2Fwc%2Fv3%2Forders&"
        "oauth_consumer_key%3Dabc123%26oauth_signature_method%3DHMAC-SHA1")


def test_oauth_base_string_encodes_as_rawurlencode_and_sorts_names_as_bytes() -> None:
    from connectors.woocommerce import oauth_base_string

    base = oauth_base_string("GET", "HTTP://Shop.Example:80/wp-json/wc/v3/orders", {
        "search": "a/b+c~d e%Zoë", "_fields": "id", "Zeta": "1"})
    # "Z" (0x5A) sorts before "_" (0x5F) before "s"; "/" is %2F, a space %20, "~" bare,
    # every % of the first encoding encoded again.
    assert base == ("GET&http%3A%2F%2Fshop.example%2Fwp-json%2Fwc%2Fv3%2Forders&"
                    "Zeta%3D1%26_fields%3Did%26search%3Da%252Fb%252Bc~d%2520e%2525Zo%25C3%25AB")


@responses.activate
def test_oauth_over_an_https_address_signs_the_http_address_wordpress_sees() -> None:
    from connectors.woocommerce import oauth_base_string, oauth_signature

    seen: list[str] = []

    def reply(request: Any) -> Reply:
        seen.append(request.url)
        return page_reply([], 0)

    responses.add_callback(responses.GET, re.compile(f"{API}/orders.*"), callback=reply)
    connector = connect(settings(auth="oauth"))
    connector.client.get_json("orders", {"search": "a/b@example.com"})
    query = {k: v[0] for k, v in parse_qs(urlsplit(seen[0]).query).items()}
    given = query.pop("oauth_signature")
    # Behind a TLS-terminating proxy WordPress's is_ssl() is false: it signs http://.
    assert given == oauth_signature(oauth_base_string(
        "GET", API.replace("https://", "http://") + "/orders", query), SECRET)


# -- errors --------------------------------------------------------------------------------


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "data": {"status": status}}


@responses.activate
def test_wrong_keys_raise_a_fatal_error_in_owner_words_without_the_key() -> None:
    responses.add(responses.GET, re.compile(f"{API}/customers.*"), status=401,
                  json=error_body(401, "woocommerce_rest_cannot_view",
                                  "Sorry, you cannot list resources."))
    connector = connect(settings())
    with pytest.raises(FatalAPIError) as err:
        list(connector.pull(None))
    text = str(err.value)
    assert text.startswith("woo:allmyink: the credentials were refused (401) — "
                           "woocommerce_rest_cannot_view: Sorry, you cannot list resources. ")
    assert KEY not in text and SECRET not in text
    assert len(responses.calls) == 1


@responses.activate
def test_oauth_key_refused_is_fatal_and_the_url_with_the_key_is_not_repeated() -> None:
    base = "http://shop.example/wp-json/wc/v3"
    responses.add(responses.GET, re.compile(f"{base}/customers.*"), status=401,
                  json=error_body(401, "woocommerce_rest_authentication_error",
                                  "Consumer key is invalid."))
    with pytest.raises(FatalAPIError) as err:
        list(connect(settings("http://shop.example")).list_keys())
    text = str(err.value)
    assert "Consumer key is invalid" in text
    assert KEY not in text and SECRET not in text and "oauth_signature" not in text


@responses.activate
def test_wrong_address_names_the_url_to_check() -> None:
    responses.add(responses.GET, re.compile(f"{API}/customers.*"), status=404,
                  json=error_body(404, "rest_no_route", "No route was found matching the "
                                  "URL and request method."))
    with pytest.raises(FatalAPIError, match="was not found \\(404\\).*rest_no_route"):
        list(connect(settings()).list_keys())


@responses.activate
def test_html_page_with_200_is_fatal_not_zero_records() -> None:
    responses.add(responses.GET, re.compile(f"{API}/customers.*"), status=200,
                  body="<!DOCTYPE html><html><body>Login</body></html>",
                  content_type="text/html")
    with pytest.raises(FatalAPIError, match="HTML page instead of JSON"):
        list(connect(settings()).pull(None))


@responses.activate
def test_json_that_is_not_a_list_is_fatal() -> None:
    responses.add(responses.GET, re.compile(f"{API}/customers.*"), status=200,
                  json={"customers": []})
    with pytest.raises(FatalAPIError, match="where the API returns a list"):
        list(connect(settings()).pull(None))


@responses.activate
def test_rate_limit_waits_as_long_as_retry_after_says() -> None:
    waits: list[float] = []
    responses.add(responses.GET, re.compile(f"{API}/customers.*"), status=429,
                  headers={"Retry-After": "7"},
                  json=error_body(429, "woocommerce_rest_too_many_requests", "Slow down"))
    responses.add(responses.GET, re.compile(f"{API}/customers.*"), status=200, json=[],
                  headers={"X-WP-Total": "0"})
    connector = connect(settings(sleep=waits.append))
    next(connector.list_keys())
    assert waits == [7.0]


@pytest.mark.parametrize("status", [500, 502, 503])
@responses.activate
def test_server_errors_are_retried_then_reported(status: int) -> None:
    responses.add(responses.GET, re.compile(f"{API}/customers.*"), status=status,
                  json=error_body(status, "internal_server_error", "Boom"))
    connector = connect(settings(retry_attempts=3))
    with pytest.raises(RetriableAPIError, match=f"server error {status}.*gave up after 3"):
        list(connector.list_keys())
    assert len(responses.calls) == 3


def test_describe_error_reads_the_wordpress_error_body_and_hints_at_clocks() -> None:
    response = responses_response(401, error_body(
        401, "woocommerce_rest_authentication_error", "Invalid timestamp."))
    assert describe_error(response) == (
        "woocommerce_rest_authentication_error: Invalid timestamp (this machine's clock and "
        "the shop's differ by more than 15 minutes)")
    assert describe_error(responses_response(500, ["not", "an", "error"])) is None


def responses_response(status: int, body: Any) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    return response


# -- paging and cursors --------------------------------------------------------------------


class FakeShop:
    """Just enough of the list endpoints for paging: offset/per_page over records sorted by
    id, status (any leaves the trash out), role, modified_after, include and X-WP-Total."""

    def __init__(self, customers: list[dict[str, Any]], orders: list[dict[str, Any]], *,
                 cap: int = 100, ignore_offset: bool = False) -> None:
        self.collections = {"customers": customers, "orders": orders}
        self.queries: list[tuple[str, dict[str, str]]] = []
        self.cap = cap
        self.ignore_offset = ignore_offset

    def reply(self, request: Any) -> Reply:
        parts = urlsplit(request.url)
        kind = parts.path.rsplit("/", 1)[-1]
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.queries.append((kind, query))
        items = list(self.collections[kind])
        if kind == "orders":
            status = query.get("status", "any")
            items = [o for o in items if (o["status"] != "trash") == (status == "any")]
            if "modified_after" in query:
                items = [o for o in items if o["date_modified_gmt"] > query["modified_after"]]
        if "include" in query:
            wanted = {int(i) for i in query["include"].split(",")}
            items = [i for i in items if i["id"] in wanted]
        items.sort(key=lambda i: i["id"], reverse=query.get("order") == "desc")
        offset, per_page = int(query.get("offset", 0)), int(query.get("per_page", 10))
        if self.ignore_offset:
            offset = 0
        page = items[offset:offset + min(per_page, self.cap)]
        return 200, {"X-WP-Total": str(len(items)), "Content-Type": "application/json"}, \
            json.dumps(page)

    def serve(self) -> None:
        responses.add_callback(responses.GET, re.compile(f"{API}/(customers|orders).*"),
                               callback=self.reply)


def make_orders(count: int, *, status: str = "completed", start: int = 1) -> list[dict[str, Any]]:
    orders = []
    for ident in range(start, start + count):
        order = docs_order()
        order.update(id=ident, status=status, customer_id=0,
                     date_modified_gmt=f"2026-10-{1 + ident % 28:02d}T10:00:00")
        orders.append(order)
    return orders


def make_customers(count: int, *, start: int = 2) -> list[dict[str, Any]]:
    customers = []
    for ident in range(start, start + count):
        customer = docs_customer()
        customer.update(id=ident, email=f"person{ident}@example.com")
        customers.append(customer)
    return customers


@responses.activate
def test_listing_pages_overlap_by_one_record_and_yield_each_record_once() -> None:
    shop = FakeShop(make_customers(0), make_orders(25))
    shop.serve()
    connector = connect(settings(per_page=10, concurrency=3))
    batches = list(connector.pull(None))
    ids = [r.external_id for b in batches for r in b.records if r.record_type == "order"]
    assert ids == [str(i) for i in range(1, 26)]
    offsets = [int(q["offset"]) for kind, q in shop.queries
               if kind == "orders" and q["status"] == "any"]
    assert sorted(offsets) == [0, 9, 18]
    assert batches[-1].complete
    assert batches[-1].listed_types == {"customer", "order"}


@responses.activate
def test_pulled_records_are_classified_as_the_same_entries_read_whole() -> None:
    """Pulls decode only the fields classification reads, odd shapes included; lookups and
    tests hand over whole dicts. Both must give the same records."""
    customers = make_customers(4)
    customers[0].update(billing=[], shipping="?", meta_data={"k": "v"})
    customers[1].update(role=None, meta_data=[
        5, None, {"key": "note", "value": "Please ring the bell twice"}, {"value": CARD}])
    customers[2]["billing"].update(address_1=CARD, phone="(000) 000-0000")
    customers[3].update(email="deleted@site.invalid", first_name=["x"],
                        date_created_gmt=1490200082)
    orders = make_orders(3)
    orders[0].update(line_items={"a": 1}, customer_id="26", date_paid_gmt=None)
    orders[1]["line_items"] = [3, {"meta_data": [{"key": "Engraving", "value": CARD}]}]
    orders[2].update(shipping=None, customer_ip_address=7, customer_note={"a": "Leave it"})
    expected = [classify_customer(c) for c in copy.deepcopy(customers)] + \
        [classify_order(o) for o in copy.deepcopy(orders)]
    FakeShop(customers, orders).serve()
    pulled = [r for b in connect(settings()).pull(None) for r in b.records]
    assert pulled == expected
    assert len(pulled) == 7


@responses.activate
def test_page_with_json_the_fast_decoder_refuses_is_still_read_whole() -> None:
    """A number beyond a double and a lone surrogate: valid JSON to `json`, not to msgspec.
    The page is read the slower way, not retried or lost."""
    customers = make_customers(2)
    text = json.dumps(customers)
    body = text[:-2] + ', "huge": 1e400, "odd": "\\ud800"}]'
    responses.add(responses.GET, re.compile(f"{API}/customers.*"), status=200, body=body,
                  headers={"X-WP-Total": "2", "Content-Type": "application/json"})
    responses.add(responses.GET, re.compile(f"{API}/orders.*"), status=200, json=[],
                  headers={"X-WP-Total": "0"})
    batches = list(connect(settings()).pull(None))
    pulled = [r for b in batches for r in b.records]
    assert pulled == [classify_customer(c) for c in customers]
    assert all(not b.skipped for b in batches)


@responses.activate
def test_full_pull_asks_every_role_and_the_trash_in_id_order() -> None:
    shop = FakeShop(make_customers(3), make_orders(2) + make_orders(1, status="trash",
                                                                     start=50))
    shop.serve()
    batches = list(connect(settings()).pull(None))
    customers = [q for kind, q in shop.queries if kind == "customers"]
    orders = [q for kind, q in shop.queries if kind == "orders"]
    assert all(q["role"] == "all" and q["orderby"] == "id" and q["order"] == "asc"
               for q in customers)
    assert [q["status"] for q in orders] == ["any", "trash"]
    assert {r.external_id for b in batches for r in b.records if r.status == "trash"} == {"50"}
    cursor = json.loads(batches[-1].cursor or "")
    assert cursor["max_customer_id"] == 4


@responses.activate
def test_incremental_pull_asks_orders_modified_since_cursor_less_overlap_in_gmt() -> None:
    shop = FakeShop(make_customers(2), make_orders(3))
    shop.serve()
    started = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
    connector = connect(settings(clock=lambda: started, overlap=timedelta(minutes=10)))
    cursor = json.dumps({"v": 1, "orders_since": "2026-11-01T06:00:00Z", "max_customer_id": 3})
    batches = list(connector.pull(cursor))
    orders = [q for kind, q in shop.queries if kind == "orders"]
    assert {q["status"] for q in orders} == {"any", "trash"}
    for query in orders:
        assert query["modified_after"] == "2026-11-01T05:50:00"
        assert query["dates_are_gmt"] == "true"
        assert (query["orderby"], query["order"]) == ("id", "asc")
    assert batches[-1].complete and batches[-1].listed_types == frozenset()
    assert json.loads(batches[-1].cursor or "") == {
        "v": 1, "orders_since": "2026-11-02T06:00:00Z", "max_customer_id": 3}


@responses.activate
def test_unreadable_cursor_falls_back_to_a_full_pull() -> None:
    FakeShop(make_customers(1), make_orders(1)).serve()
    batches = list(connect(settings()).pull("{not json"))
    assert batches[-1].listed_types == {"customer", "order"}


@responses.activate
def test_incremental_pull_reads_new_accounts_newest_first_down_to_the_known_id() -> None:
    shop = FakeShop(make_customers(30), [])
    shop.serve()
    cursor = json.dumps({"v": 1, "orders_since": "2026-11-01T06:00:00Z",
                         "max_customer_id": 27})
    batches = list(connect(settings(per_page=10)).pull(cursor))
    ids = sorted(int(r.external_id) for b in batches for r in b.records)
    assert ids == [28, 29, 30, 31]
    customers = [q for kind, q in shop.queries if kind == "customers"]
    assert [(q["order"], q["offset"]) for q in customers] == [("desc", "0")]
    assert json.loads(batches[-1].cursor or "")["max_customer_id"] == 31


@responses.activate
def test_shop_capping_per_page_is_still_read_whole() -> None:
    shop = FakeShop(make_customers(0), make_orders(25), cap=10)
    shop.serve()
    batches = list(connect(settings(per_page=100)).pull(None))
    ids = [int(r.external_id) for b in batches for r in b.records]
    assert ids == list(range(1, 26))
    assert batches[-1].listed_types == {"customer", "order"}


@responses.activate
def test_shop_ignoring_offset_is_fatal_instead_of_looping() -> None:
    FakeShop(make_customers(0), make_orders(25), ignore_offset=True).serve()
    with pytest.raises(FatalAPIError, match="ignores the `offset` parameter"):
        list(connect(settings(per_page=10)).pull(None))


def test_card_number_in_line_item_meta_is_flagged_but_product_options_are_not_free_text() -> None:
    data = docs_order(0)
    data["line_items"][1]["meta_data"].append({"id": 7, "key": "Colour name",
                                               "value": "Deep ocean blue, matte finish"})
    assert Category.FREE_TEXT not in record(classify_order(data)).categories
    data["line_items"][0]["meta_data"] = [{"id": 1, "key": "Engraving", "value": CARD}]
    result = record(classify_order(data))
    assert result.evidence == ("card number pattern in line_items meta_data[Engraving]",)


@responses.activate
def test_a_listing_whose_new_pages_never_end_fails_instead_of_paging_for_ever() -> None:
    served: list[int] = []

    def orders(request: Any) -> Reply:
        query = parse_qs(urlsplit(request.url).query)
        offset, size = int(query["offset"][0]), int(query["per_page"][0])
        served.append(offset)
        if len(served) > 500:  # the old code would have read on until here, then "complete"
            return page_reply([], offset)
        return page_reply([{"id": offset + n + 1} for n in range(size)], offset + 3 * size)

    responses.add_callback(responses.GET, re.compile(f"{API}/customers.*"),
                           callback=lambda _: page_reply([], 0))
    responses.add_callback(responses.GET, re.compile(f"{API}/orders.*"), callback=orders)
    connector = connect(settings(per_page=10, concurrency=1))
    with pytest.raises(FatalAPIError, match="/orders kept growing") as err:
        list(connector.list_keys())
    assert "nothing was marked gone" in str(err.value)
    assert len(served) < 200
