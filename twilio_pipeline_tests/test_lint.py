"""The code stays clean under the project's ruff rules (pyproject `[tool.ruff]`: errors, pyflakes, import order,
bugbear, pyupgrade, simplify), so a change that brings a likely bug or an outdated form fails `make test`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
