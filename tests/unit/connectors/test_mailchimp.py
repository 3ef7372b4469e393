"""The Mailchimp connector against a faked Marketing API (`responses`): settings, what a
member is classified as, paging, completeness, cursors, lookups and errors."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from responses import matchers

from connectors import mailchimp as mc
from connectors.base import Batch, Category, Connector, Record, Skip
from connectors.http import FatalAPIError, RetriableAPIError

KEY = "c0ffee00c0ffee00c0ffee00c0ffee00-us6"
BASE = "https://us6.api.mailchimp.com/3.0"
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PROBLEM = "application/problem+json; charset=utf-8"


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def member(index: int, status: str = "subscribed", *, changed: datetime | None = None,
           **extra: Any) -> dict[str, Any]:
    email = f"person.{index}@example.com"
    body: dict[str, Any] = {
        "id": mc.subscriber_hash(email), "email_address": email, "status": status,
        "merge_fields": {"FNAME": "", "LNAME": "", "ADDRESS": "", "PHONE": ""},
        "ip_signup": "", "ip_opt": "", "timestamp_signup": stamp(T0 - timedelta(days=400)),
        "timestamp_opt": "", "last_changed": stamp(changed or T0 + timedelta(minutes=index)),
        "location": {"latitude": 0, "longitude": 0, "country_code": ""},
        "marketing_permissions": [],
    }
    body.update(extra)
    return body


def problem(status: int, title: str, detail: str) -> dict[str, Any]:
    return {"type": "https://mailchimp.com/developer/marketing/docs/errors/", "title": title,
            "status": status, "detail": detail, "instance": "0d5c7f2e"}


class FakeMailchimp:
    """Audiences and their members behind `responses` callbacks, paging like Mailchimp."""

    def __init__(self, audiences: dict[str, tuple[str, list[dict[str, Any]]]]) -> None:
        self.audiences = audiences
        self.calls: list[dict[str, str]] = []
        # Added to every members page's total_items (a listing that cannot add up).
        self.extra_total = 0
        # Whether the default listing shows archived contacts (Mailchimp does not promise).
        self.default_has_archived = False
        # Called before a page is answered: lets a test change the audience mid-listing.
        self.before_page: Any = None

    def install(self, mock: responses.RequestsMock) -> None:
        base = re.escape(BASE)
        mock.add_callback(responses.GET, re.compile(rf"{base}/lists(\?.*)?$"),
                          callback=self._lists)
        mock.add_callback(responses.GET, re.compile(rf"{base}/lists/(\w+)(\?.*)?$"),
                          callback=self._list)
        mock.add_callback(responses.GET, re.compile(rf"{base}/lists/(\w+)/members(\?.*)?$"),
                          callback=self._members)
        mock.add_callback(responses.GET,
                          re.compile(rf"{base}/lists/(\w+)/members/(\w+)(\?.*)?$"),
                          callback=self._member)

    @staticmethod
    def _query(request: Any) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(request.url).query).items()}

    def _lists(self, request: Any) -> tuple[int, dict[str, str], str]:
        q = self._query(request)
        self.calls.append({"path": "lists", **q})
        count, offset = int(q.get("count", 10)), int(q.get("offset", 0))
        rows = [{"id": aid, "name": name} for aid, (name, _) in self.audiences.items()]
        return 200, {}, json.dumps({"lists": rows[offset:offset + count],
                                    "total_items": len(rows)})

    def _list(self, request: Any) -> tuple[int, dict[str, str], str]:
        audience_id = urlsplit(request.url).path.split("/")[-1]
        self.calls.append({"path": f"lists/{audience_id}"})
        if audience_id not in self.audiences:
            return 404, {"Content-Type": PROBLEM}, json.dumps(
                problem(404, "Resource Not Found", "The requested resource could not be found."))
        return 200, {}, json.dumps({"id": audience_id, "name": self.audiences[audience_id][0]})

    def _members(self, request: Any) -> tuple[int, dict[str, str], str]:
        q = self._query(request)
        audience_id = urlsplit(request.url).path.split("/")[-2]
        self.calls.append({"path": f"lists/{audience_id}/members", **q})
        if audience_id not in self.audiences:
            return 404, {"Content-Type": PROBLEM}, json.dumps(
                problem(404, "Resource Not Found", "The requested resource could not be found."))
        if self.before_page is not None:
            self.before_page(int(q.get("offset", 0)))
        rows = self.audiences[audience_id][1]
        status = q.get("status")
        if status:
            rows = [m for m in rows if m["status"] == status]
        elif not self.default_has_archived:
            rows = [m for m in rows if m["status"] != "archived"]
        if "since_last_changed" in q:
            rows = [m for m in rows if m["last_changed"] > q["since_last_changed"]]
        if q.get("sort_field"):
            rows = sorted(rows, key=lambda m: m[q["sort_field"]],
                          reverse=q.get("sort_dir") == "DESC")
        count, offset = int(q.get("count", 10)), int(q.get("offset", 0))
        assert count <= 1000
        return 200, {}, json.dumps({"members": rows[offset:offset + count],
                                    "total_items": len(rows) + self.extra_total})

    def _member(self, request: Any) -> tuple[int, dict[str, str], str]:
        parts = urlsplit(request.url).path.split("/")
        audience_id, member_hash = parts[-3], parts[-1]
        self.calls.append({"path": f"lists/{audience_id}/members/{member_hash}"})
        for row in self.audiences.get(audience_id, ("", []))[1]:
            if row["id"] == member_hash:
                return 200, {}, json.dumps(row)
        return 404, {"Content-Type": PROBLEM}, json.dumps(
            problem(404, "Resource Not Found", "The requested resource could not be found."))

    def member_pages(self) -> list[dict[str, str]]:
        return [c for c in self.calls if c["path"].endswith("/members")]


def settings(**overrides: Any) -> mc.Settings:
    values: dict[str, Any] = {"api_key": KEY, "page_size": 3, "concurrency": 1,
                              "sleep": lambda seconds: None}
    values.update(overrides)
    return mc.Settings(**values)


def audience(fake_settings: mc.Settings | None = None, audience_id: str = "a1",
             name: str = "Newsletter") -> mc.MailchimpAudienceConnector:
    account = mc.connect(fake_settings or settings())
    return mc.MailchimpAudienceConnector(account, mc.AudienceInfo(audience_id, name))


def drain(batches: Iterator[Batch]) -> tuple[list[Record], list[Skip], list[Batch]]:
    seen = list(batches)
    return ([r for b in seen for r in b.records], [s for b in seen for s in b.skipped], seen)


@pytest.fixture
def fake() -> Iterator[FakeMailchimp]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        double = FakeMailchimp({"a1": ("Newsletter", [])})
        double.install(mock)
        yield double


# -- settings ------------------------------------------------------------------------------
def test_base_url_comes_from_the_data_centre_suffix_when_the_key_has_one() -> None:
    assert mc.data_centre_url("0123abcd-us6") == "https://us6.api.mailchimp.com/3.0"
    assert settings(api_key="0123abcd-us21").url == "https://us21.api.mailchimp.com/3.0"


@pytest.mark.parametrize("key", ["CANARYKEY0123456789abcdef", "CANARYKEY-", "CANARYKEY-6us",
                                 "-us6", "CANARYKEY-us"])
def test_settings_refuse_a_key_without_data_centre_when_no_base_url_is_given(key: str) -> None:
    with pytest.raises(ValueError, match="no data-centre suffix") as caught:
        settings(api_key=key)
    assert "CANARYKEY" not in str(caught.value)
    with pytest.raises(ValueError, match="data-centre"):
        mc.data_centre_url(key)


def test_settings_accept_a_key_without_suffix_when_base_url_is_given() -> None:
    chosen = settings(api_key="0123456789abcdef", base_url="http://127.0.0.1:9/3.0/")
    assert chosen.url == "http://127.0.0.1:9/3.0"
    assert settings(base_url="https://mc.example.com/3.0").url == "https://mc.example.com/3.0"


@pytest.mark.parametrize("url", ["http://mc.example.com/3.0", "ftp://x/3.0", "us6"])
def test_settings_refuse_base_url_when_not_https_off_this_machine(url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        settings(base_url=url)


@pytest.mark.parametrize("value", [0, 11, 50])
def test_settings_refuse_concurrency_when_outside_mailchimps_ten_connections(value: int) -> None:
    with pytest.raises(ValueError, match="10 simultaneous connections"):
        settings(concurrency=value)
    assert settings(concurrency=10).concurrency == 10


@pytest.mark.parametrize("value", [0, 1001])
def test_settings_refuse_page_size_when_outside_1_to_1000(value: int) -> None:
    with pytest.raises(ValueError, match="page_size"):
        settings(page_size=value)


def test_settings_never_show_the_key_when_printed() -> None:
    assert KEY not in repr(settings())
    assert settings().audiences == ()
    assert settings(audiences=["Newsletter"]).audiences == ("Newsletter",)


# -- classification ------------------------------------------------------------------------
def test_member_with_every_kind_of_data_is_classified_without_keeping_values() -> None:
    raw = member(
        1, "subscribed", full_name="Ada Evans",
        merge_fields={"FNAME": "Ada", "LNAME": "Evans", "PHONE": "+44 7700 900123",
                      "ADDRESS": {"addr1": "1 High Street", "addr2": "", "city": "Leeds",
                                  "state": "", "zip": "LS1 4AP", "country": "GB"},
                      "BIRTHDAY": "", "COMPANY": "Evans Trading"},
        ip_signup="203.0.113.5", ip_opt="",
        location={"latitude": 53.8, "longitude": -1.55, "country_code": "GB"},
        marketing_permissions=[{"marketing_permission_id": "x1", "text": "Email",
                                "enabled": True}],
        last_note={"note_id": 1, "note": "Asked about refills", "created_at": stamp(T0)},
        timestamp_opt=stamp(T0 - timedelta(days=399)),
    )
    record = mc.classify_member(raw)
    assert isinstance(record, Record)
    assert record.categories == {
        Category.EMAIL, Category.NAME, Category.PHONE, Category.BILLING_ADDRESS,
        Category.IP_ADDRESS, Category.LOCATION, Category.MARKETING_CONSENT, Category.FREE_TEXT,
    }
    assert (record.record_type, record.external_id) == ("member", raw["id"])
    assert record.email == "person.1@example.com"
    assert record.status == "subscribed"
    assert record.created_at == T0 - timedelta(days=400)
    assert record.modified_at == record.last_activity_at == T0 + timedelta(minutes=1)
    text = repr(record)
    for value in ("Ada", "Evans", "7700", "High Street", "203.0.113", "refills", "53.8"):
        assert value not in text


def test_member_without_an_email_is_still_a_record_with_its_categories() -> None:
    raw = member(2, email_address="", merge_fields={"FNAME": "Ben", "PHONE": "+44 7700 900001"})
    record = mc.classify_member(raw)
    assert isinstance(record, Record)
    assert record.email is None
    assert record.categories == {Category.NAME, Category.PHONE, Category.MARKETING_CONSENT}
    missing = dict(raw)
    del missing["email_address"]
    assert mc.classify_member(missing).email is None  # type: ignore[union-attr]


def test_card_number_in_an_unknown_merge_field_is_free_text_and_card_number() -> None:
    record = mc.classify_member(member(3, "cleaned", merge_fields={
        "NOTES": "pay with 4111 1111 1111 1111 next time", "FNAME": ""}))
    assert isinstance(record, Record)
    assert {Category.FREE_TEXT, Category.CARD_NUMBER} <= record.categories
    assert record.evidence == ("card number pattern in merge field NOTES",)
    assert "4111" not in repr(record)


def test_card_number_typed_into_a_name_is_a_card_number_but_not_free_text() -> None:
    record = mc.classify_member(member(3, "cleaned", merge_fields={"LNAME": "4111111111111111"}))
    assert isinstance(record, Record)
    assert record.categories == {Category.EMAIL, Category.NAME, Category.CARD_NUMBER}


def test_sms_phone_number_on_the_member_is_a_phone() -> None:
    record = mc.classify_member(member(1, sms_phone_number="+44 7700 900123"))
    assert isinstance(record, Record)
    assert Category.PHONE in record.categories
    assert "900123" not in repr(record)
    assert "members.sms_phone_number" in mc.MEMBER_FIELDS.split(",")
    empty = mc.classify_member(member(2, sms_phone_number=""))
    assert isinstance(empty, Record) and Category.PHONE not in empty.categories


def test_empty_address_and_zero_location_are_not_counted_as_held() -> None:
    record = mc.classify_member(member(4, "unsubscribed", merge_fields={"ADDRESS": ""},
                                       unsubscribe_reason=""))
    assert isinstance(record, Record)
    assert record.categories == {Category.EMAIL}


def test_address_given_as_text_is_a_billing_address_and_country_alone_is_a_location() -> None:
    record = mc.classify_member(member(
        5, "cleaned", merge_fields={"ADDRESS": "1 High Street  Leeds  LS1 4AP  GB"},
        location={"latitude": 0, "longitude": 0, "country_code": "GB"},
        unsubscribe_reason="I never signed up"))
    assert isinstance(record, Record)
    assert {Category.BILLING_ADDRESS, Category.LOCATION, Category.FREE_TEXT} <= record.categories


@pytest.mark.parametrize(("status", "consent"), [
    ("subscribed", True), ("pending", True), ("unsubscribed", False), ("cleaned", False),
    ("transactional", False), ("archived", False),
])
def test_marketing_consent_is_held_when_subscribed_or_pending(status: str, consent: bool) -> None:
    record = mc.classify_member(member(6, status))
    assert isinstance(record, Record)
    assert record.status == status
    assert (Category.MARKETING_CONSENT in record.categories) is consent


def test_recorded_permission_choices_are_marketing_consent_whatever_the_status() -> None:
    record = mc.classify_member(member(7, "unsubscribed", marketing_permissions=[
        {"marketing_permission_id": "x1", "text": "Email", "enabled": False}]))
    assert Category.MARKETING_CONSENT in record.categories  # type: ignore[union-attr]


def test_created_falls_back_to_opt_in_time_when_signup_time_is_empty() -> None:
    record = mc.classify_member(member(8, timestamp_signup="", timestamp_opt=stamp(T0)))
    assert record.created_at == T0  # type: ignore[union-attr]


@pytest.mark.parametrize("raw", ["not a member", None, {"email_address": "x@example.com"},
                                 {"id": "  "}])
def test_unreadable_member_becomes_a_skip_without_personal_values(raw: object) -> None:
    skipped = mc.classify_member(raw)
    assert isinstance(skipped, Skip)
    assert skipped.record_type == "member"
    assert "x@example.com" not in skipped.reason


# -- full pulls and paging -----------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 6, 7])
def test_full_pull_returns_every_member_when_size_is_at_page_boundary(
        fake: FakeMailchimp, size: int) -> None:
    rows = [member(i) for i in range(size)]
    fake.audiences["a1"] = ("Newsletter", rows)
    records, _, batches = drain(audience().pull(None))
    assert [r.external_id for r in records] == [m["id"] for m in rows]
    last = batches[-1]
    assert last.complete and last.listed_types == {"member"}
    assert all(not b.complete and b.cursor is None for b in batches[:-1])
    default_pages = [c for c in fake.member_pages() if "status" not in c]
    # Full pages, then one that is short (or empty after an exactly full one).
    assert len(default_pages) == size // 3 + 1
    assert [int(c["offset"]) for c in default_pages] == [3 * i for i in range(size // 3 + 1)]


def test_full_pull_asks_only_for_the_fields_it_classifies(fake: FakeMailchimp) -> None:
    fake.audiences["a1"] = ("Newsletter", [member(1)])
    drain(audience().pull(None))
    for call in fake.member_pages():
        assert call["fields"] == mc.MEMBER_FIELDS
        assert call["count"] == "3"
    assert "members.email_address" in mc.MEMBER_FIELDS
    assert "members.stats" not in mc.MEMBER_FIELDS and "total_items" in mc.MEMBER_FIELDS


def test_full_pull_asks_for_archived_members_explicitly(fake: FakeMailchimp) -> None:
    rows = [member(i, status) for i, status in enumerate(mc.STATUSES)]
    fake.audiences["a1"] = ("Newsletter", rows)
    records, _, batches = drain(audience().pull(None))
    assert sorted(r.status for r in records) == sorted(mc.STATUSES)
    assert any(c.get("status") == "archived" for c in fake.member_pages())
    assert batches[-1].complete


def test_full_pull_keeps_each_member_once_and_is_complete_when_default_listing_includes_archived(
        fake: FakeMailchimp) -> None:
    fake.default_has_archived = True
    rows = [member(1), member(2, "archived"), member(3, "archived")]
    fake.audiences["a1"] = ("Newsletter", rows)
    records, _, batches = drain(audience().pull(None))
    assert sorted(r.external_id for r in records) == sorted(m["id"] for m in rows)
    # Each listing read whole against its own total (3 default, 2 archived): complete,
    # although the totals add up to 5 for 3 distinct members.
    last = batches[-1]
    assert last.complete and last.listed_types == {"member"} and last.cursor is not None


def test_list_keys_is_complete_when_default_listing_includes_archived(
        fake: FakeMailchimp) -> None:
    fake.default_has_archived = True
    rows = [member(1), member(2, "archived"), member(3, "archived"), member(4)]
    fake.audiences["a1"] = ("Newsletter", rows)
    batches = list(audience().list_keys())
    assert sorted(k.external_id for b in batches for k in b.keys) == sorted(m["id"] for m in rows)
    assert batches[-1].complete and batches[-1].listed_types == {"member"}


def test_incremental_pull_moves_cursor_when_default_listing_includes_archived(
        fake: FakeMailchimp) -> None:
    fake.default_has_archived = True
    rows = [member(1, changed=T0 + timedelta(minutes=1)),
            member(2, "archived", changed=T0 + timedelta(minutes=5))]
    fake.audiences["a1"] = ("Newsletter", rows)
    records, _, batches = drain(audience().pull(mc.make_cursor(T0)))
    # The archived member comes in both listings: once in the records, and no "shift".
    assert sorted(r.external_id for r in records) == sorted(m["id"] for m in rows)
    assert mc.read_cursor(batches[-1].cursor) == T0 + timedelta(minutes=5)


def test_full_pull_fails_when_total_items_promises_more_than_the_pages_hold(
        fake: FakeMailchimp) -> None:
    fake.audiences["a1"] = ("Newsletter", [member(i) for i in range(6)])
    fake.extra_total = 1
    pulled: list[Batch] = []
    with pytest.raises(FatalAPIError, match=r"\(default\) of audience 'Newsletter' \(a1\) "
                                            r"stopped making progress: an empty page came "
                                            r"back at offset 6 although the listing says it "
                                            r"holds 7 members") as caught:
        pulled.extend(audience().pull(None))
    assert caught.value.source == "mailchimp:a1"
    # What was read is handed over; nothing claims to be complete.
    assert not any(b.complete or b.cursor for b in pulled)
    assert [int(c["offset"]) for c in fake.member_pages()] == [0, 3, 6]


def test_full_pull_is_incomplete_when_a_member_is_deleted_while_paging(
        fake: FakeMailchimp) -> None:
    rows = [member(i) for i in range(7)]
    fake.audiences["a1"] = ("Newsletter", rows)

    def delete_first(offset: int) -> None:
        if offset == 3 and rows[0]["id"] == mc.subscriber_hash("person.0@example.com"):
            del rows[0]

    fake.before_page = delete_first
    records, _, batches = drain(audience().pull(None))
    # Offsets shifted: person 3 moved to the first page after it was read, and is missed.
    assert mc.subscriber_hash("person.3@example.com") not in {r.external_id for r in records}
    assert not batches[-1].complete


def test_full_pull_yields_unreadable_members_as_skips_and_goes_on(fake: FakeMailchimp) -> None:
    fake.audiences["a1"] = ("Newsletter", [member(1), {"email_address": "x@example.com",
                                                       "status": "subscribed",
                                                       "last_changed": ""}])
    records, skipped, batches = drain(audience().pull(None))
    assert len(records) == 1 and len(skipped) == 1
    assert batches[-1].complete


def test_full_pull_cursor_is_the_latest_change_seen(fake: FakeMailchimp) -> None:
    fake.audiences["a1"] = ("Newsletter", [member(i) for i in range(4)])
    _, _, batches = drain(audience().pull(None))
    assert mc.read_cursor(batches[-1].cursor) == T0 + timedelta(minutes=3)


def test_full_pull_cursor_is_the_pull_start_when_the_audience_is_empty(
        fake: FakeMailchimp) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    _, _, batches = drain(audience().pull(None))
    after = datetime.now(UTC)
    assert len(batches) == 1 and batches[0].complete
    assert before <= mc.read_cursor(batches[0].cursor) <= after  # type: ignore[operator]


def test_full_pull_yields_pages_in_order_when_fetched_in_parallel(fake: FakeMailchimp) -> None:
    rows = [member(i) for i in range(40)]
    fake.audiences["a1"] = ("Newsletter", rows)
    records, _, batches = drain(audience(settings(concurrency=6)).pull(None))
    assert [r.external_id for r in records] == [m["id"] for m in rows]
    assert batches[-1].complete


def test_audience_connector_satisfies_the_connector_protocol() -> None:
    connector = audience()
    assert isinstance(connector, Connector)
    assert (connector.source, connector.kind, connector.audience_name) == (
        "mailchimp:a1", "mailchimp", "Newsletter")


# -- incremental pulls ---------------------------------------------------------------------
def test_incremental_pull_asks_since_cursor_minus_overlap_sorted_by_last_changed(
        fake: FakeMailchimp) -> None:
    rows = [member(i, changed=T0 - timedelta(minutes=m)) for i, m in
            enumerate((30, 8, 2, 0))]
    fake.audiences["a1"] = ("Newsletter", rows)
    records, _, batches = drain(audience().pull(mc.make_cursor(T0)))
    calls = fake.member_pages()
    assert {c["since_last_changed"] for c in calls} == {"2026-06-01T11:50:00+00:00"}
    assert all(c["sort_field"] == "last_changed" and c["sort_dir"] == "ASC" for c in calls)
    assert {c.get("status") for c in calls} == {None, "archived"}
    # Changes inside the overlap are read again; the one 30 minutes old is not.
    assert [r.external_id for r in records] == [rows[1]["id"], rows[2]["id"], rows[3]["id"]]
    assert batches[-1].complete and batches[-1].listed_types == frozenset()
    assert mc.read_cursor(batches[-1].cursor) == T0


def test_incremental_pull_moves_cursor_to_latest_last_changed(fake: FakeMailchimp) -> None:
    rows = [member(i, changed=T0 + timedelta(minutes=i)) for i in range(5)]
    fake.audiences["a1"] = ("Newsletter", rows + [member(9, "archived",
                                                         changed=T0 + timedelta(hours=1))])
    records, _, batches = drain(audience().pull(mc.make_cursor(T0)))
    assert len(records) == 6
    assert [b.cursor is None for b in batches] == [True] * (len(batches) - 1) + [False]
    assert mc.read_cursor(batches[-1].cursor) == T0 + timedelta(hours=1)


def test_incremental_pull_keeps_cursor_when_nothing_changed(fake: FakeMailchimp) -> None:
    fake.audiences["a1"] = ("Newsletter", [member(1, changed=T0 - timedelta(days=3))])
    records, _, batches = drain(audience().pull(mc.make_cursor(T0)))
    assert records == []
    assert len(batches) == 1 and batches[0].complete
    assert mc.read_cursor(batches[0].cursor) == T0


def test_incremental_pull_keeps_cursor_when_a_member_moved_while_paging(
        fake: FakeMailchimp) -> None:
    rows = [member(i, changed=T0 + timedelta(minutes=i)) for i in range(5)]
    fake.audiences["a1"] = ("Newsletter", rows)

    def change_first(offset: int) -> None:
        if offset == 3 and rows[0]["last_changed"] < stamp(T0 + timedelta(hours=1)):
            rows[0]["last_changed"] = stamp(T0 + timedelta(hours=2))

    fake.before_page = change_first
    records, _, batches = drain(audience().pull(mc.make_cursor(T0)))
    # Person 0 is seen twice (it moved to the end) and person 3 was skipped by the shift:
    # the cursor must not claim the window was read.
    assert mc.subscriber_hash("person.3@example.com") not in {r.external_id for r in records}
    assert mc.read_cursor(batches[-1].cursor) == T0
    assert all(len({r.external_id for r in b.records}) == len(b.records) for b in batches)


def test_unreadable_cursor_falls_back_to_a_full_pull(fake: FakeMailchimp) -> None:
    fake.audiences["a1"] = ("Newsletter", [member(1)])
    _, _, batches = drain(audience().pull("not json"))
    assert batches[-1].listed_types == {"member"}
    assert all("since_last_changed" not in c for c in fake.member_pages())


# -- key listings ----------------------------------------------------------------------------
def test_list_keys_lists_every_member_id_when_listing_adds_up(fake: FakeMailchimp) -> None:
    rows = [member(i, status) for i, status in enumerate(mc.STATUSES * 2)]
    fake.audiences["a1"] = ("Newsletter", rows)
    batches = list(audience().list_keys())
    keys = [k.external_id for b in batches for k in b.keys]
    assert sorted(keys) == sorted(m["id"] for m in rows)
    assert batches[-1].complete and batches[-1].listed_types == {"member"}
    assert {c["fields"] for c in fake.member_pages()} == {"members.id,total_items"}


def test_list_keys_fails_when_total_items_is_more_than_the_pages_hold(
        fake: FakeMailchimp) -> None:
    fake.audiences["a1"] = ("Newsletter", [member(i) for i in range(4)])
    fake.extra_total = 2
    listed: list[Any] = []
    with pytest.raises(FatalAPIError, match="stopped making progress: an empty page"):
        listed.extend(audience().list_keys())
    assert not any(b.complete for b in listed)


def test_full_pull_fails_when_pages_repeat_members_already_listed(fake: FakeMailchimp) -> None:
    rows = [member(i) for i in range(3)]
    fake.audiences["a1"] = ("Newsletter", rows)
    fake.extra_total = 10_000_000

    def ignore_offset(offset: int) -> None:
        # An upstream that answers every offset with the first page.
        fake.audiences["a1"] = ("Newsletter", rows * (offset // 3 + 1))

    fake.before_page = ignore_offset
    with pytest.raises(FatalAPIError, match="offset 3 held only members already listed"):
        list(audience().pull(None))
    assert len(fake.member_pages()) == 2


# -- lookups ---------------------------------------------------------------------------------
def test_lookup_returns_the_member_as_mailchimp_holds_it(fake: FakeMailchimp) -> None:
    fake.audiences["a1"] = ("Newsletter", [member(1, full_name="Ada Evans")])
    found = audience().lookup("  Person.1@Example.com ")
    assert len(found) == 1
    assert found[0]["record_type"] == "member"
    assert found[0]["external_id"] == mc.subscriber_hash("person.1@example.com")
    assert found[0]["data"]["full_name"] == "Ada Evans"
    assert fake.calls[-1]["path"].endswith(mc.subscriber_hash("person.1@example.com"))


def test_lookup_finds_nothing_when_the_address_is_not_a_member(fake: FakeMailchimp) -> None:
    assert audience().lookup("nobody@example.com") == []
    assert audience().lookup("not an email") == []
    assert len(fake.calls) == 1


# -- audiences -------------------------------------------------------------------------------
def test_connectors_list_every_audience_across_pages_when_none_is_configured(
        fake: FakeMailchimp) -> None:
    fake.audiences = {f"a{i}": (f"Audience {i}", []) for i in range(7)}
    account = mc.connect(settings())
    connectors = account.connectors()
    assert [c.source for c in connectors] == [f"mailchimp:a{i}" for i in range(7)]
    assert account.listing_complete
    assert [c["offset"] for c in fake.calls] == ["0", "3", "6"]
    assert all(c["fields"] == "lists.id,lists.name,total_items" for c in fake.calls)
    assert [a.name for a in mc.audiences(settings())][:2] == ["Audience 0", "Audience 1"]


def test_connectors_pick_configured_audiences_by_id_or_name(fake: FakeMailchimp) -> None:
    fake.audiences = {"a1": ("Newsletter", []), "b2": ("Trade customers", []),
                      "c3": ("Old", [])}
    chosen = mc.connect(settings(audiences=("b2", " newsletter "))).connectors()
    assert [(c.source, c.audience_name) for c in chosen] == [
        ("mailchimp:b2", "Trade customers"), ("mailchimp:a1", "Newsletter")]


def test_connectors_refuse_a_configured_audience_that_does_not_exist(
        fake: FakeMailchimp) -> None:
    fake.audiences = {"a1": ("Newsletter", [])}
    with pytest.raises(FatalAPIError, match="'Wholesale' named in the configuration does not "
                                            "exist"):
        mc.connect(settings(audiences=("Wholesale",))).connectors()


def test_connectors_refuse_an_audience_name_that_matches_two_audiences(
        fake: FakeMailchimp) -> None:
    fake.audiences = {"a1": ("News", []), "b2": ("news", [])}
    with pytest.raises(FatalAPIError, match="matches 2 audiences"):
        mc.connect(settings(audiences=("News",))).connectors()


def test_connectors_drop_an_audience_that_vanished_since_the_last_run(
        fake: FakeMailchimp) -> None:
    fake.audiences = {"a1": ("Newsletter", []), "b2": ("Trade customers", [])}
    account = mc.connect(settings())
    assert len(account.connectors()) == 2
    del fake.audiences["b2"]
    assert [c.source for c in account.connectors()] == ["mailchimp:a1"]
    assert account.listing_complete


@responses.activate
def test_audience_listing_is_incomplete_when_total_items_says_more() -> None:
    responses.get(f"{BASE}/lists", json={"lists": [{"id": "a1", "name": "N"}], "total_items": 2})
    account = mc.connect(settings())
    assert [c.source for c in account.connectors()] == ["mailchimp:a1"]
    assert not account.listing_complete


# -- errors ----------------------------------------------------------------------------------
@responses.activate
def test_wrong_key_is_fatal_with_mailchimps_words_and_without_the_key() -> None:
    responses.get(f"{BASE}/lists", status=401, content_type=PROBLEM, json=problem(
        401, "API Key Invalid", "Your API key may be invalid, or you've attempted to access "
                                "the wrong datacenter."))
    with pytest.raises(FatalAPIError, match="API Key Invalid") as caught:
        mc.connect(settings()).connectors()
    assert KEY not in str(caught.value) and KEY.split("-")[0] not in str(caught.value)
    assert caught.value.source == "mailchimp"
    assert len(responses.calls) == 1


@responses.activate
def test_deleted_audience_is_fatal_and_names_the_audience() -> None:
    responses.get(f"{BASE}/lists/a1/members", status=404, content_type=PROBLEM,
                  json=problem(404, "Resource Not Found", "The requested resource could not be "
                                                          "found."))
    with pytest.raises(FatalAPIError, match="audience 'Newsletter' \\(a1\\) was not found") \
            as caught:
        list(audience().pull(None))
    assert caught.value.source == "mailchimp:a1"


@pytest.mark.parametrize("status", [429, 500, 503])
@responses.activate
def test_rate_limits_and_server_errors_are_retried(status: int) -> None:
    waits: list[float] = []
    responses.get(f"{BASE}/lists/a1/members", status=status, content_type=PROBLEM,
                  headers={"Retry-After": "2"}, json=problem(status, "Too Many Requests", "x"))
    responses.get(f"{BASE}/lists/a1/members", json={"members": [member(1)], "total_items": 1},
                  match=[matchers.query_param_matcher({"status": "archived"},
                                                      strict_match=False)])
    responses.get(f"{BASE}/lists/a1/members", json={"members": [member(2)], "total_items": 1})
    records, _, batches = drain(audience(settings(sleep=waits.append)).pull(None))
    assert len(records) == 2 and batches[-1].complete
    assert waits[0] == 2.0


@responses.activate
def test_persisting_server_errors_fail_the_pull_naming_the_audience() -> None:
    responses.get(f"{BASE}/lists/a1/members", status=503, content_type=PROBLEM,
                  json=problem(503, "Service Unavailable", "down"))
    with pytest.raises(RetriableAPIError, match="gave up after 2 attempts") as caught:
        list(audience(settings(retry_attempts=2)).pull(None))
    assert caught.value.source == "mailchimp:a1"


@responses.activate
def test_html_page_answered_with_200_is_fatal_never_an_empty_audience() -> None:
    responses.get(f"{BASE}/lists/a1/members", status=200, content_type="text/html",
                  body="<!DOCTYPE html><html><body>Maintenance</body></html>")
    with pytest.raises(FatalAPIError, match="HTML page"):
        list(audience().pull(None))


@responses.activate
def test_answer_without_a_members_list_is_fatal() -> None:
    responses.get(f"{BASE}/lists/a1/members", json={"lists": []})
    with pytest.raises(FatalAPIError, match="without a list of members"):
        list(audience().list_keys())
