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
