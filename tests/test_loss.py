import types

import pytest
import torch
import torch.nn.functional as F

from ual_plugin import linear_smoothed_cross_entropy, smoothed_cross_entropy
from ual_plugin.loss import chunk_rows_for, ridge_point

EPS_VALUES = [0.0, 0.05, 0.1, 0.3, 0.7, 0.99]


def torch_reference(logits, targets, eps, ignore_index=-100):
    """Per-token losses from torch's own label-smoothed cross-entropy, one token at a time."""
    out = []
    for i in range(targets.numel()):
        if targets[i] == ignore_index:
            out.append(logits[i].sum() * 0)
        else:
            out.append(
                F.cross_entropy(logits[i : i + 1].float(), targets[i : i + 1], label_smoothing=float(eps[i]))
            )
    return torch.stack(out)


def make_case(n=40, h=16, v=37, dtype=torch.float32, seed=0, with_bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.5).to(dtype).requires_grad_()
    bias = (torch.randn(v, generator=g) * 0.1).to(dtype).requires_grad_() if with_bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::7] = -100
    eps = torch.tensor([EPS_VALUES[i % len(EPS_VALUES)] for i in range(n)])
    return hidden, weight, bias, targets, eps


def test_matches_torch_token_by_token_for_many_eps():
    logits = torch.randn(30, 11, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (30,))
    targets[3] = -100
    eps = torch.tensor([EPS_VALUES[i % len(EPS_VALUES)] for i in range(30)], dtype=torch.float64)
    ours = smoothed_cross_entropy(logits, targets, eps, reduction="none")
    ref = torch_reference(logits, targets, eps)
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=1e-6)
    assert ours[3] == 0


@pytest.mark.parametrize("eps", EPS_VALUES)
def test_scalar_smoothing_equals_torch_mean(eps):
    logits = torch.randn(4, 9, 23, requires_grad=True)
    targets = torch.randint(0, 23, (4, 9))
    targets[0, :3] = -100
    ours = smoothed_cross_entropy(logits, targets, eps)
    ref = F.cross_entropy(logits.reshape(-1, 23), targets.reshape(-1), label_smoothing=eps)
    torch.testing.assert_close(ours, ref)
    g1 = torch.autograd.grad(ours, logits)[0]
    g2 = torch.autograd.grad(ref, logits)[0]
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 1, 7, 64])
def test_linear_matches_reference_values_and_grads_fp32(reduction, with_bias, chunk_size):
    hidden, weight, bias, targets, eps = make_case(with_bias=with_bias)
    params = [hidden, weight] + ([bias] if with_bias else [])
    out = linear_smoothed_cross_entropy(
        hidden, weight, targets, eps, bias=bias, reduction=reduction, chunk_size=chunk_size
    )
    logits = hidden @ weight.t() + (bias if with_bias else 0)
    ref_tok = torch_reference(logits, targets, eps)
    n_valid = (targets != -100).sum()
    ref = {"mean": ref_tok.sum() / n_valid, "sum": ref_tok.sum(), "none": ref_tok}[reduction]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(ref) if reduction == "none" else torch.tensor(1.7)
    got = torch.autograd.grad(out, params, upstream)
    want = torch.autograd.grad(ref, params, upstream)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_linear_bf16_accumulates_in_fp32():
    hidden, weight, _, targets, eps = make_case(n=64, h=32, v=101, dtype=torch.bfloat16, seed=3)
    out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, chunk_size=16)
    # reference: bf16 logits (what the model's head produces) upcast to fp32, torch's own loss per token
    logits = (hidden @ weight.t()).float()
    ref = torch_reference(logits, targets, eps).sum() / (targets != -100).sum()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3)
    gh, gw = torch.autograd.grad(out, [hidden, weight])
    rh, rw = torch.autograd.grad(ref, [hidden, weight])
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    torch.testing.assert_close(gh.float(), rh.float(), rtol=3e-2, atol=3e-3)
    torch.testing.assert_close(gw.float(), rw.float(), rtol=3e-2, atol=3e-3)


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("logit_scale", [1.0, 0.25])
def test_linear_softcap_and_logit_scale(softcap, logit_scale):
    hidden, weight, bias, targets, eps = make_case(seed=5, with_bias=True)
    out = linear_smoothed_cross_entropy(
        hidden, weight, targets, eps, bias=bias, softcap=softcap, logit_scale=logit_scale, chunk_size=9
    )
    logits = (hidden @ weight.t() + bias) * logit_scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    ref = torch_reference(logits, targets, eps).sum() / (targets != -100).sum()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(out, [hidden, weight, bias])
    want = torch.autograd.grad(ref, [hidden, weight, bias])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("frozen_head", [False, True])
def test_linear_without_ignored_targets_and_with_a_frozen_head(frozen_head):
    hidden, weight, _, targets, eps = make_case(n=33, seed=11)
    targets = targets.clamp(min=0)  # every target counts: the no-gather path
    weight.requires_grad_(not frozen_head)
    out = linear_smoothed_cross_entropy(hidden.reshape(3, 11, -1), weight, targets.reshape(3, 11),
                                        eps.reshape(3, 11), chunk_size=8, kernel="torch")
    ref = torch_reference(hidden @ weight.t(), targets, eps).mean()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    params = [hidden] if frozen_head else [hidden, weight]
    got = torch.autograd.grad(out, params)
    want = torch.autograd.grad(ref, params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_linear_batched_shape_and_all_ignored():
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(13, 8, requires_grad=True)
    targets = torch.full((2, 5), -100)
    out = linear_smoothed_cross_entropy(hidden, weight, targets, 0.1)
    assert out.item() == 0.0
    out.backward()
    assert torch.count_nonzero(hidden.grad) == 0
    none = linear_smoothed_cross_entropy(hidden, weight, targets, 0.1, reduction="none")
    assert none.shape == (2, 5)


def test_linear_no_grad_path_matches():
    hidden, weight, _, targets, eps = make_case(seed=9)
    with torch.no_grad():
        a = linear_smoothed_cross_entropy(hidden, weight, targets, eps)
    b = smoothed_cross_entropy(hidden @ weight.t(), targets, eps)
    torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: smoothed_cross_entropy(torch.randn(3, 5), torch.tensor([0, 1, 9]), 0.1), r"target ids must lie"),
        (lambda: smoothed_cross_entropy(torch.randn(3, 5), torch.tensor([0, 1, 2]), 1.5), r"smoothing must lie"),
        (lambda: smoothed_cross_entropy(torch.randn(3, 5), torch.tensor([0, 1, 2]), torch.zeros(4)), r"shaped like"),
        (lambda: smoothed_cross_entropy(torch.randn(3, 5), torch.tensor([0, 1, 2]), 0.1, reduction="avg"), r"reduction"),
        (lambda: linear_smoothed_cross_entropy(torch.randn(3, 4), torch.randn(5, 3), torch.tensor([0, 1, 2]), 0.1), r"weight must be"),
        (lambda: linear_smoothed_cross_entropy(torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 2]), 0.1, softcap=-1.0), r"softcap"),
    ],
)
def test_bad_arguments(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_second_backward_through_the_same_graph_raises(reduction):
    """The gradients are computed in the forward pass and handed over once: a second backward
    (retain_graph=True) must fail loudly instead of returning no gradients."""
    hidden, weight, _, targets, eps = make_case(seed=13)
    out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, reduction=reduction)
    first = torch.autograd.grad(out, [hidden, weight], retain_graph=True)
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in first)
    with pytest.raises(RuntimeError, match="second backward"):
        torch.autograd.grad(out, [hidden, weight])


def test_reduction_none_supports_repeated_backward():
    hidden, weight, _, targets, eps = make_case(seed=14)
    out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, reduction="none")
    first = torch.autograd.grad(out.sum(), [hidden, weight], retain_graph=True)
    second = torch.autograd.grad(out.sum(), [hidden, weight])
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b)


def entropy_reference(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Sum over non-ignored targets of the entropy of softmax(logits), in float64."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return (-(logp.exp() * logp).sum(-1) * (targets != ignore_index)).sum()


@pytest.mark.parametrize("chunk", [9, 40], ids=["chunk9", "chunk40"])  # 40 rows: several entropy row blocks
@pytest.mark.parametrize("skip_ignored", [True, False])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_linear_entropy_stat_matches_softmax_entropy(softcap, skip_ignored, chunk):
    hidden, weight, bias, targets, eps = make_case(seed=6, with_bias=True)
    stats: dict = {}
    out = linear_smoothed_cross_entropy(hidden, weight, targets, eps, bias=bias, softcap=softcap, logit_scale=0.5,
                                        chunk_size=chunk, stats=stats, entropy=True, skip_ignored=skip_ignored)
    logits = (hidden @ weight.t() + bias) * 0.5
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    torch.testing.assert_close(stats["entropy_sum"].double(), entropy_reference(logits, targets), rtol=1e-5, atol=1e-5)
    # asking for the entropy changes neither the loss nor its gradients
    again = linear_smoothed_cross_entropy(hidden, weight, targets, eps, bias=bias, softcap=softcap, logit_scale=0.5,
                                          chunk_size=chunk, skip_ignored=skip_ignored)
    torch.testing.assert_close(out, again, rtol=0, atol=0)


@pytest.mark.parametrize("skip_ignored", [True, False])
def test_token_stats_are_the_per_token_values_laid_out_like_the_targets(skip_ignored):
    """token_stats=True: per-token losses (those of reduction='none'), top-1 flags and entropies, zero where ignored,
    while the summed loss and its gradients stay those of a call without them."""
    hidden, weight, bias, targets, eps = make_case(seed=7, with_bias=True)
    targets = targets.reshape(5, 8)
    hidden, eps = hidden.detach().reshape(5, 8, -1).requires_grad_(), eps.reshape(5, 8)
    stats: dict = {}
    total = linear_smoothed_cross_entropy(hidden, weight, targets, eps, bias=bias, reduction="sum", chunk_size=11,
                                          stats=stats, entropy=True, token_stats=True, skip_ignored=skip_ignored)
    mask = targets != -100
    per_token = linear_smoothed_cross_entropy(hidden, weight, targets, eps, bias=bias, reduction="none")
    logits = (hidden @ weight.t() + bias).detach()
    for key in ("token_losses", "token_top1", "token_entropies"):
        assert stats[key].shape == targets.shape and not stats[key][~mask].any()
    torch.testing.assert_close(stats["token_losses"], per_token.detach(), rtol=1e-6, atol=1e-6)
    assert torch.equal(stats["token_top1"], (logits.argmax(-1) == targets) & mask)
    logp = logits.double().log_softmax(-1)
    torch.testing.assert_close(stats["token_entropies"].double(), -(logp.exp() * logp).sum(-1) * mask, rtol=1e-5,
                               atol=1e-6)
    plain = linear_smoothed_cross_entropy(hidden, weight, targets, eps, bias=bias, reduction="sum", chunk_size=11,
                                          skip_ignored=skip_ignored)
    torch.testing.assert_close(total, plain, rtol=0, atol=0)


def gpu(major, minor, sms, clock_mhz, mem_clock_mhz, bus_bits):
    """The fields of ``torch.cuda.get_device_properties`` that ``ridge_point`` reads (clocks in kHz)."""
    return types.SimpleNamespace(major=major, minor=minor, multi_processor_count=sms, clock_rate=clock_mhz * 1000,
                                 memory_clock_rate=mem_clock_mhz * 1000, memory_bus_width=bus_bits)


def test_gpu_chunk_rows_follow_the_devices_ridge_point():
    """Datasheet figures: an H100 SXM (3.35 TB/s) has a higher ridge point than an H200 (4.8 TB/s), so it
    needs taller chunks for a compute-bound weight-gradient GEMM; unknown architectures keep 2048 rows."""
    h100, h200 = gpu(9, 0, 132, 1980, 2619, 5120), gpu(9, 0, 132, 1980, 3201, 6144)
    a100 = gpu(8, 0, 108, 1410, 1593, 5120)
    assert 300 < ridge_point(h100) < 340 and 200 < ridge_point(h200) < 240 and 140 < ridge_point(a100) < 170
    rows = {name: chunk_rows_for(ridge_point(p)) for name, p in (("h100", h100), ("h200", h200), ("a100", a100))}
    assert rows == {"h100": 2560, "h200": 1792, "a100": 1280}
    for r, props in zip(rows.values(), (h100, h200, a100), strict=True):
        assert r % 256 == 0 and r / 4 >= 2 * ridge_point(props)  # rows/4 FLOP per accumulator byte, 2x the ridge
    assert ridge_point(gpu(7, 5, 40, 1590, 5001, 256)) is None and chunk_rows_for(None) == 2048
