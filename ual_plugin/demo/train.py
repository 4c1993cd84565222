"""One stage-1 run: one arm, one seed, through ``UALSFTTrainer``'s public interface."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    steps: int
    batch_size: int
    learning_rate: float
    max_length: int = 32
    logging_steps: int = 5
    use_cpu: bool = True
    bf16: bool = False
    lora_r: int = 0  # 0: full fine-tuning; else a LoRA adapter of this rank on lora_targets
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    max_grad_norm: float = 1.0  # the Trainer's default; 0 turns clipping off


@dataclass
class TrainResult:
    model: Any
    tokenizer: Any
    history: list[dict[str, Any]]  # the Trainer's log_history
    smoothing_map: Any  # the fitted SmoothingMap (None for SFT and uniform)
    checkpoints: dict[int, Any] = field(default_factory=dict)  # step -> what ``at_checkpoint`` returned

    @property
    def losses(self) -> list[tuple[int, float]]:
        """(step, training loss) at every logging step."""
        return [(int(h["step"]), float(h["loss"])) for h in self.history if "loss" in h and "step" in h]


def _checkpoint_callback(steps: set[int], at_checkpoint: Callable[[Any, int], Any], out: dict[int, Any]) -> Any:
    from transformers import TrainerCallback

    class Checkpoints(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if state.global_step in steps:
                model.eval()
                out[state.global_step] = at_checkpoint(model, state.global_step)
                model.train()

    return Checkpoints()


def train_arm(model_dir: Path, rows: list[dict], options: dict, seed: int, cfg: TrainConfig,
              checkpoint_steps: tuple[int, ...] = (),
              at_checkpoint: Callable[[Any, int], Any] | None = None) -> TrainResult:
    """Fine-tune the model in ``model_dir`` on ``rows`` with the ``UALSFTConfig`` ``options`` (not saved; with
    ``cfg.lora_r`` the returned model is the PEFT model). ``at_checkpoint(model, step)`` runs, in eval mode,
    after each of ``checkpoint_steps``."""
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback

    from ual_plugin.trl import UALSFTConfig, UALSFTTrainer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        args = UALSFTConfig(
            output_dir=tmp, max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
            logging_steps=cfg.logging_steps, save_strategy="no", report_to=[], use_cpu=cfg.use_cpu, bf16=cfg.bf16,
            seed=seed, max_grad_norm=cfg.max_grad_norm,
            data_seed=seed, max_length=cfg.max_length, disable_tqdm=True, dataset_num_proc=None,
            assistant_only_loss=True, gradient_checkpointing=False, **options,
        )
        peft_config = None
        if cfg.lora_r:
            from peft import LoraConfig

            peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.05,
                                     target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM")
        trainer = UALSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                processing_class=tokenizer, peft_config=peft_config)
        trainer.remove_callback(PrinterCallback)  # the demo prints one line per run instead of every log dict
        checkpoints: dict[int, Any] = {}
        if at_checkpoint is not None and checkpoint_steps:
            trainer.add_callback(_checkpoint_callback(set(checkpoint_steps), at_checkpoint, checkpoints))
        trainer.train()
    trainer.model.eval()
    return TrainResult(trainer.model, tokenizer, trainer.state.log_history, trainer.ual_map, checkpoints)
