"""The WordPress connector against the twin and a real WordPress: what it reads (every comment
of every status and type, every account), classifies and looks up, and that both servers give
it the same records. Listings that stop making progress end as failures."""

from __future__ import annotations

from typing import Any

import pytest

from connectors import wordpress as wp
from connectors.base import Category, Record, normalise_email
from connectors.http import APIError, FatalAPIError
from sandbox.server import Reply, TwinServer
from sandbox.wordpress import WordPressTwin
from tests.wordpress.conftest import Server
from tests.wordpress.realwp import APP_PASSWORD


def _connector(server: Server, *, auth: tuple[str, str] | None = None,
               include_users: bool = True) -> wp.WordPressConnector:
    user, password = auth or server.admin
    return wp.connect(wp.Settings(
        name="blog", url=server.url, user=user, app_password=password,
        include_users=include_users, retry_attempts=2, sleep=lambda _: None))


def _pulled(server: Server, **options: Any) -> dict[tuple[str, str], Record]:
    connector = _connector(server, **options)
    try:
        batches = list(connector.pull(None))
    finally:
        connector.close()
    assert batches[-1].complete
    return {(r.record_type, r.external_id): r for b in batches for r in b.records}


def _shape(record: Record) -> tuple[Any, ...]:
    return (record.email, record.categories, record.status, record.created_at,
            record.parent_id, record.evidence)


def test_the_twin_and_a_real_wordpress_give_the_connector_the_same_records(
        twin_wordpress: Server, real_wordpress: Server) -> None:
    twin, real = _pulled(twin_wordpress), _pulled(real_wordpress)
    assert set(twin) == set(real)
    assert {key: _shape(r) for key, r in twin.items()} == \
        {key: _shape(r) for key, r in real.items()}


def test_every_comment_and_account_is_read_and_classified(wordpress: Server) -> None:
    records = _pulled(wordpress)
    spec = wordpress.spec
    comments = [r for (kind, _), r in sorted(records.items(), key=lambda i: int(i[0][1]))
                if kind == wp.COMMENT]
    assert len(comments) == len(spec["comments"])
    for record, planted in zip(comments, spec["comments"], strict=True):
        assert record.status == planted["status"]
        assert record.email == normalise_email(planted["author_email"])
        assert (Category.IP_ADDRESS in record.categories) is True
        assert (Category.USER_AGENT in record.categories) is bool(planted["user_agent"])
        assert Category.FREE_TEXT in record.categories
    users = [r for (kind, _), r in records.items() if kind == "user"]
    assert len(users) == len(spec["users"]) + 1
    assert all(Category.ACCOUNT in r.categories for r in users)
    assert {r.status for r in users} >= {"administrator", "customer", "editor", "shop_manager"}


def test_accounts_are_left_to_the_shop_where_one_is_configured(wordpress: Server) -> None:
    records = _pulled(wordpress, include_users=False)
    assert {kind for kind, _ in records} == {wp.COMMENT}


def test_keys_match_what_a_pull_reads(wordpress: Server) -> None:
    connector = _connector(wordpress)
    try:
        batches = list(connector.list_keys())
    finally:
        connector.close()
    assert batches[-1].complete
    keys = {(k.record_type, k.external_id) for b in batches for k in b.keys}
    assert keys == set(_pulled(wordpress))


def test_probe_counts_and_names_what_is_missing(wordpress: Server) -> None:
    connector = _connector(wordpress)
    try:
        said = connector.probe()
    finally:
        connector.close()
    assert said == f"{len(wordpress.spec['comments'])} comments, " \
                   f"{len(wordpress.spec['users']) + 1} accounts"
    for auth, status in ((wordpress.subscriber, 403), (("admin", "wrong pass word"), 401)):
        connector = _connector(wordpress, auth=auth)
        try:
            with pytest.raises(FatalAPIError) as refused:
                connector.probe()
        finally:
            connector.close()
        assert refused.value.status == status
        assert "rest_forbidden_context" in refused.value.message
        assert APP_PASSWORD not in refused.value.message


def test_a_lookup_keeps_only_the_exact_address(wordpress: Server) -> None:
    accented = next(c for c in wordpress.spec["comments"]
                    if not c["author_email"].isascii() and "user" not in c)
    connector = _connector(wordpress)
    try:
        exact = connector.lookup(accented["author_email"])
        unaccented = connector.lookup(accented["author_email"].replace("é", "e")
                                      .replace("ë", "e"))
    finally:
        connector.close()
    assert exact and {normalise_email(r["data"]["author_email"]) for r in exact} == {
        normalise_email(accented["author_email"])}
    assert unaccented == []


def test_maintenance_mode_fails_the_pull_without_waiting_ten_minutes(wordpress: Server) -> None:
    wordpress.maintenance(True)
    connector = _connector(wordpress)
    try:
        with pytest.raises(APIError) as failed:
            list(connector.pull(None))
    finally:
        wordpress.maintenance(False)
        connector.close()
    assert "600 s" in failed.value.message


class _Looping(WordPressTwin):
    """A site whose comment pages repeat page 1 for ever and whose total never arrives."""

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str], body: bytes) -> Reply:
        query = {**query, "page": ["1"]}
        reply = super().handle(method, path, query, headers, body)
        reply.headers["X-WP-Total"] = "100000"
        return reply


def test_a_listing_that_stops_making_progress_fails_instead_of_paging_for_ever(
        wp_spec: dict[str, Any]) -> None:
    twin = _Looping()
    twin.load(wp_spec, admin_password=APP_PASSWORD)
    with TwinServer(twin) as server:
        connector = wp.connect(wp.Settings(
            name="blog", url=server.url, user="admin", app_password=APP_PASSWORD,
            retry_attempts=1))
        try:
            with pytest.raises(wp.ListingStalled) as stalled:
                list(connector.pull(None))
        finally:
            connector.close()
    assert "stopped making progress at page 2" in stalled.value.message
    assert twin.requests_to("/comments") == 2
