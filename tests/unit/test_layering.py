"""The layering holds: what must never import what (DESIGN.md, "a system is one unit"), as
the import-linter contracts in pyproject.toml say, checked on the real tree."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# The arrows the design forbids; a contract dropped from pyproject.toml fails here.
CONTRACTS = {
    "vocabulary imports nothing of the project",
    "connectors never import the daemon",
    "the ledger imports neither connectors nor sync, audit or report",
    "audit and report never import connectors or sync",
    "sync never imports audit or mail",
    "sandbox imports neither connectors nor the daemon",
    "twin APIs import no estate or seeding code",
    "the estate imports no twin",
}


def test_every_forbidden_arrow_is_a_contract() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    names = {c["name"] for c in config["tool"]["importlinter"]["contracts"]}
    assert names >= CONTRACTS


def test_no_module_imports_what_the_layering_forbids() -> None:
    # This tree's packages, whatever else is installed.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in CONTRACTS:
        assert f"{name} KEPT" in result.stdout, result.stdout


def test_vocabulary_imports_only_the_standard_library() -> None:
    paths = sorted((ROOT / "vocabulary").rglob("*.py"))
    assert paths, "no vocabulary package"
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top == "__future__" or top in sys.stdlib_module_names, \
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {module}"
