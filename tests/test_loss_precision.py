"""Mixed precision in ``linear_smoothed_cross_entropy``: which dtype the GEMMs run in, how the backward
scale is applied, and how the weight gradient accumulates across chunks. Both kernels; the triton one
compiled on a GPU or under Triton's CPU interpreter."""

import collections
import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import TRITON_INTERPRETED
from tests.test_loss import EPS_VALUES
from ual_plugin import linear_smoothed_cross_entropy, smoothed_cross_entropy
from ual_plugin.loss import gemm_accumulation

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_GEMMS = {"mm": (0, 1), "addmm": (1, 2), "addmm_": (1, 2)}


@pytest.fixture(params=["torch", "triton"])
def kernel(request, monkeypatch):
    if request.param == "triton":
        pytest.importorskip("triton")
        if DEVICE == "cpu":
            if not TRITON_INTERPRETED:
                pytest.skip("triton was imported before the interpreter could be chosen")
            monkeypatch.setenv("TRITON_INTERPRET", "1")
    return request.param


class GemmDtypes(TorchDispatchMode):
    """Records the dtypes of the two matrix operands of every GEMM dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _GEMMS:
            self.seen.append(tuple(args[i].dtype for i in _GEMMS[name]))
        return func(*args, **(kwargs or {}))


def case(n, h, v, dtype, seed, ignored=True):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g) * 0.5).to(DEVICE, dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.2).to(DEVICE, dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    if ignored:
        targets[::5] = -100
    eps = torch.tensor([EPS_VALUES[i % len(EPS_VALUES)] for i in range(n)])
    return hidden, weight, targets.to(DEVICE), eps.to(DEVICE)


def reference_grads(hidden, weight, targets, eps, dtype=torch.float64, reduction="mean"):
    """Loss and gradients computed on materialised logits from the same input values, in ``dtype``."""
    h = hidden.detach().to(dtype).requires_grad_()
    w = weight.detach().to(dtype).requires_grad_()
    loss = smoothed_cross_entropy(h @ w.t(), targets, eps, reduction=reduction)
    return (loss, *torch.autograd.grad(loss, [h, w]))


def slope(got, ref):
    """Least-squares factor between a gradient and its reference: 1 when unbiased."""
    got, ref = got.double().flatten(), ref.double().flatten()
    return float((got * ref).sum() / (ref * ref).sum())


def test_fp32_head_under_bf16_autocast_runs_bf16_gemms(kernel):
    """A QLoRA-style head kept in float32 under bf16 autocast: every chunk GEMM in bf16, as the
    model's own ``lm_head`` call would run, and the result equals the loss of bf16 logits."""
    hidden, weight, targets, eps = case(48, 32, 203, torch.float32, seed=1)
    with GemmDtypes() as gemms, torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, chunk_size=16, kernel=kernel)
        gh, gw = torch.autograd.grad(out, [hidden, weight])
    assert gemms.seen and all(pair == (torch.bfloat16, torch.bfloat16) for pair in gemms.seen), gemms.seen
    assert out.dtype == torch.float32 and gh.dtype == torch.float32 and gw.dtype == torch.float32
    logits = (hidden.bfloat16() @ weight.bfloat16().t()).float()
    torch.testing.assert_close(out, smoothed_cross_entropy(logits, targets, eps), rtol=2e-3, atol=2e-3)
    ref_loss, rh, rw = reference_grads(hidden, weight, targets, eps)
    torch.testing.assert_close(gh.double(), rh, rtol=5e-2, atol=2e-3)
    torch.testing.assert_close(gw.double(), rw, rtol=5e-2, atol=2e-3)


def test_without_autocast_the_gemms_follow_the_head(kernel):
    hidden, weight, targets, eps = case(32, 16, 101, torch.float32, seed=2)
    with GemmDtypes() as gemms:
        out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, chunk_size=8, kernel=kernel)
        torch.autograd.grad(out, [hidden, weight])
    assert gemms.seen and all(pair == (torch.float32, torch.float32) for pair in gemms.seen)


def test_scaled_backward_is_unbiased_in_bf16(kernel):
    """(sum / num_items).backward(): the scale must not be rounded to bf16 (1/7000 rounds up by 0.13%,
    which would scale every gradient of the step the same way). Compared with the same call's
    unscaled gradients, so that only the scaling is measured."""
    hidden, weight, targets, eps = case(256, 64, 509, torch.bfloat16, seed=3)
    grads = {}
    for denom in (1, 7000):
        total = linear_smoothed_cross_entropy(hidden, weight, targets, eps, reduction="sum", chunk_size=64,
                                              kernel=kernel)
        grads[denom] = torch.autograd.grad(total / denom, [hidden, weight])
    for scaled, unscaled in zip(grads[7000], grads[1], strict=True):
        assert scaled.dtype == torch.bfloat16
        assert abs(slope(scaled, unscaled.double() / 7000) - 1) < 2e-4, slope(scaled, unscaled.double() / 7000)


@pytest.mark.parametrize("chunks", [4, 64])
def test_weight_gradient_accumulates_in_fp32_by_default(kernel, chunks):
    """bf16 head, gradient summed over many chunks: the default float32 accumulator stays at the error
    of one bf16 rounding; a bf16 accumulator (accum_dtype=torch.bfloat16) grows with the chunk count."""
    n = 512
    hidden, weight, targets, eps = case(n, 32, 257, torch.bfloat16, seed=4, ignored=False)
    _, _, rw = reference_grads(hidden, weight, targets, eps)
    errors = {}
    for accum in (None, torch.bfloat16):
        out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, chunk_size=n // chunks, kernel=kernel,
                                            accum_dtype=accum)
        (gw,) = torch.autograd.grad(out, [weight])
        assert gw.dtype == torch.bfloat16
        errors[accum] = float((gw.double() - rw).norm() / rw.norm())
    rounding = float((rw.bfloat16().double() - rw).norm() / rw.norm())  # the floor: rounding the exact result
    assert errors[None] < 4 * rounding, (errors, rounding)
    if chunks == 64:
        assert errors[torch.bfloat16] > 2 * errors[None], errors


def test_accum_dtype_is_validated():
    hidden, weight, targets, eps = case(8, 4, 11, torch.float32, seed=5)
    with pytest.raises(ValueError, match="accum_dtype"):
        linear_smoothed_cross_entropy(hidden, weight, targets, eps, accum_dtype=torch.int32)


@contextlib.contextmanager
def reference_out_dtype_gemms(addmm_takes_wider_self=True):
    """CPU kernels for torch's ``mm``/``addmm``/``baddbmm`` with ``out_dtype`` (CUDA-only in torch), computing
    the product of the operands taken to ``out_dtype``: what cuBLAS's float32-accumulating GEMM returns.
    They stand in for the missing backend kernels so that the in-GEMM accumulation path runs on CPU;
    ``addmm_takes_wider_self=False`` mimics the torch version whose addmm refuses a float32 ``self``."""
    calls = collections.Counter()

    def mm_out(a, b, out_dtype, *, out):
        calls["mm"] += 1
        return out.copy_(a.to(out_dtype) @ b.to(out_dtype))

    def addmm_out(acc, a, b, out_dtype, *, beta=1, alpha=1, out):
        if not addmm_takes_wider_self and acc.dtype != a.dtype:
            raise RuntimeError("self and mat2 must have the same dtype")
        calls["addmm"] += 1
        return out.copy_(beta * acc + alpha * (a.to(out_dtype) @ b.to(out_dtype)))

    def baddbmm_out(acc, a, b, out_dtype, *, beta=1, alpha=1, out):
        calls["baddbmm"] += 1
        return out.copy_(beta * acc + alpha * torch.bmm(a.to(out_dtype), b.to(out_dtype)))

    lib = torch.library.Library("aten", "IMPL")
    for name, fn in (("mm.dtype_out", mm_out), ("addmm.dtype_out", addmm_out), ("baddbmm.dtype_out", baddbmm_out)):
        lib.impl(name, fn, "CPU")
    gemm_accumulation.cache_clear()
    try:
        yield calls
    finally:
        lib._destroy()
        gemm_accumulation.cache_clear()


def weight_grad_error(chunks, **kwargs):
    """Relative error of the bf16 head's weight gradient against float64, and the bf16 rounding floor."""
    n = 512
    hidden, weight, targets, eps = case(n, 32, 257, torch.bfloat16, seed=4, ignored=False)
    _, _, rw = reference_grads(hidden, weight, targets, eps)
    out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, chunk_size=n // chunks, **kwargs)
    (gw,) = torch.autograd.grad(out, [weight])
    assert gw.dtype == torch.bfloat16
    rounding = float((rw.bfloat16().double() - rw).norm() / rw.norm())
    return float((gw.double() - rw).norm() / rw.norm()), rounding


@pytest.mark.skipif(DEVICE != "cpu", reason="on CUDA the real out_dtype GEMMs run in every other test")
@pytest.mark.parametrize("addmm_takes_wider_self", [True, False])
def test_weight_gradient_accumulates_inside_the_gemm_where_torch_offers_it(kernel, addmm_takes_wider_self):
    """Where torch adds a bf16 product into a float32 buffer inside the GEMM (CUDA), the chunks' products
    are never rounded to bf16, so the weight gradient is closer to float64 than the chunked fallback's;
    through addmm or, where addmm refuses a float32 ``self``, through baddbmm."""
    assert gemm_accumulation("cpu", torch.float32, torch.bfloat16) is None  # CPU torch has no such GEMM
    fallback, rounding = weight_grad_error(64, kernel=kernel)
    with reference_out_dtype_gemms(addmm_takes_wider_self) as calls:
        method = gemm_accumulation("cpu", torch.float32, torch.bfloat16)
        calls.clear()
        in_gemm, _ = weight_grad_error(64, kernel=kernel)
    assert method == ("addmm" if addmm_takes_wider_self else "baddbmm")
    assert calls == {"mm": 1, method: 63}, calls  # the first chunk writes, the other 63 add
    # What remains is the bf16 rounding of each chunk's logit gradient, which both paths share (here about
    # 1.2x the floor with the torch kernel; more under Triton's interpreter, whose casts round differently)
    assert in_gemm < 0.95 * fallback, (in_gemm, fallback, rounding)


class LargeTensorOps(TorchDispatchMode):
    """Names of the ops whose output has ``numel`` elements (the weight-gradient accumulator's size)."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.names = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.numel() == self.numel:
            self.names.append(func.overloadpacket.__name__)
        return out


def test_accumulator_is_never_memset_and_is_scaled_while_cast():
    """bf16 head, float32 accumulator: the first chunk writes it (no zero fill), and the backward scale
    and the cast to bf16 are one pass (one rounding) over it."""
    hidden, weight, targets, eps = case(64, 32, 509, torch.bfloat16, seed=6)
    with LargeTensorOps(weight.numel()) as forward:
        out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, chunk_size=16, kernel="torch")
    with LargeTensorOps(weight.numel()) as backward:
        (gw,) = torch.autograd.grad(out / 3, [weight])
    assert not {"zero_", "zeros", "fill_", "zeros_like"} & set(forward.names), forward.names
    assert [name for name in backward.names if name != "empty"] == ["mul"], backward.names
    (reference,) = torch.autograd.grad(linear_smoothed_cross_entropy(hidden, weight, targets, eps, chunk_size=16,
                                                                     kernel="torch"), [weight])
    assert abs(slope(gw, reference.double() / 3) - 1) < 2e-4
