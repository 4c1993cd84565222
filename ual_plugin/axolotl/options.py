"""The ``ual_*`` option names and the checks on them, free of pydantic and Axolotl imports so that
``ual check`` works (and can say what is missing) wherever ``ual_plugin`` is installed."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from ual_plugin.mapping import DEFAULT_ALPHA, DEFAULT_V_MAX, _check_alpha

UAL_MODES = ("column", "ppl")
UAL_OPTIONS = ("ual", "ual_alpha", "ual_v_max", "ual_mode", "ual_uncertainty_field")
PLUGIN_NAME = "ual_plugin.axolotl.UALPlugin"
PLUGIN_ALIASES = (PLUGIN_NAME, "ual_plugin.axolotl.plugin.UALPlugin")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "no", "0", "none", "null")
    return bool(value)


def _deepspeed_stage(value: Any) -> int | None:
    """ZeRO stage of a ``deepspeed:`` option (a JSON path or an inline dict), or None if unknown."""
    config: Any = value
    if isinstance(value, (str, os.PathLike)):
        try:
            with open(value, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError):
            return None
    if not isinstance(config, Mapping):
        return None
    zero = config.get("zero_optimization")
    if not isinstance(zero, Mapping):
        return None
    try:
        return int(zero.get("stage"))
    except (TypeError, ValueError):
        return None


def _lists_lm_head(value: Any) -> bool:
    if isinstance(value, str):
        return "lm_head" in value
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, str) and v.split(".")[-1] == "lm_head" for v in value)
    return False


def ual_conflicts(data: Mapping[str, Any]) -> list[str]:
    """The options in an Axolotl config that cannot be combined with ``ual: true``, each explained.

    Pure function of the raw config mapping, so ``ual check`` can use it without Axolotl.
    """
    mode = data.get("ual_mode") or "column"
    problems: list[str] = []
    loss_replacing = (
        ("cut_cross_entropy", "Cut Cross-Entropy replaces the loss"),
        ("liger_fused_linear_cross_entropy", "Liger's fused linear cross-entropy replaces the loss"),
        ("use_eaft", "EAFT replaces the loss"),
        ("kd_trainer", "knowledge distillation has its own trainer and loss"),
        ("reward_model", "reward models are trained with a pairwise loss"),
        ("process_reward_model", "process reward models are trained with their own loss"),
        ("orpo_alpha", "ORPO has its own loss"),
    )
    for key, why in loss_replacing:
        if _truthy(data.get(key)):
            problems.append(f"`{key}: {data.get(key)}` ({why})")
    if data.get("rl"):
        problems.append(
            f"`rl: {data.get('rl')}` (RL / DPO-style preference trainers have their own loss; UAL is supervised "
            "fine-tuning)"
        )
    if data.get("trainer_cls"):
        problems.append(f"`trainer_cls: {data.get('trainer_cls')}` (UAL supplies its own trainer class)")
    if _truthy(data.get("fsdp")) or _truthy(data.get("fsdp_config")):
        problems.append(
            "`fsdp` / `fsdp_config` (FSDP keeps lm_head.weight sharded outside the model's forward, where the UAL "
            "loss reads it; use DDP or DeepSpeed ZeRO-1/2 instead)"
        )
    if data.get("deepspeed") and _deepspeed_stage(data.get("deepspeed")) == 3:
        problems.append(
            f"`deepspeed: {data.get('deepspeed')}` with ZeRO stage 3 (ZeRO-3 partitions lm_head.weight, which the "
            "UAL loss reads outside the model's forward; use ZeRO-1/2 or DDP instead)"
        )
    for key in ("context_parallel_size", "sequence_parallel_degree"):
        try:
            size = int(data.get(key) or 1)
        except (TypeError, ValueError):
            size = 1
        if size > 1:
            problems.append(f"`{key}: {size}` (context parallelism splits sequences across ranks; not supported)")
    if _lists_lm_head(data.get("lora_target_modules")):
        problems.append(
            "`lora_target_modules` containing lm_head (UAL reads lm_head.weight directly, so a LoRA adapter on it "
            "would never train; use `lora_modules_to_save: [lm_head]` or leave it frozen)"
        )
    if mode == "column":
        column_only = (
            ("pretraining_dataset", "streamed pretraining data"),
            ("streaming", "streamed datasets"),
            ("skip_prepare_dataset", "un-tokenised datasets"),
            ("processor_type", "multimodal datasets"),
        )
        for key, what in column_only:
            if _truthy(data.get(key)):
                problems.append(
                    f"`{key}` with `ual_mode: column` ({what} do not carry the per-row uncertainty score; use "
                    "`ual_mode: ppl`, which needs no score)"
                )
    return problems


def check_ual_values(data: Mapping[str, Any]) -> None:
    """Raise ValueError naming the option when ``ual_alpha`` / ``ual_v_max`` / ``ual_mode`` / the field are bad."""
    mode = data.get("ual_mode", "column")
    if mode is None:
        mode = "column"
    if mode not in UAL_MODES:
        raise ValueError(f"ual_mode must be one of {', '.join(UAL_MODES)}; got {mode!r}")
    alpha = data.get("ual_alpha", DEFAULT_ALPHA)
    v_max = data.get("ual_v_max", DEFAULT_V_MAX)
    alpha = DEFAULT_ALPHA if alpha is None else alpha
    v_max = DEFAULT_V_MAX if v_max is None else v_max
    for name, value in (("ual_alpha", alpha), ("ual_v_max", v_max)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number; got {value!r}")
    _check_alpha(float(alpha), float(v_max))
    field = data.get("ual_uncertainty_field", "uncertainty")
    if field is not None and (not isinstance(field, str) or not field.strip()):
        raise ValueError(f"ual_uncertainty_field must be a non-empty column name; got {field!r}")


__all__ = [
    "PLUGIN_ALIASES",
    "PLUGIN_NAME",
    "UAL_MODES",
    "UAL_OPTIONS",
    "check_ual_values",
    "ual_conflicts",
]
