"""Uncertainty-Aware Learning (UAL): supervised fine-tuning with per-sample label smoothing.

Every public name is imported on first use, so ``import ual_plugin`` (and ``ual_plugin.scoring``)
pulls in neither torch nor trl, axolotl or openai until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ual_plugin.causal_lm import remove_ual_forward
    from ual_plugin.loss import linear_smoothed_cross_entropy, smoothed_cross_entropy
    from ual_plugin.mapping import SmoothingMap, fit_smoothing_map, smoothing_from_uncertainty
    from ual_plugin.ppl import ual_loss

__version__ = "0.1.0"

_HOMES = {
    "SmoothingMap": "ual_plugin.mapping",
    "fit_smoothing_map": "ual_plugin.mapping",
    "smoothing_from_uncertainty": "ual_plugin.mapping",
    "linear_smoothed_cross_entropy": "ual_plugin.loss",
    "smoothed_cross_entropy": "ual_plugin.loss",
    "ual_loss": "ual_plugin.ppl",
    "remove_ual_forward": "ual_plugin.causal_lm",
}

__all__ = [
    "SmoothingMap",
    "fit_smoothing_map",
    "linear_smoothed_cross_entropy",
    "remove_ual_forward",
    "smoothed_cross_entropy",
    "smoothing_from_uncertainty",
    "ual_loss",
    "__version__",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ual_plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
