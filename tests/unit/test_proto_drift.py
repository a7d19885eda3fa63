"""The committed generated stubs match their .proto sources (regenerate: `make proto`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.servers import ROOT


@pytest.mark.parametrize("script", ["scripts/gen_proto.py", "tests/plasma_stub/gen.py"])
def test_generated_stubs_match_their_sources(script: str) -> None:
    result = subprocess.run(
        [sys.executable, script, "--check"], cwd=ROOT, capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, result.stdout + result.stderr
