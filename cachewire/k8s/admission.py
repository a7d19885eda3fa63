"""AdmissionReview (admission.k8s.io/v1) in, AdmissionReview with a JSONPatch out.

Pure: no I/O, so the webhook handler is a thin adapter and the tests call this directly.
The patch is the difference between the pod and `inject(pod)`, computed by `jsonpatch`
(the diff approach of Istio and the OpenTelemetry operator), so the webhook can never
disagree with `inject()` or `cachewire inject`.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import jsonpatch

from cachewire.k8s.inject import AnnotationError, InjectConfig, inject, skip_reason

API_VERSION = "admission.k8s.io/v1"
log = logging.getLogger("cachewire.injector")


class ReviewError(ValueError):
    """The body is not an admission.k8s.io/v1 AdmissionReview request (HTTP 400)."""


def review(body: Any, config: InjectConfig) -> dict[str, Any]:
    """The AdmissionReview response to an AdmissionReview request."""
    if not isinstance(body, dict) or body.get("kind") != "AdmissionReview":
        raise ReviewError("expected an AdmissionReview object")
    if body.get("apiVersion") != API_VERSION:
        raise ReviewError(f"apiVersion {body.get('apiVersion')!r} is not supported; use v1")
    request = body.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise ReviewError("request.uid is missing")
    response = {"uid": request["uid"], **_decide(request, config)}
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}


def _decide(request: dict[str, Any], config: InjectConfig) -> dict[str, Any]:
    pod = request.get("object")
    kind = (request.get("kind") or {}).get("kind")
    if kind != "Pod" or request.get("operation", "CREATE") != "CREATE":
        return {"allowed": True}
    if not isinstance(pod, dict):
        raise ReviewError("request.object is not a Pod")
    namespace = request.get("namespace") or ""
    where = {"namespace": namespace, "pod": _pod_name(pod)}
    try:
        reason = skip_reason(pod, namespace)
        if reason is not None:
            log.info("not injected", extra={**where, "reason": reason})
            return {"allowed": True}
        patch = jsonpatch.make_patch(pod, inject(pod, config, namespace)).patch
    except AnnotationError as exc:
        log.warning("injection refused", extra={**where, "error": str(exc)})
        return {"allowed": False, "status": {"code": 400, "message": str(exc)}}
    log.info("injected", extra=where)
    encoded = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"allowed": True, "patchType": "JSONPatch", "patch": encoded}


def _pod_name(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return str(meta.get("name") or (meta.get("generateName") or "?") + "*")
