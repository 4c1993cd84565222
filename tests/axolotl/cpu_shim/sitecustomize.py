"""Lets Axolotl start on a machine without a GPU driver, in every process of a test run.

- Axolotl 0.17 / 0.18 probe fp8 support with ``torch.cuda.get_device_capability()`` and catch only
  ``RuntimeError``; a CPU-only torch raises ``AssertionError`` there, so ``axolotl train`` cannot start
  on CPU. Axolotl 0.19 catches both; the wrapper does the same, whatever the release.
- Axolotl's GPU peer-to-peer check (``axolotl.utils.environment.check_cuda_p2p_support``, run with
  several processes) catches only the ``AssertionError`` a CPU-only torch raises and then answers
  True; a CUDA build of torch without a driver (Python 3.12 gets PyPI's CUDA build) raises
  ``RuntimeError`` instead. The wrapper answers True there too.
The test helpers put this folder on ``PYTHONPATH``; ``tests/axolotl/conftest.py`` calls ``install``.
"""

from __future__ import annotations

import importlib.abc
import sys


def _wrap(module, name: str, errors: tuple[type[BaseException], ...], answer: bool) -> None:
    original = getattr(module, name, None)
    if original is None or getattr(original, "__cpu_shim__", False):
        return

    def wrapper(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        except errors:
            import torch

            if torch.cuda.is_available():  # a real GPU error: not the shim's business
                raise
            return answer

    wrapper.__cpu_shim__ = True
    wrapper.__wrapped__ = original
    setattr(module, name, wrapper)


def _patch_cli_config(module) -> None:
    _wrap(module, "compute_supports_fp8", (AssertionError,), False)  # "Torch not compiled with CUDA enabled"


def _patch_environment(module) -> None:
    _wrap(module, "check_cuda_p2p_support", (RuntimeError,), True)  # "Found no NVIDIA driver on your system"


TARGETS = {"axolotl.cli.config": _patch_cli_config, "axolotl.utils.environment": _patch_environment}


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        patch = TARGETS.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                exec_module = spec.loader.exec_module

                def exec_and_patch(module, _exec=exec_module, _patch=patch):
                    _exec(module)
                    _patch(module)

                spec.loader.exec_module = exec_and_patch
                return spec
        return None


def install() -> None:
    """Patch the modules already loaded now, and the others when they are imported."""
    for name, patch in TARGETS.items():
        if name in sys.modules:
            patch(sys.modules[name])
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
