"""The end-to-end demo: data -> uncertainty -> plain SFT vs UAL on a tiny local Llama -> table + plot.

Everything is local: the model and tokenizer are built from scratch, the data is generated, no API
key and no hub access are needed. It shows the mechanics (and the logged ``ual_smoothing``) on a
toy problem; the numbers are not a claim about large models.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ual_plugin.demo.synthetic import category_uncertainty, generate, write_jsonl


@dataclass
class DemoSettings:
    out_dir: Path = Path("ual_demo_output")
    n_train: int = 480
    n_eval: int = 96
    epochs: int = 15
    alpha: float = 0.1
    batch_size: int = 16
    learning_rate: float = 3e-3
    hidden_size: int = 128
    layers: int = 2
    seed: int = 0
    scorer: str = "category"
    axolotl: bool = True
    axolotl_steps: int = 30
    extra: dict = field(default_factory=dict)


def _quiet_env() -> None:
    for key, value in {
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_DISABLED": "true",
        "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1",
    }.items():
        os.environ.setdefault(key, value)


def as_messages(row: dict) -> list[dict]:
    if "messages" in row:
        return row["messages"]
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"].strip()}]


def build_data(s: DemoSettings) -> tuple[list[dict], list[dict]]:
    train = generate(s.n_train, seed=s.seed)
    evaluation = generate(s.n_eval, seed=s.seed + 1000)
    return train, evaluation


def add_category_uncertainty(rows: list[dict], seed: int) -> None:
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


def train_one(model_dir: Path, train: list[dict], s: DemoSettings, ual: bool, out: Path):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import ProgressCallback

    from ual_plugin.trl import UALSFTConfig, UALSFTTrainer

    class _BarOnly(ProgressCallback):
        """A progress bar without the per-log dict dumps."""

        def on_log(self, *args, **kwargs):
            return None

    torch.manual_seed(s.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    args = UALSFTConfig(
        output_dir=str(out), ual=ual, ual_alpha=s.alpha, num_train_epochs=s.epochs,
        per_device_train_batch_size=s.batch_size, learning_rate=s.learning_rate, lr_scheduler_type="cosine",
        warmup_steps=5, logging_steps=5, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
        seed=s.seed, max_length=96, disable_tqdm=False, loss_type="nll", dataset_num_proc=None,
        assistant_only_loss=True,
    )
    # Conversational rows: training, `ual score` and evaluation all render them with the chat template.
    ds = Dataset.from_list([{"messages": as_messages(r), **({"uncertainty": r["uncertainty"]} if ual else {})}
                            for r in train])
    trainer = UALSFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_BarOnly())
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model(str(out / "final"))
    tok.save_pretrained(str(out / "final"))
    return trainer.model, tok, trainer.state.log_history, seconds, trainer.ual_map


def evaluate(model, tok, rows: list[dict]) -> dict[str, float]:
    """Mean completion NLL per entropy class, and exact-match accuracy on the one-right-answer rows."""
    import torch

    model.eval()
    nll = {"low": [], "high": []}
    correct = total = 0
    with torch.no_grad():
        for row in rows:
            messages = as_messages(row)
            prompt_ids = list(tok.apply_chat_template(messages[:1], add_generation_prompt=True, return_dict=True)["input_ids"])
            full = list(tok.apply_chat_template(messages, return_dict=True)["input_ids"])
            ids = torch.tensor([full])
            logits = model(input_ids=ids).logits[0, :-1]
            target = ids[0, 1:]
            start = len(prompt_ids) - 1
            token_nll = torch.nn.functional.cross_entropy(logits[start:], target[start:], reduction="mean")
            nll[row["entropy"]].append(float(token_nll))
            if row["entropy"] == "low":
                gen = model.generate(torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False,
                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
                text = tok.decode(gen[0, len(prompt_ids):], skip_special_tokens=True)
                correct += int(text.strip() == row["completion"].strip())
                total += 1
    return {
        "eval NLL, low-entropy rows": float(np.mean(nll["low"])),
        "eval NLL, high-entropy rows": float(np.mean(nll["high"])),
        "exact match, low-entropy rows": correct / max(total, 1),
    }


def plot_losses(histories: dict[str, list[dict]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, history in histories.items():
        points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
        if points:
            steps, losses = zip(*points, strict=True)
            ax.plot(steps, losses, marker="o", markersize=3, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Plain SFT vs UAL on the synthetic mixed-entropy demo")
    fig.text(0.01, 0.01, "UAL's loss includes the smoothing term, so its curve sits above plain cross-entropy.",
             fontsize=7, color="gray")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_table(results: dict[str, dict[str, float]]) -> str:
    names = list(results)
    metrics = list(next(iter(results.values())))
    width = max(len(m) for m in metrics)
    lines = [f"| {'metric'.ljust(width)} | " + " | ".join(n.rjust(10) for n in names) + " |",
             f"|{'-' * (width + 2)}|" + "|".join("-" * 12 for _ in names) + "|"]
    for m in metrics:
        cells = []
        for n in names:
            v = results[n][m]
            cells.append((f"{v:.3f}" if isinstance(v, float) and not math.isnan(v) else str(v)).rjust(10))
        lines.append(f"| {m.ljust(width)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _axolotl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("axolotl") is not None


def run_demo(s: DemoSettings) -> dict:
    _quiet_env()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    from ual_plugin.demo.tiny import build_tiny_llama

    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/7] building a tiny Llama (hidden {s.hidden_size}, {s.layers} layers) and its tokenizer locally")
    train, evaluation = build_data(s)
    corpus = [r["prompt"] + r["completion"] for r in train]
    model_dir = build_tiny_llama(out / "tiny-llama", texts=corpus, hidden_size=s.hidden_size,
                                 num_layers=s.layers, vocab_size=640, seed=s.seed)
    write_jsonl([{"messages": as_messages(r), "category": r["category"], "entropy": r["entropy"]} for r in train],
                out / "train.jsonl")
    write_jsonl(evaluation, out / "eval.jsonl")
    n_high = sum(r["entropy"] == "high" for r in train)
    print(f"[2/7] generated {len(train)} training rows ({n_high} open-ended, {len(train) - n_high} one-right-answer)"
          f" and {len(evaluation)} eval rows")

    results, histories = {}, {}

    def run(name: str, ual: bool, rows: list[dict]) -> None:
        model, tok, history, seconds, smap = train_one(model_dir, rows, s, ual, out / f"run-{name.lower()}")
        histories[name] = history
        results[name] = evaluate(model, tok, evaluation)
        results[name]["train seconds"] = seconds
        smoothing = [h["ual_smoothing"] for h in history if "ual_smoothing" in h]
        results[name]["logged ual_smoothing (mean)"] = float(np.mean(smoothing)) if smoothing else 0.0
        if smap is not None:
            print(f"      fitted map: beta={smap.beta:.5g}, alpha={smap.alpha}, v_max={smap.v_max} on {smap.n_fit} rows")

    print(f"[3/7] plain SFT ({s.epochs} epochs, batch {s.batch_size})")
    run("SFT", False, train)
    print("[4/7] ual score --scorer ppl: each response's perplexity under the SFT model (offline, no API)")
    ppl_rows = score_with_ppl(out / "train.jsonl", out / "train.ppl.jsonl", out / "run-sft" / "final")
    ppl_means = {c: float(np.median([r["uncertainty"] for r in ppl_rows if r["entropy"] == c])) for c in ("low", "high")}
    print(f"      median perplexity: one-right-answer rows {ppl_means['low']:.3g}, open-ended rows {ppl_means['high']:.3g}")
    if s.scorer == "ppl":
        scored = ppl_rows
        scored_path = out / "train.ppl.jsonl"
        print("      training UAL on these perplexity scores (--uncertainty ppl)")
    else:
        add_category_uncertainty(train, s.seed)
        scored = train
        scored_path = out / "train.scored.jsonl"
        write_jsonl([{"messages": as_messages(r), "uncertainty": r["uncertainty"], "category": r["category"],
                      "entropy": r["entropy"]} for r in train], scored_path)
        print("      a tiny model's perplexity tracks what it has not learned yet, not how open-ended a task is, so")
        print("      UAL trains on scores from the generator's known category instead: a stand-in for the LLM judge")
        print("      (`ual score --model gpt-4o-mini`) the method calls for. `ual demo --uncertainty ppl` uses the above.")
    by_class = {c: [r["uncertainty"] for r in scored if r["entropy"] == c] for c in ("low", "high")}
    print(f"      training uncertainty (mean): one-right-answer rows {np.mean(by_class['low']):.3g}, "
          f"open-ended rows {np.mean(by_class['high']):.3g}")
    print(f"[5/7] UAL, same settings, ual_alpha={s.alpha}")
    run("UAL", True, scored)
    print("[6/7] results on the held-out rows (TRL runs)")
    table = format_table(results)
    print(table)
    png = plot_losses(histories, out / "loss_curves.png")
    summary = {"results": results, "ppl_median_by_entropy": ppl_means,
               "settings": {k: str(v) for k, v in s.__dict__.items()}}
    if s.axolotl and _axolotl_available():
        from ual_plugin.axolotl.demo import train_with_axolotl

        print("[7/7] the same scored rows through the real `axolotl train` (plugins: [ual_plugin.axolotl.UALPlugin], "
              "ual: true)")
        status, parsed = train_with_axolotl(out / "axolotl", model_dir, scored_path, s.alpha, s.axolotl_steps, s.seed)
        if status != 0:
            raise RuntimeError(f"axolotl train failed (exit {status}); see {out / 'axolotl' / 'train.log'}")
        smoothing = [m["ual_smoothing"] for m in parsed.get("train", []) if "ual_smoothing" in m]
        summary["axolotl"] = {"banner": parsed.get("banner"), "steps": len(parsed.get("train", [])),
                              "mean_ual_smoothing": float(np.mean(smoothing)) if smoothing else None}
    else:
        print("[7/7] skipped: axolotl is not installed here (pip install 'ual-plugin[axolotl]')")
    summary["seconds_total"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"loss curves: {png}")
    print(f"summary:     {out / 'summary.json'}  (total {summary['seconds_total']:.0f} s)")
    return summary
