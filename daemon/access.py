"""Subject access requests (`privacy-ledger export EMAIL`), and what erasure requests share
with them: connecting to every configured system once, looking one person up live in each,
and naming the person in the audit trail without their email.

Where to look: every configured system is asked (WooCommerce customers by email and orders
by billing email or account, the trash included; Stripe customers by email, their charges
and charges carrying the email; Mailchimp members of every audience by subscriber hash), by
every form of the email (lookup_forms: as typed, composed, decomposed, normalised, and the
raw forms the ledger saw upstream), keeping only records whose email normalises to the
person's,
and the ledger adds what it knows: a live holding of the person that a system's search did
not return is fetched by its id, and a source the ledger holds the person in that is not
configured any more makes the answer incomplete. The systems say what is there: the copy is
their live data, never the ledger's.

What is written: one JSON file (per system, per record, the fields as the system holds them)
and one HTML page a person can read (what is held, where, since when, why, for how long),
both mode 0600. Nothing of the content reaches the ledger or the logs; audit_log gets one
`export` entry: the request id, the person's reference, which systems answered, how many
records each, and whether the copy is complete. A copy is complete only when every system
answered.

Naming the person in audit_log: the trail must prove afterwards what was done for whom, yet
hold no personal value, and it outlives the person's subject row (an erasure removes it).
So entries carry `person`: "p-" + HMAC-SHA256(normalised email) under a random 256-bit key
kept in the ledger (table ledger_keys), truncated to 128 bits. Given the email, the owner
can find every entry about that person again (`privacy-ledger verify-log --person EMAIL`);
without the email, the reference says nothing. Whoever holds the ledger holds the key and
could test guessed addresses: a pseudonym, not an anonymisation, and no worse than the
subjects table beside it.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import structlog
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import select

from connectors.base import Record, normalise_email
from connectors.http import APIError
from connectors.registry import SYSTEMS, system_for
from connectors.system import RecordType
from daemon import trail
from daemon.ledger import (
    AuditLogEntry,
    EmailForm,
    Holding,
    Ledger,
    Source,
    Subject,
)
from daemon.requests import keyed_ref, person_key
from vocabulary import Category, source_kind, utcnow

if TYPE_CHECKING:
    from daemon.config import RetentionSettings, Settings

log = structlog.get_logger("daemon.access")

TEMPLATES = Path(__file__).with_name("templates")


class RequestError(Exception):
    """A request that cannot be carried out as asked (not an email, nowhere to write); the
    message names the value and what to do."""


_EMAIL_LIKE = re.compile(r"[^\s@'\"()<>=,/]+@[^\s@'\"()<>=,/]+")
# Mailchimp member ids (and paths) are the MD5 of the email: a pseudonym of the person.
_MEMBER_HASH = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")


def safe_text(text: str, limit: int = 300) -> str:
    """An upstream error fit for the trail and the logs: one line, bounded, anything like an
    email address or a Mailchimp subscriber hash masked."""
    line = _MEMBER_HASH.sub("<member>", _EMAIL_LIKE.sub("<email>", " ".join(text.split())))
    return line[:limit]


def require_email(value: str) -> str:
    """The normalised email, or RequestError naming the value."""
    email = normalise_email(value)
    if email is None:
        raise RequestError(f"{value!r} is not an email address (write it as name@example.com)")
    return email


# -- naming the person in the trail ----------------------------------------------------------


def person_ref(ledger: Ledger, email: str) -> str:
    """The person's reference in audit_log: a keyed hash of the normalised email."""
    with ledger.session() as session:
        key = person_key(session)
    return keyed_ref(key, require_email(email))


def entries_about(ledger: Ledger, email: str) -> list[AuditLogEntry]:
    """Every audit_log entry about this person (exports and erasures), oldest first."""
    # As trail.append serialises details: compact separators.
    needle = json.dumps({"person": person_ref(ledger, email)}, separators=(",", ":"))[1:-1]
    with ledger.sessions() as session:
        return list(session.scalars(select(AuditLogEntry)
                                    .where(AuditLogEntry.detail.contains(needle))
                                    .order_by(AuditLogEntry.id)))


def latest_hash(ledger: Ledger) -> str | None:
    """The hash at the head of the chain: noted somewhere else, it shows later whether
    entries were removed from the end (which the chain alone cannot show)."""
    with ledger.sessions() as session:
        return session.scalar(select(AuditLogEntry.hash).order_by(AuditLogEntry.id.desc())
                              .limit(1))


# -- the systems -----------------------------------------------------------------------------


@dataclass
class Systems:
    """The configured systems, connected once for one request. `connectors` maps a ledger
    source name to its connector; `failures` names what could not be reached and why (a
    whole Mailchimp account appears as "mailchimp")."""

    connectors: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    # Prefix of sources → the unit that opens them (a Mailchimp account's audiences).
    families: dict[str, str] = field(default_factory=dict)
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()

    def __enter__(self) -> Systems:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def covers(self, source: str) -> bool:
        """True when the source is configured (connected, or its unit failed to connect)."""
        return source in self.connectors or source in self.failures or any(
            source.startswith(family) and unit in self.failures
            for family, unit in self.families.items())


def open_systems(settings: Settings, *, sleep: Callable[[float], None] | None = None
                 ) -> Systems:
    """Connect to every configured system. A system that cannot be reached (a Mailchimp
    account whose audiences cannot be listed, settings a connector refuses) is recorded in
    `failures`, never raised: the request goes on with the others and says what is missing.
    Raises RequestError when no system is configured at all. `sleep` replaces the
    connectors' wait between retries (tests)."""
    systems = Systems()
    tuned: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
    units = settings.units()
    for system, _, unit in units:
        try:
            opening = unit.open(**tuned)
        except ValueError as exc:
            systems.failures[unit.name] = str(exc)
            continue
        except APIError as exc:
            systems.failures[unit.name] = exc.message
            continue
        systems._closers.append(opening.close)
        if unit.family:
            systems.families[unit.family] = unit.name
        for source, reason in opening.unreadable:
            systems.failures[source] = reason
        for connector in opening.connectors:
            systems.connectors[connector.source] = connector
            systems.labels[connector.source] = system.label(connector)
    if not units:
        names = ", ".join(f"[[{s.section}]]" if s.many else f"[{s.section}]" for s in SYSTEMS)
        raise RequestError(f"no system is configured: add {names} sections to the config")
    return systems


# -- looking a person up ---------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """One live record about the person, as the system holds it."""

    source: str
    kind: str
    record_type: str
    external_id: str
    data: dict[str, Any] = field(repr=False, compare=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.source, self.record_type, self.external_id)


@dataclass(frozen=True)
class SystemAnswer:
    """What one system said: its records about the person, or why it did not answer.
    `gone` and `moved_on` are what it said of the ledger's stale pointers: holdings of the
    person that no longer exist, and records that exist but no longer concern the person
    (anonymised, another email). An erasure brings the ledger up to date with them."""

    source: str
    kind: str
    label: str
    records: tuple[Found, ...] = ()
    error: str | None = None
    gone: tuple[tuple[str, str], ...] = ()
    moved_on: tuple[Found, ...] = ()

    @property
    def answered(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        return "answered" if self.error is None else f"failed: {self.error}"


@dataclass(frozen=True)
class Lookup:
    email: str
    at: datetime
    answers: tuple[SystemAnswer, ...]
    # Every form of the email the systems were asked by (as typed, as held upstream).
    forms: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Every system that holds or may hold the person answered."""
        return all(answer.answered for answer in self.answers)

    @property
    def records(self) -> list[Found]:
        return [record for answer in self.answers for record in answer.records]

    @property
    def failed(self) -> list[SystemAnswer]:
        return [answer for answer in self.answers if not answer.answered]


def record_type_of(kind: str, record_type: str) -> RecordType | None:
    """What the registry says of one kind of record."""
    system = system_for(kind)
    return system.record_type(record_type) if system is not None else None


def classify(found: Found) -> Record | None:
    """The ledger's view of a live record (categories, times, status), or None when the
    connector cannot read it."""
    described = record_type_of(found.kind, found.record_type)
    if described is None:
        return None
    try:
        result = described.classify(found.data)
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    return result if isinstance(result, Record) else None


def ledger_hints(ledger: Ledger, email: str) -> dict[str, list[tuple[str, str, str]]]:
    """The person's live holdings by source: (kind, record type, external id)."""
    query = (select(Source.name, Source.kind, Holding.record_type, Holding.external_id)
             .join(Holding, Holding.source_id == Source.id)
             .join(Subject, Subject.id == Holding.subject_id)
             .where(Subject.email == email, Holding.gone_at.is_(None),
                    Source.gone_at.is_(None))
             .order_by(Source.name, Holding.record_type, Holding.external_id))
    hints: dict[str, list[tuple[str, str, str]]] = {}
    with ledger.sessions() as session:
        for source, kind, record_type, external_id in session.execute(query):
            hints.setdefault(source, []).append((kind, record_type, external_id))
    return hints


def ledger_forms(ledger: Ledger, email: str) -> list[str]:
    """The raw forms of the person's email the systems were seen holding (sync keeps
    those that differ from the normalised key)."""
    with ledger.sessions() as session:
        return list(session.scalars(
            select(EmailForm.form).join(Subject, Subject.id == EmailForm.subject_id)
            .where(Subject.email == email).order_by(EmailForm.form)))


def lookup_forms(typed: str, email: str, seen: Sequence[str] = ()) -> tuple[str, ...]:
    """What to ask the systems by: the request as typed (trimmed), its composed and
    decomposed forms, the normalised key, and every form the ledger has seen. Systems that
    match exactly (Stripe's email filter) or hash what they hold (Mailchimp) find a record
    only by the form they hold; each connector still keeps only records whose email
    normalises to `email`."""
    trimmed = typed.strip()
    candidates = (typed, trimmed, unicodedata.normalize("NFC", trimmed),
                  unicodedata.normalize("NFD", trimmed), email,
                  unicodedata.normalize("NFD", email), *seen)
    return tuple(f for f in dict.fromkeys(candidates) if f)


def still_theirs(found: Found, email: str) -> bool:
    """A record the ledger pointed at still concerns the person: it carries their email,
    or no email and is not anonymised (an order of their account, a charge of their
    customer)."""
    record = classify(found)
    if record is None:
        return True
    if record.email is not None:
        return record.email == email
    return not record.anonymised


def _ask(connector: Any, email: str, forms: Sequence[str],
         hinted: Sequence[tuple[str, str, str]], label: str) -> SystemAnswer:
    kind, source = connector.kind, connector.source
    found: dict[tuple[str, str], Found] = {}
    gone: list[tuple[str, str]] = []
    moved_on: list[Found] = []
    for item in connector.lookup(email, forms):
        record = Found(source, kind, str(item["record_type"]), str(item["external_id"]),
                       dict(item.get("data") or {}))
        found.setdefault((record.record_type, record.external_id), record)
    system = system_for(kind)
    for _, record_type, external_id in hinted:
        if (record_type, external_id) in found or system is None:
            continue
        try:
            data = system.fetch(connector, record_type, external_id)
        except ValueError:
            # A record type or id this connector cannot fetch: its search is all there is.
            continue
        if data is None:
            gone.append((record_type, external_id))
            continue
        record = Found(source, kind, record_type, external_id, data)
        if still_theirs(record, email):
            found[(record_type, external_id)] = record
        else:
            moved_on.append(record)
    return SystemAnswer(source, kind, label, tuple(found.values()), gone=tuple(gone),
                        moved_on=tuple(moved_on))


def look_up(systems: Systems, email: str, *, ledger: Ledger | None = None,
            now: datetime | None = None, forms: Sequence[str] = ()) -> Lookup:
    """Ask every connected system live about one person (`email` as typed: by every form of
    it, see lookup_forms, plus `forms`); with a ledger, also fetch the person's holdings a
    search did not return, and report sources the ledger holds the person in but that are
    not configured. Upstream failures become failed answers."""
    typed, email = email, require_email(email)
    hints = ledger_hints(ledger, email) if ledger is not None else {}
    seen = ledger_forms(ledger, email) if ledger is not None else []
    asked = lookup_forms(typed, email, [*forms, *seen])
    answers: list[SystemAnswer] = []
    for source, connector in systems.connectors.items():
        label = systems.labels.get(source, source)
        try:
            answers.append(_ask(connector, email, asked, hints.get(source, ()), label))
        except APIError as exc:
            log.warning("request.system_failed", source=source, error=safe_text(exc.message))
            answers.append(SystemAnswer(source, connector.kind, label, error=exc.message))
    for source, why in systems.failures.items():
        answers.append(SystemAnswer(source, source_kind(source), source, error=why))
    for source, held in hints.items():
        if not systems.covers(source):
            answers.append(SystemAnswer(
                source, held[0][0], source,
                error=f"not configured: the ledger holds {len(held)} record(s) of this person "
                      "there, which cannot be looked up; configure the source again or "
                      "answer for it by hand"))
    return Lookup(email=email, at=now or utcnow(), answers=tuple(answers), forms=asked)


# -- what a person reads ---------------------------------------------------------------------


def why_and_how_long(found: Found, record: Record | None,
                     retention: RetentionSettings) -> tuple[str, str]:
    """The purpose of a record and how long it is kept, in words for the person."""
    described = record_type_of(found.kind, found.record_type)
    if described is None:
        return ("Held by a system privacy-ledger cannot describe.", "Ask the shop.")
    return described.purpose(record, retention)


def title_of(found: Found) -> str:
    """What the person reads above a record: "Order 1042", "Newsletter contact"."""
    described = record_type_of(found.kind, found.record_type)
    if described is None:
        return found.record_type
    return described.title if described.id_is_personal else f"{described.title} " \
        f"{found.external_id}"


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Leaf fields that hold something, as dotted names and text."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "_links":
                continue
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{prefix}[{index}]")
    elif prefix and value is not None and value is not False and value != "":
        yield prefix, str(value)


def _category_words(categories: frozenset[Category] | set[Category]) -> list[str]:
    return sorted(str(c).replace("_", " ") for c in categories)


def _document(lookup: Lookup, request_id: str) -> dict[str, Any]:
    systems: dict[str, Any] = {}
    for answer in lookup.answers:
        systems[answer.source] = {
            "system": answer.label, "status": answer.status,
            "records": [{"record_type": r.record_type, "external_id": r.external_id,
                         "data": {k: v for k, v in r.data.items() if k != "_links"}}
                        for r in answer.records]}
    return {"email": lookup.email, "requested_at": lookup.at.isoformat(),
            "request": request_id, "complete": lookup.complete, "systems": systems}


def _page_model(lookup: Lookup, retention: RetentionSettings) -> list[dict[str, Any]]:
    sections = []
    for answer in lookup.answers:
        items = []
        for found in answer.records:
            record = classify(found)
            why, how_long = why_and_how_long(found, record, retention)
            items.append({
                "title": title_of(found),
                "status": record.status if record else None,
                "categories": _category_words(record.categories) if record else [],
                "since": record.created_at if record else None,
                "why": why, "how_long": how_long,
                "fields": list(_flatten(found.data)),
            })
        sections.append({"label": answer.label, "source": answer.source,
                         "error": answer.error, "records": items})
    return sections


def render_page(lookup: Lookup, retention: RetentionSettings, request_id: str) -> str:
    env = Environment(loader=FileSystemLoader(TEMPLATES),
                      autoescape=select_autoescape(enabled_extensions=("html",),
                                                   default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["day"] = lambda moment: moment.strftime("%d %B %Y") if moment else "unknown"
    return env.get_template("export.html").render(
        email=lookup.email, at=lookup.at, complete=lookup.complete, request=request_id,
        sections=_page_model(lookup, retention),
        failed=[answer.source for answer in lookup.failed])


# -- writing the copy ------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    request_id: str
    email: str
    requested_at: datetime
    complete: bool
    json_path: Path
    html_path: Path
    answers: tuple[SystemAnswer, ...]

    @property
    def records(self) -> int:
        return sum(len(answer.records) for answer in self.answers)


def _private_files(directory: Path, stem: str,
                   suffixes: Sequence[str]) -> list[tuple[Path, int]]:
    """Create new files `<stem>.<suffix>` readable by the owner only (0600), numbering the
    stem when a file of that name exists; returns their paths and open descriptors."""
    for attempt in range(1, 100):
        name = stem if attempt == 1 else f"{stem}-{attempt}"
        paths = [directory / f"{name}.{suffix}" for suffix in suffixes]
        if any(path.exists() for path in paths):
            continue
        opened: list[tuple[Path, int]] = []
        try:
            for path in paths:
                opened.append((path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                             0o600)))
        except FileExistsError:
            for _, descriptor in opened:
                os.close(descriptor)
            continue
        return opened
    raise RequestError(f"{directory} already holds 99 exports named {stem}: choose another "
                       "--out directory")


def write_export(lookup: Lookup, retention: RetentionSettings, directory: Path,
                 request_id: str) -> tuple[Path, Path]:
    """Write the JSON copy and the readable page into `directory` (made 0700 if missing);
    returns their paths."""
    document = json.dumps(_document(lookup, request_id), indent=2, ensure_ascii=False,
                          default=str)
    page = render_page(lookup, retention, request_id)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = _private_files(directory, f"export-{lookup.at:%Y%m%d-%H%M%S}",
                               ("json", "html"))
        for (_, descriptor), text in zip(files, (document, page), strict=True):
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
    except OSError as exc:
        raise RequestError(f"cannot write the export into {directory}: {exc.strerror}; "
                           "choose a writable --out directory") from None
    return files[0][0], files[1][0]


def run_export(ledger: Ledger, settings: Settings, email: str, directory: Path, *,
               now: datetime | None = None, sleep: Callable[[float], None] | None = None,
               actor: str = "cli") -> ExportResult:
    """Answer an access request: look the person up live everywhere, write the copy, and
    record the request in audit_log (who by reference, when, which systems answered)."""
    address = require_email(email)
    request_id = uuid.uuid4().hex[:12]
    with open_systems(settings, sleep=sleep) as systems:
        lookup = look_up(systems, email, ledger=ledger, now=now)
    json_path, html_path = write_export(lookup, settings.retention, directory, request_id)
    trail.record(ledger, actor, "export", {
        "request": request_id, "person": person_ref(ledger, address),
        "complete": lookup.complete,
        "systems": {a.source: "answered" if a.answered else "failed" for a in lookup.answers},
        "records": {a.source: len(a.records) for a in lookup.answers}})
    log.info("export.written", request=request_id, complete=lookup.complete,
             records=sum(len(a.records) for a in lookup.answers))
    return ExportResult(request_id, address, lookup.at, lookup.complete, json_path, html_path,
                        lookup.answers)


def summary_lines(answers: Sequence[SystemAnswer]) -> list[str]:
    """One line per system: how many records, or why it did not answer."""
    lines = []
    for answer in answers:
        if answer.answered:
            count = len(answer.records)
            lines.append(f"  {answer.source:<28} {count} record{'s' if count != 1 else ''}")
        else:
            lines.append(f"  {answer.source:<28} NO ANSWER — {answer.error}")
    return lines

