"""Uncertainty-Aware Learning (UAL): supervised fine-tuning with per-sample label smoothing.

The core (`smoothing_from_uncertainty`, the losses) is pure numpy / torch. The TRL and Axolotl
adapters, the scorer and the analysis tools are imported lazily so that ``import ual_plugin``
never pulls in trl, axolotl or openai.
"""

from __future__ import annotations

from typing import Any

from ual_plugin.loss import linear_smoothed_cross_entropy, smoothed_cross_entropy
from ual_plugin.mapping import SmoothingMap, fit_smoothing_map, smoothing_from_uncertainty

__version__ = "0.1.0"

__all__ = [
    "SmoothingMap",
    "fit_smoothing_map",
    "linear_smoothed_cross_entropy",
    "smoothed_cross_entropy",
    "smoothing_from_uncertainty",
    "ual_loss",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # `ual_loss` lives with the PPL-mode machinery; importing it lazily keeps the top level light.
    if name == "ual_loss":
        from ual_plugin.ppl import ual_loss

        return ual_loss
    raise AttributeError(f"module 'ual_plugin' has no attribute {name!r}")
