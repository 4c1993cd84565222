"""The end-to-end demo: can UAL's claim show on a model that already knows things, and does it?

Per seed, stage 0 pre-trains a tiny local Llama on a small world (categories with many valid
members, facts with one answer), and stage 1 fine-tunes it on a fresh draw of which members and
facts the chat rows show, in four arms with one smoothing budget (SFT, uniform, UAL, UAL-shuffled).
The primary questions run as a fixed sequence and the harms as non-inferiority tests, both fixed
below before any run (see ``design``); the same analysis under ``max_grad_norm=0`` is printed beside
them as a robustness line. Finally the same kind of scored rows goes through the real ``axolotl
train``. Everything is local (no API key, no hub).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ual_plugin.demo.arms import ARMS, trainer_options, training_rows
from ual_plugin.demo.design import Harm, Question

DEMO_ARMS = ("sft", "uniform_token", "ual", "shuffled")
# The fixed sequence: each question is tested only if every earlier one was answered in UAL's favour.
SEQUENCE: tuple[Question, ...] = (
    Question("open_heldout_share", "ual", "uniform_token",
             "keeps a larger share of pre-trained members it was not fine-tuned on than uniform smoothing at equal "
             "budget"),
    Question("open_heldout_share", "ual", "shuffled", "... and that comes from the allocation, not the amount"),
    Question("fact_unseen_pnorm", "ual", "uniform_token",
             "keeps facts it was not fine-tuned on better than uniform smoothing (p(right | answers))"),
    Question("fact_unseen_pnorm", "ual", "shuffled", "... and that comes from the allocation"),
)
# Harms: non-inferiority, margins fixed before the run.
HARMS: tuple[Harm, ...] = (
    Harm("open_invalid_mass", "ual", "uniform_token", 0.02, False,
         "puts at most 0.02 more mass on invalid answers than uniform smoothing"),
    Harm("retention_kl", "ual", "uniform_token", 0.10, True,
         "drifts from the pre-trained model at most 10 % more than uniform smoothing"),
    Harm("fact_unseen_acc", "ual", "sft", 0.05, False, "loses at most 5 points of unseen-fact accuracy against SFT"),
)
# The smallest difference worth detecting on the primary metrics (both are probabilities). A pilot on seeds
# 0-5 measured the seed-to-seed SD of each question's paired difference: Q1 0.0020, Q2 0.0036, Q3 0.0110,
# Q4 0.0063; 80 % power at 5 % for 0.02 needs 2, 3, 5 and 3 seeds (design.seeds_for_power), so the demo
# runs 5 seeds, disjoint from the pilot's.
SMALLEST_EFFECT = 0.02
PILOT_SD = {"Q1": 0.0020, "Q2": 0.0036, "Q3": 0.0110, "Q4": 0.0063}


@dataclass
class DemoSettings:
    out_dir: Path = Path("ual_demo_output")
    seeds: tuple[int, ...] = (10, 11, 12, 13, 14)  # 5: the power calculation's count; apart from the pilot's 0-5
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
    robustness: bool = True  # rerun every arm with max_grad_norm=0 and print its verdicts beside the main ones
    workers: int = 2  # seeds run in this many processes at once (one thread each)


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


def _arms_on_seed(s: DemoSettings, seed: int, base_dir: Path, max_grad_norm: float, save: bool) -> dict:
    """Every arm on one seed's pre-trained model: ``{"results", "budgets", "curves"}``, each keyed by arm."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ual_plugin.demo.evaluate import evaluate
    from ual_plugin.demo.train import TrainConfig, train_arm
    from ual_plugin.demo.world import World, finetuning_rows

    cfg = TrainConfig(steps=s.steps, batch_size=s.batch_size, learning_rate=s.learning_rate,
                      max_grad_norm=max_grad_norm)
    by_key = {a.key: a for a in ARMS}
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    world = World.draw(seed)
    rows = finetuning_rows(world)
    out: dict[str, dict] = {"results": {"base": evaluate(base, base, tokenizer, world, seed)}, "budgets": {},
                            "curves": {}}
    for key in DEMO_ARMS:
        arm = by_key[key]
        opts = trainer_options(arm, s.alpha)
        r = train_arm(base_dir, training_rows(arm, rows, seed), opts, seed, cfg)
        smap = r.smoothing_map
        flat = opts.get("ual_alpha", 0.0) if opts["ual"] else 0.0
        out["budgets"][key] = ({"per_sample": smap.mean_per_sample, "per_token": smap.mean_per_token}
                               if smap is not None else {"per_sample": flat, "per_token": flat})
        out["results"][key] = evaluate(r.model, base, tokenizer, world, seed)
        out["curves"][key] = r.losses
        if save:  # for `ual analyze` and a look by hand
            r.model.save_pretrained(Path(s.out_dir) / "runs" / key / f"seed{seed}")
            tokenizer.save_pretrained(Path(s.out_dir) / "runs" / key / f"seed{seed}")
    return out


def seed_job(s: DemoSettings, seed: int) -> dict:
    """One seed, start to end: stage 0 (its own pre-trained model), every arm, and the robustness rerun."""
    quiet_environment()
    single_thread()
    from ual_plugin.demo.pretrain import pretrain
    from ual_plugin.demo.tiny import build_tiny_llama, build_word_tokenizer
    from ual_plugin.demo.world import World, vocabulary

    t0 = time.perf_counter()
    base_dir = Path(s.out_dir) / "base" / f"seed{seed}"
    build_tiny_llama(base_dir, tokenizer=build_word_tokenizer(vocabulary()), hidden_size=s.hidden_size,
                     num_layers=s.layers, seed=seed)
    pretrain(base_dir, World.draw(seed), s.pretrain_steps, 32, s.pretrain_lr, seed=seed)
    t_pre = time.perf_counter() - t0
    job = _arms_on_seed(s, seed, base_dir, 1.0, save=seed == s.seeds[0])
    job["robust"] = _arms_on_seed(s, seed, base_dir, 0.0, save=False)["results"] if s.robustness else None
    job["seconds"] = {"pretrain": t_pre, "total": time.perf_counter() - t0}
    return job


def _map_seeds(s: DemoSettings):
    """``seed_job`` for every seed, in order, on ``s.workers`` processes (inline for one)."""
    if s.workers <= 1 or len(s.seeds) == 1:
        yield from (seed_job(s, seed) for seed in s.seeds)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=s.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(seed_job, [s] * len(s.seeds), s.seeds)


def run_demo(s: DemoSettings) -> dict:
    quiet_environment()
    single_thread()
    from statistics import stdev

    from ual_plugin.demo.design import (
        detectable_difference,
        fixed_sequence,
        format_verdicts,
        non_inferiority,
        verdict_line,
    )
    from ual_plugin.demo.evaluate import METRICS
    from ual_plugin.demo.figure import plot_results
    from ual_plugin.demo.ppl_means import format_ppl_means, ppl_mean_smoothing
    from ual_plugin.demo.report import check_seeds, format_table, secondary, summarise
    from ual_plugin.demo.synthetic import write_jsonl
    from ual_plugin.demo.train import TrainConfig
    from ual_plugin.demo.versions import library_versions
    from ual_plugin.demo.world import World, finetuning_rows

    check_seeds(s.seeds)
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    labels = {"base": "pre-trained", **{a.key: a.label for a in ARMS}}
    by_key = {a.key: a for a in ARMS}
    higher = {key: h for key, _, h in METRICS}

    print(f"[1/5] stage 0, once per seed: pre-training a tiny Llama (hidden {s.hidden_size}, {s.layers} layers, "
          f"word-level vocabulary) for {s.pretrain_steps} steps on text that states every category's 16 valid members "
          f"and every fact; seeds {list(s.seeds)}, {s.workers} at a time", flush=True)
    print(f"[2/5] stage 1 on each seed's model: {len(DEMO_ARMS)} arms, {s.steps} steps each (batch {s.batch_size}, "
          f"lr {s.learning_rate}); each seed redraws which 8 of 16 members per category and which 20 of 40 facts the "
          f"chat rows show{'; then the same with max_grad_norm=0 (robustness)' if s.robustness else ''}", flush=True)
    results: dict[str, dict[int, dict[str, float]]] = {"base": {}, **{k: {} for k in DEMO_ARMS}}
    budgets: dict[str, dict[int, dict[str, float]]] = {k: {} for k in DEMO_ARMS}
    curves: dict[str, dict[int, list]] = {k: {} for k in DEMO_ARMS}
    robust: dict[str, dict[int, dict[str, float]]] | None = {k: {} for k in DEMO_ARMS} if s.robustness else None
    seconds: dict[int, dict[str, float]] = {}
    for seed, job in zip(s.seeds, _map_seeds(s), strict=True):
        for k, v in job["results"].items():
            results[k][seed] = v
        for k in DEMO_ARMS:
            budgets[k][seed], curves[k][seed] = job["budgets"][k], job["curves"][k]
            if robust is not None:
                robust[k][seed] = job["robust"][k]
        seconds[seed] = job["seconds"]
        m = job["results"]
        print(f"      seed {seed} ({job['seconds']['pretrain']:.0f} s stage 0, {job['seconds']['total']:.0f} s in all): "
              "held-out share " + " / ".join(f"{m[k]['open_heldout_share']:.3f}" for k in DEMO_ARMS)
              + "; unseen facts p(right | answers) " + " / ".join(f"{m[k]['fact_unseen_pnorm']:.3f}" for k in DEMO_ARMS)
              + "  (SFT / uniform / UAL / shuffled)", flush=True)
    write_jsonl(finetuning_rows(World.draw(s.seeds[0])), out / "train.scored.jsonl")
    base_dirs = {seed: out / "base" / f"seed{seed}" for seed in s.seeds}

    print("[3/5] the arms and their smoothing budgets (mean over seeds)")
    for k in DEMO_ARMS:
        b = budgets[k]
        ps = sum(v["per_sample"] for v in b.values()) / len(b)
        pt = sum(v["per_token"] for v in b.values()) / len(b)
        print(f"      {by_key[k].label:<17} per sample {ps:.4f}, per label token {pt:.4f}: {by_key[k].description}")
    print("      UAL's uncertainty: 80 for open-ended rows, 5 for fact rows (a stand-in for an LLM judge).")
    cfg = TrainConfig(steps=s.steps, batch_size=s.batch_size, learning_rate=s.learning_rate)
    ppl_curves = ppl_mean_smoothing(base_dirs[s.seeds[0]], finetuning_rows(World.draw(s.seeds[0])), s.alpha,
                                    s.seeds[0], cfg)
    print(f"      PPL mode (smoothing from each sample's perplexity, no scores), seed {s.seeds[0]}: the logged mean "
          "smoothing per label token with either running mean")
    for line in format_ppl_means(ppl_curves, s.alpha):
        print(f"        {line}")

    arms_only = {k: v for k, v in results.items() if k != "base"}
    stats = summarise(results)
    sequence = fixed_sequence(arms_only, SEQUENCE, higher)
    harms = non_inferiority(arms_only, HARMS, higher)
    verdict = verdict_line(sequence, harms)
    print("[4/5] results: mean ± std over seeds; the pre-trained model is the zero point of every metric")
    print(format_table(stats, labels))
    for line in format_verdicts(sequence, harms, labels):
        print(f"      {line}")
    print(f"      VERDICT: {verdict}")
    robust_summary = None
    if robust is not None:
        r_arms = robust
        r_seq, r_harms = fixed_sequence(r_arms, SEQUENCE, higher), non_inferiority(r_arms, HARMS, higher)
        robust_summary = {"max_grad_norm": 0.0, "primary_sequence": r_seq, "harms": r_harms,
                          "verdict": verdict_line(r_seq, r_harms)}
        print("      ROBUSTNESS (max_grad_norm=0): " + "; ".join(
            f"Q{i} {a['verdict']} -> {b['verdict']}" for i, (a, b) in enumerate(zip(sequence, r_seq, strict=True), 1))
            + "; " + "; ".join(f"H{i} {a['verdict']} -> {b['verdict']}"
                               for i, (a, b) in enumerate(zip(harms, r_harms, strict=True), 1)))
        print(f"      {robust_summary['verdict']}")
    power = {f"Q{i} {r['metric']}": {"sd": stdev(r["differences"]),
                                     "detectable_80pct": detectable_difference(stdev(r["differences"]), len(s.seeds))}
             for i, r in enumerate(sequence, 1)}
    print(f"      power: the pilot's seed SDs {PILOT_SD} gave 5 seeds for 80% power at {SMALLEST_EFFECT}; with "
          f"{len(s.seeds)} seeds and this run's spread, 80% power to detect "
          + "; ".join(f"{k} {v['detectable_80pct']:.4f} (sd {v['sd']:.4f})" for k, v in power.items()))
    print("      (a tiny model on a synthetic world: it shows the mechanism and how to test it, not how UAL does on "
          "a 7B model)")
    png = plot_results(stats, sequence, labels, out / "demo_results.png",
                       title=f"UAL demo, {len(s.seeds)} seeds: {verdict}")
    summary = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()},
        "versions": library_versions(),
        "metrics": {key: {"meaning": meaning, "higher_is_better": h} for key, meaning, h in METRICS},
        "arms": {k: {"label": labels[k], "description": by_key[k].description if k in by_key else "stage-0 model",
                     "per_seed": {str(seed): {**results[k][seed],
                                              **({"smoothing_budget": budgets[k][seed],
                                                  "train_loss": curves[k][seed]} if k in by_key else {})}
                                  for seed in s.seeds},
                     "summary": stats[k]} for k in results},
        "primary_sequence": sequence,
        "harms": harms,
        "robustness": robust_summary,
        "power": {"smallest_effect_of_interest": SMALLEST_EFFECT, "pilot_sd": PILOT_SD, "by_question": power},
        "ppl_mode_mean_smoothing": {f"ual_ppl_window={w}": points for w, points in ppl_curves.items()},
        "secondary_comparisons": secondary(arms_only),
        "verdict": verdict,
        "seconds_per_seed": seconds,
    }
    print(f"      figure: {png}")
    if s.axolotl and _axolotl_available():
        from ual_plugin.demo.axolotl_run import train_with_axolotl

        print("[5/5] the first seed's scored rows through the real `axolotl train` (plugins: "
              "[ual_plugin.axolotl.UALPlugin], ual: true)", flush=True)
        status, parsed = train_with_axolotl(out / "axolotl", base_dirs[s.seeds[0]], out / "train.scored.jsonl",
                                            s.alpha, s.axolotl_steps, s.seeds[0])
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
