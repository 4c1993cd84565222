"""Dataset-side plumbing shared by the TRL and Axolotl adapters.

Per-sample smoothing becomes a per-token column (``ual_smoothing``) right after tokenisation, so
truncation, packing (which concatenates samples) and padding keep it aligned with ``input_ids``
without special cases. The collator helper turns that column into a batch tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

TOKEN_COLUMN = "ual_smoothing"
# One float32 smoothing value per sample, which the TRL collator spreads over the sample's tokens
# (packed datasets, whose rows hold several samples, carry a float32 TOKEN_COLUMN instead).
SAMPLE_COLUMN = "ual_sample_smoothing"
"""Name of the per-token smoothing column, in datasets and in batches."""

NO_SCORE = -1.0
"""Score of evaluation rows whose dataset has no uncertainty column: smoothing 0 for them."""


def _is_bad(value: Any) -> str | None:
    """Why ``value`` is not a usable uncertainty score, or None when it is fine."""
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return "a boolean"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return f"not a number ({value!r})"
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "infinite"
    if x < 0:
        return f"negative ({x!r})"
    return None


def read_uncertainty(
    values: Sequence[Any] | None,
    field: str,
    dataset_name: str = "train",
    available: Sequence[str] | None = None,
) -> np.ndarray:
    """Validate one dataset's uncertainty column and return it as float64.

    Raises ValueError naming the dataset, the field, how many rows are bad and the first of them:
    a missing column, a missing value, NaN, infinite, negative or non-numeric entries.
    """
    if values is None:
        cols = f" Its columns are: {', '.join(available)}." if available else ""
        raise ValueError(
            f"UAL (column mode) needs an uncertainty value per row, but the {dataset_name} dataset has no "
            f"column '{field}'.{cols} Score it with `ual score`, point `ual_uncertainty_field` at the right "
            f"column, or use `ual_mode: ppl`, which needs no column."
        )
    problems: list[tuple[int, str]] = []
    for i, v in enumerate(values):
        why = _is_bad(v)
        if why is not None:
            problems.append((i, why))
    if problems:
        first_i, first_why = problems[0]
        shown = ", ".join(f"row {i}: {why}" for i, why in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(
            f"{len(problems)} of {len(values)} rows of the {dataset_name} dataset have no usable '{field}' "
            f"value; the first is row {first_i} ({first_why}). Bad rows: {shown}{more}. Scores must be finite "
            f"numbers >= 0."
        )
    return np.asarray([float(v) for v in values], dtype=np.float64)


def label_token_counts(labels: Sequence[Sequence[int]], ignore_index: int = -100) -> np.ndarray:
    """Label tokens per tokenised sample: the targets the shifted loss scores (``labels[1:]`` not ignored)."""
    return np.asarray([sum(1 for t in row[1:] if t != ignore_index) for row in labels], dtype=np.float64)


def expand_to_tokens(value: float, length: int) -> list[float]:
    """One sample's smoothing repeated over its tokens."""
    return [float(value)] * int(length)


def add_token_column(example: Mapping[str, Any], sample_key: str) -> dict[str, list[float]]:
    """``datasets.map`` function: per-token smoothing from the example's per-sample value."""
    return {TOKEN_COLUMN: expand_to_tokens(example[sample_key], len(example["input_ids"]))}


def collate_token_column(
    columns: Sequence[Sequence[float]],
    input_ids: torch.Tensor,
    padding_free: bool = False,
    padding_side: str = "right",
    fill: float = 0.0,
) -> torch.Tensor:
    """Lay per-example token columns out exactly like ``input_ids`` of a collated batch.

    Padded batches: one row per example, padded on ``padding_side``. Padding-free batches: all
    examples concatenated into one row (then padded to the width of ``input_ids``). Raises when
    the lengths do not add up, rather than returning a misaligned tensor.
    """
    out = torch.full(input_ids.shape, fill, dtype=torch.float32)
    if padding_free:
        flat = [float(x) for col in columns for x in col]
        if input_ids.shape[0] != 1 or len(flat) > input_ids.shape[1]:
            raise ValueError(
                f"UAL collator: {len(flat)} smoothing values do not fit the padding-free batch of shape "
                f"{tuple(input_ids.shape)}"
            )
        out[0, : len(flat)] = torch.tensor(flat, dtype=torch.float32)
        return out
    if len(columns) != input_ids.shape[0]:
        raise ValueError(f"UAL collator: {len(columns)} examples but a batch of {input_ids.shape[0]} rows")
    width = input_ids.shape[1]
    for row, col in enumerate(columns):
        n = len(col)
        if n > width:
            raise ValueError(f"UAL collator: example {row} has {n} smoothing values for a row of {width} tokens")
        values = torch.tensor(list(col), dtype=torch.float32)
        if padding_side == "left":
            out[row, width - n :] = values
        else:
            out[row, :n] = values
    return out


def segment_ids(position_ids: torch.Tensor | None, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """A sample index for every token: rows of a padded batch, or packed samples (position restarts at 0)."""
    if position_ids is None:
        batch, seq = shape
        return torch.arange(batch, device=device).unsqueeze(1).expand(batch, seq)
    starts = (position_ids == 0).to(torch.long)
    starts[:, 0] = 1  # every row begins a new sample
    flat = starts.reshape(-1).cumsum(0) - 1
    return flat.reshape(position_ids.shape)


def segment_sums(values: torch.Tensor, segments: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of ``values`` over the ``mask`` tokens, number of such tokens) for every possible segment id,
    without a host sync; ``segments`` holds each token's sample id (``segment_ids``), below ``numel``."""
    seg = segments.reshape(-1)
    m = mask.reshape(-1).to(torch.float32)
    sums = torch.zeros(seg.numel(), device=values.device).index_add_(0, seg, values.reshape(-1).float() * m)
    return sums, torch.zeros(seg.numel(), device=values.device).index_add_(0, seg, m)


def sample_means(values: torch.Tensor, segments: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over samples of each sample's mean of ``values`` over its ``mask`` tokens, number of such
    samples), without a host sync."""
    sums, counts = segment_sums(values, segments, mask)
    return (sums / counts.clamp(min=1)).sum(), (counts > 0).sum()
