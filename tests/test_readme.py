"""Every Python block of README.md runs as written: only the hub model's name becomes a local tiny model, and
``use_cpu=True`` is added to the configs. The datasets and tensors the blocks name are made here."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_MODEL = "Qwen/Qwen2.5-0.5B"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def as_run_here(code: str, model_dir: str) -> str:
    """The block with the hub name replaced and use_cpu=True in every config (the only two edits)."""
    code = code.replace(f'"{HUB_MODEL}"', repr(str(model_dir)))
    return re.sub(r"\b((?:UAL)?SFTConfig)\(", r"\1(use_cpu=True, ", code)


def test_the_readme_has_the_blocks_this_test_runs():
    blocks = python_blocks()
    assert any("UALSFTTrainer" in b for b in blocks)
    assert any("compute_loss_func=ual_loss" in b for b in blocks)
    assert any("linear_smoothed_cross_entropy" in b for b in blocks)
    assert all(HUB_MODEL in b for b in blocks if "model=" in b)  # no other hub name to replace


def _namespace() -> dict:
    from datasets import Dataset

    rows = [{"prompt": f"What is {i} plus {i}?", "completion": f" It is {2 * i}.", "uncertainty": float(1 + 6 * i)}
            for i in range(32)]  # 12 steps at the defaults (3 epochs, batch 8): one log at logging_steps=10
    scored = Dataset.from_list(rows)
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 101, bias=False)
    return {
        "train_ds": scored, "eval_ds": scored.select(range(6)).remove_columns("uncertainty"),
        "ds": scored.remove_columns("uncertainty"),
        "hidden": torch.randn(4, 7, 32, requires_grad=True), "lm_head": head,
        "labels": torch.randint(0, 101, (4, 7)), "smoothing": torch.rand(4, 7) * 0.3,
    }


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_block_runs_as_written(index, tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("trl")
    code = python_blocks()[index]
    monkeypatch.chdir(tmp_path)  # the blocks write to output_dir="out"
    namespace = _namespace()
    exec(compile(as_run_here(code, tiny_model_dir), f"README.md python block {index}", "exec"), namespace)
    trainer = namespace.get("trainer")
    if trainer is None:
        loss = namespace["loss"]
        assert math.isfinite(float(loss))
        loss.backward()
        assert namespace["hidden"].grad is not None
        return
    if not trainer.state.log_history:
        trainer.train()  # a block that only builds the trainer: train it as its next line would
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(math.isfinite(h["loss"]) and "ual_smoothing" in h for h in logs)
    metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    assert math.isfinite(metrics.get("eval_loss", 0.0))
    prediction = trainer.predict(trainer.eval_dataset if trainer.eval_dataset is not None else trainer.train_dataset)
    assert math.isfinite(prediction.metrics["test_loss"])
