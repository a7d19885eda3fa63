"""The kustomize manifests under k8s/: they render, validate, and say what the issue
promises (probes, restricted security, drain time, ports, secrets, webhook settings)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cachewire.k8s.inject import inject
from cachewire.k8s.workloads import TEMPLATE_PATHS
from tests.k8s import golden
from tests.k8s.manifests import check, containers, find, names, rendered

HUBS = ["overlays/dev", "overlays/prod", "components/hpa", "components/protected"]
INJECTORS = ["overlays/dev", "overlays/prod", "components/injector", "components/cert-manager"]


@pytest.mark.parametrize("name", names())
def test_renders_and_validates_strictly(name: str) -> None:
    """What `make k8s-check` runs, as a test: every object valid at 1.29 and the newest."""
    errors, kinds = check.validate(rendered(name), list(golden.KUBERNETES_VERSIONS))
    assert errors == []
    assert sum(kinds.values()) == len(rendered(name))


def test_check_fails_on_unknown_kinds_and_fields() -> None:
    docs: list[dict[str, Any]] = [
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "bogus": 1},
        {"apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": "i"}},
    ]
    errors, _ = check.validate(docs, ["1.29.0"])
    assert len(errors) == 2
    assert errors[0].startswith("Widget/w: no schema for example.com/v1")
    assert "'bogus' was unexpected" in errors[1]


def hub(name: str) -> dict[str, Any]:
    return find(rendered(name), "Deployment", "cachewire-hub")


@pytest.mark.parametrize("name", HUBS)
def test_hub_pod_is_restricted_and_probed(name: str) -> None:
    spec = hub(name)["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    protected = name in ("overlays/prod", "components/protected")
    assert pod["automountServiceAccountToken"] is protected  # only for TokenReview


@pytest.mark.parametrize("name", HUBS)
def test_grace_period_exceeds_the_drain(name: str) -> None:
    config = find(rendered(name), "ConfigMap", "cachewire-hub")["data"]
    drain = sum(
        float(config[k])
        for k in ("CACHEWIRE_DRAIN_DELAY", "CACHEWIRE_DRAIN_WINDOW", "CACHEWIRE_GRACE")
    )
    assert hub(name)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain


@pytest.mark.parametrize("name", HUBS)
def test_redis_url_comes_from_a_secret(name: str) -> None:
    (container,) = hub(name)["spec"]["template"]["spec"]["containers"]
    assert not any("redis" in a for a in container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert env["CACHEWIRE_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "cachewire-redis"


def test_dev_redis_requires_a_password_from_the_secret() -> None:
    docs = rendered("overlays/dev")
    (redis,) = find(docs, "Deployment", "cachewire-redis")["spec"]["template"]["spec"]["containers"]
    assert redis["args"][:2] == ["--requirepass", "$(REDIS_PASSWORD)"]
    (env,) = redis["env"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "cachewire-redis", "key": "password"}
    secret = find(docs, "Secret", "cachewire-redis")
    assert set(secret["data"]) == {"password", "url"}


def test_service_ports_are_named_with_protocols() -> None:
    service = find(rendered("overlays/prod"), "Service", "cachewire-hub")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["port"] == 8080
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert ports["admin"]["port"] == 9465


def test_webhook_configuration() -> None:
    docs = rendered("overlays/prod")
    config = find(docs, "MutatingWebhookConfiguration", "cachewire-injector")
    excluded = {"kube-system", "kube-public", "kube-node-lease", "cachewire"}
    selectors = []
    for hook in config["webhooks"]:
        assert hook["failurePolicy"] == "Fail"
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["sideEffects"] == "None"
        assert hook["timeoutSeconds"] == 5
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["clientConfig"]["service"]["path"] == "/mutate"
        assert hook["clientConfig"]["service"]["port"] == 443
        assert [c["name"] for c in hook["matchConditions"]] == ["not-already-injected"]
        names_out = [
            e for e in hook["namespaceSelector"]["matchExpressions"] if e["operator"] == "NotIn"
        ]
        assert set(names_out[0]["values"]) == excluded
        selectors.append(hook["objectSelector"]["matchExpressions"][0])
    assert {"key": "cachewire.io/inject", "operator": "In", "values": ["true"]} in selectors
    service = find(docs, "Service", "cachewire-injector")
    assert service["spec"]["ports"][0]["port"] == 443
    (container,) = find(docs, "Deployment", "cachewire-injector")["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["ports"] == [{"name": "https", "containerPort": 10250}]


@pytest.mark.parametrize("name", ["overlays/dev", "overlays/prod"])
def test_injected_sidecar_runs_the_injector_image(name: str) -> None:
    (container,) = find(rendered(name), "Deployment", "cachewire-injector")["spec"]["template"][
        "spec"
    ]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CACHEWIRE_INJECTOR_SIDECAR_IMAGE"] == container["image"]
    assert container["image"].startswith("ghcr.io/cachewire/cachewire:")


def test_sidecar_component_matches_inject() -> None:
    """The kustomize component adds the same sidecar as inject() (settings via env)."""
    docs = rendered("components/sidecar")
    ours = inject(golden.pod("bare"), golden.CONFIG)
    want = ours["spec"]["initContainers"][0]
    for kind, name in (("Deployment", "web"), ("CronJob", "report")):
        sidecars = [c for c in containers(find(docs, kind, name)) if c["name"] == want["name"]]
        assert len(sidecars) == 1, kind
        got = sidecars[0]
        for key in ("restartPolicy", "startupProbe", "livenessProbe", "resources", "ports"):
            assert got[key] == want[key], key
        assert got["securityContext"] == want["securityContext"]
        assert got["volumeMounts"] == want["volumeMounts"]
    assert [c["name"] for c in containers(find(docs, "StatefulSet", "untouched"))] == ["app"]
    web = find(docs, "Deployment", "web")["spec"]["template"]
    assert web["metadata"]["labels"]["cachewire.io/injected"] == "true"
    assert web["spec"]["volumes"] == ours["spec"]["volumes"]


# Secrets the user (or cert-manager) creates; every other reference must be rendered.
EXTERNAL_SECRETS = {"cachewire-redis", "cachewire-jwt", "cachewire-injector-cert"}


def references(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(kind, name) of every ConfigMap and Secret a workload's pod template refers to."""
    spec: Any = doc
    for key in (*TEMPLATE_PATHS.get(doc["kind"], ("?",)), "spec"):
        spec = spec.get(key, {}) if isinstance(spec, dict) else {}
    for volume in spec.get("volumes") or []:
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"]["name"]
        if "secret" in volume:
            yield "Secret", volume["secret"]["secretName"]
    for container in containers(doc):
        for source in container.get("envFrom") or []:
            if "configMapRef" in source:
                yield "ConfigMap", source["configMapRef"]["name"]
        for var in container.get("env") or []:
            ref = var.get("valueFrom") or {}
            if "secretKeyRef" in ref:
                yield "Secret", ref["secretKeyRef"]["name"]
            if "configMapKeyRef" in ref:
                yield "ConfigMap", ref["configMapKeyRef"]["name"]


@pytest.mark.parametrize("name", names())
def test_every_configmap_and_secret_referenced_is_rendered(name: str) -> None:
    """Catches a generated (hash-suffixed) name the references did not follow."""
    docs = rendered(name)
    present = {(d["kind"], d["metadata"]["name"]) for d in docs}
    missing = {
        ref
        for doc in docs
        for ref in references(doc)
        if ref not in present and not (ref[0] == "Secret" and ref[1] in EXTERNAL_SECRETS)
    }
    assert missing == set()
