"""Each component runs as the image runs it: the Dockerfile's exact ENTRYPOINT + CMD (and
the sidecar's and injector's arguments as the manifests give them), as UID 65532, on a
read-only root filesystem with only a fresh /tmp writable (a private mount namespace).

`make image-check` runs this against OUT/opt/cachewire from scripts/replay_dockerfile.py
(the Dockerfile's build stage replayed without Docker; CACHEWIRE_IMAGE_INSTALL). In the
suite it runs against the development install, so the runtime behaviour (nothing written
outside /tmp, no root) is checked on every run and the recipe by the make target.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from cachewire.k8s import certs
from tests.servers import ROOT, Proc, _spawn, free_port, port_answers, wait_for

UID = 65532
NAMESPACE = """
mount --bind / / && mount -o remount,bind,ro /
mount -t tmpfs -o size=1m,mode=755 tmpfs /mnt
i=0
for p in $KEEP; do mkdir /mnt/$i && mount --bind "$p" /mnt/$i; i=$((i+1)); done
mount -t tmpfs -o size=64m,mode=1777 tmpfs /tmp
if [ -n "$HIDE_ROOT" ]; then mount -t tmpfs -o size=1m,mode=755 tmpfs /root; fi
i=0
for p in $KEEP; do  # what the fresh /tmp and /root covered: back, read-only
  mkdir -p "$p" && mount --bind /mnt/$i "$p" && mount -o remount,bind,ro "$p"; i=$((i+1))
done
cd /tmp
exec setpriv --reuid {uid} --regid {uid} --clear-groups --no-new-privs \
  env -i PATH="$INSTALL_BIN:/usr/bin:/bin" HOME=/nonexistent PYTHONDONTWRITEBYTECODE=1 "$@"
"""
COVERED = ("/tmp/", "/root/")  # the namespace mounts fresh, empty file systems there


def image_command() -> tuple[list[str], list[str]]:
    parser = DockerfileParser(str(ROOT / "Dockerfile"))
    stages = [i for i in parser.structure if i["instruction"] in ("ENTRYPOINT", "CMD")]
    by = {i["instruction"]: json.loads(i["value"]) for i in stages}
    return by["ENTRYPOINT"], by["CMD"]


@pytest.fixture(scope="module")
def install_bin() -> Path:
    if os.geteuid() != 0 or subprocess.run(["unshare", "--mount", "true"]).returncode != 0:
        pytest.skip("needs root and mount namespaces (unshare) to run with a read-only root")
    given = os.environ.get("CACHEWIRE_IMAGE_INSTALL")
    return Path(given) if given else Path(sys.executable).parent


def start(install: Path, argv: list[str], ports: dict[str, int]) -> Proc:
    interpreter = Path(os.path.realpath(install / "python")).parent.parent
    env = {"INSTALL_BIN": str(install)}
    if str(interpreter).startswith("/root/"):  # pyenv: show the interpreter, not the rest
        env["HIDE_ROOT"] = "1"
    # The interpreter, the install and (for an editable install) the tree it points to stay
    # visible wherever they live, also under the covered /tmp or /root (CI's clone may).
    wanted = {interpreter, install.resolve().parent, ROOT.resolve()}
    covered = sorted(p for p in wanted if str(p).startswith(COVERED))
    keep = [p for p in covered if not any(q != p and p.is_relative_to(q) for q in covered)]
    env["KEEP"] = " ".join(str(p) for p in keep)
    script = NAMESPACE.replace("{uid}", str(UID))
    popen, log = _spawn(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script,
                         "sh", *argv], env)  # fmt: skip
    return Proc(popen, ports, log)


@pytest.fixture
def running(install_bin: Path) -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    yield procs
    for proc in procs:
        proc.kill()


def stop_cleanly(proc: Proc) -> None:
    assert proc.stop(timeout=20) == 0, proc.log()
    log = proc.log()
    for bad in ("Traceback", "Read-only file system", "Permission denied"):
        assert bad not in log, log


def ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1, context=context) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_hub_sidecar_and_injector_run_as_non_root_on_a_read_only_root(
    install_bin: Path, running: list[Proc], tmp_path: Path
) -> None:
    entrypoint, cmd = image_command()
    assert cmd == ["hub"]
    http, grpc = free_port(), free_port()
    hub = start(
        install_bin,
        [*entrypoint, *cmd, "--http-port", str(http), "--grpc-port", str(grpc),
         "--drain-delay", "0", "--drain-window", "0"],
        {"http": http, "grpc": grpc},
    )  # fmt: skip
    running.append(hub)
    wait_for(lambda: ok(f"http://127.0.0.1:{http}/readyz"), 30, "the hub's /readyz")
    status = Path(f"/proc/{hub.popen.pid}/status").read_text()
    assert f"Uid:\t{UID}\t{UID}\t{UID}\t{UID}" in status  # the process itself, not root

    relay, health = free_port(), free_port()
    sidecar = start(
        install_bin,
        [*entrypoint, "sidecar", "--hub", f"127.0.0.1:{grpc}", "--topics", "user",
         "--relay-port", str(relay), "--health-port", str(health)],
        {"health": health},
    )  # fmt: skip
    running.append(sidecar)
    wait_for(lambda: ok(f"http://127.0.0.1:{health}/readyz"), 30, "the sidecar's /readyz")

    # The injector with certificate files, as with components/cert-manager (readable by
    # UID 65532, like a mounted Secret).
    ca = certs.make_ca()
    leaf = certs.make_leaf(ca, ["cachewire-injector.cachewire.svc"])
    tls = Path(os.environ.get("TMPDIR", "/var/tmp")) / f"cachewire-image-test-{os.getpid()}"
    tls.mkdir(mode=0o755, exist_ok=True)
    (tls / "tls.crt").write_bytes(leaf.cert)
    (tls / "tls.key").write_bytes(leaf.key)
    os.chmod(tls / "tls.key", 0o644)
    try:
        port = free_port()
        injector = start(
            install_bin,
            [*entrypoint, "injector", "--port", str(port),
             "--tls-cert", str(tls / "tls.crt"), "--tls-key", str(tls / "tls.key")],
            {"https": port},
        )  # fmt: skip
        running.append(injector)
        context = ssl.create_default_context(cadata=ca.cert.decode())
        context.check_hostname = False  # the name is the Service's; we dial 127.0.0.1
        wait_for(lambda: port_answers(port), 30, "the injector's port")
        wait_for(lambda: ok(f"https://127.0.0.1:{port}/readyz", context), 30, "injector /readyz")
        stop_cleanly(injector)
    finally:
        for name in ("tls.crt", "tls.key"):
            (tls / name).unlink()
        tls.rmdir()
    hub.signal(signal.SIGTERM)  # the sidecar sees its hub go, then is stopped itself
    stop_cleanly(sidecar)
    stop_cleanly(hub)
