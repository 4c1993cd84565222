"""``UALAxolotlTrainer``: Axolotl's trainer with the UAL loss.

The shared ``UALTrainerCore`` installs the loss in the model's forward (so FSDP and ZeRO-3 work),
sets each batch's request around Axolotl's own ``compute_loss`` and logs ``ual_smoothing`` (and, in
PPL mode, ``ual_ppl_running_mean``). This adapter adds what is Axolotl-specific:
- column mode fits the score -> smoothing map once, on the whole (merged, split) training set,
  and applies the same map to the evaluation set; PPL mode needs no score;
- the collators Axolotl built are wrapped (``UALCollator``) so ``ual_smoothing`` reaches the batch;
- metrics go through ``AxolotlTrainer.store_metrics``.
Axolotl's own ``compute_loss`` runs under the request (it keeps its token counts and model quirks).
"""

from __future__ import annotations

import logging

import numpy as np
from axolotl.core.trainers.base import AxolotlTrainer

from ual_plugin.axolotl.collator import UALCollator
from ual_plugin.axolotl.dataset import SCORE_COLUMN
from ual_plugin.causal_lm import unwrap_model
from ual_plugin.data import label_token_counts
from ual_plugin.mapping import SmoothingMap, describe_means, fit_smoothing_map
from ual_plugin.trainer_core import UALTrainerCore

LOG = logging.getLogger("axolotl.integrations.ual")


class UALAxolotlTrainer(UALTrainerCore, AxolotlTrainer):
    """``AxolotlTrainer`` whose loss is Uncertainty-Aware Learning (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        targs = kwargs.get("args")
        self._ual_configure(targs)
        self._ual_columns = self._ual_on and targs.ual_mode == "column"
        self.ual_map: SmoothingMap | None = None
        super().__init__(*args, **kwargs)
        if not self._ual_on:
            return
        self._ual_attach()  # after AxolotlTrainer.__init__, which turns model_accepts_loss_kwargs off for Llama
        if self._ual_columns or targs.ual_mode == "uniform":
            if self._ual_columns:
                self.ual_map = self._ual_fit_map()
                wrap = {"to_smoothing": self.ual_map.apply_one}
            else:  # uniform: ual_alpha on every token, no score
                wrap = {"to_smoothing": None, "constant": float(targs.ual_alpha)}
            self.data_collator = UALCollator(self.data_collator, **wrap)
            self.train_data_collator = self.data_collator
            if self.eval_data_collator is not None:
                self.eval_data_collator = UALCollator(self.eval_data_collator, **wrap)
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
        tokens = label_token_counts(train["labels"]) if "labels" in names else None
        per = getattr(self.args, "ual_alpha_per", "sample")
        if per == "token" and tokens is None:
            raise ValueError("ual_alpha_per: token needs the training set's `labels` column to count label tokens")
        smap = fit_smoothing_map(scores, alpha=self.args.ual_alpha, v_max=self.args.ual_v_max, per=per, tokens=tokens)
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
        if self.ual_map is None:  # uniform
            return (f"UAL active: mode=uniform, alpha={a.ual_alpha}, "
                    f"{describe_means(a.ual_alpha, a.ual_alpha, a.ual_alpha_per)}; {setup}")
        s = getattr(self, "_ual_fit_stats", {})
        m = self.ual_map
        return (
            f"UAL active: mode=column, alpha={a.ual_alpha}, v_max={a.ual_v_max}, beta={m.beta:.6g}, "
            f"field='{a.ual_uncertainty_field}', fitted on {s.get('n')} training samples: {m.describe_means()} "
            f"(smoothing {s.get('min', 0.0):.4g}..{s.get('max', 0.0):.4g}, {s.get('clipped', 0)} clipped at v_max); "
            f"{setup}"
        )

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self._ual_columns and self._signature_columns is not None and SCORE_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, SCORE_COLUMN]

    # ------------------------------------------------------------------ loss and metrics
    def _ual_store_metrics(self, mode: str, metrics: dict[str, float]) -> None:
        prefix = "eval_" if mode == "eval" else ""
        self.store_metrics({f"{prefix}{key}": value for key, value in metrics.items()}, train_eval=mode)


__all__ = ["UALAxolotlTrainer"]
