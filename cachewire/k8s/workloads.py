"""Where a workload keeps its pod template, and `inject()` applied to a YAML stream.

`cachewire inject -f` (like `linkerd inject` and `istioctl kube-inject`) injects Pods and
the pod templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and
CronJobs, and passes every other document through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from cachewire.k8s.inject import AnnotationError, InjectConfig, Pod, inject

# kind → the keys from the document down to its pod template (a Pod is its own template)
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def inject_document(doc: Any, config: InjectConfig) -> Any:
    """The document with its pod (template) injected; other kinds come back as they are."""
    if not isinstance(doc, dict) or doc.get("kind") not in TEMPLATE_PATHS:
        return doc
    path = TEMPLATE_PATHS[doc["kind"]]
    namespace = (doc.get("metadata") or {}).get("namespace") or ""
    name = f"{doc['kind']}/{(doc.get('metadata') or {}).get('name', '?')}"
    if not path:
        return _inject(doc, config, namespace, name)
    parent: Any = doc
    for key in path[:-1]:
        parent = parent.get(key) if isinstance(parent, dict) else None
    template = parent.get(path[-1]) if isinstance(parent, dict) else None
    if not isinstance(template, dict):
        raise AnnotationError(f"{name}: no pod template at {'.'.join(path)}")
    injected = _inject(template, config, namespace, name)
    out: dict[str, Any] = dict(doc)
    node = out
    for key in path[:-1]:
        node[key] = dict(node[key])
        node = node[key]
    node[path[-1]] = injected
    return out


def _inject(pod: Pod, config: InjectConfig, namespace: str, name: str) -> Pod:
    try:
        return inject(pod, config, namespace)
    except AnnotationError as exc:
        raise AnnotationError(f"{name}: {exc}") from None


def inject_yaml(text: str, config: InjectConfig) -> str:
    """Every document of a multi-document YAML stream, injected where it has a pod."""
    docs = [inject_document(d, config) for d in yaml.safe_load_all(text)]
    return dump_all(d for d in docs if d is not None)


def dump_all(docs: Iterable[Any]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False, default_flow_style=False)
