"""Regenerate the Plasma-contract test stubs, or check that they match stream.proto.

Usage: python tests/plasma_stub/gen.py [--check]

The stubs are generated from the repository root so that they import as
`tests.plasma_stub.stream_pb2`, a path that cannot collide with `cachewire.v1`.
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path("tests/plasma_stub/stream.proto")
OUTPUTS = ("stream_pb2.py", "stream_pb2.pyi", "stream_pb2_grpc.py")


def main() -> int:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{ROOT}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(SOURCE),
            ],
            check=True,
            cwd=ROOT,
        )
        drift = []
        for name in OUTPUTS:
            new, old = Path(tmp) / SOURCE.parent / name, ROOT / SOURCE.parent / name
            if not check:
                shutil.copyfile(new, old)
            elif not old.exists() or not filecmp.cmp(new, old, shallow=False):
                drift.append(str(SOURCE.parent / name))
    if drift:
        print("Plasma test stubs drift from stream.proto: " + ", ".join(drift))
        print("run `python tests/plasma_stub/gen.py` and commit the result")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
