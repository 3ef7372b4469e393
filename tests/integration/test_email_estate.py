"""The morning email of a realistic ledger — the sandbox estate synced over real HTTP from its
twins and audited, on SQLite and PostgreSQL — read the way the owner reads it: every line of
the plain-text part within 78 columns with its tables aligned, and each finding linked to the
page where the owner acts on it, built only from the configured addresses and ids."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from pydantic import SecretStr

from daemon import mail
from daemon.audit import run_audit
from daemon.config import Settings, load_settings
from daemon.ledger import Ledger
from daemon.report import digest_for, render
from daemon.sources import sync_configured
from sandbox.demo import RunningEstate
from sandbox.estate import EstateSpec
from sandbox.seed import build_estate
from vocabulary import utcnow

WIDTH = 78


def columns(line: str) -> int:
    """Terminal columns, counted here independently of the report's own helper."""
    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in line)


@pytest.fixture(scope="module")
def running() -> Iterator[RunningEstate]:
    estate = build_estate(EstateSpec(seed=7, people=300, now=utcnow().replace(microsecond=0)))
    with RunningEstate(estate) as live:
        yield live


@pytest.fixture
def audited(running: RunningEstate, ledger_url: str,
            tmp_path: Path) -> Iterator[tuple[Ledger, Settings]]:
    """The estate synced into a fresh ledger and audited, as `privacy-ledger demo` does."""
    settings = load_settings(running.write_config(tmp_path / "etc", ledger_url=ledger_url))
    ledger = Ledger.open(ledger_url)
    try:
        assert all(result.ok for result in sync_configured(ledger, settings))
        run_audit(ledger, settings.retention)
        yield ledger, settings
    finally:
        ledger.close()


def section(text: str, title: str) -> list[str]:
    """The lines of one titled section of the text part, up to the next blank line."""
    lines = text.splitlines()
    start = lines.index(title) + 2
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def hrefs(html: str) -> list[str]:
    found: list[str] = []

    class Links(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.extend(value or "" for name, value in attrs if tag == "a" and name == "href")

    Links().feed(html)
    return found


def test_the_text_part_fits_78_columns_and_its_tables_align(
        audited: tuple[Ledger, Settings]) -> None:
    ledger, settings = audited
    first = render(digest_for(ledger, settings))
    mail.enqueue(ledger, first, _Report())
    # The next morning nothing is new: the still-open list is the longest part.
    later = render(digest_for(ledger, settings, now=utcnow() + timedelta(hours=20)))
    assert "STILL OPEN, OLDEST FIRST" in later.text
    for text in (first.text, later.text):
        long = [line for line in text.splitlines() if columns(line) > WIDTH]
        assert not long, "\n".join(long)

        rules = section(text, "FINDINGS BY RULE")
        header = rules[0]
        ends = [header.index(word) + len(word) for word in ("new", "open", "acked", "resolved")]
        title_at = header.index("rule")
        rows = [line for line in rules[1:] if line[:title_at].strip()]
        assert len(rows) >= 8, rules
        for row in rows:
            numbers = [m.end() for m in re.finditer(r"[\d,]+", row[:title_at])]
            assert numbers == ends, (header, row)
            assert row[title_at - 1] == " " and row[title_at] != " ", row
        # A title too long for its column goes on beneath itself, not under the numbers.
        for line in rules[1:]:
            if not line[:title_at].strip():
                assert line[title_at] != " ", line

        health = section(text, "SYNC HEALTH")
        system_at = health[0].index("system")
        states = [line for line in health[1:] if line[2] != " "]
        assert len(states) == len(settings.source_names) + 1  # two Mailchimp audiences
        for line in states:
            assert line[system_at - 1] == " " and line[system_at] != " ", line

        held = text.splitlines()
        counts = [line for line in held if re.fullmatch(r"  [a-z][a-z0-9 ]+ +[\d,]+( .*)?", line)
                  and line.split()[-1][0].isdigit() or "<- breach" in line]
        assert len(counts) > 20
        assert len({re.search(r"[\d,]+(?=(  <- breach.*)?$)", line).end()  # type: ignore[union-attr]
                    for line in counts}) == 1, counts


def test_each_finding_links_to_the_page_where_the_owner_acts(
        audited: tuple[Ledger, Settings], running: RunningEstate) -> None:
    ledger, settings = audited
    twin_audiences = list(running.estate.mailchimp.audiences.values())
    shops = {shop.name: shop.url for shop in settings.woocommerce}
    digest = digest_for(ledger, settings)
    items = [item for group in digest.new_by_rule for item in group.items]
    rendered = render(digest)

    orders = [i for i in items if i.record_type == "order"]
    assert orders
    for item in orders:
        url = shops[item.source]
        assert [link.url for link in item.links] == [
            f"{url}/wp-admin/admin.php?page=wc-orders&action=edit&id={item.external_id}",
            f"{url}/wp-admin/post.php?post={item.external_id}&action=edit"]
        for link in item.links:
            assert link.url in rendered.text
            assert link.url.replace("&", "&amp;") in rendered.html
    accounts = [i for i in items if i.record_type == "customer" and i.source in shops]
    assert accounts
    for item in accounts:
        [link] = item.links
        assert link.url == \
            f"{shops[item.source]}/wp-admin/user-edit.php?user_id={item.external_id}"
        assert link.url in rendered.text

    # The twin's key is a test key: the test-mode dashboard.
    customers = [i for i in items if i.source == "Stripe"]
    assert customers
    for item in customers:
        [link] = item.links
        assert link.url == f"https://dashboard.stripe.com/test/customers/{item.external_id}"

    # Audiences by name (the twin's), never by id alone, and linked to Mailchimp's audiences.
    names = {audience.name for audience in twin_audiences}
    assert len(names) == 2 and all(names)
    contacts = [i for i in items if i.source.startswith("Mailchimp")]
    assert contacts
    for item in contacts:
        assert any(f"“{name}”" in item.source for name in names), item.source
        assert any(f"“{name}”" in item.action for name in names), item.action
        [link] = item.links
        assert link.url == "https://admin.mailchimp.com/lists/"
    for name in names:
        assert f"Mailchimp “{name}”" in rendered.text and f"Mailchimp “{name}”" in rendered.html

    # Every link is built from a configured address or a fixed dashboard, and nothing else.
    allowed = (*shops.values(), "https://dashboard.stripe.com/test/customers/cus_",
               "https://admin.mailchimp.com/lists/")
    links = hrefs(rendered.html)
    assert len(links) >= len(items)
    assert all(href.startswith(allowed) for href in links), links


def test_a_live_key_links_to_the_live_dashboard_and_the_key_goes_nowhere(
        audited: tuple[Ledger, Settings]) -> None:
    ledger, settings = audited
    assert settings.stripe is not None
    live_key = "rk_live_" + "Kq7" * 10
    live = settings.model_copy(update={"stripe": settings.stripe.model_copy(
        update={"api_key": SecretStr(live_key)})})

    rendered = render(digest_for(ledger, live))

    stripe_links = [href for href in hrefs(rendered.html) if "stripe.com" in href]
    assert stripe_links
    assert all(re.fullmatch(r"https://dashboard\.stripe\.com/customers/cus_\w+", href)
               for href in stripe_links), stripe_links
    for part in (rendered.subject, rendered.text, rendered.html):
        assert live_key not in part and "Kq7Kq7" not in part


class _Report:
    recipients = ("owner@example.com",)
    sender = "ledger@example.com"
