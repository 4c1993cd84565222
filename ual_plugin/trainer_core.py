"""``UALTrainerCore``: what the TRL and Axolotl trainers share (a mixin placed before their base class).

It owns the ``ual_*`` behaviour: the PPL smoother, the loss entry installed in the model's
forward, ``compute_loss`` (a ``UALRequest`` set around the framework's own ``compute_loss``, which
runs ``model(**batch)`` and reads the loss from its outputs), the metric window and its logging,
and the PPL running mean saved with checkpoints. Adapters implement ``_ual_store_metrics`` and may
override ``_ual_request_flags`` (what the framework's ``compute_loss`` reads from the outputs) and
``_ual_fused_head_available``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ual_plugin.causal_lm import (
    UALRequest,
    compile_repeated_blocks,
    install_ual_forward,
    logit_transform,
    remove_ual_forward,
    ual_request,
    unwrap_model,
)
from ual_plugin.data import TOKEN_COLUMN
from ual_plugin.options import check_ual_options, options_of
from ual_plugin.ppl import STATE_FILE, PPLSmoother, checkpoint_folder, load_run_state, save_run_state

LOG = logging.getLogger("ual_plugin")


class SmoothingWindow:
    """Per-mode running sums (smoothing, label tokens, top-1 hits, unsmoothed NLL, entropy and the label tokens
    it was measured on, per-sample smoothing and samples) between two log calls.

    Kept on the device, so a training step adds no host sync; summed over processes only when
    read, from ``Trainer.log``, which every rank calls.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}

    def add(self, mode: str, stats: dict[str, torch.Tensor]) -> None:
        device = stats["n_tokens"].device
        zero = torch.zeros((), device=device)
        values = torch.stack([stats["smoothing_sum"].double(), stats["n_tokens"].double(),
                              stats["n_correct"].double(), stats.get("nll_sum", zero).double().to(device),
                              stats.get("entropy_sum", zero).double().to(device),
                              stats.get("entropy_tokens", zero).double().to(device),
                              stats.get("sample_smoothing_sum", zero).double().to(device),
                              stats.get("n_samples", zero).double().to(device)])
        current = self._sums.get(mode)
        self._sums[mode] = values if current is None else current + values.to(current.device)

    def pop(self, mode: str, accelerator: Any = None) -> dict[str, float]:
        """Metrics over the window: per label token 'ual_smoothing', 'mean_token_accuracy' and 'entropy' (over
        the steps that measured it), 'ual_smoothing_per_sample' (the unit of ual_alpha_per='sample'), and in
        evaluation 'nll' (the unsmoothed loss, comparable with a plain-SFT run's loss); empty if no tokens."""
        sums = self._sums.pop(mode, None)
        if sums is None:
            sums = torch.zeros(8, dtype=torch.float64)
        if accelerator is not None and accelerator.num_processes > 1:
            sums = accelerator.reduce(sums.to(accelerator.device), "sum")
        total, count, correct, nll, entropy, entropy_count, per_sample, samples = (float(x) for x in sums)
        if count <= 0:
            return {}
        metrics = {"ual_smoothing": total / count, "mean_token_accuracy": correct / count}
        if samples > 0:
            metrics["ual_smoothing_per_sample"] = per_sample / samples
        if entropy_count > 0:
            metrics["entropy"] = entropy / entropy_count
        if mode == "eval":
            metrics["nll"] = nll / count
        return metrics


def _is_sharded(trainer: Any) -> bool:
    """Whether FSDP or DeepSpeed ZeRO-3 shards the parameters (the head weight included)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover
        return False
    return bool(is_deepspeed_zero3_enabled())


def _state_callback(trainer: UALTrainerCore) -> Any:
    """A ``TrainerCallback`` writing the PPL running mean into each checkpoint folder."""
    from transformers import TrainerCallback

    class UALStateCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            smoother = trainer._ual_ppl  # every rank holds the same (summed) values
            folder = checkpoint_folder(args, state)
            if smoother is not None and state.is_world_process_zero and os.path.isdir(folder):
                save_run_state(smoother, folder)

    return UALStateCallback()


class UALTrainerCore:
    """Shared UAL behaviour for ``transformers.Trainer`` subclasses (see the module docstring)."""

    ual_loss_backend: str = "chunked"

    # ------------------------------------------------------------------ adapter hooks
    def _ual_request_flags(self, training: bool, return_outputs: bool, inputs: dict) -> dict[str, bool]:
        """``UALRequest`` switches for one ``compute_loss`` call. The default suits a framework whose
        ``compute_loss`` reads only ``outputs.loss``: the router loss is left to ``_ual_add_router_aux``,
        full logits are built for evaluation with metrics, entropy is measured on logged steps."""
        loss_only = inputs.get("_prediction_loss_only")  # SFTTrainer.prediction_step's note (trl < 1.16)
        return {"router_aux": False, "keep_logits": return_outputs and not training and loss_only is not True,
                "entropy": not training or self._ual_step_is_logged()}

    def _ual_store_metrics(self, mode: str, metrics: dict[str, float]) -> None:
        """Hand metrics to the framework's own metric mechanism before it logs."""
        raise NotImplementedError

    def _ual_fused_head_available(self) -> bool:
        return False

    def _ual_router_aux_coef(self) -> float:
        """Weight of the MoE router loss added by ``_ual_add_router_aux``: the model config's."""
        lm = unwrap_model(self.model)
        config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
        return float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)

    # ------------------------------------------------------------------ setup
    def _ual_configure(self, args: Any) -> None:
        """Before the framework's ``__init__``: validate the options, make the PPL smoother."""
        self._ual_on = bool(getattr(args, "ual", False))
        self._ual_ppl: PPLSmoother | None = None
        self._ual_window = SmoothingWindow()
        if not self._ual_on:
            return
        check_ual_options(options_of(args))
        if args.ual_mode == "ppl":
            self._ual_ppl = PPLSmoother(args.ual_alpha, args.ual_v_max, args.ual_ppl_window)

    def _ual_attach(self) -> None:
        """After the framework's ``__init__`` (before ``accelerator.prepare``): install the loss in the model."""
        if not self._ual_on:
            return
        install_ual_forward(self.model)
        if self.args.torch_compile:
            self._ual_compile()
        self.ual_loss_backend = self._ual_resolve_backend(getattr(self.args, "ual_loss_backend", "auto"))
        # The loss is sum / num_items_in_batch: have Trainer count the items and pass them, and not rescale for GA.
        self.model_accepts_loss_kwargs = True
        if hasattr(self, "loss_is_scaled_for_ga"):  # transformers >= 5.19 name of the same switch
            self.loss_is_scaled_for_ga = None
        self.add_callback(_state_callback(self))

    def _ual_compile(self) -> None:
        """``torch_compile=True``: compile the decoder blocks one by one. The UAL forward is never traced (see
        ``causal_lm._ual_forward``), so the whole-model compile that accelerate adds would compile nothing."""
        n = compile_repeated_blocks(self.model, checkpointed=bool(self.args.gradient_checkpointing),
                                    backend=self.args.torch_compile_backend, mode=self.args.torch_compile_mode)
        if n == 0:
            raise ValueError(
                f"UAL with torch_compile=True compiles the model's repeated blocks (its decoder layers), but "
                f"{type(unwrap_model(self.model)).__name__} has none; train without torch_compile"
            )
        LOG.warning("UAL: torch_compile=True compiles the model's %d decoder blocks one by one (the UAL loss around "
                    "them runs eagerly, so its gradients are exact)", n)

    def _ual_resolve_backend(self, choice: str) -> str:
        if choice in ("auto", "chunked"):
            return "chunked"
        problems = []
        if not self._ual_fused_head_available():
            problems.append("it needs TRL's fused LM head (trl >= 1.16, UALSFTTrainer)")
        if logit_transform(self.model)[0] is not None:
            problems.append("the model soft-caps its logits")
        if _is_sharded(self):
            problems.append("it reads the LM-head weight directly, which FSDP / ZeRO-3 shard")
        if problems:
            raise ValueError(f"ual_loss_backend='trl_fused' cannot be used: {'; '.join(problems)}. Use 'chunked'.")
        return choice

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._ual_on:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        smoothing = inputs.pop(TOKEN_COLUMN, None)
        if self._ual_ppl is None and smoothing is None:
            raise ValueError(
                f"UAL column mode: the batch has no '{TOKEN_COLUMN}' tensor (was the data collator replaced after the "
                "trainer was built?)"
            )
        if "labels" not in inputs:
            raise ValueError("UAL: the batch has no `labels` (UAL trains on the label tokens)")
        install_ual_forward(model)  # a no-op while installed; back after train() took it off (evaluate, predict)
        training = model.training
        flags = self._ual_request_flags(training, return_outputs, inputs)
        request = UALRequest(smoothing=smoothing, ppl=self._ual_ppl, update_ppl=training,
                             backend=self.ual_loss_backend, plain_nll=not training, **flags)
        want_outputs = return_outputs or not request.router_aux  # the router loss is added here from the outputs
        with ual_request(request):
            result = super().compute_loss(model, inputs, return_outputs=want_outputs,
                                          num_items_in_batch=num_items_in_batch)
        loss, outputs = result if want_outputs else (result, None)
        if not request.router_aux:
            loss = self._ual_add_router_aux(loss, outputs, num_items_in_batch)
        if "n_tokens" not in request.stats:
            raise RuntimeError(
                "UAL: the model's forward did not compute the UAL loss (the UAL entry is not on this model, or the "
                "forward ran in another thread, as with torch.nn.DataParallel; use one process per GPU)"
            )
        self._ual_window.add("train" if training else "eval", request.stats)
        return (loss, outputs) if return_outputs else loss

    def _ual_step_is_logged(self) -> bool:
        """Whether the optimizer step now running ends with a log: the entropy metric (an extra pass over the
        logits on CPU) is measured on those steps only, an unbiased sample of the steps it averages."""
        args = self.args
        if args.logging_strategy != "steps":
            return True
        every = max(int(self.state.logging_steps or args.logging_steps), 1)  # Trainer resolves a fraction there
        step = self.state.global_step + 1  # the step now running
        return step % every == 0 or (step == 1 and bool(args.logging_first_step))

    def _ual_add_router_aux(self, loss: torch.Tensor, outputs: Any, num_items_in_batch: Any) -> torch.Tensor:
        """``loss`` plus the MoE router loss at the trainer's weight. It is a per-micro-batch mean, so with
        ``num_items_in_batch`` (Trainer then leaves accumulation to the loss) it is averaged over the
        accumulation steps, and it is not scaled by the world size (DDP averages it)."""
        aux = getattr(outputs, "aux_loss", None)
        coef = self._ual_router_aux_coef() if aux is not None else 0.0
        if not coef:
            return loss
        steps = getattr(self, "current_gradient_accumulation_steps", 1) if num_items_in_batch is not None else 1
        return loss + coef * aux.to(loss.device) / steps

    # ------------------------------------------------------------------ logging and state
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._ual_on:
            mode = "train" if "loss" in logs else "eval" if any(k.startswith("eval_") for k in logs) else None
            if mode is not None:
                # every rank calls log, so the window is summed over ranks here
                metrics = self._ual_window.pop(mode, getattr(self, "accelerator", None))
                if self._ual_ppl is not None and self._ual_ppl.count:
                    metrics["ual_ppl_running_mean"] = self._ual_ppl.running_mean
                if metrics:
                    self._ual_store_metrics(mode, metrics)
        super().log(logs, *args, **kwargs)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if self._ual_on and self._ual_ppl is not None and resume_from_checkpoint:
            self._ual_load_state(resume_from_checkpoint)
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            if self._ual_on:  # UAL's patches come off, but not a wrapper around them (see remove_ual_forward)
                remove_ual_forward(self.model)

    def _ual_load_state(self, checkpoint: str | bool) -> None:
        from transformers.trainer_utils import get_last_checkpoint

        folder = get_last_checkpoint(self.args.output_dir) if checkpoint is True else checkpoint
        load_run_state(self._ual_ppl, folder)


__all__ = ["STATE_FILE", "SmoothingWindow", "UALTrainerCore"]
