"""``python -m axolotl.cli.train CONFIG`` with one Axolotl name missing while Axolotl loads the UAL plugin.

As if a newer Axolotl had moved the name: the plugin's import meets the gap, while Axolotl's own
modules and plugins (Axolotl 0.20+ loads built-in ones first) keep it.
Usage: python train_without.py axolotl.utils.logging.get_logger CONFIG
"""

from __future__ import annotations

import importlib
import runpy
import sys

import axolotl.integrations.base as base


def _load_plugin_without(module_name: str, attr: str):
    module = importlib.import_module(module_name)
    load_plugin = base.load_plugin

    def load_plugin_without(plugin_name: str):
        if not plugin_name.startswith("ual_plugin."):
            return load_plugin(plugin_name)
        value = getattr(module, attr)
        delattr(module, attr)
        try:
            return load_plugin(plugin_name)
        finally:
            setattr(module, attr, value)

    return load_plugin_without


if __name__ == "__main__":
    base.load_plugin = _load_plugin_without(*sys.argv[1].rsplit(".", 1))
    sys.argv = ["axolotl.cli.train", *sys.argv[2:]]
    runpy.run_module("axolotl.cli.train", run_name="__main__", alter_sys=True)
