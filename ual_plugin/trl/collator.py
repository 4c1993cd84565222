"""Wraps TRL's collator so the per-token ``ual_smoothing`` column reaches the batch, aligned."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ual_plugin.data import TOKEN_COLUMN, collate_token_column


class UALCollator:
    """Calls the wrapped collator without ``ual_smoothing``, then lays that column out like ``input_ids``."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]], padding_free: bool | None = None):
        self.inner = inner
        self.padding_free = bool(getattr(inner, "padding_free", False)) if padding_free is None else padding_free

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if not examples or TOKEN_COLUMN not in examples[0]:
            return self.inner(examples)
        columns = [ex[TOKEN_COLUMN] for ex in examples]
        batch = self.inner([{k: v for k, v in ex.items() if k != TOKEN_COLUMN} for ex in examples])
        side = getattr(self.inner, "padding_side", "right")
        batch[TOKEN_COLUMN] = collate_token_column(
            columns, batch["input_ids"], padding_free=self.padding_free, padding_side=side
        )
        return batch

    def __getattr__(self, name: str) -> Any:  # expose the wrapped collator's settings (pad_token_id, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
