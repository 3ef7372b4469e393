"""`privacy-ledger report --out FILE` on a real ledger: the saved email is private (0600),
never written through a symlink, and never replaces a file unless --force says so."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from daemon.cli import main


@pytest.fixture
def config(tmp_path: Path, sqlite_url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[ledger]\nurl = "{sqlite_url}"\nstate_dir = "{tmp_path}"\n',
                    encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The umask of an operator's shell, which would make a plain write 0644."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def report(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), "report", *args])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_report_out_writes_the_email_readable_by_its_owner_only(
        config: Path, tmp_path: Path) -> None:
    out = tmp_path / "digest.html"
    result = report(config, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert mode(out) == 0o600
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("force", [False, True])
def test_report_out_refuses_a_symlink_and_leaves_its_target_alone(
        config: Path, tmp_path: Path, force: bool) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n", encoding="utf-8")
    out = tmp_path / "digest.html"
    out.symlink_to(victim)
    result = report(config, "--out", str(out), *(["--force"] if force else []))
    assert result.exit_code == 1
    assert "is a symbolic link: name a regular file" in result.stderr
    assert victim.read_text(encoding="utf-8") == "keep me\n"
    assert out.is_symlink()


def test_report_out_refuses_a_dangling_symlink(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "digest.html"
    out.symlink_to(tmp_path / "not-yet")
    result = report(config, "--out", str(out))
    assert result.exit_code == 1 and "is a symbolic link" in result.stderr
    assert not (tmp_path / "not-yet").exists()


def test_report_out_refuses_an_existing_file_unless_forced_then_replaces_it_private(
        config: Path, tmp_path: Path) -> None:
    out = tmp_path / "digest.html"
    out.write_text("yesterday's email\n", encoding="utf-8")
    out.chmod(0o644)
    refused = report(config, "--out", str(out))
    assert refused.exit_code == 1
    assert "exists already (--force replaces it)" in refused.stderr
    assert out.read_text(encoding="utf-8") == "yesterday's email\n"
    forced = report(config, "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert mode(out) == 0o600
