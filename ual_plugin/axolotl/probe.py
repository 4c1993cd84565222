"""The Axolotl internals the plugin relies on, and a probe that says which of them changed.

For each wrapped function: its parameter names, and that its callers still look it up as a global
of the module the plugin patches (a caller holding another reference would bypass the patch without
notice). For each ``BasePlugin`` hook the plugin overrides: that it exists with the same parameters.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Wrapped:
    """One Axolotl function the plugin replaces in ``module`` (see ``ual_plugin.axolotl.dataset``)."""

    module: str
    name: str
    params: tuple[str, ...]
    callers: tuple[str, ...]  # functions of ``module`` that must call it through ``module``'s globals


WRAPPED: tuple[Wrapped, ...] = (
    Wrapped("axolotl.utils.data.sft", "get_dataset_wrapper",
            ("dataset_config", "tokenizer", "cfg", "dataset_base_type", "dataset", "dataset_prompt_style",
             "processor"),
            ("_load_and_process_single_dataset",)),
    Wrapped("axolotl.utils.data.sft", "_load_and_process_single_dataset",
            ("dataset_config", "cfg", "tokenizer", "split", "seed", "processor", "streaming"),
            ("_load_raw_datasets",)),
    Wrapped("axolotl.utils.data.sft", "generate_dataset_hash_from_config",
            ("cfg", "cfg_datasets", "tokenizer_name"),
            ("_load_tokenized_prepared_datasets", "_load_raw_datasets")),
    Wrapped("axolotl.utils.data.wrappers", "wrap_dataset_for_tokenized_prompt",
            ("prompt_tokenizer", "dataset", "kwargs"),
            ("_handle_loaded_strategy", "_handle_custom_dataset_type", "_handle_alpaca_dataset")),
)
PATCHED_FUNCTIONS: tuple[tuple[str, str], ...] = tuple((w.module, w.name) for w in WRAPPED)

# Modules on the SFT dataset path where no function may reach a wrapped function around its patch.
SCANNED_PACKAGES = ("axolotl.utils.data",)
SCANNED_MODULES = ("axolotl.datasets", "axolotl.common.datasets")
NOT_SCANNED = ("axolotl.utils.data.rl",)  # RL configs are refused by ``UALArgs``

HOOKS: dict[str, tuple[str, ...]] = {
    "register": ("self", "cfg"),
    "on_config_validation_error": ("self", "cfg"),
    "get_input_args": ("self",),
    "get_training_args_mixin": ("self",),
    "get_training_args": ("self", "cfg"),
    "get_trainer_cls": ("self", "cfg"),
    "get_collator_cls_and_kwargs": ("self", "cfg", "is_eval"),
    "post_trainer_create": ("self", "cfg", "trainer"),
}
OPTIONAL_HOOKS = ("on_config_validation_error",)  # added in Axolotl 0.19


def original(func: Any) -> Any:
    """The Axolotl function behind one of the plugin's wrappers (``func`` itself when not wrapped)."""
    return getattr(func, "__ual_original__", func)


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _functions(module: types.ModuleType) -> Iterator[tuple[str, types.FunctionType]]:
    """(qualified name, function) for every function and method defined in ``module``."""
    for name, obj in vars(module).items():
        if isinstance(obj, types.FunctionType) and obj.__module__ == module.__name__:
            yield name, original(obj)
        elif isinstance(obj, type) and obj.__module__ == module.__name__:
            for attr, member in vars(obj).items():
                func = getattr(member, "__func__", member)
                if isinstance(func, types.FunctionType):
                    yield f"{name}.{attr}", func


def looks_up(func: types.FunctionType, name: str) -> bool:
    """True when ``func`` (or a function nested in it) reads ``name`` as a global."""
    return any(name in code.co_names for code in _codes(func.__code__))


def _scanned_modules() -> list[types.ModuleType]:
    modules = []
    for package_name in SCANNED_PACKAGES:
        package = importlib.import_module(package_name)
        modules.append(package)
        for info in pkgutil.iter_modules(package.__path__, package_name + "."):
            if info.name not in NOT_SCANNED:
                modules.append(importlib.import_module(info.name))
    modules.extend(importlib.import_module(name) for name in SCANNED_MODULES)
    return modules


def _bypasses(wrapped: Wrapped, target: Any, modules: list[types.ModuleType]) -> list[str]:
    """Functions that reach ``target`` through a global other than ``wrapped.module``'s ``wrapped.name``."""
    found = []
    for module in modules:
        aliases = [g for g, v in vars(module).items() if original(v) is target
                   and not (module.__name__ == wrapped.module and g == wrapped.name)]
        for alias in aliases:
            found += [f"{module.__name__}.{qual}" for qual, func in _functions(module) if looks_up(func, alias)]
    return found


def wrapped_problems() -> list[str]:
    """What changed in the wrapped functions: missing, other parameters, callers that moved or bypass them."""
    problems: list[str] = []
    try:
        modules = _scanned_modules()
    except ImportError as exc:
        return [f"a module of Axolotl's dataset loading does not import ({exc})"]
    for w in WRAPPED:
        dotted = f"{w.module}.{w.name}"
        module = importlib.import_module(w.module)
        target = original(getattr(module, w.name, None))
        if not callable(target):
            problems.append(f"{dotted} is missing")
            continue
        params = tuple(inspect.signature(target).parameters)
        if params != w.params:
            problems.append(f"{dotted} takes ({', '.join(params)}), checked: ({', '.join(w.params)})")
        for caller in w.callers:
            func = original(getattr(module, caller, None))
            if not isinstance(func, types.FunctionType):
                problems.append(f"{w.module}.{caller}, which calls {w.name}, is missing")
            elif not looks_up(func, w.name):
                problems.append(f"{w.module}.{caller} no longer calls {w.name} through {w.module}")
        problems += [f"{b} calls {dotted} around the plugin's patch" for b in _bypasses(w, target, modules)]
    return problems


def hook_problems() -> list[str]:
    """``BasePlugin`` hooks the plugin overrides that are missing or take other parameters."""
    from axolotl.integrations.base import BasePlugin

    problems = []
    for name, params in HOOKS.items():
        hook = getattr(BasePlugin, name, None)
        if hook is None:
            if name not in OPTIONAL_HOOKS:
                problems.append(f"BasePlugin.{name} is missing")
            continue
        found = tuple(inspect.signature(hook).parameters)
        if found != params:
            problems.append(f"BasePlugin.{name} takes ({', '.join(found)}), checked: ({', '.join(params)})")
    return problems


def internals_problems() -> list[str]:
    """Every difference the probe finds between this Axolotl and the internals the plugin was checked against."""
    return wrapped_problems() + hook_problems()


__all__ = ["HOOKS", "PATCHED_FUNCTIONS", "WRAPPED", "Wrapped", "hook_problems", "internals_problems",
           "looks_up", "original", "wrapped_problems"]
