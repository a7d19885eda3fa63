"""Regenerate the committed protobuf stubs, or check that they match the sources.

Usage: python scripts/gen_proto.py [--check]
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
SOURCES = sorted(PROTO_ROOT.glob("cachewire/v1/*.proto"))
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(s.relative_to(PROTO_ROOT)) for s in SOURCES),
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_ROOT)


def main() -> int:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        drift = []
        for src in SOURCES:
            for suffix in SUFFIXES:
                rel = src.relative_to(PROTO_ROOT).with_name(src.stem + suffix)
                new, old = Path(tmp) / rel, PROTO_ROOT / rel
                if check:
                    if not old.exists() or not filecmp.cmp(new, old, shallow=False):
                        drift.append(str(rel))
                else:
                    shutil.copyfile(new, old)
        if drift:
            print("generated stubs drift from proto sources: " + ", ".join(drift))
            print("run `make proto` and commit the result")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
