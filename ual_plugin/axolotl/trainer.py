"""``UALAxolotlTrainer``: Axolotl's trainer with the UAL loss.

It mirrors ``ual_plugin.trl.UALSFTTrainer``'s loss and logging:
- column mode fits the score -> smoothing map once, on the whole (merged, split) training set,
  and applies the same map to the evaluation set; PPL mode needs no score;
- the collators Axolotl built are wrapped (``UALCollator``) so ``ual_smoothing`` reaches the batch;
- ``compute_loss`` runs the model with ``logits_to_keep=1``, takes the final hidden states and
  computes UAL with ``linear_smoothed_cross_entropy`` (the full logits are never built), as
  sum over label tokens / ``num_items_in_batch`` so gradient accumulation (and DDP, with
  ``average_tokens_across_devices``) matches one large batch;
- ``log`` adds ``ual_smoothing`` (mean smoothing over the label tokens of the logging window)
  and, in PPL mode, ``ual_ppl_running_mean``.
"""

from __future__ import annotations

import numpy as np
import torch
from axolotl.core.trainers.base import AxolotlTrainer
from axolotl.utils.logging import get_logger

from ual_plugin.axolotl.collator import UALCollator
from ual_plugin.axolotl.dataset import SCORE_COLUMN
from ual_plugin.causal_lm import (
    SmoothingWindow,
    refuse_sharded_head,
    ual_batch_loss,
    unwrap_model,
)
from ual_plugin.mapping import SmoothingMap, fit_smoothing_map
from ual_plugin.ppl import PPLSmoother

LOG = get_logger("axolotl.integrations.ual")


class UALAxolotlTrainer(AxolotlTrainer):
    """``AxolotlTrainer`` whose loss is Uncertainty-Aware Learning (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        targs = kwargs.get("args")
        self._ual_on = bool(getattr(targs, "ual", False))
        mode = getattr(targs, "ual_mode", "column") or "column"
        self._ual_columns = self._ual_on and mode == "column"
        self._ual_ppl = (
            PPLSmoother(targs.ual_alpha, targs.ual_v_max) if self._ual_on and mode == "ppl" else None
        )
        self.ual_map: SmoothingMap | None = None
        self._ual_window = SmoothingWindow()
        super().__init__(*args, **kwargs)
        if not self._ual_on:
            return
        refuse_sharded_head(getattr(self, "is_fsdp_enabled", False))
        if self._ual_columns:
            self.ual_map = self._ual_fit_map()
            self.data_collator = UALCollator(self.data_collator, self.ual_map.apply_one)
            self.train_data_collator = self.data_collator
            if self.eval_data_collator is not None:
                self.eval_data_collator = UALCollator(self.eval_data_collator, self.ual_map.apply_one)
        # Our loss is already sum / num_items_in_batch: have Trainer count the items and not rescale for GA.
        # (AxolotlTrainer.__init__ sets this to False for models whose forward has no num_items_in_batch.)
        self.model_accepts_loss_kwargs = True
        if hasattr(self, "loss_is_scaled_for_ga"):  # transformers >= 5.19 name of the same switch
            self.loss_is_scaled_for_ga = None
        LOG.info(self.ual_banner())

    # ------------------------------------------------------------------ setup
    def _ual_fit_map(self) -> SmoothingMap:
        train = self.train_dataset
        names = getattr(train, "column_names", None) or []
        if SCORE_COLUMN not in names:
            raise ValueError(
                f"ual_mode: column, but the training set has no '{SCORE_COLUMN}' column: it was not prepared by the UAL "
                "plugin (a prepared dataset made without it, or datasets loaded by another plugin). Delete the "
                "prepared dataset under `dataset_prepared_path` and run again."
            )
        scores = np.asarray(train[SCORE_COLUMN], dtype=np.float64)
        smap = fit_smoothing_map(scores, alpha=self.args.ual_alpha, v_max=self.args.ual_v_max)
        values = smap(scores)
        self._ual_fit_stats = {
            "n": int(scores.size),
            "clipped": int(np.count_nonzero(values >= smap.v_max * (1 - 1e-12))),
            "min": float(values.min()),
            "max": float(values.max()),
        }
        return smap

    def _ual_setup_description(self) -> str:
        """e.g. 'model=LlamaForCausalLM (lora, 4-bit), collator=V2BatchSamplerDataCollatorForSeq2Seq'."""
        lm = unwrap_model(self.model)
        notes = []
        peft_config = getattr(self.model, "peft_config", None)
        if isinstance(peft_config, dict) and peft_config:
            notes.append(str(getattr(next(iter(peft_config.values())), "peft_type", "peft")).split(".")[-1].lower())
        if getattr(lm, "is_loaded_in_4bit", False):
            notes.append("4-bit")
        elif getattr(lm, "is_loaded_in_8bit", False):
            notes.append("8-bit")
        inner = getattr(self.data_collator, "inner", self.data_collator)
        model = type(lm).__name__ + (f" ({', '.join(notes)})" if notes else "")
        return f"model={model}, collator={type(inner).__name__}"

    def ual_banner(self) -> str:
        a = self.args
        setup = self._ual_setup_description()
        if self._ual_ppl is not None:
            return (
                f"UAL active: mode=ppl, alpha={a.ual_alpha}, v_max={a.ual_v_max} (smoothing from each sample's "
                f"perplexity); {setup}"
            )
        s = getattr(self, "_ual_fit_stats", {})
        m = self.ual_map
        return (
            f"UAL active: mode=column, alpha={a.ual_alpha}, v_max={a.ual_v_max}, beta={m.beta:.6g}, "
            f"field='{a.ual_uncertainty_field}', fitted on {s.get('n')} training samples "
            f"(smoothing {s.get('min', 0.0):.4g}..{s.get('max', 0.0):.4g}, {s.get('clipped', 0)} clipped at v_max); "
            f"{setup}"
        )

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self._ual_columns and self._signature_columns is not None and SCORE_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, SCORE_COLUMN]

    # ------------------------------------------------------------------ loss
    def _ual_track_tokens(self, model, inputs) -> None:
        """AxolotlTrainer.compute_loss's tokens-per-second bookkeeping (we do not call it)."""
        if not (self.args.include_tkps and model.training):
            return
        from axolotl.utils.distributed import is_distributed

        key = "labels" if "labels" in inputs else "input_ids"
        trainable = (inputs[key] != -100).sum()
        total = torch.tensor(inputs[key].numel(), device=inputs[key].device)
        if is_distributed():
            torch.distributed.all_reduce(trainable, op=torch.distributed.ReduceOp.SUM)
            torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        if not hasattr(self.state, "tokens"):
            self.state.tokens = {"trainable": torch.zeros(1), "total": torch.zeros(1)}
        self.state.tokens["trainable"] = self.state.tokens["trainable"] + trainable.detach().cpu()
        self.state.tokens["total"] = self.state.tokens["total"] + total.cpu()

    def _ual_model_quirks(self, model, inputs) -> None:
        """The model-specific input fixes AxolotlTrainer.compute_loss applies (Gemma 3/4)."""
        model_type = getattr(getattr(self.accelerator.unwrap_model(model), "config", None), "model_type", None)
        if model_type in ("gemma4", "gemma4_unified") and "mm_token_type_ids" not in inputs and "input_ids" in inputs:
            inputs["mm_token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        if (
            self.args.sample_packing
            and model_type in ("gemma4", "gemma3", "gemma4_unified")
            and "attention_mask" in inputs
            and "position_ids" in inputs
        ):
            del inputs["attention_mask"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._ual_on:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self._ual_track_tokens(model, inputs)
        self._ual_model_quirks(model, inputs)
        mode = "train" if model.training else "eval"
        # num_items_in_batch counts every rank's tokens and DDP averages gradients across ranks
        scale = self.accelerator.num_processes if (
            self.args.average_tokens_across_devices and num_items_in_batch is not None) else 1.0
        out, outputs, model_inputs = ual_batch_loss(model, inputs, num_items_in_batch, self._ual_ppl, scale)
        loss = out.loss
        self._ual_window.add(mode, out)
        if return_outputs and (self.compute_metrics is not None or self.preprocess_logits_for_metrics is not None):
            with torch.no_grad():
                outputs = model(**model_inputs)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._ual_on:
            if "loss" in logs:
                mode, prefix = "train", ""
            elif any(k.startswith("eval_") for k in logs):
                mode, prefix = "eval", "eval_"
            else:
                mode = prefix = None
            if mode is not None:
                # every rank calls log (Trainer gathers its loss here too), so the window is summed over ranks
                for key, value in self._ual_window.pop(mode, self.accelerator).items():
                    logs[f"{prefix}{key}"] = value
                if self._ual_ppl is not None and self._ual_ppl.count:
                    logs[f"{prefix}ual_ppl_running_mean"] = self._ual_ppl.running_mean
        super().log(logs, start_time)


__all__ = ["UALAxolotlTrainer"]
