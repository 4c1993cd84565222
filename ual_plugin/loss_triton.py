"""Fused Triton pass over one chunk of logits for ``linear_smoothed_cross_entropy`` on GPU.

One program per token row reads the row twice: an online max / sum-exp / sum pass gives the loss
``lse - (1 - e) * z_y - e * mean(z)`` and the top-1 flag, and a second pass overwrites the row
with ``w * (softmax - (1 - e) * onehot(y) - e / V)`` (chain rule through logit scale and softcap
included). The logits never leave their low-precision buffer and nothing of size [rows, V] is
allocated. Import this module only where ``triton`` is installed.

Layout rules that the compiled code depends on (checked by ``tests/test_loss_triton_compile.py``):
the target logit is read before the first barrier, because other warps overwrite its column with
the gradient in the second pass; each row is an unmasked body of whole slices plus one masked tail,
so that with a row stride padded to ``ROW_ALIGN`` elements the body uses 16-byte loads and stores
whatever the vocabulary size. Configurations come from a fixed table (no autotuning: timing an
in-place kernel on live data needs a copy of the logits per trial and cannot run under CUDA-graph
capture).
"""

from __future__ import annotations

import contextlib
import os
import re

import torch
import triton
import triton.language as tl

# Row strides of logits buffers are padded to this many elements (a multiple of 16 lets Triton
# prove 16-byte alignment of every row; 64 also suits the GEMM tiles that write the buffer).
ROW_ALIGN = 64

# (row-slice width, warps): 8 values per thread, so that every thread moves 16 contiguous bytes of
# bf16 logits per access (4 values give 8-byte accesses), plus 16 per thread for the widest slice.
# Each compiles for sm_90 without register spills in every run-time specialisation (the tests check
# it; 2048 x 8 warps spills with softcap and an unaligned vocabulary). ``kernel_config`` picks one;
# the GPU verify stage runs and times them all.
CONFIGS = ((256, 1), (512, 2), (1024, 4), (4096, 16), (8192, 16), (8192, 32))


def padded_stride(vocab: int) -> int:
    """Row stride (elements) for a logits buffer of ``vocab`` columns: ``vocab`` rounded up to ``ROW_ALIGN``."""
    return -(-vocab // ROW_ALIGN) * ROW_ALIGN


def kernel_config(vocab: int) -> tuple[int, int]:
    """(row-slice width, warps) for a vocabulary, from ``CONFIGS`` by a fixed rule (no timing):
    4096-wide slices on 16 warps above 1024 classes, one slice of 256-1024 below."""
    if vocab > 1024:
        return 4096, 16
    block = max(256, triton.next_power_of_2(vocab))
    return block, block // 256


@triton.jit
def _online_update(z, m, d):
    """Fold one slice of logits (masked lanes at -inf) into the running max and sum-exp."""
    m_new = tl.maximum(m, tl.max(z, axis=0))
    d = d * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
    return m_new, d


@triton.jit
def _online_update_entropy(z, zv, m, d, s):
    """``_online_update`` that also folds sum(exp(z - max) * z) for the entropy; ``zv`` is ``z`` with
    masked lanes at 0 instead of -inf (their weight exp(-inf) is 0 either way)."""
    m_new = tl.maximum(m, tl.max(z, axis=0))
    rescale = tl.exp(m - m_new)
    e = tl.exp(z - m_new)
    return m_new, d * rescale + tl.sum(e, axis=0), s * rescale + tl.sum(e * zv, axis=0)


@triton.jit
def _capped(z, softcap, HAS_SOFTCAP: tl.constexpr):
    """softcap * tanh(z / softcap), tanh written with sigmoid (available on every backend)."""
    if HAS_SOFTCAP:
        z = softcap * (2.0 * tl.sigmoid(2.0 * z / softcap) - 1.0)
    return z


@triton.jit
def _grad_slice(z_raw, cols, y, w, lse, uniform, on_target, scale, softcap, HAS_SOFTCAP: tl.constexpr):
    """Gradient of w * loss with respect to the raw logits of one slice."""
    z = z_raw.to(tl.float32) * scale
    if HAS_SOFTCAP:
        t = 2.0 * tl.sigmoid(2.0 * z / softcap) - 1.0
        z = softcap * t
    g = w * tl.exp(z - lse) - uniform - tl.where(cols == y, on_target, 0.0)
    if HAS_SOFTCAP:
        g = g * (1.0 - t * t)
    return g * scale


@triton.jit
def _ual_rows_kernel(
    z_ptr,
    z_stride,
    tgt_ptr,
    eps_ptr,
    rw_ptr,
    loss_ptr,
    top1_ptr,
    ent_ptr,
    V,
    V_body,
    inv_v,
    scale,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    WANT_GRAD: tl.constexpr,
    HAS_TAIL: tl.constexpr,
    BLOCK_V: tl.constexpr,
    WANT_ENTROPY: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = z_ptr + row * z_stride
    y = tl.load(tgt_ptr + row).to(tl.int64)
    e = tl.load(eps_ptr + row)
    # Before any barrier: once a warp passes the first reduction barrier it may start pass 2 and
    # overwrite column y with its gradient, so no warp may read z_y later than this.
    z_y_raw = tl.load(base + y)
    arange = tl.arange(0, BLOCK_V)

    m = -float("inf")
    d = 0.0
    s = 0.0  # sum of exp(z - m) * z, for the entropy
    z_sum = 0.0
    for off in range(0, V_body, BLOCK_V):  # whole slices: no mask, 16-byte accesses
        z = _capped(tl.load(base + off + arange).to(tl.float32) * scale, softcap, HAS_SOFTCAP)
        z_sum += tl.sum(z, axis=0)
        if WANT_ENTROPY:
            m, d, s = _online_update_entropy(z, z, m, d, s)
        else:
            m, d = _online_update(z, m, d)
    if HAS_TAIL:
        cols = V_body + arange
        mask = cols < V
        z = _capped(tl.load(base + cols, mask=mask, other=0.0).to(tl.float32) * scale, softcap, HAS_SOFTCAP)
        z_sum += tl.sum(z, axis=0)  # masked lanes loaded as 0 and stay 0 under scale and softcap
        if WANT_ENTROPY:
            m, d, s = _online_update_entropy(tl.where(mask, z, -float("inf")), z, m, d, s)
        else:
            m, d = _online_update(tl.where(mask, z, -float("inf")), m, d)

    z_y = _capped(z_y_raw.to(tl.float32) * scale, softcap, HAS_SOFTCAP)
    lse = m + tl.log(d)
    tl.store(loss_ptr + row, lse - (1.0 - e) * z_y - e * z_sum * inv_v)
    tl.store(top1_ptr + row, (z_y >= m).to(tl.int8))
    if WANT_ENTROPY:  # H = lse - E_p[z]
        tl.store(ent_ptr + row, lse - s / d)

    if WANT_GRAD:
        w = tl.load(rw_ptr + row)
        uniform = w * e * inv_v
        on_target = w * (1.0 - e)
        for off in range(0, V_body, BLOCK_V):
            cols = off + arange
            g = _grad_slice(tl.load(base + cols), cols, y, w, lse, uniform, on_target, scale, softcap, HAS_SOFTCAP)
            tl.store(base + cols, g.to(z_ptr.dtype.element_ty))
        if HAS_TAIL:
            cols = V_body + arange
            mask = cols < V
            z_raw = tl.load(base + cols, mask=mask, other=0.0)
            g = _grad_slice(z_raw, cols, y, w, lse, uniform, on_target, scale, softcap, HAS_SOFTCAP)
            tl.store(base + cols, g.to(z_ptr.dtype.element_ty), mask=mask)


def logits_buffer(rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A [rows, vocab] logits buffer (contents uninitialised) whose row stride is padded to ``ROW_ALIGN``.

    The padding is zeroed: CPU bf16 GEMMs (oneDNN) read past ``vocab`` in a strided operand, and
    garbage there turned into NaN gradients; zeros leave every product exact."""
    buffer = torch.empty(rows, padded_stride(vocab), dtype=dtype, device=device)
    buffer[:, vocab:].zero_()
    return buffer[:, :vocab]


def on_device_of(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``tensor``'s CUDA device current: Triton launches on the current device and its stream."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def kernel_args(
    logits: torch.Tensor,
    targets: torch.Tensor,
    eps: torch.Tensor,
    row_weight: torch.Tensor | None,
    losses: torch.Tensor,
    top1: torch.Tensor,
    logit_scale: float,
    softcap: float | None,
    block_v: int,
    entropy: torch.Tensor | None = None,
) -> tuple[tuple, dict]:
    """Positional arguments and constexpr flags of ``_ual_rows_kernel`` for one launch."""
    vocab = logits.shape[1]
    body = vocab // block_v * block_v
    args = (logits, logits.stride(0), targets, eps, eps if row_weight is None else row_weight, losses, top1,
            losses if entropy is None else entropy, vocab, body, 1.0 / vocab, float(logit_scale),
            float(softcap) if softcap is not None else 1.0)
    flags = dict(HAS_SOFTCAP=softcap is not None, WANT_GRAD=row_weight is not None, HAS_TAIL=body < vocab,
                 BLOCK_V=block_v, WANT_ENTROPY=entropy is not None)
    return args, flags


def smoothed_ce_rows_(
    logits: torch.Tensor,
    targets: torch.Tensor,
    eps: torch.Tensor,
    row_weight: torch.Tensor | None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    block_v: int | None = None,
    num_warps: int | None = None,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row UAL loss (float32) and top-1 flags (bool) of ``logits`` [rows, V] (raw head output);
    with ``entropy`` (float32 [rows]) also each row's predictive entropy, written there.

    With ``row_weight`` [rows] the rows of ``logits`` are overwritten, in their own dtype, by the
    gradient of ``sum(row_weight * loss)`` with respect to them. targets must be valid class ids.
    ``block_v``/``num_warps`` override ``kernel_config`` (tests and the GPU verify stage use them).
    Rows may be strided (a padded buffer); the columns must be contiguous.
    """
    rows, vocab = logits.shape
    if logits.stride(1) != 1:
        raise ValueError("logits must be contiguous along the vocabulary")
    others = [t for t in (targets, eps, row_weight) if t is not None]
    if any(t.device != logits.device for t in others):
        raise ValueError(f"targets, smoothing and row weights must be on the logits' device {logits.device}")
    losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
    top1 = torch.empty(rows, dtype=torch.int8, device=logits.device)
    if rows == 0:
        return losses, top1.bool()
    block, warps = kernel_config(vocab)
    if block_v is not None:
        block, warps = block_v, max(1, min(32, block_v // 256))
    warps = num_warps or warps
    args, flags = kernel_args(logits, targets.contiguous(), eps.contiguous(),
                              None if row_weight is None else row_weight.contiguous(), losses, top1,
                              logit_scale, softcap, block, entropy)
    with on_device_of(logits):
        _ual_rows_kernel[(rows,)](*args, **flags, num_warps=warps)
    return losses, top1.bool()


def compile_report(arch: int = 90, vocabs: tuple[int, ...] = (32001,), configs: tuple[tuple[int, int], ...] = CONFIGS,
                   softcaps: tuple[bool, ...] = (False, True)) -> list[dict]:
    """Compile the kernel for ``sm_<arch>`` ahead of time (no GPU needed) exactly as it is specialised at
    run time: arguments built by ``kernel_args`` on a ``logits_buffer``, specialised by Triton's own JIT
    binder (alignment and divisibility attributes included). Returns, per compile, the register and
    stack (spill) bytes read back from the cubin by cuobjdump, and facts read from the PTX: 16-byte
    global stores, predicated 2-byte stores, and whether the single unpredicated 2-byte load (the
    target logit) comes before the first barrier. Uses Triton internals of the installed version.
    """
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    fn = _ual_rows_kernel
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    report = []
    for vocab in vocabs:
        logits = logits_buffer(1, vocab, torch.bfloat16, torch.device("cpu"))
        small = {"targets": torch.zeros(1, dtype=torch.int64), "eps": torch.zeros(1), "row_weight": torch.zeros(1),
                 "losses": torch.empty(1), "top1": torch.empty(1, dtype=torch.int8)}
        for block, warps in configs:
            for softcap in softcaps:
                args, flags = kernel_args(logits, **small, logit_scale=1.0, softcap=2.0 if softcap else None,
                                          block_v=block)
                kwargs = dict(flags, num_warps=warps)
                bound, specialization, options = binder(*args, **kwargs)
                options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
                kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                        options=options.__dict__)
                with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                    f.write(kernel.asm["cubin"])
                    f.flush()
                    usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True,
                                           text=True, check=True).stdout
                fields = dict(item.split(":") for item in usage.split("Resource usage:")[-1].split() if ":" in item)
                report.append({"vocab": vocab, "block_v": block, "num_warps": warps, "softcap": softcap,
                               "registers": int(fields["REG"]), "stack_bytes": int(fields["STACK"]),
                               **ptx_facts(kernel.asm["ptx"])})
    return report


def ptx_facts(ptx: str) -> dict:
    """Counts of unpredicated 16-byte global loads and stores (the row body), predicated 2-byte global
    stores (an unaligned tail) and unpredicated 2-byte global loads (the target logit), and whether
    the first of those loads precedes the first barrier."""
    lines = [line.strip() for line in ptx.splitlines()]
    first_barrier = next((i for i, line in enumerate(lines) if line.startswith("bar.sync")), len(lines))
    scalar_loads = [i for i, line in enumerate(lines) if re.match(r"ld\.global\.[bus]16\b", line)]
    return {
        "body_vector_loads": sum(bool(re.match(r"ld\.global\.v4\.b32\b", line)) for line in lines),
        "body_vector_stores": sum(bool(re.match(r"st\.global\.v4\.b32\b", line)) for line in lines),
        "tail_scalar_stores": sum(bool(re.match(r"@%p\d+ st\.global\.b16\b", line)) for line in lines),
        "unpredicated_2byte_loads": len(scalar_loads),
        "target_load_before_barrier": bool(scalar_loads) and scalar_loads[0] < first_barrier,
    }


if __name__ == "__main__":
    import json
    import sys

    arch = int(sys.argv[1]) if len(sys.argv) > 1 else 90
    vocabs = tuple(int(v) for v in sys.argv[2].split(",")) if len(sys.argv) > 2 else (32001,)
    configs = CONFIGS if len(sys.argv) <= 3 or sys.argv[3] == "all" else (kernel_config(max(vocabs)),)
    for row in compile_report(arch, vocabs, configs):
        print(json.dumps(row))
