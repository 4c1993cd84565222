"""The GPU verify stage's accumulation checks, run on tiny shapes under Triton's CPU interpreter: the script itself
works and its checks pass there (the GPU suite runs them at scale)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_accumulation_checks_pass_on_smoke_shapes():
    pytest.importorskip("triton")
    out = subprocess.run([sys.executable, "benchmarks/verify_gpu.py", "--smoke", "--only",
                          "accumulation,accumulation_at_scale,scaled_backward"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, TRITON_INTERPRET="1"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| accumulation")]
    assert rows and all("| PASS |" in row for row in rows), rows
    assert "**All checks passed.**" in out.stdout
