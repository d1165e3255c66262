"""The sample Prometheus rules in deploy/prometheus: valid, and they fire on
the series oomtrace exports (promtool's own rule tests)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"

pytestmark = pytest.mark.skipif(
    not Path(PROMTOOL).exists(),
    reason="promtool (Debian's prometheus) is not installed (make setup)",
)


def test_the_rules_are_valid() -> None:
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES / "oomtrace.rules.yaml")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_alerts_fire_as_their_tests_say() -> None:
    test = subprocess.run(
        [PROMTOOL, "test", "rules", "oomtrace.rules.test.yaml"],
        capture_output=True,
        text=True,
        cwd=RULES,
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_the_fleet_rules_are_valid_and_fire_as_their_tests_say() -> None:
    """deploy/prometheus/oomtrace.fleet.rules.yaml: the dashboard's rules."""
    for argv in (
        [PROMTOOL, "check", "rules", "oomtrace.fleet.rules.yaml"],
        [PROMTOOL, "test", "rules", "oomtrace.fleet.rules.test.yaml"],
    ):
        run = subprocess.run(argv, capture_output=True, text=True, cwd=RULES)
        assert run.returncode == 0, run.stdout + run.stderr
