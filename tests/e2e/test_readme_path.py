"""The README's systemd install, step by step, as a test: a virtual environment of its own
with the checkout installed by pip (step 1), the config written from `config-example` and
edited to point at the sandbox twins on 127.0.0.1 (step 2), the secrets as credential files
(step 3), `check` before enabling (step 4), then the daemon's round (`run --once`, as the
timer runs it) and the operator's everyday commands from a shell, through the installed
console script.

The unit's StateDirectory= is a directory of the test's, given as $STATE_DIRECTORY as
systemd gives it (the example leaves `state_dir` out, as the README says).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from sandbox.demo import RunningEstate
from sandbox.estate import EstateSpec
from sandbox.seed import build_estate
from vocabulary import utcnow

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# What `pip install <checkout>` must not see of a working tree.
NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build",
                                    "demo-out", ".pytest_cache", ".ruff_cache", "*.db",
                                    "*.db-wal", "*.db-shm")


@dataclass(frozen=True)
class Install:
    program: Path
    python: Path


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    """README step 1: `python3 -m venv /opt/privacy-ledger`, then
    `/opt/privacy-ledger/bin/pip install /path/to/privacy-ledger` (a copy of this checkout,
    so that the build leaves nothing in the working tree)."""
    root = tmp_path_factory.mktemp("readme-install")
    checkout = root / "privacy-ledger"
    shutil.copytree(REPO, checkout, ignore=NOT_SOURCE)
    venv = root / "opt" / "privacy-ledger"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300,
                   capture_output=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(checkout)],
                         capture_output=True, text=True, timeout=900, check=False,
                         env=shell_env())
    assert pip.returncode == 0, f"pip install failed:\n{pip.stdout}\n{pip.stderr}"
    return Install(program=venv / "bin" / "privacy-ledger", python=venv / "bin" / "python")


def shell_env(**extra: str) -> dict[str, str]:
    """An operator's environment: nothing of this test run's Python path or systemd's."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CREDENTIALS_DIRECTORY", "PRIVACY_LEDGER_CONFIG", "PYTHONPATH",
                        "STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                        "VIRTUAL_ENV")}
    return {**env, **extra}


@dataclass
class Mailbox:
    messages: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, _server: object, _session: object, envelope: object) -> str:
        self.messages.append(envelope.content)  # type: ignore[attr-defined]
        return "250 Message accepted for delivery"


@pytest.fixture(scope="module")
def relay() -> Iterator[tuple[Mailbox, int]]:
    """A mail relay on 127.0.0.1 (the README's `security = "none"` case)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def estate() -> Iterator[RunningEstate]:
    built = build_estate(EstateSpec(people=40, shops=("allmyink",), sites=("blog",),
                                    now=utcnow().replace(microsecond=0)))
    with RunningEstate(built) as running:
        yield running


def edited(text: str, changes: list[tuple[str, str]]) -> str:
    """What the operator does in `sudo editor config.toml`: each line changed once."""
    for old, new in changes:
        assert text.count(old + "\n") == 1, f"config-example has no single line {old!r}"
        text = text.replace(old + "\n", new + "\n")
    return text


def tree(directory: Path) -> dict[str, str]:
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def table(stdout: str) -> dict[str, tuple[str, str]]:
    lines = stdout.splitlines()
    assert lines[0].split() == ["CHECK", "RESULT", "DETAIL"]
    return {name: (result, detail) for name, result, detail in
            (line.split(None, 2) for line in lines[1:])}


def test_the_readme_systemd_install_path_works_with_the_installed_command(
        installed: Install, estate: RunningEstate, relay: tuple[Mailbox, int],
        tmp_path: Path) -> None:
    mailbox, smtp_port = relay
    etc = tmp_path / "etc" / "privacy-ledger"
    credentials = etc / "credentials"
    state = tmp_path / "var" / "lib" / "privacy-ledger"
    credentials.mkdir(parents=True, mode=0o700)
    state.mkdir(parents=True, mode=0o700)  # systemd makes the StateDirectory= empty
    config = etc / "config.toml"

    def command(*args: str, as_service: bool = False) -> subprocess.CompletedProcess[str]:
        env = shell_env(STATE_DIRECTORY=str(state))
        if as_service:
            env["CREDENTIALS_DIRECTORY"] = str(credentials)
        return subprocess.run([str(installed.program), "--config", str(config), *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300, check=False)

    # 1. The application lives in its own virtual environment, not in this checkout.
    located = subprocess.run([str(installed.python), "-c", "import daemon; print(daemon.__file__)"],
                             cwd=tmp_path, env=shell_env(), capture_output=True, text=True,
                             check=True, timeout=60)
    assert Path(located.stdout.strip()).is_relative_to(installed.python.parent.parent)
    version = subprocess.run([str(installed.program), "--version"], env=shell_env(),
                             capture_output=True, text=True, check=True, timeout=60)
    assert version.stdout.startswith("privacy-ledger, version ")

    # 2. The config from config-example, state_dir left out, pointed at the twins.
    example = subprocess.run([str(installed.program), "config-example"], env=shell_env(),
                             capture_output=True, text=True, check=True, timeout=60).stdout
    assert '# state_dir = "/var/lib/privacy-ledger"' in example.splitlines()
    config.write_text(edited(example, [
        ('url = "https://allmyink.example"', f'url = "{estate.url("woo:allmyink")}"'),
        ('base_url = "https://api.stripe.com"', f'base_url = "{estate.url("stripe")}"'),
        ('# base_url = "https://us6.api.mailchimp.com/3.0"',
         f'base_url = "{estate.url("mailchimp")}/3.0"'),
        ('url = "https://blog.example"', f'url = "{estate.url("wp:blog")}"'),
        ('user = "privacy-ledger"', f'user = "{estate.estate.sites["blog"].admin_user}"'),
        ('host = "smtp.example.com"', 'host = "127.0.0.1"'),
        ("port = 587", f"port = {smtp_port}"),
        ('security = "starttls"', 'security = "none"'),
    ]))

    # 3. One file per secret, named as the config's credential:NAME references.
    shop = estate.estate.shops["allmyink"]
    for name, value in (("allmyink-key", shop.consumer_key),
                        ("allmyink-secret", shop.consumer_secret),
                        ("stripe-key", estate.estate.stripe.api_key),
                        ("mailchimp-key", estate.estate.mailchimp.api_key),
                        ("blog-app-password", estate.estate.sites["blog"].admin_password)):
        (credentials / name).write_text(value)

    # 4. check before enabling: every system answers; the ledger is left to the first run.
    first = command("check", as_service=True)
    assert first.returncode == 0, first.stdout + first.stderr
    rows = table(first.stdout)
    # Every audience a sync reads has a row of its own.
    audiences = {name: row for name, row in rows.items() if name.startswith("mailchimp:")}
    assert audiences and all(row[0] == "OK" for row in audiences.values())
    rows = {name: row for name, row in rows.items() if name not in audiences}
    assert rows == {
        "config": ("OK", str(config)),
        "ledger": ("OK", f"not created yet: the first `run` creates it in {state}"),
        "woo:allmyink": rows["woo:allmyink"], "stripe": rows["stripe"],
        "mailchimp": rows["mailchimp"], "wp:blog": rows["wp:blog"],
        "smtp": ("OK", "connected (nothing sent)"),
        # The README's config carries [policy] with nothing declared yet: check says so.
        "policy": rows["policy"], "policy:woo:allmyink": rows["policy:woo:allmyink"]}
    assert rows["policy"][1].startswith("[policy] declares nothing")
    assert all(result == "OK" for result, _ in rows.values()), rows
    assert tree(state) == {}, "check wrote into the state directory"

    #    A config error exits 2, naming the key; a missing [report]/[smtp] fails the check.
    good = config.read_text()
    config.write_text(good.replace('audit_at = "06:00"', 'audit_at = "25:00"'))
    broken = command("check", as_service=True)
    assert broken.returncode == 2, broken.stdout + broken.stderr
    assert table(broken.stdout)["config"][1].startswith(f"{config}: schedule.audit_at: ")
    config.write_text(good[:good.index("[report]")] + good[good.index("[schedule]"):])
    silent = command("check", as_service=True)
    assert silent.returncode == 1, silent.stdout
    assert table(silent.stdout)["report"][0] == "FAIL"
    assert table(silent.stdout)["smtp"][1].startswith("[smtp] is missing: ")
    config.write_text(good)

    # The service's round (the timer's `run --once`): sync, audit, the email.
    sync = command("sync", as_service=True)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert sync.stdout.startswith("woo:allmyink: success (")
    run = command("run", "--once", as_service=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(mailbox.messages) == 1
    assert (state / "ledger.db").exists()

    # The operator's shell: no credentials, the commands that need none.
    audit = command("audit")
    assert audit.returncode == 0, audit.stderr
    person = estate.estate.people[0].email
    where = command("where", person)
    assert where.returncode == 0, where.stderr
    report = command("report", "--text")
    assert report.returncode == 0, report.stderr
    assert "Audit trail:" in report.stdout
    verify = command("verify-log")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # check once the daemon has run: the schema is current, and check changes nothing.
    before = tree(state)
    again = command("check", as_service=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert table(again.stdout)["ledger"] == (
        "OK", f"sqlite:///{state / 'ledger.db'}: schema up to date")
    assert tree(state) == before
