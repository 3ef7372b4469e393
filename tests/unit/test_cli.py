"""The command line's documentation stays true: the README's command reference is the
commands' own --help."""

from __future__ import annotations

import re
from pathlib import Path

from daemon.cli import command_reference

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"<!-- commands -->\n(.*?)<!-- /commands -->", re.S)


def test_readme_command_reference_matches_help() -> None:
    found = BLOCK.search(README.read_text(encoding="utf-8"))
    assert found, "README.md lacks the <!-- commands --> block"
    assert found.group(1) == command_reference(), \
        "README's command reference is stale: run `make readme`"
