"""Shared test helpers: services that must exist in CI, and running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REQUIRE_SERVICES = os.environ.get("EMLIVE_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip a test whose service is missing; in CI (EMLIVE_REQUIRE_SERVICES=1) fail instead."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (EMLIVE_REQUIRE_SERVICES=1: CI must provide it)")
    pytest.skip(reason)


def emlive_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "emlive", *map(str, args)]


def run_emlive(*args: str | Path, timeout_s: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the CLI to completion; output captured as text."""
    env = os.environ | {"COLUMNS": "200", "EMLIVE_CONFIG": ""}
    return subprocess.run(
        emlive_command(*args), capture_output=True, text=True, timeout=timeout_s, cwd=cwd, env=env
    )
