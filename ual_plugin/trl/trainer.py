"""``UALSFTTrainer``: TRL's ``SFTTrainer`` with the UAL loss.

The shared ``UALTrainerCore`` installs the loss in the model's forward, sets each batch's request
around ``SFTTrainer.compute_loss`` and logs ``ual_smoothing``. TRL's method runs as it is: it asks
the model for its loss in its own contract (``outputs.loss`` with ``chunked_nll`` counts on trl
1.9, per-token ``log_probs`` from ``fused_lm_head=True`` on trl >= 1.16), which the UAL forward
answers with UAL's loss; TRL keeps its normalisation, router-loss weighting, entropy, accuracy and
token-count metrics. This adapter adds what is TRL-specific:
- dataset preparation, so each sample's smoothing travels as one float32 per sample (or, packed,
  per token) through truncation and packing (TRL's own packing would drop it);
- the collator (wrapped, not replaced), so the smoothing reaches the batch aligned with the tokens;
- metrics UAL adds go through TRL's ``_metrics``.
"""

from __future__ import annotations

import logging

import numpy as np
from datasets import Dataset, IterableDataset, Sequence, Value
from trl import SFTTrainer
from trl.data_utils import pack_dataset

from ual_plugin.data import (
    NO_SCORE,
    SAMPLE_COLUMN,
    TOKEN_COLUMN,
    add_token_column,
    label_token_counts,
    read_uncertainty,
)
from ual_plugin.mapping import SmoothingMap, describe_means, fit_smoothing_map
from ual_plugin.trainer_core import UALTrainerCore
from ual_plugin.trl.collator import UALCollator
from ual_plugin.trl.config import UALSFTConfig

try:  # trl >= 1.16 adds a fused LM head to every model; its compute_loss then asks for per-token log-probs
    from trl.trainer.utils import add_fused_lm_head  # noqa: F401

    _TRL_HAS_FUSED_HEAD = True
except ImportError:
    _TRL_HAS_FUSED_HEAD = False

_SAMPLE_COLUMN = "_ual_sample_smoothing"
LOG = logging.getLogger("ual_plugin")


class UALSFTTrainer(UALTrainerCore, SFTTrainer):
    """Drop-in for ``SFTTrainer`` that trains with Uncertainty-Aware Learning.

    Column mode (default) reads ``args.ual_uncertainty_field`` from the training set, fits the
    smoothing map once on all of it (mean ``ual_alpha`` per ``ual_alpha_per``) and applies the same
    map to evaluation sets (one without the column is evaluated with smoothing 0). PPL and uniform
    mode need no column.
    """

    def __init__(self, model=None, args: UALSFTConfig | None = None, *pargs, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = UALSFTConfig(f"{str(name).split('/')[-1]}-UAL")
        if not isinstance(args, UALSFTConfig):
            raise TypeError(
                f"UALSFTTrainer needs a UALSFTConfig (got {type(args).__name__}); it carries the ual_* options"
            )
        if args.ual and kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "ual=True computes the loss itself; do not pass compute_loss_func (or set ual=False)."
            )
        self.ual_map: SmoothingMap | None = None
        self._ual_train_prepared = False  # the map is fitted once, on the first "train" set (any later one is eval)
        self._ual_configure(args)
        self._ual_columns = args.ual and args.ual_mode in ("column", "uniform")
        super().__init__(model, args, *pargs, **kwargs)
        self._ual_attach()
        if self._ual_columns:
            self._ual_check_prepared(self.train_dataset)
            self.data_collator = UALCollator(self.data_collator, padding_free=self.padding_free)

    @staticmethod
    def _ual_check_prepared(dataset) -> None:
        """Stop at construction when the training set skipped preparation and so carries no smoothing."""
        columns = getattr(dataset, "column_names", None)
        if columns is not None and TOKEN_COLUMN not in columns and SAMPLE_COLUMN not in columns:
            raise ValueError(
                f"UAL: the training set has no per-token '{TOKEN_COLUMN}' column because SFTTrainer did not prepare "
                "it (dataset_kwargs={'skip_prepare_dataset': True}, as vision datasets use), so no smoothing map was "
                "fitted. Let the trainer prepare the dataset, add the column yourself (each sample's smoothing "
                f"repeated over its tokens, e.g. with datasets.map and ual_plugin.data.add_token_column), or use "
                "ual_mode='ppl', which needs no column."
            )

    def _ual_fused_head_available(self) -> bool:
        return _TRL_HAS_FUSED_HEAD

    # ------------------------------------------------------------------ data
    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self._ual_columns:
            missing = [c for c in (TOKEN_COLUMN, SAMPLE_COLUMN) if c not in self._signature_columns]
            self._signature_columns = [*self._signature_columns, *missing]

    def _attach_sample_scores(self, dataset, args: UALSFTConfig, dataset_name: str, is_train: bool):
        """The raw per-sample score column (validated; ``NO_SCORE`` for an eval set without the field)."""
        if isinstance(dataset, IterableDataset):
            raise ValueError(
                "UAL column mode fits the smoothing map on the whole training set, so it needs a map-style "
                "`datasets.Dataset`, not an IterableDataset. Materialise it, or use ual_mode='ppl' or 'uniform'."
            )
        field = args.ual_uncertainty_field
        if args.ual_mode == "uniform":
            values = [float(args.ual_alpha)] * len(dataset)  # the smoothing itself: no map to fit
        elif is_train or field in dataset.column_names:
            has_field = field in dataset.column_names
            values = read_uncertainty(list(dataset[field]) if has_field else None, field, dataset_name,
                                      dataset.column_names)
        else:
            values = [NO_SCORE] * len(dataset)  # no column in an eval set: plain cross-entropy there
        if _SAMPLE_COLUMN in dataset.column_names:
            dataset = dataset.remove_columns(_SAMPLE_COLUMN)
        return dataset.add_column(_SAMPLE_COLUMN, [float(v) for v in values])

    def _sample_smoothing(self, dataset, args: UALSFTConfig, is_train: bool) -> list[float]:
        """Each tokenised sample's smoothing; on the training set, fits the map on its label tokens first."""
        scores = np.asarray(dataset[_SAMPLE_COLUMN], dtype=np.float64)
        if args.ual_mode == "uniform":
            if is_train:
                LOG.warning("UAL active: mode=uniform, %s on %d training samples", describe_means(
                    args.ual_alpha, args.ual_alpha, args.ual_alpha_per), len(scores))
            return scores.tolist()
        if is_train:
            tokens = label_token_counts(dataset["labels"])
            self.ual_map = fit_smoothing_map(scores, alpha=args.ual_alpha, v_max=args.ual_v_max,
                                             per=args.ual_alpha_per, tokens=tokens)
            LOG.warning("UAL active: mode=column, alpha=%s, v_max=%s, beta=%.6g, field='%s', %s on %d training "
                        "samples", args.ual_alpha, args.ual_v_max, self.ual_map.beta, args.ual_uncertainty_field,
                        self.ual_map.describe_means(), len(scores))
        elif self.ual_map is None:
            raise ValueError("UAL: the training set must be prepared before evaluation sets")
        return np.where(scores == NO_SCORE, 0.0, np.minimum(self.ual_map.beta * scores, self.ual_map.v_max)).tolist()

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        prepared = {TOKEN_COLUMN, SAMPLE_COLUMN} & set(getattr(dataset, "column_names", None) or [])
        if not self._ual_columns or prepared:
            return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        # TRL names each eval set by its key, so an eval set may be called "train" too: only the first is the training set
        is_train = dataset_name == "train" and not self._ual_train_prepared
        self._ual_train_prepared |= is_train
        dataset = self._attach_sample_scores(dataset, args, dataset_name, is_train)
        # Let TRL tokenise and build labels, but do truncation and packing here: they must carry our column.
        # (trl < 1.16 with use_liger_kernel also keeps only the columns Liger's collator reads: ours must stay)
        max_length, use_liger = args.max_length, args.use_liger_kernel
        args.max_length, args.use_liger_kernel = None, False
        try:
            dataset = super()._prepare_dataset(dataset, processing_class, args, False, formatting_func, dataset_name)
        finally:
            args.max_length, args.use_liger_kernel = max_length, use_liger
        map_kwargs = {"num_proc": args.dataset_num_proc} if isinstance(dataset, Dataset) else {}
        if max_length is not None and not packing:
            dataset = self._truncate(dataset, max_length, args.truncation_mode, map_kwargs)
        # the map is fitted on the label tokens that are trained on, so after truncation
        smoothing = self._sample_smoothing(dataset, args, is_train)
        dataset = dataset.remove_columns(_SAMPLE_COLUMN).add_column(SAMPLE_COLUMN, smoothing)
        dataset = dataset.cast_column(SAMPLE_COLUMN, Value("float32"))
        if not packing:  # one value per sample; the collator spreads it over the sample's tokens
            return dataset
        # packed rows hold several samples: the values travel per token, in float32, through packing
        dataset = dataset.map(
            add_token_column, fn_kwargs={"sample_key": SAMPLE_COLUMN}, remove_columns=[SAMPLE_COLUMN], **map_kwargs
        )
        dataset = dataset.cast_column(TOKEN_COLUMN, Sequence(Value("float32")))
        if packing:
            if max_length is None:
                raise ValueError("When packing is enabled, `max_length` can't be `None`.")
            dataset = dataset.select_columns(["input_ids", "labels", TOKEN_COLUMN])
            if args.shuffle_dataset:
                dataset = dataset.shuffle(seed=args.seed)
            dataset = pack_dataset(dataset, max_length, args.packing_strategy, map_kwargs)
        return dataset

    @staticmethod
    def _truncate(dataset, max_length: int, truncation_mode: str, map_kwargs: dict):
        if truncation_mode == "keep_start":
            sl = slice(None, max_length)
        elif truncation_mode == "keep_end":
            sl = slice(-max_length, None)
        else:
            raise ValueError(f"Unsupported truncation mode: {truncation_mode}, expected 'keep_start' or 'keep_end'")

        def truncate(example):
            n = len(example["input_ids"])
            return {k: v[sl] for k, v in example.items() if isinstance(v, list) and len(v) == n}

        dataset = dataset.map(truncate, **map_kwargs)
        return dataset.filter(lambda ex: any(label != -100 for label in ex["labels"]), **map_kwargs)

    # ------------------------------------------------------------------ loss and metrics
    def _ual_request_flags(self, training: bool, return_outputs: bool, inputs: dict) -> dict[str, bool]:
        """What ``SFTTrainer.compute_loss`` reads: on trl >= 1.16 the fused head's per-token fields (their entropy
        included; logits for metrics come from TRL's own second forward); on trl < 1.16 ``outputs.loss`` with the
        router loss in it, plus ``entropy_sum`` every step (``chunked_nll``) or the full logits (``nll``)."""
        flags = super()._ual_request_flags(training, return_outputs, inputs)
        flags["router_aux"] = True
        if self._ual_fused_head_available():
            flags.update(keep_logits=False, entropy=False)
        elif self.args.loss_type == "chunked_nll":
            flags.update(entropy=True, trl_counts=True)
        else:  # 'nll': TRL computes its entropy and accuracy from the full logits
            flags.update(keep_logits=True, entropy=False)
        return flags

    def _ual_store_metrics(self, mode: str, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():  # SFTTrainer.log averages them and adds the eval_ prefix
            if key not in _TRL_OWN_METRICS:
                self._metrics[mode][key].append(value)


_TRL_OWN_METRICS = ("entropy", "mean_token_accuracy")  # SFTTrainer.compute_loss logs them from the UAL outputs
