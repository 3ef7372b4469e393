"""The Mailchimp connector against its loopback twin over real HTTP: the seeded estate, paging,
cursors, reconciliation, vanished audiences, every injected fault, the connection limit — and
the twin's own fidelity to the Marketing API."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select

from connectors import mailchimp as mc
from connectors.base import Batch, Category, Record
from connectors.http import FatalAPIError
from daemon.check import CheckResult, run_checks
from daemon.config import SecretSources, Settings, parse_settings
from daemon.ledger import Holding, Ledger, Source, SyncRun
from daemon.report import digest_for
from daemon.sources import sync_configured
from daemon.sync import SyncResult
from sandbox.estate import (
    ERASED_FROM_SHOPS,
    UNSUBSCRIBED_LONG_AGO,
    EstateSpec,
    Planted,
    make_people,
)
from sandbox.mailchimp import DEFAULT_API_KEY, MailchimpTwin, subscriber_hash
from sandbox.seed import mailchimp as seed_mailchimp
from sandbox.server import TwinServer

NOW = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
CLI = Path(sys.executable).with_name("privacy-ledger")


def no_sleep(seconds: float) -> None:
    return None


# Mailchimp does not promise whether its default member listing includes archived contacts:
# the suite runs against a twin answering each way.
@pytest.fixture(params=[False, True], ids=["default-without-archived", "default-with-archived"])
def archived_in_default(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def twin(archived_in_default: bool) -> MailchimpTwin:
    return MailchimpTwin(now=NOW, default_includes_archived=archived_in_default)


@pytest.fixture
def server(twin: MailchimpTwin) -> Iterator[TwinServer]:
    with TwinServer(twin) as running:
        yield running


def settings(server: TwinServer, **overrides: Any) -> mc.Settings:
    values: dict[str, Any] = {"api_key": DEFAULT_API_KEY, "base_url": f"{server.url}/3.0",
                              "page_size": 5, "concurrency": 2, "sleep": no_sleep}
    values.update(overrides)
    return mc.Settings(**values)


def connector_for(server: TwinServer, audience_id: str,
                  **overrides: Any) -> mc.MailchimpAudienceConnector:
    account = mc.connect(settings(server, **overrides))
    return next(c for c in account.connectors() if c.audience_id == audience_id)


def pull(connector: mc.MailchimpAudienceConnector,
         cursor: str | None = None) -> tuple[list[Record], Batch]:
    batches = list(connector.pull(cursor))
    return [r for b in batches for r in b.records], batches[-1]


def held(records: list[Record]) -> set[tuple[str, str, str | None]]:
    return {(r.record_type, r.external_id, r.email) for r in records}


def fill(twin: MailchimpTwin, count: int, name: str = "Newsletter", **fields: Any) -> str:
    """An audience of `count` members, member.<i>@example.com changed at 06:00 + i hours on
    2 October 2026."""
    audience_id = twin.add_audience(name)
    for index in range(count):
        twin.add_member(audience_id, f"member.{index}@example.com",
                        last_changed=NOW - timedelta(days=30) + timedelta(hours=index), **fields)
    return audience_id


# -- the seeded estate ---------------------------------------------------------------------
def seeded(spec: EstateSpec | None = None) -> tuple[MailchimpTwin, list[Planted]]:
    spec = spec or EstateSpec()
    planted: list[Planted] = []
    return seed_mailchimp.seeded(spec, make_people(spec), planted), planted


def test_full_pull_holds_exactly_the_twins_members_in_each_audience(
        archived_in_default: bool) -> None:
    estate, planted = seeded()
    estate.default_includes_archived = archived_in_default
    with TwinServer(estate) as running:
        account = mc.connect(settings(running, page_size=7, concurrency=4))
        connectors = account.connectors()
        assert sorted(c.audience_name for c in connectors) == ["Newsletter", "Trade customers"]
        statuses: set[str | None] = set()
        for connector in connectors:
            records, last = pull(connector)
            assert held(records) == estate.ground_truth(connector.source)
            assert last.complete and last.listed_types == {"member"}
            statuses |= {r.status for r in records}
            # The sync engine closes each audience's connector; the others go on working.
            connector.close()
        assert statuses == set(mc.STATUSES)
        sources = {c.source for c in connectors}
        assert {p.source for p in planted} <= sources


def test_seeded_estate_plants_old_unsubscribes_erased_people_and_recent_clean_ones() -> None:
    spec = EstateSpec()
    people = {p.email: p for p in make_people(spec)}
    estate, planted = seeded(spec)
    by_rule: dict[str | None, list[Planted]] = {}
    for case in planted:
        by_rule.setdefault(case.rule, []).append(case)
    retained = by_rule["mailchimp-contact-retained"]
    shown = [estate.member(p.source.split(":")[1], p.external_id) for p in retained]
    assert {m["status"] for m in shown} == {"unsubscribed", "cleaned", "archived"}
    for case, member in zip(retained, shown, strict=True):
        assert UNSUBSCRIBED_LONG_AGO in people[case.email].tags
        age = spec.now - datetime.fromisoformat(member["last_changed"])
        assert timedelta(days=700) < age < timedelta(days=1100)
        assert case.external_id == subscriber_hash(case.email)
    orphaned = by_rule["processor-copy-orphaned"]
    assert len(orphaned) == spec.planted_per_tag
    assert all(ERASED_FROM_SHOPS in people[c.email].tags for c in orphaned)
    clean = by_rule[None]
    assert len(clean) == 2
    for case in clean:
        member = estate.member(case.source.split(":")[1], case.external_id)
        age = spec.now - datetime.fromisoformat(member["last_changed"])
        assert member["status"] in ("unsubscribed", "archived")
        assert timedelta(days=150) < age < timedelta(days=200)
    # No other contact has been unsubscribed, cleaned or archived for a year or more.
    planted_ids = {(c.source, c.external_id) for c in planted}
    for source in estate.sources():
        for _, member_id, _ in estate.ground_truth(source):
            member = estate.member(source.split(":")[1], member_id)
            if (source, member_id) in planted_ids or member["status"] in (
                    "subscribed", "pending", "transactional"):
                continue
            age = spec.now - datetime.fromisoformat(member["last_changed"])
            assert age < timedelta(days=300)


def test_seeding_is_deterministic_when_the_spec_is_the_same() -> None:
    first, planted_first = seeded()
    second, planted_second = seeded()
    assert first.sources() == second.sources()
    assert first.ground_truth() == second.ground_truth()
    assert planted_first == planted_second
    other, _ = seeded(EstateSpec(seed=8))
    assert other.ground_truth() != first.ground_truth()


def test_bulk_builds_a_large_audience_in_seconds() -> None:
    started = time.perf_counter()
    big = seed_mailchimp.bulk(30_000, seed=3)
    assert time.perf_counter() - started < 3
    truth = big.ground_truth()
    assert len(truth) == 30_000
    assert big.ground_truth() == seed_mailchimp.bulk(30_000, seed=3).ground_truth()


# -- paging ----------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [0, 1, 4, 5, 6, 10, 11])
def test_full_pull_lists_every_member_when_the_audience_sits_on_a_page_boundary(
        twin: MailchimpTwin, server: TwinServer, count: int) -> None:
    audience_id = fill(twin, count)
    connector = connector_for(server, audience_id)
    records, last = pull(connector)
    assert held(records) == twin.ground_truth(connector.source)
    assert last.complete
    keys = [k.external_id for batch in connector.list_keys() for k in batch.keys]
    assert sorted(keys) == sorted(m for _, m, _ in twin.ground_truth(connector.source))


def test_full_pull_pages_by_a_thousand_when_the_audience_has_1001_members(
        archived_in_default: bool) -> None:
    big = MailchimpTwin(now=NOW, default_includes_archived=archived_in_default)
    fill(big, 1001)
    with TwinServer(big) as running:
        account = mc.connect(settings(running, page_size=1000, concurrency=2))
        connector = account.connectors()[0]
        records, last = pull(connector)
        expected = {(t, m, e) for t, m, e in big.ground_truth()}
        assert held(records) == expected and last.complete
        pages = big.requests_to(f"/lists/{connector.audience_id}/members", "GET")
        # Default listing: 1000 + a short page; archived listing: one page.
        assert pages == 3


# -- incremental pulls ---------------------------------------------------------------------
def test_incremental_pull_reads_changes_since_the_cursor_and_the_overlap_before_it(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = fill(twin, 12)
    connector = connector_for(server, audience_id)
    _, last = pull(connector)
    cursor_time = mc.read_cursor(last.cursor)
    assert cursor_time == NOW - timedelta(days=30) + timedelta(hours=11)
    twin.update_member(audience_id, "member.2@example.com", phone="+44 7700 900002",
                       at=cursor_time - timedelta(minutes=4))   # inside the 10 min overlap
    twin.update_member(audience_id, "member.3@example.com", phone="+44 7700 900003",
                       at=cursor_time - timedelta(minutes=25))  # before the overlap
    later = cursor_time + timedelta(hours=1)
    twin.unsubscribe(audience_id, "member.4@example.com", at=later)
    twin.archive(audience_id, "member.5@example.com", at=later + timedelta(seconds=1))
    new_id = twin.add_member(audience_id, "new.one@example.com", last_changed=later)
    records, last = pull(connector, last.cursor)
    changed = {r.external_id: r for r in records}
    assert set(changed) == {subscriber_hash(f"member.{i}@example.com") for i in (2, 4, 5, 11)} \
        | {new_id}
    assert changed[subscriber_hash("member.4@example.com")].status == "unsubscribed"
    assert changed[subscriber_hash("member.5@example.com")].status == "archived"
    assert Category.PHONE in changed[subscriber_hash("member.2@example.com")].categories
    assert mc.read_cursor(last.cursor) == later + timedelta(seconds=1)
    # Nothing new: the same cursor back, only the overlap read again.
    records, again = pull(connector, last.cursor)
    assert mc.read_cursor(again.cursor) == later + timedelta(seconds=1)
    assert {r.external_id for r in records} <= set(changed)


def test_archived_members_are_seen_whether_or_not_the_default_listing_has_them(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = fill(twin, 3)
    twin.archive(audience_id, "member.1@example.com")
    auth = ("anyone", DEFAULT_API_KEY)
    default = requests.get(f"{server.url}/3.0/lists/{audience_id}/members", auth=auth,
                           timeout=5).json()
    assert default["total_items"] == (3 if twin.default_includes_archived else 2)
    records, last = pull(connector_for(server, audience_id))
    assert {r.status for r in records} == {"subscribed", "archived"}
    assert len(records) == 3 and last.complete


def test_every_status_is_held_when_pulled(twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = twin.add_audience("Everyone")
    for status in mc.STATUSES:
        twin.add_member(audience_id, f"{status}@example.com", status=status)
    records, last = pull(connector_for(server, audience_id))
    assert sorted(r.status for r in records) == sorted(mc.STATUSES)
    assert {r.email for r in records} == {f"{s}@example.com" for s in mc.STATUSES}


def test_member_without_an_email_is_pulled_with_its_categories(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = twin.add_audience("SMS")
    twin.add_member(audience_id, None, member_id="0f" * 16, first_name="Una",
                    phone="+44 7700 900321")
    records, last = pull(connector_for(server, audience_id))
    assert [(r.external_id, r.email) for r in records] == [("0f" * 16, None)]
    assert {Category.NAME, Category.PHONE} <= records[0].categories
    assert twin.ground_truth() == {("member", "0f" * 16, None)}


def test_records_never_carry_the_values_they_classify(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = twin.add_audience("Canaries")
    twin.add_member(
        audience_id, "canary@example.com", first_name="CANARYFIRST", last_name="CANARYLAST",
        address={"addr1": "CANARYSTREET", "addr2": "", "city": "CANARYCITY", "state": "",
                 "zip": "CANARYZIP", "country": "GB"},
        phone="+44 7700 918273", merge_fields={"COMPANY": "CANARYCOMPANY 4111111111111111"},
        ip_signup="198.51.100.77", location=(51.1, -0.1, "GB"), note="CANARYNOTE",
        status="unsubscribed", unsubscribe_reason="CANARYREASON")
    records, _ = pull(connector_for(server, audience_id))
    text = repr(records)
    for canary in ("CANARY", "918273", "198.51.100.77", "4111", "51.1"):
        assert canary not in text
    assert records[0].categories >= {
        Category.NAME, Category.BILLING_ADDRESS, Category.PHONE, Category.FREE_TEXT,
        Category.CARD_NUMBER, Category.IP_ADDRESS, Category.LOCATION}
    assert records[0].evidence == ("card number pattern in merge field COMPANY",)


# -- reconciliation ------------------------------------------------------------------------
def test_key_listing_is_complete_when_it_adds_up_and_incomplete_when_offsets_shift(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = fill(twin, 10)
    twin.archive(audience_id, "member.9@example.com")
    connector = connector_for(server, audience_id, page_size=3, concurrency=1)
    batches = list(connector.list_keys())
    assert batches[-1].complete and batches[-1].listed_types == {"member"}
    assert sum(len(b.keys) for b in batches) == 10
    listing = connector.list_keys()
    first = next(listing)
    # Deleting a member already listed shifts every later offset by one: one is skipped.
    twin.delete_permanent(audience_id, first.keys[0].external_id)
    rest = list(listing)
    assert sum(len(b.keys) for b in [first, *rest]) == 9
    assert not rest[-1].complete and rest[-1].listed_types == frozenset()
    _, last = pull(connector)
    assert last.complete
    assert len(twin.ground_truth(connector.source)) == 9


def test_audience_deleted_between_runs_is_no_longer_listed(
        twin: MailchimpTwin, server: TwinServer) -> None:
    kept = fill(twin, 2, "Newsletter")
    gone = fill(twin, 2, "Trade customers")
    account = mc.connect(settings(server))
    assert {c.source for c in account.connectors()} == {f"mailchimp:{kept}",
                                                         f"mailchimp:{gone}"}
    orphan = next(c for c in account.connectors() if c.audience_id == gone)
    twin.delete_audience(gone)
    assert [c.source for c in account.connectors()] == [f"mailchimp:{kept}"]
    assert account.listing_complete
    with pytest.raises(FatalAPIError, match="'Trade customers'.*not found") as caught:
        list(orphan.pull(None))
    assert caught.value.source == f"mailchimp:{gone}"
    named = mc.connect(settings(server, audiences=("Trade customers",)))
    with pytest.raises(FatalAPIError, match="'Trade customers' named in the configuration"):
        named.connectors()


def test_lookup_returns_the_live_member_and_nothing_for_a_stranger(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = fill(twin, 2)
    twin.archive(audience_id, "member.1@example.com")
    connector = connector_for(server, audience_id)
    found = connector.lookup("Member.1@Example.com")
    assert [(f["external_id"], f["data"]["status"]) for f in found] == [
        (subscriber_hash("member.1@example.com"), "archived")]
    assert "_links" not in found[0]["data"]
    assert connector.lookup("stranger@example.com") == []


# -- faults ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "options"), [
    ("status", {"status": 429, "retry_after": "0"}),
    ("status", {"status": 500}),
    ("status", {"status": 503}),
    ("drop", {}),
    ("truncate", {}),
])
def test_full_pull_recovers_when_a_page_fails_once(
        twin: MailchimpTwin, server: TwinServer, kind: str, options: dict[str, Any]) -> None:
    audience_id = fill(twin, 12)
    connector = connector_for(server, audience_id)
    twin.faults.inject(kind, times=2, path="/members", **options)
    records, last = pull(connector)
    assert held(records) == twin.ground_truth(connector.source)
    assert last.complete
    assert sum(twin.faults.injected.values()) == 2


def test_full_pull_recovers_when_a_page_hangs_past_the_timeout(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = fill(twin, 6)
    connector = connector_for(server, audience_id, timeout=0.3)
    twin.faults.inject("hang", seconds=1.0, path="/members")
    records, last = pull(connector)
    assert len(records) == 6 and last.complete
    assert twin.faults.injected["hang"] == 1


def test_html_page_answered_with_200_fails_the_pull(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = fill(twin, 6)
    connector = connector_for(server, audience_id)
    twin.faults.inject("html", path="/members")
    with pytest.raises(FatalAPIError, match="HTML page instead of JSON"):
        pull(connector)


def test_persisting_rate_limit_fails_the_pull_naming_the_audience(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = fill(twin, 6)
    connector = connector_for(server, audience_id, retry_attempts=3)
    twin.faults.inject("status", times=3, status=429, retry_after="0", path="/members")
    with pytest.raises(mc.APIError, match="rate limit reached") as caught:
        pull(connector)
    assert caught.value.source == f"mailchimp:{audience_id}"


def test_wrong_key_is_refused_and_never_repeated_in_the_message(
        twin: MailchimpTwin, server: TwinServer) -> None:
    fill(twin, 1)
    wrong = "ffffffffffffffffffffffffffffffff-us6"
    with pytest.raises(FatalAPIError, match="API Key Invalid") as caught:
        mc.connect(settings(server, api_key=wrong)).connectors()
    message = str(caught.value)
    assert wrong not in message and DEFAULT_API_KEY not in message
    assert "ffffffff" not in message


# -- connection limit ----------------------------------------------------------------------
def test_parallel_pull_never_opens_more_than_ten_connections(archived_in_default: bool) -> None:
    big = seed_mailchimp.bulk(4000, seed=11)
    big.default_includes_archived = archived_in_default
    big.faults.latency = 0.01
    with TwinServer(big) as running:
        account = mc.connect(settings(running, page_size=100, concurrency=8))
        connector = account.connectors()[0]
        records, last = pull(connector)
        keys = [k for batch in connector.list_keys() for k in batch.keys]
        connector.close()
    assert len(records) == len(keys) == 4000 and last.complete
    assert big.over_limit == 0
    assert big.max_connections <= 10
    # The pages really were fetched side by side.
    assert big.max_connections >= 4


def test_twin_answers_429_when_more_than_ten_connections_are_open(
        twin: MailchimpTwin, server: TwinServer) -> None:
    connections = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
                   for _ in range(12)]
    statuses = []
    try:
        for connection in connections:
            connection.connect()
        deadline = time.monotonic() + 5
        while twin.open_connections < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        headers = {"Authorization": "Basic " + _basic(DEFAULT_API_KEY)}
        for connection in connections:
            connection.request("GET", "/3.0/ping", headers=headers)
            response = connection.getresponse()
            body = json.loads(response.read())
            statuses.append(response.status)
            if response.status == 429:
                assert body["title"] == "Too Many Requests"
    finally:
        for connection in connections:
            connection.close()
    assert statuses.count(429) == 2 and statuses.count(200) == 10
    assert twin.over_limit == 2 and twin.max_connections == 12


# -- the twin's fidelity to the API ----------------------------------------------------------
def _basic(key: str) -> str:
    import base64

    return base64.b64encode(f"anystring:{key}".encode()).decode()


def api(server: TwinServer, method: str, path: str, key: str | None = DEFAULT_API_KEY,
        **params: Any) -> requests.Response:
    auth = ("anystring", key) if key else None
    return requests.request(method, f"{server.url}/3.0/{path}", params=params, auth=auth,
                            timeout=5)


def test_twin_refuses_wrong_or_missing_keys_with_problem_json(
        twin: MailchimpTwin, server: TwinServer) -> None:
    for key in ("wrong-us6", None):
        response = api(server, "GET", "lists", key=key)
        assert response.status_code == 401
        assert response.headers["Content-Type"].startswith("application/problem+json")
        body = response.json()
        assert set(body) == {"type", "title", "status", "detail", "instance"}
        assert (body["title"], body["status"]) == ("API Key Invalid", 401)


def test_twin_refuses_pages_larger_than_a_thousand(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = fill(twin, 1)
    response = api(server, "GET", f"lists/{audience_id}/members", count=1001)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "count"
    assert api(server, "GET", f"lists/{audience_id}/members", count=1000).status_code == 200


def test_twin_applies_fields_and_exclude_fields_dot_paths(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = fill(twin, 2, phone="+44 7700 900555")
    body = api(server, "GET", f"lists/{audience_id}/members",
               fields="members.id,members.merge_fields.PHONE,total_items").json()
    assert set(body) == {"members", "total_items"}
    assert body["members"][0] == {"id": subscriber_hash("member.0@example.com"),
                                  "merge_fields": {"PHONE": "+44 7700 900555"}}
    body = api(server, "GET", f"lists/{audience_id}/members",
               exclude_fields="members.merge_fields,members._links,_links").json()
    assert "merge_fields" not in body["members"][0] and "_links" not in body
    assert body["members"][0]["email_address"] == "member.0@example.com"
    lists = api(server, "GET", "lists", fields="lists.id,lists.name,total_items").json()
    assert lists == {"lists": [{"id": audience_id, "name": "Newsletter"}], "total_items": 1}


def test_twin_filters_on_status_and_last_changed_and_sorts(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = fill(twin, 6)
    twin.unsubscribe(audience_id, "member.0@example.com", at=NOW)
    path = f"lists/{audience_id}/members"
    unsubscribed = api(server, "GET", path, status="unsubscribed").json()
    assert [m["email_address"] for m in unsubscribed["members"]] == ["member.0@example.com"]
    window = api(server, "GET", path, since_last_changed="2026-10-02T08:30:00+00:00",
                 before_last_changed="2026-10-02T11:00:00+00:00", sort_field="last_changed",
                 sort_dir="DESC").json()
    assert [m["email_address"] for m in window["members"]] == [
        "member.4@example.com", "member.3@example.com"]
    assert window["total_items"] == 2
    assert api(server, "GET", path, status="gone").status_code == 400


def test_twin_archives_on_delete_and_forgets_on_delete_permanent(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = fill(twin, 2)
    member_hash = subscriber_hash("member.0@example.com")
    path = f"lists/{audience_id}/members/{member_hash}"
    assert api(server, "DELETE", path).status_code == 204
    assert api(server, "GET", path).json()["status"] == "archived"
    assert ("member", member_hash, "member.0@example.com") in twin.ground_truth()
    assert api(server, "POST", f"{path}/actions/delete-permanent").status_code == 204
    missing = api(server, "GET", path)
    assert missing.status_code == 404 and missing.json()["title"] == "Resource Not Found"
    assert len(twin.ground_truth()) == 1
    assert twin.writes == 2


def test_twin_searches_members_across_audiences(
        twin: MailchimpTwin, server: TwinServer) -> None:
    fill(twin, 2, "Newsletter")
    fill(twin, 1, "Trade customers")
    body = api(server, "GET", "search-members", query="Member.0@example.com").json()
    assert body["exact_matches"]["total_items"] == 2
    assert {m["list_id"] for m in body["exact_matches"]["members"]} == set(twin.audiences)
    assert api(server, "GET", "search-members").status_code == 400


def test_twin_is_steered_through_its_control_api(
        twin: MailchimpTwin, server: TwinServer) -> None:
    def control(action: str, **payload: Any) -> Any:
        return requests.post(f"{server.url}/__twin__/{action}", json=payload,
                             timeout=5).json()["result"]

    audience_id = control("add_audience", name="Newsletter")
    member_id = control("add_member", audience_id=audience_id, email="x@example.com",
                        first_name="CANARY", last_changed="2026-01-01T00:00:00Z")
    control("unsubscribe", audience_id=audience_id, member="x@example.com")
    assert control("member", audience_id=audience_id, member=member_id)["status"] == \
        "unsubscribed"
    assert control("ground_truth") == [["member", member_id, "x@example.com"]]
    assert "error" in control("archive", audience_id="nope", member=member_id)
    before = twin.now()
    control("advance", seconds=3600)
    assert twin.now() - before >= timedelta(hours=1)
    assert control("audiences") == [{"id": audience_id, "name": "Newsletter"}]


# -- erasure writes (connectors.mailchimp.erase) -----------------------------------------------
def test_erase_deletes_a_member_permanently_not_merely_archiving_it(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience = twin.add_audience("Newsletter")
    member = twin.add_member(audience, "ada@example.com", status="unsubscribed",
                             first_name="Ada")
    kept = twin.add_member(audience, "grace@example.com")
    connector = connector_for(server, audience)
    assert mc.erase(connector, "delete", "member", member) == ("deleted", None)
    assert twin.ground_truth() == {("member", kept, "grace@example.com")}
    records, _ = pull(connector)
    assert held(records) == {("member", kept, "grace@example.com")}
    assert connector.lookup("ada@example.com") == []
    assert mc.fetch(connector, "member", member) is None
    assert mc.erase(connector, "delete", "member", member) == ("already gone", None)
    assert twin.requests_to("/actions/delete-permanent", "POST") == 2
    assert twin.requests_to("/members/", "DELETE") == 0


# -- the twin's strictness -------------------------------------------------------------------
def test_twin_percent_decodes_list_ids_and_subscriber_hashes_in_paths(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = fill(twin, 1)
    member_hash = subscriber_hash("member.0@example.com")
    encoded = "".join(f"%{ord(c):02X}" for c in audience_id)
    member = api(server, "GET", f"lists/{encoded}/members/"
                 + "".join(f"%{ord(c):02x}" for c in member_hash))
    assert member.status_code == 200 and member.json()["id"] == member_hash
    assert api(server, "GET", f"lists/{encoded}/members").json()["total_items"] == 1
    # Decoded per segment: an encoded slash stays inside its segment and names nothing.
    assert api(server, "GET", f"lists/{audience_id}%2Fmembers").status_code == 404


def test_sms_phone_number_is_on_the_member_and_held_as_a_phone(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = twin.add_audience("SMS")
    member_id = twin.add_member(audience_id, "texts@example.com",
                                sms_phone_number="+44 7700 900777")
    shown = api(server, "GET", f"lists/{audience_id}/members/{member_id}").json()
    assert shown["sms_phone_number"] == "+44 7700 900777"
    assert shown["merge_fields"]["PHONE"] == ""
    records, _ = pull(connector_for(server, audience_id))
    assert Category.PHONE in records[0].categories
    assert "900777" not in repr(records)


def test_twin_imports_no_product_code() -> None:
    import ast
    from pathlib import Path

    import sandbox.mailchimp as twin_module

    tree = ast.parse(Path(twin_module.__file__).read_text(encoding="utf-8"))
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert not {name for name in imported if name.split(".")[0] in ("connectors", "daemon")}


def test_twin_ground_truth_normalises_emails_with_its_own_rules(
        twin: MailchimpTwin, server: TwinServer) -> None:
    audience_id = twin.add_audience("Mixed")
    shouting = twin.add_member(audience_id, "  Mixed.Case@Example.COM ")
    broken = twin.add_member(audience_id, "not an address", member_id="ab" * 16)
    assert twin.ground_truth() == {("member", shouting, "mixed.case@example.com"),
                                   ("member", broken, None)}


# -- nothing pages for ever --------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["empty", "repeat"])
@pytest.mark.parametrize("total", [20_000, 10_000_000])
def test_listing_that_stops_making_progress_fails_instead_of_paging_for_ever(
        twin: MailchimpTwin, server: TwinServer, kind: str, total: int) -> None:
    audience_id = fill(twin, 7)
    connector = connector_for(server, audience_id)
    twin.set_listing_fault(kind, total=total)
    read: list[Batch] = []
    with pytest.raises(FatalAPIError, match="stopped making progress") as caught:
        read.extend(connector.pull(None))
    assert caught.value.source == f"mailchimp:{audience_id}"
    assert not any(b.complete or b.cursor for b in read)
    with pytest.raises(FatalAPIError, match="stopped making progress"):
        list(connector.list_keys())
    # Two real pages, then at most one round of pages fetched ahead, per listing.
    assert twin.requests_to(f"/lists/{audience_id}/members", "GET") <= 2 * (2 + 2 + 2)


# -- into the ledger: full syncs, failed runs, check -------------------------------------------
def config(server: TwinServer, tmp_path: Path, key: str = DEFAULT_API_KEY,
           **mailchimp: Any) -> Settings:
    raw = {"ledger": {"state_dir": str(tmp_path)},
           "mailchimp": {"api_key": "env:MC_TEST_KEY", "base_url": f"{server.url}/3.0",
                         "page_size": 5, "concurrency": 2, **mailchimp}}
    return parse_settings(raw, secrets=SecretSources(environ={"MC_TEST_KEY": key},
                                                     credentials_dir=None))


def sync(ledger: Ledger, settings: Settings, *, full: bool = False) -> list[SyncResult]:
    return sync_configured(ledger, settings, full=full, sleep=no_sleep)


def live_members(ledger: Ledger, source: str) -> set[str]:
    query = (select(Holding.external_id).join(Source, Source.id == Holding.source_id)
             .where(Source.name == source, Holding.gone_at.is_(None)))
    with ledger.sessions() as session:
        return set(session.scalars(query))


def runs_of(ledger: Ledger, source: str) -> list[SyncRun]:
    with ledger.sessions() as session:
        return list(session.scalars(select(SyncRun).join(Source, Source.id == SyncRun.source_id)
                                    .where(Source.name == source).order_by(SyncRun.id)))


def health(ledger: Ledger, settings: Settings) -> dict[str, tuple[str, str]]:
    return {h.source: (h.state, h.last_error) for h in digest_for(ledger, settings).sync}


def test_member_deleted_upstream_is_gone_after_a_full_sync(
        twin: MailchimpTwin, server: TwinServer, ledger: Ledger, tmp_path: Path) -> None:
    audience_id = fill(twin, 9)
    twin.archive(audience_id, "member.3@example.com")
    twin.unsubscribe(audience_id, "member.4@example.com")
    settings = config(server, tmp_path)
    source = f"mailchimp:{audience_id}"
    first = sync(ledger, settings, full=True)
    assert [(r.source, r.status, r.error) for r in first] == [(source, "success", None)]
    assert live_members(ledger, source) == {m for _, m, _ in twin.ground_truth(source)}
    # A complete listing leaves a cursor: the hourly syncs read changes only.
    assert runs_of(ledger, source)[-1].cursor_after is not None

    twin.delete_permanent(audience_id, "member.3@example.com")
    twin.delete_permanent(audience_id, "member.6@example.com")
    again = sync(ledger, settings, full=True)
    assert [(r.status, r.error, r.gone) for r in again] == [("success", None, 2)]
    assert live_members(ledger, source) == {m for _, m, _ in twin.ground_truth(source)}
    hourly = sync(ledger, settings)
    assert hourly[0].ok and hourly[0].seen < 9
    assert runs_of(ledger, source)[-1].cursor_before is not None


def test_refused_key_fails_a_run_of_every_audience_the_ledger_knows(
        twin: MailchimpTwin, server: TwinServer, ledger: Ledger, tmp_path: Path) -> None:
    news = fill(twin, 2, "Newsletter")
    trade = fill(twin, 2, "Trade customers")
    good = config(server, tmp_path)
    assert all(r.ok for r in sync(ledger, good, full=True))
    revoked = config(server, tmp_path, key="ffffffffffffffffffffffffffffffff-us6")
    results = sync(ledger, revoked)
    sources = [f"mailchimp:{news}", f"mailchimp:{trade}"]
    assert sorted(r.source for r in results) == sources
    for result in results:
        assert result.status == "failed" and result.run_id > 0
        assert "refused the API key" in (result.error or "")
        assert "Profile → Extras → API keys" in (result.error or "")
        assert "ffffffff" not in (result.error or "")
        assert runs_of(ledger, result.source)[-1].status == "failed"
    shown = health(ledger, revoked)
    assert {name: state for name, (state, _) in shown.items()} == {s: "failed" for s in sources}
    assert "API Key Invalid" in shown[sources[0]][1]


def test_refused_key_on_the_first_sync_fails_a_run_of_the_account_until_it_is_read(
        twin: MailchimpTwin, server: TwinServer, ledger: Ledger, tmp_path: Path) -> None:
    news = fill(twin, 2, "Newsletter")
    revoked = config(server, tmp_path, key="ffffffffffffffffffffffffffffffff-us6")
    results = sync(ledger, revoked, full=True)
    assert [(r.source, r.status) for r in results] == [("mailchimp", "failed")]
    assert health(ledger, revoked)["mailchimp"][0] == "failed"
    good = config(server, tmp_path)
    assert [(r.source, r.ok) for r in sync(ledger, good, full=True)] == [
        (f"mailchimp:{news}", True)]
    # The stand-in for the unreadable account is retired once its audiences are read.
    assert {name: state for name, (state, _) in health(ledger, good).items()} == {
        f"mailchimp:{news}": "ok"}


def test_configured_audience_that_does_not_exist_fails_its_run_and_the_others_sync(
        twin: MailchimpTwin, server: TwinServer, ledger: Ledger, tmp_path: Path) -> None:
    news = fill(twin, 3, "Newsletter")
    settings = config(server, tmp_path, audiences=["Newsletter", "Wholesale"])
    results = {r.source: r for r in sync(ledger, settings, full=True)}
    assert set(results) == {f"mailchimp:{news}", "mailchimp:Wholesale"}
    assert results[f"mailchimp:{news}"].ok
    missing = results["mailchimp:Wholesale"]
    assert missing.status == "failed" and missing.run_id > 0
    assert "'Wholesale' named in the configuration does not exist" in (missing.error or "")
    assert f"'Newsletter' ({news})" in (missing.error or "")
    assert health(ledger, settings)["mailchimp:Wholesale"][0] == "failed"
    # Fixed in the config: the stand-in is retired, the audience synced under its id.
    twin.add_audience("Wholesale", "whole5a1e")
    fixed = config(server, tmp_path, audiences=["Newsletter", "Wholesale"])
    assert all(r.ok for r in sync(ledger, fixed, full=True))
    assert set(health(ledger, fixed)) == {f"mailchimp:{news}", "mailchimp:whole5a1e"}


def test_mailchimp_connector_that_cannot_be_built_fails_a_run(
        twin: MailchimpTwin, server: TwinServer, ledger: Ledger, tmp_path: Path) -> None:
    fill(twin, 1)
    settings = config(server, tmp_path, timeout="0s")
    results = sync(ledger, settings, full=True)
    assert [(r.source, r.status) for r in results] == [("mailchimp", "failed")]
    assert "timeout must be more than 0" in (results[0].error or "")
    assert runs_of(ledger, "mailchimp")[-1].status == "failed"


@pytest.mark.parametrize("kind", ["empty", "repeat"])
def test_full_sync_of_a_listing_that_stops_making_progress_fails_and_marks_nothing_gone(
        twin: MailchimpTwin, server: TwinServer, ledger: Ledger, tmp_path: Path,
        kind: str) -> None:
    audience_id = fill(twin, 8)
    settings = config(server, tmp_path)
    source = f"mailchimp:{audience_id}"
    assert all(r.ok for r in sync(ledger, settings, full=True))
    held = live_members(ledger, source)
    twin.delete_permanent(audience_id, "member.0@example.com")
    twin.set_listing_fault(kind, total=20_000)
    results = sync(ledger, settings, full=True)
    assert [(r.source, r.status) for r in results] == [(source, "failed")]
    assert "stopped making progress" in (results[0].error or "")
    assert live_members(ledger, source) == held
    assert runs_of(ledger, source)[-1].status == "failed"
    assert health(ledger, settings)[source][0] == "failed"


def check_rows(settings: Settings) -> dict[str, CheckResult]:
    return {r.name: r for r in run_checks(settings) if r.name.startswith("mailchimp")}


def test_check_reads_a_member_of_every_audience_a_sync_will_read(
        twin: MailchimpTwin, server: TwinServer, tmp_path: Path) -> None:
    news = fill(twin, 3, "Newsletter")
    trade = fill(twin, 2, "Trade customers")
    rows = check_rows(config(server, tmp_path))
    assert set(rows) == {"mailchimp", f"mailchimp:{news}", f"mailchimp:{trade}"}
    assert all(r.ok for r in rows.values()), rows
    assert "2 audiences" in rows["mailchimp"].detail
    assert "'Newsletter': members readable (3 contacts)" in rows[f"mailchimp:{news}"].detail
    assert twin.requests_to(f"/lists/{news}/members", "GET") == 1


def test_check_fails_a_configured_audience_that_does_not_exist_naming_those_the_key_sees(
        twin: MailchimpTwin, server: TwinServer, tmp_path: Path) -> None:
    news = fill(twin, 1, "Newsletter")
    rows = check_rows(config(server, tmp_path, audiences=["Newsletter", "Wholesale"]))
    assert rows["mailchimp"].ok and rows[f"mailchimp:{news}"].ok
    missing = rows["mailchimp:Wholesale"]
    assert not missing.ok
    assert "'Wholesale' named in the configuration does not exist" in missing.detail
    assert f"the key sees: 'Newsletter' ({news})" in missing.detail
    assert "correct [mailchimp] audiences" in missing.detail


def test_check_names_what_is_missing_when_the_key_or_an_audience_is_refused(
        twin: MailchimpTwin, server: TwinServer, tmp_path: Path) -> None:
    news = fill(twin, 1, "Newsletter")
    trade = fill(twin, 1, "Trade customers")
    wrong = check_rows(config(server, tmp_path, key="ffffffffffffffffffffffffffffffff-us6"))
    assert set(wrong) == {"mailchimp"} and not wrong["mailchimp"].ok
    assert "refused the API key" in wrong["mailchimp"].detail
    assert "Profile → Extras → API keys" in wrong["mailchimp"].detail
    twin.faults.inject("status", status=403, path=f"/lists/{trade}/members")
    rows = check_rows(config(server, tmp_path))
    assert rows["mailchimp"].ok and rows[f"mailchimp:{news}"].ok
    refused = rows[f"mailchimp:{trade}"]
    assert not refused.ok
    assert f"reading the contacts of audience 'Trade customers' ({trade})" in refused.detail
    assert "403" in refused.detail and "Admin or Manager" in refused.detail


def test_check_command_exits_1_for_an_audience_that_does_not_exist(
        twin: MailchimpTwin, server: TwinServer, tmp_path: Path) -> None:
    fill(twin, 1, "Newsletter")
    key = tmp_path / "mailchimp-key"
    key.write_text(DEFAULT_API_KEY + "\n", encoding="utf-8")
    path = tmp_path / "config.toml"
    path.write_text(f'[ledger]\nstate_dir = "{tmp_path}"\n\n[mailchimp]\n'
                    f'api_key = "file:{key}"\nbase_url = "{server.url}/3.0"\n'
                    'audiences = ["Wholesale"]\n', encoding="utf-8")
    done = subprocess.run([str(CLI), "--config", str(path), "check"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("mailchimp:"))
    assert row.split()[:2] == ["mailchimp:Wholesale", "FAIL"]
    assert "'Newsletter'" in row
    assert DEFAULT_API_KEY not in done.stdout + done.stderr
