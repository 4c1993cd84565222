"""The Axolotl demo: score -> ``axolotl train`` -> summary, on a bundled tiny model, with no API key
and no hub access (CPU, a minute or two).

    python -m ual_plugin.demo.axolotl_run --out ual_axolotl_demo

1. builds a tiny random Llama and the bundled mixed-entropy demo data (exact arithmetic / unit
   conversions next to open-ended prompts), as chat rows;
2. scores it with ``ual score --scorer ppl`` (the response's perplexity under the tiny model: no API),
   or, with ``--scorer category``, with the generator's known category (a stand-in for an LLM judge);
3. writes an ordinary Axolotl YAML with the two UAL lines, checks it with ``ual check`` and runs the
   real ``axolotl train`` on it;
4. prints a summary from the training log: the ``UAL active`` banner, the loss and ``ual_smoothing``.

``add_arguments`` / ``run`` follow the ``ual`` CLI's subcommand protocol, so this can be wired in as
a subcommand as is.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from ual_plugin.axolotl.options import PLUGIN_NAME

_DICT = re.compile(r"\{'[^{}]*\}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("ual_axolotl_demo"), help="output folder")
    parser.add_argument("--n-train", type=int, default=160, help="demo rows")
    parser.add_argument("--alpha", type=float, default=0.1, help="ual_alpha")
    parser.add_argument("--max-steps", type=int, default=20, help="training steps")
    parser.add_argument("--scorer", choices=("ppl", "category"), default="ppl",
                        help="ppl: `ual score --scorer ppl` with the tiny model (default); category: the "
                             "generator's known category, a stand-in for an LLM judge")
    parser.add_argument("--seed", type=int, default=0)


def demo_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "AXOLOTL_DO_NOT_TRACK": "1",
        "WANDB_DISABLED": "true",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    })
    return env


def build_data(out: Path, n: int, seed: int) -> tuple[Path, list[dict[str, Any]]]:
    from ual_plugin.demo.synthetic import generate

    rows = []
    for r in generate(n, seed):
        rows.append({
            "messages": [{"role": "user", "content": r["prompt"]},
                         {"role": "assistant", "content": r["completion"].strip()}],
            "category": r["category"],
        })
    path = out / "data" / "demo.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path, rows


def score(data: Path, rows: list[dict[str, Any]], model: Path, scorer: str, seed: int) -> Path:
    scored = data.with_name("demo.scored.jsonl")
    if scorer == "category":
        from ual_plugin.demo.synthetic import category_uncertainty

        rng = random.Random(seed)
        scored.write_text(
            "".join(json.dumps({**r, "uncertainty": category_uncertainty(r, rng)}) + "\n" for r in rows),
            encoding="utf-8",
        )
        return scored
    cmd = [sys.executable, "-m", "ual_plugin.cli", "score", str(data), "-o", str(scored), "--scorer", "ppl",
           "--model", str(model), "--format", "messages"]
    print("$ ual score " + " ".join(cmd[4:]), flush=True)
    subprocess.run(cmd, check=True, env=demo_env())
    return scored


def write_config(out: Path, model: Path, scored: Path, alpha: float, max_steps: int, seed: int) -> Path:
    cfg = {
        "base_model": str(model),
        "plugins": [PLUGIN_NAME],
        "ual": True,
        "ual_alpha": alpha,
        "datasets": [{"path": str(scored), "type": "chat_template", "ds_type": "json"}],
        "chat_template": "tokenizer_default",
        "dataset_prepared_path": str(out / "prepared"),
        "output_dir": str(out / "model-ual"),
        "val_set_size": 0.1,
        "eval_steps": max_steps,
        "sequence_len": 256,
        "sample_packing": False,
        "adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lora_target_linear": True,
        "micro_batch_size": 4, "gradient_accumulation_steps": 2, "max_steps": max_steps,
        "learning_rate": 2e-3, "optimizer": "adamw_torch", "lr_scheduler": "constant",
        "logging_steps": 1, "save_strategy": "no", "seed": seed,
        # CPU-safe settings (also fine on a GPU)
        "bf16": False, "fp16": False, "tf32": False, "attn_implementation": "sdpa",
        "lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": False, "lora_embedding_kernel": False,
        "dataset_num_proc": 1, "dataloader_num_workers": 0,
    }
    path = out / "axolotl-ual.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def parse_metrics(text: str) -> list[dict[str, Any]]:
    """The metric dicts the HF Trainer printed (values converted to float where they are numbers)."""
    found = []
    for m in _DICT.finditer(text):
        try:
            d = ast.literal_eval(m.group(0))
        except (ValueError, SyntaxError):
            continue
        if not isinstance(d, dict):
            continue
        out = {}
        for k, v in d.items():
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                out[k] = v
        found.append(out)
    return found


def parse_log(text: str) -> dict[str, Any]:
    metrics = parse_metrics(text)
    banner = next((line.split("] ", 3)[-1] for line in text.splitlines() if "UAL active:" in line), None)
    train = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "eval_loss" in m]
    return {"banner": banner, "train": train, "eval": evals}


def summary(result: dict[str, Any], alpha: float) -> str:
    train, evals = result["train"], result["eval"]
    lines = ["", "=== UAL + axolotl train: summary ==="]
    lines.append(result["banner"] or "NO 'UAL active' LINE: UAL WAS NOT ACTIVE")
    if train:
        smooth = [m["ual_smoothing"] for m in train if "ual_smoothing" in m]
        lines.append(f"steps: {len(train)}; loss {train[0]['loss']:.4f} -> {train[-1]['loss']:.4f}")
        if smooth:
            lines.append(f"ual_smoothing: mean {sum(smooth) / len(smooth):.4f} over the steps (ual_alpha = {alpha}; "
                         f"per step {min(smooth):.3f}..{max(smooth):.3f}; a token-weighted mean, so long open-ended replies weigh more than their share of samples)")
    if evals:
        e = evals[-1]
        lines.append(f"eval_loss: {e['eval_loss']:.4f}" + (f", eval_ual_smoothing: {e['eval_ual_smoothing']:.4f}"
                                                         if "eval_ual_smoothing" in e else ""))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ual_plugin.demo.tiny import build_tiny_llama

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/4] demo data and a tiny model in {out}", flush=True)
    data, rows = build_data(out, args.n_train, args.seed)
    model = build_tiny_llama(out / "tiny-model", texts=[m["content"] for r in rows for m in r["messages"]])
    print(f"[2/4] scoring ({args.scorer})", flush=True)
    scored = score(data, rows, model, args.scorer, args.seed)
    status, _ = train_with_axolotl(out, model, scored, args.alpha, args.max_steps, args.seed, step="[3/4]")
    return status


def train_with_axolotl(out: Path, model: Path, scored: Path, alpha: float, max_steps: int, seed: int,
                       step: str = "") -> tuple[int, dict[str, Any]]:
    """Write a YAML with the two UAL lines, `ual check` it, run the real `axolotl train`, summarise."""
    out, model, scored = Path(out).resolve(), Path(model).resolve(), Path(scored).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = write_config(out, model, scored, alpha, max_steps, seed)
    print(f"{step} ual check {config}".strip(), flush=True)
    from ual_plugin.axolotl.check import check

    status, report = check(str(config))
    print("\n".join(report), flush=True)
    if status != 0:
        return status, {}
    print(f"{step} axolotl train {config}  (log: {out / 'train.log'})".strip(), flush=True)
    axolotl = os.path.join(os.path.dirname(sys.executable), "axolotl")
    with open(out / "train.log", "w", encoding="utf-8") as log:
        proc = subprocess.run([axolotl, "train", str(config)], env=demo_env(), stdout=log, stderr=subprocess.STDOUT,
                              cwd=out)
    text = (out / "train.log").read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        print("\n".join(text.splitlines()[-40:]))
        print(f"axolotl train failed (exit {proc.returncode}); full log: {out / 'train.log'}")
        return proc.returncode, {}
    parsed = parse_log(text)
    print(summary(parsed, alpha))
    print(f"\nconfig: {config}\nlog: {out / 'train.log'}\nadapter: {out / 'model-ual'}")
    return 0, parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ual_plugin.demo.axolotl_run", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
