"""The end-to-end demo: can UAL's claim show on a model that already knows things, and does it?

Stage 0 pre-trains a tiny local Llama once on a small world (categories with many valid members,
facts with one answer). Stage 1 fine-tunes it, per seed on a fresh draw of which members and facts
the chat rows show, in five arms with matched smoothing budgets (SFT, uniform per token, uniform per
sample, UAL, UAL-shuffled). Named primary endpoints are tested with paired 95 % CIs and Holm's
correction; the figure and ``summary.json`` hold every arm, seed and metric. Finally the same kind
of scored rows goes through the real ``axolotl train``. Everything is local (no API key, no hub).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ual_plugin.demo.arms import ARMS, trainer_options, training_rows


@dataclass
class DemoSettings:
    out_dir: Path = Path("ual_demo_output")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    alpha: float = 0.1
    pretrain_steps: int = 400
    pretrain_lr: float = 3e-3
    steps: int = 40
    batch_size: int = 32
    learning_rate: float = 5e-4
    hidden_size: int = 64
    layers: int = 2
    axolotl: bool = True
    axolotl_steps: int = 8


def quiet_environment() -> None:
    """Offline, no telemetry, and none of the start-up noise of packages the demo does not use.

    Axolotl's pins bring torchao and bitsandbytes, whose import-time warnings are muted (neither is
    used here). DeepSpeed (installed for multi-GPU runs) warns that it found no GPU unless told to use
    the CPU. The ``UAL active`` banners of the 20 stage-1 runs are muted too; the table states each
    arm's budget instead.
    """
    import logging
    import warnings

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for key, value in {
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_DISABLED": "true",
        "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
    }.items():
        os.environ.setdefault(key, value)
    for name in ("torch.utils._pytree", "bitsandbytes.backends.cpu.ops", "ual_plugin"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Skipping publisher trust check")
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    disable_progress_bar()


def single_thread() -> None:
    """One torch thread: a model this small gains nothing from a second, and on a busy machine a waiting
    thread team costs several times the work itself."""
    import torch

    torch.set_num_threads(1)


def _axolotl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("axolotl") is not None


def run_demo(s: DemoSettings) -> dict:
    quiet_environment()
    single_thread()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ual_plugin.demo.evaluate import METRICS, evaluate
    from ual_plugin.demo.figure import plot_results
    from ual_plugin.demo.ppl_means import format_ppl_means, ppl_mean_smoothing
    from ual_plugin.demo.pretrain import pretrain
    from ual_plugin.demo.report import (
        check_seeds,
        format_endpoints,
        format_table,
        overall,
        primary_endpoints,
        secondary,
        summarise,
    )
    from ual_plugin.demo.synthetic import write_jsonl
    from ual_plugin.demo.tiny import build_tiny_llama, build_word_tokenizer
    from ual_plugin.demo.train import TrainConfig, train_arm
    from ual_plugin.demo.world import World, finetuning_rows, vocabulary

    check_seeds(s.seeds)
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    labels = {"base": "pre-trained", **{a.key: a.label for a in ARMS}}

    base_dir = out / "base"
    print(f"[1/5] stage 0: pre-training a tiny Llama (hidden {s.hidden_size}, {s.layers} layers, word-level "
          f"vocabulary) for {s.pretrain_steps} steps on text that states every category's 16 valid members and "
          "every fact", flush=True)
    build_tiny_llama(base_dir, tokenizer=build_word_tokenizer(vocabulary()), hidden_size=s.hidden_size,
                     num_layers=s.layers, seed=0)
    pretrain(base_dir, World.draw(s.seeds[0]), s.pretrain_steps, 32, s.pretrain_lr, seed=0)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)

    cfg = TrainConfig(steps=s.steps, batch_size=s.batch_size, learning_rate=s.learning_rate)
    results: dict[str, dict[int, dict[str, float]]] = {"base": {}, **{a.key: {} for a in ARMS}}
    budgets: dict[str, dict[int, dict[str, float]]] = {a.key: {} for a in ARMS}
    curves: dict[str, dict[int, list]] = {a.key: {} for a in ARMS}
    by_key = {a.key: a for a in ARMS}
    print(f"[2/5] stage 1: 5 arms x {len(s.seeds)} seeds, {s.steps} steps each (batch {s.batch_size}, lr "
          f"{s.learning_rate}); each seed redraws which 8 of 16 members per category and which 20 of 40 facts the "
          "chat rows show", flush=True)
    for seed in s.seeds:
        world = World.draw(seed)
        rows = finetuning_rows(world)
        if seed == s.seeds[0]:
            write_jsonl(rows, out / "train.scored.jsonl")
        results["base"][seed] = evaluate(base, base, tokenizer, world, seed)
        for key in ("sft", "uniform_token", "ual", "shuffled"):
            arm = by_key[key]
            r = train_arm(base_dir, training_rows(arm, rows, seed), trainer_options(arm, s.alpha), seed, cfg)
            smap = r.smoothing_map
            opts = trainer_options(arm, s.alpha)
            budgets[key][seed] = ({"per_sample": smap.mean_per_sample, "per_token": smap.mean_per_token}
                                  if smap is not None else
                                  {"per_sample": opts.get("ual_alpha", 0.0) if opts["ual"] else 0.0,
                                   "per_token": opts.get("ual_alpha", 0.0) if opts["ual"] else 0.0})
            results[key][seed] = evaluate(r.model, base, tokenizer, world, seed)
            if seed == s.seeds[0]:  # for `ual analyze` and a look by hand
                r.model.save_pretrained(out / "runs" / key / f"seed{seed}")
                tokenizer.save_pretrained(out / "runs" / key / f"seed{seed}")
            curves[key][seed] = r.losses
        m = {k: results[k][seed] for k in ("sft", "uniform_token", "ual", "shuffled")}
        print(f"      seed {seed}: unseen facts p(right) SFT {m['sft']['fact_unseen_p']:.3f} / uniform "
              f"{m['uniform_token']['fact_unseen_p']:.3f} / UAL {m['ual']['fact_unseen_p']:.3f} / shuffled "
              f"{m['shuffled']['fact_unseen_p']:.3f}; held-out member mass {m['sft']['open_heldout_mass']:.3f} / "
              f"{m['uniform_token']['open_heldout_mass']:.3f} / {m['ual']['open_heldout_mass']:.3f} / "
              f"{m['shuffled']['open_heldout_mass']:.3f}", flush=True)

    print("[3/5] the arms and their smoothing budgets (mean over seeds)")
    for a in ARMS:
        b = budgets[a.key]
        ps = sum(v["per_sample"] for v in b.values()) / len(b)
        pt = sum(v["per_token"] for v in b.values()) / len(b)
        print(f"      {a.label:<17} per sample {ps:.4f}, per label token {pt:.4f}: {a.description}")
    print("      UAL's uncertainty: 80 for open-ended rows, 5 for fact rows (a stand-in for an LLM judge). Open-ended "
          "replies name two members (3 label tokens), facts one (2), so the per-sample and per-token means differ.")
    ppl_curves = ppl_mean_smoothing(base_dir, finetuning_rows(World.draw(s.seeds[0])), s.alpha, s.seeds[0], cfg)
    print(f"      PPL mode (smoothing from each sample's perplexity, no scores), seed {s.seeds[0]}: the logged mean "
          "smoothing per label token with either running mean")
    for line in format_ppl_means(ppl_curves, s.alpha):
        print(f"        {line}")

    stats = summarise(results)
    endpoints = primary_endpoints({k: v for k, v in results.items() if k != "base"})
    print("[4/5] results: mean ± std over seeds; the pre-trained model is the zero point of every metric")
    print(format_table(stats, labels))
    print("      primary endpoints (named before any run; UAL - control, paired 95% CI, Holm over all seven):")
    for line in format_endpoints(endpoints, labels):
        print(f"      {line}")
    verdict = overall(endpoints)
    print(f"      {verdict}")
    print("      (a tiny model on a synthetic world: it shows the mechanism and how to test it, not how UAL does on "
          "a 7B model)")
    png = plot_results(stats, endpoints, labels, out / "demo_results.png",
                       title=f"UAL demo, {len(s.seeds)} seeds: {verdict}")
    summary = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()},
        "metrics": {key: {"meaning": meaning, "higher_is_better": higher} for key, meaning, higher in METRICS},
        "arms": {k: {"label": labels[k], "description": by_key[k].description if k in by_key else "stage-0 model",
                     "per_seed": {str(seed): {**results[k][seed],
                                              **({"smoothing_budget": budgets[k][seed],
                                                  "train_loss": curves[k][seed]} if k in by_key else {})}
                                  for seed in s.seeds},
                     "summary": stats[k]} for k in results},
        "primary_endpoints": endpoints,
        "ppl_mode_mean_smoothing": {f"ual_ppl_window={w}": points for w, points in ppl_curves.items()},
        "secondary_comparisons": secondary({k: v for k, v in results.items() if k != "base"}),
        "verdict": verdict,
    }
    print(f"      figure: {png}")
    if s.axolotl and _axolotl_available():
        from ual_plugin.demo.axolotl_run import train_with_axolotl

        print("[5/5] seed 0's scored rows through the real `axolotl train` (plugins: [ual_plugin.axolotl.UALPlugin], "
              "ual: true)", flush=True)
        status, parsed = train_with_axolotl(out / "axolotl", base_dir, out / "train.scored.jsonl", s.alpha,
                                            s.axolotl_steps, s.seeds[0])
        if status != 0:
            raise RuntimeError(f"axolotl train failed (exit {status}); see {out / 'axolotl' / 'train.log'}")
        smoothing = [m["ual_smoothing"] for m in parsed.get("train", []) if "ual_smoothing" in m]
        summary["axolotl"] = {"banner": parsed.get("banner"), "steps": len(parsed.get("train", [])),
                              "mean_ual_smoothing": sum(smoothing) / len(smoothing) if smoothing else None}
    else:
        print("[5/5] skipped: axolotl is not installed here (pip install 'ual-plugin[axolotl]')" if s.axolotl
              else "[5/5] skipped (--no-axolotl)")
    summary["seconds_total"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")
    print(f"summary: {out / 'summary.json'} (every arm, seed and metric)  figure: {png}")
    print(f"demo wall time {summary['seconds_total']:.0f} s")
    return summary


def _json_safe(value):
    """``value`` with infinite or NaN floats (a t over identical differences) written as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
