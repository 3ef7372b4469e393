"""A loopback twin of the Mailchimp Marketing API v3: audiences and their members, answered
the way Mailchimp documents them (`/3.0/lists…`, count/offset pages of at most 1000,
`fields`/`exclude_fields` dot paths, status and last-changed filters, problem JSON errors,
HTTP Basic with the API key as password, at most ten simultaneous connections).

Mailchimp does not promise whether its default member listing includes archived contacts,
so that is a knob (`default_includes_archived`, off: a connector has to ask for
`status=archived` to see them). Another knob (`listing_fault`) makes the member listings lie
about their size, for the connector's guard against paging for ever. Paths are
percent-decoded segment by segment, as the real server does. The twin knows nothing of the
estate: sandbox.seed.mailchimp builds the estate's audiences with planted retention breaches,
and a large audience quickly for benchmarks.

The twin imports no product code: a twin that shared the connector's helpers would share
their mistakes with every test that trusts it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any
from urllib.parse import unquote

from sandbox.server import Reply, Twin

DEFAULT_API_KEY = "0123456789abcdef0123456789abcdef-us6"
STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional", "archived")
SORT_FIELDS = ("timestamp_opt", "timestamp_signup", "last_changed")
MAX_COUNT = 1000
PROBLEM_TYPE = "https://mailchimp.com/developer/marketing/docs/errors/"
PROBLEM_CONTENT_TYPE = "application/problem+json; charset=utf-8"
TITLES = {400: "Invalid Resource", 401: "API Key Invalid", 403: "Forbidden",
          404: "Resource Not Found", 405: "Method Not Allowed", 429: "Too Many Requests",
          500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
          504: "Gateway Timeout"}
NOT_FOUND = "The requested resource could not be found."
API = "https://us6.api.mailchimp.com/3.0"


# Listing faults: past the real end of a member listing, "empty" pages or a "repeat" of the
# last page, while total_items claims `listing_total` members.
LISTING_FAULTS = ("empty", "repeat")


def normalise_email(value: object) -> str | None:
    """The address as the ground truth names people: trimmed and lower-cased, None when it
    is no address at all (no "@" with text either side, or blanks inside)."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    local, at, domain = text.rpartition("@")
    if not at or not local or "." not in domain.strip(".") or any(c.isspace() for c in text):
        return None
    return text


def subscriber_hash(email: str) -> str:
    return hashlib.md5(email.strip().lower().encode(), usedforsecurity=False).hexdigest()


def stamp(moment: datetime | str | None) -> str:
    """Mailchimp's timestamp form (`2026-11-01T06:00:00+00:00`); "" for none. One form for
    every stored timestamp, so that comparing the strings compares the times."""
    if moment is None or moment == "":
        return ""
    if isinstance(moment, str):
        text = moment.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0).isoformat()


@dataclass(slots=True)
class Member:
    """One contact of an audience, stored compactly; rendered to the API's shape on demand."""

    id: str
    email: str | None
    status: str
    first_name: str = ""
    last_name: str = ""
    # Mailchimp's ADDRESS merge field: an object (addr1, addr2, city, state, zip, country)
    # or an empty string.
    address: dict[str, str] | str = ""
    phone: str = ""
    birthday: str = ""
    # Merge fields the audience defines beyond the standard ones (tag → value).
    extra: dict[str, Any] | None = None
    ip_signup: str = ""
    ip_opt: str = ""
    timestamp_signup: str = ""
    timestamp_opt: str = ""
    last_changed: str = ""
    # (latitude, longitude, country code) or None.
    location: tuple[float, float, str] | None = None
    marketing_permissions: list[dict[str, Any]] | None = None
    note: str | None = None
    note_at: str = ""
    unsubscribe_reason: str = ""
    web_id: int = 0
    tags: tuple[str, ...] = ()
    # The number SMS marketing sends to: a member field of its own, not a merge field.
    sms_phone_number: str = ""


MEMBER_FIELDS = frozenset(f.name for f in fields(Member)) - {"id"}


@dataclass
class Audience:
    id: str
    name: str
    web_id: int
    date_created: str
    members: dict[str, Member] = field(default_factory=dict)
    # Marketing permissions (GDPR fields) the audience offers.
    permissions: bool = False


class MailchimpTwin(Twin):
    name = "mailchimp"
    connection_limit = 10

    def __init__(self, api_key: str = DEFAULT_API_KEY, now: datetime | None = None, *,
                 default_includes_archived: bool = False) -> None:
        super().__init__()
        self.api_key = api_key
        # Whether the member listing without `status` also shows archived contacts.
        self.default_includes_archived = default_includes_archived
        # None, or one of LISTING_FAULTS: member listings then claim `listing_total`.
        self.listing_fault: str | None = None
        self.listing_total = 10_000_000
        self._epoch = (now or datetime.now(UTC)).astimezone(UTC)
        self._started = time.monotonic()
        self._offset = timedelta(0)
        self.audiences: dict[str, Audience] = {}
        self._version = 0
        self._views: dict[tuple[Any, ...], tuple[int, list[Member]]] = {}
        self._web_ids = 1000

    # -- time ------------------------------------------------------------------------------
    def now(self) -> datetime:
        """The twin's clock: the `now` it was built with, moving with real time (and
        `advance`), so that changes made later are stamped later."""
        elapsed = timedelta(seconds=time.monotonic() - self._started)
        return (self._epoch + elapsed + self._offset).replace(microsecond=0)

    def advance(self, seconds: float) -> str:
        with self.lock:
            self._offset += timedelta(seconds=seconds)
            return stamp(self.now())

    # -- mutators (also reachable through control()) -------------------------------------
    def add_audience(self, name: str, audience_id: str | None = None, *,
                     created: datetime | str | None = None, permissions: bool = False) -> str:
        with self.lock:
            if audience_id is None:
                audience_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/{len(self.audiences)}"
                                         ).hex[:10]
            if audience_id in self.audiences:
                raise ValueError(f"audience {audience_id} exists")
            self._web_ids += 1
            self.audiences[audience_id] = Audience(
                audience_id, name, self._web_ids, stamp(created or self.now()),
                permissions=permissions)
            self._changed()
            return audience_id

    def delete_audience(self, audience_id: str) -> None:
        with self.lock:
            del self.audiences[audience_id]
            self._changed()

    def add_member(self, audience_id: str, email: str | None, *, status: str = "subscribed",
                   first_name: str = "", last_name: str = "", address: dict[str, str] | str = "",
                   phone: str = "", birthday: str = "", merge_fields: dict[str, Any] | None = None,
                   ip_signup: str = "", ip_opt: str = "",
                   timestamp_signup: datetime | str | None = None,
                   timestamp_opt: datetime | str | None = None,
                   last_changed: datetime | str | None = None,
                   location: tuple[float, float, str] | list[Any] | None = None,
                   marketing_permissions: list[dict[str, Any]] | None = None,
                   note: str | None = None, unsubscribe_reason: str = "",
                   member_id: str | None = None, tags: tuple[str, ...] | list[str] = (),
                   sms_phone_number: str = "") -> str:
        """Add a contact; returns its id (the subscriber hash of the email). A contact
        without an email (an SMS-only one) needs `member_id`."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        if member_id is None:
            if not email:
                raise ValueError("a member without an email needs a member_id")
            member_id = subscriber_hash(email)
        with self.lock:
            audience = self.audiences[audience_id]
            if member_id in audience.members:
                raise ValueError(f"member {member_id} is already in audience {audience_id}")
            now = self.now()
            self._web_ids += 1
            audience.members[member_id] = Member(
                id=member_id, email=email, status=status, first_name=first_name,
                last_name=last_name, address=address, phone=phone, birthday=birthday,
                extra=dict(merge_fields) if merge_fields else None,
                ip_signup=ip_signup, ip_opt=ip_opt,
                timestamp_signup=stamp(timestamp_signup if timestamp_signup is not None
                                       else now),
                timestamp_opt=stamp(timestamp_opt),
                last_changed=stamp(last_changed if last_changed is not None else now),
                location=tuple(location) if location else None,
                marketing_permissions=list(marketing_permissions or []) or None,
                note=note, note_at=stamp(last_changed or now) if note else "",
                unsubscribe_reason=unsubscribe_reason, web_id=self._web_ids, tags=tuple(tags),
                sms_phone_number=sms_phone_number,
            )
            self._changed()
            return member_id

    def update_member(self, audience_id: str, member: str, *,
                      at: datetime | str | None = None, **changes: Any) -> None:
        """Change a contact's stored fields (Member attribute names; `merge_fields` for the
        extra ones); `last_changed` moves to `at` (default: the twin's now)."""
        with self.lock:
            audience = self.audiences[audience_id]
            current = self._resolve(audience, member)
            if "merge_fields" in changes:
                changes["extra"] = dict(changes.pop("merge_fields") or {}) or None
            unknown = set(changes) - MEMBER_FIELDS
            if unknown:
                raise ValueError(f"unknown member fields: {', '.join(sorted(unknown))}")
            if changes.get("status", current.status) not in STATUSES:
                raise ValueError(f"status must be one of {', '.join(STATUSES)}")
            for name in ("timestamp_signup", "timestamp_opt"):
                if name in changes:
                    changes[name] = stamp(changes[name])
            if "location" in changes and changes["location"]:
                changes["location"] = tuple(changes["location"])
            changes["last_changed"] = stamp(at or changes.get("last_changed") or self.now())
            audience.members[current.id] = replace(current, **changes)
            self._changed()

    def unsubscribe(self, audience_id: str, member: str, *, at: datetime | str | None = None,
                    reason: str = "N/A (Unsubscribed by an admin)") -> None:
        self.update_member(audience_id, member, at=at, status="unsubscribed",
                           unsubscribe_reason=reason)

    def archive(self, audience_id: str, member: str, *, at: datetime | str | None = None) -> None:
        """What `DELETE /lists/{id}/members/{hash}` does: the contact stays, archived."""
        self.update_member(audience_id, member, at=at, status="archived")

    def delete_permanent(self, audience_id: str, member: str) -> None:
        with self.lock:
            audience = self.audiences[audience_id]
            del audience.members[self._resolve(audience, member).id]
            self._changed()

    def member(self, audience_id: str, member: str) -> dict[str, Any]:
        """A contact as `GET /lists/{id}/members/{hash}` shows it."""
        with self.lock:
            audience = self.audiences[audience_id]
            return self._render(audience, self._resolve(audience, member))

    def ground_truth(self, source: str | None = None) -> set[tuple[str, str, str | None]]:
        """(record type, member id, normalised email) of every contact held — every status,
        archived included — in one source (`mailchimp:<list id>`) or in all."""
        with self.lock:
            chosen = [a for a in self.audiences.values()
                      if source is None or f"mailchimp:{a.id}" == source]
            return {("member", m.id, normalise_email(m.email))
                    for a in chosen for m in a.members.values()}

    def set_listing_fault(self, kind: str | None, total: int = 10_000_000) -> None:
        """Make every member listing claim `total` members and answer past its real end with
        empty pages ("empty") or its last page again ("repeat"); None: answer truthfully."""
        if kind is not None and kind not in LISTING_FAULTS:
            raise ValueError(f"listing fault must be one of {', '.join(LISTING_FAULTS)}")
        with self.lock:
            self.listing_fault = kind
            self.listing_total = total

    def set_default_includes_archived(self, value: bool) -> None:
        with self.lock:
            self.default_includes_archived = bool(value)
            self._changed()

    def sources(self) -> list[str]:
        with self.lock:
            return [f"mailchimp:{audience_id}" for audience_id in self.audiences]

    def control(self, action: str, payload: dict[str, Any]) -> Any:
        """add_audience, delete_audience, add_member, update_member, unsubscribe, archive,
        delete_permanent, member, advance (seconds), listing_fault (kind, total),
        default_includes_archived (value), audiences, ground_truth (optional source).
        Payload keys are the methods' arguments."""
        actions = {
            "add_audience": self.add_audience, "delete_audience": self.delete_audience,
            "add_member": self.add_member, "update_member": self.update_member,
            "unsubscribe": self.unsubscribe, "archive": self.archive,
            "delete_permanent": self.delete_permanent, "member": self.member,
            "advance": self.advance, "listing_fault": self.set_listing_fault,
            "default_includes_archived": self.set_default_includes_archived,
            "audiences": lambda: [{"id": a.id, "name": a.name}
                                  for a in self.audiences.values()],
            "ground_truth": lambda source=None: sorted(
                [list(row) for row in self.ground_truth(source)],
                key=lambda row: (row[1], row[2] or "")),
        }
        if action not in actions:
            raise KeyError(action)
        try:
            return actions[action](**payload)
        except (LookupError, TypeError, ValueError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    def _resolve(self, audience: Audience, member: str) -> Member:
        # Like the API: a member is named by its subscriber hash or by its email.
        found = audience.members.get(member) or audience.members.get(subscriber_hash(member))
        if found is None:
            raise KeyError(f"no member {member} in audience {audience.id}")
        return found

    def _changed(self) -> None:
        self._version += 1
        self._views.clear()

    # -- HTTP ------------------------------------------------------------------------------
    def empty_reply(self, path: str) -> Reply:
        key = "members" if path.rstrip("/").endswith("/members") else "lists"
        return Reply(200, {key: [], "total_items": 0})

    def error_reply(self, status: int, message: str,
                    errors: list[dict[str, str]] | None = None) -> Reply:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE, "title": TITLES.get(status, "Error"), "status": status,
            "detail": message, "instance": str(uuid.uuid4()),
        }
        if errors:
            body["errors"] = errors
        return Reply(status, body, content_type=PROBLEM_CONTENT_TYPE)

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str], body: bytes) -> Reply:
        if not self._authorised(headers.get("authorization", "")):
            return self.error_reply(
                401, "Your API key may be invalid, or you've attempted to access the wrong "
                     "datacenter.")
        if path != "/3.0" and not path.startswith("/3.0/"):
            return self.error_reply(404, NOT_FOUND)
        # Split first, then decode each segment: an encoded "/" stays inside its segment.
        parts = [unquote(part) for part in path[len("/3.0"):].split("/") if part]
        params = {key: values[-1] for key, values in query.items()}
        with self.lock:
            reply = self._route(method, parts, params)
        if reply.status == 200 and isinstance(reply.body, dict):
            reply.body = _project(reply.body, params.get("fields"), params.get("exclude_fields"))
        return reply

    def _authorised(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return False
        _, colon, password = decoded.partition(":")
        return bool(colon) and hmac.compare_digest(password.encode(), self.api_key.encode())

    def _route(self, method: str, parts: list[str], params: dict[str, str]) -> Reply:
        if parts in ([], ["ping"]):
            return self._only(method, "GET") or Reply(200, {"health_status":
                                                            "Everything's Chimpy!"})
        if parts == ["search-members"]:
            return self._only(method, "GET") or self._search(params)
        if not parts or parts[0] != "lists":
            return self.error_reply(404, NOT_FOUND)
        if len(parts) == 1:
            return self._only(method, "GET") or self._lists(params)
        audience = self.audiences.get(parts[1])
        if audience is None:
            return self.error_reply(404, NOT_FOUND)
        if len(parts) == 2:
            return self._only(method, "GET") or Reply(200, self._render_list(audience))
        if parts[2] != "members":
            return self.error_reply(404, NOT_FOUND)
        if len(parts) == 3:
            return self._only(method, "GET") or self._members(audience, params)
        member = audience.members.get(parts[3]) or audience.members.get(
            subscriber_hash(parts[3]))
        if member is None:
            return self.error_reply(404, NOT_FOUND)
        if len(parts) == 4:
            if method == "DELETE":
                self.archive(audience.id, member.id)
                return Reply(204)
            return self._only(method, "GET") or Reply(200, self._render(audience, member,
                                                                        links=True))
        if parts[4:] == ["actions", "delete-permanent"]:
            if method != "POST":
                return self.error_reply(405, "The requested method and resource are not "
                                             "compatible. See the Allow header for this "
                                             "resource's available methods.")
            self.delete_permanent(audience.id, member.id)
            return Reply(204)
        return self.error_reply(404, NOT_FOUND)

    def _only(self, method: str, allowed: str) -> Reply | None:
        if method == allowed:
            return None
        reply = self.error_reply(405, "The requested method and resource are not compatible. "
                                      "See the Allow header for this resource's available "
                                      "methods.")
        reply.headers["Allow"] = allowed
        return reply

    def _paging(self, params: dict[str, str]) -> tuple[int, int] | Reply:
        values = {}
        for name, default in (("count", 10), ("offset", 0)):
            text = params.get(name, str(default)).strip()
            if not text.isdigit():
                return self.error_reply(400, "The resource submitted could not be validated. "
                                             "For field-specific details, see the 'errors' "
                                             "array.",
                                        [{"field": name, "message": "Must be an integer."}])
            values[name] = int(text)
        if values["count"] > MAX_COUNT:
            return self.error_reply(400, "The resource submitted could not be validated. For "
                                         "field-specific details, see the 'errors' array.",
                                    [{"field": "count",
                                      "message": f"Must be {MAX_COUNT} or less."}])
        return values["count"], values["offset"]

    def _lists(self, params: dict[str, str]) -> Reply:
        paging = self._paging(params)
        if isinstance(paging, Reply):
            return paging
        count, offset = paging
        chosen = list(self.audiences.values())
        return Reply(200, {
            "lists": [self._render_list(a) for a in chosen[offset:offset + count]],
            "total_items": len(chosen),
            "constraints": {"may_create": True, "max_instances": -1,
                            "current_total_instances": len(chosen)},
            "_links": [{"rel": "self", "href": f"{API}/lists", "method": "GET"}],
        })

    def _members(self, audience: Audience, params: dict[str, str]) -> Reply:
        paging = self._paging(params)
        if isinstance(paging, Reply):
            return paging
        count, offset = paging
        status = params.get("status") or None
        if status is not None and status not in STATUSES:
            return self._invalid("status", f"Must be one of {', '.join(STATUSES)}.")
        bounds = []
        for name in ("since_last_changed", "before_last_changed"):
            value = params.get(name) or None
            try:
                bounds.append(stamp(value) if value else None)
            except ValueError:
                return self._invalid(name, "Must be an ISO 8601 date and time.")
        sort_field = params.get("sort_field") or None
        if sort_field is not None and sort_field not in SORT_FIELDS:
            return self._invalid("sort_field", f"Must be one of {', '.join(SORT_FIELDS)}.")
        sort_dir = (params.get("sort_dir") or "ASC").upper()
        if sort_dir not in ("ASC", "DESC"):
            return self._invalid("sort_dir", "Must be ASC or DESC.")
        view = self._view(audience, status, bounds[0], bounds[1], sort_field, sort_dir)
        page = view[offset:offset + count]
        total = len(view)
        if self.listing_fault is not None:
            total = self.listing_total
            if not page and self.listing_fault == "repeat" and view:
                page = view[-count:]
        links = not params.get("fields")
        return Reply(200, {
            "members": [self._render(audience, m, links=links) for m in page],
            "list_id": audience.id,
            "total_items": total,
            "_links": [{"rel": "self", "href": f"{API}/lists/{audience.id}/members",
                        "method": "GET"}],
        })

    def _invalid(self, name: str, message: str) -> Reply:
        return self.error_reply(400, "The resource submitted could not be validated. For "
                                     "field-specific details, see the 'errors' array.",
                                [{"field": name, "message": message}])

    def _view(self, audience: Audience, status: str | None, since: str | None,
              before: str | None, sort_field: str | None, sort_dir: str) -> list[Member]:
        # Pages of one listing reuse its filtered, sorted members until the next change.
        archived = self.default_includes_archived
        key = (audience.id, status, since, before, sort_field, sort_dir, archived)
        cached = self._views.get(key)
        if cached is not None and cached[0] == self._version:
            return cached[1]
        chosen = [m for m in audience.members.values()
                  if (m.status == status if status else archived or m.status != "archived")
                  and (since is None or m.last_changed > since)
                  and (before is None or m.last_changed < before)]
        if sort_field:
            chosen.sort(key=attrgetter(sort_field), reverse=sort_dir == "DESC")
        if len(self._views) > 32:
            self._views.clear()
        self._views[key] = (self._version, chosen)
        return chosen

    def _search(self, params: dict[str, str]) -> Reply:
        query = (params.get("query") or "").strip().lower()
        if not query:
            return self._invalid("query", "This field is required.")
        only = params.get("list_id")
        exact: list[dict[str, Any]] = []
        full: list[dict[str, Any]] = []
        for audience in self.audiences.values():
            if only and audience.id != only:
                continue
            for m in audience.members.values():
                email = (m.email or "").lower()
                if email == query:
                    exact.append(self._render(audience, m))
                elif query in email or query in f"{m.first_name} {m.last_name}".lower():
                    full.append(self._render(audience, m))
        return Reply(200, {
            "exact_matches": {"members": exact[:10], "total_items": len(exact)},
            "full_search": {"members": full[:10], "total_items": len(full)},
            "_links": [{"rel": "self", "href": f"{API}/search-members", "method": "GET"}],
        })

    def _render_list(self, audience: Audience) -> dict[str, Any]:
        counts = {status: 0 for status in STATUSES}
        for m in audience.members.values():
            counts[m.status] += 1
        return {
            "id": audience.id, "web_id": audience.web_id, "name": audience.name,
            "contact": {"company": "Example Shops Ltd", "address1": "1 Market Street",
                        "address2": "", "city": "Leeds", "state": "", "zip": "LS1 4AP",
                        "country": "GB", "phone": ""},
            "permission_reminder": "You signed up on one of our shops.",
            "use_archive_bar": True,
            "campaign_defaults": {"from_name": "Example Shops", "from_email":
                                  "news@example.com", "subject": "", "language": "en"},
            "notify_on_subscribe": "", "notify_on_unsubscribe": "",
            "date_created": audience.date_created, "list_rating": 3,
            "email_type_option": False,
            "subscribe_url_short": f"http://eepurl.com/{audience.id[:6]}",
            "subscribe_url_long": f"https://example.us6.list-manage.com/subscribe?id={audience.id}",
            "beamer_address": f"us6-{audience.id}@inbound.mailchimp.com",
            "visibility": "prv", "double_optin": True, "has_welcome": False,
            "marketing_permissions": audience.permissions, "modules": [],
            "stats": {
                "member_count": counts["subscribed"],
                "total_contacts": len(audience.members),
                "unsubscribe_count": counts["unsubscribed"],
                "cleaned_count": counts["cleaned"],
                "member_count_since_send": counts["subscribed"],
                "unsubscribe_count_since_send": 0, "cleaned_count_since_send": 0,
                "campaign_count": 0, "campaign_last_sent": "", "merge_field_count": 5,
                "avg_sub_rate": 0, "avg_unsub_rate": 0, "target_sub_rate": 0,
                "open_rate": 0, "click_rate": 0, "last_sub_date": "", "last_unsub_date": "",
            },
            "_links": [{"rel": "self", "href": f"{API}/lists/{audience.id}", "method": "GET"}],
        }

    def _render(self, audience: Audience, m: Member, *, links: bool = True) -> dict[str, Any]:
        merge: dict[str, Any] = {
            "FNAME": m.first_name, "LNAME": m.last_name,
            "ADDRESS": dict(m.address) if isinstance(m.address, dict) else m.address,
            "PHONE": m.phone, "BIRTHDAY": m.birthday,
        }
        merge.update(m.extra or {})
        latitude, longitude, country = m.location or (0, 0, "")
        body: dict[str, Any] = {
            "id": m.id, "email_address": m.email or "",
            "unique_email_id": m.id[:10],
            "contact_id": hashlib.md5(m.id.encode(), usedforsecurity=False).hexdigest(),
            "full_name": f"{m.first_name} {m.last_name}".strip(),
            "web_id": m.web_id, "email_type": "html", "status": m.status,
            "consents_to_one_to_one_messaging": True,
            "merge_fields": merge, "interests": {},
            "stats": {"avg_open_rate": 0, "avg_click_rate": 0},
            "ip_signup": m.ip_signup, "timestamp_signup": m.timestamp_signup,
            "ip_opt": m.ip_opt, "timestamp_opt": m.timestamp_opt,
            "member_rating": 2, "last_changed": m.last_changed, "language": "",
            "vip": False, "email_client": "",
            "location": {"latitude": latitude, "longitude": longitude, "gmtoff": 0,
                         "dstoff": 0, "country_code": country, "timezone": "",
                         "region": ""},
            "marketing_permissions": [dict(p) for p in m.marketing_permissions or ()],
            "sms_phone_number": m.sms_phone_number, "sms_subscription_status": "",
            "sms_subscription_last_updated": "",
            "source": "API - Generic", "tags_count": len(m.tags),
            "tags": [{"id": index + 1, "name": tag} for index, tag in enumerate(m.tags)],
            "list_id": audience.id,
        }
        if m.status == "unsubscribed":
            body["unsubscribe_reason"] = m.unsubscribe_reason
        if m.note:
            body["last_note"] = {"note_id": 1, "created_at": m.note_at,
                                 "created_by": "Shop owner", "note": m.note}
        if links:
            href = f"{API}/lists/{audience.id}/members/{m.id}"
            body["_links"] = [{"rel": "self", "href": href, "method": "GET"},
                              {"rel": "delete", "href": href, "method": "DELETE"}]
        return body


def _paths(text: str | None) -> dict[str, Any] | None:
    """`members.id,total_items` → {"members": {"id": {"*": True}}, "total_items": {...}}."""
    if not text:
        return None
    tree: dict[str, Any] = {}
    for path in (p.strip() for p in text.split(",")):
        if not path:
            continue
        node = tree
        for part in path.split("."):
            if "*" in node:
                break
            node = node.setdefault(part, {})
        else:
            node.clear()
            node["*"] = True
    return tree


def _include(value: Any, tree: dict[str, Any]) -> Any:
    if "*" in tree:
        return value
    if isinstance(value, list):
        return [_include(item, tree) for item in value]
    if isinstance(value, dict):
        return {key: _include(item, tree[key]) for key, item in value.items() if key in tree}
    return value


def _exclude(value: Any, tree: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_exclude(item, tree) for item in value]
    if isinstance(value, dict):
        kept = {}
        for key, item in value.items():
            if key not in tree:
                kept[key] = item
            elif "*" not in tree[key]:
                kept[key] = _exclude(item, tree[key])
        return kept
    return value


def _project(body: dict[str, Any], fields_text: str | None,
             exclude_text: str | None) -> dict[str, Any]:
    include = _paths(fields_text)
    if include is not None:
        body = _include(body, include)
    exclude = _paths(exclude_text)
    if exclude is not None:
        body = _exclude(body, exclude)
    return body
