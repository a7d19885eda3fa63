"""inject(): the golden cases through the function and `cachewire inject`, annotations."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cachewire.k8s.inject import CONTAINER, AnnotationError, InjectConfig, inject
from cachewire.sidecar.settings import parse
from tests.k8s import golden


@pytest.mark.parametrize("name", golden.NAMES)
def test_function_matches_golden_and_is_idempotent(name: str) -> None:
    """inject() gives the golden pod; a second pass changes nothing; the input is untouched."""
    original = golden.pod(name)
    before = copy.deepcopy(original)
    injected = inject(original, golden.CONFIG)
    assert original == before
    assert injected == golden.expected(name)
    assert inject(injected, golden.CONFIG) == injected


@pytest.mark.parametrize("name", golden.NAMES)
@pytest.mark.parametrize("version", golden.KUBERNETES_VERSIONS)
def test_injected_pod_validates(name: str, version: str) -> None:
    """Every injected pod passes the strict schema of the oldest and newest Kubernetes."""
    kubernetes_validate.validate(golden.expected(name), version, strict=True)


def run_cli(docs: list[Any], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cachewire", "inject", "-f", "-", *golden.CONFIG_ARGS, *extra],
        input=yaml.safe_dump_all(docs),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_gives_the_same_pods() -> None:
    """`cachewire inject -f -` on Pods, Deployments and CronJobs: the golden pods, other
    kinds untouched, and a second run changes nothing."""
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}}
    docs: list[Any] = [other]
    for name in golden.NAMES:
        docs += [golden.pod(name), *golden.workloads(golden.pod(name))]
    result = run_cli(docs)
    assert result.returncode == 0, result.stderr
    out = list(yaml.safe_load_all(result.stdout))
    assert out[0] == other
    for i, name in enumerate(golden.NAMES):
        pod, deployment, cronjob = out[1 + 3 * i : 4 + 3 * i]
        want = golden.expected(name)
        assert pod == want
        want_template = golden.as_template(want)
        template = deployment["spec"]["template"]
        template["metadata"]["labels"].pop("golden.test/workload")
        if not want_template["metadata"].get("labels"):
            assert template["metadata"]["labels"] == {}
            template["metadata"].pop("labels")
        assert template == want_template, name
        job_template = cronjob["spec"]["jobTemplate"]["spec"]["template"]
        assert job_template["spec"].pop("restartPolicy") == "OnFailure"
        assert job_template == want_template, name
    again = run_cli(out)
    assert again.returncode == 0, again.stderr
    assert list(yaml.safe_load_all(again.stdout)) == out


BAD = [
    ("topics", "user,,x:", "cachewire.io/topics="),
    ("sinks", "memcached", "cachewire.io/sinks: 'memcached' is not NAME=VALUE"),
    ("sinks", "postgres=x", "cachewire.io/sinks: unknown sink 'postgres'"),
    ("sinks", "memcached=nohost", "cachewire.io/sinks="),
    ("sinks", "relay=99999", "cachewire.io/sinks="),
    ("await", "ready", "cachewire.io/await='ready'"),
    ("native-sidecar", "maybe", "cachewire.io/native-sidecar='maybe'"),
    ("sidecar-image", "a b", "cachewire.io/sidecar-image="),
    ("sidecar-resources", "{", "cachewire.io/sidecar-resources: not JSON"),
    ("sidecar-resources", '{"limits": {"gpu": "1"}}', "unknown resource 'gpu'"),
    ("sidecar-resources", '{"limits": {"memory": "lots"}}', "limits.memory='lots'"),
    ("inject", "perhaps", "cachewire.io/inject='perhaps'"),
    ("redis-flush", "sometimes", "cachewire.io/redis-flush='sometimes'"),
    # A Redis sink with no namespace: a flush would be FLUSHDB (the sidecar refuses to start).
    ("sinks", "redis=redis://127.0.0.1:6379/0", "cachewire.io/allow-prefixes (e.g."),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD)
def test_malformed_annotation_is_rejected_naming_it(name: str, value: str, message: str) -> None:
    pod = golden.pod("bare")
    pod["metadata"]["annotations"] = {f"cachewire.io/{name}": value}
    with pytest.raises(AnnotationError) as info:
        inject(pod, golden.CONFIG)
    assert message in str(info.value)


@pytest.mark.parametrize("flush", ["db", "false"])
def test_a_redis_sink_without_a_namespace_needs_an_explicit_flush(flush: str) -> None:
    pod = golden.pod("bare")
    pod["metadata"]["annotations"] = {
        "cachewire.io/sinks": "redis=redis://127.0.0.1:6379/0",
        "cachewire.io/redis-flush": flush,
    }
    args = sidecar_args(inject(pod, golden.CONFIG))
    assert args[args.index("--redis-flush") + 1] == flush
    assert "--allow-prefixes" not in args
    assert parse(args[1:], env={}).redis_flush == {"db": "db", "false": "off"}[flush]


def test_the_full_case_starts_a_sidecar_confined_to_its_namespace() -> None:
    args = sidecar_args(inject(golden.pod("full"), golden.CONFIG))
    settings = parse(args[1:], env={})  # what the injected sidecar would start with
    assert settings.allowed("redis") == settings.allowed("memcached") == ("shop:cache:", "shop:v2:")


def sidecar_args(pod: dict[str, Any]) -> list[str]:
    [container] = [c for c in pod["spec"]["initContainers"] if c["name"] == CONTAINER]
    args: list[str] = container["args"]
    return args


def test_topics_are_required_without_a_default() -> None:
    with pytest.raises(AnnotationError, match=r"cachewire.io/topics is required"):
        inject(golden.pod("bare"), InjectConfig())


def test_request_namespace_counts_when_the_pod_names_none() -> None:
    pod = golden.pod("bare")
    assert inject(pod, golden.CONFIG, namespace="kube-system") == pod


def test_cli_reports_a_bad_annotation_and_prints_nothing() -> None:
    pod = golden.pod("bare")
    pod["metadata"]["annotations"] = {"cachewire.io/await": "later"}
    result = run_cli([golden.pod("full"), *golden.workloads(pod)])
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Deployment/bare: cachewire.io/await='later'" in result.stderr


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"])
def test_every_workload_kind_gets_its_template_injected(kind: str) -> None:
    from cachewire.k8s.workloads import inject_document

    template = golden.as_template(golden.pod("bare"))
    doc = {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "w"}}
    doc["spec"] = {"template": template}
    out = inject_document(doc, golden.CONFIG)
    assert out["spec"]["template"] == golden.as_template(golden.expected("bare"))
    assert doc["spec"]["template"] == template  # the input is left alone


def test_wait_returns_once_the_url_answers() -> None:
    """`cachewire wait URL` (the classic sidecar's postStart): 0 once it answers 200,
    1 with a message when it does not within --timeout."""
    import http.server
    import threading

    from tests.servers import free_port

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    wait = [sys.executable, "-m", "cachewire", "wait", f"http://127.0.0.1:{port}/healthz"]
    failed = subprocess.run([*wait, "--timeout", "0.3"], capture_output=True, text=True)
    assert failed.returncode == 1
    assert "not ready after 0.3s" in failed.stderr
    waiting = subprocess.Popen([*wait, "--timeout", "30"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert waiting.wait(30) == 0
    finally:
        server.shutdown()
        server.server_close()
        waiting.kill()
