"""The wheel holds every sub-package. An editable install (make setup) reads
the tree and hides a package missing from pyproject.toml; the images install
the wheel, where the agent then fails at import (seen: oomtrace.agent.record)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_python_package_is_in_the_wheel() -> None:
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "oomtrace").rglob("__init__.py")
    }
    assert on_disk, "no package found under oomtrace/"
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages"
