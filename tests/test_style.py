"""The repository is lint-clean and formatted: `ruff check .` and
`ruff format --check .` with the settings in pyproject.toml ([tool.ruff]).

ruff comes from requirements-dev.txt; the suite runs it so that CI (which
runs exactly the README's test command) checks style too. To fix a
failure: `ruff check --fix .` and `ruff format .`.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ruff(*args):
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ruff_check():
    result = ruff("check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr


def test_ruff_format():
    result = ruff("format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr
