"""Training-step time and peak memory: UALSFTTrainer vs stock SFTTrainer, side by side in one run.

Both trainers wrap identical randomly initialised Llama models and see the same pre-tokenized
rows (labels on the second half of each sequence, as with completion-only loss), with the
precision ``SFTConfig`` resolves by default (bf16 autocast, on CPU too). Steps run through the
trainer's own ``train()``, so accelerate's model wrapper (autocast and the fp32 output
conversion) is inside the measurement; a callback times each optimizer step (forward, backward,
clipping, AdamW update) from ``on_step_begin`` to ``on_step_end``. Time: interleaved rounds of a
few ``train()`` steps each (the first step of a round is a warm-up), median of per-round ratios.
Memory: a fresh process per variant, peak around a second one-step ``train()`` (CPU: VmHWM -
VmRSS with MALLOC_MMAP_THRESHOLD_; CUDA: max_memory_allocated above the state before it).

    python benchmarks/train_step_bench.py                          # CPU, small Llama
    python benchmarks/train_step_bench.py --preset llama3-8b-lora  # GPU: Llama-3-8B shape, LoRA, bf16
    python benchmarks/train_step_bench.py --compare label-smoothing  # ual_mode='uniform' vs label_smoothing_factor
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from peak_memory import peak_bytes, sync
from results_md import provenance, write_section
from transformers import TrainerCallback

PRESETS = {
    "cpu-small": dict(hidden=256, layers=4, heads=4, kv_heads=4, inter=688, vocab=32000, seq=256, batch=4,
                      lora=False, dtype="fp32"),  # fp32 weights, trained under SFTConfig's default bf16 autocast
    "llama3-8b-lora": dict(hidden=4096, layers=32, heads=32, kv_heads=8, inter=14336, vocab=128256, seq=4096,
                           batch=1, lora=True, dtype="bf16"),
}


# the baseline first
COMPARISONS = {"nll": ("stock", "ual"), "label-smoothing": ("stock_ls", "uniform")}
LABELS = {"stock": "stock SFTTrainer", "ual": "UALSFTTrainer", "stock_ls": "stock SFTTrainer, label_smoothing_factor=0.1",
          "uniform": "UALSFTTrainer, ual_mode='uniform', ual_alpha=0.1"}


def build_trainer(p: dict, variant: str, device: str, out_dir: str, fp32: bool = False):
    from datasets import Dataset
    from random_llama import llama_config, preset_dtype
    from transformers import LlamaForCausalLM

    from ual_plugin.trl import UALSFTConfig, UALSFTTrainer

    torch.manual_seed(0)
    cfg = llama_config(p)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(preset_dtype(p))
    if p["lora"]:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(p["batch"] * STEPS_PER_ROUND):
        ids = torch.randint(10, p["vocab"], (p["seq"],), generator=g).tolist()
        labels = [-100] * (p["seq"] // 2) + ids[p["seq"] // 2 :]
        rows.append({"input_ids": ids, "labels": labels, "uncertainty": float(torch.rand(1, generator=g)) * 99})
    ds = Dataset.from_list(rows)
    if variant != "ual":
        ds = ds.remove_columns("uncertainty")
    extra = {"label_smoothing_factor": 0.1} if variant == "stock_ls" else {}
    if variant == "uniform":
        extra = {"ual_mode": "uniform"}
    args = UALSFTConfig(
        output_dir=out_dir, ual=(variant in ("ual", "uniform")), ual_alpha=0.1, per_device_train_batch_size=p["batch"],
        **extra,
        use_cpu=(device == "cpu"), report_to=[], save_strategy="no", logging_strategy="no",
        max_length=p["seq"], disable_tqdm=True, dataset_num_proc=None, gradient_checkpointing=(device != "cpu"),
        max_steps=STEPS_PER_ROUND, train_sampling_strategy="sequential", **({"bf16": False} if fp32 else {}),
    )  # bf16 left to SFTConfig's default (True), as users run it, unless --fp32
    # ual=False makes UALSFTTrainer exactly stock SFTTrainer (same class hierarchy, TRL's own loss path)
    from ual_plugin.demo.tiny import build_tokenizer

    trainer = UALSFTTrainer(model=model, args=args, train_dataset=ds, processing_class=build_tokenizer())
    timer = StepTimer(device)
    trainer.add_callback(timer)
    return trainer, timer


STEPS_PER_ROUND = 3


class StepTimer(TrainerCallback):
    """Records each optimizer step's wall time inside ``train()``."""

    def __init__(self, device: str) -> None:
        self.device, self.times, self._start = device, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        sync(self.device)
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        self.times.append(time.perf_counter() - self._start)


def train_round(trainer, timer: StepTimer, steps: int = STEPS_PER_ROUND) -> list[float]:
    """Step times of one ``train()`` call of ``steps`` steps (its first step is left out as a warm-up)."""
    trainer.args.max_steps = steps
    timer.times = []
    trainer.train()
    return timer.times[1:]


def memory_of(p: dict, variant: str, device: str, fp32: bool = False) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        trainer, timer = build_trainer(p, variant, device, tmp, fp32)
        train_round(trainer, timer, 1)  # warm-up: the optimizer state exists from here on
        sync(device)
        return peak_bytes(lambda: train_round(trainer, timer, 1), device)


def write_profiles(built: dict, device: str, path: str) -> None:
    """A round of each trainer's ``train()`` under torch.profiler: the kernel tables, by total device time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    key = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    with open(path, "w") as f:
        for v, parts in built.items():
            with torch.profiler.profile(activities=activities) as prof:
                train_round(*parts)
                sync(device)
            f.write(f"## {v}\n\n{prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70)}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="cpu-small")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--compare", choices=list(COMPARISONS), default="nll",
                    help="nll: UAL (column mode) vs stock SFTTrainer; label-smoothing: ual_mode='uniform' vs stock "
                    "SFTTrainer with label_smoothing_factor, both at 0.1")
    ap.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    ap.add_argument("--profile", help="also write a torch.profiler table of one step of each trainer to this file")
    ap.add_argument("--fp32", action="store_true", help="bf16=False instead of SFTConfig's default")
    ap.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    p = PRESETS[args.preset]
    os.environ.setdefault("WANDB_DISABLED", "true")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.memory_of:
        print(json.dumps({"peak_bytes": memory_of(p, args.memory_of, args.device, args.fp32)}))
        return 0
    variants = COMPARISONS[args.compare]
    with tempfile.TemporaryDirectory() as tmp:
        built = {v: build_trainer(p, v, args.device, os.path.join(tmp, v), args.fp32) for v in variants}
        for v in variants:
            train_round(*built[v])
        times = {v: [] for v in variants}
        for _ in range(args.reps):
            for v in variants:
                times[v].append(statistics.median(train_round(*built[v])))
        if args.profile:
            write_profiles(built, args.device, args.profile)
        precision = "bf16" if built[variants[0]][0].args.bf16 else "no"
        del built
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
    memory = {}
    for v in variants:
        out = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--device", args.device,
                              "--memory-of", v, *(["--fp32"] if args.fp32 else [])], env=env, capture_output=True, text=True, check=True)
        memory[v] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    import trl

    base = variants[0]
    lines = [provenance(args.device), f"preset={args.preset} {p}, {precision} autocast, "
             f"{args.reps} interleaved rounds of {STEPS_PER_ROUND} train() steps (the first a warm-up)\n",
             "| trl | trainer | median step | time vs stock | peak memory | memory vs stock |",
             "|---|---|---|---|---|---|"]
    for v in variants:
        ratio = statistics.median(a / b for a, b in zip(times[v], times[base], strict=True))
        lines.append(f"| {trl.__version__} | {LABELS[v]} "
                     f"| {1000 * statistics.median(times[v]):.0f} ms | {ratio:.3f}x | {memory[v] / 2**20:.0f} MiB "
                     f"| {memory[v] / memory[base]:.3f}x |")
    body = "\n".join(lines) + "\n"
    print(body)
    if args.write:
        suffix = ("" if args.compare == "nll" else f"-{args.compare}") + ("-fp32" if args.fp32 else "")
        write_section(f"train-step-{args.preset}-trl-{trl.__version__}{suffix}", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
