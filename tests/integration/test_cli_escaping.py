"""Text from upstream reaches the terminal escaped: `where`, `audit`, `erase` and `sync`
print ANSI escape sequences, CR/LF and other control characters as visible escapes, so an
upstream cannot recolour, clear or forge lines of what the owner reads; the `--json`
outputs stay JSON that decodes to the stored values and carry no raw control either."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from connectors.base import Category, Record
from daemon.cli import main
from daemon.ledger import Ledger, SyncRun
from daemon.sync import upsert_records
from tests.integration.hostile_servers import ErrorServer
from vocabulary import utcnow

# What a terminal acts on: every C0/C1 control but the newlines the command itself prints,
# DEL, bidi overrides.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
EVIL_ID = "ord_1\x1b[2J\x1b]0;owned\x07\u202e"
EVIL_STATUS = "pending\r\n  woo:shop order 1 ok"
EVIL_NOTE = "card number pattern in \x9b31mnote\x7f"
EVIL_AUDIENCE = "mailchimp:aud\x1b[8m"
EVIL_MESSAGE = "\x1b[32mall good\x1b[0m\r\nwoo:evil: success (full) — 0 seen"


@pytest.fixture
def hostile_config(tmp_path: Path, ledger_url: str) -> Path:
    """A ledger holding what a hostile upstream could make it hold, synced recently."""
    now = utcnow()
    ledger = Ledger.open(ledger_url)
    try:
        with ledger.session() as session:
            shop = ledger.source(session, "woo:allmyink", "woocommerce")
            audience = ledger.source(session, EVIL_AUDIENCE, "mailchimp")
            upsert_records(session, shop.id, [Record(
                record_type="order", external_id=EVIL_ID, email="ada@example.com",
                categories=frozenset({Category.EMAIL, Category.CARD_NUMBER,
                                      Category.FREE_TEXT}),
                status=EVIL_STATUS, created_at=now - timedelta(days=400),
                evidence=(EVIL_NOTE,))], now, touch_unchanged=False)
            upsert_records(session, audience.id, [Record(
                record_type="subscriber", external_id="m1", email="ada@example.com",
                categories=frozenset({Category.EMAIL}), status="subscribed",
                created_at=now)], now, touch_unchanged=False)
            for source in (shop, audience):
                session.add(SyncRun(source_id=source.id, mode="full", status="success",
                                    started_at=now - timedelta(minutes=5), finished_at=now))
    finally:
        ledger.close()
    path = tmp_path / "config.toml"
    path.write_text(f'[ledger]\nurl = "{ledger_url}"\n', encoding="utf-8")
    return path


def invoke(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args])


def assert_escaped(output: str) -> None:
    assert not RAW.search(output), repr(output)


def test_where_prints_upstream_text_escaped(hostile_config: Path) -> None:
    result = invoke(hostile_config, "where", "ada@example.com")
    assert result.exit_code == 0, result.output
    assert_escaped(result.output)
    lines = result.output.splitlines()
    # The header, two lines per holding, one evidence line: nothing forged.
    assert len(lines) == 1 + 2 * 2 + 1, lines
    assert "ord_1\\x1b[2J\\x1b]0;owned\\x07\\u202e" in result.output
    assert "pending\\r\\n  woo:shop order 1 ok" in result.output
    assert "\\x9b31mnote\\x7f" in result.output
    assert "mailchimp:aud\\x1b[8m" in result.output


def test_audit_prints_findings_escaped(hostile_config: Path) -> None:
    result = invoke(hostile_config, "audit")
    assert result.exit_code == 0, result.output
    assert_escaped(result.output)
    assert "ord_1\\x1b[2J\\x1b]0;owned\\x07\\u202e" in result.output


def test_json_outputs_carry_no_raw_control_and_decode_to_the_stored_values(
        hostile_config: Path) -> None:
    where = invoke(hostile_config, "where", "ada@example.com", "--json")
    audit = invoke(hostile_config, "audit", "--json")
    for result in (where, audit):
        assert result.exit_code == 0, result.output
        assert_escaped(result.output)
    held = {h["source"]: h for h in json.loads(where.output)}
    order = held["woo:allmyink"]
    assert (order["external_id"], order["status"], order["evidence"]) == (
        EVIL_ID, EVIL_STATUS, [EVIL_NOTE])
    assert EVIL_AUDIENCE in held
    assert EVIL_ID in {f["external_id"] for f in json.loads(audit.output)}


@pytest.fixture
def evil_shop(monkeypatch: pytest.MonkeyPatch) -> Iterator[ErrorServer]:
    monkeypatch.setenv("EVIL_KEY", "ck_test_key")
    monkeypatch.setenv("EVIL_SECRET", "cs_test_secret")
    with ErrorServer(401, {"code": "woocommerce_rest_cannot_view",
                           "message": EVIL_MESSAGE}) as server:
        yield server


def shop_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "shop.toml"
    path.write_text(f'[ledger]\nstate_dir = "{tmp_path}"\n\n[[woocommerce]]\nname = "evil"\n'
                    f'url = "{url}"\nconsumer_key = "env:EVIL_KEY"\n'
                    'consumer_secret = "env:EVIL_SECRET"\n', encoding="utf-8")
    return path


def test_sync_prints_an_upstream_error_message_escaped(tmp_path: Path,
                                                       evil_shop: ErrorServer) -> None:
    config = shop_config(tmp_path, evil_shop.url)
    result = invoke(config, "sync")
    assert result.exit_code == 1, result.output
    assert_escaped(result.output)
    [line] = result.stdout.splitlines()
    assert line.startswith("woo:evil: failed (incremental)")
    # The escape sequence is shown, not obeyed; the line break never forges a line (the
    # upstream text is masked on its way in, which folds it into a space).
    assert "\\x1b[32mall good\\x1b[0m" in line


def test_erase_prints_an_upstream_error_message_escaped(tmp_path: Path,
                                                        evil_shop: ErrorServer) -> None:
    config = shop_config(tmp_path, evil_shop.url)
    result = invoke(config, "erase", "ada@example.com")
    assert result.exit_code == 1, result.output
    assert_escaped(result.output)
    answer = [line for line in result.output.splitlines() if "NO ANSWER" in line]
    assert len(answer) == 1 and "\\x1b[32mall good\\x1b[0m" in answer[0]
    assert not [line for line in result.output.splitlines()
                if line.startswith("woo:evil: success")]
