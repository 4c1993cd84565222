"""The Axolotl settings that cannot be combined with ``ual: true``, free of pydantic and Axolotl
imports so that ``ual check`` works (and can say what is missing) wherever ``ual_plugin`` is
installed. The ``ual_*`` options themselves are defined in ``ual_plugin.options``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ual_plugin.options import UAL_MODES, UAL_OPTIONS, check_ual_options

PLUGIN_NAME = "ual_plugin.axolotl.UALPlugin"
PLUGIN_ALIASES = (PLUGIN_NAME, "ual_plugin.axolotl.plugin.UALPlugin")


def names_ual_plugin(name: object) -> bool:
    """True for the plugin's dotted names and their ``module:Class`` form (which Axolotl 0.21 also loads)."""
    return isinstance(name, str) and name.replace(":", ".") in PLUGIN_ALIASES


# Axolotl's plugins that replace the loss when listed (Cut Cross-Entropy: unless `cut_cross_entropy: false`).
CCE_PLUGIN_PACKAGE = "axolotl.integrations.cut_cross_entropy"
DIFFUSION_PLUGIN_PACKAGE = "axolotl.integrations.diffusion"


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "no", "0", "none", "null")
    return bool(value)


def _lists_lm_head(value: Any) -> bool:
    if isinstance(value, str):
        return "lm_head" in value
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, str) and v.split(".")[-1] == "lm_head" for v in value)
    return False


def _plugin_names(data: Mapping[str, Any]) -> list[str]:
    plugins = data.get("plugins") or []
    return [plugins] if isinstance(plugins, str) else [p for p in plugins if isinstance(p, str)]


def _plugin_conflicts(data: Mapping[str, Any]) -> list[str]:
    """Listed plugins that replace the loss by default, each explained."""
    problems = []
    for name in _plugin_names(data):
        if name.startswith(CCE_PLUGIN_PACKAGE) and "cut_cross_entropy" not in data:
            problems.append(
                f"`plugins: [{name}]` (Cut Cross-Entropy replaces the loss, and this plugin turns it on unless the "
                "config says `cut_cross_entropy: false`; remove the plugin, or add `cut_cross_entropy: false` to keep "
                "it off)"
            )
        elif name.startswith(DIFFUSION_PLUGIN_PACKAGE):
            problems.append(f"`plugins: [{name}]` (diffusion language-model training has its own objective)")
    return problems


def _context_parallel_sizes(data: Mapping[str, Any]) -> list[tuple[str, int]]:
    """Each context-parallel degree the config sets: the flat keys and ``context_parallel: {size}`` (Axolotl 0.21)."""
    found = [(key, data.get(key)) for key in ("context_parallel_size", "sequence_parallel_degree")]
    block = data.get("context_parallel")
    if isinstance(block, Mapping):
        found.append(("context_parallel.size", block.get("size")))
    sizes = []
    for key, value in found:
        try:
            sizes.append((key, int(value or 1)))
        except (TypeError, ValueError):
            continue
    return sizes


def ual_conflicts(data: Mapping[str, Any]) -> list[str]:
    """The options in an Axolotl config that cannot be combined with ``ual: true``, each explained.

    Pure function of the raw config mapping, so ``ual check`` can use it without Axolotl.
    """
    mode = data.get("ual_mode") or "column"
    problems: list[str] = []
    loss_replacing = (
        ("cut_cross_entropy", "Cut Cross-Entropy replaces the loss"),
        ("liger_fused_linear_cross_entropy", "Liger's fused linear cross-entropy replaces the loss"),
        ("liger_cross_entropy", "Liger's cross-entropy replaces the loss"),
        ("use_eaft", "EAFT replaces the loss"),
        ("use_dft", "DFT (dynamic fine-tuning) replaces the loss"),
        ("kd_trainer", "knowledge distillation has its own trainer and loss"),
        ("reward_model", "reward models are trained with a pairwise loss"),
        ("process_reward_model", "process reward models are trained with their own loss"),
        ("orpo_alpha", "ORPO has its own loss"),
    )
    for key, why in loss_replacing:
        if _truthy(data.get(key)):
            problems.append(f"`{key}: {data.get(key)}` ({why})")
    for key in ("diffusion", "diffusion_lm"):  # any block, even an empty one, turns diffusion training on
        if data.get(key) is not None:
            problems.append(f"`{key}: {data.get(key)}` (diffusion language-model training has its own objective)")
    problems += _plugin_conflicts(data)
    if data.get("adapter") == "mixlora":
        problems.append("`adapter: mixlora` (MixLoRA's trainer adds its router load-balance loss to the loss)")
    if data.get("rl"):
        problems.append(
            f"`rl: {data.get('rl')}` (RL / DPO-style preference trainers have their own loss; UAL is supervised "
            "fine-tuning)"
        )
    if data.get("trainer_cls"):
        problems.append(f"`trainer_cls: {data.get('trainer_cls')}` (UAL supplies its own trainer class)")
    for key, size in _context_parallel_sizes(data):
        if size > 1:
            problems.append(
                f"`{key}: {size}` (context parallelism splits a sample across ranks, while UAL's smoothing is per "
                "sample)"
            )
    if _lists_lm_head(data.get("lora_target_modules")):
        problems.append(
            "`lora_target_modules` containing lm_head (UAL computes the loss from the LM head as one dense matrix, so "
            "a LoRA adapter on it would be bypassed and never trained; use `lora_modules_to_save: [lm_head]` or leave "
            "it frozen)"
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
    """Raise ValueError naming the option when a ``ual_*`` value in the config is bad."""
    check_ual_options(data)


__all__ = [
    "PLUGIN_ALIASES",
    "PLUGIN_NAME",
    "UAL_MODES",
    "UAL_OPTIONS",
    "check_ual_values",
    "names_ual_plugin",
    "ual_conflicts",
]
