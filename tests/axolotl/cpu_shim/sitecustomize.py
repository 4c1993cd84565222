"""Lets Axolotl 0.17 / 0.18 start on a torch built without CUDA, in every process of a test run.

Those releases probe fp8 support with ``torch.cuda.get_device_capability()`` and catch only
``RuntimeError``; a CPU-only torch raises ``AssertionError`` there, so ``axolotl train`` cannot start
on CPU. Axolotl 0.19 catches both; this wrapper does the same, whatever the release.
The test helpers put this folder on ``PYTHONPATH``; ``tests/axolotl/conftest.py`` calls ``install``.
"""

from __future__ import annotations

import importlib.abc
import sys

TARGET = "axolotl.cli.config"


def _patch(module) -> None:
    original = getattr(module, "compute_supports_fp8", None)
    if original is None or getattr(original, "__cpu_shim__", False):
        return

    def compute_supports_fp8() -> bool:
        try:
            return original()
        except AssertionError:  # "Torch not compiled with CUDA enabled"
            return False

    compute_supports_fp8.__cpu_shim__ = True
    module.compute_supports_fp8 = compute_supports_fp8


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                exec_module = spec.loader.exec_module

                def exec_and_patch(module, _exec=exec_module):
                    _exec(module)
                    _patch(module)

                spec.loader.exec_module = exec_and_patch
                return spec
        return None


def install() -> None:
    """Patch now if Axolotl's CLI config module is loaded, else when it is imported."""
    if TARGET in sys.modules:
        _patch(sys.modules[TARGET])
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
