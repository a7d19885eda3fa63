"""The golden injection cases: tests/k8s/cases/NAME.pod.yaml → NAME.injected.yaml.

`UPDATE_GOLDEN=1 pytest tests/k8s` rewrites the .injected.yaml files from `inject()`;
review the diff like code.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from cachewire.k8s.inject import VERSION, InjectConfig, inject

CASES = Path(__file__).parent / "cases"
NAMES = sorted(p.name.removesuffix(".pod.yaml") for p in CASES.glob("*.pod.yaml"))
HUB = "cachewire-hub.cachewire.svc:50051"
CONFIG = InjectConfig(image="cachewire:test", hub=HUB, topics="user")
STAMP = "@version@"  # the golden files do not change with each release
CONFIG_ARGS = ["--sidecar-image", "cachewire:test", "--hub", CONFIG.hub, "--topics", "user"]
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())


def pod(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CASES / f"{name}.pod.yaml").read_text())
    return data


def expected(name: str) -> dict[str, Any]:
    path = CASES / f"{name}.injected.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        text = yaml.safe_dump(inject(pod(name), CONFIG), sort_keys=False)
        path.write_text(text.replace(f"{VERSION}: {CONFIG.version}", f"{VERSION}: '{STAMP}'"))
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    annotations = data["metadata"].get("annotations", {})
    if annotations.get(VERSION) == STAMP:
        annotations[VERSION] = CONFIG.version
    return data


def as_template(pod: dict[str, Any]) -> dict[str, Any]:
    """A Pod's metadata and spec as a workload's pod template (no name or namespace)."""
    meta = {k: v for k, v in pod["metadata"].items() if k not in ("name", "namespace")}
    return {"metadata": meta, "spec": copy.deepcopy(pod["spec"])}


def workloads(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """A Deployment and a CronJob around the pod, in its namespace."""
    meta = {"name": pod["metadata"]["name"]}
    if "namespace" in pod["metadata"]:
        meta["namespace"] = pod["metadata"]["namespace"]
    labels = {"golden.test/workload": "x"}
    template = as_template(pod)
    template["metadata"]["labels"] = {**template["metadata"].get("labels", {}), **labels}
    job_template = as_template(pod)
    job_template["spec"]["restartPolicy"] = "OnFailure"
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {"selector": {"matchLabels": labels}, "template": template},
        },
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": meta,
            "spec": {"schedule": "@hourly", "jobTemplate": {"spec": {"template": job_template}}},
        },
    ]
