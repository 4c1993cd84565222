"""The ``ual_*`` options, defined once: names, defaults, help and validation.

``UALSFTConfig`` (TRL), Axolotl's training-args mixin and its YAML schema all build on
``UALOptions``; ``check_ual_options`` is the one validation both adapters and ``ual check`` run.
Free of framework imports so that ``ual check`` works wherever ``ual_plugin`` is installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ual_plugin.mapping import ALPHA_UNITS, DEFAULT_ALPHA, DEFAULT_ALPHA_PER, DEFAULT_V_MAX, _check_alpha

DEFAULT_PPL_WINDOW = 64
UAL_MODES = ("column", "ppl", "uniform")
UAL_LOSS_BACKENDS = ("auto", "chunked", "trl_fused")


@dataclass
class UALOptions:
    """Uncertainty-Aware Learning options (same names in ``UALSFTConfig`` and in Axolotl YAML)."""

    ual: bool = field(
        default=True,
        metadata={"help": "Train with Uncertainty-Aware Learning (per-sample label smoothing). False = plain SFT."},
    )
    ual_alpha: float = field(
        default=DEFAULT_ALPHA,
        metadata={
            "help": "Mean smoothing value over the training set (paper: 0.1 for Deita, 0.3 for LIMA); in PPL mode, "
            "the smoothing of a sample with average perplexity."
        },
    )
    ual_v_max: float = field(default=DEFAULT_V_MAX, metadata={"help": "Largest smoothing value any sample may get."})
    ual_mode: str = field(
        default="column",
        metadata={
            "help": "'column': smoothing from the dataset's uncertainty column (see `ual score`); 'ppl': from each "
            "sample's own perplexity during training, no column needed; 'uniform': plain label smoothing, ual_alpha "
            "on every token, no column needed.",
            "choices": list(UAL_MODES),
        },
    )
    ual_ppl_window: int = field(
        default=DEFAULT_PPL_WINDOW,
        metadata={
            "help": "PPL mode: the running mean perplexity weights samples down by 1/e every this many samples, so "
            "it follows the model and the mean smoothing stays closer to ual_alpha; 0 = the plain average over all "
            "history (the paper's; the smoothing then decays as training lowers the perplexities)."
        },
    )
    ual_alpha_per: str = field(
        default=DEFAULT_ALPHA_PER,
        metadata={
            "help": "Column mode: the unit in which the mean smoothing equals ual_alpha on the training set. 'sample': "
            "the mean over samples (the paper's definition); 'token': the mean over label tokens (the unit of the loss "
            "and of label_smoothing_factor).",
            "choices": list(ALPHA_UNITS),
        },
    )
    ual_uncertainty_field: str = field(
        default="uncertainty", metadata={"help": "Dataset column holding each sample's uncertainty score."}
    )
    ual_loss_backend: str = field(
        default="auto",
        metadata={
            "help": "'chunked': UAL's own chunked LM-head loss, inside the model's forward (works with DDP, FSDP and "
            "DeepSpeed ZeRO-3); 'trl_fused': TRL >= 1.16's fused log-prob head plus UAL's linear correction (not "
            "with soft-capping or sharded training); 'auto': chunked.",
            "choices": list(UAL_LOSS_BACKENDS),
        },
    )


UAL_OPTIONS = tuple(f.name for f in fields(UALOptions))


def check_ual_options(options: Mapping[str, Any]) -> None:
    """Raise ValueError naming the option when a ``ual_*`` value cannot work (missing keys take defaults)."""
    defaults = {f.name: f.default for f in fields(UALOptions)}

    def get(name: str) -> Any:
        value = options.get(name)
        return defaults[name] if value is None else value

    mode = get("ual_mode")
    if mode not in UAL_MODES:
        raise ValueError(f"ual_mode must be one of {', '.join(UAL_MODES)}; got {mode!r}")
    per = get("ual_alpha_per")
    if per not in ALPHA_UNITS:
        raise ValueError(f"ual_alpha_per must be one of {', '.join(ALPHA_UNITS)}; got {per!r}")
    backend = get("ual_loss_backend")
    if backend not in UAL_LOSS_BACKENDS:
        raise ValueError(f"ual_loss_backend must be one of {', '.join(UAL_LOSS_BACKENDS)}; got {backend!r}")
    alpha, v_max = get("ual_alpha"), get("ual_v_max")
    for name, value in (("ual_alpha", alpha), ("ual_v_max", v_max)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number; got {value!r}")
    _check_alpha(float(alpha), float(v_max))
    check_ppl_window(get("ual_ppl_window"))
    column = get("ual_uncertainty_field")
    if not isinstance(column, str) or not column.strip():
        raise ValueError(f"ual_uncertainty_field must be a non-empty column name; got {column!r}")


def check_ppl_window(window: Any) -> None:
    """Raise ValueError unless ``window`` is a whole number of samples >= 0 (0: all history)."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"ual_ppl_window must be a whole number of samples >= 0 (0 = all history); got {window!r}")


def options_of(obj: Any) -> dict[str, Any]:
    """The ``ual_*`` values of a config object (missing attributes are left out)."""
    return {name: getattr(obj, name) for name in UAL_OPTIONS if hasattr(obj, name)}


__all__ = ["UALOptions", "UAL_LOSS_BACKENDS", "UAL_MODES", "UAL_OPTIONS", "check_ual_options", "options_of"]
