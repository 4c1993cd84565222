"""Axolotl adapter: add two lines to an Axolotl YAML to train with Uncertainty-Aware Learning.

    plugins:
      - ual_plugin.axolotl.UALPlugin
    ual: true

Without the ``plugins:`` line Axolotl silently drops ``ual: true`` and trains plain SFT: run
``ual check config.yml`` to see whether UAL will be active. See ``ual_plugin/axolotl/README.md``.

Attributes are imported lazily, so ``ual check`` can report a missing Axolotl install instead of
failing on import.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "UALPlugin": "ual_plugin.axolotl.plugin",
    "UALArgs": "ual_plugin.axolotl.args",
    "UALTrainingArgsMixin": "ual_plugin.axolotl.args",
    "UALAxolotlTrainer": "ual_plugin.axolotl.trainer",
    "UALCollator": "ual_plugin.axolotl.collator",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ual_plugin.axolotl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
