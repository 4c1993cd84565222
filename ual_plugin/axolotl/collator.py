"""``UALCollator``: wraps whichever collator Axolotl built and adds the per-token ``ual_smoothing``.

Axolotl picks the collator from the config (padded ``DataCollatorForSeq2Seq``, the V1 / V2
multipack ``BatchSampler`` collators for ``sample_packing``, ``DataCollatorWithFlattening`` for
``batch_flattening``); none of them can carry an extra per-row value (the multipack ones would
try to concatenate it as a sequence). The wrapper strips ``_ual_uncertainty`` from the features,
lets the wrapped collator build the batch exactly as it would without UAL, then lays the
smoothing out like ``input_ids``:

- padded batches: one row per example, padded on the tokenizer's padding side;
- multipack batches (a list of bins, or one flat list = one bin): the bin's samples concatenated
  in order into one row, then padded like the row;
- padding-free flattening: every example concatenated into the single row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ual_plugin.axolotl.dataset import NO_SCORE, SCORE_COLUMN
from ual_plugin.data import TOKEN_COLUMN, collate_token_column


def _is_multipack(inner: Any) -> bool:
    try:
        from axolotl.utils.collators import (
            BatchSamplerDataCollatorForSeq2Seq,
            V2BatchSamplerDataCollatorForSeq2Seq,
        )
    except ImportError:  # pragma: no cover - axolotl is installed wherever this module is used
        return False
    return isinstance(inner, (BatchSamplerDataCollatorForSeq2Seq, V2BatchSamplerDataCollatorForSeq2Seq))


def _is_padding_free(inner: Any) -> bool:
    try:
        from transformers import DataCollatorWithFlattening
    except ImportError:  # pragma: no cover
        return False
    return isinstance(inner, DataCollatorWithFlattening)


class UALCollator:
    """Calls ``inner`` without the score column, then adds ``ual_smoothing`` aligned with ``input_ids``.

    ``to_smoothing`` maps one raw score to its smoothing value (the fitted ``SmoothingMap``);
    rows scored ``NO_SCORE`` (evaluation sets without a score column) get 0. ``to_smoothing=None``
    with ``constant``: every token gets ``constant`` (uniform mode; rows carry no score).
    """

    def __init__(
        self,
        inner: Callable[..., dict[str, Any]],
        to_smoothing: Callable[[float], float] | None,
        multipack: bool | None = None,
        padding_free: bool | None = None,
        constant: float | None = None,
    ):
        if (to_smoothing is None) == (constant is None):
            raise ValueError("UALCollator needs exactly one of to_smoothing (column mode) and constant (uniform mode)")
        self.inner = inner
        self.to_smoothing = to_smoothing
        self.constant = constant
        self.multipack = _is_multipack(inner) if multipack is None else multipack
        self.padding_free = _is_padding_free(inner) if padding_free is None else padding_free

    @property
    def padding_side(self) -> str:
        tokenizer = getattr(self.inner, "tokenizer", None)
        return getattr(tokenizer, "padding_side", None) or "right"

    def _smoothing(self, feature: dict[str, Any]) -> list[float]:
        if self.constant is not None:
            return [float(self.constant)] * len(feature["input_ids"])
        score = float(feature[SCORE_COLUMN])
        value = 0.0 if score == NO_SCORE else float(self.to_smoothing(score))
        return [value] * len(feature["input_ids"])

    def _call_inner(self, features: Any, return_tensors: str | None) -> dict[str, Any]:
        if return_tensors is None:
            return self.inner(features)
        return self.inner(features, return_tensors=return_tensors)

    def __call__(self, features: Any, return_tensors: str | None = None) -> dict[str, Any]:
        if not isinstance(features, list) or not features:
            return self._call_inner(features, return_tensors)
        nested = isinstance(features[0], list)
        if nested:
            groups = features
        elif self.multipack:
            groups = [features]  # the multipack collators treat a flat list as one bin
        else:
            groups = [[f] for f in features]
        if self.constant is None and not any(SCORE_COLUMN in f for group in groups for f in group):
            return self._call_inner(features, return_tensors)
        rows = [[v for f in group for v in self._smoothing(f)] for group in groups]

        def strip(f: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in f.items() if k != SCORE_COLUMN}

        stripped = [[strip(f) for f in g] for g in features] if nested else [strip(f) for f in features]
        batch = self._call_inner(stripped, return_tensors)
        batch[TOKEN_COLUMN] = collate_token_column(
            rows, batch["input_ids"], padding_free=self.padding_free, padding_side=self.padding_side
        )
        return batch

    def __getattr__(self, name: str) -> Any:  # expose the wrapped collator's settings (tokenizer, ...)
        if name == "inner" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)


__all__ = ["UALCollator"]
