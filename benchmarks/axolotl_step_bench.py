"""Training-step time and peak memory of the real ``axolotl train``: UAL vs default loss vs Liger, in one run.

Variants (one ``axolotl train`` subprocess each, same model, data and config otherwise):
  ual      plugins: [ual_plugin.axolotl.UALPlugin], ual: true (per-sample smoothing, chunked loss)
  default  no loss plugin: transformers builds the full [tokens x vocab] logits
  liger    plugins: [axolotl.integrations.liger.LigerPlugin], liger_fused_linear_cross_entropy: true
           (needs a CUDA GPU: skipped with a note on CPU)

The model is a randomly initialised Llama built and saved locally, with a locally trained tokenizer
(smaller than the model's vocabulary); the data is a seeded chat_template JSONL with an ``uncertainty``
column (shared by all variants): short samples, packed densely into rows of sequence_len tokens, and more
of them than the steps use. A small Axolotl plugin
(``axolotl_step_timer.StepTimerPlugin``, found through PYTHONPATH) times each optimizer step
(forward, backward, optimizer update; ``torch.cuda.synchronize()`` at both ends on a GPU) and records
peak memory over the measured steps (GPU: ``torch.cuda.max_memory_allocated``, which includes the
weights; CPU: the training process's peak RSS, ``VmHWM``). We report the median over ``--steps``
steps after ``--warmup`` steps, and check from the log that UAL was active exactly in the ``ual`` run.

    python benchmarks/axolotl_step_bench.py --preset cpu-tiny         # CPU smoke run, a few minutes
    python benchmarks/axolotl_step_bench.py --preset llama3-8b-lora   # one GPU: Llama-3-8B shape, LoRA, bf16
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
VARIANTS = ("ual", "default", "liger")
LABELS = {"ual": "ual (UAL plugin)", "default": "default (Axolotl loss)", "liger": "liger (fused linear CE)"}
PLUGINS = {"ual": ["ual_plugin.axolotl.UALPlugin"], "default": [], "liger": ["axolotl.integrations.liger.LigerPlugin"]}
TIMER_PLUGIN = "axolotl_step_timer.StepTimerPlugin"
TIMER_OUT_ENV, TIMER_WARMUP_ENV = "AXOLOTL_STEP_TIMER_OUT", "AXOLOTL_STEP_TIMER_WARMUP"  # read by TIMER_PLUGIN

PRESETS: dict[str, dict[str, Any]] = {
    "cpu-tiny": dict(hidden=64, layers=2, heads=4, kv_heads=4, inter=128, vocab=4096, tokenizer_vocab=2048,
                     seq=256, micro_batch=1, dtype="fp32", steps=6, warmup=2),
    "llama3-8b-lora": dict(hidden=4096, layers=32, heads=32, kv_heads=8, inter=14336, vocab=128256,
                           tokenizer_vocab=8192, seq=4096, micro_batch=1, dtype="bf16", steps=10, warmup=3),
}


# ----------------------------------------------------------------------------- data and model

def make_words(rng: random.Random, n: int = 4000) -> list[str]:
    syllables = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def sentence_text(rng: random.Random, words: list[str], n_words: int) -> str:
    out, since_stop = [], 0
    for _ in range(n_words):
        out.append(rng.choice(words))
        since_stop += 1
        if since_stop > 6 and rng.random() < 0.12:
            out[-1] += "."
            since_stop = 0
    return " ".join(out).capitalize() + "."


def build_tokenizer(p: dict[str, Any], words: list[str], out: Path):
    from ual_plugin.demo.tiny import build_tokenizer as train_tokenizer

    tok = train_tokenizer([" ".join(words[i : i + 50]) for i in range(0, len(words), 50)],
                          vocab_size=p["tokenizer_vocab"])
    tok.save_pretrained(out)
    return tok


def write_dataset(p: dict[str, Any], tok, words: list[str], rng: random.Random, n_steps: int, path: Path) -> dict:
    """Chat rows (prompt seq/64..seq/16 tokens, reply seq/32..seq/6: short enough to pack densely) with a float
    ``uncertainty`` column: enough rows for ``n_steps`` packed batches with room to spare."""
    seq = p["seq"]
    probe = sentence_text(rng, words, 400)
    tokens_per_word = len(tok(probe, add_special_tokens=False)["input_ids"]) / 400
    target = int(1.5 * n_steps * p["micro_batch"] * seq) + 4 * seq
    rows, total = [], 0
    while total < target:
        n_user, n_answer = (int(rng.uniform(seq / lo, seq / hi) / tokens_per_word) for lo, hi in ((64, 16), (32, 6)))
        user = sentence_text(rng, words, max(n_user, 2))
        answer = sentence_text(rng, words, max(n_answer, 4))
        n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in (user, answer)) + 8
        if n_tokens >= seq:
            continue
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                     "uncertainty": round(rng.uniform(1.0, 100.0), 3)})
        total += n_tokens
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {"rows": len(rows), "tokens": total}


def build_model_here(p: dict[str, Any], model_dir: Path) -> None:
    """Randomly initialise a LlamaForCausalLM of the preset's shape (on the GPU when there is one) and save it."""
    from random_llama import llama_config, preset_dtype
    from transformers import AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = llama_config(p, max(8192, 2 * p["seq"]), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM._from_config(cfg, dtype=preset_dtype(p))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(model_dir)


def prepare_work_dir(preset: str, work: Path, n_steps: int) -> Path:
    """Tokenizer, model and dataset under ``work`` (a model already built there for ``preset`` is reused)."""
    p = PRESETS[preset]
    model_dir, marker = work / "model", work / "model" / "bench_preset.json"
    rng = random.Random(0)
    words = make_words(rng)
    reuse = marker.exists() and json.loads(marker.read_text()) == {"preset": preset, **p}
    if not reuse:
        shutil.rmtree(model_dir, ignore_errors=True)
        model_dir.mkdir(parents=True)
    tok = build_tokenizer(p, words, model_dir)
    info = write_dataset(p, tok, words, rng, n_steps, work / "data" / "chat.jsonl")
    print(f"data: {info['rows']} chat rows, ~{info['tokens']} tokens (tokenizer: {len(tok)} tokens, "
          f"model vocab {p['vocab']})", flush=True)
    if reuse:
        print(f"model: reusing {model_dir}", flush=True)
    else:
        print(f"model: building a random {preset} Llama in {model_dir}", flush=True)
        subprocess.run([sys.executable, __file__, "--preset", preset, "--build-model", str(model_dir)], check=True)
        marker.write_text(json.dumps({"preset": preset, **p}))
    return model_dir


# ----------------------------------------------------------------------------- axolotl runs

def attention(device: str) -> str:
    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"  # packed rows go through Axolotl's varlen / block-diagonal sdpa path


def axolotl_config(p: dict[str, Any], variant: str, work: Path, model_dir: Path, device: str,
                   n_steps: int) -> dict[str, Any]:
    gpu = device == "cuda"
    cfg: dict[str, Any] = {
        "base_model": str(model_dir),
        "plugins": PLUGINS[variant] + [TIMER_PLUGIN],
        "datasets": [{"path": str(work / "data" / "chat.jsonl"), "type": "chat_template", "ds_type": "json"}],
        "chat_template": "tokenizer_default",
        "dataset_prepared_path": str(work / "prepared" / variant),
        "output_dir": str(work / "runs" / variant),
        "val_set_size": 0,
        "sequence_len": p["seq"],
        "sample_packing": True,
        "pad_to_sequence_len": True,
        "eval_sample_packing": False,
        "adapter": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "lora_target_linear": True,
        "micro_batch_size": p["micro_batch"],
        "gradient_accumulation_steps": 1,
        "max_steps": n_steps,
        "learning_rate": 2e-4,
        "optimizer": "adamw_torch_fused" if gpu else "adamw_torch",
        "lr_scheduler": "constant",
        "gradient_checkpointing": True,
        "attn_implementation": attention(device),
        "bf16": p["dtype"] == "bf16",
        "fp16": False,
        "tf32": gpu,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "dataset_num_proc": 1,
        "dataloader_num_workers": 0,
    }
    if not gpu:  # Axolotl's fused LoRA kernels are Triton (GPU) only
        cfg.update(lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False, lora_embedding_kernel=False)
    if variant == "ual":
        cfg.update(ual=True, ual_alpha=0.1)
    elif variant == "liger":
        cfg.update(liger_fused_linear_cross_entropy=True)
    return cfg


def run_env(work: Path, timer_out: Path, warmup: int) -> dict[str, str]:
    from ual_plugin.demo.axolotl_run import demo_env

    env = demo_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(BENCH_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HF_DATASETS_CACHE"] = str(work / "hf_datasets_cache")
    env[TIMER_OUT_ENV] = str(timer_out)
    env[TIMER_WARMUP_ENV] = str(warmup)
    return env


def check_run(variant: str, parsed: dict[str, Any], timer: dict[str, Any], n_steps: int) -> str | None:
    """Why the run contradicts ``variant`` (UAL on exactly in ``ual``; Liger's forward exactly in ``liger``;
    all steps timed), or None. ``parsed``: ``parse_log`` of its output."""
    if not parsed["train"]:
        return "no training metrics in the log"
    smoothing = [m for m in parsed["train"] if "ual_smoothing" in m]
    if variant == "ual" and (parsed["banner"] is None or len(smoothing) != len(parsed["train"])):
        return "UAL was NOT active (no 'UAL active' banner or no ual_smoothing metric)"
    if variant != "ual" and (parsed["banner"] is not None or smoothing):
        return "UAL was active in a run that should train without it"
    if (variant == "liger") != ("liger_kernel" in timer["lm_forward"]):
        return f"unexpected model forward {timer['lm_forward']} (Liger's patch belongs to liger runs only)"
    if len(timer["step_seconds"]) < n_steps:
        return f"only {len(timer['step_seconds'])} of {n_steps} steps ran"
    return None


def run_axolotl(variant: str, cfg: dict[str, Any], work: Path, warmup: int) -> tuple[int, str, Path]:
    """Write ``cfg`` and run ``axolotl train`` on it: exit status, output, the step timer's JSON path."""
    for d in ("configs", "runs"):
        (work / d).mkdir(parents=True, exist_ok=True)
    config = work / "configs" / f"{variant}.yml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    timer_out, log = work / "runs" / f"{variant}.steps.json", work / "runs" / f"{variant}.log"
    timer_out.unlink(missing_ok=True)
    axolotl = os.path.join(os.path.dirname(sys.executable), "axolotl")
    print(f"[{variant}] axolotl train {config}  (log: {log})", flush=True)
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run([axolotl, "train", str(config)], env=run_env(work, timer_out, warmup), cwd=work,
                              stdout=f, stderr=subprocess.STDOUT)
    return proc.returncode, log.read_text(encoding="utf-8", errors="replace"), timer_out


def run_variant(p: dict[str, Any], variant: str, work: Path, model_dir: Path, device: str, steps: int,
                warmup: int) -> dict[str, Any]:
    """One variant's step times and peak memory (the timer's JSON) plus its median step and UAL status."""
    from ual_plugin.demo.axolotl_run import parse_log

    cfg = axolotl_config(p, variant, work, model_dir, device, warmup + steps)
    rc, text, timer_out = run_axolotl(variant, cfg, work, warmup)
    if rc != 0:
        problem = f"axolotl train exited with {rc}"
    elif not timer_out.exists():
        problem = f"{TIMER_PLUGIN} wrote no step times (not importable from PYTHONPATH?)"
    else:
        result, parsed = json.loads(timer_out.read_text()), parse_log(text)
        problem = check_run(variant, parsed, result, warmup + steps)
    if problem is not None:
        print("\n".join(text.splitlines()[-60:]))
        raise RuntimeError(f"[{variant}] {problem}; full log: {work / 'runs' / (variant + '.log')}")
    smoothing = [m["ual_smoothing"] for m in parsed["train"] if "ual_smoothing" in m]
    result["ual"] = (f"on ({result['trainer_cls']}, mean ual_smoothing {statistics.mean(smoothing):.4f})"
                     if smoothing else f"off ({result['trainer_cls']})")
    result["median_s"] = statistics.median(result["step_seconds"][warmup:])
    print(f"[{variant}] median step {1000 * result['median_s']:.1f} ms, peak {result['peak_bytes'] / 2**20:.0f} MiB, "
          f"UAL {result['ual']}", flush=True)
    return result


# ----------------------------------------------------------------------------- report

def table(results: dict[str, dict[str, Any]]) -> str:
    base = results["default"]
    lines = ["| variant | median step | time vs default | peak memory | memory vs default |", "|---|---|---|---|---|"]
    for v, r in results.items():
        lines.append(f"| {LABELS[v]} | {1000 * r['median_s']:.1f} ms | {r['median_s'] / base['median_s']:.3f}x "
                     f"| {r['peak_bytes'] / 2**20:.0f} MiB | {r['peak_bytes'] / base['peak_bytes']:.3f}x |")
    return "\n".join(lines)


def report(preset: str, device: str, steps: int, warmup: int, results: dict[str, dict[str, Any]]) -> str:
    from results_md import device_name

    p = PRESETS[preset]
    kind = next(iter(results.values()))["memory_kind"]
    head = (f"preset={preset} (hidden {p['hidden']}, {p['layers']} layers, vocab {p['vocab']}, {p['dtype']}, LoRA r=16, "
            f"sequence_len {p['seq']}, micro batch {p['micro_batch']}, sample packing, gradient checkpointing, "
            f"{attention(device)}), device={device_name(device)}; median of {steps} steps after {warmup} warm-up "
            f"steps; peak memory = {kind} over the measured steps")
    lines = [head, "", table(results), ""]
    for v, r in results.items():
        above = r["peak_bytes"] - (r["start_bytes"] or 0)
        lines.append(f"- {v}: UAL {r['ual']}; forward {r['lm_forward']}; peak {above / 2**20:.0f} MiB above the "
                     "memory at the step's start")
    if "liger" in results and "ual" in results:
        u, lg = results["ual"], results["liger"]
        lines.append(f"- ual vs liger: time {u['median_s'] / lg['median_s']:.3f}x, "
                     f"peak memory {u['peak_bytes'] / lg['peak_bytes']:.3f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="cpu-tiny")
    ap.add_argument("--steps", type=int, help="measured steps (default: per preset)")
    ap.add_argument("--warmup", type=int, help="warm-up steps before them (default: per preset)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--keep", action="store_true", help="keep the work folder (model, data, configs, logs)")
    ap.add_argument("--work-dir", type=Path,
                    help="use this folder (kept; a model already built there for the preset is reused)")
    ap.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    ap.add_argument("--build-model", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    p = PRESETS[args.preset]
    if args.build_model:
        build_model_here(p, args.build_model)
        return 0
    steps = args.steps if args.steps is not None else p["steps"]
    warmup = args.warmup if args.warmup is not None else p["warmup"]
    if steps < 1 or warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown or "default" not in variants:
        ap.error(f"--variants: choose from {', '.join(VARIANTS)}, including default (got {args.variants})")
    if "liger" in variants and device != "cuda":
        print("note: skipping liger: Liger's fused linear cross-entropy needs a CUDA GPU", flush=True)
        variants.remove("liger")
    work = args.work_dir.resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="axolotl_step_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    done = False
    try:
        model_dir = prepare_work_dir(args.preset, work, warmup + steps)
        results = {}
        for v in variants:
            try:
                results[v] = run_variant(p, v, work, model_dir, device, steps, warmup)
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                return 1
        done = True
    finally:
        if args.keep or args.work_dir or not done:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = report(args.preset, device, steps, warmup, results)
    print("\n" + text)
    if args.write:
        from results_md import provenance, write_section

        write_section(f"axolotl-step-{args.preset}", provenance(device) + "\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
