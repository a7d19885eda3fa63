"""`inject(pod, config) -> pod`: add cachewire's sidecar to a pod (or a pod template).

One pure function shared by `cachewire inject` (files), `cachewire injector` (the admission
webhook) and the golden tests. It never changes its input, and it is idempotent: a pod that
already has a container named `cachewire-sidecar` comes back unchanged, so a second pass (a
webhook reinvocation, `cachewire inject` run twice) changes nothing.

Pod annotations configure it (`cachewire.io/topics`, `/sinks`, `/allow-prefixes`,
`/redis-flush`, `/await`, `/native-sidecar`, `/sidecar-image`, `/sidecar-resources`); a
malformed one raises `AnnotationError` naming it, before anything is changed (never half an
injection).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cachewire
from cachewire.sidecar.settings import OPTIONS as SIDECAR_OPTIONS

Pod = dict[str, Any]

CONTAINER = "cachewire-sidecar"
TOKEN_VOLUME = "cachewire-token"
TOKEN_DIR = "/var/run/secrets/cachewire.io/serviceaccount"
TOKEN_AUDIENCE = "cachewire-hub"
TOKEN_SECONDS = 3600
PREFIX = "cachewire.io/"
INJECT = PREFIX + "inject"
INJECTED = PREFIX + "injected"
VERSION = PREFIX + "sidecar-version"
SKIPPED_NAMESPACES = frozenset({"kube-system"})


class AnnotationError(ValueError):
    """A `cachewire.io/*` annotation the injector cannot use; the message names it."""


@dataclass(frozen=True)
class InjectConfig:
    """What a pod's annotations do not say: the cluster-wide defaults of the injector."""

    image: str = f"ghcr.io/cachewire/cachewire:{cachewire.__version__}"
    hub: str = "cachewire-hub.cachewire.svc:50051"
    topics: str = ""  # when the pod has no cachewire.io/topics; empty: the annotation is required
    relay_port: int = 7070
    health_port: int = 8091
    resources: Mapping[str, Any] = field(
        default_factory=lambda: {
            "requests": {"cpu": "10m", "memory": "48Mi"},
            "limits": {"memory": "128Mi"},
        }
    )
    version: str = cachewire.__version__


def skip_reason(pod: Pod, namespace: str = "") -> str | None:
    """Why this pod gets no sidecar (None: it gets one)."""
    meta = pod.get("metadata") or {}
    namespace = meta.get("namespace") or namespace
    if namespace in SKIPPED_NAMESPACES:
        return f"namespace {namespace} is never injected"
    if (pod.get("spec") or {}).get("hostNetwork"):
        return "hostNetwork pods are not injected (the sidecar's ports would be the node's)"
    for where in ("labels", "annotations"):
        value = (meta.get(where) or {}).get(INJECT)
        if value is not None and str(value).lower() in ("false", "disabled"):
            return f"{where[:-1]} {INJECT}={value}"
        if value is not None and str(value).lower() not in ("true", "enabled"):
            raise AnnotationError(f"{INJECT}={value!r}: must be true or false")
    if is_injected(pod):
        return "already injected"
    return None


def is_injected(pod: Pod) -> bool:
    spec = pod.get("spec") or {}
    return any(
        c.get("name") == CONTAINER
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    )


def inject(pod: Pod, config: InjectConfig | None = None, namespace: str = "") -> Pod:
    """A copy of `pod` with the sidecar added (or an unchanged copy when it is skipped).

    `namespace` is the request's namespace when the pod itself does not name one (pods
    created from a template usually do not).
    """
    config = config or InjectConfig()
    pod = copy.deepcopy(pod)
    if skip_reason(pod, namespace) is not None:
        return pod
    options = _read_annotations(pod, config)  # raises before anything changes
    meta = pod.setdefault("metadata", {})
    spec = pod.setdefault("spec", {})
    sidecar = _sidecar(options, config)
    if options.native:
        spec["initContainers"] = [*(spec.get("initContainers") or []), sidecar]
    else:  # first, so the kubelet starts it (and waits on its postStart) before the app
        spec["containers"] = [sidecar, *(spec.get("containers") or [])]
    for container in spec.get("containers") or []:
        if container is not sidecar:
            _add_env(container, _app_env(options, config))
    spec["volumes"] = [*(spec.get("volumes") or []), _token_volume()]
    meta["labels"] = {**(meta.get("labels") or {}), INJECTED: "true"}
    meta["annotations"] = {**(meta.get("annotations") or {}), VERSION: config.version}
    return pod


# --- annotations ---


@dataclass(frozen=True)
class _Options:
    topics: str
    sinks: dict[str, str]  # sidecar flag → value (sinks, their namespace and flush policy)
    relay_port: int
    await_: str
    native: bool
    image: str
    resources: Mapping[str, Any]


_SINKS = {"memcached": "--memcached", "redis": "--redis-url", "webhook": "--webhook"}
_CONVERTERS: dict[str, Callable[[str], Any]] = {o.flag: o.convert for o in SIDECAR_OPTIONS}
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def _annotation(pod: Pod, name: str) -> str | None:
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(PREFIX + name)
    return None if value is None else str(value).strip()


def _check(name: str, flag: str, value: str) -> None:
    """Validate with the sidecar's own converter, so what passes here starts there."""
    try:
        _CONVERTERS[flag](value)
    except ValueError as exc:
        raise AnnotationError(f"{PREFIX}{name}={value!r}: {exc}") from None


def _read_annotations(pod: Pod, config: InjectConfig) -> _Options:
    topics = _annotation(pod, "topics") or config.topics
    if not topics:
        raise AnnotationError(f"{PREFIX}topics is required (e.g. user,product)")
    _check("topics", "--topics", topics)

    sinks: dict[str, str] = {}
    relay_port = config.relay_port
    for item in filter(None, (p.strip() for p in (_annotation(pod, "sinks") or "").split(";"))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise AnnotationError(f"{PREFIX}sinks: {item!r} is not NAME=VALUE")
        if key == "relay":
            _check("sinks", "--relay-port", value)
            relay_port = int(value)
        elif key in _SINKS:
            _check("sinks", _SINKS[key], value)
            sinks[_SINKS[key]] = value
        else:
            raise AnnotationError(
                f"{PREFIX}sinks: unknown sink {key!r} (memcached, redis, webhook or relay)"
            )
    for name, flag in (("allow-prefixes", "--allow-prefixes"), ("redis-flush", "--redis-flush")):
        text = _annotation(pod, name)
        if text:
            _check(name, flag, text)
            sinks[flag] = text
    flush = _CONVERTERS["--redis-flush"](sinks.get("--redis-flush", "true"))
    if "--redis-url" in sinks and flush == "prefixes" and "--allow-prefixes" not in sinks:
        # The sidecar would refuse to start: a flush would be FLUSHDB of the whole database.
        raise AnnotationError(
            f"{PREFIX}sinks names redis: give the app's cache namespace in "
            f"{PREFIX}allow-prefixes (e.g. app:cache:), so a flush deletes only those keys, "
            f"or set {PREFIX}redis-flush to db (FLUSHDB the whole database) or false"
        )

    await_ = (_annotation(pod, "await") or "started").lower()
    if await_ not in ("started", "subscribed", "none"):
        raise AnnotationError(f"{PREFIX}await={await_!r}: must be started, subscribed or none")

    native_text = (_annotation(pod, "native-sidecar") or "true").lower()
    if native_text not in ("true", "false"):
        raise AnnotationError(f"{PREFIX}native-sidecar={native_text!r}: must be true or false")

    image = _annotation(pod, "sidecar-image") or config.image
    if not image or any(c.isspace() for c in image):
        raise AnnotationError(f"{PREFIX}sidecar-image={image!r}: not an image reference")

    resources: Mapping[str, Any] = config.resources
    text = _annotation(pod, "sidecar-resources")
    if text is not None:
        resources = _resources(text)
    return _Options(topics, sinks, relay_port, await_, native_text == "true", image, resources)


def _resources(text: str) -> dict[str, dict[str, str]]:
    """`{"requests": {"cpu": "20m"}, "limits": {"memory": "256Mi"}}` (JSON), checked."""
    name = PREFIX + "sidecar-resources"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{name}: not JSON ({exc.msg})") from None
    if not isinstance(value, dict) or not set(value) <= {"requests", "limits"}:
        raise AnnotationError(f'{name}: must be {{"requests": {{…}}, "limits": {{…}}}}')
    result: dict[str, dict[str, str]] = {}
    for part, amounts in value.items():
        if not isinstance(amounts, dict):
            raise AnnotationError(f"{name}: {part} must be an object")
        for resource, amount in amounts.items():
            if resource not in ("cpu", "memory", "ephemeral-storage"):
                raise AnnotationError(f"{name}: unknown resource {resource!r}")
            if not isinstance(amount, str | int) or not _QUANTITY.match(str(amount)):
                raise AnnotationError(f"{name}: {part}.{resource}={amount!r} is not a quantity")
        result[part] = {r: str(a) for r, a in amounts.items()}
    return result


# --- what gets added ---


def _sidecar(o: _Options, config: InjectConfig) -> dict[str, Any]:
    health = {"port": "cw-health"}
    args = ["sidecar", "--hub", config.hub, "--topics", o.topics]
    for flag, value in o.sinks.items():
        args += [flag, value]
    args += ["--relay-port", str(o.relay_port)]
    # The kubelet probes the pod IP, so the health port listens beyond loopback.
    args += ["--health-host", "0.0.0.0", "--health-port", str(config.health_port)]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": o.image,
        "args": args,
        # Read by the sidecar's --token-file (the security issue's flag); the kubelet rotates it.
        "env": [{"name": "CACHEWIRE_SIDECAR_TOKEN_FILE", "value": f"{TOKEN_DIR}/token"}],
        "ports": [{"name": "cw-health", "containerPort": config.health_port}],
    }
    path = {"started": "/healthz", "subscribed": "/readyz"}.get(o.await_)
    if o.native:
        container["restartPolicy"] = "Always"
        if path is not None:  # app containers start once this probe has passed
            threshold = 30 if o.await_ == "started" else 60
            container["startupProbe"] = {
                "httpGet": {"path": path, **health},
                "periodSeconds": 1,
                "failureThreshold": threshold,
            }
    elif path is not None:  # classic: the kubelet starts the next container after postStart
        url = f"http://127.0.0.1:{config.health_port}{path}"
        container["lifecycle"] = {
            "postStart": {"exec": {"command": ["cachewire", "wait", url, "--timeout", "60"]}}
        }
    # Liveness only: a readinessProbe would make a hub outage an outage of the app.
    container["livenessProbe"] = {"httpGet": {"path": "/healthz", **health}, "periodSeconds": 10}
    container["resources"] = copy.deepcopy(dict(o.resources))
    container["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container["volumeMounts"] = [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}]
    return container


def _app_env(o: _Options, config: InjectConfig) -> list[dict[str, str]]:
    return [
        {"name": "CACHEWIRE_SIDECAR_ADDR", "value": f"127.0.0.1:{o.relay_port}"},
        {
            "name": "CACHEWIRE_BARRIER_URL",
            "value": f"http://127.0.0.1:{config.health_port}/v1/applied",
        },
    ]


def _add_env(container: dict[str, Any], env: list[dict[str, str]]) -> None:
    """Append the variables the container does not set itself (its own value wins)."""
    have = {e.get("name") for e in container.get("env") or []}
    container["env"] = [*(container.get("env") or []), *(e for e in env if e["name"] not in have)]


def _token_volume() -> dict[str, Any]:
    token = {"audience": TOKEN_AUDIENCE, "expirationSeconds": TOKEN_SECONDS, "path": "token"}
    return {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}}
