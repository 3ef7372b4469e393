"""The nightly digest: figures computed from ledger rows built here, on SQLite and PostgreSQL,
and the three templates rendered from them (including for a hostile estate)."""

from __future__ import annotations

import email
import email.policy
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest
from sqlalchemy import select

from connectors.stripe.system import dashboard
from daemon import report
from daemon.ledger import (
    Finding,
    Holding,
    Ledger,
    OutboxMessage,
    Source,
    Subject,
    SyncRun,
    categories_text,
)
from daemon.mail import RenderedEmail, build_message

NOW = datetime(2025, 3, 4, 6, 0, tzinfo=UTC)
DAY = timedelta(days=1)


class Estate:
    """Ledger rows written directly: sources, people, holdings, sync runs, findings."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.sources: dict[str, int] = {}
        self.subjects: dict[str, int] = {}

    def source(self, name: str, *, synced: datetime | None = NOW - timedelta(hours=2),
               seen: int = 10) -> int:
        kind = {"woo": "woocommerce"}.get(name.split(":")[0], name.split(":")[0])
        with self.ledger.session() as session:
            row = Source(name=name, kind=kind, created_at=NOW - 400 * DAY)
            session.add(row)
            session.flush()
            self.sources[name] = row.id
        if synced is not None:
            self.run(name, "success", synced, seen=seen)
        return self.sources[name]

    def run(self, name: str, status: str, finished: datetime, *, error: str | None = None,
            seen: int = 10) -> None:
        with self.ledger.session() as session:
            session.add(SyncRun(source_id=self.sources[name], mode="incremental",
                                started_at=finished - timedelta(minutes=5),
                                finished_at=finished, status=status, records_seen=seen,
                                error=error))

    def holding(self, source: str, record_type: str, external_id: str, address: str | None,
                categories: tuple[str, ...] = ("email", "name"), *, gone: bool = False,
                status: str | None = None) -> int:
        with self.ledger.session() as session:
            subject_id = None
            if address is not None:
                subject_id = self.subjects.get(address)
                if subject_id is None:
                    subject = Subject(email=address, first_seen=NOW - 300 * DAY,
                                      last_seen=NOW)
                    session.add(subject)
                    session.flush()
                    subject_id = self.subjects[address] = subject.id
            row = Holding(source_id=self.sources[source], record_type=record_type,
                          external_id=external_id, subject_id=subject_id,
                          categories=categories_text(categories), status=status,
                          anonymised=False, first_seen=NOW - 300 * DAY, last_seen=NOW,
                          gone_at=NOW - DAY if gone else None)
            session.add(row)
            session.flush()
            return row.id

    def finding(self, rule: str, holding_id: int | None = None, *, source: str | None = None,
                first: datetime = NOW - timedelta(hours=1), resolved: datetime | None = None,
                acknowledged: datetime | None = None, ack_until: datetime | None = None,
                detail: str | None = None, severity: str = "medium") -> None:
        with self.ledger.session() as session:
            source_id = self.sources[source] if source else None
            subject_id = None
            if holding_id is not None:
                held = session.get(Holding, holding_id)
                source_id, subject_id = held.source_id, held.subject_id
            target = f"holding:{holding_id}" if holding_id else f"source:{source_id}"
            session.add(Finding(rule=rule, target=target, holding_id=holding_id,
                                subject_id=subject_id, source_id=source_id, severity=severity,
                                first_detected=first, last_detected=NOW, resolved_at=resolved,
                                detail=detail, acknowledged_at=acknowledged,
                                ack_until=ack_until))

    def outbox(self, kind: str, created: datetime, *, status: str = "sent", attempts: int = 0,
               error: str | None = None, sent: datetime | None = None,
               subject: str = "privacy-ledger: earlier") -> None:
        with self.ledger.session() as session:
            session.add(OutboxMessage(
                created_at=created, kind=kind, recipients='["owner@example.com"]',
                subject=subject, message="", message_id=f"<{created.timestamp()}@example.com>",
                status=status, attempts=attempts, next_attempt_at=created, last_error=error,
                sent_at=sent))


@pytest.fixture
def estate(ledger: Ledger) -> Estate:
    return Estate(ledger)


def columns(line: str) -> int:
    """Terminal columns, counted here independently of the report's own helper."""
    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in line)


def flat(text: str) -> str:
    """The text part with its line breaks undone: it wraps at 78 columns wherever words fall."""
    return " ".join(text.split())


def _digest(estate: Estate, **kwargs: object) -> report.Digest:
    return report.build_digest(estate.ledger, now=NOW, **kwargs)  # type: ignore[arg-type]


def test_headline_counts_people_systems_and_findings_by_state(estate: Estate) -> None:
    estate.source("woo:allmyink")
    estate.source("stripe")
    gone_source = estate.source("mailchimp:old")
    with estate.ledger.session() as session:
        session.get(Source, gone_source).gone_at = NOW - DAY
    a = estate.holding("woo:allmyink", "order", "1", "a@example.com")
    b = estate.holding("woo:allmyink", "order", "2", "b@example.com")
    c = estate.holding("stripe", "customer", "cus_1", "a@example.com")
    d = estate.holding("stripe", "customer", "cus_2", "c@example.com")
    estate.holding("woo:allmyink", "order", "3", "gone@example.com", gone=True)
    estate.holding("mailchimp:old", "member", "m1", "deleted-audience@example.com")
    estate.finding("order-past-retention", a)                                # new
    estate.finding("order-past-retention", b, first=NOW - 30 * DAY)          # open, not new
    estate.finding("stripe-customer-inactive", c, acknowledged=NOW - 2 * DAY)
    estate.finding("stripe-customer-inactive", d, first=NOW - 9 * DAY,
                   resolved=NOW - timedelta(hours=3))                        # resolved since
    estate.finding("inactive-account", estate.holding("woo:allmyink", "customer", "9", None),
                   first=NOW - 90 * DAY, resolved=NOW - 60 * DAY)            # resolved long ago

    headline = _digest(estate).headline

    assert headline == report.Headline(people=3, systems=2, open=2, new=1, resolved=1,
                                       acknowledged=1)


def test_matrix_counts_people_per_category_and_leaves_out_gone_holdings(estate: Estate) -> None:
    estate.source("woo:allmyink")
    estate.source("stripe")
    estate.holding("woo:allmyink", "customer", "1", "a@example.com", ("email", "name", "phone"))
    estate.holding("woo:allmyink", "order", "10", "a@example.com",
                   ("email", "ip_address", "name"))
    estate.holding("woo:allmyink", "order", "11", "b@example.com", ("email", "name"))
    estate.holding("woo:allmyink", "order", "12", "c@example.com", ("email", "phone"),
                   gone=True)
    estate.holding("stripe", "customer", "cus_1", "a@example.com", ("card_last4", "email"))

    digest = _digest(estate)

    assert digest.categories == ("name", "email", "phone", "card_last4", "ip_address")
    rows = {row.source: row for row in digest.matrix}
    assert rows["woo:allmyink"].records == 3
    assert rows["woo:allmyink"].people == 2
    assert dict(zip(digest.categories, rows["woo:allmyink"].counts, strict=True)) == {
        "name": 2, "email": 2, "phone": 1, "card_last4": 0, "ip_address": 1}
    assert dict(zip(digest.categories, rows["stripe"].counts, strict=True)) == {
        "name": 0, "email": 1, "phone": 0, "card_last4": 1, "ip_address": 0}
    assert digest.matrix_max == 2


def test_matrix_agrees_with_counting_each_person_by_hand(estate: Estate) -> None:
    """A random estate (people with several holdings of different categories in one source,
    holdings without a person, gone holdings, a gone source): the matrix's records, people
    and people per category are what counting person by person gives."""
    import random

    rng = random.Random(20261203)
    pool = ("email", "name", "phone", "billing_address", "ip_address", "account",
            "card_number")
    for name in ("woo:a", "woo:b", "stripe", "mailchimp:old"):
        estate.source(name)
    held: list[tuple[str, str | None, frozenset[str], bool]] = []
    for number in range(120):
        source = rng.choice(("woo:a", "woo:b", "stripe", "mailchimp:old"))
        email = None if rng.random() < 0.1 else f"p{rng.randrange(25)}@example.com"
        categories = frozenset(rng.sample(pool, rng.randint(1, 4)))
        gone = rng.random() < 0.15
        estate.holding(source, "order", str(number), email, tuple(sorted(categories)),
                       gone=gone)
        held.append((source, email, categories, gone))
    with estate.ledger.session() as session:
        session.get(Source, estate.sources["mailchimp:old"]).gone_at = NOW - DAY

    digest = _digest(estate)

    rows = {row.source: row for row in digest.matrix}
    assert set(rows) == {"woo:a", "woo:b", "stripe"}
    for name, row in rows.items():
        live = [(email, categories) for source, email, categories, gone in held
                if source == name and not gone]
        assert row.records == len(live)
        assert row.people == len({email for email, _ in live if email})
        expected = {category: len({email for email, categories in live
                                   if email and category in categories})
                    for category in digest.categories}
        assert dict(zip(digest.categories, row.counts, strict=True)) == expected
    assert {c for c in pool if any(c in cats for s, e, cats, g in held
                                   if s != "mailchimp:old" and not g and e)} \
        <= set(digest.categories)


def test_new_findings_are_capped_per_rule_with_the_rest_counted_and_the_command(
        estate: Estate) -> None:
    estate.source("woo:allmyink")
    for number in range(7):
        holding = estate.holding("woo:allmyink", "order", str(1000 + number),
                                 f"p{number}@example.com")
        estate.finding("order-past-retention", holding,
                       first=NOW - timedelta(hours=10 - number))

    group, = _digest(estate, cap_per_rule=3).new_by_rule

    assert group.total == 7
    assert [item.external_id for item in group.items] == ["1000", "1001", "1002"]
    assert group.more == 4
    assert group.list_command == "privacy-ledger audit --rule order-past-retention"


def test_actions_name_the_record_in_the_owners_words(estate: Estate) -> None:
    estate.source("woo:allmyink")
    estate.source("stripe")
    estate.source("mailchimp:news1")
    estate.finding("order-past-retention",
                   estate.holding("woo:allmyink", "order", "1234", "a@example.com"))
    estate.finding("processor-copy-orphaned",
                   estate.holding("stripe", "customer", "cus_Q1", "b@example.com"),
                   severity="high")
    estate.finding("mailchimp-contact-retained",
                   estate.holding("mailchimp:news1", "member", "abc", "c@example.com"),
                   severity="low")

    actions = {group.rule: group.items[0].action for group in _digest(estate).new_by_rule}

    assert actions["order-past-retention"] == "anonymise order 1234 in allmyink"
    assert actions["processor-copy-orphaned"] == "permanently delete the Stripe customer cus_Q1"
    assert "c@example.com" in actions["mailchimp-contact-retained"]
    assert "news1" in actions["mailchimp-contact-retained"]


def test_rules_are_listed_most_severe_first(estate: Estate) -> None:
    estate.source("woo:allmyink")
    estate.finding("network-data-past-retention",
                   estate.holding("woo:allmyink", "order", "1", "a@example.com"), severity="low")
    estate.finding("card-number-exposed",
                   estate.holding("woo:allmyink", "order", "2", "b@example.com"),
                   severity="high", detail="card number pattern in customer_note")

    digest = _digest(estate)

    assert [c.rule for c in digest.rule_counts] == ["card-number-exposed",
                                                    "network-data-past-retention"]
    assert digest.new_by_rule[0].items[0].detail == "card number pattern in customer_note"


def test_acknowledged_finding_is_open_again_when_its_acknowledgement_ends(
        estate: Estate) -> None:
    estate.source("stripe")
    estate.finding("stripe-customer-inactive",
                   estate.holding("stripe", "customer", "cus_1", "a@example.com"),
                   first=NOW - 40 * DAY, acknowledged=NOW - 30 * DAY, ack_until=NOW - DAY)
    estate.finding("stripe-customer-inactive",
                   estate.holding("stripe", "customer", "cus_2", "b@example.com"),
                   first=NOW - 40 * DAY, acknowledged=NOW - 30 * DAY, ack_until=NOW + DAY)

    count, = _digest(estate).rule_counts

    assert (count.open, count.acknowledged, count.new) == (1, 1, 0)


def test_since_is_when_the_previous_digest_was_queued(estate: Estate) -> None:
    estate.outbox("digest", NOW - 3 * DAY)
    estate.outbox("digest", NOW - timedelta(hours=30))
    estate.outbox("other", NOW - timedelta(hours=2))

    assert _digest(estate).since == NOW - timedelta(hours=30)


def test_since_is_a_day_ago_when_no_digest_was_queued_before(estate: Estate) -> None:
    assert _digest(estate).since == NOW - DAY


def test_sync_health_puts_failed_and_stale_sources_first(estate: Estate) -> None:
    estate.source("mailchimp:news1", synced=NOW - timedelta(hours=1), seen=900)
    estate.source("stripe", synced=NOW - 5 * DAY)
    estate.source("woo:allmyink", synced=NOW - 2 * DAY)
    estate.run("woo:allmyink", "failed", NOW - timedelta(hours=3),
               error="401 Unauthorized: check consumer_key")
    estate.source("woo:b-shop", synced=None)

    health = _digest(estate, configured_sources=["woo:allmyink", "woo:b-shop", "stripe",
                                                  "mailchimp", "woo:never-seen"]).sync

    assert [(h.source, h.state) for h in health] == [
        ("woo:allmyink", "failed"), ("woo:b-shop", "never"), ("woo:never-seen", "never"),
        ("stripe", "stale"), ("mailchimp:news1", "ok")]
    assert health[0].last_error == "401 Unauthorized: check consumer_key"
    assert health[0].last_success == NOW - 2 * DAY
    assert health[-1].records_seen == 900


def test_sync_recovered_after_a_failure_is_healthy(estate: Estate) -> None:
    estate.source("stripe", synced=None)
    estate.run("stripe", "failed", NOW - 5 * timedelta(hours=1), error="timeout")
    estate.run("stripe", "success", NOW - timedelta(hours=1))

    health, = _digest(estate).sync

    assert health.state == "ok"
    assert health.last_failure == NOW - 5 * timedelta(hours=1)


def test_delivery_failures_since_the_last_email_are_reported(estate: Estate) -> None:
    estate.outbox("digest", NOW - 3 * DAY, attempts=2, error="old trouble",
                  sent=NOW - 3 * DAY + timedelta(hours=1))
    estate.outbox("digest", NOW - DAY, status="pending", attempts=4,
                  error="cannot connect to SMTP server smtp.example.com:587: Connection refused",
                  subject="privacy-ledger: yesterday")

    problem, = _digest(estate).delivery_problems

    assert problem.subject == "privacy-ledger: yesterday"
    assert problem.attempts == 4
    assert problem.delivered_at is None
    assert "smtp.example.com:587" in problem.last_error


def test_job_failures_recorded_by_the_daemon_are_reported(estate: Estate) -> None:
    from daemon import trail

    with estate.ledger.session() as session:
        trail.append(session, "daemon", "job_error",
                     {"job": "sync:stripe", "error_type": "OperationalError",
                      "error": "database is locked"}, at=NOW - timedelta(hours=3))
        trail.append(session, "daemon", "job_missed", {"job": "nightly"},
                     at=NOW - timedelta(hours=2))
        trail.append(session, "daemon", "job_error", {"job": "old", "error": "x"},
                     at=NOW - 5 * DAY)

    digest = _digest(estate)
    rendered = report.render(digest)

    assert [p.job for p in digest.job_problems] == ["sync:stripe", "nightly"]
    assert "OperationalError: database is locked" in digest.job_problems[0].what
    assert "missed its scheduled time" in digest.job_problems[1].what
    for part in (flat(rendered.text), rendered.html):
        assert "sync:stripe" in part and "database is locked" in part


# --------------------------------------------------------------------------- rendering


def _four_shops(estate: Estate) -> None:
    """3 new findings, 41 open across allmyink, three more shops, Stripe and Mailchimp."""
    for shop in ("allmyink", "b-shop", "c-shop", "d-shop"):
        estate.source(f"woo:{shop}")
    estate.source("stripe")
    estate.source("mailchimp:news1")
    number = 0

    def add(source: str, record_type: str, rule: str, count: int, *, new: bool = False) -> None:
        nonlocal number
        for _ in range(count):
            number += 1
            holding = estate.holding(source, record_type, str(number),
                                     f"p{number}@example.com")
            estate.finding(rule, holding, first=NOW - (timedelta(hours=2) if new else 20 * DAY))

    add("woo:allmyink", "order", "order-past-retention", 20)
    add("woo:allmyink", "order", "order-past-retention", 2, new=True)
    add("woo:b-shop", "order", "unpaid-order-past-retention", 5)
    add("woo:c-shop", "order", "unpaid-order-past-retention", 4)
    add("woo:d-shop", "customer", "inactive-account", 3)
    add("stripe", "customer", "stripe-customer-inactive", 3)
    add("mailchimp:news1", "member", "mailchimp-contact-retained", 3)
    add("mailchimp:news1", "member", "mailchimp-contact-retained", 1, new=True)


def test_subject_carries_the_headline_and_the_systems_to_act_in(estate: Estate) -> None:
    _four_shops(estate)

    rendered = report.render(_digest(estate))

    assert rendered.subject == ("privacy-ledger: 3 new findings, 41 open — allmyink, "
                                "3 more shops, Stripe, Mailchimp")


def test_subject_leads_with_a_failed_sync(estate: Estate) -> None:
    _four_shops(estate)
    estate.run("stripe", "failed", NOW - timedelta(hours=1), error="401")

    subject = report.render(_digest(estate)).subject

    assert subject.startswith("privacy-ledger: SYNC FAILED: Stripe · 3 new findings, 41 open")


def test_subject_says_all_well_when_nothing_is_open(estate: Estate) -> None:
    estate.source("woo:allmyink")
    estate.source("stripe")

    rendered = report.render(_digest(estate))

    assert rendered.subject == "privacy-ledger: all well — no open findings, 2 systems in sync"
    assert "All well" in rendered.text
    assert "All well" in rendered.html


def test_html_and_text_show_headline_matrix_actions_and_sync(estate: Estate) -> None:
    _four_shops(estate)
    estate.run("woo:c-shop", "failed", NOW - timedelta(hours=1),
               error="cannot reach https://c-shop.example: timed out")

    rendered = report.render(_digest(estate, cap_per_rule=1))

    for part in (flat(rendered.text), rendered.html):
        assert "anonymise order 21 in allmyink" in part.lower()
        assert "and 1 more" in part
        assert "privacy-ledger audit --rule order-past-retention" in part
        assert "cannot reach https://c-shop.example: timed out" in part
    html = rendered.html
    assert "What is held where" in html
    assert html.count("<table") == html.count("</table>")
    # The failed shop is the first system named in the sync-problems box, above everything.
    assert html.index("cannot reach https://c-shop.example") < html.index("New findings")
    assert re.search(r"<div[^>]*background:#[0-9a-f]{6}[^>]*>[a-z ]+ <strong>22</strong>",
                     html), \
        "the matrix cell for allmyink's 22 people is shaded"
    assert "<script" not in html and "<img" not in html
    assert "THE LEDGER IS BLIND TO c-shop: its sync failed" in flat(rendered.text)


def test_times_are_shown_in_the_configured_time_zone(estate: Estate) -> None:
    estate.source("stripe", synced=datetime(2025, 7, 1, 5, 30, tzinfo=UTC))
    digest = report.build_digest(estate.ledger, now=datetime(2025, 7, 1, 6, 0, tzinfo=UTC),
                                 timezone="Europe/London")

    rendered = report.render(digest)

    assert "01 Jul 06:30" in rendered.html
    assert "BST" in rendered.text


HOSTILE = ["<script>alert(1)</script>@evil.example",
           "\"><img src=x onerror=alert(1)>@evil.example",
           "\u202egnp.exe\u202c@evil.example",
           "x" * 300 + "@evil.example",
           "🦄📦👩\u200d👩\u200d👧@emoji.example"]


def test_hostile_values_render_escaped_in_one_piece(estate: Estate) -> None:
    estate.source("woo:allmyink")
    hostile_source = "mailchimp:<b>\u202eevil\"'</b>"
    estate.source(hostile_source)
    estate.run(hostile_source, "failed", NOW - timedelta(hours=1),
               error="<script>steal()</script>\u202e" + "y" * 10_000)
    for index, address in enumerate(HOSTILE):
        holding = estate.holding("woo:allmyink", "order", f"<i>{index}</i>\u202e" + "9" * 180,
                                 address, ("email", "free_text"))
        estate.finding("order-past-retention", holding,
                       detail=f"\"><svg onload=alert({index})> 🧨 \u202e" + "z" * 10_000)
        estate.finding("mailchimp-contact-retained",
                       estate.holding(hostile_source, "member", f"m{index}", address))

    rendered = report.render(_digest(estate))

    for part in (rendered.subject, rendered.text, rendered.html):
        assert "\u202e" not in part and "\u202c" not in part
        assert "x" * 100 not in part and "9" * 100 not in part
        assert "y" * 400 not in part and "z" * 400 not in part
    html = rendered.html
    for raw in ("<script", "<img", "<svg", "<i>", "<b>"):
        assert raw not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;@evil.example" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;@evil.example" in html
    assert "🦄📦" in html and "🧨" in rendered.text
    assert len(html) < 200_000
    assert "\n" not in rendered.subject
    _assert_balanced(html)
    message = build_message(rendered, _Addressing(), now=NOW)
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert parsed.get_body(("html",)).get_content() == html


class _Addressing:
    recipients = ("owner@example.com",)
    sender = "ledger@example.com"


def _assert_balanced(html: str) -> None:
    """Every table, row, cell and div that opens closes, in order: the layout holds."""
    checked = {"table", "tr", "td", "th", "div", "span", "strong", "code", "p"}

    class Checker(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.stack: list[str] = []

        def handle_starttag(self, tag: str, attrs: object) -> None:
            if tag in checked:
                self.stack.append(tag)

        def handle_endtag(self, tag: str) -> None:
            if tag in checked:
                assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
                self.stack.pop()

    checker = Checker()
    checker.feed(html)
    checker.close()
    assert checker.stack == []


def test_shown_replaces_bidi_controls_and_controls_and_caps_length() -> None:
    assert report.shown("a\u202eb\u2066c\x00d\r\ne", 100) == "a\ufffdb\ufffdc d e"
    assert report.shown("x" * 50, 10) == "x" * 9 + "…"
    assert report.shown(None) == ""


def test_heat_style_darkens_with_count_and_marks_card_numbers_red() -> None:
    styles = [report.heat_style(count, 1000) for count in (0, 1, 30, 1000)]

    assert len(set(styles)) == 4
    assert "#ffffff;color:#b0b7bf" in styles[0]
    assert "#125a9c" in styles[-1]
    assert "#c62828" in report.heat_style(1, 1000, "card_number")


def test_render_digest_takes_zone_cap_and_sources_from_settings(estate: Estate) -> None:
    config = pytest.importorskip("daemon.config")
    settings = config.parse_settings({
        "timezone": "Europe/Paris",
        "report": {"recipients": ["owner@example.com"], "sender": "ledger@example.com",
                   "max_per_rule": 1},
        "retention": {"sync_stale": "1d"}})
    estate.source("woo:allmyink", synced=NOW - 30 * timedelta(hours=1))
    for number in (1, 2):
        estate.finding("order-past-retention",
                       estate.holding("woo:allmyink", "order", str(number), f"{number}@x.io"))

    rendered = report.render_digest(estate.ledger, settings, NOW)

    assert isinstance(rendered, RenderedEmail)
    assert "CET" in rendered.text
    assert "and 1 more" in flat(rendered.text)
    assert rendered.subject.startswith("privacy-ledger: NOT SYNCED: allmyink")


# --------------------------------------------------------------------------- config


def test_report_config_without_recipients_names_report_recipients() -> None:
    config = pytest.importorskip("daemon.config")

    with pytest.raises(config.ConfigError) as missing:
        config.parse_settings({"report": {"sender": "ledger@example.com"}})
    with pytest.raises(config.ConfigError) as empty:
        config.parse_settings({"report": {"recipients": [], "sender": "ledger@example.com"}})

    assert missing.value.problems == ["config: report.recipients: missing: this key is required"]
    assert empty.value.problems[0].startswith("config: report.recipients: no recipients")


def test_report_config_rejects_addresses_that_are_not_emails() -> None:
    config = pytest.importorskip("daemon.config")

    with pytest.raises(config.ConfigError) as caught:
        config.parse_settings({"report": {"recipients": ["owner@example.com", "owner"],
                                          "sender": "ledger at example.com"}})

    assert caught.value.problems == [
        "config: report.recipients: 'owner' is not an email address (write it as "
        "name@example.com)",
        "config: report.sender: 'ledger at example.com' is not an email address (write it as "
        "name@example.com)"]


def test_smtp_config_checks_port_security_timeout_and_login() -> None:
    config = pytest.importorskip("daemon.config")
    secrets = config.SecretSources(environ={"SMTP_PASSWORD": "hunter2"}, credentials_dir=None)

    with pytest.raises(config.ConfigError) as caught:
        config.parse_settings({"smtp": {"host": "smtp.example.com", "port": 70000,
                                        "security": "ssl", "timeout": 30}})
    with pytest.raises(config.ConfigError) as clear_login:
        config.parse_settings({"smtp": {"host": "smtp.example.com", "security": "none",
                                        "username": "u", "password": "env:SMTP_PASSWORD"}},
                              secrets=secrets)
    good = config.parse_settings({"smtp": {"host": "smtp.example.com", "username": "u",
                                           "password": "env:SMTP_PASSWORD", "timeout": "10s"}},
                                 secrets=secrets).smtp

    assert [p.split(":")[1].strip() for p in caught.value.problems] == [
        "smtp.port", "smtp.security", "smtp.timeout"]
    assert "password in clear" in clear_login.value.problems[0]
    assert good is not None and good.port == 587 and good.security == "starttls"
    assert good.timeout == timedelta(seconds=10)
    assert "hunter2" not in repr(good)


def test_the_first_email_does_not_speak_of_a_previous_one(ledger: Ledger) -> None:
    from daemon import mail
    from daemon.config import ReportSettings

    moment = datetime(2026, 5, 6, 7, 0, tzinfo=UTC)
    first = report.render(report.build_digest(ledger, now=moment))
    for part in (flat(first.text), first.html):
        assert "previous email" not in part and "last email" not in part
        assert "first email" in part
    mail.enqueue(ledger, first, ReportSettings(recipients=["owner@example.com"],
                                               sender="pl@example.com"))
    second = report.render(report.build_digest(ledger, now=mail_time(ledger) + timedelta(1)))
    assert "since the previous email" in flat(second.text)
    assert "since last email" in second.html and "first email" not in second.html


def mail_time(ledger: Ledger) -> datetime:
    with ledger.sessions() as session:
        return session.scalars(select(OutboxMessage.created_at)).one()


# --------------------------------------------------------------------------- still open, links


def test_a_day_with_nothing_new_lists_the_oldest_open_findings_capped_with_the_rest_counted(
        estate: Estate) -> None:
    estate.source("woo:allmyink")
    # 23 open from before the window, one acknowledged, one resolved; none new.
    for number in range(23):
        estate.finding("order-past-retention",
                       estate.holding("woo:allmyink", "order", str(500 + number),
                                      f"p{number}@example.com"),
                       first=NOW - timedelta(days=40 - number))
    estate.finding("order-past-retention",
                   estate.holding("woo:allmyink", "order", "900", "held@example.com"),
                   first=NOW - 90 * DAY, acknowledged=NOW - DAY)
    estate.finding("inactive-account",
                   estate.holding("woo:allmyink", "customer", "901", "gone@example.com"),
                   first=NOW - 90 * DAY, resolved=NOW - 2 * DAY)

    digest = _digest(estate, since=NOW - DAY)
    rendered = report.render(digest)

    assert digest.headline.new == 0 and digest.headline.open == 23
    assert [item.external_id for item in digest.still_open] == [str(500 + n) for n in range(20)]
    assert digest.still_open_more == 3
    assert {item.title for item in digest.still_open} == {"Orders past retention"}
    text, html = flat(rendered.text), rendered.html
    for part in (text, html):
        assert "anonymise order 500 in allmyink" in part.lower()
        assert "anonymise order 519 in allmyink" in part.lower()
        assert "order 520 " not in part and "order 900 " not in part
        assert "and 3 more still open" in part
    assert text.index("order 500 in") < text.index("order 519 in")
    assert "open since 23 Jan 2025" in text and "open since 23 Jan 2025" in html


def test_a_day_with_new_findings_does_not_repeat_the_old_ones(estate: Estate) -> None:
    estate.source("woo:allmyink")
    estate.finding("order-past-retention",
                   estate.holding("woo:allmyink", "order", "1", "old@example.com"),
                   first=NOW - 30 * DAY)
    estate.finding("order-past-retention",
                   estate.holding("woo:allmyink", "order", "2", "new@example.com"))

    digest = _digest(estate, since=NOW - DAY)

    assert digest.headline.new == 1 and digest.still_open == ()
    assert "STILL OPEN" not in report.render(digest).text


def _places(**shops: str) -> report.AdminPlaces:
    return report.AdminPlaces(shops=tuple(shops.items()),
                              stripe_dashboard="https://dashboard.stripe.com", mailchimp=True)


def test_links_are_built_from_configured_addresses_and_well_formed_ids_only(
        estate: Estate) -> None:
    estate.source("woo:allmyink")
    estate.source("woo:evil")
    estate.source("stripe")
    estate.source("mailchimp:a1")
    with estate.ledger.session() as session:
        session.scalars(select(Source).where(Source.name == "mailchimp:a1")).one().label = \
            "<b>News</b>\u202e\"'"
    estate.finding("order-past-retention",
                   estate.holding("woo:allmyink", "order", "42", "a@example.com"))
    estate.finding("order-past-retention",  # an id that is no WooCommerce id: no link
                   estate.holding("woo:allmyink", "order", "42&action=trash", "b@example.com"))
    estate.finding("inactive-account",  # a shop whose configured url is not a plain URL
                   estate.holding("woo:evil", "customer", "7", "c@example.com"))
    estate.finding("stripe-customer-inactive",
                   estate.holding("stripe", "customer", "cus_Q1", "d@example.com"))
    estate.finding("stripe-customer-inactive",
                   estate.holding("stripe", "customer", "cus_<x>", "e@example.com"))
    estate.finding("mailchimp-contact-retained",
                   estate.holding("mailchimp:a1", "member", "m1", "f@example.com"))
    config = pytest.importorskip("daemon.config")
    secrets = config.SecretSources(environ={"CK": "ck", "CS": "cs", "STRIPE": "rk_live_secret",
                                            "MC": "k-us6"}, credentials_dir=None)
    keys = {"consumer_key": "env:CK", "consumer_secret": "env:CS"}
    settings_places = report.admin_places(config.parse_settings({
        "woocommerce": [
            {"name": "allmyink", "url": "https://allmyink.example/shop/", **keys},
            {"name": "evil", "url": "https://evil.example/\"><script>x()</script>", **keys}],
        "stripe": {"api_key": "env:STRIPE"}, "mailchimp": {"api_key": "env:MC"}},
        secrets=secrets))

    digest = _digest(estate, places=settings_places)
    rendered = report.render(digest)

    links = {item.external_id: [link.url for link in item.links]
             for group in digest.new_by_rule for item in group.items}
    assert links["42"] == [
        "https://allmyink.example/shop/wp-admin/admin.php?page=wc-orders&action=edit&id=42",
        "https://allmyink.example/shop/wp-admin/post.php?post=42&action=edit"]
    assert links["42&action=trash"] == []
    assert links["7"] == []
    assert links["cus_Q1"] == ["https://dashboard.stripe.com/customers/cus_Q1"]
    assert links["cus_<x>"] == []
    assert links["m1"] == ["https://admin.mailchimp.com/lists/"]
    html = rendered.html
    assert 'href="https://allmyink.example/shop/wp-admin/admin.php?page=wc-orders&amp;action=' \
           'edit&amp;id=42"' in html
    for raw in ("<script", "<b>", "<x>"):
        assert raw not in html
    assert "\u202e" not in html and "\u202e" not in rendered.text
    assert "evil.example" not in html and "rk_live_secret" not in html + rendered.text
    # The audience's name as the ledger has it: escaped in HTML, as it is in plain text.
    assert "Mailchimp “&lt;b&gt;News&lt;/b&gt;" in html
    assert "Mailchimp “<b>News</b>" in rendered.text
    _assert_balanced(html)
    # A URL longer than a line is the one thing that may pass 78 columns: it stays whole.
    url = "https://allmyink.example/shop/wp-admin/admin.php?page=wc-orders&action=edit&id=42"
    assert [line for line in rendered.text.splitlines()
            if columns(line) > 78] == [url]


def test_stripe_links_go_to_the_test_dashboard_for_a_test_key_only() -> None:
    assert dashboard("sk_test_abc") == "https://dashboard.stripe.com/test"
    assert dashboard("rk_test_abc") == "https://dashboard.stripe.com/test"
    assert dashboard("rk_live_abc") == "https://dashboard.stripe.com"
    assert dashboard("sk_live_abc") == "https://dashboard.stripe.com"


def test_the_text_part_of_a_hostile_estate_stays_within_78_columns(estate: Estate) -> None:
    estate.source("woo:" + "s" * 60)
    estate.run("woo:" + "s" * 60, "failed", NOW - timedelta(hours=1),
               error="cannot reach https://" + "h" * 90 + ".example: " + "why " * 80)
    for index, address in enumerate(HOSTILE + ["界" * 60 + "@wide.example"]):
        estate.finding("processor-copy-orphaned" if index % 2 else "order-past-retention",
                       estate.holding("woo:" + "s" * 60, "order", "9" * (index + 1), address),
                       detail="w" * 150 + " " + "界" * 50)

    text = report.render(_digest(estate)).text

    long = [line for line in text.splitlines() if columns(line) > 78]
    assert not long, "\n".join(long)
    assert "界" in text


def test_wrap_text_keeps_urls_whole_and_indents_what_follows() -> None:
    url = "https://shop.example/wp-admin/admin.php?page=wc-orders&action=edit&id=123456"
    wrapped = report.wrap_text(f"order screen: {url}", "      ", "    ", links=True)
    assert wrapped.splitlines() == ["    order screen:", "  " + url]
    # Upstream text is no link: a long address in it is cut like any other word.
    cut = report.wrap_text(f"error: {url}{url}", "  ").splitlines()
    assert all(len(line) <= 78 for line in cut) and "".join(cut).count("wc-orders") == 2
    assert report.wrap_text("a " * 50, "  ").splitlines()[1].startswith("  a")
    assert all(columns(line) <= 78
               for line in report.wrap_text("界" * 100, "  ").splitlines())


def test_the_html_stacks_every_row_so_a_phone_needs_no_wide_grid(estate: Estate) -> None:
    _four_shops(estate)
    estate.run("woo:c-shop", "failed", NOW - timedelta(hours=1), error="timed out")
    html = report.render(_digest(estate)).html
    widest: list[int] = []

    class Rows(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.cells: list[int] = []

        def handle_starttag(self, tag: str, attrs: object) -> None:
            if tag == "tr":
                self.cells.append(0)
            elif tag in ("td", "th") and self.cells:
                self.cells[-1] += 1

        def handle_endtag(self, tag: str) -> None:
            if tag == "tr":
                widest.append(self.cells.pop())

    Rows().feed(html)
    # Side-by-side cells squeeze on a 400 px screen and break their headers mid-word; the
    # figures and category counts are tiles that wrap instead.
    assert widest and max(widest) == 1
    assert "<th" not in html
    assert re.search(r"display:inline-block[^\"]*\">\s*<div style=\"font-size:24px", html)
