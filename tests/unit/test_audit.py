"""The retention audit: every rule at its boundary (a day inside, a day outside its period)
on SQLite and PostgreSQL, the findings' lifecycle, acknowledgements, and bad input."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from daemon import audit, trail
from daemon.audit import (
    RULES,
    AuditError,
    FindingNotFoundError,
    UnknownRuleError,
    UnknownSourceError,
    acknowledge,
    counts_by_rule,
    current_findings,
    resolved_since,
    run_audit,
)
from daemon.config import ConfigError, RetentionSettings, parse_settings
from daemon.ledger import (
    AuditLogEntry,
    Finding,
    Holding,
    Ledger,
    Source,
    Subject,
    SyncRun,
    categories_text,
)

NOW = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
DAY = timedelta(days=1)
POLICY = RetentionSettings()


class Estate:
    """Ledger rows written directly, as a sync would leave them."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def source(self, name: str, kind: str, *, created: datetime = NOW - 1000 * DAY,
               synced: datetime | None = NOW - timedelta(hours=1),
               gone: datetime | None = None) -> int:
        with self.ledger.session() as session:
            source = Source(name=name, kind=kind, created_at=created, gone_at=gone)
            session.add(source)
            session.flush()
            if synced is not None:
                self.sync_run(source.id, synced, "success", session=session)
            return source.id

    def sync_run(self, source_id: int, finished: datetime, status: str, *,
                 mode: str = "incremental", session: object = None) -> None:
        run = SyncRun(source_id=source_id, mode=mode, started_at=finished - timedelta(minutes=5),
                      finished_at=finished, status=status, records_seen=0, records_changed=0,
                      records_skipped=0, records_gone=0)
        if session is not None:
            session.add(run)  # type: ignore[attr-defined]
            return
        with self.ledger.session() as own:
            own.add(run)

    def subject(self, email: str) -> int:
        with self.ledger.session() as session:
            found = session.scalar(select(Subject.id).where(Subject.email == email))
            if found is not None:
                return found
            subject = Subject(email=email, first_seen=NOW - 3000 * DAY, last_seen=NOW)
            session.add(subject)
            session.flush()
            return subject.id

    def holding(self, source_id: int, record_type: str, external_id: str, *,
                email: str | None = "ada@example.com",
                categories: tuple[str, ...] = ("email", "name"), status: str | None = None,
                anonymised: bool = False, parent_id: str | None = None,
                created: datetime | None = NOW - 10 * DAY, activity: datetime | None = None,
                modified: datetime | None = None, gone: datetime | None = None,
                evidence: list[str] | None = None) -> int:
        subject_id = self.subject(email) if email else None
        with self.ledger.session() as session:
            holding = Holding(
                source_id=source_id, record_type=record_type, external_id=external_id,
                subject_id=subject_id, categories=categories_text(categories), status=status,
                anonymised=anonymised, parent_id=parent_id, created_at=created,
                last_activity_at=activity, modified_at=modified or activity or created,
                evidence=json.dumps(evidence) if evidence else None,
                first_seen=NOW - 3000 * DAY, last_seen=NOW - DAY, gone_at=gone)
            session.add(holding)
            session.flush()
            return holding.id

    def change(self, holding_id: int, **values: object) -> None:
        with self.ledger.session() as session:
            holding = session.get(Holding, holding_id)
            assert holding is not None
            for key, value in values.items():
                setattr(holding, key, value)


@pytest.fixture
def estate(ledger: Ledger) -> Estate:
    return Estate(ledger)


@pytest.fixture
def shop(estate: Estate) -> int:
    return estate.source("woo:allmyink", "woocommerce")


@pytest.fixture
def stripe(estate: Estate) -> int:
    return estate.source("stripe", "stripe")


@pytest.fixture
def mailchimp(estate: Estate) -> int:
    return estate.source("mailchimp:news", "mailchimp")


def found(ledger: Ledger, rule: str, *, now: datetime = NOW,
          policy: RetentionSettings = POLICY) -> set[str]:
    """The external ids (or "-" for a source) the rule finds now."""
    run_audit(ledger, policy, now=now, rules=[rule])
    return {f.external_id or f"-{f.source}" for f in current_findings(ledger, now=now,
                                                                      rules=[rule])}


# --- the rules, each at its boundary ----------------------------------------------------

def test_inactive_account_finds_an_account_idle_a_day_longer_than_its_period(
        ledger: Ledger, estate: Estate, shop: int) -> None:
    period = POLICY.inactive_accounts
    estate.holding(shop, "customer", "1", email="old@example.com", created=NOW - 3000 * DAY,
                   activity=NOW - period - DAY)
    estate.holding(shop, "customer", "2", email="recent@example.com",
                   created=NOW - 3000 * DAY, activity=NOW - period + DAY)
    estate.holding(shop, "customer", "3", email="never@example.com", activity=None,
                   created=NOW - period - DAY)
    assert found(ledger, "inactive-account") == {"1", "3"}


def test_inactive_account_spares_an_account_with_an_order_inside_the_period(
        ledger: Ledger, estate: Estate, shop: int) -> None:
    idle = NOW - POLICY.inactive_accounts - DAY
    estate.holding(shop, "customer", "1", email="a@example.com", activity=idle, created=idle)
    estate.holding(shop, "order", "100", email="a@example.com", parent_id="1",
                   status="completed", created=NOW - POLICY.inactive_accounts + DAY)
    # The same person ordering as a guest is activity too.
    estate.holding(shop, "customer", "2", email="b@example.com", activity=idle, created=idle)
    estate.holding(shop, "order", "101", email="b@example.com", status="completed",
                   created=NOW - 5 * DAY)
    # An order older than the period does not count.
    estate.holding(shop, "customer", "3", email="c@example.com", activity=idle, created=idle)
    estate.holding(shop, "order", "102", email="c@example.com", parent_id="3",
                   status="completed", created=NOW - POLICY.inactive_accounts - DAY)
    assert found(ledger, "inactive-account") == {"3"}


def test_inactive_account_ignores_anonymised_gone_and_other_records(
        ledger: Ledger, estate: Estate, shop: int, stripe: int) -> None:
    idle = NOW - POLICY.inactive_accounts - DAY
    estate.holding(shop, "customer", "1", activity=idle, created=idle, anonymised=True)
    estate.holding(shop, "customer", "2", activity=idle, created=idle, gone=NOW - DAY)
    estate.holding(stripe, "customer", "cus_1", activity=idle, created=idle)
    assert found(ledger, "inactive-account") == set()


@pytest.mark.parametrize("status, parameter", sorted(audit.COMPLETED_STATUSES.items()))
def test_order_past_retention_finds_an_order_a_day_past_its_period(
        ledger: Ledger, estate: Estate, shop: int, status: str, parameter: str) -> None:
    period = getattr(POLICY, parameter)
    estate.holding(shop, "order", "1", status=status, created=NOW - period - DAY)
    estate.holding(shop, "order", "2", status=status, created=NOW - period + DAY)
    estate.holding(shop, "order", "3", status=status, created=NOW - period - DAY,
                   anonymised=True)
    estate.holding(shop, "order", "4", email=None, status=status,
                   created=NOW - period - DAY)
    assert found(ledger, "order-past-retention") == {"1", "4"}


def test_order_past_retention_uses_each_status_period(ledger: Ledger, estate: Estate,
                                                      shop: int) -> None:
    policy = RetentionSettings(completed_orders="6y", refunded_orders="1y")
    estate.holding(shop, "order", "1", status="completed", created=NOW - 400 * DAY)
    estate.holding(shop, "order", "2", status="refunded", created=NOW - 400 * DAY)
    estate.holding(shop, "order", "3", status="processing", created=NOW - 4000 * DAY)
    assert found(ledger, "order-past-retention", policy=policy) == {"2"}


@pytest.mark.parametrize("status, parameter", sorted(audit.UNPAID_STATUSES.items()))
def test_unpaid_order_past_retention_finds_an_order_a_day_past_its_status_period(
        ledger: Ledger, estate: Estate, shop: int, status: str, parameter: str) -> None:
    period = getattr(POLICY, parameter)
    estate.holding(shop, "order", "1", status=status, created=NOW - period - DAY)
    estate.holding(shop, "order", "2", status=status, created=NOW - period + DAY)
    estate.holding(shop, "order", "3", status="completed", created=NOW - period - DAY)
    assert found(ledger, "unpaid-order-past-retention") == {"1"}


def test_network_data_past_retention_finds_ip_or_user_agent_a_day_past_its_period(
        ledger: Ledger, estate: Estate, shop: int) -> None:
    old, young = NOW - POLICY.network_data - DAY, NOW - POLICY.network_data + DAY
    estate.holding(shop, "order", "1", categories=("email", "ip_address"), created=old,
                   status="completed")
    estate.holding(shop, "order", "2", categories=("email", "user_agent"), created=old,
                   status="completed")
    estate.holding(shop, "order", "3", categories=("email", "ip_address", "user_agent"),
                   created=young, status="completed")
    estate.holding(shop, "order", "4", categories=("email", "name"), created=old,
                   status="completed")
    assert found(ledger, "network-data-past-retention") == {"1", "2"}
    details = {f.external_id: f.detail for f in current_findings(ledger, now=NOW)}
    assert details["1"].startswith("IP address still stored")
    assert details["2"].startswith("user agent still stored")


def test_processor_copy_orphaned_finds_a_copy_of_someone_no_shop_ever_held_after_the_grace(
        ledger: Ledger, estate: Estate, shop: int, stripe: int) -> None:
    grace = POLICY.processor_copies
    estate.holding(stripe, "customer", "cus_old", email="old@example.com",
                   created=NOW - grace - DAY)
    estate.holding(stripe, "customer", "cus_new", email="new@example.com",
                   created=NOW - grace + DAY)
    estate.holding(stripe, "customer", "cus_held", email="held@example.com",
                   created=NOW - 400 * DAY)
    estate.holding(shop, "order", "1", email="held@example.com", status="completed")
    assert found(ledger, "processor-copy-orphaned") == {"cus_old"}


def test_processor_copy_orphaned_counts_the_grace_from_when_the_shop_let_go(
        ledger: Ledger, estate: Estate, shop: int, stripe: int, mailchimp: int) -> None:
    grace = POLICY.processor_copies
    for who, left in (("gone-long", NOW - grace - DAY), ("gone-lately", NOW - grace + DAY)):
        email = f"{who}@example.com"
        estate.holding(shop, "customer", who, email=email, gone=left)
        estate.holding(stripe, "customer", f"cus_{who}", email=email, created=NOW - 900 * DAY)
        estate.holding(mailchimp, "member", f"m_{who}", email=email, status="subscribed",
                       created=NOW - 900 * DAY)
    # Anonymised by the shop: let go when the record last changed.
    estate.holding(shop, "order", "7", email="anon@example.com", anonymised=True,
                   status="completed", modified=NOW - grace - DAY)
    estate.holding(stripe, "customer", "cus_anon", email="anon@example.com",
                   created=NOW - 900 * DAY)
    assert found(ledger, "processor-copy-orphaned") == {"cus_gone-long", "m_gone-long",
                                                        "cus_anon"}


def test_processor_copy_orphaned_leaves_newsletter_subscribers_to_their_own_consent(
        ledger: Ledger, estate: Estate, shop: int, stripe: int, mailchimp: int) -> None:
    old = NOW - POLICY.processor_copies - DAY
    estate.holding(mailchimp, "member", "m_sub", email="sub@example.com", status="subscribed",
                   created=old)
    estate.holding(mailchimp, "member", "m_unsub", email="unsub@example.com",
                   status="unsubscribed", created=old)
    # Buyers Mailchimp for WooCommerce added without consent, and people Stripe holds
    # (payments come from the shops), were shop customers: their copies are orphaned.
    estate.holding(mailchimp, "member", "m_trans", email="trans@example.com",
                   status="transactional", created=old)
    estate.holding(mailchimp, "member", "m_paid", email="paid@example.com",
                   status="subscribed", created=old)
    estate.holding(stripe, "charge", "ch_1", email="paid@example.com", created=old)
    assert found(ledger, "processor-copy-orphaned") == {"m_trans", "m_paid"}


def test_processor_copy_orphaned_ignores_a_shop_source_that_is_gone(
        ledger: Ledger, estate: Estate, stripe: int) -> None:
    closed = estate.source("woo:closed", "woocommerce", gone=NOW - 400 * DAY)
    estate.holding(closed, "customer", "1", email="a@example.com")
    estate.holding(stripe, "customer", "cus_1", email="a@example.com", created=NOW - 400 * DAY)
    assert found(ledger, "processor-copy-orphaned") == {"cus_1"}


def test_processor_copy_orphaned_query_shapes_find_the_same_copies(
        ledger: Ledger, estate: Estate, shop: int, stripe: int, mailchimp: int) -> None:
    grace = POLICY.processor_copies
    for index, (left, anonymised, status) in enumerate([
            (None, False, "subscribed"), (NOW - grace - DAY, False, "subscribed"),
            (NOW - grace + DAY, False, "transactional"), (None, True, "subscribed"),
            (NOW - 400 * DAY, True, "unsubscribed")]):
        email = f"p{index}@example.com"
        estate.holding(shop, "order", str(index), email=email, gone=left, anonymised=anonymised,
                       status="completed", modified=NOW - 400 * DAY)
        estate.holding(stripe, "customer", f"cus_{index}", email=email, created=NOW - 900 * DAY)
        estate.holding(mailchimp, "member", f"m_{index}", email=email, status=status,
                       created=NOW - 900 * DAY)
    for index, status in enumerate(("subscribed", "transactional", "pending")):
        estate.holding(mailchimp, "member", f"only_{index}", email=f"o{index}@example.com",
                       status=status, created=NOW - 900 * DAY)
    rule = RULES["processor-copy-orphaned"]
    with ledger.sessions() as session:
        shapes = {dialect: {row.target for row in session.execute(rule.query(POLICY, NOW,
                                                                             dialect))}
                  for dialect in ("sqlite", "postgresql")}
    assert shapes["sqlite"] == shapes["postgresql"]
    assert found(ledger, "processor-copy-orphaned") == {
        "cus_1", "m_1", "cus_3", "m_3", "cus_4", "m_4", "only_1"}


def test_stripe_customer_inactive_finds_a_customer_whose_last_charge_is_a_day_too_old(
        ledger: Ledger, estate: Estate, stripe: int) -> None:
    period = POLICY.stripe_customers
    estate.holding(stripe, "customer", "cus_1", email="a@example.com",
                   created=NOW - 2000 * DAY)
    estate.holding(stripe, "charge", "ch_1", email="a@example.com", parent_id="cus_1",
                   created=NOW - period - DAY)
    estate.holding(stripe, "customer", "cus_2", email="b@example.com",
                   created=NOW - 2000 * DAY)
    estate.holding(stripe, "charge", "ch_2", email="b@example.com", parent_id="cus_2",
                   created=NOW - period + DAY)
    # No charge at all, but the customer itself is younger than the period.
    estate.holding(stripe, "customer", "cus_3", email="c@example.com",
                   created=NOW - period + DAY)
    estate.holding(stripe, "customer", "cus_4", email="d@example.com",
                   created=NOW - period - DAY)
    # A recent charge of the same person without the customer (a guest payment).
    estate.holding(stripe, "customer", "cus_5", email="e@example.com",
                   created=NOW - 2000 * DAY)
    estate.holding(stripe, "charge", "ch_5", email="e@example.com", created=NOW - DAY)
    assert found(ledger, "stripe-customer-inactive") == {"cus_1", "cus_4"}


@pytest.mark.parametrize("status", audit.RETAINED_CONTACT_STATUSES)
def test_mailchimp_contact_retained_finds_a_contact_a_day_past_its_period(
        ledger: Ledger, estate: Estate, mailchimp: int, status: str) -> None:
    period = POLICY.mailchimp_contacts
    estate.holding(mailchimp, "member", "m1", email="a@example.com", status=status,
                   activity=NOW - period - DAY, created=NOW - 3000 * DAY)
    estate.holding(mailchimp, "member", "m2", email="b@example.com", status=status,
                   activity=NOW - period + DAY, created=NOW - 3000 * DAY)
    estate.holding(mailchimp, "member", "m3", email="c@example.com", status="subscribed",
                   activity=NOW - period - DAY, created=NOW - 3000 * DAY)
    assert found(ledger, "mailchimp-contact-retained") == {"m1"}


def test_card_number_exposed_finds_any_live_holding_with_a_card_number(
        ledger: Ledger, estate: Estate, shop: int) -> None:
    estate.holding(shop, "order", "1", categories=("card_number", "email", "free_text"),
                   status="processing", created=NOW - DAY,
                   evidence=["card number pattern in customer_note"])
    estate.holding(shop, "order", "2", categories=("card_last4", "email"), status="completed")
    estate.holding(shop, "order", "3", categories=("card_number", "email"),
                   status="completed", gone=NOW - DAY)
    assert found(ledger, "card-number-exposed") == {"1"}
    [finding] = current_findings(ledger, now=NOW)
    assert finding.detail == "card number pattern in customer_note"
    assert finding.action == ("remove the card number from order 1 in allmyink and tell "
                              "the customer")


def test_sync_stale_finds_a_source_whose_last_success_is_a_day_past_its_period(
        ledger: Ledger, estate: Estate) -> None:
    period = POLICY.sync_stale
    stale = estate.source("woo:stale", "woocommerce", synced=NOW - period - DAY)
    estate.sync_run(stale, NOW - timedelta(hours=1), "failed")
    estate.source("woo:fresh", "woocommerce", synced=NOW - period + DAY)
    estate.source("never-old", "stripe", synced=None, created=NOW - period - DAY)
    estate.source("mailchimp:new", "mailchimp", synced=None, created=NOW - period + DAY)
    estate.source("woo:closed", "woocommerce", synced=NOW - 100 * DAY, gone=NOW - 50 * DAY)
    assert found(ledger, "sync-stale") == {"-woo:stale", "-never-old"}
    details = {f.source: f.detail for f in current_findings(ledger, now=NOW)}
    assert details == {"woo:stale": "no successful sync for more than 2d",
                       "never-old": "never synced successfully"}


def test_sync_stale_does_not_count_a_reconciliation_as_a_sync(ledger: Ledger,
                                                              estate: Estate) -> None:
    source = estate.source("stripe", "stripe", synced=NOW - 10 * DAY)
    estate.sync_run(source, NOW - DAY, "success", mode="reconcile")
    assert found(ledger, "sync-stale") == {"-stripe"}


def test_no_rule_finds_a_holding_that_is_gone_or_of_a_source_that_is_gone(
        ledger: Ledger, estate: Estate) -> None:
    long_ago = NOW - 4000 * DAY
    closed = estate.source("woo:closed", "woocommerce", gone=NOW - DAY)
    live = estate.source("woo:live", "woocommerce")
    for source in (closed, live):
        gone = None if source == closed else NOW - DAY
        estate.holding(source, "order", "1", status="pending", created=long_ago, gone=gone,
                       categories=("card_number", "ip_address"))
        estate.holding(source, "customer", "2", created=long_ago, activity=long_ago, gone=gone)
    result = run_audit(ledger, POLICY, now=NOW)
    assert result.current == 0
    assert current_findings(ledger, now=NOW) == []


# --- findings over time -----------------------------------------------------------------

def test_findings_go_from_new_to_open_to_resolved_when_the_order_is_anonymised(
        ledger: Ledger, estate: Estate, shop: int) -> None:
    order = estate.holding(shop, "order", "1", status="completed", created=NOW - 7 * 365 * DAY)
    first = run_audit(ledger, POLICY, now=NOW, rules=["order-past-retention"])
    assert (first.new, first.ongoing, first.resolved) == (1, 0, 0)
    [view] = current_findings(ledger, now=NOW)
    assert (view.status, view.first_detected, view.last_detected) == ("new", NOW, NOW)

    second = run_audit(ledger, POLICY, now=NOW + DAY, rules=["order-past-retention"])
    assert (second.new, second.ongoing, second.resolved) == (0, 1, 0)
    [view] = current_findings(ledger, now=NOW + DAY)
    assert (view.status, view.first_detected, view.last_detected) == ("open", NOW, NOW + DAY)

    estate.change(order, anonymised=True)
    third = run_audit(ledger, POLICY, now=NOW + 2 * DAY, rules=["order-past-retention"])
    assert (third.new, third.ongoing, third.resolved) == (0, 0, 1)
    assert current_findings(ledger, now=NOW + 2 * DAY) == []
    [resolved] = resolved_since(ledger, NOW + DAY + timedelta(seconds=1))
    assert (resolved.status, resolved.external_id, resolved.resolved_at) == (
        "resolved", "1", NOW + 2 * DAY)


def test_a_finding_resolves_when_its_holding_is_gone(ledger: Ledger, estate: Estate,
                                                     shop: int) -> None:
    order = estate.holding(shop, "order", "1", status="pending", created=NOW - 400 * DAY)
    run_audit(ledger, POLICY, now=NOW)
    estate.change(order, gone_at=NOW + timedelta(hours=1))
    result = run_audit(ledger, POLICY, now=NOW + DAY)
    assert result.resolved == 1
    assert resolved_since(ledger, NOW + DAY)[0].rule == "unpaid-order-past-retention"


def test_a_finding_that_comes_back_is_new_again_and_loses_its_acknowledgement(
        ledger: Ledger, estate: Estate, shop: int) -> None:
    rules = ["unpaid-order-past-retention"]
    order = estate.holding(shop, "order", "1", status="pending", created=NOW - 400 * DAY)
    run_audit(ledger, POLICY, now=NOW, rules=rules)
    acknowledge(ledger, "unpaid-order-past-retention", "woo:allmyink", "1",
                reason="disputed", now=NOW)
    estate.change(order, status="completed")
    run_audit(ledger, POLICY, now=NOW + DAY, rules=rules)
    estate.change(order, status="failed")
    back = run_audit(ledger, POLICY, now=NOW + 2 * DAY, rules=rules)
    assert back.new == 1
    [view] = current_findings(ledger, now=NOW + 2 * DAY)
    assert (view.status, view.first_detected, view.ack_reason) == ("new", NOW + 2 * DAY, None)


def test_running_one_rule_leaves_the_findings_of_the_others_alone(
        ledger: Ledger, estate: Estate, shop: int) -> None:
    estate.holding(shop, "order", "1", status="pending", created=NOW - 400 * DAY,
                   categories=("card_number", "email"))
    run_audit(ledger, POLICY, now=NOW)
    result = run_audit(ledger, POLICY, now=NOW + DAY, rules=["sync-stale"])
    assert result.resolved == 0
    assert {f.rule for f in current_findings(ledger, now=NOW + DAY)} == {
        "unpaid-order-past-retention", "card-number-exposed"}


def test_each_audit_appends_one_trail_entry_with_counts_and_no_personal_values(
        ledger: Ledger, estate: Estate, shop: int) -> None:
    estate.holding(shop, "order", "1", email="secret.person@example.com", status="pending",
                   created=NOW - 400 * DAY)
    run_audit(ledger, POLICY, now=NOW)
    run_audit(ledger, POLICY, now=NOW + DAY)
    with ledger.sessions() as session:
        entries = session.scalars(select(AuditLogEntry).where(AuditLogEntry.action == "audit")
                                  .order_by(AuditLogEntry.id)).all()
    assert len(entries) == 2
    detail = json.loads(entries[0].detail)
    assert detail["rules"]["unpaid-order-past-retention"] == {"current": 1, "new": 1,
                                                              "resolved": 0}
    assert (detail["new"], detail["ongoing"], detail["resolved"]) == (1, 0, 0)
    assert json.loads(entries[1].detail)["ongoing"] == 1
    assert "secret.person" not in entries[0].detail
    assert trail.verify(ledger).ok


def test_findings_are_listed_most_severe_first_with_the_email_and_an_action(
        ledger: Ledger, estate: Estate, shop: int, stripe: int, mailchimp: int) -> None:
    estate.holding(shop, "order", "1", email="ada@example.com", status="completed",
                   created=NOW - 7 * 365 * DAY)
    estate.holding(shop, "order", "2", status="processing", categories=("card_number",))
    estate.holding(stripe, "customer", "cus_9", email="ben@example.com",
                   created=NOW - 900 * DAY)
    estate.holding(mailchimp, "member", "m1", email="cy@example.com", status="cleaned",
                   activity=NOW - 800 * DAY)
    run_audit(ledger, POLICY, now=NOW)
    views = current_findings(ledger, now=NOW)
    assert [(v.severity, v.rule) for v in views] == [
        ("high", "processor-copy-orphaned"), ("high", "card-number-exposed"),
        ("medium", "order-past-retention"), ("medium", "stripe-customer-inactive"),
        ("low", "mailchimp-contact-retained")]
    actions = {v.rule: v.action for v in views}
    assert actions["order-past-retention"] == "anonymise order 1 in allmyink"
    assert actions["stripe-customer-inactive"] == "delete the Stripe customer cus_9"
    assert actions["mailchimp-contact-retained"] == (
        "permanently delete the Mailchimp contact cy@example.com in audience news")
    assert views[2].email == "ada@example.com"
    assert list(views[0].to_json()) == ["rule", "severity", "source", "record_type",
                                        "external_id", "email", "first_detected",
                                        "last_detected", "status", "detail"]
    assert views[0].to_json()["first_detected"] == "2026-11-01T06:00:00Z"
    lines = audit.format_findings(views)
    assert any("→ anonymise order 1 in allmyink" in line for line in lines)


def test_current_findings_filters_by_source_name_or_shop_name(
        ledger: Ledger, estate: Estate, shop: int, stripe: int) -> None:
    estate.holding(shop, "order", "1", status="pending", created=NOW - 400 * DAY)
    estate.holding(stripe, "customer", "cus_1", email="x@example.com", created=NOW - 900 * DAY)
    run_audit(ledger, POLICY, now=NOW)
    assert {v.source for v in current_findings(ledger, now=NOW, sources=["allmyink"])} == {
        "woo:allmyink"}
    assert {v.source for v in current_findings(ledger, now=NOW, sources=["stripe"])} == {
        "stripe"}
    with pytest.raises(UnknownSourceError, match="'nowhere'.*woo:allmyink"):
        current_findings(ledger, now=NOW, sources=["nowhere"])


# --- acknowledgements -------------------------------------------------------------------

def test_an_acknowledged_finding_stays_listed_and_stops_counting_as_new(
        ledger: Ledger, estate: Estate, shop: int) -> None:
    estate.holding(shop, "order", "1", status="pending", created=NOW - 400 * DAY)
    run_audit(ledger, POLICY, now=NOW)
    view = acknowledge(ledger, "unpaid-order-past-retention", "allmyink", "1",
                       reason="  legal   hold ", now=NOW + timedelta(hours=1))
    assert (view.status, view.ack_reason) == ("acknowledged", "legal hold")
    run_audit(ledger, POLICY, now=NOW + DAY)
    [listed] = current_findings(ledger, now=NOW + DAY)
    assert listed.status == "acknowledged"
    counts = counts_by_rule(ledger, now=NOW + DAY)
    assert counts["unpaid-order-past-retention"] == {"new": 0, "open": 0, "acknowledged": 1}
    with ledger.sessions() as session:
        entry = session.scalars(select(AuditLogEntry)
                                .where(AuditLogEntry.action == "ack")).one()
    detail = json.loads(entry.detail)
    assert detail["reason_sha256"] == hashlib.sha256(b"legal hold").hexdigest()
    assert (detail["rule"], detail["source"], detail["external_id"]) == (
        "unpaid-order-past-retention", "woo:allmyink", "1")
    assert trail.verify(ledger).ok


def test_an_acknowledgement_with_an_end_expires_into_open(ledger: Ledger, estate: Estate,
                                                          shop: int) -> None:
    rules = ["unpaid-order-past-retention"]
    estate.holding(shop, "order", "1", status="pending", created=NOW - 400 * DAY)
    run_audit(ledger, POLICY, now=NOW, rules=rules)
    until = audit.until_end_of("2026-11-10", now=NOW)
    assert until == datetime(2026, 11, 11, tzinfo=UTC)
    acknowledge(ledger, "unpaid-order-past-retention", "woo:allmyink", "1",
                reason="dispute", until=until, now=NOW)
    inside = NOW.replace(day=10, hour=23)
    run_audit(ledger, POLICY, now=inside, rules=rules)
    assert [f.status for f in current_findings(ledger, now=inside)] == ["acknowledged"]
    after = datetime(2026, 11, 11, 0, 0, 1, tzinfo=UTC)
    run_audit(ledger, POLICY, now=after, rules=rules)
    assert [f.status for f in current_findings(ledger, now=after)] == ["open"]


def test_a_source_finding_is_acknowledged_with_a_dash(ledger: Ledger, estate: Estate) -> None:
    estate.source("stripe", "stripe", synced=NOW - 10 * DAY)
    run_audit(ledger, POLICY, now=NOW)
    view = acknowledge(ledger, "sync-stale", "stripe", "-", reason="key rotation", now=NOW)
    assert (view.rule, view.source, view.status) == ("sync-stale", "stripe", "acknowledged")


def test_acknowledging_a_finding_that_does_not_exist_names_rule_source_and_id(
        ledger: Ledger, estate: Estate, shop: int) -> None:
    estate.holding(shop, "order", "1", status="pending", created=NOW - 400 * DAY)
    run_audit(ledger, POLICY, now=NOW)
    with pytest.raises(FindingNotFoundError,
                       match="no current order-past-retention finding for woo:allmyink 1"):
        acknowledge(ledger, "order-past-retention", "allmyink", "1", reason="x", now=NOW)
    with pytest.raises(FindingNotFoundError, match="woo:allmyink 99"):
        acknowledge(ledger, "unpaid-order-past-retention", "allmyink", "99", reason="x",
                    now=NOW)


def test_acknowledging_asks_for_the_record_type_when_an_id_is_ambiguous(
        ledger: Ledger, estate: Estate, shop: int) -> None:
    for record_type in ("customer", "order"):
        estate.holding(shop, record_type, "12", categories=("card_number",), status="pending")
    run_audit(ledger, POLICY, now=NOW)
    with pytest.raises(AuditError, match="--record-type"):
        acknowledge(ledger, "card-number-exposed", "allmyink", "12", reason="x", now=NOW)
    view = acknowledge(ledger, "card-number-exposed", "allmyink", "12", reason="x",
                       record_type="order", now=NOW)
    assert view.record_type == "order"


def test_acknowledging_rejects_unknown_rules_empty_reasons_and_past_ends(
        ledger: Ledger, estate: Estate, shop: int) -> None:
    with pytest.raises(UnknownRuleError, match="'no-such-rule'.*inactive-account"):
        acknowledge(ledger, "no-such-rule", "allmyink", "1", reason="x", now=NOW)
    with pytest.raises(AuditError, match="--reason is empty"):
        acknowledge(ledger, "sync-stale", "allmyink", "-", reason="  ", now=NOW)
    with pytest.raises(AuditError, match="in the past"):
        acknowledge(ledger, "sync-stale", "allmyink", "-", reason="x", now=NOW,
                    until=NOW - DAY)
    with pytest.raises(UnknownSourceError, match="no source 'nowhere'"):
        acknowledge(ledger, "sync-stale", "nowhere", "-", reason="x", now=NOW)


# --- the rules themselves and the policy ------------------------------------------------

def test_every_rule_names_a_gdpr_principle_a_severity_and_a_policy_parameter() -> None:
    parameters = set(RetentionSettings.model_fields)
    assert list(RULES) == [
        "inactive-account", "order-past-retention", "unpaid-order-past-retention",
        "network-data-past-retention", "processor-copy-orphaned", "stripe-customer-inactive",
        "mailchimp-contact-retained", "card-number-exposed",
        "comment-network-data-past-retention", "comment-kept-in-spam-or-trash",
        "inactive-site-account", "sync-stale", "erased-person-reappeared", "request-overdue",
        # The promises of [policy] (daemon/policy.py).
        "category-not-declared", "processor-not-named", "plugin-unclassified",
        "shop-cleanup-off", "shop-cleanup-not-running"]
    for rule in RULES.values():
        assert rule.reason.startswith("Art. ")
        assert rule.severity in audit.SEVERITIES
        assert rule.parameter is None or rule.parameter in parameters
        assert "\n" not in rule.reason


def test_unknown_rule_ids_are_rejected_with_the_known_ones(ledger: Ledger) -> None:
    with pytest.raises(UnknownRuleError, match="unknown rule 'stale'; the rules are: "
                                               "inactive-account, order-past-retention"):
        run_audit(ledger, POLICY, now=NOW, rules=["stale"])


@pytest.mark.parametrize("value, message", [
    ("6", "'6' is not a period"),
    (6, "6 has no unit"),
    ("-5d", "'-5d' is negative"),
    ("six years", "'six years' is not a period"),
])
def test_retention_periods_without_unit_or_negative_are_rejected_naming_the_key(
        value: object, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_settings({"retention": {"completed_orders": value}})
    [problem] = error.value.problems
    assert "retention.completed_orders" in problem
    assert message in problem


def test_retention_periods_take_days_months_and_years() -> None:
    settings = parse_settings({"retention": {"completed_orders": "6y",
                                             "cancelled_orders": "18mo",
                                             "pending_orders": "90d"}})
    assert settings.retention.completed_orders == timedelta(days=6 * 365)
    assert settings.retention.cancelled_orders == timedelta(days=540)
    assert settings.retention.pending_orders == timedelta(days=90)
    assert [audit.format_period(p) for p in (timedelta(days=2190), timedelta(days=540),
                                             timedelta(days=90), timedelta(hours=12))] == [
        "6y", "18mo", "90d", "12h"]


def test_repeated_audits_keep_one_finding_per_rule_and_target(ledger: Ledger, estate: Estate,
                                                              shop: int) -> None:
    estate.holding(shop, "order", "1", status="pending", created=NOW - 400 * DAY,
                   categories=("card_number", "ip_address"))
    rules = [rule for rule in RULES if rule != "sync-stale"]
    for day in range(3):
        run_audit(ledger, POLICY, now=NOW + day * DAY, rules=rules)
    with ledger.sessions() as session:
        rows = session.execute(select(Finding.rule, Finding.last_detected)).tuples().all()
    assert sorted(rows) == [("card-number-exposed", NOW + 2 * DAY),
                            ("network-data-past-retention", NOW + 2 * DAY),
                            ("unpaid-order-past-retention", NOW + 2 * DAY)]
