"""The GPU suite's QLoRA stage, run on its CPU preset: it must reach the trainers' current UAL path."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_qlora_check_cpu_preset_passes():
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("peft")
    out = subprocess.run([sys.executable, "benchmarks/qlora_check.py", "--preset", "cpu-tiny", "--steps", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "**PASS**" in out.stdout
