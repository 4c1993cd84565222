"""``ual check CONFIG``: will ``axolotl train CONFIG`` really train with UAL?

Axolotl drops config keys it does not know, and only logs (then skips) a plugin that fails to
import, so ``ual: true`` without a working ``plugins: [ual_plugin.axolotl.UALPlugin]`` line
trains plain SFT with no warning. This command reads the YAML the way Axolotl does, registers
its plugins and runs Axolotl's own config validation (the schema merge that keeps or drops
``ual``, and UAL's refusals), then says whether UAL will be active and with which options.

Exit status: 0 UAL will be active; 1 it will not (the reason is printed); 2 the config is
invalid or cannot be read.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from ual_plugin.axolotl.options import PLUGIN_NAME, UAL_OPTIONS, names_ual_plugin, ual_conflicts

ACTIVE, INACTIVE, INVALID = 0, 1, 2

_PLUGIN_SNIPPET = f"    plugins:\n      - {PLUGIN_NAME}\n    ual: true"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="path to the Axolotl YAML config")
    parser.add_argument(
        "--no-validate",
        action="store_true",
        help="only inspect the YAML (do not import Axolotl and run its config validation)",
    )


def _load_yaml(path: str) -> Any:
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _plugin_import_error(name: str) -> str | None:
    """Why ``name`` cannot be loaded the way Axolotl loads plugins, or None when it can."""
    try:
        from axolotl.integrations.base import load_plugin
    except Exception as err:  # axolotl missing or broken
        return f"axolotl cannot be imported ({type(err).__name__}: {err})"
    try:
        load_plugin(name)
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None


_NO_CUDA_NOTE = (
    "  note: this Axolotl's fp8 probe fails on a torch built without CUDA (Axolotl 0.19 fixed it), so "
    "`axolotl train` cannot start on this machine; validated here as if fp8 were unsupported"
)


def _capabilities(axolotl_config: Any) -> tuple[dict, dict, bool]:
    """Axolotl's ``gpu_capabilities()``, plus whether its fp8 probe had to be taken as False (Axolotl 0.17 / 0.18
    assert on a torch built without CUDA)."""
    try:
        return (*axolotl_config.gpu_capabilities(), False)
    except AssertionError:
        probe = axolotl_config.compute_supports_fp8
        axolotl_config.compute_supports_fp8 = lambda: False
        try:
            return (*axolotl_config.gpu_capabilities(), True)
        finally:
            axolotl_config.compute_supports_fp8 = probe


def _validate(raw: dict[str, Any]) -> tuple[Any, str | None, list[str]]:
    """Axolotl's own validation of the config: (validated cfg, None, notes) or (None, error message, notes)."""
    try:
        from axolotl.cli import config as axolotl_config
        from axolotl.utils.config import validate_config
        from axolotl.utils.dict import DictDefault
    except Exception as err:
        return None, f"axolotl cannot be imported here ({type(err).__name__}: {err})", []
    cfg = DictDefault(raw)
    notes: list[str] = []
    try:
        axolotl_config.prepare_plugins(cfg)
        capabilities, env_capabilities, no_cuda = _capabilities(axolotl_config)
        if no_cuda:
            notes.append(_NO_CUDA_NOTE)
        validated = validate_config(cfg, capabilities=capabilities, env_capabilities=env_capabilities)
    except Exception as err:
        return None, f"{type(err).__name__}: {err}", notes
    return validated, None, notes


def check(path: str, validate: bool = True) -> tuple[int, list[str]]:
    """Returns (exit status, report lines)."""
    lines = [f"ual check: {path}"]
    if not os.path.exists(path):
        return INVALID, lines + [f"  ERROR: no such file: {path}"]
    try:
        raw = _load_yaml(path)
    except Exception as err:
        return INVALID, lines + [f"  ERROR: cannot read the YAML ({err})"]
    if not isinstance(raw, Mapping):
        return INVALID, lines + ["  ERROR: the YAML is not a mapping of options"]
    raw = dict(raw)

    ual_keys = [k for k in raw if isinstance(k, str) and (k == "ual" or k.startswith("ual_"))]
    unknown = [k for k in ual_keys if k not in UAL_OPTIONS]
    plugins = raw.get("plugins") or []
    if isinstance(plugins, str):
        plugins = [plugins]
    listed = [p for p in plugins if names_ual_plugin(p)]
    lines.append(f"  plugins: {', '.join(map(str, plugins)) if plugins else '(none)'}")
    lines.append(f"  ual options in the YAML: {', '.join(f'{k}={raw[k]!r}' for k in ual_keys) or '(none)'}")

    near_miss = [p for p in plugins if isinstance(p, str) and "ual" in p.lower() and not names_ual_plugin(p)]
    if not listed:
        if ual_keys:
            lines += [
                f"  ERROR: the YAML sets {', '.join(ual_keys)} but `plugins:` does not list {PLUGIN_NAME}.",
                "  Axolotl silently drops unknown keys: `axolotl train` would train PLAIN SFT, with no warning.",
            ]
            if near_miss:
                lines.append(f"  ({', '.join(near_miss)} is not the plugin's name: it is {PLUGIN_NAME})")
            lines += ["  Add:", _PLUGIN_SNIPPET, "  UAL will NOT be active."]
        else:
            lines += ["  UAL is not configured (no plugin, no ual option): plain SFT.", "  To enable it, add:",
                      _PLUGIN_SNIPPET, "  UAL will NOT be active."]
        return INACTIVE, lines

    problem = _plugin_import_error(listed[0]) if validate else None
    if problem:
        lines += [
            f"  ERROR: {listed[0]} cannot be loaded: {problem}",
            "  Axolotl only logs a plugin that fails to import and trains PLAIN SFT without it.",
            "  UAL will NOT be active.",
        ]
        return INACTIVE, lines
    if unknown:
        lines.append(
            f"  ERROR: unknown option(s) {', '.join(unknown)}: Axolotl would drop them silently. The options are: "
            f"{', '.join(UAL_OPTIONS)}."
        )
        return INVALID, lines

    if not validate:
        if not raw.get("ual"):
            lines += [f"  ual is {raw.get('ual')!r}: UAL is OFF (plain SFT). Set `ual: true`.", "  UAL will NOT be active."]
            return INACTIVE, lines
        conflicts = ual_conflicts(raw)
        if conflicts:
            lines += ["  ERROR: ual: true cannot be combined with:"] + [f"    - {c}" for c in conflicts]
            return INVALID, lines
        if ":" in listed[0]:
            lines.append(f"  note: Axolotl 0.21 and later load {listed[0]}; older releases skip it (plain SFT)")
        lines.append("  (not validated by Axolotl: --no-validate)")
        lines.append("  UAL will be active (if Axolotl accepts the rest of the config).")
        return ACTIVE, lines

    cfg, error, notes = _validate(raw)
    lines += notes
    if error is not None:
        lines += [f"  ERROR: Axolotl rejects this config: {error}"]
        return INVALID, lines
    if not cfg.get("ual"):
        lines += [
            f"  after Axolotl's validation: ual = {cfg.get('ual')!r}: UAL is OFF (plain SFT). Set `ual: true`.",
            "  UAL will NOT be active.",
        ]
        return INACTIVE, lines
    mode = cfg.get("ual_mode") or "column"
    lines.append("  after Axolotl's validation: ual = True")
    resolved = f"mode={mode}, alpha={cfg.get('ual_alpha')}, v_max={cfg.get('ual_v_max')}"
    if mode == "column":
        resolved += f", uncertainty field='{cfg.get('ual_uncertainty_field')}'"
    lines.append(f"  UAL will be active: {resolved}")
    lines.append(f"  {_means_line(mode, cfg.get('ual_alpha'), cfg.get('ual_alpha_per') or 'sample')}")
    lines.append("  (look for the line 'UAL active: ...' and the `ual_smoothing` metric in the training log)")
    return ACTIVE, lines


def _means_line(mode: str, alpha: Any, per: str) -> str:
    """Both mean smoothings as far as the config decides them (the data decides the other in column mode)."""
    if mode == "uniform":
        return f"mean smoothing: {alpha} per sample and {alpha} per label token (every token gets alpha)"
    if mode == "ppl":
        return f"mean smoothing: about {alpha} per sample, set by each sample's perplexity (ual_alpha_per applies to column mode)"
    other = "label token" if per == "sample" else "sample"
    return (f"mean smoothing: {alpha} per {'sample' if per == 'sample' else 'label token'} (ual_alpha_per={per}); per "
            f"{other}: set by the row lengths, printed in the 'UAL active' line when training starts")


def run(args: argparse.Namespace) -> int:
    status, lines = check(args.config, validate=not getattr(args, "no_validate", False))
    print("\n".join(lines))
    return status


__all__ = ["ACTIVE", "INACTIVE", "INVALID", "add_arguments", "check", "run"]
