"""Erasure writes through the WordPress connector, against the twin and a real WordPress: a
comment anonymised the way WordPress's own eraser does it (as far as the REST API allows) or
deleted for good, an account deleted, an administrator never, and a key that may not write
refused with what to do. Each test creates what it changes, and removes it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from connectors import wordpress as wp
from connectors.base import Category
from connectors.http import FatalAPIError
from tests.wordpress.conftest import Server


@pytest.fixture
def connector(wordpress: Server) -> Iterator[wp.WordPressConnector]:
    user, password = wordpress.admin
    opened = wp.connect(wp.Settings(name="blog", url=wordpress.url, user=user,
                                    app_password=password, retry_attempts=1))
    try:
        yield opened
    finally:
        opened.close()


def _comment(server: Server, **fields: str) -> int:
    answer = requests.post(f"{server.rest}/comments", auth=server.admin, timeout=30, json={
        "post": server.seeded["post"], "author_name": "Dana Case",
        "author_email": "dana.case@example.net", "author_ip": "198.51.100.23",
        "author_user_agent": "Mozilla/5.0 (Dana's laptop)", "content": "Where is my order?",
        **fields})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def _account(server: Server, role: str) -> int:
    answer = requests.post(f"{server.rest}/users", auth=server.admin, timeout=30, json={
        "username": f"erase-{role}", "email": f"erase.{role}@example.net",
        "password": "a long password 123", "roles": [role]})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def test_an_anonymised_comment_holds_nothing_of_its_author(
        wordpress: Server, connector: wp.WordPressConnector) -> None:
    ident = _comment(wordpress)
    try:
        outcome, after = wp.erase(connector, "anonymise", wp.COMMENT, str(ident))
        assert outcome == "anonymised" and after is not None
        record = wp.classify_comment(wp.fetch(connector, wp.COMMENT, str(ident)) or {},
                                     own_agent=connector.own_agent)
        assert not {Category.EMAIL, Category.NAME, Category.IP_ADDRESS,
                    Category.USER_AGENT} & record.categories
        assert record.email is None
        assert Category.FREE_TEXT in record.categories
    finally:
        wp.erase(connector, "delete", wp.COMMENT, str(ident))


def test_a_deleted_comment_is_gone_not_in_the_trash(
        wordpress: Server, connector: wp.WordPressConnector) -> None:
    ident = _comment(wordpress, status="spam")
    assert wp.erase(connector, "delete", wp.COMMENT, str(ident)) == ("deleted", None)
    assert wp.fetch(connector, wp.COMMENT, str(ident)) is None
    assert wp.erase(connector, "delete", wp.COMMENT, str(ident)) == ("already gone", None)


def test_an_account_is_deleted_and_an_administrator_never(
        wordpress: Server, connector: wp.WordPressConnector) -> None:
    member = _account(wordpress, "subscriber")
    assert wp.erase(connector, "delete", wp.USER, str(member)) == ("deleted", None)
    assert wp.fetch(connector, wp.USER, str(member)) is None
    admin = _account(wordpress, "administrator")
    try:
        with pytest.raises(FatalAPIError) as refused:
            wp.erase(connector, "delete", wp.USER, str(admin))
        assert "never deleted" in refused.value.message
        assert wp.fetch(connector, wp.USER, str(admin)) is not None
    finally:
        requests.delete(f"{wordpress.rest}/users/{admin}", auth=wordpress.admin, timeout=30,
                        params={"force": "true", "reassign": "1"})


def test_a_user_who_may_not_write_is_refused_with_what_to_do(wordpress: Server) -> None:
    ident = _comment(wordpress)
    user, password = wordpress.subscriber
    weak = wp.connect(wp.Settings(name="blog", url=wordpress.url, user=user,
                                  app_password=password, retry_attempts=1))
    try:
        with pytest.raises(FatalAPIError) as refused:
            wp.erase(weak, "anonymise", wp.COMMENT, str(ident))
    finally:
        weak.close()
        requests.delete(f"{wordpress.rest}/comments/{ident}", auth=wordpress.admin,
                        timeout=30, params={"force": "true"})
    assert refused.value.status == 403
    assert "administrator" in refused.value.message
    assert password not in refused.value.message


def test_the_same_words_twice_from_one_author_are_refused_as_a_duplicate(
        wordpress: Server) -> None:
    first = _comment(wordpress, content="Said once, and only once.")
    try:
        again = requests.post(f"{wordpress.rest}/comments", auth=wordpress.admin, timeout=30,
                              json={"post": wordpress.seeded["post"],
                                    "author_name": "Dana Case",
                                    "author_email": "dana.case@example.net",
                                    "content": "Said once, and only once."})
        assert again.status_code == 409
        assert again.json()["code"] == "comment_duplicate"
    finally:
        requests.delete(f"{wordpress.rest}/comments/{first}", auth=wordpress.admin,
                        params={"force": "true"}, timeout=30)
