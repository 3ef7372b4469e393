"""What `sync` and `check` print, through the real command in a subprocess against the
sandbox twins: on a pseudo-terminal a bar per source with the upstream's own total (a count
for Stripe), log lines that always start a line of their own, one line per source at the
end; `--quiet` for cron; `--json` for scripts (one document on stdout, exit codes as ever).

Every wait is bounded and every process left running is killed at the end.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.demo import RunningEstate
from sandbox.estate import EstateSpec
from sandbox.seed import build_estate
from vocabulary import utcnow

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROGRAM = Path(sys.executable).parent / "privacy-ledger"
# CSI sequences (colours, cursor moves, line erases) and the cursor's show/hide.
CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# How a structlog console line starts: its ISO timestamp.
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
SOURCES = ("woo:allmyink", "woo:papercraft", "stripe")


@pytest.fixture
def running() -> Iterator[RunningEstate]:
    built = build_estate(EstateSpec(seed=5, people=200, now=utcnow().replace(microsecond=0)))
    with RunningEstate(built) as estate:
        yield estate


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PRIVACY_LEDGER_CONFIG", "NO_COLOR", "COLUMNS", "LINES",
                        "JOURNAL_STREAM", "FORCE_COLOR", "TTY_COMPATIBLE")}
    return {**env, "TERM": "xterm-256color", "PYTHONUNBUFFERED": "1"}


def on_a_terminal(config: Path, *args: str, timeout: float = 120,
                  term: str = "xterm-256color") -> tuple[int, str]:
    """Run the command with stdin, stdout and stderr on a pseudo-terminal (120x40);
    returns its exit status and everything the terminal received."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen([str(PROGRAM), "--config", str(config), *args], cwd=REPO,
                               stdin=slave, stdout=slave, stderr=slave,
                               env={**environment(), "TERM": term},
                               start_new_session=True)
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every end of the terminal's slave side is closed
                break
            if not chunk:
                break
            received += chunk
        else:
            raise AssertionError(f"{' '.join(args)} still running after {timeout:g}s")
        return process.wait(10), received.decode("utf-8", errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        os.close(master)


def piped(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROGRAM), "--config", str(config), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=environment(),
                          stdin=subprocess.DEVNULL, check=False)


def screen_lines(output: str) -> list[str]:
    """The terminal output without control sequences, cut at every CR and LF."""
    return [line for line in re.split(r"[\r\n]+", CONTROL.sub("", output)) if line.strip()]


def audiences(running: RunningEstate) -> dict[str, int]:
    return {f"mailchimp:{audience.id}": len(audience.members)
            for audience in running.estate.mailchimp.audiences.values()}


def test_a_terminal_sync_shows_a_bar_per_source_with_the_upstream_total_then_one_line_each(
        running: RunningEstate, tmp_path: Path) -> None:
    # Every page its own commit: a rate once a listing's second page is in.
    config = running.write_config(tmp_path, batch_size=1)
    code, output = on_a_terminal(config, "sync", "--full")
    assert code == 0, output
    lines = screen_lines(output)
    bars = [line for line in lines if "━" in line]
    for shop, twin in running.estate.shops.items():
        customers = len(twin.customers)
        # X-WP-Total of the customer listing, as the bar's total.
        assert any(re.search(rf"woo:{shop}\s.*━.*\s{customers:,}/{customers:,} customers",
                             bar) for bar in bars), (shop, customers, bars)
        # Then the orders, each bar with its rate and the time left.
        assert any(re.search(rf"woo:{shop}\s.*━.*/[\d,]+ orders\s+[\d,]+/s\s+\d+:\d\d:\d\d",
                             bar) for bar in bars), bars
    for source, members in audiences(running).items():
        assert any(re.search(rf"{source}\s.*━.*\s{members:,}/{members:,} members", bar)
                   for bar in bars), (source, members, bars)
    # Stripe lists carry no total: a count, no bar.
    stripe = [line for line in lines if re.match(r"\S+ stripe\s", line)]
    assert stripe and all("━" not in line and not re.search(r"\d/[\d,]+ records", line)
                          for line in stripe), stripe
    assert any(re.search(r"stripe\s+[\d,]+ records", line) for line in stripe), stripe
    # Then one line per source, none of the log events it restates.
    for source in (*SOURCES, *audiences(running)):
        said = [line for line in lines if line.startswith(f"{source}: ")]
        assert len(said) == 1 and said[0].startswith(f"{source}: success (full) — "), said
    assert "sync.start" not in output and "sync.done" not in output


def test_log_lines_on_a_terminal_always_start_a_line_of_their_own(
        running: RunningEstate, tmp_path: Path) -> None:
    config = running.write_config(tmp_path)
    # Retried answers log warnings while a bar is on the screen.
    running.estate.stripe.faults.inject("status", times=2, status=503, path="/v1/customers")
    for shop in running.estate.shops.values():
        shop.faults.inject("status", times=1, status=503, path="/wp-json/wc/v3/orders")
    code, output = on_a_terminal(config, "sync", "--full")
    assert code == 0, output
    text = CONTROL.sub("", output)
    starts = [found.start() for found in LOG_LINE.finditer(text)]
    assert len([s for s in starts if "upstream.retry" in text[s:s + 200]]) >= 3, text
    for start in starts:
        # A carriage return or a new line before it: the line is the log's alone.
        assert start == 0 or text[start - 1] in "\r\n", repr(text[max(0, start - 80):start + 80])
    assert any(f"{s}: success" in text for s in SOURCES)


def test_a_dumb_terminal_gets_no_bars_and_one_line_per_source(
        running: RunningEstate, tmp_path: Path) -> None:
    config = running.write_config(tmp_path)
    code, output = on_a_terminal(config, "sync", term="dumb")
    assert code == 0, output
    assert "━" not in output and "\x1b[2K" not in output and "\x1b[1A" not in output
    lines = screen_lines(output)
    for source in (*SOURCES, *audiences(running)):
        assert len([line for line in lines if line.startswith(f"{source}: success")]) == 1
    assert "sync.start" not in output and "sync.done" not in output


def test_quiet_sync_prints_nothing_when_every_source_succeeded(
        running: RunningEstate, tmp_path: Path) -> None:
    config = running.write_config(tmp_path)
    running.estate.stripe.faults.inject("status", times=1, status=503, path="/v1/customers")
    done = piped(config, "sync", "--quiet")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    code, output = on_a_terminal(config, "sync", "--quiet")
    assert (code, CONTROL.sub("", output).strip()) == (0, "")


def test_quiet_sync_prints_only_the_source_that_failed_and_exits_1(
        running: RunningEstate, tmp_path: Path) -> None:
    config = running.write_config(tmp_path)
    running.estate.stripe.faults.inject("status", times=1, status=401, path="/v1/customers")
    done = piped(config, "sync", "--quiet")
    assert done.returncode == 1, done.stderr
    [line] = done.stdout.splitlines()
    assert line.startswith("stripe: failed (incremental) — 0 seen"), line
    assert "401" in line
    assert done.stderr == ""


def test_sync_json_is_one_document_on_stdout_with_a_result_per_source(
        running: RunningEstate, tmp_path: Path) -> None:
    config = running.write_config(tmp_path)
    running.estate.stripe.faults.inject("status", times=1, status=401, path="/v1/customers")
    done = piped(config, "sync", "--json")
    assert done.returncode == 1, done.stderr
    results = {r["source"]: r for r in json.loads(done.stdout)}
    assert set(results) == {*SOURCES, *audiences(running)}
    assert (results["stripe"]["ok"], results["stripe"]["status"]) == (False, "failed")
    assert "401" in results["stripe"]["error"]
    shop = results["woo:allmyink"]
    assert (shop["ok"], shop["status"], shop["mode"]) == (True, "success", "incremental")
    assert shop["seen"] == shop["changed"] > 0 and shop["gone"] == 0
    assert {"skipped", "run_id", "error"} <= set(shop)
    # Log lines stay on stderr, one JSON object each, as without --json.
    assert all(json.loads(line)["event"] for line in done.stderr.splitlines())
    again = piped(config, "sync", "--json", "--source", "allmyink")
    assert again.returncode == 0
    [only] = json.loads(again.stdout)
    assert (only["source"], only["ok"], only["changed"]) == ("woo:allmyink", True, 0)


def test_check_json_is_one_document_with_ok_and_detail_per_check(
        running: RunningEstate, tmp_path: Path) -> None:
    import socket

    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    relay = Controller(object(), hostname="127.0.0.1", port=port)
    relay.start()
    try:
        config = running.write_config(tmp_path, extra=(
            '\n[report]\nrecipients = ["owner@shop.example"]\n'
            'sender = "privacy-ledger@shop.example"\n'
            f'\n[smtp]\nhost = "127.0.0.1"\nport = {port}\n'
            'security = "none"\n'))
        done = piped(config, "check", "--json")
    finally:
        relay.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    checks = json.loads(done.stdout)
    names = [c["name"] for c in checks]
    assert names[:2] == ["config", "ledger"]
    # Every audience a sync reads has a row of its own after the account's.
    assert {n for n in names if not n.startswith("mailchimp:")} == {
        "config", "ledger", *SOURCES, "mailchimp", "smtp", "policy"}
    assert all(c["ok"] is True and c["detail"] for c in checks), checks
    running.estate.stripe.faults.inject("status", times=5, status=401)
    failed = piped(config, "check", "--json")
    assert failed.returncode == 1
    by_name = {c["name"]: c for c in json.loads(failed.stdout)}
    assert by_name["stripe"]["ok"] is False and by_name["stripe"]["detail"]
    assert by_name["woo:allmyink"]["ok"] is True


def test_check_json_names_each_config_problem(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[ledger]\nnonsense = 1\n', encoding="utf-8")
    done = piped(config, "check", "--json")
    assert done.returncode == 2  # a config error, as for every command
    [problem] = json.loads(done.stdout)
    assert (problem["name"], problem["ok"]) == ("config", False)
    assert "ledger.nonsense" in problem["detail"] and str(config) in problem["detail"]
