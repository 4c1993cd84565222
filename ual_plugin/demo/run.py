"""The end-to-end demo: does per-sample smoothing (UAL) beat uniform label smoothing at the same mean?

Three arms (plain SFT, uniform label smoothing at ``alpha``, UAL at mean ``alpha``) train a tiny
local Llama on the same synthetic mixed-entropy data, for the same steps, on the same seeds; each
is scored on held-out rows per category; the table, the verdict, one figure and ``summary.json``
report every arm, seed and metric. Finally the same scored rows go through the real ``axolotl
train`` with the UAL plugin. Everything is local (no API key, no hub); the numbers show the
mechanics on a toy problem, not a claim about large models.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ual_plugin.demo.arms import ARMS
from ual_plugin.demo.synthetic import category_uncertainty, generate, write_jsonl


@dataclass
class DemoSettings:
    out_dir: Path = Path("ual_demo_output")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    n_train: int = 320
    n_eval: int = 400
    epochs: int = 12
    alpha: float = 0.1
    batch_size: int = 16
    learning_rate: float = 3e-3
    hidden_size: int = 64
    layers: int = 2
    scorer: str = "category"
    axolotl: bool = True
    axolotl_steps: int = 8


def quiet_environment() -> None:
    """Offline, no telemetry, and none of the start-up noise of packages the demo does not use.

    Axolotl's pins bring torchao (built for a newer torch than 2.13 knows: deprecation warnings from
    torch's pytree registry) and bitsandbytes (on CPUs with AVX512-BF16 it looks up a kernel on the hub
    at import, and warns in offline mode); neither is used here, so their start-up messages are muted.
    DeepSpeed (installed for multi-GPU runs) warns that it found no GPU unless told to use the CPU.
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
    for name in ("torch.utils._pytree", "bitsandbytes.backends.cpu.ops"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Skipping publisher trust check")
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    disable_progress_bar()


def single_thread() -> None:
    """One torch thread: a model this small gains nothing from a second, and on a busy machine a waiting
    thread team costs several times the work itself (measured: 0.1 s vs 0.8 s per step under load)."""
    import torch

    torch.set_num_threads(1)


def as_messages(row: dict) -> list[dict]:
    if "messages" in row:
        return row["messages"]
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"].strip()}]


def build_data(s: DemoSettings) -> tuple[list[dict], list[dict]]:
    """Training rows, and held-out rows in the three groups of ``evaluate.GROUPS``: half open-ended (new
    replies: none equals a training row), a quarter one-right-answer rows whose prompt a training row also
    has, a quarter with a prompt none has. Fixed across seeds: seeds vary the model's init and batch order."""
    from ual_plugin.demo.evaluate import group_of

    train = generate(s.n_train, seed=0)
    prompts = {r["prompt"] for r in train}
    known = {(r["prompt"], r["completion"]) for r in train}
    quota = {"seen": s.n_eval // 4, "new": s.n_eval // 4}
    quota["open"] = s.n_eval - quota["seen"] - quota["new"]
    held_out: dict[str, list[dict]] = {key: [] for key in quota}
    for seed in range(1000, 1100):
        for row in generate(max(s.n_eval, 64), seed=seed):
            group = group_of(row, prompts)
            if (row["prompt"], row["completion"]) in known and group == "open":
                continue
            if len(held_out[group]) < quota[group]:
                held_out[group].append({**row, "group": group})
        if all(len(held_out[k]) == quota[k] for k in quota):
            return train, [row for key in quota for row in held_out[key]]
    raise ValueError(f"could not draw {quota['new']} one-right-answer rows with a prompt outside the {s.n_train} "
                     "training rows (they cover almost every such prompt); use fewer training rows")


def add_category_uncertainty(rows: list[dict], seed: int = 0) -> None:
    rng = random.Random(seed + 1)
    for row in rows:
        row["uncertainty"] = category_uncertainty(row, rng)


def score_with_ppl(train_path: Path, out_path: Path, model_dir: Path) -> list[dict]:
    """`ual score --scorer ppl`: each response's perplexity under a local model, as its uncertainty."""
    from ual_plugin.cli import main as ual_cli

    code = ual_cli(["score", str(train_path), "-o", str(out_path), "--scorer", "ppl", "--model", str(model_dir)])
    if code != 0:
        raise RuntimeError(f"`ual score` failed with exit code {code}")
    return [json.loads(line) for line in out_path.read_text().splitlines() if line.strip()]


def _axolotl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("axolotl") is not None


def _smoothing_by_category(rows: list[dict], alpha: float) -> dict[str, float]:
    import numpy as np

    from ual_plugin.mapping import smoothing_from_uncertainty

    v = smoothing_from_uncertainty([r["uncertainty"] for r in rows], alpha=alpha)
    kinds = np.array([r["entropy"] for r in rows])
    return {"one-right-answer rows": float(v[kinds == "low"].mean()), "open-ended rows": float(v[kinds == "high"].mean()),
            "all rows": float(v.mean())}


def run_demo(s: DemoSettings) -> dict:
    quiet_environment()
    single_thread()
    from ual_plugin.demo.evaluate import GROUPS, METRICS, evaluate
    from ual_plugin.demo.figure import plot_results
    from ual_plugin.demo.report import compare, format_table, headline, summarise, verdict
    from ual_plugin.demo.tiny import build_tiny_llama
    from ual_plugin.demo.train import TrainConfig, train_arm

    if len(s.seeds) < 1 or len(set(s.seeds)) != len(s.seeds):
        raise ValueError(f"give distinct seeds, got {s.seeds}")
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    labels = {a.key: a.label for a in ARMS}

    train, evaluation = build_data(s)
    n_high = sum(r["entropy"] == "high" for r in train)
    print(f"[1/6] data: {len(train)} training rows ({n_high} open-ended, {len(train) - n_high} one-right-answer), "
          f"{len(evaluation)} held-out rows; a tiny Llama (hidden {s.hidden_size}, {s.layers} layers) per seed "
          f"{list(s.seeds)}, built locally")
    corpus = [r["prompt"] + r["completion"] for r in train]
    base = {seed: build_tiny_llama(out / "base" / f"seed{seed}", texts=corpus, hidden_size=s.hidden_size,
                                   num_layers=s.layers, vocab_size=640, seed=seed) for seed in s.seeds}
    write_jsonl([{"messages": as_messages(r), "category": r["category"], "entropy": r["entropy"]} for r in train],
                out / "train.jsonl")
    write_jsonl(evaluation, out / "eval.jsonl")

    cfg = TrainConfig(epochs=s.epochs, batch_size=s.batch_size, learning_rate=s.learning_rate, alpha=s.alpha)
    steps = s.epochs * -(-len(train) // s.batch_size)
    results: dict[str, dict[int, dict[str, float]]] = {a.key: {} for a in ARMS}
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {a.key: {} for a in ARMS}
    logged: dict[str, dict[int, float]] = {a.key: {} for a in ARMS}

    def run_arm(arm, rows) -> None:
        for seed in s.seeds:
            r = train_arm(arm, base[seed], rows, as_messages, seed, cfg, out / "runs" / arm.key / f"seed{seed}")
            results[arm.key][seed] = evaluate(r.model, r.tokenizer, evaluation, as_messages)
            curves[arm.key][seed] = r.losses
            logged[arm.key][seed] = r.mean_logged_smoothing
            m = results[arm.key][seed]
            trend = f"train loss {r.losses[0][1]:.2f} -> {r.losses[-1][1]:.2f}; " if r.losses else ""
            print(f"      {arm.label:<10} seed {seed}: {trend}held-out NLL {m['nll_seen']:.3f} / {m['nll_new']:.3f} / "
                  f"{m['nll_open']:.3f}, exact match {m['exact_match_seen']:.3f} / {m['exact_match_new']:.3f}",
                  flush=True)

    print(f"[2/6] training: 3 arms x {len(s.seeds)} seeds, {s.epochs} epochs = {steps} steps each, batch "
          f"{s.batch_size}, same data and seeds for every arm")
    print("      (held-out NLL: one-right-answer rows with a training prompt / with a new prompt / open-ended rows; "
          "exact match: the two one-right-answer groups)")
    sft, uniform, ual = ARMS
    run_arm(sft, train)
    if s.scorer == "ppl":
        print("      ual score --scorer ppl: each response's perplexity under the seed-0 SFT model (offline, no API)")
        train = score_with_ppl(out / "train.jsonl", out / "train.ppl.jsonl", out / "runs" / "sft" / f"seed{s.seeds[0]}")
        scored_path = out / "train.ppl.jsonl"
    else:
        add_category_uncertainty(train)
        scored_path = write_jsonl([{"messages": as_messages(r), "uncertainty": r["uncertainty"],
                                    "category": r["category"], "entropy": r["entropy"]} for r in train],
                                  out / "train.scored.jsonl")
    allocation = _smoothing_by_category(train, s.alpha)
    run_arm(uniform, train)
    run_arm(ual, train)

    print("[3/6] what each arm is")
    for arm in ARMS:
        print(f"      {arm.label:<10} {arm.description}")
    source = ("`ual score --scorer ppl` with the SFT model" if s.scorer == "ppl" else
              "the generator's known category (a stand-in for an LLM judge such as `ual score --model gpt-4o-mini`)")
    print(f"      UAL's uncertainty comes from {source}; its mean smoothing per row: "
          f"{allocation['one-right-answer rows']:.3f} on one-right-answer rows, "
          f"{allocation['open-ended rows']:.3f} on open-ended rows, {allocation['all rows']:.3f} over all rows "
          f"(= alpha {s.alpha}).")
    mean_logged = {k: sum(v.values()) / len(v) for k, v in logged.items()}
    above = mean_logged["ual"] > s.alpha
    why = ("open-ended rows, which get the larger smoothing" if above else
           "one-right-answer rows, which get the smaller smoothing")
    print(f"      logged `ual_smoothing` (a mean over label tokens): uniform {mean_logged['uniform']:.3f}, UAL "
          f"{mean_logged['ual']:.3f}. UAL's is {'above' if above else 'below'} alpha because its {why}, have more "
          "label tokens; per row, both smoothed arms average alpha.")

    summary_stats = summarise(results)
    sizes = {key: sum(r["group"] == key for r in evaluation) for key, _ in GROUPS}
    print(f"[4/6] held-out results: {sizes['seen']} one-right-answer rows whose prompt is also in training (the "
          f"task space is small: did the arm learn the exact answers?), {sizes['new']} with a prompt no training row "
          f"has, {sizes['open']} open-ended rows (prompts recur, replies are new)")
    print("      NLL: mean negative log-likelihood per token of the reference reply (lower = the model puts more "
          "probability on it).")
    print("      Exact match: share of one-right-answer prompts whose greedy reply is exactly the right answer "
          "(higher is better).")
    print("      Smoothing moves probability from the reference token to all tokens by design, so more smoothing "
          "on a category tends to raise its NLL;")
    print("      open-ended rows have many valid replies and the NLL scores only one of them. The paper judges "
          "open-ended replies with an LLM, which this offline demo cannot.")
    print(format_table(summary_stats, labels))
    lines = verdict(results, labels)
    for line in lines:
        print(f"      {line}")
    print("      (a tiny model on synthetic data: this shows the mechanics and how to test the claim, not how UAL "
          "does on a 7B model)")

    png = plot_results(results, curves, labels, out / "demo_results.png", headline=headline(results, labels))
    summary = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()},
        "metrics": {key: {"category": category, "meaning": meaning, "higher_is_better": higher}
                    for key, category, meaning, higher in METRICS},
        "arms": {a.key: {"label": a.label, "description": a.description,
                         "per_seed": {str(seed): {**results[a.key][seed], "logged_ual_smoothing": logged[a.key][seed],
                                                  "train_loss": curves[a.key][seed]} for seed in s.seeds},
                         "summary": summary_stats[a.key]} for a in ARMS},
        "ual_smoothing_per_row": allocation,
        "comparisons": compare(results),
        "verdict": lines,
        "uncertainty_source": s.scorer,
    }
    print(f"[5/6] figure: {png}")
    if s.axolotl and _axolotl_available():
        from ual_plugin.demo.axolotl_run import train_with_axolotl

        print("[6/6] the same scored rows through the real `axolotl train` (plugins: [ual_plugin.axolotl.UALPlugin], "
              "ual: true)", flush=True)
        status, parsed = train_with_axolotl(out / "axolotl", base[s.seeds[0]], scored_path, s.alpha, s.axolotl_steps,
                                            s.seeds[0])
        if status != 0:
            raise RuntimeError(f"axolotl train failed (exit {status}); see {out / 'axolotl' / 'train.log'}")
        smoothing = [m["ual_smoothing"] for m in parsed.get("train", []) if "ual_smoothing" in m]
        summary["axolotl"] = {"banner": parsed.get("banner"), "steps": len(parsed.get("train", [])),
                              "mean_ual_smoothing": sum(smoothing) / len(smoothing) if smoothing else None}
    else:
        print("[6/6] skipped: axolotl is not installed here (pip install 'ual-plugin[axolotl]')" if s.axolotl
              else "[6/6] skipped (--no-axolotl)")
    summary["seconds_total"] = time.perf_counter() - t0
    summary = _json_safe(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    print(f"summary: {out / 'summary.json'} (every arm, seed and metric)  figure: {png}")
    print(f"demo wall time {summary['seconds_total']:.0f} s")
    return summary


def _json_safe(value):
    """``value`` with infinite or NaN floats (a paired t over identical differences) written as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
