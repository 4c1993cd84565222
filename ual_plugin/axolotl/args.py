"""Config options of the Axolotl plugin: the pydantic model merged into Axolotl's config schema and
the dataclass merged into its training arguments.

The option names are the same as ``UALSFTConfig``'s: ``ual``, ``ual_alpha``, ``ual_v_max``,
``ual_mode``, ``ual_uncertainty_field``. The ``mode="before"`` validator sees the whole YAML, so
it also refuses the options that replace or bypass the loss UAL computes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from ual_plugin.axolotl.options import (
    PLUGIN_ALIASES,
    PLUGIN_NAME,
    UAL_MODES,
    UAL_OPTIONS,
    _truthy,
    check_ual_values,
    ual_conflicts,
)
from ual_plugin.mapping import DEFAULT_ALPHA, DEFAULT_V_MAX


class UALArgs(BaseModel):
    """Uncertainty-Aware Learning options (active only with ``plugins: [ual_plugin.axolotl.UALPlugin]``)."""

    ual: bool | None = Field(
        default=None,
        json_schema_extra={
            "description": "Train with Uncertainty-Aware Learning (per-sample label smoothing). Needs "
            "`plugins: [ual_plugin.axolotl.UALPlugin]`: without it Axolotl drops this key and trains plain SFT."
        },
    )
    ual_alpha: float | None = Field(
        default=DEFAULT_ALPHA,
        json_schema_extra={
            "description": "Mean smoothing value over the training set (paper: 0.1 for Deita, 0.3 for LIMA); in PPL "
            "mode, the smoothing of a sample with average perplexity."
        },
    )
    ual_v_max: float | None = Field(
        default=DEFAULT_V_MAX,
        json_schema_extra={"description": "Largest smoothing value any sample may get."},
    )
    ual_mode: Literal["column", "ppl"] | None = Field(
        default="column",
        json_schema_extra={
            "description": "'column': smoothing from each row's uncertainty score (see `ual score`); 'ppl': from "
            "each sample's perplexity under the model being trained, no score needed."
        },
    )
    ual_uncertainty_field: str | None = Field(
        default="uncertainty",
        json_schema_extra={"description": "Dataset column holding each row's uncertainty score (column mode)."},
    )

    @model_validator(mode="before")
    @classmethod
    def check_ual(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or not _truthy(data.get("ual")):
            return data
        check_ual_values(data)
        problems = ual_conflicts(data)
        if problems:
            raise ValueError(
                "ual: true cannot be combined with "
                + "; ".join(problems)
                + ". Remove these options, or set `ual: false` to train without UAL."
            )
        return data


@dataclass
class UALTrainingArgsMixin:
    """The ``ual_*`` options on the trainer's ``args`` (filled by ``UALPlugin.get_training_args``)."""

    ual: bool = False
    ual_alpha: float = DEFAULT_ALPHA
    ual_v_max: float = DEFAULT_V_MAX
    ual_mode: str = "column"
    ual_uncertainty_field: str = "uncertainty"


__all__ = [
    "PLUGIN_ALIASES",
    "PLUGIN_NAME",
    "UALArgs",
    "UALTrainingArgsMixin",
    "UAL_MODES",
    "UAL_OPTIONS",
    "check_ual_values",
    "ual_conflicts",
]
