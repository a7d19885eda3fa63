"""Every flag and CACHEWIRE_* variable the manifests (and the injected sidecar) pass exists
in the program, and its value parses: the manifests cannot drift from the code."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cachewire.hub import settings as hub_settings
from cachewire.k8s import config as k8s_config
from cachewire.k8s import injector
from cachewire.k8s.inject import inject
from cachewire.sidecar import settings as sidecar_settings
from tests.k8s import golden
from tests.k8s.manifests import containers, names, rendered

# Names the manifests already use for settings that other open issues add. When one of
# them lands, its names exist in the program and test_pending_names_are_still_missing fails:
# delete them here then (the list should end up empty).
PENDING = {
    # issue 11 (security): the protected component, the admin port, the sidecar's token
    "CACHEWIRE_AUTH",
    "CACHEWIRE_JWT_KEY",
    "CACHEWIRE_K8S_TOKEN_REVIEW",
    "CACHEWIRE_POLICY_FILE",
    "CACHEWIRE_ADMIN_PORT",
    "CACHEWIRE_ADMIN_HOST",
    "CACHEWIRE_SIDECAR_TOKEN_FILE",
}


def program() -> dict[str, tuple[set[str], set[str]]]:
    """subcommand → (its flags, its variables)."""
    hub_flags = {o.flag for o in hub_settings.OPTIONS}
    hub_env = {e for o in hub_settings.OPTIONS for e in o.env if e.startswith("CACHEWIRE_")}
    sidecar_flags = {o.flag for o in sidecar_settings.OPTIONS}
    sidecar_flags |= {f"--no-{o.key}" for o in sidecar_settings.OPTIONS if o.boolean}
    sidecar_env = {o.env for o in sidecar_settings.OPTIONS}
    injector_opts = [*injector.OPTIONS.values(), *k8s_config.SHARED.values()]
    return {
        "hub": (hub_flags, hub_env),
        "sidecar": (sidecar_flags, sidecar_env),
        "injector": ({o[0] for o in injector_opts}, {o[1] for o in injector_opts}),
    }


def cachewire_containers() -> Iterator[tuple[str, str, dict[str, Any], list[dict[str, Any]]]]:
    """(where, subcommand, container, documents) for every container running cachewire."""
    for name in names():
        docs = rendered(name)
        for doc in docs:
            for container in containers(doc):
                args = container.get("args") or []
                if "cachewire" in container.get("image", "") and args:
                    where = f"{name} {doc['kind']}/{doc['metadata']['name']}"
                    yield where, args[0], container, docs
    for case in golden.NAMES:
        pod = inject(golden.pod(case), golden.CONFIG)
        for container in containers({"kind": "Pod", **pod}):
            if container["name"] == "cachewire-sidecar":
                yield f"injected {case}", "sidecar", container, []


def settings_of(
    container: dict[str, Any], docs: list[dict[str, Any]]
) -> tuple[list[str], dict[str, str]]:
    """The container's flags and its CACHEWIRE_* variables (env and envFrom ConfigMaps)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        name = (source.get("configMapRef") or {}).get("name")
        for doc in docs:
            if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name:
                env.update(doc.get("data") or {})
    for var in container.get("env") or []:
        env[var["name"]] = var.get("value", "from-a-reference")
    return container["args"][1:], {k: v for k, v in env.items() if k.startswith("CACHEWIRE_")}


def used() -> list[tuple[str, str, str]]:
    """(where, subcommand, flag or variable) for every setting the manifests pass."""
    out = []
    for where, command, container, docs in cachewire_containers():
        args, env = settings_of(container, docs)
        out += [(where, command, a.split("=")[0]) for a in args if a.startswith("--")]
        out += [(where, command, v) for v in env]
    return out


def test_every_flag_and_variable_exists() -> None:
    known = program()
    missing = sorted(
        {
            f"{where}: cachewire {command} has no {name}"
            for where, command, name in used()
            if name not in PENDING and name not in known[command][0] | known[command][1]
        }
    )
    assert missing == []


def test_pending_names_are_still_missing_and_used() -> None:
    """Keeps PENDING honest: each name is used by a manifest and not yet in the program."""
    known = program()
    everything = set().union(*(flags | env for flags, env in known.values()))
    assert sorted(PENDING & everything) == [], "these landed: remove them from PENDING"
    assert sorted(PENDING - {name for _, _, name in used()}) == [], "no manifest uses these"


@pytest.mark.parametrize("name", [n for n in names() if n != "components/sidecar"])
def test_values_parse(name: str) -> None:
    """The hub's and injector's settings as the manifests give them parse without error."""
    docs = rendered(name)
    for where, command, container, _ in cachewire_containers():
        if not where.startswith(name + " "):
            continue
        args, env = settings_of(container, docs)
        env = {k: v for k, v in env.items() if k not in PENDING and v != "from-a-reference"}
        if command == "hub":
            hub_settings.parse(hub_settings.HubSettings, args, env)
        elif command == "injector":
            injector.parse(args, {**env, "KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "injector")


def test_injected_sidecar_arguments_parse() -> None:
    for case in golden.NAMES:
        pod = inject(golden.pod(case), golden.CONFIG)
        for container in containers({"kind": "Pod", **pod}):
            if container["name"] == "cachewire-sidecar":
                sidecar_settings.parse(container["args"][1:], env={})
