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


def _check_targets(targets: torch.Tensor, valid: torch.Tensor, vocab: int) -> None:
    if valid.any():
        tv = targets[valid]
        lo, hi = int(tv.min()), int(tv.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"target ids must lie in [0, {vocab}) or equal ignore_index; found {lo}..{hi}")


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

_CPU_CHUNK_BYTES = 64 << 20  # torch kernel, CPU: fp32 logits per chunk (few weight-gradient passes, small peak)
_CUDA_CHUNK_BYTES = 512 << 20  # torch kernel, CUDA: fp32 logits per chunk
# triton kernel: logits in the weight's dtype, overwritten in place by their gradient. 128 MiB keeps
# the peak within a few percent of Liger's fused linear cross-entropy at Llama-3's vocabulary.
_TRITON_CHUNK_BYTES = 128 << 20


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
    """'torch' or 'triton': the explicit choice, else ``$UAL_KERNEL``, else triton on CUDA when installed."""
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


def default_chunk_size(n_tokens: int, vocab: int, device: torch.device, kernel: str = "torch", itemsize: int = 4) -> int:
    """Tokens per chunk so that one chunk of logits stays within the kernel's byte budget.

    The triton kernel keeps logits at ``itemsize`` bytes (the weight's dtype) and rounds the chunk
    down to a multiple of 64 rows for the GEMMs; the torch kernel holds fp32 logits.
    """
    if kernel == "triton":
        rows = max(64, (_TRITON_CHUNK_BYTES // (itemsize * vocab)) // 64 * 64)
    else:
        budget = _CUDA_CHUNK_BYTES if device.type == "cuda" else _CPU_CHUNK_BYTES
        rows = max(16, budget // (4 * vocab))
    return int(max(1, min(n_tokens, rows)))


def _torch_rows_(
    raw: torch.Tensor,
    z: torch.Tensor,
    tc: torch.Tensor,
    ec: torch.Tensor,
    wc: torch.Tensor | None,
    softcap: float | None,
    logit_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The torch kernel on one chunk: per-row losses, top-1 flags and (with ``wc``) the gradient of
    ``sum(wc * loss)`` with respect to the raw logits, computed in float32 in ``z``."""
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
    z.sub_(z_max).exp_()  # z now holds exp(z - max): unnormalised probabilities
    sum_exp = z.sum(dim=-1)
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


def _chunk_pass(
    h_all: torch.Tensor,
    rows: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    eps: torch.Tensor,
    row_weight: torch.Tensor | None,
    want: tuple[bool, bool, bool],
    softcap: float | None,
    logit_scale: float,
    chunk_size: int,
    kernel: str,
    top1: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]]:
    """Per-token losses of the rows ``rows`` of ``h_all`` (all rows when None) and, when
    ``row_weight`` is given, the gradients of sum(row_weight * loss) that ``want`` asks for:
    hidden (shaped like ``h_all``, zero on skipped rows), weight and bias.

    The torch kernel works in float32 and accumulates the weight gradient in float32; the triton
    kernel keeps the logits in the weight's dtype and accumulates the weight gradient there (as
    Liger does), which is what keeps its peak memory at one weight gradient plus one chunk.
    """
    n = targets.numel()
    vocab = weight.shape[0]
    device = h_all.device
    want_h, want_w, want_b = want if row_weight is not None else (False, False, False)
    want_b = want_b and bias is not None
    low_precision = kernel == "triton"
    losses = torch.empty(n, dtype=torch.float32, device=device)
    grad_h = grad_w = grad_b = None
    if want_h:
        grad_h = torch.empty_like(h_all) if rows is None else torch.zeros_like(h_all)
    if want_w:
        grad_w = torch.zeros(weight.shape, dtype=weight.dtype if low_precision else torch.float32, device=device)
    if want_b:
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=device)
    if n == 0:
        return losses, (grad_h, grad_w, grad_b)
    if low_precision:
        from ual_plugin.loss_triton import smoothed_ce_rows_
    # One logits buffer reused by every chunk (plus an fp32 one for the torch kernel on low-precision
    # weights), so the next chunk's GEMM never allocates while the previous chunk's logits are alive.
    size = min(chunk_size, n)
    raw_buf = torch.empty(size, vocab, dtype=weight.dtype, device=device)
    z_buf = raw_buf
    if not low_precision and weight.dtype != torch.float32:
        z_buf = torch.empty(size, vocab, dtype=torch.float32, device=device)
    any_grad = want_h or want_w or want_b
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        hc = h_all[start:stop] if rows is None else h_all.index_select(0, rows[start:stop])
        hc = hc.to(weight.dtype)
        tc, ec = targets[start:stop], eps[start:stop]
        wc = row_weight[start:stop] if any_grad else None
        raw = raw_buf[: stop - start]
        if bias is not None:
            torch.addmm(bias, hc, weight.t(), out=raw)
        else:
            torch.mm(hc, weight.t(), out=raw)
        if low_precision:
            losses[start:stop], flags = smoothed_ce_rows_(raw, tc, ec, wc, logit_scale, softcap)
            dz = raw
        else:
            losses[start:stop], flags, dz = _torch_rows_(raw, z_buf[: stop - start], tc, ec, wc, softcap, logit_scale)
            if dz is not None and dz.dtype != weight.dtype:
                dz = raw.copy_(dz)  # the raw logits are no longer needed: reuse their buffer
        if top1 is not None:
            top1[start:stop] = flags
        if not any_grad:
            continue
        if grad_b is not None:
            grad_b.add_(dz.sum(dim=0, dtype=torch.float32))
        if grad_h is not None:
            if rows is None and grad_h.dtype == dz.dtype:
                torch.mm(dz, weight, out=grad_h[start:stop])
            elif rows is None:
                grad_h[start:stop] = dz @ weight
            else:
                grad_h.index_copy_(0, rows[start:stop], (dz @ weight).to(grad_h.dtype))
        if grad_w is not None:
            if grad_w.dtype == dz.dtype:
                grad_w.addmm_(dz.t(), hc)
            else:
                grad_w.add_(dz.t() @ hc)
    return losses, (grad_h, grad_w, grad_b)


class _LinearSmoothedCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden, weight, bias, targets, eps, ignore_index, reduction, softcap, logit_scale, chunk_size, stats, kernel
    ):
        shape = targets.shape
        h_all = hidden.reshape(-1, hidden.shape[-1])
        t_all = targets.reshape(-1)
        valid = t_all != ignore_index
        _check_targets(t_all, valid, weight.shape[0])
        idx = valid.nonzero().squeeze(1)
        n_valid = idx.numel()
        rows = None if n_valid == t_all.numel() else idx  # skip ignored tokens; no gather when there are none
        t = t_all if rows is None else t_all.index_select(0, idx)
        e = eps if rows is None else eps.index_select(0, idx)
        chunk = chunk_size or default_chunk_size(max(n_valid, 1), weight.shape[0], h_all.device, kernel,
                                                 weight.element_size())
        want = tuple(ctx.needs_input_grad[:3])
        row_weight = None
        if any(want) and reduction != "none":
            scale = 1.0 / max(n_valid, 1) if reduction == "mean" else 1.0
            row_weight = torch.full((n_valid,), scale, dtype=torch.float32, device=h_all.device)
        top1 = torch.empty(n_valid, dtype=torch.bool, device=h_all.device) if stats is not None else None
        losses, grads = _chunk_pass(
            h_all, rows, weight, bias, t, e, row_weight, want, softcap, logit_scale, chunk, kernel, top1
        )
        if stats is not None:
            stats["n_tokens"] = n_valid
            stats["n_correct"] = top1.sum()

        ctx.reduction = reduction
        ctx.hidden_shape = hidden.shape
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        if reduction == "none":
            ctx.save_for_backward(h_all, weight, bias, t, e, idx)
            ctx.extra = (rows is None, want, softcap, logit_scale, chunk, kernel)
            out = torch.zeros(t_all.shape, dtype=torch.float32, device=h_all.device)
            out.index_copy_(0, idx, losses)
            return out.reshape(shape)
        # Kept as a plain attribute (not saved tensors) so backward can drop our reference and autograd
        # can adopt grad_weight as the parameter's .grad without copying it.
        ctx.grads = grads if any(want) else None
        total = losses.sum()
        return total / max(n_valid, 1) if reduction == "mean" else total

    @staticmethod
    def backward(ctx, grad_out):
        w_dtype, b_dtype = ctx.dtypes
        if ctx.reduction == "none":
            h_all, weight, bias, t, e, idx = ctx.saved_tensors
            all_rows, want, softcap, logit_scale, chunk, kernel = ctx.extra
            row_weight = grad_out.reshape(-1).index_select(0, idx).float()
            rows = None if all_rows else idx
            _, (g_h, g_w, g_b) = _chunk_pass(
                h_all, rows, weight, bias, t, e, row_weight, want, softcap, logit_scale, chunk, kernel
            )
        else:
            grads = ctx.grads
            ctx.grads = None
            if grads is None:
                return (None,) * 12
            g_h, g_w, g_b = grads
            # Scale the gradients computed in the forward pass in place (no second copy of grad_weight);
            # like Liger's fused linear cross-entropy, this graph supports a single backward pass.
            if grad_out.item() != 1.0:
                s = grad_out.float()
                for g in (g_h, g_w, g_b):
                    if g is not None:
                        g.mul_(s.to(g.dtype))
        return (
            None if g_h is None else g_h.reshape(ctx.hidden_shape),
            None if g_w is None else g_w.to(w_dtype),
            None if g_b is None else g_b.to(b_dtype),
            None, None, None, None, None, None, None, None, None,
        )


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
) -> torch.Tensor:
    """``smoothed_cross_entropy(hidden @ weight.T + bias, ...)`` without materialising [N, V] logits.

    hidden [..., H]; weight [V, H]; targets [...]; smoothing a float or a tensor shaped like
    ``targets``. ``logit_scale`` multiplies the logits and ``softcap`` applies
    ``softcap * tanh(z / softcap)`` after it (Gemma-2 style), as the model's own head would.

    ``kernel``: "torch" computes logits and softmax in float32 per chunk and accumulates weight/bias
    gradients in float32 (runs anywhere); "triton" keeps each chunk's logits in the weight's dtype
    and runs one fused Triton pass over them (GPU; Liger-like precision and memory); "auto" (the
    default, overridable with ``$UAL_KERNEL``) picks triton for CUDA tensors when it is installed.
    Pass a dict as ``stats`` to receive ``n_tokens`` (non-ignored targets) and ``n_correct``
    (targets that are the top-1 logit).
    """
    _check_reduction(reduction)
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} do not match")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, {hidden.shape[-1]}]; got {tuple(weight.shape)}")
    if softcap is not None and not (softcap > 0 and math.isfinite(softcap)):
        raise ValueError(f"softcap must be a positive number or None; got {softcap!r}")
    resolved = resolve_kernel(kernel, hidden.device)
    eps = _smoothing_vector(smoothing, targets)
    return _LinearSmoothedCE.apply(
        hidden, weight, bias, targets, eps, ignore_index, reduction, softcap, float(logit_scale), chunk_size, stats,
        resolved,
    )
