"""Config options of the Axolotl plugin: the pydantic model merged into Axolotl's config schema and
the dataclass merged into its training arguments, both built from ``ual_plugin.options.UALOptions``.

The ``mode="before"`` validator sees the whole YAML, so it also refuses the options that replace
or bypass the loss UAL computes.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from ual_plugin.axolotl.options import _truthy, check_ual_values, ual_conflicts
from ual_plugin.mapping import ALPHA_UNITS
from ual_plugin.options import UAL_LOSS_BACKENDS, UAL_MODES, UALOptions

_CHOICES = {"ual_mode": Literal[UAL_MODES], "ual_loss_backend": Literal[UAL_LOSS_BACKENDS],
            "ual_alpha_per": Literal[ALPHA_UNITS]}


class _UALArgsChecks(BaseModel):
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


def _schema_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(UALOptions)
    out: dict[str, Any] = {}
    for f in fields(UALOptions):
        kind = _CHOICES.get(f.name, hints[f.name])
        default = None if f.name == "ual" else f.default  # unset `ual` means off (and lets `ual check` say so)
        help_text = f.metadata["help"]
        if f.name == "ual":
            help_text += (" Needs `plugins: [ual_plugin.axolotl.UALPlugin]`: without it Axolotl drops this key and "
                          "trains plain SFT.")
        out[f.name] = (kind | None, Field(default=default, json_schema_extra={"description": help_text}))
    return out


UALArgs = create_model("UALArgs", __base__=_UALArgsChecks, __module__=__name__, **_schema_fields())
UALArgs.__doc__ = "Uncertainty-Aware Learning options (active only with ``plugins: [ual_plugin.axolotl.UALPlugin]``)."


@dataclass
class UALTrainingArgsMixin(UALOptions):
    """The ``ual_*`` options on the trainer's ``args`` (filled by ``UALPlugin.get_training_args``)."""

    ual: bool = False


__all__ = ["UALArgs", "UALTrainingArgsMixin"]
