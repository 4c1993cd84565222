"""Label-smoothed cross-entropy with a smoothing value per token (pure torch, no framework imports).

Per token with target y, logits z over V classes and smoothing e (PyTorch's convention: e/V on
every class, the target included):

    loss = (1 - e) * (lse(z) - z_y) + e * (lse(z) - mean_k z_k)

``smoothed_cross_entropy`` works on logits you already have. ``linear_smoothed_cross_entropy``
takes the hidden states and the LM-head weight and never holds the [N, V] logits: it walks the
tokens in chunks, and for "mean"/"sum" computes the gradients during the forward pass so that the
backward pass is a cheap rescale (the same trick as Liger-Kernel's fused linear cross-entropy).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os

import torch

Smoothing = float | torch.Tensor

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}; got {reduction!r}")


def _smoothing_vector(smoothing: Smoothing, targets: torch.Tensor) -> torch.Tensor:
    """Smoothing as a float32 tensor shaped like ``targets`` (flattened), validated where cheap."""
    if isinstance(smoothing, torch.Tensor):
        if smoothing.numel() == 1:
            return smoothing.reshape(()).to(device=targets.device, dtype=torch.float32).expand(targets.numel())
        if smoothing.shape != targets.shape:
            raise ValueError(
                f"smoothing must be a float or a tensor shaped like the targets {tuple(targets.shape)}; "
                f"got shape {tuple(smoothing.shape)}"
            )
        return smoothing.detach().reshape(-1).to(device=targets.device, dtype=torch.float32)
    value = float(smoothing)
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"smoothing must lie in [0, 1]; got {value!r}")
    return torch.full((targets.numel(),), value, dtype=torch.float32, device=targets.device)


def _check_targets(targets: torch.Tensor, valid: torch.Tensor, vocab: int, exact: bool | None = None) -> None:
    """Reject target ids outside [0, vocab) that are not ``ignore_index``.

    ``exact`` (default: on CPU) raises ValueError naming the range found, which reads the ids on the
    host. Otherwise the check is a device-side assertion (``torch._assert_async``) that needs no
    host synchronisation; on a GPU a bad id then fails the next synchronising call, as
    ``F.cross_entropy`` does.
    """
    if exact is None:
        exact = targets.device.type == "cpu"
    if exact:
        if valid.any():
            tv = targets[valid]
            lo, hi = int(tv.min()), int(tv.max())
            if lo < 0 or hi >= vocab:
                raise ValueError(f"target ids must lie in [0, {vocab}) or equal ignore_index; found {lo}..{hi}")
        return
    in_range = (targets >= 0) & (targets < vocab)
    torch._assert_async(
        (in_range | ~valid).all(), f"target ids must lie in [0, {vocab}) or equal ignore_index"
    )


def _reduce(per_token: torch.Tensor, valid: torch.Tensor, reduction: str, shape: torch.Size) -> torch.Tensor:
    if reduction == "none":
        return per_token.reshape(shape)
    total = per_token.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp(min=1)


def token_nll_and_margin(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token NLL ``lse(z) - z_y`` and margin ``z_y - mean(z)`` in float32, plus the valid mask.

    The UAL loss of a token is ``nll + e * margin``; both are 0 at ignored positions.
    Shapes: logits [..., V] -> flattened [N] outputs.
    """
    vocab = logits.shape[-1]
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not match")
    z = logits.reshape(-1, vocab).float()
    t = targets.reshape(-1)
    valid = t != ignore_index
    _check_targets(t, valid, vocab)
    safe_t = torch.where(valid, t, torch.zeros_like(t))
    z_y = z.gather(1, safe_t.unsqueeze(1)).squeeze(1)
    zero = torch.zeros_like(z_y)
    nll = torch.where(valid, torch.logsumexp(z, dim=-1) - z_y, zero)
    margin = torch.where(valid, z_y - z.mean(dim=-1), zero)
    return nll, margin, valid


def smoothed_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    smoothing: Smoothing,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy with per-token label smoothing, computed in float32.

    logits [..., V]; targets [...]; smoothing a float or a tensor shaped like ``targets``.
    "mean" averages over non-ignored tokens (0 when there are none), "sum" adds them, "none"
    returns a tensor shaped like ``targets`` with 0 at ignored positions.
    """
    _check_reduction(reduction)
    nll, margin, valid = token_nll_and_margin(logits, targets, ignore_index)
    per_token = nll + _smoothing_vector(smoothing, targets) * margin
    return _reduce(per_token, valid, reduction, targets.shape)


# ---------------------------------------------------------------------------------------------
# Chunked linear + smoothed cross-entropy
# ---------------------------------------------------------------------------------------------

KERNELS = ("auto", "torch", "triton")
KERNEL_ENV = "UAL_KERNEL"

# CPU (torch kernel): fp32 logits per chunk; few weight-gradient passes and a small peak.
_CPU_CHUNK_BYTES = 64 << 20
# GPU: the weight-gradient GEMM of a chunk (M=V, N=H, K=rows) reads and writes the whole float32
# accumulator once per chunk, about rows/4 FLOP per byte: it stays compute-bound while rows/4 is well
# above the device's ridge point (peak FLOP/s over memory bytes/s), so the chunk height follows the
# device (``gpu_chunk_rows``); 2048 rows where the device's figures are unknown.
_GPU_CHUNK_ROWS = 2048
_WGRAD_MARGIN = 2.0  # rows/4 at twice the ridge point: accumulator traffic takes at most half the math time
# Dense bf16/fp16 tensor-core FLOP per clock per SM, by compute capability (from NVIDIA's datasheets).
_TENSOR_FLOP_PER_CLOCK = {(8, 0): 2048, (8, 6): 512, (8, 7): 1024, (8, 9): 512, (9, 0): 4096, (10, 0): 8192}
_GPU_TRITON_CHUNK_BYTES = 512 << 20  # logits in the compute dtype, overwritten by their gradient
_GPU_TORCH_CHUNK_BYTES = 1536 << 20  # compute-dtype logits plus their float32 copy


@functools.cache
def _triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_runs_on(device: torch.device) -> bool:
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def resolve_kernel(kernel: str | None, device: torch.device) -> str:
    """'torch' or 'triton': the explicit choice, else ``$UAL_KERNEL``, else ``auto``.

    ``auto`` is the Triton kernel on CUDA when triton is installed (it passed every check of
    ``benchmarks/run_gpu_suite.sh verify`` on an H200, benchmarks/RESULTS.md) and the torch kernel elsewhere.
    """
    choice = kernel or os.environ.get(KERNEL_ENV) or "auto"
    if choice not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}; got {choice!r}")
    if choice == "auto":
        return "triton" if device.type == "cuda" and _triton_installed() else "torch"
    if choice == "triton":
        if not _triton_installed():
            raise ImportError("kernel='triton' needs the triton package (pip install triton); kernel='torch' runs anywhere")
        if not _triton_runs_on(device):
            raise ValueError(f"kernel='triton' needs CUDA tensors (or TRITON_INTERPRET=1); got {device.type} tensors")
    return choice


def ridge_point(props) -> float | None:
    """Peak dense bf16 tensor-core FLOP per byte of memory traffic of a CUDA device, from its
    properties (SM count, clocks, bus width); None for an architecture not in the table."""
    per_clock = _TENSOR_FLOP_PER_CLOCK.get((props.major, props.minor))
    if per_clock is None or not props.memory_clock_rate or not props.memory_bus_width:
        return None
    flops = props.multi_processor_count * props.clock_rate * 1e3 * per_clock
    bytes_per_s = 2 * props.memory_clock_rate * 1e3 * props.memory_bus_width / 8  # double data rate
    return flops / bytes_per_s


def chunk_rows_for(ridge: float | None) -> int:
    """Rows per GPU chunk for a ridge point: the weight-gradient GEMM at ``_WGRAD_MARGIN`` times it,
    in multiples of 256 between 1024 and 4096 (2048 when the ridge point is unknown)."""
    if ridge is None:
        return _GPU_CHUNK_ROWS
    rows = -(-int(4 * _WGRAD_MARGIN * ridge) // 256) * 256
    return min(4096, max(1024, rows))


@functools.cache
def _cuda_chunk_rows(index: int) -> int:
    return chunk_rows_for(ridge_point(torch.cuda.get_device_properties(index)))


def gpu_chunk_rows(device: torch.device) -> int:
    """Rows per chunk on ``device``: from its ridge point on a CUDA device, else 2048."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return _GPU_CHUNK_ROWS
    return _cuda_chunk_rows(torch.cuda.current_device() if device.index is None else device.index)


def default_chunk_size(n_tokens: int, vocab: int, device: torch.device, kernel: str = "torch", itemsize: int = 4) -> int:
    """Tokens per chunk: on GPU (and for the triton kernel) ``gpu_chunk_rows`` in multiples of 64 within
    the kernel's byte budget; on CPU the torch kernel's float32 logits stay within 64 MiB.

    ``itemsize`` is the byte size of the GEMMs' compute dtype; the torch kernel also holds a float32
    copy of each chunk's logits when that dtype is narrower.
    """
    if kernel == "torch" and device.type == "cpu":
        rows = max(16, _CPU_CHUNK_BYTES // (4 * vocab))
    else:
        if kernel == "triton":
            per_row, budget = itemsize * vocab, _GPU_TRITON_CHUNK_BYTES
        else:
            per_row, budget = (itemsize + (4 if itemsize < 4 else 0)) * vocab, _GPU_TORCH_CHUNK_BYTES
        rows = max(64, min(gpu_chunk_rows(device), budget // per_row) // 64 * 64)
    return int(max(1, min(n_tokens, rows)))


def compute_dtype_for(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """dtype of the chunk GEMMs: autocast's dtype when autocast is on for the tensors' device (as the
    model's own ``lm_head`` call would run, e.g. a QLoRA head kept in float32 under bf16 training),
    else the head weight's dtype."""
    device_type = hidden.device.type
    if weight.is_floating_point() and torch.amp.is_autocast_available(device_type) \
            and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def _autocast_off(device: torch.device):
    """The kernels pick every dtype themselves: run them with autocast off on their device."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How one call runs: everything ``_chunk_pass`` needs besides the tensors."""

    ignore_index: int
    reduction: str
    softcap: float | None
    logit_scale: float
    chunk_size: int | None
    kernel: str
    compute_dtype: torch.dtype
    accum_dtype: torch.dtype
    skip_ignored: bool
    entropy: bool = False
    token_stats: bool = False


def _torch_rows_(
    raw: torch.Tensor,
    z: torch.Tensor,
    tc: torch.Tensor,
    ec: torch.Tensor,
    wc: torch.Tensor | None,
    softcap: float | None,
    logit_scale: float,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The torch kernel on one chunk: per-row losses, top-1 flags and (with ``wc``) the gradient of
    ``sum(wc * loss)`` with respect to the raw logits, computed in float32 in ``z``; with ``entropy``
    also each row's predictive entropy, written there."""
    vocab = raw.shape[1]
    if z is not raw:
        z.copy_(raw)
    if logit_scale != 1.0:
        z.mul_(logit_scale)
    th = None
    if softcap is not None:
        th = z.div_(softcap).tanh_()
        z = th * softcap
    z_y = z.gather(1, tc.unsqueeze(1)).squeeze(1)
    z_mean = z.mean(dim=-1)
    z_max = z.amax(dim=-1, keepdim=True)
    top1 = z_y >= z_max.squeeze(1)
    z.sub_(z_max)
    if entropy is None:
        z.exp_()  # z now holds u = exp(z - max): unnormalised probabilities
    else:  # H = log S - sum(u log u) / S with S = sum(u), and log u is z - max until exp overwrites it
        u_log_u = torch.empty_like(z_max.squeeze(1))
        for start in range(0, z.shape[0], _ENTROPY_ROWS):
            part = z[start : start + _ENTROPY_ROWS]
            u = part.exp()
            u_log_u[start : start + _ENTROPY_ROWS] = part.mul_(u).sum(dim=-1)  # one temporary: u
            part.copy_(u)
    sum_exp = z.sum(dim=-1)
    if entropy is not None:
        entropy.copy_(sum_exp.log() - u_log_u / sum_exp)
    losses = z_max.squeeze(1) + sum_exp.log() - (1.0 - ec) * z_y - ec * z_mean
    if wc is None:
        return losses, top1, None
    # d loss / d z = softmax - (1 - e) * onehot(y) - e / V, times the row's weight
    z.mul_((wc / sum_exp).unsqueeze(1)).sub_((wc * ec / vocab).unsqueeze(1))
    z.scatter_add_(1, tc.unsqueeze(1), (-(1.0 - ec) * wc).unsqueeze(1))
    if th is not None:
        z.mul_(1.0 - th * th)
    if logit_scale != 1.0:
        z.mul_(logit_scale)
    return losses, top1, z


_ENTROPY_ROWS = 4  # rows per block of the entropy's temporary: small (0.5 MiB at a 32k vocabulary) and in cache


def _mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    torch.mm(a, b, out_dtype=out.dtype, out=out)


def _addmm_into(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)


def _baddbmm_into(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    torch.baddbmm(acc[None], a[None], b[None], out_dtype=acc.dtype, out=acc[None])


_IN_GEMM_ADD = {"addmm": _addmm_into, "baddbmm": _baddbmm_into}  # in the order gemm_accumulation tries them


@functools.cache
def gemm_accumulation(device_type: str, acc_dtype: torch.dtype, operand_dtype: torch.dtype) -> str | None:
    """How torch adds a product of ``operand_dtype`` matrices into an ``acc_dtype`` buffer inside the
    GEMM on this device type: "addmm" or "baddbmm" (``out_dtype``: CUDA, torch >= 2.8; some versions
    refuse addmm when ``self`` is wider than the operands), or None (the chunked fallback).

    Probed once on tiny tensors, for the exceptions only: no host sync. ``verify_gpu.py`` checks the
    results against float64."""
    a = torch.ones(2, 2, dtype=operand_dtype, device=device_type)
    acc = torch.zeros(2, 2, dtype=acc_dtype, device=device_type)
    try:
        _mm_into(acc, a, a)
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    for name, add in _IN_GEMM_ADD.items():
        try:
            add(acc, a, a)
        except (RuntimeError, NotImplementedError, TypeError):
            continue
        return name
    return None


def _accumulate_weight_grad_(grad_w: torch.Tensor, dz: torch.Tensor, hc: torch.Tensor, first: bool,
                             in_gemm: bool = True) -> None:
    """grad_w = dz.T @ hc on the first chunk, grad_w += dz.T @ hc after (so the accumulator needs no memset).

    Inside the GEMM when the dtypes agree, or when torch offers a wider output dtype on the device
    (``gemm_accumulation``): the products are summed in the accumulator's precision and never rounded
    to the compute dtype. Otherwise (CPU) in blocks of vocabulary rows, each block's product in the
    compute dtype and added in the accumulator's, so the temporary stays at a quarter of a logits
    chunk. ``in_gemm=False`` forces the blocks (the GPU verify stage compares the two)."""
    if grad_w.dtype == dz.dtype:
        if first:
            torch.mm(dz.t(), hc, out=grad_w)
        else:
            grad_w.addmm_(dz.t(), hc)
        return
    method = gemm_accumulation(grad_w.device.type, grad_w.dtype, dz.dtype) if in_gemm else None
    if method is not None:
        (_mm_into if first else _IN_GEMM_ADD[method])(grad_w, dz.t(), hc)
        return
    vocab, hidden = grad_w.shape
    block = max(64, dz.shape[0] * vocab // (4 * hidden))
    for v0 in range(0, vocab, block):
        part = dz[:, v0 : v0 + block].t() @ hc
        if first:
            grad_w[v0 : v0 + block].copy_(part)
        else:
            grad_w[v0 : v0 + block].add_(part)


def _chunk_pass(
    h_all: torch.Tensor,
    rows: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    eps: torch.Tensor,
    row_weight: torch.Tensor | None,
    want: tuple[bool, bool, bool],
    plan: _Plan,
    chunk_size: int,
    top1: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]]:
    """Per-token losses of the rows ``rows`` of ``h_all`` (all rows when None) and, when
    ``row_weight`` is given, the gradients of sum(row_weight * loss) that ``want`` asks for:
    hidden (shaped like ``h_all``, zero on skipped rows), weight (in ``plan.accum_dtype``) and bias
    (float32).

    The GEMMs run in ``plan.compute_dtype``. The torch kernel takes each chunk's logits to float32
    for the softmax; the triton kernel keeps them in the compute dtype, in a buffer whose rows are
    padded for aligned access, and overwrites them with their gradient.
    """
    n = targets.numel()
    vocab = weight.shape[0]
    device = h_all.device
    want_h, want_w, want_b = want if row_weight is not None else (False, False, False)
    want_b = want_b and bias is not None
    cdt = plan.compute_dtype
    losses = torch.empty(n, dtype=torch.float32, device=device)
    grad_h = grad_w = grad_b = None
    if want_h:
        grad_h = torch.empty_like(h_all) if rows is None else torch.zeros_like(h_all)
    if want_w:  # the first chunk writes it whole (no memset); nothing to write when there are no rows
        grad_w = (torch.empty if n else torch.zeros)(weight.shape, dtype=plan.accum_dtype, device=device)
    if want_b:
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=device)
    if n == 0:
        return losses, (grad_h, grad_w, grad_b)
    w_c = weight.to(cdt)  # one cast per pass (none when the head is already in the compute dtype)
    b_c = None if bias is None else bias.to(cdt)
    # One logits buffer reused by every chunk (plus a float32 one for the torch kernel on narrower
    # compute dtypes), so the next chunk's GEMM never allocates while the previous chunk's logits live.
    size = min(chunk_size, n)
    if plan.kernel == "triton":
        from ual_plugin.loss_triton import logits_buffer, smoothed_ce_rows_

        raw_buf = z_buf = logits_buffer(size, vocab, cdt, device)
    else:
        raw_buf = z_buf = torch.empty(size, vocab, dtype=cdt, device=device)
        if cdt != torch.float32:
            z_buf = torch.empty(size, vocab, dtype=torch.float32, device=device)
    any_grad = want_h or want_w or want_b
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        first = start == 0
        hc = h_all[start:stop] if rows is None else h_all.index_select(0, rows[start:stop])
        hc = hc.to(cdt)
        tc, ec = targets[start:stop], eps[start:stop]
        wc = row_weight[start:stop] if any_grad else None
        raw = raw_buf[: stop - start]
        if b_c is not None:
            torch.addmm(b_c, hc, w_c.t(), out=raw)
        else:
            torch.mm(hc, w_c.t(), out=raw)
        ent = None if entropy is None else entropy[start:stop]
        if plan.kernel == "triton":
            losses[start:stop], flags = smoothed_ce_rows_(raw, tc, ec, wc, plan.logit_scale, plan.softcap,
                                                          entropy=ent)
            dz = raw
        else:
            losses[start:stop], flags, dz = _torch_rows_(raw, z_buf[: stop - start], tc, ec, wc, plan.softcap,
                                                         plan.logit_scale, ent)
            if dz is not None and dz.dtype != cdt:
                dz = raw.copy_(dz)  # the raw logits are no longer needed: reuse their buffer
        if top1 is not None:
            top1[start:stop] = flags
        if not any_grad:
            continue
        if grad_b is not None:
            grad_b.add_(dz.sum(dim=0, dtype=torch.float32))
        if grad_h is not None:
            if rows is None and grad_h.dtype == dz.dtype:
                torch.mm(dz, w_c, out=grad_h[start:stop])
            elif rows is None:
                grad_h[start:stop] = dz @ w_c
            else:
                grad_h.index_copy_(0, rows[start:stop], (dz @ w_c).to(grad_h.dtype))
        if grad_w is not None:
            _accumulate_weight_grad_(grad_w, dz, hc, first)
    return losses, (grad_h, grad_w, grad_b)


_SCALE_SLICE = 1 << 24  # elements per float32 temporary when rescaling a low-precision gradient


def _scale_(grad: torch.Tensor, scale: torch.Tensor) -> None:
    """grad *= scale in float32 arithmetic, rounded once to grad's dtype (the scale itself is never
    rounded to bf16/fp16: that would bias every element of a step by the same factor)."""
    if grad.dtype in (torch.float32, torch.float64):
        grad.mul_(scale.to(grad.dtype))
        return
    flat = grad.view(-1)
    for start in range(0, flat.numel(), _SCALE_SLICE):
        part = flat[start : start + _SCALE_SLICE]
        part.copy_(part.float().mul_(scale))


def _scaled_as(grad: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """grad * scale in ``dtype``, rounded once: a float32 accumulator is scaled while it is cast (one
    pass over it), anything else is scaled in place (``_scale_``) and then cast."""
    if grad.dtype == torch.float32 and dtype != torch.float32:
        return torch.mul(grad, scale, out=torch.empty(grad.shape, dtype=dtype, device=grad.device))
    _scale_(grad, scale)
    return grad.to(dtype)


_SECOND_BACKWARD = (
    "linear_smoothed_cross_entropy computes its gradients during the forward pass and hands them to the "
    "first backward pass; a second backward through the same graph (retain_graph=True) is not supported. "
    "Compute the loss again for another backward, or use reduction='none' and reduce it yourself."
)


class _LinearSmoothedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, eps, plan: _Plan, stats):
        shape = targets.shape
        device = hidden.device
        h_all = hidden.reshape(-1, hidden.shape[-1])
        t_all = targets.reshape(-1)
        valid = t_all != plan.ignore_index
        _check_targets(t_all, valid, weight.shape[0], exact=plan.skip_ignored)
        if plan.skip_ignored:  # only the label tokens go through the kernel (nonzero: one host sync)
            sel = valid.nonzero().squeeze(1)
            n_valid = sel.numel()
            rows = None if n_valid == t_all.numel() else sel
            t = t_all if rows is None else t_all.index_select(0, sel)
            e = eps if rows is None else eps.index_select(0, sel)
            mask, denom = None, max(n_valid, 1)
            count = torch.tensor(n_valid, device=device)
        else:  # every row goes through the kernel; ignored ones weigh 0 (no host sync)
            sel = mask = valid
            rows = None
            t = torch.where(valid, t_all, torch.zeros_like(t_all))
            e = eps
            count = valid.sum()
            denom = count.clamp(min=1)
        chunk = plan.chunk_size or default_chunk_size(
            max(t.numel(), 1), weight.shape[0], device, plan.kernel, plan.compute_dtype.itemsize
        )
        want = tuple(ctx.needs_input_grad[:3])
        row_weight = None
        if any(want) and plan.reduction != "none":
            row_weight = torch.ones(t.numel(), dtype=torch.float32, device=device) if mask is None else mask.float()
            if plan.reduction == "mean":
                row_weight = row_weight / denom
        top1 = torch.empty(t.numel(), dtype=torch.bool, device=device) if stats is not None else None
        entropy = torch.empty(t.numel(), dtype=torch.float32, device=device) if plan.entropy else None
        with _autocast_off(device):
            losses, grads = _chunk_pass(h_all, rows, weight, bias, t, e, row_weight, want, plan, chunk, top1,
                                        entropy)
        if mask is not None:
            losses = losses.masked_fill_(~mask, 0.0)
        if stats is not None:
            if mask is not None:
                top1 &= mask
                if entropy is not None:
                    entropy.masked_fill_(~mask, 0.0)
            stats["n_tokens"] = count
            stats["n_correct"] = top1.sum()
            if entropy is not None:
                stats["entropy_sum"] = entropy.sum()
            if plan.token_stats:  # laid out like the targets, zero (False) where ignored
                for key, values in (("token_losses", losses), ("token_top1", top1), ("token_entropies", entropy)):
                    if values is not None:
                        stats[key] = _scatter_rows(values, rows, t_all.numel()).reshape(shape)

        ctx.plan = plan
        ctx.hidden_shape = hidden.shape
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        if plan.reduction == "none":
            ctx.save_for_backward(h_all, weight, bias, t, e, sel)
            ctx.extra = (rows is None, want, chunk)
            return _scatter_rows(losses, rows, t_all.numel()).reshape(shape)
        # Kept as a plain attribute (not saved tensors) so backward can drop our reference and autograd
        # can adopt grad_weight as the parameter's .grad without copying it.
        ctx.grads = grads if any(want) else None
        ctx.used = False
        total = losses.sum()
        return total / denom if plan.reduction == "mean" else total

    @staticmethod
    def backward(ctx, grad_out):
        plan = ctx.plan
        w_dtype, b_dtype = ctx.dtypes
        if plan.reduction == "none":
            h_all, weight, bias, t, e, sel = ctx.saved_tensors
            all_rows, want, chunk = ctx.extra
            upstream = grad_out.reshape(-1).float()
            if plan.skip_ignored:
                rows, row_weight = (None if all_rows else sel), upstream.index_select(0, sel)
            else:
                rows, row_weight = None, upstream * sel
            with _autocast_off(h_all.device):
                _, (g_h, g_w, g_b) = _chunk_pass(h_all, rows, weight, bias, t, e, row_weight, want, plan, chunk)
        else:
            if ctx.used:
                raise RuntimeError(_SECOND_BACKWARD)
            ctx.used = True
            grads, ctx.grads = ctx.grads, None
            if grads is None:
                return (None,) * 7
            g_h, g_w, g_b = grads
            # Scale the gradients computed in the forward pass, in float32 and without reading the scale on
            # the host: the hidden one in place, the weight and bias ones while they take their
            # parameters' dtypes (no second copy of an accumulator that already has it).
            scale = grad_out.detach().float()
            if g_h is not None:
                _scale_(g_h, scale)
            g_w = None if g_w is None else _scaled_as(g_w, scale, w_dtype)
            g_b = None if g_b is None else _scaled_as(g_b, scale, b_dtype)
        return (
            None if g_h is None else g_h.reshape(ctx.hidden_shape),
            None if g_w is None else g_w.to(w_dtype),
            None if g_b is None else g_b.to(b_dtype),
            None, None, None, None,
        )


def _scatter_rows(values: torch.Tensor, rows: torch.Tensor | None, n: int) -> torch.Tensor:
    """``values`` of the selected ``rows`` placed in a zero vector of ``n`` (``values`` itself when all rows were)."""
    return values if rows is None else values.new_zeros(n).index_copy_(0, rows, values)


def linear_smoothed_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    smoothing: Smoothing,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    softcap: float | None = None,
    logit_scale: float = 1.0,
    chunk_size: int | None = None,
    stats: dict | None = None,
    kernel: str | None = None,
    accum_dtype: torch.dtype | None = None,
    skip_ignored: bool | None = None,
    entropy: bool = False,
    token_stats: bool = False,
) -> torch.Tensor:
    """``smoothed_cross_entropy(hidden @ weight.T + bias, ...)`` without materialising [N, V] logits.

    hidden [..., H]; weight [V, H]; targets [...]; smoothing a float or a tensor shaped like
    ``targets``. ``logit_scale`` multiplies the logits and ``softcap`` applies
    ``softcap * tanh(z / softcap)`` after it (Gemma-2 style), as the model's own head would.

    The GEMMs run in autocast's dtype when autocast is on (else in the weight's dtype); the softmax
    and the loss are float32. ``kernel``: "torch" takes each chunk's logits to float32 (runs
    anywhere); "triton" keeps them in the compute dtype and runs one fused Triton pass over them
    (CUDA); "auto" (the default, overridable with ``$UAL_KERNEL``) is "triton" on CUDA, else "torch".
    ``accum_dtype``: dtype of the weight-gradient accumulator across chunks (default float32; the
    weight's own dtype saves memory at some precision). ``skip_ignored``: gather the label tokens
    first so ignored ones cost nothing (default on CPU only: it needs one host sync); otherwise
    ignored rows run with weight 0 and the call makes no host sync.
    Pass a dict as ``stats`` to receive ``n_tokens`` (non-ignored targets) and ``n_correct``
    (targets that are the top-1 logit), both as 0-dim tensors on the device; with ``entropy=True``
    also ``entropy_sum``, the predictive distributions' entropies summed over those targets; with
    ``token_stats=True`` also ``token_losses``, ``token_top1`` (and ``token_entropies``) shaped like
    ``targets``, zero where ignored: what a caller that reduces per token itself needs.
    Gradients are computed during the forward pass (for "mean" and "sum"): one backward per call.
    """
    _check_reduction(reduction)
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} do not match")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, {hidden.shape[-1]}]; got {tuple(weight.shape)}")
    if softcap is not None and not (softcap > 0 and math.isfinite(softcap)):
        raise ValueError(f"softcap must be a positive number or None; got {softcap!r}")
    if accum_dtype is not None and not (isinstance(accum_dtype, torch.dtype) and accum_dtype.is_floating_point):
        raise ValueError(f"accum_dtype must be a floating-point torch dtype or None; got {accum_dtype!r}")
    plan = _Plan(
        ignore_index=ignore_index,
        reduction=reduction,
        softcap=softcap,
        logit_scale=float(logit_scale),
        chunk_size=chunk_size,
        kernel=resolve_kernel(kernel, hidden.device),
        compute_dtype=compute_dtype_for(hidden, weight),
        accum_dtype=accum_dtype or torch.float32,
        skip_ignored=hidden.device.type == "cpu" if skip_ignored is None else bool(skip_ignored),
        entropy=bool(entropy) and stats is not None,
        token_stats=bool(token_stats) and stats is not None,
    )
    eps = _smoothing_vector(smoothing, targets)
    return _LinearSmoothedCE.apply(hidden, weight, bias, targets, eps, plan, stats)
