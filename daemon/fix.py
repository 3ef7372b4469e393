"""Fixing findings from the command line (`privacy-ledger fix RULE SOURCE EXTERNAL_ID`, or
`fix --rule RULE [--source NAME]` for all of a rule): first a plan, then `--apply`, then a
live read-back, as `erase` does — and through erase's own machinery (daemon/erasure.py
apply_step / record_step: one write, its ledger update and its trail entry).

What each rule's fix writes (daemon/fix_words.py): an inactive account deleted (never an
administrator or shop manager: the live record is read first), an order past retention
anonymised as WooCommerce's eraser does, an unpaid or trashed order deleted for good, a
Stripe customer deleted, a Mailchimp contact deleted permanently, a card number in an order's
customer note removed (the note cleared). What the REST API cannot do is said with the admin
page to do it: an order's IP address and user agent are read-only there.

Exactly once, even after a kill: before each write the record is read live, and a record
already in the fixed state (gone, anonymised, note empty) is recorded as such without a
write; a finding fixed is resolved in the step's own transaction, so a rerun plans only what
is left. Writes are throttled per system ([fix] writes_per_second).

audit_log: `fix.plan` (fix id, rule, counts), one `fix.step` per record (status: deleted,
anonymised, note cleared, already gone, already done, refused, failed), `fix.done`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, or_, select

from connectors.http import APIError
from daemon import trail
from daemon.access import Systems, record_type_of, safe_text
from daemon.audit import resolve_source, rules_for
from daemon.erasure import Step, StepOutcome, apply_step, record_step, system_of
from daemon.fix_words import ACTIONS, ANONYMISE, CLEAR_NOTE, DELETE, FIXABLE_RULES
from daemon.ledger import Finding, Holding, Ledger, Source
from vocabulary import ACCOUNTS, STAFF_ROLES, system_name, utcnow

if TYPE_CHECKING:
    from daemon.config import RetentionSettings

_WHY = {DELETE: "deleted for good", ANONYMISE: "anonymised as WooCommerce's eraser does",
        CLEAR_NOTE: "its customer note (where the card number is) cleared"}


class FixError(Exception):
    """A fix that cannot be done as asked; the message says why and what to do."""


@dataclass(frozen=True)
class FixItem:
    """One finding and what the fix does about it: a step, or why it cannot."""

    finding_id: int
    rule: str
    step: Step
    # None: the fix writes `step.action`; else what the owner must do by hand.
    by_hand: str | None = None


@dataclass(frozen=True)
class FixPlan:
    fix_id: str
    rule: str
    items: tuple[FixItem, ...]
    skipped_acknowledged: int

    @property
    def writes(self) -> list[FixItem]:
        return [item for item in self.items if item.by_hand is None]


@dataclass(frozen=True)
class FixResult:
    plan: FixPlan
    outcomes: tuple[StepOutcome, ...]
    # Records whose read-back does not show the fix, and why.
    unconfirmed: tuple[tuple[Step, str], ...]

    @property
    def complete(self) -> bool:
        return all(o.ok for o in self.outcomes) and not self.unconfirmed


def _by_hand(rule: str, source: Source, record_type: str, external_id: str,
             evidence: str | None, shop_urls: dict[str, str]) -> str | None:
    """Why this finding has no write, and where to do it by hand; None when it has one."""
    action = ACTIONS.get((rule, source.kind, record_type))
    if rule == "network-data-past-retention":
        admin = f"{shop_urls[source.name]}/wp-admin" if source.name in shop_urls else "wp-admin"
        return ("WooCommerce's REST API cannot change an order's IP address or user agent "
                "(both read-only). In WordPress: Tools → Erase Personal Data "
                f"({admin}/erase-personal-data.php) for the customer's email, with "
                "WooCommerce → Settings → Accounts & Privacy → \"Remove personal data from "
                "orders on request\" ticked, anonymises the order, IP and user agent "
                f"included; order {external_id} is at "
                f"{admin}/admin.php?page=wc-orders&action=edit&id={external_id}.")
    if action is None:
        return (f"privacy-ledger has no write for {rule} on a {source.kind} {record_type}: "
                f"do it by hand (`privacy-ledger audit --rule {rule}` says what to do)")
    if action == CLEAR_NOTE and "customer_note" not in (evidence or ""):
        return ("the card number is not in the order's customer note but in a field the "
                "REST API does not let privacy-ledger clear safely: remove it in the order "
                "screen by hand, and tell the customer.")
    return None


def _item(rule: str, finding_id: int, source: Source, holding: Holding,
          shop_urls: dict[str, str]) -> FixItem:
    action = ACTIONS.get((rule, source.kind, holding.record_type), "keep")
    by_hand = _by_hand(rule, source, holding.record_type, holding.external_id,
                       holding.evidence, shop_urls)
    if holding.record_type in ACCOUNTS and holding.status in STAFF_ROLES:
        # The role as last synced; apply reads it live again before any write.
        by_hand = (f"a staff account (role {holding.status}): privacy-ledger does not delete "
                   "staff accounts; remove it in WordPress (Users) by hand, reassigning what "
                   "it owns")
    reason = by_hand or f"{holding.record_type} {_WHY.get(action, '')}"
    step = Step(source.name, source.kind, holding.record_type, holding.external_id,
                action if by_hand is None else "keep", reason)
    return FixItem(finding_id, rule, step, by_hand)


# Findings `fix` cannot write but whose plan says plainly what to do and where.
_SAID = frozenset({"network-data-past-retention"})


def _fixable(rule: str) -> None:
    if rule not in FIXABLE_RULES and rule not in _SAID:
        raise FixError(f"{rule} has no fix privacy-ledger can write: it is fixed by what "
                       f"`privacy-ledger audit --rule {rule}` says to do")


def _held(now: datetime) -> Any:
    return and_(Finding.acknowledged_at.is_not(None),
                or_(Finding.ack_until.is_(None), Finding.ack_until > now))


def plan_one(ledger: Ledger, rule: str, source: str, external_id: str, *,
             record_type: str | None = None, shop_urls: dict[str, str] | None = None,
             now: datetime | None = None, actor: str = "cli") -> FixPlan:
    """The fix of one finding; FixError when it is resolved, acknowledged or unknown."""
    spec = rules_for([rule])[0]
    _fixable(spec.id)
    moment = now or utcnow()
    with ledger.sessions() as session:
        found_source = resolve_source(session, source)
        query = (select(Finding, Holding).join(Holding, Holding.id == Finding.holding_id)
                 .where(Finding.rule == spec.id, Finding.source_id == found_source.id,
                        Holding.external_id == external_id)
                 .order_by(Finding.resolved_at.is_not(None), Finding.id))
        if record_type is not None:
            query = query.where(Holding.record_type == record_type)
        rows = session.execute(query).tuples().all()
        where = f"{found_source.name} {external_id}"
        if not rows:
            raise FixError(f"no {spec.id} finding for {where}; `privacy-ledger audit --rule "
                           f"{spec.id}` lists them")
        finding, holding = rows[0]
        if finding.resolved_at is not None:
            raise FixError(f"the {spec.id} finding for {where} was resolved on "
                           f"{finding.resolved_at:%Y-%m-%d}: nothing to fix")
        if finding.acknowledged_at is not None and (finding.ack_until is None
                                                    or finding.ack_until > moment):
            raise FixError(f"the {spec.id} finding for {where} is acknowledged "
                           f"({finding.ack_reason}): it is kept on purpose, so fix does not "
                           "touch it. It is fixed by hand, or once the acknowledgement ends.")
        item = _item(spec.id, finding.id, found_source, holding, shop_urls or {})
    return _recorded(ledger, spec.id, (item,), 0, actor)


def plan_rule(ledger: Ledger, rule: str, *, source: str | None = None,
              shop_urls: dict[str, str] | None = None, now: datetime | None = None,
              actor: str = "cli") -> FixPlan:
    """The fix of every current finding of a rule (of one source), acknowledged ones left."""
    spec = rules_for([rule])[0]
    _fixable(spec.id)
    moment = now or utcnow()
    with ledger.sessions() as session:
        query = (select(Finding, Holding, Source)
                 .join(Holding, Holding.id == Finding.holding_id)
                 .join(Source, Source.id == Holding.source_id)
                 .where(Finding.rule == spec.id, Finding.resolved_at.is_(None))
                 .order_by(Source.name, Holding.record_type, Holding.id))
        if source is not None:
            query = query.where(Source.id == resolve_source(session, source).id)
        rows = session.execute(query).tuples().all()
        held = set(session.scalars(select(Finding.id).where(
            Finding.rule == spec.id, Finding.resolved_at.is_(None), _held(moment))))
        items = tuple(_item(spec.id, f.id, s, h, shop_urls or {})
                      for f, h, s in rows if f.id not in held)
    return _recorded(ledger, spec.id, items, len(held), actor)


def _recorded(ledger: Ledger, rule: str, items: tuple[FixItem, ...], held: int,
              actor: str) -> FixPlan:
    plan = FixPlan(uuid.uuid4().hex[:12], rule, items, held)
    trail.record(ledger, actor, "fix.plan", {
        "fix": plan.fix_id, "rule": rule, "writes": len(plan.writes),
        "by_hand": len(items) - len(plan.writes), "acknowledged_left": held})
    return plan


class Throttle:
    """At most `rate` writes per second to one system (a live shop must not slow down)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.gap = 1.0 / rate
        self.clock, self.sleep = clock, sleep
        self.last: dict[str, float] = {}

    def wait(self, system: str) -> None:
        previous = self.last.get(system)
        if previous is not None:
            ahead = previous + self.gap - self.clock()
            if ahead > 0:
                self.sleep(ahead)
        self.last[system] = self.clock()


def _server(step: Step) -> str:
    # A Mailchimp account's audiences are one server; every shop and site is its own.
    named = system_name(step.source)
    return named.kind if named is not None and named.one_account else step.source


def _done_already(step: Step, data: dict[str, Any] | None) -> str | None:
    """The status of a record already in the fixed state, None when it needs the write."""
    if data is None:
        return "already gone"
    if step.action == ANONYMISE:
        described = record_type_of(step.kind, step.record_type)
        record = described.classify(data) if described is not None else None
        if getattr(record, "anonymised", False):
            return "already done"
    if step.action == CLEAR_NOTE and not data.get("customer_note"):
        return "already done"
    return None


def _staff(step: Step, data: dict[str, Any] | None) -> str | None:
    if step.record_type in ACCOUNTS and data is not None:
        described = record_type_of(step.kind, step.record_type)
        record = described.classify(data) if described is not None else None
        role = getattr(record, "status", None)
        if role in STAFF_ROLES:
            return (f"a staff account (role {role}): privacy-ledger does not delete staff "
                    "accounts; remove it in WordPress (Users) by hand")
    return None


def apply_fix(ledger: Ledger, systems: Systems, plan: FixPlan, retention: RetentionSettings,
              *, rate: float, actor: str = "cli",
              sleep: Callable[[float], None] = time.sleep) -> FixResult:
    """Carry out the plan's writes, each after a live read (exactly once across reruns),
    throttled per system; then read each changed record back by its id."""
    throttle = Throttle(rate, sleep=sleep)
    outcomes: list[StepOutcome] = []
    for item in plan.writes:
        step = item.step
        detail = {"fix": plan.fix_id, "rule": plan.rule, "finding": item.finding_id}
        connector = systems.connectors.get(step.source)
        try:
            if connector is None:
                raise APIError(step.source, "the source is not configured any more")
            data = system_of(step).fetch(connector, step.record_type, step.external_id)
        except (APIError, ValueError) as exc:
            message = exc.message if isinstance(exc, APIError) else str(exc)
            outcomes.append(_failed(ledger, step, detail, message, actor))
            continue
        refusal = _staff(step, data)
        if refusal is not None:
            outcomes.append(_failed(ledger, step, detail, refusal, actor, status="refused"))
            continue
        already = _done_already(step, data)
        now = utcnow()
        if already is not None:
            outcomes.append(record_step(ledger, step, already, data if already != "already gone"
                                        else None, retention, actor=actor, now=now,
                                        entry="fix.step", detail=detail))
            continue
        throttle.wait(_server(step))
        outcomes.append(apply_step(ledger, systems, step, retention, actor=actor, now=now,
                                   entry="fix.step", detail=detail, data=data))
    unconfirmed = _read_back(systems, [o.step for o in outcomes if o.ok])
    trail.record(ledger, actor, "fix.done", {
        "fix": plan.fix_id, "rule": plan.rule,
        "steps": {status: sum(1 for o in outcomes if o.status == status)
                  for status in sorted({o.status for o in outcomes})},
        "unconfirmed": len(unconfirmed),
        "findings_resolved": sum(o.settled for o in outcomes)})
    return FixResult(plan, tuple(outcomes), tuple(unconfirmed))


def _failed(ledger: Ledger, step: Step, detail: dict[str, Any], message: str, actor: str,
            *, status: str = "failed") -> StepOutcome:
    trail.record(ledger, actor, "fix.step", {
        **detail, "source": step.source, "record_type": step.record_type,
        "external_id": step.trail_id, "action": step.action, "status": status,
        "error": safe_text(message)})
    return StepOutcome(step, "failed", message)


def _read_back(systems: Systems, steps: list[Step]) -> list[tuple[Step, str]]:
    """Each fixed record fetched by its id: the ones that do not show the fix, and why."""
    problems: list[tuple[Step, str]] = []
    for step in steps:
        connector = systems.connectors.get(step.source)
        try:
            data = system_of(step).fetch(connector, step.record_type, step.external_id)
        except (APIError, ValueError) as exc:
            problems.append((step, exc.message if isinstance(exc, APIError) else str(exc)))
            continue
        if _done_already(step, data) is None:
            problems.append((step, "still there as it was"))
    return problems


# -- words for the owner ---------------------------------------------------------------------


def plan_lines(plan: FixPlan) -> list[str]:
    lines = [f"Fix plan for {plan.rule} (fix {plan.fix_id}):"]
    for item in plan.items:
        step = item.step
        head = "BY HAND" if item.by_hand else step.action.upper()
        lines.append(f"  {head:<10} {step.source} {step.record_type} {step.external_id}")
        lines.append(f"             {step.reason}")
    if plan.skipped_acknowledged:
        lines.append(f"  {plan.skipped_acknowledged} acknowledged finding(s) left as they are.")
    if not plan.items:
        lines.append("  nothing to fix: no current finding of this rule.")
    lines.append(f"  {len(plan.writes)} write(s), {len(plan.items) - len(plan.writes)} by hand.")
    return lines


def result_lines(result: FixResult) -> list[str]:
    lines = []
    for outcome in result.outcomes:
        step = outcome.step
        said = f" — {safe_text(outcome.error)}" if outcome.error else ""
        lines.append(f"  {step.source:<28} {step.action:<10} {step.record_type} "
                     f"{step.external_id}: {outcome.status}{said}")
    for step, why in result.unconfirmed:
        lines.append(f"  NOT CONFIRMED {step.source} {step.record_type} {step.external_id}: "
                     f"{why}")
    resolved = sum(o.settled for o in result.outcomes)
    if result.complete:
        lines.append(f"Verified live: every write took effect; {resolved} finding(s) "
                     "resolved in the ledger.")
    else:
        lines.append("NOT COMPLETE: fix what the lines above say and run the same command "
                     "again (each step is safe to repeat; nothing is written twice).")
    return lines
