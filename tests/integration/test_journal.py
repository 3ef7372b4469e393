"""What journald receives when privacy-ledger runs under systemd: systemd connects the
process's output to a journal stream and names it in $JOURNAL_STREAM (device:inode); every
line then starts with its syslog priority (`<4>` a warning, `<6>` info), which journald takes
as the entry's priority and strips, so `journalctl -p warning` finds warnings. The rest of
the line is the JSON it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import logs
from sandbox.demo import RunningEstate
from sandbox.estate import EstateSpec
from sandbox.seed import build_estate

PROGRAM = Path(sys.executable).with_name("privacy-ledger")


def _stream_id(path: Path) -> str:
    status = os.stat(path)
    return f"{status.st_dev}:{status.st_ino}"


def _entries(path: Path) -> list[tuple[int, dict[str, object]]]:
    """Each line as journald would split it: (priority, the JSON after the prefix)."""
    entries = []
    for line in path.read_text("utf-8").splitlines():
        assert line.startswith("<") and ">" in line, f"no priority prefix: {line!r}"
        priority, _, rest = line[1:].partition(">")
        entries.append((int(priority), json.loads(rest)))
    return entries


@pytest.fixture
def running() -> Iterator[RunningEstate]:
    with RunningEstate(build_estate(EstateSpec(seed=3, people=20))) as estate:
        yield estate


def test_a_sync_under_journald_sends_each_line_with_its_priority(
        running: RunningEstate, tmp_path: Path) -> None:
    config = running.write_config(tmp_path)
    running.estate.stripe.faults.inject("status", times=2, status=503, path="/v1/customers")
    journal = tmp_path / "journal"
    with journal.open("w") as stream:
        done = subprocess.run(
            [str(PROGRAM), "--config", str(config), "sync", "--source", "stripe"],
            stdout=subprocess.DEVNULL, stderr=stream, stdin=subprocess.DEVNULL, timeout=120,
            env={**os.environ, "JOURNAL_STREAM": _stream_id(journal)}, check=False)
    assert done.returncode == 0
    entries = _entries(journal)
    levels = {(priority, entry["level"]) for priority, entry in entries}
    assert (4, "warning") in levels  # the 503s, retried
    assert (6, "info") in levels
    assert all(logs.PRIORITIES[str(entry["level"])] == priority for priority, entry in entries)
    assert any(entry["event"] == "upstream.retry" for _, entry in entries)


def test_a_stream_that_is_not_the_named_journal_gets_plain_json(tmp_path: Path) -> None:
    named, other = tmp_path / "journal", tmp_path / "elsewhere"
    named.touch()
    with other.open("w") as stream:
        subprocess.run(
            [sys.executable, "-c",
             "import sys, structlog; from daemon import logs; logs.configure(sys.stderr); "
             "structlog.get_logger().warning('odd.thing', detail='x')"],
            stderr=stream, timeout=60, check=True, cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "JOURNAL_STREAM": _stream_id(named)})
    line = other.read_text("utf-8").strip()
    assert json.loads(line)["event"] == "odd.thing"


def test_every_level_has_the_priority_journald_expects(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    journal = tmp_path / "journal"
    with journal.open("w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", _stream_id(journal))
        logs.configure(stream, level=10)
        import structlog
        log = structlog.get_logger("test")
        log.debug("a.debug")
        log.info("an.info")
        log.warning("a.warning")
        log.error("an.error")
        log.critical("a.critical")
    monkeypatch.delenv("JOURNAL_STREAM")
    logs.configure(sys.stderr)
    assert [(p, e["event"]) for p, e in _entries(journal)] == [
        (7, "a.debug"), (6, "an.info"), (4, "a.warning"), (3, "an.error"), (2, "a.critical")]
