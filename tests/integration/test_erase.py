"""Erasure requests against the running sandbox estate over real HTTP, on SQLite and
PostgreSQL: a plan changes nothing; applied, nothing personal is left but what the plan
keeps (and says why); a failure half-way is completed by running again; the ledger follows
at once; the trail verifies, names the person by reference only, and shows an edited row."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, text

from daemon import trail
from daemon.access import Systems, open_systems, person_ref
from daemon.audit import run_audit
from daemon.config import Settings, load_settings
from daemon.erasure import (
    ANONYMISE,
    DELETE,
    KEEP,
    ErasureResult,
    Plan,
    apply_plan,
    make_plan,
)
from daemon.erasure import result_lines as erasure_lines
from daemon.ledger import AuditLogEntry, Finding, Holding, Ledger, Source, Subject
from daemon.sources import sync_configured
from sandbox.demo import RunningEstate
from sandbox.estate import OLD_COMPLETED_ORDER, OLD_NETWORK_DATA, Estate, EstateSpec, Person
from sandbox.seed import build_estate
from tests.integration.estate_helpers import estate_truth, ledger_truth

NOW = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture
def running() -> Iterator[RunningEstate]:
    estate = build_estate(EstateSpec(seed=11, people=40, now=NOW))
    with RunningEstate(estate) as live:
        yield live


@pytest.fixture
def settings(running: RunningEstate, tmp_path: Path) -> Settings:
    return load_settings(running.write_config(tmp_path / "config"))


def sync(ledger: Ledger, settings: Settings) -> Ledger:
    results = sync_configured(ledger, settings, full=True)
    assert results and all(r.ok for r in results), [r.error for r in results]
    return ledger


@pytest.fixture
def synced(ledger: Ledger, settings: Settings) -> Ledger:
    """The estate synced into a ledger on SQLite and on PostgreSQL."""
    return sync(ledger, settings)


@pytest.fixture
def synced_lite(sqlite_url: str, settings: Settings) -> Iterator[Ledger]:
    """The same on SQLite only, for tests whose point is upstream."""
    opened = Ledger.open(sqlite_url)
    try:
        yield sync(opened, settings)
    finally:
        opened.close()


@pytest.fixture
def systems(settings: Settings) -> Iterator[Systems]:
    with open_systems(settings, sleep=lambda _: None) as opened:
        yield opened


def person(estate: Estate, test: Callable[[Person], Any]) -> Person:
    return next(p for p in estate.people if test(p))


def everywhere(p: Person) -> bool:
    """An account, Stripe and Mailchimp."""
    return bool(p.account_shops) and p.in_stripe and p.in_mailchimp


def writes(estate: Estate) -> int:
    return sum(twin.writes for twin in estate.twins.values())


def erase(ledger: Ledger, systems: Systems, settings: Settings,
          email: str) -> tuple[Plan, ErasureResult]:
    plan = make_plan(ledger, systems, settings.retention, email, now=NOW)
    return plan, apply_plan(ledger, systems, plan, settings.retention, now=NOW)


def traces(estate: Estate, p: Person) -> set[tuple[str, str, str]]:
    """Every record in any twin still carrying the person's email or phone number."""
    found: set[tuple[str, str, str]] = set()
    for name, shop in estate.shops.items():
        for kind, store in (("customer", shop.customers), ("order", shop.orders)):
            found |= {(f"woo:{name}", kind, str(i)) for i, r in store.items()
                      if p.email in json.dumps(r, ensure_ascii=False) or p.phone in json.dumps(r)}
    stripe = estate.stripe
    found |= {("stripe", kind, ident) for kind, ident, email in stripe.ground_truth()
              if email == p.email}
    for ident in stripe.charge_ids():
        if p.phone in json.dumps(stripe.charge(ident)):
            found.add(("stripe", "charge", ident))
    for source in estate.mailchimp.sources():
        found |= {(source, kind, ident) for kind, ident, email
                  in estate.mailchimp.ground_truth(source) if email == p.email}
    return found


def test_plan_without_apply_changes_nothing_and_gives_a_reason_per_record(
        running: RunningEstate, synced_lite: Ledger, systems: Systems, settings: Settings) -> None:
    estate = running.estate
    p = person(estate, everywhere)
    before_writes, before_truth = writes(estate), estate_truth(estate)
    held_before = ledger_truth(synced_lite)
    plan = make_plan(synced_lite, systems, settings.retention, p.email.upper(), now=NOW)
    assert writes(estate) == before_writes
    assert estate_truth(estate) == before_truth and ledger_truth(synced_lite) == held_before
    assert plan.complete and plan.email == p.email
    actions = {(s.kind, s.record_type): s.action for s in plan.steps}
    assert actions[("woocommerce", "customer")] == DELETE
    assert actions[("stripe", "customer")] == DELETE
    assert actions[("mailchimp", "member")] == DELETE
    assert all(s.action == KEEP and "payment records" in s.reason
               for s in plan.steps if s.record_type == "charge")
    assert all(s.reason for s in plan.steps)
    assert {s.source for s in plan.steps} >= {"stripe", f"woo:{p.account_shops[0]}"}


def test_plan_decides_each_order_by_its_status_and_age(
        running: RunningEstate, synced_lite: Ledger, systems: Systems, settings: Settings) -> None:
    shop = running.estate.shops["allmyink"]
    email = "decide.me@example.com"
    account = shop.add_customer(email=email, first_name="Decide")

    def order(status: str, age: timedelta, **fields: Any) -> str:
        return str(shop.add_order(customer_id=account, status=status,
                                  date_created=NOW - age, billing={"email": email}, **fields))

    recent = order("completed", 400 * DAY, customer_ip_address="203.0.113.7")
    ancient = order("completed", 7 * 365 * DAY)
    refunded = order("refunded", 30 * DAY)
    fulfilling = order("processing", 2 * DAY)
    abandoned = order("pending", 10 * DAY)
    cancelled = order("cancelled", 5 * DAY)
    trashed = order("on-hold", 3 * DAY)
    shop.trash_order(int(trashed))
    plan = make_plan(synced_lite, systems, settings.retention, email, now=NOW)
    decided = {s.external_id: s for s in plan.steps if s.record_type == "order"}
    assert {i: s.action for i, s in decided.items()} == {
        recent: ANONYMISE, ancient: DELETE, refunded: ANONYMISE, fulfilling: KEEP,
        abandoned: DELETE, cancelled: DELETE, trashed: DELETE}
    assert "6 years" in decided[recent].reason and "completed_orders" in decided[recent].reason
    assert "read-only" in decided[recent].reason
    assert "read-only" not in decided[refunded].reason
    assert "past its 6 years accounting period" in decided[ancient].reason
    assert "still being fulfilled" in decided[fulfilling].reason
    assert "trash" in decided[trashed].reason
    # Orders first, then the account they belong to.
    kinds = [s.record_type for s in plan.steps if s.source == "woo:allmyink"]
    assert kinds == sorted(kinds, key=lambda k: k != "order")
    staff = shop.add_customer(email="staff@example.com", role="shop_manager")
    (kept,) = make_plan(synced_lite, systems, settings.retention, "staff@example.com",
                        now=NOW).steps
    assert (kept.external_id, kept.action) == (str(staff), KEEP)
    assert "staff account (role shop_manager)" in kept.reason


def test_apply_leaves_nothing_personal_but_what_the_plan_keeps_and_the_ledger_follows(
        running: RunningEstate, synced: Ledger, systems: Systems, settings: Settings) -> None:
    estate = running.estate
    p = person(estate, everywhere)
    plan, result = erase(synced, systems, settings, p.email)
    assert plan.changes and result.complete, [o.error for o in result.failed]
    kept = {s.key for s in plan.kept}
    assert traces(estate, p) == kept
    # Permanently deleted, not archived: the member is in no listing at all.
    assert not any(email == p.email for source in estate.mailchimp.sources()
                   for _, _, email in estate.mailchimp.ground_truth(source))
    assert {f.key for f in result.verification.records} == kept
    # The ledger reflects it at once, with no sync: its live holdings are what the twins hold.
    assert ledger_truth(synced) == estate_truth(estate)
    with synced.sessions() as session:
        anonymised = [session.execute(
            select(Holding.anonymised, Holding.subject_id, Holding.categories)
            .join(Source, Source.id == Holding.source_id)
            .where(Source.name == s.source, Holding.record_type == s.record_type,
                   Holding.external_id == s.external_id)).one()
            for s in plan.steps if s.action == ANONYMISE]
        subject = session.scalar(select(Subject.id).where(Subject.email == p.email))
    assert anonymised and all(a and s is None and ",email," not in c for a, s, c in anonymised)
    # Kept charges still carry the email: the ledger goes on tracking them.
    assert (subject is not None) == bool(kept) and result.forgotten == (not kept)


def test_apply_for_someone_only_mailchimp_holds_removes_them_from_the_ledger_too(
        running: RunningEstate, synced: Ledger, systems: Systems, settings: Settings) -> None:
    p = person(running.estate, lambda q: q.in_mailchimp and not (
        q.account_shops or q.guest_shops or q.in_stripe))
    plan, result = erase(synced, systems, settings, p.email)
    assert [s.action for s in plan.steps] == [DELETE] * len(plan.steps) and plan.steps
    assert result.complete and result.forgotten
    assert synced.holdings_for(p.email) == []
    with synced.sessions() as session:
        assert session.scalar(select(Subject.id).where(Subject.email == p.email)) is None
        gone = session.scalars(select(Holding.subject_id).where(
            Holding.external_id.in_([s.external_id for s in plan.steps]))).all()
    assert gone and set(gone) == {None}


def test_a_failure_half_way_is_completed_by_running_the_request_again(
        running: RunningEstate, synced: Ledger, systems: Systems, settings: Settings) -> None:
    estate = running.estate
    p = person(estate, everywhere)
    estate.stripe.faults.inject("status", status=503, times=100, path="/v1/customers/",
                                method="DELETE")
    plan, first = erase(synced, systems, settings, p.email)
    assert not first.complete
    assert [(o.step.kind, o.step.record_type) for o in first.failed] == [("stripe", "customer")]
    assert "503" in (first.failed[0].error or "")
    # The steps after the failure went on.
    assert all(o.ok for o in first.outcomes if o.step.kind != "stripe")
    assert any(o.step.kind == "mailchimp" and o.status == "deleted" for o in first.outcomes)
    estate.stripe.faults.clear()
    shop_writes = {name: twin.writes for name, twin in estate.twins.items()}
    again, second = erase(synced, systems, settings, p.email)
    assert second.complete, [o.error for o in second.failed]
    assert [(s.kind, s.record_type) for s in again.changes] == [("stripe", "customer")]
    assert {name: twin.writes - shop_writes[name] for name, twin in estate.twins.items()} == {
        name: (1 if name == "stripe" else 0) for name in estate.twins}
    assert traces(estate, p) == {s.key for s in plan.kept}
    assert ledger_truth(synced) == estate_truth(estate)
    steps = [json.loads(e.detail) for e in trail_entries(synced, "erasure.step")]
    assert [s["status"] for s in steps if s["source"] == "stripe"] == ["failed", "deleted"]
    assert {s["request"] for s in steps} == {plan.request_id, again.request_id}


def test_a_run_killed_between_upstream_and_ledger_is_caught_up_by_the_next(
        running: RunningEstate, synced: Ledger, systems: Systems, settings: Settings) -> None:
    estate = running.estate
    p = person(estate, lambda q: OLD_COMPLETED_ORDER in q.tags and q.account_shops
               and not q.in_stripe)
    plan = make_plan(synced, systems, settings.retention, p.email, now=NOW)
    # As if a run had written upstream and died before the ledger heard of it.
    for step in plan.changes:
        if step.kind == "woocommerce" and step.action == DELETE:
            shop = estate.shops[step.source.split(":", 1)[1]]
            getattr(shop, f"delete_{step.record_type}")(int(step.external_id))
        elif step.kind == "woocommerce":
            estate.shops[step.source.split(":", 1)[1]].anonymise_order(int(step.external_id))
        else:
            estate.mailchimp.delete_permanent(step.source.split(":", 1)[1], step.external_id)
    assert {s.action for s in plan.changes} == {DELETE, ANONYMISE}
    assert synced.holdings_for(p.email, include_gone=False)
    again, result = erase(synced, systems, settings, p.email)
    assert result.complete and not again.changes
    assert result.caught_up == len(plan.changes)
    assert ledger_truth(synced) == estate_truth(estate)
    assert result.forgotten == (not again.kept)


def trail_entries(ledger: Ledger, action: str | None = None) -> list[AuditLogEntry]:
    with ledger.sessions() as session:
        query = select(AuditLogEntry).order_by(AuditLogEntry.id)
        if action is not None:
            query = query.where(AuditLogEntry.action == action)
        return list(session.scalars(query))


def test_trail_records_every_step_without_personal_values_and_shows_an_edited_row(
        running: RunningEstate, synced: Ledger, systems: Systems, settings: Settings) -> None:
    p = person(running.estate, everywhere)
    plan, result = erase(synced, systems, settings, p.email)
    assert result.complete
    entries = trail_entries(synced)
    ours = [e for e in entries if e.action.startswith("erasure.")]
    assert [e.action for e in ours] == (["erasure.plan"] + ["erasure.step"] * len(plan.changes)
                                        + ["erasure.done"])
    reference = person_ref(synced, p.email)
    member_ids = {s.external_id for s in plan.steps if s.kind == "mailchimp"}
    for entry in ours:
        detail = json.loads(entry.detail)
        assert detail["person"] == reference and detail["request"] == plan.request_id
        for value in (p.email, p.phone, p.last_name, p.address_1, *member_ids):
            assert value not in entry.detail
    assert json.loads(ours[-1].detail)["verified"] is True
    assert trail.verify(synced).ok
    step = next(e for e in ours if e.action == "erasure.step")
    with synced.session() as session:
        session.execute(text("UPDATE audit_log SET detail = :d WHERE id = :i"),
                        {"d": step.detail.replace('"deleted"', '"failed"')
                         .replace('"anonymised"', '"failed"'), "i": step.id})
    broken = trail.verify(synced)
    assert not broken.ok and broken.first_bad_id == step.id
    assert f"entry {step.id}" in (broken.problem or "")


def test_read_only_shop_key_fails_that_shop_clearly_and_the_rest_is_erased(
        running: RunningEstate, synced_lite: Ledger, systems: Systems, settings: Settings) -> None:
    estate = running.estate
    p = person(estate, everywhere)
    shop = p.account_shops[0]
    estate.shops[shop].permissions = "read"
    plan, result = erase(synced_lite, systems, settings, p.email)
    assert not result.complete
    failed = {o.step.source for o in result.failed}
    assert failed == {f"woo:{shop}"}
    assert all("does not have write permissions" in (o.error or "") and "Read/Write"
               in (o.error or "") for o in result.failed)
    assert {(o.step.source, o.status) for o in result.outcomes if o.ok} >= {
        ("stripe", "deleted")}
    left = {f.key for f in result.leftover}
    assert left == {s.key for s in plan.changes if s.source == f"woo:{shop}"}
    with synced_lite.sessions() as session:
        assert session.scalar(select(Subject.id).where(Subject.email == p.email)) is not None


def test_findings_of_erased_holdings_resolve_at_once_and_true_ones_stay(
        running: RunningEstate, synced: Ledger, systems: Systems, settings: Settings) -> None:
    estate = running.estate
    old_order = person(estate, lambda q: OLD_COMPLETED_ORDER in q.tags)
    network = person(estate, lambda q: OLD_NETWORK_DATA in q.tags)
    run_audit(synced, settings.retention, now=NOW)
    with synced.sessions() as session:
        theirs = list(session.scalars(
            select(Holding.id).join(Subject, Subject.id == Holding.subject_id)
            .where(Subject.email.in_([old_order.email, network.email]))))

    def open_findings(mine: bool) -> set[tuple[str, int, bool]]:
        with synced.sessions() as session:
            condition = Finding.holding_id.in_(theirs)
            return set(session.execute(
                select(Finding.rule, Finding.holding_id, Holding.anonymised)
                .join(Holding, Holding.id == Finding.holding_id)
                .where(Finding.resolved_at.is_(None), condition if mine else ~condition)
            ).tuples())

    before = open_findings(mine=True)
    others = open_findings(mine=False)
    assert {"order-past-retention", "network-data-past-retention"} <= {r for r, _, _ in before}
    for p in (old_order, network):
        _, result = erase(synced, systems, settings, p.email)
        assert result.complete, [o.error for o in result.failed]
    still = open_findings(mine=True)
    # Only network data stays, on anonymised orders: the REST API cannot clear an IP address.
    assert still and {rule for rule, _, _ in still} == {"network-data-past-retention"}
    assert all(anonymised for _, _, anonymised in still)
    assert {(r, h) for r, h, _ in still} < {(r, h) for r, h, _ in before}
    assert open_findings(mine=False) == others
    # The next audit agrees with what the erasure resolved.
    again = run_audit(synced, settings.retention, now=NOW)
    assert (again.new, again.resolved) == (0, 0)


def cli(config: Path, *args: str, **options: Any) -> Result:
    from daemon.cli import main

    return CliRunner().invoke(main, ["--config", str(config), *args], **options)


def test_erase_command_plans_asks_applies_and_refuses_bad_input(
        running: RunningEstate, tmp_path: Path, sqlite_url: str) -> None:
    estate = running.estate
    config = running.write_config(tmp_path / "config", ledger_url=sqlite_url)
    p = person(estate, everywhere)
    before = writes(estate)
    planned = cli(config, "erase", p.email)
    assert planned.exit_code == 0, planned.output
    assert f"Erasure plan for {p.email}" in planned.stdout
    assert "Nothing was changed" in planned.stdout and "KEEP" in planned.stdout
    cancelled = cli(config, "erase", p.email, "--apply", input="n\n")
    assert cancelled.exit_code == 1 and "Cancelled: nothing was changed" in cancelled.stdout
    assert writes(estate) == before
    applied = cli(config, "erase", p.email, "--apply", "--yes")
    assert applied.exit_code == 0, applied.output
    assert "Verified live: nothing personal" in applied.stdout
    assert writes(estate) > before
    assert p.email not in applied.stderr and p.phone not in applied.stderr
    again = cli(config, "erase", p.email, "--apply", "--yes")
    assert again.exit_code == 0 and "0 to delete, 0 to anonymise" in again.stdout
    bad = cli(config, "erase", "someone@", "--apply", "--yes")
    assert bad.exit_code == 2 and "is not an email address" in bad.output
    nowhere = cli(config, "erase", "never.seen@example.org")
    assert nowhere.exit_code == 0 and "is held nowhere" in nowhere.stdout
    verified = cli(config, "verify-log", "--person", p.email)
    assert verified.exit_code == 0 and "the hash chain is intact" in verified.stdout
    assert "erasure.done" in verified.stdout


# -- every form of an email, and only that person's ------------------------------------------


def test_command_erases_a_stripe_customer_held_with_capitals_and_never_synced(
        running: RunningEstate, tmp_path: Path, sqlite_url: str) -> None:
    stripe = running.estate.stripe
    config = running.write_config(tmp_path / "config", ledger_url=sqlite_url)
    assert cli(config, "sync", "--full").exit_code == 0
    # Created after the sync: only Stripe knows it, and its email filter is case-sensitive.
    customer = stripe.add_customer(email="Dana.Case@Example.com", name="Dana Case")
    applied = cli(config, "erase", "Dana.Case@Example.com", "--apply", "--yes")
    assert applied.exit_code == 0, applied.output
    assert f"DELETE    customer {customer}" in applied.stdout
    assert (stripe.customer(customer) or {}).get("deleted") is True
    assert "Verified live" in applied.stdout


def test_a_stripe_customer_in_a_form_nobody_typed_is_found_through_its_charge(
        running: RunningEstate, synced_lite: Ledger, systems: Systems,
        settings: Settings) -> None:
    stripe = running.estate.stripe
    customer = stripe.add_customer(email="Paid.Once@Example.COM", name="Paid Once")
    carrying = stripe.add_charge(customer=customer,
                                 billing_details={"email": "paid.once@example.com"})
    silent = stripe.add_charge(customer=customer, billing_details={"email": None})
    # Neither synced nor typed as Stripe holds it: only the charge's email says who it is.
    plan, result = erase(synced_lite, systems, settings, "paid.once@example.com")
    planned = {(s.record_type, s.external_id, s.action) for s in plan.steps}
    assert {("customer", customer, DELETE), ("charge", carrying, KEEP),
            ("charge", silent, KEEP)} <= planned
    assert result.complete and (stripe.customer(customer) or {}).get("deleted") is True


def test_decomposed_and_differently_cased_forms_are_erased_by_a_composed_request(
        running: RunningEstate, synced_lite: Ledger, systems: Systems,
        settings: Settings) -> None:
    estate = running.estate
    stripe, chimp = estate.stripe, estate.mailchimp
    audience = chimp.sources()[0].split(":", 1)[1]
    held = "Chloe\u0301.Durand@Example.org"           # NFD, capitals: as Stripe holds it
    customer = stripe.add_customer(email=held, name="Chloé Durand")
    charge = stripe.add_charge(customer=None, billing_details={"email": held})
    member = chimp.add_member(audience, "chloe\u0301.durand@example.org", first_name="Chloé")
    sync(synced_lite, settings)
    # Not synced and held only decomposed: found by the request's decomposed form.
    unsynced = chimp.add_member(chimp.sources()[1].split(":", 1)[1],
                                "Chloe\u0301.Durand@example.org")
    request = "chlo\u00e9.durand@example.org"           # NFC, as the person writes it
    plan, result = erase(synced_lite, systems, settings, request)
    assert result.complete, ([o.error for o in result.failed], result.leftover)
    planned = {(s.source, s.record_type, s.external_id) for s in plan.steps}
    assert ("stripe", "customer", customer) in planned
    assert ("stripe", "charge", charge) in planned
    assert (stripe.customer(customer) or {}).get("deleted") is True
    for source in chimp.sources():
        assert not any(ident in (member, unsynced) for _, ident, _ in
                       chimp.ground_truth(source))
    with synced_lite.sessions() as session:
        subjects = session.scalars(select(Subject.email)
                                   .where(Subject.email.like("%durand@example.org"))).all()
        forms = session.execute(text("SELECT form FROM email_forms")).scalars().all()
    # One person, whatever form each system holds (the kept charge keeps the subject); the
    # raw forms kept, only those that differ from the key (most are lower-case ASCII).
    assert subjects == ["chlo\u00e9.durand@example.org"]
    assert held in forms and len(forms) < len(estate.people) // 2


def test_a_kelvin_sign_mailbox_is_another_person_and_survives_erasing_k(
        running: RunningEstate, synced: Ledger, systems: Systems, settings: Settings) -> None:
    estate = running.estate
    stripe, shop = estate.stripe, estate.shops["allmyink"]
    kelvin, plain = "\u212aelvin.sign@example.org", "kelvin.sign@example.org"
    theirs = {email: (stripe.add_customer(email=email, name="K"),
                      str(shop.add_customer(email=email, first_name="K")))
              for email in (kelvin, plain)}
    kelvin_charge = stripe.add_charge(customer=theirs[kelvin][0],
                                      billing_details={"email": kelvin})
    sync(synced, settings)
    plan, result = erase(synced, systems, settings, plain)
    assert result.complete, [o.error for o in result.failed]
    erased = {s.external_id for s in plan.steps}
    assert theirs[plain][0] in erased and theirs[plain][1] in erased
    assert not erased & {theirs[kelvin][0], theirs[kelvin][1], kelvin_charge}
    assert stripe.customer(theirs[kelvin][0])["email"] == kelvin
    assert int(theirs[kelvin][1]) in shop.customers
    assert (stripe.customer(theirs[plain][0]) or {}).get("deleted") is True
    with synced.sessions() as session:
        subjects = set(session.scalars(select(Subject.email)
                                       .where(Subject.email.like("%elvin.sign@example.org"))))
    assert subjects == {kelvin}


def test_erasing_the_kelvin_sign_mailbox_leaves_the_mailchimp_member_of_k(
        running: RunningEstate, synced_lite: Ledger, systems: Systems,
        settings: Settings) -> None:
    estate = running.estate
    stripe, chimp = estate.stripe, estate.mailchimp
    kelvin, plain = "\u212aelvin.sign@example.org", "kelvin.sign@example.org"
    theirs = stripe.add_customer(email=kelvin, name="K")
    other = stripe.add_customer(email=plain, name="k")
    # Mailchimp names a member by the MD5 of the lower-cased address, and U+212A
    # lower-cases to k: asking for the Kelvin sign's hash answers k's member.
    audience = chimp.sources()[0].split(":", 1)[1]
    member = chimp.add_member(audience, plain)
    sync(synced_lite, settings)
    plan, result = erase(synced_lite, systems, settings, kelvin)
    assert result.complete, [o.error for o in result.failed]
    assert [(s.source, s.external_id) for s in plan.steps] == [("stripe", theirs)]
    assert (stripe.customer(theirs) or {}).get("deleted") is True
    assert stripe.customer(other)["email"] == plain
    assert chimp.member(audience, member)["email_address"] == plain


def test_subjects_split_by_the_old_key_are_merged_by_the_migration(ledger: Ledger) -> None:
    decomposed, composed = "chloe\u0301@example.org", "chlo\u00e9@example.org"
    with ledger.engine.begin() as connection:
        connection.execute(text("DROP TABLE email_forms"))
        connection.execute(text("UPDATE alembic_version SET version_num = '0003'"))
    with ledger.session() as session:
        source = ledger.source(session, "stripe", "stripe")
        for n, email in enumerate((decomposed, composed, "ada@example.org")):
            subject = Subject(email=email, first_seen=NOW + n * DAY, last_seen=NOW + n * DAY)
            session.add(subject)
            session.flush()
            session.add(Holding(source_id=source.id, record_type="customer",
                                external_id=f"cus_{n}", subject_id=subject.id,
                                categories=",email,", first_seen=NOW, last_seen=NOW))
    again = Ledger.open(ledger.engine.url.render_as_string(hide_password=False))
    try:
        with again.sessions() as session:
            subjects = session.execute(select(Subject.email, Subject.first_seen,
                                              Subject.last_seen).order_by(Subject.email)).all()
            owners = dict(session.execute(
                select(Holding.external_id, Subject.email)
                .join(Subject, Subject.id == Holding.subject_id)).all())
            forms = session.execute(text("SELECT form FROM email_forms")).scalars().all()
    finally:
        again.close()
    assert [s.email for s in subjects] == ["ada@example.org", composed]
    assert (subjects[1].first_seen, subjects[1].last_seen) == (NOW, NOW + DAY)
    assert owners == {"cus_0": composed, "cus_1": composed, "cus_2": "ada@example.org"}
    # The old key is a form the systems may hold (Mailchimp hashes exactly that).
    assert forms == [decomposed]


# -- erasure writes answered by something other than the API ---------------------------------

Answer = tuple[int, dict[str, str], bytes]


class Gate:
    """A loopback proxy in front of a twin, as a login wall or a misbehaving proxy would
    stand in front of the real API: every request is forwarded as it came (the Host header
    too: WooCommerce's OAuth signature covers it) unless `answer(method, path)` replies."""

    def __init__(self, target: str, answer: Callable[[str, str], Answer | None]) -> None:
        where = urlsplit(target)
        host, port = where.hostname or "127.0.0.1", where.port or 80

        class Handler(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                own = answer(self.command, self.path)
                if own is None:
                    upstream = http.client.HTTPConnection(host, port, timeout=30)
                    upstream.request(self.command, self.path, body or None,
                                     dict(self.headers.items()))
                    reply = upstream.getresponse()
                    own = (reply.status, {k: v for k, v in reply.getheaders()
                                          if k.lower() not in ("transfer-encoding",
                                                               "connection",
                                                               "content-length")},
                           reply.read())
                    upstream.close()
                status, headers, data = own
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _relay

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


LOGIN_PAGE = (b"<!DOCTYPE html><html><head><title>Log In</title></head><body>"
              b"<form name=\"loginform\" action=\"/wp-login.php\" method=\"post\"></form>"
              b"</body></html>")


def login_wall(method: str, path: str) -> Answer | None:
    """Writes are sent to a login page; the page itself answers 200 with HTML."""
    if path.startswith("/wp-login.php"):
        return 200, {"Content-Type": "text/html; charset=UTF-8"}, LOGIN_PAGE
    if method != "GET":
        return 302, {"Location": "/wp-login.php?redirect_to=%2Fwp-admin%2F"}, b""
    return None


@pytest.fixture
def gated(running: RunningEstate, tmp_path: Path) -> Iterator[Callable[..., Settings]]:
    """Settings whose sources (all, or those named) are reached through a Gate."""
    gates: list[Gate] = []

    def make(answer: Callable[[str, str], Answer | None],
             sources: tuple[str, ...] | None = None) -> Settings:
        config = running.write_config(tmp_path / f"gated-{len(gates)}")
        text_ = config.read_text(encoding="utf-8")
        for source in sources or tuple(running.servers):
            gate = Gate(running.url(source), answer)
            gates.append(gate)
            text_ = text_.replace(running.url(source), gate.url)
        config.write_text(text_, encoding="utf-8")
        return load_settings(config)

    yield make
    for gate in gates:
        gate.close()


def test_erasure_writes_redirected_to_a_login_page_are_failed_steps_never_deleted(
        running: RunningEstate, synced_lite: Ledger, gated: Callable[..., Settings]) -> None:
    estate = running.estate
    p = person(estate, everywhere)
    settings = gated(login_wall)
    before, truth = writes(estate), estate_truth(estate)
    with open_systems(settings, sleep=lambda _: None) as systems:
        plan, result = erase(synced_lite, systems, settings, p.email)
    assert plan.changes and len(result.outcomes) == len(plan.changes)
    assert all(o.status == "failed" and "redirect" in (o.error or "") for o in result.outcomes)
    assert {o.step.kind for o in result.outcomes} == {"woocommerce", "stripe", "mailchimp"}
    assert not result.complete and not result.forgotten
    assert writes(estate) == before and estate_truth(estate) == truth
    # Nothing upstream changed, so the ledger still holds every record.
    assert ledger_truth(synced_lite) == estate_truth(estate)
    assert "NOT COMPLETE" in "\n".join(erasure_lines(result))


def test_erasure_writes_answered_by_an_html_page_with_200_are_failed_steps(
        running: RunningEstate, synced_lite: Ledger, systems: Systems,
        settings: Settings) -> None:
    estate = running.estate
    p = person(estate, everywhere)
    for twin, method in ((estate.shops[p.account_shops[0]], "DELETE"),
                         (estate.stripe, "DELETE"), (estate.mailchimp, "POST")):
        twin.faults.inject("html", times=50, method=method)
    plan, result = erase(synced_lite, systems, settings, p.email)
    assert plan.changes
    failed = {o.step.kind for o in result.outcomes if o.status == "failed"}
    assert failed == {"woocommerce", "stripe", "mailchimp"}
    assert not any(o.status == "deleted" for o in result.outcomes
                   if o.step.kind in ("stripe", "mailchimp") or o.step.action == DELETE)
    assert not result.complete
    # What each failed step named is still upstream, and the ledger still holds it.
    left = {held[:3] for held in estate_truth(estate)}
    named = {o.step.key for o in result.failed}
    assert named <= left and named <= {held[:3] for held in ledger_truth(synced_lite)}


def test_verification_reads_each_changed_record_back_by_id(
        running: RunningEstate, synced_lite: Ledger, gated: Callable[..., Settings]) -> None:
    shop = running.estate.shops["allmyink"]
    email = "read.back@example.org"
    account = shop.add_customer(email=email, first_name="Read")
    # An order of the account under another billing email: found through the account only,
    # so once the account is gone no search finds it again.
    order = shop.add_order(customer_id=account, status="pending",
                           billing={"email": "paid.for.by@example.org"})

    def lost_delete(method: str, path: str) -> Answer | None:
        # A proxy that answers the order's deletion as the API would, and drops it.
        if method == "DELETE" and urlsplit(path).path.endswith(f"/orders/{order}"):
            return 200, {"Content-Type": "application/json"}, json.dumps(
                {"id": order, "status": "pending"}).encode()
        return None

    settings = gated(lost_delete, ("woo:allmyink",))
    with open_systems(settings, sleep=lambda _: None) as systems:
        plan, result = erase(synced_lite, systems, settings, email)
    assert {(s.record_type, s.external_id) for s in plan.changes} >= {
        ("customer", str(account)), ("order", str(order))}
    assert all(o.ok for o in result.outcomes)
    assert order in shop.orders and account not in shop.customers
    assert [(f.record_type, f.external_id) for f in result.leftover] == [("order", str(order))]
    assert not result.complete
    assert f"still held: woo:allmyink order {order}" in "\n".join(erasure_lines(result))


# -- the outbox forgets the person too -------------------------------------------------------


def test_a_digest_queued_before_the_erasure_is_withdrawn_and_never_delivered(
        running: RunningEstate, synced: Ledger, systems: Systems, settings: Settings) -> None:
    from aiosmtpd.controller import Controller

    from daemon import mail, report
    from daemon.config import ReportSettings, SmtpSettings
    from daemon.ledger import OutboxMessage
    from tests.integration.test_mail import Inbox, _free_port

    estate = running.estate
    run_audit(synced, settings.retention, now=NOW)
    digest = report.render_digest(synced, settings, NOW)
    p = next(p for p in estate.people if p.email in digest.text)
    addressing = ReportSettings(recipients=["owner@shop.example"], sender="ledger@shop.example")
    mail.enqueue(synced, digest, addressing, now=NOW)
    other = mail.RenderedEmail("a note", "nothing about anyone", "<p>nothing about anyone</p>")
    mail.enqueue(synced, other, addressing, now=NOW)
    # A copy already sent, naming the person: the ledger has no reason to keep it.
    mail.enqueue(synced, digest, addressing, now=NOW - DAY)
    with synced.session() as session:
        oldest = session.scalar(select(OutboxMessage.id).order_by(OutboxMessage.id.desc()))
        session.execute(OutboxMessage.__table__.update().where(OutboxMessage.id == oldest)
                        .values(status="sent", sent_at=NOW - DAY))
    _, result = erase(synced, systems, settings, p.email)
    inbox, port = Inbox(), _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        mail.deliver_pending(synced, SmtpSettings(host="127.0.0.1", port=port, security="none",
                                                  timeout=timedelta(seconds=5)), now=NOW)
    finally:
        controller.stop()
    assert [str(r.message["Subject"]) for r in inbox.received] == ["a note"]
    with synced.sessions() as session:
        left = session.scalars(select(OutboxMessage.subject)).all()
        done = json.loads(session.scalars(select(AuditLogEntry.detail).where(
            AuditLogEntry.action == "erasure.done")).all()[-1])
        withdrawn = session.scalars(select(AuditLogEntry.detail).where(
            AuditLogEntry.action == "email.withdrawn")).all()
    assert left == ["a note"]
    assert (result.mail_withdrawn, result.mail_deleted) == (1, 1)
    assert done["outbox"] == {"withdrawn": 1, "sent_deleted": 1}
    assert len(withdrawn) == 1 and p.email not in withdrawn[0]
    lines = "\n".join(erasure_lines(result))
    assert "1 queued email(s) naming the person withdrawn" in lines
