"""The Dockerfile's promises, read from the file (no daemon or registry is reachable here):
multi-stage, the lock with hashes, slim Python 3.11, UID 65532, no pip or compilers in the
final stage, OCI labels, ENTRYPOINT ["cachewire"], and a .dockerignore."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]


def stages() -> list[list[dict[str, Any]]]:
    """The instructions of each stage (comments dropped), ARGs before the first FROM aside."""
    parser = DockerfileParser(str(ROOT / "Dockerfile"))
    out: list[list[dict[str, Any]]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            out.append([])
        if out and item["instruction"] != "COMMENT":
            out[-1].append(item)
    return out


def values(stage: list[dict[str, Any]], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def test_multi_stage_from_slim_python_311() -> None:
    parser = DockerfileParser(str(ROOT / "Dockerfile"))
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", parser.baseimage)  # ARG default resolved
    build, final = stages()
    assert values(build, "FROM")[0].endswith(" AS build")
    assert values(final, "COPY") == ["--from=build /opt/cachewire /opt/cachewire"]


def test_build_installs_the_runtime_lock_with_hashes_then_the_wheel() -> None:
    build, _ = stages()
    runs = " ".join(values(build, "RUN"))
    assert "--require-hashes" in runs
    assert "-r requirements/runtime.lock" in runs
    assert "pip wheel --no-deps" in runs
    assert "--no-deps /wheels/cachewire-*.whl" in runs


def test_final_stage_has_no_pip_or_compilers_and_installs_nothing() -> None:
    _, final = stages()
    runs = " ".join(values(final, "RUN"))
    assert "pip uninstall -y -q pip setuptools wheel" in runs
    assert "pip install" not in runs
    assert not re.search(r"apt-get|apk |gcc|build-essential|g\+\+|make ", runs)


def test_runs_as_uid_65532_with_only_tmp_writable() -> None:
    _, final = stages()
    assert values(final, "USER") == ["65532:65532"]
    assert values(final, "WORKDIR") == ["/tmp"]
    env = " ".join(values(final, "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # nothing written beside the code
    assert "PATH=/opt/cachewire/bin:$PATH" in env


def test_entrypoint_is_cachewire_and_labels_are_oci() -> None:
    parser = DockerfileParser(str(ROOT / "Dockerfile"))
    _, final = stages()
    assert json.loads(values(final, "ENTRYPOINT")[0]) == ["cachewire"]
    assert json.loads(values(final, "CMD")[0]) == ["hub"]
    for key in ("title", "description", "version", "licenses", "source"):
        assert parser.labels[f"org.opencontainers.image.{key}"]


@pytest.mark.parametrize("excluded", [".git", ".venv*", "tests", "**/__pycache__", "k8s"])
def test_dockerignore_keeps_the_context_small(excluded: str) -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert excluded in lines
    assert "README.md" not in lines  # pyproject's readme: the build needs it
