"""Run the Dockerfile's build stage without Docker: its RUN lines, in order, on this machine.

No container daemon or registry is reachable here, so `make image-check` tests the image
recipe this way: a venv from this machine's Python 3.11 stands in for the base image's
Python, the paths /opt/cachewire, /wheels and /tmp/build.lock are moved under OUT, and each
RUN line of the first stage runs as written (with sh -ec) in a copy of the build context
(the tree minus .dockerignore). The result is OUT/opt/cachewire, the install the final
stage copies, made read-only.

    python scripts/replay_dockerfile.py OUT [--python /usr/bin/python3.11]
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent


def build_stage_runs() -> list[str]:
    runs: list[str] = []
    stages = 0
    for item in DockerfileParser(str(ROOT / "Dockerfile")).structure:
        if item["instruction"] == "FROM":
            stages += 1
        elif item["instruction"] == "RUN" and stages == 1:
            runs.append(item["value"])
    return runs


def context(dest: Path) -> Path:
    """The build context: the tree without what .dockerignore names (paths from the root;
    `**/` matches at any depth, as in Docker)."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).relative_to(ROOT)
        return {
            n
            for n in names
            for p in patterns
            if fnmatch.fnmatch(str(rel / n), p)
            or (p.startswith("**/") and fnmatch.fnmatch(n, p.removeprefix("**/")))
        }

    shutil.copytree(ROOT, dest, symlinks=True, ignore=ignore)
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--python", default=shutil.which("python3.11") or "python3")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    if out.exists():
        subprocess.run(["chmod", "-R", "u+w", str(out)], check=True)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    src = context(out / "src")
    tools = out / "base-python"  # the base image's Python (with pip, as in the image)
    subprocess.run([args.python, "-m", "venv", str(tools)], check=True)
    moved = {
        "/opt/cachewire": str(out / "opt" / "cachewire"),
        "/wheels": str(out / "wheels"),
        "/tmp/build.lock": str(out / "build.lock"),
    }
    env = {**os.environ, "PATH": f"{tools / 'bin'}:{os.environ['PATH']}"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"  # the stage's ENV (its no-cache is left out)
    for run in build_stage_runs():
        for old, new in moved.items():
            run = run.replace(old, new)
        print(f"RUN {run}", flush=True)
        subprocess.run(["sh", "-ec", run], cwd=src, env=env, check=True)
    install = out / "opt" / "cachewire"
    subprocess.run(["chmod", "-R", "a-w", str(install)], check=True)
    print(f"install: {install} (read-only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
