"""Forward+backward time and peak memory of UAL's chunked loss vs torch on materialised logits.

Variants (all compute gradients for hidden and weight):
  torch_ls    torch.nn.functional.cross_entropy(h @ W.T in fp32, label_smoothing=0.1): the native
              fused op with one scalar smoothing (the cheapest materialised baseline; it cannot do
              per-token smoothing at all)
  torch_ual   UAL with per-token smoothing on materialised fp32 logits (smoothed_cross_entropy)
  ual_linear  ual_plugin.linear_smoothed_cross_entropy, per-token smoothing, no [N, V] logits

Time: the variants run interleaved (A B A B ...) in one process; we report medians and the
median of per-round ratios against torch_ls. Memory: each variant runs in a fresh process; on
CPU the peak is VmHWM - VmRSS around one warmed-up step (after resetting VmHWM through
/proc/self/clear_refs, with MALLOC_MMAP_THRESHOLD_ so big buffers are returned to the OS); on
CUDA it is torch.cuda.max_memory_allocated above the inputs.

    python benchmarks/loss_bench.py                       # CPU, N=2048 H=256 V=32000
    python benchmarks/loss_bench.py --device cuda --n 16384 --h 4096 --v 32000 --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from peak_memory import peak_bytes

from ual_plugin import linear_smoothed_cross_entropy, smoothed_cross_entropy

VARIANTS = ("torch_ls", "torch_ual", "ual_linear")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_inputs(n: int, h: int, v: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g) * 0.5).to(device=device, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.02).to(device=device, dtype=dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    targets[: n // 10] = -100  # some ignored (prompt) tokens, as in SFT
    smoothing = (torch.rand(n, generator=g) * 0.2).to(device)
    return hidden, weight, targets, smoothing


def step(variant: str, hidden, weight, targets, smoothing) -> None:
    hidden.grad = None
    weight.grad = None
    if variant == "torch_ls":
        logits = (hidden @ weight.t()).float()
        loss = F.cross_entropy(logits, targets, label_smoothing=0.1)
    elif variant == "torch_ual":
        logits = (hidden @ weight.t()).float()
        loss = smoothed_cross_entropy(logits, targets, smoothing)
    elif variant == "ual_linear":
        loss = linear_smoothed_cross_entropy(hidden, weight, targets, smoothing)
    else:
        raise ValueError(variant)
    loss.backward()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(args, variants) -> dict:
    inputs = make_inputs(args.n, args.h, args.v, DTYPES[args.dtype], args.device)
    for var in variants:  # warm-up
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
    base = times[variants[0]]
    return {
        var: {
            "median_ms": 1000 * statistics.median(ts),
            "ratio_vs_" + variants[0]: statistics.median(a / b for a, b in zip(ts, base, strict=True)),
        }
        for var, ts in times.items()
    }


def measure_memory_here(args, variant: str) -> float:
    """Peak bytes above the inputs for one step of ``variant``, in this process."""
    inputs = make_inputs(args.n, args.h, args.v, DTYPES[args.dtype], args.device)
    step(variant, *inputs)  # warm-up (allocates .grad once, as in training)
    return peak_bytes(lambda: step(variant, *inputs), args.device)


def measure_memory(args, variant: str) -> float:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
    cmd = [sys.executable, __file__, "--device", args.device, "--n", str(args.n), "--h", str(args.h),
           "--v", str(args.v), "--dtype", args.dtype, "--memory-of", variant]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"])


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--h", type=int, default=256)
    p.add_argument("--v", type=int, default=32000)
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_of:
        print(json.dumps({"peak_bytes": measure_memory_here(args, args.memory_of)}))
        return 0
    variants = tuple(args.variants.split(","))
    timing = time_interleaved(args, variants)
    memory = {v: measure_memory(args, v) for v in variants}
    base = variants[0]
    print(f"\nN={args.n} H={args.h} V={args.v} dtype={args.dtype} device={args.device} ({machine()}), "
          f"torch {torch.__version__}, {args.reps} interleaved rounds")
    print(f"| variant | median fwd+bwd | time vs {base} | peak memory | memory vs {base} |")
    print("|---|---|---|---|---|")
    for var in variants:
        t = timing[var]
        print(f"| {var} | {t['median_ms']:.1f} ms | {t['ratio_vs_' + base]:.2f}x | {memory[var] / 2**20:.1f} MiB "
              f"| {memory[var] / memory[base]:.3f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
