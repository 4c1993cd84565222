"""The fused Triton kernel against torch's own label-smoothed cross-entropy and against the torch kernel.

On a GPU these run the compiled kernel on CUDA; without one they run the same kernel under Triton's
CPU interpreter (see ``tests/conftest.py``), which checks its indexing, masking and arithmetic.
"""

import pytest
import torch

from tests.conftest import TRITON_INTERPRETED
from tests.test_loss import EPS_VALUES, make_case, torch_reference
from ual_plugin import linear_smoothed_cross_entropy
from ual_plugin.loss import default_chunk_size, gpu_chunk_rows, resolve_kernel

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


def test_bf16_gradients_through_the_padded_buffer_are_finite_and_match_the_torch_kernel():
    """bf16 GEMMs read the padded logits buffer as the gradient of the hidden states (V = 4099)."""
    g = torch.Generator().manual_seed(2)
    n, h, vocab = 64, 16, 4099
    hidden = (torch.randn(n, h, generator=g) * 0.5).bfloat16().to(DEVICE).requires_grad_()
    weight = (torch.randn(vocab, h, generator=g) / 4).bfloat16().to(DEVICE).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=g).to(DEVICE)
    targets[:16] = -100
    eps = (torch.rand(n, generator=g) * 0.3).to(DEVICE)
    grads = {}
    for kernel in ("triton", "torch"):
        out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, kernel=kernel)
        grads[kernel] = torch.autograd.grad(out, [hidden, weight])
    for a, b in zip(grads["triton"], grads["torch"], strict=True):
        assert torch.isfinite(a).all()
        assert float((a.float() - b.float()).norm() / b.float().norm()) < 2e-2


@pytest.mark.parametrize("vocab", [32001, 128257])  # vocabularies not divisible by 16 (added tokens)
def test_linear_triton_with_unaligned_vocabulary_and_padded_rows(vocab):
    """Rows of the logits buffer are padded to 64 elements; each row is a whole-slice body plus a masked
    tail. Loss and gradients still match the reference for any vocabulary size."""
    from ual_plugin.loss_triton import ROW_ALIGN, logits_buffer

    buf = logits_buffer(3, vocab, torch.bfloat16, torch.device(DEVICE))
    assert buf.shape == (3, vocab) and buf.stride(0) % ROW_ALIGN == 0 and buf.stride(0) - vocab < ROW_ALIGN
    # the padding is zero: CPU bf16 GEMMs read it in a strided operand (garbage there gave NaN gradients)
    assert not buf.as_strided((3, buf.stride(0)), buf.stride())[:, vocab:].any()
    g = torch.Generator().manual_seed(7)
    n, h = 6, 8
    hidden = torch.randn(n, h, generator=g).to(DEVICE).requires_grad_()
    weight = (torch.randn(vocab, h, generator=g) * 0.5).to(DEVICE).requires_grad_()
    targets = torch.tensor([0, vocab - 1, 5, -100, vocab - 2, 12345 % vocab], device=DEVICE)
    eps = torch.tensor(EPS_VALUES[:n], device=DEVICE)
    out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, chunk_size=4, kernel="triton")
    ref = torch_reference(hidden @ weight.t(), targets, eps).sum() / 5
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(out, [hidden, weight])
    want = torch.autograd.grad(ref, [hidden, weight])
    for a, b in zip(got, want, strict=True):  # float32 sums over the vocabulary: about 3e-5 off float64 here
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_launch_runs_on_the_logits_device():
    """Triton launches on the current CUDA device: the launch makes the logits' device current (a head
    on cuda:1 under device_map="auto" must not run on cuda:0's stream), and refuses mixed devices."""
    from types import SimpleNamespace

    from ual_plugin.loss_triton import on_device_of, smoothed_ce_rows_

    guard = on_device_of(SimpleNamespace(device=torch.device("cuda", 1)))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    logits = torch.zeros(2, 5, device=DEVICE)
    with pytest.raises(ValueError, match="logits' device"):
        smoothed_ce_rows_(logits, torch.zeros(2, dtype=torch.long, device="meta"), torch.zeros(2, device=DEVICE),
                          None)


def test_configurations_come_from_a_fixed_table_not_autotuning():
    """Autotuning this in-place kernel would copy the logits back for every timed trial, compile inside
    the first training step and break CUDA-graph capture: configurations are a fixed rule."""
    import triton

    import ual_plugin.loss_triton as lt

    assert not any(isinstance(v, triton.runtime.Autotuner) for v in vars(lt).values())
    for vocab in (32000, 32001, 50257, 128256, 128257, 256000):
        assert lt.kernel_config(vocab) in lt.CONFIGS
    for vocab in (2, 37, 300, 1000):
        block, warps = lt.kernel_config(vocab)
        assert (block, warps) in lt.CONFIGS and block >= vocab


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kernel", ["triton", "torch"])
def test_cuda_kernels_match_fp32_reference_at_scale(kernel):
    torch.manual_seed(0)
    n, h, v = 4096, 512, 32000
    hidden = (torch.randn(n, h, device="cuda") * 0.5).bfloat16().requires_grad_()
    weight = (torch.randn(v, h, device="cuda") * 0.02).bfloat16().requires_grad_()
    targets = torch.randint(0, v, (n,), device="cuda")
    targets[: n // 4] = -100
    eps = torch.rand(n, device="cuda") * 0.3
    out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, kernel=kernel)
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
    # the verify stage passed on an H200 (benchmarks/RESULTS.md): auto picks triton on CUDA
    assert resolve_kernel("auto", cuda) == "triton"
    assert resolve_kernel(None, cuda) == "triton"
    assert resolve_kernel("triton", cuda) == "triton"
    monkeypatch.setenv("UAL_KERNEL", "torch")
    assert resolve_kernel(None, cuda) == "torch"
    assert resolve_kernel("triton", cuda) == "triton"  # an explicit argument beats the variable
    with pytest.raises(ValueError, match="kernel must be one of"):
        resolve_kernel("cuda", cpu)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        resolve_kernel("triton", cpu)
    monkeypatch.setattr("ual_plugin.loss._triton_installed", lambda: False)
    assert resolve_kernel("auto", cuda) == "torch"  # no triton installed: the portable kernel
    # GPU chunks: the device's rows (2048 where there is no CUDA device) within the kernel's byte budget
    rows = gpu_chunk_rows(cuda)
    assert 1024 <= rows <= 4096 and (rows == 2048 or torch.cuda.is_available())
    assert default_chunk_size(8192, 128256, cuda, "triton", 2) == min(rows, 2048)  # 512 MiB of bf16 logits
    assert default_chunk_size(8192, 128256, cuda, "torch", 2) == min(rows, 2048)  # + their fp32 copy: 1.5 GiB
    assert default_chunk_size(8192, 256000, cuda, "triton", 2) == 1024
    assert default_chunk_size(100, 32000, cuda, "triton", 2) == 100
    assert default_chunk_size(8192, 32000, cpu, "torch", 4) == 524  # CPU: 64 MiB of fp32 logits


@pytest.mark.parametrize("vocab", [200, 256])  # a masked tail, and whole slices only
@pytest.mark.parametrize("softcap", [None, 4.0])
def test_triton_entropy_matches_the_torch_kernel(vocab, softcap):
    from tests.test_loss import entropy_reference

    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(10, 16, generator=g) * 2
    weight = torch.randn(vocab, 16, generator=g)
    targets = torch.randint(0, vocab, (10,), generator=g)
    targets[2] = -100
    eps = torch.rand(10, generator=g) * 0.3
    hidden, weight, targets, eps = (t.to(DEVICE) for t in (hidden, weight, targets, eps))
    results = {}
    for kernel in ("triton", "torch"):
        stats: dict = {}
        loss = linear_smoothed_cross_entropy(hidden, weight, targets, eps, softcap=softcap, chunk_size=4,
                                             stats=stats, entropy=True, kernel=kernel, skip_ignored=False)
        results[kernel] = (loss, stats["entropy_sum"])
    logits = hidden @ weight.t()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    want = entropy_reference(logits, targets).float()
    torch.testing.assert_close(results["triton"][1], want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(results["torch"][1], want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-5, atol=1e-6)
