"""ruff (pyflakes rules and syntax errors, configured in pyproject.toml) over the code, run by the test command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATHS = ("padlab", "benchmarks", "tests", "data")


def ruff(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module", autouse=True)
def _ruff_installed():
    pytest.importorskip("ruff", reason="ruff is in the 'test' extra")


def test_ruff_is_clean():
    proc = ruff(*PATHS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_fails_on_an_unused_import(tmp_path):
    # The negative control: the same command, with the repository's settings, fails on a flaw.
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\nprint(undefined_name)\n")
    proc = ruff("--config", str(REPO / "pyproject.toml"), str(bad))
    assert proc.returncode == 1
    assert "F401" in proc.stdout and "F821" in proc.stdout
