"""WordPress core (wp/v2 REST API): the personal data WordPress itself keeps, which no shop
connector reads — every comment's author name, email, IP address and user agent (spam and
trash too: WordPress keeps them until its scheduled delete runs), and the accounts of a site
without a shop. A site is one ledger source, `wp:<name>`.

What the REST API answers, held against a real WordPress 6.1 (tests/wordpress): comments
list approved ones only unless `status=any` (`all` leaves out spam and trash) and type
`comment` only unless `type=all` (pingbacks, product reviews); `author_email` and `search`
compare without case or accents, so a lookup keeps only exact matches; comments have no
modified date to filter on, so every sync lists them whole (a site holds thousands, not
millions); a refused application password looks like none (401).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from connectors.base import (
    NO_CONTENT,
    Batch,
    Category,
    Key,
    KeyBatch,
    Record,
    Skip,
    count_text,
    email_as_held,
    has_value,
    normalise_email,
    parse_time,
    scan_text,
)
from connectors.http import FatalAPIError, HttpClient, RetryPolicy
from vocabulary import COMMENT, USER, WORDPRESS

KIND = WORDPRESS
PAGE_SIZE = 100
API = "wp-json/wp/v2"
# What an anonymised comment carries instead (WordPress's own eraser writes the first).
DELETED_TEXT = "[deleted]"
NO_IP = "0.0.0.0"  # noqa: S104 - a placeholder written upstream, never bound
_PLACEHOLDERS = frozenset({DELETED_TEXT, "deleted@site.invalid", "https://site.invalid",
                           NO_IP, "::"})
# Roles whose accounts are never deleted by an erasure or a fix: they run the site.
PROTECTED_ROLES = frozenset({"administrator", "shop_manager", "editor"})
COMMENT_FIELDS = ("id,author,author_name,author_email,author_url,author_ip,author_user_agent,"
                  "date_gmt,content,status,type")
USER_FIELDS = "id,email,name,first_name,last_name,roles,registered_date"


@dataclass(frozen=True)
class Settings:
    name: str
    url: str
    user: str
    app_password: str = field(repr=False)
    # False when a WooCommerce shop is configured on this site: its customer listing
    # (role=all) already reads the same accounts, and one account is never counted twice.
    include_users: bool = True
    # What an erasure does with a published or held comment, and whether it deletes accounts.
    erase_comments: str = "anonymise"
    erase_accounts: bool = False
    timeout: float = 30.0
    retry_attempts: int = 5
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.user.strip() or not self.app_password.strip():
            raise ValueError("a WordPress site needs a user and an application password "
                             "(Users → Profile → Application Passwords)")


def connect(settings: Settings) -> WordPressConnector:
    return WordPressConnector(settings)


def describe_error(response: requests.Response) -> str | None:
    """WordPress's own words from a WP_Error body."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return f"{body.get('code', 'error')}: {body['message']}"
    return None


def _held(value: object) -> bool:
    if isinstance(value, str):
        text = value.strip()
        return bool(text.strip(NO_CONTENT)) and text.lower() not in _PLACEHOLDERS
    return has_value(value)


def classify_comment(data: Mapping[str, Any], *, own_agent: str = "") -> Record | Skip:
    """A comment → Record: its author's email (the subject), name, IP address, user agent,
    URL and words as categories; its status (approved, hold, spam, trash) and date."""
    ident = data.get("id") if isinstance(data, Mapping) else None
    if not isinstance(ident, int) or isinstance(ident, bool) or ident <= 0:
        return Skip(COMMENT, None, "comment entry without a valid id")
    categories: set[Category] = set()
    evidence: list[str] = []
    raw_email = data.get("author_email")
    email = normalise_email(raw_email) if _held(raw_email) else None
    held_as = email_as_held(raw_email, email)
    if email:
        categories.add(Category.EMAIL)
    if _held(data.get("author_name")):
        categories.add(Category.NAME)
    if _held(data.get("author_ip")):
        categories.add(Category.IP_ADDRESS)
    agent = data.get("author_user_agent")
    # An update through the API stores the updater's own User-Agent when given none.
    if _held(agent) and agent != own_agent:
        categories.add(Category.USER_AGENT)
    content = data.get("content")
    text = content.get("raw") or content.get("rendered") if isinstance(content, Mapping) \
        else content
    if _held(text):
        categories.add(Category.FREE_TEXT)
        scan_text("comment content", str(text), categories, evidence)
    kind = data.get("type")
    if isinstance(kind, str) and kind not in ("", COMMENT):
        evidence.append(f"comment type {kind[:20]}")
    author = data.get("author")
    return Record(
        record_type=COMMENT, external_id=str(ident), email=email,
        categories=frozenset(categories),
        status=str(data.get("status"))[:20] if data.get("status") else None,
        created_at=parse_time(data.get("date_gmt")),
        parent_id=str(author) if isinstance(author, int) and author > 0 else None,
        anonymised=data.get("author_name") == DELETED_TEXT,
        evidence=tuple(evidence), email_as_held=held_as,
    )


def classify_user(data: Mapping[str, Any]) -> Record | Skip:
    """An account → Record: an account always, its email, a name when one was given; its
    first role as the status; registered as its creation."""
    ident = data.get("id") if isinstance(data, Mapping) else None
    if not isinstance(ident, int) or isinstance(ident, bool) or ident <= 0:
        return Skip(USER, None, "user entry without a valid id")
    categories = {Category.ACCOUNT}
    email = normalise_email(data.get("email"))
    if email:
        categories.add(Category.EMAIL)
    if _held(data.get("first_name")) or _held(data.get("last_name")):
        categories.add(Category.NAME)
    roles = data.get("roles")
    role = roles[0] if isinstance(roles, list) and roles and isinstance(roles[0], str) else None
    return Record(record_type=USER, external_id=str(ident), email=email,
                  categories=frozenset(categories), status=role[:40] if role else None,
                  created_at=parse_time(data.get("registered_date")),
                  email_as_held=email_as_held(data.get("email"), email))


class ListingStalled(FatalAPIError):
    """A listing that stopped making progress: no new ids before the total was reached."""


class WordPressConnector:
    kind = KIND

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.source = f"wp:{settings.name}"
        self.client = HttpClient(
            self.source, f"{settings.url.rstrip('/')}/{API}",
            auth=(settings.user, settings.app_password), timeout=settings.timeout,
            retry=RetryPolicy(attempts=settings.retry_attempts),
            secrets=(settings.app_password, settings.app_password.replace(" ", "")),
            describe_error=describe_error, sleep=settings.sleep)
        self.own_agent = str(self.client.session.headers.get("User-Agent", ""))
        self.record_types = (COMMENT, USER) if settings.include_users else (COMMENT,)

    def __repr__(self) -> str:
        return f"WordPressConnector({self.source!r})"

    def close(self) -> None:
        self.client.close()

    def probe(self) -> str:
        """Everything a sync and an erasure need: comments of every status in edit context
        (the right to moderate comments) and, where accounts are read, users in edit context
        (the right to list users)."""
        _, comments = self.client.get_json("comments", {"context": "edit", "status": "any",
                                                        "type": "all", "per_page": 1,
                                                        "_fields": "id"})
        said = [count_text(comments.headers.get("X-WP-Total"), "comments")]
        if self.settings.include_users:
            _, users = self.client.get_json("users", {"context": "edit", "per_page": 1,
                                                      "_fields": "id"})
            said.append(count_text(users.headers.get("X-WP-Total"), "accounts"))
        return ", ".join(said)

    # -- listings ---------------------------------------------------------------------------
    def _pages(self, path: str, params: Mapping[str, Any]) -> Iterator[list[dict[str, Any]]]:
        """Every page of a listing in id order. Complete when the ids seen reach the
        listing's own X-WP-Total; a page that brings no new id before that ends it as a
        stalled listing (an upstream that repeats or loops would otherwise page for ever)."""
        seen: set[int] = set()
        page, total = 1, None
        while True:
            body, response = self.client.get_json(path, {**params, "page": page,
                                                         "per_page": PAGE_SIZE,
                                                         "orderby": "id", "order": "asc"})
            if not isinstance(body, list):
                raise FatalAPIError(self.source, f"{path} did not answer with a list")
            total = _int(response.headers.get("X-WP-Total"), total)
            fresh = [item for item in body if isinstance(item, dict)
                     and isinstance(item.get("id"), int) and item["id"] not in seen]
            seen.update(item["id"] for item in fresh)
            if fresh:
                yield fresh
            if total is not None and len(seen) >= total:
                return
            if not fresh:
                if total is None and not body:
                    return
                raise ListingStalled(
                    self.source, f"the {path} listing stopped making progress at page {page}: "
                    f"{len(seen):,} of {total if total is not None else '?'} read, then a page "
                    "with nothing new; nothing is marked gone on its word")
            page += 1

    def _comments(self, fields: str) -> Iterator[list[dict[str, Any]]]:
        return self._pages("comments", {"context": "edit", "status": "any", "type": "all",
                                        "_fields": fields})

    def _users(self, fields: str) -> Iterator[list[dict[str, Any]]]:
        return self._pages("users", {"context": "edit", "_fields": fields})

    def pull(self, cursor: str | None) -> Iterator[Batch]:
        """Every comment (and account) each time: comments have no modified date to ask
        for changes by, and a status change (approved → spam) changes nothing else."""
        listings: list[tuple[str, Callable[[], Iterator[list[dict[str, Any]]]]]] = [
            (COMMENT, lambda: self._comments(COMMENT_FIELDS))]
        if self.settings.include_users:
            listings.append((USER, lambda: self._users(USER_FIELDS)))
        for record_type, pages in listings:
            for items in pages():
                records, skipped = _split(
                    classify_comment(item, own_agent=self.own_agent) if record_type == COMMENT
                    else classify_user(item) for item in items)
                yield Batch(records=records, skipped=skipped)
        yield Batch(records=[], complete=True, listed_types=frozenset(self.record_types))

    def list_keys(self) -> Iterator[KeyBatch]:
        for items in self._comments("id"):
            yield KeyBatch([Key(COMMENT, str(item["id"])) for item in items])
        if self.settings.include_users:
            for items in self._users("id"):
                yield KeyBatch([Key(USER, str(item["id"])) for item in items])
        yield KeyBatch([], complete=True, listed_types=frozenset(self.record_types))

    def lookup(self, email: str, forms: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The comments and account of one person as the site holds them, asked by every
        form (`email` the normalised key, `forms` the raw ones). The site compares without
        case or accents, so one question per form it tells apart, and only records whose
        own email normalises to the person's are kept: `chloe@` never gets `chloé@`'s."""
        wanted = normalise_email(email)
        if wanted is None:
            return []
        asked = {form.casefold(): form for form in (email, *forms) if form}
        found: dict[tuple[str, int], dict[str, Any]] = {}
        for form in asked.values():
            for items in self._comments_of(form):
                found.update({(COMMENT, item["id"]): _found(COMMENT, item)
                              for item in items
                              if normalise_email(item.get("author_email")) == wanted})
            if self.settings.include_users:
                for items in self._pages("users", {"context": "edit", "search": form}):
                    found.update({(USER, item["id"]): _found(USER, item)
                                  for item in items
                                  if normalise_email(item.get("email")) == wanted})
        return list(found.values())

    def _comments_of(self, email: str) -> Iterator[list[dict[str, Any]]]:
        """Comments filtered by the site; an address WordPress's is_email() refuses (it
        allows no accents, though a comment may hold one) means reading them all."""
        everything = {"context": "edit", "status": "any", "type": "all"}
        try:
            yield from self._pages("comments", {**everything, "author_email": email})
        except FatalAPIError as exc:
            if exc.status != 400:
                raise
            yield from self._pages("comments", everything)


def _found(record_type: str, item: dict[str, Any]) -> dict[str, Any]:
    """One lookup answer, as every connector gives it."""
    return {"record_type": record_type, "external_id": str(item["id"]), "data": item}


def _int(value: str | None, default: int | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else default


def _split(results: Iterator[Record | Skip] | Any) -> tuple[list[Record], list[Skip]]:
    records: list[Record] = []
    skipped: list[Skip] = []
    for result in results:
        (records if isinstance(result, Record) else skipped).append(result)
    return records, skipped


# -- erasure ---------------------------------------------------------------------------------
def fetch(connector: WordPressConnector, record_type: str,
          external_id: str) -> dict[str, Any] | None:
    """One comment or account as the site holds it now, or None when it no longer exists."""
    body, response = connector.client.get_json(_item_path(record_type, external_id),
                                                {"context": "edit"}, ok=(404,))
    return body if response.status_code != 404 and isinstance(body, dict) else None


def _item_path(record_type: str, external_id: str) -> str:
    collection = {COMMENT: "comments", USER: "users"}.get(record_type)
    if collection is None:
        raise ValueError(f"WordPress holds no record type {record_type!r}")
    if not str(external_id).isdigit():
        raise ValueError(f"WordPress {record_type} id {external_id!r} is not a number")
    return f"{collection}/{int(external_id)}"


# What WordPress's own comment eraser (wp_comments_personal_data_eraser) leaves, as far as
# the REST API lets a client write it: the IP must be a valid address, and an empty user
# agent would be replaced by the request's own.
ANONYMISED_COMMENT = {"author_name": DELETED_TEXT, "author_email": "deleted@site.invalid",
                      "author_url": "https://site.invalid", "author_ip": NO_IP,
                      "author_user_agent": DELETED_TEXT}


def erase(connector: WordPressConnector, action: str, record_type: str, external_id: str,
          data: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any] | None]:
    """One erasure step: `anonymise` a comment (its author's details replaced, its words
    kept), `delete` a comment (for good, not to the trash) or an account (never one that
    runs the site: administrators, shop managers, editors). Returns ("deleted" |
    "anonymised" | "already gone", the record as the site holds it afterwards)."""
    path = _item_path(record_type, external_id)
    refused = (401, 403)
    if record_type == USER:
        if action != "delete":
            raise ValueError(f"{connector.source}: an account can only be deleted")
        current = data if data is not None else fetch(connector, USER, external_id)
        if current is None:
            return "already gone", None
        roles = set(current.get("roles") or ())
        if roles & PROTECTED_ROLES:
            raise FatalAPIError(connector.source, f"account {external_id} has the role "
                                f"{', '.join(sorted(roles & PROTECTED_ROLES))}: it runs the "
                                "site and is never deleted by privacy-ledger; remove it by hand "
                                "if it must go (Users → All Users)")
        me, _ = connector.client.get_json("users/me", {"_fields": "id"})
        response = connector.client.request(
            "DELETE", path, {"force": "true", "reassign": str(me["id"])},
            ok=(*refused, 404, 410))
    elif action == "delete":
        response = connector.client.request("DELETE", path, {"force": "true"},
                                            ok=(*refused, 404, 410))
    elif action == "anonymise":
        response = connector.client.request("POST", path, json_body=ANONYMISED_COMMENT,
                                            ok=(*refused, 404, 410))
    else:
        raise ValueError(f"{connector.source}: cannot {action} a {record_type}")
    if response.status_code in refused:
        said = describe_error(response)
        said = connector.client.upstream_words(said) if said else f"HTTP {response.status_code}"
        raise FatalAPIError(connector.source, f"the site refused to {action} {record_type} "
                            f"{external_id} ({said}): the configured user needs to be an "
                            "administrator (or an editor, for comments)",
                            status=response.status_code)
    if response.status_code in (404, 410):
        return "already gone", None
    try:
        after = response.json()
    except ValueError:
        after = None
    if not isinstance(after, dict) or (action == "delete" and after.get("deleted") is not True):
        raise FatalAPIError(connector.source, f"the site answered the request to {action} "
                            f"{record_type} {external_id} without confirming it: check it in "
                            "WordPress by hand")
    return ("deleted", None) if action == "delete" else ("anonymised", after)
