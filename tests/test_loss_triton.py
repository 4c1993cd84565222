"""The fused Triton kernel against torch's own label-smoothed cross-entropy and against the torch kernel.

On a GPU these run the compiled kernel on CUDA; without one they run the same kernel under Triton's
CPU interpreter (see ``tests/conftest.py``), which checks its indexing, masking and arithmetic.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import TRITON_INTERPRETED
from tests.test_loss import EPS_VALUES, make_case, torch_reference
from ual_plugin import linear_smoothed_cross_entropy
from ual_plugin.loss import default_chunk_size, resolve_kernel

pytest.importorskip("triton")
if not (torch.cuda.is_available() or TRITON_INTERPRETED):
    pytest.skip("triton was imported before the interpreter could be chosen", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def on_device(*tensors):
    return [None if t is None else t.detach().to(DEVICE).requires_grad_(t.requires_grad) for t in tensors]


@pytest.mark.parametrize("block_v", [64, None])  # several blocks with a ragged tail, or one block
@pytest.mark.parametrize("softcap", [None, 4.0])
def test_rows_kernel_matches_torch_loss_and_gradient(block_v, softcap):
    from ual_plugin.loss_triton import smoothed_ce_rows_

    g = torch.Generator().manual_seed(1)
    rows, vocab, scale = 12, 300, 0.5
    raw = (torch.randn(rows, vocab, generator=g) * 3).to(DEVICE)
    targets = torch.randint(0, vocab, (rows,), generator=g).to(DEVICE)
    eps = torch.tensor([EPS_VALUES[i % len(EPS_VALUES)] for i in range(rows)], device=DEVICE)
    row_weight = torch.rand(rows, generator=g).to(DEVICE)

    ref_raw = raw.clone().requires_grad_()
    z = ref_raw * scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    ref = torch_reference(z, targets, eps)
    (ref_grad,) = torch.autograd.grad((row_weight * ref).sum(), ref_raw)

    buf = raw.clone()
    losses, top1 = smoothed_ce_rows_(buf, targets, eps, row_weight, logit_scale=scale, softcap=softcap, block_v=block_v)
    torch.testing.assert_close(losses, ref.detach(), rtol=1e-5, atol=1e-5)
    assert torch.equal(top1, z.argmax(dim=1) == targets)
    torch.testing.assert_close(buf, ref_grad, rtol=1e-4, atol=1e-6)  # the buffer now holds the gradient

    untouched = raw.clone()
    losses2, _ = smoothed_ce_rows_(untouched, targets, eps, None, logit_scale=scale, softcap=softcap, block_v=block_v)
    assert torch.equal(untouched, raw), "without row weights the logits must be left alone"
    torch.testing.assert_close(losses2, losses)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("some_ignored", [True, False])  # gathered rows, or the whole batch in place
def test_linear_triton_matches_reference_fp32(reduction, with_bias, some_ignored):
    hidden, weight, bias, targets, eps = on_device(*make_case(n=40, h=16, v=37, seed=2, with_bias=with_bias))
    if not some_ignored:
        targets = targets.clamp(min=0)
    stats = {}
    out = linear_smoothed_cross_entropy(
        hidden, weight, targets.to(DEVICE), eps.to(DEVICE), bias=bias, reduction=reduction, chunk_size=16,
        kernel="triton", stats=stats,
    )
    logits = hidden @ weight.t() + (0 if bias is None else bias)
    ref = torch_reference(logits, targets, eps)
    if reduction == "mean":
        ref = ref.sum() / (targets != -100).sum()
    elif reduction == "sum":
        ref = ref.sum()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    valid = targets != -100
    assert stats["n_correct"] == (logits.argmax(-1) == targets)[valid].sum()
    params = [hidden, weight] + ([bias] if bias is not None else [])
    upstream = torch.rand_like(out)
    got = torch.autograd.grad(out, params, upstream)
    want = torch.autograd.grad(ref, params, upstream)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("head_dtype", [torch.bfloat16, torch.float32])  # fp32 head: as QLoRA's upcast lm_head
def test_linear_triton_agrees_with_torch_kernel_in_bf16(head_dtype):
    hidden, weight, _, targets, eps = on_device(*make_case(n=96, h=32, v=203, dtype=torch.bfloat16, seed=4))
    weight = weight.detach().to(head_dtype).requires_grad_()
    targets, eps = targets.to(DEVICE), eps.to(DEVICE)
    results = {}
    for kernel in ("torch", "triton"):
        out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, chunk_size=32, kernel=kernel)
        results[kernel] = (out, *torch.autograd.grad(out, [hidden, weight]))
    for a, b in zip(results["triton"], results["torch"], strict=True):
        assert a.dtype == b.dtype
        # bf16 logits (triton) against fp32 logits (torch): bf16 rounding of the logits and gradients
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-3)


def test_linear_triton_all_ignored_and_frozen_weight():
    hidden = torch.randn(2, 5, 8, device=DEVICE, requires_grad=True)
    weight = torch.randn(13, 8, device=DEVICE)  # frozen head, as with LoRA: no weight gradient computed
    targets = torch.full((2, 5), -100, device=DEVICE)
    out = linear_smoothed_cross_entropy(hidden, weight, targets, 0.1, kernel="triton")
    out.backward()
    assert out.item() == 0.0 and torch.count_nonzero(hidden.grad) == 0
    targets[1, 2:] = 3
    hidden.grad = None
    out = linear_smoothed_cross_entropy(hidden, weight, targets, 0.1, kernel="triton")
    out.backward()
    ref = torch.nn.functional.cross_entropy((hidden @ weight.t()).reshape(-1, 13), targets.reshape(-1),
                                            label_smoothing=0.1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(hidden.grad[0]) == 0 and torch.count_nonzero(hidden.grad[1, 2:]) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_auto_picks_triton_and_matches_fp32_reference_at_scale():
    torch.manual_seed(0)
    n, h, v = 4096, 512, 32000
    hidden = (torch.randn(n, h, device="cuda") * 0.5).bfloat16().requires_grad_()
    weight = (torch.randn(v, h, device="cuda") * 0.02).bfloat16().requires_grad_()
    targets = torch.randint(0, v, (n,), device="cuda")
    targets[: n // 4] = -100
    eps = torch.rand(n, device="cuda") * 0.3
    assert resolve_kernel(None, hidden.device) == "triton"
    out = linear_smoothed_cross_entropy(hidden, weight, targets, eps)
    gh, gw = torch.autograd.grad(out, [hidden, weight])
    h32, w32 = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    logits = h32 @ w32.t()
    valid = targets != -100
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    margin = logits.gather(1, targets.clamp(min=0)[:, None]).squeeze(1) - logits.mean(1)
    ref = ((nll - eps * margin) * valid).sum() / valid.sum()
    rh, rw = torch.autograd.grad(ref, [h32, w32])
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gh.float(), rh, rtol=5e-2, atol=5e-4)
    torch.testing.assert_close(gw.float(), rw, rtol=5e-2, atol=5e-4)


def test_kernel_choice(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("UAL_KERNEL", raising=False)
    assert resolve_kernel(None, cpu) == "torch"
    assert resolve_kernel("auto", cuda) == "triton"
    assert resolve_kernel("torch", cuda) == "torch"
    monkeypatch.setenv("UAL_KERNEL", "torch")
    assert resolve_kernel(None, cuda) == "torch"
    assert resolve_kernel("triton", cuda) == "triton"  # an explicit argument beats the variable
    with pytest.raises(ValueError, match="kernel must be one of"):
        resolve_kernel("cuda", cpu)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        resolve_kernel("triton", cpu)
    # the triton chunk keeps [rows, V] logits in the weight's dtype within 128 MiB, in multiples of 64 rows
    assert default_chunk_size(8192, 128256, cuda, "triton", 2) == 512
    assert default_chunk_size(16384, 32000, cuda, "triton", 2) == 2048


def test_every_tuning_config_compiles_for_hopper_without_register_spills():
    """Ahead-of-time compilation to an sm_90 cubin (Triton's own ptxas; no GPU needed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    out = subprocess.run([sys.executable, "-m", "ual_plugin.loss_triton", "90"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 10
    for row in rows:
        assert row["stack_bytes"] == 0 and 0 < row["registers"] <= 128, row
