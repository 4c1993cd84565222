"""Fused Triton pass over one chunk of logits for ``linear_smoothed_cross_entropy`` on GPU.

One program per token row reads the row twice: an online max / sum-exp / sum pass gives the loss
``lse - (1 - e) * z_y - e * mean(z)`` and the top-1 flag, and a second pass overwrites the row
with ``w * (softmax - (1 - e) * onehot(y) - e / V)`` (chain rule through logit scale and softcap
included). The logits never leave their low-precision buffer and nothing of size [rows, V] is
allocated. Import this module only where ``triton`` is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_MAX_BLOCK_V = 32768  # the widest slice of a row held at once (as Liger's cross-entropy kernel)


@triton.jit
def _ual_rows_kernel(
    z_ptr,
    z_stride,
    tgt_ptr,
    eps_ptr,
    rw_ptr,
    loss_ptr,
    top1_ptr,
    V,
    inv_v,
    scale,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    WANT_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = z_ptr + row * z_stride
    y = tl.load(tgt_ptr + row).to(tl.int64)
    e = tl.load(eps_ptr + row)

    m = -float("inf")
    d = 0.0
    z_sum = 0.0
    for off in range(0, V, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        mask = cols < V
        z = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32) * scale
        if HAS_SOFTCAP:  # softcap * tanh(z / softcap), tanh written with sigmoid (on every backend)
            z = softcap * (2.0 * tl.sigmoid(2.0 * z / softcap) - 1.0)
        z_sum += tl.sum(z, axis=0)  # masked lanes loaded as 0 and stay 0 under scale and softcap
        z = tl.where(mask, z, -float("inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new

    z_y = tl.load(base + y).to(tl.float32) * scale
    if HAS_SOFTCAP:
        z_y = softcap * (2.0 * tl.sigmoid(2.0 * z_y / softcap) - 1.0)
    lse = m + tl.log(d)
    tl.store(loss_ptr + row, lse - (1.0 - e) * z_y - e * z_sum * inv_v)
    tl.store(top1_ptr + row, (z_y >= m).to(tl.int8))

    if WANT_GRAD:
        w = tl.load(rw_ptr + row)
        uniform = w * e * inv_v
        on_target = w * (1.0 - e)
        for off in range(0, V, BLOCK_V):
            cols = off + tl.arange(0, BLOCK_V)
            mask = cols < V
            z = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32) * scale
            if HAS_SOFTCAP:
                t = 2.0 * tl.sigmoid(2.0 * z / softcap) - 1.0
                z = softcap * t
            g = w * tl.exp(z - lse) - uniform - tl.where(cols == y, on_target, 0.0)
            if HAS_SOFTCAP:
                g = g * (1.0 - t * t)
            g = g * scale
            tl.store(base + cols, g.to(z_ptr.dtype.element_ty), mask=mask)


def smoothed_ce_rows_(
    logits: torch.Tensor,
    targets: torch.Tensor,
    eps: torch.Tensor,
    row_weight: torch.Tensor | None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    block_v: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row UAL loss (float32) and top-1 flags (bool) of ``logits`` [rows, V] (raw head output).

    With ``row_weight`` [rows] the rows of ``logits`` are overwritten, in their own dtype, by the
    gradient of ``sum(row_weight * loss)`` with respect to them. targets must be valid class ids.
    """
    rows, vocab = logits.shape
    if logits.stride(1) != 1:
        raise ValueError("logits must be contiguous along the vocabulary")
    losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
    top1 = torch.empty(rows, dtype=torch.int8, device=logits.device)
    if rows == 0:
        return losses, top1.bool()
    block = block_v or min(_MAX_BLOCK_V, triton.next_power_of_2(vocab))
    want_grad = row_weight is not None
    _ual_rows_kernel[(rows,)](
        logits,
        logits.stride(0),
        targets,
        eps,
        row_weight if want_grad else eps,
        losses,
        top1,
        vocab,
        1.0 / vocab,
        float(logit_scale),
        float(softcap) if softcap is not None else 1.0,
        HAS_SOFTCAP=softcap is not None,
        WANT_GRAD=want_grad,
        BLOCK_V=block,
        num_warps=32 if block >= 8192 else 8 if block >= 1024 else 4,
    )
    return losses, top1.bool()
