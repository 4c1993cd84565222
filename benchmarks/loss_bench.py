"""Forward+backward time and peak memory of UAL's fused linear loss against the alternatives.

Variants (all compute gradients for hidden and weight):
  torch_ls          torch.nn.functional.cross_entropy(h @ W.T in fp32, label_smoothing=0.1): the
                    native fused op with one scalar smoothing (the cheapest materialised baseline;
                    it cannot do per-token smoothing at all)
  torch_ual         UAL with per-token smoothing on materialised fp32 logits (smoothed_cross_entropy)
  ual_linear        ual_plugin.linear_smoothed_cross_entropy, per-token smoothing, no [N, V] logits
                    (kernel "auto": triton on CUDA, torch elsewhere)
  ual_linear_torch  the same with kernel="torch" (the portable fallback)
  ual_linear_triton the same with kernel="triton" (CUDA, or TRITON_INTERPRET=1)
  gemm_floor        the three bare GEMMs of any linear cross-entropy (logits, grad hidden, grad
                    weight) and nothing else: the time floor (CUDA)
  liger_flce        Liger-Kernel's fused linear cross-entropy, scalar label_smoothing=0.1 (CUDA)
  cce               Cut Cross-Entropy's linear_cross_entropy, no smoothing (CUDA)

Time: the variants run interleaved (A B A B ...) in one process; we report medians and the
median of per-round ratios against torch_ls. Memory: on CUDA, torch.cuda.max_memory_allocated above
the inputs around one warmed-up step, in the same process (the allocator counts exactly); on CPU each
variant runs in a fresh process and the peak is VmHWM - VmRSS around one warmed-up step (after
resetting VmHWM through /proc/self/clear_refs, with MALLOC_MMAP_THRESHOLD_ so big buffers are
returned to the OS).

    python benchmarks/loss_bench.py                       # CPU, N=2048 H=256 V=32000
    python benchmarks/loss_bench.py --preset gpu --write   # CUDA, both issue shapes, bf16, into RESULTS.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from peak_memory import peak_bytes, sync
from results_md import device_name, provenance, write_section

from ual_plugin import linear_smoothed_cross_entropy, smoothed_cross_entropy

VARIANTS = ("torch_ls", "torch_ual", "ual_linear", "ual_linear_torch", "ual_linear_triton", "gemm_floor",
            "liger_flce", "cce")
CPU_DEFAULT = ("torch_ls", "torch_ual", "ual_linear")
CUDA_DEFAULT = ("torch_ls", "gemm_floor", "liger_flce", "cce", "ual_linear")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The shapes of the GPU targets: Llama-3's vocabulary, and a 32k vocabulary at twice the tokens.
GPU_SHAPES = ((8192, 4096, 128256), (16384, 4096, 32000))
_NEEDS = {"liger_flce": "liger_kernel", "cce": "cut_cross_entropy"}


def available(variant: str, device: str) -> bool:
    if variant in ("gemm_floor", "liger_flce", "cce", "ual_linear_triton") and device != "cuda":
        return False
    return variant not in _NEEDS or importlib.util.find_spec(_NEEDS[variant]) is not None


def make_inputs(n: int, h: int, v: int, dtype: torch.dtype, device: str, ignore_frac: float = 0.1, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g) * 0.5).to(device=device, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.02).to(device=device, dtype=dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    targets[: int(n * ignore_frac)] = -100  # ignored (prompt) tokens, as in SFT
    smoothing = (torch.rand(n, generator=g) * 0.2).to(device)
    return hidden, weight, targets, smoothing


_LIGER = {}
_UAL_OPTIONS: dict = {}  # extra keyword arguments for the ual_* variants (--chunk-size)


def _liger_loss():
    if "fn" not in _LIGER:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        _LIGER["fn"] = LigerFusedLinearCrossEntropyLoss(label_smoothing=0.1)
    return _LIGER["fn"]


def step(variant: str, hidden, weight, targets, smoothing) -> None:
    hidden.grad = None
    weight.grad = None
    if variant == "gemm_floor":
        with torch.no_grad():
            logits = hidden @ weight.t()
            hidden.grad = logits @ weight
            weight.grad = logits.t() @ hidden
        return
    if variant == "torch_ls":
        logits = (hidden @ weight.t()).float()
        loss = F.cross_entropy(logits, targets, label_smoothing=0.1)
    elif variant == "torch_ual":
        logits = (hidden @ weight.t()).float()
        loss = smoothed_cross_entropy(logits, targets, smoothing)
    elif variant == "ual_linear":
        loss = linear_smoothed_cross_entropy(hidden, weight, targets, smoothing, **_UAL_OPTIONS)
    elif variant in ("ual_linear_torch", "ual_linear_triton"):
        kernel = variant.rsplit("_", 1)[1]
        loss = linear_smoothed_cross_entropy(hidden, weight, targets, smoothing, kernel=kernel, **_UAL_OPTIONS)
    elif variant == "liger_flce":
        loss = _liger_loss()(weight, hidden, targets)
    elif variant == "cce":
        from cut_cross_entropy import linear_cross_entropy

        loss = linear_cross_entropy(hidden, weight, targets)
    else:
        raise ValueError(variant)
    loss.backward()


def time_interleaved(args, variants) -> dict[str, list[float]]:
    """Seconds per fwd+bwd of each variant, the variants interleaved round by round."""
    inputs = make_inputs(args.n, args.h, args.v, DTYPES[args.dtype], args.device, args.ignore_frac)
    for var in variants:  # warm-up (kernel compilation, autotuning, allocator)
        step(var, *inputs)
    sync(args.device)
    times = {v: [] for v in variants}
    for _ in range(args.reps):
        for var in variants:
            sync(args.device)
            t = time.perf_counter()
            step(var, *inputs)
            sync(args.device)
            times[var].append(time.perf_counter() - t)
    return times


def ratio(times: dict[str, list[float]], var: str, ref: str) -> float:
    """Median of the per-round ratios var / ref (robust to drifting machine load)."""
    return statistics.median(a / b for a, b in zip(times[var], times[ref], strict=True))


def measure_memory_here(args, variant: str) -> float:
    """Peak bytes above the inputs for one step of ``variant``, in this process."""
    inputs = make_inputs(args.n, args.h, args.v, DTYPES[args.dtype], args.device, args.ignore_frac)
    step(variant, *inputs)  # warm-up (allocates .grad once, as in training)
    return peak_bytes(lambda: step(variant, *inputs), args.device)


def measure_memory(args, variant: str) -> float:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
    cmd = [sys.executable, __file__, "--device", args.device, "--n", str(args.n), "--h", str(args.h),
           "--v", str(args.v), "--dtype", args.dtype, "--ignore-frac", str(args.ignore_frac), "--memory-of", variant]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"])


def table(args, variants: tuple[str, ...]) -> str:
    """One shape: time and memory of every variant, with ratios against the first and against Liger."""
    times = time_interleaved(args, variants)
    # CUDA's allocator counts peaks per process exactly, so CUDA measures here; CPU needs a fresh process
    measure = measure_memory_here if args.device == "cuda" else measure_memory
    memory = {v: measure(args, v) for v in variants}
    base = variants[0]
    refs = [base] + [r for r in ("liger_flce", "gemm_floor") if r in variants and r != base]
    head = (f"N={args.n} H={args.h} V={args.v}, {args.dtype}, {args.ignore_frac:.0%} of targets ignored, "
            f"{args.reps} interleaved rounds, device {device_name(args.device)}\n\n")
    cols = "".join(f" time vs {r} |" for r in refs) + f" peak memory | memory vs {base} |"
    cols += " memory vs liger_flce |" if "liger_flce" in variants and base != "liger_flce" else ""
    lines = [f"| variant | median fwd+bwd |{cols}", "|---|---|" + "---|" * (cols.count("|"))]
    for var in variants:
        row = f"| {var} | {1000 * statistics.median(times[var]):.1f} ms |"
        row += "".join(f" {ratio(times, var, r):.2f}x |" for r in refs)
        row += f" {memory[var] / 2**20:.1f} MiB | {memory[var] / memory[base]:.3f}x |"
        if "liger_flce" in variants and base != "liger_flce":
            row += f" {memory[var] / memory['liger_flce']:.3f}x |"
        lines.append(row)
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", choices=["gpu"], help="gpu: both target shapes, bf16, no ignored targets")
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--h", type=int, default=256)
    p.add_argument("--v", type=int, default=32000)
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--ignore-frac", type=float, default=0.1, help="fraction of targets set to ignore_index")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--chunk-size", type=int, help="tokens per chunk for the ual_* variants (default: their own)")
    p.add_argument("--variants", help="comma-separated; default: all that run on the device")
    p.add_argument("--write", action="store_true", help="write the table(s) into benchmarks/RESULTS.md")
    p.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.chunk_size:
        _UAL_OPTIONS["chunk_size"] = args.chunk_size
    if args.memory_of:
        print(json.dumps({"peak_bytes": measure_memory_here(args, args.memory_of)}))
        return 0
    wanted = args.variants.split(",") if args.variants else CUDA_DEFAULT if args.device == "cuda" else CPU_DEFAULT
    unknown = set(wanted) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    variants = tuple(v for v in wanted if available(v, args.device))
    skipped = [v for v in wanted if v not in variants]
    if skipped:
        print(f"skipped (not installed or not on {args.device}): {', '.join(skipped)}")
    shapes = [(args.n, args.h, args.v)]
    if args.preset == "gpu":
        shapes, args.dtype, args.ignore_frac = list(GPU_SHAPES), "bf16", 0.0
    body = provenance(args.device) + "\n"
    print(body, flush=True)
    for args.n, args.h, args.v in shapes:
        part = table(args, variants)
        print(part, flush=True)
        body += part + "\n"
    if args.write:
        write_section("loss-gpu" if args.device == "cuda" else "loss-cpu", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
