"""Canary secrets and a hostile upstream through the real commands: the `privacy-ledger`
executable in a subprocess, a server on 127.0.0.1 that quotes back what it was sent (raw,
escaped, URL-encoded, as the base64 of a Basic header, cut off), and the SQLite file the run
leaves behind. No form of a secret and no quoted personal data may reach the output, the
logs (at debug too), sync_runs.error or the audit trail. Broken upstream bodies fail their
source cleanly while later sources still run, and an export says what is missing."""

from __future__ import annotations

import base64
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest

from sandbox.demo import RunningEstate
from sandbox.estate import EstateSpec
from sandbox.seed import build_estate
from tests.integration.hostile import HostileServer, Seen, answer, answer_json

WOO_KEY = "ck_CANARYwooKey0123456789abcdef0123456789"
WOO_SECRET = "cs_CANARYwooSecret0123456789abcdef01234"
STRIPE_KEY = "CANARYstripeKey0123456789abcdefghijklmnop"
MAILCHIMP_KEY = "CANARYmailchimp0123456789abcdef0123-us6"
CANARIES = (WOO_KEY, WOO_SECRET, STRIPE_KEY, MAILCHIMP_KEY)
PERSON = "dorothy.smith@example.com"
EXECUTABLE = str(Path(sys.executable).parent / "privacy-ledger")


def leaked_forms() -> list[str]:
    """What must never be found: the word every canary carries, each canary URL-encoded,
    and the middle of the base64 a Basic header makes of it."""
    forms = ["CANARY", "Q0FOQVJZ", "NBTkFSW", "DQU5BUl"]  # "CANARY" in base64, 3 alignments
    forms += [quote(c, safe="") for c in CANARIES]
    basic = base64.b64encode(f"privacy-ledger:{MAILCHIMP_KEY}".encode()).decode()
    forms += [basic[8:28], basic[-24:-4]]
    forms += [PERSON, "dorothy.smith", "Dorothy Smith", "7700 900123", "Acacia"]
    return forms


def assert_clean(text: str, where: str) -> None:
    for form in leaked_forms():
        assert form not in text, f"{form!r} reached {where}: {text[:2000]}"


def echo(seen: Seen) -> str:
    """What a careless upstream says back: the credentials it got, in several forms."""
    said: list[str] = []
    for value in seen.query.get("oauth_consumer_key", []):
        said += [f"consumer key {value!r} unknown", quote(value, safe=""), value[:18]]
    auth = seen.headers.get("authorization", "")
    if auth.startswith("Basic "):
        user_and_key = base64.b64decode(auth[6:]).decode()
        said += [f"header {auth!r}", repr(user_and_key), json.dumps(user_and_key)]
    elif auth:
        said += [f"header {auth!r}", quote(auth, safe=""), auth[:25] + "…"]
    said += [f"for {PERSON} ('Dorothy Smith', +44 7700 900123, '12 Acacia Avenue')"]
    return "; ".join(said)


def careless(connection: socket.socket, seen: Seen) -> None:
    text = echo(seen)
    if seen.path.startswith("/wp-json/"):
        answer_json(connection, {"code": "woocommerce_rest_authentication_error",
                                 "message": text}, "401 Unauthorized")
    elif seen.path.startswith("/v1/"):
        answer_json(connection, {"error": {"type": "invalid_request_error",
                                           "message": text}}, "401 Unauthorized")
    else:
        answer_json(connection, {"title": "API Key Invalid", "detail": text},
                    "401 Unauthorized")


def secret_file(directory: Path, name: str, value: str) -> Path:
    # A second line, as an owner's note or an editor's habit leaves it.
    path = directory / name
    path.write_text(f"{value}\nrotated 2026-11-01 by the owner\n", encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture
def upstream() -> Iterator[HostileServer]:
    with HostileServer(careless) as server:
        yield server


@pytest.fixture
def config(tmp_path: Path, upstream: HostileServer) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    lines = [
        "[ledger]", f'state_dir = "{tmp_path}"', "",
        "[[woocommerce]]", 'name = "careless"', f'url = "{upstream.url}"',
        f'consumer_key = "file:{secret_file(secrets, "woo-key", WOO_KEY)}"',
        f'consumer_secret = "file:{secret_file(secrets, "woo-secret", WOO_SECRET)}"', "",
        "[stripe]", f'api_key = "file:{secret_file(secrets, "stripe-key", STRIPE_KEY)}"',
        f'base_url = "{upstream.url}"', "",
        "[mailchimp]",
        f'api_key = "file:{secret_file(secrets, "mailchimp-key", MAILCHIMP_KEY)}"',
        f'base_url = "{upstream.url}/3.0"',
    ]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(config: Path, *args: str, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "PRIVACY_LEDGER_LOG_LEVEL"}
    environ.update(env or {})
    return subprocess.run([EXECUTABLE, "--config", str(config), *args], capture_output=True,
                          text=True, env=environ, timeout=timeout, check=False)


def stored(database: Path) -> tuple[list[str], list[str]]:
    """sync_runs.error and the audit trail's entries, as text."""
    with sqlite3.connect(database) as db:
        errors = [row[0] or "" for row in db.execute("SELECT error FROM sync_runs")]
        trail = [" ".join(str(v) for v in row) for row in db.execute("SELECT * FROM audit_log")]
    return errors, trail


def test_canary_secrets_never_leave_through_sync_check_or_the_ledger(
        config: Path, upstream: HostileServer, tmp_path: Path) -> None:
    synced = run(config, "sync")
    checked = run(config, "check")
    for name, result in (("sync", synced), ("check", checked)):
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        assert_clean(result.stdout + result.stderr, f"{name}'s output")
    # The first line was sent, not the note after it, and the server did quote it back.
    assert upstream.seen and any(WOO_KEY in "".join(s.query.get("oauth_consumer_key", []))
                                 for s in upstream.seen)
    assert f"Bearer {STRIPE_KEY}" in {s.headers.get("authorization") for s in upstream.seen}
    for source in ("woo:careless", "stripe", "mailchimp"):
        line = next(row for row in synced.stdout.splitlines() if row.startswith(source))
        assert "failed" in line and ("refused" in line or "401" in line), line
    assert "CHECK" in checked.stdout and "FAIL" in checked.stdout

    database = tmp_path / "ledger.db"
    errors, trail = stored(database)
    # Every source has its failed run, Mailchimp's too (it failed listing its audiences).
    assert len([e for e in errors if e]) == 3 and all("401" in e for e in errors), errors
    assert any("d***@example.com" in e for e in errors), errors
    assert len(trail) == 3
    assert_clean("\n".join(errors), "sync_runs.error")
    assert_clean("\n".join(trail), "the audit trail")
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("ledger.db*"))
    assert_clean(raw.decode("latin-1"), "the database file")


def test_debug_logs_show_every_request_and_no_secret(config: Path,
                                                     upstream: HostileServer) -> None:
    verbose = run(config, "--verbose", "sync")
    assert verbose.returncode == 1, verbose.stderr
    assert "upstream.response" in verbose.stderr and '"status": 401' in verbose.stderr
    assert_clean(verbose.stdout + verbose.stderr, "the debug log")
    from_env = run(config, "sync", env={"PRIVACY_LEDGER_LOG_LEVEL": "DEBUG"})
    assert "upstream.response" in from_env.stderr
    assert_clean(from_env.stdout + from_env.stderr, "the debug log")
    quiet = run(config, "sync", env={"PRIVACY_LEDGER_LOG_LEVEL": "error"})
    assert "upstream.response" not in quiet.stderr and "sync.start" not in quiet.stderr
    assert "sync.failed" in quiet.stderr


def test_a_bad_log_level_is_a_clear_usage_error(config: Path) -> None:
    result = run(config, "sync", env={"PRIVACY_LEDGER_LOG_LEVEL": "loud"})
    assert result.returncode == 2
    assert ("config error: PRIVACY_LEDGER_LOG_LEVEL: 'loud' is not a log level: use one of "
            "debug, info, warning, error") in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("bad", ["\t", "\r", "\x0b", "\x1b", "\x7f"])
def test_a_secret_with_a_control_character_is_refused_without_echoing_it(
        config: Path, tmp_path: Path, bad: str) -> None:
    (tmp_path / "secrets" / "stripe-key").write_text(
        f"{STRIPE_KEY[:20]}{bad}{STRIPE_KEY[20:]}\n", encoding="utf-8")
    for command in ("sync", "check"):
        result = run(config, command)
        assert result.returncode in (1, 2), result.stderr
        text = result.stdout + result.stderr
        assert "stripe.api_key: secret file:" in text and "control character" in text, text
        assert "Traceback" not in text
        assert_clean(text, f"{command}'s output")


# -- broken bodies: the source fails, the others run; an export says what is missing ---------


NOW = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)


def deep_json(connection: socket.socket, _seen: Seen) -> None:
    answer(connection, b"[" * 10_000 + b"]" * 10_000)


@pytest.fixture
def estate_with_a_broken_shop(tmp_path: Path) -> Iterator[tuple[RunningEstate, Path]]:
    estate = build_estate(EstateSpec(seed=5, people=12, now=NOW))
    with RunningEstate(estate) as live, HostileServer(deep_json) as broken:
        extra = "\n".join([
            "", "[[woocommerce]]", 'name = "broken"', f'url = "{broken.url}"',
            'consumer_key = "env:BROKEN_KEY"', 'consumer_secret = "env:BROKEN_SECRET"',
            "timeout = \"10s\"", ""])
        path = live.write_config(tmp_path / "config", extra=extra)
        yield live, path


def test_a_source_answering_json_nested_too_deep_fails_alone(
        estate_with_a_broken_shop: tuple[RunningEstate, Path]) -> None:
    _live, config = estate_with_a_broken_shop
    keys = {"BROKEN_KEY": "ck_broken_0123456789abcdef", "BROKEN_SECRET": "cs_broken_0123456789"}
    result = run(config, "sync", env=keys, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stdout
    lines = {row.split(":", 1)[0] if not row.startswith("woo:") else ":".join(
        row.split(":", 2)[:2]): row for row in result.stdout.splitlines()}
    assert "failed" in lines["woo:broken"] and "nested too deeply" in lines["woo:broken"]
    others = [row for source, row in lines.items() if source != "woo:broken"]
    assert len(others) >= 3 and all(": success" in row for row in others), result.stdout
    assert any(row.startswith("stripe") for row in others)
    assert any(row.startswith("mailchimp") for row in others)


def test_an_export_writes_what_it_got_and_names_the_broken_source(
        estate_with_a_broken_shop: tuple[RunningEstate, Path], tmp_path: Path) -> None:
    live, config = estate_with_a_broken_shop
    keys = {"BROKEN_KEY": "ck_broken_0123456789abcdef", "BROKEN_SECRET": "cs_broken_0123456789"}
    shop = next(iter(live.estate.shops.values()))
    email = next(iter(shop.customers.values()))["email"]
    out = tmp_path / "export"
    result = run(config, "export", email, "--out", str(out), env=keys, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    said = result.stdout + result.stderr
    assert "INCOMPLETE" in said and "woo:broken" in said, said
    assert "NO ANSWER — customers kept answering with incomplete JSON (nested too deeply" \
        in said
    written = list(out.glob("*.json"))
    assert written
    copy = json.loads(written[0].read_text(encoding="utf-8"))
    assert "nested too deeply" in json.dumps(copy)

