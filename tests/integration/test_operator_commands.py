"""The operator's day after a systemd install, through the real command in a subprocess: the
config names its secrets as `credential:NAME` (systemd gives them only to the service), and
the everyday commands run from a shell, without $CREDENTIALS_DIRECTORY. Only the commands
that use a secret read it; they say which one and how to run them with it. `check` reads the
ledger without creating, migrating or writing it, and fails on a missing [report]/[smtp].
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from daemon.ledger import SCHEMA_REVISION, make_engine, schema_revision
from sandbox.demo import RunningEstate
from sandbox.estate import EstateSpec
from sandbox.seed import build_estate
from vocabulary import utcnow

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROGRAM = Path(sys.executable).parent / "privacy-ledger"
CREDENTIAL_NAMES = ("allmyink-key", "allmyink-secret", "stripe-key", "mailchimp-key")
SMTP_EXTRA = ('\n[report]\nrecipients = ["owner@allmyink.example"]\n'
              'sender = "privacy-ledger@allmyink.example"\n'
              '\n[smtp]\nhost = "127.0.0.1"\nport = 2\nusername = "privacy-ledger"\n'
              'password = "credential:smtp-password"\ntimeout = "2s"\n')


def command(config: Path, *args: str, credentials: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`privacy-ledger --config CONFIG ARGS…` as an operator's shell runs it: no
    $CREDENTIALS_DIRECTORY unless `credentials` (as systemd's LoadCredential= gives it)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CREDENTIALS_DIRECTORY", "PRIVACY_LEDGER_CONFIG", "NOTIFY_SOCKET",
                        "WATCHDOG_USEC", "WATCHDOG_PID")}
    if credentials is not None:
        env["CREDENTIALS_DIRECTORY"] = str(credentials)
    program = [str(PROGRAM)] if PROGRAM.exists() else [
        sys.executable, "-c", "from daemon.cli import main; main()"]
    return subprocess.run([*program, "--config", str(config), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def estate() -> Iterator[RunningEstate]:
    built = build_estate(EstateSpec(people=40, shops=("allmyink",),
                                    now=utcnow().replace(microsecond=0)))
    with RunningEstate(built) as running:
        yield running


def credential_config(estate: RunningEstate, directory: Path, extra: str = SMTP_EXTRA
                      ) -> tuple[Path, Path]:
    """The sandbox's config with every secret a `credential:NAME` reference, and the
    directory systemd would give the service as $CREDENTIALS_DIRECTORY."""
    config = estate.write_config(directory, extra=extra)
    credentials = directory / "secrets"
    (credentials / "smtp-password").write_text("smtp-CANARY-password\n")
    text = config.read_text()
    for name in CREDENTIAL_NAMES:
        text = text.replace(f'"file:{credentials / name}"', f'"credential:{name}"')
    assert "file:" not in text
    config.write_text(text)
    return config, credentials


@pytest.fixture(scope="module")
def synced(estate: RunningEstate, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Path, Path]:
    """A config with credential references and a ledger synced by the service (with its
    credentials)."""
    config, credentials = credential_config(estate, tmp_path_factory.mktemp("operator"))
    done = command(config, "sync", credentials=credentials)
    assert done.returncode == 0, done.stdout + done.stderr
    return config, credentials


def test_everyday_commands_work_from_a_shell_without_the_services_credentials(
        synced: tuple[Path, Path], estate: RunningEstate) -> None:
    config, _ = synced
    audit = command(config, "audit", "--json")
    assert audit.returncode == 0, audit.stderr
    findings = json.loads(audit.stdout)
    held = next(f for f in findings if f["external_id"] and f["email"])
    person = held["email"]

    where = command(config, "where", person)
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(f"{person} — ")
    # The line the email tells the owner to run.
    by_rule = command(config, "audit", "--rule", held["rule"])
    assert by_rule.returncode == 0, by_rule.stderr
    assert held["rule"] in by_rule.stdout
    ack = command(config, "ack", held["rule"], held["source"], held["external_id"],
                  "--record-type", held["record_type"], "--reason", "legal hold")
    assert ack.returncode == 0, ack.stderr
    assert ack.stdout.startswith("acknowledged: ")
    report = command(config, "report", "--text")
    assert report.returncode == 0, report.stderr
    assert "Audit trail:" in report.stdout
    verify = command(config, "verify-log")
    assert verify.returncode == 0, verify.stderr
    assert "the hash chain is intact" in verify.stdout
    for done in (audit, where, by_rule, ack, report, verify):
        assert "CREDENTIALS_DIRECTORY" not in done.stderr
        assert "config error" not in done.stderr


@pytest.mark.parametrize("args", [
    ("sync",), ("check",), ("export", "ann@example.com", "--out", "{tmp}"),
    ("erase", "ann@example.com"), ("report", "--send"),
], ids=lambda args: "-".join(a for a in args if not a.startswith("{")))
def test_commands_that_use_secrets_say_which_and_how_to_run_them(
        synced: tuple[Path, Path], tmp_path: Path, args: tuple[str, ...]) -> None:
    config, _ = synced
    out = tmp_path / "out"
    argv = tuple(a.replace("{tmp}", str(out)) for a in args)
    done = command(config, *argv)
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    assert ("stripe.api_key: secret credential:stripe-key: $CREDENTIALS_DIRECTORY is not set"
            in said)
    hint = next(line for line in done.stderr.splitlines() if "systemd-run" in line)
    assert hint.split()[:4] == ["sudo", "systemd-run", "-P", "--wait"]
    for name in (*CREDENTIAL_NAMES, "smtp-password"):
        assert f"--property=LoadCredential={name}:/etc/privacy-ledger/credentials/{name}" \
            in hint
    this = " ".join(("--config", str(config.absolute()), *argv))
    assert hint.endswith(this)
    assert f"  sudo CREDENTIALS_DIRECTORY=/etc/privacy-ledger/credentials {PROGRAM} {this}" \
        in done.stderr.splitlines()
    assert "env:NAME or file:/path" in done.stderr
    assert not out.exists(), "nothing is written by a command that cannot run"


def test_a_wrong_key_is_still_an_error_for_every_command(
        synced: tuple[Path, Path], tmp_path: Path) -> None:
    config, _ = synced
    typo = tmp_path / "typo.toml"
    typo.write_text(config.read_text().replace("[ledger]\n", "[ledger]\nbatchsize = 10\n"))
    for args in (("where", "ann@example.com"), ("audit",), ("report", "--text"),
                 ("verify-log",), ("ack", "sync-stale", "stripe", "-", "--reason", "x"),
                 ("sync",)):
        done = command(typo, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        # The one problem there is: not the secrets this command does not read.
        assert done.stderr.splitlines() == [
            f"config error: {typo}: ledger.batchsize: unknown key (a typo? "
            "config/example.toml lists every key)"], args


def test_a_credential_trail_key_is_read_only_by_the_commands_that_key_the_trail(
        estate: RunningEstate, tmp_path: Path) -> None:
    config, credentials = credential_config(estate, tmp_path / "etc")
    (credentials / "trail-key").write_text("k" * 64 + "\n")
    config.write_text(config.read_text().replace(
        "[ledger]\n", '[ledger]\ntrail_key = "credential:trail-key"\n'))
    assert command(config, "sync", credentials=credentials).returncode == 0

    assert command(config, "where", "ann@example.com").returncode == 0
    assert command(config, "report", "--text").returncode == 0
    audit = command(config, "audit")
    assert audit.returncode == 2
    assert audit.stderr.splitlines()[0] == (
        f"config error: {config}: ledger.trail_key: secret credential:trail-key: "
        "$CREDENTIALS_DIRECTORY is not set; under systemd add LoadCredential=trail-key:"
        "/path/to/file to the unit, or use file:/path")
    assert "--property=LoadCredential=trail-key:/etc/privacy-ledger/credentials/trail-key " \
        in audit.stderr
    assert "stripe-key" not in audit.stderr
    assert command(config, "audit", credentials=credentials).returncode == 0


# ------------------------------------------------------------------------------ check


def rows(done: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """check's table: name → (OK/FAIL, detail)."""
    found = {}
    for line in done.stdout.splitlines()[1:]:
        name, result, detail = line.split(None, 2)
        found.setdefault(name, (result, detail))
    return found


def files_of(directory: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.iterdir()) if path.is_file()}


def test_check_leaves_a_ledger_that_does_not_exist_yet_to_the_first_run(
        estate: RunningEstate, tmp_path: Path) -> None:
    config, credentials = credential_config(estate, tmp_path / "etc", extra="")
    state = tmp_path / "var-lib-privacy-ledger"
    config.write_text(config.read_text().replace(f'state_dir = "{tmp_path / "etc"}"',
                                                 f'state_dir = "{state}"'))
    done = command(config, "check", credentials=credentials)
    assert rows(done)["ledger"] == (
        "OK", f"not created yet: the first `run` creates it in {state}")
    assert not state.exists(), "check created the state directory or the ledger"


def old_ledger(url: str) -> None:
    """A ledger one migration behind, as the previous release left it."""
    from alembic import command as alembic
    from alembic.config import Config

    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", "daemon:migrations")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        alembic.upgrade(config, "0002")
    engine.dispose()


def test_check_reports_pending_migrations_and_writes_nothing_into_the_ledger(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    url = f"sqlite:///{state / 'ledger.db'}"
    old_ledger(url)
    before = files_of(state)
    assert list(before) == ["ledger.db"]
    config = tmp_path / "config.toml"
    config.write_text(f'[ledger]\nstate_dir = "{state}"\n')

    done = command(config, "check")
    assert rows(done)["ledger"] == (
        "OK", f"{url}: schema 0002, this version's is {SCHEMA_REVISION}: the daemon "
              "migrates it when it starts (`run`); nothing was changed")
    assert files_of(state) == before, "check wrote into the ledger (or beside it)"


def test_check_reads_a_postgresql_ledger_without_migrating_it(pg_url: str,
                                                              tmp_path: Path) -> None:
    old_ledger(pg_url)
    config = tmp_path / "config.toml"
    config.write_text(f'[ledger]\nurl = "{pg_url}"\n')
    done = command(config, "check")
    assert rows(done)["ledger"][0] == "OK"
    assert "schema 0002, this version's is" in rows(done)["ledger"][1]
    engine = create_engine(pg_url)
    try:
        assert schema_revision(engine) == "0002"
    finally:
        engine.dispose()


def test_check_fails_without_report_and_smtp_and_run_warns_at_start(
        estate: RunningEstate, tmp_path: Path) -> None:
    config, credentials = credential_config(estate, tmp_path / "etc", extra="")
    done = command(config, "check", credentials=credentials)
    assert done.returncode == 1, done.stdout
    table = rows(done)
    assert table["report"] == ("FAIL", "[report] is missing: the daemon audits every night "
                                       "but emails nobody; add [report] with recipients and "
                                       "sender")
    assert table["smtp"] == ("FAIL", "[smtp] is missing: no email could be delivered; add "
                                     "[smtp] with host (and port, security, username, "
                                     "password as needed)")
    # Without [policy] nothing is claimed: check says so, and it is no failure.
    assert table["policy"][0] == "OK"
    assert table["policy"][1].startswith("[policy] is missing: nothing is declared")
    # Every audience a sync reads has a row of its own.
    assert {name: result for name, (result, _) in table.items()
            if name not in ("report", "smtp", "policy")
            and not name.startswith("mailchimp:")} == {
        "config": "OK", "ledger": "OK", "woo:allmyink": "OK", "stripe": "OK",
        "mailchimp": "OK"}
    assert {result for name, (result, _) in table.items()
            if name.startswith("mailchimp:")} == {"OK"}

    with_report = tmp_path / "report.toml"
    with_report.write_text(config.read_text() + SMTP_EXTRA.split("\n[smtp]")[0] + "\n")
    assert rows(command(with_report, "check", credentials=credentials))["smtp"] == (
        "FAIL", "[smtp] is missing: the nightly email would wait in the outbox, never "
                "delivered; add [smtp] with host (and port, security, username, password "
                "as needed)")

    run = command(config, "run", "--once", credentials=credentials)
    assert run.returncode == 0, run.stdout + run.stderr
    warnings = [json.loads(line) for line in run.stdout.splitlines()
                if '"config.incomplete"' in line]
    assert [(w["level"], w["section"]) for w in warnings] == [
        ("warning", "report"), ("warning", "smtp")]
    assert warnings[0]["problem"] == table["report"][1]


def test_check_exits_2_on_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[ledger]\nstate_dir = "{tmp_path}"\n[schedule]\naudit_at = "25:00"\n')
    done = command(config, "check")
    assert done.returncode == 2, done.stdout + done.stderr
    assert rows(done)["config"] == (
        "FAIL", f"{config}: schedule.audit_at: '25:00' is not a time of day: write HH:MM on "
                "a 24-hour clock, e.g. \"06:00\"")
    assert not (tmp_path / "ledger.db").exists()
