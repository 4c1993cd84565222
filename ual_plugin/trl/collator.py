"""Wraps TRL's collator so the per-token ``ual_smoothing`` column reaches the batch, aligned."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ual_plugin.data import SAMPLE_COLUMN, TOKEN_COLUMN, collate_token_column, expand_to_tokens


class UALCollator:
    """Calls the wrapped collator without UAL's columns, then lays the per-token smoothing out like ``input_ids``
    (each sample's one ``ual_sample_smoothing`` value spread over its tokens, or a packed row's ``ual_smoothing``)."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]], padding_free: bool | None = None):
        self.inner = inner
        self.padding_free = bool(getattr(inner, "padding_free", False)) if padding_free is None else padding_free

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if not examples or not ({TOKEN_COLUMN, SAMPLE_COLUMN} & examples[0].keys()):
            return self.inner(examples)
        columns = [ex[TOKEN_COLUMN] if TOKEN_COLUMN in ex else expand_to_tokens(ex[SAMPLE_COLUMN], len(ex["input_ids"]))
                   for ex in examples]
        ours = (TOKEN_COLUMN, SAMPLE_COLUMN)
        batch = self.inner([{k: v for k, v in ex.items() if k not in ours} for ex in examples])
        side = getattr(self.inner, "padding_side", "right")
        batch[TOKEN_COLUMN] = collate_token_column(
            columns, batch["input_ids"], padding_free=self.padding_free, padding_side=side
        )
        return batch

    def __getattr__(self, name: str) -> Any:  # expose the wrapped collator's settings (pad_token_id, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
