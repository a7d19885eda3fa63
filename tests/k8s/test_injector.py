"""`cachewire injector`: AdmissionReview handling, HTTPS end to end against a fake API
server (Secret, caBundle), certificate renewal, and the golden cases through the webhook."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import json
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest
from aiohttp import web

from cachewire.k8s import certs
from cachewire.k8s.admission import ReviewError, review
from cachewire.k8s.kubeapi import KubeApi, secret_data
from cachewire.k8s.tls_auto import AutoTLS
from tests.k8s import golden
from tests.k8s.fake_apiserver import TOKEN, FakeApiServer
from tests.servers import free_port

SERVICE_NAME = "cachewire-injector.cachewire.svc"


def admission_request(pod: dict[str, Any], uid: str = "u-1", namespace: str = "") -> Any:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": namespace or pod["metadata"].get("namespace", "default"),
            "object": pod,
        },
    }


def apply(pod: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    response = answer["response"]
    assert response["allowed"] is True
    if "patch" not in response:
        return pod
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(pod), ops)
    return result


# --- the review function ---


def test_review_echoes_uid_and_patches_to_the_golden_pod() -> None:
    pod = golden.pod("full")
    answer = review(admission_request(pod, uid="abc-123"), golden.CONFIG)
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == "abc-123"
    assert apply(pod, answer) == golden.expected("full")


def test_review_of_an_injected_pod_has_no_patch() -> None:
    injected = golden.expected("bare")
    answer = review(admission_request(injected), golden.CONFIG)
    assert answer["response"] == {"uid": "u-1", "allowed": True}


def test_review_refuses_a_malformed_annotation_with_its_name() -> None:
    pod = golden.pod("bare")
    pod["metadata"]["annotations"] = {"cachewire.io/sinks": "nosql=1"}
    response = review(admission_request(pod), golden.CONFIG)["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "cachewire.io/sinks: unknown sink 'nosql'" in response["status"]["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}, "v1beta1"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}, "AdmissionReview"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "uid"),
        ([], "AdmissionReview"),
    ],
)
def test_review_rejects_what_is_not_a_v1_review(body: Any, message: str) -> None:
    with pytest.raises(ReviewError, match=message):
        review(body, golden.CONFIG)


def test_review_passes_other_kinds_and_operations() -> None:
    body = admission_request(golden.pod("bare"))
    body["request"]["operation"] = "UPDATE"
    assert review(body, golden.CONFIG)["response"] == {"uid": "u-1", "allowed": True}


# --- the process, over HTTPS, against the fake API server ---


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[FakeApiServer, str]]:
    fake = FakeApiServer()
    fake.add_webhook_config("cachewire-injector", hooks=3)
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def injector(
    apiserver: tuple[FakeApiServer, str], tmp_path: Path
) -> AsyncIterator[tuple[FakeApiServer, int, ssl.SSLContext]]:
    """`cachewire injector --tls-auto true` as a process; its CA from the patched caBundle."""
    fake, url = apiserver
    token = tmp_path / "token"
    token.write_text(TOKEN)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "cachewire", "injector", "--tls-auto", "true"],
        *["--host", "127.0.0.1", "--port", str(port), "--namespace", "cachewire"],
        *["--kube-api", url, "--kube-token-file", str(token), *golden.CONFIG_ARGS],
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(fake.patched.wait(), 20)
        hooks = fake.webhook_configs["cachewire-injector"]["webhooks"]
        ca = base64.b64decode(hooks[0]["clientConfig"]["caBundle"]).decode()
        context = ssl.create_default_context(cadata=ca)
        async with aiohttp.ClientSession() as session:
            for _ in range(2000):  # the port answers once the certificate is loaded
                try:
                    url = f"https://127.0.0.1:{port}/readyz"
                    async with session.get(url, ssl=context, server_hostname=SERVICE_NAME) as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.01)  # polling a port that is not bound yet
        yield fake, port, context
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, err.decode()


async def post_review(port: int, context: ssl.SSLContext, body: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"https://127.0.0.1:{port}/mutate", json=body, ssl=context, server_hostname=SERVICE_NAME
        ) as resp,
    ):
        return resp.status, await resp.json()


async def test_tls_auto_writes_one_secret_and_patches_every_ca_bundle(
    injector: tuple[FakeApiServer, int, ssl.SSLContext],
) -> None:
    """The recorded API calls: read the Secret (404), create it, read and patch the
    configuration (one op per webhook), all with the service-account token."""
    fake, _, _ = injector
    calls = [(c.method, c.path) for c in fake.calls]
    secret = "/api/v1/namespaces/cachewire/secrets"
    mwc = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/cachewire-injector"
    assert calls[:4] == [
        ("GET", f"{secret}/cachewire-injector-tls"),
        ("POST", secret),
        ("GET", mwc),
        ("PATCH", mwc),
    ]
    assert all(c.authorization == f"Bearer {TOKEN}" for c in fake.calls)
    patch = fake.calls[3]
    assert patch.content_type == "application/json-patch+json"
    assert [op["path"] for op in patch.body] == [
        f"/webhooks/{i}/clientConfig/caBundle" for i in range(3)
    ]
    stored = secret_data(fake.secrets[("cachewire", "cachewire-injector-tls")])
    assert set(stored) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}


async def test_golden_cases_through_the_webhook(
    injector: tuple[FakeApiServer, int, ssl.SSLContext],
) -> None:
    """Request → patch → apply gives the golden pod, over HTTPS; a second pass no patch."""
    _, port, context = injector
    for name in golden.NAMES:
        pod = golden.pod(name)
        status, answer = await post_review(port, context, admission_request(pod, uid=name))
        assert status == 200
        assert answer["response"]["uid"] == name
        injected = apply(pod, answer)
        assert injected == golden.expected(name), name
        status, again = await post_review(port, context, admission_request(injected))
        assert again["response"] == {"uid": "u-1", "allowed": True}


async def test_webhook_answers_bad_requests_with_400_json(
    injector: tuple[FakeApiServer, int, ssl.SSLContext],
) -> None:
    _, port, context = injector
    status, body = await post_review(port, context, {"apiVersion": "admission.k8s.io/v1beta1"})
    assert status == 400
    assert "AdmissionReview" in body["error"]
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"https://127.0.0.1:{port}/healthz", ssl=context, server_hostname=SERVICE_NAME
        ) as resp,
    ):
        assert resp.status == 200


# --- renewal (in-process, with a clock) ---


async def test_renewal_before_expiry_keeps_old_ca_trusted(
    apiserver: tuple[FakeApiServer, str], tmp_path: Path
) -> None:
    fake, url = apiserver
    token = tmp_path / "token"
    token.write_text(TOKEN)
    now = [dt.datetime.now(dt.UTC)]
    api = KubeApi(url, str(token), "")
    tls = AutoTLS(api, "cachewire", "cachewire-injector", "tls", "cachewire-injector",
                  clock=lambda: now[0])  # fmt: skip
    try:
        await tls.reconcile()
        first = secret_data(fake.secrets[("cachewire", "tls")])
        await tls.reconcile()  # nothing due: nothing written
        assert secret_data(fake.secrets[("cachewire", "tls")]) == first

        now[0] += dt.timedelta(days=61)  # past 2/3 of the 90-day serving certificate
        await tls.reconcile()
        second = secret_data(fake.secrets[("cachewire", "tls")])
        assert second["ca.crt"] == first["ca.crt"]
        assert second["tls.crt"] != first["tls.crt"]
        assert tls.loaded == second["tls.crt"]

        now[0] += dt.timedelta(days=190)  # past 2/3 of the CA's year
        fake.conflicts = 1  # another replica wrote first: re-read, then renew
        await tls.reconcile()
        third = secret_data(fake.secrets[("cachewire", "tls")])
        bundle = third["ca.crt"]
        assert bundle.endswith(first["ca.crt"])  # old CA still trusted while replicas switch
        assert not bundle.startswith(first["ca.crt"])
        hooks = fake.webhook_configs["cachewire-injector"]["webhooks"]
        assert {base64.b64decode(h["clientConfig"]["caBundle"]) for h in hooks} == {bundle}
        assert not certs.due(third["tls.crt"], now[0])
    finally:
        await api.close()


def test_leaf_names_the_service() -> None:
    from cryptography import x509

    ca = certs.make_ca()
    leaf = certs.make_leaf(ca, certs.dns_names("cachewire-injector", "cachewire"))
    cert = x509.load_pem_x509_certificate(leaf.cert)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [
        SERVICE_NAME,
        f"{SERVICE_NAME}.cluster.local",
    ]
