"""Where the time of one fused-loss step goes: a torch.profiler table per variant (GPU kernels by total time).

    python benchmarks/profile_loss.py --variants ual_linear_triton,liger_flce   # CUDA, Llama-3 shape, bf16
"""

from __future__ import annotations

import argparse

import torch
from loss_bench import DTYPES, VARIANTS, make_inputs, step
from peak_memory import sync
from results_md import provenance


def profile(variant: str, inputs, device: str, steps: int, rows: int) -> str:
    """Kernel table of ``steps`` warmed-up fwd+bwd steps of ``variant``."""
    step(variant, *inputs)
    sync(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step(variant, *inputs)
        sync(device)
    key = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", default="ual_linear_triton,liger_flce,gemm_floor")
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--h", type=int, default=4096)
    ap.add_argument("--v", type=int, default=128256)
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--logits", choices=["uniform", "peaked"], default="peaked", help="as in loss_bench.py")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=15)
    args = ap.parse_args(argv)
    print(provenance(args.device))
    inputs = make_inputs(args.n, args.h, args.v, DTYPES[args.dtype], args.device, ignore_frac=0.0, logits=args.logits)
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            ap.error(f"unknown variant {variant!r}; choose from {VARIANTS}")
        print(f"## {variant}: N={args.n} H={args.h} V={args.v} {args.dtype}, {args.steps} steps\n")
        print(profile(variant, inputs, args.device, args.steps, args.rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
