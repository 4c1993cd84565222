"""Fused Triton pass over one chunk of logits for ``linear_smoothed_cross_entropy`` on GPU.

One program per token row reads the row twice: an online max / sum-exp / sum pass gives the loss
``lse - (1 - e) * z_y - e * mean(z)`` and the top-1 flag, and a second pass overwrites the row
with ``w * (softmax - (1 - e) * onehot(y) - e / V)`` (chain rule through logit scale and softcap
included). The logits never leave their low-precision buffer and nothing of size [rows, V] is
allocated. Import this module only where ``triton`` is installed.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Row-slice widths and warp counts to try on the first launch per vocabulary size: about 8 float32
# values per thread, which compiles for sm_80/sm_90 without register spills (wider slices per
# thread spill to local memory). The fastest is kept for the process.
_TUNING = ((2048, 8), (4096, 8), (4096, 16), (8192, 16), (8192, 32))


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


_ual_rows_kernel_tuned = triton.autotune(
    configs=[triton.Config({"BLOCK_V": block}, num_warps=warps) for block, warps in _TUNING],
    key=["V", "HAS_SOFTCAP", "WANT_GRAD"],
    restore_value=["z_ptr"],  # the kernel overwrites the logits: each trial starts from the originals
)(_ual_rows_kernel)


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
    ``block_v`` fixes the row-slice width instead of tuning it (tests use it to force several slices).
    """
    rows, vocab = logits.shape
    if logits.stride(1) != 1:
        raise ValueError("logits must be contiguous along the vocabulary")
    losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
    top1 = torch.empty(rows, dtype=torch.int8, device=logits.device)
    if rows == 0:
        return losses, top1.bool()
    want_grad = row_weight is not None
    targets, eps = targets.contiguous(), eps.contiguous()
    args = (
        logits,
        logits.stride(0),
        targets,
        eps,
        row_weight.contiguous() if want_grad else eps,
        losses,
        top1,
        vocab,
        1.0 / vocab,
        float(logit_scale),
        float(softcap) if softcap is not None else 1.0,
    )
    flags = dict(HAS_SOFTCAP=softcap is not None, WANT_GRAD=want_grad)
    if block_v is None and os.environ.get("TRITON_INTERPRET") == "1":
        block_v = _TUNING[0][0]  # the CPU interpreter has no device to time configurations on
    if block_v is None:
        _ual_rows_kernel_tuned[(rows,)](*args, **flags)
    else:
        _ual_rows_kernel[(rows,)](*args, **flags, BLOCK_V=block_v, num_warps=4)
    return losses, top1.bool()


def compile_report(arch: int = 90) -> list[dict]:
    """Compile every tuning configuration for ``sm_<arch>`` ahead of time (no GPU needed) and return
    each one's register count and stack (spill) bytes, as read back from the cubin by cuobjdump."""
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    signature = {"z_ptr": "*bf16", "z_stride": "i64", "tgt_ptr": "*i64", "eps_ptr": "*fp32", "rw_ptr": "*fp32",
                 "loss_ptr": "*fp32", "top1_ptr": "*i8", "V": "i32", "inv_v": "fp32", "scale": "fp32",
                 "softcap": "fp32", "HAS_SOFTCAP": "constexpr", "WANT_GRAD": "constexpr", "BLOCK_V": "constexpr"}
    report = []
    for block, warps in _TUNING:
        for softcap in (False, True):
            constexprs = {"HAS_SOFTCAP": softcap, "WANT_GRAD": True, "BLOCK_V": block}
            src = ASTSource(fn=_ual_rows_kernel, signature=signature, constexprs=constexprs)
            kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(kernel.asm["cubin"])
                f.flush()
                usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True,
                                       text=True, check=True).stdout
            fields = dict(item.split(":") for item in usage.split("Resource usage:")[-1].split() if ":" in item)
            report.append({"block_v": block, "num_warps": warps, "softcap": softcap,
                           "registers": int(fields["REG"]), "stack_bytes": int(fields["STACK"])})
    return report


if __name__ == "__main__":
    import json
    import sys

    for row in compile_report(int(sys.argv[1]) if len(sys.argv) > 1 else 90):
        print(json.dumps(row))
