"""The wheel works alone: built from the tree, installed into a fresh venv with only the
locked runtime dependencies (no editable install, no repository on the path), it gives the
`cachewire` command, a hub that publishes and subscribes, and no top-level `hub`/`sidecar`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ROOT, Proc, start_hub

pytestmark = pytest.mark.timeout(420)

# What the build needs from the tree; tests, caches and virtual environments stay out.
SKIP = shutil.ignore_patterns(".git", ".venv*", "dist", "build", "*.egg-info", "__pycache__")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build` (sdist, then the wheel from it) on a copy of the tree."""
    src = tmp_path_factory.mktemp("src") / "cachewire"
    shutil.copytree(ROOT, src, symlinks=True, ignore=SKIP)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv: the runtime lock (hashes checked), then the wheel without dependencies."""
    env = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps"]
    lock = ROOT / "requirements" / "runtime.lock"
    subprocess.run([*pip, "--require-hashes", "-r", str(lock)], check=True, timeout=300)
    (wheel,) = dist.glob("cachewire-*.whl")
    subprocess.run([*pip, str(wheel)], check=True, timeout=120)
    return env / "bin"


def run(exe: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # cwd outside the repository, so nothing of the tree can be imported by accident.
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=60, cwd=exe.parent
    )


def test_dist_has_an_sdist_and_a_wheel_with_stubs_and_no_tests(dist: Path) -> None:
    assert len(list(dist.glob("cachewire-*.tar.gz"))) == 1
    (wheel,) = dist.glob("cachewire-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"cachewire"}
    for needed in (
        "cachewire/py.typed",
        "cachewire/v1/hub_pb2.py",
        "cachewire/v1/hub_pb2.pyi",
        "cachewire/v1/hub_pb2_grpc.py",
        "cachewire/v1/plasma_pb2.py",
        "cachewire/v1/hub.proto",
        "cachewire/hub/server.py",
        "cachewire/sidecar/client.py",
        "cachewire/common/telemetry.py",
        "cachewire/cli/publish.py",
    ):
        assert needed in names
    assert not [n for n in names if "/tests/" in n or n.startswith("tests/")]


def test_installed_wheel_commands(venv: Path) -> None:
    version = run(venv / "cachewire", "version")
    assert version.returncode == 0 and version.stdout.strip() == "0.1.0", version.stderr
    helped = run(venv / "cachewire", "hub", "--help")
    assert helped.returncode == 0 and "CACHEWIRE_HTTP_PORT" in helped.stdout
    for alias in ("cachewire-hub", "cachewire-sidecar"):
        assert run(venv / alias, "--help").returncode == 0
    for gone in ("hub", "sidecar"):
        imported = run(venv / "python", "-c", f"import {gone}")
        assert imported.returncode == 1 and "ModuleNotFoundError" in imported.stderr
    typed = run(venv / "python", "-c", "from cachewire.sidecar.client import Invalidator")
    assert typed.returncode == 0, typed.stderr


@pytest.fixture
def wheel_hub(venv: Path) -> Iterator[Proc]:
    proc = start_hub(exe=venv / "cachewire", grpc=False)
    yield proc
    proc.stop()


def test_publish_subscribe_round_trip_on_the_installed_hub(venv: Path, wheel_hub: Proc) -> None:
    base = f"http://127.0.0.1:{wheel_hub.ports['http']}"
    with urllib.request.urlopen(f"{base}/?eventType=user", timeout=10) as stream:
        published = run(venv / "cachewire", "publish", "--hub-url", base, "--type", "user:42")
        assert published.returncode == 0, published.stderr
        (event_id,) = published.stdout.split()
        block: list[bytes] = []
        while not any(line.startswith(b"data:") for line in block):  # the first event
            block = []
            while (line := stream.readline()) not in (b"\n", b""):
                block.append(line)
    assert f"id: {event_id}\n".encode() in block
    assert b'"type":"user:42"' in b"".join(block)
