"""WordPress core's REST layer as the connectors rely on it, asked of the twin and of a real
WordPress alike (the `wordpress` fixture runs each test on both): which comments each status
and type lists, paging headers and pages beyond the end, the error bodies of bad
parameters, 401/403 for missing, wrong and insufficient credentials, and maintenance mode.
The expected answers are counted from the spec both were seeded from."""

from __future__ import annotations

import unicodedata
from collections import Counter
from typing import Any

import pytest
import requests

from tests.wordpress.conftest import Server


def _get(server: Server, path: str, auth: tuple[str, str] | None = None,
         **params: Any) -> requests.Response:
    return requests.get(f"{server.rest}{path}", params=params,
                        auth=auth if auth is not None else server.admin, timeout=30)


def _counts(spec: dict[str, Any]) -> Counter[tuple[str, str]]:
    return Counter((c["type"], c["status"]) for c in spec["comments"])


@pytest.mark.parametrize(("status", "types", "statuses"), [
    (None, None, {"approved"}),
    ("all", None, {"approved", "hold"}),
    ("any", None, {"approved", "hold", "spam", "trash"}),
    ("any", "all", {"approved", "hold", "spam", "trash"}),
    ("spam", "all", {"spam"}),
    ("trash", "all", {"trash"}),
    ("hold", "all", {"hold"}),
    (None, "all", {"approved"}),
    ("any", "pingback", {"approved", "hold", "spam", "trash"}),
    ("bogus", "all", set()),
])
def test_which_comments_a_status_and_type_list(wordpress: Server, status: str | None,
                                               types: str | None, statuses: set[str]) -> None:
    params = {"context": "edit", "per_page": 100, "_fields": "id,status,type"}
    if status is not None:
        params["status"] = status
    if types is not None:
        params["type"] = types
    answer = _get(wordpress, "/comments", **params)
    assert answer.status_code == 200
    wanted_types = {"comment"} if types is None else None if types == "all" else {types}
    expected = sum(n for (kind, state), n in _counts(wordpress.spec).items()
                   if state in statuses and (wanted_types is None or kind in wanted_types))
    assert int(answer.headers["X-WP-Total"]) == expected
    assert len(answer.json()) == min(expected, 100)
    assert {c["status"] for c in answer.json()} <= statuses


def test_comments_in_edit_context_carry_their_authors_data(wordpress: Server) -> None:
    answer = _get(wordpress, "/comments", context="edit", status="any", type="all",
                  per_page=100, orderby="id", order="asc")
    comments = answer.json()
    assert [c["author_email"] for c in comments] == [
        c["author_email"] for c in wordpress.spec["comments"]]
    assert [c["author_ip"] for c in comments] == [c["ip"] for c in wordpress.spec["comments"]]
    assert [c["author_user_agent"] for c in comments] == [
        c["user_agent"] for c in wordpress.spec["comments"]]
    assert [c["date_gmt"] for c in comments] == [
        c["date_gmt"].replace(" ", "T") for c in wordpress.spec["comments"]]
    assert {"id", "post", "author", "author_name", "author_url", "status", "type", "date",
            "date_gmt", "content", "link"} <= set(comments[0])


def test_author_email_compares_without_case_or_accents(wordpress: Server) -> None:
    accented = next(c for c in wordpress.spec["comments"]
                    if not c["author_email"].isascii() and "user" not in c)
    plain = "".join(ch for ch in unicodedata.normalize("NFKD", accented["author_email"])
                    if not unicodedata.combining(ch)).upper()
    answer = _get(wordpress, "/comments", context="edit", status="any", type="all",
                  author_email=plain, _fields="id,author_email")
    assert answer.status_code == 200
    assert accented["author_email"] in {c["author_email"] for c in answer.json()}


def test_users_in_edit_context_page_with_totals_and_links(wordpress: Server) -> None:
    total = len(wordpress.spec["users"]) + 1
    first = _get(wordpress, "/users", context="edit", per_page=10)
    assert first.status_code == 200
    assert first.headers["X-WP-Total"] == str(total)
    pages = -(-total // 10)
    assert first.headers["X-WP-TotalPages"] == str(pages)
    assert 'rel="next"' in first.headers["Link"] and "page=2" in first.headers["Link"]
    assert {"id", "username", "email", "roles", "registered_date"} <= set(first.json()[0])
    beyond = _get(wordpress, "/users", context="edit", per_page=10, page=pages + 5)
    assert beyond.status_code == 200
    assert beyond.json() == []
    assert beyond.headers["X-WP-Total"] == str(total)
    assert f"page={pages}>" in beyond.headers["Link"] and 'rel="prev"' in beyond.headers["Link"]
    assert 'rel="next"' not in beyond.headers["Link"]


def test_users_filter_by_roles_as_a_list_or_commas(wordpress: Server) -> None:
    roles = Counter(u["role"] for u in wordpress.spec["users"])
    by_commas = _get(wordpress, "/users", context="edit", roles="customer,shop_manager",
                     per_page=100, _fields="id,roles")
    by_list = requests.get(f"{wordpress.rest}/users", auth=wordpress.admin, timeout=30,
                           params=[("context", "edit"), ("roles[0]", "customer"),
                                   ("per_page", "100"), ("_fields", "id,roles")])
    assert int(by_commas.headers["X-WP-Total"]) == roles["customer"] + roles["shop_manager"]
    assert int(by_list.headers["X-WP-Total"]) == roles["customer"]
    assert {r for u in by_list.json() for r in u["roles"]} == {"customer"}


def test_users_search_an_email_without_case(wordpress: Server) -> None:
    member = wordpress.spec["users"][5]
    answer = _get(wordpress, "/users", context="edit", search=member["email"].upper(),
                  _fields="id,email")
    assert [u["email"] for u in answer.json()] == [member["email"]]


@pytest.mark.parametrize(("params", "names", "detail"), [
    ({"per_page": "101"}, "per_page", "rest_out_of_bounds"),
    ({"per_page": "0"}, "per_page", "rest_out_of_bounds"),
    ({"page": "0"}, "page", "rest_out_of_bounds"),
    ({"page": "abc"}, "page", "rest_invalid_type"),
    ({"per_page": "500", "page": "0"}, "page, per_page", None),
    ({"context": "bogus"}, "context", "rest_not_in_enum"),
])
def test_bad_parameters_answer_rest_invalid_param(wordpress: Server, params: dict[str, str],
                                                  names: str, detail: str | None) -> None:
    answer = _get(wordpress, "/users", **params)
    body = answer.json()
    assert answer.status_code == 400
    assert answer.headers["Content-Type"].startswith("application/json")
    assert body["code"] == "rest_invalid_param"
    assert body["message"] == f"Invalid parameter(s): {names}"
    assert body["data"]["status"] == 400
    assert set(body["data"]["params"]) == set(names.split(", "))
    if detail:
        assert body["data"]["details"][names]["code"] == detail


def test_status_and_type_must_be_plain_strings(wordpress: Server) -> None:
    for name in ("status", "type"):
        answer = requests.get(f"{wordpress.rest}/comments", auth=wordpress.admin, timeout=30,
                              params=[("context", "edit"), (f"{name}[0]", "spam")])
        assert answer.status_code == 400
        assert answer.json()["data"]["params"] == {name: f"{name} is not of type string."}


def test_missing_and_wrong_credentials_look_alike_and_a_subscriber_is_forbidden(
        wordpress: Server) -> None:
    anonymous = requests.get(f"{wordpress.rest}/comments", params={"context": "edit"},
                             timeout=30)
    wrong = _get(wordpress, "/comments", auth=("admin", "nope nope nope"), context="edit")
    assert anonymous.status_code == wrong.status_code == 401
    assert anonymous.json() == wrong.json() == {
        "code": "rest_forbidden_context",
        "message": "Sorry, you are not allowed to edit comments.", "data": {"status": 401}}
    assert "WWW-Authenticate" not in anonymous.headers
    forbidden = _get(wordpress, "/users", auth=wordpress.subscriber, context="edit")
    assert forbidden.status_code == 403
    assert forbidden.json()["code"] == "rest_forbidden_context"
    me = _get(wordpress, "/users/me", auth=wordpress.subscriber, _fields="id")
    assert me.status_code == 200


def test_maintenance_mode_answers_503_with_retry_after(wordpress: Server) -> None:
    wordpress.maintenance(True)
    try:
        page = _get(wordpress, "/comments")
        as_json = requests.get(f"{wordpress.rest}/comments", auth=wordpress.admin, timeout=30,
                               headers={"Accept": "application/json"})
    finally:
        wordpress.maintenance(False)
    assert page.status_code == 503 and page.headers["Retry-After"] == "600"
    assert page.headers["Content-Type"].startswith("text/html")
    assert "Briefly unavailable for scheduled maintenance" in page.text
    assert "X-WP-Total" not in page.headers
    assert as_json.status_code == 503
    assert as_json.json()["code"] == "wp_die"
    assert _get(wordpress, "/comments").status_code == 200


def test_unknown_routes_and_records(wordpress: Server) -> None:
    assert _get(wordpress, "/nothing-here").json()["code"] == "rest_no_route"
    assert _get(wordpress, "/users/99999", context="edit").json() == {
        "code": "rest_user_invalid_id", "message": "Invalid user ID.", "data": {"status": 404}}
    assert _get(wordpress, "/comments/99999", context="edit").json()["code"] == \
        "rest_comment_invalid_id"


def test_author_email_must_be_an_address_is_email_accepts(wordpress: Server) -> None:
    answer = _get(wordpress, "/comments", context="edit", author_email="chloé@example.net")
    assert answer.status_code == 400
    body = answer.json()
    assert body["message"] == "Invalid parameter(s): author_email"
    assert body["data"]["params"] == {"author_email": "Invalid email address."}
    assert body["data"]["details"]["author_email"]["code"] == "rest_invalid_email"


def test_accounts_keep_only_the_characters_sanitize_email_allows(wordpress: Server) -> None:
    accented = next(u for u in wordpress.spec["users"] if not u["email"].isascii())
    answer = _get(wordpress, "/users", context="edit", per_page=100, _fields="username,email")
    stored = {u["username"]: u["email"] for u in answer.json()}
    assert stored[accented["login"]] == accented["email"].replace("é", "").replace("ë", "")
