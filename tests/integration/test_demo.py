"""`privacy-ledger demo` as a new user meets it: every "look next" hint it prints runs as
printed, from where the demo was started; with --serve the sandbox keeps answering until
Ctrl-C, without it the hints that need the sandbox are not offered."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.demo import invoked_as

PROGRAM = Path(sys.executable).with_name("privacy-ledger")


def _hints(lines: list[str]) -> list[str]:
    return [line.strip() for line in lines if line.startswith("  ") and "--config" in line]


def _run_hint(hint: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shlex.split(hint), cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_demo_serve_keeps_the_sandbox_answering_until_ctrl_c(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [str(PROGRAM), "demo", "--out", "demo-out", "--people", "30", "--serve"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PRIVACY_LEDGER_LOG_LEVEL": "warning"})
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Serving; press Ctrl-C"):
                break
        else:
            pytest.fail("the demo ended before serving:\n" + "\n".join(lines))
        hints = _hints(lines)
        verbs = [shlex.split(hint)[3] for hint in hints]
        assert verbs == ["where", "audit", "ropa", "sync", "export", "erase"], hints
        for hint in hints:
            done = _run_hint(hint, tmp_path)
            assert done.returncode == 0, f"{hint}\n{done.stdout}\n{done.stderr}"
        assert any((tmp_path / "demo-out" / "export").iterdir())
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0
    assert rest.rstrip().endswith("Sandbox stopped.")


@pytest.mark.slow
def test_demo_without_serve_offers_only_what_works_without_the_sandbox(tmp_path: Path) -> None:
    done = subprocess.run([str(PROGRAM), "demo", "--out", "out", "--people", "30"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    hints = _hints(lines)
    assert [shlex.split(hint)[3] for hint in hints] == ["where", "audit", "ropa"]
    assert any("run the demo with --serve" in line for line in lines)
    for hint in hints:
        ran = _run_hint(hint, tmp_path)
        assert ran.returncode == 0, f"{hint}\n{ran.stdout}\n{ran.stderr}"


def test_the_program_is_shown_as_it_can_be_typed_again(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    program = bin_dir / "privacy-ledger"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert invoked_as(str(program)) == "venv/bin/privacy-ledger"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert invoked_as(str(program)) == "privacy-ledger"
    monkeypatch.chdir(tmp_path / "venv")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert invoked_as(str(program)) == "bin/privacy-ledger"
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert invoked_as(str(program)) == str(program)
