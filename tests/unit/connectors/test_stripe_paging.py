"""Stripe's customers and charges read side by side: each cursor list in order, both at once,
the pull complete only after both ended, and an error or an early close in one ending both."""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from connectors.http import FatalAPIError
from connectors.stripe import Settings, connect
from sandbox.stripe import fixture

BASE = "https://api.stripe.test"


def connector(**overrides: Any):
    options: dict[str, Any] = {"api_key": "sk_test_paging", "base_url": BASE,
                               "sleep": lambda s: None, "page_size": 2,
                               "requests_per_second": 0}
    options.update(overrides)
    return connect(Settings(**options))


def obj(kind: str, ident: str, created: int) -> dict[str, Any]:
    item = fixture(kind)
    item.update(id=ident, created=created)
    if kind == "charge":
        item.update(source=None, customer=None)
    return item


class Lists:
    """Pages of customers and charges, newest first; `barrier` makes the first request of
    each list wait for the other's, so a pull that read them one after the other fails."""

    def __init__(self, customers: int, charges: int, barrier: threading.Barrier | None = None
                 ) -> None:
        self.items = {
            "customers": [obj("customer", f"cus_{n}", 2_000 - n) for n in range(customers)],
            "charges": [obj("charge", f"ch_{n}", 3_000 - n) for n in range(charges)],
        }
        self.barrier = barrier
        self.paths: list[str] = []

    def install(self, rsps: responses.RequestsMock) -> None:
        rsps.add(responses.GET, f"{BASE}/v1/events",
                 json={"object": "list", "data": [], "has_more": False, "url": "/v1/events"})
        for name in self.items:
            rsps.add_callback(responses.GET, f"{BASE}/v1/{name}", callback=self._answer(name))

    def _answer(self, name: str):
        def answer(request: Any) -> tuple[int, dict[str, str], str]:
            query = parse_qs(urlsplit(request.url).query)
            items = self.items[name]
            if "starting_after" in query:
                ids = [item["id"] for item in items]
                items = items[ids.index(query["starting_after"][0]) + 1:]
            elif self.barrier is not None:
                self.barrier.wait()
            self.paths.append(name)
            limit = int(query["limit"][0])
            body = {"object": "list", "data": items[:limit], "has_more": len(items) > limit,
                    "url": f"/v1/{name}"}
            return 200, {}, json.dumps(body)
        return answer


def test_full_pull_reads_customers_and_charges_at_the_same_time() -> None:
    lists = Lists(customers=5, charges=7, barrier=threading.Barrier(2, timeout=5))
    with responses.RequestsMock() as rsps:
        lists.install(rsps)
        batches = list(connector().pull(None))
    records = [r for b in batches for r in b.records]
    assert sorted(r.external_id for r in records if r.record_type == "customer") == \
        sorted(f"cus_{n}" for n in range(5))
    assert sorted(r.external_id for r in records if r.record_type == "charge") == \
        sorted(f"ch_{n}" for n in range(7))
    # Each list still in its own order, newest first.
    charges = [r.external_id for r in records if r.record_type == "charge"]
    assert charges == [f"ch_{n}" for n in range(7)]
    assert lists.paths.count("customers") == 3 and lists.paths.count("charges") == 4


def test_only_the_last_batch_of_both_lists_is_complete_and_carries_the_cursor() -> None:
    lists = Lists(customers=6, charges=1)
    with responses.RequestsMock() as rsps:
        lists.install(rsps)
        batches = list(connector().pull(None))
    assert [b.complete for b in batches] == [False] * (len(batches) - 1) + [True]
    assert [b.cursor is not None for b in batches] == [False] * (len(batches) - 1) + [True]
    assert batches[-1].listed_types == {"customer", "charge"}
    cursor = json.loads(batches[-1].cursor or "")
    assert (cursor["customer"], cursor["charge"]) == (2_000, 3_000)


def test_an_error_in_one_list_ends_the_pull_without_a_complete_batch() -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(responses.GET, f"{BASE}/v1/events",
                 json={"object": "list", "data": [], "has_more": False, "url": "/v1/events"})
        rsps.add(responses.GET, f"{BASE}/v1/customers", status=403,
                 json={"error": {"type": "invalid_request_error", "message": "no"}})
        rsps.add(responses.GET, f"{BASE}/v1/charges",
                 json={"object": "list", "data": [], "has_more": False, "url": "/v1/charges"})
        batches = []
        with pytest.raises(FatalAPIError, match="Customers"):
            for batch in connector().pull(None):
                batches.append(batch)
    assert not any(b.complete for b in batches)


def test_closing_the_pull_early_stops_both_readers() -> None:
    lists = Lists(customers=40, charges=40)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        lists.install(rsps)
        pull = connector().pull(None)
        next(pull)
        pull.close()
        read = len(lists.paths)
    assert not [t for t in threading.enumerate() if t.name.startswith("stripe-")]
    # Each reader hands over at most the page it holds: nothing near the 40 pages.
    assert read <= 6


def test_a_list_that_leads_back_to_a_page_already_read_is_fatal_before_repeating_it() -> None:
    # Pages A, B, then A again: each page new against the one before, yet a loop.
    items = [obj("customer", f"cus_{n}", 2_000 - n) for n in range(4)]
    pages = {None: items[0:2], "cus_1": items[2:4], "cus_3": items[0:2]}
    asked: list[str | None] = []

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        after = parse_qs(urlsplit(request.url).query).get("starting_after", [None])[0]
        asked.append(after)
        body = {"object": "list", "data": pages[after], "has_more": True,
                "url": "/v1/customers"}
        return 200, {"Request-Id": f"req_{len(asked)}"}, json.dumps(body)

    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.GET, f"{BASE}/v1/customers", callback=answer)
        rsps.add(responses.GET, f"{BASE}/v1/charges",
                 json={"object": "list", "data": [], "has_more": False, "url": "/v1/charges"})
        listed: list[str] = []
        with pytest.raises(FatalAPIError, match="the page after cus_3 .request req_3. held"):
            for batch in connector().list_keys():
                assert not batch.complete
                listed += [key.external_id for key in batch.keys]
                assert len(asked) < 20, "still paging"
    # No page was handed on twice (the last one read is held back when the list fails).
    assert listed in (["cus_0", "cus_1"], ["cus_0", "cus_1", "cus_2", "cus_3"])
    assert asked == [None, "cus_1", "cus_3"]
