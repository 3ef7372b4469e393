"""Loopback twin of WordPress core's REST API (wp/v2 users and comments), answering as a real
WordPress 6.1 does — held against one by the contract suite (tests/wordpress):

- comments: no `status` lists approved ones only, `all` approved and pending, `any` every
  status (spam and trash too); no `type` lists type `comment` only, `all` every type
  (pingbacks, WooCommerce's product reviews); `status`/`type` must be plain strings; dates
  without a zone suffix; `author_email` and the users' `search` compare as MySQL's
  utf8mb4_unicode_ci does (case and accents ignored);
- users: `context=edit` needs the right to list users, `roles` takes a list or commas, users
  cannot be trashed (`force=true` and `reassign` are required to delete);
- Basic authentication with an application password, which WordPress only honours over HTTPS
  or when the site's environment type is `local`; any refused password looks like no
  password (401 `rest_forbidden_context`), an account without the right gets 403;
- an updated comment whose `author_user_agent` is empty takes the request's User-Agent;
- pages beyond the last answer 200 `[]`; `.maintenance` answers 503 with Retry-After: 600.

State lives in memory, loaded from a spec (`load`), the same JSON the real server is seeded
from; the spec itself is built elsewhere (sandbox/wordpress_spec.py).
"""

from __future__ import annotations

import ipaddress
import json
import re
import unicodedata
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from sandbox import wp_rest
from sandbox.server import HTML_PAGE, Reply, Twin

API = "/wp-json/wp/v2"
COMMENT_STATUSES = {"1": "approved", "0": "hold", "spam": "spam", "trash": "trash"}
LIST_USERS = frozenset({"administrator"})
MODERATE = frozenset({"administrator", "editor"})
USER_ORDERBY = ("id", "include", "name", "registered_date", "slug", "include_slugs", "email",
                "url")
COMMENT_ORDERBY = ("date", "date_gmt", "id", "include", "post", "parent", "type")


def _collated(text: str) -> str:
    """utf8mb4_unicode_ci's idea of equal: case and accents ignored."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


_LOCAL_PART = re.compile(r"[^a-zA-Z0-9!#$%&'*+/=?^_`{|}~.-]")
_DOMAIN_LABEL = re.compile(r"[^a-z0-9-]+", re.IGNORECASE)


def sanitize_email(email: str) -> str:
    """WordPress's sanitize_email(), which wp_insert_user applies: characters outside what
    is_email() allows are dropped (an account's `chloé@` becomes `chlo@`); comments keep
    what they were given."""
    local, at, domain = email.partition("@")
    if not at:
        return ""
    local = _LOCAL_PART.sub("", local)
    labels = [_DOMAIN_LABEL.sub("", label.strip(" \t\n\r\0\x0b-"))
              for label in domain.strip(".").split(".")]
    labels = [label for label in labels if label]
    return f"{local}@{'.'.join(labels)}" if local and len(labels) > 1 else ""


def is_email(email: str) -> bool:
    """WordPress's is_email(), which a REST `author_email` parameter must pass."""
    return bool(email) and sanitize_email(email) == email


def _gmt(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


class WordPressTwin(Twin):
    name = "wordpress"

    def __init__(self, *, environment: str = "local", https: bool = False) -> None:
        super().__init__()
        # Application passwords work only over HTTPS or on a `local` site.
        self.environment = environment
        self.https = https
        self.maintenance = False
        self.users: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, dict[str, Any]] = {}
        self.app_passwords: dict[int, str] = {}
        self.post_id = 4
        self._next_user = 1
        self._next_comment = 2
        self.url = "http://127.0.0.1"
        # The administrator a loaded site signs in as, and its application password.
        self.admin_user = "admin"
        self.admin_password = ""

    # -- state ------------------------------------------------------------------------------
    def load(self, spec: dict[str, Any], *, admin_password: str) -> dict[str, Any]:
        """The state a fresh install seeded with `spec` has (what tests/wordpress/seed.php
        makes of it); returns the ids as seed.php prints them."""
        with self.lock:
            self.users.clear()
            self.comments.clear()
            self.app_passwords.clear()
            self._next_user, self._next_comment = 1, 2
            admin = self.add_user("admin", "admin@example.test", "admin", "administrator",
                                  "2024-01-01 00:00:00")
            self.app_passwords[admin] = _spaceless(admin_password)
            self.admin_password = admin_password
            ids = {"admin": admin}
            for user in spec["users"]:
                ids[user["login"]] = self.add_user(
                    user["login"], user["email"], user["display_name"], user["role"],
                    user["registered"], first_name=user.get("first_name", ""),
                    last_name=user.get("last_name", ""), meta=user.get("meta", {}))
            subscriber = spec["subscriber_login"]
            self.app_passwords[ids[subscriber]] = _spaceless(spec["subscriber_password"])
            comment_ids = [self.add_comment(comment, ids.get(comment.get("user", ""), 0))
                           for comment in spec["comments"]]
        return {"users": ids, "comments": comment_ids, "post": self.post_id,
                "subscriber_user": subscriber,
                "subscriber_password": spec["subscriber_password"]}

    def add_user(self, login: str, email: str, display_name: str, role: str, registered: str,
                 *, first_name: str = "", last_name: str = "",
                 meta: dict[str, Any] | None = None) -> int:
        with self.lock:
            ident = self._next_user
            self._next_user += 1
            self.users[ident] = {
                "id": ident, "login": login, "email": sanitize_email(email),
                "display_name": display_name,
                "first_name": first_name, "last_name": last_name, "roles": [role],
                "registered": registered, "meta": dict(meta or {}),
            }
            return ident

    def add_comment(self, comment: dict[str, Any], user_id: int = 0) -> int:
        with self.lock:
            ident = self._next_comment
            self._next_comment += 1
            self.comments[ident] = {
                "id": ident, "author": user_id, "author_name": comment["author_name"],
                "author_email": comment["author_email"],
                "author_url": comment.get("author_url", ""), "author_ip": comment["ip"],
                "author_user_agent": comment["user_agent"], "date_gmt": comment["date_gmt"],
                "content": comment["content"], "type": comment["type"],
                "status": "approved" if comment["status"] == "approved" else comment["status"],
                "trashed_gmt": comment.get("trashed_gmt") if comment["status"] == "trash"
                else None,
            }
            return ident

    # -- HTTP -------------------------------------------------------------------------------
    def error_reply(self, status: int, message: str) -> Reply:
        code = {503: "rest_service_unavailable", 429: "rest_too_many_requests"}.get(
            status, "internal_server_error")
        return wp_rest.error(status, code, message)

    def empty_reply(self, path: str) -> Reply:
        return Reply(200, [], headers={"X-WP-Total": "0", "X-WP-TotalPages": "0"})

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str], body: bytes) -> Reply:
        if self.maintenance:
            return _maintenance(headers)
        params = wp_rest.php_params(query)
        if method in ("POST", "PUT", "PATCH") and body:
            params.update(_body_params(body, headers))
        user = self._authenticated(headers)
        if path in ("/wp-json", "/wp-json/"):
            return Reply(200, {"name": "privacy-ledger contract site", "url": self.url,
                               "namespaces": ["oembed/1.0", "wp/v2", "wp-site-health/v1"],
                               "authentication": {"application-passwords": {}}})
        route = path.removeprefix(API).rstrip("/")
        with self.lock:
            if route == "/users" and method == "GET":
                return self._list_users(params, user)
            if route == "/users/me" and method == "GET":
                if user is None:
                    return wp_rest.error(401, "rest_not_logged_in",
                                         "You are not currently logged in.")
                return Reply(200, wp_rest.only_fields(self._user_view(user, edit=True),
                                                      params.get("_fields")))
            if route.startswith("/users/") and route[7:].isdigit():
                return self._one_user(method, int(route[7:]), params, user)
            if route == "/comments" and method == "GET":
                return self._list_comments(params, user)
            if route == "/comments" and method == "POST":
                return self._create_comment(params, user, headers)
            if route == "/users" and method == "POST":
                return self._create_user(params, user)
            if route.startswith("/comments/") and route[10:].isdigit():
                return self._one_comment(method, int(route[10:]), params, user, headers)
        return wp_rest.error(404, "rest_no_route",
                             "No route was found matching the URL and request method.")

    def _authenticated(self, headers: dict[str, str]) -> dict[str, Any] | None:
        credentials = wp_rest.basic_credentials(headers)
        if credentials is None or not (self.https or self.environment == "local"):
            return None
        name, password = credentials
        wanted = _collated(name)
        for ident, user in self.users.items():
            if wanted in (_collated(user["login"]), _collated(user["email"])):
                stored = self.app_passwords.get(ident)
                return user if stored is not None and stored == _spaceless(password) else None
        return None

    # -- users ------------------------------------------------------------------------------
    def _list_users(self, params: dict[str, Any], user: dict[str, Any] | None) -> Reply:
        paging = _paging(params)
        if isinstance(paging, Reply):
            return paging
        page, per_page, context, problems = paging
        orderby = wp_rest.string(params, "orderby", "name", problems, choices=USER_ORDERBY)
        order = wp_rest.string(params, "order", "asc", problems, choices=("asc", "desc"))
        if problems:
            return wp_rest.invalid_params(problems)
        allowed = user is not None and bool(LIST_USERS & set(user["roles"]))
        if context == "edit" and not allowed:
            return wp_rest.not_allowed_context("users", user is not None)
        roles = params.get("roles")
        if roles is not None and not allowed:
            return wp_rest.error(403 if user else 401, "rest_user_cannot_view",
                                 "Sorry, you are not allowed to filter users by role.")
        chosen = list(self.users.values())
        if not allowed:
            # Anonymous lists show only authors of published posts: here, the admin.
            chosen = [u for u in chosen if u["id"] == 1]
        if roles:
            wanted = set(roles if isinstance(roles, list) else str(roles).split(","))
            chosen = [u for u in chosen if wanted & set(u["roles"])]
        search = params.get("search")
        if isinstance(search, str) and search:
            needle = _collated(search)
            columns = ("email",) if "@" in search else ("login", "email", "display_name")
            chosen = [u for u in chosen if any(needle in _collated(u[c]) for c in columns)]
        key = {"id": lambda u: u["id"], "registered_date": lambda u: (u["registered"], u["id"]),
               "email": lambda u: _collated(u["email"]), "slug": lambda u: u["login"]}.get(
            orderby, lambda u: (_collated(u["display_name"]), u["id"]))
        chosen.sort(key=key, reverse=order == "desc")
        items, headers = wp_rest.page_of(chosen, page, per_page, f"{self.url}{API}/users",
                                         params)
        body = [wp_rest.only_fields(self._user_view(u, edit=context == "edit"),
                                    params.get("_fields")) for u in items]
        return Reply(200, body, headers=headers)

    def _one_user(self, method: str, ident: int, params: dict[str, Any],
                  user: dict[str, Any] | None) -> Reply:
        target = self.users.get(ident)
        if target is None:
            return wp_rest.error(404, "rest_user_invalid_id", "Invalid user ID.")
        allowed = user is not None and bool(LIST_USERS & set(user["roles"]))
        if method == "GET":
            if params.get("context") == "edit" and not allowed:
                return wp_rest.not_allowed_context("this user", user is not None)
            return Reply(200, wp_rest.only_fields(
                self._user_view(target, edit=params.get("context") == "edit"),
                params.get("_fields")))
        if method != "DELETE":
            return wp_rest.error(404, "rest_no_route",
                                 "No route was found matching the URL and request method.")
        if not allowed:
            return wp_rest.error(403 if user else 401, "rest_user_cannot_delete",
                                 "Sorry, you are not allowed to delete this user.")
        if str(params.get("force", "")).lower() not in ("1", "true"):
            return wp_rest.error(501, "rest_trash_not_supported",
                                 "Users do not support trashing. Set 'force=true' to delete.")
        reassign = params.get("reassign")
        if reassign is None:
            return wp_rest.error(400, "rest_missing_callback_param",
                                 "Missing parameter(s): reassign", params=["reassign"])
        if str(reassign).lower() != "false" and (
                not str(reassign).isdigit() or int(reassign) == ident
                or int(reassign) not in self.users):
            return wp_rest.error(400, "rest_user_invalid_reassign",
                                 "Invalid user ID for reassignment.")
        previous = self._user_view(target, edit=True)
        del self.users[ident]
        self.app_passwords.pop(ident, None)
        return Reply(200, {"deleted": True, "previous": previous})

    def _create_user(self, params: dict[str, Any], user: dict[str, Any] | None) -> Reply:
        if user is None or not LIST_USERS & set(user["roles"]):
            return wp_rest.error(403 if user else 401, "rest_cannot_create_user",
                                 "Sorry, you are not allowed to create new users.")
        missing = [name for name in ("username", "email", "password") if not params.get(name)]
        if missing:
            return wp_rest.error(400, "rest_missing_callback_param",
                                 f"Missing parameter(s): {', '.join(missing)}", params=missing)
        roles = params.get("roles") or ["subscriber"]
        ident = self.add_user(str(params["username"]), str(params["email"]),
                              str(params.get("name") or params["username"]),
                              str(roles[0] if isinstance(roles, list) else roles),
                              datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                              first_name=str(params.get("first_name", "")),
                              last_name=str(params.get("last_name", "")))
        return Reply(201, self._user_view(self.users[ident], edit=True))

    def _user_view(self, user: dict[str, Any], *, edit: bool) -> dict[str, Any]:
        view = {
            "id": user["id"], "name": user["display_name"], "url": "",
            "description": "", "link": f"{self.url}/author/{user['login']}/",
            "slug": user["login"], "avatar_urls": {}, "meta": [],
        }
        if edit:
            view.update({
                "username": user["login"], "first_name": user["first_name"],
                "last_name": user["last_name"], "email": user["email"], "locale": "en_US",
                "nickname": user["login"], "roles": list(user["roles"]),
                "registered_date": _gmt(user["registered"]).isoformat(),
                "capabilities": {role: True for role in user["roles"]},
                "extra_capabilities": {role: True for role in user["roles"]},
            })
        return view

    # -- comments ---------------------------------------------------------------------------
    def _list_comments(self, params: dict[str, Any], user: dict[str, Any] | None) -> Reply:
        paging = _paging(params)
        if isinstance(paging, Reply):
            return paging
        page, per_page, context, problems = paging
        status = wp_rest.string(params, "status", "approve", problems)
        kind = wp_rest.string(params, "type", "comment", problems)
        orderby = wp_rest.string(params, "orderby", "date_gmt", problems,
                                 choices=COMMENT_ORDERBY)
        order = wp_rest.string(params, "order", "desc", problems, choices=("asc", "desc"))
        if problems:
            return wp_rest.invalid_params(problems)
        moderator = user is not None and bool(MODERATE & set(user["roles"]))
        if context == "edit" and not moderator:
            return wp_rest.not_allowed_context("comments", user is not None)
        if status != "approve" and not moderator:
            return wp_rest.error(403 if user else 401, "rest_forbidden_param",
                                 "Query parameter not permitted: status")
        chosen = [c for c in self.comments.values() if _status_matches(c["status"], status)
                  and (kind == "all" or c["type"] == kind)]
        email = params.get("author_email")
        if isinstance(email, str) and email:
            if not is_email(email):
                return wp_rest.invalid_params({"author_email": (
                    "rest_invalid_email", "Invalid email address.")})
            if not moderator:
                return wp_rest.error(403 if user else 401, "rest_forbidden_param",
                                     "Query parameter not permitted: author_email")
            chosen = [c for c in chosen if _collated(c["author_email"]) == _collated(email)]
        after = params.get("after")
        if isinstance(after, str) and after:
            moment = after.replace("T", " ")[:19]
            chosen = [c for c in chosen if c["date_gmt"] > moment]
        key = {"id": lambda c: c["id"], "type": lambda c: (c["type"], c["id"])}.get(
            orderby, lambda c: (c["date_gmt"], c["id"]))
        chosen.sort(key=key, reverse=order == "desc")
        items, headers = wp_rest.page_of(chosen, page, per_page, f"{self.url}{API}/comments",
                                         params)
        body = [wp_rest.only_fields(self._comment_view(c, edit=context == "edit"),
                                    params.get("_fields")) for c in items]
        return Reply(200, body, headers=headers)

    def _one_comment(self, method: str, ident: int, params: dict[str, Any],
                     user: dict[str, Any] | None, headers: dict[str, str]) -> Reply:
        comment = self.comments.get(ident)
        if comment is None:
            return wp_rest.error(404, "rest_comment_invalid_id", "Invalid comment ID.")
        moderator = user is not None and bool(MODERATE & set(user["roles"]))
        if method == "GET":
            if params.get("context") == "edit" and not moderator:
                return wp_rest.not_allowed_context("this comment", user is not None)
            return Reply(200, wp_rest.only_fields(
                self._comment_view(comment, edit=params.get("context") == "edit"),
                params.get("_fields")))
        if not moderator:
            return wp_rest.error(403 if user else 401, "rest_cannot_edit" if method != "DELETE"
                                 else "rest_cannot_delete",
                                 "Sorry, you are not allowed to edit this comment."
                                 if method != "DELETE" else
                                 "Sorry, you are not allowed to delete this comment.")
        if method == "DELETE":
            if str(params.get("force", "")).lower() in ("1", "true"):
                previous = self._comment_view(comment, edit=True)
                del self.comments[ident]
                return Reply(200, {"deleted": True, "previous": previous})
            if comment["status"] == "trash":
                return wp_rest.error(410, "rest_already_trashed",
                                     "The comment has already been trashed.")
            comment["status"] = "trash"
            comment["trashed_gmt"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
            return Reply(200, self._comment_view(comment, edit=True))
        if method in ("POST", "PUT", "PATCH"):
            return self._update_comment(comment, params, headers)
        return wp_rest.error(404, "rest_no_route",
                             "No route was found matching the URL and request method.")

    def _create_comment(self, params: dict[str, Any], user: dict[str, Any] | None,
                        headers: dict[str, str]) -> Reply:
        if user is None or not MODERATE & set(user["roles"]):
            return wp_rest.error(403 if user else 401, "rest_comment_login_required",
                                 "Sorry, you must be logged in to comment.")
        ident = self.add_comment({
            "author_name": "", "author_email": "", "ip": "127.0.0.1",
            "user_agent": "", "date_gmt": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "content": "", "type": "comment", "status": "approved"})
        comment = self.comments[ident]
        status = params.get("status")
        if status in ("hold", "spam", "trash"):
            comment["status"] = status
        reply = self._update_comment(comment, params, headers)
        if reply.status != 200:
            del self.comments[ident]
            return reply
        if self._duplicate(comment):
            del self.comments[ident]
            return wp_rest.error(409, "comment_duplicate", "Duplicate comment detected; it "
                                 "looks as though you&#8217;ve already said that!")
        return Reply(201, reply.body)

    def _duplicate(self, new: dict[str, Any]) -> bool:
        """wp_allow_comment(): the same words by the same author (name or email) on the same
        post, unless the other one is in the trash, are refused (409 comment_duplicate)."""
        return any(
            other is not new and other["status"] != "trash"
            and other["content"] == new["content"]
            and (other["author_name"] == new["author_name"]
                 or (new["author_email"] and other["author_email"] == new["author_email"]))
            for other in self.comments.values())

    def _update_comment(self, comment: dict[str, Any], params: dict[str, Any],
                        headers: dict[str, str]) -> Reply:
        ip = params.get("author_ip")
        if ip is not None:
            try:
                ipaddress.ip_address(str(ip))
            except ValueError:
                return wp_rest.invalid_params({"author_ip": (
                    "rest_invalid_ip", "author_ip is not a valid IP address.")})
            comment["author_ip"] = str(ip)
        for field in ("author_name", "author_email", "author_url"):
            if field in params:
                comment[field] = str(params[field])
        if "content" in params:
            content = params["content"]
            comment["content"] = content.get("raw", "") if isinstance(content, dict) \
                else str(content)
        # WordPress stores the request's own User-Agent when none is given.
        agent = params.get("author_user_agent")
        comment["author_user_agent"] = str(agent) if agent else headers.get("user-agent", "")
        return Reply(200, self._comment_view(comment, edit=True))

    def _comment_view(self, comment: dict[str, Any], *, edit: bool) -> dict[str, Any]:
        date = comment["date_gmt"].replace(" ", "T")
        view = {
            "id": comment["id"], "post": self.post_id, "parent": 0, "author": comment["author"],
            "author_name": comment["author_name"], "author_url": comment["author_url"],
            "date": date, "date_gmt": date,
            "content": {"rendered": f"<p>{comment['content']}</p>\n"},
            "link": f"{self.url}/hello-from-the-shop/#comment-{comment['id']}",
            "status": comment["status"], "type": comment["type"],
            "author_avatar_urls": {}, "meta": [],
        }
        if edit:
            view.update({"author_email": comment["author_email"],
                         "author_ip": comment["author_ip"],
                         "author_user_agent": comment["author_user_agent"]})
            view["content"] = {**view["content"], "raw": comment["content"]}
        return view


def _paging(params: dict[str, Any]) -> Reply | tuple[int, int, str, dict[str, tuple[str, str]]]:
    """A listing's page, per_page and context, or the 400 its bad paging gets; the problems
    found so far, for the listing's own parameters to add to."""
    problems: dict[str, tuple[str, str]] = {}
    # Checked in the order the endpoints register them: the message lists them so.
    page = wp_rest.integer(params, "page", 1, problems)
    per_page = wp_rest.integer(params, "per_page", 10, problems, maximum=100)
    if problems:
        return wp_rest.invalid_params(problems)
    context = wp_rest.string(params, "context", "view", problems,
                             choices=("view", "embed", "edit"))
    return page, per_page, context, problems


def _status_matches(status: str, wanted: str) -> bool:
    if wanted == "any":
        return True
    if wanted == "all":
        return status in ("approved", "hold")
    if wanted in ("approve", "approved", "1"):
        return status == "approved"
    if wanted in ("hold", "0"):
        return status == "hold"
    return status == wanted


def _spaceless(password: str) -> str:
    return "".join(c for c in password if c.isascii() and c.isalnum())


def _body_params(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    if "json" in headers.get("content-type", ""):
        try:
            decoded = json.loads(body)
        except ValueError:
            return {}
        return decoded if isinstance(decoded, dict) else {}
    return wp_rest.php_params(parse_qs(body.decode(), keep_blank_values=True))


def _maintenance(headers: dict[str, str]) -> Reply:
    if "application/json" in headers.get("accept", ""):
        return Reply(503, {"code": "wp_die", "message": "Briefly unavailable for scheduled "
                                                        "maintenance. Check back in a minute.",
                           "data": {"status": 503}, "additional_errors": []},
                     headers={"Retry-After": "600"})
    return Reply(503, raw=HTML_PAGE, headers={"Retry-After": "600"},
                 content_type="text/html; charset=UTF-8")
