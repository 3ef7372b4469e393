"""The soak's short variant (bench/soak.py --minutes 1 --kills 3): the installed daemon under
SIGKILLs, upstream faults, SMTP refusals and a changing estate loses nothing. Also the
sandbox's time-bounded fault the soak uses for "a 401 for a while"."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox.server import Faults

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_short_soak_loses_nothing_when_the_daemon_is_killed_three_times(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--minutes", "1", "--kills", "3",
         "--seed", "5", "--workdir", str(tmp_path / "soak")],
        cwd=REPO, capture_output=True, text=True, timeout=400, check=False)
    said = result.stdout + result.stderr
    assert result.returncode == 0, said[-6000:]
    assert "result: PASS" in said
    assert "kills survived: 3 " in said
    assert " 0 missing, 0 extra, 0 held under another person, 0 wrongly gone, 0 duplicated" \
        in said
    assert " 0 lost, 0 duplicated, 0 not in the outbox, 0 rows not marked sent" in said
    assert "audit trail: verifies" in said


def test_fault_lasting_a_while_stops_hitting_when_its_time_is_up() -> None:
    faults = Faults()
    faults.inject("status", times=10**6, status=401, lasting=0.3)
    hits = [faults.take("GET", "/v1/customers") for _ in range(5)]
    assert all(hit is not None and hit.status == 401 for hit in hits)
    assert faults.pending > 0
    time.sleep(0.4)
    assert faults.take("GET", "/v1/customers") is None
    assert faults.pending == 0
    assert faults.injected["status:401"] == 5
