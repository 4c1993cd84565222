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
  ual_linear_bf16acc ual_linear with accum_dtype=bf16 (Liger's default accumulator contract)
  gemm_floor        the three bare GEMMs of any linear cross-entropy (logits, grad hidden, grad
                    weight) and nothing else: the time floor
  liger_flce        Liger-Kernel's fused linear cross-entropy, scalar label_smoothing=0.1, its default
                    accumulation in the weight's dtype (CUDA, or TRITON_INTERPRET=1)
  liger_flce_fp32   the same with accum_dtype=torch.float32 (UAL's default accumulator contract)
  cce               Cut Cross-Entropy's linear_cross_entropy, no smoothing, its default gradient
                    filtering (CUDA)
  cce_exact         the same without gradient filtering: impl="cce_exact" where the installed
                    version has it, else filter_eps=None (CUDA)

Inputs: "uniform" logits (hidden 0.5 x randn, head 0.02 x randn: nearly uniform softmax, std about
0.64 at H=4096) or "peaked" ones (std 3, each target raised to the other logits' log-sum-exp, so the
target holds about half the probability, as in a trained model): CCE's gradient filter skips far
more of the vocabulary on uniform logits than a real model allows. The header gives the logits'
measured std and mean target probability.

Time: the variants run interleaved in one process, in a fresh random order each round; we report
medians (on CUDA from CUDA events around each step, beside the wall time) and the median of
per-round ratios against the references. Memory: the peak above the inputs and the previous step's
gradients (each step frees them first). On CUDA, torch.cuda.max_memory_allocated around one
warmed-up step, in the same process (the allocator counts exactly); on CPU each variant runs in a
fresh process and the peak is VmHWM - VmRSS around one warmed-up step (after resetting VmHWM
through /proc/self/clear_refs, with MALLOC_MMAP_THRESHOLD_ so big buffers are returned to the OS).

    python benchmarks/loss_bench.py                       # CPU, N=2048 H=256 V=32000
    python benchmarks/loss_bench.py --preset gpu --write   # CUDA, both target shapes, bf16, peaked, into RESULTS.md
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from peak_memory import peak_bytes, sync
from results_md import device_name, provenance, write_section

from ual_plugin import linear_smoothed_cross_entropy, smoothed_cross_entropy

VARIANTS = ("torch_ls", "torch_ual", "ual_linear", "ual_linear_torch", "ual_linear_triton", "ual_linear_bf16acc",
            "gemm_floor", "liger_flce", "liger_flce_fp32", "cce", "cce_exact")
CPU_DEFAULT = ("torch_ls", "torch_ual", "ual_linear")
CUDA_DEFAULT = ("torch_ls", "gemm_floor", "liger_flce", "liger_flce_fp32", "cce", "cce_exact", "ual_linear",
                "ual_linear_bf16acc")
# The weight-gradient accumulator of the fused variants: memory is compared between like contracts.
ACCUMULATOR = {"ual_linear": "fp32", "ual_linear_torch": "fp32", "ual_linear_triton": "fp32",
               "ual_linear_bf16acc": "weight dtype", "liger_flce": "weight dtype", "liger_flce_fp32": "fp32"}
SAME_CONTRACT_LIGER = {"fp32": "liger_flce_fp32", "weight dtype": "liger_flce"}
PEAKED_STD = 3.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The shapes of the GPU targets: Llama-3's vocabulary, and a 32k vocabulary at twice the tokens.
GPU_SHAPES = ((8192, 4096, 128256), (16384, 4096, 32000))
_NEEDS = {"liger_flce": "liger_kernel", "liger_flce_fp32": "liger_kernel", "cce": "cut_cross_entropy",
          "cce_exact": "cut_cross_entropy"}
_TRITON = ("ual_linear_triton", "liger_flce", "liger_flce_fp32")  # CUDA, or Triton's CPU interpreter


def available(variant: str, device: str) -> bool:
    if variant.startswith("cce") and device != "cuda":
        return False
    if variant in _TRITON and not (device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    return variant not in _NEEDS or importlib.util.find_spec(_NEEDS[variant]) is not None


def make_inputs(n: int, h: int, v: int, dtype: torch.dtype, device: str, ignore_frac: float = 0.1, seed: int = 0,
                logits: str = "uniform"):
    """hidden [n, h] and head [v, h] in ``dtype`` (leaf tensors), targets with ``ignore_frac`` ignored, and
    per-token smoothing; ``logits`` "uniform" or "peaked" (see the module docstring)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(n, h, generator=g) * 0.5
    weight = torch.randn(v, h, generator=g) * (0.02 if logits == "uniform" else PEAKED_STD / (0.5 * h**0.5))
    targets = torch.randint(0, v, (n,), generator=g)
    if logits == "peaked":  # raise each target's logit by the others' expected log-sum-exp, log V + std^2 / 2
        w_t = weight[targets]
        hidden += (math.log(v) + PEAKED_STD**2 / 2) * w_t / w_t.square().sum(dim=1, keepdim=True)
    elif logits != "uniform":
        raise ValueError(f"logits must be 'uniform' or 'peaked'; got {logits!r}")
    hidden = hidden.to(device=device, dtype=dtype).requires_grad_()
    weight = weight.to(device=device, dtype=dtype).requires_grad_()
    targets = targets.to(device)
    targets[: int(n * ignore_frac)] = -100  # ignored (prompt) tokens, as in SFT
    smoothing = (torch.rand(n, generator=g) * 0.2).to(device)
    return hidden, weight, targets, smoothing


@torch.no_grad()
def logit_stats(hidden, weight, targets, rows: int = 1024) -> tuple[float, float]:
    """Mean per-row std of the logits and mean softmax probability of the (non-ignored) targets."""
    stds, probs = [], []
    for start in range(0, hidden.shape[0], rows):
        z = (hidden[start : start + rows] @ weight.t()).float()
        t = targets[start : start + rows]
        keep = t != -100
        stds.append(z.std(dim=1))
        probs.append(z.log_softmax(dim=1)[keep].gather(1, t[keep].unsqueeze(1)).exp().squeeze(1))
    return float(torch.cat(stds).mean()), float(torch.cat(probs).mean())


_LIGER = {}
_UAL_OPTIONS: dict = {}  # extra keyword arguments for the ual_* variants (--chunk-size)


def _liger_loss(accum_dtype: torch.dtype | None):
    if accum_dtype not in _LIGER:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        extra = {} if accum_dtype is None else {"accum_dtype": accum_dtype}
        _LIGER[accum_dtype] = LigerFusedLinearCrossEntropyLoss(label_smoothing=0.1, **extra)
    return _LIGER[accum_dtype]


@functools.cache
def _cce_exact_options() -> dict:
    """CCE without gradient filtering: its own "cce_exact" preset where it has one, else filter_eps=None."""
    from cut_cross_entropy import LinearCrossEntropyImpl

    names = {impl.name.lower() for impl in LinearCrossEntropyImpl}
    return {"impl": "cce_exact"} if "cce_exact" in names else {"filter_eps": None}


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
    elif variant == "ual_linear_bf16acc":
        loss = linear_smoothed_cross_entropy(hidden, weight, targets, smoothing, accum_dtype=weight.dtype,
                                             **_UAL_OPTIONS)
    elif variant in ("liger_flce", "liger_flce_fp32"):
        loss = _liger_loss(torch.float32 if variant.endswith("fp32") else None)(weight, hidden, targets)
    elif variant in ("cce", "cce_exact"):
        from cut_cross_entropy import linear_cross_entropy

        loss = linear_cross_entropy(hidden, weight, targets, **(_cce_exact_options() if variant == "cce_exact" else {}))
    else:
        raise ValueError(variant)
    loss.backward()


def timed_step(variant: str, inputs, device: str) -> tuple[float, float]:
    """(wall seconds, device seconds) of one fwd+bwd; on CUDA the second comes from CUDA events around
    the step (without the launch latency that the wall time adds), elsewhere it equals the first."""
    events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if device == "cuda" else None
    sync(device)
    t = time.perf_counter()
    if events:
        events[0].record()
    step(variant, *inputs)
    if events:
        events[1].record()
    sync(device)
    wall = time.perf_counter() - t
    return wall, events[0].elapsed_time(events[1]) / 1000 if events else wall


def time_interleaved(args, variants, inputs) -> dict[str, dict[str, list[float]]]:
    """Wall and device seconds per fwd+bwd of each variant, in a fresh random order every round."""
    for var in variants:  # warm-up (kernel compilation, autotuning, allocator)
        step(var, *inputs)
    sync(args.device)
    rng = random.Random(args.seed)
    times = {v: {"wall": [], "device": []} for v in variants}
    for _ in range(args.reps):
        for var in rng.sample(variants, len(variants)):
            wall, dev = timed_step(var, inputs, args.device)
            times[var]["wall"].append(wall)
            times[var]["device"].append(dev)
    return times


def ratio(times: dict[str, list[float]], var: str, ref: str) -> float:
    """Median of the per-round ratios var / ref (robust to drifting machine load)."""
    return statistics.median(a / b for a, b in zip(times[var], times[ref], strict=True))


def bench_inputs(args):
    return make_inputs(args.n, args.h, args.v, DTYPES[args.dtype], args.device, args.ignore_frac, logits=args.logits)


def measure_memory_here(args, variant: str, inputs=None) -> float:
    """Peak bytes above the inputs and the previous step's gradients for one step of ``variant``, in this process."""
    inputs = inputs or bench_inputs(args)
    step(variant, *inputs)  # warm-up (allocates .grad once, as in training)
    return peak_bytes(lambda: step(variant, *inputs), args.device)


def measure_memory(args, variant: str) -> float:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
    cmd = [sys.executable, __file__, "--device", args.device, "--n", str(args.n), "--h", str(args.h),
           "--v", str(args.v), "--dtype", args.dtype, "--ignore-frac", str(args.ignore_frac), "--logits", args.logits,
           "--memory-of", variant]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"])


def table(args, variants: tuple[str, ...]) -> str:
    """One shape: time and memory of every variant, with ratios against the first variant, the floor and Liger."""
    inputs = bench_inputs(args)
    std, p_target = logit_stats(*inputs[:3])
    times = time_interleaved(args, variants, inputs)
    # CUDA's allocator counts peaks per process exactly, so CUDA measures here; CPU needs a fresh process
    memory = {v: measure_memory_here(args, v, inputs) if args.device == "cuda" else measure_memory(args, v)
              for v in variants}
    primary = {v: t["device"] for v, t in times.items()}
    refs = list(dict.fromkeys([variants[0]] + [r for r in ("gemm_floor", "liger_flce", "liger_flce_fp32")
                                                if r in variants]))
    clock = "CUDA events" if args.device == "cuda" else "wall"
    head = (f"N={args.n} H={args.h} V={args.v}, {args.dtype}, {args.ignore_frac:.0%} of targets ignored, {args.logits} "
            f"logits (std {std:.2f}, mean target probability {p_target:.3f}), {args.reps} rounds in random order, "
            f"device {device_name(args.device)}. Times: medians ({clock}"
            f"{'; wall time beside them' if args.device == 'cuda' else ''}); ratios: medians of per-round ratios. "
            "Memory: peak above the inputs and the previous step's gradients.\n\n")
    wall_col = " median wall |" if args.device == "cuda" else ""
    cols = (f" accumulator | median fwd+bwd |{wall_col}" + "".join(f" time vs {r} |" for r in refs)
            + " peak memory | memory vs Liger, same accumulator |")
    lines = [f"| variant |{cols}", "|---|" + "---|" * cols.count("|")]
    for var in variants:
        row = f"| {var} | {ACCUMULATOR.get(var, '')} | {1000 * statistics.median(primary[var]):.1f} ms |"
        if wall_col:
            row += f" {1000 * statistics.median(times[var]['wall']):.1f} ms |"
        row += "".join(f" {ratio(primary, var, r):.2f}x |" for r in refs)
        liger = SAME_CONTRACT_LIGER.get(ACCUMULATOR.get(var, ""))
        same = f"{memory[var] / memory[liger]:.3f}x" if liger in memory and memory[liger] > 0 else ""
        lines.append(row + f" {memory[var] / 2**20:.1f} MiB | {same} |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", choices=["gpu"], help="gpu: both target shapes, bf16, no ignored targets, peaked logits")
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--h", type=int, default=256)
    p.add_argument("--v", type=int, default=32000)
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--ignore-frac", type=float, default=0.1, help="fraction of targets set to ignore_index")
    p.add_argument("--logits", choices=["uniform", "peaked"], default="uniform", help="input logits (see above)")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--seed", type=int, default=0, help="seed of the variants' order in each round")
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
        shapes, args.dtype, args.ignore_frac, args.logits = list(GPU_SHAPES), "bf16", 0.0, "peaked"
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
