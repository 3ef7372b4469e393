"""Erasure requests (`privacy-ledger erase EMAIL [--apply] [--yes]`): first a plan, per system
and record — delete, anonymise or keep, with the reason —; applied, each step is carried
out, recorded in audit_log and reflected in the ledger at once, and a live lookup afterwards
verifies what is left.

What the plan decides, for each record a live lookup finds (daemon/access.py):
- WooCommerce account: delete (force=true; WooCommerce cannot trash accounts).
- WooCommerce order, paid (completed, refunded, or a status of a plugin's own) and inside
  its accounting period ([retention] completed_orders / refunded_orders, counted from the
  order's creation as WooCommerce's own cleanup counts it): anonymise — personal fields
  replaced the way WooCommerce's eraser does (connectors/woocommerce.py says how, and what a
  REST client cannot change: the IP address and user agent are read-only there).
- WooCommerce order being fulfilled (processing): keep, because its delivery needs the
  address; erasing again once it is completed anonymises it.
- WooCommerce order past its period, or never paid (pending, failed, cancelled, on-hold,
  trash): delete (force=true: a trashed order still holds everything).
- Stripe customer: delete. Stripe charge: keep — Stripe keeps charges as payment records and
  its API can neither delete them nor change their billing details; the plan says so.
- Mailchimp member, in every audience: delete permanently (actions/delete-permanent), not
  archive: an archived contact is still held.

Steps run orders first, then accounts, then the processor copies. Each is idempotent: a
record already gone (404/410) counts as done, and a run that stopped half-way is completed
by running the request again, which plans from live state (what is gone is simply no longer
in the plan).

The ledger follows at once, in the step's own transaction with its audit_log entry: a
deleted record's holding is marked gone, an anonymised order's holding is re-classified
from the shop's answer (anonymised, fewer categories, no longer the person's), and the
open findings of those holdings that no longer hold are resolved by re-running their rules'
queries for just those holdings (the nightly audit's counts are not disturbed). Holdings the
ledger still links to the person that the live lookup shows gone or no longer theirs (a run
killed between an upstream write and its ledger update) are caught up the same way. When the
erasure is complete, the person's gone holdings and their findings are detached from the
subject, and the subject row — the ledger's copy of the email — is deleted once no live
holding refers to it (kept Stripe charges still do: the ledger keeps tracking what is held).

Verified twice: a fresh lookup by every form of the email the plan asked by, and each
record the plan changed read back by its id (a write that did not happen shows even where no
search finds the record again). A write counts only when the API answered it for that record:
a redirect or an HTML page is a failed step (connectors' erase functions decide).

Mail: queued emails naming the person (any form of the address) are withdrawn from the
outbox and sent copies deleted, in the transaction of `erasure.done` (daemon/mail.py).

audit_log: `erasure.plan` (counts per action), one `erasure.step` per step applied (source,
record type and id, action, status: deleted / anonymised / already gone / failed), and
`erasure.done` (verified or not, what is left, the outbox rows withdrawn or deleted). The
person is named by access.person_ref; Mailchimp member ids are the MD5 of the email, so
member steps carry no id (the audience and the person's reference name the record).
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from connectors.base import Key, Record
from connectors.http import APIError
from connectors.registry import system_for
from connectors.system import ANONYMISE, DELETE, KEEP, System
from daemon import trail
from daemon.access import (
    Found,
    Lookup,
    Systems,
    classify,
    look_up,
    person_ref,
    record_type_of,
    require_email,
    safe_text,
    still_theirs,
)
from daemon.ledger import EmailForm, Finding, Holding, Ledger, Subject
from daemon.mail import purge_mail
from daemon.requests import remember_erasure
from daemon.sync import mark_gone, upsert_records
from vocabulary import utcnow

if TYPE_CHECKING:
    from daemon.config import RetentionSettings

log = structlog.get_logger("daemon.erasure")

_FAILED = "failed"


@dataclass(frozen=True)
class Step:
    """One record and what the plan does with it, and why."""

    source: str
    kind: str
    record_type: str
    external_id: str
    action: str
    reason: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.source, self.record_type, self.external_id)

    @property
    def trail_id(self) -> str | None:
        """The id fit for audit_log: none where the id names the person (Mailchimp's
        members: a hash of the email)."""
        described = record_type_of(self.kind, self.record_type)
        return None if described is not None and described.id_is_personal else \
            self.external_id


@dataclass(frozen=True)
class Plan:
    request_id: str
    email: str
    person: str
    at: datetime
    steps: tuple[Step, ...]
    lookup: Lookup

    @property
    def complete(self) -> bool:
        """Every system answered: the plan covers everything held."""
        return self.lookup.complete

    @property
    def changes(self) -> list[Step]:
        return [step for step in self.steps if step.action != KEEP]

    @property
    def kept(self) -> list[Step]:
        return [step for step in self.steps if step.action == KEEP]

    def counts(self) -> dict[str, int]:
        return {action: sum(1 for s in self.steps if s.action == action)
                for action in (DELETE, ANONYMISE, KEEP)}


def decide(found: Found, retention: RetentionSettings, now: datetime,
           connector: Any = None) -> tuple[str, str]:
    """(action, reason) for one live record, as its system decides."""
    described = record_type_of(found.kind, found.record_type)
    if described is None:
        return KEEP, (f"privacy-ledger cannot erase a {found.kind} {found.record_type}: do it "
                      "by hand")
    return described.decide(classify(found), retention, now, connector)


def _step_order(step: Step) -> int:
    described = record_type_of(step.kind, step.record_type)
    return described.erase_order if described is not None else 9


def make_plan(ledger: Ledger, systems: Systems, retention: RetentionSettings, email: str, *,
              now: datetime | None = None, actor: str = "cli") -> Plan:
    """Look the person up live everywhere and decide each record's fate. Changes nothing
    upstream; records the request (`erasure.plan`) in audit_log."""
    address = require_email(email)
    moment = now or utcnow()
    # As typed, not only normalised: Stripe's email filter matches exactly.
    lookup = look_up(systems, email, ledger=ledger, now=moment)
    steps = [Step(f.source, f.kind, f.record_type, f.external_id,
                  *decide(f, retention, moment, systems.connectors.get(f.source)))
             for f in lookup.records]
    steps.sort(key=lambda s: (_step_order(s), s.source, s.record_type,
                              _natural(s.external_id)))
    plan = Plan(uuid.uuid4().hex[:12], address, person_ref(ledger, address), moment,
                tuple(steps), lookup)
    trail.record(ledger, actor, "erasure.plan", {
        "request": plan.request_id, "person": plan.person, "complete": plan.complete,
        "steps": plan.counts(),
        "systems": {a.source: "answered" if a.answered else "failed"
                    for a in lookup.answers}})
    return plan


def system_of(step: Step) -> System:
    """The system a step's record belongs to."""
    system = system_for(step.kind)
    if system is None:
        raise ValueError(f"{step.source}: no system {step.kind!r} is known to privacy-ledger")
    return system


def _natural(ident: str) -> tuple[int, str]:
    return (int(ident), "") if ident.isdigit() else (0, ident)


# -- applying --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepOutcome:
    step: Step
    # deleted, anonymised, already gone, failed.
    status: str
    error: str | None = None
    # Findings of the record resolved in the ledger by this step.
    settled: int = 0

    @property
    def ok(self) -> bool:
        return self.status != _FAILED


@dataclass(frozen=True)
class ErasureResult:
    plan: Plan
    outcomes: tuple[StepOutcome, ...]
    verification: Lookup
    # Records still found about the person that the plan did not keep.
    leftover: tuple[Found, ...]
    findings_resolved: int
    # The subject row (the ledger's copy of the email) was deleted.
    forgotten: bool
    # Stale holdings brought up to date (gone or no longer the person's upstream already).
    caught_up: int = 0
    # Changed records whose state could not be read back by id, and why.
    unconfirmed: tuple[tuple[Step, str], ...] = ()
    # Queued emails naming the person that were withdrawn, and sent copies deleted.
    mail_withdrawn: int = 0
    mail_deleted: int = 0

    @property
    def failed(self) -> list[StepOutcome]:
        return [outcome for outcome in self.outcomes if not outcome.ok]

    @property
    def complete(self) -> bool:
        """Every system answered before and after, every step succeeded, and nothing but
        what the plan keeps is left, by a fresh lookup and by each changed record's id."""
        return (self.plan.complete and self.verification.complete and not self.failed
                and not self.leftover and not self.unconfirmed)


def apply_plan(ledger: Ledger, systems: Systems, plan: Plan, retention: RetentionSettings, *,
               now: datetime | None = None, actor: str = "cli") -> ErasureResult:
    """Carry out every change of the plan, recording each step and reflecting it in the
    ledger; then verify live what is left, and forget the subject when all is done. A step
    that fails is recorded as failed and the others go on; running the request again
    completes the rest."""
    outcomes: list[StepOutcome] = []
    resolved = 0
    for step in plan.changes:
        outcome = _apply_step(ledger, systems, plan, step, retention, actor, now or utcnow())
        outcomes.append(outcome)
        resolved += outcome.settled
    # A fresh lookup by every form asked before, and each changed record read back by its
    # id: a write that did not happen is seen even where the lookup cannot see the record.
    verification = look_up(systems, plan.email, ledger=ledger, forms=plan.lookup.forms)
    kept = {step.key for step in plan.kept}
    leftover = {found.key: found for found in verification.records if found.key not in kept}
    still, unconfirmed = _read_back(systems, plan)
    for found in still:
        leftover.setdefault(found.key, found)
    forgotten = False
    done_well = (plan.complete and verification.complete and not leftover
                 and not unconfirmed and all(o.ok for o in outcomes))
    with ledger.session() as session:
        moment = now or utcnow()
        stale = _catch_up(ledger, session, verification, moment)
        resolved += settle_findings(session, stale, retention, moment)
        # Mail is the ledger's copy too: a digest queued before the erasure must not go out
        # naming the person after it, and a sent copy has no reason to stay.
        withdrawn, deleted = purge_mail(session, (plan.email, *plan.lookup.forms))
        if done_well:
            forgotten = _forget_subject(session, plan.email)
            # Only the keyed hash and the date: a later sync seeing the person is a finding.
            # The wall clock, as syncs stamp first_seen with it: the two must compare.
            remember_erasure(session, plan.person, utcnow())
        trail.append(session, actor, "erasure.done", {
            "request": plan.request_id, "person": plan.person, "verified": done_well,
            "steps": {status: sum(1 for o in outcomes if o.status == status)
                      for status in sorted({o.status for o in outcomes})},
            "kept": len(plan.kept), "left": len(leftover), "unconfirmed": len(unconfirmed),
            "unanswered": sorted(a.source for a in verification.failed),
            "findings_resolved": resolved, "ledger_caught_up": len(stale),
            "outbox": {"withdrawn": withdrawn, "sent_deleted": deleted},
            "subject_removed": forgotten})
    log.info("erasure.done", request=plan.request_id, verified=done_well,
             failed=sum(1 for o in outcomes if not o.ok), left=len(leftover),
             mail_withdrawn=withdrawn)
    return ErasureResult(plan, tuple(outcomes), verification, tuple(leftover.values()),
                         resolved, forgotten, len(stale), tuple(unconfirmed), withdrawn,
                         deleted)


def _read_back(systems: Systems, plan: Plan) -> tuple[list[Found], list[tuple[Step, str]]]:
    """Each record the plan changed, fetched by its id: the ones still holding the person
    (not deleted, not anonymised), and the ones that could not be read."""
    still: list[Found] = []
    unconfirmed: list[tuple[Step, str]] = []
    for step in plan.changes:
        connector = systems.connectors.get(step.source)
        if connector is None:
            unconfirmed.append((step, "the source is not connected"))
            continue
        try:
            data = system_of(step).fetch(connector, step.record_type, step.external_id)
        except (APIError, ValueError) as exc:
            unconfirmed.append((step, exc.message if isinstance(exc, APIError) else str(exc)))
            continue
        if data is None:
            continue
        found = Found(step.source, step.kind, step.record_type, step.external_id, data)
        if step.action == DELETE or still_theirs(found, plan.email):
            still.append(found)
    return still, unconfirmed


def _apply_step(ledger: Ledger, systems: Systems, plan: Plan, step: Step,
                retention: RetentionSettings, actor: str,
                now: datetime) -> StepOutcome:
    detail = {"request": plan.request_id, "person": plan.person}
    return apply_step(ledger, systems, step, retention, actor=actor, now=now,
                      entry="erasure.step", detail=detail)


def apply_step(ledger: Ledger, systems: Systems, step: Step, retention: RetentionSettings, *,
               actor: str, now: datetime, entry: str, detail: dict[str, Any],
               data: dict[str, Any] | None = None) -> StepOutcome:
    """One write upstream, then its ledger update and its trail entry `entry` (erasures
    and fixes alike). `data`: the record as just read (an anonymisation reads it afresh
    when None). A refused write is recorded as failed, and nothing else changes."""
    connector = systems.connectors.get(step.source)
    detail = {**detail, "source": step.source, "record_type": step.record_type,
              "external_id": step.trail_id, "action": step.action}
    status: str
    after: dict[str, Any] | None = None
    try:
        if connector is None:
            raise APIError(step.source, "the source is not connected")
        status, after = system_of(step).erase(connector, step.action, step.record_type,
                                            step.external_id, data)
    except (APIError, ValueError) as exc:
        message = exc.message if isinstance(exc, APIError) else str(exc)
        trail.record(ledger, actor, entry,
                     {**detail, "status": _FAILED, "error": safe_text(message)})
        log.warning(f"{entry}_failed", source=step.source, record_type=step.record_type,
                    external_id=step.trail_id, action=step.action, error=safe_text(message))
        return StepOutcome(step, _FAILED, message)
    return record_step(ledger, step, status, after, retention, actor=actor, now=now,
                       entry=entry, detail=detail)


def record_step(ledger: Ledger, step: Step, status: str, after: dict[str, Any] | None,
                retention: RetentionSettings, *, actor: str, now: datetime, entry: str,
                detail: dict[str, Any]) -> StepOutcome:
    """A step done upstream (or found done already) reflected in the ledger, its findings
    settled, and its trail entry, in one transaction."""
    detail = {**detail, "source": step.source, "record_type": step.record_type,
              "external_id": step.trail_id, "action": step.action}
    with ledger.session() as session:
        holding_ids = _reflect(ledger, session, step, after, now)
        settled = settle_findings(session, holding_ids, retention, now)
        trail.append(session, actor, entry, {**detail, "status": status,
                                              "findings_resolved": settled})
    log.info(entry, source=step.source, record_type=step.record_type,
             external_id=step.trail_id, action=step.action, status=status)
    return StepOutcome(step, status, settled=settled)


def _reflect(ledger: Ledger, session: Session, step: Step, after: dict[str, Any] | None,
             now: datetime) -> list[int]:
    """Bring the step's holding up to date: gone, or re-classified from the anonymised
    record. Returns the ids of the holdings touched."""
    source = ledger.source(session, step.source, step.kind)
    described = record_type_of(step.kind, step.record_type)
    if after is not None and described is not None and described.stays_after_anonymise:
        record = described.classify(after)
        if isinstance(record, Record):
            upsert_records(session, source.id, [record], now, touch_unchanged=False)
    else:
        mark_gone(session, source.id, [Key(step.record_type, step.external_id)], now)
    return list(session.scalars(select(Holding.id).where(
        Holding.source_id == source.id, Holding.record_type == step.record_type,
        Holding.external_id == step.external_id)))


def _catch_up(ledger: Ledger, session: Session, lookup: Lookup,
              now: datetime) -> list[int]:
    """Holdings the ledger still links to the person that the systems say are gone or no
    longer theirs (a run killed between an upstream write and its ledger update, a change
    made by hand): brought up to date as a sync would. Returns their ids."""
    touched: list[int] = []
    for answer in lookup.answers:
        if not (answer.gone or answer.moved_on):
            continue
        source = ledger.source(session, answer.source, answer.kind)
        mark_gone(session, source.id, [Key(t, i) for t, i in answer.gone], now)
        records = [r for r in map(classify, answer.moved_on) if r is not None]
        upsert_records(session, source.id, records, now, touch_unchanged=False)
        keys = [*answer.gone, *((f.record_type, f.external_id) for f in answer.moved_on)]
        for record_type, external_id in keys:
            touched.extend(session.scalars(select(Holding.id).where(
                Holding.source_id == source.id, Holding.record_type == record_type,
                Holding.external_id == external_id)))
    return touched


def settle_findings(session: Session, holding_ids: Iterable[int],
                    retention: RetentionSettings, now: datetime) -> int:
    """Resolve the open findings of these holdings that their rule no longer finds: each
    rule's own query, asked about just these targets. Returns how many were resolved."""
    from daemon.audit import RULES

    ids = list(holding_ids)
    if not ids:
        return 0
    open_findings = session.execute(
        select(Finding.id, Finding.rule, Finding.target)
        .where(Finding.holding_id.in_(ids), Finding.resolved_at.is_(None))).all()
    by_rule: dict[str, dict[str, int]] = {}
    for finding_id, rule_id, target in open_findings:
        by_rule.setdefault(rule_id, {})[target] = finding_id
    resolved: list[int] = []
    for rule_id, targets in by_rule.items():
        rule = RULES.get(rule_id)
        if rule is None:
            continue
        current = rule.query(retention, now).subquery()
        still = set(session.scalars(select(current.c.target)
                                    .where(current.c.target.in_(list(targets)))))
        resolved.extend(finding_id for target, finding_id in targets.items()
                        if target not in still)
    if resolved:
        session.execute(update(Finding).where(Finding.id.in_(resolved))
                        .values(resolved_at=now))
    return len(resolved)


def _forget_subject(session: Session, email: str) -> bool:
    """Detach the person's gone holdings and their findings from the subject, and delete
    the subject once no holding refers to it. Returns True when it was deleted."""
    subject_id = session.scalar(select(Subject.id).where(Subject.email == email))
    if subject_id is None:
        return False
    gone = select(Holding.id).where(Holding.subject_id == subject_id,
                                    Holding.gone_at.is_not(None))
    session.execute(update(Finding).where(Finding.holding_id.in_(gone))
                    .values(subject_id=None))
    session.execute(update(Holding).where(Holding.subject_id == subject_id,
                                          Holding.gone_at.is_not(None))
                    .values(subject_id=None))
    if session.scalar(select(exists().where(Holding.subject_id == subject_id))):
        return False
    session.execute(delete(EmailForm).where(EmailForm.subject_id == subject_id))
    session.execute(update(Finding).where(Finding.subject_id == subject_id)
                    .values(subject_id=None))
    session.execute(delete(Subject).where(Subject.id == subject_id))
    return True


# -- words for the owner ---------------------------------------------------------------------


def plan_lines(plan: Plan) -> list[str]:
    """The plan as the command prints it: per system, each record's action and reason."""
    lines = [f"Erasure plan for {plan.email} (request {plan.request_id}):"]
    by_source: dict[str, list[Step]] = {}
    for step in plan.steps:
        by_source.setdefault(step.source, []).append(step)
    for answer in plan.lookup.answers:
        lines.append(f"  {answer.label}  [{answer.source}]")
        if not answer.answered:
            lines.append(f"    NO ANSWER — {answer.error}: nothing there can be planned")
            continue
        steps = by_source.get(answer.source, [])
        if not steps:
            lines.append("    nothing held")
        for step in steps:
            lines.append(f"    {step.action.upper():<9} {step.record_type} {step.external_id}")
            lines.extend(textwrap.wrap(step.reason, width=98, initial_indent=" " * 14,
                                       subsequent_indent=" " * 14))
    counts = plan.counts()
    lines.append(f"  {counts[DELETE]} to delete, {counts[ANONYMISE]} to anonymise, "
                 f"{counts[KEEP]} kept.")
    return lines


def result_lines(result: ErasureResult) -> list[str]:
    """What was done, and what the live lookup afterwards found."""
    lines = []
    for outcome in result.outcomes:
        step = outcome.step
        said = f" — {outcome.error}" if outcome.error else ""
        lines.append(f"  {step.source:<28} {step.action:<9} {step.record_type} "
                     f"{step.external_id}: {outcome.status}{said}")
    for answer in result.verification.failed:
        lines.append(f"  {answer.source}: could not verify — {answer.error}")
    for found in result.leftover:
        lines.append(f"  still held: {found.source} {found.record_type} {found.external_id}")
    for step, why in result.unconfirmed:
        lines.append(f"  could not read back {step.source} {step.record_type} "
                     f"{step.external_id}: {why}")
    if result.mail_withdrawn:
        lines.append(f"  outbox: {result.mail_withdrawn} queued email(s) naming the person "
                     "withdrawn, not sent (the next report is rendered from the ledger as it "
                     "is now)")
    if result.mail_deleted:
        lines.append(f"  outbox: {result.mail_deleted} sent email(s) naming the person "
                     "deleted from the ledger")
    if result.complete:
        kept = len(result.plan.kept)
        tail = f" except the {kept} record(s) the plan keeps" if kept else ""
        lines.append(f"Verified live: nothing personal about {result.plan.email} is left"
                     f"{tail}.")
        if result.forgotten:
            lines.append("The ledger no longer holds the email either.")
    else:
        lines.append("NOT COMPLETE: run the same command again to finish (each step is safe "
                     "to repeat).")
    if result.findings_resolved:
        lines.append(f"{result.findings_resolved} finding(s) resolved in the ledger.")
    return lines

