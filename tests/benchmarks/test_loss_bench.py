"""The loss benchmark's inputs and its table, on tiny CPU shapes (the GPU suite's `loss` stage runs it at scale)."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from loss_bench import PEAKED_STD, logit_stats, make_inputs  # noqa: E402


def test_peaked_logits_are_peaked_and_uniform_ones_are_not():
    """Peaked inputs: logits of about the intended std and targets holding a large share of the probability,
    as in a trained model; uniform inputs: nearly uniform softmax (what made CCE's filter look better)."""
    n, h, v = 256, 256, 4000
    std, p_target = logit_stats(*make_inputs(n, h, v, torch.float32, "cpu", logits="peaked")[:3])
    assert abs(std - PEAKED_STD) < 0.5 and 0.3 < p_target < 0.7, (std, p_target)
    std, p_target = logit_stats(*make_inputs(n, h, v, torch.float32, "cpu", logits="uniform")[:3])
    assert std < 0.25 and p_target < 2 / v, (std, p_target)
    with pytest.raises(ValueError, match="peaked"):
        make_inputs(4, 4, 10, torch.float32, "cpu", logits="sharp")


def test_table_rows_and_memory_against_the_same_accumulator():
    """One tiny CPU run: every requested variant gets a row, the UAL rows name their accumulator, and the
    logits statistics head the table."""
    variants = ["torch_ls", "gemm_floor", "ual_linear", "ual_linear_bf16acc"]
    out = subprocess.run([sys.executable, "benchmarks/loss_bench.py", "--n", "128", "--h", "32", "--v", "500",
                          "--dtype", "bf16", "--reps", "2", "--logits", "peaked", "--variants", ",".join(variants)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:] for line in out.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| variant")}
    assert list(rows) == variants
    assert rows["ual_linear"][0].strip() == "fp32" and rows["ual_linear_bf16acc"][0].strip() == "weight dtype"
    assert "peaked logits (std" in out.stdout and "mean target probability" in out.stdout
    for cells in rows.values():
        times = [float(c.strip().rstrip("x")) for c in cells[2:4]]  # vs torch_ls, vs gemm_floor
        assert all(math.isfinite(t) and t > 0 for t in times)
