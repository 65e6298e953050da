"""The strict gate runs with the suite: linter, formatter and type checker
(strict on metering/), so `./dev test` is the one command that checks it all."""

from __future__ import annotations

import subprocess
import sys

from devkit.testing import ROOT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_lint_is_clean() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = _run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean_and_strict_on_the_domain_core() -> None:
    result = _run("mypy", "metering", "gateway")
    assert result.returncode == 0, result.stdout + result.stderr
