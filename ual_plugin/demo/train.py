"""One demo training run: one arm, one seed, through ``UALSFTTrainer``'s public interface."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ual_plugin.demo.arms import Arm, training_rows


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    learning_rate: float
    alpha: float
    max_length: int = 96
    logging_steps: int = 5


@dataclass
class TrainResult:
    model: Any
    tokenizer: Any
    history: list[dict[str, Any]]  # the Trainer's log_history
    fitted_beta: float | None  # the smoothing map's beta (None for SFT)

    @property
    def losses(self) -> list[tuple[int, float]]:
        """(step, training loss) at every logging step."""
        return [(int(h["step"]), float(h["loss"])) for h in self.history if "loss" in h and "step" in h]

    @property
    def mean_logged_smoothing(self) -> float:
        """Mean of the logged per-token ``ual_smoothing`` (0 for SFT, which logs none)."""
        values = [float(h["ual_smoothing"]) for h in self.history if "ual_smoothing" in h]
        return sum(values) / len(values) if values else 0.0


def train_arm(arm: Arm, model_dir: Path, rows: list[dict], messages, seed: int, cfg: TrainConfig,
              out_dir: Path) -> TrainResult:
    """Train the model in ``model_dir`` on ``rows`` as ``arm`` prescribes; save it to ``out_dir``."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback

    from ual_plugin.trl import UALSFTConfig, UALSFTTrainer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = UALSFTConfig(
        output_dir=str(out_dir), ual=arm.ual, ual_alpha=cfg.alpha, num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, lr_scheduler_type="cosine",
        warmup_steps=5, logging_steps=cfg.logging_steps, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
        seed=seed, data_seed=seed, max_length=cfg.max_length, disable_tqdm=True, loss_type="nll",
        dataset_num_proc=None, assistant_only_loss=True, gradient_checkpointing=False,
    )
    dataset = Dataset.from_list(training_rows(arm, rows, messages))
    trainer = UALSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # the demo prints one line per run instead of every log dict
    trainer.train()
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    smap = trainer.ual_map
    return TrainResult(trainer.model, tokenizer, trainer.state.log_history,
                       None if smap is None else float(smap.beta))
