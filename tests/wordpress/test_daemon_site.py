"""WordPress as the fourth system, end to end through the daemon's own commands (sync, audit,
where, export, erase, check), against the twin and a real WordPress, on SQLite and
PostgreSQL: the site's comments and accounts reach the ledger, the rules find what WordPress
keeps too long, and a person's comments and account are found, copied and erased."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner, Result
from sqlalchemy import select

from daemon.cli import main
from daemon.ledger import Holding, Ledger, Source
from tests.wordpress.conftest import Server

PERSON = "wren.daemon@example.net"


def _config(directory: Path, server: Server, ledger_url: str, **site: object) -> Path:
    user, _ = server.admin
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in site.items())
    path = directory / "config.toml"
    path.write_text(f"""
[ledger]
url = "{ledger_url}"
state_dir = "{directory}"

[[wordpress]]
name = "blog"
url = "{server.url}"
user = "{user}"
app_password = "env:WP_APP_PASSWORD"
{extra}
[retention]
spam_and_trash_comments = "0s"
network_data = "30d"
inactive_accounts = "1y"

[report]
recipients = ["owner@example.com"]
sender = "ledger@example.com"

[smtp]
host = "127.0.0.1"
port = 2
""", encoding="utf-8")
    return path


def _cli(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)


@pytest.fixture
def person(wordpress: Server) -> Iterator[dict[str, int]]:
    """A subscriber with an approved comment and one in spam, made for this test and removed
    after it (whatever the erasure left)."""
    auth = wordpress.admin
    user = requests.post(f"{wordpress.rest}/users", auth=auth, timeout=30, json={
        "username": "wren-daemon", "email": PERSON, "password": "a long password 123",
        "roles": ["subscriber"]})
    assert user.status_code == 201, user.text
    made = {"user": int(user.json()["id"])}
    try:
        # Different words: WordPress refuses the same words twice from one author (409).
        for key, words in (("approved", "Lovely ink."), ("spam", "Cheap pills here")):
            comment = requests.post(f"{wordpress.rest}/comments", auth=auth, timeout=30, json={
                "post": wordpress.seeded["post"], "author_name": "Wren Daemon",
                "author_email": PERSON, "author_ip": "198.51.100.77",
                "author_user_agent": "Mozilla/5.0 (Wren's phone)", "content": words,
                "status": key})
            assert comment.status_code == 201, comment.text
            made[key] = int(comment.json()["id"])
        yield made
    finally:
        for key, ident in made.items():
            path = "users" if key == "user" else "comments"
            params = {"force": "true", **({"reassign": "1"} if key == "user" else {})}
            requests.delete(f"{wordpress.rest}/{path}/{ident}", auth=auth, params=params,
                            timeout=30)


@pytest.fixture
def site_config(wordpress: Server, ledger_url: str, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WP_APP_PASSWORD", wordpress.admin[1])
    return _config(tmp_path, wordpress, ledger_url, erase_accounts=True)


def _holdings(ledger_url: str) -> dict[tuple[str, str], Holding]:
    ledger = Ledger.open(ledger_url)
    try:
        with ledger.sessions() as session:
            rows = session.scalars(select(Holding).join(Source).where(
                Source.name == "wp:blog", Holding.gone_at.is_(None))).all()
            return {(h.record_type, h.external_id): h for h in rows}
    finally:
        ledger.close()


def test_a_site_syncs_audits_exports_and_erases_end_to_end(
        wordpress: Server, person: dict[str, int], site_config: Path, ledger_url: str,
        tmp_path: Path) -> None:
    checked = _cli(site_config, "check")
    assert "wp:blog" in checked.output and "OK" in checked.output.split("wp:blog")[1][:40], \
        checked.output

    synced = _cli(site_config, "sync", "--quiet")
    assert synced.exit_code == 0, synced.output
    held = _holdings(ledger_url)
    spec = wordpress.spec
    # Every comment of every status and type that has an id upstream, and every account.
    assert sum(1 for kind, _ in held if kind == "comment") == len(spec["comments"]) + 2
    assert sum(1 for kind, _ in held if kind == "user") >= len(spec["users"]) + 1
    comment = held[("comment", str(person["approved"]))]
    assert {"email", "name", "ip_address", "user_agent", "free_text"} <= set(
        comment.categories.strip(",").split(","))
    assert held[("comment", str(person["spam"]))].status == "spam"

    audited = _cli(site_config, "audit", "--json")
    assert audited.exit_code in (0, 1), audited.output
    found = {(f["rule"], f["external_id"]) for f in json.loads(audited.output)}
    assert ("comment-kept-in-spam-or-trash", str(person["spam"])) in found
    old_with_ip = [c for c in spec["comments"] if c["ip"] and c["status"] != "trash"]
    assert any(rule == "comment-network-data-past-retention" for rule, _ in found), old_with_ip
    assert any(rule == "inactive-site-account" for rule, _ in found)
    # Accounts that run the site are never reported for deletion.
    staff = {ident for (kind, ident), h in held.items()
             if kind == "user" and h.status in ("administrator", "editor", "shop_manager")}
    assert staff and not {ident for rule, ident in found
                          if rule == "inactive-site-account"} & staff

    # The spam comment fixed from the command line: deleted for good, the finding resolved.
    fixed = _cli(site_config, "fix", "comment-kept-in-spam-or-trash", "wp:blog",
                 str(person["spam"]), "--apply", "--yes")
    assert fixed.exit_code == 0, fixed.output
    gone = requests.get(f"{wordpress.rest}/comments/{person['spam']}", auth=wordpress.admin,
                        params={"context": "edit"}, timeout=30)
    assert gone.status_code == 404
    again = json.loads(_cli(site_config, "audit", "--json").output)
    assert ("comment-kept-in-spam-or-trash", str(person["spam"])) not in {
        (f["rule"], f["external_id"]) for f in again}

    where = _cli(site_config, "where", PERSON, "--json")
    assert where.exit_code == 0, where.output
    assert {(h["source"], h["record_type"]) for h in json.loads(where.output)
            if h["gone_at"] is None} == {("wp:blog", "comment"), ("wp:blog", "user")}

    out = tmp_path / "export"
    exported = _cli(site_config, "export", PERSON, "--out", str(out))
    assert exported.exit_code == 0, exported.output
    copy = json.loads(next(out.glob("*.json")).read_text(encoding="utf-8"))
    text = json.dumps(copy)
    assert "Lovely ink." in text and "198.51.100.77" in text and "Wren's phone" in text

    planned = _cli(site_config, "erase", PERSON)
    assert planned.exit_code == 0, planned.output
    applied = _cli(site_config, "erase", PERSON, "--apply", "--yes")
    assert applied.exit_code == 0, applied.output
    auth = wordpress.admin
    approved = requests.get(f"{wordpress.rest}/comments/{person['approved']}", auth=auth,
                            params={"context": "edit"}, timeout=30).json()
    assert approved["author_email"] != PERSON and approved["author_ip"] != "198.51.100.77"
    assert "Lovely ink." in approved["content"]["raw"]
    for gone in (f"comments/{person['spam']}", f"users/{person['user']}"):
        answer = requests.get(f"{wordpress.rest}/{gone}", auth=auth,
                              params={"context": "edit"}, timeout=30)
        assert answer.status_code == 404, (gone, answer.text)
    after = _cli(site_config, "where", PERSON, "--json", "--current")
    assert json.loads(after.output) == []


def test_an_administrator_is_never_erased_and_an_account_is_kept_unless_allowed(
        wordpress: Server, person: dict[str, int], ledger_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WP_APP_PASSWORD", wordpress.admin[1])
    config = _config(tmp_path, wordpress, ledger_url)  # erase_accounts defaults to false
    assert _cli(config, "sync", "--quiet").exit_code == 0
    planned = _cli(config, "erase", PERSON)
    assert "erase_accounts is false" in planned.output, planned.output
    applied = _cli(config, "erase", PERSON, "--apply", "--yes")
    assert applied.exit_code == 0, applied.output
    answer = requests.get(f"{wordpress.rest}/users/{person['user']}", auth=wordpress.admin,
                          params={"context": "edit"}, timeout=30)
    assert answer.status_code == 200


def test_a_shop_at_the_same_address_reads_the_accounts_so_the_site_reads_comments_only(
        wordpress: Server, ledger_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.config import load_settings

    monkeypatch.setenv("WP_APP_PASSWORD", wordpress.admin[1])
    config = _config(tmp_path, wordpress, ledger_url)
    config.write_text(config.read_text(encoding="utf-8") + f"""
[[woocommerce]]
name = "shop"
url = "{wordpress.url.upper().replace('HTTP://', 'http://')}/"
consumer_key = "env:WP_APP_PASSWORD"
consumer_secret = "env:WP_APP_PASSWORD"
""", encoding="utf-8")
    settings = load_settings(config)
    units = {unit.name: unit for _, _, unit in settings.units()}
    opening = units["wp:blog"].open(retry_attempts=1)
    try:
        (site,) = opening.connectors
        assert site.record_types == ("comment",)
        batches = list(site.pull(None))
        assert batches[-1].listed_types == frozenset({"comment"})
        assert {r.record_type for batch in batches for r in batch.records} == {"comment"}
    finally:
        opening.close()
