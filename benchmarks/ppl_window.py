"""PPL mode's mean smoothing over training: the all-history running mean (the paper's) against the
windowed one (the default), side by side on the same tiny model, data and seed.

    python benchmarks/ppl_window.py [--steps 40] [--write]
"""

from __future__ import annotations

import argparse
import tempfile

from results_md import provenance, write_section


def trajectory(model_dir: str, rows: list[dict], window: int, steps: int, out_dir: str) -> list[float]:
    """The logged ``ual_smoothing`` at every step of one PPL-mode run."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ual_plugin.trl import UALSFTConfig, UALSFTTrainer

    args = UALSFTConfig(output_dir=out_dir, ual_mode="ppl", ual_alpha=0.1, ual_ppl_window=window, max_steps=steps,
                        learning_rate=3e-3, per_device_train_batch_size=8, logging_steps=1, use_cpu=True,
                        report_to=[], save_strategy="no", disable_tqdm=True, seed=0, data_seed=0, max_length=64,
                        dataset_num_proc=None, bf16=False)
    trainer = UALSFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args,
                            train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(model_dir))
    trainer.train()
    return [h["ual_smoothing"] for h in trainer.state.log_history if "ual_smoothing" in h]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--windows", default="0,512", help="comma-separated ual_ppl_window values to compare")
    ap.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    from transformers.utils import logging as hf_logging

    from ual_plugin.demo.tiny import build_tiny_llama
    from ual_plugin.options import DEFAULT_PPL_WINDOW

    hf_logging.set_verbosity_error()
    rows = [{"prompt": f"What is {i} plus {i % 7}?", "completion": f" It is {i + i % 7}."} for i in range(320)]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_llama(f"{tmp}/model", texts=[r["prompt"] + r["completion"] for r in rows]))
        windows = [int(w) for w in args.windows.split(",")]
        runs = {w: trajectory(model_dir, rows, w, args.steps, f"{tmp}/out{w}") for w in windows}
    shown = sorted({0, 4, 9, 19, args.steps - 1} & set(range(args.steps)))
    lines = [provenance("cpu"), "Tiny Llama, PPL mode, ual_alpha 0.1, lr 3e-3, 8 samples a step; logged ual_smoothing:\n",
             "| step | " + " | ".join(str(s + 1) for s in shown) + " |", "|---|" + "---|" * len(shown)]
    for w, values in runs.items():
        name = "ual_ppl_window=0 (all history)" if w == 0 else f"ual_ppl_window={w}"
        if w == DEFAULT_PPL_WINDOW:
            name += " (default)"
        lines.append(f"| {name} | " + " | ".join(f"{values[s]:.4f}" for s in shown) + " |")
    body = "\n".join(lines) + "\n"
    print(body)
    if args.write:
        write_section("ppl-window", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
