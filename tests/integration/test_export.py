"""Access requests against the running sandbox estate over real HTTP, on SQLite and
PostgreSQL: the copy holds every record the twins hold about a person and nothing about
anyone else, the ledger only says where to look, failures make the copy incomplete, and
nothing of the content reaches the ledger, the trail or the logs."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from connectors.base import normalise_email
from daemon.access import open_systems, person_ref, run_export
from daemon.cli import main
from daemon.config import Settings, load_settings
from daemon.ledger import AuditLogEntry, Ledger
from daemon.sources import sync_configured
from sandbox.demo import RunningEstate
from sandbox.estate import ERASED_FROM_SHOPS, Estate, EstateSpec, Person
from sandbox.seed import build_estate

NOW = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
Key = tuple[str, str, str]


@pytest.fixture
def running() -> Iterator[RunningEstate]:
    estate = build_estate(EstateSpec(seed=11, people=40, now=NOW))
    with RunningEstate(estate) as live:
        yield live


@pytest.fixture
def config(running: RunningEstate, tmp_path: Path, sqlite_url: str) -> Path:
    """A config whose ledger is SQLite: for the tests of the command itself."""
    return running.write_config(tmp_path / "config", ledger_url=sqlite_url)


@pytest.fixture
def settings(config: Path) -> Settings:
    return load_settings(config)


@pytest.fixture
def lite(sqlite_url: str) -> Iterator[Ledger]:
    """The config's own SQLite ledger, for tests whose point is not the database."""
    opened = Ledger.open(sqlite_url)
    try:
        yield opened
    finally:
        opened.close()


def sync(ledger: Ledger, settings: Settings) -> None:
    results = sync_configured(ledger, settings, full=True)
    assert results and all(r.ok for r in results), [r.error for r in results]


def held_about(estate: Estate, email: str) -> set[Key]:
    """What the twins hold about one person: records carrying the email, the orders of their
    accounts, the charges of their Stripe customers."""
    keys: set[Key] = set()
    for name, shop in estate.shops.items():
        accounts = {i for i, c in shop.customers.items() if normalise_email(c["email"]) == email}
        keys |= {(f"woo:{name}", "customer", str(i)) for i in accounts}
        keys |= {(f"woo:{name}", "order", str(i)) for i, o in shop.orders.items()
                 if normalise_email(o["billing"].get("email")) == email
                 or o["customer_id"] in accounts}
    stripe = estate.stripe
    customers = {ident for kind, ident, held in stripe.ground_truth()
                 if kind == "customer" and held == email}
    keys |= {("stripe", "customer", ident) for ident in customers}
    for ident in stripe.charge_ids():
        charge = stripe.charge(ident)
        emails = {normalise_email(charge["billing_details"].get("email")),
                  normalise_email(charge.get("receipt_email"))}
        if charge["customer"] in customers or email in emails:
            keys.add(("stripe", "charge", ident))
    for source in estate.mailchimp.sources():
        keys |= {(source, kind, ident) for kind, ident, held
                 in estate.mailchimp.ground_truth(source) if held == email}
    return keys


def exported(document: dict[str, Any]) -> set[Key]:
    return {(source, r["record_type"], r["external_id"])
            for source, answer in document["systems"].items() for r in answer["records"]}


def spread(estate: Estate) -> list[Person]:
    """People whose records lie in every kind of system: two shops, a guest, Stripe only
    (no shop), Mailchimp only."""
    wanted = [
        lambda p: len(p.account_shops) == 2,
        lambda p: p.guest_shops and p.in_stripe,
        lambda p: p.account_shops and p.in_stripe and p.in_mailchimp,
        lambda p: ERASED_FROM_SHOPS in p.tags,
        lambda p: not (p.account_shops or p.guest_shops or p.in_stripe) and p.in_mailchimp,
    ]
    return [next(p for p in estate.people if test(p)) for test in wanted]


def cli(config: Path, *args: str, **options: Any) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args], **options)


def test_export_holds_every_record_about_each_person_and_nothing_about_anyone_else(
        running: RunningEstate, settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    estate = running.estate
    sync(ledger, settings)
    people = spread(estate)
    kinds: set[str] = set()
    for person in people:
        result = run_export(ledger, settings, person.email.upper(), tmp_path / "out",
                            sleep=lambda _: None)
        text = result.json_path.read_text(encoding="utf-8")
        document = json.loads(text)
        expected = held_about(estate, person.email)
        assert expected, person
        assert document["complete"] is True and result.complete
        assert {a["status"] for a in document["systems"].values()} == {"answered"}
        assert exported(document) == expected
        kinds |= {key[0].split(":")[0] for key in expected}
        # Nobody else: no other address of the estate, no other person's phone number.
        assert set(re.findall(r"[\w.+-]+@example\.com", text)) == {person.email}
        others = [p.phone for p in estate.people if p.email != person.email]
        assert not [phone for phone in others if phone in text]
        page = result.html_path.read_text(encoding="utf-8")
        assert person.email in page and "this copy is complete" in page
    assert kinds == {"woo", "stripe", "mailchimp"}


def test_export_files_are_private_and_the_trail_names_the_request_not_the_person(
        running: RunningEstate, config: Path, settings: Settings, lite: Ledger,
        tmp_path: Path) -> None:
    sync(lite, settings)
    person = spread(running.estate)[2]
    out = tmp_path / "requests" / "new"
    result = cli(config, "export", person.email, "--out", str(out))
    assert result.exit_code == 0, result.output
    written = sorted(out.iterdir())
    assert [p.suffix for p in written] == [".html", ".json"]
    assert all(f"wrote {p}" in result.stdout for p in written)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in written)
    # The logs (stderr) carry nothing of the content.
    for value in (person.email, person.phone, person.last_name, person.address_1):
        assert value not in result.stderr
    with lite.sessions() as session:
        entries = session.scalars(select(AuditLogEntry).where(
            AuditLogEntry.action == "export")).all()
    assert len(entries) == 1
    detail = json.loads(entries[0].detail)
    assert detail["person"] == person_ref(lite, person.email)
    assert detail["complete"] is True
    assert set(detail["systems"].values()) == {"answered"}
    assert sum(detail["records"].values()) == len(held_about(running.estate, person.email))
    for value in (person.email, person.phone, person.last_name, "@"):
        assert value not in entries[0].detail


def test_export_is_incomplete_and_says_so_when_a_system_fails_mid_request(
        running: RunningEstate, config: Path, lite: Ledger, settings: Settings,
        tmp_path: Path) -> None:
    sync(lite, settings)
    person = spread(running.estate)[2]
    # The charges listing answers with a maintenance page: Stripe fails after its customers.
    running.estate.stripe.faults.inject("html", times=100, path="/v1/charges")
    result = cli(config, "export", person.email, "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "INCOMPLETE: stripe did not answer" in result.stderr
    assert "NO ANSWER" in result.stdout
    (json_file,) = (tmp_path / "out").glob("*.json")
    document = json.loads(json_file.read_text(encoding="utf-8"))
    assert document["complete"] is False
    assert document["systems"]["stripe"]["status"].startswith("failed: ")
    assert document["systems"]["stripe"]["records"] == []
    assert all(a["status"] == "answered" for s, a in document["systems"].items()
               if s != "stripe")
    page = next((tmp_path / "out").glob("*.html")).read_text(encoding="utf-8")
    assert "This copy is not complete" in page


def test_export_of_an_address_held_nowhere_says_so_and_is_complete(
        config: Path, tmp_path: Path) -> None:
    result = cli(config, "export", "nobody.at.all@example.org", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    assert "nobody.at.all@example.org is held nowhere" in result.stdout
    (json_file,) = (tmp_path / "o").glob("*.json")
    document = json.loads(json_file.read_text(encoding="utf-8"))
    assert document["complete"] is True and exported(document) == set()


def test_export_refuses_what_is_not_an_email(config: Path, tmp_path: Path) -> None:
    result = cli(config, "export", "not-an-email", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "'not-an-email' is not an email address" in result.output
    assert not (tmp_path / "o").exists()


def test_ledger_points_at_records_a_search_misses_and_at_sources_no_longer_configured(
        running: RunningEstate, settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    estate = running.estate
    person = spread(estate)[1]
    shop_name = person.guest_shops[0]
    shop = estate.shops[shop_name]
    order = shop.add_order(status="completed",
                           billing={"email": person.email, "first_name": "CANARY"})
    sync(ledger, settings)
    # The email is taken off the order by hand: the shop's search no longer finds it, but the
    # order still holds the name, and the ledger knows whose it is.
    shop.update_order(order, billing={"email": ""})
    with open_systems(settings, sleep=lambda _: None) as systems:
        found = systems.connectors[f"woo:{shop_name}"].lookup(person.email)
    assert str(order) not in {f["external_id"] for f in found}
    result = run_export(ledger, settings, person.email, tmp_path / "one")
    document = json.loads(result.json_path.read_text(encoding="utf-8"))
    assert (f"woo:{shop_name}", "order", str(order)) in exported(document)
    # A shop dropped from the config still holds the person, says the ledger: incomplete.
    narrowed = settings.model_copy(update={"woocommerce": [
        s for s in settings.woocommerce if s.name != shop_name]})
    result = run_export(ledger, narrowed, person.email, tmp_path / "two")
    document = json.loads(result.json_path.read_text(encoding="utf-8"))
    assert result.complete is False and document["complete"] is False
    assert document["systems"][f"woo:{shop_name}"]["status"].startswith("failed: not configured")


def test_export_page_escapes_what_a_system_holds(
        running: RunningEstate, settings: Settings, lite: Ledger, tmp_path: Path) -> None:
    shop = next(iter(running.estate.shops.values()))
    shop.add_customer(email="mallory@example.net", first_name="<script>alert(1)</script>",
                      billing={"address_1": '"><img src=x onerror=alert(2)>'})
    result = run_export(lite, settings, "mallory@example.net", tmp_path)
    page = result.html_path.read_text(encoding="utf-8")
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    document = json.loads(result.json_path.read_text(encoding="utf-8"))
    (record,) = [r for a in document["systems"].values() for r in a["records"]]
    assert record["data"]["first_name"] == "<script>alert(1)</script>"
