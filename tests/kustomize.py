"""Renders deploy/kubernetes the way `kubectl apply -k` does, for the offline
checks and the deploy harness, on machines without kubectl.

Only what the manifests use: `resources` (files, and directories holding a
kustomization.yaml) and `patches` that are JSON 6902 patches (inline or in a
file) with a `target` of kind and name. Anything else in a kustomization is an
error here, not silently skipped. Where kubectl is installed, the tests check
that this renders exactly what `kubectl kustomize` does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonpatch
import yaml

REPO = Path(__file__).resolve().parents[1]
KUBERNETES = REPO / "deploy/kubernetes"
SUPPORTED = {"apiVersion", "kind", "resources", "patches"}


class KustomizeError(Exception):
    pass


def overlays() -> list[Path]:
    """What people apply: the base and every overlay (parts/ are their pieces)."""
    return [
        KUBERNETES / "base",
        *sorted(p.parent for p in KUBERNETES.glob("overlays/*/kustomization.yaml")),
    ]


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects one kustomization produces, in kubectl's order for these
    manifests (resources in the order listed, patches applied in place)."""
    kfile = directory / "kustomization.yaml"
    spec = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{kfile}: {sorted(unknown)} not supported by tests/kustomize.py")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects.extend(render(path))
        else:
            objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for patch in spec.get("patches", []):
        target = patch.get("target") or {}
        if set(target) - {"kind", "name"} or not target:
            raise KustomizeError(f"{kfile}: a patch's target must be kind and name only")
        text = patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text()
        ops = yaml.safe_load(text)
        if not isinstance(ops, list):
            raise KustomizeError(f"{kfile}: only JSON 6902 patches (a list of operations)")
        hits = [
            i
            for i, o in enumerate(objects)
            if o.get("kind") == target.get("kind") and o["metadata"]["name"] == target.get("name")
        ]
        if len(hits) != 1:
            raise KustomizeError(f"{kfile}: patch target {target} matches {len(hits)} objects")
        objects[hits[0]] = jsonpatch.apply_patch(objects[hits[0]], ops)
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for o in objects:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise KeyError(f"{kind}/{name}")
