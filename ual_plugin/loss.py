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

import math

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

_CPU_CHUNK_BYTES = 64 << 20  # fp32 logits per chunk on CPU: few weight-gradient passes, small peak
_CUDA_CHUNK_BYTES = 512 << 20


def default_chunk_size(n_tokens: int, vocab: int, device: torch.device) -> int:
    """Tokens per chunk so that one chunk of fp32 logits stays within a fixed byte budget."""
    budget = _CUDA_CHUNK_BYTES if device.type == "cuda" else _CPU_CHUNK_BYTES
    rows = max(16, budget // (4 * vocab))
    return int(max(1, min(n_tokens, rows)))


def _chunk_pass(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    eps: torch.Tensor,
    row_weight: torch.Tensor | None,
    softcap: float | None,
    logit_scale: float,
    chunk_size: int,
    top1: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None]:
    """Per-token losses of the valid rows ``h`` and, when ``row_weight`` is given, the gradients of
    sum(row_weight * loss) with respect to h, weight and bias (weight/bias grads in float32)."""
    n, _ = h.shape
    vocab = weight.shape[0]
    losses = torch.empty(n, dtype=torch.float32, device=h.device)
    want_grads = row_weight is not None
    grad_h = grad_w = grad_b = None
    if want_grads:
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if bias is not None else None
    if n == 0:
        return (losses, (grad_h, grad_w, grad_b)) if want_grads else (losses, None)
    # One logits buffer reused by every chunk (plus an fp32 one for low-precision weights), so the
    # next chunk's GEMM never allocates while the previous chunk's logits are still alive.
    rows = min(chunk_size, n)
    raw_buf = torch.empty(rows, vocab, dtype=weight.dtype, device=h.device)
    z_buf = raw_buf if weight.dtype == torch.float32 else torch.empty(rows, vocab, dtype=torch.float32, device=h.device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        hc, tc, ec = h[start:stop], targets[start:stop], eps[start:stop]
        raw = raw_buf[: stop - start]
        if bias is not None:
            torch.addmm(bias, hc, weight.t(), out=raw)
        else:
            torch.mm(hc, weight.t(), out=raw)
        z = z_buf[: stop - start]
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
        if top1 is not None:
            top1[start:stop] = z_y >= z_max.squeeze(1)
        z.sub_(z_max).exp_()  # z now holds exp(z - max): unnormalised probabilities
        sum_exp = z.sum(dim=-1)
        lse = z_max.squeeze(1) + sum_exp.log()
        losses[start:stop] = lse - (1.0 - ec) * z_y - ec * z_mean
        if not want_grads:
            continue
        wc = row_weight[start:stop]
        # d loss / d z = softmax - (1 - e) * onehot(y) - e / V, times the row's weight
        z.mul_((wc / sum_exp).unsqueeze(1)).sub_((wc * ec / vocab).unsqueeze(1))
        z.scatter_add_(1, tc.unsqueeze(1), (-(1.0 - ec) * wc).unsqueeze(1))
        if th is not None:
            z.mul_(1.0 - th * th)
        if logit_scale != 1.0:
            z.mul_(logit_scale)
        if grad_b is not None:
            grad_b.add_(z.sum(dim=0))
        if weight.dtype == torch.float32:
            dz = z
        else:
            dz = raw.copy_(z)  # the raw logits are no longer needed: reuse their buffer
        torch.mm(dz, weight, out=grad_h[start:stop])
        if weight.dtype == torch.float32:
            grad_w.addmm_(dz.t(), hc)
        else:
            grad_w.add_(dz.t() @ hc)
    if not want_grads:
        return losses, None
    return losses, (grad_h, grad_w, grad_b)


class _LinearSmoothedCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden, weight, bias, targets, eps, ignore_index, reduction, softcap, logit_scale, chunk_size, stats
    ):
        shape = targets.shape
        h_all = hidden.reshape(-1, hidden.shape[-1])
        t_all = targets.reshape(-1)
        valid = t_all != ignore_index
        _check_targets(t_all, valid, weight.shape[0])
        idx = valid.nonzero().squeeze(1)
        h = h_all.index_select(0, idx)
        if h.dtype != weight.dtype:
            h = h.to(weight.dtype)
        t = t_all.index_select(0, idx)
        e = eps.index_select(0, idx)
        n_valid = idx.numel()
        chunk = chunk_size or default_chunk_size(max(n_valid, 1), weight.shape[0], h.device)
        needs_grad = any(ctx.needs_input_grad[:3])
        row_weight = None
        if needs_grad and reduction != "none":
            scale = 1.0 / max(n_valid, 1) if reduction == "mean" else 1.0
            row_weight = torch.full((n_valid,), scale, dtype=torch.float32, device=h.device)
        top1 = torch.empty(n_valid, dtype=torch.bool, device=h.device) if stats is not None else None
        losses, grads = _chunk_pass(h, weight, bias, t, e, row_weight, softcap, logit_scale, chunk, top1)
        if stats is not None:
            stats["n_tokens"] = n_valid
            stats["n_correct"] = top1.sum()

        ctx.reduction = reduction
        ctx.hidden_meta = (h_all.shape, hidden.shape, hidden.dtype)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        if reduction == "none":
            ctx.save_for_backward(h, weight, bias, t, e, idx)
            ctx.extra = (softcap, logit_scale, chunk)
            out = torch.zeros(t_all.shape, dtype=torch.float32, device=h.device)
            out.index_copy_(0, idx, losses)
            return out.reshape(shape)
        ctx.save_for_backward(idx)
        # Kept as a plain attribute (not saved tensors) so backward can drop our reference and autograd
        # can adopt grad_weight as the parameter's .grad without copying it.
        ctx.grads = grads
        total = losses.sum()
        return total / max(n_valid, 1) if reduction == "mean" else total

    @staticmethod
    def backward(ctx, grad_out):
        (flat_shape, hidden_shape, hidden_dtype) = ctx.hidden_meta
        w_dtype, b_dtype = ctx.dtypes
        if ctx.reduction == "none":
            h, weight, bias, t, e, idx = ctx.saved_tensors
            softcap, logit_scale, chunk = ctx.extra
            row_weight = grad_out.reshape(-1).index_select(0, idx).float()
            _, (g_h, g_w, g_b) = _chunk_pass(h, weight, bias, t, e, row_weight, softcap, logit_scale, chunk)
        else:
            grads = ctx.grads
            ctx.grads = None
            if grads is None:
                return (None,) * 11
            (idx,) = ctx.saved_tensors
            g_h, g_w, g_b = grads
            # Scale the gradients computed in the forward pass in place (no second copy of grad_weight);
            # like Liger's fused linear cross-entropy, this graph supports a single backward pass.
            s = grad_out.float()
            g_h.mul_(s.to(g_h.dtype))
            g_w.mul_(s)
            if g_b is not None:
                g_b.mul_(s)
        grad_hidden = torch.zeros(flat_shape, dtype=hidden_dtype, device=g_h.device)
        grad_hidden.index_copy_(0, idx, g_h.to(hidden_dtype))
        return (
            grad_hidden.reshape(hidden_shape),
            g_w.to(w_dtype),
            None if g_b is None else g_b.to(b_dtype),
            None, None, None, None, None, None, None, None,
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
) -> torch.Tensor:
    """``smoothed_cross_entropy(hidden @ weight.T + bias, ...)`` without materialising [N, V] logits.

    hidden [..., H]; weight [V, H]; targets [...]; smoothing a float or a tensor shaped like
    ``targets``. ``logit_scale`` multiplies the logits and ``softcap`` applies
    ``softcap * tanh(z / softcap)`` after it (Gemma-2 style), as the model's own head would.
    Logits and softmax are computed in float32 per chunk; weight/bias gradients accumulate in
    float32 and are returned in the parameters' dtype. Pass a dict as ``stats`` to receive
    ``n_tokens`` (non-ignored targets) and ``n_correct`` (targets that are the top-1 logit).
    """
    _check_reduction(reduction)
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} do not match")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, {hidden.shape[-1]}]; got {tuple(weight.shape)}")
    if softcap is not None and not (softcap > 0 and math.isfinite(softcap)):
        raise ValueError(f"softcap must be a positive number or None; got {softcap!r}")
    eps = _smoothing_vector(smoothing, targets)
    return _LinearSmoothedCE.apply(
        hidden, weight, bias, targets, eps, ignore_index, reduction, softcap, float(logit_scale), chunk_size, stats
    )
